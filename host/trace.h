/* trace.h: the process's trace recorder (host/trace.c), for host/ and the
 * bindings that record pool jobs. One trace per process at a time: it
 * takes events from every thread (the runtime that started it records its
 * tasks, the pools record their jobs) into a bounded ring that a writer
 * thread empties into a file in the Chrome trace event format
 * (host/trace.md). Times are uv_hrtime() nanoseconds: CLOCK_MONOTONIC,
 * one clock for every thread and process of the machine, so that the
 * tracks of process workers line up with the loop's. */
#ifndef TULUA_TRACE_H
#define TULUA_TRACE_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <lua.h>
#include <uv.h>
#if defined(__x86_64__)
#include <x86intrin.h>
#endif

/* Nonzero while a trace is being recorded: the one thing a hot path reads
 * when tracing is off. */
extern atomic_int tulua__tracing;

static inline int tulua__trace_on(void) {
  return atomic_load_explicit(&tulua__tracing, memory_order_relaxed);
}

/* 1 while the trace times steps with the CPU's time-stamp counter: on
 * x86-64 with an invariant TSC, where it costs a tenth of a clock_gettime
 * under a hypervisor's clock (a step is timed at every step: W2 felt it).
 * The conversion turns ticks into uv_hrtime() nanoseconds, calibrated at
 * start and stop. */
extern int tulua__trace_tsc;

/* The time of a step: TSC ticks (records flagged TULUA_TR_TICKS) or
 * uv_hrtime() nanoseconds. */
static inline uint64_t tulua__trace_ticks(void) {
#if defined(__x86_64__)
  if (tulua__trace_tsc) return __rdtsc();
#endif
  return uv_hrtime();
}

/* What a record is (the writer turns each into one or a few JSON events). */
enum {
  TULUA_TR_SPAWN, /* a task's life begins: id, name, n1 the parent */
  TULUA_TR_NAME, /* a task's name changes: id, name */
  TULUA_TR_STEP, /* a run step: ts, dur, id; flags; the wait's kind/detail */
  TULUA_TR_FINISH, /* a task's life ends: id, detail the outcome */
  TULUA_TR_ERROR, /* an uncaught error: id, detail the message */
  TULUA_TR_SUBMIT, /* a pool job submitted: id the job, n1 bytes out */
  TULUA_TR_JOB, /* a pool job ran: ts, dur, track, n1 out, n2 back */
  TULUA_TR_GC, /* collection cycles ended: n1 KiB in use, n2 cycles */
  TULUA_TR_GCSTEP /* a slow collector step: ts, dur, n1/n2 KiB before/after,
                     name what ran it, detail a worker's track name */
};

/* Step flags. */
#define TULUA_TR_RESUMED 1 /* the step ended a wait (not the task's first) */
#define TULUA_TR_WAITS   2 /* the step ended in a wait (not the task's end) */
#define TULUA_TR_SLEEP   4 /* ... in a sleep of n1 milliseconds */
#define TULUA_TR_TICKS   8 /* ts and dur are tulua__trace_ticks() */

#define TULUA_TR_TEXT 184

/* One record: its strings packed in text, so that the ring and the
 * writer copy only the bytes used (a step's are a few). */
typedef struct tulua__trace_rec {
  uint64_t ts, dur; /* uv_hrtime() ns */
  uint64_t id; /* task or job */
  int64_t n1, n2;
  int32_t pid, tid; /* the track: 0 for the loop's of this process */
  uint8_t kind, flags;
  uint16_t len; /* bytes of text used */
  char text[TULUA_TR_TEXT]; /* name, kind and detail, each ended by NUL */
} tulua__trace_rec;

/* Begins a record of kind about id, made now: the rest of its head zero,
 * its strings for tulua__trace_text. */
static inline void tulua__trace_begin(tulua__trace_rec *r, int kind,
                                      uint64_t id) {
  memset(r, 0, offsetof(tulua__trace_rec, text));
  r->kind = (uint8_t)kind;
  r->ts = uv_hrtime();
  r->id = id;
}

/* Sets the strings of r (NULL for ""), cut to fit: name to 47 bytes, kind
 * to 23, detail to the rest. */
void tulua__trace_text(tulua__trace_rec *r, const char *name, const char *kind,
                       const char *detail);

/* Starts the trace into path, keeping at most max_events records in
 * memory (0: the default, 65536); events that find the ring full are
 * dropped and counted. Returns 0, UV_EBUSY if a trace is on already, or
 * the error of opening the file or starting the writer; errbuf gets a
 * message. */
int tulua__trace_start(const char *path, size_t max_events, char *errbuf,
                       size_t errlen);

/* Ends the trace: the writer writes what is left, the records become the
 * JSON with the track names and the count of dropped events, and the file
 * is closed. Returns 0, or UV_EINVAL if no trace is on, or a write error's
 * code. Only the thread that started the trace may stop it (its records
 * go into a ring without a lock). */
int tulua__trace_stop(void);

/* The counts of the last trace, once stopped: records written, dropped. */
void tulua__trace_counts(uint64_t *written, uint64_t *dropped);

/* Adds a record (its used bytes copied) when a trace is on; drops it if
 * the ring is full. */
void tulua__trace_add(const tulua__trace_rec *r);

/* Records a pool job that ran on a worker: kind "thread" (the track
 * "thread worker <worker>", of pool number pool when above 1), "process"
 * (the track "process <pid>" in a process of its own), or any other word
 * (a track "<kind> <worker>"; the hook MPI ranks are meant to use: "rank").
 * started/finished are uv_hrtime() seconds; bytes_out what was sent to the
 * worker, bytes_in what came back (-1: unknown). */
void tulua__trace_job(const char *kind, int pool, int worker, int pid,
                      uint64_t job, const char *status, double started,
                      double finished, int64_t bytes_out, int64_t bytes_in);

/* Records a slow collector step of a worker in another process (its
 * reply brought it): on the worker's track as tulua__trace_job names it,
 * ts and dur uv_hrtime() nanoseconds on this process's clock, the heap in
 * KiB before and after, name what ran it ("gc step"). */
void tulua__trace_gcstep(const char *kind, int pool, int worker, int pid,
                         const char *name, uint64_t ts, uint64_t dur,
                         int64_t kb0, int64_t kb1);

/* The track of a worker as tulua__trace_job names it: pid and tid of its
 * records, and its name in where. */
void tulua__trace_track(const char *kind, int pool, int worker, int pid,
                        int32_t *rpid, int32_t *rtid, char *where, size_t size);

/* Returns a new pool's number, from 1: its jobs' "pool" in the trace. */
int tulua__trace_pool_no(void);

/* Records a job's submission on the loop's track. */
void tulua__trace_submit(int pool, uint64_t job, int64_t bytes_out);

/* Records that the task (or thread) id is named name from now on. */
void tulua__trace_name(uintptr_t id, const char *name);

/* Marks the end of L's next garbage-collection cycle, and each one after
 * it while its runtime records the trace (a TULUA_TR_GC record with the
 * heap in KiB). Call it where a runtime starts recording. [-0, +0, m] */
void tulua__trace_gc_arm(lua_State *L);

/* The threshold a new trace starts with: 1 ms, in nanoseconds. */
#define TULUA__GC_SLOW_DEFAULT_NS ((uint64_t)1000 * 1000)

/* Steps slower than this many nanoseconds are recorded (trace.start's
 * gc_slow; TULUA__GC_SLOW_DEFAULT_NS unless set). */
uint64_t tulua__trace_gc_slow_ns(void);

/* Sets that threshold for the trace that is on: trace.start's gc_slow,
 * TULUA_TRACE_GC_SLOW. */
void tulua__trace_set_gc_slow(uint64_t ns);

/* For a runtime that did not start the trace (a pool worker's): paces its
 * collector while a trace is on, so that its slow steps go on the
 * worker's track (as tulua__trace_track names it), and stops when the
 * trace is off. Call it where the worker takes a job. host/gctrace.c. */
void tulua__trace_gc_sync(lua_State *L, const char *kind, int pool, int worker,
                          int pid);

/* Where a runtime's slow steps go instead of the trace: a process
 * worker's, whose owner traces (times are uv_hrtime(), heap in KiB). */
typedef void (*tulua__gc_sink)(void *ud, const char *name, uint64_t t0,
                               uint64_t t1, int kb0, int kb1);

/* Paces L's runtime for an owner that traces in another process: its
 * steps of slow_ns or longer go to sink (a process worker's port sends
 * them back with the job's reply); sink NULL stops the pacing that this
 * started. A runtime paced for a trace of its own process is left so.
 * host/gctrace.c. */
void tulua__gctrace_sink(lua_State *L, uint64_t slow_ns, tulua__gc_sink sink,
                         void *ud);
/* Stops that pacing if ud is its sink's (a port that goes away). */
void tulua__gctrace_unsink(lua_State *L, void *ud);

#endif
