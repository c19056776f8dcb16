/* scheduler.h: the scheduler's internal API (tasks, wait, wake, cancel), used
 * by host/ and bindings/. Nothing here is public: see tulua.h for that. */
#ifndef TULUA_SCHEDULER_H
#define TULUA_SCHEDULER_H

#include <stdint.h>
#include <lua.h>
#include <uv.h>

#include "queue.h"
#include "tulua.h"

typedef struct tulua__task tulua__task;

/* Runs in the task once the wait is over and turns the recorded result into
 * Lua values; returns how many it pushed. It runs exactly once for every
 * waiter that was woken, and frees the operation before pushing. */
typedef int (*tulua__deliver_fn)(lua_State *L, void *ud);

/* Asks libuv to stop the operation (uv_cancel, uv_read_stop, uv_close).
 * Frees nothing: the operation's callback still comes and frees it. */
typedef void (*tulua__cancel_fn)(void *ud);

/* Writes the detail of a wait into buf (size > 0 bytes, NUL-terminated,
 * truncated as snprintf) from ud, the op, which lives while the task
 * waits. Calls no Lua API. Returns the length snprintf would have written
 * (tulua --ps, traces: see tulua__wait_detail). */
typedef int (*tulua__describe_fn)(char *buf, size_t size, const void *ud);

/* Links an operation to the task that waits on it. Embedded in the op. */
typedef struct tulua__waiter {
  tulua__task *task; /* NULL once the task stopped waiting (cancelled) */
  tulua__deliver_fn deliver;
  tulua__cancel_fn cancel;
  tulua__describe_fn describe; /* the wait's detail, or NULL */
  void *ud;
  struct tulua__waiter *next; /* in a list of waiters, e.g. a task's joiners */
} tulua__waiter;

/* A piece of C work that must run with Lua available (a libuv callback may
 * not touch Lua): posted from a callback, run at the next drain under
 * lua_pcall. Embedded in its owner; posted at most once at a time. */
typedef struct tulua__job {
  void (*run)(lua_State *L, struct tulua__job *job);
  tulua__queue node; /* in the runtime's posted jobs, while posted */
  int posted;
} tulua__job;

/* Posts job to run at the next drain (no Lua API: callable from a libuv
 * callback); a job already posted is left where it is. */
void tulua__post(tulua_runtime *rt, tulua__job *job);

/* Takes a posted job back (its owner is being freed). */
void tulua__unpost(tulua_runtime *rt, tulua__job *job);

/* Returns the runtime that owns L (any thread of its state). */
tulua_runtime *tulua__runtime(lua_State *L);

/* Returns the loop of L's runtime. */
uv_loop_t *tulua__loop(lua_State *L);

/* Raises unless L may wait here: outside a task ("attempt to wait in 'op'
 * outside a task"), across a C-call boundary, or when the task has been
 * cancelled (the cancellation error). Call it after checking arguments and
 * before allocating anything. */
void tulua__check_wait(lua_State *L, const char *op);

/* ---- what a task waits for (tulua --ps, traces) ----
 *
 * tulua__check_wait records its op on the task; a binding that can say
 * more (a path, an address, a pid) attaches a describer right after it
 * with tulua__wait_detail. The hot path only stores pointers: the text is
 * made when someone asks (tulua__describe_wait). */

/* Attaches to the current task's coming wait a describer of its detail
 * (e.g. the path of a file operation), called with the ud given to
 * tulua__wait. Call after tulua__check_wait (which clears it) and before
 * tulua__wait; cheap: one store. */
void tulua__wait_detail(lua_State *L, tulua__describe_fn fn);

/* What tulua__task_state tells of an unfinished task. */
typedef struct tulua__task_state {
  const char *state; /* "new", "ready", "running" or "waiting" */
  const char *op; /* waiting: the op (check_wait's, or park's what) */
  double seconds; /* how long it has been waiting or running; -1 when
                     new or ready (not kept) */
  double left; /* waiting in a sleep: seconds to its deadline, else -1 */
  uint32_t id; /* 1, 2, ... in spawn order in its runtime */
  uint32_t parent; /* id of the task that spawned it, 0: none */
} tulua__task_state;

/* Fills *out for the task whose thread is co and returns 1; returns 0 for
 * any other thread (a finished task's too). Calls no Lua API; call it on
 * the runtime's thread (it brings the loop's time up to date, which a busy
 * step leaves stale). */
int tulua__task_state_of(lua_State *co, tulua__task_state *out);

/* Writes what the waiting task co waits for into buf, e.g. "sleep 2.500 s
 * left", "read tcp 127.0.0.1:5000", "fs.open /tmp/x"; an empty string if
 * co is not waiting. Returns the length (as snprintf). No Lua API. */
int tulua__describe_wait(lua_State *co, char *buf, size_t size);

/* Suspends the current task until tulua__wake(w); then deliver(L, ud) runs
 * in the task and its results are the results of the waiting function. If
 * the task is cancelled first, cancel(ud) runs, w->task becomes NULL and the
 * task resumes with the cancellation error. Use as a tail call:
 * `return tulua__wait(L, &op->w, deliver, cancel, op);`. cancel may be NULL
 * when the operation cannot be stopped (it still must free itself). */
int tulua__wait(lua_State *L, tulua__waiter *w, tulua__deliver_fn deliver,
                tulua__cancel_fn cancel, void *ud);

/* Returns 1 if the running task has a cancellation pending: a deliver
 * step that sees it should take nothing (the results it would push are
 * dropped and the cancellation raised), so that, e.g., bytes a cancelled
 * reader was woken for stay for the next reader. */
int tulua__cancel_pending(lua_State *L);

/* Wakes the task waiting on w, from a libuv callback (calls no Lua API).
 * Returns 1 if a task will run deliver, 0 if the waiter is gone and the
 * caller must free the operation itself. */
int tulua__wake(tulua__waiter *w);

/* Returns the thread running Lua code in rt right now (a task's, or a
 * user coroutine inside it), or NULL between steps. Async-signal-safe: a
 * signal handler on rt's thread may set a hook on it, as lua.c does. */
lua_State *tulua__running(tulua_runtime *rt);

/* Ends the wait of the task whose thread is co, if it waits: it resumes
 * with the cancellation error, as after Task:cancel(), but nothing stays
 * pending once it is raised. Returns 0 and does nothing if the task is
 * running, ready or finished. Calls no Lua API (for libuv callbacks). */
int tulua__cancel_wait(lua_State *co);

/* Pushes the cancellation error object (code "ECANCELED"). [-0, +1, m] */
void tulua__push_cancelled(lua_State *L, const char *msg);

/* Pushes an error object {code=, message=} with the shared metatable
 * 'tulua.error' (its __tostring returns the message). [-0, +1, m] */
void tulua__push_error(lua_State *L, const char *code, const char *msg);

/* The SIGPIPE handler that tulua__ignore_sigpipe (bindings/common.h)
 * installs: it does nothing, so the write that raised it fails with EPIPE.
 * One definition (host/io.c), so that io.c can tell it is still in place. */
void tulua__sigpipe_cb(int sig);

/* Raises the error object of an operation in the wrong state (asyncio's
 * and concurrent.futures' InvalidStateError: code EINVALIDSTATE). */
int tulua__invalid_state(lua_State *L, const char *msg);

/* Starts fn (at stack index idx, with the nargs values above it, all popped)
 * as a new task and pushes its Task object. Raises only on memory errors.
 * [-(nargs+1), +1, m] */
void tulua__spawn(lua_State *L, int nargs);

/* Returns the unfinished task whose thread is co, or NULL for any other
 * thread (a finished task's too). */
tulua__task *tulua__task_of(lua_State *co);

/* Returns 1 if co is the thread of a task, finished or not. */
int tulua__is_task(lua_State *co);

/* Pushes the table of the core module 'tulua' (tasks, sleep, park...):
 * the bindings' luaopen_tulua adds the timer to it. [-0, +1, m] */
int tulua__open_core(lua_State *L);

/* Opens the forwarding coroutine library (coro.c). */
void tulua__open_coro(lua_State *L);

/* Makes hook, a hook that stops the code it fires in (a pool job's
 * cancel), follow coroutine.resume into the coroutine resumed, as Ctrl-C's
 * does. One such hook in the process. */
void tulua__hook_follows_resumes(lua_Hook hook);

/* Sets the loader of every binding module (tulua, tulua.fs, ...) in the
 * package.preload table on top of the stack. Defined by the bindings layer
 * (bindings/modules.c), as lualib.h declares luaL_openlibs for linit.c:
 * the only name of the layer above that host/ knows. [-0, +0, m] */
void tulua__preload_bindings(lua_State *L);

/* tulua.sleep(s): suspends the current task (s = 0 yields to the loop). */
int tulua__sleep(lua_State *L);

#endif
