/* docall.c: how the tulua command line runs a chunk, as lua.c's docall:
 * as the main task (tulua_call), under lua.c's message handler, with the
 * traceback lua.c would show and Ctrl-C interrupting it. Shared by main.c
 * and repl.c (uses tulua.h only). */
#include <signal.h>
#include <string.h>

#include <lauxlib.h>

#include "docall.h"
#include "tulua.h"

/* lauxlib's luaL_traceback shows the first LEVELS1 and the last LEVELS2
 * levels of a deeper stack, and these pieces of text */
#define LEVELS1 10
#define LEVELS2 11
#define TB_HEAD "stack traceback:"
#define TB_C    "\n\t[C]: in ?"
#define TB_SKIP "\n\t...\t(skipping "

/* ---- Ctrl-C ----
 * While a chunk runs (tulua_call) or the loop runs (tulua_run), SIGINT
 * calls tulua_interrupt: running Lua code gets the error "interrupted!", a
 * waiting main task is cancelled. A SIGINT that comes while an earlier one
 * is still pending ends the process, as lua.c's second Ctrl-C does; so does
 * a second SIGINT during one tulua_run, where a first one may have found
 * nothing to interrupt. Otherwise SIGINT keeps its default action. */

static tulua_runtime *sig_rt; /* the runtime SIGINT interrupts */
static volatile sig_atomic_t sig_count; /* SIGINTs since the handler was set */
static volatile sig_atomic_t sig_strict; /* 1: the second SIGINT kills */
static int sig_held; /* tulua__sigint_hold: stop keeps the handler */

static void set_sigint(void (*handler)(int)) {
  struct sigaction sa;
  sa.sa_handler = handler;
  sa.sa_flags = 0; /* no SA_RESTART: a blocking read returns, as in lua.c */
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, NULL);
}

static void on_sigint(int sig) {
  int pending = tulua_interrupt(sig_rt);
  if (pending == 1 || (sig_strict && sig_count > 0)) {
    set_sigint(SIG_DFL); /* raised again as the handler returns: we die */
    raise(sig);
    return;
  }
  sig_count++;
}

void tulua__sigint_start(tulua_runtime *rt, int strict) {
  sig_rt = rt;
  sig_count = 0;
  sig_strict = strict;
  set_sigint(on_sigint);
}

void tulua__sigint_stop(void) {
  if (sig_held) {
    sig_strict = 0;
    return;
  }
  set_sigint(SIG_DFL);
}

void tulua__sigint_hold(tulua_runtime *rt) {
  sig_held = 1;
  tulua__sigint_start(rt, 0);
}

void tulua__sigint_release(void) {
  sig_held = 0;
  set_sigint(SIG_DFL);
}

/* ---- the traceback lua.c would show ---- */

/* Returns the deepest level of L's stack (lauxlib's lastlevel). */
static int last_level(lua_State *L) {
  lua_Debug ar;
  int li = 1, le = 1;
  while (lua_getstack(L, le, &ar)) { /* find an upper bound */
    li = le;
    le *= 2;
  }
  while (li < le) { /* binary search */
    int m = (li + le) / 2;
    if (lua_getstack(L, m, &ar))
      li = m + 1;
    else
      le = m;
  }
  return le - 1;
}

/* Pushes the traceback lines of the levels from level to the second last
 * (luaL_traceback's text without its header and its last line, which is
 * the task's bottom C function). Only for stretches that luaL_traceback
 * does not shorten. [-0, +1, m] */
static void push_lines(lua_State *L, int level) {
  size_t len, head = strlen(TB_HEAD), tail = strlen(TB_C);
  luaL_traceback(L, L, NULL, level);
  const char *s = lua_tolstring(L, -1, &len);
  if (len >= head + tail && strcmp(s + len - tail, TB_C) == 0) len -= tail;
  lua_pushlstring(L, s + head, len - head);
  lua_remove(L, -2);
}

/* Pushes the first LEVELS1 traceback lines of a stack that luaL_traceback
 * shortens. [-0, +1, m] */
static void push_head(lua_State *L) {
  size_t head = strlen(TB_HEAD);
  luaL_traceback(L, L, NULL, 1);
  const char *s = lua_tostring(L, -1);
  const char *skip = strstr(s + head, TB_SKIP);
  lua_pushlstring(L, s + head, skip ? (size_t)(skip - s) - head : 0);
  lua_remove(L, -2);
}

/* Pushes msg with the traceback lua.c's message handler would append.
 * Under the erring function the task's stack holds run_chunk and, at the
 * bottom, the task's C trampoline, where lua.c has only its own C function
 * (the "[C]: in ?" line): the text is luaL_traceback's, as if run_chunk's
 * level were not there, including which levels a deep stack skips.
 * [-0, +1, m] */
static void push_traceback(lua_State *L, const char *msg) {
  int top = lua_gettop(L);
  int last = last_level(L); /* the trampoline */
  int n = last - 1; /* the last level of the same stack in lua.c */
  lua_pushstring(L, msg);
  lua_pushliteral(L, "\n" TB_HEAD);
  if (last - 1 <= LEVELS1 + LEVELS2) { /* nothing skipped, here or there */
    push_lines(L, 1);
  } else {
    push_head(L);
    if (n - 1 > LEVELS1 + LEVELS2) { /* lua.c skips levels too */
      lua_pushfstring(L, TB_SKIP "%d levels)", n - LEVELS1 - LEVELS2 - 1);
      push_lines(L, n - LEVELS1);
    } else {
      push_lines(L, LEVELS1 + 1);
    }
  }
  lua_concat(L, lua_gettop(L) - top);
}

/* Returns 1 if the error at idx is the cancellation of a Ctrl-C (code
 * ECANCELED, message "interrupted!"), which prints as lua.c's interrupt
 * does when the main task waits: "interrupted!" alone. */
static int is_interrupt(lua_State *L, int idx) {
  int yes = lua_type(L, idx) == LUA_TTABLE &&
            lua_getfield(L, idx, "code") == LUA_TSTRING &&
            strcmp(lua_tostring(L, -1), "ECANCELED") == 0 &&
            lua_getfield(L, idx, "message") == LUA_TSTRING &&
            strcmp(lua_tostring(L, -1), "interrupted!") == 0;
  lua_settop(L, idx);
  return yes;
}

/* lua.c's message handler, where a string (or a number) gets a
 * traceback, and then any other error value too, after the text
 * tulua_error_text gives it: where it was raised, its __tostring or its
 * fields. */
static int msghandler(lua_State *L) {
  lua_settop(L, 1);
  if (is_interrupt(L, 1)) {
    luaL_tolstring(L, 1, NULL);
    return 1;
  }
  push_traceback(L, tulua_error_text(L, L, 1));
  return 1;
}

/* ---- running a chunk as the main task ---- */

/* stack: [pad] handler results... (or [pad] handler error); ctx: how many
 * slots lie under the results */
static int run_k(lua_State *L, int status, lua_KContext ctx) {
  luaL_checkstack(L, 1, "too many results");
  lua_pushboolean(L, status == LUA_OK || status == LUA_YIELD);
  lua_replace(L, 1);
  if (ctx > 1) lua_remove(L, 2);
  return lua_gettop(L); /* true, results... or false, error */
}

/* A REPL line's task is left out of tulua.all_tasks (tulua._hide_current):
 * at the prompt it stands for lua.c's main thread, and would show there as
 * a finished task once the results print. */
static void hide_line_task(lua_State *L) {
  luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
  lua_getfield(L, -1, "tulua");
  lua_CFunction open = lua_tocfunction(L, -1);
  lua_pop(L, 2);
  if (open == NULL) return; /* a host without the module */
  luaL_requiref(L, "tulua", open, 0);
  if (lua_getfield(L, -1, "_hide_current") == LUA_TFUNCTION)
    lua_call(L, 0, 0);
  else
    lua_pop(L, 1);
  lua_pop(L, 1);
}

/* The main task's function: calls the chunk (argument 1) with the other
 * arguments under lua.c's message handler (or none, in TULUA__CALL_PLAIN
 * mode) and returns true and the results, or false and the error. Catching
 * the error inside the task keeps the stack where it failed for the
 * handler, and gives lua.c's text for any error object. Under the chunk
 * are as many stack slots as lua.c has there in each mode (a pad below the
 * handler for scripts), which decides the level where a stack overflow
 * hits. */
static int run_chunk(lua_State *L) {
  int nargs = lua_gettop(L) - 1;
  int mode = (int)lua_tointeger(L, lua_upvalueindex(1));
  int under = mode == TULUA__CALL_MAIN ? 2 : 1;
  if (mode == TULUA__CALL_REPL) hide_line_task(L);
  if (under > 1) {
    lua_pushnil(L); /* the pad */
    lua_insert(L, 1);
  }
  if (mode == TULUA__CALL_PLAIN)
    lua_pushnil(L);
  else
    lua_pushcfunction(L, msghandler);
  lua_insert(L, under);
  int status = lua_pcallk(L, nargs, LUA_MULTRET,
                          mode == TULUA__CALL_PLAIN ? 0 : under, under, run_k);
  return run_k(L, status, under);
}

/* The runtime's own errors (tulua_call's, not the chunk's) show run_chunk
 * as a second "[C]: in ?" at the end of their traceback: drops it. */
static void drop_own_level(lua_State *L) {
  size_t len, tail = strlen(TB_C TB_C);
  const char *msg = lua_tolstring(L, -1, &len);
  if (msg == NULL || lua_type(L, -1) != LUA_TSTRING || len < tail ||
      strcmp(msg + len - tail, TB_C TB_C) != 0)
    return;
  lua_pushlstring(L, msg, len - strlen(TB_C));
  lua_replace(L, -2);
}

int tulua__docall(tulua_runtime *rt, int nargs, int nresults, int mode) {
  lua_State *L = tulua_state(rt);
  int base = lua_gettop(L) - nargs; /* the function */
  lua_pushinteger(L, mode);
  lua_pushcclosure(L, run_chunk, 1);
  lua_insert(L, base);
  tulua__sigint_start(rt, 0);
  int status = tulua_call(rt, nargs + 1, LUA_MULTRET);
  tulua__sigint_stop();
  if (status != LUA_OK) { /* the runtime's error, such as a deadlock */
    drop_own_level(L);
    return status;
  }
  int ok = lua_toboolean(L, base); /* stack: ... ok results... */
  lua_remove(L, base);
  if (!ok) return LUA_ERRRUN; /* stack: ... error */
  if (nresults != LUA_MULTRET) lua_settop(L, base - 1 + nresults);
  return LUA_OK;
}
