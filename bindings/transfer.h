/* transfer.h: the serializer of values between Lua states (internal API of
 * bindings/transfer.c). It needs Lua only, no runtime or libuv, so that the
 * fuzz target links it alone. */
#ifndef TULUA_TRANSFER_H
#define TULUA_TRANSFER_H

#include <stddef.h>

#include <lua.h>

/* The version of the format (the byte after its magic): an MPI worker
 * checks that its owner speaks the same. */
#define TULUA_TRANSFER_FORMAT 3

/* Nesting of tables and functions beyond which encode and decode fail. */
#define TULUA_TRANSFER_MAX_DEPTH 200

/* Encodes the n values from stack index first into a malloc'd buffer that
 * the caller frees, and sets *len to its size. Raises (luaL_error) with the
 * offending value's path on a value that cannot transfer, e.g.
 * "argument #2.config.log: cannot transfer a userdata", and on memory
 * errors; nothing leaks then. Runs no Lua code (raw access only). The stack
 * is left as it was. [-0, +0, m] */
char *tulua__transfer_encode(lua_State *L, int first, int n, size_t *len);

/* As tulua__transfer_encode, into this state's own buffer: returns it,
 * valid until the next encode in this state (copy it). With a context,
 * called from a C function, a refusal reads as that function's luaL_error
 * would: "file:line: submit: argument #2.log: cannot transfer a userdata",
 * so that it needs no lua_pcall to be told apart. [-0, +0, m] */
const char *tulua__transfer_encode_temp(lua_State *L, int first, int n,
                                        size_t *len, const char *context);

/* Returns the bytecode of the function at idx if it can travel as bytecode
 * alone (a Lua function whose only upvalue, if any, is _ENV), else NULL;
 * sets *len. Dumped once per function. Valid until the function is
 * collected: copy it. [-0, +0, m] */
const char *tulua__transfer_dump(lua_State *L, int idx, size_t *len);

/* Pushes the function of bytecode that tulua__transfer_dump gave, with
 * this state's globals as its _ENV, and returns 0; on bad bytecode or a
 * memory error, pushes a message and returns -1. Never raises. Never runs
 * the function. [-0, +1, -] */
int tulua__transfer_load(lua_State *L, const char *code, size_t len);

/* Decodes len bytes at buf and pushes the values; returns how many. On any
 * malformed input, a module that cannot be found or a memory error, pushes
 * one message string and returns -1 instead: it never raises, and never
 * reads outside buf. May run require for modules sent by name; never runs
 * a decoded function. [-0, +(n|1), -] */
int tulua__transfer_decode(lua_State *L, const char *buf, size_t len);

/* Opens the module 'tulua.transfer' (also declared in modules.h). */
int luaopen_tulua_transfer(lua_State *L);

#endif
