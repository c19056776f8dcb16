/* cpu.h: the machine's CPUs (bindings/cpu.c). */
#ifndef TULUA_CPU_H
#define TULUA_CPU_H

#include <lua.h>

/* Adds cpu_count and process_cpu_count to the module table on top of the
 * stack (tulua._thread_pool, whose names they have). [-0, +0, m] */
void tulua__cpu_open(lua_State *L);

#endif
