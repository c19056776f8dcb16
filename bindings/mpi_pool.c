/* mpi_pool.c: Open MPI under concurrent.futures' MPIPoolExecutor: the
 * module 'tulua._mpi', built as a shared object (tulua_mpi.so) that
 * bindings/mpi_load.c opens on first use, so that a tulua that never makes
 * an MPI pool neither loads libmpi nor calls MPI_Init.
 *
 * The frames are the process pool's (process_pool.h); one MPI message (tag
 * TAG, bytes) carries the frames of one loop turn to one worker rank, or
 * one or more frames of a worker. lua/concurrent/_mpi_pool.lua gives the
 * process pool's dispatch (lua/concurrent/_process_pool.lua) Link objects
 * with the methods of process_pool.c's, over this transport.
 *
 * The owner's side. MPI has no descriptor that libuv could poll, so one
 * communication thread per process makes every MPI call of the owner:
 * MPI_Init_thread, MPI_Comm_spawn, the sends, the probes and receives, and
 * MPI_Finalize at the end. Hence MPI_THREAD_FUNNELED: MPI is called from
 * one thread only, the one that initialized it, and Open MPI then takes no
 * locks (MPI_THREAD_MULTIPLE would cost every call a lock, and its
 * support in Open MPI 4.1 depends on the transports built in). The loop
 * thread hands it commands (spawn, send, release) under a mutex and
 * signals a condition variable; it hands the loop what came through a
 * uv_async_t per pool. When nothing happens, the thread does not spin:
 * it waits on the condition variable for 10 us, doubling up to 10 ms the
 * longer nothing comes (next_backoff: the ruler's W9 runs two CPU-bound
 * workers on two cores beside it), and any command wakes it at once.
 *
 * Failures. Open MPI 4.1 has no fault tolerance (ULFM came with 5.0):
 * nothing in MPI says that a rank died, and under mpiexec the runtime
 * usually aborts the whole job when one does. The thread therefore
 * watches the process of each worker on its own host (its pid, told in
 * the worker's first frame 'W'): one that is gone makes its Link exited;
 * and, on any host, a worker not heard of for the pool's bound (its
 * heartbeats 'A' included) is exited too. Errors of MPI calls return
 * (MPI_ERRORS_RETURN) and fail the pool.
 *
 * The worker's side (worker_open) has a communication thread of its own
 * (see there): the main thread runs the jobs, as the port of
 * bindings/process_worker.c over a tulua__port_io. */
#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <mpi.h>

#include "queue.h"
#include "common.h"
#include "mpi_host.h"
#include "process_pool.h"
#include "transfer.h"

/* The runtime's functions, through the table the opener hands over
 * (mpi_host.h says why not by name). */
static const tulua__mpi_host *rt_host;
#define tulua__runtime       (rt_host->runtime)
#define tulua__loop          (rt_host->loop)
#define tulua__post          (rt_host->post)
#define tulua__unpost        (rt_host->unpost)
#define tulua__pool_recv_gc  (rt_host->pool_recv_gc)
#define tulua__port_open_io  (rt_host->port_open_io)
#define tulua__pool_frame    (rt_host->pool_frame)
#define tulua__pool_trace_gc (rt_host->pool_trace_gc)

#define HUB_MT       "tulua.mpi_hub"
#define LINK_MT      "tulua.mpi_link"
#define TAG          0x7475 /* "tu" */
#define BACKOFF_MIN  10000L /* ns: the first wait of an idle thread */
#define BACKOFF_HOT  50000L /* ns: the longest while messages stream */
#define BACKOFF_WARM 1000000L /* ns: the longest soon after */
#define BACKOFF_COLD 10000000L /* ns: the longest after a long silence */
#define HOT          5000000ULL /* ns since the last message: streaming */
#define WARM         200000000ULL /* ns since the last message: soon after */
#define FLUSH_AT     65536 /* bytes queued for a worker that leave at once */

/* The next wait of an idle prober: doubling from BACKOFF_MIN, up to
 * BACKOFF_HOT within HOT of the last message, BACKOFF_WARM within WARM,
 * else BACKOFF_COLD. So a stream of small jobs sees tens of microseconds
 * of latency, a reply soon after a job about a millisecond, and a thread
 * that waits for long jobs (or an idle pool) wakes a hundred times a
 * second: each wake-up costs tens of microseconds of a core (a timed
 * futex wait, a timer, a switch), and a thousand a second took 3 to 4 %
 * of the core that a worker computes on (the W9 CPU benchmark runs two
 * workers on two cores). */
static long next_backoff(long backoff, uint64_t last) {
  backoff = backoff == 0 ? BACKOFF_MIN : backoff * 2;
  uint64_t since = uv_hrtime() - last;
  long cap = since < HOT    ? BACKOFF_HOT
             : since < WARM ? BACKOFF_WARM
                            : BACKOFF_COLD;
  return backoff > cap ? cap : backoff;
}

/* A communication thread's idle wait: ns on cv, unless work is queued or
 * stop set meanwhile (both under m), which the signal of cv cuts short. */
static void nap(pthread_mutex_t *m, pthread_cond_t *cv, long ns,
                tulua__queue *work, const int *stop) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  ts.tv_nsec += ns;
  if (ts.tv_nsec >= 1000000000L) {
    ts.tv_sec++;
    ts.tv_nsec -= 1000000000L;
  }
  pthread_mutex_lock(m);
  if (tulua__queue_empty(work) && !*stop) pthread_cond_timedwait(cv, m, &ts);
  pthread_mutex_unlock(m);
}

#define GRACE       2000000000ULL /* ns the workers have to leave at the end */
#define WATCH_EVERY 100000000ULL /* ns between looks at the workers' pids */

/* What the owner and its workers must agree on: a rank built before
 * traced jobs (TULUA_POOL_FRAMES) would take their gc_slow for the job. */
#define OWN_VERSION(buf)                                                       \
  snprintf(buf, sizeof buf, "%s (transfer format %d, frames %d)",              \
           TULUA_VERSION, TULUA_TRANSFER_FORMAT, TULUA_POOL_FRAMES)

/* ---- the owner: pools (hubs), their links, the communication thread ---- */

typedef struct mlink mlink;
typedef struct hub hub;

struct mlink {
  size_t received; /* the bytes of the last reply recv took (the trace) */
  hub *h;
  int rank; /* in the hub's communicator (its remote group if spawned) */
  int index; /* the worker's number: rank + 1 if spawned, else rank */
  tulua__job job; /* hands what came, or the exit, to the Lua handler */
  int anchor; /* registry: the Link userdata, while the hub lives */
  tulua__bytes out; /* frames queued this loop turn (loop thread) */
  tulua__bytes in; /* what came, not yet taken by recv (loop thread) */
  int refd, stopped, exited; /* loop thread */
  int pid; /* the loop thread's copies of s_pid, s_host */
  char host[256];
  /* shared, under G.m */
  tulua__bytes s_in;
  int s_news, s_exited, s_pid;
  int s_bye; /* the worker said 'E': it leaves MPI */
  double s_offset; /* seconds to add to the worker's clock */
  uint64_t s_heard; /* when a message of the worker last came (thread) */
  char s_host[256];
  char s_why[320];
};

struct hub {
  tulua__queue node; /* in G.hubs, for the thread */
  tulua_runtime *rt;
  uv_async_t async;
  uv_prepare_t flush;
  int refs; /* the userdata's, the thread's, the handles': under G.m */
  int nrefd; /* links that keep the loop alive */
  int n;
  int trace_no; /* the pool's number in a trace: its ranks' tracks */
  mlink *links;
  int flushing;
  /* shared, under G.m */
  int dead; /* the userdata is gone: no async_send any more */
  int failed;
  char fail[300];
  MPI_Comm comm; /* the thread's */
  int spawned; /* the thread's: comm is an intercommunicator */
  int released; /* the thread's: the owner let go; it goes once its
                   workers have left (said 'E' or are gone) */
  uint64_t watched; /* when the thread last looked at the pids */
  double bound; /* seconds of silence after which a worker is dead, or 0 */
};

enum { CMD_SPAWN, CMD_WORLD, CMD_SEND, CMD_RELEASE };

typedef struct cmd {
  tulua__queue node;
  int kind;
  hub *h;
  int rank;
  char *buf; /* a send's bytes; a spawn's command (argv NULL-separated) */
  size_t len;
  char *hosts, *hostfile; /* a spawn's info */
} cmd;

/* A message being sent (the owner's, a worker's). */
typedef struct pending {
  tulua__queue node;
  MPI_Request req;
  char *buf;
  size_t len;
} pending;

static struct {
  pthread_mutex_t m;
  pthread_cond_t cv, init_cv;
  pthread_t thread;
  int started; /* the thread runs */
  int joined; /* end_mpi has run */
  int init_state; /* 0 pending, 1 done, -1 failed */
  char init_error[300];
  int stop;
  tulua__queue cmds; /* for the thread */
  int world_rank, world_size;
  int world_taken; /* static ranks 1..world_taken were given to a pool */
  char host[256];
  /* the thread's own */
  tulua__queue hubs;
  tulua__queue sends; /* pending sends */
} G = {.m = PTHREAD_MUTEX_INITIALIZER,
       .cv = PTHREAD_COND_INITIALIZER,
       .init_cv = PTHREAD_COND_INITIALIZER};

static double now_s(void) {
  return (double)uv_hrtime() / 1e9;
}

static void mpi_message(int rc, char *buf, size_t size) {
  char s[MPI_MAX_ERROR_STRING];
  int len = 0;
  if (MPI_Error_string(rc, s, &len) != MPI_SUCCESS) len = 0;
  s[len] = '\0';
  snprintf(buf, size, "%s", len > 0 ? s : "MPI error");
}

static void free_hub(hub *h) {
  for (int i = 0; i < h->n; i++) {
    free(h->links[i].out.base);
    free(h->links[i].in.base);
    free(h->links[i].s_in.base);
  }
  free(h->links);
  free(h);
}

/* Drops a reference (G.m held); returns whether h is to be freed. */
static int unref_hub(hub *h) {
  return --h->refs == 0;
}

/* Wakes the loop of h (G.m held): never once its userdata is gone. */
static void wake_loop(hub *h) {
  if (!h->dead) uv_async_send(&h->async);
}

static void fail_hub(hub *h, const char *what, int rc) {
  char m[MPI_MAX_ERROR_STRING + 1];
  mpi_message(rc, m, sizeof m);
  pthread_mutex_lock(&G.m);
  if (!h->failed) {
    h->failed = 1;
    snprintf(h->fail, sizeof h->fail, "%s: %s", what, m);
  }
  wake_loop(h);
  pthread_mutex_unlock(&G.m);
}

/* The worker's 'W' frame, "pid host clock", at the head of a message:
 * recorded, and taken off. Thread. */
static size_t take_hello(mlink *l, const char *buf, size_t len) {
  if (len < HDR || buf[4] != 'W') return 0;
  uint32_t size;
  memcpy(&size, buf, 4);
  if ((size_t)size + 4 > len || size < HDR - 4) return 0;
  char body[400];
  size_t blen = size - (HDR - 4);
  if (blen >= sizeof body) blen = sizeof body - 1;
  memcpy(body, buf + HDR, blen);
  body[blen] = '\0';
  int pid = 0;
  double clock = 0;
  char host[256] = "";
  if (sscanf(body, "%d %255s %lf", &pid, host, &clock) == 3) {
    l->s_pid = pid;
    snprintf(l->s_host, sizeof l->s_host, "%s", host);
    l->s_offset = now_s() - clock;
  }
  return (size_t)size + 4;
}

/* Starts sending a copy of the len bytes at frames to worker idx of h
 * (thread); a send that cannot start is dropped. */
static void post_send(hub *h, int idx, const char *frames, size_t len) {
  pending *p = malloc(sizeof *p);
  char *buf = malloc(len);
  if (p == NULL || buf == NULL) {
    free(p);
    free(buf);
    return;
  }
  memcpy(buf, frames, len);
  int rank = h->spawned ? idx : idx + 1;
  if (MPI_Isend(buf, (int)len, MPI_BYTE, rank, TAG, h->comm, &p->req) !=
      MPI_SUCCESS) {
    free(buf);
    free(p);
    return;
  }
  p->buf = buf;
  tulua__queue_insert_tail(&G.sends, &p->node);
}

/* Tells worker idx of h to send a heartbeat every quarter of the bound
 * (thread): a lone 'A' frame, its body the microseconds. */
static void tell_heartbeat(hub *h, int idx) {
  char buf[HDR + 32];
  /* microseconds, an integer: a job may change the worker's locale */
  int blen = snprintf(buf + HDR, 32, "%llu",
                      (unsigned long long)(h->bound / 4 * 1e6) + 1);
  put_header(buf, (size_t)blen, 'A', 0, 0);
  post_send(h, idx, buf, HDR + (size_t)blen);
}

/* Takes every message that has come for h. Thread. Returns whether any. */
static int receive(hub *h) {
  int any = 0;
  for (;;) {
    int flag = 0;
    MPI_Status st;
    int rc = MPI_Iprobe(MPI_ANY_SOURCE, TAG, h->comm, &flag, &st);
    if (rc != MPI_SUCCESS) {
      fail_hub(h, "MPI_Iprobe", rc);
      return any;
    }
    if (!flag) return any;
    int count = 0;
    MPI_Get_count(&st, MPI_BYTE, &count);
    char *buf = malloc(count > 0 ? (size_t)count : 1);
    if (buf == NULL) {
      fail_hub(h, "receiving", MPI_ERR_NO_MEM);
      return any;
    }
    rc = MPI_Recv(buf, count, MPI_BYTE, st.MPI_SOURCE, TAG, h->comm,
                  MPI_STATUS_IGNORE);
    if (rc == MPI_SUCCESS && count >= HDR && buf[4] == 'E') count = HDR;
    if (rc != MPI_SUCCESS) {
      free(buf);
      fail_hub(h, "MPI_Recv", rc);
      return any;
    }
    any = 1;
    int idx = h->spawned ? st.MPI_SOURCE : st.MPI_SOURCE - 1;
    if (idx < 0 || idx >= h->n) { /* not one of ours */
      free(buf);
      continue;
    }
    mlink *l = &h->links[idx];
    if (count == HDR && buf[4] == 'A') { /* a heartbeat */
      l->s_heard = uv_hrtime();
      free(buf);
      continue;
    }
    pthread_mutex_lock(&G.m);
    if (count >= HDR && buf[4] == 'E') l->s_bye = 1;
    int hello = l->s_heard == 0;
    l->s_heard = uv_hrtime();
    size_t skip = take_hello(l, buf, (size_t)count);
    if (l->s_bye) skip = (size_t)count;
    size_t rest = (size_t)count - skip;
    if (rest > 0 && tulua__bytes_reserve(&l->s_in, rest) == 0) {
      memcpy(l->s_in.base + l->s_in.len, buf + skip, rest);
      l->s_in.len += rest;
    }
    l->s_news = 1;
    wake_loop(h);
    pthread_mutex_unlock(&G.m);
    free(buf);
    if (hello && skip > 0 && h->bound > 0) tell_heartbeat(h, idx);
  }
}

/* Whether pid is gone (or a zombie). */
static int pid_gone(int pid) {
  if (kill(pid, 0) != 0) return errno == ESRCH;
  char path[64], st[256];
  snprintf(path, sizeof path, "/proc/%d/stat", pid);
  FILE *f = fopen(path, "r");
  if (f == NULL) return 0;
  size_t n = fread(st, 1, sizeof st - 1, f);
  fclose(f);
  st[n] = '\0';
  const char *p = strrchr(st, ')');
  return p != NULL && p[1] == ' ' && p[2] == 'Z';
}

/* Looks at the processes of the workers on this host. Thread. */
static void watch(hub *h) {
  uint64_t t = uv_hrtime();
  if (t - h->watched < WATCH_EVERY) return;
  h->watched = t;
  pthread_mutex_lock(&G.m);
  for (int i = 0; i < h->n; i++) {
    mlink *l = &h->links[i];
    if (h->bound > 0 && !l->s_exited && !l->s_bye && l->s_heard > 0 &&
        (double)(t - l->s_heard) / 1e9 > h->bound) {
      l->s_exited = 1;
      snprintf(l->s_why, sizeof l->s_why,
               "no word from it for %.3g s: it stopped, or its host or the "
               "network did",
               (double)(t - l->s_heard) / 1e9);
      l->s_news = 1;
      wake_loop(h);
      continue;
    }
    if (l->s_exited || l->s_pid <= 0 || strcmp(l->s_host, G.host) != 0)
      continue;
    int pid = l->s_pid;
    pthread_mutex_unlock(&G.m);
    int gone = pid_gone(pid);
    pthread_mutex_lock(&G.m);
    if (gone) {
      l->s_exited = 1;
      snprintf(l->s_why, sizeof l->s_why, "its process %d is gone", pid);
      l->s_news = 1;
      wake_loop(h);
    }
  }
  pthread_mutex_unlock(&G.m);
}

static void spawn(cmd *c) {
  hub *h = c->h;
  int argc = 0;
  for (size_t i = 0; i < c->len; i++)
    if (c->buf[i] == '\0') argc++;
  char **argv = calloc((size_t)argc + 1, sizeof *argv);
  if (argv == NULL) {
    fail_hub(h, "MPI_Comm_spawn", MPI_ERR_NO_MEM);
    return;
  }
  char *p = c->buf;
  for (int i = 0; i < argc; i++) {
    argv[i] = p;
    p += strlen(p) + 1;
  }
  MPI_Info info = MPI_INFO_NULL;
  if (c->hosts != NULL || c->hostfile != NULL) {
    MPI_Info_create(&info);
    if (c->hosts != NULL) MPI_Info_set(info, "host", c->hosts);
    if (c->hostfile != NULL) MPI_Info_set(info, "hostfile", c->hostfile);
  }
  int *codes = calloc((size_t)h->n, sizeof *codes);
  MPI_Comm inter = MPI_COMM_NULL;
  int rc = codes == NULL ? MPI_ERR_NO_MEM
                         : MPI_Comm_spawn(argv[0], argv + 1, h->n, info, 0,
                                          MPI_COMM_SELF, &inter, codes);
  if (rc == MPI_SUCCESS && codes != NULL) {
    for (int i = 0; i < h->n; i++)
      if (codes[i] != MPI_SUCCESS) rc = codes[i];
  }
  free(codes);
  free(argv);
  if (info != MPI_INFO_NULL) MPI_Info_free(&info);
  if (rc != MPI_SUCCESS) {
    fail_hub(h, "MPI_Comm_spawn", rc);
    return;
  }
  MPI_Comm_set_errhandler(inter, MPI_ERRORS_RETURN);
  h->comm = inter;
  h->spawned = 1;
}

/* Runs one command. Thread. */
static void run_cmd(cmd *c) {
  hub *h = c->h;
  switch (c->kind) {
    case CMD_SPAWN:
      tulua__queue_insert_tail(&G.hubs, &h->node);
      spawn(c);
      break;
    case CMD_WORLD:
      h->comm = MPI_COMM_WORLD;
      tulua__queue_insert_tail(&G.hubs, &h->node);
      break;
    case CMD_SEND: {
      if (h->comm == MPI_COMM_NULL) break; /* a pool that failed */
      pending *s = malloc(sizeof *s);
      int rank = h->spawned ? c->rank : c->rank + 1;
      int rc = s == NULL ? MPI_ERR_NO_MEM
                         : MPI_Isend(c->buf, (int)c->len, MPI_BYTE, rank, TAG,
                                     h->comm, &s->req);
      if (rc != MPI_SUCCESS) {
        free(s);
        fail_hub(h, "MPI_Isend", rc);
        break;
      }
      s->buf = c->buf;
      c->buf = NULL;
      tulua__queue_insert_tail(&G.sends, &s->node);
      break;
    }
    case CMD_RELEASE:
      /* an intercommunicator is left to MPI_Finalize: disconnecting
       * waits for every worker, a stuck one too */
      h->released = 1;
      break;
  }
  free(c->buf);
  free(c->hosts);
  free(c->hostfile);
  free(c);
}

/* Completes the sends of the queue that are done (a communication
 * thread's); returns whether any is left. */
static int test_sends(tulua__queue *sends) {
  tulua__queue *q, *next;
  for (q = tulua__queue_head(sends); q != NULL; q = next) {
    next = q->next == sends ? NULL : q->next;
    pending *s = tulua__container_of(q, pending, node);
    int done = 0;
    if (MPI_Test(&s->req, &done, MPI_STATUS_IGNORE) != MPI_SUCCESS) done = 1;
    if (done) {
      tulua__queue_remove(q);
      free(s->buf);
      free(s);
    }
  }
  return !tulua__queue_empty(sends);
}

/* How many workers of h have not left (thread). */
static int live_workers(hub *h) {
  int live = 0;
  pthread_mutex_lock(&G.m);
  if (!h->failed)
    for (int i = 0; i < h->n; i++)
      live += !h->links[i].s_bye && !h->links[i].s_exited;
  pthread_mutex_unlock(&G.m);
  return live;
}

/* Lets go of h (thread): out of the list, the thread's reference. */
static void drop_hub(hub *h) {
  tulua__queue_remove(&h->node);
  pthread_mutex_lock(&G.m);
  int last = unref_hub(h);
  pthread_mutex_unlock(&G.m);
  if (last) free_hub(h);
}

/* At the end, the workers on this host that did not leave in time (a job
 * that never ends) are killed, as the process pool kills its workers
 * after a grace: MPI_Finalize would wait for them. Elsewhere, Open MPI
 * decides. Thread. */
static void kill_stragglers(void) {
  tulua__queue *q;
  pthread_mutex_lock(&G.m);
  tulua__queue_foreach(q, &G.hubs) {
    hub *h = tulua__container_of(q, hub, node);
    for (int i = 0; i < h->n; i++) {
      mlink *l = &h->links[i];
      if (!l->s_bye && !l->s_exited && l->s_pid > 0 &&
          strcmp(l->s_host, G.host) == 0)
        kill(l->s_pid, SIGKILL);
    }
  }
  pthread_mutex_unlock(&G.m);
}

/* Open MPI yields the CPU (sched_yield) in every probe that finds nothing
 * when it sees more ranks than cores, and mpiexec --oversubscribe says so:
 * a system call and a trip through the scheduler for each look. The naps
 * of this file do that job, so its probes should not yield (unless the
 * user chose otherwise). Called before MPI_Init, before any thread of
 * ours reads the environment. */
static void no_yield(void) {
  setenv("OMPI_MCA_mpi_yield_when_idle", "0", 0);
}

/* At the end, the pools still held (the program ended with os.exit, and
 * nothing collected them) tell their workers to stop, as a pool's __gc
 * would. Thread. */
static void stop_unreleased(void) {
  char h[HDR];
  put_header(h, 0, 'S', 0, 0);
  tulua__queue *q;
  tulua__queue_foreach(q, &G.hubs) {
    hub *hb = tulua__container_of(q, hub, node);
    if (hb->released || hb->comm == MPI_COMM_NULL) continue;
    hb->released = 1;
    for (int i = 0; i < hb->n; i++) {
      pthread_mutex_lock(&G.m);
      int gone = hb->links[i].s_bye || hb->links[i].s_exited;
      pthread_mutex_unlock(&G.m);
      if (!gone) post_send(hb, i, h, HDR);
    }
  }
}

static void *comm_main(void *arg) {
  (void)arg;
  int provided = 0;
  int rc = MPI_Init_thread(NULL, NULL, MPI_THREAD_FUNNELED, &provided);
  pthread_mutex_lock(&G.m);
  if (rc != MPI_SUCCESS) {
    G.init_state = -1;
    mpi_message(rc, G.init_error, sizeof G.init_error);
  } else {
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    MPI_Comm_set_errhandler(MPI_COMM_SELF, MPI_ERRORS_RETURN);
    MPI_Comm_rank(MPI_COMM_WORLD, &G.world_rank);
    MPI_Comm_size(MPI_COMM_WORLD, &G.world_size);
    G.init_state = 1;
  }
  pthread_cond_broadcast(&G.init_cv);
  pthread_mutex_unlock(&G.m);
  if (rc != MPI_SUCCESS) return NULL;
  long backoff = 0;
  uint64_t last = 0, stopped = 0;
  int killed = 0;
  tulua__queue *q;
  for (;;) {
    pthread_mutex_lock(&G.m);
    tulua__queue cmds;
    tulua__queue_init(&cmds);
    tulua__queue_move(&G.cmds, &cmds);
    int stop = G.stop;
    pthread_mutex_unlock(&G.m);
    int busy = !tulua__queue_empty(&cmds);
    while ((q = tulua__queue_pop(&cmds)) != NULL)
      run_cmd(tulua__container_of(q, cmd, node));
    int sending = test_sends(&G.sends);
    tulua__queue *next;
    for (q = tulua__queue_head(&G.hubs); q != NULL; q = next) {
      next = q->next == &G.hubs ? NULL : q->next;
      hub *h = tulua__container_of(q, hub, node);
      if (h->comm != MPI_COMM_NULL) {
        if (receive(h)) busy = 1;
        watch(h);
      }
      if (h->released && (h->comm == MPI_COMM_NULL || live_workers(h) == 0))
        drop_hub(h);
    }
    if (stop) {
      uint64_t t = uv_hrtime();
      if (stopped == 0) {
        stopped = t;
        stop_unreleased();
      }
      if (!sending && tulua__queue_empty(&G.hubs)) break;
      if (!killed && t - stopped > GRACE) {
        kill_stragglers();
        killed = 1;
      }
      if (t - stopped > GRACE + GRACE / 2) break;
    }
    if (busy) {
      last = uv_hrtime();
      backoff = 0;
      continue;
    }
    backoff = sending ? BACKOFF_MIN : next_backoff(backoff, last);
    nap(&G.m, &G.cv, backoff, &G.cmds, &G.stop);
  }
  while ((q = tulua__queue_head(&G.hubs)) != NULL)
    drop_hub(tulua__container_of(q, hub, node));
  /* the ranks of a static start that no pool took are told to stop */
  if (G.world_rank == 0 && G.world_size > 1) {
    char h[HDR];
    put_header(h, 0, 'S', 0, 0);
    for (int r = G.world_taken + 1; r < G.world_size; r++)
      MPI_Send(h, HDR, MPI_BYTE, r, TAG, MPI_COMM_WORLD);
  }
  MPI_Finalize();
  return NULL;
}

/* Starts the thread (and MPI_Init in it) once; waits for MPI_Init. Loop
 * thread. Returns NULL or the reason MPI cannot start. */
static void end_mpi(void);

static const char *start_thread(void) {
  pthread_mutex_lock(&G.m);
  if (G.stop) { /* MPI_Init may not run twice in a process */
    pthread_mutex_unlock(&G.m);
    return "MPI has ended in this process (a runtime that used it closed)";
  }
  if (!G.started) {
    tulua__queue_init(&G.cmds);
    tulua__queue_init(&G.hubs);
    tulua__queue_init(&G.sends);
    if (gethostname(G.host, sizeof G.host - 1) != 0)
      snprintf(G.host, sizeof G.host, "localhost");
    no_yield();
    atexit(end_mpi);
    if (pthread_create(&G.thread, NULL, comm_main, NULL) != 0) {
      pthread_mutex_unlock(&G.m);
      return "cannot start the MPI thread";
    }
    G.started = 1;
  }
  while (G.init_state == 0)
    pthread_cond_wait(&G.init_cv, &G.m);
  pthread_mutex_unlock(&G.m);
  return G.init_state < 0 ? G.init_error : NULL;
}

static void post_cmd(cmd *c) {
  pthread_mutex_lock(&G.m);
  tulua__queue_insert_tail(&G.cmds, &c->node);
  pthread_cond_signal(&G.cv);
  pthread_mutex_unlock(&G.m);
}

/* The end of the process's MPI: the thread sends what is left, stops the
 * workers and the unused static ranks, calls MPI_Finalize and ends. */
static void end_mpi(void) {
  pthread_mutex_lock(&G.m);
  int join = G.started && !G.joined;
  G.stop = 1;
  G.joined = 1;
  pthread_cond_signal(&G.cv);
  pthread_mutex_unlock(&G.m);
  if (join) pthread_join(G.thread, NULL);
}

/* At lua_close; or, for a program that ends with os.exit (no lua_close),
 * at exit: under mpiexec, a rank that exits without MPI_Finalize makes
 * the whole job fail. */
static int state_gc(lua_State *L) {
  (void)L;
  end_mpi();
  return 0;
}

/* ---- the loop thread's side of a hub ---- */

static hub *check_hub(lua_State *L, int idx) {
  hub **box = luaL_checkudata(L, idx, HUB_MT);
  if (*box == NULL) luaL_error(L, "attempt to use a closed MPI pool");
  return *box;
}

static void hub_close_cb(uv_handle_t *handle) {
  hub *h = handle->data;
  pthread_mutex_lock(&G.m);
  int last = unref_hub(h);
  pthread_mutex_unlock(&G.m);
  if (last) free_hub(h);
}

/* What the thread handed over: each link with news posts its job. */
static void async_cb(uv_async_t *a) {
  hub *h = a->data;
  pthread_mutex_lock(&G.m);
  for (int i = 0; i < h->n; i++) {
    mlink *l = &h->links[i];
    if (h->failed && !l->s_exited) {
      l->s_exited = 1;
      snprintf(l->s_why, sizeof l->s_why, "%s", h->fail);
      l->s_news = 1;
    }
    if (!l->s_news) continue;
    l->s_news = 0;
    if (l->s_in.len > l->s_in.pos) {
      size_t n = l->s_in.len - l->s_in.pos;
      if (tulua__bytes_reserve(&l->in, n) == 0) {
        memcpy(l->in.base + l->in.len, l->s_in.base + l->s_in.pos, n);
        l->in.len += n;
      }
      l->s_in.pos = l->s_in.len = 0;
    }
    if (l->s_pid > 0 && l->pid == 0) {
      l->pid = l->s_pid;
      snprintf(l->host, sizeof l->host, "%s", l->s_host);
    }
    if (l->s_exited && !l->exited) l->exited = 1;
    if (l->anchor != LUA_NOREF) tulua__post(h->rt, &l->job);
  }
  pthread_mutex_unlock(&G.m);
}

/* Before the loop polls: each link's queued frames go as one message. */
/* Hands the frames queued for l to the thread, as one message. */
static void flush_link(hub *h, mlink *l) {
  if (l->out.len == l->out.pos) return;
  cmd *c = calloc(1, sizeof *c);
  if (c == NULL) return; /* the frames wait for the next turn */
  c->kind = CMD_SEND;
  c->h = h;
  c->rank = l->rank;
  c->buf = l->out.base; /* the thread frees it */
  c->len = l->out.len;
  memset(&l->out, 0, sizeof l->out);
  /* the next turn's frames likely take as much: one malloc, not a
   * chain of reallocs from empty (failure here is retried as they come) */
  (void)tulua__bytes_reserve(&l->out, c->len < KEEP_MAX ? c->len : KEEP_MAX);
  post_cmd(c);
}

static void flush_cb(uv_prepare_t *p) {
  hub *h = p->data;
  uv_prepare_stop(p);
  h->flushing = 0;
  for (int i = 0; i < h->n; i++)
    flush_link(h, &h->links[i]);
}

static void link_job_run(lua_State *L, tulua__job *job) {
  mlink *l = tulua__container_of(job, mlink, job);
  if (l->anchor == LUA_NOREF) return;
  int top = lua_gettop(L);
  lua_rawgeti(L, LUA_REGISTRYINDEX, l->anchor);
  lua_getiuservalue(L, top + 1, 2); /* the handler */
  lua_pushvalue(L, top + 1);
  if (lua_pcall(L, 1, 0, 0) != LUA_OK) {
    const char *msg = lua_tostring(L, -1);
    lua_writestringerror("tulua: MPI pool: %s\n", msg ? msg : "(error object)");
  }
  lua_settop(L, top);
}

/* mpi.hub(n, handler [, spawn [, bound [, trace_no]]]) -> Hub: a pool of
 * n workers, spawned with spawn = {file, args..., hosts =, hostfile =} or,
 * without, the ranks 1..n of a static start (MPI_COMM_WORLD).
 * handler(link) runs, outside any task, when frames come from a worker or
 * it is gone: a worker not heard of for bound seconds (> 0) is gone; it
 * sends a heartbeat every quarter of that. trace_no is the pool's number
 * in a trace (tulua._trace's pool_no), for its ranks' GC steps. Raises if
 * MPI cannot start or (static) the ranks were taken. */
static int mpi_hub(lua_State *L) {
  lua_Integer n = luaL_checkinteger(L, 1);
  luaL_checktype(L, 2, LUA_TFUNCTION);
  luaL_argcheck(L, n >= 1 && n <= 1024, 1, "1 to 1024 workers expected");
  int spawning = !lua_isnoneornil(L, 3);
  if (spawning) luaL_checktype(L, 3, LUA_TTABLE);
  lua_Number bound = luaL_optnumber(L, 4, 0);
  luaL_argcheck(L, bound >= 0, 4, "a bound of 0 or more seconds expected");
  lua_Integer trace_no = luaL_optinteger(L, 5, 0);
  luaL_argcheck(L, trace_no >= 0 && trace_no <= INT32_MAX, 5,
                "a pool number expected");
  const char *err = start_thread();
  if (err != NULL) return luaL_error(L, "cannot start MPI: %s", err);
  if (!spawning) {
    pthread_mutex_lock(&G.m);
    int taken = G.world_taken, size = G.world_size;
    if (!taken && n <= size - 1) G.world_taken = (int)n;
    pthread_mutex_unlock(&G.m);
    /* no position: these reach the caller of MPIPoolExecutor as they are */
    if (taken) {
      lua_pushliteral(L, "the worker ranks of this mpiexec serve one pool, "
                         "and it was made already");
      return lua_error(L);
    }
    if (n > size - 1) {
      lua_pushfstring(L,
                      "%d workers asked, but mpiexec started %d ranks "
                      "besides this one",
                      (int)n, size - 1);
      return lua_error(L);
    }
  }
  lua_settop(L, 3);
  cmd *c = calloc(1, sizeof *c);
  hub *h = calloc(1, sizeof *h);
  mlink *links = calloc((size_t)n, sizeof *links);
  if (c == NULL || h == NULL || links == NULL) {
    free(c);
    free(h);
    free(links);
    return luaL_error(L, "not enough memory");
  }
  hub **box = lua_newuserdatauv(L, sizeof *box, 1); /* 4 */
  *box = NULL;
  luaL_setmetatable(L, HUB_MT);
  lua_createtable(L, (int)n, 0); /* the links, 5 */
  lua_pushvalue(L, -1);
  lua_setiuservalue(L, 4, 1);
  h->rt = tulua__runtime(L);
  h->trace_no = (int)trace_no;
  h->links = links;
  h->n = (int)n;
  h->comm = MPI_COMM_NULL;
  h->bound = (double)bound;
  tulua__queue_init(&h->node);
  uv_async_init(tulua__loop(L), &h->async, async_cb);
  uv_prepare_init(tulua__loop(L), &h->flush);
  h->async.data = h->flush.data = h;
  uv_unref((uv_handle_t *)&h->async);
  uv_unref((uv_handle_t *)&h->flush);
  h->refs = 1 + 2 + 1; /* the userdata's, the handles', the thread's */
  *box = h;
  for (int i = 0; i < h->n; i++) {
    mlink *l = &links[i];
    l->h = h;
    l->rank = i; /* a send to the world adds 1 (rank 0 is the owner) */
    l->index = i + 1;
    l->job.run = link_job_run;
    mlink **lb = lua_newuserdatauv(L, sizeof *lb, 2);
    *lb = l;
    luaL_setmetatable(L, LINK_MT);
    lua_pushvalue(L, 4);
    lua_setiuservalue(L, -2, 1);
    lua_pushvalue(L, 2);
    lua_setiuservalue(L, -2, 2);
    lua_pushvalue(L, -1);
    l->anchor = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_rawseti(L, 5, i + 1);
  }
  lua_pop(L, 1);
  c->h = h;
  if (spawning) {
    c->kind = CMD_SPAWN;
    tulua__bytes b = {0};
    lua_Integer argc = luaL_len(L, 3);
    for (lua_Integer i = 1; i <= argc; i++) {
      lua_geti(L, 3, i);
      size_t len;
      const char *s = lua_tolstring(L, -1, &len);
      if (s != NULL && tulua__bytes_reserve(&b, len + 1) == 0) {
        memcpy(b.base + b.len, s, len + 1);
        b.len += len + 1;
      }
      lua_pop(L, 1);
    }
    c->buf = b.base;
    c->len = b.len;
    lua_getfield(L, 3, "hosts");
    if (lua_isstring(L, -1)) c->hosts = strdup(lua_tostring(L, -1));
    lua_getfield(L, 3, "hostfile");
    if (lua_isstring(L, -1)) c->hostfile = strdup(lua_tostring(L, -1));
    lua_pop(L, 2);
  } else {
    c->kind = CMD_WORLD;
  }
  post_cmd(c);
  return 1;
}

/* hub:links() -> the Link objects, in rank order. */
static int hub_links(lua_State *L) {
  check_hub(L, 1);
  lua_getiuservalue(L, 1, 1);
  return 1;
}

/* __gc, or hub:close(): the links are closed (their workers told to stop),
 * the loop's handles closed, and the thread lets go of the pool. */
static int hub_gc(lua_State *L) {
  hub **box = luaL_checkudata(L, 1, HUB_MT);
  hub *h = *box;
  if (h == NULL) return 0;
  *box = NULL;
  char stop[HDR];
  put_header(stop, 0, 'S', 0, 0);
  for (int i = 0; i < h->n; i++) {
    mlink *l = &h->links[i];
    if (!l->stopped && !l->exited && tulua__bytes_reserve(&l->out, HDR) == 0) {
      memcpy(l->out.base + l->out.len, stop, HDR);
      l->out.len += HDR;
    }
    l->stopped = 1;
    tulua__unpost(h->rt, &l->job);
    if (l->anchor != LUA_NOREF) {
      luaL_unref(L, LUA_REGISTRYINDEX, l->anchor);
      l->anchor = LUA_NOREF;
    }
  }
  flush_cb(&h->flush);
  pthread_mutex_lock(&G.m);
  h->dead = 1;
  int last = unref_hub(h); /* the userdata's */
  pthread_mutex_unlock(&G.m);
  (void)last; /* the handles' references are still there */
  uv_close((uv_handle_t *)&h->async, hub_close_cb);
  uv_close((uv_handle_t *)&h->flush, hub_close_cb);
  cmd *c = calloc(1, sizeof *c);
  if (c != NULL) { /* else the hub stays: memory is short anyway */
    c->kind = CMD_RELEASE;
    c->h = h;
    post_cmd(c);
  }
  return 0;
}

/* ---- Link objects: the methods of process_pool.c's links ---- */

static mlink *check_link(lua_State *L) {
  mlink **box = luaL_checkudata(L, 1, LINK_MT);
  lua_getiuservalue(L, 1, 1);
  hub **hb = lua_touserdata(L, -1);
  lua_pop(L, 1);
  return hb != NULL && *hb != NULL ? *box : NULL;
}

/* link:send(kind, job [, body [, now]]) -> boolean: queues a frame for the
 * message sent at the end of this loop turn (now: at once). */
static int link_send(lua_State *L) {
  mlink *l = check_link(L);
  size_t klen, len = 0;
  const char *kind = luaL_checklstring(L, 2, &klen);
  luaL_argcheck(L, klen == 1 && strchr("PIJCVS", kind[0]) != NULL, 2,
                "invalid frame kind");
  lua_Integer job = luaL_checkinteger(L, 3);
  luaL_argcheck(L, job >= 0 && job <= INT32_MAX, 3, "job number out of range");
  const char *body = luaL_optlstring(L, 4, "", &len);
  if (len > (size_t)INT32_MAX - HDR - TIMES)
    return luaL_error(L, "job too large (%I bytes)", (lua_Integer)len);
  if (l == NULL || l->stopped || l->exited) {
    lua_pushboolean(L, 0);
    return 1;
  }
  if (tulua__pool_frame(&l->out, kind[0], (uint32_t)job, body, len) < 0)
    return luaL_error(L, "not enough memory");
  if (kind[0] == 'S') l->stopped = 1;
  hub *h = l->h;
  if (lua_toboolean(L, 5)) {
    flush_cb(&h->flush);
  } else if (l->out.len - l->out.pos >= FLUSH_AT) {
    flush_link(h, l); /* the worker starts while this turn queues more */
  } else if (!h->flushing) {
    h->flushing = 1;
    uv_prepare_start(&h->flush, flush_cb);
  }
  lua_pushboolean(L, 1);
  return 1;
}

/* link:recv() -> as process_pool.c's: the next frame, with the worker's
 * times on this host's clock; the GC steps a reply brings go into the
 * trace, on the rank's track and that clock too. */
static int link_recv(lua_State *L) {
  mlink *l = check_link(L);
  if (l == NULL) return 0;
  const char *gc;
  size_t gc_len;
  pthread_mutex_lock(&G.m);
  double off = l->s_offset; /* the worker's clock to ours */
  pthread_mutex_unlock(&G.m);
  int n = tulua__pool_recv_gc(L, &l->in, &l->received, &gc, &gc_len, off);
  if (n < 0) { /* not our protocol: the worker is given up */
    l->in.pos = l->in.len = 0;
    l->exited = 1;
    return 0;
  }
  if (gc_len > 0)
    tulua__pool_trace_gc(gc, gc_len, "rank", l->h->trace_no, l->index, l->pid,
                         off);
  return n;
}

/* link:received() -> the bytes of the last reply recv took (the trace) */
static int link_received(lua_State *L) {
  mlink *l = check_link(L);
  lua_pushinteger(L, l ? (lua_Integer)l->received : 0);
  return 1;
}

/* link:ref(on): while a worker has jobs, the pool keeps the loop alive. */
static int link_ref(lua_State *L) {
  mlink *l = check_link(L);
  int on = lua_toboolean(L, 2);
  if (l == NULL || on == l->refd) return 0;
  l->refd = on;
  hub *h = l->h;
  h->nrefd += on ? 1 : -1;
  if (on && h->nrefd == 1)
    uv_ref((uv_handle_t *)&h->async);
  else if (!on && h->nrefd == 0)
    uv_unref((uv_handle_t *)&h->async);
  return 0;
}

/* link:status() -> nothing while the worker runs | 0, 0, description once
 * it is gone (or the pool failed). */
static int link_status(lua_State *L) {
  mlink *l = check_link(L);
  if (l != NULL && !l->exited) return 0;
  lua_pushinteger(L, 0);
  lua_pushinteger(L, 0);
  if (l == NULL) {
    lua_pushliteral(L, "the pool is closed");
  } else {
    pthread_mutex_lock(&G.m);
    lua_pushstring(L, l->s_why[0] ? l->s_why : "it is gone");
    pthread_mutex_unlock(&G.m);
  }
  return 3;
}

/* link:close(): tells the worker to stop once its jobs are done. */
static int link_close(lua_State *L) {
  mlink *l = check_link(L);
  if (l == NULL || l->stopped || l->exited) return 0;
  lua_settop(L, 1);
  lua_pushliteral(L, "S");
  lua_pushinteger(L, 0);
  return link_send(L);
}

/* link:reap(grace): as close; MPI ends the worker, not the owner. */
static int link_reap(lua_State *L) {
  return link_close(L);
}

/* link:alive() -> whether the worker has not gone. */
static int link_alive(lua_State *L) {
  mlink *l = check_link(L);
  lua_pushboolean(L, l != NULL && !l->exited);
  return 1;
}

/* link:info() -> index, pid, host, whether on this host: the worker's
 * number (its rank in the script's world), and what its 'W' said (pid 0
 * and host "?" before). */
static int link_info(lua_State *L) {
  mlink *l = check_link(L);
  if (l == NULL) return 0;
  lua_pushinteger(L, l->index);
  lua_pushinteger(L, l->pid);
  lua_pushstring(L, l->pid > 0 ? l->host : "?");
  lua_pushboolean(L, l->pid > 0 && strcmp(l->host, G.host) == 0);
  return 4;
}

/* ---- the worker's side ----
 *
 * A worker rank has its own communication thread, which makes every MPI
 * call of the process (MPI_THREAD_FUNNELED, as the owner's: it called
 * MPI_Init_thread), while the main thread runs Lua jobs and never calls
 * MPI. So the rank answers MPI while a job computes: its replies leave
 * without the job runner waiting for the owner to take them (a reply
 * larger than Open MPI's eager limit waits for the receiver, and a worker
 * spinning in MPI_Send took the core the owner's thread needed), its
 * heartbeats ('A') tell the owner it lives on whatever host it is, and a
 * cancel ('C') reaches the job that runs, through the signal of job
 * control (bindings/worker.c) that the thread queues to its own process,
 * as the owner's cancel_process does on one host. The main thread hands
 * it replies (w_write: queued, never waiting) and sleeps on a condition
 * variable while it has no work (w_block); the thread probes with the
 * owner's backoff. */

static struct {
  pthread_mutex_t m;
  pthread_cond_t cv; /* the main thread's: something came, or the start */
  pthread_cond_t tcv; /* the thread's: something to send, or the end */
  pthread_t thread;
  int started, init_state; /* 0 pending, 1 done, -1 failed */
  char init_error[300];
  int index;
  char host[256];
  tulua__bytes inbox; /* what came, for w_drain */
  tulua__queue outbox; /* pending, for the thread to send */
  int gone; /* MPI failed: the channel is gone */
  int stop; /* worker_close: send what is queued, 'E', leave */
  int waiting; /* the main thread waits for work (w_block) */
  /* the thread's own */
  MPI_Comm comm;
  tulua__queue sending; /* the messages being sent */
  uint64_t heartbeat; /* ns between heartbeats (the owner's 'A'), 0: none */
  uint64_t sent; /* when a message last left */
} WK = {.m = PTHREAD_MUTEX_INITIALIZER,
        .cv = PTHREAD_COND_INITIALIZER,
        .tcv = PTHREAD_COND_INITIALIZER,
        .comm = MPI_COMM_NULL};

static void wk_gone(void) {
  pthread_mutex_lock(&WK.m);
  WK.gone = 1;
  pthread_cond_broadcast(&WK.cv);
  pthread_mutex_unlock(&WK.m);
}

/* Starts sending m (thread); frees it if it cannot. */
static void wk_isend(pending *m) {
  if (MPI_Isend(m->buf, (int)m->len, MPI_BYTE, 0, TAG, WK.comm, &m->req) !=
      MPI_SUCCESS) {
    free(m->buf);
    free(m);
    wk_gone();
    return;
  }
  WK.sent = uv_hrtime();
  tulua__queue_insert_tail(&WK.sending, &m->node);
}

static pending *wk_msg(const char *buf, size_t len) {
  pending *m = malloc(sizeof *m);
  char *b = malloc(len > 0 ? len : 1);
  if (m == NULL || b == NULL) {
    free(m);
    free(b);
    return NULL;
  }
  memcpy(b, buf, len);
  m->buf = b;
  m->len = len;
  return m;
}

/* Whether the job control handles sig: before, it would end the process. */
static int handled(int sig) {
  struct sigaction sa;
  return sigaction(sig, NULL, &sa) == 0 && sa.sa_handler != SIG_DFL &&
         sa.sa_handler != SIG_IGN;
}

/* What came from the owner (thread): a lone 'A' sets the heartbeat; a
 * cancel is queued as the signal that stops the job it names, if that
 * job runs (the port skips it if it has not started); the frames go to
 * the inbox. */
static void wk_came(char *buf, size_t len) {
  int sig = rt_host->worker_signal();
  if (len >= HDR && buf[4] == 'A') {
    char body[32];
    size_t blen = len - HDR < sizeof body - 1 ? len - HDR : sizeof body - 1;
    memcpy(body, buf + HDR, blen);
    body[blen] = '\0';
    WK.heartbeat = (uint64_t)strtoull(body, NULL, 10) * 1000;
    return;
  }
  for (size_t pos = 0; len - pos >= HDR;) {
    uint32_t size, job;
    memcpy(&size, buf + pos, 4);
    if (size < HDR - 4 || len - pos - 4 < size) break;
    memcpy(&job, buf + pos + 6, 4);
    if (buf[pos + 4] == 'C' && job > 0 && job <= INT32_MAX && handled(sig)) {
      union sigval v;
      v.sival_int = (int)job;
      sigqueue(getpid(), sig, v);
    }
    pos += 4 + (size_t)size;
  }
  pthread_mutex_lock(&WK.m);
  if (tulua__bytes_reserve(&WK.inbox, len) == 0) {
    memcpy(WK.inbox.base + WK.inbox.len, buf, len);
    WK.inbox.len += len;
  } else {
    WK.gone = 1;
  }
  pthread_cond_broadcast(&WK.cv);
  pthread_mutex_unlock(&WK.m);
}

/* Takes every message that has come (thread); returns whether any. */
static int wk_receive(void) {
  int any = 0;
  for (;;) {
    int flag = 0, count = 0;
    MPI_Status st;
    if (MPI_Iprobe(0, TAG, WK.comm, &flag, &st) != MPI_SUCCESS) {
      wk_gone();
      return any;
    }
    if (!flag) return any;
    MPI_Get_count(&st, MPI_BYTE, &count);
    char *buf = malloc(count > 0 ? (size_t)count : 1);
    if (buf == NULL || MPI_Recv(buf, count, MPI_BYTE, 0, TAG, WK.comm,
                                MPI_STATUS_IGNORE) != MPI_SUCCESS) {
      free(buf);
      wk_gone();
      return any;
    }
    wk_came(buf, (size_t)count);
    free(buf);
    any = 1;
  }
}

/* MPI_Init and the 'W' frame, "pid host clock", to rank 0 of the owner
 * (thread). Returns NULL or what failed. */
static const char *wk_start(char *err, size_t size) {
  int provided = 0;
  int rc = MPI_Init_thread(NULL, NULL, MPI_THREAD_FUNNELED, &provided);
  if (rc != MPI_SUCCESS) {
    mpi_message(rc, err, size);
    return err;
  }
  MPI_Comm parent = MPI_COMM_NULL;
  MPI_Comm_get_parent(&parent);
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  WK.comm = parent != MPI_COMM_NULL ? parent : MPI_COMM_WORLD;
  MPI_Comm_set_errhandler(WK.comm, MPI_ERRORS_RETURN);
  WK.index = parent != MPI_COMM_NULL ? rank + 1 : rank;
  const char *fake = getenv("TULUA_MPI_TEST_HOST"); /* a "remote" worker */
  if (fake != NULL)
    snprintf(WK.host, sizeof WK.host, "%s", fake);
  else if (gethostname(WK.host, sizeof WK.host - 1) != 0)
    snprintf(WK.host, sizeof WK.host, "?");
  WK.host[sizeof WK.host - 1] = '\0';
  char hello[400];
  int blen = snprintf(hello + HDR, sizeof hello - HDR, "%d %s %.9f",
                      (int)getpid(), WK.host, now_s());
  put_header(hello, (size_t)blen, 'W', 0, 0);
  rc = MPI_Send(hello, HDR + blen, MPI_BYTE, 0, TAG, WK.comm);
  if (rc != MPI_SUCCESS) {
    mpi_message(rc, err, size);
    return err;
  }
  WK.sent = uv_hrtime();
  return NULL;
}

static void *wk_main(void *arg) {
  (void)arg;
  sigset_t all; /* the job control's signal is for the Lua thread */
  sigfillset(&all);
  pthread_sigmask(SIG_BLOCK, &all, NULL);
  char err[300];
  const char *failed = wk_start(err, sizeof err);
  pthread_mutex_lock(&WK.m);
  WK.init_state = failed ? -1 : 1;
  if (failed) snprintf(WK.init_error, sizeof WK.init_error, "%s", failed);
  pthread_cond_broadcast(&WK.cv);
  pthread_mutex_unlock(&WK.m);
  if (failed) return NULL;
  long backoff = 0;
  int was_waiting = 0;
  uint64_t last = uv_hrtime(), stopped = 0;
  for (;;) {
    pthread_mutex_lock(&WK.m);
    tulua__queue out;
    tulua__queue_init(&out);
    tulua__queue_move(&WK.outbox, &out);
    int stop = WK.stop, gone = WK.gone, waiting = WK.waiting;
    pthread_mutex_unlock(&WK.m);
    int busy = !tulua__queue_empty(&out);
    /* the main thread has just run out of work: the next job is likely
     * near (the owner answers the reply just sent), so probe as if
     * messages streamed */
    if (waiting && !was_waiting) busy = 1;
    was_waiting = waiting;
    tulua__queue *q;
    while ((q = tulua__queue_pop(&out)) != NULL) {
      pending *m = tulua__container_of(q, pending, node);
      if (gone) {
        free(m->buf);
        free(m);
      } else {
        wk_isend(m);
      }
    }
    int sending = gone ? 0 : test_sends(&WK.sending);
    if (!gone && wk_receive()) busy = 1;
    uint64_t t = uv_hrtime();
    if (!gone && WK.heartbeat > 0 && t - WK.sent >= WK.heartbeat) {
      char h[HDR];
      put_header(h, 0, 'A', 0, 0);
      pending *m = wk_msg(h, HDR);
      if (m != NULL) wk_isend(m);
    }
    if (stop) {
      if (stopped == 0) stopped = t;
      /* an owner that takes nothing any more is not waited for long */
      if (!sending || t - stopped > GRACE) break;
    }
    if (busy) {
      last = t;
      backoff = 0;
      continue;
    }
    /* while a job runs, what comes can wait: its end (a reply to send)
     * or the main thread's wait for work signals tcv */
    backoff = sending   ? BACKOFF_MIN
              : waiting ? next_backoff(backoff, last)
                        : BACKOFF_COLD;
    nap(&WK.m, &WK.tcv, backoff, &WK.outbox, &WK.stop);
  }
  int gone = 0;
  pthread_mutex_lock(&WK.m);
  gone = WK.gone;
  pthread_mutex_unlock(&WK.m);
  if (!gone) { /* 'E': the owner need not wait for it */
    char bye[HDR];
    put_header(bye, 0, 'E', 0, 0);
    MPI_Send(bye, HDR, MPI_BYTE, 0, TAG, WK.comm);
  }
  MPI_Finalize();
  return NULL;
}

static int w_drain(void *ud, tulua__bytes *in) {
  (void)ud;
  pthread_mutex_lock(&WK.m);
  int rc = 0;
  size_t n = WK.inbox.len - WK.inbox.pos;
  if (n > 0) {
    if (tulua__bytes_reserve(in, n) == 0) {
      memcpy(in->base + in->len, WK.inbox.base + WK.inbox.pos, n);
      in->len += n;
      WK.inbox.pos = WK.inbox.len = 0;
      bytes_trim(&WK.inbox);
    } else {
      rc = -1;
    }
  } else if (WK.gone) {
    rc = -1;
  }
  pthread_mutex_unlock(&WK.m);
  return rc;
}

static int w_write(void *ud, struct iovec *iov, int n) {
  (void)ud;
  size_t len = 0;
  for (int i = 0; i < n; i++)
    len += iov[i].iov_len;
  if (len > INT32_MAX) return -1;
  pending *m = malloc(sizeof *m);
  char *b = malloc(len > 0 ? len : 1);
  if (m == NULL || b == NULL) {
    free(m);
    free(b);
    return -1;
  }
  size_t at = 0;
  for (int i = 0; i < n; i++) {
    memcpy(b + at, iov[i].iov_base, iov[i].iov_len);
    at += iov[i].iov_len;
  }
  m->buf = b;
  m->len = len;
  pthread_mutex_lock(&WK.m);
  int gone = WK.gone;
  if (!gone) {
    tulua__queue_insert_tail(&WK.outbox, &m->node);
    pthread_cond_signal(&WK.tcv);
  }
  pthread_mutex_unlock(&WK.m);
  if (gone) {
    free(b);
    free(m);
    return -1;
  }
  return 0;
}

static void w_block(void *ud) {
  (void)ud;
  pthread_mutex_lock(&WK.m);
  if (WK.inbox.len == WK.inbox.pos && !WK.gone) {
    WK.waiting = 1;
    pthread_cond_signal(&WK.tcv); /* the thread probes often again */
    while (WK.inbox.len == WK.inbox.pos && !WK.gone)
      pthread_cond_wait(&WK.cv, &WK.m);
    WK.waiting = 0;
  }
  pthread_mutex_unlock(&WK.m);
}

static const tulua__port_io w_io = {w_drain, w_write, w_block};

/* mpi.worker_open() -> port, index, host | nil (stopped unused): a
 * worker rank's port (the port functions of tulua._process_pool): starts
 * the rank's thread (MPI_Init there, 'W' to rank 0 of the owner), then
 * waits for the start frames (see port_open). A different version of the
 * owner is told to it and raised here. */
static int mpi_worker_open(lua_State *L) {
  pthread_mutex_lock(&WK.m);
  if (!WK.started) {
    tulua__queue_init(&WK.outbox);
    tulua__queue_init(&WK.sending);
    no_yield();
    if (pthread_create(&WK.thread, NULL, wk_main, NULL) != 0) {
      pthread_mutex_unlock(&WK.m);
      return luaL_error(L, "cannot start the MPI thread");
    }
    WK.started = 1;
  }
  while (WK.init_state == 0)
    pthread_cond_wait(&WK.cv, &WK.m);
  pthread_mutex_unlock(&WK.m);
  if (WK.init_state < 0)
    return luaL_error(L, "MPI_Init failed: %s", WK.init_error);
  char version[200];
  const char *fake = getenv("TULUA_MPI_TEST_VERSION");
  if (fake != NULL)
    snprintf(version, sizeof version, "%s", fake);
  else
    OWN_VERSION(version);
  const char *who =
      lua_pushfstring(L, "worker rank %d on host %s", WK.index, WK.host);
  tulua__port_open_io(L, &w_io, NULL, lua_pushstring(L, version), who);
  if (lua_isnil(L, -1)) return 1;
  lua_pushinteger(L, WK.index);
  lua_pushstring(L, WK.host);
  return 3;
}

/* mpi.worker_wait_stop(): after a failed start, waits for the owner's
 * stop, so that the rank ends as MPI expects. */
static int mpi_worker_wait_stop(lua_State *L) {
  (void)L;
  tulua__bytes in = {0};
  for (;;) {
    w_block(NULL);
    if (w_drain(NULL, &in) < 0) break;
    int stop = 0;
    size_t pos = 0;
    while (in.len - pos >= HDR) {
      uint32_t size;
      memcpy(&size, in.base + pos, 4);
      if (in.base[pos + 4] == 'S') stop = 1;
      if (size < HDR - 4 || in.len - pos - 4 < size) break;
      pos += 4 + size;
    }
    if (stop) break;
  }
  free(in.base);
  return 0;
}

/* mpi.worker_close(): the worker leaves MPI: its thread sends what is
 * queued and 'E', and calls MPI_Finalize. */
static int mpi_worker_close(lua_State *L) {
  (void)L;
  pthread_mutex_lock(&WK.m);
  int join = WK.started && WK.stop == 0;
  WK.stop = 1;
  pthread_cond_signal(&WK.tcv);
  pthread_mutex_unlock(&WK.m);
  if (join) pthread_join(WK.thread, NULL);
  return 0;
}

/* mpi.setenv(name, value | nil), mpi.chdir(dir) -> true | nil, msg, code:
 * a worker applies its pool's env and wdir. */
static int mpi_setenv(lua_State *L) {
  const char *name = tulua__check_path(L, 1, NULL);
  int rc = lua_isnil(L, 2) ? unsetenv(name)
                           : setenv(name, tulua__check_path(L, 2, NULL), 1);
  if (rc != 0) return push_fail(L, name, uv_translate_sys_error(errno));
  lua_pushboolean(L, 1);
  return 1;
}

static int mpi_chdir(lua_State *L) {
  const char *dir = tulua__check_path(L, 1, NULL);
  int rc = uv_chdir(dir);
  if (rc < 0) return push_fail(L, dir, rc);
  lua_pushboolean(L, 1);
  return 1;
}

/* mpi.world() -> rank, size: of MPI_COMM_WORLD, starting MPI (in the
 * thread) if it is not yet. Raises if it cannot start. */
static int mpi_world(lua_State *L) {
  const char *err = start_thread();
  if (err != NULL) return luaL_error(L, "cannot start MPI: %s", err);
  lua_pushinteger(L, G.world_rank);
  lua_pushinteger(L, G.world_size);
  return 2;
}

/* mpi.version() -> what the owner sends as 'V'; mpi.host() -> this host. */
static int mpi_version(lua_State *L) {
  char v[200];
  OWN_VERSION(v);
  lua_pushstring(L, v);
  return 1;
}

int tulua_mpi_bind(const tulua__mpi_host *h);
int luaopen_tulua_mpi(lua_State *L);

int tulua_mpi_bind(const tulua__mpi_host *h) {
  if (h->version != TULUA_MPI_HOST_VERSION) return -1;
  rt_host = h;
  return 0;
}

int luaopen_tulua_mpi(lua_State *L) {
  static const luaL_Reg link_methods[] = {
      {"send", link_send},         {"recv", link_recv},
      {"ref", link_ref},           {"status", link_status},
      {"close", link_close},       {"reap", link_reap},
      {"alive", link_alive},       {"info", link_info},
      {"received", link_received}, {NULL, NULL}};
  static const luaL_Reg hub_methods[] = {
      {"links", hub_links}, {"close", hub_gc}, {NULL, NULL}};
  static const luaL_Reg hub_meta[] = {{"__gc", hub_gc}, {NULL, NULL}};
  static const luaL_Reg funcs[] = {{"hub", mpi_hub},
                                   {"world", mpi_world},
                                   {"version", mpi_version},
                                   {"worker_open", mpi_worker_open},
                                   {"worker_wait_stop", mpi_worker_wait_stop},
                                   {"worker_close", mpi_worker_close},
                                   {"setenv", mpi_setenv},
                                   {"chdir", mpi_chdir},
                                   {NULL, NULL}};
  tulua__new_class(L, HUB_MT, hub_meta, hub_methods);
  static const luaL_Reg no_meta[] = {{NULL, NULL}};
  tulua__new_class(L, LINK_MT, no_meta, link_methods);
  /* the process's MPI ends with the state that opened this module */
  lua_newuserdatauv(L, 1, 0);
  lua_newtable(L);
  lua_pushcfunction(L, state_gc);
  lua_setfield(L, -2, "__gc");
  lua_setmetatable(L, -2);
  lua_setfield(L, LUA_REGISTRYINDEX, "tulua.mpi_state");
  luaL_newlib(L, funcs);
  return 1;
}
