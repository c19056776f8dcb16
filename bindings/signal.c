/* signal.c: uv_signal_t as waits for a signal; backs process.wait_signal,
 * process.signal (Signal objects) and process.signals of the module
 * 'tulua.process' (opened by process.c).
 *
 * A signal is caught only while something listens: during a
 * process.wait_signal call, or while a Signal object is open. Otherwise it
 * has whatever disposition the program had before (the CLI's Ctrl-C
 * handler for SIGINT, the default action for most others).
 *
 * Ownership: a sig_box embeds the uv_signal_t and the one waiter. It is
 * freed in close_cb, unless a woken task has yet to run its deliver step,
 * which then frees it (delivering marks that window). A Signal userdata
 * points at its box until close()/__close/__gc; a box of wait_signal
 * belongs to the waiting call alone.
 *
 * Dispositions. When the last handle of a signal stops, libuv sets it to
 * SIG_DFL, which would turn the CLI's Ctrl-C into a plain kill after one
 * wait for SIGINT, and make SIGPIPE fatal again after a wait for it. So
 * the first listener of a signal saves the disposition it replaces and
 * the last one puts it back. Dispositions belong to the process, not to a
 * runtime: the table of saved ones is process-wide, under one mutex
 * (taken before libuv's own signal lock, inside uv_signal_start/stop;
 * nothing here runs while holding another lock). */
#include <signal.h>
#include <stdlib.h>
#include <string.h>

#include "signal_names.h"
#include "worker.h"

#define SIGNAL_MT "tulua.signal"

static const struct {
  const char *name;
  int num;
} sig_names[] = {

#define SIG(n)                                                                 \
  { #n, n }
    SIG(SIGHUP),    SIG(SIGINT),   SIG(SIGQUIT), SIG(SIGILL),  SIG(SIGTRAP),
    SIG(SIGABRT),   SIG(SIGBUS),   SIG(SIGFPE),  SIG(SIGKILL), SIG(SIGUSR1),
    SIG(SIGSEGV),   SIG(SIGUSR2),  SIG(SIGPIPE), SIG(SIGALRM), SIG(SIGTERM),
#ifdef SIGSTKFLT
    SIG(SIGSTKFLT),
#endif
    SIG(SIGCHLD),   SIG(SIGCONT),  SIG(SIGSTOP), SIG(SIGTSTP), SIG(SIGTTIN),
    SIG(SIGTTOU),   SIG(SIGURG),   SIG(SIGXCPU), SIG(SIGXFSZ), SIG(SIGVTALRM),
    SIG(SIGPROF),   SIG(SIGWINCH),
#ifdef SIGIO
    SIG(SIGIO),
#endif
#ifdef SIGPWR
    SIG(SIGPWR),
#endif
    SIG(SIGSYS),
#undef SIG
};

#define N_SIG_NAMES (sizeof sig_names / sizeof sig_names[0])

int tulua__signal_check(lua_State *L, int idx, int def) {
  if (lua_isnoneornil(L, idx)) return def;
  if (lua_type(L, idx) == LUA_TSTRING) {
    const char *name = lua_tostring(L, idx);
    for (size_t i = 0; i < N_SIG_NAMES; i++)
      if (strcmp(sig_names[i].name, name) == 0) return sig_names[i].num;
    return luaL_argerror(L, idx,
                         lua_pushfstring(L, "unknown signal '%s'", name));
  }
  int isnum;
  lua_Integer n = lua_tointegerx(L, idx, &isnum);
  if (!isnum) return luaL_typeerror(L, idx, "signal name or number");
  luaL_argcheck(L, n >= 1 && n < NSIG, idx, "signal number out of range");
  return (int)n;
}

void tulua__signal_push_name(lua_State *L, int signum) {
  for (size_t i = 0; i < N_SIG_NAMES; i++)
    if (sig_names[i].num == signum) {
      lua_pushstring(L, sig_names[i].name);
      return;
    }
  lua_pushfstring(L, "SIG%d", signum);
}

/* ---- dispositions: saved by the first listener, restored by the last ---- */

static uv_once_t disp_once = UV_ONCE_INIT;
static uv_mutex_t disp_lock;
static int disp_lock_rc; /* uv_mutex_init's: not 0, no signal can start */

static struct {
  int users; /* started handles of ours for this signal, all runtimes */
  int restore; /* saved is not libuv's handler: put it back at the end */
  struct sigaction saved;
} disp[NSIG];

/* Runs once in the process; a failure stays, and every start of a signal
 * fails with it, since the library never aborts. */
static void disp_init(void) {
  disp_lock_rc = uv_mutex_init(&disp_lock);
}

static int same_handler(const struct sigaction *a, const struct sigaction *b) {
  if ((a->sa_flags & SA_SIGINFO) != (b->sa_flags & SA_SIGINFO)) return 0;
  if (a->sa_flags & SA_SIGINFO) return a->sa_sigaction == b->sa_sigaction;
  return a->sa_handler == b->sa_handler;
}

/* Starts h on signum, saving the disposition it replaces. Returns 0 or a
 * negative libuv code. No Lua API: the cancel hooks come here too. */
static int listen_start(uv_signal_t *h, uv_signal_cb cb, int signum) {
  uv_once(&disp_once, disp_init);
  if (disp_lock_rc != 0) return disp_lock_rc;
  uv_mutex_lock(&disp_lock);
  struct sigaction before;
  int first = disp[signum].users == 0;
  if (first) sigaction(signum, NULL, &before);
  int rc = uv_signal_start(h, cb, signum);
  if (rc == 0) {
    if (first) {
      struct sigaction after;
      sigaction(signum, NULL, &after);
      /* libuv's handler was there already (another loop listens, or its
       * SIGCHLD watcher): libuv keeps it, nothing of ours to restore */
      disp[signum].restore = !same_handler(&before, &after);
      disp[signum].saved = before;
    }
    disp[signum].users++;
  }
  uv_mutex_unlock(&disp_lock);
  return rc;
}

/* Stops h, started by listen_start, and restores the saved disposition if
 * libuv reset the signal to SIG_DFL. */
static void listen_stop(uv_signal_t *h) {
  int signum = h->signum;
  uv_mutex_lock(&disp_lock);
  uv_signal_stop(h);
  if (--disp[signum].users == 0 && disp[signum].restore) {
    struct sigaction now;
    sigaction(signum, NULL, &now);
    if (!(now.sa_flags & SA_SIGINFO) && now.sa_handler == SIG_DFL)
      sigaction(signum, &disp[signum].saved, NULL);
  }
  uv_mutex_unlock(&disp_lock);
}

/* ---- the box ---- */

typedef struct {
  uv_signal_t h;
  tulua__waiter w; /* the one task waiting, while waiting is set */
  int signum;
  int result; /* for deliver: the signal, or 0 if the box was closed */
  unsigned char started; /* listen_start succeeded, no listen_stop yet */
  unsigned char waiting; /* a task waits in w */
  unsigned char delivering; /* a task was woken and owes a deliver */
  unsigned char pending; /* Signal: arrived while nobody waited */
  unsigned char closed; /* closed for Lua; uv_close called */
  unsigned char handle_closed; /* close_cb ran */
  unsigned char oneshot; /* wait_signal's box: closed after one wait */
} sig_box;

static void close_cb(uv_handle_t *h) {
  sig_box *b = h->data;
  b->handle_closed = 1;
  if (!b->delivering) free(b); /* else the woken task frees it */
}

/* Stops listening and closes the handle once; a task still waiting is
 * woken and gets nil, "signal closed", "ECANCELED". No Lua API. */
static void box_release(sig_box *b) {
  if (b->closed) return;
  b->closed = 1;
  if (b->started) {
    b->started = 0;
    listen_stop(&b->h);
  }
  if (b->waiting) {
    b->waiting = 0;
    b->result = 0;
    b->delivering = 1;
    if (!tulua__wake(&b->w)) b->delivering = 0;
  }
  uv_close((uv_handle_t *)&b->h, close_cb);
}

static void signal_cb(uv_signal_t *h, int signum) { /* no Lua API here */
  sig_box *b = h->data;
  if (!b->waiting) {
    b->pending = 1; /* a Signal nobody waits on: the next wait returns */
    return;
  }
  b->waiting = 0;
  b->result = signum;
  b->delivering = 1;
  if (!b->oneshot) uv_unref((uv_handle_t *)h); /* idle again */
  if (!tulua__wake(&b->w)) b->delivering = 0;
}

/* Pushes the outcome of a wait on b and frees b if it is closed already.
 * In the task. */
static int box_deliver(lua_State *L, sig_box *b) {
  int result = b->result;
  b->delivering = 0;
  if (b->oneshot)
    box_release(b); /* close_cb frees it */
  else if (b->handle_closed)
    free(b);
  if (result == 0) {
    lua_pushnil(L);
    lua_pushliteral(L, "signal closed");
    lua_pushliteral(L, "ECANCELED");
    return 3;
  }
  tulua__signal_push_name(L, result);
  return 1;
}

static int signal_deliver(lua_State *L, void *ud) {
  return box_deliver(L, ud);
}

/* A Signal's wait was cancelled: it stays open and goes on counting. */
static void wait_cancel(void *ud) {
  sig_box *b = ud;
  b->waiting = 0;
  uv_unref((uv_handle_t *)&b->h);
}

/* wait_signal's wait was cancelled: the box goes (close_cb frees it). */
static void oneshot_cancel(void *ud) {
  sig_box *b = ud;
  b->waiting = 0;
  box_release(b);
}

/* Mallocs a box and starts listening for signum; pushes nothing. Returns
 * the box, or NULL with *rc set (nothing to undo then). */
static sig_box *box_start(lua_State *L, int signum, int oneshot, int *rc) {
  sig_box *b = calloc(1, sizeof *b);
  if (b == NULL) {
    *rc = UV_ENOMEM;
    return NULL;
  }
  b->signum = signum;
  b->oneshot = (unsigned char)oneshot;
  b->h.data = b;
  *rc = uv_signal_init(tulua__loop(L), &b->h);
  if (*rc < 0) {
    free(b);
    return NULL;
  }
  *rc = listen_start(&b->h, signal_cb, signum);
  if (*rc < 0) {
    b->closed = 1;
    uv_close((uv_handle_t *)&b->h, close_cb);
    return NULL;
  }
  b->started = 1;
  return b;
}

/* Raises for the signals no process can catch, and for the one the pools
 * reserve: a listener of it would take the job interrupt from worker.c's
 * handler (a cancelled job then runs on), and its last stop would put back
 * SIG_DFL, whose next job cancel kills the process. */
static int check_catchable(lua_State *L, int idx) {
  int signum = tulua__signal_check(L, idx, 0);
  if (signum == 0) return luaL_typeerror(L, idx, "signal name or number");
  if (signum == tulua__worker_signal())
    return luaL_argerror(
        L, idx, "SIGRTMIN+4 is reserved by tulua: it interrupts pool jobs");
  if (signum == SIGKILL || signum == SIGSTOP) {
    tulua__signal_push_name(L, signum);
    return luaL_argerror(
        L, idx, lua_pushfstring(L, "%s cannot be caught", lua_tostring(L, -1)));
  }
  return signum;
}

/* process.wait_signal(sig) -> name | nil, message, code: waits until the
 * signal (a name such as "SIGUSR1" or a number) arrives, and returns its
 * name. The signal is caught from the call until it returns, and has its
 * previous disposition again afterwards. Raises for an unknown signal, for
 * SIGKILL and SIGSTOP, for the pools' SIGRTMIN + 4, and outside a task. */
static int process_wait_signal(lua_State *L) {
  int signum = check_catchable(L, 1);
  tulua__check_wait(L, "process.wait_signal");
  int rc;
  sig_box *b = box_start(L, signum, 1, &rc);
  if (b == NULL) {
    tulua__signal_push_name(L, signum);
    return push_fail(L, lua_tostring(L, -1), rc);
  }
  b->waiting = 1;
  return tulua__wait(L, &b->w, signal_deliver, oneshot_cancel, b);
}

/* ---- Signal objects ---- */

static sig_box *check_signal(lua_State *L) {
  sig_box **p = luaL_checkudata(L, 1, SIGNAL_MT);
  if (*p == NULL) luaL_error(L, "attempt to use a closed signal");
  return *p;
}

/* process.signal(sig) -> Signal | nil, message, code: starts catching the
 * signal until the Signal is closed; sig:wait() waits for the next
 * arrival. Arrivals while nobody waits are remembered (several count as
 * one), so a loop of waits loses none. An open Signal nobody waits on does
 * not keep the program running. */
static int process_signal(lua_State *L) {
  int signum = check_catchable(L, 1);
  sig_box **p = lua_newuserdatauv(L, sizeof *p, 0);
  *p = NULL;
  luaL_setmetatable(L, SIGNAL_MT);
  int rc;
  sig_box *b = box_start(L, signum, 0, &rc);
  if (b == NULL) {
    tulua__signal_push_name(L, signum);
    return push_fail(L, lua_tostring(L, -1), rc);
  }
  uv_unref((uv_handle_t *)&b->h); /* nobody waits yet */
  *p = b;
  return 1;
}

/* sig:wait() -> name | nil, "signal closed", "ECANCELED": returns at once
 * if the signal arrived since the last wait, else waits for it. One task
 * at a time: a second one raises. */
static int signal_wait(lua_State *L) {
  sig_box *b = check_signal(L);
  if (b->waiting)
    return luaL_error(L, "attempt to wait for a signal in two tasks at once");
  if (b->pending) {
    b->pending = 0;
    tulua__signal_push_name(L, b->signum);
    return 1;
  }
  tulua__check_wait(L, "signal.wait");
  b->waiting = 1;
  uv_ref((uv_handle_t *)&b->h); /* a waiting task keeps the loop running */
  return tulua__wait(L, &b->w, signal_deliver, wait_cancel, b);
}

/* sig:close(): stops catching the signal (its previous disposition comes
 * back); a task waiting gets nil, "signal closed", "ECANCELED". A second
 * close is a no-op. Also __close and __gc. */
static int signal_close(lua_State *L) {
  sig_box **p = luaL_checkudata(L, 1, SIGNAL_MT);
  sig_box *b = *p;
  if (b == NULL) return 0;
  *p = NULL;
  box_release(b);
  return 0;
}

static int signal_tostring(lua_State *L) {
  sig_box **p = luaL_checkudata(L, 1, SIGNAL_MT);
  if (*p == NULL) {
    lua_pushliteral(L, "Signal (closed)");
    return 1;
  }
  tulua__signal_push_name(L, (*p)->signum);
  lua_pushfstring(L, "Signal (%s)", lua_tostring(L, -1));
  return 1;
}

void tulua__signal_open(lua_State *L) {
  static const luaL_Reg methods[] = {
      {"wait", signal_wait}, {"close", signal_close}, {NULL, NULL}};
  static const luaL_Reg meta[] = {{"__gc", signal_close},
                                  {"__close", signal_close},
                                  {"__tostring", signal_tostring},
                                  {NULL, NULL}};
  tulua__new_class(L, SIGNAL_MT, meta, methods);
  lua_pushcfunction(L, process_wait_signal);
  lua_setfield(L, -2, "wait_signal");
  lua_pushcfunction(L, process_signal);
  lua_setfield(L, -2, "signal");
  /* signals: name -> number and number -> name */
  lua_createtable(L, (int)N_SIG_NAMES, (int)N_SIG_NAMES);
  for (size_t i = 0; i < N_SIG_NAMES; i++) {
    lua_pushinteger(L, sig_names[i].num);
    lua_setfield(L, -2, sig_names[i].name);
    lua_pushstring(L, sig_names[i].name);
    lua_rawseti(L, -2, sig_names[i].num);
  }
  lua_setfield(L, -2, "signals");
}
