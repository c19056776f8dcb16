/* thread_pool.c: the module 'tulua._thread_pool', the thread backend of
 * concurrent.futures (lua/concurrent/futures.lua).
 *
 * A pool is n OS threads of its own (not libuv's thread pool: CPU work there
 * would delay file operations and DNS). Each worker thread runs a whole
 * tulua runtime, with its own Lua state and loop, whose main task is the
 * job runner of lua/concurrent/_worker.lua. Jobs cross as tulua.transfer
 * buffers:
 *
 *   owner: the executor core's submit (bindings/future.c) calls this
 *          pool's C submit, which encodes the arguments (the function too,
 *          unless it travels as a shared blob), queues the job and, if a
 *          worker sleeps, wakes it (uv_async_send). A new thread is started
 *          when none is idle, up to max_workers (as Python does).
 *   worker: takes the job under the lock, decodes and runs it, encodes the
 *          results (or the error and its traceback) into the same job, and
 *          under one lock moves it to the done list (waking the owner's
 *          loop) and takes the next; with none, it looks again for a while
 *          before it sleeps.
 *   owner: the async callback posts a job of the scheduler, which hands
 *          every finished job to the core (tulua__core_deliver): a Future's
 *          results are set from C.
 *
 * Cancelling the job a worker runs is the job control of bindings/worker.c,
 * which process workers share. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <time.h>

#include <lualib.h>

#include "queue.h"
#include "common.h"
#include "trace.h"
#include "cpu.h"
#include "future.h"
#include "transfer.h"
#include "worker.h"

#define POOL_MT "tulua.ThreadPool"

/* How long an idle worker looks for more work before it sleeps, and how
 * long it naps between two looks. */
#define SPIN_NS 100000
#define NAP_NS  2000

/* How often a running job being cancelled is asked again, as the process
 * pool re-sends its signal (lua/concurrent/_process_pool.lua's RESEND). */
#define RESEND_MS 50

/* ---- the pool, shared by the owner and its threads ---- */

/* A function without upvalues of its own (none, or _ENV) travels once:
 * its bytecode is kept here, shared by the jobs that call it, and each
 * worker loads it once (cached by id). Only the owner's thread counts
 * references: a job holds one until it is freed, and so does the owner's
 * handle while the function lives there. */
typedef struct blob {
  long long id; /* unique in the process: the workers' cache key */
  int refs;
  size_t len;
  char code[]; /* the bytecode */
} blob;

static _Atomic long long last_blob_id;

/* The registry key of a worker's table of loaded blobs (push_shared). */
static const char shared_key = 's';

static void release_blob(blob *b) { /* on the owner's thread */
  if (b != NULL && --b->refs == 0) free(b);
}

/* A job: its request, then its reply, in inl when they fit (a job is one
 * allocation, and a worker's reply to it often none). */
typedef struct job {
  tulua__queue node; /* in the pool's queue or done list, or the owner's */
  long long id;
  blob *fn; /* the function (the request holds nil for it), or NULL */
  char *buf; /* the request, then the reply: inl or malloc'd */
  size_t len;
  uint32_t cap; /* bytes at inl */
  short worker; /* 1-based */
  unsigned char status; /* TULUA_JOB_* */
  uint32_t req_len; /* the request's bytes, for the trace (cut at 4 GiB) */
  uint64_t t_start, t_stop; /* uv_hrtime */
  char inl[];
} job;

/* Room for a small reply in every job. A job with it is 120 bytes at
 * most, a 128-byte chunk of glibc's malloc, the largest that its fastbins
 * keep: one byte more, and freeing each job costs the owner 70
 * instructions more (callgrind, W4). 40 since req_len: a number or a short
 * string reply still fits. */
#define REPLY_ROOM 40
_Static_assert(sizeof(job) + REPLY_ROOM <= 120, "a job outgrows fastbins");

static void drop_buf(job *j) {
  if (j->buf != j->inl) free(j->buf);
  j->buf = NULL;
  j->len = 0;
}

/* Stores len bytes at p as the job's buffer; returns 0 or UV_ENOMEM. */
static int set_buf(job *j, const char *p, size_t len) {
  char *dst = len <= j->cap ? j->inl : malloc(len);
  if (dst == NULL) return UV_ENOMEM;
  memcpy(dst, p, len);
  j->buf = dst;
  j->len = len;
  return 0;
}

typedef struct pool pool;

typedef struct worker {
  pool *p;
  int index; /* 1-based */
  uv_thread_t thread;
  int started;
  /* under p->mu */
  int idle; /* waits for work in wait() */
  int wake_ready; /* wake may be sent to */
  job *current; /* the job it runs */
  /* the worker thread's own */
  tulua__worker_ctx ctx;
  uv_async_t wake;
  tulua__waiter w;
  int waiting;
  int nshared; /* functions in its cache (push_shared) */
  /* the owner's package paths, taken under p->mu with a job when they
   * changed (paths_gen), set in the worker's state when it runs it */
  unsigned paths_gen;
  char *paths; /* path then cpath, or NULL: nothing new to set */
  size_t path_len, cpath_len;
} worker;

struct pool {
  uv_mutex_t mu;
  tulua__queue queue; /* jobs queued */
  tulua__queue done; /* jobs done, for the owner */
  int stopping; /* no new jobs: workers end when the queue is empty */
  int nworkers, nstarted;
  char *init; /* the initializer and its arguments, encoded, or NULL */
  size_t init_len;
  int broken; /* the pool takes no more work (an initializer failed) */
  /* the owner's package.path and package.cpath when it last submitted,
   * one after the other; paths_gen counts their changes */
  char *paths;
  size_t path_len, cpath_len;
  unsigned paths_gen;
  char *broken_msg; /* why, or NULL (out of memory) */
  char name_prefix[16];
  int trace_no; /* the owner's, for the workers' records */
  uv_async_t *owner_async; /* NULL once the owner closed */
  worker workers[];
};

static void wake_owner(pool *p) { /* under p->mu */
  if (p->owner_async) uv_async_send(p->owner_async);
}

/* Hands a finished job to the owner. Under p->mu. */
static void push_done(pool *p, job *j) {
  tulua__queue_insert_tail(&p->done, &j->node);
  wake_owner(p);
}

/* Frees a job; on the owner's thread (it holds a blob). */
static void free_job(job *j) {
  drop_buf(j);
  release_blob(j->fn);
  free(j);
}

/* Frees the jobs of a queue and leaves it empty; on the owner's thread. */
static void free_jobs(tulua__queue *h) {
  tulua__queue *q;
  while ((q = tulua__queue_pop(h)) != NULL)
    free_job(tulua__container_of(q, job, node));
}

/* ---- the worker thread ---- */

/* The port object of the job runner: light userdata of the worker. */
static worker *check_port(lua_State *L) {
  worker *w = lua_touserdata(L, 1);
  luaL_argcheck(L, w != NULL, 1, "port expected");
  return w;
}

/* Takes the next job, if any, for w. Under p->mu. Returns whether the
 * worker must end. */
static int take_locked(worker *w) {
  pool *p = w->p;
  tulua__queue *q = tulua__queue_head(&p->queue);
  if (q != NULL && !p->broken) {
    tulua__queue_remove(q);
    job *j = tulua__container_of(q, job, node);
    j->worker = w->index;
    w->current = j;
    if (w->paths_gen != p->paths_gen) { /* on a memory error, next time */
      size_t len = p->path_len + p->cpath_len;
      char *copy = malloc(len ? len : 1);
      if (copy != NULL) {
        memcpy(copy, p->paths, len);
        free(w->paths);
        w->paths = copy;
        w->path_len = p->path_len;
        w->cpath_len = p->cpath_len;
        w->paths_gen = p->paths_gen;
      }
    }
  }
  return (q == NULL && p->stopping) || p->broken;
}

/* Pushes what the runner does next: "job" (one was taken), "stop" or
 * "idle". */
static int push_next(lua_State *L, worker *w, int stop) {
  if (w->current != NULL) {
    /* its slow collector steps on its track while a trace is on */
    tulua__trace_gc_sync(L, "thread", w->p->trace_no, w->index, 0);
    lua_pushliteral(L, "job");
  } else if (stop)
    lua_pushliteral(L, "stop");
  else
    lua_pushliteral(L, "idle");
  return 1;
}

/* port:take() -> "job" | "idle" | "stop": takes the next job, if any. */
static int port_take(lua_State *L) {
  worker *w = check_port(L);
  uv_mutex_lock(&w->p->mu);
  int stop = take_locked(w);
  uv_mutex_unlock(&w->p->mu);
  return push_next(L, w, stop);
}

static int wait_deliver(lua_State *L, void *ud) {
  (void)L;
  ((worker *)ud)->waiting = 0;
  return 0;
}

static void wait_cancel(void *ud) {
  worker *w = ud;
  w->waiting = 0;
  uv_mutex_lock(&w->p->mu);
  w->idle = 0;
  uv_mutex_unlock(&w->p->mu);
}

/* port:wait(): suspends the runner until work is queued or the pool
 * stops. */
static int port_wait(lua_State *L) {
  worker *w = check_port(L);
  pool *p = w->p;
  tulua__check_wait(L, "port:wait");
  /* A stream of small jobs would put the worker to sleep between two, and
   * each wake-up costs the submitter a write and a context switch: look
   * again for a little while first. Between looks the worker naps rather
   * than yields: a yielding thread stays runnable, and with as many
   * workers as cores the submitter then gets a third of a core less (W4:
   * 1.45M -> 1.56M jobs/s, medians of 9 interleaved runs). */
  uint64_t until = uv_hrtime() + SPIN_NS;
  const struct timespec nap = {0, NAP_NS};
  while (__atomic_load_n(&p->queue.next, __ATOMIC_RELAXED) == &p->queue &&
         !__atomic_load_n(&p->stopping, __ATOMIC_RELAXED) &&
         uv_hrtime() < until)
    nanosleep(&nap, NULL);
  uv_mutex_lock(&p->mu);
  int ready = !tulua__queue_empty(&p->queue) || p->stopping || p->broken;
  if (!ready) w->idle = 1;
  uv_mutex_unlock(&p->mu);
  if (ready) return 0;
  w->waiting = 1;
  return tulua__wait(L, &w->w, wait_deliver, wait_cancel, w);
}

static void wake_cb(uv_async_t *h) { /* no Lua API */
  worker *w = h->data;
  pool *p = w->p;
  uv_mutex_lock(&p->mu);
  int go = !w->idle && w->waiting;
  uv_mutex_unlock(&p->mu);
  if (go) {
    w->waiting = 0;
    tulua__wake(&w->w);
  }
  tulua__worker_check_cancel(&w->ctx);
}

/* port:init() -> fn, ... | nothing: the initializer to run first. */
static int port_init(lua_State *L) {
  worker *w = check_port(L);
  if (w->p->init == NULL) return 0;
  int n = tulua__transfer_decode(L, w->p->init, w->p->init_len);
  if (n < 0) return lua_error(L);
  return n;
}

/* Marks the pool broken (the first message stays): it takes no more
 * work, every queued job fails, and idle workers end. Under p->mu. */
static void break_pool(pool *p, char *msg) {
  if (p->broken)
    free(msg);
  else
    p->broken_msg = msg;
  p->broken = 1;
  tulua__queue *q;
  tulua__queue_foreach(q, &p->queue) {
    job *j = tulua__container_of(q, job, node);
    drop_buf(j);
    j->status = TULUA_JOB_BROKEN;
  }
  tulua__queue_move(&p->queue, &p->done);
  for (int i = 0; i < p->nworkers; i++)
    if (p->workers[i].idle && p->workers[i].wake_ready) {
      p->workers[i].idle = 0;
      uv_async_send(&p->workers[i].wake);
    }
  wake_owner(p);
}

/* port:broken(message): the initializer failed; as Python's
 * BrokenThreadPool, the pool takes no more work and queued jobs fail. */
static int port_broken(lua_State *L) {
  worker *w = check_port(L);
  char *copy = strdup(luaL_checkstring(L, 2));
  uv_mutex_lock(&w->p->mu);
  break_pool(w->p, copy);
  uv_mutex_unlock(&w->p->mu);
  return 0;
}

/* Pushes the function of b in the worker's state: loaded once, then kept
 * by id in a registry table (emptied past 256 functions). Returns 0, or
 * pushes a message and returns -1. */
static int push_shared(lua_State *L, worker *w, const blob *b) {
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &shared_key) != LUA_TTABLE ||
      w->nshared >= 256) {
    lua_pop(L, 1);
    lua_newtable(L);
    lua_pushvalue(L, -1);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &shared_key);
    w->nshared = 0;
  }
  if (lua_rawgeti(L, -1, b->id) == LUA_TFUNCTION) {
    lua_remove(L, -2);
    return 0;
  }
  lua_pop(L, 1);
  if (tulua__transfer_load(L, b->code, b->len) != 0) {
    lua_remove(L, -2);
    return -1;
  }
  lua_pushvalue(L, -1);
  lua_rawseti(L, -3, b->id);
  lua_remove(L, -2);
  w->nshared++;
  return 0;
}

/* port.run(w) -> ...: decodes the job taken and calls it. Raises if it
 * cannot decode it (a module missing here). */
static int port_run(lua_State *L) {
  worker *w = check_port(L);
  job *j = w->current;
  luaL_argcheck(L, j != NULL, 1, "no job taken");
  lua_settop(L, 1);
  if (w->paths != NULL) { /* before decoding: it may require modules */
    luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
    if (lua_getfield(L, -1, LUA_LOADLIBNAME) == LUA_TTABLE) {
      lua_pushlstring(L, w->paths, w->path_len);
      lua_setfield(L, -2, "path");
      lua_pushlstring(L, w->paths + w->path_len, w->cpath_len);
      lua_setfield(L, -2, "cpath");
    }
    lua_settop(L, 1);
    free(w->paths);
    w->paths = NULL;
  }
  j->t_start = uv_hrtime();
  int n = tulua__transfer_decode(L, j->buf, j->len);
  drop_buf(j);
  if (n < 0) return lua_error(L);
  if (j->fn != NULL) { /* in place of the nil the request holds */
    if (push_shared(L, w, j->fn) != 0) return lua_error(L);
    lua_replace(L, 2);
  }
  return tulua__worker_call(L, &w->ctx, j->id, 2);
}

/* Stores the reply to a job in it (tulua__worker_store_fn). */
static int store_reply(void *ud, const char *p, size_t len) {
  if (p == NULL) {
    drop_buf(ud);
    return 0;
  }
  return set_buf(ud, p, len);
}

/* port.finish(w, ok, ...) -> as port.take: after xpcall, the results, or
 * the error and its traceback, go back to the owner, and the next job is
 * taken. A job asked to stop that ended with an error is cancelled. */
static int port_finish(lua_State *L) {
  worker *w = check_port(L);
  job *j = w->current;
  luaL_argcheck(L, j != NULL, 1, "no job taken");
  int cancelled = atomic_load(&w->ctx.cancel) == j->id;
  atomic_store(&w->ctx.running, 0);
  j->t_stop = uv_hrtime();
  int status = tulua__worker_outcome(L, 2, cancelled);
  j->status = tulua__worker_reply(L, 3, status, store_reply, j);
  pool *p = w->p;
  /* one lock for handing this job back and taking the next: the owner
   * and the other workers contend for it on every job */
  uv_mutex_lock(&p->mu);
  w->current = NULL;
  /* cleared under the lock, once pool:cancel can no longer find the job:
   * a cancel that came after the outcome was read must not stay set for a
   * later job that gets the same id */
  atomic_store(&w->ctx.cancel, 0);
  push_done(p, j);
  int stop = take_locked(w);
  uv_mutex_unlock(&p->mu);
  return push_next(L, w, stop);
}

static void worker_main(void *arg) {
  worker *w = arg;
  pool *p = w->p;
  char name[16];
  snprintf(name, sizeof name, "%.11s-%d", p->name_prefix, w->index);
  pthread_setname_np(pthread_self(), name);
  /* naps and timers of this thread end when asked, not up to 50 us late */
  prctl(PR_SET_TIMERSLACK, 1000UL, 0UL, 0UL, 0UL);
  tulua__worker_accept_signal();

  tulua_runtime *rt = NULL;
  int failed = 0;
  if (tulua_open(&rt, NULL) == 0 &&
      uv_async_init(tulua_loop(rt), &w->wake, wake_cb) == 0) {
    w->wake.data = w;
    w->ctx.rt = rt;
    w->ctx.wake = &w->wake;
    tulua__worker_set_current(&w->ctx);
    uv_mutex_lock(&p->mu);
    w->wake_ready = 1;
    uv_mutex_unlock(&p->mu);
    lua_State *L = tulua_state(rt);
    lua_getglobal(L, "require");
    lua_pushliteral(L, "concurrent._worker");
    if (lua_pcall(L, 1, 1, 0) == LUA_OK) {
      lua_getfield(L, -1, "serve");
      lua_remove(L, -2);
      lua_pushlightuserdata(L, w);
      if (tulua_call(rt, 1, 0) != LUA_OK) failed = 1;
    } else {
      failed = 1;
    }
    if (failed) { /* a bug of the runner: no job may wait for it */
      const char *msg = lua_tostring(L, -1);
      uv_mutex_lock(&p->mu);
      break_pool(p, strdup(msg ? msg : "the worker's job runner failed"));
      uv_mutex_unlock(&p->mu);
      lua_pop(L, 1);
    }
    tulua__worker_set_current(NULL);
    uv_mutex_lock(&p->mu);
    w->wake_ready = 0;
    w->idle = 0;
    uv_mutex_unlock(&p->mu);
    uv_close((uv_handle_t *)&w->wake, NULL);
  } else {
    uv_mutex_lock(&p->mu); /* no runtime: nothing may wait for this one */
    break_pool(p, strdup("cannot start a worker: not enough memory"));
    uv_mutex_unlock(&p->mu);
  }
  tulua_close(rt); /* runs the loop until the wake handle has closed */
  uv_mutex_lock(&p->mu);
  if (w->current != NULL) { /* the runner failed with a job taken */
    job *j = w->current;
    w->current = NULL;
    drop_buf(j);
    j->status = TULUA_JOB_BROKEN;
    push_done(p, j);
  }
  free(w->paths);
  w->paths = NULL;
  wake_owner(p);
  uv_mutex_unlock(&p->mu);
}

/* ---- the owner ---- */

typedef struct owner {
  pool *p; /* NULL once closed */
  uv_async_t *async; /* in the owner's loop; freed by its close callback */
  uv_timer_t *resend; /* asks cancelled running jobs again, or NULL */
  tulua_runtime *rt;
  tulua__job job; /* delivers the done list */
  tulua__queue list; /* taken from the done list, being delivered */
  const char *broken; /* the pool's broken_msg, read under its lock */
  blob *last; /* the blob of the last function submitted (OUV_LAST) */
  int anchor_ref; /* registry: the box itself, while work is outstanding */
  long long outstanding; /* submitted and not yet delivered */
  int trace_no; /* the pool's number in traces (host/trace.h), from 1 */
} owner;

/* A job's status as the trace names it (TULUA_JOB_*). */
static const char *trace_status(int status) {
  static const char *const names[] = {"ok", "error", "cancelled", "broken",
                                      "crashed"};
  return status >= 0 && status <= TULUA_JOB_CRASHED ? names[status] : "?";
}

/* The box's user values: the executor core (bindings/future.c) that the
 * jobs are delivered to, the functions shared with the workers (function
 * -> handle of its blob, weak keys), and the last of them submitted. */
enum {
  OUV_CORE = 1,
  OUV_FNS,
  OUV_LAST,
  OUV_PATH,
  OUV_CPATH,
  OWNER_NUV = OUV_CPATH
};

static owner *check_owner(lua_State *L) {
  return luaL_checkudata(L, 1, POOL_MT);
}

static owner *check_open(lua_State *L) {
  owner *o = check_owner(L);
  if (o->p == NULL) luaL_error(L, "attempt to use a closed thread pool");
  return o;
}

/* While submitted work is not delivered, the loop stays alive (as Python
 * waits for its pools' work at exit) and the pool is anchored, and with
 * it the core and the futures it delivers to; an idle pool nobody refers
 * to is collected, and its __gc joins its threads. idx: the box's stack
 * index. */
static void set_outstanding(lua_State *L, owner *o, int idx, long long n) {
  if ((o->outstanding > 0) != (n > 0)) {
    if (n > 0) {
      uv_ref((uv_handle_t *)o->async);
      lua_pushvalue(L, idx);
      o->anchor_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    } else {
      uv_unref((uv_handle_t *)o->async);
      luaL_unref(L, LUA_REGISTRYINDEX, o->anchor_ref);
      o->anchor_ref = LUA_NOREF;
    }
  }
  o->outstanding = n;
}

static void owner_async_cb(uv_async_t *h) { /* no Lua API */
  owner *o = h->data;
  if (o != NULL) tulua__post(o->rt, &o->job);
}

/* Under lua_pcall, with the box at 1 and its core at 2: delivers the jobs
 * of o->list. Each leaves the list and is freed before its future is
 * settled (which runs callbacks), so that an error loses that one only. */
static int deliver_main(lua_State *L) {
  owner *o = lua_touserdata(L, 1);
  tulua__queue *q;
  while ((q = tulua__queue_pop(&o->list)) != NULL) {
    job *j = tulua__container_of(q, job, node);
    long long id = j->id;
    int status = j->status, by = j->worker, n = 0;
    double t0 = (double)j->t_start / 1e9, t1 = (double)j->t_stop / 1e9;
    if (tulua__trace_on())
      tulua__trace_job("thread", o->trace_no, by, 0, (uint64_t)id,
                       trace_status(status), t0, t1, j->req_len,
                       j->buf ? (int64_t)j->len : 0);
    if (status == TULUA_JOB_BROKEN) {
      const char *why = o->p ? o->broken : NULL;
      lua_pushstring(L, why ? why : "a worker thread failed");
      n = 1;
    } else if (j->buf != NULL) {
      n = tulua__transfer_decode(L, j->buf, j->len);
      if (n < 0) {
        lua_pushfstring(L, "cannot decode the job's reply: %s",
                        lua_tostring(L, -1));
        lua_remove(L, -2);
        lua_pushnil(L); /* no traceback */
        status = TULUA_JOB_ERROR;
        n = 2;
      }
    }
    free_job(j);
    if (o->p != NULL) set_outstanding(L, o, 1, o->outstanding - 1);
    tulua__core_deliver(L, 2, id, status, by, t0, t1, n);
  }
  return 0;
}

static void deliver_run(lua_State *L, tulua__job *tj) {
  owner *o = tulua__container_of(tj, owner, job);
  pool *p = o->p;
  if (p == NULL) return;
  uv_mutex_lock(&p->mu);
  tulua__queue_move(&p->done, &o->list);
  o->broken = p->broken_msg; /* set once, freed with the pool */
  uv_mutex_unlock(&p->mu);
  if (tulua__queue_empty(&o->list)) return;
  int top = lua_gettop(L);
  lua_rawgeti(L, LUA_REGISTRYINDEX, o->anchor_ref); /* the box: kept here */
  lua_getiuservalue(L, top + 1, OUV_CORE);
  while (!tulua__queue_empty(&o->list)) {
    lua_pushcfunction(L, deliver_main);
    lua_pushvalue(L, top + 1);
    lua_pushvalue(L, top + 2);
    if (lua_pcall(L, 2, 0, 0) != LUA_OK) {
      /* callbacks' errors are caught: only memory errors get here */
      const char *msg = lua_tostring(L, -1);
      lua_writestringerror("tulua: thread pool: %s\n",
                           msg ? msg : "(error object)");
      lua_pop(L, 1);
    }
  }
  lua_settop(L, top);
}

static void handle_close_cb(uv_handle_t *h) {
  free(h);
}

/* The owner's handle of a blob: the value of its function in the box's
 * table of functions (weak keys), so that the blob is released once the
 * function is collected. */
#define FN_MT "tulua.thread_pool_function"

static int fn_gc(lua_State *L) {
  blob **h = lua_touserdata(L, 1);
  release_blob(*h);
  *h = NULL;
  return 0;
}

/* Keeps the function at idx, whose blob is b, as the last one submitted:
 * held in a user value, so that its handle, and b, live meanwhile. */
static blob *remember(lua_State *L, int bidx, int idx, blob *b) {
  lua_pushvalue(L, idx);
  lua_setiuservalue(L, bidx, OUV_LAST);
  ((owner *)lua_touserdata(L, bidx))->last = b;
  return b;
}

/* Returns the blob of the function at idx if it can be shared (a Lua
 * function whose only upvalue, if any, is _ENV), made on its first
 * submit; else NULL. bidx: the box. */
static blob *shared_blob(lua_State *L, int bidx, int idx) {
  owner *o = lua_touserdata(L, bidx);
  /* the last one first: a pool runs the same function again and again */
  lua_getiuservalue(L, bidx, OUV_LAST);
  int last = lua_rawequal(L, -1, idx);
  lua_pop(L, 1);
  if (last) return o->last;
  lua_getiuservalue(L, bidx, OUV_FNS);
  lua_pushvalue(L, idx);
  if (lua_rawget(L, -2) == LUA_TUSERDATA) {
    blob *b = *(blob **)lua_touserdata(L, -1);
    lua_pop(L, 2);
    return remember(L, bidx, idx, b);
  }
  lua_pop(L, 1);
  size_t len;
  const char *code = tulua__transfer_dump(L, idx, &len);
  if (code == NULL) {
    lua_pop(L, 1);
    return NULL;
  }
  blob **h = lua_newuserdatauv(L, sizeof *h, 0);
  *h = NULL;
  luaL_setmetatable(L, FN_MT);
  blob *b = malloc(sizeof *b + len);
  if (b == NULL) luaL_error(L, "not enough memory");
  b->id = atomic_fetch_add(&last_blob_id, 1) + 1;
  b->refs = 1; /* the handle's */
  b->len = len;
  memcpy(b->code, code, len);
  *h = b;
  lua_pushvalue(L, idx);
  lua_insert(L, -2);
  lua_rawset(L, -3);
  lua_pop(L, 1);
  return remember(L, bidx, idx, b);
}

static int tp_submit(lua_State *L, int bidx, lua_Integer id, int first, int n);

/* Hands the owner's package.path and package.cpath to the pool when they
 * changed since the last submit (the first one always): a worker sets them
 * before the next job it takes, so that a job finds the modules its script
 * can find when it submits. Unchanged, a submit costs two raw compares. */
static void share_paths(lua_State *L, int bidx, pool *p) {
  int top = lua_gettop(L);
  luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
  if (lua_getfield(L, -1, LUA_LOADLIBNAME) != LUA_TTABLE) {
    lua_settop(L, top);
    return;
  }
  lua_getfield(L, -1, "path");
  lua_getfield(L, -2, "cpath");
  lua_getiuservalue(L, bidx, OUV_PATH);
  lua_getiuservalue(L, bidx, OUV_CPATH);
  int same = lua_rawequal(L, -4, -2) && lua_rawequal(L, -3, -1);
  lua_pop(L, 2);
  if (same || lua_type(L, -2) != LUA_TSTRING ||
      lua_type(L, -1) != LUA_TSTRING) {
    lua_settop(L, top);
    return;
  }
  size_t plen, clen;
  const char *path = lua_tolstring(L, -2, &plen);
  const char *cpath = lua_tolstring(L, -1, &clen);
  char *both = malloc(plen + clen + 1);
  if (both == NULL) luaL_error(L, "not enough memory");
  memcpy(both, path, plen);
  memcpy(both + plen, cpath, clen);
  uv_mutex_lock(&p->mu);
  free(p->paths);
  p->paths = both;
  p->path_len = plen;
  p->cpath_len = clen;
  p->paths_gen++;
  uv_mutex_unlock(&p->mu);
  lua_setiuservalue(L, bidx, OUV_CPATH);
  lua_setiuservalue(L, bidx, OUV_PATH);
  lua_settop(L, top);
}

/* thread_pool.new(max_workers, opts, core) -> ThreadPool. opts:
 * initializer, initargs (a sequence), thread_name_prefix. Jobs come from
 * the executor core (its submit calls this pool's C submit) and go back to
 * it (tulua__core_deliver): status ok (the results), error (the error
 * value and the worker's traceback), cancelled, or broken (the pool's
 * failure). */
static int tp_new(lua_State *L) {
  lua_Integer n = luaL_checkinteger(L, 1);
  luaL_argcheck(L, n >= 1 && n <= 1024, 1, "max_workers must be 1 to 1024");
  luaL_checktype(L, 2, LUA_TTABLE);
  luaL_checkudata(L, 3, "tulua.executor_core");
  char *init = NULL;
  size_t init_len = 0;
  lua_getfield(L, 2, "thread_name_prefix");
  const char *prefix = lua_isnil(L, -1) ? "tulua-pool" : lua_tostring(L, -1);
  if (prefix == NULL)
    luaL_argerror(L, 2, "'thread_name_prefix' must be a string");
  lua_getfield(L, 2, "initializer");
  if (!lua_isnil(L, -1)) {
    int base = lua_gettop(L);
    if (lua_getfield(L, 2, "initargs") == LUA_TTABLE) {
      lua_Integer k = luaL_len(L, -1);
      luaL_checkstack(L, (int)k, "too many initargs");
      for (lua_Integer i = 1; i <= k; i++)
        lua_geti(L, base + 1, i);
      lua_remove(L, base + 1);
    } else if (lua_isnil(L, -1)) {
      lua_pop(L, 1);
    } else {
      luaL_argerror(L, 2, "'initargs' must be a table");
    }
    init = tulua__transfer_encode(L, base, lua_gettop(L) - base + 1, &init_len);
    lua_settop(L, base);
  }
  owner *o = lua_newuserdatauv(L, sizeof *o, OWNER_NUV);
  memset(o, 0, sizeof *o);
  o->trace_no = tulua__trace_pool_no();
  tulua__queue_init(&o->list);
  o->anchor_ref = LUA_NOREF;
  luaL_setmetatable(L, POOL_MT);
  pool *p = calloc(1, sizeof *p + (size_t)n * sizeof(worker));
  uv_async_t *a = malloc(sizeof *a);
  if (p == NULL || a == NULL || uv_mutex_init(&p->mu) != 0) {
    free(p);
    free(a);
    free(init);
    return luaL_error(L, "not enough memory");
  }
  if (uv_async_init(tulua__loop(L), a, owner_async_cb) != 0) {
    uv_mutex_destroy(&p->mu);
    free(p);
    free(a);
    free(init);
    return luaL_error(L, "cannot create the pool's wake-up handle");
  }
  uv_unref((uv_handle_t *)a);
  a->data = o;
  tulua__queue_init(&p->queue);
  tulua__queue_init(&p->done);
  p->nworkers = (int)n;
  p->init = init;
  p->init_len = init_len;
  snprintf(p->name_prefix, sizeof p->name_prefix, "%s", prefix);
  p->trace_no = o->trace_no;
  p->owner_async = a;
  for (int i = 0; i < p->nworkers; i++) {
    p->workers[i].p = p;
    p->workers[i].index = i + 1;
  }
  o->p = p;
  o->async = a;
  o->rt = tulua__runtime(L);
  o->job.run = deliver_run;
  lua_pushvalue(L, 3);
  lua_setiuservalue(L, -2, OUV_CORE);
  lua_newtable(L);
  lua_createtable(L, 0, 1);
  lua_pushliteral(L, "k");
  lua_setfield(L, -2, "__mode");
  lua_setmetatable(L, -2);
  lua_setiuservalue(L, -2, OUV_FNS);
  tulua__core_set_submit(L, 3, tp_submit, -1);
  tulua__worker_install();
  return 1;
}

/* The core's submit (future.h): encodes fn and its arguments (raising, in
 * the caller, on a value that cannot cross: "submit: argument #2.x:
 * cannot transfer a userdata") and queues the job. */
static int tp_submit(lua_State *L, int bidx, lua_Integer id, int first, int n) {
  owner *o = lua_touserdata(L, bidx); /* the core keeps it for us */
  pool *p = o->p;
  if (p == NULL) {
    lua_pushliteral(L, "attempt to use a closed thread pool");
    return TULUA_SUBMIT_REFUSED;
  }
  if (p->stopping) { /* only this thread sets it */
    lua_pushliteral(L, "cannot schedule new futures after shutdown");
    return TULUA_SUBMIT_REFUSED;
  }
  share_paths(L, bidx, p);
  blob *fn = shared_blob(L, bidx, first);
  if (fn != NULL) { /* the request holds nil for it: the arguments keep */
    lua_pushnil(L); /* their numbers in encode's messages */
    lua_replace(L, first);
  }
  size_t len;
  const char *req = tulua__transfer_encode_temp(L, first, n, &len, "submit");
  /* what may raise is done: once queued, the job must be the core's */
  set_outstanding(L, o, bidx, o->outstanding + 1);
  /* the request in inl, unless it is over 4 GiB (cap's limit) */
  size_t cap = len <= REPLY_ROOM || len > UINT32_MAX ? REPLY_ROOM : len;
  job *j = malloc(sizeof *j + cap);
  if (j != NULL) {
    memset(j, 0, sizeof *j);
    j->id = id;
    j->cap = (uint32_t)cap;
    j->req_len = len > UINT32_MAX ? UINT32_MAX : (uint32_t)len;
  }
  if (j == NULL || set_buf(j, req, len) != 0) {
    free(j);
    set_outstanding(L, o, bidx, o->outstanding - 1);
    return luaL_error(L, "not enough memory");
  }
  if (fn != NULL) {
    j->fn = fn;
    fn->refs++;
  }
  worker *start = NULL;
  uv_mutex_lock(&p->mu);
  if (p->broken) { /* a worker sets it: read under the lock */
    char why[256];
    snprintf(why, sizeof why, "%s",
             p->broken_msg ? p->broken_msg : "a worker failed");
    uv_mutex_unlock(&p->mu);
    free_job(j);
    set_outstanding(L, o, bidx, o->outstanding - 1);
    lua_pushfstring(L, "the pool is broken: %s", why);
    return TULUA_SUBMIT_BROKEN;
  }
  tulua__queue_insert_tail(&p->queue, &j->node);
  if (tulua__trace_on()) tulua__trace_submit(o->trace_no, (uint64_t)id, len);
  int woke = 0;
  for (int i = 0; i < p->nstarted && !woke; i++) {
    worker *w = &p->workers[i];
    if (w->idle && w->wake_ready) {
      w->idle = 0;
      uv_async_send(&w->wake);
      woke = 1;
    }
  }
  if (!woke && p->nstarted < p->nworkers) {
    start = &p->workers[p->nstarted++];
    start->started = 1;
  }
  uv_mutex_unlock(&p->mu);
  if (start != NULL &&
      uv_thread_create(&start->thread, worker_main, start) != 0) {
    uv_mutex_lock(&p->mu);
    start->started = 0;
    p->nstarted--;
    if (p->nstarted == 0) /* no thread at all: nothing would run the job */
      break_pool(p, strdup("cannot start a worker thread"));
    uv_mutex_unlock(&p->mu);
  }
  return 0;
}

/* Returns the worker running job id, or NULL. Under p->mu. */
static worker *running_on(pool *p, long long id) {
  for (int i = 0; i < p->nstarted; i++)
    if (p->workers[i].current && p->workers[i].current->id == id)
      return &p->workers[i];
  return NULL;
}

/* pool:state(id) -> "pending" | "running" | "finished" */
static int tp_state(lua_State *L) {
  owner *o = check_open(L);
  long long id = (long long)luaL_checkinteger(L, 2);
  pool *p = o->p;
  const char *s = "finished";
  uv_mutex_lock(&p->mu);
  if (running_on(p, id) != NULL) {
    s = "running";
  } else {
    tulua__queue *q;
    tulua__queue_foreach(q, &p->queue) {
      if (tulua__container_of(q, job, node)->id == id) {
        s = "pending";
        break;
      }
    }
  }
  uv_mutex_unlock(&p->mu);
  lua_pushstring(L, s);
  return 1;
}

/* Asks the worker running its job to stop it. Under p->mu. */
static void interrupt(worker *w) {
  tulua__worker_interrupt(&w->ctx, w->current->id,
                          w->wake_ready ? &w->thread : NULL);
}

/* Whether w runs a job that was asked to stop. Under p->mu. */
static int stopping_job(const worker *w) {
  return w->current != NULL && atomic_load(&w->ctx.cancel) == w->current->id;
}

/* Asks every job still running after its cancel again; once none is, the
 * timer stops. No Lua API. */
static void resend_cb(uv_timer_t *h) {
  owner *o = h->data;
  pool *p = o != NULL ? o->p : NULL;
  int left = 0;
  if (p != NULL) {
    uv_mutex_lock(&p->mu);
    for (int i = 0; i < p->nstarted; i++)
      if (stopping_job(&p->workers[i])) {
        interrupt(&p->workers[i]);
        left = 1;
      }
    uv_mutex_unlock(&p->mu);
  }
  if (!left) uv_timer_stop(h);
}

/* Starts the resend timer, made on the first cancel of a running job. A
 * failure leaves the one interrupt sent. */
static void start_resend(lua_State *L, owner *o) {
  if (o->resend == NULL) {
    uv_timer_t *t = malloc(sizeof *t);
    if (t == NULL || uv_timer_init(tulua__loop(L), t) != 0) {
      free(t);
      return;
    }
    uv_unref((uv_handle_t *)t); /* the job's delivery holds the loop */
    t->data = o;
    o->resend = t;
  }
  if (!uv_is_active((uv_handle_t *)o->resend))
    uv_timer_start(o->resend, resend_cb, RESEND_MS, RESEND_MS);
}

/* pool:cancel(id) -> "removed" (it was queued: it will not be delivered)
 * | "running" (interrupted: deliver says how it ended) | false */
static int tp_cancel(lua_State *L) {
  owner *o = check_open(L);
  long long id = (long long)luaL_checkinteger(L, 2);
  pool *p = o->p;
  job *removed = NULL;
  worker *w;
  uv_mutex_lock(&p->mu);
  if ((w = running_on(p, id)) != NULL) {
    interrupt(w);
  } else {
    tulua__queue *q;
    tulua__queue_foreach(q, &p->queue) {
      job *j = tulua__container_of(q, job, node);
      if (j->id != id) continue;
      tulua__queue_remove(q);
      removed = j;
      break;
    }
  }
  uv_mutex_unlock(&p->mu);
  if (removed != NULL) {
    free_job(removed);
    set_outstanding(L, o, 1, o->outstanding - 1);
    lua_pushliteral(L, "removed");
  } else if (w != NULL) {
    start_resend(L, o);
    lua_pushliteral(L, "running");
  } else {
    lua_pushboolean(L, 0);
  }
  return 1;
}

/* Stops taking work and wakes the idle workers so that they end; with
 * cancel, moves the queued jobs to removed. Under p->mu. */
static void stop(pool *p, int cancel, tulua__queue *removed) {
  p->stopping = 1;
  if (cancel) tulua__queue_move(&p->queue, removed);
  for (int i = 0; i < p->nstarted; i++)
    if (p->workers[i].idle && p->workers[i].wake_ready) {
      p->workers[i].idle = 0;
      uv_async_send(&p->workers[i].wake);
    }
}

/* pool:shutdown(cancel_pending) -> {ids removed}: no new jobs; workers
 * end once the queue is empty. */
static int tp_shutdown(lua_State *L) {
  owner *o = check_open(L);
  int cancel = lua_toboolean(L, 2);
  tulua__queue removed, *q;
  tulua__queue_init(&removed);
  uv_mutex_lock(&o->p->mu);
  stop(o->p, cancel, &removed);
  uv_mutex_unlock(&o->p->mu);
  lua_newtable(L);
  lua_Integer k = 0;
  long long n = 0;
  tulua__queue_foreach(q, &removed) {
    /* memory errors leak the jobs: acceptable at that point */
    lua_pushinteger(L, (lua_Integer)tulua__container_of(q, job, node)->id);
    lua_rawseti(L, -2, ++k);
    n++;
  }
  free_jobs(&removed);
  set_outstanding(L, o, 1, o->outstanding - n);
  return 1;
}

/* Joins every thread (interrupting the jobs they run) and frees the pool;
 * work not delivered yet is dropped. Blocks until the threads end. */
static void close_pool(lua_State *L, owner *o) {
  pool *p = o->p;
  if (p == NULL) return;
  tulua__queue removed;
  tulua__queue_init(&removed);
  uv_mutex_lock(&p->mu);
  stop(p, 1, &removed);
  for (int i = 0; i < p->nstarted; i++)
    if (p->workers[i].current) interrupt(&p->workers[i]);
  uv_mutex_unlock(&p->mu);
  free_jobs(&removed);
  for (int i = 0; i < p->nworkers; i++)
    if (p->workers[i].started) uv_thread_join(&p->workers[i].thread);
  free_jobs(&p->done);
  free_jobs(&o->list); /* closed from a callback while they were delivered */
  uv_mutex_destroy(&p->mu);
  free(p->init);
  free(p->paths);
  free(p->broken_msg);
  free(p);
  o->p = NULL;
  if (lua_getiuservalue(L, 1, OUV_CORE) == LUA_TUSERDATA)
    tulua__core_set_submit(L, -1, NULL, 0);
  lua_pop(L, 1);
  tulua__unpost(o->rt, &o->job);
  set_outstanding(L, o, 1, 0);
  o->async->data = NULL;
  uv_close((uv_handle_t *)o->async, handle_close_cb);
  o->async = NULL;
  if (o->resend != NULL) {
    o->resend->data = NULL;
    uv_close((uv_handle_t *)o->resend, handle_close_cb);
    o->resend = NULL;
  }
}

/* pool:close(): joins the threads; jobs still running are interrupted. */
static int tp_close(lua_State *L) {
  close_pool(L, check_owner(L));
  return 0;
}

/* pool:worker_of(id) -> "thread worker N" running job id, or nil (for
 * tulua --ps). */
static int tp_worker_of(lua_State *L) {
  owner *o = check_open(L);
  long long id = (long long)luaL_checkinteger(L, 2);
  uv_mutex_lock(&o->p->mu);
  worker *w = running_on(o->p, id);
  int n = w != NULL ? (int)(w - o->p->workers) + 1 : 0;
  uv_mutex_unlock(&o->p->mu);
  if (n == 0) return 0;
  lua_pushfstring(L, "thread worker %d", n);
  return 1;
}

/* pool:threads() -> how many worker threads were started. */
static int tp_threads(lua_State *L) {
  owner *o = check_open(L);
  uv_mutex_lock(&o->p->mu);
  int n = o->p->nstarted;
  uv_mutex_unlock(&o->p->mu);
  lua_pushinteger(L, n);
  return 1;
}

int luaopen_tulua_thread_pool(lua_State *L) {
  static const luaL_Reg methods[] = {
      {"state", tp_state}, {"cancel", tp_cancel},   {"shutdown", tp_shutdown},
      {"close", tp_close}, {"threads", tp_threads}, {"worker_of", tp_worker_of},
      {NULL, NULL}};
  static const luaL_Reg meta[] = {{"__gc", tp_close}, {NULL, NULL}};
  static const luaL_Reg port[] = {{"take", port_take},
                                  {"wait", port_wait},
                                  {"init", port_init},
                                  {"broken", port_broken},
                                  {"run", port_run},
                                  {"finish", port_finish},
                                  {"handler", tulua__worker_handler},
                                  {NULL, NULL}};
  static const luaL_Reg funcs[] = {{"new", tp_new}, {NULL, NULL}};
  static const luaL_Reg fn_meta[] = {{"__gc", fn_gc}, {NULL, NULL}};
  tulua__new_class(L, POOL_MT, meta, methods);
  tulua__new_class(L, FN_MT, fn_meta, NULL);
  luaL_newlib(L, funcs);
  tulua__cpu_open(L);
  luaL_newlib(L, port); /* the worker side: the runner calls port.take(w) */
  lua_setfield(L, -2, "port");
  return 1;
}
