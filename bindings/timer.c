/* timer.c: uv_timer_t as Timer objects that run a function as a task; backs
 * the module 'tulua.timer' (tulua.timer.after / tulua.timer.every). */
#include <stdlib.h>

#include "queue.h"
#include "common.h"

#define TIMER_MT "tulua.timer"

/* The box a Timer userdata points at. Freed in close_cb; while the timer is
 * active, ref anchors the userdata, whose user value holds fn and args. The
 * userdata's pointer becomes NULL when the timer is closed, so that close(),
 * __close and __gc may come in any order and any number of times. */
typedef struct {
  uv_timer_t h;
  tulua__job job; /* runs fn as a task, posted by timer_cb */
  tulua_runtime *rt;
  int ref; /* registry ref of the userdata while active */
  int repeat;
} timer_box;

static void close_cb(uv_handle_t *h) {
  free(h->data);
}

static timer_box *check_timer(lua_State *L) {
  timer_box **p = luaL_checkudata(L, 1, TIMER_MT);
  if (*p == NULL) luaL_error(L, "attempt to use a closed timer");
  return *p;
}

static void unanchor(lua_State *L, timer_box *b) {
  luaL_unref(L, LUA_REGISTRYINDEX, b->ref);
  b->ref = LUA_NOREF;
}

/* Spawns fn(args...) from the user value: a packed table {n=, fn, ...}. */
static void fire(lua_State *L, tulua__job *job) {
  timer_box *b = tulua__container_of(job, timer_box, job);
  if (b->ref == LUA_NOREF) return;
  lua_rawgeti(L, LUA_REGISTRYINDEX, b->ref);
  int ud = lua_gettop(L);
  if (!b->repeat) unanchor(L, b); /* a one-shot timer has fired */
  lua_getiuservalue(L, ud, 1);
  lua_getfield(L, -1, "n");
  int n = (int)lua_tointeger(L, -1);
  lua_pop(L, 1);
  luaL_checkstack(L, n + 1, "too many timer arguments");
  for (int i = 1; i <= n; i++)
    lua_rawgeti(L, ud + 1, i);
  tulua__spawn(L, n - 1);
  lua_settop(L, ud - 1);
}

static void timer_cb(uv_timer_t *h) { /* no Lua API here */
  timer_box *b = h->data;
  tulua__post(b->rt, &b->job);
}

/* Closes the timer of the userdata p once; close_cb frees the box. */
static void release(lua_State *L, timer_box **p) {
  timer_box *b = *p;
  if (b == NULL) return; /* closed already */
  *p = NULL;
  tulua__unpost(tulua__runtime(L), &b->job);
  if (b->ref != LUA_NOREF) unanchor(L, b);
  uv_close((uv_handle_t *)&b->h, close_cb);
}

static int start(lua_State *L, int repeat) {
  lua_Number s = luaL_checknumber(L, 1);
  luaL_argcheck(L, s >= 0 && s == s, 1, "negative or NaN duration");
  luaL_checktype(L, 2, LUA_TFUNCTION);
  luaL_argcheck(L, !repeat || s > 0, 1, "interval must be positive");
  int n = lua_gettop(L) - 1; /* fn and its args */
  lua_Number msf = s * 1000.0;
  uint64_t ms = msf > 9.0e15 ? (uint64_t)9.0e15 : (uint64_t)msf;
  if ((lua_Number)ms < msf) ms++;
  timer_box **p = lua_newuserdatauv(L, sizeof *p, 1);
  *p = NULL;
  lua_createtable(L, n, 1);
  for (int i = 1; i <= n; i++) {
    lua_pushvalue(L, i + 1);
    lua_rawseti(L, -2, i);
  }
  lua_pushinteger(L, n);
  lua_setfield(L, -2, "n");
  lua_setiuservalue(L, -2, 1);
  timer_box *b = calloc(1, sizeof *b);
  if (b == NULL) return luaL_error(L, "not enough memory");
  b->rt = tulua__runtime(L);
  b->job.run = fire;
  b->repeat = repeat;
  b->h.data = b;
  uv_timer_init(tulua__loop(L), &b->h);
  *p = b;
  luaL_setmetatable(L, TIMER_MT);
  lua_pushvalue(L, -1);
  b->ref = luaL_ref(L, LUA_REGISTRYINDEX);
  /* the loop's time is that of the last poll, and tasks may have run long
   * since: count the delay from now, as tulua.sleep does */
  uv_update_time(tulua__loop(L));
  uv_timer_start(&b->h, timer_cb, ms, repeat ? ms : 0);
  return 1;
}

/* tulua.timer.after(seconds, fn, ...) -> Timer: runs fn(...) as a task
 * once, after the given time. */
static int timer_after(lua_State *L) {
  return start(L, 0);
}

/* tulua.timer.every(seconds, fn, ...) -> Timer: runs fn(...) as a new task
 * every interval until stopped. */
static int timer_every(lua_State *L) {
  return start(L, 1);
}

/* timer:stop(): no further runs; a stopped timer can be closed or dropped. */
static int timer_stop(lua_State *L) {
  timer_box *b = check_timer(L);
  uv_timer_stop(&b->h);
  tulua__unpost(tulua__runtime(L), &b->job);
  if (b->ref != LUA_NOREF) unanchor(L, b);
  return 0;
}

/* timer:active() -> boolean: whether it will still run. */
static int timer_active(lua_State *L) {
  timer_box *b = check_timer(L);
  lua_pushboolean(L, b->ref != LUA_NOREF);
  return 1;
}

static int timer_close(lua_State *L) {
  release(L, luaL_checkudata(L, 1, TIMER_MT));
  return 0;
}

static int timer_tostring(lua_State *L) {
  timer_box **p = luaL_checkudata(L, 1, TIMER_MT);
  if (*p == NULL) /* as liolib's "file (closed)" */
    lua_pushliteral(L, "Timer (closed)");
  else
    lua_pushfstring(L, "Timer (%s): %p",
                    (*p)->ref != LUA_NOREF ? "active" : "stopped", (void *)*p);
  return 1;
}

int luaopen_tulua_timer(lua_State *L) {
  static const luaL_Reg methods[] = {{"stop", timer_stop},
                                     {"active", timer_active},
                                     {"close", timer_close},
                                     {NULL, NULL}};
  static const luaL_Reg meta[] = {{"__gc", timer_close},
                                  {"__close", timer_close},
                                  {"__tostring", timer_tostring},
                                  {NULL, NULL}};
  static const luaL_Reg funcs[] = {
      {"after", timer_after}, {"every", timer_every}, {NULL, NULL}};
  tulua__new_class(L, TIMER_MT, meta, methods);
  luaL_newlib(L, funcs);
  return 1;
}
