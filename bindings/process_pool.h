/* process_pool.h: the channel protocol of the process pool, shared by its
 * two ends: the parent's (bindings/process_pool.c) and the worker's
 * (bindings/process_worker.c).
 *
 * Frames, both ways, in the machine's byte order (both ends are this
 * binary): u32 size of what follows, u8 kind, u8 status, u32 job, body.
 *   parent -> worker: 'P' the package path and cpath (transfer; another
 *     transport adds a table of its options), 'I' the
 *     initializer and its arguments (transfer; empty: none), 'J' a job (fn
 *     and its arguments, transfer), 'C' cancel that job (no body); and,
 *     where the channel is no socket (MPI, bindings/mpi_pool.c): 'V' first,
 *     the owner's version (TULUA_VERSION, the transfer format and
 *     TULUA_POOL_FRAMES), 'S' stop, what closing the socket says, and 'A'
 *     alone in a message, the microseconds between heartbeats (taken by
 *     the worker's MPI thread).
 *   worker -> parent: 'H' ready: the worker has run its initializer and
 *     handles the signal that interrupts a job (before, that signal would
 *     kill it); 'R' the outcome of a job, status TULUA_JOB_OK (0), _ERROR
 *     (1) or _CANCELLED (2); body: u64 start and stop (uv_hrtime), then
 *     the results, or the error and its traceback (transfer; nothing for a
 *     cancelled job); 'B' the initializer failed (or the versions differ),
 *     body: the message; 'W' (MPI) first, the worker's "pid host"; 'A'
 *     (MPI) a heartbeat, alone in a message.
 * A traced job (the owner records a trace, host/trace.md): 'J' with status
 * TULUA_JOB_TRACED, and the body starts with a u64, the trace's gc_slow in
 * nanoseconds: the worker paces its collector (host/gctrace.c) and sends
 * the steps that took that long back in the status TULUA_REPLY_GC of a
 * reply: after its times, a u32 size and the steps, each u64 start (the
 * worker's uv_hrtime), u64 duration (ns), i32 heap KiB before, i32 after,
 * u8 length and the name ("gc step", "collectgarbage collect"). These are
 * frames of revision TULUA_POOL_FRAMES: a transport whose ends may be
 * different builds (MPI) says it in its 'V'.
 * Job numbers are the parent's counter per worker, 1 to 2^31 - 1 (they
 * travel as the value of the signal that interrupts a running job), and a
 * worker answers its jobs in the order it got them. */
#ifndef TULUA_PROCESS_POOL_H
#define TULUA_PROCESS_POOL_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <sys/uio.h>

#include <lua.h>
#include <uv.h>

#include "byte_buffer.h"

#define HDR        10 /* u32 size, u8 kind, u8 status, u32 job */
#define TIMES      16 /* a reply's u64 start and stop */
#define READ_CHUNK 65536 /* free space offered to each read */
#define KEEP_MAX   (1u << 20) /* an empty buffer larger than this is freed */
#define FRAME_MAX  ((size_t)UINT32_MAX - (HDR - 4))

/* The frames' revision: 2 since traced jobs (TULUA_JOB_TRACED). */
#define TULUA_POOL_FRAMES 2
#define TULUA_JOB_TRACED  1 /* a 'J' status: gc_slow precedes the job */
#define TULUA_REPLY_GC    0x80 /* an 'R' status flag: GC steps follow */
#define GC_STEP_HEAD      25 /* a step's bytes before its name */

/* Frees an empty buffer that a large batch has grown. */
static inline void bytes_trim(tulua__bytes *b) {
  if (b->pos == b->len && b->cap > KEEP_MAX) tulua__bytes_free(b);
}

/* Writes a frame's header at h, for a body of the given size. */
static inline void put_header(char *h, size_t body, int kind, int status,
                              uint32_t job) {
  uint32_t size = (uint32_t)(body + HDR - 4);
  memcpy(h, &size, 4);
  h[4] = (char)kind;
  h[5] = (char)status;
  memcpy(h + 6, &job, 4);
}

/* Appends a frame to b (any kind the owner sends): a job, while a trace
 * is on, as a traced job (TULUA_JOB_TRACED, the trace's gc_slow first).
 * Returns 0 or UV_ENOMEM. */
int tulua__pool_frame(tulua__bytes *b, int kind, uint32_t job, const char *body,
                      size_t len);

/* Pops the next complete frame of in and pushes what link:recv returns
 * for it (see process_pool.c), above index 1; returns how many values, 0
 * when no frame is complete, or -1 when in does not hold frames of this
 * protocol; a reply's size (for the trace) goes into *received, and *gc,
 * *gc_len point at the GC steps it carries (*gc_len 0: none), readable
 * until the next read into in. A reply's times (the worker's clock) are
 * moved by offset seconds (a worker on another host; 0 on this one), a
 * broken worker's (the owner's clock) are not. Raises only on memory
 * errors.
 * [-0, +n, m] */
int tulua__pool_recv_gc(lua_State *L, tulua__bytes *in, size_t *received,
                        const char **gc, size_t *gc_len, double offset);

/* Records the GC steps of a reply (as tulua__pool_recv_gc gives them) in
 * the trace, on the worker's track (tulua__trace_track's kind, pool,
 * worker, pid), their times moved by offset seconds (a worker on another
 * host); nothing when no trace is on. */
void tulua__pool_trace_gc(const char *gc, size_t len, const char *kind,
                          int pool, int worker, int pid, double offset);

/* A worker's channel other than a descriptor (MPI's): drain appends to in
 * what has come, without waiting, and returns 0 or -1 once the channel is
 * gone; write sends the n iovecs as one message, returning 0 or -1; block
 * waits until drain would find something. */
typedef struct tulua__port_io {
  int (*drain)(void *ud, tulua__bytes *in);
  int (*write)(void *ud, struct iovec *iov, int n);
  void (*block)(void *ud);
} tulua__port_io;

/* Pushes a worker's port (the one of process_pool.port_open, with the same
 * port functions) over io and waits, as port_open does, for its start, or
 * pushes nil if told to stop before it (a worker the pool never used). An
 * owner whose 'V' differs from version is told so (the message begins with
 * who: "worker rank 2 on host h"), and this raises that message.
 * [-0, +1, v] */
int tulua__port_open_io(lua_State *L, const tulua__port_io *io, void *ud,
                        const char *version, const char *who);

/* Adds the worker's end, port_open and the port functions, to the module
 * table on top of the stack (tulua._process_pool). [-0, +0, m] */
void tulua__process_worker_open(lua_State *L);

#endif
