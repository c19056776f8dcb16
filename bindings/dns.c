/* dns.c: uv_getaddrinfo_t and uv_getnameinfo_t requests on libuv's thread
 * pool; backs the module 'tulua.dns'.
 *
 * Both functions wait (bindings/README.md, step by step): they check their
 * arguments, malloc one op embedding the libuv request and the waiter,
 * start the request and suspend the task. The callback calls no Lua API;
 * the deliver step, in the task, turns the result into Lua values.
 *
 * Ownership: an op owns itself until its callback ran; then, if a task
 * still waits, that task frees it in deliver, else the callback frees it
 * (and the addrinfo list libuv handed over). libuv copies the host and
 * service strings into the request, so nothing is anchored in the
 * registry. A cancelled request whose lookup has started cannot be stopped:
 * the lookup runs to its end on the pool and its callback frees the op. */
#include <arpa/inet.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "common.h"

/* ---- dns.getaddrinfo ---- */

typedef struct {
  uv_getaddrinfo_t req;
  tulua__waiter w; /* links the op to its task; cleared on cancel */
  int status;
  struct addrinfo *res; /* libuv's list, ours once the callback ran */
  const char *name; /* the host (or service) asked for: on the waiting
                       frame's stack */
} addrinfo_op;

/* The detail of a lookup's wait (tulua --ps): the name looked up. */
static int describe_addrinfo(char *buf, size_t size, const void *ud) {
  return snprintf(buf, size, "%s", ((const addrinfo_op *)ud)->name);
}

static const char *socktype_name(int socktype) {
  switch (socktype) {
    case SOCK_STREAM:
      return "stream";
    case SOCK_DGRAM:
      return "dgram";
    case SOCK_RAW:
      return "raw";
    case SOCK_SEQPACKET:
      return "seqpacket";
    default:
      return "unknown";
  }
}

/* Pushes the list of {family=, addr=, port=, socktype=, protocol=} for
 * the addrinfo list at argument 1 (a light userdata). Runs under
 * lua_pcall, so that the list is freed even if a push fails. Entries of
 * families other than inet and inet6 are left out. */
static int push_addrinfo(lua_State *L) {
  const struct addrinfo *ai = lua_touserdata(L, 1);
  lua_Integer n = 0;
  lua_newtable(L);
  for (; ai != NULL; ai = ai->ai_next) {
    char host[INET6_ADDRSTRLEN];
    int port;
    if (ai->ai_family == AF_INET) {
      const struct sockaddr_in *sin = (const void *)ai->ai_addr;
      uv_ip4_name(sin, host, sizeof host);
      port = ntohs(sin->sin_port);
    } else if (ai->ai_family == AF_INET6) {
      const struct sockaddr_in6 *sin6 = (const void *)ai->ai_addr;
      uv_ip6_name(sin6, host, sizeof host);
      port = ntohs(sin6->sin6_port);
    } else {
      continue;
    }
    lua_createtable(L, 0, 5);
    lua_pushstring(L, ai->ai_family == AF_INET ? "inet" : "inet6");
    lua_setfield(L, -2, "family");
    lua_pushstring(L, host);
    lua_setfield(L, -2, "addr");
    lua_pushinteger(L, port);
    lua_setfield(L, -2, "port");
    lua_pushstring(L, socktype_name(ai->ai_socktype));
    lua_setfield(L, -2, "socktype");
    lua_pushinteger(L, ai->ai_protocol);
    lua_setfield(L, -2, "protocol");
    lua_rawseti(L, -2, ++n);
  }
  return 1;
}

/* The subject of a failure: the host, else the port or service (arg 2).
 * NULL when the stack is empty (shutdown drops the results anyway). */
static const char *addrinfo_subject(lua_State *L) {
  if (lua_type(L, 1) == LUA_TSTRING) return lua_tostring(L, 1);
  if (lua_type(L, 2) == LUA_TSTRING || lua_type(L, 2) == LUA_TNUMBER)
    return lua_tostring(L, 2); /* a number becomes a string in place */
  return NULL;
}

static int addrinfo_deliver(lua_State *L, void *ud) { /* in the task */
  addrinfo_op *op = ud;
  int status = op->status;
  struct addrinfo *res = op->res;
  free(op); /* before any push: pushing may raise */
  if (status < 0) {
    uv_freeaddrinfo(res); /* NULL on failure: a no-op */
    return push_fail(L, addrinfo_subject(L), status);
  }
  lua_pushcfunction(L, push_addrinfo);
  lua_pushlightuserdata(L, res);
  int st = lua_pcall(L, 1, 1, 0);
  uv_freeaddrinfo(res);
  if (st != LUA_OK) return lua_error(L);
  return 1;
}

static void addrinfo_cb(uv_getaddrinfo_t *req, int status,
                        struct addrinfo *res) { /* no Lua API here */
  addrinfo_op *op = req->data;
  op->status = status;
  op->res = res;
  if (!tulua__wake(&op->w)) { /* task gone: we are the last owner */
    uv_freeaddrinfo(res);
    free(op);
  }
}

static void addrinfo_cancel(void *ud) { /* addrinfo_cb still comes later */
  uv_cancel((uv_req_t *)&((addrinfo_op *)ud)->req); /* fails once running */
}

/* Reads the field of the options table at idx as one of names; returns
 * its position, or -1 if the field is nil. Raises on any other value. */
static int opt_name_field(lua_State *L, int idx, const char *field,
                          const char *const names[]) {
  int pos = -1;
  if (lua_getfield(L, idx, field) == LUA_TNIL) {
    lua_pop(L, 1);
    return -1;
  }
  for (int i = 0; lua_type(L, -1) == LUA_TSTRING && names[i] != NULL; i++)
    if (strcmp(lua_tostring(L, -1), names[i]) == 0) pos = i;
  if (pos < 0)
    luaL_argerror(L, idx,
                  lua_pushfstring(L, "invalid %s '%s'", field,
                                  luaL_tolstring(L, -1, NULL)));
  lua_pop(L, 1);
  return pos;
}

/* Fills hints from the options table at idx (nil: none). Raises on a bad
 * field. */
static void check_hints(lua_State *L, int idx, struct addrinfo *hints) {
  static const char *const families[] = {"inet", "inet6", NULL};
  static const char *const socktypes[] = {"stream", "dgram", NULL};
  memset(hints, 0, sizeof *hints);
  hints->ai_family = AF_UNSPEC;
  if (lua_isnoneornil(L, idx)) return;
  luaL_checktype(L, idx, LUA_TTABLE);
  int f = opt_name_field(L, idx, "family", families);
  if (f >= 0) hints->ai_family = f == 0 ? AF_INET : AF_INET6;
  int s = opt_name_field(L, idx, "socktype", socktypes);
  if (s >= 0) hints->ai_socktype = s == 0 ? SOCK_STREAM : SOCK_DGRAM;
  lua_getfield(L, idx, "protocol");
  if (!lua_isnil(L, -1)) {
    int isint;
    lua_Integer p = lua_tointegerx(L, -1, &isint);
    luaL_argcheck(L, isint && p >= 0 && p <= 255, idx,
                  "field 'protocol' must be an integer in 0..255");
    hints->ai_protocol = (int)p;
  }
  lua_pop(L, 1);
  lua_getfield(L, idx, "passive");
  if (lua_toboolean(L, -1)) hints->ai_flags |= AI_PASSIVE;
  lua_getfield(L, idx, "numeric_host");
  if (lua_toboolean(L, -1)) hints->ai_flags |= AI_NUMERICHOST;
  lua_pop(L, 2);
}

/* dns.getaddrinfo(host [, port [, options]]) -> list | nil, message, code:
 * resolves host (a name or a numeric address; nil for the loopback, or
 * with passive the wildcard address) and port (an integer, a numeric
 * string or a service name such as "http"; nil for port 0) into a list of
 * {family = "inet"|"inet6", addr = "127.0.0.1", port = 80, socktype =
 * "stream"|"dgram"|"raw", protocol = 6}, in the resolver's order. options:
 * family ("inet" or "inet6"; default both), socktype ("stream" or "dgram";
 * default every type, so each address comes once per type), protocol (an
 * IPPROTO number), passive and numeric_host (booleans: AI_PASSIVE,
 * AI_NUMERICHOST). Failures are "<host>: <text>" with codes such as
 * EAI_NONAME, EAI_SERVICE, EAI_ADDRFAMILY. Raises on bad arguments or
 * when both host and port are nil. */
static int dns_getaddrinfo(lua_State *L) {
  const char *host = luaL_optstring(L, 1, NULL);
  const char *service = NULL;
  char portbuf[8];
  if (lua_type(L, 2) == LUA_TNUMBER) {
    lua_Integer port = luaL_checkinteger(L, 2);
    luaL_argcheck(L, port >= 0 && port <= 65535, 2, "port out of range");
    snprintf(portbuf, sizeof portbuf, "%d", (int)port);
    service = portbuf;
  } else if (lua_type(L, 2) == LUA_TSTRING) {
    service = lua_tostring(L, 2);
  } else if (!lua_isnoneornil(L, 2)) {
    luaL_typeerror(L, 2, "integer or string");
  }
  luaL_argcheck(L, host != NULL || service != NULL, 1, "host or port expected");
  struct addrinfo hints;
  check_hints(L, 3, &hints);
  lua_settop(L, 3);
  tulua__check_wait(L, "dns.getaddrinfo"); /* raises outside a task */
  addrinfo_op *op = malloc(sizeof *op);
  if (op == NULL) return push_fail(L, addrinfo_subject(L), UV_ENOMEM);
  op->req.data = op;
  op->res = NULL;
  int rc = uv_getaddrinfo(tulua__loop(L), &op->req, addrinfo_cb, host, service,
                          &hints);
  if (rc < 0) { /* libuv will not call back */
    free(op);
    return push_fail(L, addrinfo_subject(L), rc);
  }
  op->name = host ? host : service;
  tulua__wait_detail(L, describe_addrinfo);
  return tulua__wait(L, &op->w, addrinfo_deliver, addrinfo_cancel, op);
}

/* ---- dns.getnameinfo ---- */

typedef struct {
  uv_getnameinfo_t req;
  tulua__waiter w; /* links the op to its task; cleared on cancel */
  int status;
  char host[NI_MAXHOST]; /* copied by the callback */
  char service[NI_MAXSERV];
  const char *addr; /* the address asked for: on the waiting frame's stack */
} nameinfo_op;

static int describe_nameinfo(char *buf, size_t size, const void *ud) {
  return snprintf(buf, size, "%s", ((const nameinfo_op *)ud)->addr);
}

static int nameinfo_deliver(lua_State *L, void *ud) { /* in the task */
  nameinfo_op *op = ud;
  char host[NI_MAXHOST], service[NI_MAXSERV];
  int status = op->status;
  memcpy(host, op->host, sizeof host);
  memcpy(service, op->service, sizeof service);
  free(op); /* before any push: pushing may raise */
  if (status < 0)
    return push_fail(
        L, lua_type(L, 1) == LUA_TSTRING ? lua_tostring(L, 1) : NULL, status);
  lua_pushstring(L, host);
  lua_pushstring(L, service);
  return 2;
}

static void nameinfo_cb(uv_getnameinfo_t *req, int status, const char *host,
                        const char *service) { /* no Lua API here */
  nameinfo_op *op = req->data;
  op->status = status;
  if (status == 0) {
    snprintf(op->host, sizeof op->host, "%s", host);
    snprintf(op->service, sizeof op->service, "%s", service);
  }
  if (!tulua__wake(&op->w)) free(op); /* task gone: we are the owner */
}

static void nameinfo_cancel(void *ud) { /* nameinfo_cb still comes later */
  uv_cancel((uv_req_t *)&((nameinfo_op *)ud)->req); /* fails once running */
}

/* dns.getnameinfo(addr [, port]) -> host, service | nil, message, code:
 * the name of a numeric address ("127.0.0.1", "::1") and of a port
 * (default 0), from the hosts file or DNS; an address or port without a
 * name comes back in numeric form. Raises on an address that is not a
 * numeric IPv4 or IPv6 address and on a port outside 0..65535. */
static int dns_getnameinfo(lua_State *L) {
  const char *addr = luaL_checkstring(L, 1);
  lua_Integer port = luaL_optinteger(L, 2, 0);
  luaL_argcheck(L, port >= 0 && port <= 65535, 2, "port out of range");
  struct sockaddr_storage ss;
  if (uv_ip4_addr(addr, (int)port, (struct sockaddr_in *)&ss) != 0 &&
      uv_ip6_addr(addr, (int)port, (struct sockaddr_in6 *)&ss) != 0)
    return luaL_argerror(L, 1,
                         lua_pushfstring(L, "invalid IP address '%s'", addr));
  lua_settop(L, 2);
  tulua__check_wait(L, "dns.getnameinfo"); /* raises outside a task */
  nameinfo_op *op = malloc(sizeof *op);
  if (op == NULL) return push_fail(L, addr, UV_ENOMEM);
  op->req.data = op;
  int rc = uv_getnameinfo(tulua__loop(L), &op->req, nameinfo_cb,
                          (const struct sockaddr *)&ss, 0);
  if (rc < 0) { /* libuv will not call back */
    free(op);
    return push_fail(L, addr, rc);
  }
  op->addr = addr;
  tulua__wait_detail(L, describe_nameinfo);
  return tulua__wait(L, &op->w, nameinfo_deliver, nameinfo_cancel, op);
}

int luaopen_tulua_dns(lua_State *L) {
  static const luaL_Reg funcs[] = {{"getaddrinfo", dns_getaddrinfo},
                                   {"getnameinfo", dns_getnameinfo},
                                   {NULL, NULL}};
  luaL_newlib(L, funcs);
  return 1;
}
