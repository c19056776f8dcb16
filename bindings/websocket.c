/* websocket.c: RFC 6455 framing over Debian's libwslay, as 'tulua._wslay':
 * a Framer object that takes the bytes a stream read (feed), hands out the
 * messages they completed (pop) and the frames to write (take), and the
 * handshake's key arithmetic (SHA-1 and base64 from OpenSSL's libcrypto).
 *
 * Why no I/O here: tulua._websocket reads and writes through the public
 * methods of any stream (tcp, unix, TLS), so the framer is pure state. wslay's
 * event API is driven through memory: its recv callback drains the bytes of
 * the current feed() and then says WOULDBLOCK, its send callback appends to
 * an output buffer. wslay does the protocol: reassembly of fragments, pongs
 * for pings, the close reply, masking (client) and refusing unmasked client
 * frames (server), control-frame rules, the message size limit (close
 * 1009) and protocol errors (close 1002). No Lua API is called from wslay's
 * callbacks: a Lua error there would longjmp across wslay's state. */
#include <limits.h>
#include <stdint.h>

#include <openssl/evp.h>
#include <openssl/rand.h>
#include <wslay/wslay.h>

#include "byte_buffer.h"
#include "common.h"

#define FRAMER "tulua.wslay.Framer"

typedef struct {
  wslay_event_context_ptr ctx; /* NULL once released */
  const char *in; /* the bytes of the feed() under way */
  size_t in_len, in_pos;
  tulua__bytes out; /* frames wslay wrote, for take() */
  tulua__bytes msgs; /* completed messages: opcode byte, size_t, bytes */
  char reason[123]; /* the reason of the close frame received */
  size_t reason_len;
  int nomem; /* a callback ran out of memory */
} framer;

static framer *check_framer(lua_State *L) {
  framer *f = luaL_checkudata(L, 1, FRAMER);
  if (f->ctx == NULL) luaL_error(L, "attempt to use a released framer");
  return f;
}

static ssize_t recv_cb(wslay_event_context_ptr ctx, uint8_t *buf, size_t len,
                       int flags, void *ud) {
  (void)flags;
  framer *f = ud;
  size_t n = f->in_len - f->in_pos;
  if (n == 0) {
    wslay_event_set_error(ctx, WSLAY_ERR_WOULDBLOCK);
    return -1;
  }
  if (n > len) n = len;
  memcpy(buf, f->in + f->in_pos, n);
  f->in_pos += n;
  return (ssize_t)n;
}

static ssize_t send_cb(wslay_event_context_ptr ctx, const uint8_t *data,
                       size_t len, int flags, void *ud) {
  (void)flags;
  framer *f = ud;
  if (tulua__bytes_append(&f->out, (const char *)data, len) < 0) {
    f->nomem = 1;
    wslay_event_set_error(ctx, WSLAY_ERR_CALLBACK_FAILURE);
    return -1;
  }
  return (ssize_t)len;
}

static int genmask_cb(wslay_event_context_ptr ctx, uint8_t *buf, size_t len,
                      void *ud) {
  (void)ud;
  /* RFC 6455 10.3: a mask the page's script cannot predict; OpenSSL's
   * generator, seeded once, makes it in user space (uv_random was a
   * getrandom system call for every frame a client sent) */
  if (len > INT_MAX || RAND_bytes(buf, (int)len) != 1) {
    wslay_event_set_error(ctx, WSLAY_ERR_CALLBACK_FAILURE);
    return -1;
  }
  return 0;
}

/* Data messages are queued for pop() and a close frame's reason kept for
 * state(); wslay answers pings itself and pongs need nothing. */
static void on_msg_cb(wslay_event_context_ptr ctx,
                      const struct wslay_event_on_msg_recv_arg *arg, void *ud) {
  framer *f = ud;
  if (arg->opcode == WSLAY_CONNECTION_CLOSE && arg->msg_length > 2) {
    f->reason_len = arg->msg_length - 2; /* wslay allows 125 bytes at most */
    if (f->reason_len > sizeof f->reason) f->reason_len = sizeof f->reason;
    memcpy(f->reason, arg->msg + 2, f->reason_len);
  }
  if (arg->opcode != WSLAY_TEXT_FRAME && arg->opcode != WSLAY_BINARY_FRAME)
    return;
  uint8_t op = arg->opcode;
  size_t len = arg->msg_length;
  if (tulua__bytes_reserve(&f->msgs, 1 + sizeof len + len) < 0) {
    f->nomem = 1;
    wslay_event_shutdown_read(ctx);
    return;
  }
  tulua__bytes_append(&f->msgs, (const char *)&op, 1);
  tulua__bytes_append(&f->msgs, (const char *)&len, sizeof len);
  tulua__bytes_append(&f->msgs, (const char *)arg->msg, len);
}

/* _wslay.new(server, max_message) -> a Framer for one end of a connection:
 * a server's (which refuses unmasked frames) or a client's (which masks). */
static int framer_new(lua_State *L) {
  luaL_checktype(L, 1, LUA_TBOOLEAN);
  lua_Integer max = luaL_checkinteger(L, 2);
  luaL_argcheck(L, max > 0, 2, "max_message must be positive");
  framer *f = lua_newuserdatauv(L, sizeof *f, 0);
  memset(f, 0, sizeof *f);
  luaL_setmetatable(L, FRAMER);
  static const struct wslay_event_callbacks cbs = {
      .recv_callback = recv_cb,
      .send_callback = send_cb,
      .genmask_callback = genmask_cb,
      .on_msg_recv_callback = on_msg_cb,
  };
  int rc = lua_toboolean(L, 1)
               ? wslay_event_context_server_init(&f->ctx, &cbs, f)
               : wslay_event_context_client_init(&f->ctx, &cbs, f);
  if (rc != 0) {
    f->ctx = NULL;
    return luaL_error(L, "not enough memory");
  }
  wslay_event_config_set_max_recv_msg_length(f->ctx, (uint64_t)max);
  return 1;
}

/* framer:feed(bytes): runs the bytes a read returned through the protocol;
 * what they complete waits in pop() and what they call for (pongs, a close
 * reply or a failing close) in take(). Bytes after a close or a failure are
 * dropped, as the protocol wants. */
static int framer_feed(lua_State *L) {
  framer *f = check_framer(L);
  f->in = luaL_checklstring(L, 2, &f->in_len);
  f->in_pos = 0;
  if (wslay_event_get_read_enabled(f->ctx)) wslay_event_recv(f->ctx);
  f->in = NULL;
  f->in_len = f->in_pos = 0;
  if (f->nomem) return luaL_error(L, "not enough memory");
  return 0;
}

/* framer:pop() -> data, "text"|"binary" of the oldest completed message,
 * or nothing. */
static int framer_pop(lua_State *L) {
  framer *f = check_framer(L);
  size_t len;
  if (tulua__bytes_avail(&f->msgs) == 0) return 0;
  const char *p = f->msgs.base + f->msgs.pos;
  memcpy(&len, p + 1, sizeof len);
  lua_pushlstring(L, p + 1 + sizeof len, len);
  lua_pushstring(L, p[0] == WSLAY_TEXT_FRAME ? "text" : "binary");
  tulua__bytes_consume(&f->msgs, 1 + sizeof len + len);
  return 2;
}

static int queue_result(lua_State *L, int rc) {
  if (rc == 0) {
    lua_pushboolean(L, 1);
    return 1;
  }
  if (rc == WSLAY_ERR_NOMEM) return luaL_error(L, "not enough memory");
  lua_pushnil(L);
  lua_pushstring(L, rc == WSLAY_ERR_NO_MORE_MSG ? "closed" : "invalid");
  return 2;
}

/* framer:queue(data, binary) -> true, or nil, "closed" once a close frame
 * was queued: data as one text or binary frame, for take(). */
static int framer_queue(lua_State *L) {
  framer *f = check_framer(L);
  size_t len;
  const char *data = luaL_checklstring(L, 2, &len);
  struct wslay_event_msg msg = {lua_toboolean(L, 3) ? WSLAY_BINARY_FRAME
                                                    : WSLAY_TEXT_FRAME,
                                (const uint8_t *)data, len};
  return queue_result(L, wslay_event_queue_msg(f->ctx, &msg));
}

/* framer:queue_close(code, reason) -> true, or nil, "closed" when a close
 * was queued already. Code 0 sends a close frame without a payload. */
static int framer_queue_close(lua_State *L) {
  framer *f = check_framer(L);
  lua_Integer code = luaL_checkinteger(L, 2);
  size_t len;
  const char *reason = luaL_checklstring(L, 3, &len);
  luaL_argcheck(L, code >= 0 && code <= 4999, 2, "invalid close code");
  luaL_argcheck(L, len <= 123, 3, "close reason longer than 123 bytes");
  return queue_result(L, wslay_event_queue_close(f->ctx, (uint16_t)code,
                                                 (const uint8_t *)reason, len));
}

/* framer:fail(code): queues a close with code and reads no more, for the
 * failures found above wslay (a text message that is not UTF-8: 1007). */
static int framer_fail(lua_State *L) {
  framer *f = check_framer(L);
  lua_Integer code = luaL_checkinteger(L, 2);
  luaL_argcheck(L, code >= 1000 && code <= 4999, 2, "invalid close code");
  wslay_event_queue_close(f->ctx, (uint16_t)code, NULL, 0);
  wslay_event_shutdown_read(f->ctx);
  return 0;
}

/* framer:take() -> the bytes of every frame queued so far ("" if none),
 * for the stream's write. */
static int framer_take(lua_State *L) {
  framer *f = check_framer(L);
  if (wslay_event_get_write_enabled(f->ctx)) wslay_event_send(f->ctx);
  if (f->nomem) return luaL_error(L, "not enough memory");
  lua_pushlstring(L, f->out.base + f->out.pos, tulua__bytes_avail(&f->out));
  tulua__bytes_consume(&f->out, tulua__bytes_avail(&f->out));
  return 1;
}

/* framer:state() -> reading, close_received, close_sent, code_received,
 * code_sent, reason_received: where the close handshake stands. reading is
 * false once a close came or the framer failed the connection; a code is
 * 1006 before its frame and 1005 for a close frame without one. */
static int framer_state(lua_State *L) {
  framer *f = check_framer(L);
  lua_pushboolean(L, wslay_event_get_read_enabled(f->ctx));
  lua_pushboolean(L, wslay_event_get_close_received(f->ctx));
  lua_pushboolean(L, wslay_event_get_close_sent(f->ctx));
  lua_pushinteger(L, wslay_event_get_status_code_received(f->ctx));
  lua_pushinteger(L, wslay_event_get_status_code_sent(f->ctx));
  lua_pushlstring(L, f->reason, f->reason_len);
  return 6;
}

static int framer_release(lua_State *L) {
  framer *f = luaL_checkudata(L, 1, FRAMER);
  if (f->ctx != NULL) wslay_event_context_free(f->ctx);
  f->ctx = NULL;
  tulua__bytes_free(&f->out);
  tulua__bytes_free(&f->msgs);
  return 0;
}

/* Pushes the base64 of the n bytes at p. */
static void push_base64(lua_State *L, const unsigned char *p, int n) {
  unsigned char b64[4 * ((EVP_MAX_MD_SIZE + 2) / 3) + 1];
  int len = EVP_EncodeBlock(b64, p, n);
  lua_pushlstring(L, (const char *)b64, (size_t)len);
}

/* _wslay.accept_key(key) -> the Sec-WebSocket-Accept for a
 * Sec-WebSocket-Key: base64(SHA-1(key .. the RFC's GUID)). */
static int accept_key(lua_State *L) {
  size_t len;
  const char *key = luaL_checklstring(L, 1, &len);
  luaL_argcheck(L, len <= 64, 1, "key too long");
  static const char GUID[] = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
  char buf[64 + sizeof GUID];
  memcpy(buf, key, len);
  memcpy(buf + len, GUID, sizeof GUID - 1);
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int mdlen;
  if (!EVP_Digest(buf, len + sizeof GUID - 1, md, &mdlen, EVP_sha1(), NULL))
    return luaL_error(L, "SHA-1 failed");
  push_base64(L, md, (int)mdlen);
  return 1;
}

/* _wslay.new_key() -> a fresh Sec-WebSocket-Key: 16 random bytes in
 * base64. */
static int new_key(lua_State *L) {
  unsigned char raw[16];
  int rc = uv_random(NULL, NULL, raw, sizeof raw, 0, NULL);
  if (rc < 0) return luaL_error(L, "random: %s", uv_strerror(rc));
  push_base64(L, raw, sizeof raw);
  return 1;
}

int luaopen_tulua_wslay(lua_State *L) {
  static const luaL_Reg meta[] = {
      {"__gc", framer_release}, {"__close", framer_release}, {NULL, NULL}};
  static const luaL_Reg methods[] = {{"feed", framer_feed},
                                     {"pop", framer_pop},
                                     {"queue", framer_queue},
                                     {"queue_close", framer_queue_close},
                                     {"fail", framer_fail},
                                     {"take", framer_take},
                                     {"state", framer_state},
                                     {"release", framer_release},
                                     {NULL, NULL}};
  tulua__new_class(L, FRAMER, meta, methods);
  static const luaL_Reg funcs[] = {{"new", framer_new},
                                   {"accept_key", accept_key},
                                   {"new_key", new_key},
                                   {NULL, NULL}};
  luaL_newlib(L, funcs);
  return 1;
}
