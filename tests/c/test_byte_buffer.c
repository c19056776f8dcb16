/* test_byte_buffer.c: the growable byte buffer of bindings/byte_buffer.h,
 * which every read buffer of the bindings is built on: growth, reuse of
 * the consumed front, and the overflow checks. */
#include <stdint.h>

#include "../../bindings/byte_buffer.h"
#include "check.h"

static int test_append_and_consume(void) {
  tulua__bytes b = {0};
  CHECK_EQ(0, tulua__bytes_avail(&b));
  CHECK_EQ(0, tulua__bytes_append(&b, "hello ", 6));
  CHECK_EQ(0, tulua__bytes_append(&b, "world", 5));
  CHECK_EQ(11, tulua__bytes_avail(&b));
  CHECK_EQ(0, memcmp(b.base + b.pos, "hello world", 11));
  tulua__bytes_consume(&b, 6);
  CHECK_EQ(5, tulua__bytes_avail(&b));
  CHECK_EQ(0, memcmp(b.base + b.pos, "world", 5));
  tulua__bytes_consume(&b, 5); /* emptied: starts again at the front */
  CHECK_EQ(0, b.pos);
  CHECK_EQ(0, b.len);
  tulua__bytes_free(&b);
  CHECK(b.base == NULL);
  CHECK_EQ(0, b.cap);
  return 0;
}

static int test_grows_by_doubling(void) {
  tulua__bytes b = {0};
  CHECK_EQ(0, tulua__bytes_reserve(&b, 1));
  CHECK_EQ(TULUA__BYTES_MIN, b.cap); /* no crawl of tiny reallocs */
  b.len = b.cap;
  CHECK_EQ(0, tulua__bytes_reserve(&b, 1));
  CHECK_EQ(2 * TULUA__BYTES_MIN, b.cap);
  b.len = b.cap;
  CHECK_EQ(0, tulua__bytes_reserve(&b, 10 * TULUA__BYTES_MIN));
  CHECK_EQ(12 * TULUA__BYTES_MIN, b.cap); /* what is needed, if more */
  tulua__bytes_free(&b);
  return 0;
}

/* The consumed front is room: reserving moves the held bytes there rather
 * than growing. */
static int test_reuses_the_front(void) {
  tulua__bytes b = {0};
  char chunk[TULUA__BYTES_MIN];
  memset(chunk, 'x', sizeof chunk);
  CHECK_EQ(0, tulua__bytes_append(&b, chunk, sizeof chunk));
  size_t cap = b.cap;
  tulua__bytes_consume(&b, sizeof chunk - 3);
  CHECK_EQ(0, tulua__bytes_append(&b, "abc", 3));
  CHECK_EQ(cap, b.cap);
  CHECK_EQ(0, b.pos);
  CHECK_EQ(6, tulua__bytes_avail(&b));
  CHECK_EQ(0, memcmp(b.base, "xxxabc", 6));
  tulua__bytes_free(&b);
  return 0;
}

/* A size past the largest object fails as malloc would, and leaves the
 * buffer as it was. */
static int test_overflow_fails(void) {
  tulua__bytes b = {0};
  CHECK_EQ(0, tulua__bytes_append(&b, "abc", 3));
  char *base = b.base;
  CHECK_EQ(UV_ENOMEM, tulua__bytes_reserve(&b, SIZE_MAX));
  CHECK_EQ(UV_ENOMEM, tulua__bytes_reserve(&b, (size_t)PTRDIFF_MAX - 2));
  CHECK(b.base == base);
  CHECK_EQ(3, tulua__bytes_avail(&b));
  CHECK_EQ(0, memcmp(b.base, "abc", 3));
  tulua__bytes_free(&b);
  return 0;
}

int main(int argc, char **argv) {
  static const check_case cases[] = {
      {"append_and_consume", test_append_and_consume},
      {"grows_by_doubling", test_grows_by_doubling},
      {"reuses_the_front", test_reuses_the_front},
      {"overflow_fails", test_overflow_fails},
      {NULL, NULL}};
  return check_run(cases, argc > 1 ? argv[1] : NULL);
}
