/* stream.c: uv_stream_t as Stream objects (tcp, pipe and tty streams) and
 * listening servers; the shared half of the modules 'tulua.net',
 * 'tulua.process' and 'tulua.tty'.
 *
 * Reading: once a task first reads, the stream keeps reading into its own
 * buffer until that holds HWM bytes (or what the waiting reader asked for,
 * if more), then stops until the buffer drains: a slow consumer never makes
 * memory grow without bound, and an echo loop does not toggle epoll at every
 * message. libuv reads into one 64 KiB scratch buffer per runtime (alloc_cb
 * and read_cb run back to back), and read_cb appends what came to the
 * stream's buffer (read_buffer.c), which is allocated at the first byte, so an
 * idle connection costs no buffer at all.
 *
 * A box that no task reads (process.run's pipes) can instead be read to
 * its end for C code (tulua__stream_read_to_end): no limit, and a callback
 * once the stream has ended.
 *
 * One task reads at a time: its wait is embedded in the box (rw). Writes
 * first try uv_try_write; only what the kernel did not take is copied into
 * a write op, and the writer waits until it is written: the backpressure.
 *
 * Ownership: a userdata points at a malloc'd box holding the handle. The
 * box is freed when both its close callback has run and every woken reader
 * has delivered (wakes counts those), whichever comes last. Write and
 * shutdown ops own themselves, as fs ops do. A connection a server
 * accepted holds its server's box until the connection is closed. */
#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <sys/socket.h>

#include "queue.h"
#include "stream.h"
#include "tls.h"

#define HWM       (64 * 1024) /* read ahead at most this much */
#define SCRATCH   (64 * 1024)
#define SERVER_MT "tulua.server"

static const char *const KIND_MT[] = {"tulua.tcp", "tulua.pipe", "tulua.tty"};
static const char *const KIND_NAME[] = {"tcp", "pipe", "tty"};
static const char *const KIND_WHAT[] = {"tcp stream", "pipe stream",
                                        "tty stream"};

struct tulua__server {
  union {
    uv_handle_t h;
    uv_stream_t s;
    uv_tcp_t tcp;
    uv_pipe_t pipe;
  } u;

  tulua__job accept_job; /* accepts pending connections, in the drain */
  tulua__waiter cw; /* a task in wait_closed() */
  tulua__bytes fds; /* descriptors (ints) accepted in connection_cb, for
                     * the drain */
  int conns; /* open connections (they hold the box) */
  int wakes; /* a woken wait_closed not yet delivered (it reads cw) */
  int ref; /* registry: the userdata while listening */
  int handler_ref; /* registry: the handler */
  int context_ref; /* registry: what each connection's task gets after the
                    * stream (tls.c's context), or LUA_NOREF */
  int conn_main_ref; /* registry: the function a connection task runs */
  tulua_runtime *rt;
  unsigned char kind, inited, closed, close_done, collected;
  int listen_err;
  /* the descriptor limit: see connection_cb */
  uv_prepare_t guard; /* hides libuv's spare before each poll */
  uv_check_t unguard; /* and gives it back after the poll */
  int hidden; /* libuv's spare while hidden, else -1 */
  int reserve; /* our spare descriptor, -1 when none */
  int closes; /* close callbacks still to come: the handle, the guards */
  long long refused; /* connections closed for want of a descriptor */
  long long warned; /* how many of them debug mode reported */
};

struct tulua__stream {
  union {
    uv_handle_t h;
    uv_stream_t s;
    uv_tcp_t tcp;
    uv_pipe_t pipe;
    uv_tty_t tty;
  } u;

  char *scratch; /* the runtime's read scratch (alloc_cb) */
  tulua__rbuf rb; /* unread bytes, and what the waiting reader wants */
  tulua__waiter rw; /* the task waiting in a read */
  tulua__server *server; /* accepted by this server, or NULL */
  int wakes; /* woken reads not yet delivered */
  unsigned char kind, inited, closed, close_done, reading;
  unsigned char busy; /* a task waits in a read */
  unsigned char readahead; /* read on when nobody waits (not stdin) */
  unsigned char eio_is_eof; /* a pty's master: EIO is its end */
  unsigned char hs_wait; /* the reader waits for the TLS handshake */
  tulua__tls *tls; /* the TLS layer (tls.c), or NULL */
  tulua__stream_end_fn on_end; /* reading to the end for C (read_to_end) */
  void *end_ud;
};

/* ---- boxes and release ---- */

/* Whether connection_cb queued a descriptor that take_fd would take. */
static int fd_waiting(const tulua__server *srv) {
  return tulua__bytes_avail(&srv->fds) >= sizeof(int);
}

/* Takes the first descriptor connection_cb queued; -1 when none waits. */
static int take_fd(tulua__server *srv) {
  int fd;
  if (!fd_waiting(srv)) return -1;
  memcpy(&fd, srv->fds.base + srv->fds.pos, sizeof fd);
  tulua__bytes_consume(&srv->fds, sizeof fd);
  return fd;
}

/* The box goes once its handle is closed, its userdata collected (which
 * reads it until then), its connections closed and its woken waiter gone. */
static void maybe_free_server(tulua__server *srv) {
  if (srv->close_done && srv->collected && srv->conns == 0 && srv->wakes == 0) {
    tulua__bytes_free(&srv->fds);
    free(srv);
  }
}

/* Wakes the task in wait_closed once the server and its connections are
 * closed; the box stays until that task has delivered. */
static void wake_closed(tulua__server *srv) {
  if (srv->closed && srv->conns == 0 && tulua__wake(&srv->cw)) srv->wakes++;
}

static void maybe_free(tulua__stream *s) {
  if (!s->close_done || s->wakes > 0) return;
  if (s->server != NULL) {
    s->server->conns--;
    wake_closed(s->server);
    maybe_free_server(s->server);
  }
  if (s->tls != NULL) tulua__tls_free(s->tls);
  tulua__bytes_free(&s->rb.b);
  free(s);
}

static void close_cb(uv_handle_t *h) {
  tulua__stream *s = h->data;
  s->close_done = 1;
  maybe_free(s);
}

/* Closes the stream once: a waiting reader is woken (it gets "closed"),
 * pending writes call back with UV_ECANCELED. */
static void release(tulua__stream **p) {
  tulua__stream *s = *p;
  if (s == NULL) return;
  *p = NULL;
  if (s->tls != NULL && s->inited) tulua__tls_close(s->tls);
  s->closed = 1;
  if (s->rw.task != NULL) {
    s->wakes++;
    tulua__wake(&s->rw);
  }
  if (s->inited)
    uv_close(&s->u.h, close_cb);
  else
    close_cb(&s->u.h);
}

static tulua__stream **to_stream(lua_State *L, int idx) {
  void *p = lua_touserdata(L, idx);
  if (p == NULL || !lua_getmetatable(L, idx)) return NULL;
  if (lua_rawequal(L, -1, lua_upvalueindex(1))) { /* a method's own kind */
    lua_pop(L, 1);
    return p;
  }
  for (int k = TULUA_TCP; k <= TULUA_TTY; k++) {
    lua_rawgetp(L, LUA_REGISTRYINDEX, &KIND_MT[k]); /* no string hashing */
    int same = lua_rawequal(L, -1, -2);
    lua_pop(L, 1);
    if (same) {
      lua_pop(L, 1);
      return p;
    }
  }
  lua_pop(L, 1);
  return NULL;
}

static tulua__stream **check_box(lua_State *L, int idx) {
  tulua__stream **p = to_stream(L, idx);
  if (p == NULL) luaL_typeerror(L, idx, "stream");
  return p;
}

/* The kind of the stream at idx, even closed (for messages). */
static const char *kind_name(lua_State *L, int idx) {
  const char *name = "stream";
  int t = luaL_getmetafield(L, idx, "__name");
  if (t == LUA_TSTRING) /* the metatable keeps the string alive */
    name = lua_tostring(L, -1) + 6; /* after "tulua." */
  if (t != LUA_TNIL) lua_pop(L, 1);
  return name;
}

tulua__stream *tulua__stream_check(lua_State *L, int idx) {
  tulua__stream **p = check_box(L, idx);
  if (*p == NULL)
    luaL_error(L, "attempt to use a closed %s stream", kind_name(L, idx));
  return *p;
}

char *tulua__stream_scratch(lua_State *L) {
  static const char key = 0; /* its address keys the registry */
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &key) != LUA_TUSERDATA) {
    lua_pop(L, 1);
    lua_newuserdatauv(L, SCRATCH, 0);
    lua_pushvalue(L, -1);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &key);
  }
  char *p = lua_touserdata(L, -1);
  lua_pop(L, 1); /* the registry keeps it until lua_close */
  return p;
}

tulua__stream *tulua__stream_alloc(char *scratch, tulua__stream_kind kind) {
  tulua__stream *s = calloc(1, sizeof *s);
  if (s == NULL) return NULL;
  s->kind = (unsigned char)kind;
  s->scratch = scratch;
  s->readahead = 1;
  s->u.h.data = s;
  return s;
}

void tulua__stream_readahead(tulua__stream *s, int on) {
  s->readahead = (unsigned char)(on != 0);
}

void tulua__stream_eio_is_eof(tulua__stream *s) {
  s->eio_is_eof = 1;
}

void tulua__stream_push(lua_State *L, tulua__stream *s) {
  tulua__stream **p = lua_newuserdatauv(L, sizeof *p, 0);
  *p = s;
  luaL_setmetatable(L, KIND_MT[s->kind]);
}

void tulua__stream_discard(tulua__stream *s) {
  tulua__stream *p = s;
  release(&p);
}

tulua__stream *tulua__stream_new(lua_State *L, tulua__stream_kind kind) {
  tulua__stream **p = lua_newuserdatauv(L, sizeof *p, 0);
  *p = NULL;
  luaL_setmetatable(L, KIND_MT[kind]);
  tulua__stream *s = tulua__stream_alloc(tulua__stream_scratch(L), kind);
  if (s == NULL) luaL_error(L, "not enough memory");
  *p = s;
  return s;
}

uv_stream_t *tulua__stream_handle(tulua__stream *s) {
  return &s->u.s;
}

void tulua__stream_ready(tulua__stream *s) {
  s->inited = 1;
  s->u.h.data = s; /* uv_*_init may have cleared it */
}

/* ---- reading ---- */

/* Whether the waiting reader can be served now. */
static int satisfied(tulua__stream *s) {
  if (s->hs_wait)
    return s->closed || s->rb.err || s->rb.eof ||
           tulua__tls_state(s->tls) != TULUA__TLS_HANDSHAKE;
  return s->closed || tulua__rbuf_satisfied(&s->rb);
}

/* How much the buffer may hold before reading stops: what the waiting
 * reader needs, and HWM more when the stream reads ahead. */
static size_t limit(const tulua__stream *s) {
  if (s->on_end != NULL) return SIZE_MAX; /* its reader wants it all */
  size_t want = s->busy ? s->rb.want + s->rb.seplen + 1 : 0;
  if (!s->readahead) return s->busy ? want : 0;
  return want > HWM ? want : HWM;
}

static void alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  tulua__stream *s = h->data;
  (void)suggested;
  *buf = uv_buf_init(s->scratch, SCRATCH);
}

static void stop_reading(tulua__stream *s) {
  if (s->reading) {
    uv_read_stop(&s->u.s);
    s->reading = 0;
  }
}

/* After a read: a stream that reads ahead goes on without keeping the
 * process alive (nobody waits on it); one that does not stops. */
static void idle_reading(tulua__stream *s) {
  if (!s->readahead)
    stop_reading(s);
  else if (s->inited && !s->closed)
    uv_unref(&s->u.h);
}

static void read_cb(uv_stream_t *h, ssize_t nread, const uv_buf_t *buf) {
  tulua__stream *s = h->data; /* no Lua API here */
  if (nread > 0 && s->tls != NULL) {
    tulua__tls_input(s->tls, buf->base, (size_t)nread);
    if (s->rb.eof || s->rb.err) stop_reading(s);
  } else if (nread > 0) {
    int rc = tulua__bytes_append(&s->rb.b, buf->base, (size_t)nread);
    if (rc < 0) {
      s->rb.err = rc;
      stop_reading(s);
    }
  } else if (nread == UV_EOF || (nread == UV_EIO && s->eio_is_eof)) {
    if (s->tls != NULL)
      tulua__tls_eof(s->tls); /* truncated unless close_notify came */
    else
      s->rb.eof = 1;
    stop_reading(s);
  } else if (nread < 0) {
    s->rb.err = (int)nread;
    stop_reading(s);
  }
  if (s->reading && tulua__bytes_avail(&s->rb.b) >= limit(s)) stop_reading(s);
  if (s->on_end != NULL && (s->rb.eof || s->rb.err)) {
    tulua__stream_end_fn on_end = s->on_end;
    s->on_end = NULL; /* once */
    on_end(s, s->rb.err, s->end_ud); /* last: it may discard s */
    return;
  }
  if (s->rw.task != NULL && satisfied(s)) {
    s->wakes++;
    tulua__wake(&s->rw);
  }
}

/* Reads ahead again once the buffer has room. */
static int resume_reading(tulua__stream *s) {
  if (s->reading || s->rb.eof || s->rb.err || s->closed) return 0;
  if (tulua__bytes_avail(&s->rb.b) >= limit(s)) return 0;
  int rc = uv_read_start(&s->u.s, alloc_cb, read_cb);
  if (rc == 0) s->reading = 1;
  return rc;
}

int tulua__stream_read_to_end(tulua__stream *s, tulua__stream_end_fn on_end,
                              void *ud) {
  s->on_end = on_end;
  s->end_ud = ud;
  int rc = resume_reading(s);
  if (rc < 0) s->on_end = NULL;
  return rc;
}

void tulua__stream_take(tulua__stream *s, tulua__bytes *out) {
  *out = s->rb.b;
  memset(&s->rb.b, 0, sizeof s->rb.b);
}

/* Pushes the answer to the read (satisfied, or the stream ended). */
static int push_read(lua_State *L, tulua__stream *s) {
  if (s->closed) {
    lua_pushnil(L);
    lua_pushfstring(L, "%s closed", KIND_WHAT[s->kind]);
    lua_pushliteral(L, "ECANCELED");
    return 3;
  }
  if (s->hs_wait) { /* the handshake ended, or the stream did */
    s->hs_wait = 0;
    if (tulua__tls_state(s->tls) == TULUA__TLS_OPEN) {
      lua_pushboolean(L, 1);
      resume_reading(s);
      return 1;
    }
    s->rb.mode = TULUA__R_ANY; /* its error, as any read would see it */
    s->rb.want = 1;
  }
  int n =
      tulua__rbuf_push(L, &s->rb, KIND_WHAT[s->kind], KIND_NAME[s->kind], 1);
  resume_reading(s);
  return n;
}

static int read_deliver(lua_State *L, void *ud) {
  tulua__stream *s = ud;
  s->wakes--;
  if (s->close_done && s->wakes == 0) { /* closed and gone meanwhile */
    const char *kind = KIND_NAME[s->kind];
    maybe_free(s);
    lua_pushnil(L);
    lua_pushfstring(L, "%s stream closed", kind);
    lua_pushliteral(L, "ECANCELED");
    return 3;
  }
  /* a cancelled reader takes nothing: the bytes stay for the next one */
  int n = tulua__cancel_pending(L) ? 0 : push_read(L, s);
  s->hs_wait = 0;
  s->busy = 0; /* after push_read: its limit() still counted the reader */
  if (!s->closed) idle_reading(s);
  return n;
}

static void read_cancel(void *ud) {
  tulua__stream *s = ud; /* what came stays buffered for the next read */
  s->busy = 0;
  s->hs_wait = 0; /* a cancelled handshake leaves the stream unusable */
  idle_reading(s);
}

/* Writes the address of the tcp or pipe handle h into where (size bytes):
 * its peer's (peer = 1; a pipe without one gives its own path) or its
 * own; "" for none, or for a tty. */
static void handle_address(char *where, size_t size, int kind,
                           const uv_handle_t *h, int peer) {
  struct sockaddr_storage ss;
  struct sockaddr *sa = (struct sockaddr *)&ss;
  where[0] = '\0';
  if (kind == TULUA_TCP) {
    const uv_tcp_t *tcp = (const uv_tcp_t *)h;
    int len = sizeof ss;
    int rc = peer ? uv_tcp_getpeername(tcp, sa, &len)
                  : uv_tcp_getsockname(tcp, sa, &len);
    if (rc == 0) tulua__format_sockaddr(where, size, sa);
  } else if (kind == TULUA_PIPE) {
    const uv_pipe_t *pipe = (const uv_pipe_t *)h;
    size_t len = size;
    int rc = peer ? uv_pipe_getpeername(pipe, where, &len) : UV_ENOTCONN;
    if (rc != 0 || len == 0) {
      len = size;
      if (uv_pipe_getsockname(pipe, where, &len) != 0) len = 0;
    }
    where[len < size ? len : size - 1] = '\0';
  }
}

/* The detail of a wait on the stream h (tulua --ps): its kind and its
 * peer, "tcp 127.0.0.1:5000", "pipe /run/x.sock". */
static int describe_stream(char *buf, size_t size, const uv_stream_t *h) {
  const tulua__stream *s = tulua__container_of(h, tulua__stream, u.s);
  char where[256];
  handle_address(where, sizeof where, s->kind, &s->u.h, 1);
  return snprintf(buf, size, where[0] ? "%s %s" : "%s", KIND_NAME[s->kind],
                  where);
}

static int describe_reader(char *buf, size_t size, const void *ud) {
  return describe_stream(buf, size, &((const tulua__stream *)ud)->u.s);
}

/* Serves the read requested in s->rb at once if it can, else waits (a
 * tail call). */
static int start_read(lua_State *L, tulua__stream *s, const char *op) {
  if (satisfied(s)) return push_read(L, s);
  tulua__check_wait(L, op);
  tulua__wait_detail(L, describe_reader);
  if (s->tls != NULL) tulua__tls_flush(s->tls); /* the reader waits */
  s->busy = 1; /* before resume_reading: limit() counts the reader */
  int rc = resume_reading(s);
  if (rc < 0) {
    s->busy = 0;
    return push_fail(L, KIND_NAME[s->kind], rc);
  }
  uv_ref(&s->u.h); /* a task waits: the loop must go on */
  return tulua__wait(L, &s->rw, read_deliver, read_cancel, s);
}

/* The read methods: a request, then start_read. */
static int read_mode(lua_State *L, int mode, const char *op) {
  tulua__stream *s = tulua__stream_check(L, 1);
  if (s->busy) return luaL_error(L, "another task is reading this stream");
  if (!tulua__rbuf_request(L, &s->rb, mode)) return 1;
  return start_read(L, s, op);
}

static int stream_read(lua_State *L) {
  return read_mode(L, TULUA__R_ANY, "read");
}

static int stream_read_exactly(lua_State *L) {
  return read_mode(L, TULUA__R_EXACT, "read_exactly");
}

static int stream_read_line(lua_State *L) {
  return read_mode(L, TULUA__R_LINE, "read_line");
}

static int stream_read_all(lua_State *L) {
  return read_mode(L, TULUA__R_ALL, "read_all");
}

static int stream_lines(lua_State *L) {
  tulua__stream_check(L, 1);
  return tulua__rbuf_lines(L);
}

/* ---- writing ---- */

/* What write and shutdown wait for: a request whose status is the whole
 * result. The head of both ops, so that one deliver serves them. */
typedef struct {
  tulua__waiter w;
  const char *what; /* "tcp stream", for messages */
  const char *verb; /* "write", "shutdown": the subject of failures */
  int status;
} result_op;

static int result_deliver(lua_State *L, void *ud) {
  result_op *op = ud; /* the head of the op: freeing it frees the op */
  int status = op->status;
  const char *what = op->what, *verb = op->verb;
  free(op);
  if (status == UV_ECANCELED) {
    lua_pushnil(L);
    lua_pushfstring(L, "%s closed", what);
    lua_pushliteral(L, "ECANCELED");
    return 3;
  }
  if (status < 0) return push_fail(L, verb, status);
  lua_pushboolean(L, 1);
  return 1;
}

/* The callback side: records the status and wakes the task, or frees the
 * op when the task is gone. No Lua API. */
static void result_done(result_op *op, int status) {
  op->status = status;
  if (!tulua__wake(&op->w)) free(op);
}

typedef struct {
  result_op r; /* first: see result_deliver */
  uv_write_t req;
  char data[]; /* what uv_try_write did not take */
} write_op;

static void write_cb(uv_write_t *req, int status) {
  result_done(req->data, status);
}

static int describe_writer(char *buf, size_t size, const void *ud) {
  return describe_stream(buf, size, ((const write_op *)ud)->req.handle);
}

/* write(data): true once the kernel has it all; waits while it does not
 * (the backpressure); nil, message, code on failure. */
static int stream_write(lua_State *L) {
  tulua__stream *s = tulua__stream_check(L, 1);
  size_t len;
  const char *data = luaL_checklstring(L, 2, &len);
  if (s->tls != NULL) return tulua__tls_write(L, s->tls, data, len);
  size_t done = 0;
  if (uv_stream_get_write_queue_size(&s->u.s) == 0) { /* keep the order */
    int rc = len ? uv_try_write(&s->u.s, &(uv_buf_t){(char *)data, len}, 1) : 0;
    if (rc < 0 && rc != UV_EAGAIN) return push_fail(L, "write", rc);
    if (rc > 0) done = (size_t)rc;
    if (done == len) {
      lua_pushboolean(L, 1);
      return 1;
    }
  }
  tulua__check_wait(L, "write");
  write_op *op = malloc(sizeof *op + (len - done));
  if (op == NULL) return push_fail(L, "write", UV_ENOMEM);
  memcpy(op->data, data + done, len - done);
  op->r.what = KIND_WHAT[s->kind];
  op->r.verb = "write";
  op->req.data = op;
  uv_buf_t b = uv_buf_init(op->data, (unsigned)(len - done));
  int rc = uv_write(&op->req, &s->u.s, &b, 1, write_cb);
  if (rc < 0) {
    free(op);
    return push_fail(L, "write", rc);
  }
  tulua__wait_detail(L, describe_writer);
  return tulua__wait(L, &op->r.w, result_deliver, NULL, op);
}

typedef struct {
  result_op r; /* first: see result_deliver */
  uv_shutdown_t req;
} shutdown_op;

static void shutdown_cb(uv_shutdown_t *req, int status) {
  result_done(req->data, status);
}

static int describe_shutdown(char *buf, size_t size, const void *ud) {
  return describe_stream(buf, size, ((const shutdown_op *)ud)->req.handle);
}

/* shutdown(): ends the writing half once queued writes are done. */
static int stream_shutdown(lua_State *L) {
  tulua__stream *s = tulua__stream_check(L, 1);
  tulua__check_wait(L, "shutdown");
  if (s->tls != NULL) return tulua__tls_shutdown(L, s->tls);
  shutdown_op *op = malloc(sizeof *op);
  if (op == NULL) return push_fail(L, "shutdown", UV_ENOMEM);
  op->req.data = op;
  op->r.what = KIND_WHAT[s->kind];
  op->r.verb = "shutdown";
  int rc = uv_shutdown(&op->req, &s->u.s, shutdown_cb);
  if (rc < 0) {
    free(op);
    return push_fail(L, "shutdown", rc);
  }
  tulua__wait_detail(L, describe_shutdown);
  return tulua__wait(L, &op->r.w, result_deliver, NULL, op);
}

/* ---- the TLS layer's side (tls.c) ---- */

tulua__tls *tulua__stream_tls(tulua__stream *s) {
  return s->tls;
}

tulua__rbuf *tulua__stream_rbuf(tulua__stream *s) {
  return &s->rb;
}

typedef struct {
  uv_write_t req;
  tulua__send_fn done;
  void *ud;
  char data[]; /* what uv_try_write did not take */
} send_op;

static void send_cb(uv_write_t *req, int status) {
  send_op *op = req->data;
  if (op->done != NULL) op->done(op->ud, status);
  free(op);
}

int tulua__stream_send(tulua__stream *s, const char *p, size_t n,
                       tulua__send_fn done, void *ud) {
  if (s->closed) return UV_ECANCELED;
  size_t sent = 0;
  if (uv_stream_get_write_queue_size(&s->u.s) == 0) { /* keep the order */
    int rc = n ? uv_try_write(&s->u.s, &(uv_buf_t){(char *)p, n}, 1) : 0;
    if (rc < 0 && rc != UV_EAGAIN) return rc;
    if (rc > 0) sent = (size_t)rc;
    if (sent == n) return 0;
  }
  send_op *op = malloc(sizeof *op + (n - sent));
  if (op == NULL) return UV_ENOMEM;
  memcpy(op->data, p + sent, n - sent);
  op->done = done;
  op->ud = ud;
  op->req.data = op;
  uv_buf_t b = uv_buf_init(op->data, (unsigned)(n - sent));
  int rc = uv_write(&op->req, &s->u.s, &b, 1, send_cb);
  if (rc < 0) {
    free(op);
    return rc;
  }
  return 1;
}

typedef struct {
  uv_shutdown_t req;
  tulua__send_fn done;
  void *ud;
} send_shutdown_op;

static void send_shutdown_cb(uv_shutdown_t *req, int status) {
  send_shutdown_op *op = req->data;
  op->done(op->ud, status);
  free(op);
}

int tulua__stream_send_shutdown(tulua__stream *s, tulua__send_fn done,
                                void *ud) {
  if (s->closed) return UV_ECANCELED;
  send_shutdown_op *op = malloc(sizeof *op);
  if (op == NULL) return UV_ENOMEM;
  op->done = done;
  op->ud = ud;
  op->req.data = op;
  int rc = uv_shutdown(&op->req, &s->u.s, send_shutdown_cb);
  if (rc < 0) free(op);
  return rc;
}

int tulua__stream_start_tls(lua_State *L, tulua__stream *s, tulua__tls *t) {
  s->tls = t;
  s->hs_wait = 1;
  /* records go out whole, each in one write: Nagle would only hold the
   * last one back until the peer's ACK (as Go and Node, no delay) */
  if (s->kind == TULUA_TCP) (void)uv_tcp_nodelay(&s->u.tcp, 1);
  tulua__tls_begin(t, s); /* the bytes read ahead are the peer's first */
  if (s->rb.eof || s->rb.err) stop_reading(s);
  lua_settop(L, 1);
  return start_read(L, s, "start_tls");
}

void tulua__stream_tls_failed(tulua__stream *s) {
  stop_reading(s);
  if (s->rw.task != NULL && satisfied(s)) {
    s->wakes++;
    tulua__wake(&s->rw);
  }
}

void tulua__server_set_context(lua_State *L, tulua__server *srv, int idx) {
  lua_pushvalue(L, idx);
  luaL_unref(L, LUA_REGISTRYINDEX, srv->context_ref);
  srv->context_ref = lua_isnil(L, -1) ? (lua_pop(L, 1), LUA_NOREF)
                                      : luaL_ref(L, LUA_REGISTRYINDEX);
}

static int stream_close(lua_State *L) {
  release(check_box(L, 1));
  return 0;
}

static int stream_is_closed(lua_State *L) {
  lua_pushboolean(L, *check_box(L, 1) == NULL);
  return 1;
}

/* pipe:peer_name(): the path of the unix socket at the other end ("" for
 * an unnamed one). A pipe stream's own method: every pipe stream has it,
 * whichever module made it (net, process, tty). */
static int pipe_peer_name(lua_State *L) {
  tulua__stream *s = tulua__stream_check(L, 1);
  char path[1024];
  size_t len = sizeof path;
  int rc = uv_pipe_getpeername(&s->u.pipe, path, &len);
  if (rc < 0) return push_fail(L, "peer_name", rc);
  lua_pushlstring(L, path, len);
  return 1;
}

static int stream_tostring(lua_State *L) {
  tulua__stream **p = check_box(L, 1);
  lua_pushfstring(L, "%s stream (%s)", kind_name(L, 1), *p ? "open" : "closed");
  return 1;
}

void tulua__stream_register(lua_State *L, tulua__stream_kind kind,
                            const luaL_Reg *extra) {
  tulua__ignore_sigpipe();
  static const luaL_Reg methods[] = {
      {"read", stream_read},           {"read_exactly", stream_read_exactly},
      {"read_line", stream_read_line}, {"lines", stream_lines},
      {"read_all", stream_read_all},   {"write", stream_write},
      {"shutdown", stream_shutdown},   {"close", stream_close},
      {"is_closed", stream_is_closed}, {NULL, NULL}};
  static const luaL_Reg meta[] = {{"__gc", stream_close},
                                  {"__close", stream_close},
                                  {"__tostring", stream_tostring},
                                  {NULL, NULL}};
  if (luaL_newmetatable(L, KIND_MT[kind])) {
    /* the shared methods get their kind's metatable as upvalue 1: to_stream
     * checks a stream with one comparison */
    lua_pushvalue(L, -1);
    luaL_setfuncs(L, meta, 1);
    lua_createtable(L, 0, sizeof methods / sizeof methods[0]);
    lua_pushvalue(L, -2);
    luaL_setfuncs(L, methods, 1);
    if (kind == TULUA_PIPE) {
      lua_pushvalue(L, -2);
      lua_pushcclosure(L, pipe_peer_name, 1);
      lua_setfield(L, -2, "peer_name");
    }
    lua_setfield(L, -2, "__index");
    lua_pushvalue(L, -1); /* also keyed by address, for to_stream */
    lua_rawsetp(L, LUA_REGISTRYINDEX, &KIND_MT[kind]);
  }
  lua_getfield(L, -1, "__index"); /* a later registration adds its own */
  if (extra) luaL_setfuncs(L, extra, 0);
  lua_pop(L, 2);
}

/* ---- servers ---- */

static void server_close_cb(uv_handle_t *h) {
  tulua__server *srv = h->data;
  if (--srv->closes > 0) return; /* the other handle's callback is to come */
  srv->close_done = 1;
  maybe_free_server(srv);
}

static tulua__server **to_server(lua_State *L, int idx) {
  return luaL_checkudata(L, idx, SERVER_MT);
}

tulua__server *tulua__server_check(lua_State *L, int idx) {
  tulua__server **p = to_server(L, idx);
  if (*p == NULL || (*p)->closed)
    luaL_error(L, "attempt to use a closed server");
  return *p;
}

/* Stops accepting, once. A task in wait_closed is woken when the last
 * connection has closed too. The userdata keeps its box (for
 * wait_closed and address) until it is collected. */
static void server_stop(lua_State *L, tulua__server *srv) {
  if (srv->closed) return;
  srv->closed = 1;
  tulua__unpost(srv->rt, &srv->accept_job);
  int fd;
  while ((fd = take_fd(srv)) >= 0)
    close(fd); /* unserved */
  luaL_unref(L, LUA_REGISTRYINDEX, srv->ref);
  luaL_unref(L, LUA_REGISTRYINDEX, srv->handler_ref);
  luaL_unref(L, LUA_REGISTRYINDEX, srv->conn_main_ref);
  luaL_unref(L, LUA_REGISTRYINDEX, srv->context_ref);
  srv->ref = srv->handler_ref = srv->conn_main_ref = LUA_NOREF;
  srv->context_ref = LUA_NOREF;
  wake_closed(srv);
  if (srv->reserve >= 0) close(srv->reserve);
  srv->reserve = -1;
  srv->closes = 1;
  if (srv->guard.type == UV_PREPARE) { /* listening started both */
    srv->closes += 2;
    uv_close((uv_handle_t *)&srv->guard, server_close_cb);
    uv_close((uv_handle_t *)&srv->unguard, server_close_cb);
    if (srv->hidden >= 0) { /* closed during the poll: libuv's again */
      srv->u.h.loop->emfile_fd = srv->hidden;
      srv->hidden = -1;
    }
  }
  if (srv->inited)
    uv_close(&srv->u.h, server_close_cb);
  else
    server_close_cb(&srv->u.h);
}

/* Warns (lua_warning: shown in debug mode, or with warnings on) of the
 * connections srv closed at the descriptor limit since the last warning.
 * In the drain. */
static void warn_refused(lua_State *L, tulua__server *srv) {
  long long n = srv->refused - srv->warned;
  srv->warned = srv->refused;
  char where[256];
  handle_address(where, sizeof where, srv->kind, &srv->u.h, 0);
  if (where[0] == '\0') strcpy(where, "?");
  char msg[400];
  snprintf(msg, sizeof msg,
           "server %s closed %lld connection%s at the descriptor "
           "limit (EMFILE)",
           where, n, n == 1 ? "" : "s");
  lua_warning(L, msg, 0);
}

static void accept_all(lua_State *L, tulua__job *job) {
  tulua__server *srv = tulua__container_of(job, tulua__server, accept_job);
  if (srv->refused > srv->warned) warn_refused(L, srv);
  while (fd_waiting(srv) && !srv->closed) {
    int top = lua_gettop(L);
    lua_rawgeti(L, LUA_REGISTRYINDEX, srv->conn_main_ref);
    lua_rawgeti(L, LUA_REGISTRYINDEX, srv->ref);
    lua_rawgeti(L, LUA_REGISTRYINDEX, srv->handler_ref);
    lua_rawgeti(L, LUA_REGISTRYINDEX, srv->context_ref); /* nil if none */
    tulua__stream *s = tulua__stream_new(L, (tulua__stream_kind)srv->kind);
    int fd = take_fd(srv); /* taken once nothing above can raise */
    int rc = srv->kind == TULUA_TCP
                 ? uv_tcp_init(tulua__loop(L), &s->u.tcp)
                 : uv_pipe_init(tulua__loop(L), &s->u.pipe, 0);
    if (rc == 0) {
      tulua__stream_ready(s);
      rc = srv->kind == TULUA_TCP ? uv_tcp_open(&s->u.tcp, fd)
                                  : uv_pipe_open(&s->u.pipe, fd);
    }
    if (rc < 0) { /* nothing to serve */
      close(fd);
      release(lua_touserdata(L, -1));
      lua_settop(L, top);
      continue;
    }
    s->server = srv;
    srv->conns++;
    lua_insert(L, -2); /* the stream before the context */
    tulua__spawn(L, 4); /* conn_main(server, handler, stream, context) */
    lua_settop(L, top);
  }
}

/* At the descriptor limit, a connection nobody accepts would stay in the
 * backlog, and the listening socket would wake every poll. libuv's answer
 * (uv__emfile_trick) frees a spare descriptor, accepts and closes what is
 * pending, and takes the spare again, but tells nobody. So each listening
 * server keeps a spare of its own, and its guard, a prepare handle, hides
 * libuv's spare (loop->emfile_fd, a field of libuv 1.44's unix loop)
 * during each poll: libuv then reports EMFILE here, and drain_refused does
 * the same work, counting. The spare stays open, hidden, so that the
 * process's descriptors do not change; the check handle after the poll
 * gives it back. Both are unreferenced: they keep nothing alive. */
static void guard_cb(uv_prepare_t *h) {
  tulua__server *srv = h->data;
  if (h->loop->emfile_fd >= 0 && srv->hidden < 0) {
    srv->hidden = h->loop->emfile_fd;
    h->loop->emfile_fd = -1;
  }
  if (srv->reserve < 0) srv->reserve = open("/dev/null", O_RDONLY | O_CLOEXEC);
}

static void unguard_cb(uv_check_t *h) {
  tulua__server *srv = h->data;
  if (srv->hidden < 0) return;
  if (h->loop->emfile_fd < 0)
    h->loop->emfile_fd = srv->hidden;
  else
    close(srv->hidden); /* libuv opened another meanwhile */
  srv->hidden = -1;
}

/* Accepts and closes what waits in srv's backlog, with the spare freed for
 * it, and counts the connections. The spare stays free until the guard
 * takes it again before the next poll: libuv tries to accept once more
 * when this returns, and only a free descriptor makes that accept end its
 * loop (EAGAIN; at the limit the kernel says EMFILE before looking at the
 * backlog). Without a spare (another descriptor took its place), nothing
 * can be drained and libuv calls again until one is free. */
static void drain_refused(tulua__server *srv) {
  if (srv->reserve < 0) return;
  close(srv->reserve);
  srv->reserve = -1;
  uv_os_fd_t lfd;
  if (uv_fileno(&srv->u.h, &lfd) == 0) {
    for (;;) {
      int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
      if (fd >= 0) {
        close(fd);
        srv->refused++;
      } else if (errno != EINTR && errno != ECONNABORTED) {
        break;
      }
    }
  }
}

static void connection_cb(uv_stream_t *h, int status) {
  tulua__server *srv = h->data; /* no Lua API here */
  if (status == UV_EMFILE || status == UV_ENFILE) {
    drain_refused(srv);
    tulua__post(srv->rt, &srv->accept_job); /* to warn in debug mode */
    return;
  }
  if (status < 0) return; /* the next one may work */
  /* The descriptor libuv accepted is taken here (accepted_fd, a field of
   * libuv 1.44's unix streams, as emfile_fd above) and handed to a task in
   * the drain. Left to a uv_accept there, libuv would stop polling the
   * listening socket until then: two epoll_ctl calls and a loop turn per
   * connection, one connection per turn. Taken, libuv goes on accepting
   * until the backlog is empty. */
  int fd = h->accepted_fd;
  h->accepted_fd = -1;
  if (tulua__bytes_append(&srv->fds, (const char *)&fd, sizeof fd) < 0) {
    close(fd); /* out of memory: refused, as at the limit (the job warns) */
    srv->refused++;
  }
  tulua__post(srv->rt, &srv->accept_job);
}

/* The function each connection's task runs: the handler, then the
 * stream's close whatever happens. With a TLS context, the handshake
 * first: a client that fails it is closed without running the handler.
 * The handler's call stays on line 3: tracebacks show "server:3". */
static const char CONN_MAIN[] =
    "local _, handler, stream, context = ...\n"
    "local s <close> = stream; if context ~= nil and not s:start_tls(context) "
    "then return end\n"
    "return handler(s)\n";

tulua__server *tulua__server_new(lua_State *L, tulua__stream_kind kind,
                                 int handler_idx) {
  handler_idx = lua_absindex(L, handler_idx);
  tulua__server **p = lua_newuserdatauv(L, sizeof *p, 0);
  *p = NULL;
  luaL_setmetatable(L, SERVER_MT);
  tulua__server *srv = calloc(1, sizeof *srv);
  if (srv == NULL) luaL_error(L, "not enough memory");
  srv->kind = (unsigned char)kind;
  srv->rt = tulua__runtime(L);
  srv->ref = srv->handler_ref = srv->conn_main_ref = LUA_NOREF;
  srv->context_ref = LUA_NOREF;
  srv->reserve = srv->hidden = -1;
  srv->accept_job.run = accept_all;
  srv->u.h.data = srv;
  *p = srv;
  lua_pushvalue(L, handler_idx);
  srv->handler_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  if (luaL_loadbuffer(L, CONN_MAIN, sizeof CONN_MAIN - 1, "=server") != LUA_OK)
    lua_error(L);
  srv->conn_main_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  return srv;
}

uv_stream_t *tulua__server_handle(tulua__server *srv) {
  return &srv->u.s;
}

void tulua__server_ready(tulua__server *srv) {
  srv->inited = 1;
  srv->u.h.data = srv;
}

int tulua__server_listen(tulua__server *srv, int backlog) {
  int rc = uv_listen(&srv->u.s, backlog, connection_cb);
  if (rc < 0) return rc;
  srv->reserve = open("/dev/null", O_RDONLY | O_CLOEXEC);
  if (srv->reserve < 0) return uv_translate_sys_error(errno);
  uv_prepare_init(srv->u.h.loop, &srv->guard);
  srv->guard.data = srv;
  uv_prepare_start(&srv->guard, guard_cb);
  uv_unref((uv_handle_t *)&srv->guard);
  uv_check_init(srv->u.h.loop, &srv->unguard);
  srv->unguard.data = srv;
  uv_check_start(&srv->unguard, unguard_cb);
  uv_unref((uv_handle_t *)&srv->unguard);
  return 0;
}

static int server_close(lua_State *L) {
  tulua__server **p = to_server(L, 1);
  if (*p != NULL) server_stop(L, *p);
  return 0;
}

static int server_gc(lua_State *L) {
  tulua__server **p = to_server(L, 1);
  tulua__server *srv = *p;
  if (srv == NULL) return 0;
  *p = NULL;
  srv->collected = 1;
  server_stop(L, srv); /* only reached when closed or never listened */
  maybe_free_server(srv);
  return 0;
}

static int closed_deliver(lua_State *L, void *ud) {
  tulua__server *srv = ud;
  srv->wakes--;
  maybe_free_server(srv);
  lua_pushboolean(L, 1);
  return 1;
}

static void closed_cancel(void *ud) {
  (void)ud; /* the waiter is embedded: nothing to stop */
}

/* The detail of a wait in wait_closed (tulua --ps): the server's address
 * and its open connections. */
static int describe_server(char *buf, size_t size, const void *ud) {
  const tulua__server *srv = ud;
  char where[256];
  handle_address(where, sizeof where, srv->kind, &srv->u.h, 0);
  return snprintf(buf, size, "server %s, %d connections", where, srv->conns);
}

/* wait_closed(): waits until the server is closed and every connection it
 * accepted has closed. */
static int server_wait_closed(lua_State *L) {
  tulua__server **p = to_server(L, 1);
  tulua__server *srv = *p;
  if (srv == NULL || (srv->closed && srv->conns == 0)) {
    lua_pushboolean(L, 1);
    return 1;
  }
  if (srv->cw.task != NULL)
    return luaL_error(L, "another task waits for this server");
  tulua__check_wait(L, "wait_closed");
  tulua__wait_detail(L, describe_server);
  lua_settop(L, 1);
  return tulua__wait(L, &srv->cw, closed_deliver, closed_cancel, srv);
}

static int server_connections(lua_State *L) {
  tulua__server **p = to_server(L, 1);
  lua_pushinteger(L, *p ? (*p)->conns : 0);
  return 1;
}

/* server:refused() -> integer: how many connections the server closed at
 * once because the process had no descriptor left to accept them. */
static int server_refused(lua_State *L) {
  tulua__server **p = to_server(L, 1);
  lua_pushinteger(L, *p ? (lua_Integer)(*p)->refused : 0);
  return 1;
}

static int server_is_closed(lua_State *L) {
  tulua__server **p = to_server(L, 1);
  lua_pushboolean(L, *p == NULL || (*p)->closed);
  return 1;
}

static int server_tostring(lua_State *L) {
  tulua__server **p = to_server(L, 1);
  lua_pushfstring(L, "server (%s)",
                  *p && !(*p)->closed ? "listening" : "closed");
  return 1;
}

void tulua__server_register(lua_State *L, const luaL_Reg *extra) {
  static const luaL_Reg methods[] = {{"close", server_close},
                                     {"wait_closed", server_wait_closed},
                                     {"connections", server_connections},
                                     {"refused", server_refused},
                                     {"is_closed", server_is_closed},
                                     {NULL, NULL}};
  static const luaL_Reg meta[] = {{"__gc", server_gc},
                                  {"__close", server_close},
                                  {"__tostring", server_tostring},
                                  {NULL, NULL}};
  if (luaL_newmetatable(L, SERVER_MT)) {
    luaL_setfuncs(L, meta, 0);
    lua_newtable(L);
    luaL_setfuncs(L, methods, 0);
    lua_setfield(L, -2, "__index");
  }
  lua_getfield(L, -1, "__index");
  if (extra) luaL_setfuncs(L, extra, 0);
  lua_pop(L, 2);
}

void tulua__server_anchor(lua_State *L, tulua__server *srv) {
  lua_pushvalue(L, -1);
  srv->ref = luaL_ref(L, LUA_REGISTRYINDEX);
}
