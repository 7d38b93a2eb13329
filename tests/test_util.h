/* test_util: tiny assertion helpers shared by the C tests.
 * A test program exits 0 (pass), 1 (fail) or 77 (skip, automake's code).
 * CHECK(cond, fmt, ...) records a failure and goes on; the program ends
 * with TEST_END() which prints the counts and returns the exit code. */
#ifndef VL_TEST_UTIL_H
#define VL_TEST_UTIL_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int test_failures_ = 0, test_checks_ = 0;

#define CHECK(cond, ...)                                                   \
  do {                                                                     \
    test_checks_++;                                                        \
    if (!(cond)) {                                                         \
      test_failures_++;                                                    \
      fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond);      \
      fprintf(stderr, __VA_ARGS__);                                        \
      fprintf(stderr, "\n");                                               \
    }                                                                      \
  } while (0)

/* Relative error ||a - b|| / ||b|| of two float arrays (double sums). */
static inline double rel_err_f32(const float *a, const float *b, size_t n) {
  double num = 0, den = 0;
  for (size_t i = 0; i < n; i++) {
    double d = (double)a[i] - (double)b[i];
    num += d * d;
    den += (double)b[i] * (double)b[i];
  }
  if (den == 0) return sqrt(num);
  return sqrt(num / den);
}

#define TEST_SKIP(...)                                  \
  do {                                                  \
    fprintf(stderr, "SKIP: ");                          \
    fprintf(stderr, __VA_ARGS__);                       \
    fprintf(stderr, "\n");                              \
    exit(77);                                           \
  } while (0)

#define TEST_END()                                                           \
  do {                                                                       \
    fprintf(stderr, "%s: %d checks, %d failed\n", __FILE__, test_checks_,    \
            test_failures_);                                                 \
    return test_failures_ ? 1 : 0;                                           \
  } while (0)

/* Source-tree path of a test fixture (VL_SRCDIR is set by `make check`). */
static inline const char *test_path(char *buf, size_t n, const char *rel) {
  const char *src = getenv("VL_SRCDIR");
  snprintf(buf, n, "%s/%s", src ? src : ".", rel);
  return buf;
}

#endif
