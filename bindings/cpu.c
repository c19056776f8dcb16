/* cpu.c: the machine's CPUs, as Python's os.cpu_count() and
 * os.process_cpu_count() count them (libuv's uv_available_parallelism);
 * the functions of 'tulua._thread_pool' that concurrent.futures exports. */
#include <unistd.h>

#include "common.h"
#include "cpu.h"

/* thread_pool.cpu_count() -> the CPUs of the system, as os.cpu_count():
 * those online (sysconf, as Python counts them; uv_cpu_info would read
 * /proc for the same number) */
static int cpu_count(lua_State *L) {
  long n = sysconf(_SC_NPROCESSORS_ONLN);
  lua_pushinteger(L, n > 0 ? n : 1);
  return 1;
}

/* thread_pool.process_cpu_count() -> the CPUs this process may use (its
 * affinity), as os.process_cpu_count() */
static int process_cpu_count(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)uv_available_parallelism());
  return 1;
}

void tulua__cpu_open(lua_State *L) {
  static const luaL_Reg funcs[] = {{"cpu_count", cpu_count},
                                   {"process_cpu_count", process_cpu_count},
                                   {NULL, NULL}};
  luaL_setfuncs(L, funcs, 0);
}
