/* pointwise: add, activations, SwiGLU, row gathers/scatters and the
 * weighted embedding bag (bf16 storage, fp32 math). */
#include "cuda_common.h"

#define B2F(x) __bfloat162float(x)
#define F2B(x) __float2bfloat16(x)
static const unsigned TPB = 256;

__global__ void k_add(bf16 *out, const bf16 *a, const bf16 *b, size_t n) {
  size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
  if (i < n) out[i] = F2B(B2F(a[i]) + B2F(b[i]));
}
static int cu_add(vl_ops *o, vl_t *out, const vl_t *a, const vl_t *b, size_t n) {
  k_add<<<vl_blocks(n, TPB), TPB, 0, vl_ctx(o)->stream>>>((bf16 *)out, (const bf16 *)a, (const bf16 *)b, n);
  LAUNCH_CHECK("add");
  return VL_OK;
}

__device__ __forceinline__ float act_f(float x, int act) {
  switch (act) {
  case VL_ACT_GELU_TANH: return 0.5f * x * (1.0f + tanhf(0.7978845608028654f * (x + 0.044715f * x * x * x)));
  case VL_ACT_GELU_ERF: return 0.5f * x * (1.0f + erff(x * 0.7071067811865476f));
  case VL_ACT_QUICK_GELU: return x / (1.0f + __expf(-1.702f * x));
  default: return x / (1.0f + __expf(-x));
  }
}
__device__ __forceinline__ float act_g(float x, int act) {
  switch (act) {
  case VL_ACT_GELU_TANH: {
    float t = tanhf(0.7978845608028654f * (x + 0.044715f * x * x * x));
    return 0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * 0.7978845608028654f * (1.0f + 0.134145f * x * x);
  }
  case VL_ACT_GELU_ERF:
    return 0.5f * (1.0f + erff(x * 0.7071067811865476f)) + x * 0.3989422804014327f * __expf(-0.5f * x * x);
  case VL_ACT_QUICK_GELU: {
    float s = 1.0f / (1.0f + __expf(-1.702f * x));
    return s + 1.702f * x * s * (1.0f - s);
  }
  default: {
    float s = 1.0f / (1.0f + __expf(-x));
    return s * (1.0f + x * (1.0f - s));
  }
  }
}
__global__ void k_act_fwd(bf16 *out, const bf16 *in, size_t n, int act) {
  size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
  if (i < n) out[i] = F2B(act_f(B2F(in[i]), act));
}
__global__ void k_act_bwd(bf16 *din, const bf16 *dout, const bf16 *in, size_t n, int act) {
  size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
  if (i < n) din[i] = F2B(B2F(din[i]) + B2F(dout[i]) * act_g(B2F(in[i]), act));
}
static int check_act(vl_act_kind act) {
  if (act != VL_ACT_GELU_TANH && act != VL_ACT_GELU_ERF && act != VL_ACT_QUICK_GELU &&
      act != VL_ACT_SILU)
    VL_ERROR(VL_EINVAL, "activation: unknown kind %d", (int)act);
  return VL_OK;
}
static int cu_act_forward(vl_ops *o, vl_t *out, const vl_t *in, size_t n, vl_act_kind act) {
  VL_CALL(check_act(act));
  k_act_fwd<<<vl_blocks(n, TPB), TPB, 0, vl_ctx(o)->stream>>>((bf16 *)out, (const bf16 *)in, n, (int)act);
  LAUNCH_CHECK("act_forward");
  return VL_OK;
}
static int cu_act_backward(vl_ops *o, vl_t *din, const vl_t *dout, const vl_t *in, size_t n, vl_act_kind act) {
  VL_CALL(check_act(act));
  if (!din) return VL_OK; /* NULL gradient: not needed (ops.h) */
  k_act_bwd<<<vl_blocks(n, TPB), TPB, 0, vl_ctx(o)->stream>>>((bf16 *)din, (const bf16 *)dout, (const bf16 *)in, n, (int)act);
  LAUNCH_CHECK("act_backward");
  return VL_OK;
}

__global__ void k_swiglu_fwd(bf16 *out, const bf16 *gu, int M, int I) {
  size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
  if (i >= (size_t)M * I) return;
  size_t r = i / I, j = i % I;
  float g = B2F(gu[r * 2 * I + j]), u = B2F(gu[r * 2 * I + I + j]);
  out[i] = F2B(g / (1.0f + __expf(-g)) * u);
}
__global__ void k_swiglu_bwd(bf16 *dgu, const bf16 *dout, const bf16 *gu, int M, int I) {
  size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
  if (i >= (size_t)M * I) return;
  size_t r = i / I, j = i % I, a = r * 2 * I + j, b = a + I;
  float g = B2F(gu[a]), u = B2F(gu[b]), d = B2F(dout[i]);
  float s = 1.0f / (1.0f + __expf(-g));
  dgu[a] = F2B(B2F(dgu[a]) + d * u * s * (1.0f + g * (1.0f - s)));
  dgu[b] = F2B(B2F(dgu[b]) + d * g * s);
}
static int cu_swiglu_forward(vl_ops *o, vl_t *out, const vl_t *gu, int M, int I) {
  k_swiglu_fwd<<<vl_blocks((size_t)M * I, TPB), TPB, 0, vl_ctx(o)->stream>>>((bf16 *)out, (const bf16 *)gu, M, I);
  LAUNCH_CHECK("swiglu_forward");
  return VL_OK;
}
static int cu_swiglu_backward(vl_ops *o, vl_t *dgu, const vl_t *dout, const vl_t *gu, int M, int I) {
  if (!dgu) return VL_OK;
  k_swiglu_bwd<<<vl_blocks((size_t)M * I, TPB), TPB, 0, vl_ctx(o)->stream>>>((bf16 *)dgu, (const bf16 *)dout, (const bf16 *)gu, M, I);
  LAUNCH_CHECK("swiglu_backward");
  return VL_OK;
}

__global__ void k_gather(bf16 *dst, const bf16 *src, const int32_t *idx, int n, int C, int acc) {
  size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
  if (i >= (size_t)n * C) return;
  size_t r = i / C, c = i % C;
  float v = B2F(src[(size_t)idx[r] * C + c]);
  dst[i] = F2B(acc ? B2F(dst[i]) + v : v);
}
/* scatter with possible repeats: fp32 atomics into scratch, then merged */
__global__ void k_scatter_set(bf16 *dst, const bf16 *src, const int32_t *idx, int n, int C) {
  size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
  if (i >= (size_t)n * C) return;
  size_t r = i / C, c = i % C;
  dst[(size_t)idx[r] * C + c] = src[i];
}
__global__ void k_scatter_add(bf16 *dst, const bf16 *src, const int32_t *idx, int n, int C) {
  size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
  if (i >= (size_t)n * C) return;
  size_t r = i / C, c = i % C;
  atomicAdd(&dst[(size_t)idx[r] * C + c], src[i]);
}
__global__ void k_rows_zero(bf16 *dst, const int32_t *idx, int n, int C) {
  size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
  if (i >= (size_t)n * C) return;
  dst[(size_t)idx[i / C] * C + i % C] = F2B(0.0f);
}
static int cu_rows_gather(vl_ops *o, vl_t *dst, const vl_t *src, const int32_t *idx, int n, int C, int acc) {
  k_gather<<<vl_blocks((size_t)n * C, TPB), TPB, 0, vl_ctx(o)->stream>>>((bf16 *)dst, (const bf16 *)src, idx, n, C, acc);
  LAUNCH_CHECK("rows_gather");
  return VL_OK;
}
static int cu_rows_scatter(vl_ops *o, vl_t *dst, const vl_t *src, const int32_t *idx, int n, int C, int acc) {
  if (acc)
    k_scatter_add<<<vl_blocks((size_t)n * C, TPB), TPB, 0, vl_ctx(o)->stream>>>((bf16 *)dst, (const bf16 *)src, idx, n, C);
  else
    k_scatter_set<<<vl_blocks((size_t)n * C, TPB), TPB, 0, vl_ctx(o)->stream>>>((bf16 *)dst, (const bf16 *)src, idx, n, C);
  LAUNCH_CHECK("rows_scatter");
  return VL_OK;
}
static int cu_rows_zero(vl_ops *o, vl_t *dst, const int32_t *idx, int n, int C) {
  k_rows_zero<<<vl_blocks((size_t)n * C, TPB), TPB, 0, vl_ctx(o)->stream>>>((bf16 *)dst, idx, n, C);
  LAUNCH_CHECK("rows_zero");
  return VL_OK;
}

__global__ void k_bag_fwd(bf16 *out, const bf16 *table, const int32_t *idx, const float *w, int n, int K, int C, int acc) {
  size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
  if (i >= (size_t)n * C) return;
  size_t r = i / C, c = i % C;
  float s = 0.0f;
  for (int k = 0; k < K; k++) s += w[r * K + k] * B2F(table[(size_t)idx[r * K + k] * C + c]);
  out[i] = F2B(acc ? B2F(out[i]) + s : s);
}
__global__ void k_bag_bwd(float *dtab, const bf16 *dout, const int32_t *idx, const float *w, int n, int K, int C) {
  size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
  if (i >= (size_t)n * C) return;
  size_t r = i / C, c = i % C;
  float d = B2F(dout[i]);
  for (int k = 0; k < K; k++) atomicAdd(&dtab[(size_t)idx[r * K + k] * C + c], w[r * K + k] * d);
}
static int cu_bag_forward(vl_ops *o, vl_t *out, const vl_t *table, const int32_t *idx, const float *w, int n, int K, int C, int acc) {
  k_bag_fwd<<<vl_blocks((size_t)n * C, TPB), TPB, 0, vl_ctx(o)->stream>>>((bf16 *)out, (const bf16 *)table, idx, w, n, K, C, acc);
  LAUNCH_CHECK("embed_bag_forward");
  return VL_OK;
}
/* The table gradient is small (grid^2 x C): accumulate in fp32, then add. */
__global__ void k_max_index(int *mx, const int32_t *idx, size_t n) {
  size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
  if (i < n) atomicMax(mx, idx[i]);
}
static int cu_bag_backward(vl_ops *o, vl_t *dtable, const vl_t *dout, const int32_t *idx, const float *w, int n, int K, int C) {
  if (!dtable || n <= 0) return VL_OK;
  vl_cuda_ctx *c = vl_ctx(o);
  int *mx, rows = 0;
  VL_CALL(vl_cuda_scratch(o, VL_SCRATCH_B, sizeof(int), (void **)&mx));
  CUDA_CHECK(cudaMemsetAsync(mx, 0, sizeof(int), c->stream));
  k_max_index<<<vl_blocks((size_t)n * K, TPB), TPB, 0, c->stream>>>(mx, idx, (size_t)n * K);
  LAUNCH_CHECK("max_index");
  CUDA_CHECK(cudaMemcpyAsync(&rows, mx, sizeof(int), cudaMemcpyDeviceToHost, c->stream));
  CUDA_CHECK(cudaStreamSynchronize(c->stream));
  rows += 1;
  float *acc;
  VL_CALL(vl_cuda_scratch(o, VL_SCRATCH_A, (size_t)rows * C * sizeof(float), (void **)&acc));
  CUDA_CHECK(cudaMemsetAsync(acc, 0, (size_t)rows * C * sizeof(float), c->stream));
  k_bag_bwd<<<vl_blocks((size_t)n * C, TPB), TPB, 0, c->stream>>>(acc, (const bf16 *)dout, idx, w, n, K, C);
  LAUNCH_CHECK("embed_bag_backward");
  VL_CALL(vl_cuda_add_f32_to_bf16(o, (bf16 *)dtable, acc, (size_t)rows * C));
  return VL_OK;
}

void vl_cuda_register_pointwise(vl_ops *o) {
  o->add = cu_add;
  o->act_forward = cu_act_forward;
  o->act_backward = cu_act_backward;
  o->swiglu_forward = cu_swiglu_forward;
  o->swiglu_backward = cu_swiglu_backward;
  o->rows_gather = cu_rows_gather;
  o->rows_scatter = cu_rows_scatter;
  o->rows_zero = cu_rows_zero;
  o->embed_bag_forward = cu_bag_forward;
  o->embed_bag_backward = cu_bag_backward;
}
