/* common.h: helpers shared by the binding modules. */
#ifndef TULUA_COMMON_H
#define TULUA_COMMON_H

#include <signal.h>
#include <string.h>

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
 * would then miss theirs. Called when a module with streams opens, so that
 * a script that uses none keeps lua5.4's behaviour; Lua's own stdio writes
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

#endif
