/* fs_event.c: uv_fs_event_t as Watcher objects that queue file-system
 * events for a task; backs fs.watch of the module 'tulua.fs'.
 *
 * A Watcher userdata points at a malloc'd watcher_box that embeds the
 * handle. The handle watches from fs.watch until the watcher is closed:
 * events_cb (no Lua API) appends each event to the box's queue and wakes
 * the task waiting in next(), if any; next() takes events off the queue in
 * that task. The queue is bounded (MAX_QUEUED): past it, events are dropped
 * and reported as one {overflow = true} once the queue has been read.
 *
 * Ownership and lifetime:
 * - The box is freed when both the handle is closed (close_cb ran) and no
 *   task owns a delivery (busy is 0), whichever comes last: a task woken by
 *   an event may run its deliver after another task closed the watcher.
 * - close(), __close and __gc all come to release, which runs once: it
 *   drops the queue, wakes a waiting task (its next() returns nil) and
 *   closes the handle.
 * - Nothing anchors the watcher in the registry. A task waiting in next()
 *   has it on its own stack (argument 1), and the scheduler anchors every
 *   unfinished task, so a waited-on watcher is never collected; one that
 *   nobody refers to is collected and __gc closes it, even while active.
 * - The handle is unreferenced (uv_unref) except while a task waits in
 *   next(): a watcher keeps the process alive only while someone waits for
 *   its events. */
#include <assert.h>
#include <stdlib.h>
#include <string.h>

#include "queue.h"
#include "common.h"

#define WATCHER_MT "tulua.watcher"
#define MAX_QUEUED 1024 /* events queued before overflow */

typedef struct watcher_event {
  tulua__queue link; /* in the box's events */
  int events; /* UV_RENAME | UV_CHANGE */
  int has_name; /* libuv may give no file name */
  char name[];
} watcher_event;

typedef struct {
  uv_fs_event_t h;
  tulua__waiter w; /* the task waiting in next(), while busy */
  tulua__queue events; /* watcher_event.link, oldest first */
  unsigned count; /* events in the queue */
  int err; /* 0, or a failure libuv reported (the watching stopped) */
  unsigned char busy; /* a task waits in next() or has yet to deliver */
  unsigned char overflow; /* events were dropped: report once drained */
  unsigned char closed; /* released: next() returns nil */
  unsigned char handle_closed; /* close_cb ran */
  char path[]; /* as given to fs.watch, for messages */
} watcher_box;

static void free_events(watcher_box *b) {
  tulua__queue *q;
  while ((q = tulua__queue_pop(&b->events)) != NULL)
    free(tulua__container_of(q, watcher_event, link));
  b->count = 0;
}

static void close_cb(uv_handle_t *h) {
  watcher_box *b = h->data;
  b->handle_closed = 1;
  if (!b->busy) free(b); /* else the deliver still to run frees it */
}

/* Queues one event, or notes an overflow when the queue is full or memory
 * is short; once overflowing, every event is dropped until next() has
 * reported the overflow, so that none is reported out of order. */
static void enqueue(watcher_box *b, const char *name, int events) {
  if (b->overflow) return;
  size_t len = name != NULL ? strlen(name) : 0;
  watcher_event *e = b->count < MAX_QUEUED ? malloc(sizeof *e + len + 1) : NULL;
  if (e == NULL) {
    b->overflow = 1;
    return;
  }
  e->events = events;
  e->has_name = name != NULL;
  memcpy(e->name, name != NULL ? name : "", len + 1);
  tulua__queue_insert_tail(&b->events, &e->link);
  b->count++;
}

static void events_cb(uv_fs_event_t *h, const char *name, int events,
                      int status) { /* no Lua API here */
  watcher_box *b = h->data;
  if (status < 0) { /* not on Linux; stop, and report it once drained */
    if (b->err == 0) b->err = status;
    uv_fs_event_stop(h);
  } else {
    enqueue(b, name, events);
  }
  if (b->busy) tulua__wake(&b->w); /* 0 if woken already: fine */
}

static int has_result(const watcher_box *b) {
  return !tulua__queue_empty(&b->events) || b->overflow || b->err != 0;
}

static void set_true(lua_State *L, const char *k) {
  lua_pushboolean(L, 1);
  lua_setfield(L, -2, k);
}

/* Pushes the oldest event as a table and only then takes it off the queue,
 * so that a memory error while pushing loses nothing; then the overflow;
 * then the failure that stopped the watching, as nil, message, code (every
 * time: the watching does not resume). [-0, +1|3, m] */
static int push_next(lua_State *L, watcher_box *b) {
  tulua__queue *q = tulua__queue_head(&b->events);
  if (q != NULL) {
    watcher_event *e = tulua__container_of(q, watcher_event, link);
    lua_createtable(L, 0, 2);
    if (e->has_name) {
      lua_pushstring(L, e->name);
      lua_setfield(L, -2, "name");
    }
    if (e->events & UV_CHANGE) set_true(L, "change");
    if (e->events & UV_RENAME) set_true(L, "rename");
    tulua__queue_remove(q);
    b->count--;
    free(e);
    return 1;
  }
  if (b->overflow) {
    lua_createtable(L, 0, 1);
    set_true(L, "overflow");
    b->overflow = 0;
    return 1;
  }
  return push_fail(L, b->path, b->err);
}

/* Runs in the task woken by events_cb or by release. */
static int next_deliver(lua_State *L, void *ud) {
  watcher_box *b = ud;
  b->busy = 0;
  if (b->closed) {
    if (b->handle_closed) free(b); /* close_cb left it to us */
    lua_pushnil(L);
    return 1;
  }
  uv_unref((uv_handle_t *)&b->h); /* nobody waits now */
  assert(has_result(b)); /* only events_cb wakes an open watcher */
  return push_next(L, b);
}

/* The task stops waiting; the watching goes on, and events keep queueing
 * for the next call of next(). Only an open watcher has a waiting task:
 * release wakes it, after which no cancel hook runs. */
static void next_cancel(void *ud) {
  watcher_box *b = ud;
  assert(!b->closed);
  b->busy = 0;
  uv_unref((uv_handle_t *)&b->h);
}

/* Closes the watcher of the userdata p once: close(), __close and __gc
 * come here. No Lua API: safe from __gc during lua_close. */
static void release(watcher_box **p) {
  watcher_box *b = *p;
  if (b == NULL) return; /* closed already */
  *p = NULL;
  b->closed = 1;
  free_events(b);
  if (b->busy) tulua__wake(&b->w); /* its next() returns nil */
  uv_close((uv_handle_t *)&b->h, close_cb); /* stops the watching now */
}

/* watcher:next() -> event | nil | nil, message, code: waits for the next
 * event and returns it as a table {name =, change =, rename =} or
 * {overflow = true}; returns at once if events are queued, and nil once
 * the watcher is closed (also when another task closes it meanwhile).
 * Also the watcher's __call, so that a Watcher is its own iterator.
 * Raises outside a task and when another task waits on the watcher. */
static int watcher_next(lua_State *L) {
  watcher_box **p = luaL_checkudata(L, 1, WATCHER_MT);
  watcher_box *b = *p;
  if (b == NULL) { /* closed: the end, not misuse */
    lua_pushnil(L);
    return 1;
  }
  if (b->busy) /* one waiter: two would race for the events */
    return luaL_error(L, "attempt to use a watcher in two tasks at once");
  tulua__check_wait(L, "fs.watch");
  if (has_result(b)) return push_next(L, b);
  b->busy = 1;
  uv_ref((uv_handle_t *)&b->h); /* a waiting task keeps the process alive */
  return tulua__wait(L, &b->w, next_deliver, next_cancel, b);
}

static int watcher_close(lua_State *L) {
  release(luaL_checkudata(L, 1, WATCHER_MT));
  return 0;
}

static int watcher_tostring(lua_State *L) {
  watcher_box **p = luaL_checkudata(L, 1, WATCHER_MT);
  if (*p == NULL) /* as liolib's "file (closed)" */
    lua_pushliteral(L, "watcher (closed)");
  else
    lua_pushfstring(L, "watcher (%s)", (*p)->path);
  return 1;
}

/* fs.watch(path [, options]) -> Watcher, nil, nil, Watcher | nil, message,
 * code: starts watching a file or a directory (its entries, not its
 * subdirectories' entries) and returns a Watcher, which is its own
 * iterator and the generic for's closing value: `for ev in
 * assert(fs.watch(dir)) do ... end` waits for each event in turn, and
 * leaving the loop closes the watcher. options.recursive (watching
 * subdirectories too) is supported by libuv on macOS and Windows only;
 * elsewhere it fails with ENOSYS rather than being ignored. Does not wait. */
static int fs_watch(lua_State *L) {
  size_t len;
  const char *path = tulua__check_path(L, 1, &len);
  unsigned flags = 0;
  static const char *const options[] = {"recursive", NULL};
  if (tulua__check_options(L, 2, options)) {
    lua_getfield(L, 2, "recursive");
    if (lua_toboolean(L, -1)) flags |= UV_FS_EVENT_RECURSIVE;
    lua_pop(L, 1);
  }
#if !defined(__APPLE__) && !defined(_WIN32)
  if (flags & UV_FS_EVENT_RECURSIVE) return push_fail(L, path, UV_ENOSYS);
#endif
  watcher_box **p = lua_newuserdatauv(L, sizeof *p, 0); /* created closed */
  *p = NULL;
  luaL_setmetatable(L, WATCHER_MT);
  watcher_box *b = calloc(1, sizeof *b + len + 1);
  if (b == NULL) return push_fail(L, path, UV_ENOMEM);
  memcpy(b->path, path, len + 1);
  tulua__queue_init(&b->events);
  b->h.data = b;
  uv_fs_event_init(tulua__loop(L), &b->h); /* cannot fail */
  int rc = uv_fs_event_start(&b->h, events_cb, path, flags);
  if (rc < 0) { /* the handle exists: close it, close_cb frees b */
    b->closed = 1;
    uv_close((uv_handle_t *)&b->h, close_cb);
    return push_fail(L, path, rc);
  }
  uv_unref((uv_handle_t *)&b->h); /* until a task waits */
  *p = b;
  lua_pushnil(L);
  lua_pushnil(L);
  lua_pushvalue(L, -3); /* closing value: leaving a for loop closes it */
  return 4;
}

void tulua__fs_event_open(lua_State *L) {
  static const luaL_Reg methods[] = {
      {"next", watcher_next}, {"close", watcher_close}, {NULL, NULL}};
  static const luaL_Reg meta[] = {{"__call", watcher_next},
                                  {"__gc", watcher_close},
                                  {"__close", watcher_close},
                                  {"__tostring", watcher_tostring},
                                  {NULL, NULL}};
  tulua__new_class(L, WATCHER_MT, meta, methods);
  lua_pushcfunction(L, fs_watch);
  lua_setfield(L, -2, "watch");
}
