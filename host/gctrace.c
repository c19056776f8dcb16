/* gctrace.c: the collector's steps in the trace: while a trace is on, a
 * runtime's collector steps where a hook can time them, and the ones that
 * take long become slices on the runtime's track (host/trace.md).
 *
 * Lua 5.4 runs its collector's steps inside allocations, with no hook
 * around them. While tracing, this file moves them out: after each step
 * it postpones Lua's own next step by a margin (lua_gc LUA_GCSTEP with a
 * negative size adds that much credit to the collector's debt), and an
 * allocator over the runtime's counts the bytes allocated since. Every
 * `every` bytes it asks for a check at the next instruction of the Lua
 * code running (a count hook on that thread, the hook that was there put
 * back first), and the check gives the margin back (LUA_GCSTEP with the
 * positive size): if Lua's debt is then due, Lua takes its step right
 * there, paced by its own rules (pause, step multiplier, generational
 * minor and major collections), timed; then the margin is taken again.
 * The collector is never stopped, so collectgarbage("isrunning"), "stop"
 * and "restart" mean what they mean; and Lua's own step still comes, untimed,
 * when code allocates past the margin without running a Lua instruction
 * (a long C function): memory stays bounded by the margin. collectgarbage
 * is wrapped so that the calls that set the debt ("collect", "step",
 * "restart", a mode change) first give the margin back, are timed, and
 * take it again. With no trace, the allocator is the runtime's own and
 * collectgarbage calls Lua's with nothing else done. */
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include <lauxlib.h>

#include "runtime.h"
#include "trace.h"

/* The margin: at least 1 MiB, or the heap's size (a big string made in
 * one C call must not start Lua's own step unseen). */
#define MARGIN_MIN_KB 1024
/* A check every this many bytes at least, or a 1024th of the heap. */
#define EVERY_MIN (16 * 1024)

static void gc_hook(lua_State *L, lua_Debug *ar);

/* Records collector work that took gc_slow or longer, on the runtime's
 * track, with the heap in KiB before and after. */
static void record(lua_State *L, tulua__gctrace *g, const char *name,
                   uint64_t t0, uint64_t t1, int kb0) {
  if (g->sink != NULL) { /* a process worker's: its owner traces */
    if (t1 - t0 >= g->sink_slow)
      g->sink(g->sink_ud, name, t0, t1, kb0, lua_gc(L, LUA_GCCOUNT, 0));
    return;
  }
  /* read each time: a trace started again may have another gc_slow */
  if (t1 - t0 < tulua__trace_gc_slow_ns() || !tulua__trace_on()) return;
  tulua__trace_rec r;
  memset(&r, 0, offsetof(tulua__trace_rec, text));
  r.kind = TULUA_TR_GCSTEP;
  r.ts = t0;
  r.dur = t1 - t0;
  r.n1 = kb0;
  r.n2 = lua_gc(L, LUA_GCCOUNT, 0);
  r.pid = g->pid;
  r.tid = g->tid;
  tulua__trace_text(&r, name, NULL, g->track);
  tulua__trace_add(&r);
}

/* Takes the margin: Lua's next step comes that much later. */
static void push(lua_State *L, tulua__gctrace *g) {
  int kb = lua_gc(L, LUA_GCCOUNT, 0);
  if (kb < 0) return; /* in a finalizer: lua_gc does nothing there */
  int margin = kb > MARGIN_MIN_KB ? kb : MARGIN_MIN_KB;
  size_t every = (size_t)kb; /* KiB of heap: its 1024th in bytes */
  g->every = every > EVERY_MIN ? (int64_t)every : EVERY_MIN;
  if (lua_gc(L, LUA_GCISRUNNING, 0) != 1) { /* stopped: nothing to pace */
    g->pushed_kb = 0;
    return;
  }
  lua_gc(L, LUA_GCSTEP, -margin);
  g->pushed_kb = margin;
}

/* Gives the margin back: Lua steps now if its debt is due; timed. */
static void give_back(lua_State *L, tulua__gctrace *g) {
  if (g->pushed_kb == 0) return;
  if (lua_gc(L, LUA_GCISRUNNING, 0) == 0) { /* stopped from C: a step */
    g->pushed_kb = 0; /* now would go against that; restart resets the */
    return; /* debt anyway */
  }
  int kb0 = lua_gc(L, LUA_GCCOUNT, 0);
  uint64_t t0 = uv_hrtime();
  if (lua_gc(L, LUA_GCSTEP, g->pushed_kb) < 0) return; /* in a finalizer */
  g->pushed_kb = 0;
  record(L, g, "gc step", t0, uv_hrtime(), kb0);
}

/* Counted from the end of the step: its frees are not allocations
 * undone (they would push the next check further each time). */
static void check(lua_State *L, tulua__gctrace *g) {
  g->busy = 1; /* the step's finalizers allocate: no request meanwhile */
  give_back(L, g);
  push(L, g);
  g->bytes = 0;
  g->busy = 0;
}

/* Puts back the hook that was on the thread the check was asked on. */
static void unhook(tulua__gctrace *g) {
  if (g->hooked != NULL && lua_gethook(g->hooked) == gc_hook)
    lua_sethook(g->hooked, g->prev, g->prev_mask, g->prev_count);
  g->hooked = NULL;
}

/* Asks for a check at the next instruction of co, keeping the events its
 * hook asked for (they are passed on). A thread made meanwhile inherits
 * the hook: it puts back the same saved one, which it inherited too. */
static void request(tulua__gctrace *g, lua_State *co) {
  lua_Hook h = lua_gethook(co);
  if (h == gc_hook) { /* already asked (or inherited) */
    g->hooked = co;
    return;
  }
  /* a line hook (a debugger's, coverage) would see its line again after
   * a step that ran a finalizer (a return into the function marks its
   * line as left): such a thread's steps are Lua's own, past the margin.
   * A hook of the next instruction (Ctrl-C's, a job's cancel, --ps's) is
   * not displaced: coro.c passes it on to a coroutine resumed before it
   * fires, and it clears itself; the next allocation asks again. */
  int mask = lua_gethookmask(co);
  if ((mask & LUA_MASKLINE) ||
      ((mask & LUA_MASKCOUNT) && lua_gethookcount(co) == 1))
    return;
  unhook(g);
  g->prev = h;
  g->prev_mask = mask;
  g->prev_count = lua_gethookcount(co);
  g->hooked = co;
  lua_sethook(co, gc_hook, g->prev_mask | LUA_MASKCOUNT, 1);
}

static void gc_hook(lua_State *L, lua_Debug *ar) {
  tulua_runtime *rt = tulua__runtime(L);
  tulua__gctrace *g = &rt->gc;
  lua_Hook prev = g->prev;
  int mask = g->prev_mask;
  lua_sethook(L, prev, mask, g->prev_count);
  if (L == g->hooked) g->hooked = NULL;
  if (g->on && g->bytes >= g->every) check(L, g);
  if (prev == NULL) return;
  /* the call and return events the hook there asked for; not a count
   * event (its count starts again, put back above) */
  int event = ar->event == LUA_HOOKTAILCALL ? LUA_HOOKCALL : ar->event;
  if (event != LUA_HOOKCOUNT && (mask & (1 << event))) prev(L, ar);
}

static void *paced_alloc(void *ud, void *ptr, size_t osize, size_t nsize) {
  tulua_runtime *rt = tulua__container_of(ud, tulua_runtime, lua_heap);
  tulua__gctrace *g = &rt->gc;
  void *p = tulua__alloc(ud, ptr, osize, nsize);
  g->bytes += (int64_t)nsize - (ptr != NULL ? (int64_t)osize : 0);
  if (g->bytes >= g->every && !g->busy) {
    lua_State *co = (lua_State *)rt->running;
    /* no Lua code runs: the next task that allocates is asked */
    if (co != NULL && (co != g->hooked || lua_gethook(co) != gc_hook))
      request(g, co);
  }
  return p;
}

void tulua__gctrace_start(lua_State *L, int pid, int tid, const char *track) {
  tulua_runtime *rt = tulua__runtime(L);
  tulua__gctrace *g = &rt->gc;
  if (g->on) return;
  memset(g, 0, sizeof *g);
  g->on = 1;
  g->pid = pid;
  g->tid = tid;
  snprintf(g->track, sizeof g->track, "%s", track ? track : "");
  lua_setallocf(L, paced_alloc, &rt->lua_heap);
  push(L, g);
}

void tulua__gctrace_stop(lua_State *L) {
  tulua_runtime *rt = tulua__runtime(L);
  tulua__gctrace *g = &rt->gc;
  if (!g->on) return;
  unhook(g);
  give_back(L, g);
  lua_setallocf(L, tulua__alloc, &rt->lua_heap);
  g->on = 0;
  g->sink = NULL;
  g->sink_ud = NULL;
}

void tulua__gctrace_sink(lua_State *L, uint64_t slow_ns, tulua__gc_sink sink,
                         void *ud) {
  tulua__gctrace *g = &tulua__runtime(L)->gc;
  if (g->on && g->sink == NULL) return; /* a trace of this process paces */
  if (sink == NULL) {
    tulua__gctrace_stop(L);
    return;
  }
  tulua__gctrace_start(L, 0, 0, NULL);
  g->sink = sink;
  g->sink_ud = ud;
  g->sink_slow = slow_ns;
}

void tulua__gctrace_unsink(lua_State *L, void *ud) {
  if (tulua__runtime(L)->gc.sink_ud == ud)
    tulua__gctrace_sink(L, 0, NULL, NULL);
}

void tulua__trace_gc_sync(lua_State *L, const char *kind, int pool, int worker,
                          int pid) {
  int on = tulua__trace_on();
  if (on == tulua__runtime(L)->gc.on) return;
  if (on) {
    char where[64];
    int32_t rpid, rtid;
    tulua__trace_track(kind, pool, worker, pid, &rpid, &rtid, where,
                       sizeof where);
    tulua__gctrace_start(L, rpid, rtid, where);
  } else {
    tulua__gctrace_stop(L);
  }
}

/* The options of Lua 5.4's collectgarbage, and how many integer arguments
 * each takes after the option. */
static const char *const opts[] = {"collect",   "step",        "stop",
                                   "restart",   "incremental", "generational",
                                   "setpause",  "setstepmul",  "count",
                                   "isrunning", NULL};
static const int nints[] = {0, 1, 0, 0, 3, 2, 1, 1, 0, 0};

enum {
  O_COLLECT,
  O_STEP,
  O_STOP,
  O_RESTART,
  O_INC,
  O_GEN,
  O_SETPAUSE,
  O_SETSTEPMUL
};

/* collectgarbage(opt, ...) as Lua's (its first upvalue), with the margin
 * given back around the options that set the collector's debt, and those
 * that do work timed. The arguments are checked here, so that a misuse
 * names collectgarbage as Lua's does (not the inner call's '?'). */
static int l_collectgarbage(lua_State *L) {
  tulua__gctrace *g = &tulua__runtime(L)->gc;
  int which = luaL_checkoption(L, 1, "collect", opts);
  for (int i = 0; i < nints[which]; i++)
    (void)luaL_optinteger(L, i + 2, 0);
  int nargs = lua_gettop(L);
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_insert(L, 1);
  if (!g->on || which > O_SETSTEPMUL || lua_gc(L, LUA_GCISRUNNING, 0) < 0) {
    lua_call(L, nargs, LUA_MULTRET);
    return lua_gettop(L);
  }
  g->busy = 1;
  give_back(L, g);
  int kb0 = lua_gc(L, LUA_GCCOUNT, 0);
  uint64_t t0 = uv_hrtime();
  int status = lua_pcall(L, nargs, LUA_MULTRET, 0);
  uint64_t t1 = uv_hrtime();
  if (status == LUA_OK &&
      (which <= O_STEP || which == O_INC || which == O_GEN)) {
    char name[48];
    snprintf(name, sizeof name, "collectgarbage %s", opts[which]);
    record(L, g, name, t0, t1, kb0);
  }
  g->bytes = 0;
  push(L, g);
  g->busy = 0;
  if (status != LUA_OK) return lua_error(L);
  return lua_gettop(L);
}

void tulua__gctrace_open(lua_State *L) {
  lua_getglobal(L, "collectgarbage");
  if (lua_iscfunction(L, -1)) {
    lua_pushcclosure(L, l_collectgarbage, 1);
    lua_setglobal(L, "collectgarbage");
  } else {
    lua_pop(L, 1);
  }
}
