/* future.h: concurrent.futures' Future and the executor core
 * (bindings/future.c), as the backends that deliver from C use them, and
 * the hooks through which the core calls up into futures.lua.
 *
 * The hooks are the one place where bindings/ calls into lua/ at run
 * time. lua/concurrent/futures.lua is their only owner: it installs all
 * three once, as it loads, with future.set_hooks{remote_error =, report =,
 * idle =} (the module 'tulua._future'), and set_hooks refuses a missing or
 * unknown one. They live in the registry of the Lua state that loaded it;
 * a core used before they are installed raises "concurrent.futures is
 * not loaded". All run on the owner's thread, in its main state or in the
 * task that caused them, never in a worker; none may wait.
 *
 *   remote_error(err, traceback) -> value
 *     When a job is delivered with TULUA_JOB_ERROR, before its future is
 *     settled: turns what the worker sent (its error, decoded, and its
 *     traceback string or nil) into the error result() raises. Raises
 *     only on memory errors, which end the delivery (see
 *     tulua__core_deliver).
 *   report(future, err)
 *     When a done callback of future raises err (the other callbacks
 *     still run): tells the user. Runs in whatever settled the future
 *     (a delivery, set_result, cancel), where its own error would
 *     propagate.
 *   idle(executor)
 *     When the last job in flight of an executor is delivered or
 *     removed (core:forget, or Future:cancel dropping a queued job): lets
 *     a shutdown waiting for it go on, and ends the workers of an
 *     executor already shut down. Its errors propagate to the delivery,
 *     or to the caller of forget or cancel.
 *
 * The waits of result(), exception() and map's step are not hooks: they
 * are in future.c, as any wait on an operation (host/scheduler.h). */
#ifndef TULUA_FUTURE_H
#define TULUA_FUTURE_H

#include <lua.h>

/* How a job ended: the status of a delivery. */
enum {
  TULUA_JOB_OK, /* the values are the results */
  TULUA_JOB_ERROR, /* the error and the worker's traceback (or nil) */
  TULUA_JOB_CANCELLED, /* interrupted: no values */
  TULUA_JOB_BROKEN, /* the pool fails its jobs: a message */
  TULUA_JOB_CRASHED /* the worker died running it: a message */
};

/* What a backend's submit in C returns when it does not queue the job. */
enum {
  TULUA_SUBMIT_REFUSED = 1, /* a value cannot cross (the message says which) */
  TULUA_SUBMIT_BROKEN /* the pool takes no more work (the message says why) */
};

/* A backend's submit in C: encodes the function at first and its n - 1
 * arguments above it as job id and queues it (an id is unique among the
 * jobs in flight, and given again once its job is delivered or removed);
 * bidx is the backend. It runs in place of Executor:submit, unprotected:
 * it raises as that C function would (tulua__transfer_encode_temp with
 * the context "submit"), may change the slots from first, and leaves the
 * stack below them as it was. Returns 0, or pushes a message and returns
 * TULUA_SUBMIT_*. */
typedef int (*tulua__submit_fn)(lua_State *L, int bidx, lua_Integer id,
                                int first, int n);

/* Makes the executor core at idx submit through fn to the backend at bidx
 * (its Lua submit is not used), or, with fn NULL, through the backend's
 * Lua submit again. [-0, +0, -] */
void tulua__core_set_submit(lua_State *L, int idx, tulua__submit_fn fn,
                            int bidx);

/* Delivers job id's outcome to its future and pops the n values at the
 * top: the results (TULUA_JOB_OK), the error and the traceback
 * (TULUA_JOB_ERROR), nothing (TULUA_JOB_CANCELLED) or a message. A job
 * whose future is no longer pending (removed) is ignored. Wakes the
 * tasks waiting on the future, runs its listeners and done callbacks, the
 * remote_error hook for TULUA_JOB_ERROR and, when nothing is left in
 * flight, the idle hook: call it protected. started and
 * finished are uv_hrtime() seconds. [-n, +0, e] */
void tulua__core_deliver(lua_State *L, int idx, lua_Integer id, int status,
                         int worker, double started, double finished, int n);

#endif
