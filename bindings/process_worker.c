/* process_worker.c: the worker's end of the process pool's channel (see
 * process_pool.h): the port of a worker process's job runner
 * (lua/concurrent/_worker.lua), as process_pool.port_open and
 * process_pool.port in the module 'tulua._process_pool'.
 *
 * It reads the channel without libuv (non-blocking reads between jobs, so
 * that a cancel sent for a job queued here is seen before the job starts;
 * a poll handle while it waits for work) and writes replies with blocking
 * writes: the worker has nothing else to do meanwhile, and the parent
 * always reads. Jobs run under the job control of bindings/worker.c. */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#ifdef __linux__
#include <sys/prctl.h>
#endif
#include <unistd.h>

#include "queue.h"
#include "common.h"
#include "process_pool.h"
#include "trace.h"
#include "transfer.h"
#include "worker.h"

#define PORT_MT "tulua.process_port"

typedef struct cjob {
  tulua__queue node; /* in the port's jobs */
  uint32_t id;
  int cancelled;
  int traced; /* the owner traces: pace the collector for it */
  uint64_t gc_slow; /* ... and send back the steps this long (ns) */
  size_t len;
  char body[];
} cjob;

typedef struct {
  int fd; /* the channel; -1 until open (an io port: 0 once open) */
  const tulua__port_io *io; /* another transport's channel (MPI), or NULL */
  void *io_ud;
  const char *version; /* an io port's own version, which 'V' must match */
  char *mismatch; /* the 'V' that did not match */
  int eof; /* the parent closed it (or it failed): stop */
  tulua__bytes in;
  tulua__queue jobs; /* read, not taken yet */
  cjob *current; /* taken, not replied to yet */
  int cancel_current; /* a cancel for current was read */
  uint64_t started;
  char *paths, *init;
  size_t paths_len, init_len;
  int have_paths, have_init;
  int ready; /* told the parent */
  tulua__worker_ctx *ctx; /* its job control */
  uv_poll_t *poll; /* while waiting for work; freed by its close callback */
  tulua__waiter w;
  int waiting;
  tulua__bytes gc; /* slow collector steps for the next reply */
} port;

/* The slow steps a reply carries at most: the rest are dropped (a job
 * that runs for hours with a step a second). */
#define GC_MAX (256 * 1024)

static port *check_port(lua_State *L) {
  port *p = luaL_checkudata(L, 1, PORT_MT);
  if (p->fd < 0) luaL_error(L, "attempt to use a closed port");
  return p;
}

static char *copy_body(const char *body, size_t len) {
  char *c = malloc(len > 0 ? len : 1);
  if (c != NULL && len > 0) memcpy(c, body, len);
  return c;
}

/* Takes the complete frames read: jobs join the queue, a cancel marks its
 * job (queued: it will be skipped; taken: it must not start). */
static void port_parse(port *p) {
  for (;;) {
    size_t avail = p->in.len - p->in.pos;
    if (avail < 4) return;
    uint32_t size;
    memcpy(&size, p->in.base + p->in.pos, 4);
    if (size < HDR - 4) {
      p->eof = 1; /* garbage: not our parent */
      return;
    }
    if (avail - 4 < size) return;
    const char *f = p->in.base + p->in.pos + 4;
    const char *body = f + HDR - 4;
    size_t len = size - (HDR - 4);
    uint32_t id;
    memcpy(&id, f + 2, 4);
    p->in.pos += 4 + (size_t)size;
    switch (f[0]) {
      case 'J': {
        int traced = (f[1] & TULUA_JOB_TRACED) && len >= 8;
        uint64_t slow = 0;
        if (traced) {
          memcpy(&slow, body, 8);
          body += 8;
          len -= 8;
        }
        cjob *j = malloc(sizeof *j + len);
        if (j == NULL) { /* out of memory: stop; the parent sees a crash */
          p->eof = 1;
          return;
        }
        j->id = id;
        j->cancelled = 0;
        j->traced = traced;
        j->gc_slow = slow;
        j->len = len;
        memcpy(j->body, body, len);
        tulua__queue_insert_tail(&p->jobs, &j->node);
        break;
      }
      case 'C': {
        if (p->current != NULL && p->current->id == id) p->cancel_current = 1;
        tulua__queue *q;
        tulua__queue_foreach(q, &p->jobs) {
          cjob *j = tulua__container_of(q, cjob, node);
          if (j->id == id) j->cancelled = 1;
        }
        break;
      }
      case 'P':
        free(p->paths);
        p->paths = copy_body(body, len);
        p->paths_len = len;
        p->have_paths = p->paths != NULL;
        break;
      case 'V': /* the owner's version: a port that knows its own checks it */
        if (p->version != NULL && p->mismatch == NULL &&
            (strlen(p->version) != len || memcmp(p->version, body, len) != 0)) {
          p->mismatch = malloc(len + 1);
          if (p->mismatch != NULL) {
            memcpy(p->mismatch, body, len);
            p->mismatch[len] = '\0';
          }
          p->eof = 1;
          return;
        }
        break;
      case 'S': /* stop: what closing the channel says on a socket */
        p->eof = 1;
        return;
      case 'I':
        free(p->init);
        p->init = copy_body(body, len);
        p->init_len = len;
        p->have_init = p->init != NULL;
        break;
      default:
        p->eof = 1;
        return;
    }
  }
}

/* Reads whatever the channel holds, without waiting, and parses it. */
static void port_drain(port *p) {
  if (p->io != NULL && !p->eof && p->io->drain(p->io_ud, &p->in) < 0)
    p->eof = 1;
  while (p->io == NULL && !p->eof) {
    if (tulua__bytes_reserve(&p->in, READ_CHUNK) < 0) {
      p->eof = 1;
      break;
    }
    ssize_t n = read(p->fd, p->in.base + p->in.len, p->in.cap - p->in.len);
    if (n > 0) {
      p->in.len += (size_t)n;
    } else if (n < 0 && errno == EINTR) {
      continue;
    } else {
      if (n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK)) p->eof = 1;
      break;
    }
  }
  port_parse(p);
}

/* Writes the iovecs whole, blocking while the channel is full. Returns 0,
 * or -1 once the parent is gone (eof is then set). */
static int port_write(port *p, struct iovec *iov, int n) {
  if (p->io != NULL) {
    if (p->io->write(p->io_ud, iov, n) == 0) return 0;
    p->eof = 1;
    return -1;
  }
  while (n > 0) {
    ssize_t w = writev(p->fd, iov, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) {
        struct pollfd pf = {.fd = p->fd, .events = POLLOUT};
        poll(&pf, 1, -1);
        continue;
      }
      p->eof = 1;
      return -1;
    }
    while (n > 0 && (size_t)w >= iov->iov_len) {
      w -= (ssize_t)iov->iov_len;
      iov++;
      n--;
    }
    if (n > 0) {
      iov->iov_base = (char *)iov->iov_base + w;
      iov->iov_len -= (size_t)w;
    }
  }
  return 0;
}

/* Sends the reply to job id, with the slow collector steps recorded
 * since the last reply. The job's prints come first. */
static void send_reply(port *p, uint32_t id, int status, uint64_t t0,
                       uint64_t t1, const char *body, size_t len) {
  char h[HDR + TIMES + 4];
  uint32_t glen = (uint32_t)(p->gc.len - p->gc.pos);
  size_t head = HDR + TIMES + (glen > 0 ? 4 : 0);
  put_header(h, head - HDR + glen + len, 'R',
             status | (glen > 0 ? TULUA_REPLY_GC : 0), id);
  memcpy(h + HDR, &t0, 8);
  memcpy(h + HDR + 8, &t1, 8);
  memcpy(h + HDR + TIMES, &glen, 4);
  struct iovec iov[3] = {
      {h, head}, {p->gc.base + p->gc.pos, glen}, {(void *)body, len}};
  int n = 0;
  for (int i = 0; i < 3; i++)
    if (iov[i].iov_len > 0) iov[n++] = iov[i];
  fflush(stdout);
  port_write(p, iov, n);
  p->gc.pos = p->gc.len = 0;
  bytes_trim(&p->gc);
}

/* A slow collector step of this worker (tulua__gc_sink): kept for the
 * next reply. */
static void gc_sink(void *ud, const char *name, uint64_t t0, uint64_t t1,
                    int kb0, int kb1) {
  port *p = ud;
  size_t nlen = strlen(name);
  if (nlen > 255) nlen = 255;
  if (p->gc.len + GC_STEP_HEAD + nlen > GC_MAX ||
      tulua__bytes_reserve(&p->gc, GC_STEP_HEAD + nlen) < 0)
    return; /* dropped */
  char *r = p->gc.base + p->gc.len;
  uint64_t dur = t1 - t0;
  int32_t k0 = kb0, k1 = kb1;
  memcpy(r, &t0, 8);
  memcpy(r + 8, &dur, 8);
  memcpy(r + 16, &k0, 4);
  memcpy(r + 20, &k1, 4);
  r[24] = (char)nlen;
  memcpy(r + GC_STEP_HEAD, name, nlen);
  p->gc.len += GC_STEP_HEAD + nlen;
}

/* Makes the port at the top of the stack read its start: waits (blocking)
 * for the package paths and the initializer the owner sends first. An io
 * port whose owner runs another version says so ('B', the message naming
 * who) and raises. */
static int port_start(lua_State *L, port *p, const char *who) {
  for (;;) {
    port_drain(p);
    if ((p->have_paths && p->have_init) || p->eof) break;
    if (p->io != NULL) {
      p->io->block(p->io_ud);
    } else {
      struct pollfd pf = {.fd = p->fd, .events = POLLIN};
      poll(&pf, 1, -1);
    }
  }
  if (p->mismatch != NULL) {
    lua_pushfstring(L, "%s runs %s, the script %s", who, p->version,
                    p->mismatch);
    size_t len;
    const char *msg = lua_tolstring(L, -1, &len);
    char h[HDR];
    put_header(h, len, 'B', 0, 0);
    struct iovec iov[2] = {{h, sizeof h}, {(void *)msg, len}};
    p->eof = 0;
    port_write(p, iov, 2);
    return lua_error(L);
  }
  if (!p->have_paths || !p->have_init) {
    if (p->io != NULL) { /* stopped before it had work: nothing */
      lua_pushnil(L);
      return 1;
    }
    return luaL_error(L, "the parent closed the channel before the start");
  }
  p->ctx = tulua__worker_control(L);
  return 1;
}

static port *new_port(lua_State *L) {
  port *p = lua_newuserdatauv(L, sizeof *p, 0);
  memset(p, 0, sizeof *p);
  tulua__queue_init(&p->jobs);
  p->fd = -1;
  luaL_setmetatable(L, PORT_MT);
  return p;
}

/* process_pool.port_open(fd) -> port: the worker's end of the channel on
 * descriptor fd. Waits (blocking) for the package paths and the
 * initializer the parent sends first. On Linux the worker is also killed
 * when its parent dies (a job that never ends would keep it alive, in a
 * session of its own that a Ctrl-C does not reach); had the parent died
 * already, the channel is closed and this fails. */
static int pp_port_open(lua_State *L) {
  int fd = (int)luaL_checkinteger(L, 1);
#ifdef __linux__
  prctl(PR_SET_PDEATHSIG, SIGKILL);
#endif
  port *p = new_port(L);
  int fl = fcntl(fd, F_GETFL);
  if (fl < 0)
    return luaL_error(L, "no channel to a parent on descriptor %d", fd);
  fcntl(fd, F_SETFD, FD_CLOEXEC); /* not for the programs a job starts */
  fcntl(fd, F_SETFL, fl | O_NONBLOCK);
  p->fd = fd;
  tulua__ignore_sigpipe();
  return port_start(L, p, "the worker");
}

int tulua__port_open_io(lua_State *L, const tulua__port_io *io, void *ud,
                        const char *version, const char *who) {
  port *p = new_port(L);
  p->io = io;
  p->io_ud = ud;
  p->version = version;
  p->fd = 0;
  return port_start(L, p, who);
}

/* port.paths(p) -> package.path, package.cpath: the parent's. */
static int port_paths(lua_State *L) {
  port *p = check_port(L);
  int n = tulua__transfer_decode(L, p->paths, p->paths_len);
  if (n < 0) return lua_error(L);
  return n;
}

/* port.init(p) -> fn, ... | nothing: the initializer to run first. */
static int port_init(lua_State *L) {
  port *p = check_port(L);
  if (p->init_len == 0) return 0;
  int n = tulua__transfer_decode(L, p->init, p->init_len);
  if (n < 0) return lua_error(L);
  return n;
}

/* port.take(p) -> "job" | "idle" | "stop": takes the next job read, if
 * any; a job cancelled before it was taken is answered "cancelled" and
 * skipped. The first call tells the parent that the worker is ready: the
 * initializer has run, and the job control (port_open made it) handles the
 * signal that interrupts a job. */
static int port_take(lua_State *L) {
  port *p = check_port(L);
  if (!p->ready) {
    char h[HDR];
    put_header(h, 0, 'H', 0, 0);
    struct iovec iov = {h, sizeof h};
    port_write(p, &iov, 1);
    p->ready = 1;
  }
  port_drain(p);
  tulua__queue *q;
  while (!p->eof && (q = tulua__queue_head(&p->jobs)) != NULL &&
         tulua__container_of(q, cjob, node)->cancelled) {
    tulua__queue_remove(q);
    cjob *j = tulua__container_of(q, cjob, node);
    uint64_t now = uv_hrtime();
    send_reply(p, j->id, TULUA_JOB_CANCELLED, now, now, NULL, 0);
    free(j);
  }
  if (p->eof) {
    lua_pushliteral(L, "stop");
  } else if ((q = tulua__queue_pop(&p->jobs)) != NULL) {
    p->current = tulua__container_of(q, cjob, node);
    p->cancel_current = 0;
    lua_pushliteral(L, "job");
  } else {
    lua_pushliteral(L, "idle");
  }
  return 1;
}

static void poll_cb(uv_poll_t *h, int status, int events) { /* no Lua API */
  (void)status;
  (void)events;
  port *p = h->data;
  uv_poll_stop(h);
  if (p->waiting) {
    p->waiting = 0;
    tulua__wake(&p->w); /* nothing to free if the task is gone */
  }
}

static int wait_deliver(lua_State *L, void *ud) {
  (void)L;
  (void)ud;
  return 0;
}

static void wait_cancel(void *ud) {
  port *p = ud;
  p->waiting = 0;
  uv_poll_stop(p->poll);
}

static void poll_close_cb(uv_handle_t *h) {
  free(h);
}

/* port.wait(p): suspends the job runner until the channel has something
 * to read. */
static int port_wait(lua_State *L) {
  port *p = check_port(L);
  tulua__check_wait(L, "port.wait");
  if (p->eof || !tulua__queue_empty(&p->jobs)) return 0;
  if (p->io != NULL) { /* no descriptor to poll: the worker blocks */
    p->io->block(p->io_ud);
    return 0;
  }
  if (p->poll == NULL) {
    uv_poll_t *h = malloc(sizeof *h);
    if (h == NULL || uv_poll_init(tulua__loop(L), h, p->fd) < 0) {
      free(h);
      p->eof = 1; /* cannot wait: the worker ends, the parent sees it */
      return 0;
    }
    h->data = p;
    p->poll = h;
  }
  if (uv_poll_start(p->poll, UV_READABLE, poll_cb) < 0) {
    p->eof = 1;
    return 0;
  }
  p->waiting = 1;
  return tulua__wait(L, &p->w, wait_deliver, wait_cancel, p);
}

/* port.run(p) -> ...: decodes the job taken and calls it, as the job that
 * process_pool.cancel_process(pid, id) stops. Raises if it cannot decode
 * it (a module missing here), and raises the cancellation error if a
 * cancel for it has come meanwhile: a signal sent before the job started
 * did not stop it. */
static int port_run(lua_State *L) {
  port *p = check_port(L);
  cjob *j = p->current;
  luaL_argcheck(L, j != NULL, 1, "no job taken");
  lua_settop(L, 1);
  /* paced while the owner traces: its slow steps go back with replies */
  tulua__gctrace_sink(L, j->gc_slow, j->traced ? gc_sink : NULL, p);
  p->started = uv_hrtime();
  int n = tulua__transfer_decode(L, j->body, j->len);
  if (n < 0) return lua_error(L);
  bytes_trim(&p->in);
  port_drain(p);
  if (p->cancel_current) {
    tulua__push_cancelled(L, NULL);
    return lua_error(L);
  }
  return tulua__worker_call(L, p->ctx, (long long)j->id, 2);
}

/* A reply's encoded bytes (tulua__worker_store_fn): the encoder's own
 * buffer, written out before the next encode. */
typedef struct {
  const char *buf;
  size_t len;
} encoded;

static int store_reply(void *ud, const char *p, size_t len) {
  encoded *e = ud;
  e->buf = p;
  e->len = p != NULL ? len : 0;
  return 0;
}

/* port.finish(p, ok, ...) -> as port.take: after the job's xpcall, sends
 * its results, or its error and traceback (or that it was cancelled: it
 * was asked to stop and ended with an error), back, and takes the next
 * job. Results that cannot cross fail the job instead. */
static int port_finish(lua_State *L) {
  port *p = check_port(L);
  cjob *j = p->current;
  luaL_argcheck(L, j != NULL, 1, "no job taken");
  int cancelled = tulua__worker_end(p->ctx, (long long)j->id);
  uint64_t stopped = uv_hrtime();
  int status = tulua__worker_outcome(L, 2, cancelled || p->cancel_current);
  encoded e = {NULL, 0};
  status = tulua__worker_reply(L, 3, status, store_reply, &e);
  if (e.len > FRAME_MAX - TIMES) { /* cannot be framed */
    lua_settop(L, 2);
    lua_pushliteral(L, "the job's results are too large (over 4 GiB)");
    lua_pushnil(L);
    status = tulua__worker_reply(L, 3, TULUA_JOB_ERROR, store_reply, &e);
  }
  uint32_t id = j->id;
  p->current = NULL;
  p->cancel_current = 0;
  free(j);
  send_reply(p, id, status, p->started, stopped, e.buf, e.len);
  lua_settop(L, 1);
  return port_take(L);
}

/* port.broken(p, message): the initializer failed; the parent marks the
 * pool broken, and this worker stops. */
static int port_broken(lua_State *L) {
  port *p = check_port(L);
  size_t len;
  const char *msg = luaL_checklstring(L, 2, &len);
  if (len > FRAME_MAX) len = FRAME_MAX;
  char h[HDR];
  put_header(h, len, 'B', 0, 0);
  struct iovec iov[2] = {{h, sizeof h}, {(void *)msg, len}};
  fflush(stdout);
  port_write(p, iov, 2);
  p->eof = 1;
  return 0;
}

static int port_gc(lua_State *L) {
  port *p = luaL_checkudata(L, 1, PORT_MT);
  tulua__queue *q;
  while ((q = tulua__queue_pop(&p->jobs)) != NULL)
    free(tulua__container_of(q, cjob, node));
  free(p->current);
  p->current = NULL;
  tulua__gctrace_unsink(L, p);
  tulua__bytes_free(&p->gc);
  free(p->in.base);
  free(p->paths);
  free(p->init);
  free(p->mismatch);
  memset(&p->in, 0, sizeof p->in);
  p->paths = p->init = p->mismatch = NULL;
  if (p->poll != NULL) {
    uv_close((uv_handle_t *)p->poll, poll_close_cb);
    p->poll = NULL;
  }
  p->fd = -1;
  return 0;
}

void tulua__process_worker_open(lua_State *L) {
  static const luaL_Reg port_funcs[] = {{"paths", port_paths},
                                        {"init", port_init},
                                        {"take", port_take},
                                        {"wait", port_wait},
                                        {"run", port_run},
                                        {"finish", port_finish},
                                        {"broken", port_broken},
                                        {"handler", tulua__worker_handler},
                                        {NULL, NULL}};
  static const luaL_Reg port_meta[] = {{"__gc", port_gc}, {NULL, NULL}};
  tulua__new_class(L, PORT_MT, port_meta, NULL);
  lua_pushcfunction(L, pp_port_open);
  lua_setfield(L, -2, "port_open");
  luaL_newlib(L, port_funcs);
  lua_setfield(L, -2, "port");
}
