/* process.c: uv_process_t as Process objects (process.spawn) and as the
 * one wait of process.run; backs the module 'tulua.process', whose signal
 * half is signal.c and whose options spawn_options.c reads.
 *
 * Reaping. libuv reaps every child it started, in its SIGCHLD handler,
 * while the uv_process_t is open, and calls exit_cb. So the handle stays
 * open until the child has exited, whatever happens to its Lua object:
 * exit_cb closes it, never close()/__gc (closing earlier would leave a
 * zombie). A running child keeps the loop, and thus the program, alive,
 * unless it was spawned detached: then its handle is unref'd, except while
 * a task waits on it (wait() or close()), for the loop must not end, and
 * the scheduler must not see a deadlock, while a task waits for an exit
 * that will come.
 *
 * Ownership:
 * - A Process userdata points at a malloc'd proc_box, freed when both the
 *   handle is closed (close_cb, after the exit) and the userdata is
 *   collected, whichever comes last. close() and __close only mark the
 *   box released for Lua: its pid and status stay readable.
 * - The Process's pipes and its pty's master side are streams of
 *   stream.c, in the userdata's user values (stdin, stdout, stderr, pty).
 * - A task in p:wait() or p:close() owns a wait_op linked in the box's
 *   list; exit_cb wakes it, or the cancel hook unlinks and frees it (no
 *   libuv callback would: it belongs to no request).
 * - process.run's run_op embeds the process and the timer; each open
 *   handle holds a share of it, as does the write of the input while in
 *   flight, and the waiting task one more. The last close callback, the
 *   write's callback or the deliver step frees it. Its pipes are streams
 *   (stream.c boxes without a Lua object) that own themselves: the output
 *   is read to its end through stream.c and taken out of them before they
 *   are discarded. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include "queue.h"
#include "signal_names.h"
#include "byte_buffer.h"
#include "spawn_options.h"
#include "stream.h"

#define PROCESS_MT "tulua.process"

/* Pushes a process status: the exit code, or -signal and the signal's
 * name, as Python's returncode. [-0, +1|2, m] */
static int push_status(lua_State *L, int64_t exit_status, int term_signal) {
  if (term_signal != 0) {
    lua_pushinteger(L, -term_signal);
    tulua__signal_push_name(L, term_signal);
    return 2;
  }
  lua_pushinteger(L, (lua_Integer)exit_status);
  return 1;
}

/* The SIGKILL that tulua sends on the user's behalf (a cancel, an error
 * leaving a block, a timeout): to the child, or with process_group to its
 * whole group, even once the child has exited, since the group may outlive
 * its leader (a pgid is not reused while the group has members). h is
 * open while !exited. */
static void kill_for_user(uv_process_t *h, int pid, int exited, int group) {
  if (group)
    uv_kill(-pid, SIGKILL);
  else if (!exited)
    uv_process_kill(h, SIGKILL);
}

/* ---- Process objects ---- */

typedef struct wait_op wait_op;
typedef struct proc_box proc_box;

/* The runtime's processes whose handle is open (their child has not been
 * reaped), in a userdata the registry holds until lua_close. */
typedef struct {
  tulua__queue boxes; /* proc_box.link */
} proc_list;

struct proc_box {
  uv_process_t h;
  tulua__queue link; /* in the proc_list while the handle is open and the
                      * list lives */
  tulua__queue waiters; /* wait_op.link: tasks in wait() or close() */
  int64_t exit_status;
  int term_signal;
  int pid;
  unsigned char exited; /* exit_cb ran: the child is reaped */
  unsigned char handle_closed; /* close_cb ran */
  unsigned char collected; /* the userdata is gone (or there never was one) */
  unsigned char released; /* close(), __close or __gc: methods raise */
  unsigned char detached; /* its handle is ref'd only while tasks wait */
  unsigned char leads_group; /* detached, process_group or pty: pgid == pid */
  unsigned char kill_group; /* process_group: our SIGKILLs go to the group */
  char name[]; /* argv[1], for messages */
};

struct wait_op {
  tulua__waiter w;
  proc_box *b;
  tulua__queue link; /* in b->waiters until exit_cb or the cancel */
  int64_t exit_status; /* copied by exit_cb */
  int term_signal;
  int kill_on_cancel; /* close(): a cancelled close kills the child */
};

static void proc_close_cb(uv_handle_t *h) {
  proc_box *b = h->data;
  b->handle_closed = 1;
  if (b->collected) free(b);
}

static void list_add(proc_list *l, proc_box *b) {
  tulua__queue_insert_tail(&l->boxes, &b->link);
}

/* The list's __gc, at lua_close (the registry holds it until then): the
 * handles of children still running are closed, so that tulua_close
 * neither waits for them nor finds handles it must close without a
 * callback (their boxes would leak). Those children run on, orphaned:
 * init reaps them. No task waits any more (shutdown cancelled them). */
static int list_gc(lua_State *L) {
  proc_list *l = lua_touserdata(L, 1);
  tulua__queue *q;
  while ((q = tulua__queue_pop(&l->boxes)) != NULL) {
    proc_box *b = tulua__container_of(q, proc_box, link);
    uv_close((uv_handle_t *)&b->h, proc_close_cb);
  }
  return 0;
}

static const char list_key = 0; /* its address keys the list in the registry */

/* The child has exited and libuv has reaped it. No Lua API here. */
static void exit_cb(uv_process_t *h, int64_t exit_status, int term_signal) {
  proc_box *b = h->data;
  tulua__queue_remove(&b->link); /* closed below, not by list_gc */
  b->exited = 1;
  b->exit_status = exit_status;
  b->term_signal = term_signal;
  tulua__queue *q;
  while ((q = tulua__queue_pop(&b->waiters)) != NULL) {
    wait_op *op = tulua__container_of(q, wait_op, link);
    op->exit_status = exit_status;
    op->term_signal = term_signal;
    if (!tulua__wake(&op->w)) free(op); /* never: cancel unlinks first */
  }
  uv_close((uv_handle_t *)h, proc_close_cb);
}

static int wait_deliver(lua_State *L, void *ud) {
  wait_op *op = ud;
  int64_t exit_status = op->exit_status;
  int term_signal = op->term_signal;
  free(op);
  return push_status(L, exit_status, term_signal);
}

/* Unlinks the cancelled waiter and frees it: no libuv callback will. */
static void wait_cancel(void *ud) {
  wait_op *op = ud;
  proc_box *b = op->b; /* alive: the waiting call holds the Process */
  tulua__queue_remove(&op->link); /* a no-op if exit_cb took it already */
  if (op->kill_on_cancel)
    kill_for_user(&b->h, b->pid, b->exited, b->kill_group);
  if (b->detached && !b->exited && tulua__queue_empty(&b->waiters))
    uv_unref((uv_handle_t *)&b->h); /* the last waiter gave up */
  free(op);
}

/* The detail of a wait for a child (tulua --ps): its pid and program. */
static int describe_wait(char *buf, size_t size, const void *ud) {
  const proc_box *b = ((const wait_op *)ud)->b;
  return snprintf(buf, size, "pid %d %s", b->pid, b->name);
}

/* Waits in the task until b's child exits. */
static int wait_start(lua_State *L, proc_box *b, int kill_on_cancel) {
  wait_op *op = calloc(1, sizeof *op);
  if (op == NULL) return luaL_error(L, "not enough memory");
  op->b = b;
  op->kill_on_cancel = kill_on_cancel;
  if (b->detached && tulua__queue_empty(&b->waiters))
    uv_ref((uv_handle_t *)&b->h); /* the first waiter: see the top */
  tulua__queue_insert_tail(&b->waiters, &op->link);
  tulua__wait_detail(L, describe_wait);
  return tulua__wait(L, &op->w, wait_deliver, wait_cancel, op);
}

static proc_box *check_process(lua_State *L) {
  proc_box **p = luaL_checkudata(L, 1, PROCESS_MT);
  if (*p == NULL || (*p)->released)
    luaL_error(L, "attempt to use a closed process");
  return *p;
}

/* Opens a pseudo-terminal of 80 columns and 24 rows for spawn: its master
 * side becomes a pipe stream, pushed; *slave is the terminal's side, for
 * the child's stdin, stdout and stderr (close-on-exec here: libuv's dup2
 * gives the child its copies; the caller closes it after uv_spawn, so that
 * the master reads its end, EIO, once the child and its children have
 * closed theirs). Returns 0, or a negative libuv code with nothing open
 * but the pushed stream (its __gc closes it). [-0, +1, m] */
static int open_pty(lua_State *L, int *slave) {
  tulua__stream *st = tulua__stream_new(L, TULUA_PIPE); /* may raise */
  uv_pipe_t *h = (uv_pipe_t *)tulua__stream_handle(st);
  int rc = uv_pipe_init(tulua__loop(L), h, 0);
  if (rc < 0) return rc;
  tulua__stream_ready(st);
  char name[128];
  int m = posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC);
  if (m < 0) return uv_translate_sys_error(errno);
  int s = -1;
  struct winsize ws = {.ws_row = 24, .ws_col = 80};
  if (grantpt(m) < 0 || unlockpt(m) < 0 ||
      (errno = ptsname_r(m, name, sizeof name)) != 0 ||
      (s = open(name, O_RDWR | O_NOCTTY | O_CLOEXEC)) < 0 ||
      ioctl(m, TIOCSWINSZ, &ws) < 0) {
    rc = uv_translate_sys_error(errno);
  } else {
    rc = uv_pipe_open(h, m);
  }
  if (rc < 0) {
    if (s >= 0) close(s);
    close(m);
    return rc;
  }
  tulua__stream_eio_is_eof(st);
  *slave = s;
  return 0;
}

/* process.spawn(argv [, options]) -> Process | nil, message, code: starts
 * a program (argv[1], searched in PATH) with arguments, without a shell.
 * Its options: bindings/process.md. */
static int process_spawn(lua_State *L) {
  lua_settop(L, 2);
  lua_newtable(L); /* 3: keep */
  tulua__spawn_spec s;
  tulua__spawn_check(L, 0, &s);
  /* user values: stdin, stdout, stderr, pty */
  proc_box **p = lua_newuserdatauv(L, sizeof *p, 4); /* 4 */
  *p = NULL;
  luaL_setmetatable(L, PROCESS_MT);
  uv_stdio_container_t stdio[3];
  uv_file merged[2] = {-1, -1}; /* stderr = "stdout" with a pipe */
  if (s.pty) {
    int rc = open_pty(L, &merged[1]);
    if (rc < 0) return push_fail(L, s.args[0], rc);
    lua_setiuservalue(L, 4, 4);
    for (int i = 0; i < 3; i++) {
      stdio[i].flags = UV_INHERIT_FD;
      stdio[i].data.fd = merged[1]; /* closed below as merged's */
    }
  }
  for (int i = 0; i < 3 && !s.pty; i++) {
    tulua__io_spec *io = &s.io[i];
    if (io->kind == TULUA__IO_STDOUT) {
      stdio[i] = stdio[1]; /* stdout's, unless it is a pipe (below) */
      continue;
    }
    if (io->kind != TULUA__IO_PIPE) {
      tulua__spawn_stdio(io, i, &stdio[i]);
      continue;
    }
    tulua__stream *st = tulua__stream_new(L, TULUA_PIPE);
    uv_pipe_t *h = (uv_pipe_t *)tulua__stream_handle(st);
    int rc = uv_pipe_init(tulua__loop(L), h, 0);
    if (rc < 0) return push_fail(L, s.args[0], rc); /* GC frees the rest */
    tulua__stream_ready(st);
    lua_setiuservalue(L, 4, i + 1);
    stdio[i].flags = tulua__spawn_pipe_flags(i);
    stdio[i].data.stream = (uv_stream_t *)h;
    if (i == 1 && s.io[2].kind == TULUA__IO_STDOUT) {
      rc = tulua__spawn_open_merged(h, merged);
      if (rc < 0) return push_fail(L, s.args[0], rc);
      stdio[1].flags = UV_INHERIT_FD;
      stdio[1].data.fd = merged[1];
    }
  }
  if (s.io[0].kind == TULUA__IO_PIPE) tulua__ignore_sigpipe();
  size_t namelen = strlen(s.args[0]);
  proc_box *b = calloc(1, sizeof *b + namelen + 1);
  if (b == NULL) {
    if (merged[1] >= 0) close(merged[1]);
    return push_fail(L, s.args[0], UV_ENOMEM);
  }
  memcpy(b->name, s.args[0], namelen + 1);
  tulua__queue_init(&b->link);
  tulua__queue_init(&b->waiters);
  b->h.data = b;
  uv_process_options_t o;
  tulua__spawn_options(&o, &s, stdio);
  o.exit_cb = exit_cb;
  int rc = uv_spawn(tulua__loop(L), &b->h, &o);
  if (merged[1] >= 0) close(merged[1]); /* the child has its copy */
  if (rc < 0) { /* the handle is initialized all the same */
    b->collected = 1; /* no userdata owns it: close_cb frees it */
    uv_close((uv_handle_t *)&b->h, proc_close_cb);
    return push_fail(L, s.args[0], rc);
  }
  b->pid = b->h.pid;
  b->detached = (unsigned char)s.detached;
  b->leads_group = (unsigned char)(s.detached || s.process_group || s.pty);
  b->kill_group = (unsigned char)s.process_group;
  if (s.detached) uv_unref((uv_handle_t *)&b->h);
  lua_rawgetp(L, LUA_REGISTRYINDEX, &list_key);
  list_add(lua_touserdata(L, -1), b);
  *p = b;
  lua_settop(L, 4);
  return 1;
}

/* p:wait() -> status [, signal]: waits until the child exits; status is
 * its exit code, or -N if signal N ended it, and then the signal's name
 * follows ("SIGKILL"). Returns at once if it has exited already. A
 * cancelled wait leaves the child running. */
static int process_wait(lua_State *L) {
  proc_box *b = check_process(L);
  if (b->exited) return push_status(L, b->exit_status, b->term_signal);
  tulua__check_wait(L, "process.wait");
  return wait_start(L, b, 0);
}

/* p:poll() -> status [, signal] | nil: as wait, without waiting: nil while
 * the child runs. */
static int process_poll(lua_State *L) {
  proc_box *b = check_process(L);
  if (!b->exited) return 0;
  return push_status(L, b->exit_status, b->term_signal);
}

/* Reads kill's options at idx (a table or none): returns whether the
 * group is asked for. Raises on an unknown key. */
static int check_kill_options(lua_State *L, int idx) {
  static const char *const known[] = {"group", NULL};
  if (!tulua__check_options(L, idx, known)) return 0;
  lua_getfield(L, idx, "group");
  int group = lua_toboolean(L, -1);
  lua_pop(L, 1);
  return group;
}

/* p:kill([sig [, options]]) -> true | nil, message, code: sends a signal
 * (a name such as "SIGKILL" or a number; default SIGTERM) to the child, or
 * with options.group to its process group (the child must lead one). Fails
 * with ESRCH once the child has exited and been reaped, as its pid may
 * belong to another process by then; the group, once it has no member
 * left. */
static int process_kill(lua_State *L) {
  proc_box *b = check_process(L);
  int signum = tulua__signal_check(L, 2, SIGTERM);
  int group = check_kill_options(L, 3);
  luaL_argcheck(
      L, !group || b->leads_group, 3,
      "the process leads no group: spawn it with process_group = true");
  int rc;
  if (group)
    rc = uv_kill(-b->pid, signum);
  else if (b->exited)
    rc = UV_ESRCH;
  else
    rc = uv_process_kill(&b->h, signum);
  if (rc < 0) return push_fail(L, b->name, rc);
  lua_pushboolean(L, 1);
  return 1;
}

/* Closes the pipes and the pty from user value ctx on (each stream's close
 * may wait), then waits for the child. */
static int close_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status;
  for (int i = (int)ctx; i <= 4; i++) {
    if (lua_getiuservalue(L, 1, i) == LUA_TNIL) {
      lua_pop(L, 1);
      continue;
    }
    lua_getfield(L, -1, "close");
    lua_insert(L, -2);
    lua_callk(L, 1, 0, i + 1, close_k);
  }
  proc_box *b = *(proc_box **)lua_touserdata(L, 1);
  if (b->exited) return push_status(L, b->exit_status, b->term_signal);
  return wait_start(L, b, 1);
}

/* p:close() -> status [, signal]: closes p.stdin, p.stdout, p.stderr and
 * p.pty (stdin first, so that a filter sees the end of its input), then waits
 * for the child to exit and returns as wait. If the task is cancelled
 * meanwhile, the child gets SIGKILL. Afterwards methods raise "attempt to
 * use a closed process"; p.pid stays. A second close returns as poll. */
static int process_close(lua_State *L) {
  proc_box **p = luaL_checkudata(L, 1, PROCESS_MT);
  proc_box *b = *p;
  if (b == NULL) return 0;
  if (b->released)
    return b->exited ? push_status(L, b->exit_status, b->term_signal) : 0;
  tulua__check_wait(L, "process.close");
  b->released = 1;
  lua_settop(L, 1);
  return close_k(L, LUA_OK, 1);
}

static int close_meta_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status;
  (void)ctx;
  int can_wait = lua_toboolean(L, -1);
  lua_settop(L, 1);
  if (can_wait) return process_close(L); /* reaps a killed child at once */
  /* no task runs, or Lua cannot yield here: the child must not outlive
   * its scope, and exit_cb reaps it later */
  proc_box *b = *(proc_box **)lua_touserdata(L, 1);
  b->released = 1;
  kill_for_user(&b->h, b->pid, b->exited, b->kill_group);
  return 0;
}

/* __close(p, err): when the block ends normally, close(): the pipes are
 * closed and the child is waited for. When an error (a cancellation
 * too) leaves the block, the child gets SIGKILL first: an error must not
 * hang on a child that may never end. Where the task cannot wait, the
 * child gets SIGKILL and is reaped later, without waiting. */
static int process_close_meta(lua_State *L) {
  proc_box **p = luaL_checkudata(L, 1, PROCESS_MT);
  proc_box *b = *p;
  if (b == NULL || b->released) return 0;
  if (!lua_isnoneornil(L, 2))
    kill_for_user(&b->h, b->pid, b->exited, b->kill_group);
  lua_settop(L, 1);
  lua_pushvalue(L, lua_upvalueindex(1)); /* tulua.can_wait */
  lua_callk(L, 0, 1, 0, close_meta_k); /* callk: keeps L yieldable */
  return close_meta_k(L, LUA_OK, 0);
}

/* __gc: the child runs on (its pipes are objects of their own); it is
 * still reaped when it exits, and then the box is freed. */
static int process_gc(lua_State *L) {
  proc_box **p = luaL_checkudata(L, 1, PROCESS_MT);
  proc_box *b = *p;
  if (b == NULL) return 0;
  *p = NULL;
  b->released = 1;
  b->collected = 1;
  if (b->handle_closed) free(b);
  return 0;
}

static int process_tostring(lua_State *L) {
  proc_box **p = luaL_checkudata(L, 1, PROCESS_MT);
  proc_box *b = *p;
  if (b == NULL) {
    lua_pushliteral(L, "Process (closed)");
  } else if (!b->exited) {
    lua_pushfstring(L, "Process (%s, pid %d, %s)", b->name, b->pid,
                    b->released ? "closed" : "running");
  } else if (b->term_signal != 0) {
    tulua__signal_push_name(L, b->term_signal);
    lua_pushfstring(L, "Process (%s, pid %d, %s)", b->name, b->pid,
                    lua_tostring(L, -1));
  } else {
    lua_pushfstring(L, "Process (%s, pid %d, exited %d)", b->name, b->pid,
                    (int)b->exit_status);
  }
  return 1;
}

/* __index: the fields pid, stdin, stdout, stderr, pty, then the methods
 * (the upvalue). */
static int process_index(lua_State *L) {
  proc_box **p = luaL_checkudata(L, 1, PROCESS_MT);
  if (lua_type(L, 2) == LUA_TSTRING) {
    const char *k = lua_tostring(L, 2);
    if (strcmp(k, "pid") == 0) {
      if (*p == NULL) return 0;
      lua_pushinteger(L, (*p)->pid);
      return 1;
    }
    for (int i = 0; i < 3; i++)
      if (strcmp(k, tulua__stdio_names[i]) == 0) {
        lua_getiuservalue(L, 1, i + 1);
        return 1;
      }
    if (strcmp(k, "pty") == 0) {
      lua_getiuservalue(L, 1, 4);
      return 1;
    }
  }
  lua_pushvalue(L, 2);
  lua_rawget(L, lua_upvalueindex(1));
  return 1;
}

/* p:set_size(cols, rows) -> true | nil, message, code: sets the size of
 * the child's pseudo-terminal (spawned with pty = true). */
static int process_set_size(lua_State *L) {
  proc_box *b = check_process(L);
  lua_Integer cols = luaL_checkinteger(L, 2);
  lua_Integer rows = luaL_checkinteger(L, 3);
  luaL_argcheck(L, cols >= 1 && cols <= USHRT_MAX, 2, "columns out of range");
  luaL_argcheck(L, rows >= 1 && rows <= USHRT_MAX, 3, "rows out of range");
  if (lua_getiuservalue(L, 1, 4) == LUA_TNIL)
    return luaL_error(L, "the process has no pty (spawn it with pty = true)");
  uv_os_fd_t fd;
  int rc = uv_fileno(
      (uv_handle_t *)tulua__stream_handle(tulua__stream_check(L, -1)), &fd);
  struct winsize ws = {.ws_row = (unsigned short)rows,
                       .ws_col = (unsigned short)cols};
  if (rc == 0 && ioctl(fd, TIOCSWINSZ, &ws) < 0)
    rc = uv_translate_sys_error(errno);
  if (rc < 0) return push_fail(L, b->name, rc);
  lua_pushboolean(L, 1);
  return 1;
}

/* ---- process.run: one wait for the whole life of a child ---- */

typedef struct {
  uv_process_t proc;
  uv_timer_t timer;
  uv_write_t wreq; /* writes the input into pipe[0] */
  tulua__waiter w;
  /* The child's stdin (input), stdout and stderr when they are pipes: boxes
   * of stream.c with no Lua object, NULL once discarded. */
  tulua__stream *pipe[3];
  tulua__bytes out[3]; /* [1] and [2]: what was read from stdout and stderr */
  int refs; /* the process and timer handles not closed yet, the write in
             * flight, plus 1 while a task owns the op */
  int reading; /* output pipes not at their end yet */
  int err; /* a read failed (with this libuv code): stop early */
  int64_t exit_status;
  int term_signal;
  double timeout;
  unsigned char captured[3]; /* stdout/stderr read into out[] */
  unsigned char timer_open;
  unsigned char exited;
  unsigned char timed_out;
  unsigned char done; /* the task was woken, or gave up (cancel) */
  unsigned char check;
  unsigned char kill_group; /* process_group */
  int pid;
  const char *name; /* in data */
  size_t input_len;
  char data[]; /* the input, then the name and a NUL */
} run_op;

static void run_free(run_op *op) {
  for (int i = 1; i < 3; i++)
    tulua__bytes_free(&op->out[i]);
  free(op);
}

static void run_close_cb(uv_handle_t *h) {
  run_op *op = h->data;
  if (--op->refs == 0) run_free(op);
}

/* Discards pipe i, first taking what was read from an output pipe. Its box
 * frees itself once closed: the op need not outlive it. */
static void run_close_pipe(run_op *op, int i) {
  tulua__stream *s = op->pipe[i];
  if (s == NULL) return;
  op->pipe[i] = NULL;
  if (op->captured[i]) {
    op->reading--;
    tulua__stream_take(s, &op->out[i]);
  }
  tulua__stream_discard(s);
}

static void run_close_timer(run_op *op) {
  if (!op->timer_open) return;
  op->timer_open = 0;
  uv_close((uv_handle_t *)&op->timer, run_close_cb);
}

/* Wakes the task once the child has exited and its output is read (or,
 * after a timeout or a read error, once it has exited). No Lua API. */
static void run_check_done(run_op *op) {
  if (op->done || !op->exited) return;
  if (op->reading > 0 && !op->timed_out && op->err == 0) return;
  op->done = 1;
  for (int i = 0; i < 3; i++)
    run_close_pipe(op, i);
  run_close_timer(op);
  tulua__wake(&op->w); /* 1: a cancel would have set done */
}

static void run_exit_cb(uv_process_t *h, int64_t exit_status, int term_signal) {
  run_op *op = h->data;
  op->exited = 1;
  op->exit_status = exit_status;
  op->term_signal = term_signal;
  uv_close((uv_handle_t *)h, run_close_cb);
  run_check_done(op);
}

/* Stops early: the child (or its group) gets SIGKILL and is waited for,
 * not its output (a grandchild may hold the pipes open). */
static void run_stop_early(run_op *op) {
  kill_for_user(&op->proc, op->pid, op->exited, op->kill_group);
  run_check_done(op);
}

static void run_timer_cb(uv_timer_t *h) {
  run_op *op = h->data;
  op->timed_out = 1;
  run_close_timer(op);
  run_stop_early(op);
}

/* An output pipe has ended (stream.c's read callback: no Lua API). */
static void run_end_cb(tulua__stream *s, int status, void *ud) {
  run_op *op = ud;
  run_close_pipe(op, s == op->pipe[1] ? 1 : 2);
  if (status < 0 && op->err == 0) {
    op->err = status;
    run_stop_early(op);
    return;
  }
  run_check_done(op);
}

/* The input is written, or cannot be (EPIPE: the child did not read it
 * all; not our error), or pipe[0] was discarded (ECANCELED). */
static void run_write_cb(uv_write_t *req, int status) {
  run_op *op = req->data;
  (void)status;
  run_close_pipe(op, 0); /* the end of its input */
  if (--op->refs == 0) run_free(op); /* the write's share */
}

/* The task gave up (cancel or shutdown): the child (or its group) gets
 * SIGKILL and every handle is closed; the close callbacks free the op (at
 * least the process's close is still to come: it waits for the exit). */
static void run_cancel(void *ud) {
  run_op *op = ud;
  op->done = 1;
  kill_for_user(&op->proc, op->pid, op->exited, op->kill_group);
  for (int i = 0; i < 3; i++)
    run_close_pipe(op, i);
  run_close_timer(op);
  op->refs--; /* the task's share */
}

/* Pushes the results of a finished run (op in a light userdata). */
static int run_push(lua_State *L) {
  run_op *op = lua_touserdata(L, 1);
  lua_settop(L, 0);
  int n;
  if (op->err != 0) return push_fail(L, op->name, op->err);
  int status = op->term_signal ? -op->term_signal : (int)op->exit_status;
  if (op->timed_out) {
    lua_pushnil(L);
    lua_pushfstring(L, "%s: timed out after %f s", op->name,
                    (lua_Number)op->timeout);
    lua_pushliteral(L, "ETIMEDOUT");
    n = 3;
  } else if (op->check && status != 0) {
    lua_pushnil(L);
    if (op->term_signal) {
      tulua__signal_push_name(L, op->term_signal);
      lua_pushfstring(L, "%s: killed by %s", op->name, lua_tostring(L, -1));
      lua_remove(L, -2);
    } else {
      lua_pushfstring(L, "%s: exited with status %d", op->name, status);
    }
    lua_pushliteral(L, "ESTATUS");
    n = 3;
  } else {
    lua_pushinteger(L, status);
    n = 1;
  }
  for (int i = 1; i < 3; i++) {
    const tulua__bytes *o = &op->out[i];
    if (op->captured[i])
      lua_pushlstring(L, o->base ? o->base + o->pos : "",
                      tulua__bytes_avail(o));
    else
      lua_pushnil(L);
  }
  return n + 2;
}

/* In the task: pushes the results, then frees the op if the handles are
 * all closed already (else the last close callback does). The output
 * buffers are freed here either way, even if pushing raises. */
static int run_deliver(lua_State *L, void *ud) {
  run_op *op = ud;
  int top = lua_gettop(L);
  lua_pushcfunction(L, run_push);
  lua_pushlightuserdata(L, op);
  int st = lua_pcall(L, 1, LUA_MULTRET, 0);
  for (int i = 1; i < 3; i++)
    tulua__bytes_free(&op->out[i]);
  if (--op->refs == 0) run_free(op);
  if (st != LUA_OK) return lua_error(L);
  return lua_gettop(L) - top;
}

static int describe_run(char *buf, size_t size, const void *ud) {
  const run_op *op = ud;
  return snprintf(buf, size, "pid %d %s", op->pid, op->name);
}

/* process.run(argv [, options]) -> status, stdout, stderr | nil, message,
 * code [, stdout, stderr]: runs a program to its end, feeding it
 * options.input, capturing its output, within options.timeout (see
 * bindings/process.md). */
static int process_run(lua_State *L) {
  lua_settop(L, 2);
  lua_newtable(L); /* 3: keep */
  tulua__spawn_spec s;
  tulua__spawn_check(L, 1, &s);
  tulua__check_wait(L, "process.run");
  char *scratch = tulua__stream_scratch(L); /* before the op: may raise */
  const char *name = s.args[0];
  size_t namelen = strlen(name);
  run_op *op = calloc(1, sizeof *op + s.input_len + namelen + 1);
  if (op == NULL) return push_fail(L, name, UV_ENOMEM);
  memcpy(op->data, s.input != NULL ? s.input : "", s.input_len);
  memcpy(op->data + s.input_len, name, namelen + 1);
  op->name = op->data + s.input_len;
  op->input_len = s.input_len;
  op->timeout = s.timeout;
  op->check = (unsigned char)s.check;
  op->kill_group = (unsigned char)s.process_group;
  op->refs = 1; /* the task's share */
  op->proc.data = op->timer.data = op->wreq.data = op;
  uv_loop_t *loop = tulua__loop(L);
  uv_stdio_container_t stdio[3];
  uv_file merged[2] = {-1, -1};
  int rc = 0;
  for (int i = 0; i < 3; i++) {
    tulua__io_spec *io = &s.io[i];
    if (io->kind == TULUA__IO_STDOUT) {
      stdio[i] = stdio[1];
      continue;
    }
    if (io->kind != TULUA__IO_PIPE) {
      tulua__spawn_stdio(io, i, &stdio[i]);
      continue;
    }
    op->pipe[i] = tulua__stream_alloc(scratch, TULUA_PIPE);
    if (op->pipe[i] == NULL) {
      rc = UV_ENOMEM;
      break;
    }
    uv_pipe_t *h = (uv_pipe_t *)tulua__stream_handle(op->pipe[i]);
    uv_pipe_init(loop, h, 0); /* cannot fail on Unix */
    tulua__stream_ready(op->pipe[i]);
    if (i > 0) {
      op->captured[i] = 1;
      op->reading++;
    }
    stdio[i].flags = tulua__spawn_pipe_flags(i);
    stdio[i].data.stream = (uv_stream_t *)h;
    if (i == 1 && s.io[2].kind == TULUA__IO_STDOUT) {
      rc = tulua__spawn_open_merged(h, merged);
      if (rc < 0) break;
      stdio[1].flags = UV_INHERIT_FD;
      stdio[1].data.fd = merged[1];
    }
  }
  if (rc == 0 && s.timeout >= 0) {
    uv_timer_init(loop, &op->timer);
    op->timer_open = 1;
    op->refs++;
  }
  if (rc == 0) {
    if (s.io[0].kind == TULUA__IO_PIPE) tulua__ignore_sigpipe();
    uv_process_options_t o;
    tulua__spawn_options(&o, &s, stdio);
    o.exit_cb = run_exit_cb;
    rc = uv_spawn(loop, &op->proc, &o);
    op->refs++; /* the handle is initialized, even when that failed */
    if (rc < 0) uv_close((uv_handle_t *)&op->proc, run_close_cb);
    op->pid = op->proc.pid;
  }
  if (merged[1] >= 0) close(merged[1]); /* the child has its copy */
  if (rc < 0) { /* no callback will wake us: undo, then fail */
    op->done = 1;
    for (int i = 0; i < 3; i++)
      run_close_pipe(op, i);
    run_close_timer(op);
    if (--op->refs == 0) run_free(op);
    return push_fail(L, name, rc);
  }
  if (op->pipe[0] != NULL) {
    uv_buf_t b;
    b.base = op->data;
    b.len = op->input_len;
    if (op->input_len > 0 &&
        uv_write(&op->wreq, tulua__stream_handle(op->pipe[0]), &b, 1,
                 run_write_cb) == 0)
      op->refs++; /* the write's share: its callback comes */
    else
      run_close_pipe(op, 0); /* nothing to write: the end of its input */
  }
  for (int i = 1; i < 3; i++)
    if (op->pipe[i] != NULL &&
        tulua__stream_read_to_end(op->pipe[i], run_end_cb, op) < 0)
      run_close_pipe(op, i); /* as if at its end */
  if (op->timer_open) {
    double ms = ceil(s.timeout * 1000.0);
    uv_update_time(loop); /* count from now, as tulua.sleep does */
    uv_timer_start(&op->timer, run_timer_cb,
                   ms > 9.0e15 ? (uint64_t)9.0e15 : (uint64_t)ms, 0);
  }
  tulua__wait_detail(L, describe_run);
  return tulua__wait(L, &op->w, run_deliver, run_cancel, op);
}

/* ---- module functions ---- */

/* process.kill(pid [, sig]) -> true | nil, message, code: sends a signal
 * (default SIGTERM) to any process. */
static int process_kill_pid(lua_State *L) {
  lua_Integer pid = luaL_checkinteger(L, 1);
  int signum = tulua__signal_check(L, 2, SIGTERM);
  luaL_argcheck(L, pid > INT_MIN && pid <= INT_MAX, 1, "pid out of range");
  int rc = uv_kill((int)pid, signum);
  if (rc < 0) {
    lua_pushfstring(L, "%I", (LUAI_UACINT)pid);
    return push_fail(L, lua_tostring(L, -1), rc);
  }
  lua_pushboolean(L, 1);
  return 1;
}

/* process.getpid() -> integer: this process's id. */
static int process_getpid(lua_State *L) {
  lua_pushinteger(L, uv_os_getpid());
  return 1;
}

int luaopen_tulua_process(lua_State *L) {
  static const luaL_Reg methods[] = {
      {"wait", process_wait},         {"poll", process_poll},
      {"kill", process_kill},         {"close", process_close},
      {"set_size", process_set_size}, {NULL, NULL}};
  static const luaL_Reg funcs[] = {{"spawn", process_spawn},
                                   {"run", process_run},
                                   {"kill", process_kill_pid},
                                   {"getpid", process_getpid},
                                   {NULL, NULL}};
  tulua__stream_register(L, TULUA_PIPE, NULL); /* the pipes' metatable */
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &list_key) == LUA_TNIL) {
    proc_list *l = lua_newuserdatauv(L, sizeof *l, 0);
    tulua__queue_init(&l->boxes);
    lua_createtable(L, 0, 1);
    lua_pushcfunction(L, list_gc);
    lua_setfield(L, -2, "__gc");
    lua_setmetatable(L, -2);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &list_key);
  }
  lua_pop(L, 1);
  if (luaL_newmetatable(L, PROCESS_MT)) {
    lua_pushcfunction(L, process_gc);
    lua_setfield(L, -2, "__gc");
    lua_pushcfunction(L, process_tostring);
    lua_setfield(L, -2, "__tostring");
    luaL_requiref(L, "tulua", luaopen_tulua, 0);
    lua_getfield(L, -1, "can_wait");
    lua_remove(L, -2);
    lua_pushcclosure(L, process_close_meta, 1);
    lua_setfield(L, -2, "__close");
    luaL_newlib(L, methods);
    lua_pushcclosure(L, process_index, 1);
    lua_setfield(L, -2, "__index");
  }
  lua_pop(L, 1);
  luaL_newlib(L, funcs);
  tulua__signal_open(L);
  return 1;
}
