/* trace.c: the trace recorder: a bounded ring of fixed-size records that
 * any thread adds to under a mutex, and a writer thread that turns them
 * into Chrome trace event JSON (host/trace.md) in the background.
 *
 * Why a ring of fixed records and a writer thread: a step of a task costs
 * well under a microsecond, so a record must be a copy of a few fields,
 * never formatting or I/O on the loop's thread; and a trace of a long run
 * must not grow without bound: when the writer falls behind, new records
 * are dropped and counted (the file says how many), the loop never waits
 * for the disk. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <lauxlib.h>
#include <uv.h>

#include "runtime.h"
#include "trace.h"

#define DEFAULT_MAX 65536
#define BATCH       256
#define MAX_TRACKS  1024

atomic_int tulua__tracing;

/* A track the file has named already (thread_name metadata). */
typedef struct {
  int32_t pid, tid;
} track;

static struct {
  uv_once_t once;
  uv_mutex_t mu; /* everything below; held briefly by producers */
  uv_cond_t cond; /* the writer sleeps on it */
  int on, stopping;
  tulua__trace_rec *ring;
  size_t cap, head, count;
  uint64_t written, dropped;
  uv_thread_t writer;
  FILE *f;
  int write_error; /* errno of the first failed write */
  int32_t pid; /* this process */
  track tracks[MAX_TRACKS]; /* the writer's alone */
  int32_t pids[MAX_TRACKS]; /* processes named; the writer's alone */
  int ntracks, npids, first; /* first: no event written yet */
} tr = {.once = UV_ONCE_INIT};

static void init_once(void) {
  if (uv_mutex_init(&tr.mu) != 0 || uv_cond_init(&tr.cond) != 0) abort();
}

void tulua__trace_str(char *dst, size_t n, const char *s) {
  size_t len = s ? strlen(s) : 0;
  if (len >= n) len = n - 1;
  if (len > 0) memcpy(dst, s, len);
  dst[len] = '\0';
}

void tulua__trace_add(const tulua__trace_rec *r) {
  uv_mutex_lock(&tr.mu);
  if (!tr.on) {
    uv_mutex_unlock(&tr.mu);
    return;
  }
  if (tr.count == tr.cap) {
    tr.dropped++;
  } else {
    tr.ring[(tr.head + tr.count) % tr.cap] = *r;
    /* the writer is woken when a batch is there, not for every record */
    if (++tr.count == BATCH) uv_cond_signal(&tr.cond);
  }
  uv_mutex_unlock(&tr.mu);
}

/* ---- the writer's JSON ---- */

/* Writes s as the inside of a JSON string: escapes quotes, backslashes
 * and control bytes, keeps whole UTF-8 sequences and turns any other byte
 * (a sequence cut by a record's size, Latin-1 text) into U+FFFD, so that
 * every trace is valid JSON. */
static void put_str(FILE *f, const char *s) {
  const unsigned char *p = (const unsigned char *)s;
  while (*p) {
    unsigned c = *p;
    if (c == '"' || c == '\\') {
      fputc('\\', f);
      fputc((int)c, f);
      p++;
    } else if (c < 0x20) {
      fprintf(f, "\\u%04x", c);
      p++;
    } else if (c < 0x80) {
      fputc((int)c, f);
      p++;
    } else {
      int n = c >= 0xf0 && c < 0xf5 ? 3 : c >= 0xe0 ? 2 : c >= 0xc2 ? 1 : -1;
      int ok = n > 0;
      for (int i = 1; ok && i <= n; i++)
        ok = (p[i] & 0xc0) == 0x80;
      if (ok) {
        fwrite(p, 1, (size_t)n + 1, f);
        p += n + 1;
      } else {
        fputs("\\ufffd", f);
        p++;
      }
    }
  }
}

/* Writes ,"key":<ns as microseconds with three decimals>. */
static void put_us(FILE *f, const char *key, uint64_t ns) {
  fprintf(f, ",\"%s\":%llu.%03u", key, (unsigned long long)(ns / 1000),
          (unsigned)(ns % 1000));
}

static void begin_event(FILE *f) {
  fputs(tr.first ? "\n" : ",\n", f);
  tr.first = 0;
}

/* The common fields of an event: phase, name, track, time (microseconds,
 * with the nanoseconds as decimals). */
static void head(FILE *f, const char *ph, const char *cat, const char *name,
                 int32_t pid, int32_t tid, uint64_t ts) {
  begin_event(f);
  fprintf(f, "{\"ph\":\"%s\",\"cat\":\"%s\",\"name\":\"", ph, cat);
  put_str(f, name);
  fprintf(f, "\",\"pid\":%ld,\"tid\":%ld", (long)pid, (long)tid);
  put_us(f, "ts", ts);
}

static void meta(FILE *f, const char *what, int32_t pid, int32_t tid,
                 const char *name) {
  begin_event(f);
  fprintf(f,
          "{\"ph\":\"M\",\"name\":\"%s\",\"pid\":%ld,\"tid\":%ld,"
          "\"args\":{\"name\":\"",
          what, (long)pid, (long)tid);
  put_str(f, name);
  fputs("\"}}", f);
}

/* Names the track of r the first time it shows: the loop, or a worker. */
static void name_track(FILE *f, const tulua__trace_rec *r, int32_t pid,
                       int32_t tid) {
  int i;
  for (i = 0; i < tr.npids && tr.pids[i] != pid; i++) {
  }
  if (i == tr.npids && tr.npids < MAX_TRACKS) {
    char buf[64];
    snprintf(buf, sizeof buf, pid == tr.pid ? "tulua %ld" : "process %ld",
             (long)pid);
    meta(f, "process_name", pid, 0, buf);
    tr.pids[tr.npids++] = pid;
  }
  for (i = 0; i < tr.ntracks; i++)
    if (tr.tracks[i].pid == pid && tr.tracks[i].tid == tid) return;
  if (tr.ntracks == MAX_TRACKS) return;
  tr.tracks[tr.ntracks++] = (track){pid, tid};
  meta(f, "thread_name", pid, tid,
       r->kind == TULUA_TR_JOB ? r->detail : "loop");
}

/* Writes "key":"<s escaped>", after a comma unless first. */
static void put_field(FILE *f, const char *key, const char *s, int first) {
  fprintf(f, "%s\"%s\":\"", first ? "" : ",", key);
  put_str(f, s);
  fputc('"', f);
}

/* Writes the last two string fields of args, and closes args and event. */
static void put_last(FILE *f, const char *k1, const char *v1, int first,
                     const char *k2, const char *v2) {
  put_field(f, k1, v1, first);
  put_field(f, k2, v2, 0);
  fputs("}}", f);
}

/* Writes ,"id":"0x..." (the task's async track) and opens args. */
static void put_id_args(FILE *f, uint64_t id) {
  fprintf(f, ",\"id\":\"0x%llx\",\"args\":{", (unsigned long long)id);
}

static void write_rec(FILE *f, const tulua__trace_rec *r) {
  int32_t pid = r->pid ? r->pid : tr.pid, tid = r->tid ? r->tid : 1;
  char id[32];
  name_track(f, r, pid, tid);
  switch (r->kind) {
    case TULUA_TR_SPAWN:
      head(f, "b", "task", r->name, pid, tid, r->ts);
      put_id_args(f, r->id);
      fprintf(f, "\"parent\":\"0x%llx\"}}", (unsigned long long)r->n1);
      break;
    case TULUA_TR_FINISH:
      head(f, "e", "task", r->name, pid, tid, r->ts);
      put_id_args(f, r->id);
      put_field(f, "outcome", r->detail, 1);
      fputs("}}", f);
      break;
    case TULUA_TR_STEP:
      if (r->flags & TULUA_TR_RESUMED) { /* the wait ends as the step begins */
        head(f, "e", "task", "wait", pid, tid, r->ts);
        put_id_args(f, r->id);
        fputs("}}", f);
      }
      head(f, "X", "step", r->name, pid, tid, r->ts);
      put_us(f, "dur", r->dur);
      fprintf(f, ",\"args\":{\"task\":\"0x%llx\"}}", (unsigned long long)r->id);
      if (r->flags & TULUA_TR_WAITS) {
        head(f, "b", "task", "wait", pid, tid, r->ts + r->dur);
        put_id_args(f, r->id);
        put_last(f, "kind", r->kind_name, 1, "detail", r->detail);
      }
      break;
    case TULUA_TR_ERROR:
      head(f, "i", "error", "uncaught error", pid, tid, r->ts);
      snprintf(id, sizeof id, "0x%llx", (unsigned long long)r->id);
      fputs(",\"s\":\"t\",\"args\":{", f);
      put_last(f, "task", id, 1, "message", r->detail);
      break;
    case TULUA_TR_SUBMIT:
      head(f, "i", "job", "submit", pid, tid, r->ts);
      fprintf(f,
              ",\"s\":\"t\",\"args\":{\"pool\":%lld,\"job\":%llu,"
              "\"bytes_out\":%lld}}",
              (long long)r->n2, (unsigned long long)r->id, (long long)r->n1);
      break;
    case TULUA_TR_JOB:
      head(f, "X", "job", r->name, pid, tid, r->ts);
      put_us(f, "dur", r->dur);
      fprintf(f,
              ",\"args\":{\"job\":%llu,\"bytes_out\":%lld,"
              "\"bytes_in\":%lld",
              (unsigned long long)r->id, (long long)r->n1, (long long)r->n2);
      put_last(f, "status", r->kind_name, 0, "worker", r->detail);
      break;
    case TULUA_TR_GC:
      head(f, "X", "gc", "gc step", pid, tid, r->ts);
      put_us(f, "dur", r->dur);
      fprintf(f, ",\"args\":{\"kib_after\":%lld}}", (long long)r->n1);
      break;
  }
}

static void writer_main(void *arg) {
  (void)arg;
  tulua__trace_rec *batch = malloc(BATCH * sizeof *batch);
  uv_mutex_lock(&tr.mu);
  for (;;) {
    while (tr.count == 0 && !tr.stopping)
      (void)uv_cond_timedwait(&tr.cond, &tr.mu, 50 * 1000 * 1000);
    if (tr.count == 0) break; /* stopping, and all written */
    size_t n = 0;
    if (batch == NULL) { /* no memory for a batch: drop what is there */
      tr.dropped += tr.count;
      tr.head = (tr.head + tr.count) % tr.cap;
      tr.count = 0;
      continue;
    }
    while (n < BATCH && tr.count > 0) {
      batch[n++] = tr.ring[tr.head];
      tr.head = (tr.head + 1) % tr.cap;
      tr.count--;
    }
    uv_mutex_unlock(&tr.mu);
    for (size_t i = 0; i < n; i++)
      write_rec(tr.f, &batch[i]);
    uv_mutex_lock(&tr.mu);
    tr.written += n;
  }
  uv_mutex_unlock(&tr.mu);
  free(batch);
}

int tulua__trace_start(const char *path, size_t max_events, char *errbuf,
                       size_t errlen) {
  uv_once(&tr.once, init_once);
  size_t cap = max_events ? max_events : DEFAULT_MAX;
  uv_mutex_lock(&tr.mu);
  int busy = tr.on || tr.stopping;
  uv_mutex_unlock(&tr.mu);
  if (busy) {
    snprintf(errbuf, errlen, "a trace is on already");
    return UV_EBUSY;
  }
  tulua__trace_rec *ring = malloc(cap * sizeof *ring);
  if (ring == NULL) {
    snprintf(errbuf, errlen, "not enough memory for %zu events", cap);
    return UV_ENOMEM;
  }
  FILE *f = fopen(path, "we");
  if (f == NULL) {
    int e = -errno;
    snprintf(errbuf, errlen, "%s: %s", path, uv_strerror(e));
    free(ring);
    return e;
  }
  setvbuf(f, NULL, _IOFBF, 1 << 16);
  fputs("{\"displayTimeUnit\":\"ms\",\"traceEvents\":[", f);
  uv_mutex_lock(&tr.mu);
  tr.ring = ring;
  tr.cap = cap;
  tr.head = tr.count = 0;
  tr.written = tr.dropped = 0;
  tr.f = f;
  tr.pid = (int32_t)getpid();
  tr.ntracks = tr.npids = 0;
  tr.first = 1;
  tr.on = 1;
  tr.stopping = 0;
  int rc = uv_thread_create(&tr.writer, writer_main, NULL);
  if (rc != 0) {
    tr.on = 0;
    tr.ring = NULL;
    tr.f = NULL;
  }
  uv_mutex_unlock(&tr.mu);
  if (rc != 0) {
    snprintf(errbuf, errlen, "cannot start the writer: %s", uv_strerror(rc));
    fclose(f);
    free(ring);
    return rc;
  }
  atomic_store(&tulua__tracing, 1);
  return 0;
}

int tulua__trace_stop(void) {
  uv_once(&tr.once, init_once);
  uv_mutex_lock(&tr.mu);
  if (!tr.on || tr.stopping) {
    uv_mutex_unlock(&tr.mu);
    return UV_EINVAL;
  }
  atomic_store(&tulua__tracing, 0);
  tr.on = 0; /* no more records */
  tr.stopping = 1;
  uv_cond_signal(&tr.cond);
  uv_mutex_unlock(&tr.mu);
  uv_thread_join(&tr.writer);
  FILE *f = tr.f;
  begin_event(f);
  fprintf(f,
          "{\"ph\":\"M\",\"name\":\"trace_stats\",\"pid\":%ld,\"tid\":0,"
          "\"args\":{\"records\":%llu,\"dropped\":%llu,\"max_events\":%zu}}",
          (long)tr.pid, (unsigned long long)tr.written,
          (unsigned long long)tr.dropped, tr.cap);
  fprintf(f,
          "\n],\"otherData\":{\"producer\":\"tulua\",\"dropped_events\":%llu,"
          "\"max_events\":%zu}}\n",
          (unsigned long long)tr.dropped, tr.cap);
  int rc = ferror(f) ? UV_EIO : 0;
  if (fclose(f) != 0 && rc == 0) rc = -errno;
  uv_mutex_lock(&tr.mu);
  tr.f = NULL;
  free(tr.ring);
  tr.ring = NULL;
  tr.stopping = 0;
  uv_mutex_unlock(&tr.mu);
  return rc;
}

void tulua__trace_counts(uint64_t *written, uint64_t *dropped) {
  uv_once(&tr.once, init_once);
  uv_mutex_lock(&tr.mu);
  *written = tr.written + tr.count;
  *dropped = tr.dropped;
  uv_mutex_unlock(&tr.mu);
}

void tulua__trace_job(const char *kind, int pool, int worker, int pid,
                      uint64_t job, const char *status, double started,
                      double finished, int64_t bytes_out, int64_t bytes_in) {
  if (!tulua__trace_on()) return;
  tulua__trace_rec r;
  memset(&r, 0, sizeof r);
  r.kind = TULUA_TR_JOB;
  r.ts = (uint64_t)(started * 1e9);
  r.dur = finished > started ? (uint64_t)((finished - started) * 1e9) : 0;
  r.id = job;
  r.n1 = bytes_out;
  r.n2 = bytes_in;
  char *where = r.detail;
  if (strcmp(kind, "process") == 0) {
    r.pid = r.tid = pid;
    snprintf(where, sizeof r.detail, "process %d", pid);
  } else {
    /* the threads of a pool: tracks of their own beside the loop's */
    r.tid = 1000 * (pool > 0 ? pool : 1) + worker;
    if (strcmp(kind, "thread") == 0 && pool <= 1)
      snprintf(where, sizeof r.detail, "thread worker %d", worker);
    else if (strcmp(kind, "thread") == 0)
      snprintf(where, sizeof r.detail, "pool %d worker %d", pool, worker);
    else
      snprintf(where, sizeof r.detail, "%.40s %d", kind, worker);
  }
  snprintf(r.name, sizeof r.name, "job %llu", (unsigned long long)job);
  tulua__trace_str(r.kind_name, sizeof r.kind_name, status);
  tulua__trace_add(&r);
}

int tulua__trace_pool_no(void) {
  static atomic_int last;
  return atomic_fetch_add(&last, 1) + 1;
}

void tulua__trace_submit(int pool, uint64_t job, int64_t bytes_out) {
  if (!tulua__trace_on()) return;
  tulua__trace_rec r;
  memset(&r, 0, sizeof r);
  r.kind = TULUA_TR_SUBMIT;
  r.ts = uv_hrtime();
  r.id = job;
  r.n1 = bytes_out;
  r.n2 = pool;
  tulua__trace_add(&r);
}

/* ---- the module tulua._trace, under lua/tulua/trace.lua ---- */

/* start(path, max_events) -> true | nil, message, code */
static int l_start(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  lua_Integer max = luaL_checkinteger(L, 2);
  luaL_argcheck(L, max >= 0, 2, "must not be negative");
  char err[512];
  int rc = tulua__trace_start(path, (size_t)max, err, sizeof err);
  if (rc < 0) {
    luaL_pushfail(L);
    lua_pushstring(L, err);
    lua_pushstring(L, uv_err_name(rc));
    return 3;
  }
  tulua__runtime(L)->traced = 1;
  lua_pushboolean(L, 1);
  return 1;
}

/* stop() -> events, dropped | nil, message, code: only the runtime that
 * started the trace stops it */
static int l_stop(lua_State *L) {
  tulua_runtime *rt = tulua__runtime(L);
  if (!rt->traced) {
    luaL_pushfail(L);
    lua_pushliteral(L, "no trace was started here");
    lua_pushliteral(L, "EINVAL");
    return 3;
  }
  rt->traced = 0;
  int rc = tulua__trace_stop();
  uint64_t written, dropped;
  tulua__trace_counts(&written, &dropped);
  if (rc < 0) {
    luaL_pushfail(L);
    lua_pushfstring(L, "cannot write the trace: %s", uv_strerror(rc));
    lua_pushstring(L, uv_err_name(rc));
    return 3;
  }
  lua_pushinteger(L, (lua_Integer)written);
  lua_pushinteger(L, (lua_Integer)dropped);
  return 2;
}

/* on() -> whether a trace is on (started by any runtime of the process) */
static int l_on(lua_State *L) {
  lua_pushboolean(L, tulua__trace_on());
  return 1;
}

/* job(kind, pool, worker, pid, job, status, started, finished, out, in):
 * a backend in Lua records a job (tulua__trace_job) */
static int l_job(lua_State *L) {
  tulua__trace_job(luaL_checkstring(L, 1), (int)luaL_checkinteger(L, 2),
                   (int)luaL_checkinteger(L, 3), (int)luaL_checkinteger(L, 4),
                   (uint64_t)luaL_checkinteger(L, 5), luaL_checkstring(L, 6),
                   luaL_checknumber(L, 7), luaL_checknumber(L, 8),
                   (int64_t)luaL_optinteger(L, 9, -1),
                   (int64_t)luaL_optinteger(L, 10, -1));
  return 0;
}

/* pool_no() -> a new pool's number in the trace */
static int l_pool_no(lua_State *L) {
  lua_pushinteger(L, tulua__trace_pool_no());
  return 1;
}

/* submit(pool, job, out) */
static int l_submit(lua_State *L) {
  tulua__trace_submit((int)luaL_checkinteger(L, 1),
                      (uint64_t)luaL_checkinteger(L, 2),
                      (int64_t)luaL_optinteger(L, 3, -1));
  return 0;
}

int tulua__open_trace(lua_State *L) {
  static const luaL_Reg fns[] = {{"start", l_start},   {"stop", l_stop},
                                 {"on", l_on},         {"job", l_job},
                                 {"submit", l_submit}, {"pool_no", l_pool_no},
                                 {NULL, NULL}};
  luaL_newlib(L, fns);
  return 1;
}
