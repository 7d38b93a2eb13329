/* err: error status, messages and the call-site traceback macros.
 *
 * Every function that can fail returns int: 0 (VL_OK) or a VL_E* code.
 * The function that detects a failure calls VL_ERROR(code, fmt, ...), which
 * prints "vltrain: error: <message>" plus "  at file:line (func)" and returns
 * the code; each caller on the way up wraps the call in VL_CALL(...), which
 * adds one "  at file:line (func)" line and returns the same code.  Only
 * main() decides to abort (MPI_Abort).  Library code never calls exit().
 *
 * The last message is also kept (vl_err_last()) so tests can check the exact
 * text a user would see; vl_err_set_quiet(1) stops printing (tests of bad
 * input).  Both are per thread: a helper thread (the dataset prefetch) has
 * its own message and quiet flag, and hands its failures to the main thread.
 */
#ifndef VL_ERR_H
#define VL_ERR_H

#include <stddef.h>

enum {
  VL_OK = 0,
  VL_EINVAL = 1,   /* bad argument or bad user input (config, CLI) */
  VL_EIO = 2,      /* file missing, unreadable, short read, bad format */
  VL_ENOMEM = 3,   /* host or device allocation failed */
  VL_EMPI = 4,     /* an MPI call failed */
  VL_ECUDA = 5,    /* a CUDA, cuBLAS or cuDNN call failed */
  VL_ENCCL = 6,    /* an NCCL call failed or timed out */
  VL_EHDF5 = 7,    /* an HDF5 call failed */
  VL_ESHAPE = 8,   /* tensor shape/dtype mismatch, missing or extra tensor */
  VL_ENOTSUP = 9,  /* a feature not available in this build */
};

/* Records and (unless quiet) prints the message; returns code. */
int vl_err_raise(int code, const char *file, int line, const char *func,
                 const char *fmt, ...) __attribute__((format(printf, 5, 6)));
/* Adds one traceback line; returns code. */
int vl_err_trace(int code, const char *file, int line, const char *func);

const char *vl_err_last(void);   /* text of the last VL_ERROR message */
void vl_err_clear(void);
void vl_err_set_quiet(int quiet); /* 1: record only, print nothing */
const char *vl_err_name(int code);

#define VL_ERROR(code, ...) \
  return vl_err_raise((code), __FILE__, __LINE__, __func__, __VA_ARGS__)

#define VL_CALL(expr)                                             \
  do {                                                            \
    int vl_rc_ = (expr);                                          \
    if (vl_rc_ != VL_OK)                                          \
      return vl_err_trace(vl_rc_, __FILE__, __LINE__, __func__);  \
  } while (0)

/* For cleanup paths: record the failure in rc and jump to label. */
#define VL_CALL_GOTO(rc, label, expr)                                 \
  do {                                                                \
    (rc) = (expr);                                                    \
    if ((rc) != VL_OK) {                                              \
      vl_err_trace((rc), __FILE__, __LINE__, __func__);               \
      goto label;                                                     \
    }                                                                 \
  } while (0)

#define VL_ERROR_GOTO(rc, label, code, ...)                                 \
  do {                                                                      \
    (rc) = vl_err_raise((code), __FILE__, __LINE__, __func__, __VA_ARGS__); \
    goto label;                                                             \
  } while (0)

/* Checked allocation helpers: VL_ENOMEM with the size and what it was for. */
int vl_malloc(void **out, size_t bytes, const char *what);
int vl_calloc(void **out, size_t count, size_t size, const char *what);

#endif
