/* spawn_options.c: the options of process.spawn and process.run read from
 * Lua into a tulua__spawn_spec, and that spec turned into libuv's
 * uv_process_options_t; for process.c (the module 'tulua.process'). Every
 * misuse raises here, before anything is started, in Lua's grammar. */
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "spawn_options.h"
#include "stream.h"

#define SHELL "/bin/sh"

const char *const tulua__stdio_names[3] = {"stdin", "stdout", "stderr"};

/* Moves the value on top into the keep table at index keep. [-1, +0, m] */
static void keep_top(lua_State *L, int keep) {
  lua_rawseti(L, keep, (lua_Integer)lua_rawlen(L, keep) + 1);
}

/* Allocates n pointers in Lua memory, anchored in keep. [-0, +0, m] */
static char **keep_array(lua_State *L, int keep, size_t n) {
  char **a = lua_newuserdatauv(L, n * sizeof *a, 0);
  keep_top(L, keep);
  return a;
}

/* Returns the string or number on top as an anchored C string, popping
 * it; NULL if it is neither or holds a zero byte. [-1, +0, m] */
static const char *keep_string(lua_State *L, int keep) {
  int t = lua_type(L, -1);
  size_t len;
  const char *s = NULL;
  if (t == LUA_TSTRING || t == LUA_TNUMBER) {
    s = lua_tolstring(L, -1, &len); /* a number becomes a string here */
    if (strlen(s) != len) s = NULL;
  }
  keep_top(L, keep);
  return s;
}

static void check_argv(lua_State *L, int shell, int keep,
                       tulua__spawn_spec *s) {
  if (shell) { /* a command line for sh -c */
    const char *cmd = luaL_checkstring(L, 1);
    luaL_argcheck(L, strlen(cmd) == lua_rawlen(L, 1), 1,
                  "command contains a zero byte");
    s->args = keep_array(L, keep, 4);
    s->args[0] = SHELL;
    s->args[1] = "-c";
    s->args[2] = (char *)cmd; /* argument 1 stays on the stack */
    s->args[3] = NULL;
    return;
  }
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_Integer n = luaL_len(L, 1);
  luaL_argcheck(L, n >= 1, 1, "empty argv");
  luaL_argcheck(L, n < INT_MAX / 16, 1, "argv too long");
  s->args = keep_array(L, keep, (size_t)n + 1);
  for (lua_Integer i = 1; i <= n; i++) {
    lua_geti(L, 1, i);
    int t = lua_type(L, -1);
    const char *a = keep_string(L, keep);
    if (a == NULL && (t == LUA_TSTRING || t == LUA_TNUMBER))
      luaL_argerror(
          L, 1,
          lua_pushfstring(L, "argv[%I] contains a zero byte", (LUAI_UACINT)i));
    if (a == NULL)
      luaL_argerror(L, 1,
                    lua_pushfstring(L, "argv[%I] is a %s, not a string",
                                    (LUAI_UACINT)i, lua_typename(L, t)));
    s->args[i - 1] = (char *)a;
  }
  s->args[n] = NULL;
}

/* options.env: a table name -> value replacing the environment. */
static void check_env(lua_State *L, int opts, int keep, tulua__spawn_spec *s) {
  if (lua_getfield(L, opts, "env") == LUA_TNIL) {
    lua_pop(L, 1);
    s->env = NULL;
    return;
  }
  if (!lua_istable(L, -1))
    luaL_argerror(L, opts,
                  lua_pushfstring(L, "'env' must be a table, not a %s",
                                  luaL_typename(L, -1)));
  int env = lua_gettop(L);
  size_t n = 0;
  lua_pushnil(L);
  while (lua_next(L, env) != 0) {
    lua_pop(L, 1);
    n++;
  }
  s->env = keep_array(L, keep, n + 1);
  size_t i = 0;
  lua_pushnil(L);
  while (lua_next(L, env) != 0) { /* stack: env key value */
    size_t klen;
    const char *k =
        lua_type(L, -2) == LUA_TSTRING ? lua_tolstring(L, -2, &klen) : NULL;
    if (k == NULL || klen == 0 || strlen(k) != klen || strchr(k, '=') != NULL)
      luaL_argerror(L, opts, "invalid name in 'env'");
    int t = lua_type(L, -1);
    lua_pushvalue(L, -1); /* a number is converted in the copy */
    const char *v = keep_string(L, keep);
    if (v == NULL && (t == LUA_TSTRING || t == LUA_TNUMBER))
      luaL_argerror(
          L, opts,
          lua_pushfstring(L, "env value of '%s' contains a zero byte", k));
    if (v == NULL)
      luaL_argerror(L, opts,
                    lua_pushfstring(L,
                                    "env value of '%s' is a %s, not a string",
                                    k, lua_typename(L, t)));
    lua_pushfstring(L, "%s=%s", k, v);
    s->env[i++] = (char *)lua_tostring(L, -1);
    keep_top(L, keep);
    lua_pop(L, 1); /* the value; the key stays for lua_next */
  }
  s->env[i] = NULL;
  lua_pop(L, 1); /* env */
}

/* Returns the stream at idx if it is a tulua stream (open: else raises),
 * or NULL for any other value. */
static uv_stream_t *test_stream(lua_State *L, int idx) {
  static const char *const mts[] = {"tulua.pipe", "tulua.tcp", "tulua.tty"};
  for (size_t i = 0; i < sizeof mts / sizeof mts[0]; i++)
    if (luaL_testudata(L, idx, mts[i]) != NULL)
      return tulua__stream_handle(tulua__stream_check(L, idx));
  return NULL;
}

/* options.stdin/stdout/stderr (which: 0, 1, 2) into s->io[which]. */
static void check_io(lua_State *L, int opts, int which, int def, int is_run,
                     tulua__spawn_spec *s) {
  static const char *const names[] = {"inherit", "pipe", "null", "stdout",
                                      NULL};
  static const int kinds[] = {TULUA__IO_INHERIT, TULUA__IO_PIPE, TULUA__IO_NULL,
                              TULUA__IO_STDOUT};
  tulua__io_spec *io = &s->io[which];
  const char *key = tulua__stdio_names[which];
  io->kind = def;
  int t = lua_getfield(L, opts, key);
  if (t == LUA_TSTRING) {
    const char *v = lua_tostring(L, -1);
    int i = 0;
    while (names[i] != NULL && strcmp(names[i], v) != 0)
      i++;
    if (names[i] == NULL || (kinds[i] == TULUA__IO_STDOUT && which != 2) ||
        (kinds[i] == TULUA__IO_PIPE && which == 0 && is_run))
      luaL_argerror(L, opts, lua_pushfstring(L, "invalid %s '%s'", key, v));
    io->kind = kinds[i];
  } else if (t == LUA_TNUMBER) {
    int isint;
    lua_Integer fd = lua_tointegerx(L, -1, &isint);
    if (!isint || fd < 0 || fd > INT_MAX)
      luaL_argerror(L, opts, lua_pushfstring(L, "invalid %s descriptor", key));
    io->kind = TULUA__IO_FD;
    io->fd = (int)fd;
  } else if (t == LUA_TUSERDATA) {
    luaL_Stream *f = luaL_testudata(L, -1, LUA_FILEHANDLE);
    if (f != NULL) { /* a file of Lua's io library */
      if (f->closef == NULL)
        luaL_argerror(L, opts, lua_pushfstring(L, "%s is a closed file", key));
      fflush(f->f); /* what it buffered goes before what the child writes */
      io->kind = TULUA__IO_FD;
      io->fd = fileno(f->f);
    } else if ((io->stream = test_stream(L, -1)) != NULL) {
      io->kind = TULUA__IO_STREAM;
    } else {
      luaL_argerror(
          L, opts,
          lua_pushfstring(L, "invalid %s (a %s)", key, luaL_typename(L, -1)));
    }
  } else if (t != LUA_TNIL) {
    luaL_argerror(
        L, opts,
        lua_pushfstring(L, "invalid %s (a %s)", key, luaL_typename(L, -1)));
  }
  lua_pop(L, 1);
}

/* Reads argv (argument 1) and the options table (argument 2, optional)
 * into s; raises on misuse, naming any unknown option. The stack must be
 * [argv, options, keep]. */
void tulua__spawn_check(lua_State *L, int is_run, tulua__spawn_spec *s) {
  static const char *const spawn_opts[] = {
      "env",      "cwd",   "stdin",         "stdout", "stderr",
      "detached", "shell", "process_group", "pty",    NULL};
  static const char *const run_opts[] = {
      "env",     "cwd",   "stdin", "stdout",        "stderr", "input",
      "timeout", "check", "shell", "process_group", NULL};
  const int opts = 2, keep = 3;
  memset(s, 0, sizeof *s);
  s->timeout = -1;
  if (lua_isnil(L, opts)) {
    lua_newtable(L);
    lua_replace(L, opts);
  }
  luaL_checktype(L, opts, LUA_TTABLE);
  tulua__check_options(L, opts, is_run ? run_opts : spawn_opts);
  lua_getfield(L, opts, "shell");
  int shell = lua_toboolean(L, -1);
  lua_pop(L, 1);
  check_argv(L, shell, keep, s);
  check_env(L, opts, keep, s);
  if (lua_getfield(L, opts, "cwd") != LUA_TNIL) {
    size_t n;
    if (lua_type(L, -1) != LUA_TSTRING)
      luaL_argerror(L, opts, "'cwd' must be a string");
    s->cwd = lua_tolstring(L, -1, &n); /* anchored by the options table */
    if (strlen(s->cwd) != n)
      luaL_argerror(L, opts, "'cwd' contains a zero byte");
  }
  lua_pop(L, 1);
  lua_getfield(L, opts, "detached");
  s->detached = lua_toboolean(L, -1);
  lua_getfield(L, opts, "check");
  s->check = lua_toboolean(L, -1);
  lua_getfield(L, opts, "process_group");
  s->process_group = lua_toboolean(L, -1);
  lua_pop(L, 3);
  if (lua_getfield(L, opts, "input") != LUA_TNIL) {
    if (lua_type(L, -1) != LUA_TSTRING)
      luaL_argerror(L, opts, "'input' must be a string");
    s->input = lua_tolstring(L, -1, &s->input_len);
  }
  lua_pop(L, 1);
  if (lua_getfield(L, opts, "timeout") != LUA_TNIL) {
    int isnum;
    lua_Number t = lua_tonumberx(L, -1, &isnum);
    if (!isnum || !(t >= 0))
      luaL_argerror(L, opts, "'timeout' must be a non-negative number");
    s->timeout = t;
  }
  lua_pop(L, 1);
  int out_def = is_run ? TULUA__IO_PIPE : TULUA__IO_INHERIT;
  check_io(L, opts, 0, TULUA__IO_INHERIT, is_run, s);
  check_io(L, opts, 1, out_def, is_run, s);
  check_io(L, opts, 2, out_def, is_run, s);
  if (s->input != NULL) {
    lua_getfield(L, opts, "stdin");
    int both = !lua_isnil(L, -1);
    lua_pop(L, 1);
    luaL_argcheck(L, !both, opts, "'input' and 'stdin' are exclusive");
    s->io[0].kind = TULUA__IO_PIPE;
  }
  lua_getfield(L, opts, "pty");
  s->pty = lua_toboolean(L, -1);
  lua_pop(L, 1);
  for (int i = 0; s->pty && i < 3; i++) {
    lua_getfield(L, opts, tulua__stdio_names[i]);
    int both = !lua_isnil(L, -1);
    lua_pop(L, 1);
    if (both)
      luaL_argerror(L, opts,
                    lua_pushfstring(L, "'pty' and '%s' are exclusive",
                                    tulua__stdio_names[i]));
  }
}

/* Fills the stdio container of a non-pipe io (TULUA__IO_STDOUT is resolved by
 * the caller). */
void tulua__spawn_stdio(const tulua__io_spec *io, int which,
                        uv_stdio_container_t *c) {
  switch (io->kind) {
    case TULUA__IO_NULL:
      c->flags = UV_IGNORE; /* libuv opens /dev/null for 0, 1 and 2 */
      break;
    case TULUA__IO_FD:
      c->flags = UV_INHERIT_FD;
      c->data.fd = io->fd;
      break;
    case TULUA__IO_STREAM:
      c->flags = UV_INHERIT_STREAM;
      c->data.stream = io->stream;
      break;
    default:
      c->flags = UV_INHERIT_FD;
      c->data.fd = which;
      break;
  }
}

int tulua__spawn_pipe_flags(int which) { /* as the child sees the pipe */
  return UV_CREATE_PIPE | (which == 0 ? UV_READABLE_PIPE : UV_WRITABLE_PIPE);
}

/* For stderr = "stdout" with a pipe: libuv cannot give one created pipe
 * to two descriptors, so the pipe is made here; h (initialized) takes the
 * read end, and the child inherits the write end, fds[1], as both stdout
 * and stderr (the caller closes it after uv_spawn). Returns 0 or a
 * negative libuv code, with nothing left open. */
int tulua__spawn_open_merged(uv_pipe_t *h, uv_file fds[2]) {
  int rc = uv_pipe(fds, 0, 0);
  if (rc < 0) return rc;
  rc = uv_pipe_open(h, fds[0]);
  if (rc < 0) {
    close(fds[0]);
    close(fds[1]);
    fds[0] = fds[1] = -1;
  }
  return rc;
}

void tulua__spawn_options(uv_process_options_t *o, const tulua__spawn_spec *s,
                          uv_stdio_container_t *stdio) {
  memset(o, 0, sizeof *o);
  o->file = s->args[0];
  o->args = s->args;
  o->env = s->env;
  o->cwd = s->cwd;
  o->stdio = stdio;
  o->stdio_count = 3;
  /* A process group of its own, through a session of its own: libuv 1.44
   * can make the child call setsid but not setpgid, and the parent cannot
   * set the group for it, since uv_spawn returns once the child has run
   * exec (setpgid then fails with EACCES), by which time it may have
   * started children of its own in the parent's group. So the child
   * leads a new session, and thus a new group whose id is its pid, with
   * no controlling terminal (bindings/process.md says what that
   * changes). A child on a pty gets a session too, so that /dev/tty is
   * not the parent's terminal, which it would otherwise share. */
  if (s->detached || s->process_group || s->pty)
    o->flags |= UV_PROCESS_DETACHED;
}
