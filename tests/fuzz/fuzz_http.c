/* fuzz_http.c: libFuzzer target for the request path of tulua.http's
 * server: arbitrary bytes go to bindings/http.c's parser (llhttp) as the
 * server feeds it, cut into reads at places the first byte chooses, message
 * after message until the bytes end or the parser fails; every head that
 * comes out is answered through the response serialiser with its own
 * headers echoed back, which must either succeed or raise (never crash).
 * Seeds: tests/fuzz/corpus_http/. */
#include <stddef.h>
#include <stdint.h>

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

#include "../../bindings/modules.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* One read's worth of bytes through p:execute; returns 0 to go on, 1 when
 * the parser failed. Stack: module at 1, parser at 2. */
static int feed(lua_State *L, const char *p, size_t n) {
  lua_pushlstring(L, p, n);
  int chunk = lua_gettop(L);
  lua_Integer pos = 1;
  while ((size_t)pos <= n) {
    lua_getfield(L, 2, "execute");
    lua_pushvalue(L, 2);
    lua_pushvalue(L, chunk);
    lua_pushinteger(L, pos);
    if (lua_pcall(L, 3, 4, 0) != LUA_OK) __builtin_trap(); /* no raise here */
    if (lua_isnil(L, -4)) {
      lua_settop(L, chunk - 1);
      return 1;
    }
    lua_Integer next = lua_tointeger(L, -4);
    /* each call moves on or ends a message: a server never loops idle */
    if (next < pos || (next == pos && !lua_toboolean(L, -1))) __builtin_trap();
    if (lua_istable(L, -3)) {
      /* answer it: _http.response(200, req.headers, "ok", keep_alive) */
      int top = lua_gettop(L);
      lua_getfield(L, 1, "response");
      lua_pushinteger(L, 200);
      lua_getfield(L, -5, "headers");
      lua_pushliteral(L, "ok");
      lua_getfield(L, -7, "keep_alive");
      lua_pcall(L, 4, 2, 0); /* a bad header raises: fine */
      lua_settop(L, top);
    }
    lua_pop(L, 4);
    pos = next;
  }
  lua_settop(L, chunk - 1);
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size == 0) return 0;
  lua_State *L = luaL_newstate();
  if (L == NULL) return 0;
  luaL_openlibs(L);
  luaL_requiref(L, "tulua._http", luaopen_tulua_http_core, 0);
  lua_getfield(L, 1, "parser");
  lua_pushliteral(L, "request");
  lua_pushinteger(L, 1024);
  lua_newtable(L); /* a metatable for the heads, as the server gives */
  if (lua_pcall(L, 3, 1, 0) != LUA_OK) __builtin_trap();
  /* the first byte: the size of each read (1 to 256 bytes) */
  size_t step = (size_t)data[0] + 1;
  const char *p = (const char *)data + 1;
  size_t left = size - 1;
  while (left > 0) {
    size_t n = left < step ? left : step;
    if (feed(L, p, n)) break;
    p += n;
    left -= n;
  }
  lua_close(L);
  return 0;
}
