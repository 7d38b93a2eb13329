/* ops_cpu: the fp32 reference backend of ops.h — plain loops, OpenMP over
 * independent rows.  Results do not depend on the thread count: no
 * reduction is split across threads in a varying order. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "err.h"
#include "ops.h"

typedef float f32;

/* ---- memory ---------------------------------------------------------------- */
static int cpu_alloc(vl_ops *o, void **p, size_t bytes, const char *what) {
  return vl_malloc(p, bytes, what);
}
static int cpu_free(vl_ops *o, void *p) { free(p); return VL_OK; }
static int cpu_zero(vl_ops *o, void *p, size_t bytes) { memset(p, 0, bytes); return VL_OK; }
static int cpu_copy(vl_ops *o, void *d, const void *s, size_t bytes) {
  memmove(d, s, bytes);
  return VL_OK;
}
static int cpu_put(vl_ops *o, vl_t *d, const float *s, size_t n) {
  memcpy(d, s, n * sizeof(float));
  return VL_OK;
}
static int cpu_get(vl_ops *o, float *d, const vl_t *s, size_t n) {
  memcpy(d, s, n * sizeof(float));
  return VL_OK;
}
static int cpu_raw(vl_ops *o, void *d, const void *s, size_t bytes) {
  memcpy(d, s, bytes);
  return VL_OK;
}
static int cpu_sync(vl_ops *o) { return VL_OK; }
static int cpu_destroy(vl_ops *o) { free(o); return VL_OK; }
static int cpu_mem_info(vl_ops *o, size_t *free_b, size_t *total_b) {
  long pages = sysconf(_SC_PHYS_PAGES), avail = sysconf(_SC_AVPHYS_PAGES), ps = sysconf(_SC_PAGESIZE);
  *total_b = pages > 0 ? (size_t)pages * (size_t)ps : 0;
  *free_b = avail > 0 ? (size_t)avail * (size_t)ps : 0;
  return VL_OK;
}

/* ---- linear ----------------------------------------------------------------- */
/* out (M,N) = inp (M,K) W(N,K)^T + bias */
static int cpu_matmul_forward(vl_ops *o, vl_t *out_, const vl_t *inp_, const vl_t *W_,
                              const vl_t *bias_, int M, int K, int N, int acc) {
  f32 *out = out_;
  const f32 *inp = inp_, *W = W_, *bias = bias_;
#pragma omp parallel for schedule(static)
  for (int i = 0; i < M; i++) {
    const f32 *x = inp + (size_t)i * K;
    f32 *y = out + (size_t)i * N;
    for (int j = 0; j < N; j++) {
      const f32 *w = W + (size_t)j * K;
      f32 s = bias ? bias[j] : 0.0f;
      for (int k = 0; k < K; k++) s += x[k] * w[k];
      y[j] = acc ? y[j] + s : s;
    }
  }
  return VL_OK;
}

static int cpu_matmul_backward(vl_ops *o, vl_t *dinp_, vl_t *dW_, vl_t *dbias_,
                               const vl_t *dout_, const vl_t *inp_, const vl_t *W_,
                               int M, int K, int N) {
  f32 *dinp = dinp_, *dW = dW_, *dbias = dbias_;
  const f32 *dout = dout_, *inp = inp_, *W = W_;
  if (dinp) {
    /* dinp (M,K) += dout (M,N) W (N,K) */
#pragma omp parallel for schedule(static)
    for (int i = 0; i < M; i++) {
      f32 *dx = dinp + (size_t)i * K;
      const f32 *dy = dout + (size_t)i * N;
      for (int j = 0; j < N; j++) {
        const f32 g = dy[j];
        const f32 *w = W + (size_t)j * K;
        for (int k = 0; k < K; k++) dx[k] += g * w[k];
      }
    }
  }
  if (dW || dbias) {
    /* dW (N,K) += dout^T inp; one thread owns each output row j */
#pragma omp parallel for schedule(static)
    for (int j = 0; j < N; j++) {
      f32 *dw = dW ? dW + (size_t)j * K : NULL;
      f32 db = 0.0f;
      for (int i = 0; i < M; i++) {
        const f32 g = dout[(size_t)i * N + j];
        db += g;
        if (dw) {
          const f32 *x = inp + (size_t)i * K;
          for (int k = 0; k < K; k++) dw[k] += g * x[k];
        }
      }
      if (dbias) dbias[j] += db;
    }
  }
  return VL_OK;
}

/* ---- elementwise ---------------------------------------------------------------- */
static int cpu_add(vl_ops *o, vl_t *out_, const vl_t *a_, const vl_t *b_, size_t n) {
  f32 *out = out_;
  const f32 *a = a_, *b = b_;
#pragma omp parallel for schedule(static)
  for (size_t i = 0; i < n; i++) out[i] = a[i] + b[i];
  return VL_OK;
}

static const f32 k_gelu_c = 0.7978845608028654f; /* sqrt(2/pi) */

static inline f32 act_value(f32 x, vl_act_kind act) {
  switch (act) {
  case VL_ACT_GELU_TANH: return 0.5f * x * (1.0f + tanhf(k_gelu_c * (x + 0.044715f * x * x * x)));
  case VL_ACT_GELU_ERF: return 0.5f * x * (1.0f + erff(x * 0.7071067811865476f));
  case VL_ACT_QUICK_GELU: return x / (1.0f + expf(-1.702f * x));
  case VL_ACT_SILU: default: return x / (1.0f + expf(-x));
  }
}

static inline f32 act_grad(f32 x, vl_act_kind act) {
  switch (act) {
  case VL_ACT_GELU_TANH: {
    f32 u = k_gelu_c * (x + 0.044715f * x * x * x);
    f32 t = tanhf(u);
    f32 du = k_gelu_c * (1.0f + 3.0f * 0.044715f * x * x);
    return 0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * du;
  }
  case VL_ACT_GELU_ERF:
    return 0.5f * (1.0f + erff(x * 0.7071067811865476f)) +
           x * 0.3989422804014327f * expf(-0.5f * x * x);
  case VL_ACT_QUICK_GELU: {
    f32 s = 1.0f / (1.0f + expf(-1.702f * x));
    return s + 1.702f * x * s * (1.0f - s);
  }
  case VL_ACT_SILU: default: {
    f32 s = 1.0f / (1.0f + expf(-x));
    return s * (1.0f + x * (1.0f - s));
  }
  }
}

static int cpu_act_forward(vl_ops *o, vl_t *out_, const vl_t *inp_, size_t n, vl_act_kind act) {
  f32 *out = out_;
  const f32 *inp = inp_;
#pragma omp parallel for schedule(static)
  for (size_t i = 0; i < n; i++) out[i] = act_value(inp[i], act);
  return VL_OK;
}

static int cpu_act_backward(vl_ops *o, vl_t *dinp_, const vl_t *dout_, const vl_t *inp_,
                            size_t n, vl_act_kind act) {
  f32 *dinp = dinp_;
  const f32 *dout = dout_, *inp = inp_;
#pragma omp parallel for schedule(static)
  for (size_t i = 0; i < n; i++) dinp[i] += dout[i] * act_grad(inp[i], act);
  return VL_OK;
}

static int cpu_swiglu_forward(vl_ops *o, vl_t *out_, const vl_t *gu_, int M, int I) {
  f32 *out = out_;
  const f32 *gu = gu_;
#pragma omp parallel for schedule(static)
  for (int i = 0; i < M; i++)
    for (int j = 0; j < I; j++) {
      f32 g = gu[(size_t)i * 2 * I + j], u = gu[(size_t)i * 2 * I + I + j];
      out[(size_t)i * I + j] = g / (1.0f + expf(-g)) * u;
    }
  return VL_OK;
}

static int cpu_swiglu_backward(vl_ops *o, vl_t *dgu_, const vl_t *dout_, const vl_t *gu_,
                               int M, int I) {
  f32 *dgu = dgu_;
  const f32 *dout = dout_, *gu = gu_;
#pragma omp parallel for schedule(static)
  for (int i = 0; i < M; i++)
    for (int j = 0; j < I; j++) {
      size_t r = (size_t)i * 2 * I;
      f32 g = gu[r + j], u = gu[r + I + j], d = dout[(size_t)i * I + j];
      f32 s = 1.0f / (1.0f + expf(-g));
      dgu[r + j] += d * u * s * (1.0f + g * (1.0f - s));
      dgu[r + I + j] += d * g * s;
    }
  return VL_OK;
}

/* ---- normalisation ----------------------------------------------------------- */
static int cpu_layernorm_forward(vl_ops *o, vl_t *out_, float *mean, float *rstd,
                                 const vl_t *inp_, const vl_t *w_, const vl_t *b_, int M,
                                 int C, float eps) {
  f32 *out = out_;
  const f32 *inp = inp_, *w = w_, *b = b_;
#pragma omp parallel for schedule(static)
  for (int i = 0; i < M; i++) {
    const f32 *x = inp + (size_t)i * C;
    f32 m = 0.0f, v = 0.0f;
    for (int k = 0; k < C; k++) m += x[k];
    m /= (f32)C;
    for (int k = 0; k < C; k++) v += (x[k] - m) * (x[k] - m);
    v /= (f32)C;
    f32 r = 1.0f / sqrtf(v + eps);
    f32 *y = out + (size_t)i * C;
    for (int k = 0; k < C; k++) y[k] = (x[k] - m) * r * w[k] + (b ? b[k] : 0.0f);
    mean[i] = m;
    rstd[i] = r;
  }
  return VL_OK;
}

/* dxhat = dout*w; dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat*xhat)) */
static int cpu_layernorm_backward(vl_ops *o, vl_t *dinp_, vl_t *dw_, vl_t *db_,
                                  const vl_t *dout_, const vl_t *inp_, const vl_t *w_,
                                  const float *mean, const float *rstd, int M, int C) {
  f32 *dinp = dinp_, *dw = dw_, *db = db_;
  const f32 *dout = dout_, *inp = inp_, *w = w_;
  if (dinp) {
#pragma omp parallel for schedule(static)
    for (int i = 0; i < M; i++) {
      const f32 *x = inp + (size_t)i * C, *dy = dout + (size_t)i * C;
      f32 a = 0.0f, b = 0.0f;
      for (int k = 0; k < C; k++) {
        f32 xh = (x[k] - mean[i]) * rstd[i], g = dy[k] * w[k];
        a += g;
        b += g * xh;
      }
      a /= (f32)C;
      b /= (f32)C;
      f32 *dx = dinp + (size_t)i * C;
      for (int k = 0; k < C; k++) {
        f32 xh = (x[k] - mean[i]) * rstd[i];
        dx[k] += rstd[i] * (dy[k] * w[k] - a - xh * b);
      }
    }
  }
  if (dw || db) {
#pragma omp parallel for schedule(static)
    for (int k = 0; k < C; k++) {
      f32 sw = 0.0f, sb = 0.0f;
      for (int i = 0; i < M; i++) {
        f32 xh = (inp[(size_t)i * C + k] - mean[i]) * rstd[i], g = dout[(size_t)i * C + k];
        sw += g * xh;
        sb += g;
      }
      if (dw) dw[k] += sw;
      if (db) db[k] += sb;
    }
  }
  return VL_OK;
}

static int cpu_rmsnorm_forward(vl_ops *o, vl_t *out_, float *rstd, const vl_t *inp_,
                               const vl_t *w_, int M, int C, float eps) {
  f32 *out = out_;
  const f32 *inp = inp_, *w = w_;
#pragma omp parallel for schedule(static)
  for (int i = 0; i < M; i++) {
    const f32 *x = inp + (size_t)i * C;
    f32 s = 0.0f;
    for (int k = 0; k < C; k++) s += x[k] * x[k];
    f32 r = 1.0f / sqrtf(s / (f32)C + eps);
    f32 *y = out + (size_t)i * C;
    for (int k = 0; k < C; k++) y[k] = x[k] * r * w[k];
    rstd[i] = r;
  }
  return VL_OK;
}

/* one row: dx += r * (g - xhat * mean(g * xhat)), g = dy * w */
static inline void rms_row_backward(f32 *dx, f32 *dw, const f32 *dy, const f32 *x,
                                    const f32 *w, f32 r, int C) {
  f32 a = 0.0f;
  for (int k = 0; k < C; k++) a += dy[k] * w[k] * x[k] * r;
  a /= (f32)C;
  if (dx)
    for (int k = 0; k < C; k++) dx[k] += r * (dy[k] * w[k] - x[k] * r * a);
  if (dw)
    for (int k = 0; k < C; k++) dw[k] += dy[k] * x[k] * r;
}

static int cpu_rmsnorm_backward(vl_ops *o, vl_t *dinp_, vl_t *dw_, const vl_t *dout_,
                                const vl_t *inp_, const vl_t *w_, const float *rstd,
                                int M, int C) {
  f32 *dinp = dinp_, *dw = dw_;
  const f32 *dout = dout_, *inp = inp_, *w = w_;
  if (dinp) {
#pragma omp parallel for schedule(static)
    for (int i = 0; i < M; i++)
      rms_row_backward(dinp + (size_t)i * C, NULL, dout + (size_t)i * C, inp + (size_t)i * C,
                       w, rstd[i], C);
  }
  if (dw) {
#pragma omp parallel for schedule(static)
    for (int k = 0; k < C; k++) {
      f32 s = 0.0f;
      for (int i = 0; i < M; i++)
        s += dout[(size_t)i * C + k] * inp[(size_t)i * C + k] * rstd[i];
      dw[k] += s;
    }
  }
  return VL_OK;
}

/* ---- q/k norm + rotate-half rope -------------------------------------------- */
static int cpu_qk_norm_rope_forward(vl_ops *o, vl_t *out_, float *rstd, const vl_t *qkv_,
                                    const vl_t *qw_, const vl_t *kw_, const float *cos_,
                                    const float *sin_, int T, int nh, int nkv, int hd,
                                    float eps) {
  f32 *out = out_;
  const f32 *qkv = qkv_, *qw = qw_, *kw = kw_;
  const int W = (nh + 2 * nkv) * hd, half = hd / 2;
#pragma omp parallel for schedule(static)
  for (int t = 0; t < T; t++) {
    const f32 *row = qkv + (size_t)t * W;
    f32 *orow = out + (size_t)t * W;
    const f32 *c = cos_ + (size_t)t * hd, *s = sin_ + (size_t)t * hd;
    f32 tmp[1024];
    for (int h = 0; h < nh + nkv; h++) {
      const f32 *x = row + (size_t)h * hd;
      const f32 *w = h < nh ? qw : kw;
      if (w) {
        f32 ss = 0.0f;
        for (int k = 0; k < hd; k++) ss += x[k] * x[k];
        f32 r = 1.0f / sqrtf(ss / (f32)hd + eps);
        rstd[(size_t)t * (nh + nkv) + h] = r;
        for (int k = 0; k < hd; k++) tmp[k] = x[k] * r * w[k];
      } else {
        memcpy(tmp, x, (size_t)hd * sizeof(f32));
      }
      f32 *y = orow + (size_t)h * hd;
      for (int k = 0; k < half; k++) {
        y[k] = tmp[k] * c[k] - tmp[k + half] * s[k];
        y[k + half] = tmp[k + half] * c[k + half] + tmp[k] * s[k + half];
      }
    }
    memcpy(orow + (size_t)(nh + nkv) * hd, row + (size_t)(nh + nkv) * hd,
           (size_t)nkv * hd * sizeof(f32));
  }
  return VL_OK;
}

static int cpu_qk_norm_rope_backward(vl_ops *o, vl_t *dqkv_, vl_t *dqw_, vl_t *dkw_,
                                     const vl_t *dout_, const vl_t *qkv_, const vl_t *qw_,
                                     const vl_t *kw_, const float *rstd, const float *cos_,
                                     const float *sin_, int T, int nh, int nkv, int hd) {
  f32 *dqkv = dqkv_, *dqw = dqw_, *dkw = dkw_;
  const f32 *dout = dout_, *qkv = qkv_, *qw = qw_, *kw = kw_;
  const int W = (nh + 2 * nkv) * hd, half = hd / 2, nqk = nh + nkv;
  /* pass 1: d(normed) per head via the transposed rotation; dx per row */
#pragma omp parallel for schedule(static)
  for (int t = 0; t < T; t++) {
    const f32 *c = cos_ + (size_t)t * hd, *s = sin_ + (size_t)t * hd;
    f32 dn[1024];
    for (int h = 0; h < nqk; h++) {
      const f32 *dy = dout + (size_t)t * W + (size_t)h * hd;
      /* y[k] = n[k] c[k] - n[k+h] s[k];  y[k+h] = n[k+h] c[k+h] + n[k] s[k+h] */
      for (int k = 0; k < half; k++) {
        dn[k] = dy[k] * c[k] + dy[k + half] * s[k + half];
        dn[k + half] = dy[k + half] * c[k + half] - dy[k] * s[k];
      }
      const f32 *w = h < nh ? qw : kw;
      f32 *dx = dqkv + (size_t)t * W + (size_t)h * hd;
      if (w) {
        rms_row_backward(dx, NULL, dn, qkv + (size_t)t * W + (size_t)h * hd, w,
                         rstd[(size_t)t * nqk + h], hd);
      } else {
        for (int k = 0; k < hd; k++) dx[k] += dn[k];
      }
    }
    f32 *dv = dqkv + (size_t)t * W + (size_t)nqk * hd;
    const f32 *dyv = dout + (size_t)t * W + (size_t)nqk * hd;
    for (int k = 0; k < nkv * hd; k++) dv[k] += dyv[k];
  }
  /* pass 2: norm weight gradients, one thread per (q|k, component) */
  if ((qw && dqw) || (kw && dkw)) {
#pragma omp parallel for schedule(static)
    for (int idx = 0; idx < 2 * hd; idx++) {
      const int is_k = idx >= hd, k = idx % hd;
      f32 *dw = is_k ? dkw : dqw;
      if (!dw || !(is_k ? kw : qw)) continue;
      const int h0 = is_k ? nh : 0, h1 = is_k ? nqk : nh;
      f32 acc = 0.0f;
      for (int t = 0; t < T; t++) {
        const f32 *c = cos_ + (size_t)t * hd, *s = sin_ + (size_t)t * hd;
        for (int h = h0; h < h1; h++) {
          const f32 *dy = dout + (size_t)t * W + (size_t)h * hd;
          f32 dnk = k < half ? dy[k] * c[k] + dy[k + half] * s[k + half]
                             : dy[k] * c[k] - dy[k - half] * s[k - half];
          acc += dnk * qkv[(size_t)t * W + (size_t)h * hd + k] * rstd[(size_t)t * nqk + h];
        }
      }
      dw[k] += acc;
    }
  }
  return VL_OK;
}

/* ---- attention ---------------------------------------------------------------- */
/* One (segment, head) pair at a time per thread; scores for one query row in
 * a buffer of the segment's length. */
static int cpu_attention_forward(vl_ops *o, vl_t *out_, float *lse, const vl_t *qkv_,
                                 const int32_t *seg, const int32_t *seg_host, int nseg,
                                 int T, int nh, int nkv, int hd, float scale, int causal) {
  f32 *out = out_;
  const f32 *qkv = qkv_;
  const int W = (nh + 2 * nkv) * hd, grp = nh / nkv;
  int maxlen = 0;
  for (int s = 0; s < nseg; s++)
    if (seg_host[s + 1] - seg_host[s] > maxlen) maxlen = seg_host[s + 1] - seg_host[s];
  int rc = VL_OK;
#pragma omp parallel
  {
    f32 *p = malloc(sizeof(f32) * (size_t)(maxlen + 1));
    if (!p) {
#pragma omp atomic write
      rc = VL_ENOMEM;
    }
#pragma omp for schedule(dynamic) collapse(2)
    for (int s = 0; s < nseg; s++)
      for (int h = 0; h < nh; h++) {
        if (!p) continue;
        const int b = seg_host[s], e = seg_host[s + 1], kvh = h / grp;
        for (int i = b; i < e; i++) {
          const f32 *q = qkv + (size_t)i * W + (size_t)h * hd;
          const int jend = causal ? i + 1 : e;
          f32 mx = -INFINITY;
          for (int j = b; j < jend; j++) {
            const f32 *k = qkv + (size_t)j * W + (size_t)(nh + kvh) * hd;
            f32 d = 0.0f;
            for (int c = 0; c < hd; c++) d += q[c] * k[c];
            d *= scale;
            p[j - b] = d;
            if (d > mx) mx = d;
          }
          f32 sum = 0.0f;
          for (int j = b; j < jend; j++) sum += (p[j - b] = expf(p[j - b] - mx));
          f32 *y = out + (size_t)i * nh * hd + (size_t)h * hd;
          for (int c = 0; c < hd; c++) y[c] = 0.0f;
          for (int j = b; j < jend; j++) {
            const f32 *v = qkv + (size_t)j * W + (size_t)(nh + nkv + kvh) * hd;
            const f32 a = p[j - b] / sum;
            for (int c = 0; c < hd; c++) y[c] += a * v[c];
          }
          lse[(size_t)h * T + i] = mx + logf(sum);
        }
      }
    free(p);
  }
  if (rc) VL_ERROR(rc, "attention: cannot allocate a score row of %d floats", maxlen);
  return VL_OK;
}

/* Recomputes P from lse.  Threads own kv heads (dk, dv of a kv head are
 * written by one thread); dq rows of the owned q heads likewise. */
static int cpu_attention_backward(vl_ops *o, vl_t *dqkv_, const vl_t *dout_, const vl_t *out_,
                                  const float *lse, const vl_t *qkv_, const int32_t *seg,
                                  const int32_t *seg_host, int nseg, int T, int nh, int nkv,
                                  int hd, float scale, int causal) {
  f32 *dqkv = dqkv_;
  const f32 *dout = dout_, *out = out_, *qkv = qkv_;
  const int W = (nh + 2 * nkv) * hd, grp = nh / nkv;
#pragma omp parallel for schedule(dynamic) collapse(2)
  for (int s = 0; s < nseg; s++)
    for (int kvh = 0; kvh < nkv; kvh++) {
      const int b = seg_host[s], e = seg_host[s + 1];
      for (int h = kvh * grp; h < (kvh + 1) * grp; h++) {
        for (int i = b; i < e; i++) {
          const f32 *q = qkv + (size_t)i * W + (size_t)h * hd;
          const f32 *dy = dout + (size_t)i * nh * hd + (size_t)h * hd;
          const f32 *y = out + (size_t)i * nh * hd + (size_t)h * hd;
          f32 *dq = dqkv + (size_t)i * W + (size_t)h * hd;
          f32 D = 0.0f;
          for (int c = 0; c < hd; c++) D += dy[c] * y[c];
          const f32 L = lse[(size_t)h * T + i];
          const int jend = causal ? i + 1 : e;
          for (int j = b; j < jend; j++) {
            const f32 *k = qkv + (size_t)j * W + (size_t)(nh + kvh) * hd;
            const f32 *v = qkv + (size_t)j * W + (size_t)(nh + nkv + kvh) * hd;
            f32 sc = 0.0f, dp = 0.0f;
            for (int c = 0; c < hd; c++) {
              sc += q[c] * k[c];
              dp += dy[c] * v[c];
            }
            const f32 pij = expf(sc * scale - L);
            const f32 ds = pij * (dp - D) * scale;
            f32 *dk = dqkv + (size_t)j * W + (size_t)(nh + kvh) * hd;
            f32 *dv = dqkv + (size_t)j * W + (size_t)(nh + nkv + kvh) * hd;
            for (int c = 0; c < hd; c++) {
              dv[c] += pij * dy[c];
              dq[c] += ds * k[c];
              dk[c] += ds * q[c];
            }
          }
        }
      }
    }
  return VL_OK;
}

/* ---- rows ---------------------------------------------------------------------- */
static int cpu_rows_gather(vl_ops *o, vl_t *dst_, const vl_t *src_, const int32_t *idx,
                           int n, int C, int acc) {
  f32 *dst = dst_;
  const f32 *src = src_;
#pragma omp parallel for schedule(static)
  for (int i = 0; i < n; i++) {
    f32 *d = dst + (size_t)i * C;
    const f32 *s = src + (size_t)idx[i] * C;
    for (int c = 0; c < C; c++) d[c] = acc ? d[c] + s[c] : s[c];
  }
  return VL_OK;
}

/* serial over i (repeated indices), parallel over columns */
static int cpu_rows_scatter(vl_ops *o, vl_t *dst_, const vl_t *src_, const int32_t *idx,
                            int n, int C, int acc) {
  f32 *dst = dst_;
  const f32 *src = src_;
#pragma omp parallel for schedule(static)
  for (int c = 0; c < C; c++)
    for (int i = 0; i < n; i++) {
      f32 *d = dst + (size_t)idx[i] * C + c;
      *d = acc ? *d + src[(size_t)i * C + c] : src[(size_t)i * C + c];
    }
  return VL_OK;
}

static int cpu_rows_zero(vl_ops *o, vl_t *dst_, const int32_t *idx, int n, int C) {
  f32 *dst = dst_;
  for (int i = 0; i < n; i++) memset(dst + (size_t)idx[i] * C, 0, (size_t)C * sizeof(f32));
  return VL_OK;
}

static int cpu_embed_bag_forward(vl_ops *o, vl_t *out_, const vl_t *table_, const int32_t *idx,
                                 const float *w, int n, int K, int C, int acc) {
  f32 *out = out_;
  const f32 *table = table_;
#pragma omp parallel for schedule(static)
  for (int i = 0; i < n; i++) {
    f32 *y = out + (size_t)i * C;
    for (int c = 0; c < C; c++) {
      f32 s = 0.0f;
      for (int k = 0; k < K; k++)
        s += w[(size_t)i * K + k] * table[(size_t)idx[(size_t)i * K + k] * C + c];
      y[c] = acc ? y[c] + s : s;
    }
  }
  return VL_OK;
}

static int cpu_embed_bag_backward(vl_ops *o, vl_t *dtable_, const vl_t *dout_, const int32_t *idx,
                                  const float *w, int n, int K, int C) {
  f32 *dtable = dtable_;
  const f32 *dout = dout_;
#pragma omp parallel for schedule(static)
  for (int c = 0; c < C; c++)
    for (int i = 0; i < n; i++)
      for (int k = 0; k < K; k++)
        dtable[(size_t)idx[(size_t)i * K + k] * C + c] += w[(size_t)i * K + k] * dout[(size_t)i * C + c];
  return VL_OK;
}

/* ---- lm_head + cross-entropy, in row chunks ------------------------------------- */
#define CE_CHUNK 64
static int cpu_lmhead_ce(vl_ops *o, float *loss, vl_t *dh_, vl_t *dW_, float *logits_out,
                         const vl_t *h_, const vl_t *W_, const int32_t *target, int T, int H,
                         int V, float scale) {
  f32 *dh = dh_, *dW = dW_;
  const f32 *h = h_, *Wt = W_;
  f32 *z = NULL;
  VL_CALL(vl_malloc((void **)&z, sizeof(f32) * (size_t)CE_CHUNK * V, "loss chunk logits"));
  for (int r0 = 0; r0 < T; r0 += CE_CHUNK) {
    const int rows = T - r0 < CE_CHUNK ? T - r0 : CE_CHUNK;
    /* logits (rows, V) */
#pragma omp parallel for schedule(static)
    for (int v = 0; v < V; v++) {
      const f32 *w = Wt + (size_t)v * H;
      for (int r = 0; r < rows; r++) {
        const f32 *x = h + (size_t)(r0 + r) * H;
        f32 s = 0.0f;
        for (int k = 0; k < H; k++) s += x[k] * w[k];
        z[(size_t)r * V + v] = s;
      }
    }
    if (logits_out) memcpy(logits_out + (size_t)r0 * V, z, sizeof(f32) * (size_t)rows * V);
    /* loss, and z -> scale (softmax - onehot) */
#pragma omp parallel for schedule(static)
    for (int r = 0; r < rows; r++) {
      f32 *zr = z + (size_t)r * V;
      const int tg = target[r0 + r];
      if (tg < 0) {
        loss[r0 + r] = 0.0f;
        memset(zr, 0, sizeof(f32) * (size_t)V);
        continue;
      }
      f32 mx = -INFINITY;
      for (int v = 0; v < V; v++) mx = zr[v] > mx ? zr[v] : mx;
      double sum = 0.0;
      for (int v = 0; v < V; v++) sum += exp((double)(zr[v] - mx));
      const f32 lse = mx + (f32)log(sum);
      loss[r0 + r] = lse - zr[tg];
      for (int v = 0; v < V; v++) zr[v] = scale * expf(zr[v] - lse);
      zr[tg] -= scale;
    }
    if (dh) {
#pragma omp parallel for schedule(static)
      for (int r = 0; r < rows; r++) {
        f32 *dx = dh + (size_t)(r0 + r) * H;
        const f32 *zr = z + (size_t)r * V;
        for (int v = 0; v < V; v++) {
          const f32 g = zr[v];
          if (g == 0.0f) continue;
          const f32 *w = Wt + (size_t)v * H;
          for (int k = 0; k < H; k++) dx[k] += g * w[k];
        }
      }
    }
    if (dW) {
#pragma omp parallel for schedule(static)
      for (int v = 0; v < V; v++) {
        f32 *dw = dW + (size_t)v * H;
        for (int r = 0; r < rows; r++) {
          const f32 g = z[(size_t)r * V + v];
          if (g == 0.0f) continue;
          const f32 *x = h + (size_t)(r0 + r) * H;
          for (int k = 0; k < H; k++) dw[k] += g * x[k];
        }
      }
    }
  }
  free(z);
  return VL_OK;
}

/* ---- optimizer ------------------------------------------------------------------ */
static int cpu_sumsq(vl_ops *o, const vl_t *x_, size_t n, double *out) {
  const f32 *x = x_;
  double s = 0.0;
  for (size_t i = 0; i < n; i++) s += (double)x[i] * x[i];
  *out = s;
  return VL_OK;
}

static int cpu_diff_sumsq(vl_ops *o, const vl_t *a_, const vl_t *b_, size_t n, double *out) {
  const f32 *a = a_, *b = b_;
  double s = 0.0;
  for (size_t i = 0; i < n; i++) s += ((double)a[i] - b[i]) * ((double)a[i] - b[i]);
  *out = s;
  return VL_OK;
}

static int cpu_adamw(vl_ops *o, float *master, float *m, float *v, const vl_t *grad_, vl_t *param_,
                     size_t n, float lr, float b1, float b2, float eps, float wd, float gs, int t) {
  const f32 *grad = grad_;
  f32 *param = param_;
  const double bc1 = 1.0 - pow(b1, t), bc2 = 1.0 - pow(b2, t);
  const float step = (float)(lr / bc1), bc2s = (float)sqrt(bc2);
#pragma omp parallel for schedule(static)
  for (size_t i = 0; i < n; i++) {
    const float g = gs * grad[i];
    float p = master[i] * (1.0f - lr * wd);
    m[i] = b1 * m[i] + (1.0f - b1) * g;
    v[i] = b2 * v[i] + (1.0f - b2) * g * g;
    p -= step * m[i] / (sqrtf(v[i]) / bc2s + eps);
    master[i] = p;
    param[i] = p;
  }
  return VL_OK;
}

int vl_ops_cpu_create(vl_ops **out) {
  vl_ops *o = NULL;
  VL_CALL(vl_calloc((void **)&o, 1, sizeof *o, "cpu op table"));
  o->name = "cpu";
  o->elem_size = sizeof(float);
  o->alloc = cpu_alloc;
  o->free = cpu_free;
  o->zero = cpu_zero;
  o->copy = cpu_copy;
  o->put = cpu_put;
  o->get = cpu_get;
  o->put_raw = cpu_raw;
  o->get_raw = cpu_raw;
  o->sync = cpu_sync;
  o->mem_info = cpu_mem_info;
  o->destroy = cpu_destroy;
  o->matmul_forward = cpu_matmul_forward;
  o->matmul_backward = cpu_matmul_backward;
  o->add = cpu_add;
  o->act_forward = cpu_act_forward;
  o->act_backward = cpu_act_backward;
  o->swiglu_forward = cpu_swiglu_forward;
  o->swiglu_backward = cpu_swiglu_backward;
  o->layernorm_forward = cpu_layernorm_forward;
  o->layernorm_backward = cpu_layernorm_backward;
  o->rmsnorm_forward = cpu_rmsnorm_forward;
  o->rmsnorm_backward = cpu_rmsnorm_backward;
  o->qk_norm_rope_forward = cpu_qk_norm_rope_forward;
  o->qk_norm_rope_backward = cpu_qk_norm_rope_backward;
  o->attention_forward = cpu_attention_forward;
  o->attention_backward = cpu_attention_backward;
  o->rows_gather = cpu_rows_gather;
  o->rows_scatter = cpu_rows_scatter;
  o->rows_zero = cpu_rows_zero;
  o->embed_bag_forward = cpu_embed_bag_forward;
  o->embed_bag_backward = cpu_embed_bag_backward;
  o->lmhead_ce = cpu_lmhead_ce;
  o->sumsq = cpu_sumsq;
  o->diff_sumsq = cpu_diff_sumsq;
  o->adamw = cpu_adamw;
  *out = o;
  return VL_OK;
}
