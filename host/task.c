/* task.c: the Task class (the methods of task threads) and the module
 * 'tulua' (spawn, sleep, current, all_tasks, park...), over the scheduler
 * of sched.c, as Lua keeps lcorolib.c over ldo.c; and os.exit, which closes
 * the main chunk's task as lua_close closes lua.c's main thread.
 *
 * A Task is its own thread: every thread shares one metatable whose
 * __index finds the Task methods for task threads (tostring shows
 * "thread: 0x...", as for any thread; status() tells the state). Names
 * live in a weak-keyed table, since a finished task keeps its name. */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>

#include "runtime.h"
#include "trace.h"

/* Returns the thread at idx if it is a Task (finished or not), else
 * raises "Task expected". */
static lua_State *check_task(lua_State *L, int idx) {
  lua_State *co = lua_tothread(L, idx);
  if (co == NULL || !tulua__is_task(co)) luaL_typeerror(L, idx, "Task");
  return co;
}

/* ---- Task methods ---- */

/* Pushes the outcome of the finished task co: its results, or raises its
 * error (a string error with the task's traceback attached, any other
 * error object as it is) or its cancellation. */
int tulua__task_push_outcome(lua_State *L, lua_State *co) {
  uintptr_t how = *tulua__xspace(co);
  if (!(how & (X_FAILED | X_CANCELLED))) {
    int n = lua_gettop(co);
    luaL_checkstack(L, n, "too many results");
    for (int i = 1; i <= n; i++) {
      if (!lua_checkstack(co, 1)) luaL_error(L, "not enough memory");
      lua_pushvalue(co, i);
      lua_xmove(co, L, 1);
    }
    return n;
  }
  int idx = (how & X_FAILED) && lua_type(co, 1) == LUA_TSTRING ? 2 : 1;
  if (!lua_checkstack(co, 1)) luaL_error(L, "not enough memory");
  lua_pushvalue(co, idx);
  lua_xmove(co, L, 1);
  return lua_error(L);
}

/* A task waiting in join(): its waiter sits in the target's joiners. */
typedef struct {
  tulua__waiter w;
  tulua_runtime *rt;
  tulua__task *target; /* unfinished while the join waits */
  lua_State *target_co; /* on the joining frame's stack: alive */
} join_op;

static int join_deliver(lua_State *L, void *ud) {
  join_op *op = ud;
  lua_State *co = op->target_co;
  tulua__heap_put(&op->rt->lua_heap, op, sizeof *op);
  return tulua__task_push_outcome(L, co);
}

/* Unlinks the cancelled joiner from the target and frees it: no libuv
 * callback will. */
static void join_cancel(void *ud) {
  join_op *op = ud;
  tulua__waiter **p = &op->target->joiners;
  while (*p != NULL && *p != &op->w)
    p = &(*p)->next;
  if (*p != NULL) *p = op->w.next;
  tulua__heap_put(&op->rt->lua_heap, op, sizeof *op);
}

/* The detail of a join: the id of the task joined. */
static int describe_join(char *buf, size_t size, const void *ud) {
  const join_op *op = ud;
  return snprintf(buf, size, "task #%u", (unsigned)op->target->id);
}

static int task_join(lua_State *L) {
  lua_State *co = check_task(L, 1);
  if (tulua__task_finished(co)) return tulua__task_push_outcome(L, co);
  tulua__check_wait(L, "join");
  tulua_runtime *rt = tulua__runtime(L);
  tulua__task *t = tulua__task_of(co);
  if (rt->current == t) return luaL_error(L, "a task cannot join itself");
  join_op *op = tulua__heap_get(&rt->lua_heap, sizeof *op);
  if (op == NULL) return luaL_error(L, "not enough memory");
  op->rt = rt;
  op->target = t;
  op->target_co = co;
  t->observed = 1;
  op->w.next = t->joiners;
  t->joiners = &op->w;
  tulua__wait_detail(L, describe_join);
  lua_settop(L, 1); /* the target stays referenced while we wait */
  return tulua__wait(L, &op->w, join_deliver, join_cancel, op);
}

/* Returns the count of cancel requests of t (asyncio's cancelling()). */
static lua_Integer cancel_count(lua_State *L, tulua__task *t) {
  lua_Integer n = 0;
  if (t == NULL || !t->has_extra) return 0;
  tulua__push_extra(L, t);
  if (lua_istable(L, -1)) {
    lua_getfield(L, -1, "count");
    n = lua_tointeger(L, -1);
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
  return n;
}

static void set_cancel_count(lua_State *L, tulua__task *t, lua_Integer n) {
  tulua__push_extra_table(L, t);
  lua_pushinteger(L, n);
  lua_setfield(L, -2, "count");
  lua_pop(L, 1);
}

static int task_cancel(lua_State *L) {
  lua_State *co = check_task(L, 1);
  const char *msg = luaL_optstring(L, 2, NULL);
  tulua__task *t = tulua__task_of(co);
  if (t != NULL) {
    set_cancel_count(L, t, cancel_count(L, t) + 1);
    if (msg != NULL) {
      tulua__push_extra_table(L, t);
      lua_pushvalue(L, 2);
      lua_setfield(L, -2, "msg");
      lua_pop(L, 1);
    }
    tulua__cancel_task(tulua__runtime(L), t);
  }
  lua_pushboolean(L, t != NULL);
  return 1;
}

static int task_cancelling(lua_State *L) {
  lua_pushinteger(L, cancel_count(L, tulua__task_of(check_task(L, 1))));
  return 1;
}

/* Withdraws one cancel request; at zero a request not yet delivered is
 * withdrawn too (Python 3.13's uncancel). */
static int task_uncancel(lua_State *L) {
  tulua__task *t = tulua__task_of(check_task(L, 1));
  lua_Integer n = cancel_count(L, t);
  if (n > 0) {
    set_cancel_count(L, t, --n);
    if (n == 0) t->cancelling = 0;
  }
  lua_pushinteger(L, n);
  return 1;
}

static int task_exception(lua_State *L) {
  lua_State *co = check_task(L, 1);
  uintptr_t how = *tulua__xspace(co);
  if (!(how & X_FINISHED))
    return tulua__invalid_state(L, "the task is not done");
  if (!(how & (X_FAILED | X_CANCELLED))) return 0;
  if (!lua_checkstack(co, 1)) luaL_error(L, "not enough memory");
  lua_pushvalue(co, 1);
  lua_xmove(co, L, 1);
  if (how & X_CANCELLED) return lua_error(L);
  return 1;
}

static int task_add_done_callback(lua_State *L) {
  lua_State *co = check_task(L, 1);
  luaL_checktype(L, 2, LUA_TFUNCTION);
  tulua__task *t = tulua__task_of(co);
  lua_settop(L, 2);
  if (t == NULL) { /* finished: on the next loop turn */
    lua_pushvalue(L, 1);
    tulua__spawn(L, 1);
    return 0;
  }
  tulua__push_extra(L, t);
  if (lua_isnil(L, -1)) {
    lua_pushvalue(L, 2);
    tulua__set_extra(L, t);
  } else {
    lua_pop(L, 1);
    tulua__push_extra_table(L, t);
    lua_pushvalue(L, 2);
    lua_rawseti(L, -2, luaL_len(L, -2) + 1);
  }
  return 0;
}

static int task_remove_done_callback(lua_State *L) {
  lua_State *co = check_task(L, 1);
  luaL_checktype(L, 2, LUA_TFUNCTION);
  tulua__task *t = tulua__task_of(co);
  lua_Integer removed = 0;
  if (t != NULL && t->has_extra) {
    tulua__push_extra(L, t);
    if (lua_rawequal(L, -1, 2)) {
      removed = 1;
      lua_pushnil(L);
      tulua__set_extra(L, t);
    } else if (lua_istable(L, -1)) {
      lua_Integer n = luaL_len(L, -1), j = 1;
      for (lua_Integer i = 1; i <= n; i++) {
        lua_rawgeti(L, -1, i);
        if (lua_rawequal(L, -1, 2)) {
          lua_pop(L, 1);
          removed++;
          continue;
        }
        lua_rawseti(L, -2, j++);
      }
      for (; j <= n; j++) {
        lua_pushnil(L);
        lua_rawseti(L, -2, j);
      }
    }
  }
  lua_pushinteger(L, removed);
  return 1;
}

/* Pushes the name of the task thread at idx; the first time, a task
 * without one is named "Task-<n>". [-0, +1, m] */
void tulua__push_task_name(lua_State *L, tulua_runtime *rt, int idx) {
  idx = lua_absindex(L, idx);
  lua_rawgeti(L, LUA_REGISTRYINDEX, rt->names_ref);
  lua_pushvalue(L, idx);
  if (lua_rawget(L, -2) == LUA_TNIL) {
    lua_pop(L, 1);
    lua_pushfstring(L, "Task-%I", (LUAI_UACINT)++rt->name_seq);
    lua_pushvalue(L, idx);
    lua_pushvalue(L, -2);
    lua_rawset(L, -4);
  }
  lua_remove(L, -2);
}

static int task_get_name(lua_State *L) {
  check_task(L, 1);
  tulua__push_task_name(L, tulua__runtime(L), 1);
  return 1;
}

/* task:set_name(name); a trace records the new name too. */
static int task_set_name(lua_State *L) {
  check_task(L, 1);
  luaL_checkany(L, 2);
  tulua_runtime *rt = tulua__runtime(L);
  lua_rawgeti(L, LUA_REGISTRYINDEX, rt->names_ref);
  lua_pushvalue(L, 1);
  luaL_tolstring(L, 2, NULL);
  if (rt->traced)
    tulua__trace_name((uintptr_t)lua_tothread(L, 1), lua_tostring(L, -1));
  lua_rawset(L, -3);
  return 0;
}

static int task_done(lua_State *L) {
  lua_pushboolean(L, tulua__task_finished(check_task(L, 1)));
  return 1;
}

static int task_cancelled(lua_State *L) {
  uintptr_t both = X_FINISHED | X_CANCELLED;
  lua_pushboolean(L, (*tulua__xspace(check_task(L, 1)) & both) == both);
  return 1;
}

static int task_result(lua_State *L) {
  lua_State *co = check_task(L, 1);
  if (!tulua__task_finished(co))
    return tulua__invalid_state(
        L, "attempt to get the result of an unfinished task");
  return tulua__task_push_outcome(L, co);
}

static const char *status_of(lua_State *co) {
  static const char *const unfinished[] = {"ready", "ready", "running",
                                           "waiting"};
  uintptr_t x = *tulua__xspace(co);
  if (x & X_TASK) return unfinished[tulua__task_of(co)->state];
  return (x & X_FAILED) ? "failed" : (x & X_CANCELLED) ? "cancelled" : "done";
}

static int task_status(lua_State *L) {
  lua_pushstring(L, status_of(check_task(L, 1)));
  return 1;
}

/* __index of every thread: a Task's methods; indexing any other thread
 * raises as in standard Lua. */
static int thread_index(lua_State *L) {
  lua_State *co = lua_tothread(L, 1);
  if (co == NULL || !tulua__is_task(co)) {
    luaL_where(L, 1); /* the code that indexed */
    lua_pushliteral(L, "attempt to index a thread value");
    lua_concat(L, 2);
    return lua_error(L);
  }
  lua_pushvalue(L, 2);
  lua_rawget(L, lua_upvalueindex(1));
  return 1;
}

/* ---- the module ---- */

static int l_spawn(lua_State *L) {
  luaL_checktype(L, 1, LUA_TFUNCTION);
  tulua__spawn(L, lua_gettop(L) - 1);
  return 1;
}

static int l_spawn_protected(lua_State *L) {
  luaL_checktype(L, 1, LUA_TFUNCTION);
  tulua__spawn_protected(L, lua_gettop(L) - 1);
  return 1;
}

/* tulua.can_wait() -> boolean: whether the running code may wait here
 * (false outside a task and where Lua cannot yield, e.g. in a __close
 * that runs because of an error). */
static int l_can_wait(lua_State *L) {
  lua_pushboolean(L, tulua__can_wait(L));
  return 1;
}

static int l_current(lua_State *L) {
  tulua_runtime *rt = tulua__runtime(L);
  if (rt->current == NULL) return 0;
  tulua__push_thread(L, rt, rt->current);
  return 1;
}

static int l_all_tasks(lua_State *L) {
  tulua_runtime *rt = tulua__runtime(L);
  lua_Integer n = 0;
  lua_createtable(L, rt->ntasks, 0);
  tulua__push_live(L, rt);
  lua_pushnil(L);
  while (lua_next(L, -2) != 0) {
    lua_State *co = lua_tothread(L, -1); /* or luaL_ref's free list */
    tulua__task *t = co != NULL ? tulua__task_of(co) : NULL;
    if (t != NULL && !t->hidden)
      lua_rawseti(L, -4, ++n);
    else
      lua_pop(L, 1);
  }
  lua_pop(L, 1);
  return 1;
}

static int l_new_error(lua_State *L) {
  tulua__push_error(L, luaL_checkstring(L, 1), luaL_checkstring(L, 2));
  return 1;
}

/* tulua.set_debug(on) or tulua.set_debug{slow = seconds}: the table turns
 * debug mode on and sets its threshold (asyncio's slow_callback_duration) */
static int l_set_debug(lua_State *L) {
  tulua_runtime *rt = tulua__runtime(L);
  if (lua_istable(L, 1)) {
    lua_pushnil(L);
    while (lua_next(L, 1) != 0) { /* one key only: no option table helper */
      lua_pop(L, 1);
      if (lua_type(L, -1) != LUA_TSTRING || strcmp(lua_tostring(L, -1), "slow"))
        return luaL_argerror(L, 1,
                             lua_pushfstring(L, "unknown option '%s'",
                                             luaL_tolstring(L, -1, NULL)));
    }
    lua_getfield(L, 1, "slow");
    lua_Number s = lua_tonumber(L, -1);
    if (lua_type(L, -1) != LUA_TNUMBER || !(s > 0 && s <= TULUA__SLOW_MAX))
      return luaL_argerror(L, 1,
                           "field 'slow' must be a number of seconds "
                           "above 0 and at most 86400");
    rt->slow_ns = tulua__slow_ns(s);
    rt->debug = 1;
  } else {
    if (!lua_isboolean(L, 1) && !lua_isnoneornil(L, 1))
      return luaL_typeerror(L, 1, "boolean or table");
    rt->debug = lua_toboolean(L, 1);
  }
  if (rt->debug) lua_warning(L, "@on", 0); /* the reports are warnings */
  return 0;
}

/* tulua.get_debug() -> on; tulua.get_debug("slow") -> the threshold in
 * seconds (a second result would spill into table constructors) */
static int l_get_debug(lua_State *L) {
  tulua_runtime *rt = tulua__runtime(L);
  if (lua_isnoneornil(L, 1)) {
    lua_pushboolean(L, rt->debug);
    return 1;
  }
  static const char *const what[] = {"slow", NULL};
  luaL_checkoption(L, 1, NULL, what);
  lua_pushnumber(L, (lua_Number)rt->slow_ns / 1e9);
  return 1;
}

/* tulua._report(text): hands text to the host's error callback
 * (cfg.on_error) without counting it in tulua_uncaught_errors: the report
 * of an error that the runtime caught and went on from, such as a failing
 * done callback of a Future or a process pool's lost worker, so that the
 * library itself never prints. Internal (the underscore): for lua/. */
static int l_report(lua_State *L) {
  const char *msg = luaL_checkstring(L, 1);
  tulua_runtime *rt = tulua__runtime(L);
  if (rt->cfg.on_error) rt->cfg.on_error(rt, msg, rt->cfg.userdata);
  return 0;
}

/* tulua._hide_current(): leaves the current task out of all_tasks from
 * now on. For the command line's REPL, whose line tasks stand for lua.c's
 * main thread at the prompt, as Python's asyncio REPL runs a line in no
 * task: the user's tasks are the background ones. Internal (the
 * underscore). */
static int l_hide_current(lua_State *L) {
  tulua_runtime *rt = tulua__runtime(L);
  if (rt->current != NULL) rt->current->hidden = 1;
  return 0;
}

/* tulua._task_info(task) -> {id=, parent=, state=, seconds=, wait=,
 * left=, on=} | nil (finished): what tulua --ps shows of an unfinished
 * task. wait is the description of its wait ("sleep 2.500 s left"), on
 * the object a park() named (the children of a gather, a TaskGroup's
 * tasks). Internal (the underscore): for lua/tulua/_ps.lua. */
static int l_task_info(lua_State *L) {
  lua_State *co = check_task(L, 1);
  tulua__task_state st;
  char buf[512];
  if (!tulua__task_state_of(co, &st)) return 0;
  lua_createtable(L, 0, 7);
  lua_pushinteger(L, st.id);
  lua_setfield(L, -2, "id");
  lua_pushinteger(L, st.parent);
  lua_setfield(L, -2, "parent");
  lua_pushstring(L, st.state);
  lua_setfield(L, -2, "state");
  lua_pushnumber(L, st.seconds);
  lua_setfield(L, -2, "seconds");
  if (st.op != NULL) {
    tulua__describe_wait(co, buf, sizeof buf);
    lua_pushstring(L, buf);
    lua_setfield(L, -2, "wait");
    lua_pushstring(L, st.op);
    lua_setfield(L, -2, "op");
  }
  if (st.left >= 0) {
    lua_pushnumber(L, st.left);
    lua_setfield(L, -2, "left");
  }
  /* a waiting C function keeps its arguments on the task's stack: on is
   * park(what, on)'s on, or the object a method waits in (a Future) */
  lua_Debug ar;
  if (st.op != NULL && lua_getstack(co, 0, &ar) && lua_getinfo(co, "f", &ar)) {
    int parked = lua_tocfunction(co, -1) == tulua__park;
    lua_pop(co, 1);
    if (lua_getlocal(co, &ar, parked ? 2 : 1) != NULL) {
      if (parked || lua_type(co, -1) == LUA_TUSERDATA) {
        lua_xmove(co, L, 1);
        lua_setfield(L, -2, "on");
      } else {
        lua_pop(co, 1);
      }
    }
  }
  return 1;
}

static int l_now(lua_State *L) {
  lua_pushnumber(L, (lua_Number)uv_hrtime() / 1e9);
  return 1;
}

int tulua__open_core(lua_State *L) {
  static const luaL_Reg funcs[] = {{"spawn", l_spawn},
                                   {"spawn_protected", l_spawn_protected},
                                   {"sleep", tulua__sleep},
                                   {"now", l_now},
                                   {"current", l_current},
                                   {"all_tasks", l_all_tasks},
                                   {"park", tulua__park},
                                   {"can_wait", l_can_wait},
                                   {"unpark", tulua__unpark},
                                   {"new_error", l_new_error},
                                   {"set_debug", l_set_debug},
                                   {"get_debug", l_get_debug},
                                   {"_report", l_report},
                                   {"_hide_current", l_hide_current},
                                   {"_task_info", l_task_info},
                                   {"ps", tulua__ps},
                                   {"_ps_dir", tulua__ps_lua_dir},
                                   {NULL, NULL}};
  luaL_newlib(L, funcs);
  lua_rawgeti(L, LUA_REGISTRYINDEX, tulua__runtime(L)->methods_ref);
  lua_setfield(L, -2, "Task");
  return 1;
}

void tulua__open_task_class(lua_State *L, tulua_runtime *rt) {
  static const luaL_Reg task_methods[] = {
      {"join", task_join},
      {"cancel", task_cancel},
      {"done", task_done},
      {"cancelled", task_cancelled},
      {"result", task_result},
      {"status", task_status},
      {"exception", task_exception},
      {"cancelling", task_cancelling},
      {"uncancel", task_uncancel},
      {"add_done_callback", task_add_done_callback},
      {"remove_done_callback", task_remove_done_callback},
      {"get_name", task_get_name},
      {"set_name", task_set_name},
      {NULL, NULL}};
  lua_pushthread(L);
  /* only __index: a __tostring would change what lua.c prints for a
   * thread raised as an error */
  lua_createtable(L, 0, 1);
  luaL_newlib(L, task_methods);
  lua_pushvalue(L, -1);
  rt->methods_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  lua_pushcclosure(L, thread_index, 1);
  lua_setfield(L, -2, "__index");
  lua_setmetatable(L, -2); /* of every thread */
  lua_pop(L, 1);
  lua_newtable(L); /* names: weak keys, a name dies with its task */
  lua_createtable(L, 0, 1);
  lua_pushliteral(L, "k");
  lua_setfield(L, -2, "__mode");
  lua_setmetatable(L, -2);
  rt->names_ref = luaL_ref(L, LUA_REGISTRYINDEX);
}

/* ---- os.exit ---- */

/* Returns the unfinished task of tulua_call (the command line's main
 * chunk, or a REPL line), or NULL. Leaves L's stack as it was. */
static lua_State *call_task(lua_State *L, tulua_runtime *rt) {
  lua_State *found = NULL;
  tulua__push_live(L, rt);
  lua_pushnil(L);
  while (found == NULL && lua_next(L, -2) != 0) {
    lua_State *co = lua_tothread(L, -1);
    tulua__task *t = co != NULL ? tulua__task_of(co) : NULL;
    if (t != NULL && t->is_call) found = co;
    lua_pop(L, 1);
  }
  lua_settop(L, lua_gettop(L) - (found != NULL ? 2 : 1));
  return found;
}

/* os.exit([status [, close]]): Lua's, where lua_close closes the
 * to-be-closed variables of lua.c's main thread, whose part here the main
 * chunk's task plays: its variables are closed first, wherever os.exit is
 * called from. Other tasks' are not, as lua5.4 leaves those of suspended
 * coroutines; their objects are collected (__gc) with the state. */
static int os_exit(lua_State *L) {
  int status;
  if (lua_isboolean(L, 1))
    status = lua_toboolean(L, 1) ? EXIT_SUCCESS : EXIT_FAILURE;
  else
    status = (int)luaL_optinteger(L, 1, EXIT_SUCCESS);
  if (lua_toboolean(L, 2)) {
    lua_State *main = call_task(L, tulua__runtime(L));
    /* as lua_close does to lua.c's main thread, even while it runs: the
     * call stack is dropped and nothing returns to it */
    if (main != NULL && !tulua__task_finished(main)) lua_resetthread(main);
    lua_close(L);
  }
  exit(status);
}

void tulua__open_exit(lua_State *L) {
  if (lua_getglobal(L, "os") == LUA_TTABLE) {
    lua_pushcfunction(L, os_exit);
    lua_setfield(L, -2, "exit");
  }
  lua_pop(L, 1);
}
