/* worker.c: the worker side of a pool job, for thread and process workers
 * alike (the C half of lua/concurrent/_worker.lua's job runner, under both
 * pools' ports): the job control that interrupts the job that runs, the
 * call of a job, and the encoding of its outcome.
 *
 * Cancelling the job a worker runs: the owner marks it, wakes the worker's
 * loop (a job that waits is cancelled there) and sends the worker thread a
 * signal (a job that computes): the handler, on the worker's own thread as
 * Lua's own SIGINT handling does it, sets a hook that raises the
 * cancellation error at the next instruction. A hook cannot be set safely
 * from another thread. Process workers get the same signal from their
 * parent, with the job's number as its value. Both owners ask again every
 * 50 ms until the job ends: one signal can land in another task of the
 * worker, and a job may go on after its wait's cancellation. The signal
 * and its handler are the process's: an embedder gives the signal up. */
#include <stdlib.h>
#include <string.h>

#include "transfer.h"
#include "worker.h"

static _Thread_local tulua__worker_ctx *current_ctx;

/* The job control of this process's process-pool worker, if it is one. */
static tulua__worker_ctx *_Atomic process_ctx;

int tulua__worker_signal(void) {
  return SIGRTMIN + 4;
}

/* Raises the cancellation error in the running job at its next instruction
 * (set by the signal handler or the wake callback, on the job's thread). */
static void cancel_hook(lua_State *L, lua_Debug *ar) {
  (void)ar;
  lua_sethook(L, NULL, 0, 0);
  tulua__worker_ctx *c = current_ctx;
  if (c == NULL) return;
  long long id = atomic_load(&c->running);
  if (id == 0 || atomic_load(&c->cancel) != id) return; /* stale */
  tulua__push_cancelled(L, NULL);
  lua_error(L);
}

static void arm_hook(lua_State *co) {
  lua_sethook(co, cancel_hook,
              LUA_MASKCALL | LUA_MASKRET | LUA_MASKLINE | LUA_MASKCOUNT, 1);
}

/* The handler of the signal: async-signal-safe (atomics, lua_sethook as
 * lua.c's SIGINT handler uses it, uv_async_send). */
static void on_cancel_signal(int sig, siginfo_t *si, void *uc) {
  (void)sig;
  (void)uc;
  tulua__worker_ctx *c = current_ctx;
  if (si->si_code == SI_QUEUE) { /* from a parent process: the job's id */
    /* sent to the process, it may land on any thread (libuv's, a pool's):
     * the process worker's thread must set the hook itself */
    tulua__worker_ctx *pc = atomic_load(&process_ctx);
    long long id = si->si_value.sival_int;
    if (pc == NULL || id == 0 || atomic_load(&pc->running) != id) return;
    atomic_store(&pc->cancel, id);
    if (pc != c) {
      pthread_kill(pc->thread, tulua__worker_signal());
      return;
    }
  }
  if (c == NULL) return;
  long long id = atomic_load(&c->running);
  if (id == 0 || atomic_load(&c->cancel) != id) return;
  lua_State *co = tulua__running(c->rt);
  if (co != NULL) arm_hook(co);
  if (c->wake) uv_async_send(c->wake);
}

static void install_once(void) {
  tulua__hook_follows_resumes(cancel_hook);
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_sigaction = on_cancel_signal;
  sa.sa_flags = SA_SIGINFO | SA_RESTART;
  sigemptyset(&sa.sa_mask);
  sigaction(tulua__worker_signal(), &sa, NULL);
}

void tulua__worker_install(void) {
  static pthread_once_t once = PTHREAD_ONCE_INIT;
  pthread_once(&once, install_once);
}

void tulua__worker_accept_signal(void) {
  tulua__worker_install();
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, tulua__worker_signal());
  pthread_sigmask(SIG_UNBLOCK, &set, NULL);
}

void tulua__worker_set_current(tulua__worker_ctx *c) {
  current_ctx = c;
}

void tulua__worker_check_cancel(tulua__worker_ctx *c) {
  long long id = atomic_load(&c->running);
  if (id == 0 || atomic_load(&c->cancel) != id || c->co == NULL) return;
  /* a job asked again after its wait's cancellation went on regardless
   * (a loop around tulua.park, which returns the cancellation): the hook
   * stops it when the wait's end resumes it, and follows into the nested
   * coroutine that waited */
  int again = c->waked == id;
  if (!tulua__cancel_wait(c->co) || again)
    arm_hook(c->co);
  else
    c->waked = id;
}

void tulua__worker_interrupt(tulua__worker_ctx *c, long long id,
                             const pthread_t *thread) {
  atomic_store(&c->cancel, id);
  if (thread != NULL) {
    uv_async_send(c->wake);
    pthread_kill(*thread, tulua__worker_signal());
  }
}

/* ---- a process worker's job control ---- */

static void ctx_wake_cb(uv_async_t *h) { /* no Lua API */
  tulua__worker_ctx *c = h->data;
  if (c != NULL) tulua__worker_check_cancel(c);
}

static void ctx_close_cb(uv_handle_t *h) {
  free(h);
}

static int ctx_gc(lua_State *L) {
  tulua__worker_ctx *c = lua_touserdata(L, 1);
  if (current_ctx == c) current_ctx = NULL;
  tulua__worker_ctx *expected = c;
  atomic_compare_exchange_strong(&process_ctx, &expected, NULL);
  if (c->wake != NULL) {
    c->wake->data = NULL;
    uv_close((uv_handle_t *)c->wake, ctx_close_cb);
    c->wake = NULL;
  }
  return 0;
}

tulua__worker_ctx *tulua__worker_control(lua_State *L) {
  if (current_ctx != NULL) {
    if (current_ctx->rt == tulua__runtime(L)) return current_ctx;
    luaL_error(L, "this thread already runs a worker");
  }
  tulua__worker_ctx *c = lua_newuserdatauv(L, sizeof *c, 0);
  memset(c, 0, sizeof *c);
  lua_newtable(L);
  lua_pushcfunction(L, ctx_gc);
  lua_setfield(L, -2, "__gc");
  lua_setmetatable(L, -2);
  c->wake = malloc(sizeof *c->wake);
  if (c->wake == NULL) luaL_error(L, "not enough memory");
  if (uv_async_init(tulua__loop(L), c->wake, ctx_wake_cb) != 0) {
    free(c->wake);
    c->wake = NULL;
    luaL_error(L, "cannot create the worker's wake-up handle");
  }
  uv_unref((uv_handle_t *)c->wake);
  c->wake->data = c;
  c->rt = tulua__runtime(L);
  c->thread = pthread_self();
  luaL_ref(L, LUA_REGISTRYINDEX); /* lives as long as the state */
  current_ctx = c;
  tulua__worker_ctx *expected = NULL; /* the first in a process gets its */
  atomic_compare_exchange_strong(&process_ctx, &expected, c); /* signals */
  tulua__worker_accept_signal();
  return c;
}

/* ---- running a job ---- */

/* The end of a job's call, however it ends: from here on a cancellation
 * signal is stale. */
static int call_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status;
  atomic_store(&((tulua__worker_ctx *)ctx)->running, 0);
  return lua_gettop(L) - ((tulua__worker_ctx *)ctx)->base;
}

int tulua__worker_call(lua_State *L, tulua__worker_ctx *c, long long id,
                       int first) {
  if (lua_type(L, first) != LUA_TFUNCTION)
    return luaL_error(L, "job without a function");
  c->co = L;
  c->waked = 0;
  atomic_store(&c->running, id);
  if (atomic_load(&c->cancel) == id) { /* cancelled as it started */
    atomic_store(&c->running, 0);
    tulua__push_cancelled(L, NULL);
    return lua_error(L);
  }
  c->base = first - 1; /* what is below the results */
  lua_callk(L, lua_gettop(L) - first, LUA_MULTRET, (lua_KContext)c, call_k);
  return call_k(L, LUA_OK, (lua_KContext)c);
}

int tulua__worker_end(tulua__worker_ctx *c, long long id) {
  atomic_store(&c->running, 0);
  return atomic_exchange(&c->cancel, 0) == id;
}

int tulua__worker_handler(lua_State *L) {
  tulua__worker_ctx *c = current_ctx;
  if (c != NULL) atomic_store(&c->running, 0);
  if (lua_type(L, 1) == LUA_TTABLE && luaL_getmetafield(L, 1, "__name")) {
    int is_error = strcmp(lua_tostring(L, -1), "tulua.error") == 0;
    lua_pop(L, 1);
    if (is_error) {
      lua_getfield(L, 1, "code");
      int is_cancel =
          lua_isstring(L, -1) && strcmp(lua_tostring(L, -1), "ECANCELED") == 0;
      lua_pop(L, 1);
      if (is_cancel) return 1;
    }
  }
  lua_createtable(L, 2, 0);
  switch (lua_type(L, 1)) {
    case LUA_TSTRING:
    case LUA_TNUMBER:
    case LUA_TTABLE:
    case LUA_TBOOLEAN:
    case LUA_TNIL:
      lua_pushvalue(L, 1);
      break;
    default: /* cannot cross: its text does */
      luaL_tolstring(L, 1, NULL);
  }
  lua_rawseti(L, -2, 1);
  luaL_traceback(L, L, NULL, 1);
  lua_rawseti(L, -2, 2);
  return 1;
}

/* ---- the outcome of a job ---- */

int tulua__worker_failure(lua_State *L, int ok, int cancelled) {
  int status = cancelled ? TULUA_JOB_CANCELLED : TULUA_JOB_ERROR;
  int err = ok + 1;
  lua_settop(L, err);
  int plain = lua_type(L, err) == LUA_TTABLE && !lua_getmetatable(L, err);
  if (lua_gettop(L) > err) lua_pop(L, 1); /* the metatable */
  if (plain) { /* {err, traceback} from the handler */
    lua_rawgeti(L, err, 1);
    lua_rawgeti(L, err, 2);
    lua_remove(L, err);
  } else { /* a cancellation, or the handler's own failure */
    lua_pushnil(L);
  }
  if (status == TULUA_JOB_CANCELLED) lua_settop(L, ok);
  return status;
}

typedef struct {
  tulua__worker_store_fn store;
  void *ud;
} sink;

static int encode_main(lua_State *L) {
  const sink *s = lua_touserdata(L, 1);
  size_t len;
  const char *p =
      tulua__transfer_encode_temp(L, 2, lua_gettop(L) - 1, &len, NULL);
  if (s->store(s->ud, p, len) != 0) return luaL_error(L, "not enough memory");
  return 0;
}

int tulua__worker_reply(lua_State *L, int first, int status,
                        tulua__worker_store_fn store, void *ud) {
  sink s = {store, ud};
  lua_pushcfunction(L, encode_main);
  lua_pushlightuserdata(L, &s);
  lua_rotate(L, first, 2);
  if (lua_pcall(L, lua_gettop(L) - first, 0, 0) == LUA_OK) return status;
  const char *msg = lua_tostring(L, -1);
  lua_pushfstring(L, "%s (in the job's %s)", msg ? msg : "cannot transfer",
                  status == TULUA_JOB_OK ? "results" : "error");
  lua_pushcfunction(L, encode_main);
  lua_pushlightuserdata(L, &s);
  lua_rotate(L, -3, 2);
  lua_pushnil(L); /* no traceback */
  if (lua_pcall(L, 3, 0, 0) != LUA_OK) { /* out of memory */
    lua_pop(L, 1);
    store(ud, NULL, 0);
  }
  lua_pop(L, 1);
  return TULUA_JOB_ERROR;
}

int tulua__worker_holds_loop(void) {
  const uv_handle_t *h =
      (const uv_handle_t *)(current_ctx ? current_ctx->wake : NULL);
  return h != NULL && uv_is_active(h) && uv_has_ref(h);
}
