/* norm: LayerNorm and RMSNorm.  Fast path (C % 8 == 0, C <= 8192, 16-byte
 * aligned): a block per row at a time, 16-byte loads, the row held in
 * registers, the weight gradients as deterministic two-stage column sums
 * (k_colsum).  Else,
 * or with VL_NORM_LEGACY=1, the older kernels: one warp per row, weight
 * gradients by fp32 atomics into scratch.  M = 0 rows is a no-op; C must be
 * positive (as the CPU backend). */
#include <stdint.h>
#include <stdlib.h>

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

/* ---- the fast path: C % 8 == 0, 16-byte aligned rows --------------------
 * A block of T threads (T = 32 * ceil(C/8 / NV / 32)) walks rows blockIdx.x,
 * + gridDim.x, ...; thread i owns the 8-element vectors i, i + T, ... (NV
 * of them) of every row, so the row is read once into registers, its sums
 * are block reductions, and the weight gradients are per-thread fp32 column
 * sums over the block's rows, written as one partial row per block and
 * summed over blocks by k_colsum in a fixed order (deterministic, no atomics). */
__device__ __forceinline__ void ld8(float f[8], const bf16 *p) {
  uint4 u = *(const uint4 *)p;
  const __nv_bfloat162 *h = (const __nv_bfloat162 *)&u;
#pragma unroll
  for (int i = 0; i < 4; i++) {
    float2 t = __bfloat1622float2(h[i]);
    f[2 * i] = t.x;
    f[2 * i + 1] = t.y;
  }
}
__device__ __forceinline__ void st8(bf16 *p, const float f[8]) {
  uint4 u;
  __nv_bfloat162 *h = (__nv_bfloat162 *)&u;
#pragma unroll
  for (int i = 0; i < 4; i++) h[i] = __floats2bfloat162_rn(f[2 * i], f[2 * i + 1]);
  *(uint4 *)p = u;
}
/* (sum a, sum b) over the block; every thread gets both */
__device__ __forceinline__ float2 block_sum2(float a, float b) {
  __shared__ float2 red[32];
  a = vl_warp_sum(a);
  b = vl_warp_sum(b);
  __syncthreads(); /* the previous call's readers are done */
  if (threadIdx.x % 32 == 0) red[threadIdx.x / 32] = make_float2(a, b);
  __syncthreads();
  float2 r = red[0];
  for (int w = 1; w < (int)blockDim.x / 32; w++) r.x += red[w].x, r.y += red[w].y;
  return r;
}

template <int NV, bool LN>
__global__ void __launch_bounds__(512) k_norm_fwd_v(bf16 *out, float *mean, float *rstd, const bf16 *in, const bf16 *w,
                             const bf16 *b, int M, int C, float eps) {
  const int nv = C / 8;
  float wv[NV][8], bv[NV][8];
#pragma unroll
  for (int j = 0; j < NV; j++) {
    int v = threadIdx.x + j * blockDim.x;
    if (v < nv) {
      ld8(wv[j], w + 8 * v);
      if (LN && b) ld8(bv[j], b + 8 * v);
      else for (int i = 0; i < 8; i++) bv[j][i] = 0.0f;
    }
  }
  for (int row = blockIdx.x; row < M; row += gridDim.x) {
    const bf16 *x = in + (size_t)row * C;
    float xv[NV][8], s = 0.0f;
#pragma unroll
    for (int j = 0; j < NV; j++) {
      int v = threadIdx.x + j * blockDim.x;
      if (v < nv) {
        ld8(xv[j], x + 8 * v);
        for (int i = 0; i < 8; i++) s += LN ? xv[j][i] : xv[j][i] * xv[j][i];
      }
    }
    float m = 0.0f, r;
    if (LN) {
      m = block_sum2(s, 0.0f).x / C;
      float q = 0.0f;
#pragma unroll
      for (int j = 0; j < NV; j++)
        if (threadIdx.x + j * blockDim.x < nv)
          for (int i = 0; i < 8; i++) { float d = xv[j][i] - m; q += d * d; }
      r = rsqrtf(block_sum2(q, 0.0f).x / C + eps);
    } else {
      r = rsqrtf(block_sum2(s, 0.0f).x / C + eps);
    }
    bf16 *y = out + (size_t)row * C;
#pragma unroll
    for (int j = 0; j < NV; j++) {
      int v = threadIdx.x + j * blockDim.x;
      if (v < nv) {
        float o[8];
        for (int i = 0; i < 8; i++) o[i] = (xv[j][i] - m) * r * wv[j][i] + bv[j][i];
        st8(y + 8 * v, o);
      }
    }
    if (threadIdx.x == 0) {
      if (LN) mean[row] = m;
      rstd[row] = r;
    }
  }
}

/* din += the input gradient (when din); part[blockIdx.x] = this block's
 * column sums of dy * xhat (and, LN, of dy at part + C) over its rows */
template <int NV, bool LN>
__global__ void __launch_bounds__(512) k_norm_bwd_v(bf16 *din, float *part, const bf16 *dout, const bf16 *in,
                             const bf16 *w, const float *mean, const float *rstd, int M, int C) {
  const int nv = C / 8;
  float wv[NV][8], aw[NV][8], ab[NV][8];
#pragma unroll
  for (int j = 0; j < NV; j++) {
    int v = threadIdx.x + j * blockDim.x;
    for (int i = 0; i < 8; i++) aw[j][i] = ab[j][i] = 0.0f;
    if (v < nv) ld8(wv[j], w + 8 * v);
  }
  for (int row = blockIdx.x; row < M; row += gridDim.x) {
    const bf16 *x = in + (size_t)row * C, *dy = dout + (size_t)row * C;
    const float m = LN ? mean[row] : 0.0f, r = rstd[row];
    float xh[NV][8], g[NV][8], dx[NV][8];
    float sa = 0.0f, sb = 0.0f;
#pragma unroll
    for (int j = 0; j < NV; j++) {
      int v = threadIdx.x + j * blockDim.x;
      if (v < nv) {
        float dyv[8];
        ld8(xh[j], x + 8 * v);
        ld8(dyv, dy + 8 * v);
        if (din) ld8(dx[j], din + (size_t)row * C + 8 * v);
        for (int i = 0; i < 8; i++) {
          xh[j][i] = (xh[j][i] - m) * r;
          g[j][i] = dyv[i] * wv[j][i];
          sa += g[j][i];
          sb += g[j][i] * xh[j][i];
          aw[j][i] += dyv[i] * xh[j][i];
          ab[j][i] += dyv[i];
        }
      }
    }
    if (din) {
      float2 t = block_sum2(sa, sb);
      const float a = t.x / C, bs = t.y / C;
      bf16 *dxr = din + (size_t)row * C;
#pragma unroll
      for (int j = 0; j < NV; j++) {
        int v = threadIdx.x + j * blockDim.x;
        if (v < nv) {
          for (int i = 0; i < 8; i++)
            dx[j][i] += LN ? r * (g[j][i] - a - xh[j][i] * bs) : r * (g[j][i] - xh[j][i] * bs);
          st8(dxr + 8 * v, dx[j]);
        }
      }
    }
  }
  if (!part) return;
  float *p = part + (size_t)blockIdx.x * (LN ? 2 : 1) * C;
#pragma unroll
  for (int j = 0; j < NV; j++) {
    int v = threadIdx.x + j * blockDim.x;
    if (v < nv) {
      float4 *q = (float4 *)(p + 8 * v);
      q[0] = make_float4(aw[j][0], aw[j][1], aw[j][2], aw[j][3]);
      q[1] = make_float4(aw[j][4], aw[j][5], aw[j][6], aw[j][7]);
      if (LN) {
        q = (float4 *)(p + C + 8 * v);
        q[0] = make_float4(ab[j][0], ab[j][1], ab[j][2], ab[j][3]);
        q[1] = make_float4(ab[j][4], ab[j][5], ab[j][6], ab[j][7]);
      }
    }
  }
}

/* g0[c] += sum_b part[b][c] for c < split, g1[c - split] += ... for the rest
 * (a NULL g skips its columns); blocks of 32 columns x 32 row slices, the
 * slices summed in a fixed order */
__global__ void k_colsum(const float *part, int nb, int ncols, bf16 *g0, bf16 *g1, int split) {
  __shared__ float s[32][33];
  const int col = blockIdx.x * 32 + threadIdx.x;
  float acc = 0.0f;
  if (col < ncols) {
#pragma unroll 4
    for (int b = threadIdx.y; b < nb; b += 32) acc += part[(size_t)b * ncols + col];
  }
  s[threadIdx.y][threadIdx.x] = acc;
  __syncthreads();
  if (threadIdx.y || col >= ncols) return;
  float t = 0.0f;
  for (int i = 0; i < 32; i++) t += s[i][threadIdx.x];
  bf16 *g = col < split ? (g0 ? g0 + col : NULL) : (g1 ? g1 + (col - split) : NULL);
  if (g) *g = F2B(B2F(*g) + t);
}
int vl_cuda_colsum_add(vl_ops *o, const float *part, int nb, int ncols, bf16 *g0, bf16 *g1,
                       int split) {
  k_colsum<<<vl_blocks((size_t)ncols, 32), dim3(32, 32), 0, vl_ctx(o)->stream>>>(part, nb, ncols,
                                                                                  g0, g1, split);
  LAUNCH_CHECK("colsum_add");
  return VL_OK;
}

int vl_cuda_sm_count(vl_ops *o, int *n) {
  static int cached[64];
  int d = vl_ctx(o)->device;
  if (d >= 0 && d < 64 && cached[d]) { *n = cached[d]; return VL_OK; }
  CUDA_CHECK(cudaDeviceGetAttribute(n, cudaDevAttrMultiProcessorCount, d));
  if (d >= 0 && d < 64) cached[d] = *n;
  return VL_OK;
}

/* VL_NORM_LEGACY=1: the older kernels (timing comparisons) */
int vl_cuda_norm_legacy(void) {
  const char *e = getenv("VL_NORM_LEGACY");
  return e && e[0] == '1';
}
/* threads resident per SM that a grid aims at (VL_NORM_TPS overrides; tuning) */
static int target_tps(int dflt) {
  const char *e = getenv("VL_NORM_TPS");
  int v = e ? atoi(e) : 0;
  return v >= 32 ? v : dflt;
}

static bool aligned16(const void *p) { return ((uintptr_t)p & 15u) == 0; }
/* the fast path's shape: vectors per thread and threads per block */
static bool vec_shape(int C, int *nvt, int *threads) {
  if (C % 8) return false;
  const int nv = C / 8;
  for (int k = 1; k <= 2; k *= 2)
    if ((nv + k - 1) / k <= 512) {
      *nvt = k;
      *threads = ((nv + k - 1) / k + 31) / 32 * 32;
      return true;
    }
  return false;
}
static int grid_rows(vl_ops *o, int M, int threads, int tps, int *grid) {
  int sms;
  VL_CALL(vl_cuda_sm_count(o, &sms));
  int bps = tps / threads;
  if (bps < 1) bps = 1;
  long g = (long)sms * bps;
  *grid = (int)(g < M ? g : M);
  return VL_OK;
}

template <bool LN>
static int fwd_fast(vl_ops *o, bf16 *out, float *mean, float *rstd, const bf16 *in, const bf16 *w,
                    const bf16 *b, int M, int C, float eps, bool *done) {
  int nvt, th, grid;
  *done = false;
  if (vl_cuda_norm_legacy() || !vec_shape(C, &nvt, &th) || !aligned16(out) || !aligned16(in) ||
      !aligned16(w) || (b && !aligned16(b)))
    return VL_OK;
  VL_CALL(grid_rows(o, M, th, target_tps(2048), &grid));
  cudaStream_t s = vl_ctx(o)->stream;
  switch (nvt) {
    case 1: k_norm_fwd_v<1, LN><<<grid, th, 0, s>>>(out, mean, rstd, in, w, b, M, C, eps); break;
    default: k_norm_fwd_v<2, LN><<<grid, th, 0, s>>>(out, mean, rstd, in, w, b, M, C, eps); break;
  }
  LAUNCH_CHECK(LN ? "layernorm_forward" : "rmsnorm_forward");
  *done = true;
  return VL_OK;
}

template <bool LN>
static int bwd_fast(vl_ops *o, bf16 *din, bf16 *dw, bf16 *db, const bf16 *dout, const bf16 *in,
                    const bf16 *w, const float *mean, const float *rstd, int M, int C, bool *done) {
  int nvt, th, grid;
  *done = false;
  if (vl_cuda_norm_legacy() || !vec_shape(C, &nvt, &th) || (din && !aligned16(din)) ||
      !aligned16(dout) || !aligned16(in) || !aligned16(w))
    return VL_OK;
  const bool wg = dw || db;
  VL_CALL(grid_rows(o, M, th, wg ? target_tps(1024) : 2048, &grid));
  float *part = NULL;
  const int ncols = (LN ? 2 : 1) * C;
  if (wg)
    VL_CALL(vl_cuda_scratch(o, VL_SCRATCH_A, (size_t)grid * ncols * sizeof(float), (void **)&part));
  cudaStream_t s = vl_ctx(o)->stream;
  switch (nvt) {
    case 1: k_norm_bwd_v<1, LN><<<grid, th, 0, s>>>(din, part, dout, in, w, mean, rstd, M, C); break;
    default: k_norm_bwd_v<2, LN><<<grid, th, 0, s>>>(din, part, dout, in, w, mean, rstd, M, C); break;
  }
  LAUNCH_CHECK(LN ? "layernorm_backward" : "rmsnorm_backward");
  if (wg) VL_CALL(vl_cuda_colsum_add(o, part, grid, ncols, dw, db, C));
  *done = true;
  return VL_OK;
}

static int cu_ln_forward(vl_ops *o, vl_t *out, float *mean, float *rstd, const vl_t *in,
                         const vl_t *w, const vl_t *b, int M, int C, float eps) {
  VL_CALL(check_norm("layernorm_forward", M, C));
  if (M == 0) return VL_OK;
  bool done;
  VL_CALL(fwd_fast<true>(o, (bf16 *)out, mean, rstd, (const bf16 *)in, (const bf16 *)w,
                         (const bf16 *)b, M, C, eps, &done));
  if (done) return VL_OK;
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
  bool done;
  VL_CALL(bwd_fast<true>(o, (bf16 *)din, (bf16 *)dw, (bf16 *)db, (const bf16 *)dout,
                         (const bf16 *)in, (const bf16 *)w, mean, rstd, M, C, &done));
  if (done) return VL_OK;
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
  bool done;
  VL_CALL(fwd_fast<false>(o, (bf16 *)out, NULL, rstd, (const bf16 *)in, (const bf16 *)w, NULL, M,
                          C, eps, &done));
  if (done) return VL_OK;
  k_rms_fwd<<<vl_blocks((size_t)M, WARPS), WARPS * 32, 0, vl_ctx(o)->stream>>>(
      (bf16 *)out, rstd, (const bf16 *)in, (const bf16 *)w, M, C, eps);
  LAUNCH_CHECK("rmsnorm_forward");
  return VL_OK;
}
static int cu_rms_backward(vl_ops *o, vl_t *din, vl_t *dw, const vl_t *dout, const vl_t *in,
                           const vl_t *w, const float *rstd, int M, int C) {
  VL_CALL(check_norm("rmsnorm_backward", M, C));
  if (M == 0) return VL_OK;
  bool done;
  VL_CALL(bwd_fast<false>(o, (bf16 *)din, (bf16 *)dw, NULL, (const bf16 *)dout, (const bf16 *)in,
                          (const bf16 *)w, NULL, rstd, M, C, &done));
  if (done) return VL_OK;
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
