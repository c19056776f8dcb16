/* modules.c: the list of the binding modules that tulua_open preloads, as
 * Lua's linit.c lists its standard libraries. A new binding module gets
 * its line here and its opener in modules.h. */
#include <lauxlib.h>

#include "modules.h"
#include "scheduler.h"

/* The module 'tulua': the scheduler's core (host/task.c), with the timer
 * module as its field 'timer'. Loaded through require (process.c also
 * requires it for tulua.can_wait). */
int luaopen_tulua(lua_State *L) {
  tulua__open_core(L);
  luaL_requiref(L, "tulua.timer", luaopen_tulua_timer, 0);
  lua_setfield(L, -2, "timer");
  return 1;
}

static const luaL_Reg modules[] = {
    {"tulua", luaopen_tulua},
    {"tulua.timer", luaopen_tulua_timer},
    {"tulua.fs", luaopen_tulua_fs},
    {"tulua.process", luaopen_tulua_process},
    {"tulua.tty", luaopen_tulua_tty},
    {"tulua.dns", luaopen_tulua_dns},
    {"tulua.udp", luaopen_tulua_udp},
    {"tulua.net", luaopen_tulua_net},
    {"tulua.tls", luaopen_tulua_tls},
    {"tulua.transfer", luaopen_tulua_transfer},
    {"tulua._future", luaopen_tulua_future},
    {"tulua._thread_pool", luaopen_tulua_thread_pool},
    {"tulua._process_pool", luaopen_tulua_process_pool},
    {"tulua._http", luaopen_tulua_http_core},
    {"tulua._wslay", luaopen_tulua_wslay},
    {"tulua._mpi", luaopen_tulua_mpi_loader},
    {"luv", luaopen_tulua_luv}, /* the loader itself: see luv.c */
    {NULL, NULL}};

void tulua__preload_bindings(lua_State *L) {
  for (const luaL_Reg *m = modules; m->name; m++) {
    lua_pushcfunction(L, m->func);
    lua_setfield(L, -2, m->name);
  }
}
