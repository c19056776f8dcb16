/* ps.c: the runtime's side of `tulua --ps PID`: on SIGURG, the runtime
 * writes its task list (made by lua/tulua/_ps.lua) into
 * /tmp/tulua-<uid>/<pid>.ps, a file in a directory only its user may
 * enter. No socket, nothing on a network port.
 *
 * One runtime per process answers: the first one opened decides, with its
 * tulua_config.ps (a pool's worker runtimes, opened later, never do). The
 * signal's handler asks the loop to write the report (a posted job, in the
 * next drain); if a task is running Lua code at that moment, a hook makes
 * it write the report at once, from inside that code, so that a runtime
 * busy in a long loop still answers and says which task keeps it busy.
 * SIGURG because its default action is to do nothing: a --ps sent to a
 * process that is not tulua harms it not. */
#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>

#include <lauxlib.h>

#include "runtime.h"

#define DECLINED ((uintptr_t)1)

/* 0: no runtime decided yet; DECLINED: the first one had cfg.ps = 0; else
 * the runtime that answers. */
static _Atomic uintptr_t owner;

/* Pushes the module tulua._ps, loading it from package.preload the first
 * time (not through the global require, which a script may replace). */
static int open_ps_module(lua_State *L) {
  luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
  lua_getfield(L, -1, "tulua._ps");
  lua_pushliteral(L, "tulua._ps");
  lua_call(L, 1, 1);
  return 1;
}

static void push_ps_module(lua_State *L) {
  luaL_requiref(L, "tulua._ps", open_ps_module, 0);
}

/* Makes the directory of the reports, or checks the one there: a
 * directory (not a link) of this user that nobody else may enter. Writes
 * its path into dir. Returns 0 or -1 with errno set. */
int tulua__ps_dir(char *dir, size_t size) {
  struct stat st;
  snprintf(dir, size, "/tmp/tulua-%u", (unsigned)getuid());
  if (mkdir(dir, 0700) != 0 && errno != EEXIST) return -1;
  if (lstat(dir, &st) != 0) return -1;
  if (!S_ISDIR(st.st_mode) || st.st_uid != getuid() ||
      (st.st_mode & 077) != 0) {
    errno = EPERM;
    return -1;
  }
  return 0;
}

/* Writes text to the report file, through a temporary one renamed into
 * place, so that the reader never sees half a report. */
static void write_file(const char *text, size_t len) {
  char dir[64], tmp[96], path[96];
  if (tulua__ps_dir(dir, sizeof dir) != 0) return;
  snprintf(path, sizeof path, "%s/%d.ps", dir, (int)getpid());
  snprintf(tmp, sizeof tmp, "%s/%d.ps.tmp", dir, (int)getpid());
  unlink(tmp);
  int fd =
      open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
  if (fd < 0) return;
  size_t done = 0;
  while (done < len) {
    ssize_t n = write(fd, text + done, len - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    done += (size_t)n;
  }
  if (close(fd) == 0 && done == len)
    rename(tmp, path);
  else
    unlink(tmp);
}

/* Calls tulua._ps[name](flag) with nres results. [-0, +nres, e] */
static void call_ps(lua_State *L, const char *name, int flag, int nres) {
  push_ps_module(L);
  lua_getfield(L, -1, name);
  lua_remove(L, -2);
  lua_pushboolean(L, flag);
  lua_call(L, 1, nres);
}

/* report(busy): tulua._ps.report's text. [-0, +1, e] */
static int make_report(lua_State *L) {
  call_ps(L, "report", lua_toboolean(L, 1), 1);
  return 1;
}

/* Writes the report from L (the main state in the drain, or the running
 * thread in the hook); an error in making it writes that error instead,
 * so that the reader is told rather than left to time out. */
static void write_report(lua_State *L, int busy) {
  int top = lua_gettop(L);
  if (!lua_checkstack(L, 4)) return;
  lua_pushcfunction(L, make_report);
  lua_pushboolean(L, busy);
  int status = lua_pcall(L, 1, 1, 0);
  size_t len;
  const char *text = lua_tolstring(L, -1, &len);
  if (status != LUA_OK || text == NULL) {
    text = lua_pushfstring(L, "error: the report failed: %s\n",
                           text ? text : "(not a string)");
    len = strlen(text);
  }
  write_file(text, len);
  lua_settop(L, top);
}

static void ps_job(lua_State *L, tulua__job *job) {
  tulua_runtime *rt = tulua__container_of(job, tulua_runtime, ps_job);
  if (!rt->ps_pending) return; /* the hook wrote it */
  rt->ps_pending = 0;
  write_report(L, 0);
}

static void ps_hook(lua_State *L, lua_Debug *ar) {
  tulua_runtime *rt = tulua__runtime(L);
  (void)ar;
  lua_sethook(L, NULL, 0, 0);
  if (!rt->ps_pending) return; /* stale: the job wrote it */
  rt->ps_pending = 0;
  write_report(L, 1);
}

static void on_sigurg(int sig) {
  uintptr_t o = atomic_load(&owner);
  int saved = errno;
  (void)sig;
  if (o == 0 || o == DECLINED) return;
  tulua_runtime *rt = (tulua_runtime *)o;
  rt->ps_pending = 1;
  lua_State *co = (lua_State *)rt->running;
  /* not over Ctrl-C's hook: the interrupt goes first, then the job */
  if (co != NULL && !rt->interrupt_pending)
    lua_sethook(co, ps_hook, LUA_MASKCALL | LUA_MASKRET | LUA_MASKCOUNT, 1);
  uv_async_send(&rt->async); /* async_cb posts the job */
  errno = saved;
}

void tulua__ps_open(tulua_runtime *rt) {
  uintptr_t none = 0;
  uintptr_t me = rt->cfg.ps ? (uintptr_t)rt : DECLINED;
  rt->ps_job.run = ps_job;
  if (!atomic_compare_exchange_strong(&owner, &none, me) || !rt->cfg.ps) return;
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_sigurg;
  sa.sa_flags = SA_RESTART; /* a blocking read in Lua goes on */
  sigemptyset(&sa.sa_mask);
  sigaction(SIGURG, &sa, NULL);
}

void tulua__ps_close(tulua_runtime *rt) {
  uintptr_t me = (uintptr_t)rt;
  if (atomic_compare_exchange_strong(&owner, &me, 0)) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = SIG_DFL;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGURG, &sa, NULL);
  }
  tulua__unpost(rt, &rt->ps_job);
}

/* tulua._ps_dir() -> the reports' directory | nil, message: for the
 * asking side (tulua._ps.client). */
int tulua__ps_lua_dir(lua_State *L) {
  char dir[64];
  if (tulua__ps_dir(dir, sizeof dir) != 0) {
    lua_pushnil(L);
    lua_pushfstring(
        L, "%s: %s%s", dir, strerror(errno),
        errno == EPERM ? " (not a directory of yours with mode 0700)" : "");
    return 2;
  }
  lua_pushstring(L, dir);
  return 1;
}

/* tulua.ps([tree]) -> prints the runtime's task list (tree: the tree of
 * tasks with tracebacks, as tulua --pstree), as tulua --ps shows it. */
int tulua__ps(lua_State *L) {
  call_ps(L, "print", lua_toboolean(L, 1), 0);
  return 0;
}
