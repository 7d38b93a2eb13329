/* rope: per-head RMSNorm (optional) + rotate-half RoPE on packed q|k|v rows.
 * Fast path (see below): V-wide loads of each element and its rotation
 * partner, deterministic two-stage sums for the norm weights' gradients.
 * Otherwise, or with VL_NORM_LEGACY=1, the older kernels: one block per
 * row, one warp per head, gradient atomics.  hd even and <= MAX_HD; T = 0
 * is a no-op; dqkv NULL still gives the norm weights' gradients. */
#include <stdint.h>

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

/* ---- the fast path -------------------------------------------------------
 * Thread u of a block owns, in every row the block walks (blockIdx.x, +
 * gridDim.x, ...), the V elements j0 .. j0+V-1 of the first half of q/k
 * head u / G and their rotation partners j0+half ..., G = half / V threads a
 * head (j0 = (u % G) V): V-wide loads, rope done in registers.  With norms,
 * G is a power of two <= 32 and a head's sums are shuffles within its G
 * lanes; the norm weights' gradients are per-thread fp32 sums over the
 * block's rows, summed over heads in shared memory into one partial row
 * (2 hd: q then k) per block, then over blocks by vl_cuda_colsum_add. */
template <int V> struct bvec;
template <> struct bvec<8> { typedef uint4 t; };
template <> struct bvec<4> { typedef uint2 t; };
template <> struct bvec<2> { typedef unsigned t; };
template <int V> __device__ __forceinline__ void ldv(float f[V], const bf16 *p) {
  typename bvec<V>::t u = *(const typename bvec<V>::t *)p;
  const __nv_bfloat162 *h = (const __nv_bfloat162 *)&u;
#pragma unroll
  for (int i = 0; i < V / 2; i++) {
    float2 t = __bfloat1622float2(h[i]);
    f[2 * i] = t.x;
    f[2 * i + 1] = t.y;
  }
}
template <int V> __device__ __forceinline__ void stv(bf16 *p, const float f[V]) {
  typename bvec<V>::t u;
  __nv_bfloat162 *h = (__nv_bfloat162 *)&u;
#pragma unroll
  for (int i = 0; i < V / 2; i++) h[i] = __floats2bfloat162_rn(f[2 * i], f[2 * i + 1]);
  *(typename bvec<V>::t *)p = u;
}
/* sum over the G aligned lanes of a head (G a power of two <= 32); every
 * lane of the warp must call it */
__device__ __forceinline__ float group_sum(float v, int G) {
  for (int o = G / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

template <int V, bool NORM>
__global__ void k_qk_fwd_v(bf16 *out, float *rstd, const bf16 *qkv, const bf16 *qw, const bf16 *kw,
                           const float *cosv, const float *sinv, int T, int nh, int nkv, int hd,
                           float eps) {
  const int half = hd / 2, G = half / V, nqk = nh + nkv, W = (nh + 2 * nkv) * hd;
  const int u = threadIdx.x, h = u / G, j0 = (u % G) * V;
  const bool act = u < nqk * G;
  float wl[V], wh[V];
#pragma unroll
  for (int i = 0; i < V; i++) wl[i] = wh[i] = 1.0f;
  if (NORM && act) {
    const bf16 *w = h < nh ? qw : kw;
    ldv<V>(wl, w + j0);
    ldv<V>(wh, w + j0 + half);
  }
  for (int t = blockIdx.x; t < T; t += gridDim.x) {
    const bf16 *row = qkv + (size_t)t * W;
    bf16 *orow = out + (size_t)t * W;
    float xl[V], xh[V], ss = 0.0f;
    if (act) {
      ldv<V>(xl, row + h * hd + j0);
      ldv<V>(xh, row + h * hd + j0 + half);
#pragma unroll
      for (int i = 0; i < V; i++) ss += xl[i] * xl[i] + xh[i] * xh[i];
    }
    float r = 1.0f;
    if (NORM) {
      r = rsqrtf(group_sum(ss, G) / hd + eps);
      if (act && u % G == 0) rstd[(size_t)t * nqk + h] = r;
    }
    if (act) {
      const float *c = cosv + (size_t)t * hd + j0, *s = sinv + (size_t)t * hd + j0;
      float ol[V], oh[V];
#pragma unroll
      for (int i = 0; i < V; i++) {
        float bl = xl[i] * r * wl[i], bh = xh[i] * r * wh[i];
        ol[i] = bl * c[i] - bh * s[i];
        oh[i] = bh * c[i + half] + bl * s[i + half];
      }
      stv<V>(orow + h * hd + j0, ol);
      stv<V>(orow + h * hd + j0 + half, oh);
    }
    for (int k = u; k < nkv * hd / V; k += blockDim.x) {
      typedef typename bvec<V>::t vt;
      ((vt *)(orow + nqk * hd))[k] = ((const vt *)(row + nqk * hd))[k];
    }
  }
}

/* part (gridDim.x, 2 hd) when given: this block's dq_w | dk_w sums */
template <int V, bool NORM>
__global__ void k_qk_bwd_v(bf16 *dqkv, float *part, const bf16 *dout, const bf16 *qkv,
                           const bf16 *qw, const bf16 *kw, const float *rstd, const float *cosv,
                           const float *sinv, int T, int nh, int nkv, int hd) {
  extern __shared__ float sh[]; /* (nqk, hd) per-thread sums, when part */
  const int half = hd / 2, G = half / V, nqk = nh + nkv, W = (nh + 2 * nkv) * hd;
  const int u = threadIdx.x, h = u / G, j0 = (u % G) * V;
  const bool act = u < nqk * G;
  float wl[V], wh[V], al[V], ah[V];
#pragma unroll
  for (int i = 0; i < V; i++) wl[i] = wh[i] = 1.0f, al[i] = ah[i] = 0.0f;
  if (NORM && act) {
    const bf16 *w = h < nh ? qw : kw;
    ldv<V>(wl, w + j0);
    ldv<V>(wh, w + j0 + half);
  }
  for (int t = blockIdx.x; t < T; t += gridDim.x) {
    const size_t base = (size_t)t * W + (size_t)h * hd + j0;
    float nl[V], nh2[V], dl[V], dh[V], a = 0.0f, r = 1.0f;
    if (act) {
      float yl[V], yh[V];
      ldv<V>(yl, dout + base);
      ldv<V>(yh, dout + base + half);
      if (dqkv) {
        ldv<V>(dl, dqkv + base);
        ldv<V>(dh, dqkv + base + half);
      }
      const float *c = cosv + (size_t)t * hd + j0, *s = sinv + (size_t)t * hd + j0;
#pragma unroll
      for (int i = 0; i < V; i++) {
        nl[i] = yl[i] * c[i] + yh[i] * s[i + half];
        nh2[i] = yh[i] * c[i + half] - yl[i] * s[i];
      }
    }
    if (NORM) {
      float xl[V], xh[V];
      if (act) {
        r = rstd[(size_t)t * nqk + h];
        ldv<V>(xl, qkv + base);
        ldv<V>(xh, qkv + base + half);
#pragma unroll
        for (int i = 0; i < V; i++) {
          xl[i] *= r;
          xh[i] *= r;
          a += nl[i] * wl[i] * xl[i] + nh2[i] * wh[i] * xh[i];
          al[i] += nl[i] * xl[i];
          ah[i] += nh2[i] * xh[i];
        }
      }
      a = group_sum(a, G) / hd;
      if (act && dqkv) {
#pragma unroll
        for (int i = 0; i < V; i++) {
          dl[i] += r * (nl[i] * wl[i] - xl[i] * a);
          dh[i] += r * (nh2[i] * wh[i] - xh[i] * a);
        }
      }
    } else if (act && dqkv) {
#pragma unroll
      for (int i = 0; i < V; i++) dl[i] += nl[i], dh[i] += nh2[i];
    }
    if (act && dqkv) {
      stv<V>(dqkv + base, dl);
      stv<V>(dqkv + base + half, dh);
    }
    if (dqkv) {
      const size_t vb = (size_t)t * W + (size_t)nqk * hd;
      for (int k = u; k < nkv * hd / V; k += blockDim.x) {
        float d[V], y[V];
        ldv<V>(d, dqkv + vb + (size_t)k * V);
        ldv<V>(y, dout + vb + (size_t)k * V);
#pragma unroll
        for (int i = 0; i < V; i++) d[i] += y[i];
        stv<V>(dqkv + vb + (size_t)k * V, d);
      }
    }
  }
  if (!NORM || !part) return;
  if (act) {
#pragma unroll
    for (int i = 0; i < V; i++) sh[h * hd + j0 + i] = al[i], sh[h * hd + j0 + half + i] = ah[i];
  }
  __syncthreads();
  for (int col = u; col < 2 * hd; col += blockDim.x) {
    const int k = col % hd, h0 = col < hd ? 0 : nh, h1 = col < hd ? nh : nqk;
    float s = 0.0f;
    for (int hh = h0; hh < h1; hh++) s += sh[hh * hd + k];
    part[(size_t)blockIdx.x * 2 * hd + col] = s;
  }
}

/* the fast path's vector width (0: none) for these pointers and shapes */
static int qk_width(int nh, int nkv, int hd, bool norm, const void *const *p, int np) {
  const int half = hd / 2, nqk = nh + nkv;
  for (int V = 8; V >= 2; V /= 2) {
    if (half % V) continue;
    bool ok = true;
    for (int i = 0; i < np; i++)
      if (p[i] && ((uintptr_t)p[i] % (2 * V))) ok = false;
    const int G = half / V;
    if (!ok || (size_t)nqk * G > 1024 || nqk * G == 0) continue;
    if (norm && (G > 32 || (G & (G - 1)) || (size_t)nqk * hd * 4 > 48 * 1024)) continue;
    return V;
  }
  return 0;
}
static int qk_grid(vl_ops *o, int T, int threads, int *grid) {
  int sms;
  VL_CALL(vl_cuda_sm_count(o, &sms));
  int bps = 2048 / threads;
  if (bps < 1) bps = 1;
  long g = (long)sms * bps;
  *grid = (int)(g < T ? g : T);
  return VL_OK;
}
#define QK_DISPATCH(KERN, V, NORM, ...)                                   \
  do {                                                                    \
    if (NORM) switch (V) {                                                \
        case 8: KERN<8, true><<<grid, th, shm, st>>>(__VA_ARGS__); break; \
        case 4: KERN<4, true><<<grid, th, shm, st>>>(__VA_ARGS__); break; \
        default: KERN<2, true><<<grid, th, shm, st>>>(__VA_ARGS__); break; \
      }                                                                   \
    else switch (V) {                                                     \
        case 8: KERN<8, false><<<grid, th, shm, st>>>(__VA_ARGS__); break; \
        case 4: KERN<4, false><<<grid, th, shm, st>>>(__VA_ARGS__); break; \
        default: KERN<2, false><<<grid, th, shm, st>>>(__VA_ARGS__); break; \
      }                                                                   \
  } while (0)

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
  const void *ptrs[4] = {out, qkv, qw, kw};
  const int V = vl_cuda_norm_legacy() ? 0 : qk_width(nh, nkv, hd, qw != NULL, ptrs, 4);
  if (V) {
    const int th = ((nh + nkv) * (hd / 2 / V) + 31) / 32 * 32;
    int grid;
    VL_CALL(qk_grid(o, T, th, &grid));
    const size_t shm = 0;
    cudaStream_t st = vl_ctx(o)->stream;
    QK_DISPATCH(k_qk_fwd_v, V, qw != NULL, (bf16 *)out, rstd, (const bf16 *)qkv, (const bf16 *)qw,
                (const bf16 *)kw, cosv, sinv, T, nh, nkv, hd, eps);
    LAUNCH_CHECK("qk_norm_rope_forward");
    return VL_OK;
  }
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
  const void *ptrs[5] = {dqkv, dout, qkv, qw, kw};
  const int V = vl_cuda_norm_legacy() ? 0 : qk_width(nh, nkv, hd, qw != NULL, ptrs, 5);
  if (V) {
    const int th = ((nh + nkv) * (hd / 2 / V) + 31) / 32 * 32;
    int grid;
    VL_CALL(qk_grid(o, T, th, &grid));
    float *part = NULL;
    size_t shm = 0;
    if (qw && (dqw || dkw)) {
      VL_CALL(vl_cuda_scratch(o, VL_SCRATCH_A, (size_t)grid * 2 * hd * sizeof(float),
                              (void **)&part));
      shm = (size_t)(nh + nkv) * hd * sizeof(float);
    }
    cudaStream_t st = c->stream;
    QK_DISPATCH(k_qk_bwd_v, V, qw != NULL, (bf16 *)dqkv, part, (const bf16 *)dout,
                (const bf16 *)qkv, (const bf16 *)qw, (const bf16 *)kw, rstd, cosv, sinv, T, nh,
                nkv, hd);
    LAUNCH_CHECK("qk_norm_rope_backward");
    if (part) VL_CALL(vl_cuda_colsum_add(o, part, grid, 2 * hd, (bf16 *)dqw, (bf16 *)dkw, hd));
    return VL_OK;
  }
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
