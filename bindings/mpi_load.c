/* mpi_load.c: the opener of 'tulua._mpi', which loads the MPI transport
 * (bindings/mpi_pool.c, built as tulua_mpi.so beside the executable) on
 * first use: libmpi is a large library whose loading would slow every
 * start of tulua, and most scripts never make an MPI pool. Built with
 * -DTULUA_MPI=OFF, requiring it raises "tulua was built without MPI". */
#include <dlfcn.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "common.h"
#include "mpi_host.h"
#include "worker.h"

#ifdef TULUA_MPI
/* Where tulua_mpi.so is looked for: beside the executable, then in the
 * library directory of an installed tree. */
static const char *const places[] = {"/tulua_mpi.so",
                                     "/../lib/tulua/tulua_mpi.so"};

static const tulua__mpi_host host = {TULUA_MPI_HOST_VERSION,
                                     tulua__runtime,
                                     tulua__loop,
                                     tulua__post,
                                     tulua__unpost,
                                     tulua__pool_recv_gc,
                                     tulua__port_open_io,
                                     tulua__worker_signal,
                                     tulua__pool_frame,
                                     tulua__pool_trace_gc};

int luaopen_tulua_mpi_loader(lua_State *L) {
  char exe[4096], path[4200];
  size_t n = sizeof exe;
  if (uv_exepath(exe, &n) < 0) return luaL_error(L, "cannot find tulua_mpi.so");
  char *slash = strrchr(exe, '/');
  if (slash != NULL) *slash = '\0';
  const char *err = "not found";
  for (size_t i = 0; i < sizeof places / sizeof places[0]; i++) {
    snprintf(path, sizeof path, "%s%s", exe, places[i]);
    /* RTLD_GLOBAL: Open MPI's components, which it opens in turn, resolve
     * libmpi's symbols through the global scope */
    void *lib = dlopen(path, RTLD_NOW | RTLD_GLOBAL);
    if (lib == NULL) {
      err = dlerror();
      continue;
    }
    lua_CFunction open =
        (lua_CFunction)(uintptr_t)dlsym(lib, "luaopen_tulua_mpi");
    tulua__mpi_bind_fn bind =
        (tulua__mpi_bind_fn)(uintptr_t)dlsym(lib, "tulua_mpi_bind");
    if (open == NULL || bind == NULL)
      return luaL_error(L, "%s: not a tulua MPI transport", path);
    if (bind(&host) != 0)
      return luaL_error(L, "%s: built for another tulua", path);
    return open(L);
  }
  return luaL_error(L, "cannot load the MPI transport (tulua_mpi.so): %s", err);
}
#else
int luaopen_tulua_mpi_loader(lua_State *L) {
  return luaL_error(L, "tulua was built without MPI");
}
#endif
