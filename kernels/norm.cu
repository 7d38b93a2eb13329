/* norm: LayerNorm and RMSNorm, one warp per row; weight gradients as fp32
 * column sums over blocks of rows (atomics into scratch), then added.
 * M = 0 rows is a no-op; C must be positive (as the CPU backend). */
#include "cuda_common.h"

#define B2F(x) __bfloat162float(x)
#define F2B(x) __float2bfloat16(x)
static const int WARPS = 8;

__global__ void k_ln_fwd(bf16 *out, float *mean, float *rstd, const bf16 *in, const bf16 *w,
                         const bf16 *b, int M, int C, float eps) {
  int row = blockIdx.x * WARPS + threadIdx.x / 32, lane = threadIdx.x % 32;
  if (row >= M) return;
  const bf16 *x = in + (size_t)row * C;
  float s = 0.0f;
  for (int k = lane; k < C; k += 32) s += B2F(x[k]);
  float m = vl_warp_sum(s) / C;
  float v = 0.0f;
  for (int k = lane; k < C; k += 32) { float d = B2F(x[k]) - m; v += d * d; }
  float r = rsqrtf(vl_warp_sum(v) / C + eps);
  bf16 *y = out + (size_t)row * C;
  for (int k = lane; k < C; k += 32)
    y[k] = F2B((B2F(x[k]) - m) * r * B2F(w[k]) + (b ? B2F(b[k]) : 0.0f));
  if (lane == 0) { mean[row] = m; rstd[row] = r; }
}

__global__ void k_ln_bwd_rows(bf16 *din, const bf16 *dout, const bf16 *in, const bf16 *w,
                              const float *mean, const float *rstd, int M, int C) {
  int row = blockIdx.x * WARPS + threadIdx.x / 32, lane = threadIdx.x % 32;
  if (row >= M) return;
  const bf16 *x = in + (size_t)row * C, *dy = dout + (size_t)row * C;
  const float m = mean[row], r = rstd[row];
  float a = 0.0f, bsum = 0.0f;
  for (int k = lane; k < C; k += 32) {
    float g = B2F(dy[k]) * B2F(w[k]), xh = (B2F(x[k]) - m) * r;
    a += g;
    bsum += g * xh;
  }
  a = vl_warp_sum(a) / C;
  bsum = vl_warp_sum(bsum) / C;
  bf16 *dx = din + (size_t)row * C;
  for (int k = lane; k < C; k += 32) {
    float g = B2F(dy[k]) * B2F(w[k]), xh = (B2F(x[k]) - m) * r;
    dx[k] = F2B(B2F(dx[k]) + r * (g - a - xh * bsum));
  }
}

/* dw[k] += sum_i dy[i,k] xhat[i,k]; db[k] += sum_i dy[i,k] (fp32 scratch) */
__global__ void k_norm_wgrad(float *dw, float *db, const bf16 *dout, const bf16 *in,
                             const float *mean, const float *rstd, int M, int C, int rows_per_block) {
  int k = blockIdx.x * blockDim.x + threadIdx.x;
  if (k >= C) return;
  int r0 = blockIdx.y * rows_per_block, r1 = min(M, r0 + rows_per_block);
  float sw = 0.0f, sb = 0.0f;
  for (int i = r0; i < r1; i++) {
    float g = B2F(dout[(size_t)i * C + k]);
    float xh = (B2F(in[(size_t)i * C + k]) - (mean ? mean[i] : 0.0f)) * rstd[i];
    sw += g * xh;
    sb += g;
  }
  atomicAdd(&dw[k], sw);
  if (db) atomicAdd(&db[k], sb);
}

static int check_norm(const char *op, int M, int C) {
  if (M < 0 || C <= 0) VL_ERROR(VL_EINVAL, "%s: bad shape M=%d C=%d", op, M, C);
  return VL_OK;
}

static int wgrad(vl_ops *o, vl_t *dw, vl_t *db, const vl_t *dout, const vl_t *in,
                 const float *mean, const float *rstd, int M, int C) {
  vl_cuda_ctx *c = vl_ctx(o);
  float *s;
  VL_CALL(vl_cuda_scratch(o, VL_SCRATCH_A, 2 * (size_t)C * sizeof(float), (void **)&s));
  CUDA_CHECK(cudaMemsetAsync(s, 0, 2 * (size_t)C * sizeof(float), c->stream));
  const int rpb = 128;
  dim3 grid(vl_blocks((size_t)C, 128), (unsigned)((M + rpb - 1) / rpb));
  k_norm_wgrad<<<grid, 128, 0, c->stream>>>(s, db ? s + C : NULL, (const bf16 *)dout,
                                            (const bf16 *)in, mean, rstd, M, C, rpb);
  LAUNCH_CHECK("norm_wgrad");
  if (dw) VL_CALL(vl_cuda_add_f32_to_bf16(o, (bf16 *)dw, s, (size_t)C));
  if (db) VL_CALL(vl_cuda_add_f32_to_bf16(o, (bf16 *)db, s + C, (size_t)C));
  return VL_OK;
}

static int cu_ln_forward(vl_ops *o, vl_t *out, float *mean, float *rstd, const vl_t *in,
                         const vl_t *w, const vl_t *b, int M, int C, float eps) {
  VL_CALL(check_norm("layernorm_forward", M, C));
  if (M == 0) return VL_OK;
  k_ln_fwd<<<vl_blocks((size_t)M, WARPS), WARPS * 32, 0, vl_ctx(o)->stream>>>(
      (bf16 *)out, mean, rstd, (const bf16 *)in, (const bf16 *)w, (const bf16 *)b, M, C, eps);
  LAUNCH_CHECK("layernorm_forward");
  return VL_OK;
}
static int cu_ln_backward(vl_ops *o, vl_t *din, vl_t *dw, vl_t *db, const vl_t *dout,
                          const vl_t *in, const vl_t *w, const float *mean, const float *rstd,
                          int M, int C) {
  VL_CALL(check_norm("layernorm_backward", M, C));
  if (M == 0) return VL_OK;
  if (din) {
    k_ln_bwd_rows<<<vl_blocks((size_t)M, WARPS), WARPS * 32, 0, vl_ctx(o)->stream>>>(
        (bf16 *)din, (const bf16 *)dout, (const bf16 *)in, (const bf16 *)w, mean, rstd, M, C);
    LAUNCH_CHECK("layernorm_backward");
  }
  if (dw || db) VL_CALL(wgrad(o, dw, db, dout, in, mean, rstd, M, C));
  return VL_OK;
}

__global__ void k_rms_fwd(bf16 *out, float *rstd, const bf16 *in, const bf16 *w, int M, int C, float eps) {
  int row = blockIdx.x * WARPS + threadIdx.x / 32, lane = threadIdx.x % 32;
  if (row >= M) return;
  const bf16 *x = in + (size_t)row * C;
  float s = 0.0f;
  for (int k = lane; k < C; k += 32) { float v = B2F(x[k]); s += v * v; }
  float r = rsqrtf(vl_warp_sum(s) / C + eps);
  bf16 *y = out + (size_t)row * C;
  for (int k = lane; k < C; k += 32) y[k] = F2B(B2F(x[k]) * r * B2F(w[k]));
  if (lane == 0) rstd[row] = r;
}
__global__ void k_rms_bwd_rows(bf16 *din, const bf16 *dout, const bf16 *in, const bf16 *w,
                               const float *rstd, int M, int C) {
  int row = blockIdx.x * WARPS + threadIdx.x / 32, lane = threadIdx.x % 32;
  if (row >= M) return;
  const bf16 *x = in + (size_t)row * C, *dy = dout + (size_t)row * C;
  const float r = rstd[row];
  float a = 0.0f;
  for (int k = lane; k < C; k += 32) a += B2F(dy[k]) * B2F(w[k]) * B2F(x[k]) * r;
  a = vl_warp_sum(a) / C;
  bf16 *dx = din + (size_t)row * C;
  for (int k = lane; k < C; k += 32)
    dx[k] = F2B(B2F(dx[k]) + r * (B2F(dy[k]) * B2F(w[k]) - B2F(x[k]) * r * a));
}
static int cu_rms_forward(vl_ops *o, vl_t *out, float *rstd, const vl_t *in, const vl_t *w,
                          int M, int C, float eps) {
  VL_CALL(check_norm("rmsnorm_forward", M, C));
  if (M == 0) return VL_OK;
  k_rms_fwd<<<vl_blocks((size_t)M, WARPS), WARPS * 32, 0, vl_ctx(o)->stream>>>(
      (bf16 *)out, rstd, (const bf16 *)in, (const bf16 *)w, M, C, eps);
  LAUNCH_CHECK("rmsnorm_forward");
  return VL_OK;
}
static int cu_rms_backward(vl_ops *o, vl_t *din, vl_t *dw, const vl_t *dout, const vl_t *in,
                           const vl_t *w, const float *rstd, int M, int C) {
  VL_CALL(check_norm("rmsnorm_backward", M, C));
  if (M == 0) return VL_OK;
  if (din) {
    k_rms_bwd_rows<<<vl_blocks((size_t)M, WARPS), WARPS * 32, 0, vl_ctx(o)->stream>>>(
        (bf16 *)din, (const bf16 *)dout, (const bf16 *)in, (const bf16 *)w, rstd, M, C);
    LAUNCH_CHECK("rmsnorm_backward");
  }
  if (dw) VL_CALL(wgrad(o, dw, NULL, dout, in, NULL, rstd, M, C));
  return VL_OK;
}

void vl_cuda_register_norm(vl_ops *o) {
  o->layernorm_forward = cu_ln_forward;
  o->layernorm_backward = cu_ln_backward;
  o->rmsnorm_forward = cu_rms_forward;
  o->rmsnorm_backward = cu_rms_backward;
}
