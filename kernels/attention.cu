/* attention: segment-masked (optionally causal) multi-head attention with GQA,
 * flash-style — online softmax over key tiles in shared memory, no T x T
 * matrix.  Forward and the dQ pass are query-major (a warp per query row),
 * the dK/dV pass is key-major (a warp per key row), so no atomics.
 * Short segments: fp32 CUDA-core math, tiles of 32 keys; head_dim <= 128.
 * Segments of GEMM_PATH_MIN rows or more take the tensor-core path below
 * (VL_ATTENTION_GEMM=0/1 forces one path), as does any head_dim > 128.
 * Rows outside [seg[0], seg[nseg]) are neither written nor given gradients
 * (ops.h); dqkv NULL skips the backward. */
#include <stdlib.h>

#include "cuda_common.h"

#define B2F(x) __bfloat162float(x)
#define F2B(x) __float2bfloat16(x)
enum { WARPS = 8, TILE = 32, MAXD = 128, PER = MAXD / 32 };

__device__ __forceinline__ int seg_of(const int32_t *seg, int nseg, int i) {
  int lo = 0, hi = nseg - 1;
  while (lo < hi) {
    int mid = (lo + hi + 1) / 2;
    if (seg[mid] <= i) lo = mid; else hi = mid - 1;
  }
  return lo;
}

/* Load rows [j0, j0+TILE) of column block `col` (hd wide) of qkv into tile. */
__device__ __forceinline__ void load_tile(float (*tile)[MAXD + 1], const bf16 *base, int W, int col,
                                          int j0, int jmax, int hd) {
  for (int e = threadIdx.x; e < TILE * hd; e += blockDim.x) {
    int r = e / hd, c = e % hd, j = j0 + r;
    tile[r][c] = j < jmax ? B2F(base[(size_t)j * W + col + c]) : 0.0f;
  }
}

__global__ void k_attn_fwd(bf16 *out, float *lse, const bf16 *qkv, const int32_t *seg, int nseg,
                           int T, int nh, int nkv, int hd, float scale, int causal) {
  __shared__ float Kt[TILE][MAXD + 1], Vt[TILE][MAXD + 1], q[WARPS][MAXD];
  const int h = blockIdx.y, g = h / (nh / nkv), warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int W = (nh + 2 * nkv) * hd, i0 = blockIdx.x * WARPS, i = i0 + warp;
  const bool active = i < T && i >= seg[0] && i < seg[nseg];
  int b = 0, e = 0, jend = 0;
  if (active) {
    int s = seg_of(seg, nseg, i);
    b = seg[s]; e = seg[s + 1];
    jend = causal ? i + 1 : e;
    for (int c = lane; c < hd; c += 32) q[warp][c] = B2F(qkv[(size_t)i * W + h * hd + c]);
  }
  /* key range of the whole block */
  int bl = T, el = 0;
  {
    int ilast = min(T - 1, i0 + WARPS - 1);
    bl = seg[seg_of(seg, nseg, i0)];
    int sl = seg_of(seg, nseg, ilast);
    el = causal ? ilast + 1 : seg[sl + 1];
  }
  float m = -INFINITY, l = 0.0f, acc[PER];
  for (int p = 0; p < PER; p++) acc[p] = 0.0f;
  for (int j0 = bl; j0 < el; j0 += TILE) {
    __syncthreads();
    load_tile(Kt, qkv, W, (nh + g) * hd, j0, el, hd);
    load_tile(Vt, qkv, W, (nh + nkv + g) * hd, j0, el, hd);
    __syncthreads();
    if (!active) continue;
    const int j = j0 + lane;
    float sc = -INFINITY;
    if (j >= b && j < jend) {
      float d = 0.0f;
      for (int c = 0; c < hd; c++) d += q[warp][c] * Kt[lane][c];
      sc = d * scale;
    }
    float mt = vl_warp_max(sc);
    if (mt == -INFINITY) continue;
    float mn = fmaxf(m, mt);
    float p = sc == -INFINITY ? 0.0f : __expf(sc - mn);
    float corr = m == -INFINITY ? 0.0f : __expf(m - mn);
    l = l * corr + vl_warp_sum(p);
    for (int pp = 0; pp < PER; pp++) acc[pp] *= corr;
    for (int jj = 0; jj < TILE; jj++) {
      float pj = __shfl_sync(0xffffffffu, p, jj);
      if (pj == 0.0f) continue;
      for (int pp = 0; pp < PER; pp++) {
        int c = lane + 32 * pp;
        if (c < hd) acc[pp] += pj * Vt[jj][c];
      }
    }
    m = mn;
  }
  if (!active) return;
  float inv = l > 0.0f ? 1.0f / l : 0.0f;
  for (int pp = 0; pp < PER; pp++) {
    int c = lane + 32 * pp;
    if (c < hd) out[(size_t)i * nh * hd + h * hd + c] = F2B(acc[pp] * inv);
  }
  if (lane == 0) lse[(size_t)h * T + i] = m + logf(l);
}

/* D[h, i] = dot(dout_i, out_i) per head */
__global__ void k_attn_D(float *D, const bf16 *dout, const bf16 *out, int T, int nh, int hd) {
  int row = blockIdx.x * WARPS + threadIdx.x / 32, lane = threadIdx.x % 32;
  if (row >= T * nh) return;
  int i = row / nh, h = row % nh;
  const bf16 *a = dout + (size_t)i * nh * hd + h * hd, *bb = out + (size_t)i * nh * hd + h * hd;
  float s = 0.0f;
  for (int c = lane; c < hd; c += 32) s += B2F(a[c]) * B2F(bb[c]);
  s = vl_warp_sum(s);
  if (lane == 0) D[(size_t)h * T + i] = s;
}

__global__ void k_attn_dq(bf16 *dqkv, const bf16 *dout, const float *D, const float *lse,
                          const bf16 *qkv, const int32_t *seg, int nseg, int T, int nh, int nkv,
                          int hd, float scale, int causal) {
  __shared__ float Kt[TILE][MAXD + 1], Vt[TILE][MAXD + 1], q[WARPS][MAXD], dy[WARPS][MAXD];
  const int h = blockIdx.y, g = h / (nh / nkv), warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int W = (nh + 2 * nkv) * hd, i0 = blockIdx.x * WARPS, i = i0 + warp;
  const bool active = i < T && i >= seg[0] && i < seg[nseg];
  int b = 0, jend = 0;
  float Li = 0.0f, Di = 0.0f;
  if (active) {
    int s = seg_of(seg, nseg, i);
    b = seg[s];
    jend = causal ? i + 1 : seg[s + 1];
    for (int c = lane; c < hd; c += 32) {
      q[warp][c] = B2F(qkv[(size_t)i * W + h * hd + c]);
      dy[warp][c] = B2F(dout[(size_t)i * nh * hd + h * hd + c]);
    }
    Li = lse[(size_t)h * T + i];
    Di = D[(size_t)h * T + i];
  }
  int ilast = min(T - 1, i0 + WARPS - 1);
  int bl = seg[seg_of(seg, nseg, i0)], sl = seg_of(seg, nseg, ilast);
  int el = causal ? ilast + 1 : seg[sl + 1];
  float acc[PER];
  for (int p = 0; p < PER; p++) acc[p] = 0.0f;
  for (int j0 = bl; j0 < el; j0 += TILE) {
    __syncthreads();
    load_tile(Kt, qkv, W, (nh + g) * hd, j0, el, hd);
    load_tile(Vt, qkv, W, (nh + nkv + g) * hd, j0, el, hd);
    __syncthreads();
    if (!active) continue;
    const int j = j0 + lane;
    float ds = 0.0f;
    if (j >= b && j < jend) {
      float sc = 0.0f, dp = 0.0f;
      for (int c = 0; c < hd; c++) {
        sc += q[warp][c] * Kt[lane][c];
        dp += dy[warp][c] * Vt[lane][c];
      }
      float p = __expf(sc * scale - Li);
      ds = p * (dp - Di) * scale;
    }
    for (int jj = 0; jj < TILE; jj++) {
      float dj = __shfl_sync(0xffffffffu, ds, jj);
      if (dj == 0.0f) continue;
      for (int pp = 0; pp < PER; pp++) {
        int c = lane + 32 * pp;
        if (c < hd) acc[pp] += dj * Kt[jj][c];
      }
    }
  }
  if (!active) return;
  for (int pp = 0; pp < PER; pp++) {
    int c = lane + 32 * pp;
    if (c < hd) {
      size_t at = (size_t)i * W + h * hd + c;
      dqkv[at] = F2B(B2F(dqkv[at]) + acc[pp]);
    }
  }
}

/* key-major: a warp per key j of kv head g; loops over the group's q heads
 * and the queries that see j */
__global__ void k_attn_dkv(bf16 *dqkv, const bf16 *dout, const float *D, const float *lse,
                           const bf16 *qkv, const int32_t *seg, int nseg, int T, int nh, int nkv,
                           int hd, float scale, int causal) {
  __shared__ float Qt[TILE][MAXD + 1], Ot[TILE][MAXD + 1], k[WARPS][MAXD], v[WARPS][MAXD];
  __shared__ float Lt[TILE], Dt[TILE];
  const int g = blockIdx.y, grp = nh / nkv, warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int W = (nh + 2 * nkv) * hd, j0b = blockIdx.x * WARPS, j = j0b + warp;
  const bool active = j < T && j >= seg[0] && j < seg[nseg];
  int e = 0;
  if (active) {
    e = seg[seg_of(seg, nseg, j) + 1];
    for (int c = lane; c < hd; c += 32) {
      k[warp][c] = B2F(qkv[(size_t)j * W + (nh + g) * hd + c]);
      v[warp][c] = B2F(qkv[(size_t)j * W + (nh + nkv + g) * hd + c]);
    }
  }
  /* query range of the block: causal -> from the first key; else the segment(s) */
  int jlast = min(T - 1, j0b + WARPS - 1);
  int s0 = seg_of(seg, nseg, j0b), s1 = seg_of(seg, nseg, jlast);
  int ql = causal ? j0b : seg[s0], qe = seg[s1 + 1];
  int mb = active ? (causal ? j : seg[seg_of(seg, nseg, j)]) : 0;
  float dk[PER], dv[PER];
  for (int p = 0; p < PER; p++) dk[p] = dv[p] = 0.0f;
  for (int hh = 0; hh < grp; hh++) {
    const int h = g * grp + hh;
    for (int i0 = ql; i0 < qe; i0 += TILE) {
      __syncthreads();
      load_tile(Qt, qkv, W, h * hd, i0, qe, hd);
      load_tile(Ot, dout, nh * hd, h * hd, i0, qe, hd);
      for (int r = threadIdx.x; r < TILE; r += blockDim.x) {
        int i = i0 + r;
        Lt[r] = i < qe ? lse[(size_t)h * T + i] : 0.0f;
        Dt[r] = i < qe ? D[(size_t)h * T + i] : 0.0f;
      }
      __syncthreads();
      if (!active) continue;
      const int i = i0 + lane;
      float p = 0.0f, ds = 0.0f;
      if (i >= mb && i < e) {
        float sc = 0.0f, dp = 0.0f;
        for (int c = 0; c < hd; c++) {
          sc += Qt[lane][c] * k[warp][c];
          dp += Ot[lane][c] * v[warp][c];
        }
        p = __expf(sc * scale - Lt[lane]);
        ds = p * (dp - Dt[lane]) * scale;
      }
      for (int ii = 0; ii < TILE; ii++) {
        float pi = __shfl_sync(0xffffffffu, p, ii), di = __shfl_sync(0xffffffffu, ds, ii);
        if (pi == 0.0f && di == 0.0f) continue;
        for (int pp = 0; pp < PER; pp++) {
          int c = lane + 32 * pp;
          if (c < hd) {
            dv[pp] += pi * Ot[ii][c];
            dk[pp] += di * Qt[ii][c];
          }
        }
      }
    }
  }
  if (!active) return;
  for (int pp = 0; pp < PER; pp++) {
    int c = lane + 32 * pp;
    if (c < hd) {
      size_t ak = (size_t)j * W + (nh + g) * hd + c, av = (size_t)j * W + (nh + nkv + g) * hd + c;
      dqkv[ak] = F2B(B2F(dqkv[ak]) + dk[pp]);
      dqkv[av] = F2B(B2F(dqkv[av]) + dv[pp]);
    }
  }
}

/* ---- long segments: tensor-core GEMMs over query chunks ----------------------
 * For a segment of L rows and a chunk of C query rows, per head: S = scale *
 * Q K^T (C x L, fp32, cuBLASLt), a row kernel (mask, softmax, lse) writes P
 * (bf16), O = P V.  The backward recomputes S, forms dP = dO V^T, a row
 * kernel gives P and dS = P (dP - D) scale, then dV += P^T dO, dQ += dS K,
 * dK += dS^T Q.  Memory is bounded by one chunk of one head (C x L), never
 * L x L; the GEMMs run on tensor cores. */
enum { ROWS_CHUNK = 1024, GEMM_PATH_MIN = 256 };

/* softmax over the keys [0, nk) of chunk row r (global query i = q0 + r,
 * keys start at global kb): causal masks keys > i.  Writes P (bf16) and lse. */
__global__ void k_rows_softmax(bf16 *P, float *lse, const float *S, int nk, int q0, int kb,
                               int causal, int T, int rows) {
  /* blockIdx.x = head-in-batch * rows + chunk row; lse has T entries per head */
  const int hb = blockIdx.x / rows, r = blockIdx.x % rows, i = q0 + r;
  lse += (size_t)hb * T;
  const float *s = S + (size_t)blockIdx.x * nk;
  bf16 *p = P + (size_t)blockIdx.x * nk;
  const int kend = causal ? min(nk, i - kb + 1) : nk;
  float mx = -INFINITY;
  for (int j = threadIdx.x; j < kend; j += blockDim.x) mx = fmaxf(mx, s[j]);
  mx = vl_block_reduce<true>(mx);
  float sum = 0.0f;
  for (int j = threadIdx.x; j < kend; j += blockDim.x) sum += __expf(s[j] - mx);
  const float L = mx + logf(vl_block_reduce<false>(sum));
  for (int j = threadIdx.x; j < nk; j += blockDim.x) p[j] = F2B(j < kend ? __expf(s[j] - L) : 0.0f);
  if (threadIdx.x == 0) lse[i] = L;
}

/* backward rows: P = exp(S - lse) (masked), dS = P (dP - D) scale */
__global__ void k_rows_dsoftmax(bf16 *P, bf16 *dS, const float *S, const float *dP, const float *lse,
                                const float *D, int nk, int q0, int kb, int causal, float scale,
                                int T, int rows) {
  const int hb = blockIdx.x / rows, r = blockIdx.x % rows, i = q0 + r;
  const int kend = causal ? min(nk, i - kb + 1) : nk;
  const float L = lse[(size_t)hb * T + i], Di = D[(size_t)hb * T + i];
  const size_t base = (size_t)blockIdx.x * nk;
  for (int j = threadIdx.x; j < nk; j += blockDim.x) {
    float p = j < kend ? __expf(S[base + j] - L) : 0.0f;
    P[base + j] = F2B(p);
    dS[base + j] = F2B(p * (dP[base + j] - Di) * scale);
  }
}

/* Heads per batched GEMM: all of them when each q head has its own k/v head
 * (the vision tower); with GQA the q heads of one kv head, which read the
 * same K and V (batch stride 0).  Products into dK and dV stay per head
 * there, since batches sharing an output would race. */
static int heads_per_batch(int nh, int nkv) { return nh == nkv ? nh : nh / nkv; }

static int attn_gemm_forward(vl_ops *o, bf16 *out, float *lse, const bf16 *qkv, int b, int e, int T,
                             int nh, int nkv, int hd, float scale, int causal) {
  vl_cuda_ctx *c = vl_ctx(o);
  const int W = (nh + 2 * nkv) * hd, grp = nh / nkv, L = e - b, hb = heads_per_batch(nh, nkv);
  const int chunk = hb > 1 ? 512 : ROWS_CHUNK, C = L < chunk ? L : chunk;
  float *S;
  bf16 *P;
  VL_CALL(vl_cuda_scratch(o, VL_SCRATCH_A, (size_t)hb * C * L * sizeof(float), (void **)&S));
  VL_CALL(vl_cuda_scratch(o, VL_SCRATCH_C, (size_t)hb * C * L * sizeof(bf16), (void **)&P));
  for (int q0 = b; q0 < e; q0 += C) {
    const int rows = e - q0 < C ? e - q0 : C, nk = causal ? q0 + rows - b : L;
    const int64_t sS = (int64_t)rows * nk;
    for (int h = 0; h < nh; h += hb) {
      const int g = h / grp;
      const bf16 *Q = qkv + (size_t)q0 * W + h * hd, *K = qkv + (size_t)b * W + (nh + g) * hd;
      const bf16 *V = qkv + (size_t)b * W + (nh + nkv + g) * hd;
      const int64_t skv = nh == nkv ? hd : 0;
      VL_CALL(vl_cuda_gemm_batched(o, S, 1, nk, sS, Q, 0, W, hd, K, 1, W, skv, NULL, rows, nk, hd,
                                   hb, scale, 0.0f));
      k_rows_softmax<<<rows * hb, 256, 0, c->stream>>>(P, lse + (size_t)h * T, S, nk, q0, b, causal,
                                                       T, rows);
      LAUNCH_CHECK("attention rows softmax");
      VL_CALL(vl_cuda_gemm_batched(o, out + (size_t)q0 * nh * hd + h * hd, 0, (int64_t)nh * hd, hd,
                                   P, 0, nk, sS, V, 0, W, skv, NULL, rows, hd, nk, hb, 1.0f, 0.0f));
    }
  }
  return VL_OK;
}

static int attn_gemm_backward(vl_ops *o, bf16 *dqkv, const bf16 *dout, const float *lse,
                              const float *D, const bf16 *qkv, int b, int e, int T, int nh, int nkv,
                              int hd, float scale, int causal) {
  vl_cuda_ctx *c = vl_ctx(o);
  const int W = (nh + 2 * nkv) * hd, grp = nh / nkv, L = e - b, hb = heads_per_batch(nh, nkv);
  const int chunk = hb > 1 ? 512 : ROWS_CHUNK, C = L < chunk ? L : chunk;
  const int64_t ldo = (int64_t)nh * hd;
  float *S, *dP;
  bf16 *P;
  VL_CALL(vl_cuda_scratch(o, VL_SCRATCH_A, (size_t)2 * hb * C * L * sizeof(float), (void **)&S));
  dP = S + (size_t)hb * C * L;
  VL_CALL(vl_cuda_scratch(o, VL_SCRATCH_C, (size_t)2 * hb * C * L * sizeof(bf16), (void **)&P));
  bf16 *dS = P + (size_t)hb * C * L;
  for (int q0 = b; q0 < e; q0 += C) {
    const int rows = e - q0 < C ? e - q0 : C, nk = causal ? q0 + rows - b : L;
    const int64_t sS = (int64_t)rows * nk;
    for (int h = 0; h < nh; h += hb) {
      const int g = h / grp;
      const bf16 *Q = qkv + (size_t)q0 * W + h * hd, *K = qkv + (size_t)b * W + (nh + g) * hd;
      const bf16 *V = qkv + (size_t)b * W + (nh + nkv + g) * hd;
      const bf16 *dO = dout + (size_t)q0 * ldo + h * hd;
      bf16 *dQ = dqkv + (size_t)q0 * W + h * hd, *dK = dqkv + (size_t)b * W + (nh + g) * hd;
      bf16 *dV = dqkv + (size_t)b * W + (nh + nkv + g) * hd;
      const int64_t skv = nh == nkv ? hd : 0;
      VL_CALL(vl_cuda_gemm_batched(o, S, 1, nk, sS, Q, 0, W, hd, K, 1, W, skv, NULL, rows, nk, hd,
                                   hb, scale, 0.0f));
      VL_CALL(vl_cuda_gemm_batched(o, dP, 1, nk, sS, dO, 0, ldo, hd, V, 1, W, skv, NULL, rows, nk,
                                   hd, hb, 1.0f, 0.0f));
      k_rows_dsoftmax<<<rows * hb, 256, 0, c->stream>>>(P, dS, S, dP, lse + (size_t)h * T,
                                                        D + (size_t)h * T, nk, q0, b, causal, scale,
                                                        T, rows);
      LAUNCH_CHECK("attention rows dsoftmax");
      /* dV (nk, hd) += P^T dO ; dQ (rows, hd) += dS K ; dK (nk, hd) += dS^T Q */
      VL_CALL(vl_cuda_gemm_batched(o, dQ, 0, W, hd, dS, 0, nk, sS, K, 0, W, skv, NULL, rows, hd, nk,
                                   hb, 1.0f, 1.0f));
      if (skv) {
        VL_CALL(vl_cuda_gemm_batched(o, dV, 0, W, hd, P, 1, nk, sS, dO, 0, ldo, hd, NULL, nk, hd,
                                     rows, hb, 1.0f, 1.0f));
        VL_CALL(vl_cuda_gemm_batched(o, dK, 0, W, hd, dS, 1, nk, sS, Q, 0, W, hd, NULL, nk, hd,
                                     rows, hb, 1.0f, 1.0f));
      } else { /* the group's q heads all add into one kv head: one product each */
        for (int k = 0; k < hb; k++) {
          VL_CALL(vl_cuda_gemm_ld(o, dV, 0, W, P + k * sS, 1, nk, dO + k * hd, 0, ldo, NULL, nk, hd,
                                  rows, 1.0f, 1.0f));
          VL_CALL(vl_cuda_gemm_ld(o, dK, 0, W, dS + k * sS, 1, nk, Q + k * hd, 0, W, NULL, nk, hd,
                                  rows, 1.0f, 1.0f));
        }
      }
    }
  }
  return VL_OK;
}

/* The CPU backend's checks of shapes and host offsets (ops.h). */
static int check_att(const char *op, const int32_t *seg, const int32_t *seg_host, int nseg, int T,
                     int nh, int nkv, int hd) {
  if (T < 0 || nh <= 0 || nkv <= 0 || hd <= 0 || nh % nkv || nseg < 0 || !seg_host ||
      (nseg > 0 && !seg))
    VL_ERROR(VL_EINVAL, "%s: bad shape T=%d nh=%d nkv=%d hd=%d nseg=%d (nh must be a "
             "multiple of nkv; seg and seg_host are required)", op, T, nh, nkv, hd, nseg);
  if (seg_host[0] < 0) VL_ERROR(VL_EINVAL, "%s: segment offset 0 is %d", op, seg_host[0]);
  for (int s = 0; s < nseg; s++)
    if (seg_host[s + 1] < seg_host[s] || seg_host[s + 1] > T)
      VL_ERROR(VL_EINVAL, "%s: segment %d spans rows %d..%d, outside 0..%d or reversed", op, s,
               seg_host[s], seg_host[s + 1], T);
  return VL_OK;
}

/* The tensor-core path: forced by VL_ATTENTION_GEMM=0/1, else taken when a
 * segment is long; always for head_dim > MAXD (the CUDA-core kernels' limit). */
static int use_gemm_path(const int32_t *seg_host, int nseg, int hd) {
  if (hd > MAXD) return 1;
  const char *env = getenv("VL_ATTENTION_GEMM");
  if (env) return atoi(env);
  for (int s = 0; s < nseg; s++)
    if (seg_host[s + 1] - seg_host[s] >= GEMM_PATH_MIN) return 1;
  return 0;
}

static int cu_attn_forward(vl_ops *o, vl_t *out, float *lse, const vl_t *qkv, const int32_t *seg,
                           const int32_t *seg_host, int nseg, int T, int nh, int nkv, int hd,
                           float scale, int causal) {
  VL_CALL(check_att("attention_forward", seg, seg_host, nseg, T, nh, nkv, hd));
  if (T == 0 || nseg == 0) return VL_OK;
  if (use_gemm_path(seg_host, nseg, hd)) {
    for (int s = 0; s < nseg; s++)
      VL_CALL(attn_gemm_forward(o, (bf16 *)out, lse, (const bf16 *)qkv, seg_host[s], seg_host[s + 1],
                                T, nh, nkv, hd, scale, causal));
    return VL_OK;
  }
  dim3 grid(vl_blocks((size_t)T, WARPS), (unsigned)nh);
  k_attn_fwd<<<grid, WARPS * 32, 0, vl_ctx(o)->stream>>>((bf16 *)out, lse, (const bf16 *)qkv, seg,
                                                         nseg, T, nh, nkv, hd, scale, causal);
  LAUNCH_CHECK("attention_forward");
  return VL_OK;
}

static int cu_attn_backward(vl_ops *o, vl_t *dqkv, const vl_t *dout, const vl_t *out,
                            const float *lse, const vl_t *qkv, const int32_t *seg,
                            const int32_t *seg_host, int nseg, int T, int nh, int nkv, int hd,
                            float scale, int causal) {
  VL_CALL(check_att("attention_backward", seg, seg_host, nseg, T, nh, nkv, hd));
  if (T == 0 || nseg == 0 || !dqkv) return VL_OK;
  vl_cuda_ctx *c = vl_ctx(o);
  float *D;
  VL_CALL(vl_cuda_scratch(o, VL_SCRATCH_B, (size_t)T * nh * sizeof(float), (void **)&D));
  k_attn_D<<<vl_blocks((size_t)T * nh, WARPS), WARPS * 32, 0, c->stream>>>(D, (const bf16 *)dout, (const bf16 *)out, T, nh, hd);
  LAUNCH_CHECK("attention_D");
  if (use_gemm_path(seg_host, nseg, hd)) {
    for (int s = 0; s < nseg; s++)
      VL_CALL(attn_gemm_backward(o, (bf16 *)dqkv, (const bf16 *)dout, lse, D, (const bf16 *)qkv,
                                 seg_host[s], seg_host[s + 1], T, nh, nkv, hd, scale, causal));
    return VL_OK;
  }
  dim3 gq(vl_blocks((size_t)T, WARPS), (unsigned)nh), gk(vl_blocks((size_t)T, WARPS), (unsigned)nkv);
  k_attn_dq<<<gq, WARPS * 32, 0, c->stream>>>((bf16 *)dqkv, (const bf16 *)dout, D, lse,
                                               (const bf16 *)qkv, seg, nseg, T, nh, nkv, hd, scale, causal);
  LAUNCH_CHECK("attention_dq");
  k_attn_dkv<<<gk, WARPS * 32, 0, c->stream>>>((bf16 *)dqkv, (const bf16 *)dout, D, lse,
                                                (const bf16 *)qkv, seg, nseg, T, nh, nkv, hd, scale, causal);
  LAUNCH_CHECK("attention_dkv");
  return VL_OK;
}

void vl_cuda_register_attention(vl_ops *o) {
  o->attention_forward = cu_attn_forward;
  o->attention_backward = cu_attn_backward;
}
