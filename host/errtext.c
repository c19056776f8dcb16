/* errtext.c: the text an uncaught error value prints as (tulua_error_text):
 * lua.c's rules for strings, plus, for error objects, the place where they
 * were raised and, for a table without __tostring, its fields. Shared by
 * the task reports (sched.c) and the command line's message handler. */
#include <stdio.h>
#include <string.h>

#include <lauxlib.h>

#include "lua_modules.h"
#include "runtime.h"

#define MAX_FIELDS 8 /* a table's fields shown; the rest is "..." */
#define MAX_VALUE  60 /* bytes of a string field shown */

/* Returns 1 if source is the chunkname of one of tulua's own Lua modules:
 * an error object raised there is reported at its caller's line. */
static int in_library(const char *source) {
  for (const tulua__lua_module *m = tulua__lua_modules; m->name; m++)
    if (strcmp(source, m->chunkname) == 0) return 1;
  return 0;
}

/* Pushes "file:line: " of the first frame of co, from level on, that runs
 * Lua code outside tulua's own modules; "" if there is none. */
static void push_where(lua_State *L, lua_State *co, int level) {
  lua_Debug ar;
  for (; lua_getstack(co, level, &ar); level++) {
    if (!lua_getinfo(co, "Sl", &ar) || ar.currentline <= 0) continue;
    if (in_library(ar.source)) continue;
    lua_pushfstring(L, "%s:%d: ", ar.short_src, ar.currentline);
    return;
  }
  lua_pushliteral(L, "");
}

/* Pushes a short rendering of the value at idx as a field of an error
 * table: strings quoted (cut at MAX_VALUE bytes), numbers and booleans as
 * they are, anything else by its type. */
static void push_field_value(lua_State *L, int idx) {
  switch (lua_type(L, idx)) {
    case LUA_TSTRING: {
      size_t len;
      const char *s = lua_tolstring(L, idx, &len);
      luaL_Buffer b;
      luaL_buffinit(L, &b);
      luaL_addchar(&b, '"');
      for (size_t i = 0; i < len && i < MAX_VALUE; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\') {
          luaL_addchar(&b, '\\');
          luaL_addchar(&b, (char)c);
        } else if (c == '\n') {
          luaL_addstring(&b, "\\n");
        } else if (c < 32 || c == 127) {
          char esc[8];
          snprintf(esc, sizeof esc, "\\%u", c);
          luaL_addstring(&b, esc);
        } else {
          luaL_addchar(&b, (char)c);
        }
      }
      if (len > MAX_VALUE) luaL_addstring(&b, "...");
      luaL_addchar(&b, '"');
      luaL_pushresult(&b);
      break;
    }
    case LUA_TNUMBER:
    case LUA_TBOOLEAN:
      luaL_tolstring(L, idx, NULL);
      break;
    default:
      lua_pushstring(L, luaL_typename(L, idx));
  }
}

/* Returns 1 if the key on top of L is a string that reads as a name. */
static int is_name_key(lua_State *L) {
  if (lua_type(L, -1) != LUA_TSTRING) return 0;
  const char *s = lua_tostring(L, -1);
  if (!(*s == '_' || (*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z')))
    return 0;
  for (; *s; s++)
    if (!(*s == '_' || (*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') ||
          (*s >= '0' && *s <= '9')))
      return 0;
  return 1;
}

/* Pushes the fields of the table at idx as "{1, 2, code = "X", ...}": the
 * array part first, then the name keys in byte order (so that the text
 * does not depend on the table's layout), at most MAX_FIELDS of them; the
 * rest, and other keys, show as "...". Reads raw: no metamethod runs. */
static void push_fields(lua_State *L, int idx) {
  const char *names[MAX_FIELDS];
  int nnames = 0, more = 0, shown = 0;
  int top = lua_gettop(L);
  lua_Integer n = (lua_Integer)lua_rawlen(L, idx);
  lua_pushliteral(L, "{");
  for (lua_Integer i = 1; i <= n && shown < MAX_FIELDS; i++, shown++) {
    if (shown > 0) lua_pushliteral(L, ", ");
    lua_rawgeti(L, idx, i);
    push_field_value(L, -1);
    lua_remove(L, -2);
  }
  if (n > MAX_FIELDS) more = 1;
  lua_pushnil(L);
  while (lua_next(L, idx) != 0) {
    lua_pop(L, 1);
    if (lua_isinteger(L, -1) && lua_tointeger(L, -1) >= 1 &&
        lua_tointeger(L, -1) <= n)
      continue; /* shown above */
    if (!is_name_key(L) || shown + nnames >= MAX_FIELDS) {
      more = 1;
      continue;
    }
    /* insertion sort: the key strings live in the table meanwhile */
    const char *k = lua_tostring(L, -1);
    int j = nnames++;
    while (j > 0 && strcmp(names[j - 1], k) > 0) {
      names[j] = names[j - 1];
      j--;
    }
    names[j] = k;
  }
  for (int i = 0; i < nnames; i++, shown++) {
    if (shown > 0) lua_pushliteral(L, ", ");
    lua_pushfstring(L, "%s = ", names[i]);
    lua_getfield(L, idx, names[i]); /* raw enough: the key is present */
    push_field_value(L, -1);
    lua_remove(L, -2);
  }
  if (more) lua_pushstring(L, shown > 0 ? ", ..." : "...");
  lua_pushliteral(L, "}");
  lua_concat(L, lua_gettop(L) - top);
}

const char *tulua_error_text(lua_State *L, lua_State *from, int level) {
  int idx = lua_gettop(L);
  if (lua_type(L, idx) == LUA_TSTRING || lua_type(L, idx) == LUA_TNUMBER) {
    lua_pushvalue(L, idx);
    return lua_tostring(L, -1); /* numbers too, as in lua.c */
  }
  if (lua_type(L, idx) == LUA_TTABLE || lua_type(L, idx) == LUA_TUSERDATA) {
    lua_rawgeti(L, LUA_REGISTRYINDEX, tulua__runtime(L)->origins_ref);
    lua_pushvalue(L, idx);
    if (lua_rawget(L, -2) == LUA_TSTRING) { /* a task failed with it */
      lua_remove(L, -2);
      return lua_tostring(L, -1);
    }
    lua_pop(L, 2);
  }
  push_where(L, from, level);
  /* protected: a __tostring that raises must not abort the report */
  if (luaL_getmetafield(L, idx, "__tostring") != LUA_TNIL) {
    lua_pushvalue(L, idx);
    if (lua_pcall(L, 1, 1, 0) == LUA_OK && lua_type(L, -1) == LUA_TSTRING) {
      lua_concat(L, 2);
      return lua_tostring(L, -1);
    }
    lua_pop(L, 1); /* its error, or a result that is not a string */
  }
  if (lua_type(L, idx) == LUA_TTABLE) {
    int empty = lua_rawlen(L, idx) == 0;
    if (empty) {
      lua_pushnil(L);
      empty = lua_next(L, idx) == 0;
      if (!empty) lua_pop(L, 2);
    }
    if (!empty) {
      lua_pushliteral(L, "(error object is a table value: ");
      push_fields(L, idx);
      lua_pushliteral(L, ")");
      lua_concat(L, 4);
      return lua_tostring(L, -1);
    }
  }
  /* as lua.c: no place, only the type */
  lua_pop(L, 1);
  return lua_pushfstring(L, "(error object is a %s value)",
                         luaL_typename(L, idx));
}
