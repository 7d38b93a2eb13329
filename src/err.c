/* err: see err.h. */
#include "err.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* per thread: a helper thread (dataset prefetch) keeps its own message */
static _Thread_local char last_message[2048];
static _Thread_local int quiet;

const char *vl_err_name(int code) {
  switch (code) {
  case VL_OK: return "ok";
  case VL_EINVAL: return "invalid input";
  case VL_EIO: return "I/O error";
  case VL_ENOMEM: return "out of memory";
  case VL_EMPI: return "MPI error";
  case VL_ECUDA: return "CUDA error";
  case VL_ENCCL: return "NCCL error";
  case VL_EHDF5: return "HDF5 error";
  case VL_ESHAPE: return "shape mismatch";
  case VL_ENOTSUP: return "not supported in this build";
  default: return "unknown error";
  }
}

int vl_err_raise(int code, const char *file, int line, const char *func,
                 const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(last_message, sizeof last_message, fmt, ap);
  va_end(ap);
  if (!quiet) {
    fprintf(stderr, "vltrain: error: %s\n  at %s:%d (%s)\n", last_message,
            file, line, func);
    fflush(stderr);
  }
  return code;
}

int vl_err_trace(int code, const char *file, int line, const char *func) {
  if (!quiet) {
    fprintf(stderr, "  at %s:%d (%s)\n", file, line, func);
    fflush(stderr);
  }
  return code;
}

const char *vl_err_last(void) { return last_message; }
void vl_err_clear(void) { last_message[0] = '\0'; }
void vl_err_set_quiet(int q) { quiet = q; }

int vl_malloc(void **out, size_t bytes, const char *what) {
  *out = malloc(bytes ? bytes : 1);
  if (!*out)
    VL_ERROR(VL_ENOMEM, "cannot allocate %zu bytes of host memory for %s",
             bytes, what);
  return VL_OK;
}

int vl_calloc(void **out, size_t count, size_t size, const char *what) {
  *out = calloc(count ? count : 1, size ? size : 1);
  if (!*out)
    VL_ERROR(VL_ENOMEM, "cannot allocate %zu x %zu bytes of host memory for %s",
             count, size, what);
  return VL_OK;
}
