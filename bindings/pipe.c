/* pipe.c: uv_pipe_t as unix-domain-socket streams and servers, in the
 * module 'tulua.net' (net.connect_unix, net.serve_unix); pipe streams also
 * carry subprocess stdio (process.c). */
#include <errno.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/socket.h>
#include <sys/un.h>

#include "stream.h"

#define BACKLOG 511

#define SUN_PATH_SIZE sizeof(((struct sockaddr_un *)NULL)->sun_path)

/* Returns the path argument of connect_unix or serve_unix, its length in
 * *len. An empty path raises: Linux would give the socket an abstract name,
 * which has no file and so no permissions; abstract names are only for who
 * asks (the option abstract). [-0, +0, v] */
static const char *check_socket_path(lua_State *L, size_t *len) {
  const char *path = tulua__check_path(L, 1, len);
  luaL_argcheck(L, *len > 0, 1, "empty path");
  return path;
}

/* Returns UV_ENAMETOOLONG for a path that does not fit in a sockaddr_un
 * with one byte more (a path's terminator, or an abstract name's leading
 * zero byte), else 0: libuv cuts a longer one short, which would bind or
 * reach another socket. */
static int check_length(size_t len) {
  return len + 1 > SUN_PATH_SIZE ? UV_ENAMETOOLONG : 0;
}

/* Reads the options of connect_unix or serve_unix at idx (known: the keys
 * it takes); returns whether abstract is set. [-0, +0, v] */
static int opt_abstract(lua_State *L, int idx, const char *const known[]) {
  if (!tulua__check_options(L, idx, known)) return 0;
  lua_getfield(L, idx, "abstract");
  int abstract = lua_toboolean(L, -1);
  lua_pop(L, 1);
  return abstract;
}

/* Opens a socket, non-blocking, at Linux's abstract name: a zero byte,
 * then name (len bytes, no terminator); libuv 1.44 can neither bind nor
 * connect one. Binds it (listen) or connects it, which for a unix socket
 * ends at once. Returns the descriptor or a negative libuv code. */
static int abstract_socket(const char *name, size_t len, int listen) {
  struct sockaddr_un sa;
  memset(&sa, 0, sizeof sa);
  sa.sun_family = AF_UNIX;
  memcpy(sa.sun_path + 1, name, len);
  socklen_t salen =
      (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + len);
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) return uv_translate_sys_error(errno);
  int rc = listen ? bind(fd, (struct sockaddr *)&sa, salen)
                  : connect(fd, (struct sockaddr *)&sa, salen);
  if (rc != 0) {
    rc = uv_translate_sys_error(errno);
    close(fd);
    return rc;
  }
  return fd;
}

/* connect_unix with abstract: the connect is over when it returns, so the
 * stream is pushed without a wait. */
static int connect_abstract(lua_State *L, const char *name, size_t len) {
  const char *subject = lua_pushfstring(L, "@%s", name);
  tulua__stream *box =
      tulua__stream_alloc(tulua__stream_scratch(L), TULUA_PIPE);
  if (box == NULL) return push_fail(L, subject, UV_ENOMEM);
  uv_pipe_t *pipe = (uv_pipe_t *)tulua__stream_handle(box);
  int rc = uv_pipe_init(tulua__loop(L), pipe, 0);
  if (rc < 0) {
    free(box);
    return push_fail(L, subject, rc);
  }
  tulua__stream_ready(box);
  int fd = abstract_socket(name, len, 0);
  rc = fd < 0 ? fd : uv_pipe_open(pipe, fd);
  if (rc < 0) {
    if (fd >= 0) close(fd);
    tulua__stream_discard(box);
    return push_fail(L, subject, rc);
  }
  tulua__stream_push(L, box);
  return 1;
}

typedef struct {
  uv_connect_t req;
  tulua__waiter w;
  tulua__stream *box; /* owned until delivered */
  int status;
  unsigned char done, gone;
  const char *path; /* on the waiting frame's stack */
} pipe_connect_op;

/* The detail of a wait in connect_unix (tulua --ps): the path. */
static int describe_connect(char *buf, size_t size, const void *ud) {
  return snprintf(buf, size, "%s", ((const pipe_connect_op *)ud)->path);
}

static void pipe_connect_cb(uv_connect_t *req, int status) {
  pipe_connect_op *op = req->data; /* no Lua API here */
  op->done = 1;
  op->status = status;
  if (op->gone) { /* cancelled: connect_cancel discarded the box */
    free(op);
    return;
  }
  if (status < 0) {
    tulua__stream_discard(op->box);
    op->box = NULL;
  }
  tulua__wake(&op->w);
}

static int pipe_connect_deliver(lua_State *L, void *ud) {
  pipe_connect_op *op = ud;
  int status = op->status;
  tulua__stream *box = op->box;
  free(op);
  if (status < 0) return push_fail(L, lua_tostring(L, 1), status);
  tulua__stream_push(L, box);
  return 1;
}

/* The task is gone: closing the socket makes the connect call back with
 * UV_ECANCELED, which frees the op. */
static void pipe_connect_cancel(void *ud) {
  pipe_connect_op *op = ud;
  op->gone = 1;
  tulua__stream_discard(op->box);
  op->box = NULL;
}

/* net.connect_unix(path [, {abstract=}]) -> pipe stream | nil, msg, code */
static int net_connect_unix(lua_State *L) {
  static const char *const options[] = {"abstract", NULL};
  size_t len;
  const char *path = check_socket_path(L, &len);
  int abstract = opt_abstract(L, 2, options);
  tulua__check_wait(L, "net.connect_unix");
  int rc = check_length(len);
  if (rc < 0) return push_fail(L, path, rc);
  if (abstract) return connect_abstract(L, path, len);
  pipe_connect_op *op = calloc(1, sizeof *op);
  tulua__stream *box =
      op ? tulua__stream_alloc(tulua__stream_scratch(L), TULUA_PIPE) : NULL;
  if (box == NULL) {
    free(op);
    return push_fail(L, path, UV_ENOMEM);
  }
  uv_pipe_t *pipe = (uv_pipe_t *)tulua__stream_handle(box);
  rc = uv_pipe_init(tulua__loop(L), pipe, 0);
  if (rc < 0) {
    free(box);
    free(op);
    return push_fail(L, path, rc);
  }
  tulua__stream_ready(box);
  op->box = box;
  op->req.data = op;
  uv_pipe_connect(&op->req, pipe, path, pipe_connect_cb);
  lua_settop(L, 1); /* the path, for messages */
  op->path = path;
  tulua__wait_detail(L, describe_connect);
  return tulua__wait(L, &op->w, pipe_connect_deliver, pipe_connect_cancel, op);
}

/* net.serve_unix(path, handler [, {backlog=}]) -> server | nil, msg, code */
static int net_serve_unix(lua_State *L) {
  static const char *const options[] = {"backlog", "abstract", NULL};
  size_t len;
  const char *path = check_socket_path(L, &len);
  luaL_checktype(L, 2, LUA_TFUNCTION);
  int backlog = BACKLOG, abstract = opt_abstract(L, 3, options);
  if (!lua_isnoneornil(L, 3)) {
    lua_Number b = tulua__opt_field_number(L, 3, "backlog", BACKLOG);
    luaL_argcheck(L, b >= 1 && b <= 0x7fffffff && b == (int)b, 3,
                  "'backlog' must be a positive integer");
    backlog = (int)b;
  }
  int rc = check_length(len);
  if (rc < 0) return push_fail(L, path, rc);
  tulua__server *srv = tulua__server_new(L, TULUA_PIPE, 2);
  uv_pipe_t *pipe = (uv_pipe_t *)tulua__server_handle(srv);
  rc = uv_pipe_init(tulua__loop(L), pipe, 0);
  if (rc == 0) {
    tulua__server_ready(srv);
    if (abstract) {
      int fd = abstract_socket(path, len, 1);
      rc = fd < 0 ? fd : uv_pipe_open(pipe, fd);
      if (rc < 0 && fd >= 0) close(fd);
    } else {
      rc = uv_pipe_bind(pipe, path);
    }
  }
  if (rc == 0) rc = tulua__server_listen(srv, backlog);
  if (rc < 0) return push_fail(L, path, rc);
  tulua__server_anchor(L, srv);
  return 1;
}

void tulua__pipe_open(lua_State *L) {
  static const luaL_Reg funcs[] = {{"connect_unix", net_connect_unix},
                                   {"serve_unix", net_serve_unix},
                                   {NULL, NULL}};
  tulua__stream_register(L, TULUA_PIPE, NULL);
  luaL_setfuncs(L, funcs, 0);
}
