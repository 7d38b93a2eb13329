/* rope: per-head RMSNorm (optional) + rotate-half RoPE on packed q|k|v rows,
 * one block per row, one warp per head.  hd even and <= MAX_HD; T = 0 is a
 * no-op; dqkv NULL still gives the norm weights' gradients. */
#include "cuda_common.h"

#define B2F(x) __bfloat162float(x)
#define F2B(x) __float2bfloat16(x)
static const int WARPS = 8;
static const int MAX_HD = 256;

__global__ void k_qk_fwd(bf16 *out, float *rstd, const bf16 *qkv, const bf16 *qw, const bf16 *kw,
                         const float *cosv, const float *sinv, int T, int nh, int nkv, int hd, float eps) {
  __shared__ float buf[WARPS][MAX_HD];
  const int t = blockIdx.x, warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int W = (nh + 2 * nkv) * hd, half = hd / 2, nqk = nh + nkv;
  const bf16 *row = qkv + (size_t)t * W;
  bf16 *orow = out + (size_t)t * W;
  const float *c = cosv + (size_t)t * hd, *s = sinv + (size_t)t * hd;
  for (int h = warp; h < nqk; h += WARPS) {
    const bf16 *x = row + (size_t)h * hd;
    const bf16 *w = h < nh ? qw : kw;
    float r = 1.0f;
    if (w) {
      float ss = 0.0f;
      for (int k = lane; k < hd; k += 32) { float v = B2F(x[k]); ss += v * v; }
      r = rsqrtf(vl_warp_sum(ss) / hd + eps);
      if (lane == 0) rstd[(size_t)t * nqk + h] = r;
    }
    for (int k = lane; k < hd; k += 32) buf[warp][k] = B2F(x[k]) * r * (w ? B2F(w[k]) : 1.0f);
    __syncwarp();
    for (int k = lane; k < hd; k += 32) {
      float rot = k < half ? -buf[warp][k + half] : buf[warp][k - half];
      orow[(size_t)h * hd + k] = F2B(buf[warp][k] * c[k] + rot * s[k]);
    }
    __syncwarp();
  }
  for (int k = threadIdx.x; k < nkv * hd; k += blockDim.x)
    orow[(size_t)nqk * hd + k] = row[(size_t)nqk * hd + k];
}

/* dw: fp32 scratch (2, hd): q then k; dqkv may be NULL */
__global__ void k_qk_bwd(bf16 *dqkv, float *dw, const bf16 *dout, const bf16 *qkv, const bf16 *qw,
                         const bf16 *kw, const float *rstd, const float *cosv, const float *sinv,
                         int T, int nh, int nkv, int hd) {
  __shared__ float dn[WARPS][MAX_HD];
  const int t = blockIdx.x, warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int W = (nh + 2 * nkv) * hd, half = hd / 2, nqk = nh + nkv;
  const float *c = cosv + (size_t)t * hd, *s = sinv + (size_t)t * hd;
  for (int h = warp; h < nqk; h += WARPS) {
    const bf16 *dy = dout + (size_t)t * W + (size_t)h * hd;
    for (int k = lane; k < hd; k += 32)
      dn[warp][k] = k < half ? B2F(dy[k]) * c[k] + B2F(dy[k + half]) * s[k + half]
                             : B2F(dy[k]) * c[k] - B2F(dy[k - half]) * s[k - half];
    __syncwarp();
    const bf16 *x = qkv + (size_t)t * W + (size_t)h * hd;
    bf16 *dx = dqkv + (size_t)t * W + (size_t)h * hd;
    const bf16 *w = h < nh ? qw : kw;
    if (w) {
      const float r = rstd[(size_t)t * nqk + h];
      float a = 0.0f;
      for (int k = lane; k < hd; k += 32) a += dn[warp][k] * B2F(w[k]) * B2F(x[k]) * r;
      a = vl_warp_sum(a) / hd;
      for (int k = lane; k < hd; k += 32) {
        float xv = B2F(x[k]);
        if (dqkv) dx[k] = F2B(B2F(dx[k]) + r * (dn[warp][k] * B2F(w[k]) - xv * r * a));
        if (dw) atomicAdd(&dw[(h < nh ? 0 : hd) + k], dn[warp][k] * xv * r);
      }
    } else if (dqkv) {
      for (int k = lane; k < hd; k += 32) dx[k] = F2B(B2F(dx[k]) + dn[warp][k]);
    }
    __syncwarp();
  }
  if (!dqkv) return;
  for (int k = threadIdx.x; k < nkv * hd; k += blockDim.x) {
    size_t i = (size_t)t * W + (size_t)nqk * hd + k;
    dqkv[i] = F2B(B2F(dqkv[i]) + B2F(dout[i]));
  }
}

/* The CPU backend's checks (ops.h), plus the kernels' head_dim limit.  As
 * there, the norms are used when q_w is given (k_w alone is ignored). */
static int check_qk(const char *op, const vl_t *qw, const vl_t *kw, const float *rstd, int T,
                    int nh, int nkv, int hd) {
  if (T < 0 || nh < 0 || nkv < 0 || hd <= 0 || hd % 2)
    VL_ERROR(VL_EINVAL, "%s: bad shape T=%d nh=%d nkv=%d hd=%d (hd must be even)", op, T, nh,
             nkv, hd);
  if (qw && (!kw || !rstd))
    VL_ERROR(VL_EINVAL, "%s: with q_w given, k_w and rstd are needed too", op);
  if (hd > MAX_HD) VL_ERROR(VL_ENOTSUP, "%s: head_dim %d > %d", op, hd, MAX_HD);
  return VL_OK;
}

static int cu_qk_forward(vl_ops *o, vl_t *out, float *rstd, const vl_t *qkv, const vl_t *qw,
                         const vl_t *kw, const float *cosv, const float *sinv, int T, int nh,
                         int nkv, int hd, float eps) {
  VL_CALL(check_qk("qk_norm_rope_forward", qw, kw, rstd, T, nh, nkv, hd));
  if (T == 0) return VL_OK;
  if (!qw) kw = NULL;
  k_qk_fwd<<<T, WARPS * 32, 0, vl_ctx(o)->stream>>>((bf16 *)out, rstd, (const bf16 *)qkv,
                                                    (const bf16 *)qw, (const bf16 *)kw, cosv, sinv,
                                                    T, nh, nkv, hd, eps);
  LAUNCH_CHECK("qk_norm_rope_forward");
  return VL_OK;
}
static int cu_qk_backward(vl_ops *o, vl_t *dqkv, vl_t *dqw, vl_t *dkw, const vl_t *dout,
                          const vl_t *qkv, const vl_t *qw, const vl_t *kw, const float *rstd,
                          const float *cosv, const float *sinv, int T, int nh, int nkv, int hd) {
  VL_CALL(check_qk("qk_norm_rope_backward", qw, kw, rstd, T, nh, nkv, hd));
  if (T == 0 || (!dqkv && !dqw && !dkw)) return VL_OK;
  if (!qw) kw = NULL;
  vl_cuda_ctx *c = vl_ctx(o);
  float *dw = NULL;
  if (qw && (dqw || dkw)) {
    VL_CALL(vl_cuda_scratch(o, VL_SCRATCH_A, 2 * (size_t)hd * sizeof(float), (void **)&dw));
    CUDA_CHECK(cudaMemsetAsync(dw, 0, 2 * (size_t)hd * sizeof(float), c->stream));
  }
  k_qk_bwd<<<T, WARPS * 32, 0, c->stream>>>((bf16 *)dqkv, dw, (const bf16 *)dout, (const bf16 *)qkv,
                                            (const bf16 *)qw, (const bf16 *)kw, rstd, cosv, sinv,
                                            T, nh, nkv, hd);
  LAUNCH_CHECK("qk_norm_rope_backward");
  if (dw && dqw) VL_CALL(vl_cuda_add_f32_to_bf16(o, (bf16 *)dqw, dw, (size_t)hd));
  if (dw && dkw) VL_CALL(vl_cuda_add_f32_to_bf16(o, (bf16 *)dkw, dw + hd, (size_t)hd));
  return VL_OK;
}

void vl_cuda_register_rope(vl_ops *o) {
  o->qk_norm_rope_forward = cu_qk_forward;
  o->qk_norm_rope_backward = cu_qk_backward;
}
