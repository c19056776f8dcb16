/* io.c: where tulua's Lua io library differs from lua5.4's, in functions of
 * its own that replace Lua's (a C wrapper around Lua's would lose what
 * their errors say: "bad argument #1 to '?'", no file:line).
 *
 * SIGPIPE. lua5.4 dies of it when a stdio write meets a pipe nobody reads
 * (`tulua script.lua | head`). Once a stream module has given SIGPIPE
 * tulua's handler (so that libuv's writes fail with EPIPE instead), such a
 * write fails too, and print ignores the failure: a loop that prints would
 * never end. So print, io.write and file:write die as lua5.4 would when a
 * write failed with EPIPE, unless the program chose another disposition
 * since. tulua's streams keep returning EPIPE.
 *
 * Close-on-exec. lua5.4 opens files and pipes without it, so every child
 * tulua starts would hold them open: a log file, or the pipe of an
 * io.popen, whose reader then sees its end only when that child ends. As
 * Python's (PEP 446), io.open, io.lines, io.input, io.output, io.popen and
 * io.tmpfile give close-on-exec files. */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>

#include <lauxlib.h>
#include <lualib.h>

#include "runtime.h"

/* liolib's registry keys of the default input and output files */
#define IO_INPUT  "_IO_input"
#define IO_OUTPUT "_IO_output"

/* ---- writes and SIGPIPE ---- */

void tulua__sigpipe_cb(int sig) {
  (void)sig;
}

static void die_of_sigpipe(void) {
  struct sigaction sa;
  if (sigaction(SIGPIPE, NULL, &sa) != 0 || (sa.sa_flags & SA_SIGINFO) ||
      sa.sa_handler != tulua__sigpipe_cb)
    return;
  signal(SIGPIPE, SIG_DFL);
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGPIPE);
  pthread_sigmask(SIG_UNBLOCK, &set, NULL);
  raise(SIGPIPE);
}

/* print(...): each value as tostring gives it, tabs between, a newline. */
static int io_print(lua_State *L) {
  int n = lua_gettop(L);
  clearerr(stdout);
  for (int i = 1; i <= n; i++) {
    size_t len;
    const char *s = luaL_tolstring(L, i, &len);
    if (i > 1) lua_writestring("\t", 1);
    lua_writestring(s, len);
    lua_pop(L, 1);
  }
  lua_writeline();
  if (ferror(stdout) && errno == EPIPE) die_of_sigpipe();
  return 0;
}

/* Writes the values from arg on to f, numbers as Lua formats them; the
 * file is on top of the stack and is returned, or nil, message, errno. */
static int write_values(lua_State *L, FILE *f, int arg) {
  int top = lua_gettop(L) - 1, ok = 1;
  for (; arg <= top; arg++) {
    if (lua_type(L, arg) == LUA_TNUMBER) {
      int len =
          lua_isinteger(L, arg)
              ? fprintf(f, LUA_INTEGER_FMT, (LUAI_UACINT)lua_tointeger(L, arg))
              : fprintf(f, LUA_NUMBER_FMT,
                        (LUAI_UACNUMBER)lua_tonumber(L, arg));
      ok = ok && len > 0;
    } else {
      size_t len;
      const char *s = luaL_checklstring(L, arg, &len);
      ok = ok && fwrite(s, 1, len, f) == len;
    }
  }
  if (ok) return 1;
  int err = errno;
  if (err == EPIPE) die_of_sigpipe();
  errno = err;
  return luaL_fileresult(L, 0, NULL);
}

/* The file at idx, which must be open. */
static FILE *open_file(lua_State *L, int idx, const char *closed) {
  luaL_Stream *p = luaL_checkudata(L, idx, LUA_FILEHANDLE);
  if (p->closef == NULL) luaL_error(L, "%s", closed);
  return p->f;
}

/* io.write(...): to the default output file. */
static int io_write(lua_State *L) {
  lua_getfield(L, LUA_REGISTRYINDEX, IO_OUTPUT);
  FILE *f = open_file(L, -1, "default output file is closed");
  return write_values(L, f, 1);
}

/* file:write(...) */
static int f_write(lua_State *L) {
  FILE *f = open_file(L, 1, "attempt to use a closed file");
  lua_pushvalue(L, 1);
  return write_values(L, f, 2);
}

/* ---- opening, close-on-exec ---- */

static void set_cloexec(lua_State *L, int idx);

static int close_file(lua_State *L) {
  luaL_Stream *p = luaL_checkudata(L, 1, LUA_FILEHANDLE);
  return luaL_fileresult(L, fclose(p->f) == 0, NULL);
}

static int close_pipe(lua_State *L) {
  luaL_Stream *p = luaL_checkudata(L, 1, LUA_FILEHANDLE);
  errno = 0;
  return luaL_execresult(L, pclose(p->f));
}

/* Pushes a file handle, closed until the caller opens it and sets its
 * closef. */
static luaL_Stream *push_stream(lua_State *L) {
  luaL_Stream *p = lua_newuserdatauv(L, sizeof *p, 0);
  p->f = NULL;
  p->closef = NULL;
  luaL_setmetatable(L, LUA_FILEHANDLE);
  return p;
}

/* Whether mode is one of fopen's, as Lua accepts them: r, w or a, then an
 * optional +, then only b's. */
static int fopen_mode(const char *mode) {
  if (*mode == '\0' || strchr("rwa", *mode) == NULL) return 0;
  mode++;
  if (*mode == '+') mode++;
  return strspn(mode, "b") == strlen(mode);
}

/* Opens name in mode (checked), close-on-exec, as the handle on top (its
 * FILE NULL if fopen failed, errno then set). */
static luaL_Stream *open_handle(lua_State *L, const char *name,
                                const char *mode) {
  char m[16];
  snprintf(m, sizeof m, "%se", mode); /* glibc: O_CLOEXEC */
  luaL_Stream *p = push_stream(L);
  p->f = fopen(name, m);
  if (p->f != NULL) p->closef = close_file;
  return p;
}

/* io.open(name [, mode]) -> file | nil, message, errno */
static int io_open(lua_State *L) {
  const char *name = luaL_checkstring(L, 1);
  const char *mode = luaL_optstring(L, 2, "r");
  luaL_argcheck(L, strlen(mode) < 8 && fopen_mode(mode), 2, "invalid mode");
  luaL_Stream *p = open_handle(L, name, mode);
  return p->f == NULL ? luaL_fileresult(L, 0, name) : 1;
}

/* Opens name in mode as the handle on top, or raises as Lua's io.lines
 * and io.input/io.output do. */
static void open_or_raise(lua_State *L, const char *name, const char *mode) {
  if (open_handle(L, name, mode)->f == NULL)
    luaL_error(L, "cannot open file '%s' (%s)", name, strerror(errno));
}

/* io.popen(prog [, mode]) -> file | nil, message, errno */
static int io_popen(lua_State *L) {
  const char *prog = luaL_checkstring(L, 1);
  const char *mode = luaL_optstring(L, 2, "r");
  luaL_argcheck(L, (mode[0] == 'r' || mode[0] == 'w') && mode[1] == '\0', 2,
                "invalid mode");
  luaL_Stream *p = push_stream(L);
  fflush(NULL);
  p->f = popen(prog, mode[0] == 'r' ? "re" : "we");
  if (p->f == NULL) return luaL_fileresult(L, 0, prog);
  p->closef = close_pipe;
  return 1;
}

/* io.tmpfile() -> file | nil, message, errno */
static int io_tmpfile(lua_State *L) {
  luaL_Stream *p = push_stream(L);
  p->f = tmpfile();
  if (p->f == NULL) return luaL_fileresult(L, 0, NULL);
  p->closef = close_file;
  set_cloexec(L, -1);
  return 1;
}

/* io.input([file | name]) and io.output(...): as Lua's (upvalue 1), with
 * a name opened here; upvalue 2 is the registry key, 3 the mode. */
static int io_iofile(lua_State *L) {
  if (lua_type(L, 1) == LUA_TSTRING || lua_type(L, 1) == LUA_TNUMBER) {
    const char *name = lua_tostring(L, 1);
    open_or_raise(L, name, lua_tostring(L, lua_upvalueindex(3)));
    lua_pushvalue(L, -1);
    lua_setfield(L, LUA_REGISTRYINDEX, lua_tostring(L, lua_upvalueindex(2)));
    return 1;
  }
  if (!lua_isnoneornil(L, 1)) open_file(L, 1, "attempt to use a closed file");
  lua_pushvalue(L, lua_upvalueindex(1)); /* no name: nothing to open */
  lua_insert(L, 1);
  lua_call(L, lua_gettop(L) - 1, 1);
  return 1;
}

/* Makes the file at idx close-on-exec. */
static void set_cloexec(lua_State *L, int idx) {
  luaL_Stream *p = luaL_testudata(L, idx, LUA_FILEHANDLE);
  if (p == NULL || p->f == NULL) return;
  int fd = fileno(p->f), flags = fd > 2 ? fcntl(fd, F_GETFD) : -1;
  if (flags >= 0) fcntl(fd, F_SETFD, flags | FD_CLOEXEC);
}

/* io.lines([name, ...]) -> iterator, nil, nil, file: Lua's (upvalue 1),
 * whose iterator reads and closes the file as lua5.4's does; the file it
 * opened is then made close-on-exec. Its arguments are checked here and
 * its error gets the caller's place, as if it had been called directly. */
static int io_lines(lua_State *L) {
  int n = lua_gettop(L);
  if (!lua_isnoneornil(L, 1)) luaL_checkstring(L, 1);
  luaL_argcheck(L, n <= 251, 252, "too many arguments");
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_insert(L, 1);
  if (lua_pcall(L, n, LUA_MULTRET, 0) != LUA_OK) {
    if (lua_type(L, -1) == LUA_TSTRING) {
      luaL_where(L, 1);
      lua_insert(L, -2);
      lua_concat(L, 2);
    }
    return lua_error(L);
  }
  if (lua_gettop(L) >= 4) set_cloexec(L, 4);
  return lua_gettop(L);
}

void tulua__open_io(lua_State *L) {
  lua_pushcfunction(L, io_print);
  lua_setglobal(L, "print");
  if (lua_getglobal(L, "io") == LUA_TTABLE) {
    static const luaL_Reg funcs[] = {{"write", io_write},
                                     {"open", io_open},
                                     {"popen", io_popen},
                                     {"tmpfile", io_tmpfile},
                                     {NULL, NULL}};
    luaL_setfuncs(L, funcs, 0);
    lua_getfield(L, -1, "lines");
    lua_pushcclosure(L, io_lines, 1);
    lua_setfield(L, -2, "lines");
    lua_getfield(L, -1, "input");
    lua_pushliteral(L, IO_INPUT);
    lua_pushliteral(L, "r");
    lua_pushcclosure(L, io_iofile, 3);
    lua_setfield(L, -2, "input");
    lua_getfield(L, -1, "output");
    lua_pushliteral(L, IO_OUTPUT);
    lua_pushliteral(L, "w");
    lua_pushcclosure(L, io_iofile, 3);
    lua_setfield(L, -2, "output");
  }
  lua_pop(L, 1);
  int top = lua_gettop(L);
  if (luaL_getmetatable(L, LUA_FILEHANDLE) == LUA_TTABLE &&
      lua_getfield(L, -1, "__index") == LUA_TTABLE) {
    lua_pushcfunction(L, f_write);
    lua_setfield(L, -2, "write");
  }
  lua_settop(L, top);
}
