/* read_buffer.h: the read buffer shared by every readable object (stream.c's
 * streams, file_stream.c's file streams): the unread bytes, the request of
 * the waiting reader, and the parsing of read, read_exactly, read_line,
 * read_all and lines. Defined in read_buffer.c. */
#ifndef TULUA_READ_BUFFER_H
#define TULUA_READ_BUFFER_H

#include "byte_buffer.h"
#include "common.h"

/* What a read asks for. */
enum { TULUA__R_ANY, TULUA__R_EXACT, TULUA__R_LINE, TULUA__R_ALL };

/* The unread bytes of a stream and the read its task waits for: one parser
 * for every stream (stream.c's and file_stream.c's). No Lua API in the
 * functions without a lua_State. */
typedef struct tulua__rbuf {
  tulua__bytes b; /* the unread bytes */
  size_t scanned; /* read_line: bytes after pos known to hold no separator */
  size_t want; /* bytes (R_EXACT), else the most (R_ANY, R_LINE, R_ALL) */
  char sep[8]; /* read_line's separator */
  size_t seplen;
  int err; /* a read error (negative), sticky */
  const char *err_msg, *err_code; /* err's message and code when no libuv
                                   * code says it (TLS's, tls.c) */
  unsigned char mode, eof;
} tulua__rbuf;

/* Whether the read asked for can be answered now (or the stream ended). */
int tulua__rbuf_satisfied(tulua__rbuf *rb);

/* Reads the arguments of read(n), read_exactly(n), read_line(opts) or
 * read_all(max) (from index 2) into rb's request, and sets the stack to
 * the stream alone. Returns 1, or 0 after pushing the answer itself
 * (read_exactly(0)). [-?, +(0|1), v] */
int tulua__rbuf_request(lua_State *L, tulua__rbuf *rb, int mode);

/* Pushes the answer to the request, which must be satisfied: what names
 * the stream in messages ("tcp stream"), subject in failures ("tcp").
 * Consumes what it returns; an emptied big buffer is freed if may_free (0
 * while a read writes into it). */
int tulua__rbuf_push(lua_State *L, tulua__rbuf *rb, const char *what,
                     const char *subject, int may_free);

/* The lines([opts]) method of any object with a read_line method: an
 * iterator of read_line's lines that raises on a failure. */
int tulua__rbuf_lines(lua_State *L);

#endif
