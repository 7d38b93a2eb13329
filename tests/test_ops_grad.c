/* test_ops_grad: every forward/backward pair of the CPU backend (ops_cpu.c).
 *
 * Gradients: for L = sum(out * R) with R random (lmhead_ce: L = scale *
 * sum(loss)), the backward op, called on zeroed gradient buffers, is compared
 * with central finite differences of L (fp32 forward, L summed in double) for
 * every element of small tensors and 48 random elements of larger ones.  The
 * error of one tensor is ||fd - an|| / max(||fd||, ||an||) over the checked
 * elements; the line printed per op is the worst tensor.  Thresholds: 1e-3
 * for ops linear in the checked input (only rounding), 1e-2 otherwise (eps^2
 * truncation plus fp32 noise / eps); measured errors are far below both.
 * A second backward must give twice the first (+= convention).
 *
 * Forwards: against direct double-precision formulas written here (matmul,
 * activations at known points, swiglu, LayerNorm moments and eps placement,
 * RMSNorm, q/k norm + RoPE, attention against a naive masked full softmax,
 * embed_bag, row ops, the loss against a naive log-sum-exp).  Also: results
 * independent of the OpenMP thread count, NULL gradients skipped, and bad
 * shapes refused with VL_EINVAL. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "err.h"
#include "ops.h"
#include "test_util.h"

static vl_ops *o;

/* ---- fixed-seed RNG: splitmix64, Box-Muller normals -------------------------- */
static uint64_t rng_s = 20240611;
static uint64_t rng_u64(void) {
  uint64_t z = (rng_s += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}
static double rng_unif(void) { return (double)(rng_u64() >> 11) * 0x1.0p-53; } /* [0,1) */
static float rng_normal(void) {
  const double u1 = 1.0 - rng_unif(), u2 = rng_unif();
  return (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
}
static float *randv(size_t n, float scale) {
  float *v = malloc((n + 1) * sizeof(float));
  for (size_t i = 0; i < n; i++) v[i] = scale * rng_normal();
  return v;
}
static float *zerov(size_t n) { return calloc(n + 1, sizeof(float)); }
static float *dupv(const float *x, size_t n) {
  float *v = malloc((n + 1) * sizeof(float));
  memcpy(v, x, n * sizeof(float));
  return v;
}
static double sigm(double x) { return 1.0 / (1.0 + exp(-x)); }

/* ---- a gradient case ----------------------------------------------------------- */
typedef struct { const char *name; float *x, *g; size_t n; } targ;
typedef struct gcase gcase;
struct gcase {
  const char *name;
  int (*fwd)(gcase *c);   /* the op's forward into out (and saved statistics) */
  int (*bwd)(gcase *c);   /* its backward with dout = R into the args' g */
  targ a[4];
  int na;
  float *out, *R, lscale; /* R NULL: L = lscale * sum(out) */
  size_t n_out;
  float *s1, *s2, *tab;   /* saved statistics; fixed fp32 inputs (cos|sin, weights) */
  int32_t *idx, *seg;
  int M, K, N, act, nh, nkv, hd, nseg, causal, bias;
  float scale;
};

static gcase mk(const char *name, int (*fwd)(gcase *), int (*bwd)(gcase *), size_t n_out) {
  gcase c;
  memset(&c, 0, sizeof c);
  c.name = name;
  c.fwd = fwd;
  c.bwd = bwd;
  c.n_out = n_out;
  c.out = zerov(n_out);
  c.R = randv(n_out, 1.0f);
  return c;
}
static void arg(gcase *c, const char *name, size_t n, float scale) {
  targ *t = &c->a[c->na++];
  t->name = name;
  t->n = n;
  t->x = randv(n, scale);
  t->g = zerov(n);
}
static void drop(gcase *c) {
  for (int k = 0; k < c->na; k++) { free(c->a[k].x); free(c->a[k].g); }
  free(c->out); free(c->R); free(c->s1); free(c->s2); free(c->tab);
}

static double objective(gcase *c) {
  int rc = c->fwd(c);
  CHECK(rc == VL_OK, "%s: forward returned %d", c->name, rc);
  double L = 0;
  for (size_t i = 0; i < c->n_out; i++) L += c->R ? (double)c->out[i] * c->R[i] : c->out[i];
  return c->R ? L : c->lscale * L;
}

static void grad_check(gcase *c, double eps, double tol) {
  for (int k = 0; k < c->na; k++) memset(c->a[k].g, 0, c->a[k].n * sizeof(float));
  objective(c);
  int rc = c->bwd(c);
  CHECK(rc == VL_OK, "%s: backward returned %d", c->name, rc);
  float *first[4];
  for (int k = 0; k < c->na; k++) first[k] = dupv(c->a[k].g, c->a[k].n);
  double worst = 0;
  for (int k = 0; k < c->na; k++) {
    targ *t = &c->a[k];
    const int all = t->n <= 64, cnt = all ? (int)t->n : 48;
    double num = 0, nfd = 0, nan_ = 0;
    for (int s = 0; s < cnt; s++) {
      const size_t j = all ? (size_t)s : (size_t)(rng_u64() % t->n);
      const float keep = t->x[j];
      t->x[j] = keep + (float)eps;
      const double lp = objective(c);
      t->x[j] = keep - (float)eps;
      const double lm = objective(c);
      t->x[j] = keep;
      const double fd = (lp - lm) / (2 * eps), an = first[k][j];
      num += (fd - an) * (fd - an);
      nfd += fd * fd;
      nan_ += an * an;
    }
    const double e = sqrt(num / fmax(fmax(nfd, nan_), 1e-30));
    worst = fmax(worst, e);
    CHECK(e < tol, "%s: d/d%s relative error %.3e (tolerance %.0e)", c->name, t->name, e, tol);
  }
  /* += convention: a second backward adds the same again */
  objective(c);
  rc = c->bwd(c);
  CHECK(rc == VL_OK, "%s: backward returned %d", c->name, rc);
  double dev = 0;
  int exact = 1;
  for (int k = 0; k < c->na; k++) {
    for (size_t j = 0; j < c->a[k].n; j++) {
      first[k][j] *= 2.0f;
      exact &= first[k][j] == c->a[k].g[j];
    }
    dev = fmax(dev, rel_err_f32(c->a[k].g, first[k], c->a[k].n));
    free(first[k]);
  }
  CHECK(dev < 1e-6, "%s: a second backward is not twice the first (%.3e)", c->name, dev);
  char acc[32];
  if (exact) snprintf(acc, sizeof acc, "exactly 2x");
  else snprintf(acc, sizeof acc, "2x within %.1e", dev);
  printf("%-34s finite differences: max rel err %.2e (tol %.0e); twice: %s\n", c->name, worst,
         tol, acc);
}

static void fwd_report(const char *what, double err, double tol) {
  CHECK(err < tol, "%s: error %.3e (tolerance %.0e)", what, err, tol);
  printf("%-34s forward vs direct formula: max err %.2e (tol %.0e)\n", what, err, tol);
}

/* ---- the ops as cases ------------------------------------------------------------ */
static int mm_f(gcase *c) {
  return o->matmul_forward(o, c->out, c->a[0].x, c->a[1].x, c->bias ? c->a[2].x : NULL, c->M,
                           c->K, c->N, 0);
}
static int mm_b(gcase *c) {
  return o->matmul_backward(o, c->a[0].g, c->a[1].g, c->bias ? c->a[2].g : NULL, c->R,
                            c->a[0].x, c->a[1].x, c->M, c->K, c->N);
}
static int act_f(gcase *c) { return o->act_forward(o, c->out, c->a[0].x, c->n_out, c->act); }
static int act_b(gcase *c) {
  return o->act_backward(o, c->a[0].g, c->R, c->a[0].x, c->n_out, c->act);
}
static int swi_f(gcase *c) { return o->swiglu_forward(o, c->out, c->a[0].x, c->M, c->N); }
static int swi_b(gcase *c) { return o->swiglu_backward(o, c->a[0].g, c->R, c->a[0].x, c->M, c->N); }
static int ln_f(gcase *c) {
  return o->layernorm_forward(o, c->out, c->s1, c->s2, c->a[0].x, c->a[1].x, c->a[2].x, c->M,
                              c->N, 1e-5f);
}
static int ln_b(gcase *c) {
  return o->layernorm_backward(o, c->a[0].g, c->a[1].g, c->a[2].g, c->R, c->a[0].x, c->a[1].x,
                               c->s1, c->s2, c->M, c->N);
}
static int rms_f(gcase *c) {
  return o->rmsnorm_forward(o, c->out, c->s1, c->a[0].x, c->a[1].x, c->M, c->N, 1e-6f);
}
static int rms_b(gcase *c) {
  return o->rmsnorm_backward(o, c->a[0].g, c->a[1].g, c->R, c->a[0].x, c->a[1].x, c->s1, c->M,
                             c->N);
}
/* qk_norm_rope: M = T; tab = cos (T,hd) | sin (T,hd); args qkv [, q_w, k_w] */
static int qk_f(gcase *c) {
  const int nrm = c->na > 1;
  return o->qk_norm_rope_forward(o, c->out, c->s1, c->a[0].x, nrm ? c->a[1].x : NULL,
                                 nrm ? c->a[2].x : NULL, c->tab, c->tab + (size_t)c->M * c->hd,
                                 c->M, c->nh, c->nkv, c->hd, 1e-6f);
}
static int qk_b(gcase *c) {
  const int nrm = c->na > 1;
  return o->qk_norm_rope_backward(o, c->a[0].g, nrm ? c->a[1].g : NULL, nrm ? c->a[2].g : NULL,
                                  c->R, c->a[0].x, nrm ? c->a[1].x : NULL, nrm ? c->a[2].x : NULL,
                                  c->s1, c->tab, c->tab + (size_t)c->M * c->hd, c->M, c->nh,
                                  c->nkv, c->hd);
}
static int at_f(gcase *c) {
  return o->attention_forward(o, c->out, c->s1, c->a[0].x, c->seg, c->seg, c->nseg, c->M, c->nh,
                              c->nkv, c->hd, c->scale, c->causal);
}
static int at_b(gcase *c) {
  return o->attention_backward(o, c->a[0].g, c->R, c->out, c->s1, c->a[0].x, c->seg, c->seg,
                               c->nseg, c->M, c->nh, c->nkv, c->hd, c->scale, c->causal);
}
/* embed_bag: M = n, K, N = C; tab = weights (n, K) */
static int eb_f(gcase *c) {
  return o->embed_bag_forward(o, c->out, c->a[0].x, c->idx, c->tab, c->M, c->K, c->N, 0);
}
static int eb_b(gcase *c) {
  return o->embed_bag_backward(o, c->a[0].g, c->R, c->idx, c->tab, c->M, c->K, c->N);
}
static int rg_f(gcase *c) { return o->rows_gather(o, c->out, c->a[0].x, c->idx, c->M, c->N, 0); }
static int rg_b(gcase *c) { return o->rows_scatter(o, c->a[0].g, c->R, c->idx, c->M, c->N, 1); }
static int rs_f(gcase *c) {
  memset(c->out, 0, c->n_out * sizeof(float));
  return o->rows_scatter(o, c->out, c->a[0].x, c->idx, c->M, c->N, 1);
}
static int rs_b(gcase *c) { return o->rows_gather(o, c->a[0].g, c->R, c->idx, c->M, c->N, 1); }
/* lmhead_ce: M = T, K = H, N = V, idx = targets; out = loss */
static int ce_f(gcase *c) {
  return o->lmhead_ce(o, c->out, NULL, NULL, NULL, c->a[0].x, c->a[1].x, c->idx, c->M, c->K,
                      c->N, 0.0f);
}
static int ce_b(gcase *c) {
  return o->lmhead_ce(o, c->s1, c->a[0].g, c->a[1].g, NULL, c->a[0].x, c->a[1].x, c->idx, c->M,
                      c->K, c->N, c->lscale);
}

/* ---- per-op tests ----------------------------------------------------------------- */
static void test_matmul(void) {
  for (int bias = 0; bias < 2; bias++) {
    const int M = 7, K = 6, N = 5;
    gcase c = mk(bias ? "matmul (bias)" : "matmul (no bias)", mm_f, mm_b, (size_t)M * N);
    c.M = M; c.K = K; c.N = N; c.bias = bias;
    arg(&c, "inp", (size_t)M * K, 1); arg(&c, "W", (size_t)N * K, 1);
    if (bias) arg(&c, "bias", N, 1);
    grad_check(&c, 1e-2, 1e-3);
    /* forward, then accumulate = 1 on top of it, against double sums */
    float *acc = dupv(c.R, c.n_out);
    o->matmul_forward(o, c.out, c.a[0].x, c.a[1].x, bias ? c.a[2].x : NULL, M, K, N, 0);
    o->matmul_forward(o, acc, c.a[0].x, c.a[1].x, bias ? c.a[2].x : NULL, M, K, N, 1);
    double e = 0;
    for (int i = 0; i < M; i++)
      for (int j = 0; j < N; j++) {
        double s = bias ? c.a[2].x[j] : 0;
        for (int k = 0; k < K; k++) s += (double)c.a[0].x[i * K + k] * c.a[1].x[j * K + k];
        e = fmax(e, fabs(c.out[i * N + j] - s));
        e = fmax(e, fabs(acc[i * N + j] - (c.R[i * N + j] + s)));
      }
    fwd_report(bias ? "matmul (bias, accumulate)" : "matmul (no bias, accumulate)", e, 1e-5);
    /* NULL gradients are skipped; the others are unchanged by it */
    float *dW = zerov((size_t)N * K), *dx = zerov((size_t)M * K), *db = zerov(N);
    memset(c.a[1].g, 0, (size_t)N * K * sizeof(float));
    memset(c.a[0].g, 0, (size_t)M * K * sizeof(float));
    mm_b(&c);
    o->matmul_backward(o, NULL, dW, NULL, c.R, c.a[0].x, c.a[1].x, M, K, N);
    o->matmul_backward(o, dx, NULL, bias ? db : NULL, c.R, c.a[0].x, c.a[1].x, M, K, N);
    CHECK(!memcmp(dW, c.a[1].g, (size_t)N * K * sizeof(float)), "matmul: dW alone differs");
    CHECK(!memcmp(dx, c.a[0].g, (size_t)M * K * sizeof(float)), "matmul: dinp alone differs");
    free(dW); free(dx); free(db); free(acc);
    drop(&c);
  }
}

static void test_add_act_swiglu(void) {
  {
    float a[5] = {1, -2, 3.5f, 0, 1e-3f}, b[5] = {2, 2, -1, 0, 1}, y[5];
    o->add(o, y, a, b, 5);
    double e = 0;
    for (int i = 0; i < 5; i++) e = fmax(e, fabs(y[i] - ((double)a[i] + b[i])));
    fwd_report("add (no backward: identity)", e, 1e-7);
  }
  static const char *names[] = {"act gelu_tanh", "act gelu_erf", "act quick_gelu", "act silu"};
  for (int a = 0; a < 4; a++) {
    gcase c = mk(names[a], act_f, act_b, 60);
    c.act = a;
    arg(&c, "x", 60, 2.0f);
    grad_check(&c, 1e-2, 1e-2);
    /* values in double at a few points */
    float xs[6] = {-3, -1, -0.25f, 0.5f, 1, 2.5f}, y[6];
    o->act_forward(o, y, xs, 6, a);
    double e = 0;
    for (int i = 0; i < 6; i++) {
      const double x = xs[i];
      const double want = a == 0 ? 0.5 * x * (1 + tanh(sqrt(2 / M_PI) * (x + 0.044715 * x * x * x)))
                        : a == 1 ? 0.5 * x * (1 + erf(x / sqrt(2.0)))
                        : a == 2 ? x * sigm(1.702 * x) : x * sigm(x);
      e = fmax(e, fabs(y[i] - want));
    }
    fwd_report(names[a], e, 1e-6);
    drop(&c);
  }
  float one = 1.0f, y;
  o->act_forward(o, &y, &one, 1, VL_ACT_GELU_ERF);
  CHECK(fabs(y - 0.8413447460685429) < 1e-6, "gelu_erf(1) = %.9f", y);
  o->act_forward(o, &y, &one, 1, VL_ACT_GELU_TANH);
  CHECK(fabs(y - 0.8411919906082768) < 1e-6, "gelu_tanh(1) = %.9f", y);
  o->act_forward(o, &y, &one, 1, VL_ACT_SILU);
  CHECK(fabs(y - 0.7310585786300049) < 1e-6, "silu(1) = %.9f", y);

  const int M = 6, I = 5;
  gcase c = mk("swiglu", swi_f, swi_b, (size_t)M * I);
  c.M = M; c.N = I;
  arg(&c, "gate|up", (size_t)M * 2 * I, 1.5f);
  grad_check(&c, 1e-2, 1e-2);
  swi_f(&c);
  double e = 0;
  for (int i = 0; i < M; i++)
    for (int j = 0; j < I; j++) {
      const double g = c.a[0].x[i * 2 * I + j], u = c.a[0].x[i * 2 * I + I + j];
      e = fmax(e, fabs(c.out[i * I + j] - g * sigm(g) * u));
    }
  fwd_report("swiglu", e, 1e-6);
  drop(&c);
}

static void test_norms(void) {
  const int M = 5, C = 16;
  gcase c = mk("layernorm", ln_f, ln_b, (size_t)M * C);
  c.M = M; c.N = C;
  c.s1 = zerov(M); c.s2 = zerov(M);
  arg(&c, "inp", (size_t)M * C, 2); arg(&c, "w", C, 1); arg(&c, "b", C, 1);
  for (int k = 0; k < C; k++) c.a[0].x[k] += 3.0f; /* a row with an offset mean */
  grad_check(&c, 1e-2, 1e-2);
  /* w = 1, b = 0: each output row has mean 0 and (biased) variance 1 */
  float w1[16], b0[16] = {0}, y[80], mean[5], rstd[5];
  for (int k = 0; k < C; k++) w1[k] = 1;
  o->layernorm_forward(o, y, mean, rstd, c.a[0].x, w1, b0, M, C, 1e-5f);
  double e = 0;
  for (int i = 0; i < M; i++) {
    double m = 0, v = 0;
    for (int k = 0; k < C; k++) m += y[i * C + k];
    m /= C;
    for (int k = 0; k < C; k++) v += (y[i * C + k] - m) * (y[i * C + k] - m);
    e = fmax(e, fmax(fabs(m), fabs(v / C - 1)));
  }
  fwd_report("layernorm (output mean 0, var 1)", e, 1e-4);
  /* eps inside the sqrt, biased variance: rows of variance ~1e-2, eps = 1e-2 */
  float *x = randv((size_t)M * C, 0.1f);
  o->layernorm_forward(o, y, mean, rstd, x, c.a[1].x, c.a[2].x, M, C, 1e-2f);
  e = 0;
  for (int i = 0; i < M; i++) {
    double m = 0, v = 0;
    for (int k = 0; k < C; k++) m += x[i * C + k];
    m /= C;
    for (int k = 0; k < C; k++) v += (x[i * C + k] - m) * (x[i * C + k] - m);
    const double r = 1 / sqrt(v / C + 1e-2);
    e = fmax(e, fabs(mean[i] - m) + fabs(rstd[i] - r) / r);
    for (int k = 0; k < C; k++)
      e = fmax(e, fabs(y[i * C + k] - ((x[i * C + k] - m) * r * c.a[1].x[k] + c.a[2].x[k])));
  }
  fwd_report("layernorm (eps in sqrt)", e, 1e-5);
  drop(&c);

  gcase r = mk("rmsnorm", rms_f, rms_b, (size_t)M * C);
  r.M = M; r.N = C;
  r.s1 = zerov(M);
  arg(&r, "inp", (size_t)M * C, 2); arg(&r, "w", C, 1);
  grad_check(&r, 1e-2, 1e-2);
  o->rmsnorm_forward(o, y, rstd, x, r.a[1].x, M, C, 1e-2f);
  e = 0;
  for (int i = 0; i < M; i++) {
    double s = 0;
    for (int k = 0; k < C; k++) s += (double)x[i * C + k] * x[i * C + k];
    const double rr = 1 / sqrt(s / C + 1e-2);
    e = fmax(e, fabs(rstd[i] - rr) / rr);
    for (int k = 0; k < C; k++) e = fmax(e, fabs(y[i * C + k] - x[i * C + k] * rr * r.a[1].x[k]));
  }
  fwd_report("rmsnorm (w * x * rsqrt(ms + eps))", e, 1e-5);
  free(x);
  drop(&r);
}

/* q/k RMSNorm + RoPE with tables whose two halves differ (so cos[i] and
 * cos[i + hd/2] cannot be confused); against the formula in double. */
static void test_qk_norm_rope(void) {
  for (int norms = 1; norms >= 0; norms--) {
    const int T = 5, nh = 4, nkv = norms ? 2 : 4, hd = 8, W = (nh + 2 * nkv) * hd, half = hd / 2;
    gcase c = mk(norms ? "qk_norm_rope (norms, GQA)" : "qk_norm_rope (rope only, vision)", qk_f,
                 qk_b, (size_t)T * W);
    c.M = T; c.nh = nh; c.nkv = nkv; c.hd = hd;
    c.s1 = zerov((size_t)T * (nh + nkv));
    c.tab = malloc(sizeof(float) * 2 * T * hd);
    for (int i = 0; i < T * hd; i++) {
      const double ang = 6.283185307179586 * rng_unif();
      c.tab[i] = (float)cos(ang);
      c.tab[T * hd + i] = (float)sin(ang);
    }
    arg(&c, "qkv", (size_t)T * W, 1.5f);
    if (norms) { arg(&c, "q_w", hd, 1); arg(&c, "k_w", hd, 1); }
    grad_check(&c, 1e-2, 1e-2);
    qk_f(&c);
    double e = 0;
    for (int t = 0; t < T; t++) {
      const float *cs = c.tab + t * hd, *sn = c.tab + T * hd + t * hd;
      for (int h = 0; h < nh + 2 * nkv; h++) {
        const float *x = c.a[0].x + t * W + h * hd;
        const float *y = c.out + t * W + h * hd;
        if (h >= nh + nkv) { /* v: copied bit for bit */
          e = fmax(e, memcmp(x, y, hd * sizeof(float)) ? 1.0 : 0.0);
          continue;
        }
        double n[8], r = 1, ss = 0;
        for (int k = 0; k < hd; k++) ss += (double)x[k] * x[k];
        if (norms) {
          r = 1 / sqrt(ss / hd + 1e-6);
          e = fmax(e, fabs(c.s1[t * (nh + nkv) + h] - r) / r);
        }
        for (int k = 0; k < hd; k++) n[k] = norms ? x[k] * r * c.a[h < nh ? 1 : 2].x[k] : x[k];
        for (int k = 0; k < hd; k++) {
          const double rot = k < half ? -n[k + half] : n[k - half];
          e = fmax(e, fabs(y[k] - (n[k] * cs[k] + rot * sn[k])));
        }
      }
    }
    fwd_report(c.name, e, 2e-6);
    drop(&c);
  }
}

/* Attention over 3 segments of unequal length, against a naive softmax over
 * all T keys with the segment (and causal) mask, in double. */
static void test_attention(void) {
  for (int cfg = 0; cfg < 4; cfg++) {
    const int causal = cfg % 2 == 0, gqa = cfg < 2;
    const int T = 11, nh = 4, nkv = gqa ? 2 : 4, hd = 8, W = (nh + 2 * nkv) * hd;
    static int32_t seg[4] = {0, 2, 7, 11}; /* lengths 2, 5, 4 */
    static const char *names[] = {"attention (causal, GQA 4/2)", "attention (bidir, GQA 4/2)",
                                  "attention (causal, MHA 4/4)", "attention (bidir, MHA 4/4)"};
    gcase c = mk(names[cfg], at_f, at_b, (size_t)T * nh * hd);
    c.M = T; c.nh = nh; c.nkv = nkv; c.hd = hd; c.causal = causal;
    c.seg = seg; c.nseg = 3; c.scale = 0.4f; /* not 1/sqrt(hd): the argument is used */
    c.s1 = zerov((size_t)nh * T);
    arg(&c, "qkv", (size_t)T * W, 1.0f);
    grad_check(&c, 1e-2, 1e-2);
    at_f(&c);
    double e = 0;
    for (int h = 0; h < nh; h++) {
      const int kvh = h / (nh / nkv);
      for (int i = 0; i < T; i++) {
        double sc[11], mx = -INFINITY, sum = 0;
        int si = 0;
        while (i >= seg[si + 1]) si++;
        for (int j = 0; j < T; j++) {
          int sj = 0;
          while (j >= seg[sj + 1]) sj++;
          sc[j] = -INFINITY;
          if (sj != si || (causal && j > i)) continue;
          double d = 0;
          for (int k = 0; k < hd; k++)
            d += (double)c.a[0].x[i * W + h * hd + k] * c.a[0].x[j * W + (nh + kvh) * hd + k];
          sc[j] = 0.4 * d;
          mx = fmax(mx, sc[j]);
        }
        for (int j = 0; j < T; j++) sum += exp(sc[j] - mx);
        e = fmax(e, fabs(c.s1[h * T + i] - (mx + log(sum))));
        for (int k = 0; k < hd; k++) {
          double y = 0;
          for (int j = 0; j < T; j++)
            y += exp(sc[j] - mx) / sum * c.a[0].x[j * W + (nh + nkv + kvh) * hd + k];
          e = fmax(e, fabs(c.out[i * nh * hd + h * hd + k] - y));
        }
      }
    }
    fwd_report(names[cfg], e, 1e-5);
    drop(&c);
  }
}

static void test_rows(void) {
  /* embed_bag with repeated rows in the bags */
  {
    const int n = 7, K = 4, C = 5, rows = 6;
    gcase c = mk("embed_bag", eb_f, eb_b, (size_t)n * C);
    c.M = n; c.K = K; c.N = C;
    int32_t idx[28];
    c.idx = idx;
    c.tab = malloc(sizeof(float) * n * K);
    for (int i = 0; i < n * K; i++) {
      idx[i] = (int32_t)(rng_u64() % rows);
      c.tab[i] = (float)rng_unif();
    }
    arg(&c, "table", (size_t)rows * C, 1);
    grad_check(&c, 1e-2, 1e-3);
    float *acc = dupv(c.R, c.n_out);
    eb_f(&c);
    o->embed_bag_forward(o, acc, c.a[0].x, idx, c.tab, n, K, C, 1);
    double e = 0;
    for (int i = 0; i < n; i++)
      for (int j = 0; j < C; j++) {
        double s = 0;
        for (int k = 0; k < K; k++)
          s += (double)c.tab[i * K + k] * c.a[0].x[idx[i * K + k] * C + j];
        e = fmax(e, fmax(fabs(c.out[i * C + j] - s), fabs(acc[i * C + j] - (c.R[i * C + j] + s))));
      }
    fwd_report("embed_bag (=, +=)", e, 1e-5);
    free(acc);
    drop(&c);
  }
  int32_t idx[] = {3, 0, 3, 5, 1, 3}; /* repeats: row 3 three times */
  const int n = 6, C = 4, rows = 7;
  {
    gcase c = mk("rows_gather (bwd: scatter +=)", rg_f, rg_b, (size_t)n * C);
    c.M = n; c.N = C; c.idx = idx;
    arg(&c, "src", (size_t)rows * C, 1);
    grad_check(&c, 1e-2, 1e-3);
    drop(&c);
  }
  {
    gcase c = mk("rows_scatter += (bwd: gather +=)", rs_f, rs_b, (size_t)rows * C);
    c.M = n; c.N = C; c.idx = idx;
    arg(&c, "src", (size_t)n * C, 1);
    grad_check(&c, 1e-2, 1e-3);
    /* '=' with repeats keeps the last; rows_zero clears the listed rows only;
     * gather '+=' adds */
    float *dst = dupv(c.R, (size_t)rows * C), *g = dupv(c.R, (size_t)n * C);
    o->rows_scatter(o, dst, c.a[0].x, idx, n, C, 0);
    double e = 0;
    for (int r = 0; r < rows; r++) {
      int last = -1;
      for (int i = 0; i < n; i++) if (idx[i] == r) last = i;
      for (int k = 0; k < C; k++)
        e = fmax(e, fabs(dst[r * C + k] - (last < 0 ? c.R[r * C + k] : c.a[0].x[last * C + k])));
    }
    o->rows_zero(o, dst, idx, n, C);
    for (int r = 0; r < rows; r++) {
      const int listed = r == 0 || r == 1 || r == 3 || r == 5;
      for (int k = 0; k < C; k++) e = fmax(e, fabs(dst[r * C + k] - (listed ? 0 : c.R[r * C + k])));
    }
    o->rows_gather(o, g, c.R, idx, n, C, 1);
    for (int i = 0; i < n; i++)
      for (int k = 0; k < C; k++)
        e = fmax(e, fabs(g[i * C + k] - ((double)c.R[i * C + k] + c.R[idx[i] * C + k])));
    fwd_report("rows_scatter =, rows_zero, gather +=", e, 1e-6);
    free(dst); free(g);
    drop(&c);
  }
}

/* lm head + CE over more rows than one chunk, every fifth target ignored */
static void test_lmhead_ce(void) {
  const int T = 70, H = 8, V = 23;
  gcase c = mk("lmhead_ce (ignored targets)", ce_f, ce_b, T);
  free(c.R);
  c.R = NULL;
  c.lscale = 0.25f;
  c.M = T; c.K = H; c.N = V;
  c.s1 = zerov(T);
  c.idx = malloc(sizeof(int32_t) * T);
  for (int t = 0; t < T; t++) c.idx[t] = t % 5 == 2 ? -100 : (int32_t)(rng_u64() % V);
  arg(&c, "h", (size_t)T * H, 1); arg(&c, "W", (size_t)V * H, 1);
  grad_check(&c, 1e-2, 1e-2);
  float *logits = zerov((size_t)T * V);
  o->lmhead_ce(o, c.out, NULL, NULL, logits, c.a[0].x, c.a[1].x, c.idx, T, H, V, 0.0f);
  double e = 0;
  for (int t = 0; t < T; t++) {
    double z[23], mx = -INFINITY, s = 0;
    for (int v = 0; v < V; v++) {
      z[v] = 0;
      for (int k = 0; k < H; k++) z[v] += (double)c.a[0].x[t * H + k] * c.a[1].x[v * H + k];
      e = fmax(e, fabs(logits[t * V + v] - z[v]));
      mx = fmax(mx, z[v]);
    }
    for (int v = 0; v < V; v++) s += exp(z[v] - mx);
    const double want = c.idx[t] < 0 ? 0 : mx + log(s) - z[c.idx[t]];
    e = fmax(e, fabs(c.out[t] - want));
  }
  fwd_report("lmhead_ce (vs naive logsumexp)", e, 1e-5);
  /* dW alone equals dW of the full call; ignored rows get no dh */
  float *dh = zerov((size_t)T * H), *dW = zerov((size_t)V * H), *dW2 = zerov((size_t)V * H);
  o->lmhead_ce(o, c.s1, dh, dW, NULL, c.a[0].x, c.a[1].x, c.idx, T, H, V, 0.25f);
  o->lmhead_ce(o, c.s1, NULL, dW2, NULL, c.a[0].x, c.a[1].x, c.idx, T, H, V, 0.25f);
  CHECK(!memcmp(dW, dW2, (size_t)V * H * sizeof(float)), "lmhead_ce: dW alone differs");
  for (int t = 2; t < T; t += 5)
    for (int k = 0; k < H; k++) CHECK(dh[t * H + k] == 0, "lmhead_ce: ignored row %d has dh", t);
  free(dh); free(dW); free(dW2); free(logits); free(c.idx);
  drop(&c);
}

/* Every op at sizes above ops_cpu.c's threshold for forking threads (32768
 * multiply-adds), under 1 and 3 OpenMP threads: the same bits.  The 1-thread
 * path is the one the finite-difference checks above validate. */
#ifdef _OPENMP
typedef struct { float *buf; size_t n, cap; } sink;
static float *take(sink *s, size_t n) { /* a zeroed region of the results; never moves */
  if (!s->buf) s->buf = malloc((s->cap = (size_t)1 << 21) * sizeof(float));
  if (s->n + n > s->cap) {
    fprintf(stderr, "test_threads: results need more than %zu floats\n", s->cap);
    exit(1);
  }
  float *p = s->buf + s->n;
  memset(p, 0, n * sizeof(float));
  s->n += n;
  return p;
}

static void run_all(sink *s, float *const *in, const int32_t *ri, const int32_t *tgt) {
  const int M = 300, C = 130, I = 400, K = 33, N = 30, Mm = 40; /* row ops; matmul Mm x K x N */
  const int T = 300, nh = 4, nkv = 2, hd = 16, W = (nh + 2 * nkv) * hd;
  const int Ta = 41, V = 600, H = 64, nb = 4, Cb = 40;
  int32_t seg[] = {0, 9, 30, 41};
  float *x = in[0], *y = in[1], *w = in[2], *q = in[3], *cs = in[4], *bw = in[5];
  float *a, *b, *c;
  a = take(s, (size_t)Mm * N);
  o->matmul_forward(o, a, x, y, w, Mm, K, N, 0);
  o->matmul_backward(o, take(s, (size_t)Mm * K), take(s, (size_t)N * K), take(s, N), y, x, y,
                     Mm, K, N);
  o->act_forward(o, take(s, 40000), x, 40000, VL_ACT_GELU_TANH);
  o->act_backward(o, take(s, 40000), y, x, 40000, VL_ACT_GELU_ERF);
  o->add(o, take(s, 40000), x, y, 40000);
  o->swiglu_forward(o, take(s, (size_t)M * I), x, M, I);
  o->swiglu_backward(o, take(s, (size_t)M * 2 * I), y, x, M, I);
  a = take(s, (size_t)M * C); b = take(s, M); c = take(s, M);
  o->layernorm_forward(o, a, b, c, x, w, w + C, M, C, 1e-5f);
  o->layernorm_backward(o, take(s, (size_t)M * C), take(s, C), take(s, C), y, x, w, b, c, M, C);
  a = take(s, (size_t)M * C); b = take(s, M);
  o->rmsnorm_forward(o, a, b, x, w, M, C, 1e-6f);
  o->rmsnorm_backward(o, take(s, (size_t)M * C), take(s, C), y, x, w, b, M, C);
  a = take(s, (size_t)T * W); b = take(s, (size_t)T * (nh + nkv));
  o->qk_norm_rope_forward(o, a, b, q, w, w + hd, cs, cs + (size_t)T * hd, T, nh, nkv, hd, 1e-6f);
  o->qk_norm_rope_backward(o, take(s, (size_t)T * W), take(s, hd), take(s, hd), y, q, w, w + hd,
                           b, cs, cs + (size_t)T * hd, T, nh, nkv, hd);
  a = take(s, (size_t)Ta * nh * hd); b = take(s, (size_t)nh * Ta);
  o->attention_forward(o, a, b, q, seg, seg, 3, Ta, nh, nkv, hd, 0.25f, 1);
  o->attention_backward(o, take(s, (size_t)Ta * W), y, a, b, q, seg, seg, 3, Ta, nh, nkv, hd,
                        0.25f, 1);
  o->rows_gather(o, take(s, (size_t)M * C), x, ri, M, C, 0);
  o->rows_scatter(o, take(s, (size_t)M * C), y, ri, M, C, 1);
  o->embed_bag_forward(o, take(s, (size_t)M * Cb), x, ri, bw, M, nb, Cb, 0);
  o->embed_bag_backward(o, take(s, (size_t)M * Cb), y, ri, bw, M, nb, Cb);
  /* V H > 16384 floats: dh walks W in several blocks; Ta > 32 rows: two chunks */
  o->lmhead_ce(o, take(s, Ta), take(s, (size_t)Ta * H), take(s, (size_t)V * H), NULL, x, y, tgt,
               Ta, H, V, 0.1f);
}

static void test_threads(void) {
  const size_t n = 240000;
  float *in[6];
  for (int k = 0; k < 6; k++) in[k] = randv(n, 1);
  for (size_t i = 0; i < n; i++) in[5][i] = fabsf(in[5][i]); /* bag weights */
  int32_t ri[1200], tgt[41];
  for (int i = 0; i < 1200; i++) ri[i] = (int32_t)(rng_u64() % 250); /* repeats */
  for (int t = 0; t < 41; t++) tgt[t] = t % 7 == 0 ? -1 : (int32_t)(rng_u64() % 600);
  sink r1 = {0}, r3 = {0};
  const int saved = omp_get_max_threads();
  omp_set_num_threads(1);
  run_all(&r1, in, ri, tgt);
  omp_set_num_threads(3);
  run_all(&r3, in, ri, tgt);
  omp_set_num_threads(saved);
  const int same = r1.n == r3.n && !memcmp(r1.buf, r3.buf, r1.n * sizeof(float));
  CHECK(same, "results depend on the thread count");
  printf("%-34s 1 vs 3 OpenMP threads: %s (%zu values)\n", "every op, above the fork threshold",
         same ? "bitwise equal" : "DIFFER", r1.n);
  free(r1.buf); free(r3.buf);
  for (int k = 0; k < 6; k++) free(in[k]);
}
#else
static void test_threads(void) {
  printf("thread-count invariance: not checked (built without OpenMP)\n");
}
#endif

static void test_errors(void) {
  float buf[4096] = {0};
  int32_t seg_bad[] = {0, 5, 20}, seg_ok[] = {0, 8}, tgt[2] = {1, 9};
  vl_err_set_quiet(1);
  int rc = o->attention_forward(o, buf, buf, buf, seg_ok, seg_ok, 1, 8, 3, 2, 4, 1, 0);
  CHECK(rc == VL_EINVAL && strstr(vl_err_last(), "nkv"), "attention nh=3 nkv=2: rc %d '%s'", rc,
        vl_err_last());
  rc = o->attention_backward(o, buf, buf, buf, buf, buf, seg_bad, seg_bad, 2, 8, 2, 2, 4, 1, 0);
  CHECK(rc == VL_EINVAL && strstr(vl_err_last(), "segment 1"), "segment past T: rc %d '%s'", rc,
        vl_err_last());
  rc = o->qk_norm_rope_forward(o, buf, buf, buf, NULL, NULL, buf, buf, 2, 1, 1, 7, 1e-6f);
  CHECK(rc == VL_EINVAL, "odd head_dim accepted: rc %d", rc);
  rc = o->qk_norm_rope_forward(o, buf, buf, buf, buf, NULL, buf, buf, 2, 1, 1, 8, 1e-6f);
  CHECK(rc == VL_EINVAL, "q_w without k_w accepted: rc %d", rc);
  rc = o->lmhead_ce(o, buf, NULL, NULL, NULL, buf, buf, tgt, 2, 4, 9, 0.0f);
  CHECK(rc == VL_EINVAL && strstr(vl_err_last(), "target 9"), "target = V: rc %d '%s'", rc,
        vl_err_last());
  vl_err_set_quiet(0);
  vl_err_clear();
  printf("%-34s refused with VL_EINVAL\n", "bad shapes / targets");
}

int main(void) {
  if (vl_ops_cpu_create(&o) != VL_OK || o->elem_size != sizeof(float)) {
    fprintf(stderr, "cannot create the CPU backend\n");
    return 1;
  }
  test_matmul();
  test_add_act_swiglu();
  test_norms();
  test_qk_norm_rope();
  test_attention();
  test_rows();
  test_lmhead_ce();
  test_threads();
  test_errors();
  o->destroy(o); /* vl_ops_destroy(o), without linking ops_backend.c */
  TEST_END();
}
