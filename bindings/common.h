/* common.h: helpers shared by the binding modules. */
#ifndef TULUA_COMMON_H
#define TULUA_COMMON_H

#include <lauxlib.h>
#include <uv.h>

#include "../host/sched.h"

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

#endif
