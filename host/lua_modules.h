/* lua_modules.h: the Lua modules of lua/, compiled into the binary as
 * source text by lua/embed.cmake and preloaded by runtime.c. */
#ifndef TULUA_LUA_MODULES_H
#define TULUA_LUA_MODULES_H

#include <stddef.h>

typedef struct {
  const char *name; /* the module name for require, e.g. "asyncio" */
  const char *chunkname; /* "@lua/asyncio.lua": tracebacks name the file */
  const char *source;
  size_t len;
} tulua__lua_module;

/* Ends with an entry whose name is NULL. */
extern const tulua__lua_module tulua__lua_modules[];

#endif
