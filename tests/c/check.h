/* check.h: the assertions of the C tests (after libuv's test/task.h). A
 * failed check prints file:line, the expression and both values, and returns
 * 1 from the test function; a test returns 0 when every check passed. */
#ifndef TULUA_CHECK_H
#define TULUA_CHECK_H

#include <stdint.h>
#include <stdio.h>
#include <string.h>

/* Fails unless two integer (or pointer-sized) values are equal. */
#define CHECK_EQ(expected, actual)                                             \
  do {                                                                         \
    intmax_t e_ = (intmax_t)(expected), a_ = (intmax_t)(actual);               \
    if (e_ != a_) {                                                            \
      fprintf(stderr, "%s:%d: CHECK_EQ(%s, %s): expected %jd, got %jd\n",      \
              __FILE__, __LINE__, #expected, #actual, e_, a_);                 \
      return 1;                                                                \
    }                                                                          \
  } while (0)

/* Fails unless lo <= actual <= hi; for counts and times (doubles). */
#define CHECK_RANGE(lo, actual, hi)                                            \
  do {                                                                         \
    double l_ = (double)(lo), a_ = (double)(actual), h_ = (double)(hi);        \
    if (!(l_ <= a_ && a_ <= h_)) {                                             \
      fprintf(stderr, "%s:%d: CHECK_RANGE(%s, %s, %s): %g not in [%g, %g]\n",  \
              __FILE__, __LINE__, #lo, #actual, #hi, a_, l_, h_);              \
      return 1;                                                                \
    }                                                                          \
  } while (0)

/* Fails unless two strings are equal (NULL is shown as "(null)"). */
#define CHECK_STR_EQ(expected, actual)                                         \
  do {                                                                         \
    const char *e_ = (expected), *a_ = (actual);                               \
    if (e_ == NULL || a_ == NULL || strcmp(e_, a_) != 0) {                     \
      fprintf(stderr,                                                          \
              "%s:%d: CHECK_STR_EQ(%s, %s):\n  expected \"%s\"\n"              \
              "  got      \"%s\"\n",                                           \
              __FILE__, __LINE__, #expected, #actual, e_ ? e_ : "(null)",      \
              a_ ? a_ : "(null)");                                             \
      return 1;                                                                \
    }                                                                          \
  } while (0)

/* Fails unless the string haystack contains needle. */
#define CHECK_CONTAINS(haystack, needle)                                       \
  do {                                                                         \
    const char *h_ = (haystack), *n_ = (needle);                               \
    if (h_ == NULL || strstr(h_, n_) == NULL) {                                \
      fprintf(stderr,                                                          \
              "%s:%d: CHECK_CONTAINS(%s, %s):\n  \"%s\"\n"                     \
              "  does not contain \"%s\"\n",                                   \
              __FILE__, __LINE__, #haystack, #needle, h_ ? h_ : "(null)", n_); \
      return 1;                                                                \
    }                                                                          \
  } while (0)

/* Fails unless cond holds. */
#define CHECK(cond)                                                            \
  do {                                                                         \
    if (!(cond)) {                                                             \
      fprintf(stderr, "%s:%d: CHECK(%s) failed\n", __FILE__, __LINE__, #cond); \
      return 1;                                                                \
    }                                                                          \
  } while (0)

/* One entry of a test table: main runs them in order. */
typedef struct {
  const char *name;
  int (*fn)(void);
} check_case;

/* Runs the cases (only those whose name contains filter, if not NULL),
 * prints one line per test and the totals; returns the process status. */
static inline int check_run(const check_case *cases, const char *filter) {
  int passed = 0, failed = 0;
  for (const check_case *c = cases; c->name != NULL; c++) {
    if (filter != NULL && strstr(c->name, filter) == NULL) continue;
    int rc = c->fn();
    printf("%s %s\n", rc == 0 ? "ok  " : "FAIL", c->name);
    fflush(stdout);
    if (rc == 0)
      passed++;
    else
      failed++;
  }
  printf("%d passed, %d failed\n", passed, failed);
  return failed == 0 ? 0 : 1;
}

#endif
