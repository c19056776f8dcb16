/* runtime.c: the runtime object on a uv_loop_t; implements tulua.h. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lualib.h>

#include "lua_modules.h"
#include "runtime.h"
#include "trace.h"

void tulua_config_init(tulua_config *cfg) {
  memset(cfg, 0, sizeof *cfg);
  cfg->open_stdlibs = 1;
  cfg->ps = 1;
  cfg->trace_gc_slow = -1;
}

static void set_errmsg(tulua_runtime *rt, const char *msg) {
  free(rt->errmsg);
  rt->errmsg = strdup(msg ? msg : "unknown error");
}

/* Takes the error on top of the state into errmsg and pops it. */
static int lua_fail(tulua_runtime *rt) {
  lua_State *L = rt->L;
  const char *msg = lua_tostring(L, -1);
  set_errmsg(rt, msg ? msg : "(error object is not a string)");
  lua_pop(L, 1);
  return TULUA_ELUA;
}

const char *tulua_errmsg(tulua_runtime *rt) {
  return rt->errmsg ? rt->errmsg : "";
}

lua_State *tulua_state(tulua_runtime *rt) {
  return rt->L;
}

uv_loop_t *tulua_loop(tulua_runtime *rt) {
  return rt->loop;
}

int tulua_uncaught_errors(tulua_runtime *rt) {
  return rt->uncaught;
}

static int loaded_k(lua_State *L, int status, lua_KContext ctx) {
  (void)L;
  (void)status;
  (void)ctx;
  return 1;
}

/* package.preload's loader of an embedded Lua module (upvalue: its entry
 * in tulua__lua_modules). Its main chunk may wait, as a file's may under
 * tulua's require (host/coro.c): concurrent.futures.mpi serves jobs
 * there on a worker rank. */
static int load_lua_module(lua_State *L) {
  const tulua__lua_module *m = lua_touserdata(L, lua_upvalueindex(1));
  if (luaL_loadbufferx(L, m->source, m->len, m->chunkname, "t") != LUA_OK)
    return lua_error(L);
  lua_pushstring(L, m->name);
  lua_callk(L, 1, 1, 0, loaded_k);
  return 1;
}

static int open_libs(lua_State *L) {
  tulua_runtime *rt = lua_touserdata(L, 1);
  if (rt->cfg.open_stdlibs) {
    luaL_openlibs(L);
    tulua__gctrace_open(L);
    tulua__open_io(L);
    tulua__open_exit(L);
  }
  tulua__open_coro(L);
  luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
  tulua__preload_bindings(L);
  lua_pushcfunction(L, tulua__open_trace);
  lua_setfield(L, -2, "tulua._trace");
  for (const tulua__lua_module *m = tulua__lua_modules; m->name; m++) {
    lua_pushlightuserdata(L, (void *)m);
    lua_pushcclosure(L, load_lua_module, 1);
    lua_setfield(L, -2, m->name);
  }
  return 0;
}

/* As lauxlib's: only reached through a bug (Lua called unprotected). */
static int panic(lua_State *L) {
  const char *msg = lua_tostring(L, -1);
  fprintf(stderr, "PANIC: unprotected error in call to Lua API (%s)\n",
          msg ? msg : "error object is not a string");
  fflush(stderr);
  return 0;
}

/* Lua's warn(), as luaL_newstate sets it up: off until "@on", messages on
 * stderr as "Lua warning: ..." (the CLI's -W sends "@on"). */
static void warn(void *ud, const char *msg, int tocont) {
  tulua_runtime *rt = ud;
  if (rt->warn == 2) { /* the rest of a message */
    fputs(msg, stderr);
  } else if (!tocont && msg[0] == '@') { /* a control message */
    if (strcmp(msg, "@on") == 0)
      rt->warn = 1;
    else if (strcmp(msg, "@off") == 0)
      rt->warn = 0;
    return;
  } else if (rt->warn == 1) {
    fputs("Lua warning: ", stderr);
    fputs(msg, stderr);
  } else {
    return;
  }
  if (tocont) {
    rt->warn = 2;
  } else {
    fputs("\n", stderr);
    rt->warn = 1;
  }
  fflush(stderr);
}

int tulua_open(tulua_runtime **out, const tulua_config *cfg) {
  int rc;
  *out = NULL;
  /* 16-byte aligned: threads' extra space tags its low bits (runtime.h) */
  size_t size = (sizeof(tulua_runtime) + 15) / 16 * 16;
  double slow = cfg ? cfg->debug_slow : 0;
  if (!(slow >= 0 && slow <= TULUA__SLOW_MAX)) return UV_EINVAL; /* NaN too */
  double gc_slow = cfg ? cfg->trace_gc_slow : -1;
  if (gc_slow != gc_slow || gc_slow > TULUA__SLOW_MAX) return UV_EINVAL;
  tulua_runtime *rt = aligned_alloc(16, size);
  if (rt == NULL) return UV_ENOMEM;
  memset(rt, 0, size);
  if (cfg)
    rt->cfg = *cfg;
  else
    tulua_config_init(&rt->cfg);
  if (rt->cfg.loop) {
    rt->loop = rt->cfg.loop;
  } else {
    rc = uv_loop_init(&rt->own_loop);
    if (rc < 0) {
      free(rt);
      return rc;
    }
    rt->loop = &rt->own_loop;
    rt->owns_loop = 1;
  }
  rt->L = lua_newstate(tulua__alloc, &rt->lua_heap);
  if (rt->L != NULL) {
    lua_atpanic(rt->L, panic);
    lua_setwarnf(rt->L, warn, rt);
  }
  rt->debug = rt->cfg.debug;
  rt->slow_ns = tulua__slow_ns(slow);
  if (rt->debug) rt->warn = 1; /* its reports are warnings */
  if (rt->L == NULL || (rc = tulua__sched_init(rt)) < 0) {
    rc = rt->L == NULL ? UV_ENOMEM : rc;
    tulua_close(rt);
    return rc;
  }
  lua_pushcfunction(rt->L, open_libs);
  lua_pushlightuserdata(rt->L, rt);
  if (lua_pcall(rt->L, 1, 0, 0) != LUA_OK) {
    tulua_close(rt);
    return UV_ENOMEM;
  }
  if (rt->cfg.trace != NULL) {
    char err[256];
    rc = tulua__trace_start(rt->cfg.trace, 0, err, sizeof err);
    rt->cfg.trace = NULL; /* the host's string: not kept */
    if (rc < 0) {
      tulua_close(rt);
      return rc;
    }
    if (gc_slow >= 0) tulua__trace_set_gc_slow((uint64_t)(gc_slow * 1e9));
    rt->traced = 1;
    tulua__trace_gc_arm(rt->L);
    tulua__gctrace_start(rt->L, 0, 0, NULL);
  }
  tulua__ps_open(rt);
  *out = rt;
  return 0;
}

static void count_close_cb(uv_handle_t *h) {
  int *pending = h->data;
  (*pending)--;
}

static void close_stray_cb(uv_handle_t *h, void *arg) {
  (void)arg;
  if (!uv_is_closing(h)) uv_close(h, NULL);
}

void tulua_close(tulua_runtime *rt) {
  if (rt == NULL) return;
  tulua__ps_close(rt);
  if (rt->L) {
    tulua__gctrace_stop(rt->L); /* its allocator: Lua's own again */
    tulua__sched_shutdown(rt);
    lua_close(rt->L); /* __gc closes the handles Lua objects own */
    rt->L = NULL;
    tulua__heap_free(&rt->lua_heap);
  }
  if (rt->traced) { /* after lua_close: pools shut down record their jobs */
    rt->traced = 0;
    tulua__trace_stop();
  }
  /* the scheduler's own handles are embedded in rt: wait for their close
   * callbacks before freeing it */
  int pending = 0;
  uv_handle_t *own[] = {(uv_handle_t *)&rt->check, (uv_handle_t *)&rt->idle,
                        (uv_handle_t *)&rt->timer, (uv_handle_t *)&rt->async};
  for (size_t i = 0; i < sizeof own / sizeof own[0]; i++) {
    if (own[i]->loop == NULL || uv_is_closing(own[i])) continue;
    own[i]->data = &pending;
    pending++;
    uv_close(own[i], count_close_cb);
  }
  if (rt->owns_loop) {
    uv_run(rt->loop, UV_RUN_DEFAULT);
    uv_walk(rt->loop, close_stray_cb, NULL);
    uv_run(rt->loop, UV_RUN_DEFAULT);
    uv_loop_close(rt->loop);
  } else {
    while (pending > 0)
      uv_run(rt->loop, UV_RUN_NOWAIT);
  }

  free(rt->heap);
  free(rt->errmsg);
  free(rt);
}

static int preload(lua_State *L) {
  const char *name = lua_touserdata(L, 1);
  lua_CFunction open = (lua_CFunction)(uintptr_t)lua_touserdata(L, 2);
  luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
  lua_pushcfunction(L, open);
  lua_setfield(L, -2, name);
  return 0;
}

int tulua_preload(tulua_runtime *rt, const char *name, lua_CFunction open) {
  lua_State *L = rt->L;
  lua_pushcfunction(L, preload);
  lua_pushlightuserdata(L, (void *)name);
  lua_pushlightuserdata(L, (void *)(uintptr_t)open);
  if (lua_pcall(L, 2, 0, 0) != LUA_OK) return lua_fail(rt);
  return 0;
}

int tulua_load_string(tulua_runtime *rt, const char *code, size_t len,
                      const char *chunkname) {
  if (luaL_loadbufferx(rt->L, code, len, chunkname, NULL) != LUA_OK)
    return lua_fail(rt);
  return 0;
}

static int load_file(lua_State *L) {
  const char *path = lua_touserdata(L, 1);
  if (luaL_loadfile(L, path) != LUA_OK) return lua_error(L);
  return 1;
}

int tulua_load_file(tulua_runtime *rt, const char *path) {
  lua_State *L = rt->L;
  lua_pushcfunction(L, load_file);
  lua_pushlightuserdata(L, (void *)path);
  if (lua_pcall(L, 1, 1, 0) != LUA_OK) return lua_fail(rt);
  return 0;
}

static int spawn_protected(lua_State *L) {
  int main = (int)lua_toboolean(L, lua_upvalueindex(1));
  int nargs = lua_gettop(L) - 1;
  if (main)
    tulua__spawn_main(L, nargs);
  else
    tulua__spawn(L, nargs);
  return 1;
}

/* Spawns the function and nargs arguments on top of the stack; leaves the
 * Task (its thread) there. Returns it, or NULL (errmsg set, all popped). */
static lua_State *spawn(tulua_runtime *rt, int nargs, int main) {
  lua_State *L = rt->L;
  lua_pushboolean(L, main);
  lua_pushcclosure(L, spawn_protected, 1);
  lua_insert(L, -(nargs + 2));
  if (lua_pcall(L, nargs + 1, 1, 0) != LUA_OK) {
    lua_fail(rt);
    return NULL;
  }
  return lua_tothread(L, -1);
}

int tulua_spawn(tulua_runtime *rt, int nargs) {
  if (spawn(rt, nargs, 0) == NULL) return TULUA_ELUA;
  lua_pop(rt->L, 1);
  return 0;
}

static int push_outcome(lua_State *L) {
  return tulua__task_push_outcome(L, lua_tothread(L, 1));
}

static int to_text(lua_State *L) {
  luaL_tolstring(L, 1, NULL);
  return 1;
}

int tulua_call(tulua_runtime *rt, int nargs, int nresults) {
  lua_State *L = rt->L;
  if (rt->in_drain) {
    lua_pop(L, nargs + 1);
    set_errmsg(rt, "tulua_call: called from inside a task");
    lua_pushstring(L, rt->errmsg);
    return LUA_ERRRUN;
  }
  lua_State *co = spawn(rt, nargs, 1);
  if (co == NULL) {
    lua_pushstring(L, rt->errmsg);
    return LUA_ERRMEM;
  }
  int base = lua_gettop(L); /* the Task */
  lua_State *outer = rt->call_co;
  rt->call_co = co;
  while (!tulua__task_finished(co)) {
    if (uv_run(rt->loop, UV_RUN_ONCE) == 0 && !tulua__task_finished(co) &&
        rt->ready_len == 0 && tulua__queue_empty(&rt->jobs))
      break;
  }
  rt->call_co = outer;
  /* An interrupt still pending here came as the task ended, and nothing
   * took it: it stays, for the loop or the call that runs next (as lua.c's
   * hook stays on the state), rather than being lost. */
  if (!tulua__task_finished(co)) {
    luaL_traceback(L, co,
                   "deadlock: the task waits for something that will never "
                   "happen",
                   0);
    lua_remove(L, base);
    return LUA_ERRRUN;
  }
  lua_pushcfunction(L, push_outcome);
  lua_pushvalue(L, base);
  int st = lua_pcall(L, 1, nresults, 0);
  if (st != LUA_OK && lua_type(L, -1) != LUA_TSTRING &&
      luaL_getmetafield(L, -1, "__tostring") != LUA_TNIL) {
    /* a cancellation or another object with __tostring: its text, unless
     * __tostring fails (then the object itself) */
    lua_pop(L, 1);
    lua_pushcfunction(L, to_text);
    lua_pushvalue(L, -2);
    if (lua_pcall(L, 1, 1, 0) == LUA_OK)
      lua_replace(L, -2);
    else
      lua_pop(L, 1);
  }
  lua_remove(L, base);
  return st;
}

int tulua_run(tulua_runtime *rt) {
  if (rt->in_drain) {
    set_errmsg(rt, "tulua_run: called from inside a task");
    return TULUA_ESTATE;
  }
  rt->stop_requested = 0;
  for (;;) {
    int alive = uv_run(rt->loop, UV_RUN_ONCE);
    if (rt->stop_requested && rt->ntasks == 0) break; /* interrupted */
    if (!alive && rt->ready_len == 0) break;
  }
  rt->stop_requested = 0;
  return 0;
}

int tulua_step(tulua_runtime *rt, double budget) {
  if (rt->in_drain) {
    set_errmsg(rt, "tulua_step: called from inside a task");
    return TULUA_ESTATE;
  }
  rt->budget = budget;
  uv_run(rt->loop, UV_RUN_NOWAIT);
  rt->budget = 0;
  return uv_loop_alive(rt->loop) || rt->ready_len > 0 ||
         !tulua__queue_empty(&rt->jobs);
}

double tulua_next_deadline(tulua_runtime *rt) {
  if (rt->ready_len > 0 || !tulua__queue_empty(&rt->jobs)) return 0;
  if (!uv_loop_alive(rt->loop)) return -1; /* libuv's timeout would be 0 */
  int ms = uv_backend_timeout(rt->loop);
  return ms < 0 ? -1.0 : ms / 1000.0;
}

int tulua_wakeup(tulua_runtime *rt) {
  return uv_async_send(&rt->async);
}

int tulua_interrupt(tulua_runtime *rt) {
  if (rt->interrupt_pending) return 1;
  rt->interrupt_pending = 1;
  lua_State *co = (lua_State *)rt->running;
  if (co != NULL) {
    lua_sethook(co, tulua__interrupt_hook,
                LUA_MASKCALL | LUA_MASKRET | LUA_MASKLINE | LUA_MASKCOUNT, 1);
  } else {
    rt->cancel_pending = 1;
    uv_async_send(&rt->async);
  }
  return 0;
}
