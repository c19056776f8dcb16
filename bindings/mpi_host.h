/* mpi_host.h: the runtime's functions that tulua_mpi.so calls, handed to it
 * by its opener (mpi_load.c) as a table of pointers. The module cannot link
 * them by name: the executable and libtulua.so export only the tulua_* API
 * (hidden visibility), and an embedder's process has no tulua executable. */
#ifndef TULUA_MPI_HOST_H
#define TULUA_MPI_HOST_H

#include "process_pool.h"
#include "scheduler.h"

/* Bump when a field changes: the opener refuses a module of another. */
#define TULUA_MPI_HOST_VERSION 4

typedef struct tulua__mpi_host {
  int version;
  tulua_runtime *(*runtime)(lua_State *L);
  uv_loop_t *(*loop)(lua_State *L);
  void (*post)(tulua_runtime *rt, tulua__job *job);
  void (*unpost)(tulua_runtime *rt, tulua__job *job);
  int (*pool_recv_gc)(lua_State *L, tulua__bytes *in, size_t *received,
                      const char **gc, size_t *gc_len, double offset);
  int (*port_open_io)(lua_State *L, const tulua__port_io *io, void *ud,
                      const char *version, const char *who);
  int (*worker_signal)(void); /* the signal that stops a job (worker.h) */
  /* the frames sent, and the GC steps of the replies: a traced job's,
   * which needs the trace (trace.h), hidden like the rest */
  int (*pool_frame)(tulua__bytes *b, int kind, uint32_t job, const char *body,
                    size_t len);
  void (*pool_trace_gc)(const char *gc, size_t len, const char *kind, int pool,
                        int worker, int pid, double offset);
} tulua__mpi_host;

/* Defined by tulua_mpi.so: takes the table (which outlives it) before its
 * luaopen_tulua_mpi runs. Returns 0, or -1 for a table of another version. */
typedef int (*tulua__mpi_bind_fn)(const tulua__mpi_host *host);

#endif
