/* main.c: the tulua command line, a drop-in for lua5.4 (uses tulua.h only).
 *
 * Options, messages and exit statuses are those of lua.c in Lua 5.4.4 (the
 * `lua5.4` of Debian 12). What differs is how chunks run: LUA_INIT, each
 * -e chunk, each -l require, the script and each REPL line run as the main
 * task of the runtime (tulua_call), so they may wait while other tasks keep
 * running; after the script the loop runs until no task or handle is left.
 * An uncaught error of any other task is printed as "progname: message" and
 * makes the exit status 1. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <lauxlib.h>
#include <lualib.h>

#include "docall.h"
#include "repl.h"
#include "tulua.h"

#define PROGNAME "tulua" /* when argv[0] is missing or empty */

#define INIT_VAR         "LUA_INIT"
#define INIT_VAR_VERSION INIT_VAR LUA_VERSUFFIX /* "LUA_INIT_5_4" */

/* The name errors are reported with: argv[0], or NULL (no name) while the
 * REPL runs, as in lua.c. */
static const char *progname = PROGNAME;

/* The name uncaught task errors are reported with: always argv[0]. */
static const char *taskname = PROGNAME;

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

/* Prints an uncaught task error as lua.c prints an error, "name: message";
 * a report that tulua_uncaught_errors does not count (a failing Future
 * callback) is a line of its own. */
static void on_error(tulua_runtime *rt, const char *msg, void *ud) {
  static int counted; /* the uncaught errors printed so far */
  int n = tulua_uncaught_errors(rt);
  (void)ud;
  l_message(n != counted ? taskname : NULL, msg);
  counted = n;
}

/* lua.c's list of options, which both usages show */
#define LUA_OPTIONS                                                            \
  "Available options are:\n"                                                   \
  "  -e stat   execute string 'stat'\n"                                        \
  "  -i        enter interactive mode after executing 'script'\n"              \
  "  -l mod    require library 'mod' into global 'mod'\n"                      \
  "  -l g=mod  require library 'mod' into global 'g'\n"                        \
  "  -v        show version information\n"                                     \
  "  -E        ignore environment variables\n"                                 \
  "  -W        turn warnings on\n"                                             \
  "  --        stop handling options\n"                                        \
  "  -         stop handling options and execute stdin\n"

static void print_usage(const char *badoption) {
  fprintf(stderr, "%s: ", progname);
  if (badoption[1] == 'e' || badoption[1] == 'l')
    fprintf(stderr, "'%s' needs argument\n", badoption);
  else
    fprintf(stderr, "unrecognized option '%s'\n", badoption);
  fprintf(stderr,
          "usage: %s [options] [script [args]]\n"
          "%s",
          progname, LUA_OPTIONS);
  fflush(stderr);
}

/* -h, --help: tulua's own usage, on stdout (lua5.4 has none). */
static void print_help(void) {
  printf(
      "usage: %s [options] [script [args]]\n"
      "Runs Lua 5.4 code as tasks on an event loop (a drop-in for lua5.4).\n"
      "%s"
      "  -l a.b    also sets a.b, making a table a if a is nil (tulua only)\n"
      "  --version show tulua's, libuv's and Lua's versions\n"
      "  -h, --help  show this help\n"
      "  --ps PID, --pstree PID  list the tasks of the running tulua PID\n"
      "            and what each waits for (first argument only)\n"
      "Environment variables:\n"
      "  LUA_INIT_5_4, LUA_INIT  code (or @file) run first\n"
      "  LUA_PATH_5_4, LUA_PATH, LUA_CPATH_5_4, LUA_CPATH  require's paths\n"
      "  TULUA_DEBUG  1: report task steps that block the loop for more\n"
      "               than 100 ms; a number: for more than that many seconds\n"
      "  TULUA_TRACE  FILE: write a Chrome trace of tasks, waits and pool\n"
      "               jobs into FILE (host/trace.md)\n"
      "  TULUA_TRACE_GC_SLOW  seconds: the trace's collector steps this\n"
      "               long or longer are recorded (default 0.001; 0: all)\n"

      "Documentation: man tulua; host/cli.md and README.md of the source\n"
      "tree (installed in /usr/share/doc/tulua with the package).\n",
      progname, LUA_OPTIONS);
}

static void print_version(void) {
  lua_writestring(LUA_COPYRIGHT, strlen(LUA_COPYRIGHT));
  lua_writeline();
}

static void print_long_version(void) {
  printf("%s\nlibuv %s\n", TULUA_VERSION, uv_version_string());
  print_version();
}

/* ---- running chunks (docall.c) ---- */

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

/* For a dotted global name a.b.c: puts the value on top of L at a.b.c too,
 * making a and a.b tables where they are nil, and leaving a field that is
 * set as it is (the global named "a.b.c" is lua5.4's and set besides):
 * tulua -l tulua.trace -e 'tulua.trace.svg(...)' works. Stops at a part
 * that is neither nil nor a table, or an empty part ("a..b", ".a"). */
static void set_nested(lua_State *L, const char *name) {
  const char *dot = strchr(name, '.');
  if (dot == NULL) return;
  int top = lua_gettop(L);
  lua_pushglobaltable(L);
  for (const char *part = name; dot != NULL; part = dot + 1) {
    dot = strchr(part, '.');
    size_t len = dot ? (size_t)(dot - part) : strlen(part);
    if (len == 0) break;
    lua_pushlstring(L, part, len);
    int type = lua_rawget(L, -2);
    if (dot == NULL) { /* the last part: set it if nothing is there */
      if (type == LUA_TNIL) {
        lua_pushlstring(L, part, len);
        lua_pushvalue(L, top);
        lua_rawset(L, -4);
      }
      break;
    }
    if (type == LUA_TNIL) {
      lua_pop(L, 1);
      lua_newtable(L);
      lua_pushlstring(L, part, len);
      lua_pushvalue(L, -2);
      lua_rawset(L, -4);
    } else if (type != LUA_TTABLE) {
      break;
    }
    lua_remove(L, -2); /* descend */
  }
  lua_settop(L, top);
}

/* -l mod or -l g=mod: g = require(mod), and a dotted g nested too. */
static int dolibrary(tulua_runtime *rt, const char *spec) {
  lua_State *L = tulua_state(rt);
  const char *eq = strchr(spec, '=');
  const char *modname = eq ? eq + 1 : spec;
  lua_pushlstring(L, spec, eq ? (size_t)(eq - spec) : strlen(spec));
  lua_getglobal(L, "require");
  lua_pushstring(L, modname);
  int status = tulua__docall(rt, 1, 1, TULUA__CALL_MAIN);
  if (status == LUA_OK) {
    set_nested(L, lua_tostring(L, -2));
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
#define has_h     64 /* -h or --help: alone, like has_error */

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
        if (strcmp(argv[i], "--help") == 0) return has_h;
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
      case 'h':
        if (argv[i][2] != '\0') return has_error;
        return has_h;
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
  tulua__sigint_start(rt, 1);
  tulua_run(rt);
  tulua__sigint_stop();
}

/* Returns 1 if argv asks for tulua --ps PID or --pstree PID: only as the
 * first argument, a long option that lua5.4 rejects, so that no command
 * line lua5.4 runs changes its meaning. */
static int is_ps(char **argv) {
  return argv[0] != NULL && argv[1] != NULL &&
         (strcmp(argv[1], "--ps") == 0 || strcmp(argv[1], "--pstree") == 0);
}

/* tulua --ps PID, --pstree PID: asks the process for its task list
 * (lua/tulua/_ps.lua, host/ps.md). Returns 0 when it failed, after saying
 * why. */
static int run_ps(tulua_runtime *rt, char **argv) {
  static const char chunk[] = "return require('tulua._ps').client(...)";
  lua_State *L = tulua_state(rt);
  if (argv[2] == NULL || argv[3] != NULL) {
    fprintf(stderr, "usage: %s %s PID\n", progname, argv[1]);
    return 0;
  }
  if (tulua_load_string(rt, chunk, strlen(chunk), "=" PROGNAME) < 0)
    return report(L, push_load_error(rt)) == LUA_OK;
  lua_pushstring(L, argv[1]);
  lua_pushstring(L, argv[2]);
  if (report(L, tulua__docall(rt, 2, 1, TULUA__CALL_MAIN)) != LUA_OK) return 0;
  const char *msg = lua_tostring(L, -1);
  if (msg != NULL) l_message(progname, msg);
  lua_pop(L, 1);
  return msg == NULL;
}

/* Does everything lua.c's pmain does, in protected mode. Returns true
 * when nothing failed (a failing stdin chunk without '-' excepted, as in
 * lua.c). */
static int pmain(lua_State *L) {
  int argc = (int)lua_tointeger(L, 1);
  char **argv = lua_touserdata(L, 2);
  tulua_runtime *rt = lua_touserdata(L, 3);
  int script = argc;
  if (is_ps(argv)) {
    lua_pushboolean(L, run_ps(rt, argv));
    return 1;
  }
  int args = collectargs(argv, &script);
  if (args == has_error) {
    print_usage(argv[script]);
    return 0;
  }
  if (args == has_h) {
    print_help();
    lua_pushboolean(L, 1);
    return 1;
  }
  if (args & has_V)
    print_long_version();
  else if (args & has_v)
    print_version();
  if (args & has_E) set_noenv(L);
  createargtable(L, argv, argc, script);
  lua_gc(L, LUA_GCGEN, 0, 0);
  /* without a REPL, SIGINT stays with the runtime from the first chunk to
   * the end of the loop: a Ctrl-C just after the script, before the loop
   * runs its tasks, must stop them as one a moment later does */
  int repl = (args & has_i) || (script == argc && !(args & (has_e | has_v)) &&
                                isatty(STDIN_FILENO));
  if (!repl) tulua__sigint_hold(rt);
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

#define SLOW_MAX 86400.0 /* a day: tulua.h's bound on both thresholds */

/* TULUA_DEBUG's value: 1 (or any word, as before thresholds) is debug mode
 * with the default threshold; another number is the threshold in seconds.
 * Returns 0 for a number out of range (negative, NaN, above a day). */
static int debug_threshold(const char *s, double *slow) {
  char *end;
  errno = 0;
  double v = strtod(s, &end);
  *slow = 0;
  if (end == s || *end != '\0') return 1; /* a word: on, the default */
  if (strcmp(s, "1") == 0) return 1;
  if (!(v > 0 && v <= SLOW_MAX)) return 0;
  *slow = v;
  return 1;
}

/* TULUA_TRACE_GC_SLOW's value: trace.start's gc_slow, a number of seconds
 * from 0 (every step) to a day. Returns 0 for anything else. */
static int gc_slow_threshold(const char *s, double *slow) {
  char *end;
  double v = strtod(s, &end);
  if (end == s || *end != '\0' || !(v >= 0 && v <= SLOW_MAX)) return 0;
  *slow = v;
  return 1;
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
  cfg.ps = !is_ps(argv); /* the asking side answers no --ps itself */
  if (cfg.debug && !debug_threshold(dbg, &cfg.debug_slow)) {
    l_message(progname, "TULUA_DEBUG must be 1 or a number of seconds above 0 "
                        "and at most 86400");
    return EXIT_FAILURE;
  }
  const char *gcs = getenv("TULUA_TRACE_GC_SLOW"); /* trace.start's gc_slow */
  if (gcs != NULL && gcs[0] != '\0' &&
      !gc_slow_threshold(gcs, &cfg.trace_gc_slow)) {
    l_message(progname, "TULUA_TRACE_GC_SLOW must be a number of seconds from "
                        "0 to 86400");
    return EXIT_FAILURE;
  }
  /* the trace is this process's: a worker process or any tulua it runs
   * must not write the same file */
  char *trace = getenv("TULUA_TRACE");
  trace = trace != NULL && trace[0] != '\0' ? strdup(trace) : NULL;
  unsetenv("TULUA_TRACE");
  cfg.trace = trace;
  int rc = tulua_open(&rt, &cfg);
  if (rc < 0) {
    char msg[512];
    if (rc == UV_ENOMEM || trace == NULL)
      snprintf(msg, sizeof msg, "cannot create state: %s", uv_strerror(rc));
    else
      snprintf(msg, sizeof msg, "TULUA_TRACE: cannot write %.400s: %s", trace,
               uv_strerror(rc));
    l_message(argv[0], msg);
    free(trace);
    return EXIT_FAILURE;
  }
  free(trace);
  lua_State *L = tulua_state(rt);
  lua_pushcfunction(L, pmain);
  lua_pushinteger(L, argc);
  lua_pushlightuserdata(L, argv);
  lua_pushlightuserdata(L, rt);
  int status = lua_pcall(L, 3, 1, 0);
  tulua__sigint_release();
  int result = lua_toboolean(L, -1);
  report(L, status);
  int failed = !result || status != LUA_OK || tulua_uncaught_errors(rt) > 0;
  tulua_close(rt);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
