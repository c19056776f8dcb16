/* pipe.c: uv_pipe_t as unix-domain-socket streams and servers, in the
 * module 'tulua.net' (net.connect_unix, net.serve_unix); pipe streams also
 * carry subprocess stdio (process.c). */
#include <stdlib.h>
#include <string.h>
#include <sys/un.h>

#include "stream.h"

#define BACKLOG 511

/* Returns the path argument of connect_unix or serve_unix and checks that
 * it fits in a sockaddr_un: libuv cuts a longer one short, which would bind
 * or reach another socket, so *rc is UV_ENAMETOOLONG then (else 0). An
 * empty path raises: Linux would give the socket an abstract name, which
 * has no file and so no permissions. [-0, +0, v] */
static const char *check_socket_path(lua_State *L, int *rc) {
  size_t len;
  const char *path = tulua__check_path(L, 1, &len);
  luaL_argcheck(L, len > 0, 1, "empty path");
  *rc = len >= sizeof(((struct sockaddr_un *)NULL)->sun_path) ? UV_ENAMETOOLONG
                                                              : 0;
  return path;
}

typedef struct {
  uv_connect_t req;
  tulua__waiter w;
  tulua__stream *box; /* owned until delivered */
  int status;
  unsigned char done, gone;
} pipe_connect_op;

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

/* net.connect_unix(path) -> pipe stream | nil, msg, code */
static int net_connect_unix(lua_State *L) {
  int rc;
  const char *path = check_socket_path(L, &rc);
  tulua__check_wait(L, "net.connect_unix");
  if (rc < 0) return push_fail(L, path, rc);
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
  return tulua__wait(L, &op->w, pipe_connect_deliver, pipe_connect_cancel, op);
}

/* net.serve_unix(path, handler [, {backlog=}]) -> server | nil, msg, code */
static int net_serve_unix(lua_State *L) {
  int rc;
  const char *path = check_socket_path(L, &rc);
  luaL_checktype(L, 2, LUA_TFUNCTION);
  static const char *const options[] = {"backlog", NULL};
  int backlog = BACKLOG;
  if (tulua__check_options(L, 3, options)) {
    lua_Number b = tulua__opt_field_number(L, 3, "backlog", BACKLOG);
    luaL_argcheck(L, b >= 1 && b <= 0x7fffffff && b == (int)b, 3,
                  "'backlog' must be a positive integer");
    backlog = (int)b;
  }
  if (rc < 0) return push_fail(L, path, rc);
  tulua__server *srv = tulua__server_new(L, TULUA_PIPE, 2);
  uv_pipe_t *pipe = (uv_pipe_t *)tulua__server_handle(srv);
  rc = uv_pipe_init(tulua__loop(L), pipe, 0);
  if (rc == 0) {
    tulua__server_ready(srv);
    rc = uv_pipe_bind(pipe, path);
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
