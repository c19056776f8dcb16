/* uv_tool.c: the second host shape: a tool that runs its own libuv loop and
 * hands it to tulua (tulua_config.loop).
 *
 *   uv_tool [script.lua]
 *
 * The tool has handles of its own on its loop (here a timer that counts
 * ticks, standing for a tool's watchers and sockets) and runs the loop
 * itself with uv_run; the runtime adds its handles to the same loop, so
 * Lua tasks and the tool's callbacks interleave on one thread. The script
 * (by default a built-in one) reports through the module "tool"; when it
 * calls tool.done(), the tool stops its timer and uv_run returns once the
 * runtime is idle too. Built against the installed tulua. */
#include <stdio.h>
#include <stdlib.h>

#include <lauxlib.h>
#include <tulua.h>

static uv_timer_t ticker;
static long ticks;
static int done;

static void on_tick(uv_timer_t *t) {
  (void)t;
  ticks++;
}

static int l_ticks(lua_State *L) {
  lua_pushinteger(L, ticks);
  return 1;
}

static int l_report(lua_State *L) {
  printf("report: %s\n", luaL_checkstring(L, 1));
  return 0;
}

/* tool.done(): the script has finished its work; the tool's own handle
 * goes, and uv_run ends when the runtime's have too. */
static int l_done(lua_State *L) {
  (void)L;
  done = 1;
  uv_timer_stop(&ticker);
  return 0;
}

static int luaopen_tool(lua_State *L) {
  static const luaL_Reg fns[] = {
      {"ticks", l_ticks}, {"report", l_report}, {"done", l_done}, {NULL, NULL}};
  luaL_newlib(L, fns);
  return 1;
}

static void on_error(tulua_runtime *rt, const char *msg, void *ud) {
  (void)rt;
  (void)ud;
  fprintf(stderr, "uv_tool: script error: %s\n", msg);
  uv_timer_stop(&ticker); /* lets uv_run end: the script will not call done */
}

/* What the tool runs without a script: waits on the tool's loop while the
 * tool's timer keeps ticking, and runs a program through tulua.process. */
static const char builtin[] =
    "local tulua, tool = require 'tulua', require 'tool'\n"
    "local process = require 'tulua.process'\n"
    "local t0 = tool.ticks()\n"
    "tulua.sleep(0.2)\n"
    "tool.report(('ticks while sleeping: %s'):format("
    "tool.ticks() - t0 >= 5 and 'yes' or 'no'))\n"
    "local status, out = process.run({'echo', 'from a child'})\n"
    "tool.report(('child: %d %s'):format(status, out:gsub('\\n$', '')))\n"
    "tool.done()\n";

int main(int argc, char **argv) {
  uv_loop_t loop;
  if (uv_loop_init(&loop) != 0) return 1;
  uv_timer_init(&loop, &ticker);
  uv_timer_start(&ticker, on_tick, 10, 10);

  tulua_config cfg;
  tulua_config_init(&cfg);
  cfg.loop = &loop; /* the tool's loop: the runtime opens no loop */
  cfg.on_error = on_error;
  tulua_runtime *rt;
  if (tulua_open(&rt, &cfg) < 0) return 1;
  tulua_preload(rt, "tool", luaopen_tool);
  int rc = argc > 1
               ? tulua_load_file(rt, argv[1])
               : tulua_load_string(rt, builtin, sizeof builtin - 1, "=builtin");
  if (rc == 0) rc = tulua_spawn(rt, 0);
  if (rc < 0) {
    fprintf(stderr, "uv_tool: %s\n", tulua_errmsg(rt));
    uv_timer_stop(&ticker);
  }

  uv_run(&loop, UV_RUN_DEFAULT); /* the tool's loop, run by the tool */

  int failed = rc < 0 || !done || tulua_uncaught_errors(rt) > 0;
  if (!done) uv_timer_stop(&ticker);
  tulua_close(rt);
  uv_close((uv_handle_t *)&ticker, NULL);
  uv_run(&loop, UV_RUN_DEFAULT); /* close callbacks of both */
  if (uv_loop_close(&loop) != 0) {
    fprintf(stderr, "uv_tool: handles left open\n");
    failed = 1;
  }
  printf("ticks %ld, %s\n", ticks, failed ? "failed" : "ok");
  return failed ? 1 : 0;
}
