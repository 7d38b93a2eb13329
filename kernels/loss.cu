/* loss: lm_head + cross-entropy in row chunks — fp32 logits of a chunk from
 * cuBLASLt, a row kernel for log-sum-exp, loss and scale*(softmax - onehot)
 * in bf16, then the two gradient GEMMs.  (T, V) logits never exist.
 * Targets live on the device, so one >= V (VL_EINVAL on the CPU) is not
 * reported without a sync: its row's loss is NaN (the trainer's non-finite
 * check catches it) and its gradient row is zero. */
#include "cuda_common.h"

#define B2F(x) __bfloat162float(x)
#define F2B(x) __float2bfloat16(x)
static const int CHUNK = 1024;

__global__ void k_ce_rows(float *loss, bf16 *dlogits, const float *logits, const int32_t *target,
                          int rows, int V, float scale) {
  const int r = blockIdx.x;
  const float *z = logits + (size_t)r * V;
  float mx = -INFINITY;
  for (int v = threadIdx.x; v < V; v += blockDim.x) mx = fmaxf(mx, z[v]);
  mx = vl_block_reduce<true>(mx);
  float s = 0.0f;
  for (int v = threadIdx.x; v < V; v += blockDim.x) s += __expf(z[v] - mx);
  const float lse = mx + logf(vl_block_reduce<false>(s));
  const int tg = target[r];
  const bool ok = tg >= 0 && tg < V;
  if (threadIdx.x == 0) loss[r] = ok ? lse - z[tg] : tg < 0 ? 0.0f : __int_as_float(0x7fc00000);
  if (!dlogits) return;
  bf16 *d = dlogits + (size_t)r * V;
  for (int v = threadIdx.x; v < V; v += blockDim.x) {
    float g = ok ? scale * (__expf(z[v] - lse) - (v == tg ? 1.0f : 0.0f)) : 0.0f;
    d[v] = F2B(g);
  }
}

static int cu_lmhead_ce(vl_ops *o, float *loss, vl_t *dh, vl_t *dW, float *logits_out, const vl_t *h,
                        const vl_t *W, const int32_t *target, int T, int H, int V, float scale) {
  if (T < 0 || H <= 0 || V <= 0)
    VL_ERROR(VL_EINVAL, "lmhead_ce: bad shape T=%d H=%d V=%d", T, H, V);
  if (T == 0) return VL_OK;
  vl_cuda_ctx *c = vl_ctx(o);
  const int chunk = T < CHUNK ? T : CHUNK;
  float *z;
  bf16 *dz = NULL;
  VL_CALL(vl_cuda_scratch(o, VL_SCRATCH_A, (size_t)chunk * V * sizeof(float), (void **)&z));
  const int grads = dh || dW;
  if (grads) VL_CALL(vl_cuda_scratch(o, VL_SCRATCH_B, (size_t)chunk * V * sizeof(bf16), (void **)&dz));
  for (int r0 = 0; r0 < T; r0 += chunk) {
    const int rows = T - r0 < chunk ? T - r0 : chunk;
    const bf16 *hc = (const bf16 *)h + (size_t)r0 * H;
    /* z (rows, V) = h_chunk (rows, H) W^T */
    VL_CALL(vl_cuda_gemm(o, z, 1, hc, 0, (const bf16 *)W, 1, NULL, rows, V, H, 1.0f, 0.0f));
    if (logits_out)
      CUDA_CHECK(cudaMemcpyAsync(logits_out + (size_t)r0 * V, z, (size_t)rows * V * sizeof(float),
                                 cudaMemcpyDeviceToDevice, c->stream));
    k_ce_rows<<<rows, 512, 0, c->stream>>>(loss + r0, grads ? dz : NULL, z, target + r0, rows, V, scale);
    LAUNCH_CHECK("cross_entropy_rows");
    if (dh) /* dh (rows, H) += dz (rows, V) W (V, H) */
      VL_CALL(vl_cuda_gemm(o, (bf16 *)dh + (size_t)r0 * H, 0, dz, 0, (const bf16 *)W, 0, NULL,
                           rows, H, V, 1.0f, 1.0f));
    if (dW) /* dW (V, H) += dz^T h_chunk */
      VL_CALL(vl_cuda_gemm(o, dW, 0, dz, 1, hc, 0, NULL, V, H, rows, 1.0f, 1.0f));
  }
  return VL_OK;
}

void vl_cuda_register_loss(vl_ops *o) { o->lmhead_ce = cu_lmhead_ce; }
