/* runtime.h: the runtime object, shared by the files of host/ only. */
#ifndef TULUA_RUNTIME_H
#define TULUA_RUNTIME_H

#include <signal.h>
#include <stddef.h>
#include <stdint.h>

#include "queue.h"
#include "scheduler.h"
#include "trace.h"

/* Deepest nesting of user coroutines inside one task; Lua's own C-stack
 * limit (LUAI_MAXCCALLS, 200) stops real programs well before this. */
#define CHAIN_MAX 256

/* alloc.c: a runtime's Lua allocator, small blocks in size classes. */
typedef struct tulua__heap {
  void *free[128]; /* free lists, one per 16-byte size class up to 2 KiB */
  char *cur, *end; /* the rest of the newest page */
  void *pages; /* every page, freed at close */
} tulua__heap;

void *tulua__alloc(void *ud, void *ptr, size_t osize, size_t nsize);
void tulua__heap_free(tulua__heap *h);
/* Small blocks (n <= 2 KiB) for the runtime's own structs; no header. */
void *tulua__heap_get(tulua__heap *h, size_t n);
void tulua__heap_put(tulua__heap *h, void *p, size_t n);
/* Returns the heap a small block came from. */
tulua__heap *tulua__heap_of(const void *block);

/* gctrace.c: the collector's pacing while a trace is on (one a runtime). */
typedef struct tulua__gctrace {
  int on; /* paced: the allocator is gctrace.c's */
  int busy; /* checking: no request from the allocator meanwhile */
  int64_t bytes; /* allocated (net) since the last check */
  int64_t every; /* ... asks for a check past this */
  int pushed_kb; /* the credit given to Lua's own debt, to give back */
  lua_State *hooked; /* the thread asked for a check */
  lua_Hook prev; /* ... and the hook it had, put back by the check */
  int prev_mask, prev_count;
  int32_t pid, tid; /* the runtime's track: 0 the loop's, or a worker's */
  char track[64]; /* ... its name, for a worker's */
  tulua__gc_sink sink; /* set: the steps go there, not to the trace */
  void *sink_ud;
  uint64_t sink_slow; /* ... those this many ns long or longer */
} tulua__gctrace;

/* Starts and stops the pacing of L's runtime (the runtime that records the
 * trace; workers through tulua__trace_gc_sync). */
void tulua__gctrace_start(lua_State *L, int pid, int tid, const char *track);
void tulua__gctrace_stop(lua_State *L);
/* Wraps the global collectgarbage (at open, after the base library). */
void tulua__gctrace_open(lua_State *L);

struct tulua_runtime {
  uv_loop_t *loop;
  uv_loop_t own_loop;
  int owns_loop;
  lua_State *L;
  tulua__heap lua_heap;
  int warn; /* warn(): 0 off, 1 on, 2 in the middle of a message */
  tulua_config cfg;
  char *errmsg;

  /* Tasks ready to run, linked through the tasks. A task is in it at most
   * once (its state says READY). */
  tulua__task *ready_head, *ready_tail;
  size_t ready_len;

  /* Sleeping tasks: a binary min-heap on (deadline, seq). */
  tulua__task **heap;
  size_t heap_len, heap_cap;
  uint64_t seq;

  tulua__queue jobs; /* posted jobs (tulua__job.node), run before tasks */
  tulua__job interrupt_job; /* cancels every task (Ctrl-C in tulua_run) */

  uv_check_t check; /* drains the ready queue after each poll; unref'd */
  uv_idle_t idle; /* active while tasks are ready: poll must not block */
  uv_timer_t timer; /* the earliest sleeper's deadline */
  uv_async_t async; /* tulua_wakeup and interrupts; unref'd */

  tulua__task *current; /* the task being resumed, or NULL */
  /* The threads running right now, from the task's thread (chain[0]) to
   * the innermost user coroutine (chain[depth - 1]). */
  lua_State *chain[CHAIN_MAX];
  int depth;
  int wait_mark; /* set by tulua__wait just before its yield */

  int live_ref; /* registry: table of unfinished Task objects (anchors) */
  int extras_ref; /* registry: what a few unfinished tasks need (sched.c) */
  int names_ref; /* registry: task names, weak keys */
  int origins_ref; /* registry: weak keys, an error object a task failed
                      with -> that task's report (where it was raised) */
  int methods_ref; /* registry: the Task methods (tulua.Task) */
  lua_Integer name_seq; /* the last default name given, Task-<n> */
  uint32_t task_seq; /* the last task id given */
  tulua__describe_fn describe_next; /* tulua__wait_detail's, for the wait
                                       about to begin */
  int debug; /* report task steps that block the loop (asyncio debug) */
  uint64_t slow_ns; /* ... for this long at least */
  int traced; /* this runtime started the trace: it records its tasks */
  uint64_t trace_mark; /* when the last traced step of this drain ended */
  tulua__job trace_gc; /* records a collection cycle's end (trace.c) */
  uint64_t trace_gc_ts; /* ... which came then */
  int trace_gc_cycles; /* ... and how many cycles ended since the last */
  tulua__gctrace gc; /* slow collector steps in the trace (gctrace.c) */
  int ntasks; /* unfinished tasks */
  int uncaught; /* uncaught task errors so far */
  int in_drain; /* the scheduler is resuming tasks: no nested runs */
  lua_State *call_co; /* the task tulua_call waits for */
  double budget; /* tulua_step's time budget for one drain, 0: none */
  int stop_requested; /* an interrupt: tulua_run ends when no task is left */
  int interrupt_told; /* the interrupt_job's interrupt failed a task already:
                       * its error reports it */

  volatile sig_atomic_t interrupt_pending; /* tulua_interrupt not yet seen */
  volatile sig_atomic_t cancel_pending; /* cancel call_co at next poll */
  volatile lua_State *running; /* thread running Lua now */
  volatile sig_atomic_t ps_pending; /* tulua --ps asked: write the report */
  tulua__job ps_job; /* writes it in the drain (ps.c) */
};

/* trace.c: opens the module tulua._trace (lua/tulua/trace.lua's C half). */
int tulua__open_trace(lua_State *L);

/* Debug mode's threshold: 0.1 s unless set; at most a day, so that its
 * nanoseconds fit. */
#define TULUA__SLOW_MAX 86400.0

static inline uint64_t tulua__slow_ns(double seconds) {
  return seconds > 0 ? (uint64_t)(seconds * 1e9) : 100 * 1000 * 1000;
}

/* The state of an unfinished task (sched.c). */
enum {
  T_READY, /* queued to run */
  T_NEW, /* queued to run for the first time */
  T_RUNNING, /* resumed right now (or a coroutine of it is) */
  T_WAITING /* suspended in a wait */
};

/* An unfinished task: sched.c's lists and heap link it, task.c's methods
 * read it. */
struct tulua__task {
  lua_State *co;
  tulua__waiter *w; /* the wait in progress (or to deliver), or NULL */

  union {
    tulua__task *next_ready; /* ready or new: in the ready list */
    uint64_t since; /* waiting or running: the loop time (ms) it began */
  } u;

  tulua__waiter *joiners; /* join ops waiting for this task */
  /* sleeping: the loop time (ms) to wake up at, shifted left by SEQ_BITS,
   * with a sequence number below it so that equal deadlines wake FIFO */
  uint64_t key;
  int ref; /* the thread's slot in the live table */
  unsigned heap_idx : 22; /* sleeping: position in the heap */
  unsigned state : 2;
  unsigned cancelling : 1; /* cancel() asked; raised at the next wait */
  unsigned woken_by_cancel : 1;
  unsigned observed : 1; /* someone joined or got the result/error */
  unsigned is_call : 1; /* tulua_call's task: errors go to the caller */
  unsigned interrupted : 1; /* cancelled by an interrupt (Ctrl-C) */
  unsigned by_interrupt : 1; /* ... during tulua_run: reported if unjoined */
  unsigned has_extra : 1; /* an entry in the extras table (sched.c) */
  unsigned hidden : 1; /* left out of all_tasks: a REPL line's (task.c) */
  /* What the task waits for (tulua --ps, traces), read only while it
   * waits: the op named to tulua__check_wait, "sleep", or park's what; the
   * detail's describer is in the waiter (tulua__wait_detail). */
  const char *wait_op;
  uint32_t id; /* 1, 2, ... in spawn order (per runtime) */
  uint32_t parent; /* id of the task that spawned it; 0: none */
};

/* The extra space of a thread (lua_getextraspace), a pointer with tags in
 * its low bits:
 * - an unfinished task's: its tulua__task, tagged X_TASK;
 * - a finished task's: the runtime, tagged X_FINISHED and X_FAILED or
 *   X_CANCELLED (neither: it returned);
 * - any other thread's: the runtime (new threads copy it from the main
 *   thread), tagged X_WAITING by coro.c while it is in the middle of a
 *   forwarded wait (the bit of X_CANCELLED: only a task's is finished).
 * The runtime is 16-byte aligned, tasks come from 16-byte size classes. */
#define X_TASK      ((uintptr_t)1)
#define X_CANCELLED ((uintptr_t)2)
#define X_WAITING   ((uintptr_t)2)
#define X_FINISHED  ((uintptr_t)4)
#define X_FAILED    ((uintptr_t)8)
#define X_TAGS      ((uintptr_t)15)

static inline uintptr_t *tulua__xspace(lua_State *L) {
  return (uintptr_t *)lua_getextraspace(L);
}

/* Returns the runtime of the unfinished task t, whose struct comes from
 * the runtime's small-block heap. */
static inline tulua_runtime *tulua__task_rt(const tulua__task *t) {
  return tulua__container_of(tulua__heap_of(t), tulua_runtime, lua_heap);
}

/* sched.c, for task.c: the tables of unfinished tasks */

/* Pushes the live table (unfinished tasks' threads, anchored). [-0, +1, -] */
void tulua__push_live(lua_State *L, tulua_runtime *rt);

/* Pushes the thread of the unfinished task t. [-0, +1, -] */
void tulua__push_thread(lua_State *L, tulua_runtime *rt, tulua__task *t);

/* Pushes the extras entry of the unfinished task t, or nil. [-0, +1, -] */
void tulua__push_extra(lua_State *L, tulua__task *t);

/* Sets the extras entry of the unfinished task t to the value on top of
 * L, popping it. [-1, +0, m] */
void tulua__set_extra(lua_State *L, tulua__task *t);

/* Pushes the extras entry of the unfinished task t as a table, turning a
 * lone callback (or nothing) into one. [-0, +1, m] */
void tulua__push_extra_table(lua_State *L, tulua__task *t);

/* sched.c, for task.c: what the module 'tulua' and Task methods call */

/* Asks t to stop: a waiting task resumes with the cancellation error, a
 * ready or running one gets it at its next wait, a new one never runs. */
void tulua__cancel_task(tulua_runtime *rt, tulua__task *t);

/* Returns 1 if a wait in L would not raise tulua__check_wait's misuse
 * errors (a pending cancellation aside). */
int tulua__can_wait(lua_State *L);

/* As tulua__spawn, but the function runs in a protected call inside the
 * task (tulua.spawn_protected). [-(nargs+1), +1, m] */
void tulua__spawn_protected(lua_State *L, int nargs);

/* tulua.park() and tulua.unpark(task): a task parks until unparked. */
int tulua__park(lua_State *L);
int tulua__unpark(lua_State *L);

/* task.c, for sched.c */

/* Creates the metatable of every thread (the Task methods) and the names
 * table. In tulua_open. [-0, +0, m] */
void tulua__open_task_class(lua_State *L, tulua_runtime *rt);

/* Pushes the name of the task thread at idx; the first time, a task
 * without one is named "Task-<n>". [-0, +1, m] */
void tulua__push_task_name(lua_State *L, tulua_runtime *rt, int idx);

/* sched.c, for runtime.c */
int tulua__sched_init(tulua_runtime *rt);
void tulua__sched_shutdown(tulua_runtime *rt);
int tulua__task_finished(lua_State *co);
lua_State *tulua__spawn_main(lua_State *L, int nargs);
void tulua__interrupt_hook(lua_State *L, lua_Debug *ar);

/* task.c, for runtime.c and join: pushes the outcome of the finished task
 * co, its results, or raises its error or its cancellation. */
int tulua__task_push_outcome(lua_State *L, lua_State *co);

/* task.c, for runtime.c: os.exit, whose close closes the main chunk's
 * task as lua_close closes lua.c's main thread. After luaL_openlibs. */
void tulua__open_exit(lua_State *L);

/* ps.c, for runtime.c: tulua --ps. The first runtime opened in the process
 * decides whether it answers (cfg.ps), and that one installs the SIGURG
 * handler; close gives the handler back. */
void tulua__ps_open(tulua_runtime *rt);
void tulua__ps_close(tulua_runtime *rt);

/* ps.c, for task.c: tulua.ps([tree]) prints the task list. */
int tulua__ps(lua_State *L);

/* ps.c: makes or checks /tmp/tulua-<uid>, the reports' directory,
 * writing its path in dir. Returns 0, or -1 with errno set (EPERM: not a
 * 0700 directory of this user). */
int tulua__ps_dir(char *dir, size_t size);

/* ps.c, for task.c: tulua._ps_dir() -> that directory | nil, message, for
 * the asking side (lua/tulua/_ps.lua). */
int tulua__ps_lua_dir(lua_State *L);

/* io.c, for runtime.c: tulua's print and io functions in place of Lua's
 * (close-on-exec files, SIGPIPE as lua5.4 has it). After luaL_openlibs. */
void tulua__open_io(lua_State *L);

#endif
