/* main.c: the tulua command line, a drop-in for lua5.4 (uses tulua.h only). */
#include <stdio.h>
#include <stdlib.h>

#include <lauxlib.h>

#include "tulua.h"

static const char *progname = "tulua";

static void on_error(tulua_runtime *rt, const char *msg, void *ud) {
  (void)rt;
  (void)ud;
  fprintf(stderr, "%s: %s\n", progname, msg);
  fflush(stderr);
}

int main(int argc, char **argv) {
  tulua_config cfg;
  tulua_runtime *rt;
  if (argv[0] && argv[0][0]) progname = argv[0];
  tulua_config_init(&cfg);
  cfg.on_error = on_error;
  if (tulua_open(&rt, &cfg) < 0) {
    fprintf(stderr, "%s: cannot create state: not enough memory\n", progname);
    return EXIT_FAILURE;
  }
  lua_State *L = tulua_state(rt);
  lua_gc(L, LUA_GCGEN, 0, 0);
  int status = 0;
  if (argc > 1) {
    lua_createtable(L, argc, 1);
    for (int i = 0; i < argc; i++) {
      lua_pushstring(L, argv[i]);
      lua_rawseti(L, -2, i - 1);
    }
    lua_setglobal(L, "arg");
    if (tulua_load_file(rt, argv[1]) < 0) {
      fprintf(stderr, "%s: %s\n", progname, tulua_errmsg(rt));
      status = 1;
    } else {
      for (int i = 2; i < argc; i++)
        lua_pushstring(L, argv[i]);
      if (tulua_call(rt, argc - 2, 0) != LUA_OK) {
        fprintf(stderr, "%s: %s\n", progname, lua_tostring(L, -1));
        lua_pop(L, 1);
        status = 1;
      }
    }
  }
  tulua_run(rt);
  if (tulua_uncaught_errors(rt) > 0) status = 1;
  tulua_close(rt);
  return status ? EXIT_FAILURE : EXIT_SUCCESS;
}
