/* modules.h: the openers of the binding modules, which modules.c lists for
 * tulua_open to preload, and of the files that add to another's module. */
#ifndef TULUA_MODULES_H
#define TULUA_MODULES_H

#include <lua.h>

/* The modules, each defined by the file named after it (tulua.net by
 * tcp.c, with pipe.c and stream.c). luaopen_tulua is modules.c's: it puts
 * the timer (timer.c) into the scheduler's core module (host/). */
int luaopen_tulua(lua_State *L);
int luaopen_tulua_timer(lua_State *L);
int luaopen_tulua_fs(lua_State *L);
int luaopen_tulua_process(lua_State *L);
int luaopen_tulua_tty(lua_State *L);
int luaopen_tulua_dns(lua_State *L);
int luaopen_tulua_udp(lua_State *L);
int luaopen_tulua_net(lua_State *L);
int luaopen_tulua_tls(lua_State *L);
int luaopen_tulua_transfer(lua_State *L);
int luaopen_tulua_thread_pool(lua_State *L);
int luaopen_tulua_future(lua_State *L);
int luaopen_tulua_process_pool(lua_State *L);
int luaopen_tulua_http_core(lua_State *L);
int luaopen_tulua_wslay(lua_State *L);
int luaopen_tulua_mpi_loader(lua_State *L);
int luaopen_tulua_luv(lua_State *L);

/* Adds fs.watch (fs_event.c) to the tulua.fs module table on top of the
 * stack. [-0, +0, m] */
void tulua__fs_event_open(lua_State *L);

/* Adds signal.c's functions (wait_signal, signal, signals) to the
 * tulua.process module table on top of the stack. [-0, +0, m] */
void tulua__signal_open(lua_State *L);

#endif
