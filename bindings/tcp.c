/* tcp.c: uv_tcp_t as tcp streams and servers; backs the module 'tulua.net'
 * (which also gathers pipe.c's unix-socket functions and the dns and udp
 * modules).
 *
 * connect resolves the host (uv_getaddrinfo), then tries its addresses in
 * order, each on a fresh socket, until one connects, all within the
 * optional timeout. Its op owns the socket being connected until the task
 * wraps it in a stream object; the op lives until its last libuv callback
 * (pending counts them) and until it is delivered or its task gone. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tls.h"

#define BACKLOG 511 /* the most Linux takes by default (somaxconn 4096) */

/* Pushes the host and port of a socket address. [-0, +2, m] */
static int push_addr(lua_State *L, const struct sockaddr_storage *ss) {
  char host[INET6_ADDRSTRLEN] = "";
  int port = 0;
  if (ss->ss_family == AF_INET6) {
    const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)ss;
    uv_ip6_name(a, host, sizeof host);
    port = ntohs(a->sin6_port);
  } else if (ss->ss_family == AF_INET) {
    const struct sockaddr_in *a = (const struct sockaddr_in *)ss;
    uv_ip4_name(a, host, sizeof host);
    port = ntohs(a->sin_port);
  }
  lua_pushstring(L, host);
  lua_pushinteger(L, port);
  return 2;
}

/* Parses a numeric host ("localhost" is 127.0.0.1, "*" any address) and
 * port into ss; returns 0 or a libuv error. */
static int parse_addr(const char *host, int port, struct sockaddr_storage *ss) {
  if (strcmp(host, "localhost") == 0) host = "127.0.0.1";
  if (strcmp(host, "*") == 0) host = "0.0.0.0";
  if (uv_ip4_addr(host, port, (struct sockaddr_in *)ss) == 0) return 0;
  return uv_ip6_addr(host, port, (struct sockaddr_in6 *)ss);
}

/* Writes the subject of messages about host and port into buf:
 * "host:port", or "[host]:port" for an IPv6 address. */
static const char *format_subject(char *buf, size_t size, const char *host,
                                  int port) {
  snprintf(buf, size, strchr(host, ':') ? "[%s]:%d" : "%s:%d", host, port);
  return buf;
}

static int check_port(lua_State *L, int idx) {
  lua_Integer port = luaL_checkinteger(L, idx);
  luaL_argcheck(L, port >= 0 && port <= 65535, idx, "port out of range");
  return (int)port;
}

/* ---- connect ---- */

typedef struct {
  uv_getaddrinfo_t gai;
  uv_connect_t conn;
  uv_timer_t timer;
  tulua__waiter w;
  uv_loop_t *loop;
  tulua__stream *box; /* the socket being connected, or connected */
  char *scratch; /* the runtime's read scratch, for the streams */
  struct addrinfo *res, *next;
  int pending; /* libuv callbacks still to come */
  int status; /* 0 connected, else the error */
  int last_err; /* of the last address tried */
  unsigned char finished, delivered, gone, timer_on;
  char subject[300]; /* "host:port" */
} connect_op;

static void op_unref(connect_op *op) {
  if (--op->pending > 0 || !(op->delivered || op->gone)) return;
  if (op->res) uv_freeaddrinfo(op->res);
  if (op->box && op->status != 0) tulua__stream_discard(op->box);
  free(op);
}

static void timer_close_cb(uv_handle_t *h) {
  op_unref(h->data);
}

/* Ends the connect with status (once): stops the timer, gives up a socket
 * still connecting, wakes the task. */
static void finish(connect_op *op, int status) {
  if (op->finished) return;
  op->finished = 1;
  op->status = status;
  if (op->timer_on) {
    op->timer_on = 0;
    uv_close((uv_handle_t *)&op->timer, timer_close_cb);
  }
  if (status != 0 && op->box != NULL) { /* its connect_cb still comes */
    tulua__stream_discard(op->box);
    op->box = NULL;
  }
  tulua__wake(&op->w);
}

static void connect_cb(uv_connect_t *req, int status);

/* Starts connecting to the next address; finishes when none is left. */
static void try_next(connect_op *op) {
  while (!op->finished && op->next != NULL) {
    struct addrinfo *ai = op->next;
    op->next = ai->ai_next;
    tulua__stream *box = tulua__stream_alloc(op->scratch, TULUA_TCP);
    if (box == NULL) {
      op->last_err = UV_ENOMEM;
      break;
    }
    uv_tcp_t *tcp = (uv_tcp_t *)tulua__stream_handle(box);
    int rc = uv_tcp_init(op->loop, tcp);
    if (rc == 0) {
      tulua__stream_ready(box);
      op->conn.data = op;
      rc = uv_tcp_connect(&op->conn, tcp, ai->ai_addr, connect_cb);
    }
    if (rc == 0) {
      op->box = box;
      op->pending++;
      return;
    }
    op->last_err = rc;
    tulua__stream_discard(box);
  }
  finish(op, op->last_err ? op->last_err : UV_EAI_NONAME);
}

static void connect_cb(uv_connect_t *req, int status) {
  connect_op *op = req->data; /* no Lua API here */
  if (status == 0 && !op->finished) {
    finish(op, 0);
  } else if (!op->finished) {
    op->last_err = status;
    tulua__stream_discard(op->box);
    op->box = NULL;
    try_next(op);
  }
  op_unref(op);
}

static void gai_cb(uv_getaddrinfo_t *req, int status, struct addrinfo *res) {
  connect_op *op = req->data;
  op->res = res;
  if (!op->finished) {
    if (status < 0) {
      finish(op, status);
    } else {
      op->next = res;
      try_next(op);
    }
  }
  op_unref(op);
}

static void timer_cb(uv_timer_t *h) {
  finish(h->data, UV_ETIMEDOUT);
}

static int connect_deliver(lua_State *L, void *ud) {
  connect_op *op = ud;
  int status = op->status;
  char subject[sizeof op->subject];
  memcpy(subject, op->subject, sizeof subject);
  tulua__stream *box = status == 0 ? op->box : NULL;
  op->box = NULL; /* the object owns it from now on */
  op->delivered = 1;
  op->pending++;
  op_unref(op); /* frees it if no callback is left */
  if (status != 0) return push_fail(L, subject, status);
  tulua__stream_push(L, box);
  return 1;
}

/* The task is gone: stop everything; the callbacks free the op. */
static void connect_cancel(void *ud) {
  connect_op *op = ud;
  op->gone = 1;
  uv_cancel((uv_req_t *)&op->gai); /* fails once it runs: fine */
  finish(op, UV_ECANCELED);
}

/* The detail of a wait in connect (tulua --ps): "host:port". */
static int describe_connect(char *buf, size_t size, const void *ud) {
  return snprintf(buf, size, "%s", ((const connect_op *)ud)->subject);
}

/* Connects to host and port (checked) within timeout (0: none): the wait
 * of net.connect. */
static int start_connect(lua_State *L, const char *host, int port,
                         lua_Number timeout) {
  tulua__stream_register(L, TULUA_TCP, NULL);
  connect_op *op = calloc(1, sizeof *op);
  if (op == NULL) return push_fail(L, host, UV_ENOMEM);
  format_subject(op->subject, sizeof op->subject, host, port);
  op->loop = tulua__loop(L);
  op->scratch = tulua__stream_scratch(L);
  op->gai.data = op;
  char service[8];
  snprintf(service, sizeof service, "%d", port);
  struct addrinfo hints;
  memset(&hints, 0, sizeof hints);
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_ADDRCONFIG;
  if (strcmp(host, "localhost") == 0) hints.ai_flags = 0; /* ::1 too */
  int rc = uv_getaddrinfo(op->loop, &op->gai, gai_cb, host, service, &hints);
  if (rc < 0) {
    free(op);
    return push_fail(L, lua_tostring(L, 1), rc);
  }
  op->pending = 1;
  if (timeout > 0) {
    uv_timer_init(op->loop, &op->timer);
    op->timer.data = op;
    uv_timer_start(&op->timer, timer_cb, (uint64_t)(timeout * 1000 + 0.5), 0);
    op->timer_on = 1;
    op->pending++; /* its close callback */
  }
  tulua__wait_detail(L, describe_connect);
  return tulua__wait(L, &op->w, connect_deliver, connect_cancel, op);
}

/* The plain connect of a TLS one, called with (host, port, timeout). */
static int connect_plain(lua_State *L) {
  return start_connect(L, lua_tostring(L, 1), (int)lua_tointeger(L, 2),
                       lua_tonumber(L, 3));
}

/* The stack of a TLS connect: the arguments (1 host, 3 options), the
 * client context, the plain connect's three results, then the
 * handshake's. */
enum { TLS_CTX = 4, TLS_STREAM = 5, TLS_OK = 8 };

static void close_stream(lua_State *L, int idx) {
  lua_getfield(L, idx, "close");
  lua_pushvalue(L, idx);
  lua_call(L, 1, 0);
}

/* After the handshake (or its error: a cancellation) the stream is the
 * caller's, or closed. */
static int handshake_k(lua_State *L, int status, lua_KContext ctx) {
  (void)ctx;
  if (status != LUA_OK && status != LUA_YIELD) {
    close_stream(L, TLS_STREAM);
    return lua_error(L); /* the error object is on top */
  }
  if (lua_toboolean(L, TLS_OK)) {
    lua_pushvalue(L, TLS_STREAM);
    return 1;
  }
  close_stream(L, TLS_STREAM);
  return 3; /* nil, message, code */
}

/* ctx: the deadline of the whole connect in the loop's milliseconds, 0
 * for none; the handshake gets what is left of it. */
static int connected_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status;
  if (lua_isnil(L, TLS_STREAM)) return 3; /* nil, message, code */
  lua_pushcfunction(L, tulua__tls_start);
  lua_pushvalue(L, TLS_STREAM);
  lua_pushvalue(L, TLS_CTX);
  lua_pushvalue(L, 1); /* the server's name, unless the context names one */
  if (ctx == 0) {
    lua_pushnil(L);
  } else {
    uint64_t now = uv_now(tulua__loop(L));
    uint64_t left = (uint64_t)ctx > now ? (uint64_t)ctx - now : 1;
    lua_pushnumber(L, (lua_Number)left / 1000);
  }
  return handshake_k(L, lua_pcallk(L, 4, 3, 0, ctx, handshake_k), ctx);
}

/* net.connect(host, port [, {timeout=, tls=}]) -> tcp stream | nil, msg,
 * code. With tls, the plain connect then the handshake (tls.c), the
 * timeout bounding both. */
static int net_connect(lua_State *L) {
  const char *host = luaL_checkstring(L, 1);
  int port = check_port(L, 2);
  static const char *const options[] = {"timeout", "tls", NULL};
  lua_Number timeout = 0;
  int tls = 0;
  if (tulua__check_options(L, 3, options)) {
    timeout = tulua__opt_field_number(L, 3, "timeout", 0);
    luaL_argcheck(L, timeout >= 0 && timeout == timeout, 3,
                  "'timeout' must be a non-negative number");
    lua_getfield(L, 3, "tls");
    tls = lua_toboolean(L, -1) || lua_istable(L, -1);
    lua_pop(L, 1);
  }
  if (!tls) {
    tulua__check_wait(L, "net.connect");
    return start_connect(L, host, port, timeout);
  }
  lua_settop(L, 3);
  lua_getfield(L, 3, "tls");
  lua_replace(L, 3); /* misuse in it is argument 3's */
  int n = tulua__tls_client_context(L, 3);
  if (n != 1) return n; /* stack: host, port, tls option, context */
  tulua__check_wait(L, "net.connect");
  lua_KContext deadline = 0;
  if (timeout > 0)
    deadline = (lua_KContext)(uv_now(tulua__loop(L)) +
                              (uint64_t)(timeout * 1000 + 0.5));
  lua_pushcfunction(L, connect_plain);
  lua_pushvalue(L, 1);
  lua_pushvalue(L, 2);
  lua_pushnumber(L, timeout);
  lua_callk(L, 3, 3, deadline, connected_k);
  return connected_k(L, LUA_OK, deadline);
}

/* ---- serve ---- */

/* net.serve(host, port, handler [, {backlog=, reuseport=}]) -> server |
 * nil, msg, code. Each connection runs handler(stream) in a task of its
 * own. reuseport sets SO_REUSEPORT, with which several sockets (of this or
 * other processes) listen on one port and the kernel spreads connections
 * among them. */
static int net_serve(lua_State *L) {
  static const char *const options[] = {"backlog", "reuseport", "tls", NULL};
  const char *host = luaL_checkstring(L, 1);
  int port = check_port(L, 2);
  luaL_checktype(L, 3, LUA_TFUNCTION);
  int backlog = BACKLOG, reuseport = 0;
  lua_settop(L, 4);
  lua_pushnil(L); /* 5: the TLS context */
  if (tulua__check_options(L, 4, options)) {
    lua_getfield(L, 4, "reuseport");
    reuseport = lua_toboolean(L, -1);
    lua_pop(L, 1);
    lua_Number b = tulua__opt_field_number(L, 4, "backlog", BACKLOG);
    luaL_argcheck(L, b >= 1 && b <= 0x7fffffff && b == (int)b, 4,
                  "'backlog' must be a positive integer");
    backlog = (int)b;
  }
  if (lua_istable(L, 4) && lua_getfield(L, 4, "tls") != LUA_TNIL &&
      !(lua_isboolean(L, -1) && !lua_toboolean(L, -1))) { /* false: none */
    lua_replace(L, 4); /* misuse in it is argument 4's */
    int n = tulua__tls_server_context(L, 4);
    if (n != 1) return n;
    lua_replace(L, 5);
  }
  struct sockaddr_storage ss;
  int rc = parse_addr(host, port, &ss);
  if (rc < 0)
    return luaL_argerror(L, 1, "numeric address, 'localhost' or '*' expected");
  tulua__stream_register(L, TULUA_TCP, NULL);
  tulua__server *srv = tulua__server_new(L, TULUA_TCP, 3);
  tulua__server_set_context(L, srv, 5);
  uv_tcp_t *tcp = (uv_tcp_t *)tulua__server_handle(srv);
  /* with the family, libuv makes the socket now: SO_REUSEPORT must be on
   * it before the bind */
  rc = uv_tcp_init_ex(tulua__loop(L), tcp, ss.ss_family);
  if (rc == 0) {
    tulua__server_ready(srv);
    if (reuseport) rc = tulua__set_reuseport((uv_handle_t *)tcp);
  }
  if (rc == 0) {
    rc = uv_tcp_bind(tcp, (struct sockaddr *)&ss, 0);
  }
  if (rc == 0) rc = tulua__server_listen(srv, backlog);
  if (rc < 0) {
    char subject[300];
    return push_fail(L, format_subject(subject, sizeof subject, host, port),
                     rc);
  }
  tulua__server_anchor(L, srv);
  return 1;
}

/* ---- methods ---- */

static uv_tcp_t *check_tcp(lua_State *L) {
  tulua__stream *s = tulua__stream_check(L, 1);
  uv_stream_t *h = tulua__stream_handle(s);
  if (h->type != UV_TCP) luaL_typeerror(L, 1, "tcp stream");
  return (uv_tcp_t *)h;
}

static int tcp_local_address(lua_State *L) {
  struct sockaddr_storage ss;
  int len = sizeof ss;
  int rc = uv_tcp_getsockname(check_tcp(L), (struct sockaddr *)&ss, &len);
  if (rc < 0) return push_fail(L, "local_address", rc);
  return push_addr(L, &ss);
}

static int tcp_peer_address(lua_State *L) {
  struct sockaddr_storage ss;
  int len = sizeof ss;
  int rc = uv_tcp_getpeername(check_tcp(L), (struct sockaddr *)&ss, &len);
  if (rc < 0) return push_fail(L, "peer_address", rc);
  return push_addr(L, &ss);
}

static int tcp_set_nodelay(lua_State *L) {
  uv_tcp_t *tcp = check_tcp(L);
  int rc = uv_tcp_nodelay(tcp, lua_toboolean(L, 2));
  if (rc < 0) return push_fail(L, "set_nodelay", rc);
  lua_pushboolean(L, 1);
  return 1;
}

static int tcp_set_keepalive(lua_State *L) {
  uv_tcp_t *tcp = check_tcp(L);
  int on = lua_toboolean(L, 2);
  lua_Integer delay = luaL_optinteger(L, 3, 60);
  luaL_argcheck(L, delay >= 1 && delay <= 0x7fffffff, 3, "delay out of range");
  int rc = uv_tcp_keepalive(tcp, on, (unsigned)delay);
  if (rc < 0) return push_fail(L, "set_keepalive", rc);
  lua_pushboolean(L, 1);
  return 1;
}

static int server_address(lua_State *L) {
  tulua__server *srv = tulua__server_check(L, 1);
  uv_stream_t *h = tulua__server_handle(srv);
  if (h->type == UV_NAMED_PIPE) {
    char path[1024];
    size_t len = sizeof path;
    int rc = uv_pipe_getsockname((uv_pipe_t *)h, path, &len);
    if (rc < 0) return push_fail(L, "address", rc);
    lua_pushlstring(L, path, len);
    return 1;
  }
  struct sockaddr_storage ss;
  int len = sizeof ss;
  int rc = uv_tcp_getsockname((uv_tcp_t *)h, (struct sockaddr *)&ss, &len);
  if (rc < 0) return push_fail(L, "address", rc);
  return push_addr(L, &ss);
}

int luaopen_tulua_net(lua_State *L) {
  static const luaL_Reg tcp_methods[] = {{"local_address", tcp_local_address},
                                         {"peer_address", tcp_peer_address},
                                         {"set_nodelay", tcp_set_nodelay},
                                         {"set_keepalive", tcp_set_keepalive},
                                         {NULL, NULL}};
  static const luaL_Reg server_methods[] = {{"address", server_address},
                                            {NULL, NULL}};
  static const luaL_Reg funcs[] = {
      {"connect", net_connect}, {"serve", net_serve}, {NULL, NULL}};
  tulua__stream_register(L, TULUA_TCP, tcp_methods);
  tulua__server_register(L, server_methods);
  tulua__tls_open(L);
  luaL_newlib(L, funcs);
  tulua__pipe_open(L);
  /* one module for the network: net.dns, net.udp, and the lookups */
  luaL_requiref(L, "tulua.dns", luaopen_tulua_dns, 0);
  lua_getfield(L, -1, "getaddrinfo");
  lua_setfield(L, -3, "getaddrinfo");
  lua_getfield(L, -1, "getnameinfo");
  lua_setfield(L, -3, "getnameinfo");
  lua_setfield(L, -2, "dns");
  luaL_requiref(L, "tulua.udp", luaopen_tulua_udp, 0);
  lua_setfield(L, -2, "udp");
  return 1;
}
