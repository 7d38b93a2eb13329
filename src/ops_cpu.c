/* ops_cpu: the fp32 reference backend of ops.h (vl_t = float, elem_size 4).
 *
 * Plain loops; OpenMP over independent rows, columns or heads.  Every sum is
 * taken in an order fixed by the data alone (never split across threads in
 * an order that varies), so results are bitwise identical for any thread
 * count.  Numerics follow Hugging Face transformers (shared/spec/qwen-vl.md):
 * biased LayerNorm variance with eps inside the sqrt, Qwen RMSNorm as
 * w * x * rsqrt(mean(x^2) + eps), rotate-half RoPE, softmax attention in fp32.
 * Backwards accumulate (+=) and skip NULL gradients, as ops.h requires. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "err.h"
#include "ops.h"
#include "sround.h"

typedef float f32;

/* sum_k a[k] b[k] in fp32 with 8 interleaved partial sums: a fixed order the
 * compiler can vectorise without -ffast-math. */
static inline f32 dot(const f32 *a, const f32 *b, int n) {
  f32 p[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int k = 0;
  for (; k + 8 <= n; k += 8)
    for (int l = 0; l < 8; l++) p[l] += a[k + l] * b[k + l];
  f32 s = ((p[0] + p[4]) + (p[1] + p[5])) + ((p[2] + p[6]) + (p[3] + p[7]));
  for (; k < n; k++) s += a[k] * b[k];
  return s;
}

/* y[k] += a x[k] */
static inline void axpy(f32 *y, f32 a, const f32 *x, int n) {
  for (int k = 0; k < n; k++) y[k] += a * x[k];
}

/* y[k] += a0 x0[k] + a1 x1[k] + a2 x2[k] + a3 x3[k]: one load and store of y
 * per four products (the backward GEMMs are bound by them otherwise). */
static inline void axpy4(f32 *y, f32 a0, f32 a1, f32 a2, f32 a3, const f32 *x0, const f32 *x1,
                         const f32 *x2, const f32 *x3, int n) {
  for (int k = 0; k < n; k++) y[k] += ((a0 * x0[k] + a1 * x1[k]) + a2 * x2[k]) + a3 * x3[k];
}

/* Fork threads only for work worth it (multiply-adds or elements): the tiny
 * ops of small models and tests run faster serially, and a team of one runs
 * the same code, so results do not change. */
#define PAR_MIN 32768.0
static inline int par(double work) { return work >= PAR_MIN; }

/* Per-thread scratch inside a parallel region: NULL (and *fail set) when the
 * allocation fails; the caller skips its iterations and reports VL_ENOMEM. */
static f32 *scratch(size_t n, int *fail) {
  f32 *p = malloc((n ? n : 1) * sizeof(f32));
  if (!p) {
#pragma omp atomic write
    *fail = 1;
  }
  return p;
}

/* ---- memory ---------------------------------------------------------------- */
static int cpu_alloc(vl_ops *o, void **p, size_t bytes, const char *what) {
  return vl_malloc(p, bytes, what);
}
static int cpu_free(vl_ops *o, void *p) { free(p); return VL_OK; }
static int cpu_zero(vl_ops *o, void *p, size_t bytes) {
  if (bytes) memset(p, 0, bytes);
  return VL_OK;
}
static int cpu_copy(vl_ops *o, void *d, const void *s, size_t bytes) {
  if (bytes) memmove(d, s, bytes);
  return VL_OK;
}
static int cpu_put(vl_ops *o, vl_t *d, const float *s, size_t n) {
  if (n) memcpy(d, s, n * sizeof(float));
  return VL_OK;
}
static int cpu_get(vl_ops *o, float *d, const vl_t *s, size_t n) {
  if (n) memcpy(d, s, n * sizeof(float));
  return VL_OK;
}
static int cpu_raw(vl_ops *o, void *d, const void *s, size_t bytes) {
  if (bytes) memcpy(d, s, bytes);
  return VL_OK;
}
static int cpu_sync(vl_ops *o) { return VL_OK; }
static int cpu_destroy(vl_ops *o) { free(o); return VL_OK; }
static int cpu_mem_info(vl_ops *o, size_t *free_b, size_t *total_b) {
  long pages = sysconf(_SC_PHYS_PAGES), avail = sysconf(_SC_AVPHYS_PAGES);
  long ps = sysconf(_SC_PAGESIZE);
  *total_b = pages > 0 && ps > 0 ? (size_t)pages * (size_t)ps : 0;
  *free_b = avail > 0 && ps > 0 ? (size_t)avail * (size_t)ps : 0;
  /* Linux: MemAvailable counts reclaimable page cache, which "free" does not */
  FILE *f = fopen("/proc/meminfo", "r");
  if (f) {
    char line[128];
    unsigned long long kb;
    while (fgets(line, sizeof line, f))
      if (sscanf(line, "MemAvailable: %llu kB", &kb) == 1) {
        *free_b = (size_t)kb * 1024;
        break;
      }
    fclose(f);
  }
  return VL_OK;
}

/* ---- linear ------------------------------------------------------------------ */
#define MM_RB 4 /* rows of inp per task: each W row is loaded once for 4 rows */
#define MM_JB 8 /* rows of dW per task: each inp row is loaded once for 8 */

/* out (M,N) (= or +=) inp (M,K) W(N,K)^T + bias(N) */
static int cpu_matmul_forward(vl_ops *o, vl_t *out_, const vl_t *inp_, const vl_t *W_,
                              const vl_t *bias_, int M, int K, int N, int acc) {
  if (M < 0 || K < 0 || N < 0)
    VL_ERROR(VL_EINVAL, "matmul_forward: negative shape M=%d K=%d N=%d", M, K, N);
  f32 *out = out_;
  const f32 *inp = inp_, *W = W_, *bias = bias_;
  const int nb = (M + MM_RB - 1) / MM_RB;
#pragma omp parallel for schedule(static) if (par((double)M * N * K))
  for (int b = 0; b < nb; b++) {
    const int i0 = b * MM_RB, i1 = i0 + MM_RB < M ? i0 + MM_RB : M;
    for (int j = 0; j < N; j++) {
      const f32 *w = W + (size_t)j * K;
      for (int i = i0; i < i1; i++) {
        f32 s = dot(inp + (size_t)i * K, w, K) + (bias ? bias[j] : 0.0f);
        f32 *y = out + (size_t)i * N + j;
        *y = acc ? *y + s : s;
      }
    }
  }
  return VL_OK;
}

/* dinp (M,K) += dout (M,N) W (N,K);  dW (N,K) += dout^T inp;  dbias (N) += colsum dout.
 * Each gradient element is summed in scratch and added once. */
static int cpu_matmul_backward(vl_ops *o, vl_t *dinp_, vl_t *dW_, vl_t *dbias_,
                               const vl_t *dout_, const vl_t *inp_, const vl_t *W_,
                               int M, int K, int N) {
  if (M < 0 || K < 0 || N < 0)
    VL_ERROR(VL_EINVAL, "matmul_backward: negative shape M=%d K=%d N=%d", M, K, N);
  f32 *dinp = dinp_, *dW = dW_, *dbias = dbias_;
  const f32 *dout = dout_, *inp = inp_, *W = W_;
  int fail = 0;
  if (dinp) {
    const int nb = (M + MM_RB - 1) / MM_RB;
#pragma omp parallel if (par((double)M * N * K))
    {
      f32 *a = scratch((size_t)MM_RB * K, &fail);
#pragma omp for schedule(static)
      for (int b = 0; b < nb; b++) {
        if (!a) continue;
        const int i0 = b * MM_RB, i1 = i0 + MM_RB < M ? i0 + MM_RB : M;
        memset(a, 0, sizeof(f32) * MM_RB * (size_t)K);
        int j = 0;
        for (; j + 4 <= N; j += 4) {
          const f32 *w = W + (size_t)j * K;
          for (int i = i0; i < i1; i++) {
            const f32 *g = dout + (size_t)i * N + j;
            axpy4(a + (size_t)(i - i0) * K, g[0], g[1], g[2], g[3], w, w + K, w + 2 * (size_t)K,
                  w + 3 * (size_t)K, K);
          }
        }
        for (; j < N; j++)
          for (int i = i0; i < i1; i++)
            axpy(a + (size_t)(i - i0) * K, dout[(size_t)i * N + j], W + (size_t)j * K, K);
        for (int i = i0; i < i1; i++) axpy(dinp + (size_t)i * K, 1.0f, a + (size_t)(i - i0) * K, K);
      }
      free(a);
    }
  }
  if (dW || dbias) {
    const int nb = (N + MM_JB - 1) / MM_JB;
#pragma omp parallel if (par((double)M * N * K))
    {
      f32 *a = scratch((size_t)MM_JB * K, &fail);
#pragma omp for schedule(static)
      for (int b = 0; b < nb; b++) {
        if (!a) continue;
        const int j0 = b * MM_JB, j1 = j0 + MM_JB < N ? j0 + MM_JB : N;
        f32 db[MM_JB] = {0};
        memset(a, 0, sizeof(f32) * MM_JB * (size_t)K);
        for (int i = 0; i < M; i++)
          for (int j = j0; j < j1; j++) db[j - j0] += dout[(size_t)i * N + j];
        if (dW) {
          int i = 0;
          for (; i + 4 <= M; i += 4) {
            const f32 *x = inp + (size_t)i * K, *g = dout + (size_t)i * N;
            for (int j = j0; j < j1; j++)
              axpy4(a + (size_t)(j - j0) * K, g[j], g[N + j], g[2 * (size_t)N + j],
                    g[3 * (size_t)N + j], x, x + K, x + 2 * (size_t)K, x + 3 * (size_t)K, K);
          }
          for (; i < M; i++)
            for (int j = j0; j < j1; j++)
              axpy(a + (size_t)(j - j0) * K, dout[(size_t)i * N + j], inp + (size_t)i * K, K);
        }
        for (int j = j0; j < j1; j++) {
          if (dW) axpy(dW + (size_t)j * K, 1.0f, a + (size_t)(j - j0) * K, K);
          if (dbias) dbias[j] += db[j - j0];
        }
      }
      free(a);
    }
  }
  if (fail) VL_ERROR(VL_ENOMEM, "matmul_backward: no scratch for K=%d", K);
  return VL_OK;
}

/* ---- elementwise ----------------------------------------------------------------- */
static int cpu_add(vl_ops *o, vl_t *out_, const vl_t *a_, const vl_t *b_, size_t n) {
  f32 *out = out_;
  const f32 *a = a_, *b = b_;
#pragma omp parallel for schedule(static) if (par((double)n))
  for (size_t i = 0; i < n; i++) out[i] = a[i] + b[i];
  return VL_OK;
}

#define K_SQRT_2_PI 0.7978845608028654f /* sqrt(2/pi) */
#define K_GELU_A 0.044715f
#define K_INV_SQRT2 0.7071067811865476f
#define K_INV_SQRT_2PI 0.3989422804014327f /* 1/sqrt(2 pi) */

static inline f32 sigmoid(f32 x) { return 1.0f / (1.0f + expf(-x)); }

static inline f32 act_value(f32 x, vl_act_kind act) {
  switch (act) {
  case VL_ACT_GELU_TANH:
    return 0.5f * x * (1.0f + tanhf(K_SQRT_2_PI * (x + K_GELU_A * x * x * x)));
  case VL_ACT_GELU_ERF: return 0.5f * x * (1.0f + erff(x * K_INV_SQRT2));
  case VL_ACT_QUICK_GELU: return x * sigmoid(1.702f * x);
  case VL_ACT_SILU: default: return x * sigmoid(x);
  }
}

/* d act / dx */
static inline f32 act_deriv(f32 x, vl_act_kind act) {
  switch (act) {
  case VL_ACT_GELU_TANH: {
    const f32 t = tanhf(K_SQRT_2_PI * (x + K_GELU_A * x * x * x));
    const f32 du = K_SQRT_2_PI * (1.0f + 3.0f * K_GELU_A * x * x);
    return 0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * du;
  }
  case VL_ACT_GELU_ERF:
    return 0.5f * (1.0f + erff(x * K_INV_SQRT2)) + x * K_INV_SQRT_2PI * expf(-0.5f * x * x);
  case VL_ACT_QUICK_GELU: {
    const f32 s = sigmoid(1.702f * x);
    return s + 1.702f * x * s * (1.0f - s);
  }
  case VL_ACT_SILU: default: {
    const f32 s = sigmoid(x);
    return s * (1.0f + x * (1.0f - s));
  }
  }
}

static int check_act(vl_act_kind act) {
  if (act != VL_ACT_GELU_TANH && act != VL_ACT_GELU_ERF && act != VL_ACT_QUICK_GELU &&
      act != VL_ACT_SILU)
    VL_ERROR(VL_EINVAL, "activation: unknown kind %d", (int)act);
  return VL_OK;
}

static int cpu_act_forward(vl_ops *o, vl_t *out_, const vl_t *inp_, size_t n, vl_act_kind act) {
  VL_CALL(check_act(act));
  f32 *out = out_;
  const f32 *inp = inp_;
#pragma omp parallel for schedule(static) if (par((double)n))
  for (size_t i = 0; i < n; i++) out[i] = act_value(inp[i], act);
  return VL_OK;
}

static int cpu_act_backward(vl_ops *o, vl_t *dinp_, const vl_t *dout_, const vl_t *inp_,
                            size_t n, vl_act_kind act) {
  VL_CALL(check_act(act));
  if (!dinp_) return VL_OK;
  f32 *dinp = dinp_;
  const f32 *dout = dout_, *inp = inp_;
#pragma omp parallel for schedule(static) if (par((double)n))
  for (size_t i = 0; i < n; i++) dinp[i] += dout[i] * act_deriv(inp[i], act);
  return VL_OK;
}

/* gate_up (M, 2I) = [gate | up] -> out (M, I) = silu(gate) * up */
static int cpu_swiglu_forward(vl_ops *o, vl_t *out_, const vl_t *gu_, int M, int I) {
  f32 *out = out_;
  const f32 *gu = gu_;
#pragma omp parallel for schedule(static) if (par((double)M * I))
  for (int i = 0; i < M; i++) {
    const f32 *g = gu + (size_t)i * 2 * I, *u = g + I;
    f32 *y = out + (size_t)i * I;
    for (int j = 0; j < I; j++) y[j] = g[j] * sigmoid(g[j]) * u[j];
  }
  return VL_OK;
}

static int cpu_swiglu_backward(vl_ops *o, vl_t *dgu_, const vl_t *dout_, const vl_t *gu_,
                               int M, int I) {
  if (!dgu_) return VL_OK;
  f32 *dgu = dgu_;
  const f32 *dout = dout_, *gu = gu_;
#pragma omp parallel for schedule(static) if (par((double)M * I))
  for (int i = 0; i < M; i++) {
    const f32 *g = gu + (size_t)i * 2 * I, *u = g + I, *dy = dout + (size_t)i * I;
    f32 *dg = dgu + (size_t)i * 2 * I, *du = dg + I;
    for (int j = 0; j < I; j++) {
      const f32 s = sigmoid(g[j]);
      dg[j] += dy[j] * u[j] * s * (1.0f + g[j] * (1.0f - s));
      du[j] += dy[j] * g[j] * s;
    }
  }
  return VL_OK;
}

/* ---- normalisation --------------------------------------------------------------- */
#define COL_B 64 /* columns per task in column reductions over rows */

static int cpu_layernorm_forward(vl_ops *o, vl_t *out_, float *mean, float *rstd,
                                 const vl_t *inp_, const vl_t *w_, const vl_t *b_, int M,
                                 int C, float eps) {
  if (C <= 0) VL_ERROR(VL_EINVAL, "layernorm_forward: C=%d", C);
  f32 *out = out_;
  const f32 *inp = inp_, *w = w_, *b = b_;
#pragma omp parallel for schedule(static) if (par((double)M * C))
  for (int i = 0; i < M; i++) {
    const f32 *x = inp + (size_t)i * C;
    f32 m = 0.0f, v = 0.0f;
    for (int k = 0; k < C; k++) m += x[k];
    m /= (f32)C;
    for (int k = 0; k < C; k++) v += (x[k] - m) * (x[k] - m);
    const f32 r = 1.0f / sqrtf(v / (f32)C + eps); /* biased variance */
    f32 *y = out + (size_t)i * C;
    for (int k = 0; k < C; k++) y[k] = (x[k] - m) * r * w[k] + (b ? b[k] : 0.0f);
    mean[i] = m;
    rstd[i] = r;
  }
  return VL_OK;
}

/* xhat = (x - mean) rstd, g = dout w:
 * dx = rstd (g - mean(g) - xhat mean(g xhat));  dw = sum_rows dout xhat;  db = sum_rows dout */
static int cpu_layernorm_backward(vl_ops *o, vl_t *dinp_, vl_t *dw_, vl_t *db_,
                                  const vl_t *dout_, const vl_t *inp_, const vl_t *w_,
                                  const float *mean, const float *rstd, int M, int C) {
  if (C <= 0) VL_ERROR(VL_EINVAL, "layernorm_backward: C=%d", C);
  f32 *dinp = dinp_, *dw = dw_, *db = db_;
  const f32 *dout = dout_, *inp = inp_, *w = w_;
  if (dinp) {
#pragma omp parallel for schedule(static) if (par((double)M * C))
    for (int i = 0; i < M; i++) {
      const f32 *x = inp + (size_t)i * C, *dy = dout + (size_t)i * C;
      const f32 m = mean[i], r = rstd[i];
      f32 sg = 0.0f, sgx = 0.0f;
      for (int k = 0; k < C; k++) {
        const f32 g = dy[k] * w[k];
        sg += g;
        sgx += g * (x[k] - m) * r;
      }
      sg /= (f32)C;
      sgx /= (f32)C;
      f32 *dx = dinp + (size_t)i * C;
      for (int k = 0; k < C; k++) dx[k] += r * (dy[k] * w[k] - sg - (x[k] - m) * r * sgx);
    }
  }
  if (dw || db) {
    const int nb = (C + COL_B - 1) / COL_B;
#pragma omp parallel for schedule(static) if (par((double)M * C))
    for (int bk = 0; bk < nb; bk++) {
      const int k0 = bk * COL_B, k1 = k0 + COL_B < C ? k0 + COL_B : C;
      f32 sw[COL_B] = {0}, sb[COL_B] = {0};
      for (int i = 0; i < M; i++) {
        const f32 *x = inp + (size_t)i * C, *dy = dout + (size_t)i * C;
        for (int k = k0; k < k1; k++) {
          sw[k - k0] += dy[k] * (x[k] - mean[i]) * rstd[i];
          sb[k - k0] += dy[k];
        }
      }
      for (int k = k0; k < k1; k++) {
        if (dw) dw[k] += sw[k - k0];
        if (db) db[k] += sb[k - k0];
      }
    }
  }
  return VL_OK;
}

/* one row of RMSNorm: returns rstd = 1/sqrt(mean(x^2) + eps) */
static inline f32 rms_rstd(const f32 *x, int C, f32 eps) {
  f32 s = 0.0f;
  for (int k = 0; k < C; k++) s += x[k] * x[k];
  return 1.0f / sqrtf(s / (f32)C + eps);
}

static int cpu_rmsnorm_forward(vl_ops *o, vl_t *out_, float *rstd, const vl_t *inp_,
                               const vl_t *w_, int M, int C, float eps) {
  if (C <= 0) VL_ERROR(VL_EINVAL, "rmsnorm_forward: C=%d", C);
  f32 *out = out_;
  const f32 *inp = inp_, *w = w_;
#pragma omp parallel for schedule(static) if (par((double)M * C))
  for (int i = 0; i < M; i++) {
    const f32 *x = inp + (size_t)i * C;
    const f32 r = rms_rstd(x, C, eps);
    f32 *y = out + (size_t)i * C;
    for (int k = 0; k < C; k++) y[k] = x[k] * r * w[k];
    rstd[i] = r;
  }
  return VL_OK;
}

/* xhat = x r, g = dout w:  dx = r (g - xhat mean(g xhat));  dw = sum_rows dout xhat */
static int cpu_rmsnorm_backward(vl_ops *o, vl_t *dinp_, vl_t *dw_, const vl_t *dout_,
                                const vl_t *inp_, const vl_t *w_, const float *rstd,
                                int M, int C) {
  if (C <= 0) VL_ERROR(VL_EINVAL, "rmsnorm_backward: C=%d", C);
  f32 *dinp = dinp_, *dw = dw_;
  const f32 *dout = dout_, *inp = inp_, *w = w_;
  if (dinp) {
#pragma omp parallel for schedule(static) if (par((double)M * C))
    for (int i = 0; i < M; i++) {
      const f32 *x = inp + (size_t)i * C, *dy = dout + (size_t)i * C;
      const f32 r = rstd[i];
      f32 a = 0.0f;
      for (int k = 0; k < C; k++) a += dy[k] * w[k] * x[k] * r;
      a /= (f32)C;
      f32 *dx = dinp + (size_t)i * C;
      for (int k = 0; k < C; k++) dx[k] += r * (dy[k] * w[k] - x[k] * r * a);
    }
  }
  if (dw) {
    const int nb = (C + COL_B - 1) / COL_B;
#pragma omp parallel for schedule(static) if (par((double)M * C))
    for (int bk = 0; bk < nb; bk++) {
      const int k0 = bk * COL_B, k1 = k0 + COL_B < C ? k0 + COL_B : C;
      f32 s[COL_B] = {0};
      for (int i = 0; i < M; i++)
        for (int k = k0; k < k1; k++)
          s[k - k0] += dout[(size_t)i * C + k] * inp[(size_t)i * C + k] * rstd[i];
      for (int k = k0; k < k1; k++) dw[k] += s[k - k0];
    }
  }
  return VL_OK;
}

/* ---- q/k RMSNorm + rotate-half RoPE --------------------------------------------
 * Per head slice x (hd), half = hd/2, n = x r w (or n = x without norms):
 *   y[k]      = n[k] cos[k]           - n[k+half] sin[k]
 *   y[k+half] = n[k+half] cos[k+half] + n[k] sin[k+half]      (k < half)
 * The transposed rotation gives dn from dy:
 *   dn[k]      = dy[k] cos[k] + dy[k+half] sin[k+half]
 *   dn[k+half] = dy[k+half] cos[k+half] - dy[k] sin[k]                        */
static int check_qk(const char *op, const vl_t *q_w, const vl_t *k_w, const float *rstd,
                    int T, int nh, int nkv, int hd) {
  if (T < 0 || nh < 0 || nkv < 0 || hd <= 0 || hd % 2)
    VL_ERROR(VL_EINVAL, "%s: bad shape T=%d nh=%d nkv=%d hd=%d (hd must be even)", op, T, nh,
             nkv, hd);
  if (q_w && (!k_w || !rstd))
    VL_ERROR(VL_EINVAL, "%s: with q_w given, k_w and rstd are needed too", op);
  return VL_OK;
}

static inline f32 rope_dn(const f32 *dy, const f32 *c, const f32 *s, int k, int half) {
  return k < half ? dy[k] * c[k] + dy[k + half] * s[k + half]
                  : dy[k] * c[k] - dy[k - half] * s[k - half];
}

static int cpu_qk_norm_rope_forward(vl_ops *o, vl_t *out_, float *rstd, const vl_t *qkv_,
                                    const vl_t *qw_, const vl_t *kw_, const float *cos_,
                                    const float *sin_, int T, int nh, int nkv, int hd,
                                    float eps) {
  VL_CALL(check_qk("qk_norm_rope_forward", qw_, kw_, rstd, T, nh, nkv, hd));
  f32 *out = out_;
  const f32 *qkv = qkv_, *qw = qw_, *kw = kw_;
  const int W = (nh + 2 * nkv) * hd, half = hd / 2, nqk = nh + nkv;
#pragma omp parallel for schedule(static) if (par((double)T * W))
  for (int t = 0; t < T; t++) {
    const f32 *c = cos_ + (size_t)t * hd, *s = sin_ + (size_t)t * hd;
    for (int h = 0; h < nqk; h++) {
      const f32 *x = qkv + (size_t)t * W + (size_t)h * hd;
      const f32 *w = qw ? (h < nh ? qw : kw) : NULL;
      f32 r = 1.0f;
      if (w) {
        r = rms_rstd(x, hd, eps);
        rstd[(size_t)t * nqk + h] = r;
      }
      f32 *y = out + (size_t)t * W + (size_t)h * hd;
      for (int k = 0; k < half; k++) {
        const f32 a = w ? x[k] * r * w[k] : x[k];
        const f32 b = w ? x[k + half] * r * w[k + half] : x[k + half];
        y[k] = a * c[k] - b * s[k];
        y[k + half] = b * c[k + half] + a * s[k + half];
      }
    }
    memcpy(out + (size_t)t * W + (size_t)nqk * hd, qkv + (size_t)t * W + (size_t)nqk * hd,
           sizeof(f32) * (size_t)nkv * hd);
  }
  return VL_OK;
}

static int cpu_qk_norm_rope_backward(vl_ops *o, vl_t *dqkv_, vl_t *dqw_, vl_t *dkw_,
                                     const vl_t *dout_, const vl_t *qkv_, const vl_t *qw_,
                                     const vl_t *kw_, const float *rstd, const float *cos_,
                                     const float *sin_, int T, int nh, int nkv, int hd) {
  VL_CALL(check_qk("qk_norm_rope_backward", qw_, kw_, rstd, T, nh, nkv, hd));
  f32 *dqkv = dqkv_, *dqw = dqw_, *dkw = dkw_;
  const f32 *dout = dout_, *qkv = qkv_, *qw = qw_, *kw = kw_;
  const int W = (nh + 2 * nkv) * hd, half = hd / 2, nqk = nh + nkv;
  if (dqkv) {
#pragma omp parallel for schedule(static) if (par((double)T * W))
    for (int t = 0; t < T; t++) {
      const f32 *c = cos_ + (size_t)t * hd, *s = sin_ + (size_t)t * hd;
      for (int h = 0; h < nqk; h++) {
        const size_t off = (size_t)t * W + (size_t)h * hd;
        const f32 *dy = dout + off, *x = qkv + off;
        f32 *dx = dqkv + off;
        const f32 *w = qw ? (h < nh ? qw : kw) : NULL;
        if (!w) {
          for (int k = 0; k < hd; k++) dx[k] += rope_dn(dy, c, s, k, half);
          continue;
        }
        /* RMSNorm backward over hd with g = dn w */
        const f32 r = rstd[(size_t)t * nqk + h];
        f32 a = 0.0f;
        for (int k = 0; k < hd; k++) a += rope_dn(dy, c, s, k, half) * w[k] * x[k] * r;
        a /= (f32)hd;
        for (int k = 0; k < hd; k++)
          dx[k] += r * (rope_dn(dy, c, s, k, half) * w[k] - x[k] * r * a);
      }
      const size_t voff = (size_t)t * W + (size_t)nqk * hd;
      axpy(dqkv + voff, 1.0f, dout + voff, nkv * hd);
    }
  }
  /* norm weights: one task per (q|k, component), summed over rows then heads */
  if (qw && (dqw || dkw)) {
#pragma omp parallel for schedule(static) if (par((double)T * W))
    for (int idx = 0; idx < 2 * hd; idx++) {
      const int is_k = idx >= hd, k = idx % hd;
      f32 *dw = is_k ? dkw : dqw;
      if (!dw) continue;
      const int h0 = is_k ? nh : 0, h1 = is_k ? nqk : nh;
      f32 acc = 0.0f;
      for (int t = 0; t < T; t++) {
        const f32 *c = cos_ + (size_t)t * hd, *s = sin_ + (size_t)t * hd;
        for (int h = h0; h < h1; h++) {
          const size_t off = (size_t)t * W + (size_t)h * hd;
          acc += rope_dn(dout + off, c, s, k, half) * qkv[off + k] * rstd[(size_t)t * nqk + h];
        }
      }
      dw[k] += acc;
    }
  }
  return VL_OK;
}

/* ---- attention ---------------------------------------------------------------------
 * qkv row t: [q heads (nh hd) | k heads (nkv hd) | v heads (nkv hd)].  Query
 * i of segment [b, e) sees keys j in [b, e) (j <= i if causal).           */
static int check_att(const char *op, const int32_t *seg_host, int nseg, int T, int nh,
                     int nkv, int hd, int *maxlen) {
  if (T < 0 || nh <= 0 || nkv <= 0 || hd <= 0 || nh % nkv || nseg < 0 || !seg_host)
    VL_ERROR(VL_EINVAL, "%s: bad shape T=%d nh=%d nkv=%d hd=%d nseg=%d (nh must be a "
             "multiple of nkv; seg_host is required)", op, T, nh, nkv, hd, nseg);
  *maxlen = 0;
  if (seg_host[0] < 0) VL_ERROR(VL_EINVAL, "%s: segment offset 0 is %d", op, seg_host[0]);
  for (int s = 0; s < nseg; s++) {
    const int len = seg_host[s + 1] - seg_host[s];
    if (len < 0 || seg_host[s + 1] > T)
      VL_ERROR(VL_EINVAL, "%s: segment %d spans rows %d..%d, outside 0..%d or reversed", op, s,
               seg_host[s], seg_host[s + 1], T);
    if (len > *maxlen) *maxlen = len;
  }
  return VL_OK;
}

/* One (segment, head) task per thread; the scaled scores of one query row in
 * a scratch row of the longest segment's length.  Rows outside every segment
 * are not written. */
static int cpu_attention_forward(vl_ops *o, vl_t *out_, float *lse, const vl_t *qkv_,
                                 const int32_t *seg, const int32_t *seg_host, int nseg,
                                 int T, int nh, int nkv, int hd, float scale, int causal) {
  int maxlen, fail = 0;
  VL_CALL(check_att("attention_forward", seg_host, nseg, T, nh, nkv, hd, &maxlen));
  f32 *out = out_;
  const f32 *qkv = qkv_;
  const int W = (nh + 2 * nkv) * hd, grp = nh / nkv;
#pragma omp parallel if (par((double)T * maxlen * nh * hd))
  {
    f32 *p = scratch((size_t)maxlen, &fail);
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
            const f32 d = scale * dot(q, qkv + (size_t)j * W + (size_t)(nh + kvh) * hd, hd);
            p[j - b] = d;
            if (d > mx) mx = d;
          }
          f32 sum = 0.0f;
          for (int j = b; j < jend; j++) sum += (p[j - b] = expf(p[j - b] - mx));
          f32 *y = out + (size_t)i * nh * hd + (size_t)h * hd;
          memset(y, 0, sizeof(f32) * (size_t)hd);
          const f32 inv = 1.0f / sum;
          for (int j = b; j < jend; j++)
            axpy(y, p[j - b] * inv, qkv + (size_t)j * W + (size_t)(nh + nkv + kvh) * hd, hd);
          lse[(size_t)h * T + i] = mx + logf(sum);
        }
      }
    free(p);
  }
  if (fail) VL_ERROR(VL_ENOMEM, "attention_forward: no scratch for a row of %d scores", maxlen);
  return VL_OK;
}

/* Recomputes P = exp(scale q.k - lse) a row at a time.  One task per
 * (segment, kv head): it owns dk, dv of that kv head in the segment (summed
 * in scratch (len, hd) over the group's q heads, then added once) and dq of
 * the group's q heads, so no two threads write the same element. */
static int cpu_attention_backward(vl_ops *o, vl_t *dqkv_, const vl_t *dout_, const vl_t *out_,
                                  const float *lse, const vl_t *qkv_, const int32_t *seg,
                                  const int32_t *seg_host, int nseg, int T, int nh, int nkv,
                                  int hd, float scale, int causal) {
  int maxlen, fail = 0;
  VL_CALL(check_att("attention_backward", seg_host, nseg, T, nh, nkv, hd, &maxlen));
  if (!dqkv_) return VL_OK;
  f32 *dqkv = dqkv_;
  const f32 *dout = dout_, *out = out_, *qkv = qkv_;
  const int W = (nh + 2 * nkv) * hd, grp = nh / nkv;
#pragma omp parallel if (par((double)T * maxlen * nh * hd))
  {
    f32 *buf = scratch((size_t)(2 * maxlen + 1) * hd, &fail);
#pragma omp for schedule(dynamic) collapse(2)
    for (int s = 0; s < nseg; s++)
      for (int kvh = 0; kvh < nkv; kvh++) {
        if (!buf) continue;
        const int b = seg_host[s], e = seg_host[s + 1], len = e - b;
        f32 *dk = buf, *dv = buf + (size_t)len * hd, *dq = buf + (size_t)2 * len * hd;
        memset(buf, 0, sizeof(f32) * (size_t)2 * len * hd);
        for (int h = kvh * grp; h < (kvh + 1) * grp; h++)
          for (int i = b; i < e; i++) {
            const f32 *q = qkv + (size_t)i * W + (size_t)h * hd;
            const f32 *dy = dout + (size_t)i * nh * hd + (size_t)h * hd;
            const f32 D = dot(dy, out + (size_t)i * nh * hd + (size_t)h * hd, hd);
            const f32 L = lse[(size_t)h * T + i];
            const int jend = causal ? i + 1 : e;
            memset(dq, 0, sizeof(f32) * (size_t)hd);
            for (int j = b; j < jend; j++) {
              const f32 *k = qkv + (size_t)j * W + (size_t)(nh + kvh) * hd;
              const f32 *v = qkv + (size_t)j * W + (size_t)(nh + nkv + kvh) * hd;
              const f32 p = expf(scale * dot(q, k, hd) - L);
              const f32 ds = p * (dot(dy, v, hd) - D); /* dS without the scale */
              axpy(dv + (size_t)(j - b) * hd, p, dy, hd);
              axpy(dq, ds, k, hd);
              axpy(dk + (size_t)(j - b) * hd, ds, q, hd);
            }
            axpy(dqkv + (size_t)i * W + (size_t)h * hd, scale, dq, hd);
          }
        for (int j = b; j < e; j++) {
          axpy(dqkv + (size_t)j * W + (size_t)(nh + kvh) * hd, scale,
               dk + (size_t)(j - b) * hd, hd);
          axpy(dqkv + (size_t)j * W + (size_t)(nh + nkv + kvh) * hd, 1.0f,
               dv + (size_t)(j - b) * hd, hd);
        }
      }
    free(buf);
  }
  if (fail) VL_ERROR(VL_ENOMEM, "attention_backward: no scratch for %d rows of %d", maxlen, hd);
  return VL_OK;
}

/* ---- rows -------------------------------------------------------------------------- */
static int cpu_rows_gather(vl_ops *o, vl_t *dst_, const vl_t *src_, const int32_t *idx,
                           int n, int C, int acc) {
  f32 *dst = dst_;
  const f32 *src = src_;
#pragma omp parallel for schedule(static) if (par((double)n * C))
  for (int i = 0; i < n; i++) {
    f32 *d = dst + (size_t)i * C;
    const f32 *s = src + (size_t)idx[i] * C;
    if (acc) axpy(d, 1.0f, s, C);
    else memcpy(d, s, sizeof(f32) * (size_t)C);
  }
  return VL_OK;
}

/* Repeated indices: serial over i inside a block of columns (parallel over
 * blocks), so += sums in i order and = keeps the last i. */
static int cpu_rows_scatter(vl_ops *o, vl_t *dst_, const vl_t *src_, const int32_t *idx,
                            int n, int C, int acc) {
  f32 *dst = dst_;
  const f32 *src = src_;
  const int nb = (C + COL_B - 1) / COL_B;
#pragma omp parallel for schedule(static) if (par((double)n * C))
  for (int bk = 0; bk < nb; bk++) {
    const int k0 = bk * COL_B, len = (k0 + COL_B < C ? k0 + COL_B : C) - k0;
    for (int i = 0; i < n; i++) {
      f32 *d = dst + (size_t)idx[i] * C + k0;
      const f32 *s = src + (size_t)i * C + k0;
      if (acc) axpy(d, 1.0f, s, len);
      else memcpy(d, s, sizeof(f32) * (size_t)len);
    }
  }
  return VL_OK;
}

static int cpu_rows_zero(vl_ops *o, vl_t *dst_, const int32_t *idx, int n, int C) {
  f32 *dst = dst_;
  for (int i = 0; i < n; i++) memset(dst + (size_t)idx[i] * C, 0, sizeof(f32) * (size_t)C);
  return VL_OK;
}

/* out[i,:] (= or +=) sum_k w[i,k] table[idx[i,k], :]   idx, w (n, K) */
static int cpu_embed_bag_forward(vl_ops *o, vl_t *out_, const vl_t *table_, const int32_t *idx,
                                 const float *w, int n, int K, int C, int acc) {
  f32 *out = out_;
  const f32 *table = table_;
#pragma omp parallel for schedule(static) if (par((double)n * K * C))
  for (int i = 0; i < n; i++) {
    f32 *y = out + (size_t)i * C;
    if (!acc) memset(y, 0, sizeof(f32) * (size_t)C);
    for (int k = 0; k < K; k++)
      axpy(y, w[(size_t)i * K + k], table + (size_t)idx[(size_t)i * K + k] * C, C);
  }
  return VL_OK;
}

/* dtable[idx[i,k], :] += w[i,k] dout[i, :]; column blocks in parallel, (i, k) in order */
static int cpu_embed_bag_backward(vl_ops *o, vl_t *dtable_, const vl_t *dout_,
                                  const int32_t *idx, const float *w, int n, int K, int C) {
  if (!dtable_) return VL_OK;
  f32 *dtable = dtable_;
  const f32 *dout = dout_;
  const int nb = (C + COL_B - 1) / COL_B;
#pragma omp parallel for schedule(static) if (par((double)n * K * C))
  for (int bk = 0; bk < nb; bk++) {
    const int k0 = bk * COL_B, len = (k0 + COL_B < C ? k0 + COL_B : C) - k0;
    for (int i = 0; i < n; i++)
      for (int k = 0; k < K; k++)
        axpy(dtable + (size_t)idx[(size_t)i * K + k] * C + k0, w[(size_t)i * K + k],
             dout + (size_t)i * C + k0, len);
  }
  return VL_OK;
}

/* ---- lm_head + cross-entropy, CE_ROWS rows at a time --------------------------------
 * z (rows, V): logits, then in place g = scale (softmax - onehot) (0 for an
 * ignored row).  W is read once per chunk for all its rows; dh walks W in
 * blocks of about 64 KiB so a block serves every row of the chunk. */
#define CE_ROWS 32

static int cpu_lmhead_ce(vl_ops *o, float *loss, vl_t *dh_, vl_t *dW_, float *logits_out,
                         const vl_t *h_, const vl_t *W_, const int32_t *target, int T, int H,
                         int V, float scale) {
  if (T < 0 || H <= 0 || V <= 0)
    VL_ERROR(VL_EINVAL, "lmhead_ce: bad shape T=%d H=%d V=%d", T, H, V);
  for (int t = 0; t < T; t++)
    if (target[t] >= V)
      VL_ERROR(VL_EINVAL, "lmhead_ce: target %d of row %d is outside the vocabulary (V = %d)",
               target[t], t, V);
  f32 *dh = dh_, *dW = dW_;
  const f32 *h = h_, *Wt = W_;
  f32 *z = NULL;
  VL_CALL(vl_malloc((void **)&z, sizeof(f32) * CE_ROWS * (size_t)V, "lmhead_ce chunk logits"));
  const int vb = H >= 16384 ? 1 : 16384 / H; /* vocab rows per dh block */
  for (int r0 = 0; r0 < T; r0 += CE_ROWS) {
    const int rows = T - r0 < CE_ROWS ? T - r0 : CE_ROWS;
    const f32 *hc = h + (size_t)r0 * H;
#pragma omp parallel for schedule(static) if (par((double)rows * V * H))
    for (int v = 0; v < V; v++)
      for (int r = 0; r < rows; r++)
        z[(size_t)r * V + v] = dot(hc + (size_t)r * H, Wt + (size_t)v * H, H);
    if (logits_out) memcpy(logits_out + (size_t)r0 * V, z, sizeof(f32) * (size_t)rows * V);
#pragma omp parallel for schedule(static) if (par((double)rows * V))
    for (int r = 0; r < rows; r++) {
      f32 *zr = z + (size_t)r * V;
      const int tg = target[r0 + r];
      if (tg < 0) {
        loss[r0 + r] = 0.0f;
        memset(zr, 0, sizeof(f32) * (size_t)V);
        continue;
      }
      f32 mx = zr[0];
      for (int v = 1; v < V; v++) mx = zr[v] > mx ? zr[v] : mx;
      double sum = 0.0; /* terms in (0, 1], V of them: summed in double */
      for (int v = 0; v < V; v++) sum += expf(zr[v] - mx);
      const double lse = mx + log(sum);
      loss[r0 + r] = (f32)(lse - zr[tg]);
      if (dh || dW) {
        const f32 lsef = (f32)lse;
        for (int v = 0; v < V; v++) zr[v] = scale * expf(zr[v] - lsef);
        zr[tg] -= scale;
      }
    }
    if (dh) {
      /* dh (rows, H) += g W, a block of vocabulary rows at a time (each
       * block is shared by all rows of the chunk while in cache); per row the
       * sum runs over v in order whichever thread takes it. */
#pragma omp parallel if (par((double)rows * V * H))
      for (int v0 = 0; v0 < V; v0 += vb) {
        const int v1 = v0 + vb < V ? v0 + vb : V;
#pragma omp for schedule(static)
        for (int r = 0; r < rows; r++) {
          if (target[r0 + r] < 0) continue;
          f32 *dx = dh + (size_t)(r0 + r) * H;
          const f32 *zr = z + (size_t)r * V;
          int v = v0;
          for (; v + 4 <= v1; v += 4) {
            const f32 *w = Wt + (size_t)v * H;
            axpy4(dx, zr[v], zr[v + 1], zr[v + 2], zr[v + 3], w, w + H, w + 2 * (size_t)H,
                  w + 3 * (size_t)H, H);
          }
          for (; v < v1; v++) axpy(dx, zr[v], Wt + (size_t)v * H, H);
        }
      }
    }
    if (dW) {
      /* dW (V, H) += g^T h over the chunk's rows with a target (an ignored
       * row adds nothing, even if its h is not finite); a thread per
       * vocabulary row */
      int act[CE_ROWS], na = 0;
      for (int r = 0; r < rows; r++)
        if (target[r0 + r] >= 0) act[na++] = r;
#pragma omp parallel for schedule(static) if (par((double)rows * V * H))
      for (int v = 0; v < V; v++) {
        f32 *dw = dW + (size_t)v * H;
        const f32 *zv = z + v;
        int l = 0;
        for (; l + 4 <= na; l += 4)
          axpy4(dw, zv[(size_t)act[l] * V], zv[(size_t)act[l + 1] * V], zv[(size_t)act[l + 2] * V],
                zv[(size_t)act[l + 3] * V], hc + (size_t)act[l] * H, hc + (size_t)act[l + 1] * H,
                hc + (size_t)act[l + 2] * H, hc + (size_t)act[l + 3] * H, H);
        for (; l < na; l++) axpy(dw, zv[(size_t)act[l] * V], hc + (size_t)act[l] * H, H);
      }
    }
  }
  free(z);
  return VL_OK;
}

/* ---- optimizer --------------------------------------------------------------------- */
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

/* torch.optim.AdamW (decoupled decay, bias corrections as torch computes them) */
static int cpu_adamw(vl_ops *o, float *master, float *m, float *v, const vl_t *grad_,
                     vl_t *param_, size_t n, float lr, float b1, float b2, float eps, float wd,
                     float gs, int t) {
  if (t < 1) VL_ERROR(VL_EINVAL, "adamw: step %d (steps count from 1)", t);
  const f32 *grad = grad_;
  f32 *param = param_;
  const double bc1 = 1.0 - pow(b1, t), bc2 = 1.0 - pow(b2, t);
  const f32 step = (f32)(lr / bc1), bc2s = (f32)sqrt(bc2);
#pragma omp parallel for schedule(static) if (par((double)n))
  for (size_t i = 0; i < n; i++) {
    const f32 g = gs * grad[i];
    f32 p = master[i] * (1.0f - lr * wd);
    m[i] = b1 * m[i] + (1.0f - b1) * g;
    v[i] = b2 * v[i] + (1.0f - b2) * g * g;
    p -= step * m[i] / (sqrtf(v[i]) / bc2s + eps);
    master[i] = p;
    param[i] = p;
  }
  return VL_OK;
}

/* AdamW on bf16-valued weights with stochastic rounding (train.optimizer: lean) */
static int cpu_adamw_lean(vl_ops *o, float *m, float *v, const vl_t *grad_, vl_t *param_,
                          size_t n, float lr, float b1, float b2, float eps, float wd, float gs,
                          int t, uint64_t seed, size_t index0) {
  if (t < 1) VL_ERROR(VL_EINVAL, "adamw_lean: step %d (steps count from 1)", t);
  const f32 *grad = grad_;
  f32 *param = param_;
  const double bc1 = 1.0 - pow(b1, t), bc2 = 1.0 - pow(b2, t);
  const f32 step = (f32)(lr / bc1), bc2s = (f32)sqrt(bc2);
  const f32 decay = 1.0f - lr * wd, c1 = 1.0f - b1, c2 = 1.0f - b2;
#pragma omp parallel for schedule(static) if (par((double)n))
  for (size_t i = 0; i < n; i++) {
    const f32 g = gs * grad[i];
    f32 mi = b1 * m[i];
    mi = mi + c1 * g;
    f32 vi = b2 * v[i];
    vi = vi + (c2 * g) * g;
    const f32 den = sqrtf(vi) / bc2s + eps;
    f32 p = param[i] * decay;
    p = p - (step * mi) / den;
    m[i] = mi;
    v[i] = vi;
    param[i] = vl_sr_bf16_float(p, vl_sr_hash((uint64_t)(index0 + i), seed));
  }
  return VL_OK;
}

int vl_ops_cpu_create(vl_ops **out) {
  vl_ops *o = NULL;
  *out = NULL;
  VL_CALL(vl_calloc((void **)&o, 1, sizeof *o, "cpu op table"));
  o->name = "cpu";
  o->elem_size = sizeof(f32);
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
  o->adamw_lean = cpu_adamw_lean;
  *out = o;
  return VL_OK;
}
