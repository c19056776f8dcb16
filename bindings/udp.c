/* udp.c: uv_udp_t as UDP socket objects; backs the module 'tulua.udp'.
 *
 * Box and lifetime (bindings/README.md): a socket userdata points at a
 * malloc'd udp_box that embeds the uv_udp_t. close(), __close and __gc all
 * come to release(), which sets the userdata's pointer to NULL, wakes the
 * waiting receivers and calls uv_close once; close_cb frees the box. libuv
 * calls back the sends in flight with UV_ECANCELED before close_cb, so no
 * request outlives the box, and no deliver step ever touches the box: the
 * results live in the ops.
 *
 * Receiving: the socket reads only while a task waits in recv_from
 * (uv_udp_recv_start when the first receiver queues, uv_udp_recv_stop when
 * the last one leaves). Waiting receivers form a FIFO in the box; each op
 * carries its own buffer, which alloc_cb hands to libuv for the receiver at
 * the head, so a datagram is read straight into the op of the task that
 * gets it. Datagrams that arrive while nobody waits stay in the kernel's
 * socket receive buffer (bounded by SO_RCVBUF); beyond it the kernel drops
 * them. So the memory this file holds for received data is bounded by the
 * number of waiting tasks times their sizes, and nothing is copied twice.
 *
 * Sending: send_to first tries uv_udp_try_send; only if the kernel cannot
 * take the datagram now (EAGAIN, or earlier sends still queued) does it
 * copy the bytes into an op, queue a uv_udp_send and wait. The copy means
 * a cancelled send needs no Lua to be freed: send_cb frees it.
 *
 * Anchoring: while a task waits on the socket (a receiver queued, or a
 * send in flight), box->ref holds the userdata in the registry. Callbacks
 * and cancel hooks may not use Lua, so when the last waiter leaves they
 * post box->job, which drops the ref at the next drain if still nobody
 * waits; release() takes the job back before the box can be freed. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "queue.h"
#include "common.h"

#define UDP_MT "tulua.udp"

#define MAX_DGRAM   65536 /* more than any UDP payload (65507 over IPv4) */
#define SUBJECT_LEN 64 /* "[" INET6_ADDRSTRLEN "]:65535" */

typedef struct recv_op recv_op;

typedef struct {
  uv_udp_t h;
  tulua_runtime *rt;
  tulua__job job; /* drops ref once nobody waits (posted by callbacks) */
  tulua__queue receivers; /* recv_op.link: tasks in recv_from, oldest
                           * first */
  size_t nsend; /* uv_udp_send requests not yet called back */
  int ref; /* registry ref of the userdata while a task waits */
  unsigned char closing; /* released: callbacks post nothing any more */
} udp_box;

/* A task waiting in recv_from. Queued in its box until a datagram, an
 * error or close() comes; then it owns itself and deliver frees it. */
struct recv_op {
  tulua__waiter w; /* links the op to its task; cleared on cancel */
  udp_box *box; /* while queued */
  tulua__queue link; /* in the box's receivers */
  ssize_t nread; /* bytes received, or a negative libuv code */
  unsigned char closed; /* woken by close() */
  struct sockaddr_storage addr; /* the sender, or the local address */
  size_t max;
  char data[]; /* max bytes, filled by libuv */
};

/* A send that had to wait. Owns itself until send_cb ran. */
typedef struct {
  uv_udp_send_t req;
  tulua__waiter w; /* links the op to its task; cleared on cancel */
  int status;
  char subject[SUBJECT_LEN]; /* the destination, for messages */
  char data[]; /* a copy of the datagram */
} send_op;

/* ---- addresses ---- */

/* Parses a numeric IPv4 or IPv6 address and a port into ss. Returns 0 or
 * UV_EINVAL. No Lua API. */
static int parse_addr(const char *host, int port, struct sockaddr_storage *ss) {
  memset(ss, 0, sizeof *ss);
  if (uv_ip4_addr(host, port, (struct sockaddr_in *)ss) == 0) return 0;
  memset(ss, 0, sizeof *ss);
  if (uv_ip6_addr(host, port, (struct sockaddr_in6 *)ss) == 0) return 0;
  return UV_EINVAL;
}

/* Writes the numeric host of sa into host (INET6_ADDRSTRLEN bytes) and
 * returns the port, or -1 for a family other than inet and inet6. */
static int addr_name(const struct sockaddr *sa, char *host) {
  if (uv_ip_name(sa, host, INET6_ADDRSTRLEN) != 0) return -1;
  if (sa->sa_family == AF_INET)
    return ntohs(((const struct sockaddr_in *)sa)->sin_port);
  return ntohs(((const struct sockaddr_in6 *)sa)->sin6_port);
}

/* Writes "127.0.0.1:53" or "[::1]:53" for sa into buf (SUBJECT_LEN
 * bytes), or "udp socket" for an address of no known family. */
static void addr_subject(const struct sockaddr *sa, char *buf) {
  char host[INET6_ADDRSTRLEN];
  int port = addr_name(sa, host);
  if (port < 0)
    snprintf(buf, SUBJECT_LEN, "udp socket");
  else if (sa->sa_family == AF_INET6)
    snprintf(buf, SUBJECT_LEN, "[%s]:%d", host, port);
  else
    snprintf(buf, SUBJECT_LEN, "%s:%d", host, port);
}

/* Writes the socket's local address as a subject into buf; "udp socket"
 * if it has none (unbound). */
static void local_subject(udp_box *b, char *buf) {
  struct sockaddr_storage ss;
  int len = sizeof ss;
  if (uv_udp_getsockname(&b->h, (struct sockaddr *)&ss, &len) != 0)
    ss.ss_family = AF_UNSPEC;
  addr_subject((struct sockaddr *)&ss, buf);
}

/* Pushes nil, "<local address>: <text>", code for a failure of the
 * socket itself. [-0, +3, m] */
static int push_sock_fail(lua_State *L, udp_box *b, int rc) {
  char subject[SUBJECT_LEN];
  local_subject(b, subject);
  return push_fail(L, subject, rc);
}

/* The result of every wait that close() ends. [-0, +3, m] */
static int push_closed(lua_State *L) {
  lua_pushnil(L);
  lua_pushliteral(L, "udp socket closed");
  lua_pushliteral(L, "ECANCELED");
  return 3;
}

static lua_Integer check_port(lua_State *L, int idx) {
  lua_Integer port = luaL_checkinteger(L, idx);
  luaL_argcheck(L, port >= 0 && port <= 65535, idx, "port out of range");
  return port;
}

/* Reads the numeric address at idx and the port at idx + 1 into ss;
 * raises on a name or a malformed address. */
static void check_addr(lua_State *L, int idx, struct sockaddr_storage *ss) {
  const char *host = luaL_checkstring(L, idx);
  int port = (int)check_port(L, idx + 1);
  if (parse_addr(host, port, ss) != 0)
    luaL_argerror(L, idx, lua_pushfstring(L, "invalid IP address '%s'", host));
}

/* ---- the box: anchor, release ---- */

static void close_cb(uv_handle_t *h) {
  free(h->data);
}

static udp_box *check_udp(lua_State *L) {
  udp_box **p = luaL_checkudata(L, 1, UDP_MT);
  if (*p == NULL) luaL_error(L, "attempt to use a closed udp socket");
  return *p;
}

static int nobody_waits(const udp_box *b) {
  return tulua__queue_empty(&b->receivers) && b->nsend == 0;
}

/* Holds the userdata at 1 while a task waits on it. [-0, +0, m] */
static void anchor(lua_State *L, udp_box *b) {
  if (b->ref != LUA_NOREF) return;
  lua_pushvalue(L, 1);
  b->ref = luaL_ref(L, LUA_REGISTRYINDEX);
}

static void unanchor(lua_State *L, udp_box *b) {
  if (b->ref == LUA_NOREF) return;
  luaL_unref(L, LUA_REGISTRYINDEX, b->ref);
  b->ref = LUA_NOREF;
}

/* The job: the last waiter left (callback side); still nobody waits? */
static void unanchor_job(lua_State *L, tulua__job *job) {
  udp_box *b = tulua__container_of(job, udp_box, job);
  if (nobody_waits(b)) unanchor(L, b);
}

/* Callback side of unanchor: no Lua API. */
static void maybe_unanchor_later(udp_box *b) {
  if (!b->closing && nobody_waits(b) && b->ref != LUA_NOREF)
    tulua__post(b->rt, &b->job);
}

/* Returns the receiver that gets the next datagram, or NULL. */
static recv_op *first_receiver(udp_box *b) {
  tulua__queue *q = tulua__queue_head(&b->receivers);
  return q != NULL ? tulua__container_of(q, recv_op, link) : NULL;
}

static void queue_unlink(recv_op *op) {
  tulua__queue_remove(&op->link);
  op->box = NULL;
}

/* Closes the socket of the userdata p once: waiting receivers get
 * nil, "udp socket closed", "ECANCELED" (sends in flight get it from
 * libuv's callbacks), and close_cb frees the box. */
static void release(lua_State *L, udp_box **p) {
  udp_box *b = *p;
  if (b == NULL) return; /* closed already */
  *p = NULL;
  b->closing = 1;
  tulua__unpost(b->rt, &b->job);
  unanchor(L, b);
  recv_op *op;
  while ((op = first_receiver(b)) != NULL) {
    queue_unlink(op);
    op->closed = 1;
    if (!tulua__wake(&op->w)) free(op); /* task gone: we are the owner */
  }
  uv_close((uv_handle_t *)&b->h, close_cb);
}

/* Pushes a socket userdata and initialises a box for it (AF_UNSPEC: the
 * socket is created when first bound or used). Returns the box, or NULL
 * with *rc set; the userdata is pushed either way and, on failure, stays
 * closed. [-0, +1, m] */
static udp_box *new_udp(lua_State *L, int family, int *rc) {
  udp_box **p = lua_newuserdatauv(L, sizeof *p, 0);
  *p = NULL;
  luaL_setmetatable(L, UDP_MT);
  udp_box *b = calloc(1, sizeof *b);
  if (b == NULL) {
    *rc = UV_ENOMEM;
    return NULL;
  }
  b->rt = tulua__runtime(L);
  b->ref = LUA_NOREF;
  b->job.run = unanchor_job;
  tulua__queue_init(&b->receivers);
  *rc = uv_udp_init_ex(tulua__loop(L), &b->h, (unsigned)family);
  if (*rc < 0) { /* the handle was not initialised: nothing to close */
    free(b);
    return NULL;
  }
  b->h.data = b;
  *p = b;
  return b;
}

/* ---- udp.new, udp.bind ---- */

/* udp.new([family]) -> socket | nil, message, code: an unbound socket,
 * "inet" or "inet6" (created now), or of either family (nil: created when
 * first used, by send_to or recv_from, which bind it to the wildcard
 * address of the destination's family and a free port). Raises on another
 * family. */
static int udp_new(lua_State *L) {
  static const char *const names[] = {"inet", "inet6", NULL};
  static const int families[] = {AF_INET, AF_INET6};
  int family = AF_UNSPEC, rc;
  if (!lua_isnoneornil(L, 1))
    family = families[luaL_checkoption(L, 1, NULL, names)];
  if (new_udp(L, family, &rc) == NULL) return push_fail(L, "udp socket", rc);
  return 1;
}

/* udp.bind(host, port [, options]) -> socket | nil, message, code: a
 * socket bound to a numeric address and a port (0: any free port; see
 * local_address). options: reuseaddr (SO_REUSEADDR: several sockets may
 * bind the same address and port), ipv6only (an IPv6 socket that does not
 * take IPv4 datagrams), reuseport (SO_REUSEPORT: several sockets, of any
 * process of the same user, share the port, and the kernel spreads the
 * datagrams among them); any other key raises. Failures name "host:port":
 * EADDRINUSE, EADDRNOTAVAIL. Raises on a host name (resolve it with tulua.dns),
 * a port outside 0..65535, or ipv6only with an IPv4 host. */
static int udp_bind(lua_State *L) {
  struct sockaddr_storage ss;
  char subject[SUBJECT_LEN];
  unsigned flags = 0;
  int rc;
  static const char *const options[] = {"reuseaddr", "ipv6only", "reuseport",
                                        NULL};
  int reuseport = 0;
  check_addr(L, 1, &ss);
  if (tulua__check_options(L, 3, options)) {
    lua_getfield(L, 3, "reuseaddr");
    if (lua_toboolean(L, -1)) flags |= UV_UDP_REUSEADDR;
    lua_getfield(L, 3, "ipv6only");
    if (lua_toboolean(L, -1)) flags |= UV_UDP_IPV6ONLY;
    lua_getfield(L, 3, "reuseport");
    reuseport = lua_toboolean(L, -1);
    lua_pop(L, 3);
  }
  luaL_argcheck(L, !(flags & UV_UDP_IPV6ONLY) || ss.ss_family == AF_INET6, 3,
                "ipv6only needs an IPv6 address");
  addr_subject((struct sockaddr *)&ss, subject);
  lua_settop(L, 3);
  udp_box *b = new_udp(L, ss.ss_family, &rc); /* 4 */
  if (b == NULL) return push_fail(L, subject, rc);
  rc = reuseport ? tulua__set_reuseport((uv_handle_t *)&b->h) : 0;
  if (rc == 0) rc = uv_udp_bind(&b->h, (struct sockaddr *)&ss, flags);
  if (rc < 0) {
    release(L, lua_touserdata(L, 4));
    return push_fail(L, subject, rc);
  }
  return 1;
}

/* ---- sock:send_to ---- */

static int send_deliver(lua_State *L, void *ud) { /* in the task */
  send_op *op = ud;
  char subject[SUBJECT_LEN];
  int status = op->status;
  memcpy(subject, op->subject, sizeof subject);
  free(op); /* before any push: pushing may raise */
  if (status == UV_ECANCELED) return push_closed(L);
  if (status < 0) return push_fail(L, subject, status);
  lua_pushboolean(L, 1);
  return 1;
}

static void send_cb(uv_udp_send_t *req, int status) { /* no Lua API here */
  send_op *op = req->data;
  udp_box *b = req->handle->data; /* freed only in close_cb, after us */
  b->nsend--;
  op->status = status;
  maybe_unanchor_later(b);
  if (!tulua__wake(&op->w)) free(op); /* task gone: we are the owner */
}

/* The detail of a wait in send_to (tulua --ps): the destination. */
static int describe_send(char *buf, size_t size, const void *ud) {
  return snprintf(buf, size, "%s", ((const send_op *)ud)->subject);
}

/* sock:send_to(data, host, port) -> true | nil, message, code: sends data
 * as one datagram to a numeric address and port, waiting until the kernel
 * has taken it (at once, unless its buffer is full). A socket without an
 * address is first bound to the wildcard address and a free port.
 * Failures name "host:port": EMSGSIZE (more than 65507 bytes over IPv4),
 * EAFNOSUPPORT or EINVAL (a destination of the other family), EACCES (a
 * broadcast address without set_broadcast(true)); nil, "udp socket
 * closed", "ECANCELED" if the socket is closed meanwhile. A cancelled task
 * leaves the datagram queued: it may still be sent. Raises on a host name
 * (resolve it with tulua.dns) or a port outside 0..65535. */
static int udp_send_to(lua_State *L) {
  udp_box *b = check_udp(L);
  size_t len;
  const char *data = luaL_checklstring(L, 2, &len);
  struct sockaddr_storage ss;
  check_addr(L, 3, &ss);
  tulua__check_wait(L, "udp.send_to"); /* raises outside a task */
  char subject[SUBJECT_LEN];
  addr_subject((struct sockaddr *)&ss, subject);
  if (len > UINT32_MAX) return push_fail(L, subject, UV_EMSGSIZE);
  uv_buf_t buf = uv_buf_init((char *)data, (unsigned)len);
  int rc = uv_udp_try_send(&b->h, &buf, 1, (struct sockaddr *)&ss);
  if (rc >= 0) { /* the result is there: no wait */
    lua_pushboolean(L, 1);
    return 1;
  }
  if (rc != UV_EAGAIN) return push_fail(L, subject, rc);
  anchor(L, b);
  send_op *op = malloc(sizeof *op + len); /* a copy: nothing to anchor */
  if (op == NULL) {
    if (nobody_waits(b)) unanchor(L, b);
    return push_fail(L, subject, UV_ENOMEM);
  }
  memcpy(op->data, data, len);
  memcpy(op->subject, subject, sizeof subject);
  op->req.data = op;
  buf = uv_buf_init(op->data, (unsigned)len);
  rc = uv_udp_send(&op->req, &b->h, &buf, 1, (struct sockaddr *)&ss, send_cb);
  if (rc < 0) { /* libuv will not call back */
    free(op);
    if (nobody_waits(b)) unanchor(L, b);
    return push_fail(L, subject, rc);
  }
  b->nsend++;
  /* no cancel hook: a queued datagram cannot be taken back; send_cb comes
   * and frees the op */
  tulua__wait_detail(L, describe_send);
  return tulua__wait(L, &op->w, send_deliver, NULL, op);
}

/* ---- sock:recv_from ---- */

static int recv_deliver(lua_State *L, void *ud) { /* in the task */
  recv_op *op = ud;
  char host[INET6_ADDRSTRLEN];
  if (op->closed) {
    free(op);
    return push_closed(L);
  }
  if (op->nread < 0) {
    char subject[SUBJECT_LEN];
    int rc = (int)op->nread;
    addr_subject((struct sockaddr *)&op->addr, subject);
    free(op);
    return push_fail(L, subject, rc);
  }
  int port = addr_name((struct sockaddr *)&op->addr, host);
  /* the bytes must exist while Lua copies them: push under lua_pcall so
   * that op is freed even if the push fails */
  tulua__lstr a = {op->data, (size_t)op->nread};
  lua_pushcfunction(L, tulua__push_lstr);
  lua_pushlightuserdata(L, &a);
  int st = lua_pcall(L, 1, 1, 0);
  free(op);
  if (st != LUA_OK) return lua_error(L);
  lua_pushstring(L, host);
  lua_pushinteger(L, port);
  return 3;
}

/* Lends the buffer of the receiver at the head of the queue: the datagram
 * is read straight into it. No Lua API. */
static void alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  udp_box *b = h->data;
  (void)suggested;
  recv_op *op = first_receiver(b);
  if (op == NULL) { /* not reached: reading implies a receiver */
    *buf = uv_buf_init(NULL, 0); /* recv_cb gets UV_ENOBUFS */
    return;
  }
  *buf = uv_buf_init(op->data, (unsigned)op->max);
}

static void recv_cb(uv_udp_t *h, ssize_t nread, const uv_buf_t *buf,
                    const struct sockaddr *addr,
                    unsigned flags) { /* no Lua API here */
  udp_box *b = h->data;
  recv_op *op = first_receiver(b);
  (void)buf; /* op->data: alloc_cb lent it */
  (void)flags; /* UV_UDP_PARTIAL: truncated to max, as recvfrom(2) does */
  if (op == NULL) return;
  if (nread == 0 && addr == NULL) return; /* nothing to read after all */
  queue_unlink(op);
  op->nread = nread;
  if (nread >= 0) {
    memcpy(&op->addr, addr,
           addr->sa_family == AF_INET6 ? sizeof(struct sockaddr_in6)
                                       : sizeof(struct sockaddr_in));
  } else { /* the message names the socket itself */
    int len = sizeof op->addr;
    if (uv_udp_getsockname(h, (struct sockaddr *)&op->addr, &len) != 0)
      op->addr.ss_family = AF_UNSPEC;
  }
  if (tulua__queue_empty(&b->receivers)) {
    /* nobody else waits: leave datagrams queued in the kernel */
    uv_udp_recv_stop(h);
    maybe_unanchor_later(b);
  }
  if (!tulua__wake(&op->w)) free(op); /* task gone: we are the owner */
}

/* The cancel hook of recv_from: the op is still queued (a receiver that
 * got its datagram is woken, and a woken task is not cancelled in its
 * wait). No libuv callback will come for it, so this frees it, as
 * join_cancel does for joins. */
static void recv_cancel(void *ud) {
  recv_op *op = ud;
  udp_box *b = op->box;
  if (b != NULL) {
    queue_unlink(op);
    if (tulua__queue_empty(&b->receivers)) {
      uv_udp_recv_stop(&b->h);
      maybe_unanchor_later(b);
    }
  }
  free(op);
}

/* The detail of a wait in recv_from (tulua --ps): the local address. */
static int describe_recv(char *buf, size_t size, const void *ud) {
  const recv_op *op = ud;
  struct sockaddr_storage ss;
  int len = sizeof ss;
  buf[0] = '\0';
  if (uv_udp_getsockname(&op->box->h, (struct sockaddr *)&ss, &len) != 0)
    return 0;
  return tulua__format_sockaddr(buf, size, (struct sockaddr *)&ss);
}

/* sock:recv_from([max]) -> data, host, port | nil, message, code: waits
 * for the next datagram (binary-safe, possibly empty) and returns it with
 * the sender's numeric address and port. A datagram longer than max
 * (default and limit 65536) is cut to max bytes; the rest is lost, as with
 * recvfrom(2). Several tasks may wait: datagrams go to them in the order
 * they called. The socket reads only while a task waits; meanwhile
 * datagrams wait in the kernel's receive buffer, which drops them once it
 * is full. An unbound socket is first bound to the wildcard address.
 * Returns nil, "udp socket closed", "ECANCELED" if the socket is closed
 * meanwhile. Raises unless max is a positive integer. */
static int udp_recv_from(lua_State *L) {
  udp_box *b = check_udp(L);
  lua_Integer max = luaL_optinteger(L, 2, MAX_DGRAM);
  luaL_argcheck(L, max > 0, 2, "size must be positive");
  if (max > MAX_DGRAM) max = MAX_DGRAM;
  tulua__check_wait(L, "udp.recv_from"); /* raises outside a task */
  anchor(L, b);
  recv_op *op = malloc(sizeof *op + (size_t)max);
  if (op == NULL) {
    if (nobody_waits(b)) unanchor(L, b);
    return push_sock_fail(L, b, UV_ENOMEM);
  }
  memset(op, 0, sizeof *op);
  op->max = (size_t)max;
  if (tulua__queue_empty(&b->receivers)) { /* not reading yet */
    int rc = uv_udp_recv_start(&b->h, alloc_cb, recv_cb);
    if (rc < 0) { /* libuv will not call back */
      free(op);
      if (nobody_waits(b)) unanchor(L, b);
      return push_sock_fail(L, b, rc);
    }
  }
  op->box = b;
  tulua__queue_insert_tail(&b->receivers, &op->link);
  tulua__wait_detail(L, describe_recv);
  return tulua__wait(L, &op->w, recv_deliver, recv_cancel, op);
}

/* ---- options and addresses ---- */

/* sock:local_address() -> host, port | nil, message, code: the address the
 * socket is bound to (EBADF for a socket of no family not yet used). */
static int udp_local_address(lua_State *L) {
  udp_box *b = check_udp(L);
  struct sockaddr_storage ss;
  char host[INET6_ADDRSTRLEN];
  int len = sizeof ss;
  int rc = uv_udp_getsockname(&b->h, (struct sockaddr *)&ss, &len);
  if (rc < 0) return push_sock_fail(L, b, rc);
  int port = addr_name((struct sockaddr *)&ss, host);
  if (port < 0) return push_sock_fail(L, b, UV_EAFNOSUPPORT);
  lua_pushstring(L, host);
  lua_pushinteger(L, port);
  return 2;
}

/* Returns true, or nil, message, code for the libuv result rc. */
static int push_result(lua_State *L, udp_box *b, int rc) {
  if (rc < 0) return push_sock_fail(L, b, rc);
  lua_pushboolean(L, 1);
  return 1;
}

/* sock:set_broadcast(on) -> true | nil, message, code: SO_BROADCAST, which
 * sending to a broadcast address needs. */
static int udp_set_broadcast(lua_State *L) {
  udp_box *b = check_udp(L);
  luaL_checktype(L, 2, LUA_TBOOLEAN);
  return push_result(L, b, uv_udp_set_broadcast(&b->h, lua_toboolean(L, 2)));
}

/* sock:set_multicast_loop(on) -> true | nil, message, code: whether this
 * host's own multicast datagrams come back to it. */
static int udp_set_multicast_loop(lua_State *L) {
  udp_box *b = check_udp(L);
  luaL_checktype(L, 2, LUA_TBOOLEAN);
  return push_result(L, b,
                     uv_udp_set_multicast_loop(&b->h, lua_toboolean(L, 2)));
}

/* sock:set_multicast_ttl(n) -> true | nil, message, code: how many routers
 * a multicast datagram may cross (0..255; 0: this host only). */
static int udp_set_multicast_ttl(lua_State *L) {
  udp_box *b = check_udp(L);
  lua_Integer ttl = luaL_checkinteger(L, 2);
  luaL_argcheck(L, ttl >= 0 && ttl <= 255, 2, "ttl out of range");
  return push_result(L, b, uv_udp_set_multicast_ttl(&b->h, (int)ttl));
}

/* Checks a numeric address at idx (nil allowed if optional). */
static const char *check_ip(lua_State *L, int idx, int optional) {
  struct sockaddr_storage ss;
  if (optional && lua_isnoneornil(L, idx)) return NULL;
  const char *s = luaL_checkstring(L, idx);
  if (parse_addr(s, 0, &ss) != 0)
    luaL_argerror(L, idx, lua_pushfstring(L, "invalid IP address '%s'", s));
  return s;
}

static int membership(lua_State *L, uv_membership how) {
  udp_box *b = check_udp(L);
  const char *group = check_ip(L, 2, 0);
  const char *iface = check_ip(L, 3, 1);
  int rc = uv_udp_set_membership(&b->h, group, iface, how);
  if (rc < 0) return push_fail(L, group, rc);
  lua_pushboolean(L, 1);
  return 1;
}

/* sock:join_group(group [, iface]) -> true | nil, message, code: joins a
 * multicast group (numeric address) on the interface with the numeric
 * address iface (default: the system's choice). An unbound socket is
 * first bound to the wildcard address. Failures name the group: EINVAL
 * (not a multicast address, or of the other family), ENODEV (no such
 * interface), EADDRINUSE (joined already). */
static int udp_join_group(lua_State *L) {
  return membership(L, UV_JOIN_GROUP);
}

/* sock:leave_group(group [, iface]) -> true | nil, message, code: leaves a
 * group joined with join_group (EADDRNOTAVAIL if it was not joined). */
static int udp_leave_group(lua_State *L) {
  return membership(L, UV_LEAVE_GROUP);
}

/* ---- close, __gc, __tostring ---- */

/* sock:close(): closes the socket; tasks waiting on it get nil, "udp
 * socket closed", "ECANCELED". A second close does nothing. Also __close
 * and __gc. */
static int udp_close(lua_State *L) {
  release(L, luaL_checkudata(L, 1, UDP_MT));
  return 0;
}

static int udp_tostring(lua_State *L) {
  udp_box **p = luaL_checkudata(L, 1, UDP_MT);
  struct sockaddr_storage ss;
  char subject[SUBJECT_LEN];
  int len = sizeof ss;
  if (*p == NULL) /* as liolib's "file (closed)" */
    lua_pushliteral(L, "udp socket (closed)");
  else if (uv_udp_getsockname(&(*p)->h, (struct sockaddr *)&ss, &len) != 0)
    lua_pushliteral(L, "udp socket (unbound)");
  else {
    addr_subject((struct sockaddr *)&ss, subject);
    lua_pushfstring(L, "udp socket (%s)", subject);
  }
  return 1;
}

int luaopen_tulua_udp(lua_State *L) {
  static const luaL_Reg methods[] = {
      {"send_to", udp_send_to},
      {"recv_from", udp_recv_from},
      {"local_address", udp_local_address},
      {"set_broadcast", udp_set_broadcast},
      {"set_multicast_loop", udp_set_multicast_loop},
      {"set_multicast_ttl", udp_set_multicast_ttl},
      {"join_group", udp_join_group},
      {"leave_group", udp_leave_group},
      {"close", udp_close},
      {NULL, NULL}};
  static const luaL_Reg meta[] = {{"__gc", udp_close},
                                  {"__close", udp_close},
                                  {"__tostring", udp_tostring},
                                  {NULL, NULL}};
  static const luaL_Reg funcs[] = {
      {"bind", udp_bind}, {"new", udp_new}, {NULL, NULL}};
  tulua__new_class(L, UDP_MT, meta, methods);
  luaL_newlib(L, funcs);
  return 1;
}
