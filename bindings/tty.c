/* tty.c: uv_tty_t and the standard descriptors as streams; backs the module
 * 'tulua.tty' (tty.stdin, tty.stdout, tty.stderr, tty.size, tty.is_terminal,
 * tty.set_mode, tty.reset_mode).
 *
 * What a standard descriptor becomes (uv_guess_handle, fstat):
 * - A terminal: a tty stream (stream.c) on a uv_tty_t. uv_tty_init reopens
 *   the terminal, so that the stream has an open file description of its own
 *   to put in non-blocking mode, and dup2()s that description onto the
 *   descriptor. We put the original description back on the descriptor at
 *   once: fd 0, 1 and 2 keep theirs (blocking, shared with the shell), so
 *   io.read, print and child processes see no change, and closing the stream
 *   closes only its private descriptor.
 * - A pipe or FIFO: a pipe stream on a new description of the same pipe,
 *   opened through /proc/self/fd/N (Linux), for the same reason. Without
 *   /proc, stdin falls back to a dup() (below); stdout and stderr to a file
 *   stream.
 * - A socket: stdin becomes a pipe stream on a dup(); its description, shared
 *   with fd 0, is then non-blocking until the runtime closes (the state's
 *   __gc restores the flags). stdout and stderr become file streams, so that
 *   print() keeps writing to a blocking descriptor.
 * - A regular file, a character device (/dev/null) or anything else: a file
 *   stream. Files cannot be polled, so it reads and writes with uv_fs_read
 *   and uv_fs_write on libuv's thread pool and offers the methods of
 *   stream.c with the same results (file_stream.c).
 * Descriptors 0, 1 and 2 are never closed: libuv does not close stdio
 * descriptors, and the streams close only the private ones above.
 *
 * The per-runtime state (a userdata, the upvalue of every module function)
 * caches the three objects in its user values and remembers what to restore
 * when the runtime closes: the terminal's settings if set_mode changed them,
 * and the flags of a dup()ed socket. It is created before any stream, so at
 * lua_close its __gc runs after theirs, and restores through fd 0, which
 * stays open and refers to the same terminal. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <termios.h>
#include <unistd.h>

#include "file_stream.h"
#include "stream.h"

#define STATE_MT "tulua.tty_state"

static const char *const STD_NAME[] = {"stdin", "stdout", "stderr"};

/* What a standard descriptor became. */
enum { K_NONE, K_TTY, K_PIPE, K_FILE };

/* ---- the standard descriptors ---- */

typedef struct {
  struct termios termios; /* the terminal's settings before set_mode */
  int termios_saved; /* termios must be restored */
  int flags[3]; /* file status flags to restore (a dup()ed socket), or -1 */
  unsigned char kind[3]; /* what each descriptor became (K_*) */
} tty_state;

static tty_state *get_state(lua_State *L) {
  return lua_touserdata(L, lua_upvalueindex(1));
}

/* Puts the terminal back as it was before set_mode, through fd 0. */
static int restore_termios(tty_state *st) {
  if (!st->termios_saved) return 0;
  st->termios_saved = 0;
  if (tcsetattr(STDIN_FILENO, TCSANOW, &st->termios) != 0)
    return uv_translate_sys_error(errno);
  return 0;
}

/* __gc of the state, at lua_close after the streams' (see the top). */
static int state_gc(lua_State *L) {
  tty_state *st = luaL_checkudata(L, 1, STATE_MT);
  restore_termios(st);
  for (int fd = 0; fd < 3; fd++) {
    if (st->flags[fd] >= 0) fcntl(fd, F_SETFL, st->flags[fd]);
    st->flags[fd] = -1;
  }
  return 0;
}

/* Pushes the cached object of fd if it is open and returns 1; else pushes
 * nothing and returns 0. [-0, +(0|1), e] */
static int push_cached(lua_State *L, int fd) {
  if (lua_getiuservalue(L, lua_upvalueindex(1), fd + 1) == LUA_TNIL) {
    lua_pop(L, 1);
    return 0;
  }
  lua_getfield(L, -1, "is_closed");
  lua_pushvalue(L, -2);
  lua_call(L, 1, 1);
  int closed = lua_toboolean(L, -1);
  lua_pop(L, 1);
  if (!closed) return 1;
  lua_pop(L, 1);
  return 0;
}

/* Closes the stream on top of the stack (its close method) and pops it. */
static void discard(lua_State *L) {
  lua_getfield(L, -1, "close");
  lua_pushvalue(L, -2);
  lua_call(L, 1, 0);
  lua_pop(L, 1);
}

/* Pushes a tty stream over fd, or returns a negative libuv code with
 * nothing pushed. uv_tty_init dup2()s its reopened terminal onto fd; the
 * original description, kept in a dup, goes back to fd (see the top). */
static int open_tty(lua_State *L, int fd) {
  tulua__stream *s = tulua__stream_new(L, TULUA_TTY);
  int fdflags = fcntl(fd, F_GETFD);
  int saved = fcntl(fd, F_DUPFD_CLOEXEC, 3);
  if (saved < 0) {
    int rc = uv_translate_sys_error(errno);
    lua_pop(L, 1); /* never initialized: __gc frees the box */
    return rc;
  }
  uv_tty_t *h = (uv_tty_t *)tulua__stream_handle(s);
  int rc = uv_tty_init(tulua__loop(L), h, fd, fd == 0);
  if (rc < 0) {
    close(saved);
    lua_pop(L, 1);
    return rc;
  }
  tulua__stream_ready(s);
  tulua__stream_readahead(s, 0); /* others may read the fd too */
  uv_os_fd_t hfd = fd;
  uv_fileno((uv_handle_t *)h, &hfd);
  if (hfd != fd) /* reopened: fd gets its own description back */
    dup3(saved, fd, (fdflags >= 0 && (fdflags & FD_CLOEXEC)) ? O_CLOEXEC : 0);
  close(saved);
  return 0;
}

/* Pushes a pipe stream over own, a descriptor of ours (closed with the
 * stream), or returns a negative libuv code with nothing pushed and own
 * closed. */
static int open_pipe(lua_State *L, int own) {
  tulua__stream_register(L, TULUA_PIPE, NULL);
  tulua__stream *s = tulua__stream_new(L, TULUA_PIPE);
  uv_pipe_t *h = (uv_pipe_t *)tulua__stream_handle(s);
  int rc = uv_pipe_init(tulua__loop(L), h, 0);
  if (rc < 0) {
    close(own);
    lua_pop(L, 1);
    return rc;
  }
  tulua__stream_ready(s);
  tulua__stream_readahead(s, 0); /* others may read the fd too */
  rc = uv_pipe_open(h, own);
  if (rc < 0) {
    close(own);
    discard(L);
    return rc;
  }
  return 0;
}

/* Opens a new description of the pipe or FIFO at fd, non-blocking, with
 * fd's access mode (Linux's /proc/self/fd). Returns it, or -1. */
static int reopen_pipe(int fd, int flags) {
  char path[40];
  snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
  return open(path, (flags & O_ACCMODE) | O_NONBLOCK | O_CLOEXEC);
}

/* Pushes a new object for the standard descriptor fd and records its kind,
 * or returns a negative libuv code with nothing pushed. */
static int open_std(lua_State *L, tty_state *st, int fd) {
  int flags = fcntl(fd, F_GETFL);
  if (flags < 0) return uv_translate_sys_error(errno);
  struct stat sb;
  int fifo = fstat(fd, &sb) == 0 && S_ISFIFO(sb.st_mode);
  int rc;
  switch (uv_guess_handle(fd)) {
    case UV_TTY:
      if (fd == 1) fflush(stdout); /* what io.write buffered goes first */
      if (fd == 2) fflush(stderr);
      rc = open_tty(L, fd);
      if (rc == 0) st->kind[fd] = K_TTY;
      return rc;
    case UV_NAMED_PIPE:
    case UV_TCP: {
      int own = fifo ? reopen_pipe(fd, flags) : -1;
      if (own < 0 && fd == 0) { /* a socket, or no /proc: share fd 0's */
        own = fcntl(fd, F_DUPFD_CLOEXEC, 3);
        if (own < 0) return uv_translate_sys_error(errno);
        if (!(flags & O_NONBLOCK) && st->flags[0] < 0) st->flags[0] = flags;
      }
      if (own >= 0) {
        if (fd == 1) fflush(stdout);
        if (fd == 2) fflush(stderr);
        rc = open_pipe(L, own);
        if (rc == 0) st->kind[fd] = K_PIPE;
        return rc;
      }
      break; /* stdout, stderr: write on the pool, fd stays blocking */
    }
    default:
      break;
  }
  tulua__file_stream_push(L, fd, STD_NAME[fd],
                          fd == 1   ? stdout
                          : fd == 2 ? stderr
                                    : NULL);
  st->kind[fd] = K_FILE;
  return 0;
}

/* Pushes the object of fd: the cached one while it is open, else a new
 * one; or nil, message, code. */
static int push_std(lua_State *L, int fd) {
  tty_state *st = get_state(L);
  if (push_cached(L, fd)) return 1;
  st->kind[fd] = K_NONE;
  if (fd == 0) restore_termios(st); /* a closed stdin left it raw */
  int rc = open_std(L, st, fd);
  if (rc < 0) return push_fail(L, STD_NAME[fd], rc);
  lua_pushvalue(L, -1);
  lua_setiuservalue(L, lua_upvalueindex(1), fd + 1);
  return 1;
}

/* tty.stdin() -> stream | nil, message, code: the stream that reads fd 0
 * (a tty, pipe or file stream), the same one at every call until it is
 * closed. */
static int tty_stdin(lua_State *L) {
  return push_std(L, 0);
}

/* tty.stdout() -> stream | nil, message, code: as stdin, for fd 1. */
static int tty_stdout(lua_State *L) {
  return push_std(L, 1);
}

/* tty.stderr() -> stream | nil, message, code: as stdin, for fd 2. */
static int tty_stderr(lua_State *L) {
  return push_std(L, 2);
}

static int check_fd(lua_State *L, int idx, lua_Integer def) {
  lua_Integer fd =
      def < 0 ? luaL_checkinteger(L, idx) : luaL_optinteger(L, idx, def);
  luaL_argcheck(L, fd >= 0 && fd <= INT_MAX, idx, "descriptor out of range");
  return (int)fd;
}

/* Pushes cols, rows of the terminal at fd, or nil, message, code. The
 * subject of a message is "stdin", "stdout", "stderr" or "fd N". */
static int push_winsize(lua_State *L, int fd) {
  struct winsize ws;
  int rc = 0;
  if (!isatty(fd))
    rc = uv_translate_sys_error(errno); /* ENOTTY, or EBADF */
  else if (ioctl(fd, TIOCGWINSZ, &ws) != 0)
    rc = uv_translate_sys_error(errno);
  if (rc < 0) {
    if (fd <= 2) return push_fail(L, STD_NAME[fd], rc);
    lua_pushfstring(L, "fd %d", fd);
    return push_fail(L, lua_tostring(L, -1), rc);
  }
  lua_pushinteger(L, ws.ws_col);
  lua_pushinteger(L, ws.ws_row);
  return 2;
}

/* tty.size([fd]) -> columns, rows | nil, message, code: the size of the
 * terminal at fd (default 1, stdout). This is what uv_tty_get_winsize does
 * (ioctl TIOCGWINSZ), without making a uv_tty_t: uv_tty_init would reopen
 * the terminal and change fd, too much for a question. */
static int tty_size(lua_State *L) {
  return push_winsize(L, check_fd(L, 1, 1));
}

/* tty.is_terminal(fd) -> boolean: whether fd is a terminal. */
static int tty_is_terminal(lua_State *L) {
  int fd = check_fd(L, 1, -1);
  lua_pushboolean(L, uv_guess_handle(fd) == UV_TTY);
  return 1;
}

/* Pushes the open stdin stream and returns its uv_tty_t, or returns NULL
 * with nil, message, code pushed (stdin is not a terminal, or fails). */
static uv_tty_t *push_stdin_tty(lua_State *L) {
  if (push_std(L, 0) != 1) return NULL;
  if (get_state(L)->kind[0] != K_TTY) {
    lua_pop(L, 1);
    push_fail(L, "stdin", UV_ENOTTY);
    return NULL;
  }
  return (uv_tty_t *)tulua__stream_handle(tulua__stream_check(L, -1));
}

/* tty.set_mode(mode) -> true | nil, message, code: sets the terminal of
 * stdin to "normal" (line editing and echo by the terminal), "raw" (every
 * key at once, no echo, no signals from Ctrl-C) or "io" (raw, and no
 * output processing either: "\n" stays "\n"). The settings from before the
 * first change are restored by reset_mode, set_mode("normal"), and when the
 * runtime closes. */
static int tty_set_mode(lua_State *L) {
  static const char *const names[] = {"normal", "raw", "io", NULL};
  static const uv_tty_mode_t modes[] = {UV_TTY_MODE_NORMAL, UV_TTY_MODE_RAW,
                                        UV_TTY_MODE_IO};
  int m = luaL_checkoption(L, 1, NULL, names);
  tty_state *st = get_state(L);
  uv_tty_t *h = push_stdin_tty(L);
  if (h == NULL) return 3;
  if (modes[m] != UV_TTY_MODE_NORMAL && !st->termios_saved) {
    uv_os_fd_t fd;
    if (uv_fileno((uv_handle_t *)h, &fd) == 0 &&
        tcgetattr(fd, &st->termios) == 0)
      st->termios_saved = 1;
  }
  int rc = uv_tty_set_mode(h, modes[m]);
  if (rc < 0) return push_fail(L, "stdin", rc);
  if (modes[m] == UV_TTY_MODE_NORMAL) st->termios_saved = 0;
  lua_pushboolean(L, 1);
  return 1;
}

/* tty.reset_mode() -> true | nil, message, code: puts the terminal back as
 * it was before set_mode; a no-op if set_mode did not change it. Unlike
 * uv_tty_reset_mode, which writes through the descriptor of the first
 * handle that changed the mode (closed with that handle), this goes
 * through the open stdin stream, or fd 0. */
static int tty_reset_mode(lua_State *L) {
  tty_state *st = get_state(L);
  int rc = 0;
  if (st->kind[0] == K_TTY && push_cached(L, 0)) {
    uv_tty_t *h = (uv_tty_t *)tulua__stream_handle(tulua__stream_check(L, -1));
    rc = uv_tty_set_mode(h, UV_TTY_MODE_NORMAL);
    if (rc == 0) st->termios_saved = 0;
  }
  if (rc == 0) rc = restore_termios(st);
  if (rc < 0) return push_fail(L, "stdin", rc);
  lua_pushboolean(L, 1);
  return 1;
}

/* tty stream:size() -> columns, rows | nil, message, code: the size of the
 * stream's terminal (uv_tty_get_winsize). */
static int ttystream_size(lua_State *L) {
  tulua__stream *s = tulua__stream_check(L, 1);
  int cols, rows;
  int rc =
      uv_tty_get_winsize((uv_tty_t *)tulua__stream_handle(s), &cols, &rows);
  if (rc < 0) return push_fail(L, "tty", rc);
  lua_pushinteger(L, cols);
  lua_pushinteger(L, rows);
  return 2;
}

int luaopen_tulua_tty(lua_State *L) {
  static const luaL_Reg tty_methods[] = {{"size", ttystream_size},
                                         {NULL, NULL}};
  static const luaL_Reg funcs[] = {{"stdin", tty_stdin},
                                   {"stdout", tty_stdout},
                                   {"stderr", tty_stderr},
                                   {"size", tty_size},
                                   {"is_terminal", tty_is_terminal},
                                   {"set_mode", tty_set_mode},
                                   {"reset_mode", tty_reset_mode},
                                   {NULL, NULL}};
  tulua__file_stream_register(L);
  tulua__stream_register(L, TULUA_TTY, tty_methods);
  static const luaL_Reg state_meta[] = {{"__gc", state_gc}, {NULL, NULL}};
  tulua__new_class(L, STATE_MT, state_meta, NULL);
  luaL_newlibtable(L, funcs);
  /* the state: created before any stream, so collected after them */
  tty_state *st = lua_newuserdatauv(L, sizeof *st, 3);
  memset(st, 0, sizeof *st);
  st->flags[0] = st->flags[1] = st->flags[2] = -1;
  luaL_setmetatable(L, STATE_MT);
  luaL_setfuncs(L, funcs, 1);
  return 1;
}
