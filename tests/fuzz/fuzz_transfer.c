/* fuzz_transfer.c: libFuzzer target for the container format of
 * bindings/transfer.c ('tulua.transfer'): decodes arbitrary bytes in a
 * plain lua_State, twice. Bytecode blocks are not given to lua_load here
 * (TULUA_TRANSFER_NO_LOAD: Lua's loader trusts bytecode; see transfer.c),
 * and nothing decoded is run. Seeds: tests/fuzz/corpus/, written by
 * tests/fuzz/make_corpus.lua. */
#include <stddef.h>
#include <stdint.h>

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

#include "../../bindings/transfer.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  lua_State *L = luaL_newstate();
  if (L == NULL) return 0;
  luaL_openlibs(L);
  /* modules by name resolve in package.loaded only: no file searches */
  lua_pushnil(L);
  lua_setglobal(L, "require");
  /* twice: the second decode finds the functions of the first in the
   * decoder's cache, and takes its unprotected path further */
  for (int round = 0; round < 2; round++) {
    int top = lua_gettop(L);
    int n = tulua__transfer_decode(L, (const char *)data, size);
    if (lua_gettop(L) != top + (n < 0 ? 1 : n)) __builtin_trap();
    lua_settop(L, top);
  }
  lua_close(L);
  return 0;
}
