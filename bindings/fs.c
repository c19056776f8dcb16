/* fs.c: uv_fs_t requests on libuv's thread pool; backs the module
 * 'tulua.fs'. */
#include "common.h"

int luaopen_tulua_fs(lua_State *L) {
  lua_newtable(L);
  return 1;
}
