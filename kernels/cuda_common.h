/* cuda_common: what every kernels/*.cu file shares — the backend context,
 * checked-call macros, bf16 helpers, scratch buffers, and the registration
 * functions each op family uses to fill the vl_ops table. */
#ifndef VL_CUDA_COMMON_H
#define VL_CUDA_COMMON_H

#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

extern "C" {
#include "err.h"
#include "ops.h"
}

typedef __nv_bfloat16 bf16;

struct vl_cuda_ctx {
  int device;
  cudaStream_t stream;
  cublasLtHandle_t lt;
  void *lt_workspace;
  size_t lt_workspace_bytes;
  void *scratch[3];      /* grow-only transient buffers, one per role */
  size_t scratch_bytes[3];
  float *staging;        /* put_async's fp32 staging (device, grow-only) */
  size_t staging_bytes;
  cudaEvent_t fence[VL_OPS_FENCES]; /* created on first record */
  cudaEvent_t *timers;   /* VL_OPS_TIMERS, created on first record */
};

static inline vl_cuda_ctx *vl_ctx(vl_ops *o) { return (vl_cuda_ctx *)o->ctx; }

#define CUDA_CHECK(call)                                                          \
  do {                                                                            \
    cudaError_t cu_rc_ = (call);                                                  \
    if (cu_rc_ != cudaSuccess)                                                    \
      VL_ERROR(VL_ECUDA, "%s failed: %s", #call, cudaGetErrorString(cu_rc_));      \
  } while (0)

#define CUBLAS_CHECK(call)                                                        \
  do {                                                                            \
    cublasStatus_t cb_rc_ = (call);                                               \
    if (cb_rc_ != CUBLAS_STATUS_SUCCESS)                                          \
      VL_ERROR(VL_ECUDA, "%s failed: cuBLAS status %d", #call, (int)cb_rc_);       \
  } while (0)

/* after every launch: configuration errors surface here, with the kernel */
#define LAUNCH_CHECK(what)                                                        \
  do {                                                                            \
    cudaError_t cu_rc_ = cudaGetLastError();                                      \
    if (cu_rc_ != cudaSuccess)                                                    \
      VL_ERROR(VL_ECUDA, "kernel %s failed to launch: %s", what,                  \
               cudaGetErrorString(cu_rc_));                                       \
  } while (0)

enum { VL_SCRATCH_A = 0, VL_SCRATCH_B = 1, VL_SCRATCH_C = 2 };
/* A device buffer of at least `bytes` for transient use inside one op. */
int vl_cuda_scratch(vl_ops *o, int which, size_t bytes, void **out);

/* Blocks of `threads` covering n items; at least one, so that an op called on
 * zero items launches a valid (empty) grid: every kernel bounds-checks. */
static inline unsigned vl_blocks(size_t n, unsigned threads) {
  return n ? (unsigned)((n + threads - 1) / threads) : 1u;
}

__device__ __forceinline__ float vl_warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ float vl_warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

/* Sum (MAX = false) or maximum over a block whose size is a multiple of 32;
 * every thread gets the result.  Safe to call repeatedly in one kernel. */
template <bool MAX>
__device__ __forceinline__ float vl_block_reduce(float v) {
  __shared__ float red[32];
  __shared__ float result;
  v = MAX ? vl_warp_max(v) : vl_warp_sum(v);
  __syncthreads(); /* a previous call's readers are done with result */
  if (threadIdx.x % 32 == 0) red[threadIdx.x / 32] = v;
  __syncthreads();
  if (threadIdx.x == 0) {
    float r = red[0];
    for (int w = 1; w < (int)blockDim.x / 32; w++) r = MAX ? fmaxf(r, red[w]) : r + red[w];
    result = r;
  }
  __syncthreads();
  return result;
}

/* fp32 column sums of an fp32 scratch added into a bf16 gradient: g += s */
int vl_cuda_add_f32_to_bf16(vl_ops *o, bf16 *g, const float *s, size_t n);
/* Deterministic second stage of a column reduction (kernels/norm.cu): for
 * the fp32 partials part (nb, ncols), g0[c] += sum_b part[b][c] for c < split
 * and g1[c - split] += ... for the other columns; a NULL g skips its columns. */
int vl_cuda_colsum_add(vl_ops *o, const float *part, int nb, int ncols, bf16 *g0, bf16 *g1,
                       int split);
/* The device's multiprocessor count (cached). */
int vl_cuda_sm_count(vl_ops *o, int *n);
/* VL_NORM_LEGACY=1 selects the older norm and rope kernels (timings). */
int vl_cuda_norm_legacy(void);

void vl_cuda_register_linear(vl_ops *o);
void vl_cuda_register_pointwise(vl_ops *o);
void vl_cuda_register_norm(vl_ops *o);
void vl_cuda_register_rope(vl_ops *o);
void vl_cuda_register_attention(vl_ops *o);
void vl_cuda_register_loss(vl_ops *o);
void vl_cuda_register_optim(vl_ops *o);

/* cuBLASLt GEMM in row-major terms: C (M,N) = alpha * A' B' + beta * C with
 * A' = A (M,K) or A^T where A is (K,M) [ta], B' = B (K,N) or B^T where B is
 * (N,K) [tb]; optional bias (N) epilogue; A, B bf16; C bf16 or fp32. */
/* The same with row-major leading dimensions (elements between rows; 0 =
 * packed) of C, A and B, for strided views such as one head of q|k|v rows. */
int vl_cuda_gemm_ld(vl_ops *o, void *C, int c_is_f32, int64_t ldc, const bf16 *A, int ta,
                    int64_t lda, const bf16 *B, int tb, int64_t ldb, const bf16 *bias, int M,
                    int N, int K, float alpha, float beta);
/* `batch` independent GEMMs whose A, B and C start stride_a, stride_b,
 * stride_c elements apart (e.g. the heads of packed q|k|v rows). */
int vl_cuda_gemm_batched(vl_ops *o, void *C, int c_is_f32, int64_t ldc, int64_t stride_c,
                         const bf16 *A, int ta, int64_t lda, int64_t stride_a, const bf16 *B,
                         int tb, int64_t ldb, int64_t stride_b, const bf16 *bias, int M, int N,
                         int K, int batch, float alpha, float beta);
/* Releases the cached cuBLASLt plans (backend destruction). */
void vl_cuda_gemm_plans_free(void);
int vl_cuda_gemm(vl_ops *o, void *C, int c_is_f32, const bf16 *A, int ta, const bf16 *B,
                 int tb, const bf16 *bias, int M, int N, int K, float alpha, float beta);

#endif
