/* future.c: the module 'tulua._future', the C half of concurrent.futures
 * (lua/concurrent/futures.lua): its Future, and the executor core that
 * numbers jobs, keeps their futures until they are delivered, and records
 * the timeline.
 *
 * Why C: a pool dispatches a job in about a microsecond, and a Future made
 * as a Lua table with its fields, a Lua submit and a Lua deliver per job
 * cost more than the job itself. Here a Future is one userdata (its values
 * in user values), submit is one C call that hands the job to the backend
 * (a thread pool's in C, see future.h), and a delivery sets the results
 * without calling Lua unless someone listens.
 *
 * The Future lives here whole: its state, its results, every method, and
 * the waits of result(), exception() and map's step. A task waits as on
 * any other operation (bindings/README.md's steps, tulua__wait): its wait_op
 * sits in the future's queue of parked tasks, and settling the future, or the
 * op's own timer, wakes it. running(), cancel() and tostring ask the
 * executor's backend where the job is, through the backend interface
 * written at the top of futures.lua (as the core's submit does for a
 * backend in Lua). The few upcalls left, where C needs what only Lua
 * knows, are the hooks of future.h (remote_error, report, idle), which
 * futures.lua installs once.
 *
 * How the two pools sit behind the core (both through the backend
 * interface that futures.lua describes):
 * - the thread pool (bindings/thread_pool.c) submits and delivers in C:
 *   the core calls its tulua__submit_fn, and its drain hands each finished
 *   job to tulua__core_deliver. A thread-pool job costs about a
 *   microsecond of the owner's time, so a Lua call on either side would
 *   be a large share of it.
 * - the process pool (lua/concurrent/_process_pool.lua over the transport
 *   of bindings/process_pool.c) submits through its Lua submit, which the
 *   core calls under lua_pcall, and delivers through core:deliver. Its
 *   protocol stays in Lua on purpose: each job is framed onto a socket and
 *   its reply read back from another process, so the pool streams about
 *   seven times fewer jobs per second than the thread pool (W4), and the
 *   Lua calls around a job do not decide its cost; and what the protocol
 *   does is policy that keeps changing (adaptive windows, crash and
 *   requeue, retiring workers, resent cancel signals), easier to keep
 *   right in Lua. Moving it to C would buy little speed for much code.
 *
 * A Future's user values: 1 the results (one value, or a table of n), or
 * the error; 2 the listeners (functions of futures.wait and as_completed,
 * never failing, called before the done callbacks); 3 the done callbacks;
 * 4 its executor. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "future.h"
#include "queue.h"

#define FUTURE_MT "concurrent.futures.Future"
#define CORE_MT   "tulua.executor_core"
#define HOOKS_KEY "tulua.future_hooks"

enum { F_PENDING, F_RUNNING, F_CANCELLED, F_FINISHED };

static const char *const state_names[] = {"pending", "running", "cancelled",
                                          "finished", NULL};

enum { UV_VALUE = 1, UV_WAITERS, UV_CALLBACKS, UV_EXECUTOR, FUTURE_NUV = 4 };

/* Kept to 24 bytes: with its FUTURE_NUV user values a Future is then a
 * 128-byte userdata (Lua 5.4 puts the data after 40 + 16 * nuv bytes of
 * header), and at 144 bytes (when `parked` was a queue head) a thread pool
 * dispatched about 3 % fewer jobs per second (W4). So the parked tasks are
 * a ring of their own with one pointer into it, and the small fields are
 * packed. */
typedef struct {
  unsigned state : 2;
  unsigned failed : 1; /* finished with an error, in UV_VALUE */
  unsigned waiters : 1, callbacks : 1; /* their lists are set */
  unsigned n : 27; /* how many results: at most what a Lua stack holds */
  uint32_t id; /* the job's number, while it is in flight: at most the
                  number of jobs in flight (future_submit) */
  lua_Integer seq; /* the job's place in submission order; 0 for a future
                      made by future.new */
  tulua__queue *parked; /* the first task waiting on it (wait_op.node, in
                           a ring of the others), or NULL */
} future;

_Static_assert(sizeof(future) <= 24, "a Future is a 128-byte userdata");

/* ---- hooks ---- */

static const char *const hook_names[] = {"remote_error", "report", "idle",
                                         NULL};

/* Pushes the hook `name` that futures.lua installed (future.h).
 * [-0, +1, e] */
static void push_hook(lua_State *L, const char *name) {
  if (lua_getfield(L, LUA_REGISTRYINDEX, HOOKS_KEY) != LUA_TTABLE)
    luaL_error(L, "concurrent.futures is not loaded");
  lua_getfield(L, -1, name);
  lua_remove(L, -2);
}

/* Calls the report hook with the future at fidx and the error on top
 * (popped), for a done callback that failed. [-1, +0, e] */
static void report_callback_error(lua_State *L, int fidx) {
  push_hook(L, "report");
  lua_pushvalue(L, fidx);
  lua_rotate(L, -3, -1); /* report, future, error */
  lua_call(L, 2, 0);
}

/* ---- classes ---- */

/* Every Lua-facing function of the module has the same upvalues: the two
 * metatables, and the string "_core". A job checks and makes several
 * objects, and a registry lookup each time was a tenth of submit. */
#define UP_FUTURE_MT lua_upvalueindex(1)
#define UP_CORE_MT   lua_upvalueindex(2)
#define UP_CORE_NAME lua_upvalueindex(3)

/* Returns the userdata at idx if its metatable is the one at up. */
static void *test_class(lua_State *L, int idx, int up) {
  void *p = lua_touserdata(L, idx);
  if (p == NULL || !lua_getmetatable(L, idx)) return NULL;
  int same = lua_rawequal(L, -1, up);
  lua_pop(L, 1);
  return same ? p : NULL;
}

static void *check_class(lua_State *L, int idx, int up, const char *name) {
  void *p = test_class(L, idx, up);
  if (p == NULL) luaL_typeerror(L, idx, name);
  return p;
}

/* ---- Future ---- */

static future *check_future(lua_State *L, int idx) {
  return check_class(L, idx, UP_FUTURE_MT, FUTURE_MT);
}

static future *new_future(lua_State *L, lua_Integer id, lua_Integer seq) {
  future *f = lua_newuserdatauv(L, sizeof *f, FUTURE_NUV);
  memset(f, 0, sizeof *f);
  f->id = (uint32_t)id;
  f->seq = seq;
  lua_pushvalue(L, UP_FUTURE_MT);
  lua_setmetatable(L, -2);
  return f;
}

static int is_done(const future *f) {
  return f->state == F_FINISHED || f->state == F_CANCELLED;
}

/* Keeps the n values from first as the results of the future f at fidx.
 * [-0, +0, m] */
static void set_results(lua_State *L, future *f, int fidx, int first, int n) {
  if (n == 0) {
    lua_pushnil(L);
  } else if (n == 1) {
    lua_pushvalue(L, first);
  } else {
    lua_createtable(L, n, 0);
    for (int i = 0; i < n; i++) {
      lua_pushvalue(L, first + i);
      lua_rawseti(L, -2, i + 1);
    }
  }
  lua_setiuservalue(L, fidx, UV_VALUE);
  f->n = (unsigned)n;
  f->failed = 0;
}

/* Pops the error the future f at fidx raises. [-1, +0, -] */
static void set_error(lua_State *L, future *f, int fidx) {
  lua_setiuservalue(L, fidx, UV_VALUE);
  f->n = 0;
  f->failed = 1;
}

/* Calls each function of the list in user value uv with the future;
 * callbacks run protected, a failing one reported by the hook. */
static void call_list(lua_State *L, int fidx, int uv, int is_callbacks) {
  lua_getiuservalue(L, fidx, uv);
  lua_pushnil(L);
  lua_setiuservalue(L, fidx, uv);
  int list = lua_gettop(L);
  lua_Integer n = (lua_Integer)lua_rawlen(L, list);
  for (lua_Integer i = 1; i <= n; i++) {
    lua_rawgeti(L, list, i);
    lua_pushvalue(L, fidx);
    if (!is_callbacks)
      lua_call(L, 1, 0);
    else if (lua_pcall(L, 1, 0, 0) != LUA_OK)
      report_callback_error(L, fidx);
  }
  lua_settop(L, list - 1);
}

/* ---- waiting ---- */

/* A task waiting on a future, from tulua__wait until the future settles,
 * the timeout passes or the task is cancelled. While it waits, the op is
 * parked (in the future's ring) and the task owns it; once woken
 * it is off the queue with its timer stopped, and deliver frees it. */
typedef struct {
  tulua__waiter w;
  tulua__queue node; /* in future.parked while the task waits */
  future *f; /* read only while parked (the waiting frame holds the
                future), else compared only */
  int parked; /* in f's ring: f->parked reaches node */
  int kind; /* WAIT_* */
  int timed; /* the timer runs, and must be closed before the op is freed */
  uv_timer_t timer;
} wait_op;

/* How a wait ends: with result()'s values, exception()'s error, or only
 * whether the future is done (map's step, future.wait). */
enum { WAIT_RESULT, WAIT_EXCEPTION, WAIT_DONE };

static void op_close_cb(uv_handle_t *h) {
  free(h->data);
}

/* Frees op: at once, or in its timer's close callback. */
static void release_op(wait_op *op) {
  if (op->timed)
    uv_close((uv_handle_t *)&op->timer, op_close_cb);
  else
    free(op);
}

/* Adds op last to the tasks waiting on f. */
static void park(future *f, wait_op *op) {
  op->f = f;
  op->parked = 1;
  tulua__queue_init(&op->node);
  if (f->parked == NULL)
    f->parked = &op->node;
  else /* before the first of the ring: the last */
    tulua__queue_insert_tail(f->parked, &op->node);
}

/* Takes op off its future's ring, if it is on it; the future is not read
 * otherwise, as it may be gone once the op is woken. */
static void unpark(wait_op *op) {
  if (!op->parked) return;
  future *f = op->f;
  if (f->parked == &op->node)
    f->parked = tulua__queue_linked(&op->node) ? op->node.next : NULL;
  tulua__queue_remove(&op->node);
  op->parked = 0;
}

/* Wakes every task waiting on f, first parked first. No Lua API, cannot
 * fail: a future that settles wakes its tasks even if a listener or
 * callback then fails. */
static void wake_parked(future *f) {
  while (f->parked != NULL) {
    wait_op *op = tulua__container_of(f->parked, wait_op, node);
    unpark(op);
    if (op->timed) uv_timer_stop(&op->timer);
    tulua__wake(&op->w); /* a cancelled task's op is off the ring */
  }
}

static void op_timer_cb(uv_timer_t *t) { /* no Lua API here */
  wait_op *op = t->data;
  unpark(op);
  tulua__wake(&op->w); /* a cancel closes the timer: the task waits */
}

/* The task stopped waiting (cancelled, or the runtime shuts down): the op
 * leaves the future and is freed, as neither the future nor its timer
 * will come back to it. */
static void op_cancel(void *ud) {
  wait_op *op = ud;
  unpark(op);
  release_op(op);
}

/* Pushes the results, or raises the error, of the finished future f at
 * fidx. */
static int push_outcome(lua_State *L, const future *f, int fidx) {
  lua_getiuservalue(L, fidx, UV_VALUE);
  if (f->failed) return lua_error(L);
  if (f->n <= 1) return f->n;
  int t = lua_gettop(L), n = f->n;
  luaL_checkstack(L, n, "too many results");
  for (int i = 1; i <= n; i++)
    lua_rawgeti(L, t, i);
  return n;
}

/* Ends a wait of kind on the future f at 1, done or not: pushes whether
 * it is done (WAIT_DONE); else raises CancelledError, or TimeoutError
 * when it is not done, or gives what result() or exception() give. The
 * errors are futures.lua's classes: objects made as tulua.new_error
 * makes them. */
static int end_wait(lua_State *L, future *f, int kind) {
  if (kind == WAIT_DONE) {
    lua_pushboolean(L, is_done(f));
    return 1;
  }
  if (f->state == F_CANCELLED) {
    tulua__push_error(L, "ECANCELED", "future cancelled");
    return lua_error(L);
  }
  if (f->state != F_FINISHED) {
    tulua__push_error(L, "ETIMEDOUT", "timed out");
    return lua_error(L);
  }
  lua_settop(L, 1);
  if (kind == WAIT_RESULT) return push_outcome(L, f, 1);
  if (!f->failed) return 0;
  lua_getiuservalue(L, 1, UV_VALUE);
  return 1;
}

static int wait_deliver(lua_State *L, void *ud) { /* in the task */
  wait_op *op = ud;
  future *f = op->f;
  int kind = op->kind;
  release_op(op);
  /* nothing to give when the runtime shuts down (this runs outside the
   * waiting frame then), nor when the task was cancelled after the wake:
   * tulua__wait raises the cancellation, not the job's error */
  if (lua_touserdata(L, 1) != f || tulua__cancel_pending(L)) return 0;
  return end_wait(L, f, kind);
}

/* Returns 1 and sets *t to the timeout at 2, or returns 0 when it is nil;
 * raises as futures.lua's check_timeout, for the public function name. */
static int opt_timeout(lua_State *L, const char *name, lua_Number *t) {
  int type = lua_type(L, 2);
  if (type == LUA_TNONE || type == LUA_TNIL) return 0;
  *t = lua_tonumber(L, 2);
  if (type != LUA_TNUMBER || *t != *t)
    luaL_error(L, "bad argument #1 to '%s' (number expected, got %s)", name,
               type == LUA_TNUMBER ? "nan" : lua_typename(L, type));
  return 1;
}

/* The detail of a wait on a future (tulua --ps): its job's number in its
 * executor (tulua --ps adds the worker running it). */
static int describe_future(char *buf, size_t size, const void *ud) {
  const future *f = ((const wait_op *)ud)->f;
  if (f->seq == 0) return snprintf(buf, size, "future");
  return snprintf(buf, size, "future #%lld", (long long)f->seq);
}

/* Waits in the current task until the future f at 1 is done, or the
 * timeout at 2 (seconds, nil: none) passes; then ends as end_wait. A
 * cancelled future ends result() and exception() at once, whatever the
 * timeout. name is the public function's, for misuse errors, which are
 * the runtime's (tulua__check_wait). The wait follows bindings/README.md's
 * steps, with the future as the event: settle() and the op's timer wake the
 * task. */
static int wait_on(lua_State *L, future *f, int kind, const char *name) {
  lua_Number timeout = 0;
  if (kind != WAIT_DONE && f->state == F_CANCELLED) return end_wait(L, f, kind);
  int timed = opt_timeout(L, name, &timeout);
  if (is_done(f)) return end_wait(L, f, kind);
  if (timed && !(timeout > 0)) {
    /* no wait, but the misuse errors of one; a cancellation pending stays
     * for the next real wait, as TimeoutError is raised here */
    if (!tulua__cancel_pending(L)) tulua__check_wait(L, name);
    return end_wait(L, f, kind);
  }
  tulua__check_wait(L, name);
  wait_op *op = malloc(sizeof *op);
  if (op == NULL) return luaL_error(L, "not enough memory");
  op->kind = kind;
  op->timed = timed;
  if (timed) {
    /* as tulua.timer.after rounds: never early */
    lua_Number msf = timeout * 1000.0;
    uint64_t ms = msf > 9.0e15 ? (uint64_t)9.0e15 : (uint64_t)msf;
    if ((lua_Number)ms < msf) ms++;
    uv_loop_t *loop = tulua__loop(L);
    uv_timer_init(loop, &op->timer); /* cannot fail */
    op->timer.data = op;
    uv_update_time(loop); /* count from now, as tulua.sleep does */
    uv_timer_start(&op->timer, op_timer_cb, ms, 0);
  }
  park(f, op);
  tulua__wait_detail(L, describe_future);
  return tulua__wait(L, &op->w, wait_deliver, op_cancel, op);
}

/* settle's work for a future that someone waits on or listens to. */
static void notify(lua_State *L, future *f, int fidx) {
  wake_parked(f);
  if (f->waiters) {
    f->waiters = 0;
    call_list(L, fidx, UV_WAITERS, 0);
  }
  if (f->callbacks) {
    f->callbacks = 0;
    call_list(L, fidx, UV_CALLBACKS, 1);
  }
}

/* Ends the future f at fidx (absolute) in state: wakes the tasks waiting
 * on it, calls its listeners (futures.wait, as_completed), then its done
 * callbacks in the order they were added, as Python does. Most futures of
 * a pool have none of these, and a delivery then only sets the state:
 * inline, the rest apart. [-0, +0, e] */
static inline void settle(lua_State *L, future *f, int fidx, int state) {
  f->state = (unsigned)state;
  if (f->parked != NULL || f->waiters || f->callbacks) notify(L, f, fidx);
}

/* f:result(timeout) -> ...: the job's results, waiting up to timeout
 * seconds (nil: no limit) in the current task; raises the job's error,
 * CancelledError, or TimeoutError when the time is up. */
static int f_result(lua_State *L) {
  future *f = check_future(L, 1);
  if (f->state == F_FINISHED) { /* the common case: no wait */
    lua_settop(L, 1);
    return push_outcome(L, f, 1);
  }
  lua_settop(L, 2);
  return wait_on(L, f, WAIT_RESULT, "result");
}

/* f:exception(timeout) -> the job's error, or nil when it succeeded;
 * waits and raises as result(). */
static int f_exception(lua_State *L) {
  future *f = check_future(L, 1);
  lua_settop(L, 2);
  if (f->state == F_FINISHED) return end_wait(L, f, WAIT_EXCEPTION);
  return wait_on(L, f, WAIT_EXCEPTION, "exception");
}

/* f:done() -> whether it is finished or cancelled */
static int f_done(lua_State *L) {
  lua_pushboolean(L, is_done(check_future(L, 1)));
  return 1;
}

/* f:cancelled() -> whether it was cancelled */
static int f_cancelled(lua_State *L) {
  lua_pushboolean(L, check_future(L, 1)->state == F_CANCELLED);
  return 1;
}

/* Appends the value at top to the list in user value uv (popping it). */
static void list_add(lua_State *L, int fidx, int uv) {
  if (lua_getiuservalue(L, fidx, uv) != LUA_TTABLE) {
    lua_pop(L, 1);
    lua_createtable(L, 1, 0);
    lua_pushvalue(L, -1);
    lua_setiuservalue(L, fidx, uv);
  }
  lua_insert(L, -2);
  lua_rawseti(L, -2, (lua_Integer)lua_rawlen(L, -2) + 1);
  lua_pop(L, 1);
}

/* f:add_done_callback(fn): calls fn(f) once f is done (at once if it is;
 * an error is reported on stderr and the other callbacks still run). */
static int f_add_done_callback(lua_State *L) {
  future *f = check_future(L, 1);
  if (lua_type(L, 2) != LUA_TFUNCTION)
    return luaL_error(
        L, "bad argument #1 to 'add_done_callback' (function expected, got %s)",
        luaL_typename(L, 2));
  lua_settop(L, 2);
  if (is_done(f)) {
    lua_pushvalue(L, 1);
    if (lua_pcall(L, 1, 0, 0) != LUA_OK) report_callback_error(L, 1);
    return 0;
  }
  list_add(L, 1, UV_CALLBACKS);
  f->callbacks = 1;
  return 0;
}

/* f:set_running_or_notify_cancel() -> false if it was cancelled, else
 * marks it running (for executors written in Lua). */
static int f_set_running_or_notify_cancel(lua_State *L) {
  future *f = check_future(L, 1);
  if (f->state == F_CANCELLED) {
    lua_pushboolean(L, 0);
    return 1;
  }
  if (f->state != F_PENDING) {
    lua_pushfstring(L, "the future is %s", state_names[f->state]);
    return tulua__invalid_state(L, lua_tostring(L, -1));
  }
  f->state = F_RUNNING;
  lua_pushboolean(L, 1);
  return 1;
}

/* f:set_result(...): finishes it with these results. */
static int f_set_result(lua_State *L) {
  future *f = check_future(L, 1);
  if (is_done(f)) return tulua__invalid_state(L, "the future is done");
  set_results(L, f, 1, 2, lua_gettop(L) - 1);
  settle(L, f, 1, F_FINISHED);
  return 0;
}

/* f:set_exception(err): finishes it with this error. */
static int f_set_exception(lua_State *L) {
  future *f = check_future(L, 1);
  if (is_done(f)) return tulua__invalid_state(L, "the future is done");
  lua_settop(L, 2);
  if (lua_isnil(L, 2)) lua_pushliteral(L, "nil error");
  set_error(L, f, 1);
  settle(L, f, 1, F_FINISHED);
  return 0;
}

/* ---- module functions for futures.lua ---- */

/* future.new() -> a pending Future, for code that implements an executor */
static int future_new(lua_State *L) {
  new_future(L, 0, 0);
  return 1;
}

/* future.is_future(x) -> boolean */
static int future_is_future(lua_State *L) {
  lua_pushboolean(L, test_class(L, 1, UP_FUTURE_MT) != NULL);
  return 1;
}

/* future.state(f) -> "pending" | "running" | "cancelled" | "finished" */
static int future_state(lua_State *L) {
  lua_pushstring(L, state_names[check_future(L, 1)->state]);
  return 1;
}

/* future.failed(f) -> whether it finished with an error */
static int future_failed(lua_State *L) {
  future *f = check_future(L, 1);
  lua_pushboolean(L, f->state == F_FINISHED && f->failed);
  return 1;
}

/* future.job(f) -> its executor and job number (the backend's id), or
 * nothing; the number is another job's once f is done */
static int future_job(lua_State *L) {
  future *f = check_future(L, 1);
  if (f->seq == 0) return 0;
  lua_getiuservalue(L, 1, UV_EXECUTOR);
  lua_pushinteger(L, f->id);
  return 2;
}

/* future.cancel(f): ends a pending or running future as cancelled. */
static int future_cancel(lua_State *L) {
  future *f = check_future(L, 1);
  if (!is_done(f)) settle(L, f, 1, F_CANCELLED);
  return 0;
}

/* future.wait(f, timeout, name) -> whether f is done: waits in the
 * current task until it is, or timeout seconds (nil: no limit) have
 * passed; name is the public function's, for misuse errors (map's step) */
static int future_wait(lua_State *L) {
  future *f = check_future(L, 1);
  lua_settop(L, 3);
  return wait_on(L, f, WAIT_DONE, luaL_optstring(L, 3, "wait"));
}

/* future.add_waiter(f, fn): fn(f) runs when f is done, before its done
 * callbacks; it must not fail (a listener of futures.wait and
 * as_completed: it unparks its task). */
static int future_add_waiter(lua_State *L) {
  future *f = check_future(L, 1);
  luaL_checktype(L, 2, LUA_TFUNCTION);
  lua_settop(L, 2);
  list_add(L, 1, UV_WAITERS);
  f->waiters = 1;
  return 0;
}

/* future.remove_waiter(f, fn): takes back the last fn added */
static int future_remove_waiter(lua_State *L) {
  future *f = check_future(L, 1);
  if (!f->waiters || lua_getiuservalue(L, 1, UV_WAITERS) != LUA_TTABLE)
    return 0;
  int list = lua_gettop(L);
  lua_Integer n = (lua_Integer)lua_rawlen(L, list);
  for (lua_Integer i = n; i >= 1; i--) {
    lua_rawgeti(L, list, i);
    int same = lua_rawequal(L, -1, 2);
    lua_pop(L, 1);
    if (!same) continue;
    for (lua_Integer k = i; k < n; k++) {
      lua_rawgeti(L, list, k + 1);
      lua_rawseti(L, list, k);
    }
    lua_pushnil(L);
    lua_rawseti(L, list, n);
    if (n == 1) f->waiters = 0;
    break;
  }
  return 0;
}

/* future.set_hooks(t): installs the hooks of future.h, t.remote_error,
 * t.report and t.idle, all functions and nothing else (the interface is
 * closed: a hook this file does not call is an error). */
static int future_set_hooks(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_settop(L, 1);
  lua_createtable(L, 0, 3);
  for (int i = 0; hook_names[i] != NULL; i++) {
    if (lua_getfield(L, 1, hook_names[i]) != LUA_TFUNCTION)
      return luaL_error(
          L, "bad argument #1 to 'set_hooks' (function '%s' expected)",
          hook_names[i]);
    lua_setfield(L, 2, hook_names[i]);
  }
  lua_pushnil(L);
  while (lua_next(L, 1) != 0) {
    lua_pop(L, 1);
    lua_pushvalue(L, -1);
    if (lua_rawget(L, 2) == LUA_TNIL) /* a key, not one of the hooks */
      return luaL_error(L, "bad argument #1 to 'set_hooks' (unknown hook %s)",
                        luaL_tolstring(L, -2, NULL));
    lua_pop(L, 1);
  }
  lua_pushvalue(L, 2);
  lua_setfield(L, LUA_REGISTRYINDEX, HOOKS_KEY);
  return 0;
}

/* ---- the executor core ---- */

/* What the timeline keeps of a delivered job. */
typedef struct {
  lua_Integer id;
  double start, finish; /* seconds since the core was made */
  int worker;
  int status;
} record;

#define TIMELINE_MAX 4096

typedef struct {
  lua_Integer last_seq; /* jobs ever submitted */
  lua_Integer inflight; /* submitted, not delivered nor removed */
  /* Job numbers are the slots of the pending table: a number is free
   * again once its job is delivered or removed (its future done), so that
   * the table stays an array however many jobs pass */
  lua_Integer *free_ids;
  lua_Integer nfree, free_cap, max_id;
  int shutdown; /* takes no new jobs */
  double t0; /* when it was made, uv_hrtime() seconds */
  tulua__submit_fn submit; /* the backend's C submit, or NULL */
  record *tl; /* a ring of TIMELINE_MAX records, grown as needed */
  size_t tl_cap;
  lua_Integer tl_n; /* records ever made */
} core;

/* A core's user values: 1 the pending futures by job number; 2 the backend
 * (its Lua submit, when it has no C one); 3 the executor while jobs are
 * in flight (its done callbacks must run even if nothing else refers to
 * it; an idle executor is collected and shut down). */
enum { CUV_PENDING = 1, CUV_BACKEND, CUV_EXECUTOR, CORE_NUV = 3 };

static core *check_core(lua_State *L, int idx) {
  return check_class(L, idx, UP_CORE_MT, CORE_MT);
}

static int core_gc(lua_State *L) {
  core *c = lua_touserdata(L, 1);
  free(c->tl);
  c->tl = NULL;
  free(c->free_ids);
  c->free_ids = NULL;
  c->nfree = c->free_cap = 0;
  return 0;
}

/* The number of the next job: a free one, or a new one. */
static lua_Integer next_id(const core *c) {
  return c->nfree > 0 ? c->free_ids[c->nfree - 1] : c->max_id + 1;
}

/* Takes id, which next_id gave before the job was queued. A Lua backend
 * may have delivered jobs meanwhile (freeing their numbers), so it is
 * looked for, from the top. */
static void take_id(core *c, lua_Integer id) {
  if (id > c->max_id) {
    c->max_id = id;
    return;
  }
  for (lua_Integer i = c->nfree - 1; i >= 0; i--) {
    if (c->free_ids[i] != id) continue;
    memmove(&c->free_ids[i], &c->free_ids[i + 1],
            (size_t)(c->nfree - 1 - i) * sizeof *c->free_ids);
    c->nfree--;
    return;
  }
}

/* Takes the future of job id out of the pending table at pidx and pushes
 * it, its number free again; pushes nothing and returns NULL if id is not
 * pending. */
static future *take_pending(lua_State *L, core *c, int pidx, lua_Integer id) {
  if (id < 1 || id > c->max_id || lua_rawgeti(L, pidx, id) != LUA_TUSERDATA) {
    lua_pop(L, 1);
    return NULL;
  }
  if (c->nfree == c->free_cap) { /* room first: nothing fails after */
    lua_Integer cap = c->free_cap ? 2 * c->free_cap : 64;
    lua_Integer *ids = realloc(c->free_ids, (size_t)cap * sizeof *ids);
    if (ids == NULL) luaL_error(L, "not enough memory");
    c->free_ids = ids;
    c->free_cap = cap;
  }
  lua_pushnil(L);
  lua_rawseti(L, pidx, id);
  c->free_ids[c->nfree++] = id;
  c->inflight--;
  return lua_touserdata(L, -1);
}

/* future.core() -> a core, for a new executor */
static int future_core(lua_State *L) {
  core *c = lua_newuserdatauv(L, sizeof *c, CORE_NUV);
  memset(c, 0, sizeof *c);
  c->t0 = (double)uv_hrtime() / 1e9;
  lua_pushvalue(L, UP_CORE_MT);
  lua_setmetatable(L, -2);
  lua_newtable(L);
  lua_setiuservalue(L, -2, CUV_PENDING);
  return 1;
}

void tulua__core_set_submit(lua_State *L, int idx, tulua__submit_fn fn,
                            int bidx) {
  idx = lua_absindex(L, idx);
  core *c = lua_touserdata(L, idx);
  c->submit = fn;
  if (fn != NULL) {
    lua_pushvalue(L, bidx);
    lua_setiuservalue(L, idx, CUV_BACKEND);
  }
}

/* core:set_backend(b): b:submit(id, fn, ...) queues jobs. A backend that
 * set a C submit is already set, and stays. */
static int core_set_backend(lua_State *L) {
  core *c = check_core(L, 1);
  lua_settop(L, 2);
  if (c->submit != NULL) {
    lua_getiuservalue(L, 1, CUV_BACKEND);
    if (!lua_rawequal(L, 2, 3))
      return luaL_error(L, "the core's backend submits in C: it stays");
    return 0;
  }
  lua_setiuservalue(L, 1, CUV_BACKEND);
  return 0;
}

static void add_record(core *c, lua_Integer id, int worker, double t0,
                       double t1, int status) {
  size_t i = (size_t)(c->tl_n % TIMELINE_MAX);
  if (i >= c->tl_cap) {
    size_t cap = c->tl_cap ? 2 * c->tl_cap : 64;
    if (cap > TIMELINE_MAX) cap = TIMELINE_MAX;
    record *tl = realloc(c->tl, cap * sizeof *tl);
    if (tl == NULL) return; /* the timeline misses it: nothing else does */
    c->tl = tl;
    c->tl_cap = cap;
  }
  c->tl[i] = (record){id, t0 - c->t0, t1 - c->t0, worker, status};
  c->tl_n++;
}

/* Nothing is in flight: the executor is no longer kept, and its idle hook
 * runs (waking shutdown, ending the workers of a shut-down executor). */
static void went_idle(lua_State *L, int cidx) {
  lua_getiuservalue(L, cidx, CUV_EXECUTOR);
  lua_pushnil(L);
  lua_setiuservalue(L, cidx, CUV_EXECUTOR);
  if (lua_isnil(L, -1)) {
    lua_pop(L, 1);
    return;
  }
  push_hook(L, "idle");
  lua_insert(L, -2);
  lua_call(L, 1, 0);
}

static const char *const status_names[] = {"ok",     "error",   "cancelled",
                                           "broken", "crashed", NULL};

void tulua__core_deliver(lua_State *L, int idx, lua_Integer id, int status,
                         int worker, double started, double finished, int n) {
  int cidx = lua_absindex(L, idx);
  core *c = lua_touserdata(L, cidx);
  int first = lua_gettop(L) - n + 1;
  lua_getiuservalue(L, cidx, CUV_PENDING);
  future *f = take_pending(L, c, lua_gettop(L), id);
  if (f == NULL) { /* removed */
    lua_settop(L, first - 1);
    return;
  }
  int fidx = lua_gettop(L);
  add_record(c, f->seq, worker, started, finished, status);
  if (!is_done(f)) {
    if (status == TULUA_JOB_OK) {
      set_results(L, f, fidx, first, n);
      settle(L, f, fidx, F_FINISHED);
    } else if (status == TULUA_JOB_CANCELLED) {
      settle(L, f, fidx, F_CANCELLED);
    } else {
      if (status == TULUA_JOB_ERROR) {
        push_hook(L, "remote_error");
        lua_pushvalue(L, first);
        if (n >= 2)
          lua_pushvalue(L, first + 1);
        else
          lua_pushnil(L);
        lua_call(L, 2, 1);
      } else {
        const char *msg = n >= 1 ? lua_tostring(L, first) : NULL;
        tulua__push_error(L, status == TULUA_JOB_BROKEN ? "EBROKEN" : "EWORKER",
                          msg ? msg : "the worker failed");
      }
      set_error(L, f, fidx);
      settle(L, f, fidx, F_FINISHED);
    }
  }
  lua_settop(L, first - 1);
  if (c->inflight == 0) went_idle(L, cidx);
}

/* core:deliver(id, status, worker, started, finished, ...): a backend in
 * Lua delivers a job (status "ok", "error", "cancelled", "broken" or
 * "crashed"; see future.h) */
static int core_deliver(lua_State *L) {
  check_core(L, 1);
  lua_Integer id = luaL_checkinteger(L, 2);
  int status = luaL_checkoption(L, 3, NULL, status_names);
  int worker = (int)luaL_checkinteger(L, 4);
  double t0 = luaL_checknumber(L, 5), t1 = luaL_checknumber(L, 6);
  tulua__core_deliver(L, 1, id, status, worker, t0, t1, lua_gettop(L) - 6);
  return 0;
}

/* Takes job id out of the core at cidx (absolute), whose backend removed
 * it and will not deliver it: pushes its future and returns 1, or pushes
 * nothing and returns 0 if it was not pending. Runs the idle hook when
 * nothing is left in flight. [-0, +(0|1), e] */
static int forget_job(lua_State *L, int cidx, lua_Integer id) {
  core *c = lua_touserdata(L, cidx);
  lua_getiuservalue(L, cidx, CUV_PENDING);
  if (take_pending(L, c, lua_gettop(L), id) == NULL) {
    lua_pop(L, 1);
    return 0;
  }
  lua_remove(L, -2); /* the pending table */
  if (c->inflight == 0) {
    lua_pushvalue(L, cidx);
    went_idle(L, lua_gettop(L)); /* the core's copy: its slot stays */
    lua_pop(L, 1);
  }
  return 1;
}

/* core:forget(id) -> its future, if job id was pending: the backend
 * removed it and will not deliver it */
static int core_forget(lua_State *L) {
  check_core(L, 1);
  lua_Integer id = luaL_checkinteger(L, 2);
  lua_settop(L, 2);
  return forget_job(L, 1, id);
}

/* core:shutdown(): takes no new jobs */
static int core_shutdown(lua_State *L) {
  check_core(L, 1)->shutdown = 1;
  return 0;
}

/* core:inflight() -> jobs submitted and not yet delivered or removed */
static int core_inflight(lua_State *L) {
  lua_pushinteger(L, check_core(L, 1)->inflight);
  return 1;
}

/* core:jobs() -> the jobs in flight, by job number: {id=, seq=, state=}
 * (state: the Future's, "pending" or "running"), for tulua --ps. */
static int core_jobs(lua_State *L) {
  core *c = check_core(L, 1);
  lua_Integer n = 0;
  lua_settop(L, 1);
  lua_newtable(L);
  lua_getiuservalue(L, 1, CUV_PENDING);
  for (lua_Integer id = 1; id <= c->max_id; id++) {
    if (lua_rawgeti(L, 3, id) != LUA_TUSERDATA) {
      lua_pop(L, 1);
      continue;
    }
    const future *f = lua_touserdata(L, -1);
    lua_createtable(L, 0, 3);
    lua_pushinteger(L, id);
    lua_setfield(L, -2, "id");
    lua_pushinteger(L, f->seq);
    lua_setfield(L, -2, "seq");
    lua_pushstring(L, state_names[f->state]);
    lua_setfield(L, -2, "state");
    lua_rawseti(L, 2, ++n);
    lua_pop(L, 1);
  }
  lua_settop(L, 2);
  return 1;
}

static int by_id(const void *a, const void *b) {
  lua_Integer x = ((const record *)a)->id, y = ((const record *)b)->id;
  return (x > y) - (x < y);
}

/* core:timeline() -> the most recent TIMELINE_MAX jobs delivered, in
 * submission order: {index=, worker=, start=, finish=, status=} with
 * status "done", "failed" or "cancelled" */
static int core_timeline(lua_State *L) {
  core *c = check_core(L, 1);
  size_t n = c->tl_n < TIMELINE_MAX ? (size_t)c->tl_n : TIMELINE_MAX;
  if (n > c->tl_cap) n = c->tl_cap; /* a growth failed */
  record *copy = lua_newuserdatauv(L, n ? n * sizeof *copy : 1, 0);
  if (n) memcpy(copy, c->tl, n * sizeof *copy);
  qsort(copy, n, sizeof *copy, by_id);
  lua_createtable(L, (int)n, 0);
  for (size_t i = 0; i < n; i++) {
    const record *r = &copy[i];
    lua_createtable(L, 0, 5);
    lua_pushinteger(L, r->id);
    lua_setfield(L, -2, "index");
    lua_pushinteger(L, r->worker);
    lua_setfield(L, -2, "worker");
    lua_pushnumber(L, r->start);
    lua_setfield(L, -2, "start");
    lua_pushnumber(L, r->finish);
    lua_setfield(L, -2, "finish");
    lua_pushstring(L, r->status == TULUA_JOB_OK          ? "done"
                      : r->status == TULUA_JOB_CANCELLED ? "cancelled"
                                                         : "failed");
    lua_setfield(L, -2, "status");
    lua_rawseti(L, -2, (lua_Integer)i + 1);
  }
  return 1;
}

/* ---- Future methods that ask the executor's backend ---- */

/* Calls backend:method(id) for the job of the future f at 1 and pushes
 * what it returns; returns 0 and pushes nothing for a future made by hand
 * or when the executor has no backend any more (its workers are gone).
 * The backend is the executor's `_backend`, as futures.lua keeps it: the
 * interface written at the top of futures.lua. [-0, +(0|1), e] */
static int ask_backend(lua_State *L, const future *f, const char *method) {
  if (f->seq == 0) return 0;
  lua_getiuservalue(L, 1, UV_EXECUTOR);
  if (lua_getfield(L, -1, "_backend") == LUA_TNIL) {
    lua_pop(L, 2);
    return 0;
  }
  lua_getfield(L, -1, method);
  lua_insert(L, -2);
  lua_pushinteger(L, f->id);
  lua_call(L, 2, 1); /* stack: executor, answer */
  lua_remove(L, -2);
  return 1;
}

/* Pops the value on top; returns whether it is the string s. */
static int pop_is(lua_State *L, const char *s) {
  int yes =
      lua_type(L, -1) == LUA_TSTRING && strcmp(lua_tostring(L, -1), s) == 0;
  lua_pop(L, 1);
  return yes;
}

/* Returns whether a worker runs the job of the future f at 1 right now:
 * its state says it runs (set_running_or_notify_cancel), or the backend
 * does. */
static int is_running(lua_State *L, const future *f) {
  if (f->state == F_RUNNING) return 1;
  return f->state == F_PENDING && ask_backend(L, f, "state") &&
         pop_is(L, "running");
}

/* f:running() -> whether a worker runs its job right now */
static int f_running(lua_State *L) {
  future *f = check_future(L, 1);
  lua_settop(L, 1);
  lua_pushboolean(L, is_running(L, f));
  return 1;
}

/* f:cancel() -> false if it is finished, else true: the future is
 * cancelled, a queued job is dropped, and a running one is interrupted
 * (its to-be-closed variables are closed in the worker). */
static int f_cancel(lua_State *L) {
  future *f = check_future(L, 1);
  lua_settop(L, 1);
  if (f->state == F_FINISHED || f->state == F_CANCELLED) {
    lua_pushboolean(L, f->state == F_CANCELLED);
    return 1;
  }
  if (ask_backend(L, f, "cancel") && pop_is(L, "removed")) {
    lua_getiuservalue(L, 1, UV_EXECUTOR);
    lua_pushvalue(L, UP_CORE_NAME);
    lua_rawget(L, -2);
    if (test_class(L, -1, UP_CORE_MT) != NULL)
      forget_job(L, lua_gettop(L), f->id);
    lua_settop(L, 1);
  }
  if (!is_done(f)) settle(L, f, 1, F_CANCELLED);
  lua_pushboolean(L, 1);
  return 1;
}

/* tostring(f) -> "<Future pending>", "<Future running>", "<Future
 * cancelled>", "<Future finished>" or "<Future finished raised>" */
static int f_tostring(lua_State *L) {
  future *f = check_future(L, 1);
  lua_settop(L, 1);
  const char *s = state_names[f->state];
  if (f->state == F_FINISHED && f->failed)
    s = "finished raised";
  else if (is_running(L, f))
    s = "running";
  lua_pushfstring(L, "<Future %s>", s);
  return 1;
}

/* Executor:submit(fn, ...) -> Future: fn and its arguments are copied to
 * the worker now, so that a value that cannot cross is an error here,
 * naming its path ("submit: argument #2.log: cannot transfer a userdata");
 * a pool that takes no more work raises BrokenExecutor. */
static int future_submit(lua_State *L) {
  int n = lua_gettop(L) - 1; /* fn and its arguments */
  core *c = NULL;
  if (lua_type(L, 1) == LUA_TTABLE) {
    lua_pushvalue(L, UP_CORE_NAME);
    lua_rawget(L, 1);
    c = test_class(L, -1, UP_CORE_MT);
  }
  if (c == NULL)
    return luaL_error(L, "bad argument #1 to 'submit' (executor expected)");
  if (n < 1 || lua_type(L, 2) != LUA_TFUNCTION)
    return luaL_error(L,
                      "bad argument #1 to 'submit' (function expected, got %s)",
                      n < 1 ? "no value" : luaL_typename(L, 2));
  if (c->shutdown)
    return luaL_error(L, "cannot schedule new futures after shutdown");
  int cidx = n + 2;
  /* The future is pending before the job is queued, and the job's number
   * is taken once it is: what may raise (memory, a value that cannot
   * cross) comes before, and a submit that raises loses nothing (the next
   * one takes the same number and its own future). */
  lua_Integer id = next_id(c);
  if (id > UINT32_MAX) /* as many futures in flight: half a terabyte */
    return luaL_error(L, "too many jobs in flight");
  new_future(L, id, c->last_seq + 1);
  lua_pushvalue(L, 1);
  lua_setiuservalue(L, -2, UV_EXECUTOR);
  lua_getiuservalue(L, cidx, CUV_PENDING);
  lua_pushvalue(L, -2);
  lua_rawseti(L, -2, id);
  lua_pop(L, 1);
  int rc;
  lua_getiuservalue(L, cidx, CUV_BACKEND);
  if (c->submit != NULL) { /* in place: it raises as this function would */
    rc = c->submit(L, cidx + 2, id, 2, n);
  } else {
    luaL_checkstack(L, n + 4, "too many arguments");
    if (lua_getfield(L, -1, "submit") != LUA_TFUNCTION)
      return luaL_error(L, "attempt to use a closed executor");
    lua_insert(L, -2);
    lua_pushinteger(L, id);
    for (int i = 0; i < n; i++)
      lua_pushvalue(L, 2 + i);
    rc = lua_pcall(L, n + 2, 0, 0) == LUA_OK ? 0 : TULUA_SUBMIT_REFUSED;
  }
  if (rc != 0) {
    lua_getiuservalue(L, cidx, CUV_PENDING);
    lua_pushnil(L);
    lua_rawseti(L, -2, id);
    lua_pop(L, 1);
    const char *msg = lua_tostring(L, -1);
    if (msg == NULL) msg = "the job cannot be submitted";
    if (rc == TULUA_SUBMIT_BROKEN ||
        (c->submit == NULL && strstr(msg, "the pool is broken") != NULL)) {
      tulua__push_error(L, "EBROKEN", msg);
      return lua_error(L);
    }
    return luaL_error(L, "submit: %s", msg);
  }
  take_id(c, id);
  c->last_seq++;
  lua_settop(L, cidx + 1); /* the future */
  if (c->inflight++ == 0) {
    lua_pushvalue(L, 1);
    lua_setiuservalue(L, cidx, CUV_EXECUTOR);
  }
  return 1;
}

/* Sets the functions of l in the table on top, with the module's upvalues
 * (the metatables at mt and cmt). */
static void set_funcs(lua_State *L, const luaL_Reg *l, int mt, int cmt) {
  lua_pushvalue(L, mt);
  lua_pushvalue(L, cmt);
  lua_pushliteral(L, "_core");
  luaL_setfuncs(L, l, 3);
}

int luaopen_tulua_future(lua_State *L) {
  static const luaL_Reg methods[] = {
      {"result", f_result},
      {"exception", f_exception},
      {"done", f_done},
      {"cancelled", f_cancelled},
      {"add_done_callback", f_add_done_callback},
      {"set_running_or_notify_cancel", f_set_running_or_notify_cancel},
      {"set_result", f_set_result},
      {"set_exception", f_set_exception},
      {"running", f_running},
      {"cancel", f_cancel},
      {NULL, NULL}};
  static const luaL_Reg metamethods[] = {{"__tostring", f_tostring},
                                         {NULL, NULL}};
  static const luaL_Reg core_methods[] = {
      {"set_backend", core_set_backend}, {"deliver", core_deliver},
      {"forget", core_forget},           {"shutdown", core_shutdown},
      {"inflight", core_inflight},       {"jobs", core_jobs},
      {"timeline", core_timeline},       {NULL, NULL}};
  static const luaL_Reg funcs[] = {{"new", future_new},
                                   {"is_future", future_is_future},
                                   {"state", future_state},
                                   {"failed", future_failed},
                                   {"job", future_job},
                                   {"cancel", future_cancel},
                                   {"add_waiter", future_add_waiter},
                                   {"remove_waiter", future_remove_waiter},
                                   {"wait", future_wait},
                                   {"set_hooks", future_set_hooks},
                                   {"core", future_core},
                                   {"submit", future_submit},
                                   {NULL, NULL}};
  luaL_newmetatable(L, FUTURE_MT);
  int mt = lua_gettop(L);
  luaL_newmetatable(L, CORE_MT);
  int cmt = lua_gettop(L);
  lua_pushcfunction(L, core_gc);
  lua_setfield(L, cmt, "__gc");
  lua_newtable(L);
  set_funcs(L, methods, mt, cmt);
  lua_setfield(L, mt, "__index");
  lua_pushvalue(L, mt);
  set_funcs(L, metamethods, mt, cmt);
  lua_pop(L, 1);
  lua_newtable(L);
  set_funcs(L, core_methods, mt, cmt);
  lua_setfield(L, cmt, "__index");
  luaL_newlibtable(L, funcs);
  set_funcs(L, funcs, mt, cmt);
  return 1;
}
