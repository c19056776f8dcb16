/* fs.c: uv_fs_t requests on libuv's thread pool; backs the module
 * 'tulua.fs'.
 *
 * Every function here waits (bindings/README.md, step by step): it checks its
 * arguments, mallocs one fs_op embedding the libuv request and the waiter,
 * starts the request and suspends the task. The request's callback calls no
 * Lua API; the deliver step, in the task, turns the result into Lua values.
 *
 * Ownership:
 * - An fs_op owns itself until its callback ran; then, if a task still
 *   waits, that task frees it in deliver, else the callback frees it. The
 *   bytes of a write are copied into the op (nothing in the registry), so a
 *   cancelled op needs no Lua to be freed.
 * - Compound operations (read_file, write_file, mkdir with parents, seek)
 *   run as one uv_work_t of plain C system calls: one wait, one cancel
 *   point, no half-done chain of requests to unwind in callbacks.
 * - A File userdata points at a malloc'd file_box. The box outlives every
 *   request that uses its descriptor (they are listed in box->ops) and is
 *   freed when both the descriptor is closed and the userdata collected,
 *   whichever comes last. The descriptor is closed (asynchronously, with the
 *   request embedded in the box) only once the file is closed and no request
 *   uses it any more, so a queued read never reads a reused descriptor. */
#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "queue.h"
#include "byte_buffer.h"
#include "common.h"

#define FILE_MT  "tulua.file"
#define DIR_MT   "tulua.dir"
#define LINES_MT "tulua.lines"

#define MAX_RW      0x7ffff000 /* Linux's limit for one read(2) */
#define LINES_CHUNK 65536

/* How a failure names its subject: arg 1, "arg 1 -> arg 2", or the path of
 * the File at arg 1. */
enum { SUBJ_PATH, SUBJ_PATHS, SUBJ_FILE };

typedef struct fs_op fs_op;

typedef struct {
  uv_loop_t *loop;
  uv_file fd;
  char *path; /* as given to open, for messages */
  tulua__queue ops; /* fs_op.link: requests using fd, callback not run */
  uv_fs_t close_req; /* closes fd once closed is set and ops is empty */
  tulua__waiter close_w; /* the task waiting in close(), if any */
  int close_rc;
  unsigned char closed; /* no new requests: close(), __close or __gc ran */
  unsigned char fd_closed; /* close_req has called back */
  unsigned char collected; /* the userdata is gone */
  unsigned char lines_busy; /* a lines iterator's read awaits its deliver */
} file_box;

struct fs_op {
  union {
    uv_req_t req; /* data is first in every request type */
    uv_fs_t fs;
    uv_work_t work;
  } u;

  tulua__waiter w; /* links the op to its task; cleared on cancel */
  file_box *file; /* whose fd the request uses, until its callback */
  tulua__queue link; /* in file->ops */
  unsigned char subject;
  unsigned char is_work;
  unsigned char aborted; /* the file was closed while the request ran */
  unsigned char flag; /* work: atomic (write_file) */
  int err; /* work: 0 or a negative libuv code */
  int fd; /* work: the descriptor (seek) */
  int64_t num; /* work: mode, or seek's offset in and position out */
  int whence; /* work: seek's whence */
  char *buf; /* work: the bytes read_file read (malloc'd) */
  size_t buflen;
  size_t pathlen; /* work: the path in data is pathlen bytes and a NUL */
  size_t len; /* bytes after the path in data */
  char data[]; /* read buffer, or copies of a path and of bytes to write */
};

typedef struct {
  fs_op *op; /* the finished scandir request, or NULL once consumed */
} dir_state;

typedef struct {
  tulua__bytes b; /* bytes read and not yet returned */
  int eof;
} lines_state;

/* ---- requests ---- */

static fs_op *op_new(int subject, size_t extra) {
  fs_op *op = malloc(sizeof *op + extra);
  if (op == NULL) return NULL;
  memset(op, 0, sizeof *op);
  op->u.req.data = op;
  op->subject = (unsigned char)subject;
  return op;
}

static void op_free(fs_op *op) {
  if (!op->is_work) uv_fs_req_cleanup(&op->u.fs);
  free(op->buf);
  free(op);
}

/* Pushes nil, message, code for a failure of an op with this subject; the
 * subject's strings are the waiting function's arguments. [-0, +3, m] */
static int push_op_fail(lua_State *L, int subject, int rc) {
  switch (subject) {
    case SUBJ_PATHS:
      lua_pushfstring(L, "%s -> %s", lua_tostring(L, 1), lua_tostring(L, 2));
      return push_fail(L, lua_tostring(L, -1), rc);
    case SUBJ_FILE:
      return push_fail(L, (*(file_box **)lua_touserdata(L, 1))->path, rc);
    default:
      return push_fail(L, lua_tostring(L, 1), rc);
  }
}

/* The result every request in flight gets when its file is closed. */
static int push_closed(lua_State *L) {
  lua_pushnil(L);
  lua_pushliteral(L, "file closed");
  lua_pushliteral(L, "ECANCELED");
  return 3;
}

/* The first step of a deliver: `if (!op_ok(op)) return op_fail(L, op);`
 * op_fail frees op and pushes nil, message, code. */
static int op_ok(const fs_op *op) {
  return !op->aborted &&
         (op->is_work ? op->err : (int64_t)op->u.fs.result) >= 0;
}

static int op_fail(lua_State *L, fs_op *op) {
  int64_t rc = op->is_work ? op->err : (int64_t)op->u.fs.result;
  int subject = op->subject, aborted = op->aborted;
  op_free(op);
  if (aborted) return push_closed(L);
  return push_op_fail(L, subject, (int)rc);
}

/* Pushes n bytes at s, which op owns, and frees op. The bytes must exist
 * while Lua copies them, so the push runs under lua_pcall: if it fails, op
 * is still freed before the error is raised again. [-0, +1, m] */
static int push_owned(lua_State *L, fs_op *op, const char *s, size_t n) {
  tulua__lstr a = {s, n};
  lua_pushcfunction(L, tulua__push_lstr);
  lua_pushlightuserdata(L, &a);
  int st = lua_pcall(L, 1, 1, 0);
  op_free(op);
  if (st != LUA_OK) return lua_error(L);
  return 1;
}

/* ---- files: the box and its requests ---- */

static void file_link(file_box *b, fs_op *op) {
  op->file = b;
  tulua__queue_insert_tail(&b->ops, &op->link);
}

static void file_unlink(fs_op *op) {
  tulua__queue_remove(&op->link);
  op->file = NULL;
}

static void box_free(file_box *b) {
  free(b->path);
  free(b);
}

static void close_cb(uv_fs_t *req) { /* no Lua API here */
  file_box *b = req->data;
  b->close_rc = (int)req->result;
  uv_fs_req_cleanup(req);
  b->fd = -1;
  b->fd_closed = 1;
  tulua__wake(&b->close_w); /* 0 if nobody waits in close(): fine */
  /* a task woken above holds the userdata, so it is not collected */
  if (b->collected) box_free(b);
}

/* Closes b's descriptor. Runs once: when b is closed and no request uses
 * it. An asynchronous uv_fs_close with a callback cannot fail to start. */
static void close_start(file_box *b) {
  b->close_req.data = b;
  int rc = uv_fs_close(b->loop, &b->close_req, b->fd, close_cb);
  assert(rc == 0);
  (void)rc;
}

/* The request op no longer uses the descriptor. Callback side: no Lua. */
static void file_done(fs_op *op) {
  file_box *b = op->file;
  file_unlink(op);
  if (b->closed && tulua__queue_empty(&b->ops)) close_start(b);
}

/* Closes b for Lua: requests in flight get "file closed" (queued ones are
 * cancelled, running ones finish first), then the descriptor is closed
 * without blocking. close(), __close and __gc all come here; only the first
 * call does anything. */
static void file_release(file_box *b) {
  if (b->closed) return;
  b->closed = 1;
  tulua__queue *q;
  tulua__queue_foreach(q, &b->ops) {
    fs_op *op = tulua__container_of(q, fs_op, link);
    op->aborted = 1;
    uv_cancel(&op->u.req); /* fails once running: the callback waits */
  }
  if (tulua__queue_empty(&b->ops)) close_start(b);
}

/* Takes fd into a new box for the File userdata at idx (created closed
 * before the wait). Returns 0, or UV_ENOMEM after closing fd: on that path
 * only, the close is synchronous. */
static int file_adopt(lua_State *L, int idx, const char *path, uv_file fd) {
  file_box **p = lua_touserdata(L, idx);
  file_box *b = calloc(1, sizeof *b);
  char *copy = strdup(path);
  if (b == NULL || copy == NULL) {
    uv_fs_t req;
    uv_fs_close(tulua__loop(L), &req, fd, NULL);
    uv_fs_req_cleanup(&req);
    free(b);
    free(copy);
    return UV_ENOMEM;
  }
  b->loop = tulua__loop(L);
  b->fd = fd;
  b->path = copy;
  tulua__queue_init(&b->ops);
  *p = b;
  return 0;
}

/* Pushes a File userdata that owns nothing yet ("closed"). [-0, +1, m] */
static void new_file_ud(lua_State *L) {
  file_box **p = lua_newuserdatauv(L, sizeof *p, 0);
  *p = NULL;
  luaL_setmetatable(L, FILE_MT);
}

static file_box *check_file(lua_State *L, int idx) {
  file_box **p = luaL_checkudata(L, idx, FILE_MT);
  if (*p == NULL || (*p)->closed) luaL_error(L, "attempt to use a closed file");
  return *p;
}

/* ---- callbacks and the shared wait ---- */

static void op_cb(uv_fs_t *req) { /* no Lua API here */
  fs_op *op = req->data;
  if (!tulua__wake(&op->w)) op_free(op); /* task gone: we are the owner */
}

static void file_op_cb(uv_fs_t *req) { /* no Lua API here */
  fs_op *op = req->data;
  file_done(op);
  if (!tulua__wake(&op->w)) op_free(op);
}

static void after_work_cb(uv_work_t *req, int status) { /* no Lua API */
  fs_op *op = req->data;
  if (status < 0) op->err = status; /* UV_ECANCELED: the work never ran */
  if (op->file != NULL) file_done(op);
  if (!tulua__wake(&op->w)) op_free(op);
}

static void free_cb(uv_fs_t *req) {
  op_free(req->data);
}

/* An open whose task is gone: nobody will take the descriptor, so the same
 * request closes it before the op is freed. */
static void open_cb(uv_fs_t *req) { /* no Lua API here */
  fs_op *op = req->data;
  if (tulua__wake(&op->w)) return;
  if (req->result >= 0) {
    uv_file fd = (uv_file)req->result;
    uv_loop_t *loop = req->loop;
    uv_fs_req_cleanup(req);
    int rc = uv_fs_close(loop, req, fd, free_cb);
    assert(rc == 0);
    (void)rc;
    return;
  }
  op_free(op);
}

static void op_cancel(void *ud) { /* the callback still comes later */
  uv_cancel(&((fs_op *)ud)->u.req); /* fails once running: fine */
}

/* The detail of a wait on op (tulua --ps): the path it works on. */
static int describe_op(char *buf, size_t size, const void *ud) {
  const fs_op *op = ud;
  const char *path = NULL;
  if (op->file != NULL)
    path = op->file->path;
  else if (op->is_work)
    path = op->pathlen > 0 ? op->data : NULL;
  else
    path = op->u.fs.path;
  return snprintf(buf, size, "%s", path != NULL ? path : "");
}

/* Steps 4 and 5 for every request: rc is what starting it returned. If
 * libuv will not call back, undoes the op and fails; else waits. */
static int wait_op(lua_State *L, fs_op *op, int rc, tulua__deliver_fn deliver) {
  if (rc < 0) {
    int subject = op->subject;
    if (op->file != NULL) file_unlink(op);
    op_free(op);
    return push_op_fail(L, subject, rc);
  }
  tulua__wait_detail(L, describe_op);
  return tulua__wait(L, &op->w, deliver, op_cancel, op);
}

/* ---- argument helpers ---- */

static int64_t opt_offset(lua_State *L, int idx) {
  if (lua_isnoneornil(L, idx)) return -1;
  lua_Integer off = luaL_checkinteger(L, idx);
  luaL_argcheck(L, off >= 0, idx, "negative offset");
  return (int64_t)off;
}

static int check_mode(lua_State *L, int idx) {
  lua_Integer mode = luaL_checkinteger(L, idx);
  luaL_argcheck(L, mode >= 0 && mode <= 07777, idx, "invalid mode");
  return (int)mode;
}

/* Reads options[name] of the table at idx as a mode. */
static int opt_mode_field(lua_State *L, int idx, int def) {
  int isint;
  lua_getfield(L, idx, "mode");
  if (lua_isnil(L, -1)) {
    lua_pop(L, 1);
    return def;
  }
  lua_Integer mode = lua_tointegerx(L, -1, &isint);
  luaL_argcheck(L, isint, idx, "field 'mode' must be an integer");
  luaL_argcheck(L, mode >= 0 && mode <= 07777, idx, "invalid mode");
  lua_pop(L, 1);
  return (int)mode;
}

static int opt_bool_field(lua_State *L, int idx, const char *name) {
  lua_getfield(L, idx, name);
  int yes = lua_toboolean(L, -1);
  lua_pop(L, 1);
  return yes;
}

/* Parses fopen's modes: r, w, a, each with an optional +, b (ignored) and,
 * with w, x (fail if the file exists). */
static int check_flags(lua_State *L, int idx) {
  size_t len;
  const char *s = luaL_optlstring(L, idx, "r", &len);
  luaL_argcheck(L, strlen(s) == len, idx, "flags contain a zero byte");
  int flags, plus = 0, excl = 0, bin = 0;
  switch (s[0]) {
    case 'r':
      flags = 0;
      break;
    case 'w':
      flags = O_CREAT | O_TRUNC;
      break;
    case 'a':
      flags = O_CREAT | O_APPEND;
      break;
    default:
      goto bad;
  }
  for (const char *c = s + 1; *c != '\0'; c++) {
    int *seen = *c == '+' ? &plus : *c == 'x' ? &excl : *c == 'b' ? &bin : NULL;
    if (seen == NULL || *seen) goto bad;
    *seen = 1;
  }
  if (excl && s[0] != 'w') goto bad;
  flags |= plus ? O_RDWR : s[0] == 'r' ? O_RDONLY : O_WRONLY;
  return excl ? flags | O_EXCL : flags;
bad:
  return luaL_argerror(L, idx, lua_pushfstring(L, "invalid flags '%s'", s));
}

/* ---- delivers ---- */

static int true_deliver(lua_State *L, void *ud) {
  fs_op *op = ud;
  if (!op_ok(op)) return op_fail(L, op);
  op_free(op); /* before any push: pushing may raise */
  lua_pushboolean(L, 1);
  return 1;
}

/* Pushes the request's result as an integer: bytes written, a position. */
static int count_deliver(lua_State *L, void *ud) {
  fs_op *op = ud;
  if (!op_ok(op)) return op_fail(L, op);
  int64_t v = op->is_work ? op->num : (int64_t)op->u.fs.result;
  op_free(op);
  lua_pushinteger(L, (lua_Integer)v);
  return 1;
}

static const char *type_name(uint64_t mode) {
  switch (mode & S_IFMT) {
    case S_IFREG:
      return "file";
    case S_IFDIR:
      return "directory";
    case S_IFLNK:
      return "link";
    case S_IFIFO:
      return "fifo";
    case S_IFSOCK:
      return "socket";
    case S_IFCHR:
      return "char";
    case S_IFBLK:
      return "block";
    default:
      return "unknown";
  }
}

static void set_int(lua_State *L, const char *k, uint64_t v) {
  lua_pushinteger(L, (lua_Integer)v);
  lua_setfield(L, -2, k);
}

static void set_time(lua_State *L, const char *k, uv_timespec_t ts) {
  lua_pushnumber(L, (lua_Number)ts.tv_sec + (lua_Number)ts.tv_nsec / 1e9);
  lua_setfield(L, -2, k);
}

/* Pushes a stat table. [-0, +1, m] */
static int push_stat(lua_State *L, const uv_stat_t *st) {
  lua_createtable(L, 0, 17);
  lua_pushstring(L, type_name(st->st_mode));
  lua_setfield(L, -2, "type");
  set_int(L, "size", st->st_size);
  set_int(L, "mode", st->st_mode);
  set_int(L, "perm", st->st_mode & 07777);
  set_int(L, "uid", st->st_uid);
  set_int(L, "gid", st->st_gid);
  set_int(L, "ino", st->st_ino);
  set_int(L, "dev", st->st_dev);
  set_int(L, "rdev", st->st_rdev);
  set_int(L, "nlink", st->st_nlink);
  set_int(L, "blksize", st->st_blksize);
  set_int(L, "blocks", st->st_blocks);
  set_time(L, "atime", st->st_atim);
  set_time(L, "mtime", st->st_mtim);
  set_time(L, "ctime", st->st_ctim);
  set_time(L, "birthtime", st->st_birthtim);
  return 1;
}

static int stat_deliver(lua_State *L, void *ud) {
  fs_op *op = ud;
  if (!op_ok(op)) return op_fail(L, op);
  uv_stat_t st = op->u.fs.statbuf;
  op_free(op);
  return push_stat(L, &st);
}

/* realpath, readlink: the string libuv allocated in req->ptr. */
static int ptr_deliver(lua_State *L, void *ud) {
  fs_op *op = ud;
  if (!op_ok(op)) return op_fail(L, op);
  const char *s = op->u.fs.ptr;
  return push_owned(L, op, s, strlen(s));
}

static int path_deliver(lua_State *L, void *ud) { /* mkdtemp: req->path */
  fs_op *op = ud;
  if (!op_ok(op)) return op_fail(L, op);
  const char *s = op->u.fs.path;
  return push_owned(L, op, s, strlen(s));
}

/* ---- module functions on paths ---- */

/* fs.stat(path) -> table | nil, message, code: the file's metadata,
 * following symbolic links. Fields: type ("file", "directory", "link",
 * "fifo", "socket", "char", "block" or "unknown"), size, mode, perm (mode's
 * permission bits), uid, gid, ino, dev, rdev, nlink, blksize, blocks, and
 * atime, mtime, ctime, birthtime in seconds (floats). Raises on a non-string
 * path. */
static int fs_stat(lua_State *L) {
  const char *path = tulua__check_path(L, 1, NULL);
  tulua__check_wait(L, "fs.stat");
  fs_op *op = op_new(SUBJ_PATH, 0);
  if (op == NULL) return push_fail(L, path, UV_ENOMEM);
  int rc = uv_fs_stat(tulua__loop(L), &op->u.fs, path, op_cb);
  return wait_op(L, op, rc, stat_deliver);
}

/* fs.lstat(path) -> table | nil, message, code: as fs.stat, but a symbolic
 * link describes itself (type "link"). */
static int fs_lstat(lua_State *L) {
  const char *path = tulua__check_path(L, 1, NULL);
  tulua__check_wait(L, "fs.lstat");
  fs_op *op = op_new(SUBJ_PATH, 0);
  if (op == NULL) return push_fail(L, path, UV_ENOMEM);
  int rc = uv_fs_lstat(tulua__loop(L), &op->u.fs, path, op_cb);
  return wait_op(L, op, rc, stat_deliver);
}

/* fs.rename(from, to) -> true | nil, "from -> to: message", code: renames
 * or moves a file or directory, replacing to if it exists. */
static int fs_rename(lua_State *L) {
  const char *from = tulua__check_path(L, 1, NULL);
  const char *to = tulua__check_path(L, 2, NULL);
  tulua__check_wait(L, "fs.rename");
  fs_op *op = op_new(SUBJ_PATHS, 0);
  if (op == NULL) return push_op_fail(L, SUBJ_PATHS, UV_ENOMEM);
  int rc = uv_fs_rename(tulua__loop(L), &op->u.fs, from, to, op_cb);
  return wait_op(L, op, rc, true_deliver);
}

/* fs.unlink(path) -> true | nil, message, code: removes a file (not a
 * directory: EISDIR). */
static int fs_unlink(lua_State *L) {
  const char *path = tulua__check_path(L, 1, NULL);
  tulua__check_wait(L, "fs.unlink");
  fs_op *op = op_new(SUBJ_PATH, 0);
  if (op == NULL) return push_fail(L, path, UV_ENOMEM);
  int rc = uv_fs_unlink(tulua__loop(L), &op->u.fs, path, op_cb);
  return wait_op(L, op, rc, true_deliver);
}

/* mkdir -p on the pool: creates each missing component; missing parents get
 * mode 0777 (less the umask). A component that exists is fine if it is a
 * directory; if not, the last one fails with EEXIST and a parent with
 * ENOTDIR. Returns 0 or a libuv code. */
static int mkdir_parents(char *path, int mode) {
  if (*path == '\0') return UV_ENOENT;
  for (char *p = path;; p++) {
    if (*p != '/' && *p != '\0') continue;
    char c = *p;
    int last = p[strspn(p, "/")] == '\0'; /* only slashes follow */
    if (p > path && p[-1] != '/') { /* skip "/", "a//b", "a/" */
      *p = '\0';
      int r = mkdir(path, last ? (mode_t)mode : 0777);
      int e = errno;
      struct stat st;
      int isdir = r != 0 && stat(path, &st) == 0 && S_ISDIR(st.st_mode);
      *p = c;
      if (r != 0 && !isdir)
        return uv_translate_sys_error(e == EEXIST && !last ? ENOTDIR : e);
    }
    if (last) return 0;
  }
}

static void mkdir_work(uv_work_t *req) { /* a pool thread: no Lua */
  fs_op *op = req->data;
  op->err = mkdir_parents(op->data, (int)op->num);
}

/* fs.mkdir(path [, mode | options]) -> true | nil, message, code: creates a
 * directory with mode (default 0777, less the umask). options: {mode =
 * integer, parents = boolean}; with parents, missing parent directories are
 * created too and an existing directory is no error (as mkdir -p). Raises
 * on a bad mode (not an integer in 0..07777). */
static int fs_mkdir(lua_State *L) {
  size_t len;
  const char *path = tulua__check_path(L, 1, &len);
  static const char *const options[] = {"mode", "parents", NULL};
  int mode = 0777, parents = 0;
  if (lua_istable(L, 2)) {
    tulua__check_options(L, 2, options);
    mode = opt_mode_field(L, 2, 0777);
    parents = opt_bool_field(L, 2, "parents");
  } else if (!lua_isnoneornil(L, 2)) {
    mode = check_mode(L, 2);
  }
  tulua__check_wait(L, "fs.mkdir");
  fs_op *op = op_new(SUBJ_PATH, parents ? len + 1 : 0);
  if (op == NULL) return push_fail(L, path, UV_ENOMEM);
  int rc;
  if (parents) {
    memcpy(op->data, path, len + 1);
    op->num = mode;
    op->is_work = 1;
    rc = uv_queue_work(tulua__loop(L), &op->u.work, mkdir_work, after_work_cb);
  } else {
    rc = uv_fs_mkdir(tulua__loop(L), &op->u.fs, path, mode, op_cb);
  }
  return wait_op(L, op, rc, true_deliver);
}

/* fs.rmdir(path) -> true | nil, message, code: removes an empty directory
 * (ENOTEMPTY otherwise). */
static int fs_rmdir(lua_State *L) {
  const char *path = tulua__check_path(L, 1, NULL);
  tulua__check_wait(L, "fs.rmdir");
  fs_op *op = op_new(SUBJ_PATH, 0);
  if (op == NULL) return push_fail(L, path, UV_ENOMEM);
  int rc = uv_fs_rmdir(tulua__loop(L), &op->u.fs, path, op_cb);
  return wait_op(L, op, rc, true_deliver);
}

/* fs.realpath(path) -> string | nil, message, code: the canonical absolute
 * path, with symbolic links, "." and ".." resolved; the path must exist. */
static int fs_realpath(lua_State *L) {
  const char *path = tulua__check_path(L, 1, NULL);
  tulua__check_wait(L, "fs.realpath");
  fs_op *op = op_new(SUBJ_PATH, 0);
  if (op == NULL) return push_fail(L, path, UV_ENOMEM);
  int rc = uv_fs_realpath(tulua__loop(L), &op->u.fs, path, op_cb);
  return wait_op(L, op, rc, ptr_deliver);
}

/* fs.copyfile(from, to [, options]) -> true | nil, "from -> to: message",
 * code: copies a file's contents and mode, replacing to unless options.excl
 * is true (then EEXIST if to exists). */
static int fs_copyfile(lua_State *L) {
  const char *from = tulua__check_path(L, 1, NULL);
  const char *to = tulua__check_path(L, 2, NULL);
  static const char *const options[] = {"excl", NULL};
  int flags = 0;
  if (tulua__check_options(L, 3, options) && opt_bool_field(L, 3, "excl"))
    flags |= UV_FS_COPYFILE_EXCL;
  tulua__check_wait(L, "fs.copyfile");
  fs_op *op = op_new(SUBJ_PATHS, 0);
  if (op == NULL) return push_op_fail(L, SUBJ_PATHS, UV_ENOMEM);
  int rc = uv_fs_copyfile(tulua__loop(L), &op->u.fs, from, to, flags, op_cb);
  return wait_op(L, op, rc, true_deliver);
}

/* fs.symlink(target, path) -> true | nil, "target -> path: message", code:
 * creates the symbolic link path pointing at target (which need not exist;
 * a relative target is relative to path's directory). */
static int fs_symlink(lua_State *L) {
  const char *target = tulua__check_path(L, 1, NULL);
  const char *path = tulua__check_path(L, 2, NULL);
  tulua__check_wait(L, "fs.symlink");
  fs_op *op = op_new(SUBJ_PATHS, 0);
  if (op == NULL) return push_op_fail(L, SUBJ_PATHS, UV_ENOMEM);
  int rc = uv_fs_symlink(tulua__loop(L), &op->u.fs, target, path, 0, op_cb);
  return wait_op(L, op, rc, true_deliver);
}

/* fs.readlink(path) -> string | nil, message, code: the target of a
 * symbolic link (EINVAL if path is not one). */
static int fs_readlink(lua_State *L) {
  const char *path = tulua__check_path(L, 1, NULL);
  tulua__check_wait(L, "fs.readlink");
  fs_op *op = op_new(SUBJ_PATH, 0);
  if (op == NULL) return push_fail(L, path, UV_ENOMEM);
  int rc = uv_fs_readlink(tulua__loop(L), &op->u.fs, path, op_cb);
  return wait_op(L, op, rc, ptr_deliver);
}

/* fs.chmod(path, mode) -> true | nil, message, code: sets the permission
 * bits. Raises unless mode is an integer in 0..07777. */
static int fs_chmod(lua_State *L) {
  const char *path = tulua__check_path(L, 1, NULL);
  int mode = check_mode(L, 2);
  tulua__check_wait(L, "fs.chmod");
  fs_op *op = op_new(SUBJ_PATH, 0);
  if (op == NULL) return push_fail(L, path, UV_ENOMEM);
  int rc = uv_fs_chmod(tulua__loop(L), &op->u.fs, path, mode, op_cb);
  return wait_op(L, op, rc, true_deliver);
}

/* fs.utime(path [, atime [, mtime]]) -> true | nil, message, code: sets the
 * access and modification times, in seconds since the epoch (floats); each
 * defaults to now. */
static int fs_utime(lua_State *L) {
  const char *path = tulua__check_path(L, 1, NULL);
  uv_timeval64_t tv;
  double now = 0;
  if (lua_isnoneornil(L, 2) || lua_isnoneornil(L, 3)) {
    uv_gettimeofday(&tv);
    now = (double)tv.tv_sec + (double)tv.tv_usec / 1e6;
  }
  double atime = (double)luaL_optnumber(L, 2, now);
  double mtime = (double)luaL_optnumber(L, 3, now);
  tulua__check_wait(L, "fs.utime");
  fs_op *op = op_new(SUBJ_PATH, 0);
  if (op == NULL) return push_fail(L, path, UV_ENOMEM);
  int rc = uv_fs_utime(tulua__loop(L), &op->u.fs, path, atime, mtime, op_cb);
  return wait_op(L, op, rc, true_deliver);
}

/* fs.access(path [, mode]) -> true | nil, message, code: whether the
 * process may use path; mode is a string of 'r', 'w', 'x' (default: "",
 * only existence). Raises on any other letter. */
static int fs_access(lua_State *L) {
  const char *path = tulua__check_path(L, 1, NULL);
  size_t len;
  const char *m = luaL_optlstring(L, 2, "", &len);
  luaL_argcheck(L, strlen(m) == len, 2, "mode contains a zero byte");
  int amode = F_OK;
  for (const char *c = m; *c != '\0'; c++) {
    if (*c == 'r')
      amode |= R_OK;
    else if (*c == 'w')
      amode |= W_OK;
    else if (*c == 'x')
      amode |= X_OK;
    else
      return luaL_argerror(L, 2, lua_pushfstring(L, "invalid mode '%s'", m));
  }
  tulua__check_wait(L, "fs.access");
  fs_op *op = op_new(SUBJ_PATH, 0);
  if (op == NULL) return push_fail(L, path, UV_ENOMEM);
  int rc = uv_fs_access(tulua__loop(L), &op->u.fs, path, amode, op_cb);
  return wait_op(L, op, rc, true_deliver);
}

/* fs.mkdtemp(template) -> path | nil, message, code: creates a new
 * directory (mode 0700) whose name is template with its last six 'X'
 * replaced by random characters. Raises unless template ends in
 * "XXXXXX". */
static int fs_mkdtemp(lua_State *L) {
  size_t len;
  const char *tpl = tulua__check_path(L, 1, &len);
  luaL_argcheck(L, len >= 6 && strcmp(tpl + len - 6, "XXXXXX") == 0, 1,
                "template must end in 'XXXXXX'");
  tulua__check_wait(L, "fs.mkdtemp");
  fs_op *op = op_new(SUBJ_PATH, 0);
  if (op == NULL) return push_fail(L, tpl, UV_ENOMEM);
  int rc = uv_fs_mkdtemp(tulua__loop(L), &op->u.fs, tpl, op_cb);
  return wait_op(L, op, rc, path_deliver);
}

/* ---- whole files ---- */

static void read_file_work(uv_work_t *req) { /* a pool thread: no Lua */
  fs_op *op = req->data;
  int fd = open(op->data, O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    op->err = uv_translate_sys_error(errno);
    return;
  }
  struct stat st;
  size_t size = 8192;
  if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && st.st_size > 0)
    size = (size_t)st.st_size + 1; /* + 1: see the end without growing */
  tulua__bytes b = {0};
  int err = tulua__bytes_reserve(&b, size);
  while (err == 0) {
    if (b.len == b.cap) err = tulua__bytes_reserve(&b, b.cap); /* doubles */
    if (err != 0) break;
    size_t want = b.cap - b.len > MAX_RW ? MAX_RW : b.cap - b.len;
    ssize_t r = read(fd, b.base + b.len, want);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) err = uv_translate_sys_error(errno);
    if (r <= 0) break;
    b.len += (size_t)r;
  }
  close(fd); /* nothing to lose on a descriptor we only read */
  if (err != 0) {
    tulua__bytes_free(&b);
    op->err = err;
    return;
  }
  op->buf = b.base;
  op->buflen = b.len;
}

static int read_file_deliver(lua_State *L, void *ud) {
  fs_op *op = ud;
  if (!op_ok(op)) return op_fail(L, op);
  return push_owned(L, op, op->buf, op->buflen);
}

/* fs.read_file(path) -> string | nil, message, code: the whole contents of
 * a file (binary-safe). A directory fails with EISDIR. */
static int fs_read_file(lua_State *L) {
  size_t len;
  const char *path = tulua__check_path(L, 1, &len);
  tulua__check_wait(L, "fs.read_file");
  fs_op *op = op_new(SUBJ_PATH, len + 1);
  if (op == NULL) return push_fail(L, path, UV_ENOMEM);
  memcpy(op->data, path, len + 1);
  op->is_work = 1;
  int rc =
      uv_queue_work(tulua__loop(L), &op->u.work, read_file_work, after_work_cb);
  return wait_op(L, op, rc, read_file_deliver);
}

static int write_all(int fd, const char *p, size_t n) {
  while (n > 0) {
    ssize_t w = write(fd, p, n > MAX_RW ? MAX_RW : n);
    if (w < 0 && errno == EINTR) continue;
    if (w < 0) return uv_translate_sys_error(errno);
    p += w;
    n -= (size_t)w;
  }
  return 0;
}

static int write_plain(const char *path, const char *p, size_t n, int mode) {
  int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
  if (fd < 0) return uv_translate_sys_error(errno);
  int err = write_all(fd, p, n);
  if (close(fd) != 0 && err == 0) err = uv_translate_sys_error(errno);
  return err;
}

/* Makes a rename durable. Best effort: the new file is already in place,
 * and some file systems refuse fsync on a directory. */
static void sync_dir(const char *path) {
  char *dir = strdup(path);
  if (dir == NULL) return;
  char *slash = strrchr(dir, '/');
  const char *name = ".";
  if (slash == dir)
    name = "/";
  else if (slash != NULL) {
    *slash = '\0';
    name = dir;
  }
  int fd = open(name, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd >= 0) {
    fsync(fd);
    close(fd);
  }
  free(dir);
}

/* Writes a new file next to path, syncs it and renames it over path, so
 * that readers see the old contents or the new ones, never a part. The new
 * file keeps the permission bits of the one it replaces, if any. */
static int write_atomic(const char *path, const char *p, size_t n, int mode) {
  size_t cap = strlen(path) + 16;
  char *tmp = malloc(cap);
  if (tmp == NULL) return UV_ENOMEM;
  uint64_t x = uv_hrtime() ^ (uint64_t)(uintptr_t)tmp;
  int fd = -1, err = 0;
  for (int i = 0; i < 100 && fd < 0; i++) {
    x = x * 6364136223846793005u + 1442695040888963407u;
    snprintf(tmp, cap, "%s.tmp-%06x", path, (unsigned)(x >> 40) & 0xffffffu);
    fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode);
    if (fd < 0 && errno != EEXIST) break;
  }
  if (fd < 0) {
    err = uv_translate_sys_error(errno);
    free(tmp);
    return err;
  }
  struct stat st;
  if (stat(path, &st) == 0) fchmod(fd, st.st_mode & 07777);
  err = write_all(fd, p, n);
  if (err == 0 && fsync(fd) != 0) err = uv_translate_sys_error(errno);
  if (close(fd) != 0 && err == 0) err = uv_translate_sys_error(errno);
  if (err == 0 && rename(tmp, path) != 0) err = uv_translate_sys_error(errno);
  if (err != 0)
    unlink(tmp);
  else
    sync_dir(path);
  free(tmp);
  return err;
}

static void write_file_work(uv_work_t *req) { /* a pool thread: no Lua */
  fs_op *op = req->data;
  const char *bytes = op->data + op->pathlen + 1;
  if (op->flag)
    op->err = write_atomic(op->data, bytes, op->len, (int)op->num);
  else
    op->err = write_plain(op->data, bytes, op->len, (int)op->num);
}

/* fs.write_file(path, data [, options]) -> true | nil, message, code:
 * replaces the contents of a file (created with options.mode, default
 * 0666 less the umask). With options.atomic, writes a temporary file in the
 * same directory, syncs it to disk and renames it over path: readers see
 * the old or the new contents, never a part; the new file keeps the
 * replaced one's permission bits, and a symbolic link at path is replaced,
 * not followed. */
static int fs_write_file(lua_State *L) {
  size_t plen, len;
  const char *path = tulua__check_path(L, 1, &plen);
  const char *data = luaL_checklstring(L, 2, &len);
  static const char *const options[] = {"mode", "atomic", NULL};
  int mode = 0666, atomic = 0;
  if (tulua__check_options(L, 3, options)) {
    mode = opt_mode_field(L, 3, 0666);
    atomic = opt_bool_field(L, 3, "atomic");
  }
  tulua__check_wait(L, "fs.write_file");
  fs_op *op = op_new(SUBJ_PATH, plen + 1 + len);
  if (op == NULL) return push_fail(L, path, UV_ENOMEM);
  memcpy(op->data, path, plen + 1);
  memcpy(op->data + plen + 1, data, len);
  op->pathlen = plen;
  op->len = len;
  op->num = mode;
  op->flag = (unsigned char)atomic;
  op->is_work = 1;
  int rc = uv_queue_work(tulua__loop(L), &op->u.work, write_file_work,
                         after_work_cb);
  return wait_op(L, op, rc, true_deliver);
}

/* ---- directories ---- */

static int dir_free(lua_State *L) {
  dir_state *s = luaL_checkudata(L, 1, DIR_MT);
  if (s->op != NULL) op_free(s->op);
  s->op = NULL;
  return 0;
}

static const char *dirent_type(uv_dirent_type_t t) {
  switch (t) {
    case UV_DIRENT_FILE:
      return "file";
    case UV_DIRENT_DIR:
      return "directory";
    case UV_DIRENT_LINK:
      return "link";
    case UV_DIRENT_FIFO:
      return "fifo";
    case UV_DIRENT_SOCKET:
      return "socket";
    case UV_DIRENT_CHAR:
      return "char";
    case UV_DIRENT_BLOCK:
      return "block";
    default:
      return "unknown";
  }
}

/* The scandir iterator: name, type of the next entry, or nothing. */
static int dir_iter(lua_State *L) {
  dir_state *s = lua_touserdata(L, lua_upvalueindex(1));
  uv_dirent_t ent;
  if (s->op == NULL) return 0;
  if (uv_fs_scandir_next(&s->op->u.fs, &ent) == UV_EOF) {
    op_free(s->op);
    s->op = NULL;
    return 0;
  }
  lua_pushstring(L, ent.name);
  lua_pushstring(L, dirent_type(ent.type));
  return 2;
}

/* Hands the finished request to the dir_state userdata at idx (created
 * before the wait), so that pushing can fail without losing it. */
static int scandir_take(lua_State *L, fs_op *op, int idx) {
  if (!op_ok(op)) return op_fail(L, op);
  ((dir_state *)lua_touserdata(L, idx))->op = op;
  return 0;
}

static int scandir_deliver(lua_State *L, void *ud) {
  int n = scandir_take(L, ud, 2);
  if (n) return n;
  lua_pushvalue(L, 2);
  lua_pushcclosure(L, dir_iter, 1);
  lua_pushnil(L);
  lua_pushnil(L);
  lua_pushvalue(L, 2); /* closing value: frees the entries on break */
  return 4;
}

static int readdir_deliver(lua_State *L, void *ud) {
  int n = scandir_take(L, ud, 2);
  if (n) return n;
  dir_state *s = lua_touserdata(L, 2);
  uv_dirent_t ent;
  lua_createtable(L, (int)s->op->u.fs.result, 0);
  for (lua_Integer i = 1; uv_fs_scandir_next(&s->op->u.fs, &ent) != UV_EOF;
       i++) {
    lua_pushstring(L, ent.name);
    lua_rawseti(L, -2, i);
  }
  op_free(s->op);
  s->op = NULL;
  return 1;
}

static int start_scandir(lua_State *L, const char *name,
                         tulua__deliver_fn deliver) {
  const char *path = tulua__check_path(L, 1, NULL);
  lua_settop(L, 1);
  tulua__check_wait(L, name);
  dir_state *s = lua_newuserdatauv(L, sizeof *s, 0); /* 2 */
  s->op = NULL;
  luaL_setmetatable(L, DIR_MT);
  fs_op *op = op_new(SUBJ_PATH, 0);
  if (op == NULL) return push_fail(L, path, UV_ENOMEM);
  int rc = uv_fs_scandir(tulua__loop(L), &op->u.fs, path, 0, op_cb);
  return wait_op(L, op, rc, deliver);
}

/* fs.scandir(path) -> iterator | nil, message, code: reads a directory in
 * one request, then iterates over its entries (without "." and ".."), in
 * byte order: each step returns name, type ("file", "directory", "link",
 * "fifo", "socket", "char", "block", or "unknown" where the file system
 * does not say). Use as `for name, type in assert(fs.scandir(dir))`. */
static int fs_scandir(lua_State *L) {
  return start_scandir(L, "fs.scandir", scandir_deliver);
}

/* fs.readdir(path) -> {name, ...} | nil, message, code: the names of a
 * directory's entries as a list, in byte order. */
static int fs_readdir(lua_State *L) {
  return start_scandir(L, "fs.readdir", readdir_deliver);
}

/* ---- fs.open and File methods ---- */

static int open_deliver(lua_State *L, void *ud) {
  fs_op *op = ud;
  if (!op_ok(op)) return op_fail(L, op);
  uv_file fd = (uv_file)op->u.fs.result;
  op_free(op);
  int rc = file_adopt(L, 4, lua_tostring(L, 1), fd);
  if (rc < 0) return push_fail(L, lua_tostring(L, 1), rc);
  lua_pushvalue(L, 4);
  return 1;
}

/* fs.open(path [, flags [, mode]]) -> File | nil, message, code: opens a
 * file. flags as fopen's: "r" (default), "w", "a", "r+", "w+", "a+", a "b"
 * anywhere is ignored, and "x" with "w" fails with EEXIST if the file
 * exists. mode (default 0666, less the umask) applies to a new file. Raises
 * on bad flags or mode. */
static int fs_open(lua_State *L) {
  const char *path = tulua__check_path(L, 1, NULL);
  int flags = check_flags(L, 2);
  int mode = lua_isnoneornil(L, 3) ? 0666 : check_mode(L, 3);
  lua_settop(L, 3);
  tulua__check_wait(L, "fs.open");
  new_file_ud(L); /* 4: takes the descriptor in deliver */
  fs_op *op = op_new(SUBJ_PATH, 0);
  if (op == NULL) return push_fail(L, path, UV_ENOMEM);
  int rc = uv_fs_open(tulua__loop(L), &op->u.fs, path, flags, mode, open_cb);
  return wait_op(L, op, rc, open_deliver);
}

static int read_deliver(lua_State *L, void *ud) {
  fs_op *op = ud;
  if (!op_ok(op)) return op_fail(L, op);
  size_t got = (size_t)op->u.fs.result;
  if (got == 0 && op->len > 0) { /* end of file */
    op_free(op);
    lua_pushnil(L);
    return 1;
  }
  return push_owned(L, op, op->data, got);
}

/* file:read(n [, offset]) -> string | nil | nil, message, code: reads up
 * to n bytes (fewer at the end of the file, from a pipe or a terminal),
 * at offset if given (the file position does not move), else at the file
 * position, which advances. Returns nil at the end of the file. Raises on
 * a negative n or offset, or a closed file. */
static int file_read(lua_State *L) {
  file_box *b = check_file(L, 1);
  lua_Integer n = luaL_checkinteger(L, 2);
  luaL_argcheck(L, n >= 0, 2, "negative size");
  int64_t off = opt_offset(L, 3);
  tulua__check_wait(L, "fs.read");
  if (n > MAX_RW) n = MAX_RW; /* one read(2) returns no more */
  fs_op *op = op_new(SUBJ_FILE, (size_t)n);
  if (op == NULL) return push_fail(L, b->path, UV_ENOMEM);
  op->len = (size_t)n;
  uv_buf_t buf = {.base = op->data, .len = (size_t)n};
  file_link(b, op);
  int rc = uv_fs_read(b->loop, &op->u.fs, b->fd, &buf, 1, off, file_op_cb);
  return wait_op(L, op, rc, read_deliver);
}

/* file:write(data [, offset]) -> bytes written | nil, message, code: writes
 * all of data at offset if given (the file position does not move), else
 * at the file position, which advances. In append mode ("a", "a+") every
 * write goes to the end, offset or not (Linux ignores it). Raises on a
 * negative offset or a closed file. */
static int file_write(lua_State *L) {
  file_box *b = check_file(L, 1);
  size_t len;
  const char *data = luaL_checklstring(L, 2, &len);
  int64_t off = opt_offset(L, 3);
  tulua__check_wait(L, "fs.write");
  fs_op *op = op_new(SUBJ_FILE, len); /* a copy: nothing to anchor */
  if (op == NULL) return push_fail(L, b->path, UV_ENOMEM);
  memcpy(op->data, data, len);
  op->len = len;
  uv_buf_t buf = {.base = op->data, .len = len};
  file_link(b, op);
  int rc = uv_fs_write(b->loop, &op->u.fs, b->fd, &buf, 1, off, file_op_cb);
  return wait_op(L, op, rc, count_deliver);
}

/* file:stat() -> table | nil, message, code: as fs.stat, for the open
 * file. */
static int file_stat(lua_State *L) {
  file_box *b = check_file(L, 1);
  tulua__check_wait(L, "fs.fstat");
  fs_op *op = op_new(SUBJ_FILE, 0);
  if (op == NULL) return push_fail(L, b->path, UV_ENOMEM);
  file_link(b, op);
  int rc = uv_fs_fstat(b->loop, &op->u.fs, b->fd, file_op_cb);
  return wait_op(L, op, rc, stat_deliver);
}

/* file:sync([data_only]) -> true | nil, message, code: flushes the file to
 * disk (fsync), or only its data (fdatasync) when data_only is true. */
static int file_sync(lua_State *L) {
  file_box *b = check_file(L, 1);
  int data_only = lua_toboolean(L, 2);
  tulua__check_wait(L, "fs.fsync");
  fs_op *op = op_new(SUBJ_FILE, 0);
  if (op == NULL) return push_fail(L, b->path, UV_ENOMEM);
  file_link(b, op);
  int rc = data_only ? uv_fs_fdatasync(b->loop, &op->u.fs, b->fd, file_op_cb)
                     : uv_fs_fsync(b->loop, &op->u.fs, b->fd, file_op_cb);
  return wait_op(L, op, rc, true_deliver);
}

/* file:truncate(size) -> true | nil, message, code: cuts or extends (with
 * zeros) the file to size bytes. Raises on a negative size. */
static int file_truncate(lua_State *L) {
  file_box *b = check_file(L, 1);
  lua_Integer size = luaL_checkinteger(L, 2);
  luaL_argcheck(L, size >= 0, 2, "negative size");
  tulua__check_wait(L, "fs.ftruncate");
  fs_op *op = op_new(SUBJ_FILE, 0);
  if (op == NULL) return push_fail(L, b->path, UV_ENOMEM);
  file_link(b, op);
  int rc = uv_fs_ftruncate(b->loop, &op->u.fs, b->fd, size, file_op_cb);
  return wait_op(L, op, rc, true_deliver);
}

static void seek_work(uv_work_t *req) { /* a pool thread: no Lua */
  fs_op *op = req->data;
  off_t pos = lseek(op->fd, (off_t)op->num, op->whence);
  if (pos < 0)
    op->err = uv_translate_sys_error(errno);
  else
    op->num = (int64_t)pos;
}

/* file:seek([whence [, offset]]) -> position | nil, message, code: as Lua's
 * file:seek, moves the file position to offset (default 0) from "set" (the
 * start), "cur" (default) or "end", and returns it. lseek(2) runs on the
 * pool: on NFS or FUSE, "end" may ask the server. Raises on a bad whence. */
static int file_seek(lua_State *L) {
  static const char *const names[] = {"set", "cur", "end", NULL};
  static const int whences[] = {SEEK_SET, SEEK_CUR, SEEK_END};
  file_box *b = check_file(L, 1);
  int w = luaL_checkoption(L, 2, "cur", names);
  lua_Integer off = luaL_optinteger(L, 3, 0);
  tulua__check_wait(L, "fs.seek");
  fs_op *op = op_new(SUBJ_FILE, 0);
  if (op == NULL) return push_fail(L, b->path, UV_ENOMEM);
  op->is_work = 1;
  op->fd = b->fd;
  op->num = off;
  op->whence = whences[w];
  file_link(b, op);
  int rc = uv_queue_work(b->loop, &op->u.work, seek_work, after_work_cb);
  return wait_op(L, op, rc, count_deliver);
}

static int close_deliver(lua_State *L, void *ud) {
  file_box *b = ud; /* alive: the File is our argument 1 */
  if (b->close_rc < 0) return push_fail(L, b->path, b->close_rc);
  lua_pushboolean(L, 1);
  return 1;
}

/* The detail of a wait in close (tulua --ps): the file's path. */
static int describe_close(char *buf, size_t size, const void *ud) {
  return snprintf(buf, size, "%s", ((const file_box *)ud)->path);
}

/* file:close() -> true | nil, message, code: closes the file. Requests of
 * other tasks still in flight end with nil, "file closed", "ECANCELED"
 * (queued ones are cancelled; running ones finish first, and close waits
 * for them, so that no request uses a reused descriptor). A second close
 * is a no-op and returns true. */
static int file_close(lua_State *L) {
  file_box **p = luaL_checkudata(L, 1, FILE_MT);
  file_box *b = *p;
  if (b == NULL || b->closed) {
    lua_pushboolean(L, 1);
    return 1;
  }
  tulua__check_wait(L, "fs.close");
  file_release(b);
  /* nothing to cancel: the close happens anyway, and frees itself */
  if (b->path != NULL) tulua__wait_detail(L, describe_close);
  return tulua__wait(L, &b->close_w, close_deliver, NULL, b);
}

/* __close: releases the file without waiting (the descriptor is closed on
 * the pool a moment later). */
static int file_close_meta(lua_State *L) {
  file_box **p = luaL_checkudata(L, 1, FILE_MT);
  if (*p != NULL) file_release(*p);
  return 0;
}

/* __gc: as __close; the box is freed once its descriptor is closed. */
static int file_gc(lua_State *L) {
  file_box **p = luaL_checkudata(L, 1, FILE_MT);
  file_box *b = *p;
  if (b == NULL) return 0;
  *p = NULL;
  file_release(b);
  b->collected = 1;
  if (b->fd_closed) box_free(b);
  return 0;
}

static int file_tostring(lua_State *L) {
  file_box **p = luaL_checkudata(L, 1, FILE_MT);
  if (*p == NULL || (*p)->closed)
    lua_pushliteral(L, "file (closed)");
  else
    lua_pushfstring(L, "file (%s)", (*p)->path);
  return 1;
}

/* ---- fs.lines ---- */

static int lines_free(lua_State *L) {
  lines_state *s = luaL_checkudata(L, 1, LINES_MT);
  tulua__bytes_free(&s->b);
  return 0;
}

/* Raises "<path>: <libuv text>": an iterator has no other way to fail. */
static int raise_fail(lua_State *L, const char *path, int rc) {
  lua_pushfstring(L, "%s: %s", path, uv_strerror(rc));
  return lua_error(L);
}

/* As file_op_cb; the iterator stays busy until deliver has appended the
 * chunk, or until here if nobody will. */
static void lines_cb(uv_fs_t *req) { /* no Lua API here */
  fs_op *op = req->data;
  file_box *b = op->file; /* freed only after its close, which is later */
  file_done(op);
  if (tulua__wake(&op->w)) return;
  b->lines_busy = 0;
  op_free(op);
}

static int lines_deliver(lua_State *L, void *ud) {
  fs_op *op = ud;
  lines_state *s = lua_touserdata(L, 1);
  file_box *b = *(file_box **)lua_touserdata(L, 2); /* alive: on the stack */
  ssize_t rc = op->u.fs.result;
  int aborted = op->aborted;
  b->lines_busy = 0;
  if (!aborted && rc > 0)
    rc = tulua__bytes_append(&s->b, op->data, (size_t)rc);
  else if (!aborted && rc == 0)
    s->eof = 1;
  op_free(op);
  if (aborted) return luaL_error(L, "attempt to use a closed file");
  if (rc < 0) return raise_fail(L, b->path, (int)rc);
  return 0;
}

/* Reads the next chunk into the lines_state at 1: one waiting request. */
static int lines_fill(lua_State *L) {
  lua_getiuservalue(L, 1, 1); /* 2: the File */
  file_box *b = check_file(L, 2);
  if (b->lines_busy) /* another task's read: chunks could swap places */
    return luaL_error(L, "attempt to iterate over lines in two tasks at once");
  tulua__check_wait(L, "fs.lines");
  fs_op *op = op_new(SUBJ_FILE, LINES_CHUNK);
  if (op == NULL) return raise_fail(L, b->path, UV_ENOMEM);
  op->len = LINES_CHUNK;
  uv_buf_t buf = {.base = op->data, .len = LINES_CHUNK};
  file_link(b, op);
  int rc = uv_fs_read(b->loop, &op->u.fs, b->fd, &buf, 1, -1, lines_cb);
  if (rc < 0) { /* libuv will not call back */
    file_unlink(op);
    op_free(op);
    return raise_fail(L, b->path, rc);
  }
  b->lines_busy = 1;
  tulua__wait_detail(L, describe_op);
  return tulua__wait(L, &op->w, lines_deliver, op_cancel, op);
}

/* The lines iterator: returns the next line without its "\n" (a "\r"
 * before it stays, as with io.lines), or nothing at the end, where the
 * file is closed. Calls lines_fill, which waits, until a line is whole;
 * lua_callk makes that wait possible from this C function. */
static int lines_k(lua_State *L, int status, lua_KContext ctx) {
  lines_state *s = lua_touserdata(L, lua_upvalueindex(1));
  (void)status;
  (void)ctx;
  for (;;) {
    size_t avail = tulua__bytes_avail(&s->b);
    const char *p = avail > 0 ? s->b.base + s->b.pos : NULL;
    const char *nl = avail > 0 ? memchr(p, '\n', avail) : NULL;
    if (nl != NULL) {
      lua_pushlstring(L, p, (size_t)(nl - p));
      tulua__bytes_consume(&s->b, (size_t)(nl - p) + 1);
      return 1;
    }
    if (s->eof && avail > 0) { /* a last line without "\n" */
      lua_pushlstring(L, p, avail);
      tulua__bytes_consume(&s->b, avail);
      return 1;
    }
    if (s->eof) {
      lua_getiuservalue(L, lua_upvalueindex(1), 1);
      file_box **fp = lua_touserdata(L, -1);
      if (*fp != NULL) file_release(*fp);
      return 0;
    }
    lua_pushcfunction(L, lines_fill);
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_callk(L, 1, 0, 0, lines_k);
  }
}

static int lines_iter(lua_State *L) {
  return lines_k(L, LUA_OK, 0);
}

static int lines_deliver_open(lua_State *L, void *ud) {
  fs_op *op = ud;
  if (!op_ok(op)) return op_fail(L, op);
  uv_file fd = (uv_file)op->u.fs.result;
  op_free(op);
  int rc = file_adopt(L, 2, lua_tostring(L, 1), fd);
  if (rc < 0) return push_fail(L, lua_tostring(L, 1), rc);
  /* from here the File owns the descriptor: pushing may raise */
  lines_state *s = lua_newuserdatauv(L, sizeof *s, 1);
  memset(s, 0, sizeof *s);
  luaL_setmetatable(L, LINES_MT);
  lua_pushvalue(L, 2);
  lua_setiuservalue(L, -2, 1);
  lua_pushcclosure(L, lines_iter, 1);
  lua_pushnil(L);
  lua_pushnil(L);
  lua_pushvalue(L, 2); /* closing value: a loop left early closes the file */
  return 4;
}

/* fs.lines(path) -> iterator, nil, nil, File | nil, message, code: opens a
 * file for reading and returns an iterator over its lines, as io.lines:
 * each line comes without its "\n" ("\r" stays), a last line without "\n"
 * counts, and the file is closed at the end or when a for loop is left
 * (the File is the loop's closing value). Reads in 64 KiB chunks, so long
 * files cost little memory. Use as `for line in assert(fs.lines(path))`.
 * The iterator raises "<path>: <message>" if a read fails, and when two
 * tasks use it at once. */
static int fs_lines(lua_State *L) {
  const char *path = tulua__check_path(L, 1, NULL);
  lua_settop(L, 1);
  tulua__check_wait(L, "fs.lines");
  new_file_ud(L); /* 2 */
  fs_op *op = op_new(SUBJ_PATH, 0);
  if (op == NULL) return push_fail(L, path, UV_ENOMEM);
  int rc = uv_fs_open(tulua__loop(L), &op->u.fs, path, O_RDONLY, 0, open_cb);
  return wait_op(L, op, rc, lines_deliver_open);
}

int luaopen_tulua_fs(lua_State *L) {
  static const luaL_Reg file_methods[] = {
      {"read", file_read},         {"write", file_write}, {"stat", file_stat},
      {"sync", file_sync},         {"seek", file_seek},   {"close", file_close},
      {"truncate", file_truncate}, {NULL, NULL}};
  static const luaL_Reg file_meta[] = {{"__gc", file_gc},
                                       {"__close", file_close_meta},
                                       {"__tostring", file_tostring},
                                       {NULL, NULL}};
  static const luaL_Reg funcs[] = {{"open", fs_open},
                                   {"stat", fs_stat},
                                   {"lstat", fs_lstat},
                                   {"rename", fs_rename},
                                   {"unlink", fs_unlink},
                                   {"mkdir", fs_mkdir},
                                   {"rmdir", fs_rmdir},
                                   {"scandir", fs_scandir},
                                   {"readdir", fs_readdir},
                                   {"realpath", fs_realpath},
                                   {"copyfile", fs_copyfile},
                                   {"symlink", fs_symlink},
                                   {"readlink", fs_readlink},
                                   {"chmod", fs_chmod},
                                   {"utime", fs_utime},
                                   {"access", fs_access},
                                   {"mkdtemp", fs_mkdtemp},
                                   {"read_file", fs_read_file},
                                   {"write_file", fs_write_file},
                                   {"lines", fs_lines},
                                   {NULL, NULL}};
  tulua__new_class(L, FILE_MT, file_meta, file_methods);
  static const luaL_Reg dir_meta[] = {
      {"__gc", dir_free}, {"__close", dir_free}, {NULL, NULL}};
  static const luaL_Reg lines_meta[] = {{"__gc", lines_free}, {NULL, NULL}};
  tulua__new_class(L, DIR_MT, dir_meta, NULL);
  tulua__new_class(L, LINES_MT, lines_meta, NULL);
  luaL_newlib(L, funcs);
  tulua__fs_event_open(L); /* fs.watch, in fs_event.c */
  /* a write to a FIFO or a socket file whose reader left: nil, message,
   * "EPIPE", as promised, rather than the death of the process */
  tulua__ignore_sigpipe();
  return 1;
}
