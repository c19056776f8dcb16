/* test_ps_off.c: an embedder that turns tulua --ps off (tulua_config.ps =
 * 0) keeps SIGURG as it was, for the whole process: the first runtime
 * opened decides, so this is a program of its own. */
#include <signal.h>
#include <string.h>

#include <lauxlib.h>

#include "check.h"
#include "tulua.h"

/* Returns the handler of SIGURG now. */
static void (*urg_handler(void))(int) {
  struct sigaction sa;
  sigaction(SIGURG, NULL, &sa);
  return sa.sa_handler;
}

static int test_ps_off_leaves_sigurg_alone(void) {
  tulua_config cfg;
  tulua_runtime *off = NULL, *later = NULL;
  tulua_config_init(&cfg);
  CHECK_EQ(1, cfg.ps); /* on by default */
  cfg.ps = 0;
  CHECK_EQ(0, tulua_open(&off, &cfg));
  CHECK(urg_handler() == SIG_DFL);
  /* a runtime opened later (a pool's worker, another of the host's) does
   * not take the signal either: the first one decided for the process */
  CHECK_EQ(0, tulua_open(&later, NULL));
  CHECK(urg_handler() == SIG_DFL);
  tulua_close(later);
  tulua_close(off);
  CHECK(urg_handler() == SIG_DFL);
  return 0;
}

/* tulua_error_text: the text an uncaught error value prints as. */
static int test_error_text(void) {
  tulua_runtime *rt = NULL;
  CHECK_EQ(0, tulua_open(&rt, NULL));
  lua_State *L = tulua_state(rt);
  lua_pushliteral(L, "plain");
  CHECK_STR_EQ("plain", tulua_error_text(L, L, 0));
  lua_pop(L, 2);
  CHECK_EQ(LUA_OK, luaL_dostring(L, "return {code = 'X', message = 'm', 4}"));
  CHECK_STR_EQ(
      "(error object is a table value: {4, code = \"X\", message = \"m\"})",
      tulua_error_text(L, L, 0));
  lua_pop(L, 2);
  lua_pushboolean(L, 1);
  CHECK_STR_EQ("(error object is a boolean value)", tulua_error_text(L, L, 0));
  lua_pop(L, 2);
  CHECK_EQ(0, lua_gettop(L));
  tulua_close(rt);
  return 0;
}

int main(int argc, char **argv) {
  static const check_case cases[] = {
      {"ps_off_leaves_sigurg_alone", test_ps_off_leaves_sigurg_alone},
      {"error_text", test_error_text},
      {NULL, NULL}};
  return check_run(cases, argc > 1 ? argv[1] : NULL);
}
