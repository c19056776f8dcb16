/* process_pool.c: uv_process_t with a socket pair per worker process; backs
 * the module 'tulua.process_pool', the transport under the process backend
 * of concurrent.futures (lua/concurrent/process_pool.lua keeps the queue,
 * the windows and the futures' ids; this file moves bytes and processes).
 *
 * A worker is a tulua process started from this very binary
 * (/proc/self/exe: the file on disk may have been replaced meanwhile) as
 *   tulua -E -e "require('concurrent.process_pool').worker_main(3)"
 * with /dev/null as stdin, the parent's own stdout and stderr (a job's
 * print shows where the parent's would, as in Python), and one end of a
 * socket pair as descriptor 3: the protocol's only channel, both ways. A
 * descriptor of its own, rather than the child's stdin and stdout, since a
 * child cannot get the parent's stdout back as its fd 1 once stdout is the
 * channel. The child runs in a session of its own (detached), so Ctrl-C and
 * job control reach the parent only, which then ends its workers.
 *
 * Frames, both ways, in the machine's byte order (both ends are this
 * binary): u32 size of what follows, u8 kind, u8 status, u32 job, body.
 *   parent -> worker: 'P' the package path and cpath (transfer), 'I' the
 *     initializer and its arguments (transfer; empty: none), 'J' a job (fn
 *     and its arguments, transfer), 'C' cancel that job (no body).
 *   worker -> parent: 'H' ready: the worker has run its initializer and
 *     handles the signal that interrupts a job (before, that signal would
 *     kill it); 'R' the
 *     outcome of a job, status 0 ok, 1 error, 2 cancelled; body: u64 start
 *     and stop (uv_hrtime), then the results, or the error and its
 *     traceback (transfer; nothing for a cancelled job); 'B' the
 *     initializer failed, body: the message.
 * Job numbers are the parent's counter per worker, 1 to 2^31 - 1 (they
 * travel as the value of the signal that interrupts a running job), and a
 * worker answers its jobs in the order it got them.
 *
 * Parent side: a Link object per worker holds the process handle, the pipe
 * handle on the parent's end of the pair, and a prepare handle that
 * flushes the frames queued during a loop turn in one write. Reading never
 * stops; a posted job hands what was read (and the exit) to a Lua handler.
 * Ownership: the Link userdata points at a malloc'd link, freed once its
 * handles are closed and the userdata is collected (the last of the close
 * callbacks or __gc frees). The registry anchors the userdata while the
 * child lives, so that an exit always finds its handler. libuv reaps the
 * child while the process handle is open (exit_cb); a Link collected
 * before that (at lua_close) ends and reaps its child synchronously.
 *
 * Worker side: the port of lua/concurrent/worker.lua's job runner. It reads
 * the channel without libuv (non-blocking reads between jobs, so that a
 * cancel sent for a job queued here is seen before the job starts; a poll
 * handle while it waits for work) and writes replies with blocking writes:
 * the worker has nothing else to do meanwhile, and the parent always
 * reads. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#ifdef __linux__
#include <sys/prctl.h>
#endif
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "../host/queue.h"
#include "common.h"
#include "transfer.h"
#include "worker.h"

#define LINK_MT "tulua.process_link"
#define PORT_MT "tulua.process_port"

#define HDR        10 /* u32 size, u8 kind, u8 status, u32 job */
#define TIMES      16 /* a reply's u64 start and stop */
#define READ_CHUNK 65536 /* free space offered to each read */
#define KEEP_MAX   (1u << 20) /* an empty buffer larger than this is freed */
#define WRITE_MAX  (1u << 30) /* bytes per uv_write */
#define FRAME_MAX  ((size_t)UINT32_MAX - (HDR - 4))

/* A reply's status is the job's: TULUA_JOB_OK, _ERROR or _CANCELLED. */
static const char *const status_names[] = {"ok", "error", "cancelled"};

/* ---- byte buffers ---- */

/* Bytes [start, len) of p are pending: written or not yet read. */
typedef struct {
  char *p;
  size_t start, len, cap;
} bytes;

/* Makes room for extra more bytes after len; moves the pending bytes to
 * the front first (pointers into the buffer do not survive). Returns 0 or
 * UV_ENOMEM. */
static int bytes_reserve(bytes *b, size_t extra) {
  if (b->start == b->len) b->start = b->len = 0;
  if (b->cap - b->len >= extra) return 0;
  if (b->start > 0) {
    memmove(b->p, b->p + b->start, b->len - b->start);
    b->len -= b->start;
    b->start = 0;
    if (b->cap - b->len >= extra) return 0;
  }
  size_t cap = b->cap > 0 ? b->cap : 4096;
  while (cap - b->len < extra) {
    if (cap > SIZE_MAX / 2) return UV_ENOMEM;
    cap *= 2;
  }
  char *p = realloc(b->p, cap);
  if (p == NULL) return UV_ENOMEM;
  b->p = p;
  b->cap = cap;
  return 0;
}

/* Frees an empty buffer that a large batch has grown. */
static void bytes_trim(bytes *b) {
  if (b->start != b->len || b->cap <= KEEP_MAX) return;
  free(b->p);
  memset(b, 0, sizeof *b);
}

static void put_header(char *h, size_t body, int kind, int status,
                       uint32_t job) {
  uint32_t size = (uint32_t)(body + HDR - 4);
  memcpy(h, &size, 4);
  h[4] = (char)kind;
  h[5] = (char)status;
  memcpy(h + 6, &job, 4);
}

/* Appends a frame to b. Returns 0 or UV_ENOMEM. */
static int bytes_frame(bytes *b, int kind, uint32_t job, const char *body,
                       size_t len) {
  if (bytes_reserve(b, HDR + len) < 0) return UV_ENOMEM;
  put_header(b->p + b->len, len, kind, 0, job);
  if (len > 0) memcpy(b->p + b->len + HDR, body, len);
  b->len += HDR + len;
  return 0;
}

/* ---- the parent's end: Link objects ---- */

typedef struct wlink {
  uv_process_t proc;
  uv_pipe_t pipe;
  uv_prepare_t flush; /* runs start_write once per loop turn */
  uv_write_t wreq;
  tulua_runtime *rt;
  tulua__job job; /* hands what was read, and the exit, to Lua */
  int anchor; /* registry: the userdata, while the child lives */
  int nhandles; /* initialized and not yet closed */
  int pid;
  int pipe_open; /* reading; frames may be written */
  int writing; /* wreq is in flight with wsize bytes of wbuf */
  int refd; /* the handles keep the loop alive */
  int exited;
  int collected; /* the userdata is gone: the last close callback frees */
  int64_t exit_status;
  int term_signal;
  size_t wsize;
  bytes out; /* frames queued since the last write */
  bytes wbuf; /* the frames being written */
  bytes in; /* read, not yet taken by recv */
} wlink;

static void free_link(wlink *l) {
  free(l->out.p);
  free(l->wbuf.p);
  free(l->in.p);
  free(l);
}

static void link_close_cb(uv_handle_t *h) {
  wlink *l = h->data;
  if (--l->nhandles == 0 && l->collected) free_link(l);
}

/* Stops reading and writing and closes the parent's end: the child reads
 * the end of its channel and ends. Writes not done are dropped. */
static void close_pipe(wlink *l) {
  if (!l->pipe_open) return;
  l->pipe_open = 0;
  uv_close((uv_handle_t *)&l->pipe, link_close_cb);
  uv_close((uv_handle_t *)&l->flush, link_close_cb);
}

static void write_cb(uv_write_t *req, int status);

/* Writes the queued frames (or what is left of a batch over WRITE_MAX);
 * at most one write is in flight. */
static void start_write(wlink *l) {
  if (l->writing || !l->pipe_open) return;
  if (l->wbuf.start == l->wbuf.len) { /* take the queued frames */
    if (l->out.start == l->out.len) return;
    bytes t = l->wbuf;
    l->wbuf = l->out;
    l->out = t;
    l->out.start = l->out.len = 0;
  }
  size_t n = l->wbuf.len - l->wbuf.start;
  if (n > WRITE_MAX) n = WRITE_MAX;
  uv_buf_t b = uv_buf_init(l->wbuf.p + l->wbuf.start, (unsigned)n);
  l->wreq.data = l;
  if (uv_write(&l->wreq, (uv_stream_t *)&l->pipe, &b, 1, write_cb) < 0) {
    l->wbuf.start = l->wbuf.len = 0; /* the child is gone: its exit tells */
    return;
  }
  l->wsize = n;
  l->writing = 1;
}

/* Before the loop polls: what this turn queued goes out in one write. */
static void flush_cb(uv_prepare_t *h) {
  uv_prepare_stop(h);
  start_write(h->data);
}

static void write_cb(uv_write_t *req, int status) {
  wlink *l = req->data;
  l->writing = 0;
  if (!l->pipe_open) return; /* closing: status is UV_ECANCELED */
  if (status < 0) { /* EPIPE: the child is gone, and its exit tells */
    l->wbuf.start = l->wbuf.len = 0;
    l->out.start = l->out.len = 0;
    return;
  }
  l->wbuf.start += l->wsize;
  bytes_trim(&l->wbuf);
  if (l->wbuf.start < l->wbuf.len || l->out.start < l->out.len)
    uv_prepare_start(&l->flush, flush_cb); /* the next turn */
}

static void alloc_cb(uv_handle_t *h, size_t hint, uv_buf_t *buf) {
  (void)hint;
  wlink *l = h->data;
  if (bytes_reserve(&l->in, READ_CHUNK) < 0) {
    *buf = uv_buf_init(NULL, 0); /* read_cb gets UV_ENOBUFS */
    return;
  }
  *buf = uv_buf_init(l->in.p + l->in.len, (unsigned)(l->in.cap - l->in.len));
}

static void read_cb(uv_stream_t *s, ssize_t n, const uv_buf_t *buf) {
  (void)buf;
  wlink *l = s->data;
  if (n > 0) {
    l->in.len += (size_t)n;
    tulua__post(l->rt, &l->job);
  } else if (n < 0) {
    /* The end of the channel: the child is exiting (it never closes it
     * otherwise), or the reply cannot be stored. Either way it must end:
     * SIGKILL changes nothing for a process that is already exiting. */
    uv_read_stop(s);
    if (!l->exited) uv_process_kill(&l->proc, SIGKILL);
  }
}

/* Reads what the dead child left in the channel: read_cb may not have run
 * yet for the replies it sent last. */
static void drain_pipe(wlink *l) {
  uv_os_fd_t fd;
  if (uv_fileno((uv_handle_t *)&l->pipe, &fd) < 0) return;
  for (;;) {
    if (bytes_reserve(&l->in, READ_CHUNK) < 0) return;
    ssize_t n = read(fd, l->in.p + l->in.len, l->in.cap - l->in.len);
    if (n > 0)
      l->in.len += (size_t)n;
    else if (n < 0 && errno == EINTR)
      continue;
    else
      return;
  }
}

/* libuv has reaped the child. No Lua API here. */
static void exit_cb(uv_process_t *h, int64_t exit_status, int term_signal) {
  wlink *l = h->data;
  l->exited = 1;
  l->exit_status = exit_status;
  l->term_signal = term_signal;
  if (l->pipe_open) {
    drain_pipe(l);
    close_pipe(l);
  }
  uv_close((uv_handle_t *)h, link_close_cb);
  tulua__post(l->rt, &l->job);
}

/* Waits until the child has exited, for at most grace seconds, then kills
 * it and waits for that; records the status and closes the process
 * handle, so that libuv does not wait for the child again. Blocks: for
 * the ends that cannot wait (close, __gc). */
static void reap(wlink *l, double grace) {
  if (l->exited) return;
  uint64_t deadline = uv_hrtime() + (uint64_t)(grace * 1e9);
  long pause = 20000; /* ns, doubling up to 5 ms */
  int st = 0, killed = 0, known = 1;
  for (;;) {
    pid_t r = waitpid(l->pid, &st, killed ? 0 : WNOHANG);
    if (r == l->pid) break;
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) { /* not our child any more (SIGCHLD ignored): gone */
      known = 0;
      break;
    }
    if (uv_hrtime() >= deadline) {
      kill(l->pid, SIGKILL);
      killed = 1;
      continue;
    }
    struct timespec ts = {0, pause};
    nanosleep(&ts, NULL);
    if (pause < 5000000) pause *= 2;
  }
  l->exited = 1;
  if (known && WIFEXITED(st)) l->exit_status = WEXITSTATUS(st);
  if (known && WIFSIGNALED(st)) l->term_signal = WTERMSIG(st);
  uv_close((uv_handle_t *)&l->proc, link_close_cb);
}

/* The posted job: calls the handler (the userdata's user value) with the
 * Link, which takes the frames read with recv() and looks at status();
 * once the child has exited, the anchor goes. */
static void link_job_run(lua_State *L, tulua__job *job) {
  wlink *l = tulua__container_of(job, wlink, job);
  if (l->anchor == LUA_NOREF) return;
  int top = lua_gettop(L);
  lua_rawgeti(L, LUA_REGISTRYINDEX, l->anchor); /* keeps l alive */
  lua_getiuservalue(L, top + 1, 1);
  lua_pushvalue(L, top + 1);
  if (lua_pcall(L, 1, 0, 0) != LUA_OK) { /* memory errors only */
    const char *msg = lua_tostring(L, -1);
    lua_writestringerror("tulua: process pool: %s\n",
                         msg ? msg : "(error object)");
  }
  if (l->exited && l->anchor != LUA_NOREF) {
    luaL_unref(L, LUA_REGISTRYINDEX, l->anchor);
    l->anchor = LUA_NOREF;
  }
  lua_settop(L, top);
}

static wlink *check_link(lua_State *L) { /* NULL once collected */
  return *(wlink **)luaL_checkudata(L, 1, LINK_MT);
}

/* Fills the descriptor fd of the child: the parent's own, or /dev/null
 * (UV_IGNORE) when the parent has none open there. */
static void inherit(uv_stdio_container_t *c, int fd) {
  if (fcntl(fd, F_GETFD) < 0) {
    c->flags = UV_IGNORE;
  } else {
    c->flags = UV_INHERIT_FD;
    c->data.fd = fd;
  }
}

/* process_pool.spawn(file, argv, handler) -> Link, pid | nil, message,
 * code: starts a worker process (see the top of the file) whose channel is
 * read at once; handler(link) runs, outside any task, whenever frames come
 * or the child exits. The Link's handles start unref'd: an idle worker
 * does not keep the loop alive (link:ref). */
static int pp_spawn(lua_State *L) {
  const char *file = luaL_checkstring(L, 1);
  luaL_checktype(L, 2, LUA_TTABLE);
  luaL_checktype(L, 3, LUA_TFUNCTION);
  lua_Integer n = luaL_len(L, 2);
  luaL_argcheck(L, n >= 1 && n <= 64, 2, "1 to 64 arguments expected");
  lua_settop(L, 3);
  char **args = lua_newuserdatauv(L, (size_t)(n + 1) * sizeof *args, 0);
  for (lua_Integer i = 1; i <= n; i++) {
    if (lua_geti(L, 2, i) != LUA_TSTRING) /* the table anchors it */
      return luaL_argerror(L, 2, "strings expected");
    args[i - 1] = (char *)lua_tostring(L, -1);
    lua_pop(L, 1);
  }
  args[n] = NULL;
  wlink **box = lua_newuserdatauv(L, sizeof *box, 1); /* 5 */
  *box = NULL;
  luaL_setmetatable(L, LINK_MT);
  lua_pushvalue(L, 3);
  lua_setiuservalue(L, 5, 1);
  wlink *l = calloc(1, sizeof *l);
  if (l == NULL) return push_fail(L, file, UV_ENOMEM);
  uv_os_sock_t fds[2];
  int rc = uv_socketpair(SOCK_STREAM, 0, fds, 0, 0); /* both close-on-exec */
  if (rc < 0) {
    free(l);
    return push_fail(L, file, rc);
  }
  uv_loop_t *loop = tulua__loop(L);
  l->rt = tulua__runtime(L);
  l->anchor = LUA_NOREF;
  l->job.run = link_job_run;
  l->exited = 1; /* until a child runs */
  uv_pipe_init(loop, &l->pipe, 0);
  uv_prepare_init(loop, &l->flush);
  l->pipe.data = l->flush.data = l->proc.data = l;
  l->nhandles = 2;
  l->pipe_open = 1;
  *box = l; /* from here on, __gc frees it */
  uv_unref((uv_handle_t *)&l->flush);
  rc = uv_pipe_open(&l->pipe, fds[0]);
  if (rc < 0) {
    close(fds[0]);
    close(fds[1]);
    close_pipe(l);
    return push_fail(L, file, rc);
  }
  tulua__ignore_sigpipe(); /* a write to a dead child fails with EPIPE */
  uv_stdio_container_t stdio[4];
  stdio[0].flags = UV_IGNORE; /* /dev/null */
  inherit(&stdio[1], 1);
  inherit(&stdio[2], 2);
  stdio[3].flags = UV_INHERIT_FD;
  stdio[3].data.fd = fds[1];
  uv_process_options_t o;
  memset(&o, 0, sizeof o);
  o.file = file;
  o.args = args;
  o.stdio = stdio;
  o.stdio_count = 4;
  o.flags = UV_PROCESS_DETACHED;
  o.exit_cb = exit_cb;
  rc = uv_spawn(loop, &l->proc, &o);
  close(fds[1]); /* the child has its copy */
  l->nhandles++; /* initialized even when uv_spawn fails */
  if (rc < 0) {
    uv_close((uv_handle_t *)&l->proc, link_close_cb);
    close_pipe(l);
    return push_fail(L, file, rc);
  }
  l->exited = 0;
  l->pid = l->proc.pid;
  uv_unref((uv_handle_t *)&l->proc);
  uv_unref((uv_handle_t *)&l->pipe);
  if (uv_read_start((uv_stream_t *)&l->pipe, alloc_cb, read_cb) < 0)
    uv_process_kill(&l->proc, SIGKILL); /* unusable: its exit tells */
  lua_pushvalue(L, 5);
  l->anchor = luaL_ref(L, LUA_REGISTRYINDEX);
  lua_pushinteger(L, l->pid);
  return 2;
}

/* link:send(kind, job [, body [, now]]) -> boolean: queues a frame ("P",
 * "I", "J" or "C") for the write at the end of this loop turn, or writes
 * it (and what is queued) now, for a worker that would wait otherwise;
 * false once the channel is closed. Raises on a body over 4 GiB. */
static int link_send(lua_State *L) {
  wlink *l = check_link(L);
  size_t klen, len = 0;
  const char *kind = luaL_checklstring(L, 2, &klen);
  luaL_argcheck(L, klen == 1 && strchr("PIJC", kind[0]) != NULL, 2,
                "invalid frame kind");
  lua_Integer job = luaL_checkinteger(L, 3);
  luaL_argcheck(L, job >= 0 && job <= INT32_MAX, 3, "job number out of range");
  const char *body = luaL_optlstring(L, 4, "", &len);
  if (len > FRAME_MAX - TIMES)
    return luaL_error(L, "job too large (%I bytes)", (lua_Integer)len);
  if (l == NULL || !l->pipe_open) {
    lua_pushboolean(L, 0);
    return 1;
  }
  if (bytes_frame(&l->out, kind[0], (uint32_t)job, body, len) < 0)
    return luaL_error(L, "not enough memory");
  if (lua_toboolean(L, 5)) {
    uv_prepare_stop(&l->flush);
    start_write(l);
  } else if (!l->writing && !uv_is_active((uv_handle_t *)&l->flush)) {
    uv_prepare_start(&l->flush, flush_cb);
  }
  lua_pushboolean(L, 1);
  return 1;
}

/* Gives up on a worker that broke the protocol: what it sent is dropped
 * and it is killed; its exit fails its jobs. */
static int protocol_error(wlink *l) {
  l->in.start = l->in.len = 0;
  if (!l->exited) uv_process_kill(&l->proc, SIGKILL);
  return 0;
}

/* link:recv() -> job, status, started, finished, ... | nothing: the next
 * frame read. A reply: status "ok" and the results, "error" and the error
 * and traceback, or "cancelled", with the times the job started and
 * finished (seconds, as tulua.now). The initializer's failure: job 0,
 * "broken", the times and the message. The worker's start: job 0,
 * "ready". A reply that cannot be decoded here is an error. Raises only on
 * memory errors. */
static int link_recv(lua_State *L) {
  wlink *l = check_link(L);
  if (l == NULL) return 0;
  bytes *in = &l->in;
  size_t avail = in->len - in->start;
  if (avail == 0) bytes_trim(in);
  if (avail < 4) return 0;
  uint32_t size;
  memcpy(&size, in->p + in->start, 4);
  if (size < HDR - 4) return protocol_error(l);
  if (avail - 4 < size) return 0;
  const char *f = in->p + in->start + 4;
  const char *body = f + HDR - 4;
  size_t len = size - (HDR - 4);
  int kind = f[0], status = (unsigned char)f[1];
  uint32_t job;
  memcpy(&job, f + 2, 4);
  if (kind == 'H') {
    in->start += 4 + (size_t)size;
    lua_settop(L, 1);
    lua_pushinteger(L, 0);
    lua_pushliteral(L, "ready");
    return 2;
  }
  if (kind == 'B') {
    in->start += 4 + (size_t)size; /* the bytes stay until the next read */
    lua_settop(L, 1);
    lua_pushinteger(L, 0);
    lua_pushliteral(L, "broken");
    lua_pushnumber(L, (lua_Number)uv_hrtime() / 1e9);
    lua_pushvalue(L, -1);
    lua_pushlstring(L, body, len);
    return 5;
  }
  if (kind != 'R' || len < TIMES || status > TULUA_JOB_CANCELLED)
    return protocol_error(l);
  uint64_t t0, t1;
  memcpy(&t0, body, 8);
  memcpy(&t1, body + 8, 8);
  body += TIMES;
  len -= TIMES;
  in->start += 4 + (size_t)size;
  lua_settop(L, 1);
  lua_pushinteger(L, (lua_Integer)job);
  lua_pushstring(L, status_names[status]);
  lua_pushnumber(L, (lua_Number)t0 / 1e9);
  lua_pushnumber(L, (lua_Number)t1 / 1e9);
  if (len == 0) return 4;
  int n = tulua__transfer_decode(L, body, len);
  if (n >= 0) return 4 + n;
  lua_pushfstring(L, "cannot decode the job's reply: %s", lua_tostring(L, -1));
  lua_replace(L, 6);
  lua_pushliteral(L, "error");
  lua_replace(L, 3);
  lua_pushnil(L); /* no traceback */
  return 6;
}

/* link:ref(on): whether the worker keeps the loop (and the program) alive:
 * while it has jobs. */
static int link_ref(lua_State *L) {
  wlink *l = check_link(L);
  int on = lua_toboolean(L, 2);
  if (l == NULL || on == l->refd) return 0;
  l->refd = on;
  uv_handle_t *hs[] = {(uv_handle_t *)&l->pipe, (uv_handle_t *)&l->proc};
  for (int i = 0; i < 2; i++) {
    if (uv_is_closing(hs[i])) continue;
    if (on)
      uv_ref(hs[i]);
    else
      uv_unref(hs[i]);
  }
  return 0;
}

/* link:status() -> nothing while the child runs | exit status, signal,
 * description ("exit status 3", "signal 9, Killed"). */
static int link_status(lua_State *L) {
  wlink *l = check_link(L);
  if (l == NULL || !l->exited) return 0;
  lua_pushinteger(L, (lua_Integer)l->exit_status);
  lua_pushinteger(L, l->term_signal);
  if (l->term_signal != 0)
    lua_pushfstring(L, "signal %d, %s", l->term_signal,
                    strsignal(l->term_signal));
  else
    lua_pushfstring(L, "exit status %d", (int)l->exit_status);
  return 3;
}

/* link:close(): closes the parent's end of the channel: the worker ends
 * once its job is over (libuv then reaps it); nothing more is read. */
static int link_close(lua_State *L) {
  wlink *l = check_link(L);
  if (l != NULL) close_pipe(l);
  return 0;
}

/* link:reap(grace): closes the channel, waits (blocking) up to grace
 * seconds for the child to exit, then kills it (SIGKILL) and reaps it. */
static int link_reap(lua_State *L) {
  wlink *l = check_link(L);
  double grace = luaL_optnumber(L, 2, 0);
  if (l == NULL) return 0;
  close_pipe(l);
  reap(l, grace > 0 ? grace : 0);
  tulua__unpost(l->rt, &l->job); /* nothing more to hand over */
  if (l->anchor != LUA_NOREF) {
    luaL_unref(L, LUA_REGISTRYINDEX, l->anchor);
    l->anchor = LUA_NOREF;
  }
  return 0;
}

/* link:alive() -> boolean: whether the child has not been reaped yet (its
 * pid is still its own). */
static int link_alive(lua_State *L) {
  wlink *l = check_link(L);
  lua_pushboolean(L, l != NULL && !l->exited);
  return 1;
}

/* __gc: at the latest at lua_close (the registry anchors a Link whose
 * child lives): the child is ended and reaped here. An idle one ends as
 * its channel closes; one with jobs (the program ends on an error, say)
 * is killed at once. */
static int link_gc(lua_State *L) {
  wlink **box = luaL_checkudata(L, 1, LINK_MT);
  wlink *l = *box;
  if (l == NULL) return 0;
  *box = NULL;
  tulua__unpost(l->rt, &l->job);
  close_pipe(l);
  reap(l, l->refd ? 0 : 2.0);
  l->collected = 1;
  if (l->nhandles == 0) free_link(l);
  return 0;
}

/* process_pool.executable() -> file, name | nil, message, code: what a
 * worker runs. file is /proc/self/exe where it exists (this very binary,
 * even if the file was replaced since it started), else name, the path of
 * the executable, which is also the worker's argv[0]. */
static int pp_executable(lua_State *L) {
  char buf[4096];
  size_t n = sizeof buf;
  int rc = uv_exepath(buf, &n);
  if (rc < 0) return push_fail(L, "the path of the executable", rc);
  if (access("/proc/self/exe", X_OK) == 0)
    lua_pushliteral(L, "/proc/self/exe");
  else
    lua_pushlstring(L, buf, n);
  lua_pushlstring(L, buf, n);
  return 2;
}

/* process_pool.cancel_process(pid, id) -> true | nil, msg, code: asks the
 * worker process pid to stop job id, if it runs it: the signal of job
 * control (bindings/worker.c), carrying the id. */
static int pp_cancel_process(lua_State *L) {
  lua_Integer pid = luaL_checkinteger(L, 1);
  lua_Integer id = luaL_checkinteger(L, 2);
  luaL_argcheck(L, pid > 0 && pid <= INT_MAX, 1, "bad pid");
  luaL_argcheck(L, id > 0 && id <= INT_MAX, 2, "job id out of range");
  union sigval v;
  v.sival_int = (int)id;
  if (sigqueue((pid_t)pid, tulua__worker_signal(), v) != 0)
    return push_fail(L, "cancel_process", uv_translate_sys_error(errno));
  lua_pushboolean(L, 1);
  return 1;
}

/* ---- the worker's end: the port of the job runner ---- */

typedef struct cjob {
  tulua__queue node; /* in the port's jobs */
  uint32_t id;
  int cancelled;
  size_t len;
  char body[];
} cjob;

typedef struct {
  int fd; /* the channel; -1 until open */
  int eof; /* the parent closed it (or it failed): stop */
  bytes in;
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
} port;

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
    size_t avail = p->in.len - p->in.start;
    if (avail < 4) return;
    uint32_t size;
    memcpy(&size, p->in.p + p->in.start, 4);
    if (size < HDR - 4) {
      p->eof = 1; /* garbage: not our parent */
      return;
    }
    if (avail - 4 < size) return;
    const char *f = p->in.p + p->in.start + 4;
    const char *body = f + HDR - 4;
    size_t len = size - (HDR - 4);
    uint32_t id;
    memcpy(&id, f + 2, 4);
    p->in.start += 4 + (size_t)size;
    switch (f[0]) {
      case 'J': {
        cjob *j = malloc(sizeof *j + len);
        if (j == NULL) { /* out of memory: stop; the parent sees a crash */
          p->eof = 1;
          return;
        }
        j->id = id;
        j->cancelled = 0;
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
  while (!p->eof) {
    if (bytes_reserve(&p->in, READ_CHUNK) < 0) {
      p->eof = 1;
      break;
    }
    ssize_t n = read(p->fd, p->in.p + p->in.len, p->in.cap - p->in.len);
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

/* Sends the reply to job id. The job's prints come first. */
static void send_reply(port *p, uint32_t id, int status, uint64_t t0,
                       uint64_t t1, const char *body, size_t len) {
  char h[HDR + TIMES];
  put_header(h, TIMES + len, 'R', status, id);
  memcpy(h + HDR, &t0, 8);
  memcpy(h + HDR + 8, &t1, 8);
  struct iovec iov[2] = {{h, sizeof h}, {(void *)body, len}};
  fflush(stdout);
  port_write(p, iov, len > 0 ? 2 : 1);
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
  port *p = lua_newuserdatauv(L, sizeof *p, 0);
  memset(p, 0, sizeof *p);
  tulua__queue_init(&p->jobs);
  p->fd = -1;
  luaL_setmetatable(L, PORT_MT);
  int fl = fcntl(fd, F_GETFL);
  if (fl < 0)
    return luaL_error(L, "no channel to a parent on descriptor %d", fd);
  fcntl(fd, F_SETFD, FD_CLOEXEC); /* not for the programs a job starts */
  fcntl(fd, F_SETFL, fl | O_NONBLOCK);
  p->fd = fd;
  tulua__ignore_sigpipe();
  for (;;) {
    port_drain(p);
    if ((p->have_paths && p->have_init) || p->eof) break;
    struct pollfd pf = {.fd = fd, .events = POLLIN};
    poll(&pf, 1, -1);
  }
  if (!p->have_paths || !p->have_init)
    return luaL_error(L, "the parent closed the channel before the start");
  p->ctx = tulua__worker_control(L);
  return 1;
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
  free(p->in.p);
  free(p->paths);
  free(p->init);
  memset(&p->in, 0, sizeof p->in);
  p->paths = p->init = NULL;
  if (p->poll != NULL) {
    uv_close((uv_handle_t *)p->poll, poll_close_cb);
    p->poll = NULL;
  }
  p->fd = -1;
  return 0;
}

int luaopen_tulua_process_pool(lua_State *L) {
  static const luaL_Reg link_methods[] = {
      {"send", link_send},     {"recv", link_recv},   {"ref", link_ref},
      {"status", link_status}, {"close", link_close}, {"reap", link_reap},
      {"alive", link_alive},   {NULL, NULL}};
  static const luaL_Reg port_funcs[] = {{"paths", port_paths},
                                        {"init", port_init},
                                        {"take", port_take},
                                        {"wait", port_wait},
                                        {"run", port_run},
                                        {"finish", port_finish},
                                        {"broken", port_broken},
                                        {"handler", tulua__worker_handler},
                                        {NULL, NULL}};
  static const luaL_Reg funcs[] = {{"spawn", pp_spawn},
                                   {"executable", pp_executable},
                                   {"cancel_process", pp_cancel_process},
                                   {"port_open", pp_port_open},
                                   {NULL, NULL}};
  static const luaL_Reg link_meta[] = {{"__gc", link_gc}, {NULL, NULL}};
  static const luaL_Reg port_meta[] = {{"__gc", port_gc}, {NULL, NULL}};
  tulua__new_class(L, LINK_MT, link_meta, link_methods);
  tulua__new_class(L, PORT_MT, port_meta, NULL);
  luaL_newlib(L, funcs);
  luaL_newlib(L, port_funcs);
  lua_setfield(L, -2, "port");
  return 1;
}
