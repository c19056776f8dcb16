/* coro.c: Lua's coroutine library, forwarding the scheduler's yields; backs
 * the global 'coroutine' table of every runtime.
 *
 * A wait inside a user coroutine yields that coroutine with the scheduler's
 * mark. resume/wrap see the mark, yield their own thread with the same mark
 * (up to the task, which the scheduler suspends) and, when resumed, resume
 * the inner coroutine again so that its wait completes there. Unmarked
 * yields are Lua's own. The coroutine in the middle of such a forwarded wait
 * is tagged WAITING in its extra space, so that nobody else resumes or
 * closes it meanwhile.
 *
 * Lua's 'require' runs a module's loader with lua_call, which no yield may
 * cross; the runtime's 'require' (also here) calls it with lua_callk, so
 * that a module's main chunk may wait while it loads. */
#include <stdatomic.h>
#include <stdint.h>

#include <lauxlib.h>
#include <lualib.h>

#include "runtime.h"

/* The hooks that follow a resume into a nested coroutine: set once, at
 * start-up, by the parts that stop running code. */
static _Atomic(lua_Hook) cancel_hook_fn;

void tulua__hook_follows_resumes(lua_Hook hook) {
  atomic_store(&cancel_hook_fn, hook);
}

static int follows_resumes(lua_Hook hook) {
  return hook == tulua__interrupt_hook || hook == atomic_load(&cancel_hook_fn);
}

static int is_waiting(lua_State *co) {
  /* the same bit means 'cancelled' on a finished task's thread */
  return !tulua__is_task(co) && (*tulua__xspace(co) & X_WAITING) != 0;
}

static lua_State *getco(lua_State *L) {
  lua_State *co = lua_tothread(L, 1);
  luaL_argexpected(L, co, 1, "coroutine");
  return co;
}

/* Resumes co with the nargs values on top of L. Returns the number of
 * values moved to L (results or yielded values), or -1 with the error on
 * top of L. When co waits on the scheduler, yields L with the mark and
 * continues in k. */
static int do_resume(lua_State *L, lua_State *co, int nargs, lua_KFunction k) {
  tulua_runtime *rt = tulua__runtime(L);
  int status, nres;
  if (tulua__is_task(co)) {
    lua_pushliteral(L, "cannot resume a task (join it instead)");
    return -1;
  }
  if (is_waiting(co)) {
    lua_pushliteral(L, "cannot resume non-suspended coroutine");
    return -1;
  }
  if (!lua_checkstack(co, nargs)) {
    lua_pushliteral(L, "too many arguments to resume");
    return -1;
  }
  lua_xmove(L, co, nargs);
  /* the chain records who resumed whom, for waits and interrupts */
  int tracked =
      rt->depth > 0 && rt->depth < CHAIN_MAX && rt->chain[rt->depth - 1] == L;
  if (tracked) rt->chain[rt->depth++] = co;
  /* a hook that stops what L runs (Ctrl-C, a pool job's cancel) must stop
   * the coroutine L runs on its behalf: it may never give L its turn
   * again (a job that computes in a generator between waits) */
  lua_Hook hook = lua_gethook(L);
  if (hook != NULL && follows_resumes(hook))
    lua_sethook(co, hook, lua_gethookmask(L), lua_gethookcount(L));
  volatile lua_State *prev = rt->running;
  rt->running = co;
  status = lua_resume(co, L, nargs, &nres);
  rt->running = prev;
  if (tracked) rt->depth--;
  if (rt->interrupt_pending) /* Ctrl-C: the code that goes on is L's */
    lua_sethook(L, tulua__interrupt_hook,
                LUA_MASKCALL | LUA_MASKRET | LUA_MASKLINE | LUA_MASKCOUNT, 1);
  if (status == LUA_YIELD && rt->wait_mark) { /* forward the wait */
    lua_pop(co, nres);
    *tulua__xspace(co) |= X_WAITING;
    return lua_yieldk(L, 0, 0, k);
  }
  if (status == LUA_OK || status == LUA_YIELD) {
    if (!lua_checkstack(L, nres + 1)) {
      lua_pop(co, nres);
      lua_pushliteral(L, "too many results to resume");
      return -1;
    }
    lua_xmove(co, L, nres);
    return nres;
  }
  lua_xmove(co, L, 1); /* the error */
  return -1;
}

static int resume_results(lua_State *L, int r) {
  if (r < 0) {
    lua_pushboolean(L, 0);
    lua_insert(L, -2);
    return 2;
  }
  lua_pushboolean(L, 1);
  lua_insert(L, -(r + 1));
  return r + 1;
}

static int resume_k(lua_State *L, int status, lua_KContext ctx) {
  lua_State *co = lua_tothread(L, 1);
  (void)status;
  (void)ctx;
  *tulua__xspace(co) &= ~X_WAITING;
  return resume_results(L, do_resume(L, co, 0, resume_k));
}

static int co_resume(lua_State *L) {
  lua_State *co = getco(L);
  return resume_results(L, do_resume(L, co, lua_gettop(L) - 1, resume_k));
}

/* As Lua's wrap: an error in the coroutine closes it and propagates, with
 * the caller's position prepended to a string error. */
static int wrap_results(lua_State *L, lua_State *co, int r) {
  if (r >= 0) return r;
  int st = lua_status(co);
  if (st != LUA_OK && st != LUA_YIELD) {
    st = lua_resetthread(co);
    lua_xmove(co, L, 1);
  }
  if (st != LUA_ERRMEM && lua_type(L, -1) == LUA_TSTRING) {
    luaL_where(L, 1);
    lua_insert(L, -2);
    lua_concat(L, 2);
  }
  return lua_error(L);
}

static int wrap_k(lua_State *L, int status, lua_KContext ctx) {
  lua_State *co = lua_tothread(L, lua_upvalueindex(1));
  (void)status;
  (void)ctx;
  *tulua__xspace(co) &= ~X_WAITING;
  return wrap_results(L, co, do_resume(L, co, 0, wrap_k));
}

static int wrap_call(lua_State *L) {
  lua_State *co = lua_tothread(L, lua_upvalueindex(1));
  return wrap_results(L, co, do_resume(L, co, lua_gettop(L), wrap_k));
}

static int co_wrap(lua_State *L) {
  luaL_checktype(L, 1, LUA_TFUNCTION);
  lua_State *co = lua_newthread(L);
  lua_pushvalue(L, 1);
  lua_xmove(L, co, 1);
  lua_pushcclosure(L, wrap_call, 1);
  return 1;
}

static int co_yield (lua_State *L) {
  if (tulua__task_of(L) != NULL) /* a task's top level is no coroutine */
    return luaL_error(L, "attempt to yield from outside a coroutine");
  return lua_yield(L, lua_gettop(L));
}

static const char *const status_names[] = {"running", "suspended", "normal",
                                           "dead"};

static int status_of(lua_State *L, lua_State *co) {
  if (L == co) return 0;
  if (tulua__task_finished(co)) return 3; /* its outcome is on its stack */
  if (is_waiting(co) || (tulua__task_of(co) && lua_status(co) == LUA_YIELD))
    return 2;
  switch (lua_status(co)) {
    case LUA_YIELD:
      return 1;
    case LUA_OK: {
      lua_Debug ar;
      if (lua_getstack(co, 0, &ar)) return 2;
      return lua_gettop(co) == 0 ? 3 : 1;
    }
    default:
      return 3;
  }
}

static int co_status(lua_State *L) {
  lua_State *co = getco(L);
  lua_pushstring(L, status_names[status_of(L, co)]);
  return 1;
}

static int co_running(lua_State *L) {
  int ismain = lua_pushthread(L);
  lua_pushboolean(L, ismain || tulua__task_of(L) != NULL);
  return 2;
}

static int co_isyieldable(lua_State *L) {
  lua_State *co = lua_isnone(L, 1) ? L : getco(L);
  lua_pushboolean(L, tulua__task_of(co) == NULL && lua_isyieldable(co));
  return 1;
}

static int co_close(lua_State *L) {
  lua_State *co = getco(L);
  int st = status_of(L, co);
  if (tulua__is_task(co)) {
    /* Lua's messages where Lua has the case: the task runs this code, or
     * is inside a resume of the coroutine that runs it. A task suspended
     * by the scheduler (also "normal" to status) is tulua's own case. */
    lua_Debug ar;
    int resuming = st == 2 && lua_status(co) == LUA_OK &&
                   !tulua__task_finished(co) && lua_getstack(co, 0, &ar);
    if (st != 0 && !resuming)
      return luaL_error(L, "cannot close a task (cancel it instead)");
  }
  if (st != 1 && st != 3)
    return luaL_error(L, "cannot close a %s coroutine", status_names[st]);
  if (lua_resetthread(co) == LUA_OK) {
    lua_pushboolean(L, 1);
    return 1;
  }
  lua_pushboolean(L, 0);
  lua_xmove(co, L, 1);
  return 2;
}

static int co_create(lua_State *L) {
  luaL_checktype(L, 1, LUA_TFUNCTION);
  lua_State *co = lua_newthread(L);
  lua_pushvalue(L, 1);
  lua_xmove(L, co, 1);
  return 1;
}

/* ---- require ---- */

/* Pushes the loader of module name and its extra value, as Lua's own
 * findloader: package.searchers in order, or raises "module 'x' not
 * found:" with every searcher's message. The searchers themselves may not
 * wait. [-0, +2, e] */
static void find_loader(lua_State *L, const char *name) {
  if (lua_getfield(L, lua_upvalueindex(1), "searchers") != LUA_TTABLE)
    luaL_error(L, "'package.searchers' must be a table");
  int searchers = lua_gettop(L);
  lua_pushliteral(L, ""); /* the messages so far */
  for (lua_Integer i = 1;; i++) {
    if (lua_rawgeti(L, searchers, i) == LUA_TNIL)
      luaL_error(L, "module '%s' not found:%s", name,
                 lua_tostring(L, searchers + 1));
    lua_pushstring(L, name);
    lua_call(L, 1, 2); /* stack: searchers msg loader data */
    if (lua_isfunction(L, -2)) return;
    if (lua_isstring(L, -2)) {
      lua_pop(L, 1);
      lua_pushliteral(L, "\n\t");
      lua_insert(L, -2);
      lua_concat(L, 3); /* msg .. "\n\t" .. message */
    } else {
      lua_pop(L, 2);
    }
  }
}

/* After the loader returned: stack: name LOADED ... data result. */
static int require_k(lua_State *L, int status, lua_KContext ctx) {
  const char *name = lua_tostring(L, 1);
  (void)status;
  (void)ctx;
  if (!lua_isnil(L, -1))
    lua_setfield(L, 2, name); /* LOADED[name] = result */
  else
    lua_pop(L, 1);
  if (lua_getfield(L, 2, name) == LUA_TNIL) { /* the module set no value */
    lua_pushboolean(L, 1);
    lua_copy(L, -1, -2);
    lua_setfield(L, 2, name);
  }
  lua_rotate(L, -2, 1); /* the module's value, then the loader data */
  return 2;
}

/* require(name) -> module, loader data: Lua's require (upvalue 1 is the
 * package table), whose loader may wait. While a module's main chunk
 * waits, package.loaded has no entry for it yet, as in Lua. */
static int co_require(lua_State *L) {
  const char *name = luaL_checkstring(L, 1);
  lua_settop(L, 1);
  lua_getfield(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
  lua_getfield(L, 2, name);
  if (lua_toboolean(L, -1)) return 1; /* loaded already */
  lua_pop(L, 1);
  find_loader(L, name);
  lua_rotate(L, -2, 1); /* stack: ... data loader */
  lua_pushvalue(L, 1);
  lua_pushvalue(L, -3);
  lua_callk(L, 2, 1, 0, require_k);
  return require_k(L, LUA_OK, 0);
}

/* Replaces the global coroutine table's functions, and the global
 * 'require' when the package library is open. [-0, +0, m] */
void tulua__open_coro(lua_State *L) {
  static const luaL_Reg funcs[] = {{"create", co_create},
                                   {"resume", co_resume},
                                   {"running", co_running},
                                   {"status", co_status},
                                   {"wrap", co_wrap},
                                   {"yield", co_yield },
                                   {"close", co_close},
                                   {"isyieldable", co_isyieldable},
                                   {NULL, NULL}};
  lua_getglobal(L, "coroutine");
  if (!lua_istable(L, -1)) {
    lua_pop(L, 1);
    luaL_newlib(L, funcs);
    lua_pushvalue(L, -1);
    lua_setglobal(L, "coroutine");
  } else {
    luaL_setfuncs(L, funcs, 0);
  }
  /* without the standard libraries there is no _LOADED table yet */
  luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
  lua_pushvalue(L, -2);
  lua_setfield(L, -2, "coroutine");
  if (lua_getfield(L, -1, LUA_LOADLIBNAME) == LUA_TTABLE) {
    lua_pushcclosure(L, co_require, 1);
    lua_setglobal(L, "require");
  } else {
    lua_pop(L, 1);
  }
  lua_pop(L, 2);
}
