/* test_embed.c: the embedding API (tulua.h) as a host program uses it: one
 * test per entry point, two runtimes side by side, and a frame loop that
 * steps two runtimes while each runs timers and file reads.
 *
 * Every test ends by closing its runtimes and checking that the loop closed
 * with nothing left: uv_loop_close returns 0 on a loop the test owns; on a
 * runtime's own loop, nothing keeps the loop alive before tulua_close (the
 * leak checkers of the valgrind and sanitizer runs see the rest). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <lauxlib.h>
#include <uv.h>

#include "tulua.h"
#include "check.h"

/* ---- helpers ---- */

/* A runtime on a loop the test owns, as an engine with its own loop has. */
typedef struct {
  uv_loop_t loop;
  tulua_runtime *rt;
} host;

/* Opens h->rt on h->loop with cfg (NULL: the defaults). Returns 0 or the
 * error of uv_loop_init or tulua_open. */
static int host_open(host *h, const tulua_config *cfg) {
  tulua_config c;
  if (cfg != NULL)
    c = *cfg;
  else
    tulua_config_init(&c);
  h->rt = NULL;
  int rc = uv_loop_init(&h->loop);
  if (rc < 0) return rc;
  c.loop = &h->loop;
  rc = tulua_open(&h->rt, &c);
  if (rc < 0) uv_loop_close(&h->loop);
  return rc;
}

/* Closes as tulua.h asks a host to: tulua_close, one UV_RUN_NOWAIT run for
 * the close callbacks, then the loop. Returns uv_loop_close's result: 0
 * when nothing was left on the loop. */
static int host_close(host *h) {
  tulua_close(h->rt);
  h->rt = NULL;
  uv_run(&h->loop, UV_RUN_NOWAIT);
  return uv_loop_close(&h->loop);
}

static double now(void) {
  return (double)uv_hrtime() / 1e9;
}

static void sleep_seconds(double s) {
  struct timespec ts;
  ts.tv_sec = (time_t)s;
  ts.tv_nsec = (long)((s - (double)ts.tv_sec) * 1e9);
  nanosleep(&ts, NULL);
}

/* Loads code and pushes it as a function; prints the error on failure. */
static int load(tulua_runtime *rt, const char *code, const char *name) {
  int rc = tulua_load_string(rt, code, strlen(code), name);
  if (rc != 0) fprintf(stderr, "  load: %s\n", tulua_errmsg(rt));
  return rc;
}

/* Runs code with tulua_call and leaves nres results on the stack. Returns
 * the status; on failure prints the error and pops it. */
static int call_lua(tulua_runtime *rt, const char *code, int nres) {
  if (load(rt, code, "=test") != 0) return TULUA_ELUA;
  int rc = tulua_call(rt, 0, nres);
  if (rc != LUA_OK) {
    fprintf(stderr, "  call: %s\n", lua_tostring(tulua_state(rt), -1));
    lua_pop(tulua_state(rt), 1);
  }
  return rc;
}

/* Starts code as a task with tulua_spawn. */
static int spawn_lua(tulua_runtime *rt, const char *code) {
  if (load(rt, code, "=spawned") != 0) return TULUA_ELUA;
  return tulua_spawn(rt, 0);
}

#define NOT_AN_INTEGER (-999999)

/* Returns the integer in global name, or NOT_AN_INTEGER. */
static lua_Integer global_int(tulua_runtime *rt, const char *name) {
  lua_State *L = tulua_state(rt);
  int isnum;
  lua_getglobal(L, name);
  lua_Integer v = lua_tointegerx(L, -1, &isnum);
  lua_pop(L, 1);
  return isnum ? v : NOT_AN_INTEGER;
}

/* Copies the string in global name into buf ("(nil)" if it is none). */
static const char *global_str(tulua_runtime *rt, const char *name, char *buf,
                              size_t size) {
  lua_State *L = tulua_state(rt);
  lua_getglobal(L, name);
  const char *s = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : NULL;
  snprintf(buf, size, "%s", s ? s : "(nil)");
  lua_pop(L, 1);
  return buf;
}

/* Records the uncaught task errors on_error receives. */
typedef struct {
  int calls;
  tulua_runtime *rt;
  int print; /* also print them, for tests that expect none */
  char last[4096];
} errors;

static void on_error_cb(tulua_runtime *rt, const char *msg, void *ud) {
  errors *e = ud;
  e->calls++;
  e->rt = rt;
  snprintf(e->last, sizeof e->last, "%s", msg);
  if (e->print) fprintf(stderr, "  uncaught: %s\n", msg);
}

static int write_file(const char *path, const char *data, size_t len) {
  FILE *f = fopen(path, "wb");
  if (f == NULL) return -1;
  size_t n = fwrite(data, 1, len, f);
  return fclose(f) == 0 && n == len ? 0 : -1;
}

/* ---- tulua_config_init, tulua_open ---- */

static int test_config_init_defaults(void) {
  tulua_config cfg;
  memset(&cfg, 0xa5, sizeof cfg);
  tulua_config_init(&cfg);
  CHECK(cfg.loop == NULL);
  CHECK(cfg.on_error == NULL);
  CHECK(cfg.userdata == NULL);
  CHECK_EQ(1, cfg.open_stdlibs);
  return 0;
}

static int test_open_own_loop(void) {
  tulua_runtime *rt = NULL;
  CHECK_EQ(0, tulua_open(&rt, NULL));
  CHECK(rt != NULL);
  CHECK(tulua_state(rt) != NULL);
  CHECK(tulua_loop(rt) != NULL);
  CHECK_STR_EQ("", tulua_errmsg(rt));
  CHECK_EQ(0, tulua_uncaught_errors(rt));
  /* standard libraries and the tulua modules are there; the loop runs */
  CHECK_EQ(LUA_OK, call_lua(rt,
                            "local tulua = require 'tulua'\n"
                            "tulua.sleep(0.001)\n"
                            "return string.rep('ab', 2) .. type(tulua.spawn)",
                            1));
  CHECK_STR_EQ("ababfunction", lua_tostring(tulua_state(rt), -1));
  lua_pop(tulua_state(rt), 1);
  CHECK_EQ(0, lua_gettop(tulua_state(rt)));
  CHECK_EQ(0, uv_loop_alive(tulua_loop(rt)));
  tulua_close(rt);
  tulua_close(NULL); /* ignored */
  return 0;
}

static int test_open_without_stdlibs(void) {
  host h;
  tulua_config cfg;
  tulua_config_init(&cfg);
  cfg.open_stdlibs = 0;
  CHECK_EQ(0, host_open(&h, &cfg));
  lua_State *L = tulua_state(h.rt);
  CHECK_EQ(LUA_TNIL, lua_getglobal(L, "print"));
  CHECK_EQ(LUA_TNIL, lua_getglobal(L, "string"));
  CHECK_EQ(LUA_TTABLE, lua_getglobal(L, "coroutine")); /* the runtime's */
  lua_pop(L, 3);
  CHECK_EQ(0, host_close(&h));
  return 0;
}

static int host_timer_fired;

static void host_timer_cb(uv_timer_t *t) {
  (void)t;
  host_timer_fired++;
}

/* The host runs its loop itself (uv_run) with its own handle next to the
 * runtime's, and closes it after the runtime; an active Lua timer left
 * open is closed by tulua_close. */
static int test_open_host_loop(void) {
  uv_loop_t loop;
  tulua_runtime *rt = NULL;
  uv_timer_t ht;
  tulua_config cfg;
  CHECK_EQ(0, uv_loop_init(&loop));
  tulua_config_init(&cfg);
  cfg.loop = &loop;
  CHECK_EQ(0, tulua_open(&rt, &cfg));
  CHECK(tulua_loop(rt) == &loop);

  host_timer_fired = 0;
  CHECK_EQ(0, uv_timer_init(&loop, &ht));
  CHECK_EQ(0, uv_timer_start(&ht, host_timer_cb, 5, 0));
  CHECK_EQ(0, spawn_lua(rt, "require('tulua').sleep(0.02)\n"
                            "slept = (slept or 0) + 1"));
  CHECK_EQ(0, uv_run(&loop, UV_RUN_DEFAULT));
  CHECK_EQ(1, host_timer_fired);
  CHECK_EQ(1, global_int(rt, "slept"));
  uv_close((uv_handle_t *)&ht, NULL);

  CHECK_EQ(LUA_OK,
           call_lua(rt, "keep = require('tulua.timer').every(100, print)", 0));
  CHECK_EQ(1, uv_loop_alive(&loop)); /* the Lua timer is active */
  tulua_close(rt);
  CHECK_EQ(0, uv_run(&loop, UV_RUN_NOWAIT));
  CHECK_EQ(0, uv_loop_close(&loop));
  return 0;
}

/* ---- tulua_preload ---- */

static int hostmod_opens;

static int hostmod_add(lua_State *L) {
  lua_pushinteger(L, luaL_checkinteger(L, 1) + luaL_checkinteger(L, 2));
  return 1;
}

static int luaopen_hostmod(lua_State *L) {
  static const luaL_Reg funcs[] = {{"add", hostmod_add}, {NULL, NULL}};
  hostmod_opens++;
  luaL_newlib(L, funcs);
  lua_pushvalue(L, 1); /* the name require passes */
  lua_setfield(L, -2, "name");
  return 1;
}

static int test_preload(void) {
  host h;
  CHECK_EQ(0, host_open(&h, NULL));
  hostmod_opens = 0;
  CHECK_EQ(0, tulua_preload(h.rt, "host.mod", luaopen_hostmod));
  CHECK_EQ(0, hostmod_opens); /* opened by require, not before */
  CHECK_EQ(LUA_OK, call_lua(h.rt,
                            "local m = require 'host.mod'\n"
                            "local again = require 'host.mod'\n"
                            "return m.add(2, 3), m.name, m == again",
                            3));
  lua_State *L = tulua_state(h.rt);
  CHECK_EQ(5, lua_tointeger(L, -3));
  CHECK_STR_EQ("host.mod", lua_tostring(L, -2));
  CHECK_EQ(1, lua_toboolean(L, -1));
  lua_pop(L, 3);
  CHECK_EQ(1, hostmod_opens);
  CHECK_EQ(0, host_close(&h));
  return 0;
}

/* ---- tulua_load_string, tulua_load_file ---- */

typedef struct {
  char data[1024];
  size_t len;
} dump_buf;

static int dump_writer(lua_State *L, const void *p, size_t sz, void *ud) {
  dump_buf *b = ud;
  (void)L;
  if (sz > sizeof b->data - b->len) return 1;
  memcpy(b->data + b->len, p, sz);
  b->len += sz;
  return 0;
}

static int test_load_string(void) {
  host h;
  CHECK_EQ(0, host_open(&h, NULL));
  lua_State *L = tulua_state(h.rt);

  /* a syntax error: nothing pushed, the message in tulua_errmsg */
  CHECK_EQ(TULUA_ELUA, tulua_load_string(h.rt, "return 1 +", 10, "=bad"));
  CHECK_EQ(0, lua_gettop(L));
  CHECK_STR_EQ("bad:1: unexpected symbol near <eof>", tulua_errmsg(h.rt));

  /* only len bytes are read */
  static const char code[] = "return 6 * 7 ]] not part of the chunk";
  CHECK_EQ(0, tulua_load_string(h.rt, code, 12, "=good"));
  CHECK_EQ(1, lua_gettop(L));
  CHECK_EQ(LUA_TFUNCTION, lua_type(L, 1));
  CHECK_EQ(LUA_OK, tulua_call(h.rt, 0, 1));
  CHECK_EQ(42, lua_tointeger(L, -1));
  lua_pop(L, 1);

  /* precompiled chunks load too (mode "bt") */
  dump_buf b = {.len = 0};
  CHECK_EQ(LUA_OK, luaL_loadstring(L, "return 'dumped'"));
  CHECK_EQ(0, lua_dump(L, dump_writer, &b, 0));
  lua_pop(L, 1);
  CHECK_EQ(0, tulua_load_string(h.rt, b.data, b.len, "=dumped"));
  CHECK_EQ(LUA_OK, tulua_call(h.rt, 0, 1));
  CHECK_STR_EQ("dumped", lua_tostring(L, -1));
  lua_pop(L, 1);
  CHECK_EQ(0, lua_gettop(L));
  CHECK_EQ(0, host_close(&h));
  return 0;
}

static int test_load_file(void) {
  char dir[] = "/tmp/tulua-test-XXXXXX", path[128], missing[128], bad[128];
  char want[256];
  CHECK(mkdtemp(dir) != NULL);
  snprintf(path, sizeof path, "%s/script.lua", dir);
  snprintf(missing, sizeof missing, "%s/missing.lua", dir);
  snprintf(bad, sizeof bad, "%s/bad.lua", dir);
  static const char script[] = "#!/usr/bin/env tulua\n"
                               "local a, b = ...\n"
                               "require('tulua').sleep(0.001)\n"
                               "return a * b, select('#', ...)\n";
  CHECK_EQ(0, write_file(path, script, sizeof script - 1));
  CHECK_EQ(0, write_file(bad, "x = = 1\n", 8));

  host h;
  CHECK_EQ(0, host_open(&h, NULL));
  lua_State *L = tulua_state(h.rt);
  CHECK_EQ(0, tulua_load_file(h.rt, path));
  CHECK_EQ(1, lua_gettop(L));
  lua_pushinteger(L, 6);
  lua_pushinteger(L, 7);
  CHECK_EQ(LUA_OK, tulua_call(h.rt, 2, 2));
  CHECK_EQ(42, lua_tointeger(L, -2));
  CHECK_EQ(2, lua_tointeger(L, -1));
  lua_pop(L, 2);

  CHECK_EQ(TULUA_ELUA, tulua_load_file(h.rt, missing));
  CHECK_EQ(0, lua_gettop(L));
  snprintf(want, sizeof want, "cannot open %s: No such file or directory",
           missing);
  CHECK_STR_EQ(want, tulua_errmsg(h.rt));

  CHECK_EQ(TULUA_ELUA, tulua_load_file(h.rt, bad));
  CHECK_EQ(0, lua_gettop(L));
  snprintf(want, sizeof want, "%s:1: unexpected symbol near '='", bad);
  CHECK_STR_EQ(want, tulua_errmsg(h.rt));
  CHECK_EQ(0, host_close(&h));

  CHECK_EQ(0, unlink(path));
  CHECK_EQ(0, unlink(bad));
  CHECK_EQ(0, rmdir(dir));
  return 0;
}

/* ---- tulua_spawn, tulua_run ---- */

static int test_spawn(void) {
  host h;
  char buf[64];
  CHECK_EQ(0, host_open(&h, NULL));
  lua_State *L = tulua_state(h.rt);
  static const char code[] = "local a, b = ...\n"
                             "log = (log or '') .. a .. b\n"
                             "require('tulua').sleep(0.001)\n"
                             "done = (done or 0) + 1";
  for (int i = 1; i <= 2; i++) {
    CHECK_EQ(0, load(h.rt, code, "=spawned"));
    lua_pushstring(L, i == 1 ? "x" : "y");
    lua_pushinteger(L, i);
    CHECK_EQ(0, tulua_spawn(h.rt, 2));
    CHECK_EQ(0, lua_gettop(L)); /* pops the function and args only */
  }
  CHECK_EQ(NOT_AN_INTEGER, global_int(h.rt, "done")); /* not run yet */
  lua_gc(L, LUA_GCCOLLECT); /* nothing refers to the tasks: they still run */
  CHECK_EQ(1, tulua_step(h.rt, 0));
  CHECK_STR_EQ("x1y2", global_str(h.rt, "log", buf, sizeof buf));
  lua_gc(L, LUA_GCCOLLECT);
  CHECK_EQ(0, tulua_run(h.rt));
  CHECK_EQ(2, global_int(h.rt, "done"));
  CHECK_EQ(0, tulua_uncaught_errors(h.rt));
  CHECK_EQ(0, host_close(&h));
  return 0;
}

static int test_run(void) {
  host h;
  char buf[64];
  CHECK_EQ(0, host_open(&h, NULL));
  CHECK_EQ(0, spawn_lua(h.rt, "require('tulua').sleep(0.03)\n"
                              "order = (order or '') .. 'c'"));
  CHECK_EQ(0, spawn_lua(h.rt, "require('tulua').sleep(0.01)\n"
                              "order = (order or '') .. 'a'"));
  CHECK_EQ(0, spawn_lua(h.rt, "require('tulua.timer').after(0.02, function()\n"
                              "  order = (order or '') .. 'b'\n"
                              "end)"));
  double t0 = now();
  CHECK_EQ(0, tulua_run(h.rt));
  CHECK_RANGE(0.029, now() - t0, 10.0);
  CHECK_STR_EQ("abc", global_str(h.rt, "order", buf, sizeof buf));
  CHECK_EQ(0, uv_loop_alive(&h.loop));
  CHECK_EQ(0, tulua_run(h.rt)); /* nothing left: returns at once */
  CHECK_EQ(0, host_close(&h));
  return 0;
}

/* Called from a task: every blocking entry point refuses to nest. Returns
 * tulua_run's, tulua_step's and tulua_call's codes, tulua_call's message
 * and whether it left exactly that message on the main stack. */
static int l_reenter(lua_State *L) {
  tulua_runtime *rt = lua_touserdata(L, lua_upvalueindex(1));
  lua_State *M = tulua_state(rt);
  lua_pushinteger(L, tulua_run(rt));
  lua_pushstring(L, tulua_errmsg(rt));
  lua_pushinteger(L, tulua_step(rt, 0));
  int top = lua_gettop(M);
  lua_pushcfunction(M, l_reenter);
  lua_pushinteger(M, 1);
  lua_pushinteger(L, tulua_call(rt, 1, 0));
  lua_pushboolean(L, lua_gettop(M) == top + 1);
  lua_pushstring(L, lua_tostring(M, -1));
  lua_settop(M, top);
  return 6;
}

static int test_no_nested_runs(void) {
  host h;
  CHECK_EQ(0, host_open(&h, NULL));
  lua_State *L = tulua_state(h.rt);
  lua_pushlightuserdata(L, h.rt);
  lua_pushcclosure(L, l_reenter, 1);
  lua_setglobal(L, "reenter");
  CHECK_EQ(LUA_OK, call_lua(h.rt, "return reenter()", 6));
  CHECK_EQ(TULUA_ESTATE, lua_tointeger(L, 1));
  CHECK_STR_EQ("tulua_run: called from inside a task", lua_tostring(L, 2));
  CHECK_EQ(TULUA_ESTATE, lua_tointeger(L, 3));
  CHECK_EQ(LUA_ERRRUN, lua_tointeger(L, 4));
  CHECK_EQ(1, lua_toboolean(L, 5));
  CHECK_STR_EQ("tulua_call: called from inside a task", lua_tostring(L, 6));
  lua_settop(L, 0);
  CHECK_EQ(0, host_close(&h));
  return 0;
}

/* ---- tulua_call ---- */

static int test_call_returns_results(void) {
  host h;
  CHECK_EQ(0, host_open(&h, NULL));
  lua_State *L = tulua_state(h.rt);
  CHECK_EQ(0, load(h.rt,
                   "local a, b = ...\n"
                   "require('tulua').sleep(0.001)\n"
                   "return a + b, a .. b, 'dropped'",
                   "=sum"));
  lua_pushinteger(L, 2);
  lua_pushinteger(L, 3);
  CHECK_EQ(LUA_OK, tulua_call(h.rt, 2, 2));
  CHECK_EQ(2, lua_gettop(L));
  CHECK_EQ(5, lua_tointeger(L, 1));
  CHECK_STR_EQ("23", lua_tostring(L, 2));
  lua_settop(L, 0);

  CHECK_EQ(LUA_OK, call_lua(h.rt, "return 1, 2, 3", LUA_MULTRET));
  CHECK_EQ(3, lua_gettop(L));
  CHECK_EQ(3, lua_tointeger(L, 3));
  lua_settop(L, 0);

  /* it returns once its task ended; tasks it spawned go on */
  CHECK_EQ(LUA_OK, call_lua(h.rt,
                            "local tulua = require 'tulua'\n"
                            "tulua.spawn(function()\n"
                            "  tulua.sleep(0.02)\n"
                            "  background = 1\n"
                            "end)\n"
                            "return 'first'",
                            1));
  CHECK_STR_EQ("first", lua_tostring(L, -1));
  lua_pop(L, 1);
  CHECK_EQ(NOT_AN_INTEGER, global_int(h.rt, "background"));
  CHECK_EQ(0, tulua_run(h.rt));
  CHECK_EQ(1, global_int(h.rt, "background"));
  CHECK_EQ(0, host_close(&h));
  return 0;
}

static int test_call_error(void) {
  errors e = {0};
  tulua_config cfg;
  tulua_config_init(&cfg);
  cfg.on_error = on_error_cb;
  cfg.userdata = &e;
  host h;
  CHECK_EQ(0, host_open(&h, &cfg));
  lua_State *L = tulua_state(h.rt);

  CHECK_EQ(0, load(h.rt,
                   "local function fail() error('boom') end\n"
                   "require('tulua').sleep(0.001)\n"
                   "fail()",
                   "=failing"));
  CHECK_EQ(LUA_ERRRUN, tulua_call(h.rt, 0, 0));
  CHECK_EQ(1, lua_gettop(L)); /* the message only */
  const char *msg = lua_tostring(L, -1);
  CHECK_CONTAINS(msg, "failing:1: boom\nstack traceback:\n");
  CHECK_CONTAINS(msg, "failing:1: in local 'fail'");
  CHECK_CONTAINS(msg, "failing:3: in ");
  lua_pop(L, 1);

  /* an error object without __tostring comes back as it is */
  CHECK_EQ(0, load(h.rt, "error({code = 7})", "=object"));
  CHECK_EQ(LUA_ERRRUN, tulua_call(h.rt, 0, 0));
  CHECK_EQ(1, lua_gettop(L));
  CHECK_EQ(LUA_TTABLE, lua_type(L, -1));
  CHECK_EQ(LUA_TNUMBER, lua_getfield(L, -1, "code"));
  CHECK_EQ(7, lua_tointeger(L, -1));
  lua_settop(L, 0);

  /* one with __tostring comes back as that text */
  CHECK_EQ(0, load(h.rt,
                   "error(setmetatable({}, {\n"
                   "  __tostring = function() return 'custom' end}))",
                   "=tostring"));
  CHECK_EQ(LUA_ERRRUN, tulua_call(h.rt, 0, 0));
  CHECK_EQ(1, lua_gettop(L));
  CHECK_STR_EQ("custom", lua_tostring(L, -1));
  lua_pop(L, 1);

  /* a failing __tostring: the object itself, and no error escapes */
  CHECK_EQ(0, load(h.rt,
                   "error(setmetatable({code = 8}, {\n"
                   "  __tostring = function() error('no text') end}))",
                   "=badtostring"));
  CHECK_EQ(LUA_ERRRUN, tulua_call(h.rt, 0, 0));
  CHECK_EQ(1, lua_gettop(L));
  CHECK_EQ(LUA_TTABLE, lua_type(L, -1));
  CHECK_EQ(LUA_TNUMBER, lua_getfield(L, -1, "code"));
  CHECK_EQ(8, lua_tointeger(L, -1));
  lua_settop(L, 0);

  /* the caller got the errors: none went to on_error */
  CHECK_EQ(0, e.calls);
  CHECK_EQ(0, tulua_uncaught_errors(h.rt));
  CHECK_EQ(LUA_OK, call_lua(h.rt, "return 'still usable'", 1));
  CHECK_STR_EQ("still usable", lua_tostring(L, -1));
  lua_pop(L, 1);
  CHECK_EQ(0, host_close(&h));
  return 0;
}

/* Two tasks join each other: the loop runs dry and tulua_call reports the
 * deadlock instead of blocking or returning garbage. */
static int test_call_deadlock(void) {
  host h;
  CHECK_EQ(0, host_open(&h, NULL));
  lua_State *L = tulua_state(h.rt);
  CHECK_EQ(0,
           load(h.rt,
                "local tulua = require 'tulua'\n"
                "local me = tulua.current()\n"
                "local other = tulua.spawn(function() return me:join() end)\n"
                "return other:join()",
                "=deadlock"));
  CHECK_EQ(LUA_ERRRUN, tulua_call(h.rt, 0, 0));
  CHECK_EQ(1, lua_gettop(L));
  const char *msg = lua_tostring(L, -1);
  CHECK_CONTAINS(msg, "deadlock: the task waits for something that will "
                      "never happen\nstack traceback:\n");
  CHECK_CONTAINS(msg, "deadlock:4: in ");
  lua_pop(L, 1);
  CHECK_EQ(LUA_OK, call_lua(h.rt, "return 7", 1));
  CHECK_EQ(7, lua_tointeger(L, -1));
  lua_pop(L, 1);
  CHECK_EQ(0, host_close(&h)); /* the two waiting tasks are cancelled */
  return 0;
}

/* ---- tulua_step ---- */

static int test_step_without_budget(void) {
  host h;
  CHECK_EQ(0, host_open(&h, NULL));
  CHECK_EQ(0, lua_gettop(tulua_state(h.rt)));
  /* each task yields to the loop three times, then counts itself */
  for (int i = 0; i < 10; i++)
    CHECK_EQ(0, spawn_lua(h.rt, "local tulua = require 'tulua'\n"
                                "runs = (runs or 0) + 1\n"
                                "for _ = 1, 3 do\n"
                                "  tulua.sleep(0)\n"
                                "  runs = runs + 1\n"
                                "end\n"
                                "done = (done or 0) + 1"));
  /* one step resumes every task that was ready once */
  for (int step = 1; step <= 3; step++) {
    CHECK_EQ(1, tulua_step(h.rt, 0));
    CHECK_EQ(10 * step, global_int(h.rt, "runs"));
    CHECK_EQ(NOT_AN_INTEGER, global_int(h.rt, "done"));
  }
  CHECK_EQ(0, tulua_step(h.rt, 0)); /* the last resumes: now idle */
  CHECK_EQ(40, global_int(h.rt, "runs"));
  CHECK_EQ(10, global_int(h.rt, "done"));
  CHECK_EQ(0, tulua_step(h.rt, 0));

  /* a step never blocks, even with a sleeper */
  CHECK_EQ(0, spawn_lua(h.rt, "require('tulua').sleep(30) woke = 1"));
  double t0 = now();
  CHECK_EQ(1, tulua_step(h.rt, 0));
  CHECK_EQ(1, tulua_step(h.rt, 0));
  CHECK_RANGE(0, now() - t0, 5.0);
  CHECK_EQ(NOT_AN_INTEGER, global_int(h.rt, "woke"));
  CHECK_EQ(0, host_close(&h)); /* the sleeper is cancelled */
  return 0;
}

static int test_step_with_budget(void) {
  host h;
  CHECK_EQ(0, host_open(&h, NULL));
  lua_State *L = tulua_state(h.rt);
  CHECK_EQ(0, load(h.rt,
                   "local now = require('tulua').now\n"
                   "local t0 = now()\n"
                   "while now() - t0 < 0.001 do end\n"
                   "done = (done or 0) + 1",
                   "=busy"));
  for (int i = 0; i < 100; i++) {
    lua_pushvalue(L, 1);
    CHECK_EQ(0, tulua_spawn(h.rt, 0));
  }
  /* 100 tasks of 1 ms each, 10 ms budget: about ten run */
  CHECK_EQ(1, tulua_step(h.rt, 0.010));
  lua_Integer first = global_int(h.rt, "done");
  CHECK_RANGE(1, first, 11);
  int steps = 1;
  lua_Integer done = first;
  while (done < 100 && steps < 1000) {
    int r = tulua_step(h.rt, 0.010);
    lua_Integer d = global_int(h.rt, "done");
    CHECK_EQ(d < 100, r); /* work left until the last one ran */
    CHECK_RANGE(done + 1, d, done + 11); /* progress in every step */
    done = d;
    steps++;
  }
  CHECK_EQ(100, done);
  CHECK_RANGE(9, steps, 100);
  CHECK_EQ(0, tulua_step(h.rt, 0.010));

  /* without a budget, one step runs them all */
  for (int i = 0; i < 100; i++) {
    lua_pushvalue(L, 1);
    CHECK_EQ(0, tulua_spawn(h.rt, 0));
  }
  CHECK_EQ(0, tulua_step(h.rt, 0));
  CHECK_EQ(200, global_int(h.rt, "done"));
  lua_pop(L, 1);
  CHECK_EQ(0, host_close(&h));
  return 0;
}

/* ---- tulua_next_deadline ---- */

static int test_next_deadline(void) {
  host h;
  CHECK_EQ(0, host_open(&h, NULL));
  CHECK_RANGE(-1, tulua_next_deadline(h.rt), -1); /* nothing scheduled */
  CHECK_EQ(0, spawn_lua(h.rt, "require('tulua').sleep(0.2)"));
  CHECK_RANGE(0, tulua_next_deadline(h.rt), 0); /* a task is ready */
  CHECK_EQ(1, tulua_step(h.rt, 0));
  /* only the sleeper: its wake-up time */
  CHECK_RANGE(0.1, tulua_next_deadline(h.rt), 0.2);
  CHECK_EQ(0, tulua_run(h.rt));
  CHECK_RANGE(-1, tulua_next_deadline(h.rt), -1);
  CHECK_EQ(0, host_close(&h));
  return 0;
}

/* ---- tulua_wakeup ---- */

typedef struct {
  tulua_runtime *rt;
  unsigned delay_ms;
  int rc;
} poker;

static void wakeup_main(void *arg) {
  poker *p = arg;
  uv_sleep(p->delay_ms);
  p->rc = tulua_wakeup(p->rt);
}

static int test_wakeup_from_thread(void) {
  host h;
  uv_thread_t th;
  CHECK_EQ(0, host_open(&h, NULL));
  CHECK_EQ(0, spawn_lua(h.rt, "require('tulua').sleep(30) woke = 1"));
  CHECK_EQ(1, tulua_step(h.rt, 0)); /* now only the 30 s sleeper is left */
  poker p = {h.rt, 50, -1};
  double t0 = now();
  CHECK_EQ(0, uv_thread_create(&th, wakeup_main, &p));
  CHECK_EQ(1, uv_run(&h.loop, UV_RUN_ONCE)); /* blocks until the wakeup */
  double waited = now() - t0;
  CHECK_EQ(0, uv_thread_join(&th));
  CHECK_EQ(0, p.rc);
  CHECK_RANGE(0.045, waited, 10.0); /* it did block */
  CHECK_EQ(NOT_AN_INTEGER, global_int(h.rt, "woke"));
  CHECK_EQ(0, host_close(&h));
  return 0;
}

/* ---- on_error, tulua_uncaught_errors ---- */

static int test_on_error(void) {
  errors e = {0};
  char buf[256];
  tulua_config cfg;
  tulua_config_init(&cfg);
  cfg.on_error = on_error_cb;
  cfg.userdata = &e;
  host h;
  CHECK_EQ(0, host_open(&h, &cfg));
  cfg.on_error = NULL; /* the runtime has its own copy */
  cfg.userdata = NULL;
  CHECK_EQ(0, load(h.rt,
                   "local function inner() error('kaboom') end\n"
                   "require('tulua').sleep(0.001)\n"
                   "inner()",
                   "=failing"));
  CHECK_EQ(0, tulua_spawn(h.rt, 0));
  /* an error someone joins is not uncaught */
  CHECK_EQ(0, spawn_lua(h.rt, "local tulua = require 'tulua'\n"
                              "local t = tulua.spawn(error, 'joined', 0)\n"
                              "local ok, err = pcall(t.join, t)\n"
                              "caught = err"));
  CHECK_EQ(0, tulua_run(h.rt));
  CHECK_EQ(1, e.calls);
  CHECK(e.rt == h.rt);
  CHECK_CONTAINS(e.last, "failing:1: kaboom\nstack traceback:\n");
  CHECK_CONTAINS(e.last, "failing:1: in ");
  CHECK_CONTAINS(e.last, "failing:3: in ");
  CHECK_EQ(1, tulua_uncaught_errors(h.rt));
  CHECK_CONTAINS(global_str(h.rt, "caught", buf, sizeof buf), "joined");

  /* reported from tulua_step and tulua_call too */
  CHECK_EQ(0, spawn_lua(h.rt, "error('in step')"));
  CHECK_EQ(0, tulua_step(h.rt, 0));
  CHECK_EQ(2, e.calls);
  CHECK_CONTAINS(e.last, "spawned:1: in step");
  CHECK_EQ(LUA_OK, call_lua(h.rt,
                            "local tulua = require 'tulua'\n"
                            "tulua.spawn(error, 'in call', 0)\n"
                            "tulua.sleep(0.01)",
                            0));
  CHECK_EQ(3, e.calls);
  CHECK_CONTAINS(e.last, "in call\nstack traceback:\n");
  CHECK_EQ(3, tulua_uncaught_errors(h.rt));

  /* an error the runtime went on from (a failing Future callback) is
   * reported too, but not counted */
  CHECK_EQ(LUA_OK,
           call_lua(h.rt,
                    "local f = require('concurrent.futures').Future()\n"
                    "f:add_done_callback(function() error('cb', 0) end)\n"
                    "f:set_result(1)",
                    0));
  CHECK_EQ(4, e.calls);
  CHECK_EQ(0, strcmp("exception calling callback for <Future finished>: cb",
                     e.last));
  CHECK_EQ(3, tulua_uncaught_errors(h.rt));
  CHECK_EQ(0, host_close(&h));

  /* without on_error they are only counted */
  CHECK_EQ(0, host_open(&h, NULL));
  CHECK_EQ(0, spawn_lua(h.rt, "error('nobody listens')"));
  CHECK_EQ(0, tulua_run(h.rt));
  CHECK_EQ(1, tulua_uncaught_errors(h.rt));
  CHECK_EQ(0, host_close(&h));
  return 0;
}

/* ---- tulua_interrupt ---- */

/* Lua calls started() once its busy loop is about to run. */
static int l_started(lua_State *L) {
  uv_sem_post(lua_touserdata(L, lua_upvalueindex(1)));
  return 0;
}

typedef struct {
  tulua_runtime *rt;
  uv_sem_t started;
  int rc;
} interrupter;

static void interrupt_main(void *arg) {
  interrupter *p = arg;
  uv_sem_wait(&p->started);
  uv_sleep(20); /* well inside the loop */
  p->rc = tulua_interrupt(p->rt);
}

/* Another thread interrupts Lua code that never waits, as a SIGINT handler
 * would. */
static int test_interrupt_busy_loop(void) {
  host h;
  uv_thread_t th;
  interrupter p;
  CHECK_EQ(0, host_open(&h, NULL));
  lua_State *L = tulua_state(h.rt);
  p.rt = h.rt;
  p.rc = -1;
  CHECK_EQ(0, uv_sem_init(&p.started, 0));
  lua_pushlightuserdata(L, &p.started);
  lua_pushcclosure(L, l_started, 1);
  lua_setglobal(L, "started");
  CHECK_EQ(0, load(h.rt, "started()\nlocal n = 0\nwhile true do n = n + 1 end",
                   "=busy"));
  CHECK_EQ(0, uv_thread_create(&th, interrupt_main, &p));
  CHECK_EQ(LUA_ERRRUN, tulua_call(h.rt, 0, 0));
  CHECK_EQ(0, uv_thread_join(&th));
  uv_sem_destroy(&p.started);
  CHECK_EQ(0, p.rc);
  CHECK_EQ(1, lua_gettop(L));
  CHECK_CONTAINS(lua_tostring(L, -1), "interrupted!\nstack traceback:\n");
  CHECK_CONTAINS(lua_tostring(L, -1), "busy:3: in ");
  lua_pop(L, 1);
  /* the interrupt is used up: the next call runs normally */
  CHECK_EQ(LUA_OK, call_lua(h.rt,
                            "local n = 0\n"
                            "for i = 1, 100000 do n = n + i end\n"
                            "return n",
                            1));
  CHECK_EQ(5000050000, lua_tointeger(L, -1));
  lua_pop(L, 1);
  CHECK_EQ(0, tulua_uncaught_errors(h.rt));
  CHECK_EQ(0, host_close(&h));
  return 0;
}

/* An interrupt that comes before tulua_call's task first ran cancels it
 * with the same message. */
static int test_interrupt_before_call(void) {
  host h;
  CHECK_EQ(0, host_open(&h, NULL));
  lua_State *L = tulua_state(h.rt);
  CHECK_EQ(0, tulua_interrupt(h.rt));
  CHECK_EQ(0, load(h.rt, "ran = 1", "=never"));
  CHECK_EQ(LUA_ERRRUN, tulua_call(h.rt, 0, 0));
  CHECK_STR_EQ("interrupted!", lua_tostring(L, -1));
  lua_pop(L, 1);
  CHECK_EQ(NOT_AN_INTEGER, global_int(h.rt, "ran"));
  CHECK_EQ(LUA_OK, call_lua(h.rt, "ran = 2", 0));
  CHECK_EQ(2, global_int(h.rt, "ran"));
  CHECK_EQ(0, host_close(&h));
  return 0;
}

static int interrupt_rcs[2];

static void interrupt_timer_cb(uv_timer_t *t) {
  tulua_runtime *rt = t->data;
  interrupt_rcs[0] = tulua_interrupt(rt);
  interrupt_rcs[1] = tulua_interrupt(rt); /* the first is still pending */
  uv_close((uv_handle_t *)t, NULL);
}

/* A C callback interrupts while the task tulua_call waits for sleeps: the
 * task is cancelled with "interrupted!". */
static int test_interrupt_while_waiting(void) {
  host h;
  uv_timer_t t;
  CHECK_EQ(0, host_open(&h, NULL));
  lua_State *L = tulua_state(h.rt);
  interrupt_rcs[0] = interrupt_rcs[1] = -1;
  CHECK_EQ(0, uv_timer_init(&h.loop, &t));
  t.data = h.rt;
  CHECK_EQ(0, uv_timer_start(&t, interrupt_timer_cb, 20, 0));
  double t0 = now();
  CHECK_EQ(0, load(h.rt, "require('tulua').sleep(30) woke = 1", "=sleeper"));
  CHECK_EQ(LUA_ERRRUN, tulua_call(h.rt, 0, 0));
  CHECK_RANGE(0, now() - t0, 10.0);
  CHECK_EQ(0, interrupt_rcs[0]);
  CHECK_EQ(1, interrupt_rcs[1]);
  CHECK_STR_EQ("interrupted!", lua_tostring(L, -1));
  lua_pop(L, 1);
  CHECK_EQ(NOT_AN_INTEGER, global_int(h.rt, "woke"));
  CHECK_EQ(LUA_OK, call_lua(h.rt, "require('tulua').sleep(0.001)", 0));
  CHECK_EQ(0, tulua_uncaught_errors(h.rt));
  CHECK_EQ(0, host_close(&h));
  return 0;
}

/* ---- the Lua state outside any task ---- */

static int test_wait_outside_task(void) {
  host h;
  CHECK_EQ(0, host_open(&h, NULL));
  lua_State *L = tulua_state(h.rt);
  static const char sleep_code[] = "require('tulua').sleep(0.01)";
  CHECK_EQ(LUA_OK,
           luaL_loadbuffer(L, sleep_code, sizeof sleep_code - 1, "=plain"));
  CHECK_EQ(LUA_ERRRUN, lua_pcall(L, 0, 0, 0));
  CHECK_STR_EQ("plain:1: attempt to wait in 'tulua.sleep' outside a task",
               lua_tostring(L, -1));
  lua_pop(L, 1);
  /* spawning does not wait: allowed; joining does */
  static const char join_code[] =
      "task = require('tulua').spawn(function() ran = 1 end)\n"
      "return task:join()";
  CHECK_EQ(LUA_OK,
           luaL_loadbuffer(L, join_code, sizeof join_code - 1, "=plain"));
  CHECK_EQ(LUA_ERRRUN, lua_pcall(L, 0, 0, 0));
  CHECK_STR_EQ("plain:2: attempt to wait in 'join' outside a task",
               lua_tostring(L, -1));
  lua_pop(L, 1);
  CHECK_EQ(0, lua_gettop(L));
  CHECK_EQ(0, tulua_run(h.rt));
  CHECK_EQ(1, global_int(h.rt, "ran"));
  CHECK_EQ(0, host_close(&h));
  return 0;
}

/* ---- several runtimes in one process ---- */

static int test_two_runtimes(void) {
  tulua_runtime *a = NULL, *b = NULL;
  CHECK_EQ(0, tulua_open(&a, NULL));
  CHECK_EQ(0, tulua_open(&b, NULL));
  CHECK(tulua_state(a) != tulua_state(b));
  CHECK(tulua_loop(a) != tulua_loop(b));
  hostmod_opens = 0;
  CHECK_EQ(0, tulua_preload(a, "host.mod", luaopen_hostmod));

  /* globals and modules are per runtime */
  CHECK_EQ(LUA_OK, call_lua(a, "who = 'a'", 0));
  CHECK_EQ(LUA_OK, call_lua(b, "who = 'b'", 0));
  CHECK_EQ(LUA_OK, call_lua(a, "return who, (pcall(require, 'host.mod'))", 2));
  CHECK_STR_EQ("a", lua_tostring(tulua_state(a), -2));
  CHECK_EQ(1, lua_toboolean(tulua_state(a), -1));
  lua_pop(tulua_state(a), 2);
  CHECK_EQ(LUA_OK, call_lua(b, "return who, (pcall(require, 'host.mod'))", 2));
  CHECK_STR_EQ("b", lua_tostring(tulua_state(b), -2));
  CHECK_EQ(0, lua_toboolean(tulua_state(b), -1));
  lua_pop(tulua_state(b), 2);
  CHECK_EQ(1, hostmod_opens);

  /* tasks, sleepers and errors are per runtime */
  static const char code[] = "local tulua = require 'tulua'\n"
                             "for i = 1, 3 do\n"
                             "  tulua.spawn(function()\n"
                             "    tulua.sleep(0.005 * i)\n"
                             "    woke = (woke or 0) + 1\n"
                             "  end)\n"
                             "end";
  CHECK_EQ(0, spawn_lua(a, code));
  CHECK_EQ(0, spawn_lua(b, code));
  CHECK_EQ(0, spawn_lua(b, "error('only in b')"));
  int ra = 1, rb = 1;
  double t0 = now();
  while ((ra || rb) && now() - t0 < 10.0) {
    ra = tulua_step(a, 0);
    rb = tulua_step(b, 0);
    sleep_seconds(0.001);
  }
  CHECK_EQ(0, ra);
  CHECK_EQ(0, rb);
  CHECK_EQ(3, global_int(a, "woke"));
  CHECK_EQ(3, global_int(b, "woke"));
  CHECK_EQ(0, tulua_uncaught_errors(a));
  CHECK_EQ(1, tulua_uncaught_errors(b));

  CHECK_EQ(0, uv_loop_alive(tulua_loop(a)));
  CHECK_EQ(0, uv_loop_alive(tulua_loop(b)));
  tulua_close(a);
  CHECK_EQ(LUA_OK, call_lua(b, "return who", 1)); /* b outlives a */
  CHECK_STR_EQ("b", lua_tostring(tulua_state(b), -1));
  lua_pop(tulua_state(b), 1);
  tulua_close(b);
  return 0;
}

/* Two runtimes on one loop: a single uv_run drives both. */
static int test_two_runtimes_share_a_loop(void) {
  uv_loop_t loop;
  tulua_runtime *a = NULL, *b = NULL;
  tulua_config cfg;
  CHECK_EQ(0, uv_loop_init(&loop));
  tulua_config_init(&cfg);
  cfg.loop = &loop;
  CHECK_EQ(0, tulua_open(&a, &cfg));
  CHECK_EQ(0, tulua_open(&b, &cfg));
  static const char code[] = "local tulua = require 'tulua'\n"
                             "local timer = require 'tulua.timer'\n"
                             "timer.after(0.01, function() fired = 1 end)\n"
                             "for _ = 1, 3 do tulua.sleep(0.005) end\n"
                             "slept = 1";
  CHECK_EQ(0, spawn_lua(a, code));
  CHECK_EQ(0, spawn_lua(b, code));
  CHECK_EQ(0, uv_run(&loop, UV_RUN_DEFAULT));
  CHECK_EQ(1, global_int(a, "fired"));
  CHECK_EQ(1, global_int(a, "slept"));
  CHECK_EQ(1, global_int(b, "fired"));
  CHECK_EQ(1, global_int(b, "slept"));
  tulua_close(a);
  CHECK_EQ(0, spawn_lua(b, "require('tulua').sleep(0.001) again = 1"));
  CHECK_EQ(0, tulua_run(b));
  CHECK_EQ(1, global_int(b, "again"));
  tulua_close(b);
  CHECK_EQ(0, uv_run(&loop, UV_RUN_NOWAIT));
  CHECK_EQ(0, uv_loop_close(&loop));
  return 0;
}

/* ---- the frame loop of the issue ---- */

/* What each runtime runs: one-shot timers, a repeating timer that stops
 * itself, a task that sleeps, and a task that reads a file repeatedly. */
static const char frame_code[] =
    "local path, expected = ...\n"
    "local tulua = require 'tulua'\n"
    "local timer = require 'tulua.timer'\n"
    "local fs = require 'tulua.fs'\n"
    "fired, ticks, sleeps, reads, bad = 0, 0, 0, 0, 0\n"
    "for i = 1, 10 do\n"
    "  timer.after(0.002 * i, function() fired = fired + 1 end)\n"
    "end\n"
    "local every\n"
    "every = timer.every(0.003, function()\n"
    "  ticks = ticks + 1\n"
    "  if ticks == 5 then every:close() end\n"
    "end)\n"
    "tulua.spawn(function()\n"
    "  for _ = 1, 5 do\n"
    "    tulua.sleep(0.004)\n"
    "    sleeps = sleeps + 1\n"
    "  end\n"
    "end)\n"
    "tulua.spawn(function()\n"
    "  for _ = 1, 5 do\n"
    "    local data = fs.read_file(path)\n"
    "    if data == expected then reads = reads + 1 else bad = bad + 1 end\n"
    "  end\n"
    "end)\n";

typedef struct {
  lua_Integer fired, ticks, sleeps, reads, bad;
  int uncaught, busy_frames;
} frame_counts;

static void frame_collect(tulua_runtime *rt, frame_counts *c) {
  c->fired = global_int(rt, "fired");
  c->ticks = global_int(rt, "ticks");
  c->sleeps = global_int(rt, "sleeps");
  c->reads = global_int(rt, "reads");
  c->bad = global_int(rt, "bad");
  c->uncaught = tulua_uncaught_errors(rt);
}

static int frame_start(tulua_runtime *rt, const char *path, const char *data,
                       size_t len) {
  lua_State *L = tulua_state(rt);
  if (load(rt, frame_code, "=frame") != 0) return TULUA_ELUA;
  lua_pushstring(L, path);
  lua_pushlstring(L, data, len);
  return tulua_spawn(rt, 2);
}

/* The test: an engine steps two runtimes from its frame loop, never
 * blocking in them, and sleeps between frames as long as they allow. A runs
 * on its own loop without a budget; B on the engine's loop with a budget. */
static int test_frame_loop_two_runtimes(void) {
  char dir[] = "/tmp/tulua-test-XXXXXX", path_a[128], path_b[128];
  CHECK(mkdtemp(dir) != NULL);
  snprintf(path_a, sizeof path_a, "%s/a.txt", dir);
  snprintf(path_b, sizeof path_b, "%s/b.txt", dir);
  size_t len_a = 100000, len_b = 3000;
  char *data_a = malloc(len_a), *data_b = malloc(len_b);
  CHECK(data_a != NULL && data_b != NULL);
  for (size_t i = 0; i < len_a; i++)
    data_a[i] = (char)('a' + i % 26);
  for (size_t i = 0; i < len_b; i++)
    data_b[i] = (char)(i % 251); /* binary, with zeros */
  CHECK_EQ(0, write_file(path_a, data_a, len_a));
  CHECK_EQ(0, write_file(path_b, data_b, len_b));

  errors ea = {0}, eb = {0};
  ea.print = eb.print = 1;
  tulua_config cfg;
  tulua_config_init(&cfg);
  cfg.on_error = on_error_cb;
  cfg.userdata = &ea;
  tulua_runtime *a = NULL;
  CHECK_EQ(0, tulua_open(&a, &cfg));
  cfg.userdata = &eb;
  host b;
  CHECK_EQ(0, host_open(&b, &cfg));
  CHECK_EQ(0, frame_start(a, path_a, data_a, len_a));
  CHECK_EQ(0, frame_start(b.rt, path_b, data_b, len_b));

  const double frame = 0.005;
  frame_counts ca = {0}, cb = {0};
  int frames = 0, ra = 1, rb = 1;
  double t0 = now();
  while ((ra || rb) && now() - t0 < 10.0) {
    frames++;
    double f0 = now();
    ra = tulua_step(a, 0);
    rb = tulua_step(b.rt, 0.010);
    CHECK(ra >= 0 && rb >= 0);
    ca.busy_frames += ra;
    cb.busy_frames += rb;
    /* the rest of the frame, or less if a runtime needs a step sooner */
    double wait = frame - (now() - f0), da = tulua_next_deadline(a),
           db = tulua_next_deadline(b.rt);
    if (da >= 0 && da < wait) wait = da;
    if (db >= 0 && db < wait) wait = db;
    if (wait > 0) sleep_seconds(wait);
  }
  frame_collect(a, &ca);
  frame_collect(b.rt, &cb);
  tulua_close(a);
  CHECK_EQ(0, host_close(&b));
  CHECK_EQ(0, unlink(path_a));
  CHECK_EQ(0, unlink(path_b));
  CHECK_EQ(0, rmdir(dir));
  free(data_a);
  free(data_b);

  CHECK_EQ(0, ra); /* both finished within the time limit */
  CHECK_EQ(0, rb);
  CHECK_RANGE(4, frames, 2000); /* the sleeps alone last 20 ms */
  CHECK_RANGE(4, ca.busy_frames, frames);
  CHECK_RANGE(4, cb.busy_frames, frames);
  CHECK_EQ(10, ca.fired);
  CHECK_EQ(10, cb.fired);
  CHECK_EQ(5, ca.ticks);
  CHECK_EQ(5, cb.ticks);
  CHECK_EQ(5, ca.sleeps);
  CHECK_EQ(5, cb.sleeps);
  CHECK_EQ(5, ca.reads); /* fails until tulua.fs has read_file */
  CHECK_EQ(5, cb.reads);
  CHECK_EQ(0, ca.bad);
  CHECK_EQ(0, cb.bad);
  CHECK_EQ(0, ca.uncaught);
  CHECK_EQ(0, cb.uncaught);
  CHECK_EQ(0, ea.calls);
  CHECK_EQ(0, eb.calls);
  return 0;
}

/* The debugging fields of tulua_config: a bad threshold is refused, a
 * trace is written from tulua_open to tulua_close (one per process). */
static int test_trace_and_debug_config(void) {
  tulua_runtime *rt = NULL, *other = NULL;
  tulua_config cfg;
  tulua_config_init(&cfg);
  cfg.debug_slow = -1;
  CHECK_EQ(UV_EINVAL, tulua_open(&rt, &cfg));
  CHECK(rt == NULL);
  cfg.debug_slow = 0.0 / 0.0;
  CHECK_EQ(UV_EINVAL, tulua_open(&rt, &cfg));
  cfg.debug_slow = 0.05;
  cfg.debug = 1;
  CHECK_EQ(0, tulua_open(&rt, &cfg));
  CHECK_EQ(LUA_OK,
           call_lua(rt, "return require('tulua').get_debug('slow')", 1));
  CHECK(lua_tonumber(tulua_state(rt), -1) == 0.05);
  tulua_close(rt);

  tulua_config_init(&cfg);
  CHECK(cfg.trace_gc_slow < 0); /* the default: trace.start's */
  cfg.trace_gc_slow = 0.0 / 0.0;
  CHECK_EQ(UV_EINVAL, tulua_open(&rt, &cfg));
  cfg.trace_gc_slow = 86401;
  CHECK_EQ(UV_EINVAL, tulua_open(&rt, &cfg));
  cfg.trace_gc_slow = 0; /* every collector step: the trace below has some */
  cfg.trace = "/nonexistent-dir/trace.json";
  CHECK_EQ(UV_ENOENT, tulua_open(&rt, &cfg));
  char path[] = "/tmp/test_embed_trace_XXXXXX";
  int fd = mkstemp(path);
  CHECK(fd >= 0);
  close(fd);
  cfg.trace = path;
  CHECK_EQ(0, tulua_open(&rt, &cfg));
  CHECK_EQ(UV_EBUSY, tulua_open(&other, &cfg)); /* one trace a process */
  CHECK_EQ(LUA_OK, call_lua(rt,
                            "require('tulua').sleep(0.001) collectgarbage() "
                            "return 1",
                            1));
  tulua_close(rt);
  FILE *f = fopen(path, "r");
  CHECK(f != NULL);
  char text[65536];
  size_t n = fread(text, 1, sizeof text - 1, f);
  fclose(f);
  unlink(path);
  text[n] = '\0';
  CHECK(strstr(text, "\"traceEvents\":[") != NULL);
  CHECK(strstr(text, "\"cat\":\"step\"") != NULL);
  CHECK(strstr(text, "\"name\":\"sleep\"") != NULL);
  CHECK(strstr(text, "\"dropped_events\":0") != NULL);
  CHECK(strstr(text, "\"name\":\"collectgarbage collect\"") != NULL);
  return 0;
}

int main(int argc, char **argv) {
  static const check_case cases[] = {
      {"config_init_defaults", test_config_init_defaults},
      {"open_own_loop", test_open_own_loop},
      {"open_without_stdlibs", test_open_without_stdlibs},
      {"open_host_loop", test_open_host_loop},
      {"preload", test_preload},
      {"load_string", test_load_string},
      {"load_file", test_load_file},
      {"spawn", test_spawn},
      {"run", test_run},
      {"no_nested_runs", test_no_nested_runs},
      {"call_returns_results", test_call_returns_results},
      {"call_error", test_call_error},
      {"call_deadlock", test_call_deadlock},
      {"step_without_budget", test_step_without_budget},
      {"step_with_budget", test_step_with_budget},
      {"next_deadline", test_next_deadline},
      {"wakeup_from_thread", test_wakeup_from_thread},
      {"on_error", test_on_error},
      {"interrupt_busy_loop", test_interrupt_busy_loop},
      {"interrupt_while_waiting", test_interrupt_while_waiting},
      {"interrupt_before_call", test_interrupt_before_call},
      {"wait_outside_task", test_wait_outside_task},
      {"two_runtimes", test_two_runtimes},
      {"two_runtimes_share_a_loop", test_two_runtimes_share_a_loop},
      {"frame_loop_two_runtimes", test_frame_loop_two_runtimes},
      {"trace_and_debug_config", test_trace_and_debug_config},
      {NULL, NULL}};
  return check_run(cases, argc > 1 ? argv[1] : NULL);
}
