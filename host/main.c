/* main.c: the tulua command line, a drop-in for lua5.4 (uses tulua.h only).
 *
 * Options, messages and exit statuses are those of lua.c in Lua 5.4.4 (the
 * `lua5.4` of Debian 12). What differs is how chunks run: LUA_INIT, each
 * -e chunk, each -l require, the script and each REPL line run as the main
 * task of the runtime (tulua_call), so they may wait while other tasks keep
 * running; after the script the loop runs until no task or handle is left.
 * An uncaught error of any other task is printed as "progname: message" and
 * makes the exit status 1. */
#include <signal.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <lauxlib.h>
#include <lualib.h>

#include "repl.h"
#include "tulua.h"

#define PROGNAME "tulua" /* when argv[0] is missing or empty */

#define INIT_VAR         "LUA_INIT"
#define INIT_VAR_VERSION INIT_VAR LUA_VERSUFFIX /* "LUA_INIT_5_4" */

/* lauxlib's luaL_traceback shows the first LEVELS1 and the last LEVELS2
 * levels of a deeper stack, and these pieces of text */
#define LEVELS1 10
#define LEVELS2 11
#define TB_HEAD "stack traceback:"
#define TB_C    "\n\t[C]: in ?"
#define TB_SKIP "\n\t...\t(skipping "

/* The name errors are reported with: argv[0], or NULL (no name) while the
 * REPL runs, as in lua.c. */
static const char *progname = PROGNAME;

/* The name uncaught task errors are reported with: always argv[0]. */
static const char *taskname = PROGNAME;

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

static void sigint_start(int strict) {
  sig_count = 0;
  sig_strict = strict;
  set_sigint(on_sigint);
}

static void sigint_stop(void) {
  set_sigint(SIG_DFL);
}

/* ---- messages ---- */

static void l_message(const char *pname, const char *msg) {
  if (pname) fprintf(stderr, "%s: ", pname);
  fprintf(stderr, "%s\n", msg ? msg : "(null)");
  fflush(stderr);
}

/* Prints the error on top of the stack and pops it, if status is one. */
static int report(lua_State *L, int status) {
  if (status != LUA_OK) {
    l_message(progname, lua_tostring(L, -1));
    lua_pop(L, 1);
  }
  return status;
}

static void on_error(tulua_runtime *rt, const char *msg, void *ud) {
  (void)rt;
  (void)ud;
  l_message(taskname, msg);
}

static void print_usage(const char *badoption) {
  fprintf(stderr, "%s: ", progname);
  if (badoption[1] == 'e' || badoption[1] == 'l')
    fprintf(stderr, "'%s' needs argument\n", badoption);
  else
    fprintf(stderr, "unrecognized option '%s'\n", badoption);
  fprintf(stderr,
          "usage: %s [options] [script [args]]\n"
          "Available options are:\n"
          "  -e stat   execute string 'stat'\n"
          "  -i        enter interactive mode after executing 'script'\n"
          "  -l mod    require library 'mod' into global 'mod'\n"
          "  -l g=mod  require library 'mod' into global 'g'\n"
          "  -v        show version information\n"
          "  -E        ignore environment variables\n"
          "  -W        turn warnings on\n"
          "  --        stop handling options\n"
          "  -         stop handling options and execute stdin\n",
          progname);
  fflush(stderr);
}

static void print_version(void) {
  lua_writestring(LUA_COPYRIGHT, strlen(LUA_COPYRIGHT));
  lua_writeline();
}

static void print_long_version(void) {
  printf("%s\nlibuv %s\n", TULUA_VERSION, uv_version_string());
  print_version();
}

/* ---- running a chunk as the main task ---- */

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

/* lua.c's message handler: a string (or a number) gets a traceback; an
 * object whose __tostring gives a string is that string; anything else is
 * named by its type, with a traceback. */
static int msghandler(lua_State *L) {
  const char *msg = lua_tostring(L, 1);
  if (msg == NULL) {
    if (luaL_callmeta(L, 1, "__tostring") && lua_type(L, -1) == LUA_TSTRING)
      return 1;
    msg =
        lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 1));
  }
  push_traceback(L, msg);
  return 1;
}

/* stack: [pad] handler results... (or [pad] handler error); ctx: how many
 * slots lie under the results */
static int run_k(lua_State *L, int status, lua_KContext ctx) {
  luaL_checkstack(L, 1, "too many results");
  lua_pushboolean(L, status == LUA_OK || status == LUA_YIELD);
  lua_replace(L, 1);
  if (ctx > 1) lua_remove(L, 2);
  return lua_gettop(L); /* true, results... or false, error */
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
  sigint_start(0);
  int status = tulua_call(rt, nargs + 1, LUA_MULTRET);
  sigint_stop();
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

/* Pushes the runtime's last load error; returns the status to report. */
static int push_load_error(tulua_runtime *rt) {
  lua_pushstring(tulua_state(rt), tulua_errmsg(rt));
  return LUA_ERRSYNTAX;
}

static int dochunk(tulua_runtime *rt, int rc) {
  int status =
      rc < 0 ? push_load_error(rt) : tulua__docall(rt, 0, 0, TULUA__CALL_MAIN);
  return report(tulua_state(rt), status);
}

static int dofile(tulua_runtime *rt, const char *name) {
  return dochunk(rt, tulua_load_file(rt, name));
}

static int dostring(tulua_runtime *rt, const char *s, const char *name) {
  return dochunk(rt, tulua_load_string(rt, s, strlen(s), name));
}

/* -l mod or -l g=mod: g = require(mod). */
static int dolibrary(tulua_runtime *rt, const char *spec) {
  lua_State *L = tulua_state(rt);
  const char *eq = strchr(spec, '=');
  const char *modname = eq ? eq + 1 : spec;
  lua_pushlstring(L, spec, eq ? (size_t)(eq - spec) : strlen(spec));
  lua_getglobal(L, "require");
  lua_pushstring(L, modname);
  int status = tulua__docall(rt, 1, 1, TULUA__CALL_MAIN);
  if (status == LUA_OK) {
    lua_setglobal(L, lua_tostring(L, -2));
    lua_pop(L, 1); /* the global's name */
    return LUA_OK;
  }
  lua_remove(L, -2); /* the global's name */
  return report(L, status);
}

/* Pushes arg[1..#arg] for the script; raises if 'arg' is no table. */
static int pushargs(lua_State *L) {
  int i, n;
  if (lua_getglobal(L, "arg") != LUA_TTABLE)
    luaL_error(L, "'arg' is not a table");
  n = (int)luaL_len(L, -1);
  luaL_checkstack(L, n + 3, "too many arguments to script");
  for (i = 1; i <= n; i++)
    lua_rawgeti(L, -i, i);
  lua_remove(L, -i); /* the table */
  return n;
}

static int handle_script(tulua_runtime *rt, char **argv) {
  lua_State *L = tulua_state(rt);
  const char *fname = argv[0];
  int status;
  if (strcmp(fname, "-") == 0 && strcmp(argv[-1], "--") != 0)
    fname = NULL; /* stdin */
  if (tulua_load_file(rt, fname) < 0) {
    status = push_load_error(rt);
  } else {
    int n = pushargs(L);
    status = tulua__docall(rt, n, 0, TULUA__CALL_MAIN);
  }
  return report(L, status);
}

/* ---- options ---- */

#define has_error 1 /* bad option */
#define has_i     2 /* -i */
#define has_v     4 /* -v (or -i) */
#define has_e     8 /* -e */
#define has_E     16 /* -E */
#define has_V     32 /* --version */

/* Checks the options up to the script name. Returns the flags above, or
 * has_error alone with *first at the bad option; else *first is the
 * index of the script name (argc if there is none). */
static int collectargs(char **argv, int *first) {
  int args = 0;
  int i;
  if (argv[0] == NULL) { /* no program name: no arguments either */
    *first = 0;
    return 0;
  }
  for (i = 1; argv[i] != NULL; i++) {
    *first = i;
    if (argv[i][0] != '-') return args; /* the script */
    switch (argv[i][1]) {
      case '-': /* '--' or '--version' */
        if (strcmp(argv[i], "--version") == 0) {
          args |= has_V | has_v;
          break;
        }
        if (argv[i][2] != '\0') return has_error;
        *first = i + 1;
        return args;
      case '\0': /* '-': the script is stdin */
        return args;
      case 'E':
        if (argv[i][2] != '\0') return has_error;
        args |= has_E;
        break;
      case 'W':
        if (argv[i][2] != '\0') return has_error;
        break;
      case 'i':
        args |= has_i; /* -i implies -v */
        /* fall through */
      case 'v':
        if (argv[i][2] != '\0') return has_error;
        args |= has_v;
        break;
      case 'e':
        args |= has_e;
        /* fall through */
      case 'l': /* both need an argument, joined or next */
        if (argv[i][2] == '\0') {
          i++;
          if (argv[i] == NULL || argv[i][0] == '-') return has_error;
        }
        break;
      default:
        return has_error;
    }
  }
  *first = i;
  return args;
}

/* Runs -e, -l and -W in order; returns 0 when one failed. */
static int runargs(tulua_runtime *rt, char **argv, int n) {
  for (int i = 1; i < n; i++) {
    int option = argv[i][1];
    if (option == 'e' || option == 'l') {
      const char *extra = argv[i] + 2;
      if (*extra == '\0') extra = argv[++i];
      int status = option == 'e' ? dostring(rt, extra, "=(command line)")
                                 : dolibrary(rt, extra);
      if (status != LUA_OK) return 0;
    } else if (option == 'W') {
      lua_warning(tulua_state(rt), "@on", 0);
    }
  }
  return 1;
}

/* arg[0] is the script (or the program when there is none), arg[1..] its
 * arguments, negative indices what comes before. */
static void createargtable(lua_State *L, char **argv, int argc, int script) {
  if (script == argc) script = 0; /* no script: arg[0] is the program */
  lua_createtable(L, argc > script ? argc - (script + 1) : 0, script + 1);
  for (int i = 0; i < argc; i++) {
    lua_pushstring(L, argv[i]);
    lua_rawseti(L, -2, i - script);
  }
  lua_setglobal(L, "arg");
}

/* -E: lua.c sets LUA_NOENV before it opens the libraries; tulua_open has
 * opened them already, so package.path and cpath get the defaults that
 * the package library would then have chosen. */
static void set_noenv(lua_State *L) {
  lua_pushboolean(L, 1);
  lua_setfield(L, LUA_REGISTRYINDEX, "LUA_NOENV");
  luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
  if (lua_getfield(L, -1, LUA_LOADLIBNAME) == LUA_TTABLE) {
    lua_pushliteral(L, LUA_PATH_DEFAULT);
    lua_setfield(L, -2, "path");
    lua_pushliteral(L, LUA_CPATH_DEFAULT);
    lua_setfield(L, -2, "cpath");
  }
  lua_pop(L, 2);
}

static int handle_luainit(tulua_runtime *rt) {
  const char *name = "=" INIT_VAR_VERSION;
  const char *init = getenv(name + 1);
  if (init == NULL) {
    name = "=" INIT_VAR;
    init = getenv(name + 1);
  }
  if (init == NULL) return LUA_OK;
  if (init[0] == '@') return dofile(rt, init + 1);
  return dostring(rt, init, name);
}

static void run_repl(tulua_runtime *rt) {
  const char *old = progname;
  progname = NULL; /* no name on errors; stays so if the REPL raises */
  tulua__repl(rt);
  progname = old;
}

static void run_loop(tulua_runtime *rt) {
  sigint_start(1);
  tulua_run(rt);
  sigint_stop();
}

/* Does everything lua.c's pmain does, in protected mode. Returns true
 * when nothing failed (a failing stdin chunk without '-' excepted, as in
 * lua.c). */
static int pmain(lua_State *L) {
  int argc = (int)lua_tointeger(L, 1);
  char **argv = lua_touserdata(L, 2);
  tulua_runtime *rt = lua_touserdata(L, 3);
  int script = argc;
  int args = collectargs(argv, &script);
  if (args == has_error) {
    print_usage(argv[script]);
    return 0;
  }
  if (args & has_V)
    print_long_version();
  else if (args & has_v)
    print_version();
  if (args & has_E) set_noenv(L);
  createargtable(L, argv, argc, script);
  lua_gc(L, LUA_GCGEN, 0, 0);
  if (!(args & has_E) && handle_luainit(rt) != LUA_OK) return 0;
  if (!runargs(rt, argv, script)) return 0;
  if (script < argc && handle_script(rt, argv + script) != LUA_OK) return 0;
  if (args & has_i) {
    run_repl(rt);
  } else if (script == argc && !(args & (has_e | has_v))) {
    if (isatty(STDIN_FILENO)) {
      print_version();
      run_repl(rt);
    } else if (dofile(rt, NULL) == LUA_OK) {
      run_loop(rt);
    }
  } else {
    run_loop(rt);
  }
  lua_pushboolean(L, 1);
  return 1;
}

/* A closed stdin, stdout or stderr would be reused by the first file
 * libuv opens, which libuv then refuses to close (it asserts its fds are
 * above 2): give each one /dev/null, as Node does. */
static void fill_std_fds(void) {
  for (int fd = 0; fd <= 2; fd++)
    if (fcntl(fd, F_GETFD) < 0 && errno == EBADF)
      if (open("/dev/null", fd == 0 ? O_RDONLY : O_WRONLY) < 0) return;
}

int main(int argc, char **argv) {
  tulua_config cfg;
  tulua_runtime *rt;
  fill_std_fds();
  if (argv[0] != NULL && argv[0][0] != '\0') progname = argv[0];
  taskname = progname;
  tulua_config_init(&cfg);
  cfg.on_error = on_error;
  const char *dbg = getenv("TULUA_DEBUG"); /* asyncio's PYTHONASYNCIODEBUG */
  cfg.debug = dbg != NULL && dbg[0] != '\0' && strcmp(dbg, "0") != 0;
  if (tulua_open(&rt, &cfg) < 0) {
    l_message(argv[0], "cannot create state: not enough memory");
    return EXIT_FAILURE;
  }
  sig_rt = rt;
  lua_State *L = tulua_state(rt);
  lua_pushcfunction(L, pmain);
  lua_pushinteger(L, argc);
  lua_pushlightuserdata(L, argv);
  lua_pushlightuserdata(L, rt);
  int status = lua_pcall(L, 3, 1, 0);
  int result = lua_toboolean(L, -1);
  report(L, status);
  int failed = !result || status != LUA_OK || tulua_uncaught_errors(rt) > 0;
  tulua_close(rt);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
