/* tls.c: TLS with OpenSSL 3 over in-memory BIOs on top of stream.c's streams:
 * the module 'tulua.tls' (contexts), the tls options of net.connect and
 * net.serve, s:start_tls, s:tls_info and server:set_tls.
 *
 * OpenSSL never touches the socket: what the stream reads (ciphertext)
 * goes into the SSL's read BIO (a memory BIO), SSL_read decrypts straight
 * into the stream's read buffer, and what SSL writes goes through a BIO of
 * our own (the sink) into a buffer that is sent with stream.c's
 * tulua__stream_send (the kernel takes it at once, or a copy of the rest
 * is queued). So the handshake is a wait like a read (cancellable, bounded
 * by asyncio.wait_for) and never blocks the loop; a timer of its own
 * (handshake_timeout, net.connect's timeout) fails it when it takes too
 * long, so a peer that never finishes it cannot hold a connection (and a
 * server's descriptor) forever. Why a sink rather than a memory BIO:
 * emptying a memory BIO (BIO_reset) clears its whole allocation, a memset
 * at every flush that callgrind put at a tenth of the C reference's echo
 * round trip (tests/bench/README.md).
 *
 * Buffers. SSL_MODE_RELEASE_BUFFERS would free SSL's 34 KiB of record
 * buffers after every record and allocate them again for the next: a
 * malloc and a free of 17 KiB each way per round trip. Instead each
 * runtime has one sweeper (a timer that runs while TLS streams exist,
 * without keeping the loop alive) that gives back the buffers of
 * connections idle for IDLE_MS, and ours with them: a busy connection
 * keeps them, ten thousand idle ones hold a few hundred bytes each.
 *
 * A context (the Lua object tulua.tls.context) holds one SSL_CTX, made
 * once and shared by every connection that uses it (certificates loaded
 * once, sessions cached): net.connect's {tls = true} uses one per runtime,
 * an options table keeps its context as long as the table lives, and a
 * server's belongs to the server until set_tls replaces it.
 *
 * Writes are encrypted 64 KiB at a time and wait while the kernel does
 * not take the records (backpressure): a big write never holds more than
 * one chunk's records in memory. Writes and shutdown queue in order (one
 * FIFO per stream), so that a writer's plaintext is never cut into by
 * another's. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <pthread.h>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "tls.h"

#define CONTEXT_MT  "tulua.tls.context"
#define CHUNK       (64 * 1024) /* plaintext encrypted per send */
#define READ_ROOM   (16 * 1024) /* a record's most plaintext */
#define READ_MIN    2048 /* less room than this: make READ_ROOM */
#define DEFAULT_KEY "tulua.tls.default" /* registry: tls = true's context */
#define CACHE_KEY   "tulua.tls.cache" /* registry: options table -> context */
#define SWEEPER_KEY "tulua.tls.sweeper" /* registry: the runtime's sweeper */
#define IDLE_MS     1000 /* a connection this long without I/O: buffers go */
#define OUT_KEEP    (32 * 1024) /* a bigger output buffer goes once sent */

/* OpenSSL's error queue is per thread and must be empty before an SSL
 * call whose failure SSL_get_error explains. Looking costs far less than
 * ERR_clear_error, which walks all 16 slots (~800 instructions, twice per
 * echo round trip); our own failures clear it after themselves. */
static inline void clear_errors(void) {
  if (ERR_peek_error() != 0) ERR_clear_error();
}

/* seconds a handshake may take unless handshake_timeout says otherwise:
 * asyncio's ssl_handshake_timeout and nginx's ssl_handshake_timeout */
#define HANDSHAKE_TIMEOUT 60.0

/* ---- contexts ---- */

typedef struct tls_ctx {
  SSL_CTX *ctx;
  int refs; /* the Lua object, and each connection using it */
  unsigned char *alpn; /* the protocols, in the wire format */
  unsigned alpn_len;
  char *server_name; /* a client's name to send and check, or NULL */
  double handshake_timeout; /* seconds, 0 for none */
  unsigned char server, verify;
} tls_ctx;

static void ctx_unref(tls_ctx *c) {
  if (--c->refs > 0) return;
  SSL_CTX_free(c->ctx);
  free(c->alpn);
  free(c->server_name);
  free(c);
}

static tls_ctx **to_context(lua_State *L, int idx) {
  return luaL_testudata(L, idx, CONTEXT_MT);
}

static int context_gc(lua_State *L) {
  tls_ctx **p = luaL_checkudata(L, 1, CONTEXT_MT);
  if (*p != NULL) ctx_unref(*p);
  *p = NULL;
  return 0;
}

static int context_tostring(lua_State *L) {
  tls_ctx **p = luaL_checkudata(L, 1, CONTEXT_MT);
  lua_pushfstring(L, "tls context (%s)",
                  *p && (*p)->server ? "server" : "client");
  return 1;
}

/* The reason of OpenSSL's last error, for messages. */
static const char *last_reason(void) {
  unsigned long e = ERR_peek_last_error();
  const char *r = e ? ERR_reason_error_string(e) : NULL;
  return r ? r : "unknown error";
}

/* Pushes nil, "tls: <what> '<path>': <OpenSSL's reason>", "ETLS". */
static int push_load_fail(lua_State *L, const char *what, const char *path) {
  lua_pushnil(L);
  lua_pushfstring(L, "tls: cannot load %s '%s': %s", what, path, last_reason());
  lua_pushliteral(L, "ETLS");
  ERR_clear_error();
  return 3;
}

/* The server's choice among the client's protocols: its own first that the
 * client offers; none in common fails the handshake, as RFC 7301 says. */
static int alpn_select_cb(SSL *ssl, const unsigned char **out,
                          unsigned char *outlen, const unsigned char *in,
                          unsigned inlen, void *arg) {
  tls_ctx *c = arg;
  (void)ssl;
  unsigned char *sel;
  if (SSL_select_next_proto(&sel, outlen, c->alpn, c->alpn_len, in, inlen) !=
      OPENSSL_NPN_NEGOTIATED)
    return SSL_TLSEXT_ERR_ALERT_FATAL;
  *out = sel;
  return SSL_TLSEXT_ERR_OK;
}

/* Reads the string field of the options at idx, or NULL when nil. */
static const char *opt_string(lua_State *L, int idx, const char *field) {
  int t = lua_getfield(L, idx, field);
  const char *s = NULL;
  if (t != LUA_TNIL) {
    if (t != LUA_TSTRING)
      luaL_argerror(L, idx, lua_pushfstring(L, "'%s' must be a string", field));
    s = lua_tostring(L, -1);
    if (strlen(s) != lua_rawlen(L, -1))
      luaL_argerror(L, idx,
                    lua_pushfstring(L, "'%s' contains a zero byte", field));
  }
  lua_pop(L, 1); /* the table keeps the string */
  return s;
}

static int opt_bool(lua_State *L, int idx, const char *field, int def) {
  int t = lua_getfield(L, idx, field);
  int v = t == LUA_TNIL ? def : lua_toboolean(L, -1);
  if (t != LUA_TNIL && t != LUA_TBOOLEAN)
    luaL_argerror(L, idx, lua_pushfstring(L, "'%s' must be a boolean", field));
  lua_pop(L, 1);
  return v;
}

/* Reads alpn (a list of 1..255-byte names) into the wire format. */
static void opt_alpn(lua_State *L, int idx, tls_ctx *c) {
  if (lua_getfield(L, idx, "alpn") == LUA_TNIL) {
    lua_pop(L, 1);
    return;
  }
  if (!lua_istable(L, -1))
    luaL_argerror(L, idx, "'alpn' must be a list of strings");
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  lua_Integer n = luaL_len(L, -2);
  for (lua_Integer i = 1; i <= n; i++) {
    size_t len;
    lua_geti(L, -2, i);
    const char *s = lua_tolstring(L, -1, &len);
    if (lua_type(L, -1) != LUA_TSTRING || len == 0 || len > 255)
      luaL_argerror(L, idx, "'alpn' must be a list of 1 to 255-byte strings");
    lua_pop(L, 1);
    luaL_addchar(&b, (char)len);
    luaL_addlstring(&b, s, len);
  }
  luaL_pushresult(&b);
  size_t len;
  const char *wire = lua_tolstring(L, -1, &len);
  if (len > 0) {
    c->alpn = malloc(len);
    if (c->alpn == NULL) luaL_error(L, "not enough memory");
    memcpy(c->alpn, wire, len);
    c->alpn_len = (unsigned)len;
  }
  lua_pop(L, 2);
}

/* The options of each role; start_tls and tls.context take 'server' too. */
static const char *const CLIENT_KEYS[] = {
    "ca",     "server_name",       "verify", "alpn", "cert", "key",
    "server", "handshake_timeout", NULL};
static const char *const SERVER_KEYS[] = {
    "cert",   "key", "ca", "verify_client", "alpn", "handshake_timeout",
    "server", NULL};

/* Reads handshake_timeout: a positive number of seconds (math.huge: none);
 * the default when nil. */
static double opt_handshake_timeout(lua_State *L, int idx) {
  int t = lua_getfield(L, idx, "handshake_timeout");
  double v = t == LUA_TNIL ? HANDSHAKE_TIMEOUT : lua_tonumber(L, -1);
  if (t != LUA_TNIL && (t != LUA_TNUMBER || !(v > 0)))
    luaL_argerror(L, idx, "'handshake_timeout' must be a positive number");
  lua_pop(L, 1);
  return v > 1e9 ? 0 : v; /* past 30 years: never */
}

/* Makes a context from the options table at idx and pushes it; returns 1,
 * or pushes nil, message, code (a file that does not load) and returns 3.
 * Raises for misuse (unknown keys, wrong types). */
static int new_context(lua_State *L, int idx, int server) {
  idx = lua_absindex(L, idx);
  tulua__check_options(L, idx, server ? SERVER_KEYS : CLIENT_KEYS);
  const char *cert = opt_string(L, idx, "cert");
  const char *key = opt_string(L, idx, "key");
  const char *ca = opt_string(L, idx, "ca");
  const char *name = server ? NULL : opt_string(L, idx, "server_name");
  int verify = server ? opt_bool(L, idx, "verify_client", 0)
                      : opt_bool(L, idx, "verify", 1);
  if (server && (cert == NULL || key == NULL))
    luaL_argerror(L, idx, "a server needs 'cert' and 'key'");
  if ((cert == NULL) != (key == NULL))
    luaL_argerror(L, idx, "'cert' and 'key' go together");
  if (server && verify && ca == NULL)
    luaL_argerror(L, idx, "'verify_client' needs 'ca'");
  double handshake_timeout = opt_handshake_timeout(L, idx);
  tls_ctx **p = lua_newuserdatauv(L, sizeof *p, 0);
  *p = NULL;
  luaL_setmetatable(L, CONTEXT_MT);
  tls_ctx *c = calloc(1, sizeof *c);
  if (c == NULL) luaL_error(L, "not enough memory");
  c->refs = 1;
  *p = c; /* from here the object's __gc frees it */
  c->server = (unsigned char)server;
  c->verify = (unsigned char)verify;
  c->handshake_timeout = handshake_timeout;
  opt_alpn(L, idx, c);
  if (name != NULL && (c->server_name = strdup(name)) == NULL)
    luaL_error(L, "not enough memory");
  ERR_clear_error();
  c->ctx = SSL_CTX_new(server ? TLS_server_method() : TLS_client_method());
  if (c->ctx == NULL) luaL_error(L, "not enough memory");
  SSL_CTX_set_min_proto_version(c->ctx, TLS1_2_VERSION);
  if (cert != NULL && SSL_CTX_use_certificate_chain_file(c->ctx, cert) != 1)
    return push_load_fail(L, "certificate", cert);
  if (key != NULL &&
      SSL_CTX_use_PrivateKey_file(c->ctx, key, SSL_FILETYPE_PEM) != 1)
    return push_load_fail(L, "key", key);
  if (key != NULL && SSL_CTX_check_private_key(c->ctx) != 1)
    return push_load_fail(L, "key", key);
  if (ca != NULL) {
    uv_fs_t req;
    int dir = uv_fs_stat(NULL, &req, ca, NULL) == 0 &&
              (req.statbuf.st_mode & S_IFMT) == S_IFDIR;
    uv_fs_req_cleanup(&req);
    if (SSL_CTX_load_verify_locations(c->ctx, dir ? NULL : ca,
                                      dir ? ca : NULL) != 1)
      return push_load_fail(L, "CA", ca);
    if (server && !dir) {
      STACK_OF(X509_NAME) *names = SSL_load_client_CA_file(ca);
      if (names != NULL) SSL_CTX_set_client_CA_list(c->ctx, names);
    }
  } else if (!server && verify) {
    SSL_CTX_set_default_verify_paths(c->ctx); /* /etc/ssl/certs */
  }
  if (server) {
    SSL_CTX_set_verify(c->ctx,
                       verify
                           ? SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT
                           : SSL_VERIFY_NONE,
                       NULL);
    if (c->alpn != NULL) SSL_CTX_set_alpn_select_cb(c->ctx, alpn_select_cb, c);
  } else {
    SSL_CTX_set_verify(c->ctx, verify ? SSL_VERIFY_PEER : SSL_VERIFY_NONE,
                       NULL);
    if (c->alpn != NULL) SSL_CTX_set_alpn_protos(c->ctx, c->alpn, c->alpn_len);
  }
  ERR_clear_error();
  return 1;
}

/* tls.context(options) -> context | nil, message, code */
static int tls_context(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_getfield(L, 1, "server");
  int server = lua_toboolean(L, -1);
  lua_pop(L, 1);
  return new_context(L, 1, server);
}

/* Pushes the context of a tls option at idx: true (client only: the
 * runtime's one default context), a context of the right role, or a table
 * (its context, cached as long as the table lives). Returns 1 or 3. */
static int option_context(lua_State *L, int idx, int server) {
  idx = lua_absindex(L, idx);
  tls_ctx **p = to_context(L, idx);
  if (p != NULL) {
    if (*p == NULL || (*p)->server != server)
      luaL_argerror(L, idx,
                    server ? "'tls' needs a server context"
                           : "'tls' needs a client context");
    lua_pushvalue(L, idx);
    return 1;
  }
  if (!server && lua_type(L, idx) == LUA_TBOOLEAN && lua_toboolean(L, idx)) {
    if (lua_getfield(L, LUA_REGISTRYINDEX, DEFAULT_KEY) != LUA_TNIL) return 1;
    lua_pop(L, 1);
    lua_newtable(L);
    int n = new_context(L, -1, 0);
    if (n != 1) return n;
    lua_pushvalue(L, -1);
    lua_setfield(L, LUA_REGISTRYINDEX, DEFAULT_KEY);
    lua_remove(L, -2);
    return 1;
  }
  if (!lua_istable(L, idx))
    luaL_argerror(L, idx,
                  server ? "'tls' must be a table or a server context"
                         : "'tls' must be true, a table or a context");
  if (luaL_getsubtable(L, LUA_REGISTRYINDEX, CACHE_KEY) == 0) {
    lua_pushliteral(L, "k"); /* weak keys: the table's life */
    lua_setfield(L, -2, "__mode");
    lua_pushvalue(L, -1);
    lua_setmetatable(L, -2);
  }
  lua_pushvalue(L, idx);
  if (lua_rawget(L, -2) != LUA_TNIL) {
    tls_ctx **c = to_context(L, -1);
    if (c != NULL && *c != NULL && (*c)->server == server) {
      lua_remove(L, -2);
      return 1;
    }
  }
  lua_pop(L, 1);
  int n = new_context(L, idx, server);
  if (n != 1) return n;
  lua_pushvalue(L, idx);
  lua_pushvalue(L, -2);
  lua_rawset(L, -4);
  lua_remove(L, -2);
  return 1;
}

int tulua__tls_client_context(lua_State *L, int idx) {
  return option_context(L, idx, 0);
}

int tulua__tls_server_context(lua_State *L, int idx) {
  return option_context(L, idx, 1);
}

/* ---- a connection's TLS layer ---- */

/* A write or a shutdown waiting its turn in the stream's FIFO. */
typedef struct wop {
  tulua__waiter w;
  struct wop *next;
  int status; /* 0, or the failure */
  unsigned char shutdown;
  size_t len, off; /* plaintext, and how much is encrypted (a shutdown:
                    * 1 once started) */
  char data[];
} wop;

typedef struct sweeper sweeper;

struct tulua__tls {
  SSL *ssl;
  BIO *rbio; /* a memory BIO: ciphertext in */
  tulua__bytes out; /* ciphertext out: what the sink BIO took, to send */
  tls_ctx *ctx;
  tulua__stream *s;
  tulua__queue node; /* in its runtime's sweeper's conns */
  uint64_t last; /* the loop time (ms) of the last input or write */
  unsigned char idle; /* the sweeper gave the buffers back */
  int state;
  unsigned char got_close, sent_close;
  unsigned char truncated; /* the peer's end came without close_notify */
  unsigned char deferred; /* output waits for the reader's next move */
  wop *head, *tail; /* writes and shutdowns, in order */
  int sends; /* a write's records queued in the stream, not yet sent */
  int werr; /* the failure that ended writing, sticky */
  uv_timer_t *timer; /* bounds the handshake, or NULL (its own block: it
                      * closes on its own time, t may go first) */
  double limit; /* the handshake's bound in seconds, 0 for none */
  unsigned char caller_limit; /* limit is the caller's (net.connect's
                               * timeout), which it knows: no number */
  const char *code;
  char msg[256];
};

int tulua__tls_state(const tulua__tls *t) {
  return t->state;
}

/* ---- the sink: SSL's output BIO ---- */

static int sink_write(BIO *b, const char *p, size_t n, size_t *done) {
  tulua__tls *t = BIO_get_data(b);
  BIO_clear_retry_flags(b);
  if (tulua__bytes_append(&t->out, p, n) < 0) return 0;
  *done = n;
  return 1;
}

static long sink_ctrl(BIO *b, int cmd, long num, void *ptr) {
  (void)num;
  (void)ptr;
  tulua__tls *t = BIO_get_data(b);
  switch (cmd) {
    case BIO_CTRL_FLUSH: /* SSL flushes after each flight: flush() sends */
      return 1;
    case BIO_CTRL_WPENDING:
      return (long)tulua__bytes_avail(&t->out);
    default: /* a sink has no position, no EOF, nothing pending to read */
      return 0;
  }
}

static int sink_create(BIO *b) {
  BIO_set_init(b, 1);
  return 1;
}

static BIO_METHOD *sink_method; /* made once per process, never freed */
static pthread_once_t sink_once = PTHREAD_ONCE_INIT;

static void sink_init(void) {
  BIO_METHOD *m =
      BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "tulua sink");
  if (m == NULL) return;
  if (!BIO_meth_set_write_ex(m, sink_write) ||
      !BIO_meth_set_ctrl(m, sink_ctrl) ||
      !BIO_meth_set_create(m, sink_create)) {
    BIO_meth_free(m);
    return;
  }
  sink_method = m;
}

/* Makes the layer for a connection of context c; NULL when out of memory. */
static tulua__tls *tls_new(tls_ctx *c, const char *name) {
  pthread_once(&sink_once, sink_init);
  if (sink_method == NULL) return NULL;
  tulua__tls *t = calloc(1, sizeof *t);
  if (t == NULL) return NULL;
  tulua__queue_init(&t->node);
  t->ssl = SSL_new(c->ctx);
  t->rbio = BIO_new(BIO_s_mem());
  BIO *wbio = BIO_new(sink_method);
  if (t->ssl == NULL || t->rbio == NULL || wbio == NULL) {
    SSL_free(t->ssl);
    BIO_free(t->rbio);
    BIO_free(wbio);
    free(t);
    return NULL;
  }
  BIO_set_data(wbio, t);
  /* an empty read BIO means "wait for more", not the end */
  BIO_set_mem_eof_return(t->rbio, -1);
  SSL_set_bio(t->ssl, t->rbio, wbio);
  c->refs++;
  t->ctx = c;
  if (c->server) {
    SSL_set_accept_state(t->ssl);
  } else {
    SSL_set_connect_state(t->ssl);
    if (c->server_name) name = c->server_name;
    if (name != NULL && *name != '\0') {
      unsigned char ip[16];
      int is_ip = inet_pton(AF_INET, name, ip) == 1 ||
                  inet_pton(AF_INET6, name, ip) == 1;
      if (!is_ip) SSL_set_tlsext_host_name(t->ssl, name); /* SNI: names only */
      if (c->verify) {
        X509_VERIFY_PARAM *vp = SSL_get0_param(t->ssl);
        if (is_ip)
          X509_VERIFY_PARAM_set1_ip_asc(vp, name);
        else
          SSL_set1_host(t->ssl, name);
      }
    }
  }
  return t;
}

/* ---- the sweeper: idle connections give their buffers back ---- */

struct sweeper {
  uv_timer_t timer; /* runs while conns is not empty; unref'd */
  tulua__queue conns; /* the runtime's TLS layers (tulua__tls.node) */
};

/* The loop time, for a layer's last I/O. */
static void touch(tulua__tls *t) {
  t->last = uv_now(tulua__stream_handle(t->s)->loop);
  t->idle = 0;
}

static void sweep(uv_timer_t *timer) {
  sweeper *sw = timer->data;
  uint64_t now = uv_now(timer->loop);
  tulua__queue *q;
  tulua__queue_foreach(q, &sw->conns) {
    tulua__tls *t = tulua__container_of(q, tulua__tls, node);
    /* SSL_has_pending: a record half received stays in SSL's buffer */
    if (t->idle || t->s == NULL || now - t->last < IDLE_MS || t->head != NULL ||
        t->sends > 0 || SSL_has_pending(t->ssl))
      continue;
    if (SSL_free_buffers(t->ssl) != 1) continue;
    t->idle = 1;
    if (tulua__bytes_avail(&t->out) == 0) tulua__bytes_free(&t->out);
    tulua__rbuf *rb = tulua__stream_rbuf(t->s);
    if (tulua__bytes_avail(&rb->b) == 0) tulua__bytes_free(&rb->b);
  }
  if (tulua__queue_empty(&sw->conns)) uv_timer_stop(timer);
}

static void sweeper_closed(uv_handle_t *h) {
  free(h->data);
}

/* The registry's sweeper goes with its runtime (lua_close): the layers
 * left are unlinked from it (an unlinked node's removal is harmless). */
static int sweeper_gc(lua_State *L) {
  sweeper **p = lua_touserdata(L, 1);
  sweeper *sw = *p;
  if (sw == NULL) return 0;
  *p = NULL;
  while (tulua__queue_pop(&sw->conns) != NULL)
    continue;
  uv_close((uv_handle_t *)&sw->timer, sweeper_closed);
  return 0;
}

/* The runtime's sweeper, made on first use. Raises when out of memory. */
static sweeper *get_sweeper(lua_State *L) {
  sweeper *sw = NULL;
  if (lua_getfield(L, LUA_REGISTRYINDEX, SWEEPER_KEY) == LUA_TUSERDATA)
    sw = *(sweeper **)lua_touserdata(L, -1);
  lua_pop(L, 1);
  if (sw == NULL) {
    sweeper **p = lua_newuserdatauv(L, sizeof *p, 0);
    *p = NULL;
    lua_newtable(L);
    lua_pushcfunction(L, sweeper_gc);
    lua_setfield(L, -2, "__gc");
    lua_setmetatable(L, -2);
    if ((sw = calloc(1, sizeof *sw)) == NULL)
      luaL_error(L, "not enough memory");
    uv_timer_init(tulua__loop(L), &sw->timer);
    uv_unref((uv_handle_t *)&sw->timer);
    sw->timer.data = sw;
    tulua__queue_init(&sw->conns);
    *p = sw;
    lua_setfield(L, LUA_REGISTRYINDEX, SWEEPER_KEY);
  }
  return sw;
}

static void sweep_later(sweeper *sw, tulua__tls *t) {
  if (tulua__queue_empty(&sw->conns))
    uv_timer_start(&sw->timer, sweep, IDLE_MS / 2, IDLE_MS / 2);
  tulua__queue_insert_tail(&sw->conns, &t->node);
}

static void fail_all(tulua__tls *t, int status);

static void free_timer(uv_handle_t *h) {
  free(h);
}

/* The handshake ended (or t goes): its timer is no longer needed. */
static void stop_timer(tulua__tls *t) {
  if (t->timer == NULL) return;
  uv_close((uv_handle_t *)t->timer, free_timer);
  t->timer = NULL;
}

void tulua__tls_free(tulua__tls *t) {
  stop_timer(t);
  fail_all(t, UV_ECANCELED); /* none left: their sends' callbacks came */
  tulua__queue_remove(&t->node); /* from its sweeper's list */
  SSL_free(t->ssl); /* and its BIOs */
  tulua__bytes_free(&t->out);
  ctx_unref(t->ctx);
  free(t);
}

static void sent_cb(void *ud, int status);

/* Sends what SSL wrote into its write BIO. A write's records are tracked
 * (sends counts them until sent_cb): the write waits for them; other
 * records (handshake, alerts, tickets) just go in order. Returns as
 * tulua__stream_send. */
static int flush(tulua__tls *t, int track) {
  size_t n = tulua__bytes_avail(&t->out);
  if (n == 0) return 0;
  int rc = tulua__stream_send(t->s, t->out.base + t->out.pos, n,
                              track ? sent_cb : NULL, t);
  /* sent or copied: the bytes can go, and a big write's buffer with them */
  tulua__bytes_consume(&t->out, n);
  if (t->out.cap > OUT_KEEP) tulua__bytes_free(&t->out);
  if (rc == 1 && track) t->sends++;
  return rc;
}

/* Records a failure that ends reading: its message and code show to the
 * reader after what was decrypted before it. */
static void fail(tulua__tls *t, const char *code, const char *prefix,
                 const char *text) {
  tulua__rbuf *rb = tulua__stream_rbuf(t->s);
  if (t->state == TULUA__TLS_HANDSHAKE) t->state = TULUA__TLS_FAILED;
  stop_timer(t);
  if (rb->err) return; /* the first failure says it */
  snprintf(t->msg, sizeof t->msg, "%s%s", prefix, text);
  t->code = code;
  rb->err = UV_EPROTO;
  rb->err_msg = t->msg;
  rb->err_code = t->code;
}

/* The reason of a failed SSL call, as the message and code say it: a
 * certificate check names OpenSSL's verdict (ECERT), the rest its reason
 * (ETLS). */
static void fail_ssl(tulua__tls *t, int err) {
  unsigned long e = ERR_peek_last_error();
  long v = SSL_get_verify_result(t->ssl);
  if (ERR_GET_REASON(e) == SSL_R_CERTIFICATE_VERIFY_FAILED && v != X509_V_OK)
    fail(t, "ECERT",
         "certificate verify failed: ", X509_verify_cert_error_string(v));
  else if (e == 0 && err == SSL_ERROR_SYSCALL)
    fail(t, "ETLS", "tls: ", "unexpected end of the connection");
  else
    fail(t, "ETLS",
         t->state == TULUA__TLS_HANDSHAKE ? "tls handshake: " : "tls: ",
         last_reason());
  ERR_clear_error();
}

/* Runs the handshake and decrypts what the read BIO holds into the read
 * buffer, then sends what SSL wrote meanwhile (handshake messages, alerts,
 * session tickets). */
static void step(tulua__tls *t) {
  tulua__rbuf *rb = tulua__stream_rbuf(t->s);
  int was_open = t->state == TULUA__TLS_OPEN || t->ctx->server;
  size_t before = rb->b.len - rb->b.pos;
  clear_errors();
  if (t->state == TULUA__TLS_HANDSHAKE) {
    int r = SSL_do_handshake(t->ssl);
    if (r == 1) {
      t->state = TULUA__TLS_OPEN;
      stop_timer(t);
    } else {
      int err = SSL_get_error(t->ssl, r);
      if (err != SSL_ERROR_WANT_READ) fail_ssl(t, err);
    }
  }
  while (t->state == TULUA__TLS_OPEN && !rb->err && !t->got_close) {
    /* room for a record's plaintext, kept across reads: SSL keeps what
     * does not fit for the next call */
    if (rb->b.cap - rb->b.len < READ_MIN &&
        tulua__bytes_reserve(&rb->b, READ_ROOM) < 0) {
      rb->err = UV_ENOMEM;
      break;
    }
    size_t got = 0;
    int r = SSL_read_ex(t->ssl, rb->b.base + rb->b.len, rb->b.cap - rb->b.len,
                        &got);
    if (r == 1) {
      rb->b.len += got;
      continue;
    }
    int err = SSL_get_error(t->ssl, r);
    if (err == SSL_ERROR_ZERO_RETURN) { /* close_notify: the end */
      t->got_close = 1;
      rb->eof = 1;
    } else if (err != SSL_ERROR_WANT_READ) {
      fail_ssl(t, err);
    }
    break;
  }
  /* Records that come with data (a server's session tickets after the
   * handshake, a KeyUpdate's answer) wait for what the reader does next:
   * its answer then leaves in the same write. Only in TLS 1.3, where they
   * hold nothing the peer waits for: a client's Finished, and a TLS 1.2
   * server's, never wait. */
  if (was_open && rb->b.len - rb->b.pos > before && !rb->err && !rb->eof &&
      SSL_version(t->ssl) == TLS1_3_VERSION) {
    t->deferred = 1;
    return;
  }
  t->deferred = 0;
  if (flush(t, 0) < 0 && t->state == TULUA__TLS_HANDSHAKE)
    fail(t, "ETLS", "tls handshake: ", "cannot send to the peer");
}

void tulua__tls_flush(tulua__tls *t) {
  if (!t->deferred) return;
  t->deferred = 0;
  (void)flush(t, 0); /* a failure shows at the next write */
}

/* The handshake took too long: it fails as a failed handshake does. */
static void timer_cb(uv_timer_t *h) {
  tulua__tls *t = h->data;
  char text[64];
  snprintf(text, sizeof text,
           t->caller_limit ? "timed out" : "timed out after %g s", t->limit);
  fail(t, "ETIMEDOUT", "tls handshake: ", text); /* closes the timer */
  tulua__stream_tls_failed(t->s);
}

/* Bounds the handshake under way by t->limit seconds. The timer keeps no
 * loop alive: the task waiting for the handshake does. */
static void start_timer(tulua__tls *t) {
  if (t->limit <= 0 || t->state != TULUA__TLS_HANDSHAKE) return;
  t->timer = malloc(sizeof *t->timer);
  if (t->timer == NULL) return; /* unbounded, as without the option */
  uv_timer_init(tulua__stream_handle(t->s)->loop, t->timer);
  t->timer->data = t;
  uv_timer_start(t->timer, timer_cb, (uint64_t)(t->limit * 1000 + 0.5), 0);
  uv_unref((uv_handle_t *)t->timer);
}

void tulua__tls_begin(tulua__tls *t, tulua__stream *s) {
  t->s = s;
  touch(t);
  tulua__rbuf *rb = tulua__stream_rbuf(s);
  size_t n = tulua__bytes_avail(&rb->b);
  if (n > 0) BIO_write(t->rbio, rb->b.base + rb->b.pos, (int)n);
  rb->b.pos = rb->b.len = 0;
  rb->scanned = 0;
  step(t);
  if (rb->eof && !t->got_close) { /* the plain stream had ended already */
    rb->eof = 0;
    tulua__tls_eof(t);
  }
  start_timer(t);
}

void tulua__tls_input(tulua__tls *t, const char *p, size_t n) {
  if (t->state == TULUA__TLS_FAILED) return;
  touch(t);
  if (BIO_write(t->rbio, p, (int)n) != (int)n) {
    tulua__stream_rbuf(t->s)->err = UV_ENOMEM;
    return;
  }
  step(t);
}

void tulua__tls_eof(tulua__tls *t) {
  tulua__rbuf *rb = tulua__stream_rbuf(t->s);
  if (t->got_close || rb->err) {
    rb->eof = 1;
    return;
  }
  if (t->state == TULUA__TLS_HANDSHAKE)
    fail(t, "ETLS", "tls handshake: ", "the peer closed the connection");
  else
    fail(t, "ETLS", "tls: ",
         "the peer closed the connection without close_notify (truncated)");
  t->truncated = 1; /* no close_notify for a peer that left */
}

/* ---- writing ---- */

static int wop_deliver(lua_State *L, void *ud) {
  wop *op = ud;
  int status = op->status;
  const char *verb = op->shutdown ? "shutdown" : "write";
  free(op);
  if (status < 0) return push_fail(L, verb, status);
  lua_pushboolean(L, 1);
  return 1;
}

/* Wakes op's task with its status (or frees op if the task is gone). */
static void wop_finish(wop *op, int status) {
  op->status = status;
  if (!tulua__wake(&op->w)) free(op);
}

/* Fails every queued op: the connection cannot write any more. */
static void fail_all(tulua__tls *t, int status) {
  wop *op = t->head;
  t->head = t->tail = NULL;
  if (t->werr == 0) t->werr = status;
  while (op != NULL) {
    wop *next = op->next;
    wop_finish(op, status);
    op = next;
  }
}

/* Encrypts p[*off..n) a chunk at a time and sends the records until the
 * kernel takes no more. Returns 0 (all sent), 1 (records queued: sent_cb
 * follows) or a negative libuv code. */
static int pump(tulua__tls *t, const char *p, size_t n, size_t *off) {
  touch(t);
  while (*off < n) {
    size_t chunk = n - *off < CHUNK ? n - *off : CHUNK, w = 0;
    /* no clear_errors: a failure here asks SSL_get_error nothing */
    if (SSL_write_ex(t->ssl, p + *off, chunk, &w) != 1) {
      ERR_clear_error();
      return UV_EPROTO;
    }
    *off += w;
    int rc = flush(t, 1);
    if (rc != 0) return rc;
  }
  return 0;
}

static void run_queue(tulua__tls *t);

/* Unlinks the head op and wakes its task. */
static void finish_head(tulua__tls *t, int status) {
  wop *op = t->head;
  t->head = op->next;
  if (t->head == NULL) t->tail = NULL;
  wop_finish(op, status);
}

static void sent_cb(void *ud, int status) {
  tulua__tls *t = ud;
  t->sends--;
  if (status < 0)
    fail_all(t, status);
  else if (t->sends == 0)
    run_queue(t);
}

static void shutdown_cb(void *ud, int status) {
  tulua__tls *t = ud;
  if (status < 0) {
    fail_all(t, status);
    return;
  }
  if (t->head != NULL) finish_head(t, 0);
  run_queue(t);
}

/* Starts the shutdown op at the head: close_notify (once), then the
 * stream's shutdown after it. Returns 0 or a negative libuv code. */
static int start_shutdown(tulua__tls *t, wop *op) {
  op->off = 1;
  if (!t->sent_close) {
    t->sent_close = 1;
    ERR_clear_error();
    SSL_shutdown(t->ssl); /* close_notify, into the write BIO */
    ERR_clear_error();
    int rc = flush(t, 0); /* uv_shutdown waits for it */
    if (rc < 0) return rc;
  }
  return tulua__stream_send_shutdown(t->s, shutdown_cb, t);
}

/* Works the FIFO from its head until records wait for the kernel. */
static void run_queue(tulua__tls *t) {
  wop *op;
  while ((op = t->head) != NULL && t->sends == 0) {
    int rc;
    if (op->shutdown) {
      if (op->off == 1) return; /* its uv_shutdown runs: shutdown_cb */
      rc = start_shutdown(t, op);
      if (rc < 0) fail_all(t, rc);
      return;
    }
    rc = pump(t, op->data, op->len, &op->off);
    if (rc == 1) return; /* sent_cb goes on */
    if (rc < 0) {
      fail_all(t, rc);
      return;
    }
    finish_head(t, 0);
  }
}

/* Pushes why a write cannot go: the handshake is not done or failed,
 * close_notify was sent, or an earlier write failed. 0 when it can. */
static int write_refused(lua_State *L, tulua__tls *t, const char *verb) {
  if (t->state == TULUA__TLS_FAILED && t->code != NULL) {
    lua_pushnil(L);
    lua_pushstring(L, t->msg);
    lua_pushstring(L, t->code);
    return 3;
  }
  if (t->state != TULUA__TLS_OPEN) return push_fail(L, verb, UV_ENOTCONN);
  if (t->werr < 0) return push_fail(L, verb, t->werr);
  if (t->sent_close) return push_fail(L, verb, UV_EPIPE);
  return 0;
}

/* Queues a write of p[off..n) (a copy) or a shutdown, and waits for it. */
static int enqueue(lua_State *L, tulua__tls *t, const char *p, size_t n,
                   size_t off, int shutdown) {
  const char *verb = shutdown ? "shutdown" : "write";
  wop *op = malloc(sizeof *op + (n - off));
  if (op == NULL) return push_fail(L, verb, UV_ENOMEM);
  if (n > off) memcpy(op->data, p + off, n - off);
  op->len = n - off;
  op->off = 0;
  op->next = NULL;
  op->status = 0;
  op->shutdown = (unsigned char)shutdown;
  if (t->tail)
    t->tail->next = op;
  else
    t->head = op;
  t->tail = op;
  if (shutdown && t->head == op && t->sends == 0) { /* first: starts now */
    int rc = start_shutdown(t, op);
    if (rc < 0) {
      t->head = t->tail = NULL;
      free(op);
      return push_fail(L, verb, rc);
    }
  }
  return tulua__wait(L, &op->w, wop_deliver, NULL, op);
}

int tulua__tls_write(lua_State *L, tulua__tls *t, const char *p, size_t n) {
  int refused = write_refused(L, t, "write");
  if (refused) return refused;
  if (t->head != NULL || t->sends > 0) { /* after the writes before it */
    tulua__check_wait(L, "write");
    return enqueue(L, t, p, n, 0, 0);
  }
  /* from the caller's string first: most writes need no copy */
  size_t off = 0;
  int rc = pump(t, p, n, &off);
  if (rc < 0) {
    t->werr = rc;
    return push_fail(L, "write", rc);
  }
  if (rc == 0) {
    lua_pushboolean(L, 1);
    return 1;
  }
  /* the kernel is full: wait until it takes the records, then go on (as
   * a plain write, outside a task this raises with the start sent) */
  tulua__check_wait(L, "write");
  return enqueue(L, t, p, n, off, 0);
}

int tulua__tls_shutdown(lua_State *L, tulua__tls *t) {
  int refused = write_refused(L, t, "shutdown");
  if (refused) return refused;
  return enqueue(L, t, "", 0, 0, 1);
}

void tulua__tls_close(tulua__tls *t) {
  /* close_notify, if it can go now: the peer then knows the end is no
   * truncation */
  if (t->state != TULUA__TLS_OPEN || t->sent_close || t->head != NULL ||
      t->truncated)
    return;
  t->sent_close = 1;
  ERR_clear_error();
  SSL_shutdown(t->ssl);
  ERR_clear_error();
  size_t n = tulua__bytes_avail(&t->out);
  uv_stream_t *h = tulua__stream_handle(t->s);
  if (n > 0 && uv_stream_get_write_queue_size(h) == 0)
    (void)uv_try_write(h, &(uv_buf_t){t->out.base + t->out.pos, n}, 1);
  tulua__bytes_consume(&t->out, n);
}

/* ---- Lua side ---- */

/* Checks the stream of a start_tls: open, not TLS yet, nobody reading. */
static tulua__stream *check_plain(lua_State *L) {
  tulua__stream *s = tulua__stream_check(L, 1);
  if (tulua__stream_tls(s) != NULL) luaL_error(L, "the stream already has TLS");
  return s;
}

/* The handshake on stream 1 with context 2 and name, within limit seconds
 * if that is sooner than the context's handshake_timeout (0: the
 * context's): waits. */
static int start(lua_State *L, tulua__stream *s, const char *name,
                 double limit) {
  tls_ctx *c = *to_context(L, 2);
  if (!c->server && c->verify && c->server_name == NULL && name == NULL)
    luaL_argerror(L, 2, "a checked client needs 'server_name'");
  tulua__check_wait(L, "start_tls");
  sweeper *sw = get_sweeper(L); /* may raise: before t exists */
  tulua__tls *t = tls_new(c, name);
  if (t == NULL) return push_fail(L, "start_tls", UV_ENOMEM);
  sweep_later(sw, t);
  t->limit = c->handshake_timeout;
  if (limit > 0 && (t->limit <= 0 || limit < t->limit)) {
    t->limit = limit;
    t->caller_limit = 1;
  }
  return tulua__stream_start_tls(L, s, t);
}

int tulua__tls_start(lua_State *L) {
  tulua__stream *s = check_plain(L);
  const char *name = lua_tostring(L, 3);
  return start(L, s, name, lua_tonumber(L, 4));
}

/* s:start_tls([options | context]) -> true | nil, message, code: the
 * handshake over a connected plain stream; options.server makes it the
 * server's side. */
static int stream_start_tls(lua_State *L) {
  tulua__stream *s = check_plain(L);
  lua_settop(L, 2);
  int server = 0;
  tls_ctx **p = to_context(L, 2);
  if (p != NULL) {
    luaL_argcheck(L, *p != NULL, 2, "context expected");
    return start(L, s, NULL, 0);
  }
  if (lua_isnil(L, 2)) {
    lua_pushboolean(L, 1);
    lua_replace(L, 2);
  } else {
    luaL_checktype(L, 2, LUA_TTABLE);
    lua_getfield(L, 2, "server");
    server = lua_toboolean(L, -1);
    lua_pop(L, 1);
  }
  int n = option_context(L, 2, server);
  if (n != 1) return n;
  lua_replace(L, 2);
  return start(L, s, NULL, 0);
}

/* Pushes a certificate time as Unix seconds. */
static void push_time(lua_State *L, const ASN1_TIME *at) {
  struct tm tm;
  if (at != NULL && ASN1_TIME_to_tm(at, &tm) == 1)
    lua_pushinteger(L, (lua_Integer)timegm(&tm));
  else
    lua_pushnil(L);
}

static void push_name(lua_State *L, X509_NAME *name) {
  BIO *b = BIO_new(BIO_s_mem());
  if (b == NULL) luaL_error(L, "not enough memory");
  X509_NAME_print_ex(b, name, 0, XN_FLAG_RFC2253);
  char *p;
  long n = BIO_get_mem_data(b, &p);
  lua_pushlstring(L, p, n > 0 ? (size_t)n : 0);
  BIO_free(b);
}

/* s:tls_info() -> table | nil: what the handshake agreed on. */
static int stream_tls_info(lua_State *L) {
  tulua__stream *s = tulua__stream_check(L, 1);
  tulua__tls *t = tulua__stream_tls(s);
  if (t == NULL || t->state != TULUA__TLS_OPEN) {
    lua_pushnil(L);
    return 1;
  }
  lua_createtable(L, 0, 8);
  lua_pushstring(L, SSL_get_version(t->ssl));
  lua_setfield(L, -2, "version");
  lua_pushstring(L, SSL_get_cipher_name(t->ssl));
  lua_setfield(L, -2, "cipher");
  const unsigned char *alpn;
  unsigned alen;
  SSL_get0_alpn_selected(t->ssl, &alpn, &alen);
  if (alen > 0) {
    lua_pushlstring(L, (const char *)alpn, alen);
    lua_setfield(L, -2, "alpn");
  }
  const char *sni = SSL_get_servername(t->ssl, TLSEXT_NAMETYPE_host_name);
  if (sni != NULL) {
    lua_pushstring(L, sni);
    lua_setfield(L, -2, "server_name");
  }
  lua_pushboolean(L, SSL_session_reused(t->ssl));
  lua_setfield(L, -2, "resumed");
  X509 *peer = SSL_get0_peer_certificate(t->ssl);
  if (peer != NULL) {
    push_name(L, X509_get_subject_name(peer));
    lua_setfield(L, -2, "subject");
    push_name(L, X509_get_issuer_name(peer));
    lua_setfield(L, -2, "issuer");
    push_time(L, X509_get0_notBefore(peer));
    lua_setfield(L, -2, "not_before");
    push_time(L, X509_get0_notAfter(peer));
    lua_setfield(L, -2, "expires");
    lua_pushboolean(L, SSL_get_verify_result(t->ssl) == X509_V_OK &&
                           t->ctx->verify);
    lua_setfield(L, -2, "verified");
  }
  return 1;
}

/* server:set_tls(options | context) -> true | nil, message, code: new
 * certificates for the connections accepted from now on. */
static int server_set_tls(lua_State *L) {
  tulua__server *srv = tulua__server_check(L, 1);
  luaL_checkany(L, 2);
  lua_settop(L, 2);
  int n = option_context(L, 2, 1);
  if (n != 1) return n;
  tulua__server_set_context(L, srv, -1);
  lua_pushboolean(L, 1);
  return 1;
}

static void register_context(lua_State *L) {
  static const luaL_Reg meta[] = {{"__gc", context_gc},
                                  {"__close", context_gc},
                                  {"__tostring", context_tostring},
                                  {NULL, NULL}};
  tulua__new_class(L, CONTEXT_MT, meta, NULL);
}

void tulua__tls_open(lua_State *L) {
  static const luaL_Reg stream_methods[] = {{"start_tls", stream_start_tls},
                                            {"tls_info", stream_tls_info},
                                            {NULL, NULL}};
  static const luaL_Reg server_methods[] = {{"set_tls", server_set_tls},
                                            {NULL, NULL}};
  register_context(L);
  tulua__stream_register(L, TULUA_TCP, stream_methods);
  tulua__stream_register(L, TULUA_PIPE, stream_methods);
  tulua__server_register(L, server_methods);
}

int luaopen_tulua_tls(lua_State *L) {
  static const luaL_Reg funcs[] = {{"context", tls_context}, {NULL, NULL}};
  register_context(L);
  luaL_newlib(L, funcs);
  return 1;
}
