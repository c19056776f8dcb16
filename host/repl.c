/* repl.c: the read-eval-print loop of the tulua command line (tulua -i),
 * over stdin; uses tulua.h only.
 *
 * It reproduces lua.c's REPL as Debian's lua5.4 runs it, linked with GNU
 * readline, without linking readline: prompts from _PROMPT and _PROMPT2, a
 * line tried first as "return line;", continuation lines while the chunk is
 * incomplete, results printed with the global print, errors on stderr
 * without the program name. When stdin is not a terminal, readline echoes
 * the prompt and the line to stdout; so does this loop, byte for byte for
 * plain text (readline's editing keys, such as TAB or backspace, are not
 * interpreted: they stay in the line). Each chunk runs as the main task, so
 * a line may wait (tulua.sleep) while other tasks run; while the loop waits
 * for input no task runs. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <lauxlib.h>

#include "docall.h"
#include "repl.h"
#include "tulua.h"

#define PROMPT1 "> "
#define PROMPT2 ">> "
#define EOFMARK "<eof>" /* ends the syntax error of an incomplete chunk */

typedef struct {
  tulua_runtime *rt;
  lua_State *L;
  int base; /* the stack below is not the loop's: lua.c's index 0 */
  int echo; /* stdin is no terminal: echo the prompt and the line */
  int edit; /* stdin and stdout are terminals: the line editor (lineedit.c) */
} repl;

/* Prints an error without the program name and pops it. */
static void report(lua_State *L) {
  const char *msg = lua_tostring(L, -1);
  fprintf(stderr, "%s\n", msg ? msg : "(null)");
  fflush(stderr);
  lua_pop(L, 1);
}

/* Returns the prompt and leaves on the stack what lua.c leaves there: nil
 * for the default prompt, else the prompt string (tostring of _PROMPT or
 * _PROMPT2, which may raise). [-0, +1, e] */
static const char *get_prompt(lua_State *L, int firstline) {
  if (lua_getglobal(L, firstline ? "_PROMPT" : "_PROMPT2") == LUA_TNIL)
    return firstline ? PROMPT1 : PROMPT2;
  const char *p = luaL_tolstring(L, -1, NULL);
  lua_remove(L, -2);
  return p;
}

/* Shows the prompt and reads a line from fd 0 one byte at a time, as
 * readline does, so that io.read() in a chunk gets exactly the input after
 * the line. A line ends at '\n' or '\r' (readline's accept-line) or at the
 * end of the input. Pushes the line without its end and returns 1, or
 * returns 0, pushing nothing, at the end of the input. [-0, +(0|1), m] */
static int read_line(repl *r, const char *prompt) {
  lua_State *L = r->L;
  if (r->edit) {
    char *line = tulua__edit_read(prompt);
    if (line == NULL) return 0;
    lua_pushstring(L, line);
    free(line);
    return 1;
  }
  luaL_Buffer b;
  size_t n = 0;
  int eof = 0;
  fputs(prompt, stdout);
  fflush(stdout);
  luaL_buffinit(L, &b);
  for (;;) {
    char c;
    ssize_t got = read(STDIN_FILENO, &c, 1);
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) {
      eof = 1;
      break;
    }
    if (c == '\n' || c == '\r') break;
    luaL_addchar(&b, c);
    n++;
  }
  luaL_pushresult(&b);
  if (eof && n == 0) {
    lua_pop(L, 1);
    return 0;
  }
  if (r->echo) {
    size_t len;
    const char *line = lua_tolstring(L, -1, &len);
    fwrite(line, 1, len, stdout);
    fputc('\n', stdout);
    fflush(stdout);
  }
  return 1;
}

/* Pushes the next line ("=expr" on a first line becomes "return expr");
 * returns 0 at the end of the input, leaving the prompt's value (see
 * get_prompt) on the stack for the caller. */
static int pushline(repl *r, int firstline) {
  lua_State *L = r->L;
  const char *prompt = get_prompt(L, firstline);
  if (!read_line(r, prompt)) return 0;
  lua_remove(L, -2); /* the prompt */
  const char *line = lua_tostring(L, -1);
  if (firstline && line[0] == '=') {
    lua_pushfstring(L, "return %s", line + 1);
    lua_remove(L, -2);
  }
  return 1;
}

/* Compiles code; pushes the function, or the error message. */
static int load(repl *r, const char *code, size_t len) {
  if (tulua_load_string(r->rt, code, len, "=stdin") == 0) return LUA_OK;
  lua_pushstring(r->L, tulua_errmsg(r->rt));
  return LUA_ERRSYNTAX;
}

/* Returns 1 (and pops the message) if the chunk failed only because the
 * input ended too early: more lines may complete it. */
static int incomplete(lua_State *L, int status) {
  if (status == LUA_ERRSYNTAX) {
    size_t len, mark = strlen(EOFMARK);
    const char *msg = lua_tolstring(L, -1, &len);
    if (len >= mark && strcmp(msg + len - mark, EOFMARK) == 0) {
      lua_pop(L, 1);
      return 1;
    }
  }
  return 0;
}

/* Tries the line on top as "return line;": pushes the function and
 * returns LUA_OK, or pushes nothing. */
static int addreturn(repl *r) {
  lua_State *L = r->L;
  const char *line = lua_tostring(L, -1);
  const char *retline = lua_pushfstring(L, "return %s;", line);
  int status = load(r, retline, strlen(retline));
  if (status == LUA_OK)
    lua_remove(L, -2); /* retline */
  else
    lua_pop(L, 2); /* the message and retline */
  return status;
}

/* Compiles the line as a statement, adding lines while it is incomplete.
 * Pushes the function or an error (at the end of the input while
 * incomplete: the prompt's value, which lua.c then prints). */
static int multiline(repl *r) {
  lua_State *L = r->L;
  for (;;) {
    size_t len;
    const char *line = lua_tolstring(L, r->base + 1, &len);
    int status = load(r, line, len);
    if (!incomplete(L, status) || !pushline(r, 0)) return status;
    lua_pushliteral(L, "\n"); /* stack: lines line */
    lua_insert(L, -2);
    lua_concat(L, 3);
  }
}

/* Reads and compiles one chunk. Returns -1 at the end of the input, else
 * the status of compiling, with the function or the error on the stack. */
static int loadline(repl *r) {
  lua_State *L = r->L;
  int status;
  lua_settop(L, r->base);
  if (!pushline(r, 1)) return -1;
  if ((status = addreturn(r)) != LUA_OK) status = multiline(r);
  if (r->edit) /* the whole chunk, also when it does not compile */
    tulua__edit_add_history(lua_tostring(L, r->base + 1));
  lua_remove(L, r->base + 1); /* the line */
  return status;
}

/* The terminal REPL prints results with lua/tulua/repl.lua's show_all:
 * tables readably, a Task with its state. */
static const char SHOW[] =
    "io.stdout:write(require('tulua.repl').show_all(...),"
    " '\\n')";

/* The terminal REPL's exit (Ctrl-D): background tasks are cancelled, with a
 * second to clean up, since nothing could stop them once the prompt is
 * gone (a server or a timer loop would keep the process alive). */
static const char BYE[] =
    "local tulua = require('tulua')\n"
    "local me, left, names = tulua.current(), {}, {}\n"
    "for _, t in ipairs(tulua.all_tasks()) do\n"
    "  if t ~= me then left[#left + 1] = t\n"
    "    names[#left] = t:get_name() .. ' (' .. t:status() .. ')' end\n"
    "end\n"
    "if #left == 0 then return end\n"
    "io.stderr:write(('cancelling %d background task%s: %s\\n'):format(\n"
    "  #left, #left == 1 and '' or 's', table.concat(names, ', ')))\n"
    "for _, t in ipairs(left) do t:cancel() end\n"
    "local deadline = tulua.now() + 1\n"
    "for _, t in ipairs(left) do\n"
    "  while not t:done() and tulua.now() < deadline do tulua.sleep(0.01) end\n"
    "end\n";

/* The terminal REPL's globals: tulua, fs and asyncio, unless the script
 * (tulua -i script) took the names. Run as a task once the first prompt is
 * up, so that loading asyncio does not delay it. */
static const char PRELUDE[] =
    "tulua = tulua == nil and require('tulua') or tulua\n"
    "fs = fs == nil and require('tulua.fs') or fs\n"
    "asyncio = asyncio == nil and require('asyncio') or asyncio\n";

/* Runs one of the chunks above (nargs arguments on the stack) in a task;
 * returns the status, with the error on the stack if it failed. */
static int run_own(repl *r, const char *code, size_t len, int nargs) {
  if (tulua_load_string(r->rt, code, len, "=repl") != 0) {
    lua_pop(r->L, nargs);
    lua_pushstring(r->L, tulua_errmsg(r->rt));
    return LUA_ERRSYNTAX;
  }
  lua_insert(r->L, -(nargs + 1));
  return tulua__docall(r->rt, nargs, 0, TULUA__CALL_PLAIN);
}

/* Prints the results above base with the global print (the terminal REPL:
 * with show_all, and _ becomes the first), in a task too. */
static void print_results(repl *r) {
  lua_State *L = r->L;
  int n = lua_gettop(L) - r->base;
  if (n > 0 && r->edit) {
    lua_pushvalue(L, r->base + 1);
    lua_setglobal(L, "_");
    if (run_own(r, SHOW, sizeof SHOW - 1, n) != LUA_OK) {
      lua_pushfstring(L, "error showing the results (%s)", lua_tostring(L, -1));
      report(L);
    }
  } else if (n > 0) {
    luaL_checkstack(L, LUA_MINSTACK, "too many results to print");
    lua_getglobal(L, "print");
    lua_insert(L, r->base + 1);
    if (tulua__docall(r->rt, n, 0, TULUA__CALL_PLAIN) != LUA_OK) {
      lua_pushfstring(L, "error calling 'print' (%s)", lua_tostring(L, -1));
      report(L);
    }
  }
}

void tulua__repl(tulua_runtime *rt) {
  lua_State *L = tulua_state(rt);
  int tty = isatty(STDIN_FILENO) && isatty(STDOUT_FILENO);
  repl r = {rt, L, lua_gettop(L), !isatty(STDIN_FILENO), 0};
  int status;
  r.edit = tty && tulua__edit_open(rt) == 0;
  if (r.edit &&
      tulua_load_string(rt, PRELUDE, sizeof PRELUDE - 1, "=repl") == 0)
    tulua_spawn(rt, 0);
  while ((status = loadline(&r)) != -1) {
    if (status == LUA_OK)
      status = tulua__docall(rt, 0, LUA_MULTRET, TULUA__CALL_REPL);
    if (status == LUA_OK)
      print_results(&r);
    else
      report(L);
  }
  lua_settop(L, r.base);
  if (r.edit) {
    tulua__edit_close();
    if (run_own(&r, BYE, sizeof BYE - 1, 0) != LUA_OK) report(L);
    lua_settop(L, r.base);
  } else {
    lua_writeline();
  }
}
