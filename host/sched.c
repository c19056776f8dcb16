/* sched.c: the scheduler: tasks (coroutines) run by libuv check/idle/timer
 * handles; the ready queue, the sleepers, wait/wake/cancel, park/unpark,
 * posted jobs and the drain that runs them. The Task class and the module
 * 'tulua' over it are task.c's.
 *
 * An unfinished task has a 64-byte tulua__task, taken from the runtime's
 * small-block heap (no allocation header) and pointed at by the thread's
 * extra space; the live table anchors the thread meanwhile. When the task
 * finishes, its outcome stays on the thread's stack, the extra space
 * records how it ended, and the struct goes back to the heap: from then on
 * Lua references alone keep the thread. The ready list, the sleep heap and
 * waiters hold plain struct pointers, valid because only unfinished tasks
 * are ever in them. A sleeping task thus costs its coroutine plus about 100
 * bytes.
 *
 * What few tasks need lives in the extras table, keyed by the thread, only
 * while the task is unfinished: its done callbacks, a cancel message and
 * the count of cancel requests (asyncio's cancelling()). The entry is the
 * callback itself when that is all (gather and TaskGroup add one callback
 * to each child), else a table {callbacks..., msg=, count=}. */
#include <assert.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lualib.h>

#include "runtime.h"
#include "trace.h"

#define ERROR_MT "tulua.error"

#define MAX_SLEEPERS ((size_t)1 << 22)

/* W3 counts the bytes of a sleeping task: keep the struct in its class. */
_Static_assert(sizeof(tulua__task) <= 64, "a task is a 64-byte block");

tulua__task *tulua__task_of(lua_State *co) {
  uintptr_t p = *tulua__xspace(co);
  return (p & X_TASK) ? (tulua__task *)(p & ~X_TASK) : NULL;
}

int tulua__is_task(lua_State *co) {
  return (*tulua__xspace(co) & (X_TASK | X_FINISHED)) != 0;
}

int tulua__task_finished(lua_State *co) {
  return (*tulua__xspace(co) & X_FINISHED) != 0;
}

tulua_runtime *tulua__runtime(lua_State *L) {
  uintptr_t p = *tulua__xspace(L);
  if (p & X_TASK) return tulua__task_rt((tulua__task *)(p & ~X_TASK));
  return (tulua_runtime *)(p & ~X_TAGS);
}

uv_loop_t *tulua__loop(lua_State *L) {
  return tulua__runtime(L)->loop;
}

/* ---- error objects ---- */

void tulua__push_error(lua_State *L, const char *code, const char *msg) {
  lua_createtable(L, 0, 2);
  lua_pushstring(L, code);
  lua_setfield(L, -2, "code");
  lua_pushstring(L, msg);
  lua_setfield(L, -2, "message");
  luaL_setmetatable(L, ERROR_MT);
}

void tulua__push_cancelled(lua_State *L, const char *msg) {
  tulua__push_error(L, "ECANCELED", msg ? msg : "task cancelled");
}

/* Returns 1 if the value at idx is a cancellation error object. */
static int is_cancel_error(lua_State *L, int idx) {
  int yes = 0;
  idx = lua_absindex(L, idx); /* the metatables go on top of the stack */
  if (!lua_istable(L, idx) || !lua_getmetatable(L, idx)) return 0;
  luaL_getmetatable(L, ERROR_MT);
  if (lua_rawequal(L, -1, -2)) {
    lua_getfield(L, idx, "code");
    yes = lua_isstring(L, -1) && strcmp(lua_tostring(L, -1), "ECANCELED") == 0;
    lua_pop(L, 1);
  }
  lua_pop(L, 2);
  return yes;
}

static int error_tostring(lua_State *L) {
  lua_getfield(L, 1, "message");
  if (!lua_isstring(L, -1)) {
    lua_pop(L, 1);
    lua_getfield(L, 1, "code");
  }
  lua_pushstring(L, luaL_optstring(L, -1, "error"));
  return 1;
}

int tulua__invalid_state(lua_State *L, const char *msg) {
  tulua__push_error(L, "EINVALIDSTATE", msg);
  return lua_error(L);
}

/* ---- the ready list ---- */

static void idle_cb(uv_idle_t *h) { /* only keeps the poll from blocking */
  (void)h;
}

/* Queues t to run at the next drain. Calls no Lua API, never fails: the
 * list is intrusive. */
static void make_ready(tulua_runtime *rt, tulua__task *t, unsigned state) {
  t->u.next_ready = NULL;
  if (rt->ready_tail)
    rt->ready_tail->u.next_ready = t;
  else
    rt->ready_head = t;
  rt->ready_tail = t;
  rt->ready_len++;
  t->state = state;
  if (!uv_is_active((uv_handle_t *)&rt->idle))
    uv_idle_start(&rt->idle, idle_cb);
}

/* ---- the sleep heap: key ascending ---- */

#define SEQ_BITS     20
#define MAX_SLEEP_MS ((uint64_t)1 << (62 - SEQ_BITS)) /* 139 years */

static uint64_t deadline_of(const tulua__task *t) {
  return t->key >> SEQ_BITS;
}

static int heap_less(const tulua__task *a, const tulua__task *b) {
  return a->key < b->key;
}

static void heap_set(tulua_runtime *rt, size_t i, tulua__task *t) {
  rt->heap[i] = t;
  t->heap_idx = (unsigned)i;
}

static void heap_up(tulua_runtime *rt, size_t i) {
  tulua__task *t = rt->heap[i];
  while (i > 0) {
    size_t p = (i - 1) / 2;
    if (!heap_less(t, rt->heap[p])) break;
    heap_set(rt, i, rt->heap[p]);
    i = p;
  }
  heap_set(rt, i, t);
}

static void heap_down(tulua_runtime *rt, size_t i) {
  tulua__task *t = rt->heap[i];
  for (;;) {
    size_t c = 2 * i + 1;
    if (c >= rt->heap_len) break;
    if (c + 1 < rt->heap_len && heap_less(rt->heap[c + 1], rt->heap[c])) c++;
    if (!heap_less(rt->heap[c], t)) break;
    heap_set(rt, i, rt->heap[c]);
    i = c;
  }
  heap_set(rt, i, t);
}

static void heap_remove(tulua_runtime *rt, tulua__task *t) {
  size_t i = t->heap_idx;
  tulua__task *last = rt->heap[--rt->heap_len];
  if (i == rt->heap_len) return;
  heap_set(rt, i, last);
  if (i > 0 && heap_less(last, rt->heap[(i - 1) / 2]))
    heap_up(rt, i);
  else
    heap_down(rt, i);
}

static void timer_cb(uv_timer_t *h);

/* Points the loop's timer at the earliest sleeper, or stops it. */
static void arm_timer(tulua_runtime *rt) {
  if (rt->heap_len == 0) {
    uv_timer_stop(&rt->timer);
    return;
  }
  uint64_t now = uv_now(rt->loop), due = deadline_of(rt->heap[0]);
  uv_timer_start(&rt->timer, timer_cb, due > now ? due - now : 0, 0);
}

static void timer_cb(uv_timer_t *h) { /* no Lua API here */
  tulua_runtime *rt = h->data;
  uint64_t now = uv_now(rt->loop);
  while (rt->heap_len > 0 && deadline_of(rt->heap[0]) <= now) {
    tulua__task *t = rt->heap[0];
    heap_remove(rt, t);
    make_ready(rt, t, T_READY); /* t->w stays the sleep waiter: delivered */
  }
  arm_timer(rt);
}

/* ---- the extras table (see the top of the file) ---- */

/* Pushes the extras entry of the unfinished task t, or nil. [-0, +1, -] */
void tulua__push_extra(lua_State *L, tulua__task *t) {
  tulua_runtime *rt = tulua__task_rt(t);
  lua_rawgeti(L, LUA_REGISTRYINDEX, rt->extras_ref);
  tulua__push_thread(L, rt, t);
  lua_rawget(L, -2);
  lua_remove(L, -2);
}

/* Sets the extras entry of the unfinished task t to the value on top of
 * L, popping it. [-1, +0, m] */
void tulua__set_extra(lua_State *L, tulua__task *t) {
  tulua_runtime *rt = tulua__task_rt(t);
  lua_rawgeti(L, LUA_REGISTRYINDEX, rt->extras_ref);
  tulua__push_thread(L, rt, t);
  lua_pushvalue(L, -3);
  lua_rawset(L, -3);
  lua_pop(L, 2);
  t->has_extra = 1;
}

/* Pushes the extras entry of the unfinished task t as a table, turning a
 * lone callback (or nothing) into one. [-0, +1, m] */
void tulua__push_extra_table(lua_State *L, tulua__task *t) {
  tulua__push_extra(L, t);
  if (lua_istable(L, -1)) return;
  lua_createtable(L, 1, 2);
  if (!lua_isnil(L, -2)) {
    lua_pushvalue(L, -2);
    lua_rawseti(L, -2, 1);
  }
  lua_remove(L, -2);
  lua_pushvalue(L, -1);
  tulua__set_extra(L, t);
}

/* ---- waiting ---- */

static void format_error(lua_State *L, lua_State *co, int level);

/* Pushes the cancellation error t gets now: "interrupted!" for Ctrl-C, the
 * message given to cancel(msg), or the default. Takes the message: the next
 * cancellation starts afresh. [-0, +1, m] */
static void push_cancel_error(lua_State *L, tulua__task *t) {
  if (t->interrupted) {
    t->interrupted = 0;
    tulua__push_cancelled(L, "interrupted!");
    return;
  }
  if (t->has_extra) {
    tulua__push_extra(L, t);
    int is_table = lua_istable(L, -1);
    if (is_table && lua_getfield(L, -1, "msg") == LUA_TSTRING) {
      tulua__push_cancelled(L, lua_tostring(L, -1));
      lua_pushnil(L);
      lua_setfield(L, -4, "msg");
      lua_replace(L, -3);
      lua_pop(L, 1);
      return;
    }
    lua_pop(L, is_table ? 2 : 1); /* the entry, and msg if it was a table */
  }
  tulua__push_cancelled(L, NULL);
}

static void raise_cancelled(lua_State *L, tulua__task *t) {
  push_cancel_error(L, t);
  lua_error(L);
}

/* Returns 1 if a wait in L would not raise tulua__check_wait's misuse
 * errors (a pending cancellation aside). */
int tulua__can_wait(lua_State *L) {
  tulua_runtime *rt = tulua__runtime(L);
  if (rt->current == NULL || rt->depth == 0 || rt->chain[rt->depth - 1] != L)
    return 0;
  for (int i = 0; i < rt->depth; i++)
    if (!lua_isyieldable(rt->chain[i])) return 0;
  return 1;
}

void tulua__check_wait(lua_State *L, const char *op) {
  tulua_runtime *rt = tulua__runtime(L);
  tulua__task *t = rt->current;
  if (t == NULL || rt->depth == 0)
    luaL_error(L, "attempt to wait in '%s' outside a task", op);
  if (rt->chain[rt->depth - 1] != L)
    luaL_error(L,
               "attempt to wait in '%s' inside a coroutine not resumed "
               "by coroutine.resume",
               op);
  for (int i = 0; i < rt->depth; i++)
    if (!lua_isyieldable(rt->chain[i]))
      luaL_error(L,
                 "attempt to wait in '%s' inside a function called from C "
                 "that cannot yield (such as a 'table.sort' comparator or a "
                 "'string.gsub' callback)",
                 op);
  if (t->cancelling) {
    t->cancelling = 0;
    raise_cancelled(L, t);
  }
  t->wait_op = op;
  rt->describe_next = NULL;
}

void tulua__wait_detail(lua_State *L, tulua__describe_fn fn) {
  tulua__runtime(L)->describe_next = fn;
}

/* Marks the start of t's wait (its op and detail are recorded). */
static void begin_wait(tulua_runtime *rt, tulua__task *t) {
  t->state = T_WAITING;
  t->u.since = uv_now(rt->loop);
  rt->wait_mark = 1;
}

/* The continuation of every wait: the task was resumed by the drain. */
static int wait_k(lua_State *L, int status, lua_KContext ctx) {
  tulua__waiter *w = (tulua__waiter *)ctx;
  tulua_runtime *rt = tulua__runtime(L);
  tulua__task *t = rt->current;
  (void)status;
  t->w = NULL;
  t->wait_op = NULL; /* the wait ended (a yield had none) */
  if (t->woken_by_cancel) { /* the op is not ours any more */
    t->woken_by_cancel = 0;
    t->cancelling = 0;
    raise_cancelled(L, t);
  }
  int top = lua_gettop(L);
  int n = w->deliver(L, w->ud); /* frees the op */
  if (t->cancelling) { /* cancelled after the wake: drop results */
    t->cancelling = 0;
    lua_settop(L, top);
    raise_cancelled(L, t);
  }
  return n;
}

int tulua__wait(lua_State *L, tulua__waiter *w, tulua__deliver_fn deliver,
                tulua__cancel_fn cancel, void *ud) {
  tulua_runtime *rt = tulua__runtime(L);
  tulua__task *t = rt->current;
  w->task = t;
  w->deliver = deliver;
  w->cancel = cancel;
  w->describe = rt->describe_next;
  rt->describe_next = NULL;
  w->ud = ud;
  t->w = w;
  begin_wait(rt, t);
  return lua_yieldk(L, 0, (lua_KContext)w, wait_k);
}

int tulua__cancel_pending(lua_State *L) {
  tulua__task *t = tulua__runtime(L)->current;
  return t != NULL && t->cancelling;
}

int tulua__wake(tulua__waiter *w) {
  tulua__task *t = w->task;
  if (t == NULL) return 0;
  w->task = NULL; /* t->w stays: shutdown must deliver it if t never runs */
  make_ready(tulua__task_rt(t), t, T_READY);
  return 1;
}

/* ---- sleep: the waiter of every sleep, shared and never written ---- */

static int sleep_deliver(lua_State *L, void *ud) {
  (void)L;
  (void)ud;
  return 0;
}

static const tulua__waiter sleep_waiter = {NULL, sleep_deliver, NULL,
                                           NULL, NULL,          NULL};
#define SLEEP_W ((tulua__waiter *)&sleep_waiter)

/* ... and of every park(): unpark() checks that a task waits on it. */
static const tulua__waiter park_waiter = {NULL, sleep_deliver, NULL,
                                          NULL, NULL,          NULL};
#define PARK_W ((tulua__waiter *)&park_waiter)

/* Returns 1 for the shared waiters, which no op owns. */
static int is_static_waiter(const tulua__waiter *w) {
  return w == SLEEP_W || w == PARK_W;
}

/* Stops t's wait: the op's cancel hook runs (its callback will find the
 * waiter gone), or the sleep leaves the heap; t resumes with the
 * cancellation error. */
static void cancel_wait(tulua_runtime *rt, tulua__task *t) {
  tulua__waiter *w = t->w;
  t->w = NULL;
  if (w == SLEEP_W) {
    heap_remove(rt, t);
    arm_timer(rt);
  } else if (w != PARK_W) {
    w->task = NULL;
    if (w->cancel) w->cancel(w->ud);
  }
  t->woken_by_cancel = 1;
  make_ready(rt, t, T_READY);
}

/* The continuation of sleep: wait_k's checks, then sleep's extra
 * arguments are its results (asyncio.sleep(s, result)). */
static int sleep_k(lua_State *L, int status, lua_KContext ctx) {
  wait_k(L, status, ctx);
  return lua_gettop(L) - 1;
}

int tulua__sleep(lua_State *L) {
  lua_Number s = luaL_checknumber(L, 1);
  luaL_argcheck(L, s >= 0 && s == s, 1, "negative or NaN duration");
  tulua__check_wait(L, "tulua.sleep");
  tulua_runtime *rt = tulua__runtime(L);
  tulua__task *t = rt->current;
  if (s == 0) { /* yield to the loop: run again after the next poll */
    make_ready(rt, t, T_READY); /* cancel() sees a ready task, not a wait */
    t->wait_op = NULL;
    rt->wait_mark = 1;
    return lua_yieldk(L, 0, (lua_KContext)SLEEP_W, sleep_k);
  }
  lua_Number ms = s * 1000.0;
  if (ms > (lua_Number)MAX_SLEEP_MS) ms = (lua_Number)MAX_SLEEP_MS;
  uint64_t d = (uint64_t)ms;
  if ((lua_Number)d < ms) d++; /* never wake early */
  if (rt->heap_len == rt->heap_cap) {
    size_t ncap = rt->heap_cap ? rt->heap_cap * 2 : 64;
    if (ncap > MAX_SLEEPERS) ncap = MAX_SLEEPERS;
    if (rt->heap_len == ncap)
      return luaL_error(L, "too many sleeping tasks (%d)", (int)ncap);
    tulua__task **n = realloc(rt->heap, ncap * sizeof *n);
    if (n == NULL) return luaL_error(L, "not enough memory");
    rt->heap = n;
    rt->heap_cap = ncap;
  }
  uv_update_time(rt->loop);
  /* the sequence wraps after 2^SEQ_BITS sleeps: FIFO holds among sleeps
   * started less than a million sleeps apart */
  t->key = ((uv_now(rt->loop) + d) << SEQ_BITS) |
           (rt->seq++ & (((uint64_t)1 << SEQ_BITS) - 1));
  rt->heap[rt->heap_len] = t;
  heap_up(rt, rt->heap_len++);
  if (rt->heap[0] == t) arm_timer(rt);
  t->w = SLEEP_W;
  t->wait_op = "sleep";
  begin_wait(rt, t);
  return lua_yieldk(L, 0, (lua_KContext)SLEEP_W, sleep_k);
}

/* ---- park/unpark: the building block of asyncio's primitives ---- */

static int park_k(lua_State *L, int status, lua_KContext ctx) {
  tulua_runtime *rt = tulua__runtime(L);
  tulua__task *t = rt->current;
  (void)status;
  (void)ctx;
  t->w = NULL;
  t->wait_op = NULL; /* the wait ended (a yield had none) */
  if (t->woken_by_cancel || t->cancelling) {
    t->woken_by_cancel = 0;
    t->cancelling = 0;
    lua_pushboolean(L, 0);
    push_cancel_error(L, t);
    return 2;
  }
  lua_pushboolean(L, 1);
  return 1;
}

/* tulua.park([what [, on]]) -> true | false, err: suspends the current
 * task until tulua.unpark(task). A cancellation is returned, not raised, so
 * that the caller can first undo its bookkeeping (then it must raise err).
 * what (a string, "lock", "queue get") is the wait's op for tulua --ps and
 * traces, on the object waited on; both stay on the parked frame's stack,
 * which anchors them. */
int tulua__park(lua_State *L) {
  const char *what = luaL_optstring(L, 1, "park");
  tulua_runtime *rt = tulua__runtime(L);
  tulua__task *t = rt->current;
  if (t != NULL && t->cancelling && rt->depth > 0 &&
      rt->chain[rt->depth - 1] == L) {
    t->cancelling = 0;
    lua_pushboolean(L, 0);
    push_cancel_error(L, t);
    return 2;
  }
  tulua__check_wait(L, "tulua.park");
  t->w = PARK_W;
  t->wait_op = what;
  begin_wait(rt, t);
  return lua_yieldk(L, 0, 0, park_k);
}

/* tulua.unpark(task) -> boolean: makes a task parked in tulua.park() ready;
 * false if it is not parked (it never was, was woken or cancelled). */
int tulua__unpark(lua_State *L) {
  lua_State *co = lua_tothread(L, 1);
  if (co == NULL) luaL_typeerror(L, 1, "Task");
  tulua__task *t = tulua__task_of(co);
  int parked = t != NULL && t->state == T_WAITING && t->w == PARK_W;
  if (parked) make_ready(tulua__task_rt(t), t, T_READY);
  lua_pushboolean(L, parked);
  return 1;
}

/* ---- tasks ---- */

/* Pushes the live table. [-0, +1, -] */
void tulua__push_live(lua_State *L, tulua_runtime *rt) {
  lua_rawgeti(L, LUA_REGISTRYINDEX, rt->live_ref);
}

/* Pushes the thread of an unfinished task. [-0, +1, -] */
void tulua__push_thread(lua_State *L, tulua_runtime *rt, tulua__task *t) {
  tulua__push_live(L, rt);
  lua_rawgeti(L, -1, t->ref);
  lua_remove(L, -2);
}

/* The bottom function of tulua_call's task: a C frame, so that tracebacks
 * end in "[C]: in ?" exactly as in lua.c. */
static int trampoline_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status;
  (void)ctx;
  return lua_gettop(L);
}

static int trampoline(lua_State *L) {
  lua_callk(L, lua_gettop(L) - 1, LUA_MULTRET, 0, trampoline_k);
  return trampoline_k(L, LUA_OK, 0);
}

/* The message handler of a protected task: makes the report text while
 * the erring frames are still there and keeps it in the task's extras
 * (finish takes it); the error itself goes on unchanged, so that __close
 * handlers see it. */
static int protected_msgh(lua_State *L) {
  tulua__task *t = tulua__runtime(L)->current;
  lua_settop(L, 1);
  if (t != NULL && !is_cancel_error(L, 1)) {
    lua_pushvalue(L, 1);
    format_error(L, L, 1); /* level 1: not this handler */
    tulua__push_extra_table(L, t);
    lua_insert(L, -2);
    lua_setfield(L, -2, "report");
    lua_settop(L, 1);
  }
  return 1;
}

static int protected_k(lua_State *L, int status, lua_KContext ctx) {
  (void)ctx;
  if (status != LUA_OK && status != LUA_YIELD) return lua_error(L);
  return lua_gettop(L) - 1; /* the results, above the handler */
}

/* The bottom function of a protected task (tulua.spawn_protected): the
 * task's function runs in a yieldable protected call, so an error unwinds
 * inside the task, where Lua lets __close handlers yield (at a task's top
 * level it would unwind in lua_resetthread, where they cannot wait). */
static int protected_trampoline(lua_State *L) {
  lua_pushcfunction(L, protected_msgh);
  lua_insert(L, 1);
  int status = lua_pcallk(L, lua_gettop(L) - 2, LUA_MULTRET, 1, 0, protected_k);
  return protected_k(L, status, 0);
}

enum { TRAMP_NONE, TRAMP_CALL, TRAMP_PROTECTED };

/* Starts the function below nargs arguments on top of L as a task (under
 * the given trampoline) and leaves its thread (the Task) in their place. */
/* Whether rt records its tasks in the trace: it started the trace, which
 * is still on. */
static int traced(const tulua_runtime *rt) {
  return rt->traced && tulua__trace_on();
}

/* Records a task's spawn, naming it (Task-<n>, as Python names a task
 * when it is made) for the whole trace: its steps record no name. */
static void trace_spawn(lua_State *L, tulua_runtime *rt, lua_State *co) {
  tulua__trace_rec r;
  tulua__trace_begin(&r, TULUA_TR_SPAWN, (uintptr_t)co);
  r.n1 = rt->current ? (int64_t)(uintptr_t)rt->current->co : 0;
  lua_pushthread(co);
  lua_xmove(co, L, 1);
  tulua__push_task_name(L, rt, -1);
  tulua__trace_text(&r, lua_tostring(L, -1), NULL, NULL);
  lua_pop(L, 2);
  tulua__trace_add(&r);
}

/* Records the end of a task's life (how: X_FAILED, X_CANCELLED or 0) and,
 * when nobody will see its error, the error's text at index 2 of co. */
static void trace_finish(lua_State *co, uintptr_t how, int unobserved) {
  tulua__trace_rec r;
  tulua__trace_begin(&r, TULUA_TR_FINISH, (uintptr_t)co);
  tulua__trace_text(&r, NULL, NULL,
                    how & X_FAILED      ? "failed"
                    : how & X_CANCELLED ? "cancelled"
                                        : "returned");
  tulua__trace_add(&r);
  if (unobserved) {
    r.kind = TULUA_TR_ERROR;
    tulua__trace_text(&r, NULL, NULL, lua_tostring(co, 2));
    tulua__trace_add(&r);
  }
}

static tulua__task *new_task(lua_State *L, int nargs, int tramp) {
  tulua_runtime *rt = tulua__runtime(L);
  int fidx = lua_gettop(L) - nargs;
  lua_State *co = lua_newthread(L);
  tulua__task *t = tulua__heap_get(&rt->lua_heap, sizeof *t);
  if (t == NULL) luaL_error(L, "not enough memory");
  memset(t, 0, sizeof *t);
  t->co = co;
  t->ref = LUA_NOREF;
  t->id = ++rt->task_seq;
  if (rt->current != NULL) t->parent = rt->current->id;
  lua_insert(L, fidx); /* co fn args... */
  if (tramp != TRAMP_NONE)
    lua_pushcfunction(co,
                      tramp == TRAMP_CALL ? trampoline : protected_trampoline);
  lua_xmove(L, co, nargs + 1);
  tulua__push_live(L, rt);
  lua_pushvalue(L, fidx);
  t->ref = luaL_ref(L, -2);
  lua_pop(L, 1);
  *tulua__xspace(co) = (uintptr_t)t | X_TASK;
  rt->ntasks++;
  make_ready(rt, t, T_NEW);
  if (traced(rt)) trace_spawn(L, rt, co);
  return t;
}

void tulua__spawn(lua_State *L, int nargs) {
  new_task(L, nargs, TRAMP_NONE);
}

void tulua__spawn_protected(lua_State *L, int nargs) {
  new_task(L, nargs, TRAMP_PROTECTED);
}

lua_State *tulua__spawn_main(lua_State *L, int nargs) {
  tulua__task *t = new_task(L, nargs, TRAMP_CALL);
  t->is_call = 1;
  t->observed = 1;
  return t->co;
}

static void wake_joiners(tulua__task *t) {
  tulua__waiter *w = t->joiners;
  t->joiners = NULL;
  while (w != NULL) {
    tulua__waiter *next = w->next;
    w->next = NULL;
    tulua__wake(w);
    w = next;
  }
}

/* Formats the error on top of L for a report: its text (tulua_error_text:
 * an error object says where it was raised) and a traceback of co from
 * level on, as lua.c does for a string. Replaces the error with the text.
 * [-1, +1, m] */
static void format_error(lua_State *L, lua_State *co, int level) {
  const char *msg = tulua_error_text(L, co, level);
  luaL_traceback(L, co, msg, level);
  lua_replace(L, -3);
  lua_pop(L, 1);
}

/* Counts an uncaught error and hands its text to the host. */
static void report_text(tulua_runtime *rt, const char *msg) {
  rt->uncaught++;
  if (rt->cfg.on_error) rt->cfg.on_error(rt, msg, rt->cfg.userdata);
}

/* Reports the error of a task that ended unobserved: its text is at
 * index 2 of the finished thread co (on top of L). */
static void report(lua_State *L, tulua_runtime *rt, lua_State *co) {
  lua_pushvalue(co, 2);
  lua_xmove(co, L, 1);
  report_text(rt, lua_tostring(L, -1));
  lua_pop(L, 1);
}

/* The message handler of done callbacks: the report's text. */
static int callback_msgh(lua_State *L) {
  format_error(L, L, 1); /* level 1: not this handler */
  return 1;
}

/* Calls fn(task) for a done callback (fn and the task on top of L, popped);
 * an error in it is reported like an uncaught task error. [-2, +0, m] */
static void call_done_callback(lua_State *L, tulua_runtime *rt) {
  lua_pushcfunction(L, callback_msgh);
  lua_insert(L, -3);
  if (lua_pcall(L, 1, 0, -3) != LUA_OK) {
    report_text(rt, lua_tostring(L, -1));
    lua_pop(L, 1);
  }
  lua_pop(L, 1); /* the message handler */
}

/* Takes the extras entry of the finished task at idx and calls its done
 * callbacks in the order they were added. [-0, +0, m] */
static void run_done_callbacks(lua_State *L, tulua_runtime *rt, int idx) {
  lua_rawgeti(L, LUA_REGISTRYINDEX, rt->extras_ref);
  lua_pushvalue(L, idx);
  lua_rawget(L, -2); /* stack: extras entry */
  lua_pushvalue(L, idx);
  lua_pushnil(L);
  lua_rawset(L, -4);
  if (lua_isfunction(L, -1)) {
    lua_pushvalue(L, idx);
    call_done_callback(L, rt);
  } else if (lua_istable(L, -1)) {
    lua_Integer n = luaL_len(L, -1);
    for (lua_Integer i = 1; i <= n; i++) {
      lua_rawgeti(L, -1, i);
      lua_pushvalue(L, idx);
      call_done_callback(L, rt);
    }
    lua_pop(L, 1);
  } else {
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
}

/* Returns 1 if the unfinished task t has done callbacks. */
static int has_callbacks(lua_State *L, tulua__task *t) {
  if (!t->has_extra) return 0;
  tulua__push_extra(L, t);
  int yes =
      lua_isfunction(L, -1) || (lua_istable(L, -1) && lua_rawlen(L, -1) > 0);
  lua_pop(L, 1);
  return yes;
}

/* Pushes the report text of the error on top of t's thread: the one a
 * protected task's handler made (taking it), else one made now from the
 * thread's frames. [-0, +1, m] */
static void push_report(lua_State *L, tulua__task *t) {
  if (t->has_extra) {
    tulua__push_extra(L, t);
    if (lua_istable(L, -1) && lua_getfield(L, -1, "report") == LUA_TSTRING) {
      lua_pushnil(L);
      lua_setfield(L, -3, "report");
      lua_remove(L, -2);
      return;
    }
    lua_settop(L, lua_gettop(L) - (lua_istable(L, -1) ? 2 : 1));
  }
  lua_pushvalue(t->co, -1);
  lua_xmove(t->co, L, 1);
  format_error(L, t->co, 0);
}

/* Keeps the report text on top of L as where the error object at index 1
 * of co came from: a task that joins co and raises the object again
 * reports it with this text (tulua_error_text), as a string error carries
 * its task's traceback along. [-0, +0, m] */
static void remember_origin(lua_State *L, tulua_runtime *rt, lua_State *co) {
  lua_rawgeti(L, LUA_REGISTRYINDEX, rt->origins_ref);
  lua_pushvalue(co, 1);
  lua_xmove(co, L, 1);
  lua_pushvalue(L, -3);
  lua_rawset(L, -3);
  lua_pop(L, 1);
}

/* Finishes t after lua_resume returned status with nres results: leaves
 * the outcome on its thread (the results; or the error object and, for a
 * failure, its text with the traceback), wakes its joiners, unanchors the
 * thread and frees t. Runs on the main state L inside the drain's
 * protected call. */
static void finish(lua_State *L, tulua_runtime *rt, tulua__task *t, int status,
                   int nres) {
  lua_State *co = t->co;
  int raised = status != LUA_OK; /* the thread holds frames to close */
  uintptr_t how = X_FINISHED;
  if (status == LUA_OK && t->cancelling) { /* cancelled as it returned */
    lua_settop(co, 0);
    tulua__push_cancelled(co, t->interrupted ? "interrupted!" : NULL);
    status = LUA_ERRRUN;
  }
  if (status == LUA_OK) {
    int top = lua_gettop(co); /* keep only the results on the thread */
    if (top > nres) {
      lua_rotate(co, 1, nres);
      lua_settop(co, nres);
    }
  } else {
    /* Build the report text while the frames are still there, then close
     * the thread's to-be-closed variables, which may replace the error. */
    int cancelled = is_cancel_error(co, -1);
    if (raised) {
      if (!cancelled) push_report(L, t);
      lua_resetthread(co);
      if (cancelled && !is_cancel_error(co, -1)) {
        cancelled = 0;
        push_report(L, t);
      }
    }
    lua_rotate(co, 1, 1); /* co: err */
    lua_settop(co, 1);
    if (cancelled) {
      how |= X_CANCELLED;
      if (t->by_interrupt) lua_pushliteral(co, "interrupted!"); /* report */
    } else {
      how |= X_FAILED;
      if (lua_type(co, 1) == LUA_TTABLE || lua_type(co, 1) == LUA_TUSERDATA)
        remember_origin(L, rt, co);
      lua_xmove(L, co, 1); /* co: err text */
    }
  }
  /* a done callback gets the outcome too: a failure it will see is not
   * reported (one removed meanwhile with remove_done_callback is not
   * there any more) */
  int unobserved =
      !t->observed && !has_callbacks(L, t) &&
      ((how & X_FAILED) || ((how & X_CANCELLED) && t->by_interrupt));
  int ref = t->ref, has_extra = t->has_extra;
  wake_joiners(t);
  rt->ntasks--;
  *tulua__xspace(co) = (uintptr_t)rt | how;
  tulua__heap_put(&rt->lua_heap, t, sizeof *t);
  if (traced(rt)) trace_finish(co, how, unobserved);
  if (unobserved) report(L, rt, co);
  tulua__push_live(L, rt);
  lua_rawgeti(L, -1, ref);
  luaL_unref(L, -2, ref); /* stack: live co; co stays alive on the stack */
  if (has_extra) run_done_callbacks(L, rt, lua_gettop(L));
  lua_pop(L, 2);
}

/* Debug mode: warns when a task's step (the thread on top of L, popped)
 * kept the loop busy for longer than rt->slow_ns (100 ms unless set),
 * naming the task and showing where it stopped. [-1, +0, m] */
static void report_slow(lua_State *L, tulua_runtime *rt, uint64_t ns,
                        int yielded) {
  if (ns >= rt->slow_ns) {
    lua_State *co = lua_tothread(L, -1);
    char secs[32];
    snprintf(secs, sizeof secs, "%.3f", ns / 1e9);
    tulua__push_task_name(L, rt, -1);
    const char *msg = lua_pushfstring(L, "task '%s' blocked the loop for %s s",
                                      lua_tostring(L, -1), secs);
    if (yielded)
      luaL_traceback(L, co, msg, 0);
    else
      lua_pushfstring(L, "%s (in its last step)", msg);
    lua_warning(L, lua_tostring(L, -1), 0);
    lua_pop(L, 3);
  }
  lua_pop(L, 1);
}

/* Writes "op detail" of the waiting task t (its op, its waiter's
 * describer's text) without reading the clock, as snprintf. */
static int describe_op(tulua__task *t, char *buf, size_t size) {
  int n = snprintf(buf, size, "%s", t->wait_op);
  tulua__waiter *w = t->w;
  if (w == NULL || is_static_waiter(w) || w->describe == NULL || n < 0 ||
      (size_t)n + 1 >= size)
    return n;
  buf[n] = ' ';
  int m = w->describe(buf + n + 1, size - (size_t)n - 1, w->ud);
  if (m <= 0) buf[n] = '\0';
  return m <= 0 ? n : n + 1 + m;
}

/* Completes the step record tr of t, which ended in a wait: its kind (the
 * op, "yield" for sleep(0)) and detail (a sleep's milliseconds in n1, as
 * formatting them costs a yield's time; the describer's text for another
 * wait that has one, e.g. "read tcp 127.0.0.1:5000"). */
static void trace_wait(tulua_runtime *rt, tulua__task *t,
                       tulua__trace_rec *tr) {
  char buf[TULUA_TR_TEXT];
  const char *op = t->wait_op ? t->wait_op : "yield", *detail = NULL;
  tr->flags |= TULUA_TR_WAITS;
  if (t->w == SLEEP_W && t->state == T_WAITING) {
    uint64_t due = deadline_of(t), now = uv_now(rt->loop);
    tr->flags |= TULUA_TR_SLEEP;
    tr->n1 = due > now ? (int64_t)(due - now) : 0;
  } else if (t->state == T_WAITING && t->wait_op != NULL && t->w != NULL &&
             !is_static_waiter(t->w) && t->w->describe) {
    /* not tulua__describe_wait, which reads the clock (--ps's ages) */
    describe_op(t, buf, sizeof buf);
    detail = buf;
  }
  tulua__trace_text(tr, NULL, op, detail);
}

/* Resumes t once. Runs on the main state inside the drain's protected
 * call. */
static void run_task(lua_State *L, tulua_runtime *rt, tulua__task *t) {
  lua_State *co = t->co;
  int nres, status;
  if (t->state == T_NEW && t->cancelling) { /* cancelled before it ran */
    /* no frames to close (a reset would drop the error): finish sees
     * cancelling and ends the task with the cancellation error */
    lua_settop(co, 0);
    finish(L, rt, t, LUA_OK, 0);
    return;
  }
  int nargs = t->state == T_NEW ? lua_gettop(co) - 1 : 0;
  uint64_t t0 = 0;
  tulua__trace_rec *tr = NULL, rec;
  if (traced(rt)) {
    tr = &rec;
    tr->kind = TULUA_TR_STEP;
    tr->id = (uintptr_t)co;
    tr->flags = (t->state == T_NEW ? 0 : TULUA_TR_RESUMED) |
                (tulua__trace_tsc ? TULUA_TR_TICKS : 0);
    tr->pid = tr->tid = 0;
    tr->n1 = tr->n2 = 0;
    /* the end of the previous step of this drain: one clock read a step
     * (the scheduler's few instructions between count in this one) */
    tr->ts = rt->trace_mark ? rt->trace_mark : tulua__trace_ticks();
  }
  if (rt->debug) {
    tulua__push_thread(L, rt, t); /* for the report: t may finish */
    t0 = uv_hrtime();
  }
  t->state = T_RUNNING;
  t->u.since = uv_now(rt->loop);
  rt->current = t;
  rt->chain[0] = co;
  rt->depth = 1;
  rt->running = co;
  status = lua_resume(co, L, nargs, &nres);
  rt->running = NULL;
  rt->depth = 0;
  rt->current = NULL;
  if (rt->interrupt_pending && !rt->cancel_pending) {
    /* the interrupt came as the Lua code stopped running: cancel the main
     * task instead (the hook left behind clears itself) */
    rt->cancel_pending = 1;
    uv_async_send(&rt->async);
  }
  if (tr != NULL) {
    rt->trace_mark = tulua__trace_ticks();
    tr->dur = rt->trace_mark - tr->ts;
    if (status == LUA_YIELD && rt->wait_mark)
      trace_wait(rt, t, tr);
    else
      tulua__trace_text(tr, NULL, NULL, NULL);
    tulua__trace_add(tr);
  }
  if (t0 != 0) report_slow(L, rt, uv_hrtime() - t0, status == LUA_YIELD);
  if (status == LUA_YIELD) {
    lua_pop(co, nres);
    if (rt->wait_mark) {
      rt->wait_mark = 0;
      return;
    }
    /* a C module yielded a task's thread: nothing will ever resume it */
    lua_pushliteral(co, "attempt to yield from outside a coroutine");
    status = LUA_ERRRUN;
    nres = 0;
  }
  finish(L, rt, t, status, nres);
}

/* Runs posted jobs, then the tasks that were ready when the drain began:
 * tasks that become ready meanwhile run at the next iteration, after the
 * loop has polled for I/O. */
static int drain(lua_State *L) {
  tulua_runtime *rt = lua_touserdata(L, 1);
  tulua__queue *q;
  while ((q = tulua__queue_pop(&rt->jobs)) != NULL) {
    tulua__job *j = tulua__container_of(q, tulua__job, node);
    j->posted = 0;
    j->run(L, j);
  }
  rt->trace_mark = 0; /* the loop polled: the next step's start is read */
  /* take the list: what becomes ready meanwhile waits for the next drain */
  tulua__task *next = rt->ready_head;
  rt->ready_head = rt->ready_tail = NULL;
  rt->ready_len = 0;
  uint64_t stop =
      rt->budget > 0 ? uv_hrtime() + (uint64_t)(rt->budget * 1e9) : UINT64_MAX;
  while (next != NULL) {
    tulua__task *t = next;
    next = t->u.next_ready;
    run_task(L, rt, t);
    lua_settop(L, 1);
    if (next != NULL && stop != UINT64_MAX && uv_hrtime() >= stop) {
      /* out of budget: the rest goes first at the next drain */
      tulua__task *last = next;
      size_t n = 1;
      while (last->u.next_ready != NULL) {
        last = last->u.next_ready;
        n++;
      }
      last->u.next_ready = rt->ready_head;
      if (rt->ready_head == NULL) rt->ready_tail = last;
      rt->ready_head = next;
      rt->ready_len += n;
      break;
    }
  }
  return 0;
}

static void check_cb(uv_check_t *h) {
  tulua_runtime *rt = h->data;
  lua_State *L = rt->L;
  if (rt->in_drain) return;
  rt->in_drain = 1;
  int top = lua_gettop(L);
  lua_pushcfunction(L, drain);
  lua_pushlightuserdata(L, rt);
  if (lua_pcall(L, 1, 0, 0) != LUA_OK) {
    /* only memory errors get here: report and go on */
    report_text(rt, lua_tostring(L, -1));
    rt->running = NULL;
    rt->depth = 0;
    rt->current = NULL;
  }
  lua_settop(L, top);
  rt->in_drain = 0;
  if (rt->ready_len == 0 && tulua__queue_empty(&rt->jobs))
    uv_idle_stop(&rt->idle);
}

/* Asks t to stop: a waiting task resumes with the cancellation error, a
 * ready or running one gets it at its next wait, a new one never runs. */
void tulua__cancel_task(tulua_runtime *rt, tulua__task *t) {
  if (t->state == T_WAITING && t->w != NULL)
    cancel_wait(rt, t);
  else
    t->cancelling = 1;
}

int tulua__task_state_of(lua_State *co, tulua__task_state *out) {
  static const char *const names[] = {"ready", "new", "running", "waiting"};
  tulua__task *t = tulua__task_of(co);
  if (t == NULL) return 0;
  tulua_runtime *rt = tulua__task_rt(t);
  uv_update_time(rt->loop); /* the loop may be busy: its time is stale */
  uint64_t now = uv_now(rt->loop);
  out->state = names[t->state];
  out->op = t->state == T_WAITING ? t->wait_op : NULL;
  out->seconds = -1; /* a ready task's time is not kept */
  if (t->state == T_WAITING || t->state == T_RUNNING)
    out->seconds = now > t->u.since ? (double)(now - t->u.since) / 1e3 : 0;
  out->left = -1;
  if (t->state == T_WAITING && t->w == SLEEP_W) {
    uint64_t due = deadline_of(t);
    out->left = due > now ? (double)(due - now) / 1e3 : 0;
  }
  out->id = t->id;
  out->parent = t->parent;
  return 1;
}

int tulua__describe_wait(lua_State *co, char *buf, size_t size) {
  tulua__task_state st;
  buf[0] = '\0';
  if (!tulua__task_state_of(co, &st) || st.op == NULL) return 0;
  if (st.left >= 0) return snprintf(buf, size, "sleep %.3f s left", st.left);
  return describe_op(tulua__task_of(co), buf, size);
}

lua_State *tulua__running(tulua_runtime *rt) {
  return (lua_State *)rt->running;
}

int tulua__cancel_wait(lua_State *co) {
  tulua__task *t = tulua__task_of(co);
  if (t == NULL || t->state != T_WAITING || t->w == NULL) return 0;
  cancel_wait(tulua__task_rt(t), t);
  return 1;
}

static void async_cb(uv_async_t *h) {
  tulua_runtime *rt = h->data;
  if (rt->ps_pending) tulua__post(rt, &rt->ps_job); /* tulua --ps (ps.c) */
  if (rt->cancel_pending) {
    rt->cancel_pending = 0;
    rt->interrupt_pending = 0;
    if (rt->call_co == NULL) { /* tulua_run: every task is interrupted */
      tulua__post(rt, &rt->interrupt_job);
      return;
    }
    tulua__task *t = tulua__task_of(rt->call_co);
    if (t != NULL && t->state == T_READY) {
      /* between two steps (the signal came as it stopped running; a new
       * task is cancelled before it runs, below): it
       * runs Lua code next, which may never wait again, so that code is
       * interrupted as running code is, by the hook */
      rt->interrupt_pending = 1;
      lua_sethook(rt->call_co, tulua__interrupt_hook,
                  LUA_MASKCALL | LUA_MASKRET | LUA_MASKLINE | LUA_MASKCOUNT, 1);
    } else if (t != NULL) {
      t->interrupted = 1;
      tulua__cancel_task(rt, t);
    }
  }
}

/* Cancels every unfinished task, as an interrupt during tulua_run, and
 * makes tulua_run return once they have ended, even if handles (a server,
 * a timer) would keep the loop going: Ctrl-C stops a server script, as it
 * stops asyncio.run. With no task to cancel, the interrupt itself is
 * reported ("interrupted!"), so that it is not silent. */
static void interrupt_all(lua_State *L, tulua__job *job) {
  tulua_runtime *rt = tulua__container_of(job, tulua_runtime, interrupt_job);
  int n = 0;
  rt->stop_requested = 1;
  tulua__push_live(L, rt);
  lua_pushnil(L);
  while (lua_next(L, -2) != 0) {
    lua_State *co = lua_tothread(L, -1); /* or luaL_ref's free list */
    tulua__task *t = co ? tulua__task_of(co) : NULL;
    if (t != NULL) {
      t->interrupted = t->by_interrupt = 1;
      tulua__cancel_task(rt, t);
      n++;
    }
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
  if (n == 0 && !rt->interrupt_told) report_text(rt, "interrupted!");
  rt->interrupt_told = 0;
}

void tulua__post(tulua_runtime *rt, tulua__job *job) {
  if (job->posted) return;
  job->posted = 1;
  tulua__queue_insert_tail(&rt->jobs, &job->node);
  if (!uv_is_active((uv_handle_t *)&rt->idle))
    uv_idle_start(&rt->idle, idle_cb);
}

void tulua__unpost(tulua_runtime *rt, tulua__job *job) {
  (void)rt; /* the node knows its neighbours */
  if (!job->posted) return;
  tulua__queue_remove(&job->node);
  job->posted = 0;
}

/* Creates the threads' metatable (task.c), the error metatable, the live
 * and the extras table. Runs in tulua_open. */
static int sched_open(lua_State *L) {
  tulua_runtime *rt = lua_touserdata(L, 1);
  tulua__open_task_class(L, rt);
  luaL_newmetatable(L, ERROR_MT);
  lua_pushcfunction(L, error_tostring);
  lua_setfield(L, -2, "__tostring");
  lua_newtable(L);
  rt->live_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  lua_newtable(L);
  rt->extras_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  lua_newtable(L);
  lua_createtable(L, 0, 1);
  lua_pushliteral(L, "k");
  lua_setfield(L, -2, "__mode");
  lua_setmetatable(L, -2);
  rt->origins_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  return 0;
}

int tulua__sched_init(tulua_runtime *rt) {
  lua_State *L = rt->L;
  tulua__queue_init(&rt->jobs);
  *tulua__xspace(L) = (uintptr_t)rt;
  uv_check_init(rt->loop, &rt->check);
  uv_idle_init(rt->loop, &rt->idle);
  uv_timer_init(rt->loop, &rt->timer);
  int rc = uv_async_init(rt->loop, &rt->async, async_cb);
  if (rc < 0) return rc;
  rt->check.data = rt->idle.data = rt->timer.data = rt->async.data = rt;
  rt->interrupt_job.run = interrupt_all;
  uv_check_start(&rt->check, check_cb);
  uv_unref((uv_handle_t *)&rt->check);
  uv_unref((uv_handle_t *)&rt->async);
  rt->live_ref = LUA_NOREF;
  lua_pushcfunction(L, sched_open);
  lua_pushlightuserdata(L, rt);
  if (lua_pcall(L, 1, 0, 0) != LUA_OK) {
    lua_pop(L, 1);
    return UV_ENOMEM;
  }
  return 0;
}

void tulua__interrupt_hook(lua_State *L, lua_Debug *ar) {
  tulua_runtime *rt = tulua__runtime(L);
  (void)ar;
  lua_sethook(L, NULL, 0, 0);
  if (!rt->interrupt_pending || rt->cancel_pending) return; /* stale */
  rt->interrupt_pending = 0;
  if (rt->call_co == NULL) {
    /* a task of tulua_run's: the run stops too, as when the interrupt
     * finds the loop waiting (interrupt_all), or a timer's callbacks, a
     * server's connections... would go on after it */
    rt->interrupt_told = 1;
    tulua__post(rt, &rt->interrupt_job);
  }
  luaL_error(L, "interrupted!");
}

static int deliver_and_drop(lua_State *L) {
  tulua__waiter *w = lua_touserdata(L, 1);
  lua_settop(L, 0);
  w->deliver(L, w->ud);
  return 0;
}

/* Detaches every unfinished task from what it waits on, so that no late
 * callback touches a task after lua_close: woken tasks own their op until
 * deliver runs, so it runs now and its results are dropped; waiting ones
 * are cancelled, and each op's callback then finds its waiter gone and
 * frees the op. */
void tulua__sched_shutdown(tulua_runtime *rt) {
  lua_State *L = rt->L;
  for (tulua__task *t = rt->ready_head; t != NULL; t = t->u.next_ready) {
    if (t->w == NULL || t->woken_by_cancel) continue;
    lua_pushcfunction(L, deliver_and_drop);
    lua_pushlightuserdata(L, t->w);
    t->w = NULL;
    if (lua_pcall(L, 1, 0, 0) != LUA_OK) lua_pop(L, 1);
  }
  if (rt->live_ref != LUA_NOREF) {
    tulua__push_live(L, rt);
    lua_pushnil(L);
    while (lua_next(L, -2) != 0) {
      lua_State *co = lua_tothread(L, -1); /* or luaL_ref's free list */
      tulua__task *t = co ? tulua__task_of(co) : NULL;
      if (t != NULL && t->state == T_WAITING && t->w != NULL) {
        tulua__waiter *w = t->w;
        t->w = NULL;
        if (!is_static_waiter(w)) {
          w->task = NULL;
          if (w->cancel) w->cancel(w->ud);
        }
      }
      lua_pop(L, 1);
    }
    lua_pop(L, 1);
  }
  rt->ready_head = rt->ready_tail = NULL;
  rt->ready_len = 0;
  rt->heap_len = 0;
}
