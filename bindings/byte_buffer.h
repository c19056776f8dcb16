/* byte_buffer.h: the one growable byte buffer of bindings/ (stream and file
 * stream reads, process.run's captured output, fs.read_file, fs.lines, the
 * process pool's channel, the transfer encoder's output).
 *
 * The bytes held are base[pos..len): a reader consumes from the front
 * (pos), a producer appends at the end (len), and the room freed at the
 * front is reused when the end runs out of it. Every size computation is
 * checked for overflow: a size past PTRDIFF_MAX (the largest object C
 * allows) fails with UV_ENOMEM like one that malloc refuses. Nothing here
 * calls the Lua API, so a libuv callback or a pool thread may use it. */
#ifndef TULUA_BYTE_BUFFER_H
#define TULUA_BYTE_BUFFER_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <uv.h>

#define TULUA__BYTES_MIN                                                       \
  1024 /* the smallest allocation: no crawl of reallocs */

typedef struct tulua__bytes {
  char *base; /* malloc'd, or NULL when nothing was ever reserved */
  size_t pos, len, cap;
} tulua__bytes;

/* Returns how many bytes the buffer holds (not consumed yet). */
static inline size_t tulua__bytes_avail(const tulua__bytes *b) {
  return b->len - b->pos;
}

/* Makes room for n more bytes after len, first by moving the held bytes to
 * the front, else by growing (at least doubling, so that appends cost
 * amortized constant time). Returns 0 or UV_ENOMEM, leaving the buffer as
 * it was on failure. Moves base: pointers into it become invalid. */
static inline int tulua__bytes_reserve(tulua__bytes *b, size_t n) {
  if (n <= b->cap - b->len) return 0;
  if (b->pos > 0) { /* the consumed front is room too */
    memmove(b->base, b->base + b->pos, b->len - b->pos);
    b->len -= b->pos;
    b->pos = 0;
    if (n <= b->cap - b->len) return 0;
  }
  if (n > (size_t)PTRDIFF_MAX - b->len) return UV_ENOMEM; /* too big */
  size_t need = b->len + n;
  size_t cap = b->cap <= (size_t)PTRDIFF_MAX / 2 ? b->cap * 2 : need;
  if (cap < need) cap = need;
  if (cap < TULUA__BYTES_MIN) cap = TULUA__BYTES_MIN;
  char *p = realloc(b->base, cap);
  if (p == NULL) return UV_ENOMEM;
  b->base = p;
  b->cap = cap;
  return 0;
}

/* Appends the n bytes at p. Returns 0 or UV_ENOMEM (nothing appended). */
static inline int tulua__bytes_append(tulua__bytes *b, const char *p,
                                      size_t n) {
  int rc = tulua__bytes_reserve(b, n);
  if (rc < 0) return rc;
  if (n > 0) memcpy(b->base + b->len, p, n);
  b->len += n;
  return 0;
}

/* Drops the first n held bytes (n <= tulua__bytes_avail); an emptied
 * buffer starts again at the front. */
static inline void tulua__bytes_consume(tulua__bytes *b, size_t n) {
  b->pos += n;
  if (b->pos == b->len) b->pos = b->len = 0;
}

/* Frees the memory and leaves an empty buffer, usable again. */
static inline void tulua__bytes_free(tulua__bytes *b) {
  free(b->base);
  b->base = NULL;
  b->pos = b->len = b->cap = 0;
}

#endif
