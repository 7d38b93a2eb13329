/* attention: segment-masked (optionally causal) multi-head attention with GQA.
 * Three paths, chosen by shape (vl_cuda_attention_path names the one taken):
 *   flash (the default): fused tensor-core kernels (mma.sync bf16, fp32
 *     accumulation, online softmax, no L x L matrix anywhere) for head_dim
 *     % 8 == 0 and <= 128 on 16-byte aligned tensors; see "flash path" below.
 *   gemm: cuBLASLt products over query chunks with the chunk's C x L scores
 *     in memory, for segments of GEMM_PATH_MIN rows or more and any
 *     head_dim > 128.
 *   cores: fp32 CUDA-core kernels, online softmax over key tiles in shared
 *     memory; forward and the dQ pass query-major (a warp per query row),
 *     the dK/dV pass key-major (a warp per key row), so no atomics.
 * VL_ATTENTION_FLASH=0 turns the flash path off; VL_ATTENTION_GEMM=0/1
 * forces cores/gemm; VL_ATTENTION_DETERMINISTIC=1 makes the flash backward
 * bitwise repeatable (two passes, slower).  Rows outside [seg[0],
 * seg[nseg]) are neither written nor given gradients (ops.h); dqkv NULL
 * skips the backward. */
#include <stdlib.h>

#include "cuda_common.h"
#include "attention_cudnn.h"

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

/* ---- flash path: fused tensor-core attention (mma.sync m16n8k16 bf16) -------
 * FlashAttention-2 style.  A block owns BR = 16 NW rows (16 per warp) of one
 * head inside one segment and streams tiles of BC columns of the other side
 * through shared memory (cp.async, 2-3 stages); products run on mma.sync with
 * fp32 accumulators in registers; nothing of size L x L touches memory.
 *   forward: rows = queries, columns = keys; online softmax in base 2,
 *            O = P V, lse saved (natural log).
 *   dQ:      rows = queries; recomputes S and dP = dO V^T from lse and
 *            D = rowsum(dO o O); dQ += dS K.
 *   dK, dV:  rows = keys of one kv head, columns = queries of each q head of
 *            its group; dV += P^T dO, dK += dS^T Q.
 * The backward by default runs the dK/dV pass alone and takes dQ from the
 * same dS tiles (dQ += dS^T K, fp32 reductions into a scratch; see
 * backward_fused): 5 products, not bitwise repeatable.
 * VL_ATTENTION_DETERMINISTIC=1 runs separate dQ and dK/dV passes instead:
 * two extra products (7 instead of 5), no atomics, no fp32 buffer, bitwise
 * repeatable.  head_dim is padded to DP (a multiple of 16) with zeros in
 * shared memory (72 -> 80 for the vision tower: the exact width through
 * m16n8k8 tails was measured no faster, H100).  Taken when
 * head_dim % 8 == 0, head_dim <= 128 and the tensors are 16-byte aligned;
 * VL_ATTENTION_FLASH=0 (or VL_ATTENTION_GEMM set) selects the older paths. */
namespace flash {

constexpr float LOG2E = 1.4426950408889634f, LN2 = 0.6931471805599453f;

__device__ __forceinline__ uint32_t su32(const void *p) {
  return (uint32_t)__cvta_generic_to_shared(p);
}
__device__ __forceinline__ void cp16(void *dst, const void *src, bool ok) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(su32(dst)), "l"(src),
               "r"(ok ? 16 : 0));
}
__device__ __forceinline__ void cp_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N> __device__ __forceinline__ void cp_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}
__device__ __forceinline__ void ldsm4(uint32_t r[4], const bf16 *p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(su32(p)));
}
__device__ __forceinline__ void ldsm4t(uint32_t r[4], const bf16 *p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(su32(p)));
}
__device__ __forceinline__ void mma(float c[4], const uint32_t a[4], uint32_t b0, uint32_t b1) {
  asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
__device__ __forceinline__ uint32_t pack(float lo, float hi) {
  __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *(uint32_t *)&v;
}
__device__ __forceinline__ float ex2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

/* *p += (x, y), two fp32 adds in one vector reduction (sm_90) */
__device__ __forceinline__ void red2(float *p, float x, float y) {
#if __CUDA_ARCH__ >= 900
  asm volatile("red.global.add.v2.f32 [%0], {%1, %2};\n" ::"l"(p), "f"(x), "f"(y) : "memory");
#else
  atomicAdd(p, x);
  atomicAdd(p + 1, y);
#endif
}

/* ROWS rows of a DP-wide zero-padded tile from global rows ld elements apart;
 * rows >= nvalid and columns >= hd are zero-filled. */
template <int ROWS, int DP, int NT>
__device__ __forceinline__ void load_rows(bf16 *s, const bf16 *g, size_t ld, int nvalid, int hd) {
  constexpr int CH = DP / 8, LDS = DP + 8;
#pragma unroll
  for (int e = threadIdx.x; e < ROWS * CH; e += NT) {
    const int r = e / CH, c = e % CH;
    const bool ok = r < nvalid && c * 8 < hd;
    cp16(s + r * LDS + c * 8, ok ? g + (size_t)r * ld + c * 8 : g, ok);
  }
}

/* A fragment (16 x 16) at rows r0, columns k0 of a row-major tile. */
template <int LDS>
__device__ __forceinline__ void frag_a(uint32_t a[4], const bf16 *s, int r0, int k0, int lane) {
  const int mi = lane >> 3, rr = lane & 7;
  ldsm4(a, s + (r0 + rr + (mi & 1) * 8) * LDS + k0 + (mi >> 1) * 8);
}
/* B fragments of two n-tiles (n0, n0 + 8) for k0..k0+15, B = Y^T with Y[n][k]
 * row-major (keys x d for S = Q K^T): b[0], b[1] n-tile 0; b[2], b[3] n-tile 1. */
template <int LDS>
__device__ __forceinline__ void frag_bt(uint32_t b[4], const bf16 *s, int n0, int k0, int lane) {
  const int mi = lane >> 3, rr = lane & 7;
  ldsm4(b, s + (n0 + rr + (mi >> 1) * 8) * LDS + k0 + (mi & 1) * 8);
}
/* B fragments of two n-tiles for B = Z[k][n] row-major (keys x d for P V). */
template <int LDS>
__device__ __forceinline__ void frag_b(uint32_t b[4], const bf16 *s, int k0, int n0, int lane) {
  const int mi = lane >> 3, rr = lane & 7;
  ldsm4t(b, s + (k0 + rr + (mi & 1) * 8) * LDS + n0 + (mi >> 1) * 8);
}

/* Tile number `t` of BR rows, counted over the segments in order: its
 * segment [b, e) and first row r0.  false past the last tile. */
__device__ __forceinline__ bool find_tile(const int32_t *seg, int nseg, int t, int BR, int &b,
                                          int &e, int &r0) {
  for (int s = 0; s < nseg; s++) {
    const int sb = seg[s], se = seg[s + 1], n = (se - sb + BR - 1) / BR;
    if (t < n) {
      b = sb; e = se; r0 = sb + t * BR;
      return true;
    }
    t -= n;
  }
  return false;
}

/* S (16 MT x BC per warp) = A rows ra.. (own, shared) . B^T (tile rows, shared);
 * each B fragment serves the warp's MT row tiles. */
template <int DP, int BC, int MT>
__device__ __forceinline__ void qk(float s[MT][BC / 8][4], const bf16 *sa, int ra, const bf16 *sb,
                                   int lane) {
  constexpr int LDS = DP + 8;
#pragma unroll
  for (int t = 0; t < MT; t++)
#pragma unroll
    for (int n = 0; n < BC / 8; n++) s[t][n][0] = s[t][n][1] = s[t][n][2] = s[t][n][3] = 0.0f;
#pragma unroll
  for (int k = 0; k < DP / 16; k++) {
    uint32_t a[MT][4];
#pragma unroll
    for (int t = 0; t < MT; t++) frag_a<LDS>(a[t], sa, ra + 16 * t, k * 16, lane);
#pragma unroll
    for (int n = 0; n < BC / 16; n++) {
      uint32_t b[4];
      frag_bt<LDS>(b, sb, n * 16, k * 16, lane);
#pragma unroll
      for (int t = 0; t < MT; t++) {
        mma(s[t][2 * n], a[t], b[0], b[1]);
        mma(s[t][2 * n + 1], a[t], b[2], b[3]);
      }
    }
  }
}
/* acc (16 MT x DP per warp) += P (16 MT x BC, accumulator layout) . Z (BC x DP, shared) */
template <int DP, int BC, int MT>
__device__ __forceinline__ void pv(float acc[MT][DP / 8][4], const float p[MT][BC / 8][4],
                                   const bf16 *sz, int lane) {
  constexpr int LDS = DP + 8;
#pragma unroll
  for (int k = 0; k < BC / 16; k++) {
    uint32_t a[MT][4];
#pragma unroll
    for (int t = 0; t < MT; t++) {
      a[t][0] = pack(p[t][2 * k][0], p[t][2 * k][1]);
      a[t][1] = pack(p[t][2 * k][2], p[t][2 * k][3]);
      a[t][2] = pack(p[t][2 * k + 1][0], p[t][2 * k + 1][1]);
      a[t][3] = pack(p[t][2 * k + 1][2], p[t][2 * k + 1][3]);
    }
#pragma unroll
    for (int n = 0; n < DP / 16; n++) {
      uint32_t b[4];
      frag_b<LDS>(b, sz, k * 16, n * 16, lane);
#pragma unroll
      for (int t = 0; t < MT; t++) {
        mma(acc[t][2 * n], a[t], b[0], b[1]);
        mma(acc[t][2 * n + 1], a[t], b[2], b[3]);
      }
    }
  }
}

template <int DP, int NW, int BC, int MT, int ST, int MB>
__global__ void __launch_bounds__(NW * 32, MB)
    k_fwd(bf16 *out, float *lse, const bf16 *qkv, const int32_t *seg, int nseg, int T, int nh,
          int nkv, int hd, float sl2, int causal, int ntiles) {
  constexpr int BR = NW * 16 * MT, LDS = DP + 8, NT = NW * 32;
  extern __shared__ __align__(16) unsigned char smem[];
  bf16 *sQ = (bf16 *)smem, *sK = sQ + BR * LDS, *sV = sK + ST * BC * LDS;
  const int h = blockIdx.x, g = h / (nh / nkv);
  const int tile = causal ? ntiles - 1 - (int)blockIdx.y : (int)blockIdx.y; /* heavy first */
  int b, e, q0;
  if (!find_tile(seg, nseg, tile, BR, b, e, q0)) return;
  const int W = (nh + 2 * nkv) * hd, warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int kend = causal ? min(e, q0 + BR) : e, nt = (kend - b + BC - 1) / BC;
  const bf16 *Kg = qkv + (size_t)b * W + (nh + g) * hd, *Vg = qkv + (size_t)b * W + (nh + nkv + g) * hd;
  load_rows<BR, DP, NT>(sQ, qkv + (size_t)q0 * W + h * hd, W, e - q0, hd);
  auto ld = [&](int p) { /* key tile p into its stage */
    const int k = p * BC, sg = p % ST;
    load_rows<BC, DP, NT>(sK + sg * BC * LDS, Kg + (size_t)k * W, W, kend - b - k, hd);
    load_rows<BC, DP, NT>(sV + sg * BC * LDS, Vg + (size_t)k * W, W, kend - b - k, hd);
  };
#pragma unroll
  for (int p = 0; p < ST - 1; p++) {
    if (p < nt) ld(p);
    cp_commit();
  }
  const int wr0 = q0 + warp * 16 * MT, row = wr0 + (lane >> 2), t4 = lane & 3;
  float o[MT][DP / 8][4], m[MT][2], l[MT][2];
#pragma unroll
  for (int t = 0; t < MT; t++) {
    m[t][0] = m[t][1] = -INFINITY;
    l[t][0] = l[t][1] = 0.0f;
#pragma unroll
    for (int n = 0; n < DP / 8; n++) o[t][n][0] = o[t][n][1] = o[t][n][2] = o[t][n][3] = 0.0f;
  }
  for (int it = 0; it < nt; it++) {
    const int st = it % ST, kb = b + it * BC;
    if (it + ST - 1 < nt) ld(it + ST - 1);
    cp_commit();
    cp_wait<ST - 1>();
    __syncthreads();
    if (!(causal && kb > wr0 + 16 * MT - 1)) { /* some key of the tile is visible to this warp */
      float s[MT][BC / 8][4];
      qk<DP, BC, MT>(s, sQ, warp * 16 * MT, sK + st * BC * LDS, lane);
      const bool full = kb + BC <= e && (!causal || kb + BC - 1 <= wr0);
#pragma unroll
      for (int t = 0; t < MT; t++)
#pragma unroll
        for (int n = 0; n < BC / 8; n++)
#pragma unroll
          for (int c = 0; c < 4; c++) {
            const int j = kb + n * 8 + 2 * t4 + (c & 1), i = row + 16 * t + (c >> 1) * 8;
            s[t][n][c] = (full || (j < e && (!causal || j <= i))) ? s[t][n][c] * sl2 : -INFINITY;
          }
#pragma unroll
      for (int t = 0; t < MT; t++)
#pragma unroll
        for (int r = 0; r < 2; r++) {
          float pm[4] = {-INFINITY, -INFINITY, -INFINITY, -INFINITY}; /* 4 short chains */
#pragma unroll
          for (int n = 0; n < BC / 8; n++) {
            pm[(2 * n) & 3] = fmaxf(pm[(2 * n) & 3], s[t][n][2 * r]);
            pm[(2 * n + 1) & 3] = fmaxf(pm[(2 * n + 1) & 3], s[t][n][2 * r + 1]);
          }
          float mx = fmaxf(fmaxf(pm[0], pm[1]), fmaxf(pm[2], pm[3]));
          mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
          mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
          const float mn = fmaxf(m[t][r], mx), base = mn == -INFINITY ? 0.0f : mn;
          const float corr = ex2(m[t][r] - base);
          float ps[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
          for (int n = 0; n < BC / 8; n++) {
            s[t][n][2 * r] = ex2(s[t][n][2 * r] - base);
            s[t][n][2 * r + 1] = ex2(s[t][n][2 * r + 1] - base);
            ps[(2 * n) & 3] += s[t][n][2 * r];
            ps[(2 * n + 1) & 3] += s[t][n][2 * r + 1];
          }
          l[t][r] = l[t][r] * corr + ((ps[0] + ps[1]) + (ps[2] + ps[3]));
          m[t][r] = mn;
#pragma unroll
          for (int n = 0; n < DP / 8; n++) { o[t][n][2 * r] *= corr; o[t][n][2 * r + 1] *= corr; }
        }
      pv<DP, BC, MT>(o, s, sV + st * BC * LDS, lane);
    }
    __syncthreads();
  }
#pragma unroll
  for (int t = 0; t < MT; t++)
#pragma unroll
    for (int r = 0; r < 2; r++) {
      float lr = l[t][r];
      lr += __shfl_xor_sync(0xffffffffu, lr, 1);
      lr += __shfl_xor_sync(0xffffffffu, lr, 2);
      const int i = row + 16 * t + r * 8;
      if (i >= e) continue;
      const float inv = lr > 0.0f ? 1.0f / lr : 0.0f;
      bf16 *op = out + (size_t)i * nh * hd + h * hd;
#pragma unroll
      for (int n = 0; n < DP / 8; n++) {
        const int c = n * 8 + 2 * t4;
        if (c < hd) *(uint32_t *)(op + c) = pack(o[t][n][2 * r] * inv, o[t][n][2 * r + 1] * inv);
      }
      if (t4 == 0) lse[(size_t)h * T + i] = (m[t][r] + log2f(lr)) * LN2;
    }
}

/* dQ pass: rows = queries of head h; dqkv's q columns += scale dS K */
template <int DP, int NW, int BC, int MT, int ST, int MB>
__global__ void __launch_bounds__(NW * 32, MB)
    k_dq(bf16 *dqkv, const bf16 *dout, const float *D, const float *lse, const bf16 *qkv,
         const int32_t *seg, int nseg, int T, int nh, int nkv, int hd, float scale, float sl2,
         int causal, int ntiles) {
  constexpr int BR = NW * 16 * MT, LDS = DP + 8, NT = NW * 32;
  extern __shared__ __align__(16) unsigned char smem[];
  bf16 *sQ = (bf16 *)smem, *sO = sQ + BR * LDS, *sK = sO + BR * LDS, *sV = sK + ST * BC * LDS;
  const int h = blockIdx.x, g = h / (nh / nkv);
  const int tile = causal ? ntiles - 1 - (int)blockIdx.y : (int)blockIdx.y;
  int b, e, q0;
  if (!find_tile(seg, nseg, tile, BR, b, e, q0)) return;
  const int W = (nh + 2 * nkv) * hd, warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int kend = causal ? min(e, q0 + BR) : e, nt = (kend - b + BC - 1) / BC;
  const bf16 *Kg = qkv + (size_t)b * W + (nh + g) * hd, *Vg = qkv + (size_t)b * W + (nh + nkv + g) * hd;
  load_rows<BR, DP, NT>(sQ, qkv + (size_t)q0 * W + h * hd, W, e - q0, hd);
  load_rows<BR, DP, NT>(sO, dout + (size_t)q0 * nh * hd + h * hd, (size_t)nh * hd, e - q0, hd);
  auto ld = [&](int p) { /* key tile p into its stage */
    const int k = p * BC, sg = p % ST;
    load_rows<BC, DP, NT>(sK + sg * BC * LDS, Kg + (size_t)k * W, W, kend - b - k, hd);
    load_rows<BC, DP, NT>(sV + sg * BC * LDS, Vg + (size_t)k * W, W, kend - b - k, hd);
  };
#pragma unroll
  for (int p = 0; p < ST - 1; p++) {
    if (p < nt) ld(p);
    cp_commit();
  }
  const int wr0 = q0 + warp * 16 * MT, row = wr0 + (lane >> 2), t4 = lane & 3;
  float L2[MT][2], Dr[MT][2], acc[MT][DP / 8][4];
#pragma unroll
  for (int t = 0; t < MT; t++) {
#pragma unroll
    for (int r = 0; r < 2; r++) {
      const int i = row + 16 * t + r * 8;
      L2[t][r] = i < e ? lse[(size_t)h * T + i] * LOG2E : 0.0f;
      Dr[t][r] = i < e ? D[(size_t)h * T + i] : 0.0f;
    }
#pragma unroll
    for (int n = 0; n < DP / 8; n++) acc[t][n][0] = acc[t][n][1] = acc[t][n][2] = acc[t][n][3] = 0.0f;
  }
  for (int it = 0; it < nt; it++) {
    const int st = it % ST, kb = b + it * BC;
    if (it + ST - 1 < nt) ld(it + ST - 1);
    cp_commit();
    cp_wait<ST - 1>();
    __syncthreads();
    if (!(causal && kb > wr0 + 16 * MT - 1)) {
      float s[MT][BC / 8][4], dp[MT][BC / 8][4];
      qk<DP, BC, MT>(s, sQ, warp * 16 * MT, sK + st * BC * LDS, lane);
      qk<DP, BC, MT>(dp, sO, warp * 16 * MT, sV + st * BC * LDS, lane);
      const bool full = kb + BC <= e && (!causal || kb + BC - 1 <= wr0);
#pragma unroll
      for (int t = 0; t < MT; t++)
#pragma unroll
        for (int n = 0; n < BC / 8; n++)
#pragma unroll
          for (int c = 0; c < 4; c++) {
            const int j = kb + n * 8 + 2 * t4 + (c & 1), i = row + 16 * t + (c >> 1) * 8;
            const float p = (full || (j < e && (!causal || j <= i)))
                                ? ex2(s[t][n][c] * sl2 - L2[t][c >> 1]) : 0.0f;
            s[t][n][c] = p * (dp[t][n][c] - Dr[t][c >> 1]);
          }
      pv<DP, BC, MT>(acc, s, sK + st * BC * LDS, lane);
    }
    __syncthreads();
  }
#pragma unroll
  for (int t = 0; t < MT; t++)
#pragma unroll
    for (int r = 0; r < 2; r++) {
      const int i = row + 16 * t + r * 8;
      if (i >= e) continue;
      bf16 *dp = dqkv + (size_t)i * W + h * hd;
#pragma unroll
      for (int n = 0; n < DP / 8; n++) {
        const int c = n * 8 + 2 * t4;
        if (c < hd) {
          const __nv_bfloat162 old = *(const __nv_bfloat162 *)(dp + c);
          *(uint32_t *)(dp + c) = pack(__low2float(old) + scale * acc[t][n][2 * r],
                                       __high2float(old) + scale * acc[t][n][2 * r + 1]);
        }
      }
    }
}

/* dK/dV pass: rows = keys of kv head g; columns = queries of each q head of
 * the group that see them. */
template <int DP, int NW, int BC, int MT, int ST, int MB, bool DQ, bool HS>
__global__ void __launch_bounds__(NW * 32, MB)
    k_dkv(bf16 *dqkv, float *acc, int lda, const bf16 *dout, const float *D, const float *lse,
          const bf16 *qkv, const int32_t *seg, int nseg, int T, int nh, int nkv, int hd,
          float scale, float sl2, int causal) {
  constexpr int BR = NW * 16 * MT, LDS = DP + 8, NT = NW * 32, LDSS = BC + 8;
  extern __shared__ __align__(16) unsigned char smem[];
  bf16 *sK = (bf16 *)smem, *sV = sK + BR * LDS, *sQ = sV + BR * LDS, *sO = sQ + ST * BC * LDS;
  bf16 *sS = sO + ST * BC * LDS; /* DQ: dS (BR keys x BC queries), bf16 */
  float *sL = (float *)(sS + (DQ ? BR * LDSS : 0)), *sD = sL + ST * BC;
  /* HS: a block per q head (blockIdx.x), its kv head's dK/dV added into acc */
  const int grp = nh / nkv, g = HS ? (int)blockIdx.x / grp : (int)blockIdx.x;
  int b, e, k0;
  if (!find_tile(seg, nseg, blockIdx.y, BR, b, e, k0)) return;
  const int W = (nh + 2 * nkv) * hd, warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int qs = causal ? k0 : b, nq = (e - qs + BC - 1) / BC, nt = HS ? nq : nq * grp;
  const int h0 = HS ? (int)blockIdx.x : g * grp; /* q head of step it: h0 + it / nq */
  /* DQ, bidirectional: blocks start at different query tiles, so that the
   * blocks of one head do not all add into the same dQ rows at once */
  const int rot = DQ && !causal ? (int)(blockIdx.y % nq) : 0;
  load_rows<BR, DP, NT>(sK, qkv + (size_t)k0 * W + (nh + g) * hd, W, e - k0, hd);
  load_rows<BR, DP, NT>(sV, qkv + (size_t)k0 * W + (nh + nkv + g) * hd, W, e - k0, hd);
  auto stage = [&](int it) {
    const int st = it % ST;
    const int h = h0 + it / nq, i0 = qs + ((it + rot) % nq) * BC;
    load_rows<BC, DP, NT>(sQ + st * BC * LDS, qkv + (size_t)i0 * W + h * hd, W, e - i0, hd);
    load_rows<BC, DP, NT>(sO + st * BC * LDS, dout + (size_t)i0 * nh * hd + h * hd, (size_t)nh * hd, e - i0, hd);
    for (int c = threadIdx.x; c < BC; c += NT) {
      const int i = i0 + c;
      sL[st * BC + c] = i < e ? lse[(size_t)h * T + i] * LOG2E : 0.0f;
      sD[st * BC + c] = i < e ? D[(size_t)h * T + i] : 0.0f;
    }
  };
#pragma unroll
  for (int p = 0; p < ST - 1; p++) {
    if (p < nt) stage(p);
    cp_commit();
  }
  const int wr0 = k0 + warp * 16 * MT, row = wr0 + (lane >> 2), t4 = lane & 3;
  float dk[MT][DP / 8][4], dv[MT][DP / 8][4];
#pragma unroll
  for (int t = 0; t < MT; t++)
#pragma unroll
    for (int n = 0; n < DP / 8; n++)
#pragma unroll
      for (int c = 0; c < 4; c++) dk[t][n][c] = dv[t][n][c] = 0.0f;
  for (int it = 0; it < nt; it++) {
    const int st = it % ST, i0 = qs + ((it + rot) % nq) * BC;
    if (it + ST - 1 < nt) stage(it + ST - 1);
    cp_commit();
    cp_wait<ST - 1>();
    __syncthreads();
    if (!(causal && i0 + BC - 1 < wr0)) { /* some query of the tile sees these keys */
      float s[MT][BC / 8][4], dp[MT][BC / 8][4];
      const bf16 *q = sQ + st * BC * LDS, *dO = sO + st * BC * LDS;
      const float *Lt = sL + st * BC, *Dt = sD + st * BC;
      qk<DP, BC, MT>(s, sK, warp * 16 * MT, q, lane);
      qk<DP, BC, MT>(dp, sV, warp * 16 * MT, dO, lane);
      const bool full = i0 + BC <= e && (!causal || i0 >= wr0 + 16 * MT - 1);
#pragma unroll
      for (int t = 0; t < MT; t++)
#pragma unroll
        for (int n = 0; n < BC / 8; n++)
#pragma unroll
          for (int c = 0; c < 4; c++) {
            const int cc = n * 8 + 2 * t4 + (c & 1), i = i0 + cc, j = row + 16 * t + (c >> 1) * 8;
            const float p = (full || (i < e && (!causal || i >= j))) ? ex2(s[t][n][c] * sl2 - Lt[cc]) : 0.0f;
            s[t][n][c] = p;
            dp[t][n][c] = p * (dp[t][n][c] - Dt[cc]);
          }
      pv<DP, BC, MT>(dv, s, dO, lane);
      pv<DP, BC, MT>(dk, dp, q, lane);
      if (DQ) /* this warp's rows of dS, for dQ below */
#pragma unroll
        for (int t = 0; t < MT; t++)
#pragma unroll
          for (int n = 0; n < BC / 8; n++) {
            bf16 *d = sS + (warp * 16 * MT + 16 * t + (lane >> 2)) * LDSS + n * 8 + 2 * t4;
            *(uint32_t *)d = pack(dp[t][n][0], dp[t][n][1]);
            *(uint32_t *)(d + 8 * LDSS) = pack(dp[t][n][2], dp[t][n][3]);
          }
    } else if (DQ) { /* no query of the tile sees this warp's keys: dS = 0 */
#pragma unroll
      for (int t = 0; t < MT; t++)
#pragma unroll
        for (int n = 0; n < BC / 8; n++) {
          bf16 *d = sS + (warp * 16 * MT + 16 * t + (lane >> 2)) * LDSS + n * 8 + 2 * t4;
          *(uint32_t *)d = 0u;
          *(uint32_t *)(d + 8 * LDSS) = 0u;
        }
    }
    if (DQ) {
      /* dQ (BC queries x DP) += dS^T (BC x BR) K (BR x DP): warp w takes query
       * rows 16 (w % RT).. and columns CW (w / RT).., then adds its fp32
       * results, scaled, into acc's q columns */
      constexpr int RT = BC / 16, CS = NW / RT, CW = DP / CS;
      static_assert(NW % RT == 0 && CW % 8 == 0, "dQ split of the tile among the warps");
      __syncthreads();
      const int m0 = (warp % RT) * 16, c0 = (warp / RT) * CW;
      float a[CW / 8][4];
#pragma unroll
      for (int n = 0; n < CW / 8; n++) a[n][0] = a[n][1] = a[n][2] = a[n][3] = 0.0f;
      const int mi = lane >> 3, rr = lane & 7;
#pragma unroll
      for (int k = 0; k < BR / 16; k++) {
        uint32_t fa[4];
        ldsm4t(fa, sS + (k * 16 + (mi >> 1) * 8 + rr) * LDSS + m0 + (mi & 1) * 8);
#pragma unroll
        for (int n = 0; n < CW / 16; n++) {
          uint32_t fb[4];
          frag_b<LDS>(fb, sK, k * 16, c0 + n * 16, lane);
          mma(a[2 * n], fa, fb[0], fb[1]);
          mma(a[2 * n + 1], fa, fb[2], fb[3]);
        }
        if (CW % 16) {
          uint32_t fb[4];
          frag_b<LDS>(fb, sK, k * 16, c0 + CW / 16 * 16, lane);
          mma(a[CW / 8 - 1], fa, fb[0], fb[1]);
        }
      }
      const int h = h0 + it / nq;
#pragma unroll
      for (int r = 0; r < 2; r++) {
        const int i = i0 + m0 + (lane >> 2) + 8 * r;
        if (i < e) {
          float *d = acc + (size_t)i * lda + h * hd;
#pragma unroll
          for (int n = 0; n < CW / 8; n++) {
            const int c = c0 + n * 8 + 2 * t4;
            if (c < hd) red2(d + c, scale * a[n][2 * r], scale * a[n][2 * r + 1]);
          }
        }
      }
    }
    __syncthreads();
  }
#pragma unroll
  for (int t = 0; t < MT; t++)
#pragma unroll
    for (int r = 0; r < 2; r++) {
      const int j = row + 16 * t + r * 8;
      if (j >= e) continue;
      if (HS) {
        float *ak = acc + (size_t)j * lda + (nh + g) * hd, *av = acc + (size_t)j * lda + (nh + nkv + g) * hd;
#pragma unroll
        for (int n = 0; n < DP / 8; n++) {
          const int c = n * 8 + 2 * t4;
          if (c < hd) {
            red2(ak + c, scale * dk[t][n][2 * r], scale * dk[t][n][2 * r + 1]);
            red2(av + c, dv[t][n][2 * r], dv[t][n][2 * r + 1]);
          }
        }
        continue;
      }
      bf16 *pk = dqkv + (size_t)j * W + (nh + g) * hd, *pV = dqkv + (size_t)j * W + (nh + nkv + g) * hd;
#pragma unroll
      for (int n = 0; n < DP / 8; n++) {
        const int c = n * 8 + 2 * t4;
        if (c < hd) {
          __nv_bfloat162 old = *(const __nv_bfloat162 *)(pk + c);
          *(uint32_t *)(pk + c) = pack(__low2float(old) + scale * dk[t][n][2 * r],
                                       __high2float(old) + scale * dk[t][n][2 * r + 1]);
          old = *(const __nv_bfloat162 *)(pV + c);
          *(uint32_t *)(pV + c) = pack(__low2float(old) + dv[t][n][2 * r], __high2float(old) + dv[t][n][2 * r + 1]);
        }
      }
    }
}

/* Tiles of BR rows over all segments (the grid's y extent). */
static int count_tiles(const int32_t *seg_host, int nseg, int BR) {
  int n = 0;
  for (int s = 0; s < nseg; s++) n += (seg_host[s + 1] - seg_host[s] + BR - 1) / BR;
  return n;
}

template <typename K>
static int set_smem(K kernel, size_t bytes, const char *what) {
  if (bytes > 48 * 1024) {
    cudaError_t rc = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes);
    if (rc != cudaSuccess)
      VL_ERROR(VL_ECUDA, "cudaFuncSetAttribute(%s, %zu bytes of shared memory) failed: %s", what,
               bytes, cudaGetErrorString(rc));
  }
  return VL_OK;
}

/* Block shapes per kernel and head width DP: warps NW, row tiles of 16 per
 * warp MT (a B fragment serves MT products), columns per tile BC, shared-
 * memory stages ST, minimum resident blocks MB (a register cap).  Chosen by
 * measurement on an H100 at the 8B shapes among 2-3 candidates each
 * (VL_ATTENTION_BENCH=1; tests/bench/results/attention-h100.txt); every
 * kernel is limited by latency at 8-12 resident warps per SM. */
template <int DP> struct cfg_fwd {
  enum {
    NW = DP == 80 ? 8 : 4, MT = DP == 80 ? 1 : 2,
    BC = DP == 128 ? 32 : 64, ST = DP >= 80 ? 3 : 2, MB = DP == 80 ? 2 : 1
  };
};
template <int DP> struct cfg_dq {
  enum { NW = 4, MT = 2, BC = DP == 128 ? 16 : 32, ST = DP >= 80 ? 3 : 2, MB = 1 };
};
template <int DP> struct cfg_dkv {
  enum { NW = 4, MT = 1, BC = DP == 128 ? 32 : 64, ST = DP == 80 ? 3 : 2, MB = 1 };
};

template <int DP>
static int forward(vl_ops *o, bf16 *out, float *lse, const bf16 *qkv, const int32_t *seg,
                   const int32_t *seg_host, int nseg, int T, int nh, int nkv, int hd, float scale,
                   int causal);
template <int DP, int NW, int MT, int BC, int ST, int MB>
static int forward_launch(vl_ops *o, bf16 *out, float *lse, const bf16 *qkv, const int32_t *seg,
                          const int32_t *seg_host, int nseg, int T, int nh, int nkv, int hd,
                          float scale, int causal) {
  constexpr int BR = NW * 16 * MT, LDS = DP + 8;
  const int nt = count_tiles(seg_host, nseg, BR);
  if (nt == 0) return VL_OK;
  const size_t sm = (size_t)(BR + 2 * ST * BC) * LDS * sizeof(bf16);
  VL_CALL(set_smem(k_fwd<DP, NW, BC, MT, ST, MB>, sm, "flash forward"));
  k_fwd<DP, NW, BC, MT, ST, MB><<<dim3(nh, nt), NW * 32, sm, vl_ctx(o)->stream>>>(
      out, lse, qkv, seg, nseg, T, nh, nkv, hd, scale * LOG2E, causal, nt);
  LAUNCH_CHECK("flash attention forward");
  return VL_OK;
}
template <int DP>
static int forward(vl_ops *o, bf16 *out, float *lse, const bf16 *qkv, const int32_t *seg,
                   const int32_t *seg_host, int nseg, int T, int nh, int nkv, int hd, float scale,
                   int causal) {
  return forward_launch<DP, cfg_fwd<DP>::NW, cfg_fwd<DP>::MT, cfg_fwd<DP>::BC, cfg_fwd<DP>::ST,
                        cfg_fwd<DP>::MB>(o, out, lse, qkv, seg, seg_host, nseg, T, nh, nkv, hd,
                                         scale, causal);
}

template <int DP>
static int backward(vl_ops *o, bf16 *dqkv, const bf16 *dout, const float *D, const float *lse,
                    const bf16 *qkv, const int32_t *seg, const int32_t *seg_host, int nseg, int T,
                    int nh, int nkv, int hd, float scale, int causal) {
  constexpr int LDS = DP + 8;
  cudaStream_t st = vl_ctx(o)->stream;
  {
    constexpr int NW = cfg_dq<DP>::NW, MT = cfg_dq<DP>::MT, BC = cfg_dq<DP>::BC;
    constexpr int BR = NW * 16 * MT;
    const int nt = count_tiles(seg_host, nseg, BR);
    if (nt == 0) return VL_OK;
    constexpr int ST = cfg_dq<DP>::ST, MB = cfg_dq<DP>::MB;
    const size_t sm = (size_t)(2 * BR + 2 * ST * BC) * LDS * sizeof(bf16);
    VL_CALL(set_smem(k_dq<DP, NW, BC, MT, ST, MB>, sm, "flash dQ"));
    k_dq<DP, NW, BC, MT, ST, MB><<<dim3(nh, nt), NW * 32, sm, st>>>(
        dqkv, dout, D, lse, qkv, seg, nseg, T, nh, nkv, hd, scale, scale * LOG2E, causal, nt);
    LAUNCH_CHECK("flash attention dQ");
  }
  {
    constexpr int NW = cfg_dkv<DP>::NW, MT = cfg_dkv<DP>::MT, BC = cfg_dkv<DP>::BC;
    constexpr int BR = NW * 16 * MT;
    const int nt = count_tiles(seg_host, nseg, BR);
    constexpr int ST = cfg_dkv<DP>::ST, MB = cfg_dkv<DP>::MB;
    const size_t sm = (size_t)(2 * BR + 2 * ST * BC) * LDS * sizeof(bf16) + 2 * ST * BC * sizeof(float);
    VL_CALL(set_smem(k_dkv<DP, NW, BC, MT, ST, MB, false, false>, sm, "flash dK/dV"));
    k_dkv<DP, NW, BC, MT, ST, MB, false, false><<<dim3(nkv, nt), NW * 32, sm, st>>>(
        dqkv, NULL, 0, dout, D, lse, qkv, seg, nseg, T, nh, nkv, hd, scale, scale * LOG2E, causal);
    LAUNCH_CHECK("flash attention dK/dV");
  }
  return VL_OK;
}

/* dqkv[i, c] += acc[i, c] for rows [r0, r1), columns [0, nc); dqkv rows are
 * W long, acc rows nc */
__global__ void k_acc_add(bf16 *dqkv, const float *acc, int r0, int r1, int nc, int W) {
  const int np = nc / 2; /* pairs per row (hd is even) */
  const size_t n = (size_t)(r1 - r0) * np;
  for (size_t k = blockIdx.x * (size_t)blockDim.x + threadIdx.x; k < n; k += (size_t)gridDim.x * blockDim.x) {
    const int i = r0 + (int)(k / np), c = 2 * (int)(k % np);
    const float2 a = *(const float2 *)(acc + (size_t)i * nc + c);
    bf16 *d = dqkv + (size_t)i * W + c;
    const __nv_bfloat162 old = *(const __nv_bfloat162 *)d;
    *(uint32_t *)d = pack(__low2float(old) + a.x, __high2float(old) + a.y);
  }
}

/* One pass (the default): dK/dV per key block as above, and dQ from the same
 * dS tiles (dQ += dS^T K in the block, fp32 vector reductions into a zeroed
 * T x nh hd scratch, then added into dqkv): 5 products instead
 * of 7; fp32 additions in varying order, so not bitwise repeatable.  With
 * GQA (nh > nkv) a block takes one q head (not the kv head's whole group),
 * so causal work splits into grp times finer pieces, and adds its dK/dV
 * into the scratch too (then T x W, shaped like dqkv) (VL_ATTENTION_HEADSPLIT=0: a block per kv head, as in the
 * two-pass form). */
template <int DP, bool HS, int NW, int BC, int MB>
static int backward_fused_launch(vl_ops *o, bf16 *dqkv, float *acc, int lda, const bf16 *dout,
                                 const float *D, const float *lse, const bf16 *qkv,
                                 const int32_t *seg, const int32_t *seg_host, int nseg, int T,
                                 int nh, int nkv, int hd, float scale, int causal) {
  constexpr int LDS = DP + 8;
  constexpr int MT = cfg_dkv<DP>::MT, BR = NW * 16 * MT, ST = cfg_dkv<DP>::ST;
  const int nt = count_tiles(seg_host, nseg, BR);
  const size_t sm = (size_t)(2 * BR + 2 * ST * BC) * LDS * sizeof(bf16) +
                    (size_t)BR * (BC + 8) * sizeof(bf16) + 2 * ST * BC * sizeof(float);
  VL_CALL(set_smem(k_dkv<DP, NW, BC, MT, ST, MB, true, HS>, sm, "flash dK/dV/dQ"));
  k_dkv<DP, NW, BC, MT, ST, MB, true, HS><<<dim3(HS ? nh : nkv, nt), NW * 32, sm, vl_ctx(o)->stream>>>(
      dqkv, acc, lda, dout, D, lse, qkv, seg, nseg, T, nh, nkv, hd, scale, scale * LOG2E, causal);
  LAUNCH_CHECK("flash attention dK/dV/dQ");
  return VL_OK;
}

template <int DP>
static int backward_fused(vl_ops *o, bf16 *dqkv, const bf16 *dout, const float *D,
                          const float *lse, const bf16 *qkv, const int32_t *seg,
                          const int32_t *seg_host, int nseg, int T, int nh, int nkv, int hd,
                          float scale, int causal) {
  if (count_tiles(seg_host, nseg, 16) == 0) return VL_OK;
  const char *env = getenv("VL_ATTENTION_HEADSPLIT");
  const bool hs = nh > nkv && !(env && atoi(env) == 0);
  const int r0 = seg_host[0], r1 = seg_host[nseg], W = (nh + 2 * nkv) * hd, nc = hs ? W : nh * hd;
  cudaStream_t st = vl_ctx(o)->stream;
  float *acc;
  VL_CALL(vl_cuda_scratch(o, VL_SCRATCH_A, (size_t)T * nc * sizeof(float), (void **)&acc));
  CUDA_CHECK(cudaMemsetAsync(acc + (size_t)r0 * nc, 0, (size_t)(r1 - r0) * nc * sizeof(float), st));
  constexpr int NW = cfg_dkv<DP>::NW, BC = cfg_dkv<DP>::BC, MB = cfg_dkv<DP>::MB;
  if (hs)
    VL_CALL((backward_fused_launch<DP, true, NW, BC, MB>(o, dqkv, acc, nc, dout, D, lse, qkv, seg,
                                                         seg_host, nseg, T, nh, nkv, hd, scale, causal)));
  else
    VL_CALL((backward_fused_launch<DP, false, NW, BC, MB>(o, dqkv, acc, nc, dout, D, lse, qkv, seg,
                                                          seg_host, nseg, T, nh, nkv, hd, scale, causal)));
  const size_t pairs = (size_t)(r1 - r0) * nc / 2;
  const unsigned blocks = (unsigned)(pairs < (size_t)256 * 4096 ? vl_blocks(pairs, 256) : 4096);
  k_acc_add<<<blocks, 256, 0, st>>>(dqkv, acc, r0, r1, nc, W);
  LAUNCH_CHECK("flash attention gradient add");
  return VL_OK;
}

} /* namespace flash */

/* head_dim padded to an instantiated width (a multiple of 16), 0 = none */
static int flash_width(int hd) {
  if (hd % 8 || hd > 128) return 0;
  return hd <= 16 ? 16 : hd <= 32 ? 32 : hd <= 64 ? 64 : hd <= 80 ? 80 : 128;
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

/* The flash path (the default): its widths, 16-byte aligned tensors, and
 * neither VL_ATTENTION_FLASH=0 nor VL_ATTENTION_GEMM set.  0 = not taken. */
static int use_flash(int hd, const void *a, const void *b, const void *c, const void *d) {
  const char *env = getenv("VL_ATTENTION_FLASH");
  if ((env && atoi(env) == 0) || getenv("VL_ATTENTION_GEMM")) return 0;
  if ((((uintptr_t)a | (uintptr_t)b | (uintptr_t)c | (uintptr_t)d) & 15) != 0) return 0;
  return flash_width(hd);
}

/* VL_ATTENTION_DETERMINISTIC=1: the flash backward in two passes (dQ, then
 * dK/dV), bitwise repeatable, 7 products instead of 5. */
static int flash_deterministic(void) {
  const char *env = getenv("VL_ATTENTION_DETERMINISTIC");
  return env && atoi(env) != 0;
}

/* Which path a call of these shapes takes: "cudnn", "flash", "gemm" or "cores"
 * (benchmarks and tests print it). */
extern "C" const char *vl_cuda_attention_path(const int32_t *seg_host, int nseg, int hd);

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
  if (vl_cudnn_attn_wanted(hd, out, qkv, qkv, out))
    return vl_cudnn_attn_forward(o, (bf16 *)out, lse, (const bf16 *)qkv, seg_host, nseg, T, nh, nkv,
                                 hd, scale, causal);
  switch (use_flash(hd, out, qkv, qkv, out)) {
  case 16: return flash::forward<16>(o, (bf16 *)out, lse, (const bf16 *)qkv, seg, seg_host, nseg, T, nh, nkv, hd, scale, causal);
  case 32: return flash::forward<32>(o, (bf16 *)out, lse, (const bf16 *)qkv, seg, seg_host, nseg, T, nh, nkv, hd, scale, causal);
  case 64: return flash::forward<64>(o, (bf16 *)out, lse, (const bf16 *)qkv, seg, seg_host, nseg, T, nh, nkv, hd, scale, causal);
  case 80: return flash::forward<80>(o, (bf16 *)out, lse, (const bf16 *)qkv, seg, seg_host, nseg, T, nh, nkv, hd, scale, causal);
  case 128: return flash::forward<128>(o, (bf16 *)out, lse, (const bf16 *)qkv, seg, seg_host, nseg, T, nh, nkv, hd, scale, causal);
  default: break;
  }
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
  if (vl_cudnn_attn_wanted(hd, dqkv, dout, qkv, out))
    return vl_cudnn_attn_backward(o, (bf16 *)dqkv, (const bf16 *)dout, (const bf16 *)out, lse,
                                  (const bf16 *)qkv, seg_host, nseg, T, nh, nkv, hd, scale, causal);
  vl_cuda_ctx *c = vl_ctx(o);
  float *D;
  VL_CALL(vl_cuda_scratch(o, VL_SCRATCH_B, (size_t)T * nh * sizeof(float), (void **)&D));
  k_attn_D<<<vl_blocks((size_t)T * nh, WARPS), WARPS * 32, 0, c->stream>>>(D, (const bf16 *)dout, (const bf16 *)out, T, nh, hd);
  LAUNCH_CHECK("attention_D");
  const bf16 *dO = (const bf16 *)dout, *X = (const bf16 *)qkv;
  bf16 *dX = (bf16 *)dqkv;
  const int fw = use_flash(hd, dqkv, dout, qkv, out);
  if (fw && !flash_deterministic()) switch (fw) {
  case 16: return flash::backward_fused<16>(o, dX, dO, D, lse, X, seg, seg_host, nseg, T, nh, nkv, hd, scale, causal);
  case 32: return flash::backward_fused<32>(o, dX, dO, D, lse, X, seg, seg_host, nseg, T, nh, nkv, hd, scale, causal);
  case 64: return flash::backward_fused<64>(o, dX, dO, D, lse, X, seg, seg_host, nseg, T, nh, nkv, hd, scale, causal);
  case 80: return flash::backward_fused<80>(o, dX, dO, D, lse, X, seg, seg_host, nseg, T, nh, nkv, hd, scale, causal);
  case 128: return flash::backward_fused<128>(o, dX, dO, D, lse, X, seg, seg_host, nseg, T, nh, nkv, hd, scale, causal);
  default: break;
  }
  switch (fw) {
  case 16: return flash::backward<16>(o, dX, dO, D, lse, X, seg, seg_host, nseg, T, nh, nkv, hd, scale, causal);
  case 32: return flash::backward<32>(o, dX, dO, D, lse, X, seg, seg_host, nseg, T, nh, nkv, hd, scale, causal);
  case 64: return flash::backward<64>(o, dX, dO, D, lse, X, seg, seg_host, nseg, T, nh, nkv, hd, scale, causal);
  case 80: return flash::backward<80>(o, dX, dO, D, lse, X, seg, seg_host, nseg, T, nh, nkv, hd, scale, causal);
  case 128: return flash::backward<128>(o, dX, dO, D, lse, X, seg, seg_host, nseg, T, nh, nkv, hd, scale, causal);
  default: break;
  }
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

extern "C" const char *vl_cuda_attention_path(const int32_t *seg_host, int nseg, int hd) {
  static const char probe[16] __attribute__((aligned(16))) = {0};
  if (vl_cudnn_attn_wanted(hd, probe, probe, probe, probe)) return "cudnn";
  if (use_flash(hd, probe, probe, probe, probe)) return "flash";
  return use_gemm_path(seg_host, nseg, hd) ? "gemm" : "cores";
}

extern "C" const char *vl_ops_cuda_attention_engine(void) {
  static char text[64];
  const long v = vl_cudnn_version();
  if (!vl_cudnn_attn_compiled()) return "own flash kernels (built without cuDNN)";
  snprintf(text, sizeof text, "cuDNN %ld.%ld.%ld fused attention", v / 10000, v / 100 % 100, v % 100);
  return text;
}

void vl_cuda_register_attention(vl_ops *o) {
  o->attention_forward = cu_attn_forward;
  o->attention_backward = cu_attn_backward;
}
