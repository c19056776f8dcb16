/* file_stream.c: file streams, the stream methods over uv_fs on libuv's
 * thread pool, for a descriptor that cannot be polled (a regular file, a
 * character device such as /dev/null, or stdout and stderr that must stay
 * blocking); tty.c gives them as tty.stdin, tty.stdout and tty.stderr of
 * the module 'tulua.tty'. Their reads and results are those of stream.c's
 * streams (read_buffer.c parses both).
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
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "queue.h"
#include "file_stream.h"
#include "read_buffer.h"

#define FSTREAM_MT "tulua.file_stream"
#define CHUNK      (64 * 1024) /* a pool read asks for at least this */
#define CHUNK_MAX  (4 * 1024 * 1024) /* and at most this */

typedef struct fstream fstream;

typedef struct write_op {
  uv_fs_t req;
  tulua__waiter w;
  fstream *box; /* until the op leaves the queue */
  tulua__queue link; /* in box's writes */
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
  tulua__queue writes; /* write_op.link, in call order; the head is in
                        * flight */
  int wakes; /* woken tasks that have not delivered yet */
  unsigned char reading, busy, closed, collected, shut;
};

static void f_maybe_free(fstream *f) {
  if (!f->collected || f->reading || !tulua__queue_empty(&f->writes) ||
      f->wakes > 0)
    return;
  tulua__bytes_free(&f->rb.b);
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
  size_t n = tulua__bytes_avail(&rb->b), need = CHUNK;
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
  int rc = tulua__bytes_reserve(&f->rb.b, need);
  if (rc < 0) return rc;
  uv_buf_t b = {.base = f->rb.b.base + f->rb.b.len, .len = need};
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
    f->rb.b.len += (size_t)n;
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

/* The detail of a wait in a read (tulua --ps): the stream's name. */
static int describe_fstream(char *buf, size_t size, const void *ud) {
  return snprintf(buf, size, "%s", ((const fstream *)ud)->name);
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
  tulua__wait_detail(L, describe_fstream);
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

/* Returns the write in flight, or NULL. */
static write_op *w_head(fstream *f) {
  tulua__queue *q = tulua__queue_head(&f->writes);
  return q != NULL ? tulua__container_of(q, write_op, link) : NULL;
}

/* Starts the head of the queue. Returns 0 or a negative libuv code (then
 * the head was not started). No Lua API. */
static int w_start_head(fstream *f) {
  write_op *op = w_head(f);
  uv_buf_t b = {.base = op->data, .len = op->len};
  op->req.data = op;
  return uv_fs_write(f->loop, &op->req, f->fd, &b, 1, -1, w_cb);
}

/* Takes the head off the queue and hands it to its task, or frees it if the
 * task is gone. No Lua API. */
static void w_pop(fstream *f) {
  write_op *op = w_head(f);
  tulua__queue_remove(&op->link);
  op->box = NULL;
  if (!tulua__wake(&op->w)) free(op);
}

/* After the head's callback: starts the next write (those that cannot
 * start, or come after a close, end at once); once the queue is empty,
 * wakes a task in shutdown. May free f. No Lua API. */
static void w_advance(fstream *f) {
  write_op *op;
  while ((op = w_head(f)) != NULL) {
    if (f->closed) {
      op->status = UV_ECANCELED;
    } else {
      int rc = w_start_head(f);
      if (rc == 0) return;
      op->status = rc;
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
  int first = tulua__queue_empty(&f->writes);
  tulua__queue_insert_tail(&f->writes, &op->link);
  if (first) {
    int rc = w_start_head(f);
    if (rc < 0) { /* libuv will not call back */
      tulua__queue_remove(&op->link);
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
  if (tulua__queue_empty(&f->writes) || f->sw.task != NULL) {
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
  write_op *head = w_head(f);
  if (head != NULL) {
    uv_cancel((uv_req_t *)&head->req);
    while (head->link.next != &f->writes) { /* those after the head */
      write_op *op = tulua__container_of(head->link.next, write_op, link);
      tulua__queue_remove(&op->link);
      op->status = UV_ECANCELED;
      op->box = NULL;
      if (!tulua__wake(&op->w)) free(op);
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

void tulua__file_stream_push(lua_State *L, int fd, const char *name,
                             FILE *cfile) {
  fstream **p = lua_newuserdatauv(L, sizeof *p, 0);
  *p = NULL;
  luaL_setmetatable(L, FSTREAM_MT);
  fstream *f = calloc(1, sizeof *f);
  if (f == NULL) luaL_error(L, "not enough memory");
  f->loop = tulua__loop(L);
  f->fd = fd;
  f->name = name;
  f->cfile = cfile;
  tulua__queue_init(&f->writes);
  *p = f;
}

void tulua__file_stream_register(lua_State *L) {
  static const luaL_Reg methods[] = {
      {"read", fstream_read},           {"read_exactly", fstream_read_exactly},
      {"read_line", fstream_read_line}, {"lines", fstream_lines},
      {"read_all", fstream_read_all},   {"write", fstream_write},
      {"shutdown", fstream_shutdown},   {"close", fstream_close},
      {"is_closed", fstream_is_closed}, {NULL, NULL}};
  static const luaL_Reg meta[] = {{"__gc", fstream_gc},
                                  {"__close", fstream_close},
                                  {"__tostring", fstream_tostring},
                                  {NULL, NULL}};
  tulua__new_class(L, FSTREAM_MT, meta, methods);
}
