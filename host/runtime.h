/* runtime.h: the runtime object, shared by the files of host/ only. */
#ifndef TULUA_RUNTIME_H
#define TULUA_RUNTIME_H

#include <signal.h>
#include <stddef.h>
#include <stdint.h>

#include "sched.h"

/* Deepest nesting of user coroutines inside one task; Lua's own C-stack
 * limit (LUAI_MAXCCALLS, 200) stops real programs well before this. */
#define CHAIN_MAX 256

struct tulua_runtime {
  uv_loop_t *loop;
  uv_loop_t own_loop;
  int owns_loop;
  lua_State *L;
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

  tulua__job *jobs, *jobs_tail; /* posted jobs, run before tasks */
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
  int ntasks; /* unfinished tasks */
  int uncaught; /* uncaught task errors so far */
  int in_drain; /* the scheduler is resuming tasks: no nested runs */
  tulua__task *call_task; /* the task tulua_call waits for */
  double budget; /* tulua_step's time budget for one drain, 0: none */

  volatile sig_atomic_t interrupt_pending; /* tulua_interrupt not yet seen */
  volatile sig_atomic_t cancel_pending; /* cancel call_task at next poll */
  volatile lua_State *running; /* thread running Lua now */
};

/* sched.c, for runtime.c */
int tulua__sched_init(tulua_runtime *rt);
void tulua__sched_shutdown(tulua_runtime *rt);
int tulua__task_done(tulua__task *t);
int tulua__task_push_outcome(lua_State *L, tulua__task *t);
tulua__task *tulua__spawn_main(lua_State *L, int nargs);
lua_State *tulua__task_thread(tulua__task *t);
void tulua__interrupt_hook(lua_State *L, lua_Debug *ar);

#endif
