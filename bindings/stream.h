/* stream.h: the stream object shared by tcp.c, pipe.c, tty.c and
 * process.c: one object model over libuv's uv_stream_t (read, read_exactly,
 * read_line, lines, read_all, write with backpressure, shutdown, close),
 * and the listening server of tcp.c and pipe.c. Defined in stream.c. */
#ifndef TULUA_STREAM_H
#define TULUA_STREAM_H

#include "common.h"
#include "read_buffer.h"

/* The kinds of stream; each has its metatable ("tulua.tcp", "tulua.pipe",
 * "tulua.tty") with the shared methods plus its own. */
typedef enum { TULUA_TCP, TULUA_PIPE, TULUA_TTY } tulua__stream_kind;

typedef struct tulua__stream tulua__stream;

/* Pushes a new Stream object of kind and returns its box. The caller then
 * initializes the handle (tulua__stream_handle) with uv_tcp_init,
 * uv_pipe_init or uv_tty_init on tulua__loop(L) and, if that succeeded,
 * calls tulua__stream_ready; if it failed, it just pops the object (its
 * __gc frees the box). The kind's metatable must have been registered.
 * [-0, +1, m] */
tulua__stream *tulua__stream_new(lua_State *L, tulua__stream_kind kind);

/* Returns the runtime's read scratch buffer, for tulua__stream_alloc. */
char *tulua__stream_scratch(lua_State *L);

/* Allocates a box of kind without its object, for a handle that must work
 * before there is one (tcp.c's connect). Returns NULL when out of memory.
 * Calls no Lua API (callable from a libuv callback), as do
 * tulua__stream_discard, which closes and frees such a box, and
 * tulua__stream_ready. tulua__stream_push wraps it in its object. */
tulua__stream *tulua__stream_alloc(char *scratch, tulua__stream_kind kind);
void tulua__stream_push(lua_State *L, tulua__stream *s);
void tulua__stream_discard(tulua__stream *s);

/* What tulua__stream_read_to_end calls once the stream has ended: status
 * is 0 at the end of the stream, else the negative libuv code that ended
 * the reading. Runs in libuv's read callback: no Lua API. It may discard
 * s. */
typedef void (*tulua__stream_end_fn)(tulua__stream *s, int status, void *ud);

/* Reads the stream of a box no task reads (tulua__stream_alloc) to its end
 * into its buffer, without limit, then calls on_end(s, status, ud); the
 * bytes are then taken with tulua__stream_take. This is how process.run
 * captures a child's output with the reads of every stream. Returns 0, or
 * a negative libuv code (nothing started, on_end never called). No Lua
 * API. */
int tulua__stream_read_to_end(tulua__stream *s, tulua__stream_end_fn on_end,
                              void *ud);

/* Moves the unread bytes of s into *out, leaving s's buffer empty; the
 * caller frees them with tulua__bytes_free. No Lua API. */
void tulua__stream_take(tulua__stream *s, tulua__bytes *out);

/* Whether the stream reads ahead (the default): it goes on reading, up to
 * 64 KiB, when no task waits, so that data is ready for the next read.
 * Turn it off for a descriptor others read too (stdin). */
void tulua__stream_readahead(tulua__stream *s, int on);

/* Makes EIO the end of the stream: a pty's master reads EIO once no
 * process holds the terminal's side any more (process.c). */
void tulua__stream_eio_is_eof(tulua__stream *s);

/* Returns the box's handle, for uv_*_init and kind-specific calls. */
uv_stream_t *tulua__stream_handle(tulua__stream *s);

/* Marks the handle initialized: from now on it is closed with uv_close. */
void tulua__stream_ready(tulua__stream *s);

/* Returns the stream at idx if it is open (any kind), else raises "bad
 * argument" for a non-stream or "attempt to use a closed <kind> stream". */
tulua__stream *tulua__stream_check(lua_State *L, int idx);

/* Creates kind's metatable with the shared methods, unless it exists, and
 * adds extra (NULL-ended, may be NULL) to its methods. [-0, +0, m] */
void tulua__stream_register(lua_State *L, tulua__stream_kind kind,
                            const luaL_Reg *extra);

/* Starts listening on the handle of a new server object (pushed; the
 * handle is a uv_tcp_t or uv_pipe_t the caller initialized and bound
 * through the returned pointer before calling tulua__server_listen). Each
 * connection runs handler(stream) in a new task; the stream is closed when
 * the handler returns or fails. [-0, +1, m] */
typedef struct tulua__server tulua__server;
tulua__server *tulua__server_new(lua_State *L, tulua__stream_kind kind,
                                 int handler_idx);
uv_stream_t *tulua__server_handle(tulua__server *srv);
void tulua__server_ready(tulua__server *srv);
/* Listens with backlog; returns 0 or a negative libuv code. */
int tulua__server_listen(tulua__server *srv, int backlog);
/* Returns the open server at idx, or raises. */
tulua__server *tulua__server_check(lua_State *L, int idx);

/* Anchors the listening server on top of the stack: it lives, and keeps
 * the process alive, until it is closed. [-0, +0, m] */
void tulua__server_anchor(lua_State *L, tulua__server *srv);

/* Creates the server metatable ("tulua.server") with its shared methods
 * (close, wait_closed, connections, is_closed) and adds extra (tcp.c's
 * address, which answers for tcp and unix servers). [-0, +0, m] */
void tulua__server_register(lua_State *L, const luaL_Reg *extra);

/* pipe.c: adds connect_unix and serve_unix to the module table on top
 * (tulua.net) and registers the pipe stream type, whose own method
 * (peer_name) stream.c gives every pipe stream. [-0, +0, m] */
void tulua__pipe_open(lua_State *L);

/* ---- what tls.c builds on (a stream carrying TLS) ---- */

/* The TLS state of a stream (tls.c), or NULL for a plain one. */
typedef struct tulua__tls tulua__tls;
tulua__tls *tulua__stream_tls(tulua__stream *s);

/* The stream's read buffer: tls.c decrypts into it and sets its end or
 * error. No Lua API. */
tulua__rbuf *tulua__stream_rbuf(tulua__stream *s);

/* Sends the n bytes at p after what is queued: writes at once what the
 * kernel takes and queues a copy of the rest. Returns 0 when all went at
 * once, 1 when some is queued (then done(ud, status) is called once it is
 * written or failed, unless done is NULL), or a negative libuv code
 * (nothing queued, done never called). No Lua API. */
typedef void (*tulua__send_fn)(void *ud, int status);
int tulua__stream_send(tulua__stream *s, const char *p, size_t n,
                       tulua__send_fn done, void *ud);

/* Ends the writing half after what is queued; done(ud, status) follows.
 * Returns 0 or a negative libuv code (done never called). No Lua API. */
int tulua__stream_send_shutdown(tulua__stream *s, tulua__send_fn done,
                                void *ud);

/* Makes t the TLS layer of the open stream at index 1 and waits, as a read
 * does, until its handshake has ended (tls.c's tulua__tls_begin starts
 * it). Returns true, or nil, message, code; a tail call. The caller has
 * checked the stream (no reader, no TLS yet) and tulua__check_wait. */
int tulua__stream_start_tls(lua_State *L, tulua__stream *s, tulua__tls *t);

/* The TLS layer failed outside a read (its handshake timer set the read
 * buffer's error): reading stops and the waiting reader, if any, is woken
 * to see it. No Lua API. */
void tulua__stream_tls_failed(tulua__stream *s);

/* The extra value a server passes to each connection's task, after the
 * stream: handler(stream) runs only once the task's code has used it
 * (tls.c's server context, for the handshake). Sets it to the value at idx
 * (nil: none). [-0, +0, m] */
void tulua__server_set_context(lua_State *L, tulua__server *srv, int idx);

#endif
