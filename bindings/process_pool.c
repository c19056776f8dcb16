/* process_pool.c: uv_process_t with a socket pair per worker process; backs
 * the module 'tulua._process_pool', the transport under the process backend
 * of concurrent.futures (lua/concurrent/_process_pool.lua keeps the queue,
 * the windows and the futures' ids; this file moves bytes and processes).
 * This is the parent's end of the channel; the protocol is in
 * process_pool.h, the worker's end in process_worker.c.
 *
 * A worker is a tulua process started from this very binary
 * (/proc/self/exe: the file on disk may have been replaced meanwhile) as
 *   tulua -E -e "require('concurrent._process_pool').worker_main(3)"
 * with /dev/null as stdin, the parent's own stdout and stderr (a job's
 * print shows where the parent's would, as in Python), and one end of a
 * socket pair as descriptor 3: the protocol's only channel, both ways. A
 * descriptor of its own, rather than the child's stdin and stdout, since a
 * child cannot get the parent's stdout back as its fd 1 once stdout is the
 * channel. The child runs in a session of its own (detached), so Ctrl-C and
 * job control reach the parent only, which then ends its workers.
 *
 * A Link object per worker holds the process handle, the pipe handle on
 * the parent's end of the pair, and a prepare handle that flushes the
 * frames queued during a loop turn in one write. Reading never stops; a
 * posted job hands what was read (and the exit) to a Lua handler.
 * Ownership: the Link userdata points at a malloc'd link, freed once its
 * handles are closed and the userdata is collected (the last of the close
 * callbacks or __gc frees). The registry anchors the userdata while the
 * child lives, so that an exit always finds its handler. libuv reaps the
 * child while the process handle is open (exit_cb); a Link collected
 * before that (at lua_close) ends and reaps its child synchronously. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "queue.h"
#include "common.h"
#include "process_pool.h"
#include "trace.h"
#include "transfer.h"
#include "worker.h"

#define LINK_MT "tulua.process_link"

#define WRITE_MAX (1u << 30) /* bytes per uv_write */

/* A reply's status is the job's: TULUA_JOB_OK, _ERROR or _CANCELLED. */
static const char *const status_names[] = {"ok", "error", "cancelled"};

/* The worker sends its slow collector steps back for a traced job. */
int tulua__pool_frame(tulua__bytes *b, int kind, uint32_t job, const char *body,
                      size_t len) {
  int traced = kind == 'J' && tulua__trace_on();
  size_t pre = traced ? 8 : 0;
  if (tulua__bytes_reserve(b, HDR + pre + len) < 0) return UV_ENOMEM;
  char *h = b->base + b->len;
  put_header(h, pre + len, kind, traced ? TULUA_JOB_TRACED : 0, job);
  if (traced) {
    uint64_t slow = tulua__trace_gc_slow_ns();
    memcpy(h + HDR, &slow, 8);
  }
  if (len > 0) memcpy(h + HDR + pre, body, len);
  b->len += HDR + pre + len;
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
  tulua__bytes out; /* frames queued since the last write */
  tulua__bytes wbuf; /* the frames being written */
  tulua__bytes in; /* read, not yet taken by recv */
  size_t received; /* the bytes of the last reply recv took */
} wlink;

static void free_link(wlink *l) {
  free(l->out.base);
  free(l->wbuf.base);
  free(l->in.base);
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
  if (l->wbuf.pos == l->wbuf.len) { /* take the queued frames */
    if (l->out.pos == l->out.len) return;
    tulua__bytes t = l->wbuf;
    l->wbuf = l->out;
    l->out = t;
    l->out.pos = l->out.len = 0;
  }
  size_t n = l->wbuf.len - l->wbuf.pos;
  if (n > WRITE_MAX) n = WRITE_MAX;
  uv_buf_t b = uv_buf_init(l->wbuf.base + l->wbuf.pos, (unsigned)n);
  l->wreq.data = l;
  if (uv_write(&l->wreq, (uv_stream_t *)&l->pipe, &b, 1, write_cb) < 0) {
    l->wbuf.pos = l->wbuf.len = 0; /* the child is gone: its exit tells */
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
    l->wbuf.pos = l->wbuf.len = 0;
    l->out.pos = l->out.len = 0;
    return;
  }
  l->wbuf.pos += l->wsize;
  bytes_trim(&l->wbuf);
  if (l->wbuf.pos < l->wbuf.len || l->out.pos < l->out.len)
    uv_prepare_start(&l->flush, flush_cb); /* the next turn */
}

static void alloc_cb(uv_handle_t *h, size_t hint, uv_buf_t *buf) {
  (void)hint;
  wlink *l = h->data;
  if (tulua__bytes_reserve(&l->in, READ_CHUNK) < 0) {
    *buf = uv_buf_init(NULL, 0); /* read_cb gets UV_ENOBUFS */
    return;
  }
  *buf = uv_buf_init(l->in.base + l->in.len, (unsigned)(l->in.cap - l->in.len));
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
    if (tulua__bytes_reserve(&l->in, READ_CHUNK) < 0) return;
    ssize_t n = read(fd, l->in.base + l->in.len, l->in.cap - l->in.len);
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
  if (tulua__pool_frame(&l->out, kind[0], (uint32_t)job, body, len) < 0)
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
  l->in.pos = l->in.len = 0;
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
/* link:received() -> the bytes of the last reply recv took (for the
 * trace) */
static int link_received(lua_State *L) {
  wlink *l = check_link(L);
  lua_pushinteger(L, l ? (lua_Integer)l->received : 0);
  return 1;
}

static int link_recv(lua_State *L) {
  wlink *l = check_link(L);
  if (l == NULL) return 0;
  const char *gc;
  size_t gc_len;
  int n = tulua__pool_recv_gc(L, &l->in, &l->received, &gc, &gc_len, 0);
  if (n < 0) return protocol_error(l);
  /* a process worker's track: "process <pid>", on the same clock */
  if (gc_len > 0) tulua__pool_trace_gc(gc, gc_len, "process", 0, 0, l->pid, 0);
  return n;
}

void tulua__pool_trace_gc(const char *gc, size_t len, const char *kind,
                          int pool, int worker, int pid, double offset) {
  while (len >= GC_STEP_HEAD) {
    uint64_t t0, dur;
    int32_t kb0, kb1;
    memcpy(&t0, gc, 8);
    memcpy(&dur, gc + 8, 8);
    memcpy(&kb0, gc + 16, 4);
    memcpy(&kb1, gc + 20, 4);
    size_t nlen = (unsigned char)gc[24];
    if (len - GC_STEP_HEAD < nlen) return;
    char name[256];
    memcpy(name, gc + GC_STEP_HEAD, nlen);
    name[nlen] = '\0';
    tulua__trace_gcstep(kind, pool, worker, pid, name,
                        t0 + (uint64_t)(int64_t)(offset * 1e9), dur, kb0, kb1);
    gc += GC_STEP_HEAD + nlen;
    len -= GC_STEP_HEAD + nlen;
  }
}

int tulua__pool_recv_gc(lua_State *L, tulua__bytes *in, size_t *received,
                        const char **gc, size_t *gc_len, double offset) {
  *gc = NULL;
  *gc_len = 0;
  size_t avail = in->len - in->pos;
  if (avail == 0) bytes_trim(in);
  if (avail < 4) return 0;
  uint32_t size;
  memcpy(&size, in->base + in->pos, 4);
  if (size < HDR - 4) return -1;
  if (avail - 4 < size) return 0;
  const char *f = in->base + in->pos + 4;
  const char *body = f + HDR - 4;
  size_t len = size - (HDR - 4);
  int kind = f[0], status = (unsigned char)f[1];
  uint32_t job;
  memcpy(&job, f + 2, 4);
  if (kind == 'H') {
    in->pos += 4 + (size_t)size;
    lua_settop(L, 1);
    lua_pushinteger(L, 0);
    lua_pushliteral(L, "ready");
    return 2;
  }
  if (kind == 'B') {
    in->pos += 4 + (size_t)size; /* the bytes stay until the next read */
    lua_settop(L, 1);
    lua_pushinteger(L, 0);
    lua_pushliteral(L, "broken");
    lua_pushnumber(L, (lua_Number)uv_hrtime() / 1e9);
    lua_pushvalue(L, -1);
    lua_pushlstring(L, body, len);
    return 5;
  }
  int has_gc = kind == 'R' && (status & TULUA_REPLY_GC);
  status &= ~TULUA_REPLY_GC;
  if (kind != 'R' || len < TIMES || status > TULUA_JOB_CANCELLED) return -1;
  uint64_t t0, t1;
  memcpy(&t0, body, 8);
  memcpy(&t1, body + 8, 8);
  body += TIMES;
  len -= TIMES;
  if (has_gc) { /* the worker's slow collector steps (a traced job) */
    uint32_t glen;
    if (len < 4) return -1;
    memcpy(&glen, body, 4);
    if (len - 4 < glen) return -1;
    *gc = body + 4;
    *gc_len = glen;
    body += 4 + (size_t)glen;
    len -= 4 + (size_t)glen;
  }
  in->pos += 4 + (size_t)size;
  *received = len;
  lua_settop(L, 1);
  lua_pushinteger(L, (lua_Integer)job);
  lua_pushstring(L, status_names[status]);
  lua_pushnumber(L, (lua_Number)t0 / 1e9 + offset);
  lua_pushnumber(L, (lua_Number)t1 / 1e9 + offset);
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

int luaopen_tulua_process_pool(lua_State *L) {
  static const luaL_Reg link_methods[] = {
      {"send", link_send},     {"recv", link_recv},         {"ref", link_ref},
      {"status", link_status}, {"close", link_close},       {"reap", link_reap},
      {"alive", link_alive},   {"received", link_received}, {NULL, NULL}};
  static const luaL_Reg funcs[] = {{"spawn", pp_spawn},
                                   {"executable", pp_executable},
                                   {"cancel_process", pp_cancel_process},
                                   {NULL, NULL}};
  static const luaL_Reg link_meta[] = {{"__gc", link_gc}, {NULL, NULL}};
  tulua__new_class(L, LINK_MT, link_meta, link_methods);
  luaL_newlib(L, funcs);
  tulua__process_worker_open(L);
  return 1;
}
