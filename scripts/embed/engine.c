/* engine.c: an example game engine embedding tulua: an SDL2 frame loop that
 * steps the runtime with a time budget and sleeps until its next deadline.
 *
 *   engine script.lua [frames [args...]]
 *
 * Runs script.lua as a task with the module "engine" preloaded, then draws
 * frames at 60 per second: each frame handles SDL's events and the messages
 * of a second thread, gives tulua a budget of TULUA_BUDGET seconds per
 * frame (tulua_step), draws the entities the Lua tasks move, and sleeps
 * until the next frame or the runtime's next deadline, whichever comes
 * first, waking early for I/O. After `frames` frames (default 600; 0: until
 * engine.quit() or the window closes) it closes the runtime and prints the
 * frame times. Built against the installed tulua (scripts/README.md says
 * how); host/embedding.md walks through this file. */
#define _GNU_SOURCE /* ppoll: a sleep finer than poll's milliseconds */
#include <math.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <SDL.h>
#include <lauxlib.h>
#include <tulua.h>

#define FRAME        (1.0 / 60) /* seconds */
#define TULUA_BUDGET 0.008 /* seconds of Lua per frame, about */
#define WARMUP       60 /* frames left out of the statistics */
#define MAX_ENTITIES 20000
#define MAX_FRAMES   100000
#define INBOX_SIZE   64

/* The world the Lua tasks act on: entity positions, read by the renderer. */
static struct {
  SDL_FPoint pos[MAX_ENTITIES];
  int n;
  int quit;
  const char *dir; /* the script's folder: where the assets are */
  double counters[8];
} world;

static const char *const counter_names[] = {"jobs", "tcp", "assets", "messages",
                                            NULL};

/* ---- the module "engine", which the scripts require ---- */

static int l_entity(lua_State *L) {
  if (world.n == MAX_ENTITIES) return luaL_error(L, "too many entities");
  world.pos[world.n].x = (float)luaL_checknumber(L, 1);
  world.pos[world.n].y = (float)luaL_checknumber(L, 2);
  lua_pushinteger(L, ++world.n);
  return 1;
}

static int l_move(lua_State *L) {
  lua_Integer id = luaL_checkinteger(L, 1);
  luaL_argcheck(L, id >= 1 && id <= world.n, 1, "no such entity");
  world.pos[id - 1].x = (float)luaL_checknumber(L, 2);
  world.pos[id - 1].y = (float)luaL_checknumber(L, 3);
  return 0;
}

static int l_count(lua_State *L) {
  int i = luaL_checkoption(L, 1, NULL, counter_names);
  world.counters[i] += luaL_optnumber(L, 2, 1);
  return 0;
}

static int l_quit(lua_State *L) {
  (void)L;
  world.quit = 1;
  return 0;
}

/* engine.on_message(fn): fn(text) runs as a task for each message of the
 * second thread. */
static int l_on_message(lua_State *L) {
  luaL_checktype(L, 1, LUA_TFUNCTION);
  lua_setfield(L, LUA_REGISTRYINDEX, "engine.on_message");
  return 0;
}

static int luaopen_engine(lua_State *L) {
  static const luaL_Reg fns[] = {{"entity", l_entity},         {"move", l_move},
                                 {"count", l_count},           {"quit", l_quit},
                                 {"on_message", l_on_message}, {NULL, NULL}};
  luaL_newlib(L, fns);
  lua_pushstring(L, world.dir);
  lua_setfield(L, -2, "dir");
  lua_pushnumber(L, FRAME);
  lua_setfield(L, -2, "frame");
  return 1;
}

/* ---- a second thread posting messages: tulua_wakeup is the one call it
 * may make; the frame loop hands the messages to Lua ---- */

static struct {
  SDL_mutex *lock;
  char text[INBOX_SIZE][32];
  int n;
  SDL_atomic_t stop;
  tulua_runtime *rt;
} inbox;

static int producer(void *ud) {
  (void)ud;
  for (int i = 1; !SDL_AtomicGet(&inbox.stop); i++) {
    SDL_Delay(100);
    SDL_LockMutex(inbox.lock);
    if (inbox.n < INBOX_SIZE)
      snprintf(inbox.text[inbox.n++], sizeof inbox.text[0], "tick %d", i);
    SDL_UnlockMutex(inbox.lock);
    tulua_wakeup(inbox.rt); /* ends the frame loop's sleep early */
  }
  return 0;
}

/* Starts engine.on_message(text) as a task for each message waiting. */
static void deliver_messages(tulua_runtime *rt) {
  lua_State *L = tulua_state(rt);
  SDL_LockMutex(inbox.lock);
  for (int i = 0; i < inbox.n; i++) {
    if (lua_getfield(L, LUA_REGISTRYINDEX, "engine.on_message") !=
        LUA_TFUNCTION) {
      lua_pop(L, 1);
      break;
    }
    lua_pushstring(L, inbox.text[i]);
    tulua_spawn(rt, 1);
  }
  inbox.n = 0;
  SDL_UnlockMutex(inbox.lock);
}

/* ---- errors to the host ---- */

static void on_error(tulua_runtime *rt, const char *msg, void *ud) {
  (void)rt;
  (void)ud;
  fprintf(stderr, "engine: script error: %s\n", msg);
}

/* ---- timing ---- */

static double now(void) {
  return (double)SDL_GetPerformanceCounter() /
         (double)SDL_GetPerformanceFrequency();
}

/* the frame loop's own CPU time: what tulua costs, without the time the
 * thread waited for a core on a loaded machine */
static double cpu_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

static double percentile(double *v, int n, double p) {
  if (n == 0) return 0;
  qsort(v, (size_t)n, sizeof *v, cmp_double);
  int i = (int)ceil(p * n) - 1;
  return v[i < 0 ? 0 : i] * 1000; /* milliseconds */
}

/* Sleeps until `until` (a now() time) or until the loop has I/O, or the
 * runtime's next timer, whichever comes first: poll on the loop's backend
 * descriptor, as a host does that runs no loop of its own. */
static void sleep_until(tulua_runtime *rt, double until, int for_lua) {
  double wait = until - now();
  double deadline = for_lua ? tulua_next_deadline(rt) : -1;
  if (deadline >= 0 && deadline < wait) wait = deadline;
  if (wait <= 0) return;
  struct pollfd p = {uv_backend_fd(tulua_loop(rt)), POLLIN, 0};
  struct timespec ts = {(time_t)wait, (long)((wait - floor(wait)) * 1e9)};
  ppoll(&p, 1, &ts, NULL);
}

/* ---- the frame loop ---- */

/* per frame: the busy time (events, Lua, drawing), the part of it tulua
 * took, and the time from this frame's start to the next one's */
static double frame_ms[MAX_FRAMES], lua_ms[MAX_FRAMES], period_ms[MAX_FRAMES],
    lua_cpu_ms[MAX_FRAMES];

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: %s script.lua [frames [args...]]\n", argv[0]);
    return 2;
  }
  int frames = argc > 2 ? atoi(argv[2]) : 600;
  if (frames <= 0 || frames > MAX_FRAMES) frames = MAX_FRAMES;
  char *dir = SDL_strdup(argv[1]);
  char *slash = strrchr(dir, '/');
  if (slash) *slash = '\0';
  world.dir = slash ? dir : ".";

  if (SDL_Init(SDL_INIT_VIDEO) != 0) {
    fprintf(stderr, "engine: %s\n", SDL_GetError());
    return 1;
  }
  SDL_Window *win = SDL_CreateWindow("tulua engine", SDL_WINDOWPOS_UNDEFINED,
                                     SDL_WINDOWPOS_UNDEFINED, 640, 480, 0);
  SDL_Renderer *ren =
      win ? SDL_CreateRenderer(win, -1, SDL_RENDERER_SOFTWARE) : NULL;
  if (!ren) {
    fprintf(stderr, "engine: %s\n", SDL_GetError());
    return 1;
  }

  /* creating: a runtime on a loop of its own, the engine's module, the game */
  tulua_config cfg;
  tulua_config_init(&cfg);
  cfg.on_error = on_error;
  tulua_runtime *rt;
  if (tulua_open(&rt, &cfg) < 0) {
    fprintf(stderr, "engine: cannot create the runtime\n");
    return 1;
  }
  tulua_preload(rt, "engine", luaopen_engine);
  lua_State *L = tulua_state(rt);
  if (tulua_load_file(rt, argv[1]) < 0) {
    fprintf(stderr, "engine: %s\n", tulua_errmsg(rt));
    tulua_close(rt);
    return 1;
  }
  for (int i = 3; i < argc; i++)
    lua_pushstring(L, argv[i]);
  if (tulua_spawn(rt, argc > 3 ? argc - 3 : 0) < 0) {
    fprintf(stderr, "engine: %s\n", tulua_errmsg(rt));
    tulua_close(rt);
    return 1;
  }

  inbox.lock = SDL_CreateMutex();
  inbox.rt = rt;
  SDL_Thread *thread = SDL_CreateThread(producer, "producer", NULL);

  int n = 0;
  double next = now();
  for (; n < frames && !world.quit; n++) {
    double start = now();
    SDL_Event ev;
    while (SDL_PollEvent(&ev))
      if (ev.type == SDL_QUIT) world.quit = 1;
    deliver_messages(rt);
    double cpu = cpu_now();
    tulua_step(rt, TULUA_BUDGET); /* stepping */
    double stepped = now();
    lua_cpu_ms[n] = cpu_now() - cpu;
    SDL_SetRenderDrawColor(ren, 0, 0, 0, 255);
    SDL_RenderClear(ren);
    SDL_SetRenderDrawColor(ren, 255, 255, 255, 255);
    SDL_RenderDrawPointsF(ren, world.pos, world.n);
    SDL_RenderPresent(ren);
    frame_ms[n] = now() - start;
    lua_ms[n] = stepped - start;
    /* between frames, step again each time the runtime has a deadline or
     * I/O before the next frame, within what is left of the frame's
     * budget: deadlines are met without a busy loop, and Lua never takes
     * the frame (late tasks run later, the frame rate holds) */
    next += FRAME;
    if (next < now()) next = now(); /* a late frame: do not catch up */
    while (now() < next) {
      double left = TULUA_BUDGET - lua_ms[n];
      sleep_until(rt, next, left > 0);
      if (now() >= next || left <= 0) break;
      deliver_messages(rt);
      double t = now();
      cpu = cpu_now();
      tulua_step(rt, left);
      lua_cpu_ms[n] += cpu_now() - cpu;
      lua_ms[n] += now() - t;
      frame_ms[n] += now() - t;
    }
    period_ms[n] = now() - start;
  }

  /* closing: the thread first (it calls tulua_wakeup), then the runtime */
  SDL_AtomicSet(&inbox.stop, 1);
  SDL_WaitThread(thread, NULL);
  int errors = tulua_uncaught_errors(rt);
  tulua_close(rt);
  SDL_DestroyMutex(inbox.lock);
  SDL_DestroyRenderer(ren);
  SDL_DestroyWindow(win);
  SDL_Quit();
  SDL_free(dir);

  /* the first second creates the 10,000 tasks: not the steady state */
  int from = n > 2 * WARMUP ? WARMUP : 0;
  int total = n;
  n -= from;
  printf("frames %d entities %d jobs %.0f tcp %.0f assets %.0f messages %.0f "
         "errors %d\n",
         total, world.n, world.counters[0], world.counters[1],
         world.counters[2], world.counters[3], errors);
  printf("statistics over frames %d to %d\n", from + 1, total);
  printf("frame ms p50 %.2f p99 %.2f max %.2f\n",
         percentile(frame_ms + from, n, 0.5),
         percentile(frame_ms + from, n, 0.99),
         percentile(frame_ms + from, n, 1));
  printf("tulua ms p50 %.2f p99 %.2f\n", percentile(lua_ms + from, n, 0.5),
         percentile(lua_ms + from, n, 0.99));
  printf("tulua cpu ms p50 %.2f p99 %.2f\n",
         percentile(lua_cpu_ms + from, n, 0.5),
         percentile(lua_cpu_ms + from, n, 0.99));
  printf("period ms p50 %.2f p99 %.2f\n", percentile(period_ms + from, n, 0.5),
         percentile(period_ms + from, n, 0.99));
  return errors ? 1 : 0;
}
