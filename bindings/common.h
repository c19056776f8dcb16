/* common.h: helpers shared by the binding modules. */
#ifndef TULUA_COMMON_H
#define TULUA_COMMON_H

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <lauxlib.h>
#include <uv.h>

#include "scheduler.h"
#include "modules.h"

/* Pushes nil, "<subject>: <libuv text>", "<UV code name>" and returns 3: the
 * operational-failure convention of every binding. [-0, +3, m] */
static inline int push_fail(lua_State *L, const char *subject, int rc) {
  lua_pushnil(L);
  if (subject != NULL)
    lua_pushfstring(L, "%s: %s", subject, uv_strerror(rc));
  else
    lua_pushstring(L, uv_strerror(rc));
  lua_pushstring(L, uv_err_name(rc));
  return 3;
}

/* Returns the string argument idx as a path for the kernel, and its length
 * in *len unless len is NULL. The kernel reads a path up to its first zero
 * byte, so "secret\0.txt" would name "secret": raises "bad argument #idx to
 * 'f' (path contains a zero byte)" instead, as for argv and env. Every
 * path of the bindings, and what else reaches the kernel as a C string,
 * comes through here. [-0, +0, v] */
static inline const char *tulua__check_path(lua_State *L, int idx,
                                            size_t *len) {
  size_t n;
  const char *s = luaL_checklstring(L, idx, &n);
  if (strlen(s) != n) luaL_argerror(L, idx, "path contains a zero byte");
  if (len != NULL) *len = n;
  return s;
}

/* Bytes that a deliver step owns and frees after pushing them: the push
 * runs as lua_pcall(tulua__push_lstr) with a pointer to this as argument,
 * so that the memory is freed even when the push runs out of memory. */
typedef struct {
  const char *s;
  size_t n;
} tulua__lstr;

static inline int tulua__push_lstr(lua_State *L) {
  const tulua__lstr *a = lua_touserdata(L, 1);
  lua_pushlstring(L, a->s, a->n);
  return 1;
}

/* Returns the number field of the options table at idx, or def when it is
 * nil; raises "bad argument #idx to 'f' ('field' must be a number)" for
 * another type. [-0, +0, v] */
static inline lua_Number tulua__opt_field_number(lua_State *L, int idx,
                                                 const char *field,
                                                 lua_Number def) {
  int isnum;
  lua_getfield(L, idx, field);
  lua_Number n = lua_tonumberx(L, -1, &isnum);
  int absent = lua_isnil(L, -1);
  lua_pop(L, 1);
  if (absent) return def;
  if (!isnum)
    luaL_argerror(L, idx, lua_pushfstring(L, "'%s' must be a number", field));
  return n;
}

/* Raises "bad argument #idx to 'f' (unknown option 'k')" for a key of the
 * options table at idx that is not in known (NULL-terminated), so that a
 * misspelt option fails instead of being ignored. Returns 0 when the
 * argument is none or nil, 1 for a table; raises for another type.
 * [-0, +0, v] */
static inline int tulua__check_options(lua_State *L, int idx,
                                       const char *const known[]) {
  if (lua_isnoneornil(L, idx)) return 0;
  idx = lua_absindex(L, idx);
  luaL_checktype(L, idx, LUA_TTABLE);
  lua_pushnil(L);
  while (lua_next(L, idx) != 0) {
    lua_pop(L, 1); /* stack: key */
    size_t i = 0;
    if (lua_type(L, -1) == LUA_TSTRING)
      while (known[i] != NULL && strcmp(known[i], lua_tostring(L, -1)) != 0)
        i++;
    else
      while (known[i] != NULL)
        i++;
    if (known[i] == NULL)
      luaL_argerror(L, idx,
                    lua_pushfstring(L, "unknown option '%s'",
                                    luaL_tolstring(L, -1, NULL)));
  }
  return 1;
}

/* Sets SO_REUSEPORT on the socket of h, which must exist already (a handle
 * made by uv_tcp_init_ex or uv_udp_init_ex with a family) and be unbound:
 * libuv 1.44 has no flag for it. Returns 0 or a negative libuv code. */
static inline int tulua__set_reuseport(uv_handle_t *h) {
  uv_os_fd_t fd;
  int rc = uv_fileno(h, &fd);
  if (rc < 0) return rc;
  int on = 1;
  if (setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &on, sizeof on) != 0)
    return uv_translate_sys_error(errno);
  return 0;
}

/* Registers the metatable `name` once (luaL_newmetatable): the
 * metamethods of meta, and methods (NULL for none) as its __index. Every
 * class of the binding modules is made this way. [-0, +0, m] */
static inline void tulua__new_class(lua_State *L, const char *name,
                                    const luaL_Reg *meta,
                                    const luaL_Reg *methods) {
  if (luaL_newmetatable(L, name)) {
    luaL_setfuncs(L, meta, 0);
    if (methods != NULL) {
      lua_newtable(L);
      luaL_setfuncs(L, methods, 0);
      lua_setfield(L, -2, "__index");
    }
  }
  lua_pop(L, 1);
}

/* A write to a peer or a child that has gone raises SIGPIPE, whose default
 * action would end the process: as Python and Node do, neutralize it, so
 * that writes fail with EPIPE, unless the program chose a disposition.
 * With a handler that does nothing rather than SIG_IGN: an ignored signal
 * stays ignored across exec, and the programs of os.execute and io.popen
 * would then miss theirs. Called when a module with streams or files opens
 * (tulua.fs too: a FIFO's reader may leave), so that a script that uses
 * none keeps lua5.4's behaviour; Lua's own stdio writes
 * keep it in any case (host/runtime.c). */
static inline void tulua__ignore_sigpipe(void) {
  struct sigaction sa;
  if (sigaction(SIGPIPE, NULL, &sa) != 0) return;
  if ((sa.sa_flags & SA_SIGINFO) || sa.sa_handler != SIG_DFL) return;
  sa.sa_handler = tulua__sigpipe_cb;
  sa.sa_flags = SA_RESTART;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGPIPE, &sa, NULL);
}

/* Writes an IP socket address as "127.0.0.1:5000" or "[::1]:5000" (for
 * the wait details of tulua --ps); "" for any other family. Returns the
 * length, as snprintf. */
static inline int tulua__format_sockaddr(char *buf, size_t size,
                                         const struct sockaddr *sa) {
  char ip[64];
  buf[0] = '\0';
  if (sa->sa_family != AF_INET && sa->sa_family != AF_INET6) return 0;
  if (uv_ip_name(sa, ip, sizeof ip) != 0) return 0;
  int v6 = sa->sa_family == AF_INET6;
  unsigned port = ntohs(v6 ? ((const struct sockaddr_in6 *)sa)->sin6_port
                           : ((const struct sockaddr_in *)sa)->sin_port);
  return snprintf(buf, size, v6 ? "[%s]:%u" : "%s:%u", ip, port);
}

#endif
