/* trace.c: the trace recorder: a bounded ring of records that any thread
 * adds to under a mutex, a writer thread that moves them to a file in the
 * background, and, when the trace stops, their conversion into Chrome
 * trace event JSON (host/trace.md).
 *
 * Why records first and JSON at the end: a task's step costs well under a
 * microsecond (W2: millions of steps a second), and formatting its three
 * JSON events costs more: on the loop's core (the ruler pins a process to
 * one) a writer that formatted as it went made the loop 5x slower. A
 * record is a copy of a few fields (a step does not even name its task:
 * the name is in the task's spawn or rename record), the writer appends it
 * as it is to an unlinked temporary file, and stop turns that file into
 * JSON, joining the names back. Memory stays bounded: when the writer falls
 * behind, new records are dropped and counted (the file says how many);
 * the loop never waits for the disk. */
#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <lauxlib.h>
#include <uv.h>

#include "runtime.h"
#include "trace.h"

#define DEFAULT_MAX 65536
#define BATCH       4096
#define SHARED_MAX  4096
#define MAX_TRACKS  1024
#define HEAD        offsetof(tulua__trace_rec, text)
#define ENTRY_AVG   128 /* the owner's ring's bytes for each of max_events */

/* An entry of the owner's ring: its size (a multiple of 8, this header
 * included), then the record's used bytes; a pad entry fills the end of
 * the ring that a record did not fit in. */
typedef struct entry {
  uint32_t size, pad;
} entry;

static size_t entry_size(const tulua__trace_rec *r) {
  return (sizeof(entry) + HEAD + r->len + 7) & ~(size_t)7;
}

#define NAME_LEN 48
#define KIND_LEN 24

atomic_int tulua__tracing;
int tulua__trace_tsc;
/* trace.start's gc_slow, in nanoseconds; read by every runtime it paces */
static _Atomic uint64_t gc_slow_ns = TULUA__GC_SLOW_DEFAULT_NS;

uint64_t tulua__trace_gc_slow_ns(void) {
  return atomic_load(&gc_slow_ns);
}

void tulua__trace_set_gc_slow(uint64_t ns) {
  atomic_store(&gc_slow_ns, ns);
}

/* A track the file has named already (thread_name metadata). */
typedef struct {
  int32_t pid, tid;
} track;

/* What the conversion knows of a task: its name, and whether a wait of
 * its is open in the file (a trace started while it waited has none). */
typedef struct {
  uint64_t id; /* 0: a free slot */
  char name[NAME_LEN];
  char wait[KIND_LEN]; /* the open wait's kind: its end's name */
  int waiting;
  char hex[20]; /* the id as the JSON writes it (0x...), made once */
  size_t hex_len;
} task_info;

static struct {
  uv_once_t once;
  uv_mutex_t mu; /* on, stopping, the ring and the counts */
  uv_cond_t cond; /* the writer sleeps on it */
  int on, stopping;
  tulua__trace_rec *ring; /* other threads' records: SHARED_MAX slots */
  size_t head, count;
  size_t cap; /* max_events: the owner's ring holds about that many */
  uint64_t written, dropped;
  uv_thread_t writer;
  /* The owner's ring: the thread that started the trace (its runtime's
   * tasks, its pools' jobs: nearly every record) adds to it without a
   * lock, the writer takes from it. It holds entries of the bytes each
   * record uses, one after another (a step's is 64 bytes), rather than
   * slots of the largest record's 240: a ring of slots spread a million
   * steps a second over 16 MiB, and each record's store then missed the
   * cache (W2 with a trace ran at 0.5x of without; tests/bench/README.md).
   * head and tail count bytes ever taken and added; own_bytes is a power
   * of two. own is set and cleared by the owner alone. */
  uv_thread_t owner;
  char *own;
  size_t own_bytes;
  atomic_size_t own_head, own_tail;
  uint64_t own_dropped; /* the owner's */
  FILE *raw; /* the writer's: the records as they are; unlinked */
  FILE *f; /* the JSON, opened at start so that its errors show then */
  int32_t pid; /* this process */
  /* the conversion's */
  track tracks[MAX_TRACKS];
  int32_t pids[MAX_TRACKS];
  int ntracks, npids, first; /* first: no event written yet */
  uint64_t hr0, tick0, hr1, tick1; /* the ticks' calibration */
  task_info *tasks; /* open addressing on the id */
  size_t ntasks, tasks_cap;
} tr = {.once = UV_ONCE_INIT};

static void init_once(void) {
  if (uv_mutex_init(&tr.mu) != 0 || uv_cond_init(&tr.cond) != 0) abort();
}

/* Appends s, cut to max - 1 bytes and to the room left, and its NUL. */
static void add_text(tulua__trace_rec *r, const char *s, size_t max) {
  if (s == NULL) s = "";
  size_t len = strlen(s), room = TULUA_TR_TEXT - r->len;
  if (len >= max) len = max - 1;
  if (len >= room) len = room - 1;
  if (len > 0) memcpy(r->text + r->len, s, len);
  r->text[r->len + len] = '\0';
  r->len = (uint16_t)(r->len + len + 1);
}

void tulua__trace_text(tulua__trace_rec *r, const char *name, const char *kind,
                       const char *detail) {
  r->len = 0;
  add_text(r, name, NAME_LEN);
  add_text(r, kind, KIND_LEN);
  add_text(r, detail, TULUA_TR_TEXT);
}

void tulua__trace_add(const tulua__trace_rec *r) {
  uv_thread_t self = uv_thread_self();
  if (uv_thread_equal(&self, &tr.owner)) { /* the owner: no lock */
    if (tr.own == NULL) return; /* stopped during the step being recorded */
    size_t tail = atomic_load_explicit(&tr.own_tail, memory_order_relaxed);
    size_t head = atomic_load_explicit(&tr.own_head, memory_order_acquire);
    size_t size = entry_size(r), pos = tail & (tr.own_bytes - 1);
    size_t skip = tr.own_bytes - pos < size ? tr.own_bytes - pos : 0;
    if (tail - head + skip + size > tr.own_bytes) {
      tr.own_dropped++;
      return;
    }
    if (skip > 0) { /* the record goes at the start: the end is padding */
      *(entry *)(tr.own + pos) = (entry){(uint32_t)skip, 1};
      pos = 0;
    }
    *(entry *)(tr.own + pos) = (entry){(uint32_t)size, 0};
    memcpy(tr.own + pos + sizeof(entry), r, HEAD + r->len);
    atomic_store_explicit(&tr.own_tail, tail + skip + size,
                          memory_order_release);
    return;
  }
  uv_mutex_lock(&tr.mu);
  if (!tr.on) {
    uv_mutex_unlock(&tr.mu);
    return;
  }
  if (tr.count == SHARED_MAX) {
    tr.dropped++;
  } else {
    memcpy(&tr.ring[(tr.head + tr.count) % SHARED_MAX], r, HEAD + r->len);
    tr.count++;
  }
  uv_mutex_unlock(&tr.mu);
}

/* ---- the raw file: records packed as varints ---- */

/* A record in the raw file: kind, flags, then as varints ts (the change
 * from the previous record's, zigzag: a job's start may be earlier), dur,
 * id, n1 and n2 (zigzag), pid, tid, the text's length, and the text. A
 * step is about 16 bytes there instead of 60: the writer's share of the
 * loop's core is mostly the bytes it hands to write(). */
#define PACKED_MAX (2 + 8 * 10 + TULUA_TR_TEXT)

static char *put_varint(char *p, uint64_t v) {
  while (v >= 0x80) {
    *p++ = (char)(v | 0x80);
    v >>= 7;
  }
  *p++ = (char)v;
  return p;
}

static uint64_t zigzag(int64_t v) {
  return ((uint64_t)v << 1) ^ (uint64_t)(v >> 63);
}

static char *pack(char *p, const tulua__trace_rec *r, uint64_t *last_ts) {
  *p++ = (char)r->kind;
  *p++ = (char)r->flags;
  p = put_varint(p, zigzag((int64_t)(r->ts - *last_ts)));
  *last_ts = r->ts;
  p = put_varint(p, r->dur);
  p = put_varint(p, r->id);
  p = put_varint(p, zigzag(r->n1));
  p = put_varint(p, zigzag(r->n2));
  p = put_varint(p, (uint32_t)r->pid);
  p = put_varint(p, (uint32_t)r->tid);
  p = put_varint(p, r->len);
  memcpy(p, r->text, r->len);
  return p + r->len;
}

/* The raw file read back a chunk at a time (a getc per byte was a sixth
 * of the conversion): refilled while a whole record may not be there. */
static struct {
  char *buf;
  size_t pos, len;
} in;

#define IN_SIZE (1 << 20)

static void in_fill(FILE *f) {
  if (in.len - in.pos >= PACKED_MAX) return;
  memmove(in.buf, in.buf + in.pos, in.len - in.pos);
  in.len -= in.pos;
  in.pos = 0;
  in.len += fread(in.buf + in.len, 1, IN_SIZE - in.len, f);
}

static int get_varint(uint64_t *v) {
  *v = 0;
  for (int shift = 0; shift < 64; shift += 7) {
    if (in.pos == in.len) return 0;
    unsigned c = (unsigned char)in.buf[in.pos++];
    *v |= (uint64_t)(c & 0x7f) << shift;
    if (!(c & 0x80)) return 1;
  }
  return 0;
}

/* Reads the next record of the raw file into r; 0 at its end. */
static int unpack(FILE *f, tulua__trace_rec *r, uint64_t *last_ts) {
  in_fill(f);
  if (in.len - in.pos < 2) return 0;
  int kind = (unsigned char)in.buf[in.pos];
  int flags = (unsigned char)in.buf[in.pos + 1];
  in.pos += 2;
  uint64_t v[8];
  for (int i = 0; i < 8; i++)
    if (!get_varint(&v[i])) return 0;
  r->kind = (uint8_t)kind;
  r->flags = (uint8_t)flags;
  *last_ts += (uint64_t)((int64_t)(v[0] >> 1) ^ -(int64_t)(v[0] & 1));
  r->ts = *last_ts;
  r->dur = v[1];
  r->id = v[2];
  r->n1 = (int64_t)(v[3] >> 1) ^ -(int64_t)(v[3] & 1);
  r->n2 = (int64_t)(v[4] >> 1) ^ -(int64_t)(v[4] & 1);
  r->pid = (int32_t)v[5];
  r->tid = (int32_t)v[6];
  if (v[7] > TULUA_TR_TEXT || in.len - in.pos < v[7]) return 0;
  r->len = (uint16_t)v[7];
  memcpy(r->text, in.buf + in.pos, r->len);
  in.pos += r->len;
  return 1;
}

/* Packs n records from ring[h] into buf and writes them out. */
static void put_batch(char *buf, const tulua__trace_rec *ring, size_t h,
                      size_t n, uint64_t *last_ts) {
  char *p = buf;
  for (size_t i = 0; i < n; i++)
    p = pack(p, &ring[h + i], last_ts);
  fwrite(buf, 1, (size_t)(p - buf), tr.raw);
}

/* Writes the records out in batches, polling the owner's ring every few
 * milliseconds (its producer never signals: that would cost a lock) and
 * taking the other threads' under the lock, which it holds only to read
 * and move their head. */
static void writer_main(void *arg) {
  (void)arg;
  char *buf = malloc(BATCH * (size_t)PACKED_MAX);
  uint64_t last_ts = 0;
  for (;;) {
    /* The stop is read before the rings: the owner stops the trace after
     * its last record, so a pass that begins with the stop seen takes all
     * there is. (Read after an empty pass, it lost the records added
     * between that pass and the stop.) */
    uv_mutex_lock(&tr.mu);
    int stopping = tr.stopping;
    uv_mutex_unlock(&tr.mu);
    size_t head = atomic_load_explicit(&tr.own_head, memory_order_relaxed);
    size_t tail = atomic_load_explicit(&tr.own_tail, memory_order_acquire);
    size_t n = 0;
    char *p = buf;
    while (head != tail && n < BATCH) { /* packed before head moves on */
      const entry *e = (const entry *)(tr.own + (head & (tr.own_bytes - 1)));
      if (!e->pad) {
        if (p != NULL) p = pack(p, (const tulua__trace_rec *)(e + 1), &last_ts);
        n++;
      }
      head += e->size;
    }
    if (p != NULL && p > buf) fwrite(buf, 1, (size_t)(p - buf), tr.raw);
    atomic_store_explicit(&tr.own_head, head, memory_order_release);
    uv_mutex_lock(&tr.mu);
    size_t sh = tr.head, sn = tr.count < BATCH ? tr.count : BATCH;
    if (sn > SHARED_MAX - sh) sn = SHARED_MAX - sh;
    uv_mutex_unlock(&tr.mu);
    if (sn > 0 && buf != NULL) put_batch(buf, tr.ring, sh, sn, &last_ts);
    uv_mutex_lock(&tr.mu);
    tr.head = (sh + sn) % SHARED_MAX;
    tr.count -= sn;
    if (buf != NULL)
      tr.written += n + sn;
    else /* no memory for the packing: what was there is lost */
      tr.dropped += n + sn;
    if (n + sn == 0) {
      if (stopping) { /* and all written */
        uv_mutex_unlock(&tr.mu);
        break;
      }
      if (!tr.stopping) /* else one more pass, at once */
        (void)uv_cond_timedwait(&tr.cond, &tr.mu, 5 * 1000 * 1000);
    }
    uv_mutex_unlock(&tr.mu);
  }
  free(buf);
}

/* ---- the conversion to JSON ---- */

/* The JSON is made in a buffer of our own and written a buffer at a time:
 * formatting each field with fprintf and fputc cost ~17,000 instructions
 * an event (vfprintf parsing its format, stdio's locking per call), which
 * made the stop of a trace of 200,000 steps take seconds. An event is at
 * most a few escaped texts of TULUA_TR_TEXT bytes (6 bytes each at worst)
 * and a few numbers: ROOM bytes are always free when one starts. */
#define OUT_SIZE (1 << 16)
#define ROOM     (8 * TULUA_TR_TEXT + 1024)

static struct {
  FILE *f;
  char *p; /* the next byte of buf */
  int32_t pid, tid; /* the last event's track, and its fields as JSON */
  char track[64];
  size_t track_len;
  uint64_t ts; /* the last event's time, and its digits */
  char ts_digits[32];
  size_t ts_len;
  char buf[OUT_SIZE];
} out;

static void out_flush(void) {
  if (out.p > out.buf) fwrite(out.buf, 1, (size_t)(out.p - out.buf), out.f);
  out.p = out.buf;
}

/* Appends n bytes of s (an event's fixed text; the room was made). */
static void put_mem(const char *s, size_t n) {
  memcpy(out.p, s, n);
  out.p += n;
}

#define PUT(lit) put_mem(lit, sizeof lit - 1)

/* "00" to "99": two digits a division */
static const char pairs[] =
    "00010203040506070809101112131415161718192021222324252627282930313233343536"
    "37383940414243444546474849"
    "50515253545556575859606162636465666768697071727374757677787980818283848586"
    "87888990919293949596979899";

static void put_u64(uint64_t v) {
  char d[20], *end = d + sizeof d, *q = end;
  while (v >= 100) {
    q -= 2;
    memcpy(q, pairs + 2 * (v % 100), 2);
    v /= 100;
  }
  if (v >= 10) {
    q -= 2;
    memcpy(q, pairs + 2 * v, 2);
  } else {
    *--q = (char)('0' + v);
  }
  memcpy(out.p, q, (size_t)(end - q));
  out.p += end - q;
}

static void put_i64(int64_t v) {
  if (v < 0) {
    *out.p++ = '-';
    put_u64(0 - (uint64_t)v);
  } else {
    put_u64((uint64_t)v);
  }
}

static const char hexd[] = "0123456789abcdef";

/* Writes 0x and v in lower-case hex (an id) at p (18 bytes at most);
 * returns its end. */
static char *hex_at(char *p, uint64_t v) {
  char d[16];
  int n = 0;
  do {
    d[n++] = hexd[v & 15];
    v >>= 4;
  } while (v != 0);
  *p++ = '0';
  *p++ = 'x';
  while (n > 0)
    *p++ = d[--n];
  return p;
}

static void put_hex(uint64_t v) {
  out.p = hex_at(out.p, v);
}

/* Writes s as the inside of a JSON string: quotes and backslashes
 * escaped, control characters as \u00XX, UTF-8 as it is, and a byte that
 * starts no valid sequence as U+FFFD (a message cut inside a character). */
static void put_str(const char *s) {
  static unsigned char plain[256]; /* 1: the byte goes as it is */
  if (!plain['a']) {
    for (unsigned c = 0x20; c < 0x80; c++)
      plain[c] = c != '"' && c != '\\';
  }
  const unsigned char *p = (const unsigned char *)s;
  char *o = out.p;
  while (*p) {
    while (plain[*p])
      *o++ = (char)*p++;
    unsigned c = *p;
    if (c == '\0') {
      break;
    } else if (c == '"' || c == '\\') {
      *o++ = '\\';
      *o++ = (char)c;
      p++;
    } else if (c < 0x20) {
      memcpy(o, "\\u00", 4);
      o[4] = hexd[c >> 4];
      o[5] = hexd[c & 15];
      o += 6;
      p++;
    } else if (c < 0x80) {
      *o++ = (char)c;
      p++;
    } else {
      int n = c >= 0xf0 && c < 0xf5 ? 3 : c >= 0xe0 ? 2 : c >= 0xc2 ? 1 : -1;
      int ok = n > 0;
      for (int i = 1; ok && i <= n; i++)
        ok = (p[i] & 0xc0) == 0x80;
      if (ok) {
        memcpy(o, p, (size_t)n + 1);
        o += n + 1;
        p += n + 1;
      } else {
        memcpy(o, "\\ufffd", 6);
        o += 6;
        p++;
      }
    }
  }
  out.p = o;
}

/* Writes <ns as microseconds with three decimals>. */
static void put_us(uint64_t ns) {
  unsigned frac = (unsigned)(ns % 1000);
  put_u64(ns / 1000);
  out.p[0] = '.';
  out.p[1] = (char)('0' + frac / 100);
  out.p[2] = (char)('0' + frac / 10 % 10);
  out.p[3] = (char)('0' + frac % 10);
  out.p += 4;
}

/* Writes an event's time as put_us does. A step's end and the next
 * step's start (its wait's begin, the next task's end of wait and step)
 * share their time: its digits are kept. */
static void put_ts(uint64_t ns) {
  if (ns != out.ts || out.ts_len == 0) {
    char *p = out.p;
    put_us(ns);
    out.ts_len = (size_t)(out.p - p);
    memcpy(out.ts_digits, p, out.ts_len);
    out.ts = ns;
  } else {
    put_mem(out.ts_digits, out.ts_len);
  }
}

static void begin_event(void) {
  if (out.buf + OUT_SIZE - out.p < ROOM) out_flush();
  if (tr.first)
    PUT("\n");
  else
    PUT(",\n");
  tr.first = 0;
}

#define EVENT(ph, cat, ...)                                                    \
  event_head("{\"ph\":\"" ph "\",\"cat\":\"" cat "\",\"name\":\"",             \
             sizeof "{\"ph\":\"" ph "\",\"cat\":\"" cat "\",\"name\":\"" - 1,  \
             __VA_ARGS__)

/* The common fields of an event: phase, name, track, time (microseconds,
 * with the nanoseconds as decimals); pre is its opening up to the name's
 * quote (EVENT makes it from the phase and category). */
static void event_head(const char *pre, size_t n, const char *name, int32_t pid,
                       int32_t tid, uint64_t ts) {
  begin_event();
  put_mem(pre, n);
  put_str(name);
  if (pid != out.pid || tid != out.tid || out.track_len == 0) {
    char *p = out.p; /* the track's fields, kept for the next events */
    PUT("\",\"pid\":");
    put_i64(pid);
    PUT(",\"tid\":");
    put_i64(tid);
    PUT(",\"ts\":");
    out.track_len = (size_t)(out.p - p);
    memcpy(out.track, p, out.track_len);
    out.pid = pid;
    out.tid = tid;
  } else {
    put_mem(out.track, out.track_len);
  }
  put_ts(ts);
}

static void meta(const char *what, int32_t pid, int32_t tid, const char *name) {
  begin_event();
  PUT("{\"ph\":\"M\",\"name\":\"");
  put_mem(what, strlen(what));
  PUT("\",\"pid\":");
  put_i64(pid);
  PUT(",\"tid\":");
  put_i64(tid);
  PUT(",\"args\":{\"name\":\"");
  put_str(name);
  PUT("\"}}");
}

/* Names the track of r the first time it shows: the loop, or a worker. */
static void name_track(const tulua__trace_rec *r, int32_t pid, int32_t tid,
                       const char *where) {
  int i;
  for (i = 0; i < tr.npids && tr.pids[i] != pid; i++) {
  }
  if (i == tr.npids && tr.npids < MAX_TRACKS) {
    char buf[64];
    snprintf(buf, sizeof buf, pid == tr.pid ? "tulua %ld" : "process %ld",
             (long)pid);
    meta("process_name", pid, 0, buf);
    tr.pids[tr.npids++] = pid;
  }
  for (i = 0; i < tr.ntracks; i++)
    if (tr.tracks[i].pid == pid && tr.tracks[i].tid == tid) return;
  if (tr.ntracks == MAX_TRACKS) return;
  tr.tracks[tr.ntracks++] = (track){pid, tid};
  int worker =
      r->kind == TULUA_TR_JOB || (r->kind == TULUA_TR_GCSTEP && *where);
  meta("thread_name", pid, tid, worker ? where : "loop");
}

/* Writes "key":"<s escaped>", after a comma unless first: key is a
 * literal. */
#define FIELD(key, s, first)                                                   \
  do {                                                                         \
    if (!(first)) *out.p++ = ',';                                              \
    PUT("\"" key "\":\"");                                                     \
    put_str(s);                                                                \
    *out.p++ = '"';                                                            \
  } while (0)

/* Writes the last two string fields of args, and closes args and event. */
#define LAST(k1, v1, first, k2, v2)                                            \
  do {                                                                         \
    FIELD(k1, v1, first);                                                      \
    FIELD(k2, v2, 0);                                                          \
    PUT("}}");                                                                 \
  } while (0)

/* Writes ,"id":"0x..." (the task's async track) and opens args. */
static void put_id_args(const task_info *t) {
  PUT(",\"id\":\"");
  put_mem(t->hex, t->hex_len);
  PUT("\",\"args\":{");
}

/* The conversion's entry for task id, made (nameless) if it has none;
 * NULL only without memory. */
static task_info *task_of(uint64_t id) {
  if (2 * (tr.ntasks + 1) > tr.tasks_cap) { /* grow: load at most a half */
    size_t cap = tr.tasks_cap ? 2 * tr.tasks_cap : 1024;
    task_info *t = calloc(cap, sizeof *t);
    if (t == NULL) return NULL;
    for (size_t i = 0; i < tr.tasks_cap; i++) {
      if (tr.tasks[i].id == 0) continue;
      size_t j = (size_t)(tr.tasks[i].id >> 4) & (cap - 1);
      while (t[j].id != 0)
        j = (j + 1) & (cap - 1);
      t[j] = tr.tasks[i];
    }
    free(tr.tasks);
    tr.tasks = t;
    tr.tasks_cap = cap;
  }
  size_t j = (size_t)(id >> 4) & (tr.tasks_cap - 1);
  while (tr.tasks[j].id != 0 && tr.tasks[j].id != id)
    j = (j + 1) & (tr.tasks_cap - 1);
  if (tr.tasks[j].id == 0) {
    tr.tasks[j].id = id;
    tr.tasks[j].hex_len =
        (size_t)(hex_at(tr.tasks[j].hex, id) - tr.tasks[j].hex);
    snprintf(tr.tasks[j].name, NAME_LEN, "task 0x%llx", (unsigned long long)id);
    tr.ntasks++;
  }
  return &tr.tasks[j];
}

static void set_name(task_info *t, const char *name) {
  size_t len = strlen(name); /* a record's names are cut to fit already */
  if (len >= NAME_LEN) len = NAME_LEN - 1;
  memcpy(t->name, name, len);
  t->name[len] = '\0';
}

static void write_rec(const tulua__trace_rec *r) {
  int32_t pid = r->pid ? r->pid : tr.pid, tid = r->tid ? r->tid : 1;
  const char *name = r->text, *kind = name + strlen(name) + 1;
  const char *detail = kind + strlen(kind) + 1;
  char id[32];
  static task_info none; /* for a task when memory ran out */
  task_info *t = &none;
  if (r->kind <= TULUA_TR_ERROR) {
    t = task_of(r->id);
    if (t == NULL) {
      t = &none;
      none.hex_len = (size_t)(hex_at(none.hex, r->id) - none.hex);
    }
  }
  name_track(r, pid, tid, detail);
  switch (r->kind) {
    case TULUA_TR_SPAWN:
      set_name(t, name);
      t->waiting = 0;
      EVENT("b", "task", name, pid, tid, r->ts);
      put_id_args(t);
      PUT("\"parent\":\"");
      put_hex((uint64_t)r->n1);
      PUT("\"}}");
      break;
    case TULUA_TR_NAME:
      set_name(t, name);
      break;
    case TULUA_TR_FINISH:
      EVENT("e", "task", t->name, pid, tid, r->ts);
      put_id_args(t);
      FIELD("outcome", detail, 1);
      PUT("}}");
      break;
    case TULUA_TR_STEP:
      if ((r->flags & TULUA_TR_RESUMED) && t->waiting) { /* the wait ends */
        EVENT("e", "task", t->wait, pid, tid, r->ts);
        put_id_args(t);
        PUT("}}");
      }
      t->waiting = 0;
      EVENT("X", "step", t->name, pid, tid, r->ts);
      PUT(",\"dur\":");
      put_us(r->dur);
      PUT(",\"args\":{\"task\":\"");
      put_mem(t->hex, t->hex_len);
      PUT("\"}}");
      if (r->flags & TULUA_TR_WAITS) {
        t->waiting = 1;
        memcpy(t->wait, kind, strlen(kind) + 1); /* cut to KIND_LEN */
        EVENT("b", "task", kind, pid, tid, r->ts + r->dur);
        put_id_args(t);
        char left[64];
        if (r->flags & TULUA_TR_SLEEP) {
          snprintf(left, sizeof left, "sleep %.3f s", (double)r->n1 / 1e3);
          detail = left;
        }
        LAST("kind", kind, 1, "detail", detail);
      }
      break;
    case TULUA_TR_ERROR:
      EVENT("i", "error", "uncaught error", pid, tid, r->ts);
      snprintf(id, sizeof id, "0x%llx", (unsigned long long)r->id);
      PUT(",\"s\":\"t\",\"args\":{");
      LAST("task", id, 1, "message", detail);
      break;
    case TULUA_TR_SUBMIT:
      EVENT("i", "job", "submit", pid, tid, r->ts);
      PUT(",\"s\":\"t\",\"args\":{\"pool\":");
      put_i64(r->n2);
      PUT(",\"job\":");
      put_u64(r->id);
      PUT(",\"bytes_out\":");
      put_i64(r->n1);
      PUT("}}");
      break;
    case TULUA_TR_JOB:
      EVENT("X", "job", name, pid, tid, r->ts);
      PUT(",\"dur\":");
      put_us(r->dur);
      PUT(",\"args\":{\"job\":");
      put_u64(r->id);
      PUT(",\"bytes_out\":");
      put_i64(r->n1);
      PUT(",\"bytes_in\":");
      put_i64(r->n2);
      LAST("status", kind, 0, "worker", detail);
      break;
    case TULUA_TR_GCSTEP:
      EVENT("X", "gc", name, pid, tid, r->ts);
      PUT(",\"dur\":");
      put_us(r->dur);
      PUT(",\"args\":{\"kib_before\":");
      put_i64(r->n1);
      PUT(",\"kib_after\":");
      put_i64(r->n2);
      PUT("}}");
      break;
    case TULUA_TR_GC:
      EVENT("i", "gc", "gc cycle", pid, tid, r->ts);
      PUT(",\"s\":\"t\",\"args\":{\"kib\":");
      put_i64(r->n1);
      PUT(",\"cycles\":");
      put_i64(r->n2);
      PUT("}}");
      break;
  }
}

/* Reads the records back from the raw file and writes them as JSON.
 * Returns 0, or UV_ENOMEM when it had no memory to read them. */
static int convert(void) {
  tulua__trace_rec r;
  uint64_t last_ts = 0;
  rewind(tr.raw);
  double scale = tr.tick1 > tr.tick0
                     ? (double)(tr.hr1 - tr.hr0) / (double)(tr.tick1 - tr.tick0)
                     : 1;
  in.buf = malloc(IN_SIZE);
  in.pos = in.len = 0;
  while (in.buf != NULL && unpack(tr.raw, &r, &last_ts)) {
    while (r.len < 3)
      r.text[r.len++] = '\0'; /* three strings at least */
    if (r.flags & TULUA_TR_TICKS) {
      r.ts = tr.hr0 + (uint64_t)((double)(int64_t)(r.ts - tr.tick0) * scale);
      r.dur = (uint64_t)((double)r.dur * scale);
    }
    write_rec(&r);
  }
  out_flush();
  int rc = in.buf != NULL ? 0 : UV_ENOMEM;
  free(in.buf);
  in.buf = NULL;
  free(tr.tasks);
  tr.tasks = NULL;
  tr.ntasks = tr.tasks_cap = 0;
  return rc;
}

/* Whether the TSC ticks at one rate on every core, in every power state
 * (constant_tsc and nonstop_tsc in /proc/cpuinfo): then it times steps. */
static int tsc_usable(void) {
#if defined(__x86_64__)
  FILE *f = fopen("/proc/cpuinfo", "re");
  char line[4096];
  int ok = 0;
  while (f != NULL && !ok && fgets(line, sizeof line, f) != NULL)
    ok = strncmp(line, "flags", 5) == 0 && strstr(line, " constant_tsc") &&
         strstr(line, " nonstop_tsc");
  if (f != NULL) fclose(f);
  return ok;
#else
  return 0;
#endif
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
  size_t bytes = 1024; /* room for the largest record, whatever cap */
  while (bytes < cap * ENTRY_AVG)
    bytes *= 2;
  tulua__trace_rec *ring = malloc(SHARED_MAX * sizeof *ring);
  char *own = malloc(bytes);
  if (ring == NULL || own == NULL) {
    free(ring);
    free(own);
    snprintf(errbuf, errlen, "not enough memory for %zu events", cap);
    return UV_ENOMEM;
  }
  FILE *f = fopen(path, "we"), *raw = NULL;
  if (f != NULL) raw = tmpfile(); /* unlinked: nothing is left behind */
  if (raw == NULL) {
    int e = -errno;
    snprintf(errbuf, errlen, "%s: %s", f ? "a temporary file" : path,
             uv_strerror(e));
    if (f) fclose(f);
    free(ring);
    free(own);
    return e;
  }
  setvbuf(raw, NULL, _IOFBF, 1 << 20);
  setvbuf(f, NULL, _IOFBF, 1 << 16);
  uv_mutex_lock(&tr.mu);
  tr.ring = ring;
  tr.cap = cap;
  tr.head = tr.count = 0;
  tr.written = tr.dropped = 0;
  tr.owner = uv_thread_self();
  tr.own = own;
  tr.own_bytes = bytes;
  atomic_store(&tr.own_head, 0);
  atomic_store(&tr.own_tail, 0);
  tr.own_dropped = 0;
  tr.f = f;
  tr.raw = raw;
  tr.pid = (int32_t)getpid();
  /* trace.start may set it next */
  atomic_store(&gc_slow_ns, TULUA__GC_SLOW_DEFAULT_NS);
  tulua__trace_tsc = tsc_usable();
  tr.hr0 = uv_hrtime();
  tr.tick0 = tulua__trace_ticks();
  tr.on = 1;
  int rc = uv_thread_create(&tr.writer, writer_main, NULL);
  if (rc != 0) tr.on = 0;
  uv_mutex_unlock(&tr.mu);
  if (rc != 0) {
    snprintf(errbuf, errlen, "cannot start the writer: %s", uv_strerror(rc));
    tr.own = NULL;
    fclose(raw);
    fclose(f);
    free(ring);
    free(own);
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
  tr.hr1 = uv_hrtime();
  tr.tick1 = tulua__trace_ticks();
  free(tr.ring);
  tr.ring = NULL;
  free(tr.own); /* the owner stops it: it adds nothing meanwhile */
  tr.own = NULL;
  tr.dropped += tr.own_dropped;
  FILE *f = tr.f;
  int rc = fflush(tr.raw) != 0 || ferror(tr.raw) ? UV_EIO : 0;
  fputs("{\"displayTimeUnit\":\"ms\",\"traceEvents\":[", f);
  tr.ntracks = tr.npids = 0;
  tr.first = 1;
  out.f = f;
  out.p = out.buf;
  out.track_len = out.ts_len = 0;
  if (convert() < 0 && rc == 0) rc = UV_ENOMEM;
  fclose(tr.raw);
  begin_event();
  out_flush();
  fprintf(f,
          "{\"ph\":\"M\",\"name\":\"trace_stats\",\"pid\":%ld,\"tid\":0,"
          "\"args\":{\"records\":%llu,\"dropped\":%llu,\"max_events\":%zu}}",
          (long)tr.pid, (unsigned long long)tr.written,
          (unsigned long long)tr.dropped, tr.cap);
  fprintf(f,
          "\n],\"otherData\":{\"producer\":\"tulua\",\"dropped_events\":%llu,"
          "\"max_events\":%zu}}\n",
          (unsigned long long)tr.dropped, tr.cap);
  if (ferror(f) && rc == 0) rc = UV_EIO;
  if (fclose(f) != 0 && rc == 0) rc = -errno;
  uv_mutex_lock(&tr.mu);
  tr.f = tr.raw = NULL;
  tr.stopping = 0;
  uv_mutex_unlock(&tr.mu);
  return rc;
}

void tulua__trace_counts(uint64_t *written, uint64_t *dropped) {
  uv_once(&tr.once, init_once);
  uv_mutex_lock(&tr.mu);
  *written = tr.written;
  *dropped = tr.dropped;
  uv_mutex_unlock(&tr.mu);
}

void tulua__trace_track(const char *kind, int pool, int worker, int pid,
                        int32_t *rpid, int32_t *rtid, char *where,
                        size_t size) {
  *rpid = *rtid = 0;
  if (strcmp(kind, "process") == 0) {
    *rpid = *rtid = pid;
    snprintf(where, size, "process %d", pid);
  } else {
    /* the threads of a pool: tracks of their own beside the loop's */
    *rtid = 1000 * (pool > 0 ? pool : 1) + worker;
    if (strcmp(kind, "thread") == 0 && pool <= 1)
      snprintf(where, size, "thread worker %d", worker);
    else if (strcmp(kind, "thread") == 0)
      snprintf(where, size, "pool %d worker %d", pool, worker);
    else
      snprintf(where, size, "%.40s %d", kind, worker);
  }
}

void tulua__trace_job(const char *kind, int pool, int worker, int pid,
                      uint64_t job, const char *status, double started,
                      double finished, int64_t bytes_out, int64_t bytes_in) {
  if (!tulua__trace_on()) return;
  tulua__trace_rec r;
  r.kind = TULUA_TR_JOB;
  r.flags = 0;
  r.ts = (uint64_t)(started * 1e9);
  r.dur = finished > started ? (uint64_t)((finished - started) * 1e9) : 0;
  r.id = job;
  r.n1 = bytes_out;
  r.n2 = bytes_in;
  char where[64], name[32];
  tulua__trace_track(kind, pool, worker, pid, &r.pid, &r.tid, where,
                     sizeof where);
  snprintf(name, sizeof name, "job %llu", (unsigned long long)job);
  tulua__trace_text(&r, name, status, where);
  tulua__trace_add(&r);
}

void tulua__trace_gcstep(const char *kind, int pool, int worker, int pid,
                         const char *name, uint64_t ts, uint64_t dur,
                         int64_t kb0, int64_t kb1) {
  if (!tulua__trace_on()) return;
  tulua__trace_rec r;
  memset(&r, 0, HEAD);
  r.kind = TULUA_TR_GCSTEP;
  r.ts = ts;
  r.dur = dur;
  r.n1 = kb0;
  r.n2 = kb1;
  char where[64];
  tulua__trace_track(kind, pool, worker, pid, &r.pid, &r.tid, where,
                     sizeof where);
  tulua__trace_text(&r, name, NULL, where);
  tulua__trace_add(&r);
}

int tulua__trace_pool_no(void) {
  static atomic_int last;
  return atomic_fetch_add(&last, 1) + 1;
}

void tulua__trace_submit(int pool, uint64_t job, int64_t bytes_out) {
  if (!tulua__trace_on()) return;
  tulua__trace_rec r;
  tulua__trace_begin(&r, TULUA_TR_SUBMIT, job);
  r.n1 = bytes_out;
  r.n2 = pool;
  tulua__trace_text(&r, NULL, NULL, NULL);
  tulua__trace_add(&r);
}

void tulua__trace_name(uintptr_t id, const char *name) {
  if (!tulua__trace_on()) return;
  tulua__trace_rec r;
  tulua__trace_begin(&r, TULUA_TR_NAME, id);
  tulua__trace_text(&r, name, NULL, NULL);
  tulua__trace_add(&r);
}

/* Lua 5.4 has no hook around the collector: its incremental steps run
 * inside allocations, unseen. What a script can see is a cycle's end, when
 * the finalizer of an object made for the purpose runs. The finalizer
 * makes the next such object while the trace is on (a finalizer may; once
 * lua_close has begun they get no finalizer, so the chain ends with the
 * state), and posts the record: the heap cannot be read in a finalizer
 * (lua_gc answers -1 while the collector runs one). */
static void gc_record(lua_State *L, tulua__job *job) {
  tulua_runtime *rt = tulua__container_of(job, tulua_runtime, trace_gc);
  if (!rt->traced || !tulua__trace_on()) return;
  tulua__trace_rec r;
  memset(&r, 0, HEAD);
  r.kind = TULUA_TR_GC;
  r.ts = rt->trace_gc_ts;
  r.n1 = lua_gc(L, LUA_GCCOUNT, 0);
  r.n2 = rt->trace_gc_cycles;
  rt->trace_gc_cycles = 0;
  tulua__trace_text(&r, NULL, NULL, NULL);
  tulua__trace_add(&r);
}

static int gc_sentinel(lua_State *L) {
  tulua_runtime *rt = tulua__runtime(L);
  if (!rt->traced || !tulua__trace_on()) return 0;
  rt->trace_gc_cycles++;
  if (!rt->trace_gc.posted) {
    rt->trace_gc_ts = uv_hrtime();
    rt->trace_gc.run = gc_record;
    tulua__post(rt, &rt->trace_gc);
  }
  tulua__trace_gc_arm(L);
  return 0;
}

void tulua__trace_gc_arm(lua_State *L) {
  lua_newuserdatauv(L, 1, 0);
  if (luaL_newmetatable(L, "tulua.trace_gc")) {
    lua_pushcfunction(L, gc_sentinel);
    lua_setfield(L, -2, "__gc");
  }
  lua_setmetatable(L, -2);
  lua_pop(L, 1); /* unreferenced: the next cycle finds it */
}

/* ---- the module tulua._trace, under lua/tulua/trace.lua ---- */

/* start(path, max_events [, gc_slow]) -> true | nil, message, code */
static int l_start(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  lua_Integer max = luaL_checkinteger(L, 2);
  luaL_argcheck(L, max >= 0, 2, "must not be negative");
  lua_Number slow = luaL_optnumber(L, 3, TULUA__GC_SLOW_DEFAULT_NS / 1e9);
  luaL_argcheck(L, slow >= 0 && slow <= TULUA__SLOW_MAX, 3, "out of range");
  char err[512];
  int rc = tulua__trace_start(path, (size_t)max, err, sizeof err);
  if (rc < 0) {
    luaL_pushfail(L);
    lua_pushstring(L, err);
    lua_pushstring(L, uv_err_name(rc));
    return 3;
  }
  tulua__trace_set_gc_slow((uint64_t)(slow * 1e9));
  tulua__runtime(L)->traced = 1;
  tulua__trace_gc_arm(L);
  tulua__gctrace_start(L, 0, 0, NULL);
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
  tulua__gctrace_stop(L);
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

/* name(task, name): records the name of a task that was spawned before
 * the trace started (start names them all) */
static int l_name(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTHREAD);
  tulua__trace_name((uintptr_t)lua_tothread(L, 1), luaL_checkstring(L, 2));
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
                                 {"name", l_name},     {NULL, NULL}};
  luaL_newlib(L, fns);
  return 1;
}
