/* tls.h: the TLS layer of a stream (tls.c) as stream.c and tcp.c call it:
 * ciphertext in, plaintext into the read buffer, writes and shutdown in
 * order, the handshake's context for net.connect. */
#ifndef TULUA_TLS_H
#define TULUA_TLS_H

#include "stream.h"

/* The handshake's state: running, done, failed. */
enum { TULUA__TLS_HANDSHAKE, TULUA__TLS_OPEN, TULUA__TLS_FAILED };

int tulua__tls_state(const tulua__tls *t);

/* Attaches t to s and starts the handshake: the stream's unread bytes are
 * the peer's first TLS bytes; a client sends its hello. No Lua API. */
void tulua__tls_begin(tulua__tls *t, tulua__stream *s);

/* The n bytes the peer sent (ciphertext): decrypted into the stream's read
 * buffer, whose end (close_notify) or error (a failed handshake or record)
 * is set. No Lua API. */
void tulua__tls_input(tulua__tls *t, const char *p, size_t n);

/* The peer ended the connection: the end of the stream after a
 * close_notify, else an error (truncation, or the handshake cut). */
void tulua__tls_eof(tulua__tls *t);

/* s:write(data) and s:shutdown() of a TLS stream: waits, in order with the
 * other writes, until the records are written; shutdown sends close_notify
 * first. */
int tulua__tls_write(lua_State *L, tulua__tls *t, const char *p, size_t n);
int tulua__tls_shutdown(lua_State *L, tulua__tls *t);

/* The stream is closing: sends close_notify if it can without waiting.
 * tulua__tls_free then frees t once the stream's callbacks have run. */
void tulua__tls_close(tulua__tls *t);
void tulua__tls_free(tulua__tls *t);

/* Reads net.connect's tls option at idx (true, an options table or a
 * tls.context) and pushes its client context; returns 1, or pushes nil,
 * message, code (certificate files that do not load) and returns 3.
 * Raises for misuse. */
int tulua__tls_client_context(lua_State *L, int idx);

/* The same for net.serve's tls option: a server context. */
int tulua__tls_server_context(lua_State *L, int idx);

/* (stream, context, name): the handshake of net.connect, with name as the
 * server name when the context names none. true | nil, message, code;
 * waits. A lua_CFunction. */
int tulua__tls_start(lua_State *L);

/* Adds start_tls and tls_info to the tcp and pipe streams and set_tls to
 * servers (called by luaopen_tulua_net). [-0, +0, m] */
void tulua__tls_open(lua_State *L);

#endif
