/* optim: AdamW on fp32 master shards writing the bf16 working copy, and the
 * sum of squares for the global gradient norm. */
#include <math.h>

#include "cuda_common.h"
#include "sround.h"

/* *out += sum of (a - b)^2, b NULL meaning 0: the sum of squares */
__global__ void k_sumsq(double *out, const bf16 *a, const bf16 *b, size_t n) {
  float s = 0.0f;
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
    float d = __bfloat162float(a[i]) - (b ? __bfloat162float(b[i]) : 0.0f);
    s += d * d;
  }
  s = vl_block_reduce<false>(s);
  if (threadIdx.x == 0) atomicAdd(out, (double)s);
}

static int sumsq_launch(vl_ops *o, const vl_t *a, const vl_t *b, size_t n, double *out) {
  vl_cuda_ctx *c = vl_ctx(o);
  double *d;
  VL_CALL(vl_cuda_scratch(o, VL_SCRATCH_B, sizeof(double), (void **)&d));
  CUDA_CHECK(cudaMemsetAsync(d, 0, sizeof(double), c->stream));
  unsigned blocks = vl_blocks(n, 256);
  if (blocks > 4096) blocks = 4096;
  if (blocks == 0) blocks = 1;
  k_sumsq<<<blocks, 256, 0, c->stream>>>(d, (const bf16 *)a, (const bf16 *)b, n);
  LAUNCH_CHECK("sumsq");
  CUDA_CHECK(cudaMemcpyAsync(out, d, sizeof(double), cudaMemcpyDeviceToHost, c->stream));
  CUDA_CHECK(cudaStreamSynchronize(c->stream));
  return VL_OK;
}

static int cu_sumsq(vl_ops *o, const vl_t *x, size_t n, double *out) {
  return sumsq_launch(o, x, NULL, n, out);
}

static int cu_diff_sumsq(vl_ops *o, const vl_t *a, const vl_t *b, size_t n, double *out) {
  return sumsq_launch(o, a, b, n, out);
}

__global__ void k_adamw(float *master, float *m, float *v, const bf16 *grad, bf16 *param, size_t n,
                        float lr, float b1, float b2, float eps, float wd, float gs, float step,
                        float bc2s) {
  size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
  if (i >= n) return;
  float g = gs * __bfloat162float(grad[i]);
  float p = master[i] * (1.0f - lr * wd);
  float mi = b1 * m[i] + (1.0f - b1) * g, vi = b2 * v[i] + (1.0f - b2) * g * g;
  p -= step * mi / (sqrtf(vi) / bc2s + eps);
  m[i] = mi;
  v[i] = vi;
  master[i] = p;
  param[i] = __float2bfloat16(p);
}

static int cu_adamw(vl_ops *o, float *master, float *m, float *v, const vl_t *grad, vl_t *param,
                    size_t n, float lr, float b1, float b2, float eps, float wd, float gs, int t) {
  const double bc1 = 1.0 - pow(b1, t), bc2 = 1.0 - pow(b2, t);
  k_adamw<<<vl_blocks(n, 256), 256, 0, vl_ctx(o)->stream>>>(
      master, m, v, (const bf16 *)grad, (bf16 *)param, n, lr, b1, b2, eps, wd, gs,
      (float)(lr / bc1), (float)sqrt(bc2));
  LAUNCH_CHECK("adamw");
  return VL_OK;
}

/* The lean update (ops.h adamw_lean): every operation rounded as the CPU
 * backend rounds it (no fused multiply-adds), so the two agree bitwise. */
__global__ void k_adamw_lean(float *m, float *v, const bf16 *grad, bf16 *param, size_t n,
                             float b1, float b2, float eps, float gs, float step, float bc2s,
                             float decay, float c1, float c2, uint64_t seed, size_t index0) {
  size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
  if (i >= n) return;
  const float g = __fmul_rn(gs, __bfloat162float(grad[i]));
  const float mi = __fadd_rn(__fmul_rn(b1, m[i]), __fmul_rn(c1, g));
  const float vi = __fadd_rn(__fmul_rn(b2, v[i]), __fmul_rn(__fmul_rn(c2, g), g));
  const float den = __fadd_rn(__fdiv_rn(__fsqrt_rn(vi), bc2s), eps);
  float p = __fmul_rn(__bfloat162float(param[i]), decay);
  p = __fsub_rn(p, __fdiv_rn(__fmul_rn(step, mi), den));
  m[i] = mi;
  v[i] = vi;
  __nv_bfloat16_raw r;
  r.x = vl_sr_bf16_bits(p, vl_sr_hash((uint64_t)(index0 + i), seed));
  param[i] = bf16(r);
}

static int cu_adamw_lean(vl_ops *o, float *m, float *v, const vl_t *grad, vl_t *param, size_t n,
                         float lr, float b1, float b2, float eps, float wd, float gs, int t,
                         uint64_t seed, size_t index0) {
  if (t < 1) VL_ERROR(VL_EINVAL, "adamw_lean: step %d (steps count from 1)", t);
  const double bc1 = 1.0 - pow(b1, t), bc2 = 1.0 - pow(b2, t);
  /* the scalar factors exactly as the CPU backend forms them (fp32) */
  const float step = (float)(lr / bc1), bc2s = (float)sqrt(bc2);
  volatile float lw = lr * wd, nb1 = 1.0f - b1, nb2 = 1.0f - b2;
  const float decay = 1.0f - lw;
  k_adamw_lean<<<vl_blocks(n, 256), 256, 0, vl_ctx(o)->stream>>>(
      m, v, (const bf16 *)grad, (bf16 *)param, n, b1, b2, eps, gs, step, bc2s, decay, nb1, nb2,
      seed, index0);
  LAUNCH_CHECK("adamw_lean");
  return VL_OK;
}

void vl_cuda_register_optim(vl_ops *o) {
  o->adamw_lean = cu_adamw_lean;
  o->sumsq = cu_sumsq;
  o->diff_sumsq = cu_diff_sumsq;
  o->adamw = cu_adamw;
}
