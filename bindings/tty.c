/* tty.c: uv_tty_t and the standard descriptors as streams; backs the module
 * 'tulua.tty' (tty.stdin, tty.stdout, tty.stderr, tty.size, tty.is_terminal,
 * tty.set_mode, tty.reset_mode).
 *
 * What a standard descriptor becomes (uv_guess_handle, fstat):
 * - A terminal: a tty stream (stream.c) on a uv_tty_t. uv_tty_init reopens
 *   the terminal, so that the stream has an open file description of its own
 *   to put in non-blocking mode, and dup2()s that description onto the
 *   descriptor. We put the original description back on the descriptor at
 *   once: fd 0, 1 and 2 keep theirs (blocking, shared with the shell), so
 *   io.read, print and child processes see no change, and closing the stream
 *   closes only its private descriptor.
 * - A pipe or FIFO: a pipe stream on a new description of the same pipe,
 *   opened through /proc/self/fd/N (Linux), for the same reason. Without
 *   /proc, stdin falls back to a dup() (below); stdout and stderr to a file
 *   stream.
 * - A socket: stdin becomes a pipe stream on a dup(); its description, shared
 *   with fd 0, is then non-blocking until the runtime closes (the state's
 *   __gc restores the flags). stdout and stderr become file streams, so that
 *   print() keeps writing to a blocking descriptor.
 * - A regular file, a character device (/dev/null) or anything else: a file
 *   stream. Files cannot be polled, so it reads and writes with uv_fs_read
 *   and uv_fs_write on libuv's thread pool and offers the methods of
 *   stream.c with the same results (file stream, below).
 * Descriptors 0, 1 and 2 are never closed: libuv does not close stdio
 * descriptors, and the streams close only the private ones above.
 *
 * The per-runtime state (a userdata, the upvalue of every module function)
 * caches the three objects in its user values and remembers what to restore
 * when the runtime closes: the terminal's settings if set_mode changed them,
 * and the flags of a dup()ed socket. It is created before any stream, so at
 * lua_close its __gc runs after theirs, and restores through fd 0, which
 * stays open and refers to the same terminal. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <termios.h>
#include <unistd.h>

#include "stream.h"

#define FSTREAM_MT "tulua.file_stream"
#define STATE_MT   "tulua.tty_state"
#define CHUNK      (64 * 1024) /* a pool read asks for at least this */
#define CHUNK_MAX  (4 * 1024 * 1024) /* and at most this */

static const char *const STD_NAME[] = {"stdin", "stdout", "stderr"};

/* What a standard descriptor became. */
enum { K_NONE, K_TTY, K_PIPE, K_FILE };

/* ---- file streams: stream methods over the thread pool ----
 *
 * Reading: a task that needs more bytes than the buffer holds starts one
 * uv_fs_read at the end of the buffer and waits; the callback appends what
 * came and either wakes the task or, if that is still not enough, starts
 * the next read. There is no read-ahead without a reader. If the reader is
 * cancelled, the read in flight is uv_cancel()ed when still queued, and
 * otherwise lands in the buffer for the next reader: no byte is lost. While
 * a read is in flight, the buffer is neither moved nor freed (a pool thread
 * writes into it).
 *
 * Writing: writes queue in call order; the head of the queue is the one
 * uv_fs_write in flight, and each callback starts the next. A write copies
 * its bytes, and the task waits until they are written (the backpressure).
 * A cancelled writer's bytes are still written, as with stream.c.
 *
 * Ownership: the userdata points at a calloc'd box. Closing marks it closed
 * (wakes the waiters, ends queued writes with ECANCELED); the descriptor
 * stays open. The box is freed once the userdata is collected, no read or
 * write is in flight and every woken task has delivered (wakes), whichever
 * comes last. Write ops own themselves until their callback, as fs ops. */

typedef struct fstream fstream;

typedef struct write_op {
  uv_fs_t req;
  tulua__waiter w;
  fstream *box; /* until the op leaves the queue */
  struct write_op *next; /* in box's queue */
  const char *name; /* the box's (static) name, for deliver */
  int status; /* 0 or a negative libuv code */
  size_t len;
  char data[];
} write_op;

struct fstream {
  uv_loop_t *loop;
  int fd; /* 0, 1 or 2: never closed here */
  const char *name; /* "stdin", "stdout" or "stderr": messages' subject */
  FILE *cfile; /* C's stream on fd (stdout, stderr) to flush first, or NULL */
  uv_fs_t rreq; /* the read in flight, while reading */
  tulua__waiter rw; /* the task waiting in a read */
  tulua__waiter sw; /* the task waiting in shutdown */
  tulua__rbuf rb; /* unread bytes, and what the waiting reader wants */
  write_op *whead, *wtail; /* queued writes; the head is in flight */
  int wakes; /* woken tasks that have not delivered yet */
  unsigned char reading, busy, closed, collected, shut;
};

static void f_maybe_free(fstream *f) {
  if (!f->collected || f->reading || f->whead != NULL || f->wakes > 0) return;
  free(f->rb.buf);
  free(f);
}

static fstream *check_fstream(lua_State *L, int idx) {
  fstream **p = luaL_checkudata(L, idx, FSTREAM_MT);
  if (*p == NULL || (*p)->closed)
    luaL_error(L, "attempt to use a closed file stream");
  return *p;
}

/* Whether the waiting reader can be served now. */
static int f_satisfied(fstream *f) {
  return f->closed || tulua__rbuf_satisfied(&f->rb);
}

/* How many bytes the next pool read asks for: a chunk, or what the reader
 * still lacks (read_exactly, read_all), up to CHUNK_MAX. */
static size_t f_need(const fstream *f) {
  const tulua__rbuf *rb = &f->rb;
  size_t n = tulua__rbuf_avail(rb), need = CHUNK;
  if (rb->mode == TULUA__R_EXACT && rb->want > n)
    need = rb->want - n;
  else if (rb->mode == TULUA__R_ALL) /* grows with what came: few trips */
    need = n < rb->want + 1 - n ? n : rb->want + 1 - n;
  if (need < CHUNK) need = CHUNK;
  return need > CHUNK_MAX ? CHUNK_MAX : need;
}

static void f_read_cb(uv_fs_t *req);

/* Starts a pool read into the end of the buffer. No Lua API: also runs in
 * the callback. Returns 0 or a negative libuv code (nothing started). */
static int f_start_read(fstream *f) {
  size_t need = f_need(f);
  int rc = tulua__rbuf_reserve(&f->rb, need);
  if (rc < 0) return rc;
  uv_buf_t b = {.base = f->rb.buf + f->rb.len, .len = need};
  f->rreq.data = f;
  rc = uv_fs_read(f->loop, &f->rreq, f->fd, &b, 1, -1, f_read_cb);
  if (rc == 0) f->reading = 1;
  return rc;
}

static void f_read_cb(uv_fs_t *req) { /* no Lua API here */
  fstream *f = req->data;
  ssize_t n = req->result;
  uv_fs_req_cleanup(req);
  f->reading = 0;
  if (n > 0)
    f->rb.len += (size_t)n;
  else if (n == 0)
    f->rb.eof = 1;
  else if (n != UV_ECANCELED) /* cancelled: the bytes are still there */
    f->rb.err = (int)n;
  if (f->collected) {
    f_maybe_free(f);
    return;
  }
  if (f->rw.task == NULL) return; /* nobody waits: no read-ahead */
  if (!f_satisfied(f)) {
    int rc = f_start_read(f);
    if (rc == 0) return;
    f->rb.err = rc;
  }
  f->wakes++;
  tulua__wake(&f->rw);
}

static int push_closed(lua_State *L) {
  lua_pushnil(L);
  lua_pushliteral(L, "file stream closed");
  lua_pushliteral(L, "ECANCELED");
  return 3;
}

/* Pushes the answer to the read (satisfied, or the stream ended); an
 * emptied buffer stays while a pool read fills it. */
static int f_push_read(lua_State *L, fstream *f) {
  if (f->closed) return push_closed(L);
  return tulua__rbuf_push(L, &f->rb, "file stream", f->name, !f->reading);
}

static int f_read_deliver(lua_State *L, void *ud) {
  fstream *f = ud; /* alive: the box waits for wakes */
  f->wakes--;
  f->busy = 0;
  if (f->collected) { /* only at shutdown: the results are dropped */
    f_maybe_free(f);
    return push_closed(L);
  }
  /* a cancelled reader takes nothing: the bytes stay for the next one */
  return tulua__cancel_pending(L) ? 0 : f_push_read(L, f);
}

/* The reader is gone; a queued read is withdrawn (its callback comes with
 * UV_ECANCELED), a running one lands in the buffer. */
static void f_read_cancel(void *ud) {
  fstream *f = ud;
  f->busy = 0;
  if (f->reading) uv_cancel((uv_req_t *)&f->rreq);
}

/* Serves the read at once if it can, else waits (a tail call). */
static int f_start(lua_State *L, fstream *f, int mode, const char *op) {
  if (f->busy) return luaL_error(L, "another task is reading this stream");
  if (!tulua__rbuf_request(L, &f->rb, mode)) return 1;
  if (f_satisfied(f)) return f_push_read(L, f);
  tulua__check_wait(L, op);
  if (!f->reading) { /* else the read in flight serves us */
    int rc = f_start_read(f);
    if (rc < 0) return push_fail(L, f->name, rc);
  }
  f->busy = 1; /* the stream stays referenced on the stack while we wait */
  return tulua__wait(L, &f->rw, f_read_deliver, f_read_cancel, f);
}

/* The read methods, as stream.c's: s:read([max]), s:read_exactly(n),
 * s:read_line([{sep=, max=}]), s:read_all([max]). */
static int fstream_read(lua_State *L) {
  return f_start(L, check_fstream(L, 1), TULUA__R_ANY, "read");
}

static int fstream_read_exactly(lua_State *L) {
  return f_start(L, check_fstream(L, 1), TULUA__R_EXACT, "read_exactly");
}

static int fstream_read_line(lua_State *L) {
  return f_start(L, check_fstream(L, 1), TULUA__R_LINE, "read_line");
}

static int fstream_read_all(lua_State *L) {
  return f_start(L, check_fstream(L, 1), TULUA__R_ALL, "read_all");
}

static int fstream_lines(lua_State *L) {
  check_fstream(L, 1);
  return tulua__rbuf_lines(L);
}

static void w_cb(uv_fs_t *req);

/* Starts the head of the queue. Returns 0 or a negative libuv code (then
 * the head was not started). No Lua API. */
static int w_start_head(fstream *f) {
  write_op *op = f->whead;
  uv_buf_t b = {.base = op->data, .len = op->len};
  op->req.data = op;
  return uv_fs_write(f->loop, &op->req, f->fd, &b, 1, -1, w_cb);
}

/* Takes the head off the queue and hands it to its task, or frees it if the
 * task is gone. No Lua API. */
static void w_pop(fstream *f) {
  write_op *op = f->whead;
  f->whead = op->next;
  if (f->whead == NULL) f->wtail = NULL;
  op->box = NULL;
  if (!tulua__wake(&op->w)) free(op);
}

/* After the head's callback: starts the next write (those that cannot
 * start, or come after a close, end at once); once the queue is empty,
 * wakes a task in shutdown. May free f. No Lua API. */
static void w_advance(fstream *f) {
  while (f->whead != NULL) {
    if (f->closed) {
      f->whead->status = UV_ECANCELED;
    } else {
      int rc = w_start_head(f);
      if (rc == 0) return;
      f->whead->status = rc;
    }
    w_pop(f);
  }
  if (f->sw.task != NULL) {
    f->wakes++;
    tulua__wake(&f->sw);
  }
  f_maybe_free(f);
}

static void w_cb(uv_fs_t *req) { /* no Lua API here */
  write_op *op = req->data;
  fstream *f = op->box;
  op->status = req->result < 0 ? (int)req->result : 0;
  uv_fs_req_cleanup(req);
  w_pop(f);
  w_advance(f);
}

static int w_deliver(lua_State *L, void *ud) {
  write_op *op = ud;
  int status = op->status;
  const char *name = op->name;
  free(op); /* before any push: pushing may raise */
  if (status == UV_ECANCELED) return push_closed(L);
  if (status < 0) return push_fail(L, name, status);
  lua_pushboolean(L, 1);
  return 1;
}

/* s:write(data) -> true | nil, message, code: returns once data is written
 * (the thread pool writes it), after the writes other tasks queued before.
 * What C's stdio buffered for the descriptor (io.write) is flushed first. */
static int fstream_write(lua_State *L) {
  fstream *f = check_fstream(L, 1);
  size_t len;
  const char *data = luaL_checklstring(L, 2, &len);
  if (f->shut) return push_fail(L, f->name, UV_EPIPE);
  if (len == 0) {
    lua_pushboolean(L, 1);
    return 1;
  }
  tulua__check_wait(L, "write");
  write_op *op = malloc(sizeof *op + len); /* a copy: nothing to anchor */
  if (op == NULL) return push_fail(L, f->name, UV_ENOMEM);
  memset(op, 0, sizeof *op);
  memcpy(op->data, data, len);
  op->len = len;
  op->box = f;
  op->name = f->name;
  if (f->cfile != NULL) fflush(f->cfile); /* keep io.write's order */
  if (f->wtail != NULL) {
    f->wtail->next = op;
    f->wtail = op;
  } else {
    f->whead = f->wtail = op;
    int rc = w_start_head(f);
    if (rc < 0) { /* libuv will not call back */
      f->whead = f->wtail = NULL;
      free(op);
      return push_fail(L, f->name, rc);
    }
  }
  /* a cancelled writer's bytes are written all the same: no cancel hook */
  return tulua__wait(L, &op->w, w_deliver, NULL, op);
}

static int shutdown_deliver(lua_State *L, void *ud) {
  fstream *f = ud;
  f->wakes--;
  int closed = f->closed;
  f_maybe_free(f);
  if (closed) return push_closed(L);
  lua_pushboolean(L, 1);
  return 1;
}

/* s:shutdown() -> true: waits until the queued writes are written; later
 * writes fail with EPIPE. The descriptor stays open. */
static int fstream_shutdown(lua_State *L) {
  fstream *f = check_fstream(L, 1);
  if (f->whead == NULL || f->sw.task != NULL) {
    f->shut = 1;
    lua_pushboolean(L, 1);
    return 1;
  }
  tulua__check_wait(L, "shutdown");
  f->shut = 1;
  lua_settop(L, 1);
  return tulua__wait(L, &f->sw, shutdown_deliver, NULL, f);
}

/* Closes f once: waiting tasks get nil, "file stream closed", "ECANCELED",
 * a queued read is withdrawn, queued writes end with ECANCELED (the one in
 * flight is withdrawn if still queued on the pool, else finishes). */
static void f_release(fstream *f) {
  if (f->closed) return;
  f->closed = 1;
  if (f->rw.task != NULL) {
    f->wakes++;
    tulua__wake(&f->rw);
  }
  if (f->sw.task != NULL) {
    f->wakes++;
    tulua__wake(&f->sw);
  }
  if (f->reading) uv_cancel((uv_req_t *)&f->rreq);
  if (f->whead != NULL) {
    write_op *op = f->whead->next;
    f->whead->next = NULL;
    f->wtail = f->whead;
    uv_cancel((uv_req_t *)&f->whead->req);
    while (op != NULL) {
      write_op *next = op->next;
      op->status = UV_ECANCELED;
      op->box = NULL;
      if (!tulua__wake(&op->w)) free(op);
      op = next;
    }
  }
}

/* s:close(): closes the stream, not the descriptor; again is a no-op. */
static int fstream_close(lua_State *L) {
  fstream **p = luaL_checkudata(L, 1, FSTREAM_MT);
  if (*p != NULL) f_release(*p);
  return 0;
}

static int fstream_gc(lua_State *L) {
  fstream **p = luaL_checkudata(L, 1, FSTREAM_MT);
  fstream *f = *p;
  if (f == NULL) return 0;
  *p = NULL;
  f_release(f);
  f->collected = 1;
  f_maybe_free(f);
  return 0;
}

static int fstream_is_closed(lua_State *L) {
  fstream **p = luaL_checkudata(L, 1, FSTREAM_MT);
  lua_pushboolean(L, *p == NULL || (*p)->closed);
  return 1;
}

static int fstream_tostring(lua_State *L) {
  fstream **p = luaL_checkudata(L, 1, FSTREAM_MT);
  lua_pushfstring(L, "file stream (%s)",
                  *p != NULL && !(*p)->closed ? "open" : "closed");
  return 1;
}

/* Pushes a file stream over fd (0, 1 or 2). [-0, +1, m] */
static void push_fstream(lua_State *L, int fd) {
  fstream **p = lua_newuserdatauv(L, sizeof *p, 0);
  *p = NULL;
  luaL_setmetatable(L, FSTREAM_MT);
  fstream *f = calloc(1, sizeof *f);
  if (f == NULL) luaL_error(L, "not enough memory");
  f->loop = tulua__loop(L);
  f->fd = fd;
  f->name = STD_NAME[fd];
  f->cfile = fd == 1 ? stdout : fd == 2 ? stderr : NULL;
  *p = f;
}

/* ---- the standard descriptors ---- */

typedef struct {
  struct termios termios; /* the terminal's settings before set_mode */
  int termios_saved; /* termios must be restored */
  int flags[3]; /* file status flags to restore (a dup()ed socket), or -1 */
  unsigned char kind[3]; /* what each descriptor became (K_*) */
} tty_state;

static tty_state *get_state(lua_State *L) {
  return lua_touserdata(L, lua_upvalueindex(1));
}

/* Puts the terminal back as it was before set_mode, through fd 0. */
static int restore_termios(tty_state *st) {
  if (!st->termios_saved) return 0;
  st->termios_saved = 0;
  if (tcsetattr(STDIN_FILENO, TCSANOW, &st->termios) != 0)
    return uv_translate_sys_error(errno);
  return 0;
}

/* __gc of the state, at lua_close after the streams' (see the top). */
static int state_gc(lua_State *L) {
  tty_state *st = luaL_checkudata(L, 1, STATE_MT);
  restore_termios(st);
  for (int fd = 0; fd < 3; fd++) {
    if (st->flags[fd] >= 0) fcntl(fd, F_SETFL, st->flags[fd]);
    st->flags[fd] = -1;
  }
  return 0;
}

/* Pushes the cached object of fd if it is open and returns 1; else pushes
 * nothing and returns 0. [-0, +(0|1), e] */
static int push_cached(lua_State *L, int fd) {
  if (lua_getiuservalue(L, lua_upvalueindex(1), fd + 1) == LUA_TNIL) {
    lua_pop(L, 1);
    return 0;
  }
  lua_getfield(L, -1, "is_closed");
  lua_pushvalue(L, -2);
  lua_call(L, 1, 1);
  int closed = lua_toboolean(L, -1);
  lua_pop(L, 1);
  if (!closed) return 1;
  lua_pop(L, 1);
  return 0;
}

/* Closes the stream on top of the stack (its close method) and pops it. */
static void discard(lua_State *L) {
  lua_getfield(L, -1, "close");
  lua_pushvalue(L, -2);
  lua_call(L, 1, 0);
  lua_pop(L, 1);
}

/* Pushes a tty stream over fd, or returns a negative libuv code with
 * nothing pushed. uv_tty_init dup2()s its reopened terminal onto fd; the
 * original description, kept in a dup, goes back to fd (see the top). */
static int open_tty(lua_State *L, int fd) {
  tulua__stream *s = tulua__stream_new(L, TULUA_TTY);
  int fdflags = fcntl(fd, F_GETFD);
  int saved = fcntl(fd, F_DUPFD_CLOEXEC, 3);
  if (saved < 0) {
    int rc = uv_translate_sys_error(errno);
    lua_pop(L, 1); /* never initialized: __gc frees the box */
    return rc;
  }
  uv_tty_t *h = (uv_tty_t *)tulua__stream_handle(s);
  int rc = uv_tty_init(tulua__loop(L), h, fd, fd == 0);
  if (rc < 0) {
    close(saved);
    lua_pop(L, 1);
    return rc;
  }
  tulua__stream_ready(s);
  tulua__stream_readahead(s, 0); /* others may read the fd too */
  uv_os_fd_t hfd = fd;
  uv_fileno((uv_handle_t *)h, &hfd);
  if (hfd != fd) /* reopened: fd gets its own description back */
    dup3(saved, fd, (fdflags >= 0 && (fdflags & FD_CLOEXEC)) ? O_CLOEXEC : 0);
  close(saved);
  return 0;
}

/* Pushes a pipe stream over own, a descriptor of ours (closed with the
 * stream), or returns a negative libuv code with nothing pushed and own
 * closed. */
static int open_pipe(lua_State *L, int own) {
  tulua__stream_register(L, TULUA_PIPE, NULL);
  tulua__stream *s = tulua__stream_new(L, TULUA_PIPE);
  uv_pipe_t *h = (uv_pipe_t *)tulua__stream_handle(s);
  int rc = uv_pipe_init(tulua__loop(L), h, 0);
  if (rc < 0) {
    close(own);
    lua_pop(L, 1);
    return rc;
  }
  tulua__stream_ready(s);
  tulua__stream_readahead(s, 0); /* others may read the fd too */
  rc = uv_pipe_open(h, own);
  if (rc < 0) {
    close(own);
    discard(L);
    return rc;
  }
  return 0;
}

/* Opens a new description of the pipe or FIFO at fd, non-blocking, with
 * fd's access mode (Linux's /proc/self/fd). Returns it, or -1. */
static int reopen_pipe(int fd, int flags) {
  char path[40];
  snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
  return open(path, (flags & O_ACCMODE) | O_NONBLOCK | O_CLOEXEC);
}

/* Pushes a new object for the standard descriptor fd and records its kind,
 * or returns a negative libuv code with nothing pushed. */
static int open_std(lua_State *L, tty_state *st, int fd) {
  int flags = fcntl(fd, F_GETFL);
  if (flags < 0) return uv_translate_sys_error(errno);
  struct stat sb;
  int fifo = fstat(fd, &sb) == 0 && S_ISFIFO(sb.st_mode);
  int rc;
  switch (uv_guess_handle(fd)) {
    case UV_TTY:
      if (fd == 1) fflush(stdout); /* what io.write buffered goes first */
      if (fd == 2) fflush(stderr);
      rc = open_tty(L, fd);
      if (rc == 0) st->kind[fd] = K_TTY;
      return rc;
    case UV_NAMED_PIPE:
    case UV_TCP: {
      int own = fifo ? reopen_pipe(fd, flags) : -1;
      if (own < 0 && fd == 0) { /* a socket, or no /proc: share fd 0's */
        own = fcntl(fd, F_DUPFD_CLOEXEC, 3);
        if (own < 0) return uv_translate_sys_error(errno);
        if (!(flags & O_NONBLOCK) && st->flags[0] < 0) st->flags[0] = flags;
      }
      if (own >= 0) {
        if (fd == 1) fflush(stdout);
        if (fd == 2) fflush(stderr);
        rc = open_pipe(L, own);
        if (rc == 0) st->kind[fd] = K_PIPE;
        return rc;
      }
      break; /* stdout, stderr: write on the pool, fd stays blocking */
    }
    default:
      break;
  }
  push_fstream(L, fd);
  st->kind[fd] = K_FILE;
  return 0;
}

/* Pushes the object of fd: the cached one while it is open, else a new
 * one; or nil, message, code. */
static int push_std(lua_State *L, int fd) {
  tty_state *st = get_state(L);
  if (push_cached(L, fd)) return 1;
  st->kind[fd] = K_NONE;
  if (fd == 0) restore_termios(st); /* a closed stdin left it raw */
  int rc = open_std(L, st, fd);
  if (rc < 0) return push_fail(L, STD_NAME[fd], rc);
  lua_pushvalue(L, -1);
  lua_setiuservalue(L, lua_upvalueindex(1), fd + 1);
  return 1;
}

/* tty.stdin() -> stream | nil, message, code: the stream that reads fd 0
 * (a tty, pipe or file stream), the same one at every call until it is
 * closed. */
static int tty_stdin(lua_State *L) {
  return push_std(L, 0);
}

/* tty.stdout() -> stream | nil, message, code: as stdin, for fd 1. */
static int tty_stdout(lua_State *L) {
  return push_std(L, 1);
}

/* tty.stderr() -> stream | nil, message, code: as stdin, for fd 2. */
static int tty_stderr(lua_State *L) {
  return push_std(L, 2);
}

static int check_fd(lua_State *L, int idx, lua_Integer def) {
  lua_Integer fd =
      def < 0 ? luaL_checkinteger(L, idx) : luaL_optinteger(L, idx, def);
  luaL_argcheck(L, fd >= 0 && fd <= INT_MAX, idx, "descriptor out of range");
  return (int)fd;
}

/* Pushes cols, rows of the terminal at fd, or nil, message, code. The
 * subject of a message is "stdin", "stdout", "stderr" or "fd N". */
static int push_winsize(lua_State *L, int fd) {
  struct winsize ws;
  int rc = 0;
  if (!isatty(fd))
    rc = uv_translate_sys_error(errno); /* ENOTTY, or EBADF */
  else if (ioctl(fd, TIOCGWINSZ, &ws) != 0)
    rc = uv_translate_sys_error(errno);
  if (rc < 0) {
    if (fd <= 2) return push_fail(L, STD_NAME[fd], rc);
    lua_pushfstring(L, "fd %d", fd);
    return push_fail(L, lua_tostring(L, -1), rc);
  }
  lua_pushinteger(L, ws.ws_col);
  lua_pushinteger(L, ws.ws_row);
  return 2;
}

/* tty.size([fd]) -> columns, rows | nil, message, code: the size of the
 * terminal at fd (default 1, stdout). This is what uv_tty_get_winsize does
 * (ioctl TIOCGWINSZ), without making a uv_tty_t: uv_tty_init would reopen
 * the terminal and change fd, too much for a question. */
static int tty_size(lua_State *L) {
  return push_winsize(L, check_fd(L, 1, 1));
}

/* tty.is_terminal(fd) -> boolean: whether fd is a terminal. */
static int tty_is_terminal(lua_State *L) {
  int fd = check_fd(L, 1, -1);
  lua_pushboolean(L, uv_guess_handle(fd) == UV_TTY);
  return 1;
}

/* Pushes the open stdin stream and returns its uv_tty_t, or returns NULL
 * with nil, message, code pushed (stdin is not a terminal, or fails). */
static uv_tty_t *push_stdin_tty(lua_State *L) {
  if (push_std(L, 0) != 1) return NULL;
  if (get_state(L)->kind[0] != K_TTY) {
    lua_pop(L, 1);
    push_fail(L, "stdin", UV_ENOTTY);
    return NULL;
  }
  return (uv_tty_t *)tulua__stream_handle(tulua__stream_check(L, -1));
}

/* tty.set_mode(mode) -> true | nil, message, code: sets the terminal of
 * stdin to "normal" (line editing and echo by the terminal), "raw" (every
 * key at once, no echo, no signals from Ctrl-C) or "io" (raw, and no
 * output processing either: "\n" stays "\n"). The settings from before the
 * first change are restored by reset_mode, set_mode("normal"), and when the
 * runtime closes. */
static int tty_set_mode(lua_State *L) {
  static const char *const names[] = {"normal", "raw", "io", NULL};
  static const uv_tty_mode_t modes[] = {UV_TTY_MODE_NORMAL, UV_TTY_MODE_RAW,
                                        UV_TTY_MODE_IO};
  int m = luaL_checkoption(L, 1, NULL, names);
  tty_state *st = get_state(L);
  uv_tty_t *h = push_stdin_tty(L);
  if (h == NULL) return 3;
  if (modes[m] != UV_TTY_MODE_NORMAL && !st->termios_saved) {
    uv_os_fd_t fd;
    if (uv_fileno((uv_handle_t *)h, &fd) == 0 &&
        tcgetattr(fd, &st->termios) == 0)
      st->termios_saved = 1;
  }
  int rc = uv_tty_set_mode(h, modes[m]);
  if (rc < 0) return push_fail(L, "stdin", rc);
  if (modes[m] == UV_TTY_MODE_NORMAL) st->termios_saved = 0;
  lua_pushboolean(L, 1);
  return 1;
}

/* tty.reset_mode() -> true | nil, message, code: puts the terminal back as
 * it was before set_mode; a no-op if set_mode did not change it. Unlike
 * uv_tty_reset_mode, which writes through the descriptor of the first
 * handle that changed the mode (closed with that handle), this goes
 * through the open stdin stream, or fd 0. */
static int tty_reset_mode(lua_State *L) {
  tty_state *st = get_state(L);
  int rc = 0;
  if (st->kind[0] == K_TTY && push_cached(L, 0)) {
    uv_tty_t *h = (uv_tty_t *)tulua__stream_handle(tulua__stream_check(L, -1));
    rc = uv_tty_set_mode(h, UV_TTY_MODE_NORMAL);
    if (rc == 0) st->termios_saved = 0;
  }
  if (rc == 0) rc = restore_termios(st);
  if (rc < 0) return push_fail(L, "stdin", rc);
  lua_pushboolean(L, 1);
  return 1;
}

/* tty stream:size() -> columns, rows | nil, message, code: the size of the
 * stream's terminal (uv_tty_get_winsize). */
static int ttystream_size(lua_State *L) {
  tulua__stream *s = tulua__stream_check(L, 1);
  int cols, rows;
  int rc =
      uv_tty_get_winsize((uv_tty_t *)tulua__stream_handle(s), &cols, &rows);
  if (rc < 0) return push_fail(L, "tty", rc);
  lua_pushinteger(L, cols);
  lua_pushinteger(L, rows);
  return 2;
}

int luaopen_tulua_tty(lua_State *L) {
  static const luaL_Reg fstream_methods[] = {
      {"read", fstream_read},           {"read_exactly", fstream_read_exactly},
      {"read_line", fstream_read_line}, {"lines", fstream_lines},
      {"read_all", fstream_read_all},   {"write", fstream_write},
      {"shutdown", fstream_shutdown},   {"close", fstream_close},
      {"is_closed", fstream_is_closed}, {NULL, NULL}};
  static const luaL_Reg fstream_meta[] = {{"__gc", fstream_gc},
                                          {"__close", fstream_close},
                                          {"__tostring", fstream_tostring},
                                          {NULL, NULL}};
  static const luaL_Reg tty_methods[] = {{"size", ttystream_size},
                                         {NULL, NULL}};
  static const luaL_Reg funcs[] = {{"stdin", tty_stdin},
                                   {"stdout", tty_stdout},
                                   {"stderr", tty_stderr},
                                   {"size", tty_size},
                                   {"is_terminal", tty_is_terminal},
                                   {"set_mode", tty_set_mode},
                                   {"reset_mode", tty_reset_mode},
                                   {NULL, NULL}};
  tulua__new_class(L, FSTREAM_MT, fstream_meta, fstream_methods);
  tulua__stream_register(L, TULUA_TTY, tty_methods);
  static const luaL_Reg state_meta[] = {{"__gc", state_gc}, {NULL, NULL}};
  tulua__new_class(L, STATE_MT, state_meta, NULL);
  luaL_newlibtable(L, funcs);
  /* the state: created before any stream, so collected after them */
  tty_state *st = lua_newuserdatauv(L, sizeof *st, 3);
  memset(st, 0, sizeof *st);
  st->flags[0] = st->flags[1] = st->flags[2] = -1;
  luaL_setmetatable(L, STATE_MT);
  luaL_setfuncs(L, funcs, 1);
  return 1;
}
