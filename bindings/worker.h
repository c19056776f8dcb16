/* worker.h: the worker side of a pool job (bindings/worker.c), shared by
 * the thread pool's workers and the process pool's: the job control that
 * interrupts a running job, and the parts of a port's run and finish that
 * do not depend on how jobs travel.
 *
 * Both pools give their job runner (lua/concurrent/_worker.lua) a port of
 * the same shape: take, wait, init, broken, handler, and
 *   port.run(w) -> ...: decodes the job taken and calls it, with
 *     tulua__worker_call, as the job the cancellation signal stops;
 *   port.finish(w, ok, ...) -> as port.take: after xpcall(run, handler, w),
 *     tulua__worker_outcome and tulua__worker_reply turn what the job
 *     returned or raised into the reply, which goes back to the owner, and
 *     the next job is taken. */
#ifndef TULUA_WORKER_H
#define TULUA_WORKER_H

#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>

#include "common.h"
#include "future.h"

/* The job control of one worker: what the handler of the cancellation
 * signal, on the worker's thread, needs to stop the job that runs. Lives
 * as long as the worker; a thread pool's worker embeds it, a process
 * worker's is made by tulua__worker_control. */
typedef struct tulua__worker_ctx {
  tulua_runtime *rt;
  uv_async_t *wake; /* in the worker's loop: a cancelled wait ends there */
  _Atomic long long running; /* the job being run, 0 between jobs */
  _Atomic long long cancel; /* the job asked to stop */
  lua_State *co; /* the task that runs jobs */
  long long waked; /* the job whose wait was cancelled once (worker's) */
  pthread_t thread; /* a process worker's: the thread of its runtime */
  int base; /* the stack slots of the running call below its results */
} tulua__worker_ctx;

/* Returns the signal that interrupts a job (SIGRTMIN + 4): sent to a
 * thread worker's thread, or queued to a process worker with the job's
 * number as its value. Taken for the whole process. */
int tulua__worker_signal(void);

/* Installs the signal's handler in the process, once; any thread may
 * call it. */
void tulua__worker_install(void);

/* Lets the signal reach the jobs this thread runs: installs the handler
 * and unblocks the signal on the calling thread. */
void tulua__worker_accept_signal(void);

/* Makes c (or NULL) the job control of the calling thread, which the
 * signal's handler and tulua__worker_handler use. */
void tulua__worker_set_current(tulua__worker_ctx *c);

/* Returns 1 if the calling thread runs a worker whose wake-up handle keeps
 * its loop alive (a thread pool's: a job's cancel must reach a job that
 * waits on nothing else), else 0; luv's uv.run (luv.c) does not wait for
 * it. */
int tulua__worker_holds_loop(void);

/* Makes the runtime of L a process worker whose jobs the signal stops,
 * with a context anchored in the registry until lua_close; returns it.
 * Returns the same context when called again. Raises in a thread pool's
 * worker, which has its own, or on memory errors. [-0, +0, v] */
tulua__worker_ctx *tulua__worker_control(lua_State *L);

/* Asks the worker of c to stop job id: marks it and, with thread set (the
 * worker's loop and thread can be told), wakes the worker's loop (a job
 * that waits is cancelled there) and signals its thread (a job that
 * computes stops at its next instruction). Any thread may call it. One
 * call may not be enough (the signal may land in another task of the
 * worker, the job may go on after its wait's cancellation): the owner
 * calls it again until the job ends, as the process pool re-sends its
 * signal. */
void tulua__worker_interrupt(tulua__worker_ctx *c, long long id,
                             const pthread_t *thread);

/* On the worker's thread, from its loop: if the job that runs was asked to
 * stop, ends its wait or makes it stop as it runs. The first time for a job
 * that waits, only its wait ends (the job may clean up); if it is still
 * running when asked again (it went on and waits, or computes, in a nested
 * coroutine), it also stops at its next instruction. Calls no Lua API but
 * lua_sethook (for libuv callbacks). */
void tulua__worker_check_cancel(tulua__worker_ctx *c);

/* Calls the function at first with the values above it as job id, the
 * job the signal may stop, and returns its results (use as a tail call
 * of port.run). Raises "job without a function", or the cancellation
 * error if the job was asked to stop before it started. [-?, +?, e] */
int tulua__worker_call(lua_State *L, tulua__worker_ctx *c, long long id,
                       int first);

/* Ends the call of job id: from here on the signal is stale for it.
 * Returns whether it was asked to stop, and forgets that it was. */
int tulua__worker_end(tulua__worker_ctx *c, long long id);

/* The message handler of a job's xpcall: {err, traceback}, or a
 * cancellation error as it is. A C function, so that a cancellation hook
 * cannot fire inside it once the job is over. Every port has it as
 * port.handler. */
int tulua__worker_handler(lua_State *L);

/* The outcome of a job that failed: tulua__worker_outcome's slow path. */
int tulua__worker_failure(lua_State *L, int ok, int cancelled);

/* After a job's xpcall, with its ok at index ok and what it returned or
 * raised above: leaves from ok + 1 to the top what goes back to the
 * owner, and returns the status (TULUA_JOB_*): the results (OK); the error
 * and its traceback, or nil, from the handler (ERROR); nothing for a job
 * asked to stop (cancelled) that ended with an error (CANCELLED). Inline:
 * a worker's every job takes the first branch. [-?, +?, m] */
static inline int tulua__worker_outcome(lua_State *L, int ok, int cancelled) {
  if (lua_toboolean(L, ok)) return TULUA_JOB_OK;
  return tulua__worker_failure(L, ok, cancelled);
}

/* Where a reply's bytes go: stores len bytes at p (valid during the call
 * only), or, with p NULL, an empty reply. Returns 0 or UV_ENOMEM. */
typedef int (*tulua__worker_store_fn)(void *ud, const char *p, size_t len);

/* Encodes the values from first to the top (and pops them) through
 * store(ud, ...), and returns status. Values that cannot cross fail the
 * job instead: the reply is then the message, "... (in the job's
 * results)" or "(in the job's error)", and nil, or empty if even that
 * cannot be encoded (out of memory), and the status TULUA_JOB_ERROR.
 * Raises only on memory errors. [-?, +0, m] */
int tulua__worker_reply(lua_State *L, int first, int status,
                        tulua__worker_store_fn store, void *ud);

#endif
