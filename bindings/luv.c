/* luv.c: require "luv" loads the luv found on package.cpath (Debian's
 * lua-luv, or a LuaRocks one) on tulua's own loop, its callbacks run as
 * tasks; backs package.preload.luv. Reference: bindings/luv.md.
 *
 * luv's C API lets its host give it a loop (luv_set_loop) and the function
 * that calls its callbacks (luv_set_callback), as Neovim does. tulua gives
 * its loop, and a callback function that starts each Lua callback as a new
 * task: a callback can wait like any task, its error is reported as a
 * task's, and no Lua code runs inside a libuv callback (luv itself pushes
 * the callback's arguments there, as it does under lua5.4). luv is opened
 * with dlopen, not linked: tulua needs it only when a script requires it.
 *
 * Four functions of luv cannot keep their meaning on a shared loop and are
 * replaced (and uv.loop_alive does not count the running task's turn):
 * uv.run waits in the calling task until the loop has nothing
 * left but this wait (or for one turn), uv.stop ends that wait, uv.walk
 * raises (it would hand tulua's own handles to luv, which reads them as
 * its own) and uv.loop_close does nothing (the loop is tulua's). */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lualib.h>

#include "common.h"
#include "worker.h"

/* luv.h's luv_CFpcall and the start of its luv_ctx_t (lua-luv-dev's
 * header, mirrored so that building tulua does not need it). The context
 * is allocated here, larger than any luv's, so that it outlives the Lua
 * state: luv's close callbacks read it after lua_close (see guard_gc). */
typedef int (*luv_pcall_fn)(lua_State *L, int nargs, int nresults, int flags);

typedef struct luv_ctx_head {
  uv_loop_t *loop;
  lua_State *L; /* the state luv calls its callbacks in */
} luv_ctx_head;

#define CTX_SIZE 256

/* One per Lua state that loaded luv. Freed after the state is closed and
 * every handle luv had has run its close callback (reap). */
typedef struct luv_state {
  void *ctx; /* luv's luv_ctx_t (light userdata "luv_context") */
  int closing; /* the state is closing: callbacks are dropped */
  lua_State *zombie; /* stands for the closed state in late callbacks */
  uv_prepare_t prepare; /* uv.run's check of the loop, before each poll */
  uv_idle_t reaper; /* closed last, to free this */
  tulua__waiter w; /* the task in uv.run, while waiting */
  int waiting;
  int once; /* uv.run("once" or "nowait"): one turn of the loop */
  int alive; /* what uv.run returns: the loop has more to do */
} luv_state;

/* The registry key of the state's luv_state (light userdata). */
static const char state_key = 'l';

static luv_state *state_of(lua_State *L) {
  luv_state *s = NULL;
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &state_key) == LUA_TLIGHTUSERDATA)
    s = lua_touserdata(L, -1);
  lua_pop(L, 1);
  return s;
}

/* fn, args... -> starts them as a task. */
static int spawn_callback(lua_State *L) {
  tulua__spawn(L, lua_gettop(L) - 1);
  return 0;
}

/* luv's callback function (luv_CFpcall): the callback and its nargs
 * arguments are on top of L, the main thread; they become a task. Returns
 * nresults nils, as luv expects (no luv callback returns anything). */
static int run_callback(lua_State *L, int nargs, int nresults, int flags) {
  (void)flags; /* luv's "do not exit on errors": tulua never exits here */
  int base = lua_gettop(L) - nargs - 1;
  luv_state *s = state_of(L);
  if (s == NULL || s->closing) { /* after the script: nothing may run */
    lua_settop(L, base);
  } else {
    lua_pushcfunction(L, spawn_callback);
    lua_insert(L, base + 1);
    if (lua_pcall(L, nargs + 1, 0, 0) != LUA_OK) { /* out of memory */
      fprintf(stderr, "tulua: a luv callback was lost: %s\n",
              lua_tostring(L, -1));
      lua_settop(L, base);
      return -LUA_ERRMEM;
    }
  }
  if (nresults == LUA_MULTRET) return 0;
  for (int i = 0; i < nresults; i++)
    lua_pushnil(L);
  return nresults;
}

/* ---- uv.run and uv.stop ---- */

/* Before each poll while a task is in uv.run: "default" ends when nothing
 * but this prepare handle keeps the loop alive, "once" and "nowait" after
 * one turn. */
static void prepare_cb(uv_prepare_t *h) { /* no Lua API */
  luv_state *s = h->data;
  uv_loop_t *loop = h->loop;
  unsigned own = 1 + (unsigned)tulua__worker_holds_loop();
  int more = loop->active_handles > own || loop->active_reqs.count > 0;
  if (s->once || !more) {
    uv_prepare_stop(h);
    s->alive = more;
    if (!tulua__wake(&s->w)) s->waiting = 0;
  }
}

static int run_deliver(lua_State *L, void *ud) {
  luv_state *s = ud;
  s->waiting = 0;
  lua_pushboolean(L, s->alive);
  return 1;
}

static void run_cancel(void *ud) {
  luv_state *s = ud;
  uv_prepare_stop(&s->prepare);
  s->waiting = 0;
}

/* uv.run([mode]) -> boolean: waits in the calling task while luv's work
 * (and everything else on the loop) goes on; see the file's comment. */
static int luv_run(lua_State *L) {
  static const char *const modes[] = {"default", "once", "nowait", NULL};
  int mode = luaL_checkoption(L, 1, "default", modes);
  luv_state *s = lua_touserdata(L, lua_upvalueindex(1));
  tulua__check_wait(L, "run");
  if (s->waiting)
    return luaL_error(L, "uv.run: another task is in uv.run already");
  s->once = mode != 0;
  s->alive = 0;
  s->waiting = 1;
  uv_prepare_start(&s->prepare, prepare_cb);
  return tulua__wait(L, &s->w, run_deliver, run_cancel, s);
}

/* uv.stop(): ends the wait of the task in uv.run, if one waits. */
static int luv_stop(lua_State *L) {
  luv_state *s = lua_touserdata(L, lua_upvalueindex(1));
  if (s->waiting && uv_is_active((uv_handle_t *)&s->prepare)) {
    uv_prepare_stop(&s->prepare);
    uv_loop_t *loop = s->prepare.loop;
    unsigned own = (unsigned)tulua__worker_holds_loop();
    s->alive = loop->active_handles > own || loop->active_reqs.count > 0;
    if (!tulua__wake(&s->w)) s->waiting = 0;
  }
  return 0;
}

/* uv.loop_alive(): as luv's, without the turn of the running task (the
 * scheduler keeps an idle handle active while tasks run or are ready). */
static int luv_loop_alive(lua_State *L) {
  uv_loop_t *loop = tulua__loop(L);
  unsigned own = (tulua__running(tulua__runtime(L)) != NULL) +
                 (unsigned)tulua__worker_holds_loop();
  lua_pushboolean(L, loop->active_handles > own || loop->active_reqs.count > 0);
  return 1;
}

static int luv_walk(lua_State *L) {
  return luaL_error(L, "uv.walk is not available in tulua: the loop is "
                       "shared with tulua's own handles");
}

static int luv_loop_close(lua_State *L) {
  lua_pushinteger(L, 0); /* the loop is tulua's: it closes when tulua ends */
  return 1;
}

/* ---- the end of the state ---- */

static void reaped_cb(uv_handle_t *h) {
  luv_state *s = h->data;
  if (s->zombie != NULL) lua_close(s->zombie);
  free(s->ctx);
  free(s);
}

/* The prepare handle has closed, and so have the handles that were closing
 * with it; the reaper, closed now, closes on the next turn of the loop,
 * after every one of them. */
static void prepare_closed_cb(uv_handle_t *h) {
  luv_state *s = h->data;
  uv_idle_init(h->loop, &s->reaper);
  s->reaper.data = s;
  uv_close((uv_handle_t *)&s->reaper, reaped_cb);
}

/* The guard was made before luv opened, so lua_close finalizes it after
 * every luv handle, each of which has just been given to uv_close with a
 * callback that reads luv's context and calls Lua in ctx->L. The context
 * is ours (malloc'd); ctx->L becomes an empty state of its own, where the
 * late callbacks find no callback to run; both go once those callbacks
 * have run. */
static int guard_gc(lua_State *L) {
  luv_state *s = *(luv_state **)lua_touserdata(L, 1);
  s->closing = 1;
  s->zombie = luaL_newstate();
  /* without memory for it, the last callbacks would use the closed state:
   * better to stop here than to read freed memory */
  if (s->zombie == NULL) abort();
  ((luv_ctx_head *)s->ctx)->L = s->zombie;
  uv_close((uv_handle_t *)&s->prepare, prepare_closed_cb);
  return 0;
}

/* ---- loading ---- */

/* Finds luv on package.cpath; pushes its path, or raises as require. */
static const char *find_luv(lua_State *L) {
  luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
  lua_getfield(L, -1, LUA_LOADLIBNAME);
  lua_getfield(L, -1, "searchpath");
  lua_pushliteral(L, "luv");
  lua_getfield(L, -3, "cpath");
  lua_call(L, 2, 2);
  if (lua_isnil(L, -2))
    luaL_error(L, "module 'luv' not found:\n\t%s", lua_tostring(L, -1));
  lua_pop(L, 1);
  lua_replace(L, -3);
  lua_pop(L, 1);
  return lua_tostring(L, -1);
}

/* package.preload.luv: opens luv on this runtime's loop. */
int luaopen_tulua_luv(lua_State *L) {
  const char *path = find_luv(L);
  /* as package.loadlib would; never closed, as luv's handles may close
   * after the state */
  void *lib = dlopen(path, RTLD_NOW | RTLD_LOCAL);
  if (lib == NULL) return luaL_error(L, "cannot load luv: %s", dlerror());
  void (*set_loop)(lua_State *, uv_loop_t *);
  void (*set_callback)(lua_State *, luv_pcall_fn);
  lua_CFunction opener;
  *(void **)&set_loop = dlsym(lib, "luv_set_loop");
  *(void **)&set_callback = dlsym(lib, "luv_set_callback");
  *(void **)&opener = dlsym(lib, "luaopen_luv");
  if (set_loop == NULL || set_callback == NULL || opener == NULL)
    return luaL_error(L,
                      "%s has no luv_set_loop or luv_set_callback: tulua "
                      "cannot run it on its loop (luv 1.30 or later needed)",
                      path);
  lua_rawgeti(L, LUA_REGISTRYINDEX, LUA_RIDX_MAINTHREAD);
  lua_State *main = lua_tothread(L, -1);
  lua_pop(L, 1);
  if (lua_getfield(L, LUA_REGISTRYINDEX, "luv_context") != LUA_TNIL)
    return luaL_error(L, "luv was opened in this state without require");
  lua_pop(L, 1);

  luv_state **guard = lua_newuserdatauv(L, sizeof *guard, 0);
  *guard = NULL;
  luv_state *s = calloc(1, sizeof *s);
  void *ctx = calloc(1, CTX_SIZE);
  if (s == NULL || ctx == NULL) {
    free(s);
    free(ctx);
    return luaL_error(L, "not enough memory");
  }
  s->ctx = ctx;
  uv_prepare_init(tulua__loop(L), &s->prepare);
  s->prepare.data = s;
  *guard = s;
  lua_createtable(L, 0, 1);
  lua_pushcfunction(L, guard_gc);
  lua_setfield(L, -2, "__gc");
  lua_setmetatable(L, -2);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &s->prepare); /* keeps the guard */
  lua_pushlightuserdata(L, s);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &state_key);
  lua_pushlightuserdata(L, ctx); /* luv_context finds it there */
  lua_setfield(L, LUA_REGISTRYINDEX, "luv_context");

  set_loop(main, tulua__loop(L));
  set_callback(main, run_callback);
  lua_pushcfunction(L, opener);
  lua_call(L, 0, 1);
  static const luaL_Reg replaced[] = {{"run", luv_run},
                                      {"stop", luv_stop},
                                      {"walk", luv_walk},
                                      {"loop_alive", luv_loop_alive},
                                      {"loop_close", luv_loop_close},
                                      {NULL, NULL}};
  lua_pushlightuserdata(L, s);
  luaL_setfuncs(L, replaced, 1);
  return 1;
}
