/* test_ops_grad: every forward/backward pair of the CPU backend against
 * central finite differences of L = sum(out * R) (R random, sums in double),
 * the accumulate (+=) convention (a second backward doubles every gradient),
 * and forward outputs against direct formulas (GELU values, LayerNorm
 * moments, attention against a naive masked softmax, the loss against a
 * naive log-sum-exp). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "err.h"
#include "ops.h"
#include "test_util.h"
#include "weights.h"

static vl_ops *o;
static uint64_t rng = 12345;

static float *randv(size_t n, float scale) {
  float *v = malloc(n * sizeof(float) + 4);
  for (size_t i = 0; i < n; i++) v[i] = scale * vl_rng_normal(&rng);
  return v;
}
static float *zerov(size_t n) { return calloc(n + 1, sizeof(float)); }
static double dot(const float *a, const float *b, size_t n) {
  double s = 0;
  for (size_t i = 0; i < n; i++) s += (double)a[i] * b[i];
  return s;
}

typedef struct { const char *name; float *x, *g; size_t n; } targ;
typedef struct op_case op_case;
struct op_case {
  const char *name;
  double (*loss)(op_case *c);   /* forward; returns sum(out * R) */
  void (*grad)(op_case *c);     /* backward into the args' g */
  targ a[4];
  int na;
  float *out, *R, *aux1, *aux2;
  size_t n_out;
  int M, K, N, flag;
  int32_t *idx, *seg;
  float *w;
};

static void fd_check(op_case *c, double eps, double tol) {
  double worst = 0;
  for (int k = 0; k < c->na; k++) memset(c->a[k].g, 0, c->a[k].n * sizeof(float));
  c->loss(c);
  c->grad(c);
  for (int k = 0; k < c->na; k++) {
    targ *t = &c->a[k];
    double num = 0, den = 0;
    int samples = t->n < 40 ? (int)t->n : 40;
    for (int s = 0; s < samples; s++) {
      size_t j = t->n <= 40 ? (size_t)s : (size_t)(vl_rng_next(&rng) % t->n);
      float keep = t->x[j];
      t->x[j] = keep + (float)eps;
      double lp = c->loss(c);
      t->x[j] = keep - (float)eps;
      double lm = c->loss(c);
      t->x[j] = keep;
      double fd = (lp - lm) / (2 * eps), an = t->g[j];
      num += (fd - an) * (fd - an);
      den += an * an;
    }
    double e = den > 0 ? sqrt(num / den) : sqrt(num);
    if (e > worst) worst = e;
    CHECK(e < tol, "%s: d/d%s relative error %.3e (tolerance %.0e)", c->name, t->name, e, tol);
  }
  /* accumulation: a second backward adds the same again */
  float *first[4];
  for (int k = 0; k < c->na; k++) {
    first[k] = malloc(c->a[k].n * sizeof(float));
    memcpy(first[k], c->a[k].g, c->a[k].n * sizeof(float));
  }
  c->loss(c);
  c->grad(c);
  double acc = 0;
  for (int k = 0; k < c->na; k++) {
    for (size_t j = 0; j < c->a[k].n; j++) first[k][j] *= 2.0f;
    double e = rel_err_f32(c->a[k].g, first[k], c->a[k].n);
    if (e > acc) acc = e;
    free(first[k]);
  }
  CHECK(acc < 1e-6, "%s: backward does not accumulate (%.3e)", c->name, acc);
  printf("%-28s finite-difference error %.2e, accumulate %.1e\n", c->name, worst, acc);
}

/* ---- matmul ---- */
static double mm_loss(op_case *c) {
  o->matmul_forward(o, c->out, c->a[0].x, c->a[1].x, c->na > 2 ? c->a[2].x : NULL, c->M, c->K, c->N, 0);
  return dot(c->out, c->R, c->n_out);
}
static void mm_grad(op_case *c) {
  o->matmul_backward(o, c->a[0].g, c->a[1].g, c->na > 2 ? c->a[2].g : NULL, c->R, c->a[0].x,
                     c->a[1].x, c->M, c->K, c->N);
}
/* ---- act ---- */
static double act_loss(op_case *c) {
  o->act_forward(o, c->out, c->a[0].x, c->n_out, (vl_act_kind)c->flag);
  return dot(c->out, c->R, c->n_out);
}
static void act_grad(op_case *c) {
  o->act_backward(o, c->a[0].g, c->R, c->a[0].x, c->n_out, (vl_act_kind)c->flag);
}
static double swi_loss(op_case *c) {
  o->swiglu_forward(o, c->out, c->a[0].x, c->M, c->N);
  return dot(c->out, c->R, c->n_out);
}
static void swi_grad(op_case *c) { o->swiglu_backward(o, c->a[0].g, c->R, c->a[0].x, c->M, c->N); }
/* ---- norms ---- */
static double ln_loss(op_case *c) {
  o->layernorm_forward(o, c->out, c->aux1, c->aux2, c->a[0].x, c->a[1].x, c->a[2].x, c->M, c->N, 1e-5f);
  return dot(c->out, c->R, c->n_out);
}
static void ln_grad(op_case *c) {
  o->layernorm_backward(o, c->a[0].g, c->a[1].g, c->a[2].g, c->R, c->a[0].x, c->a[1].x, c->aux1,
                        c->aux2, c->M, c->N);
}
static double rms_loss(op_case *c) {
  o->rmsnorm_forward(o, c->out, c->aux1, c->a[0].x, c->a[1].x, c->M, c->N, 1e-6f);
  return dot(c->out, c->R, c->n_out);
}
static void rms_grad(op_case *c) {
  o->rmsnorm_backward(o, c->a[0].g, c->a[1].g, c->R, c->a[0].x, c->a[1].x, c->aux1, c->M, c->N);
}
/* ---- qk norm + rope: M=T, K=nh, N=nkv, flag=hd; w = cos|sin ---- */
static double qk_loss(op_case *c) {
  const int T = c->M, hd = c->flag;
  o->qk_norm_rope_forward(o, c->out, c->aux1, c->a[0].x, c->na > 1 ? c->a[1].x : NULL,
                          c->na > 1 ? c->a[2].x : NULL, c->w, c->w + (size_t)T * hd, T, c->K,
                          c->N, hd, 1e-6f);
  return dot(c->out, c->R, c->n_out);
}
static void qk_grad(op_case *c) {
  const int T = c->M, hd = c->flag;
  o->qk_norm_rope_backward(o, c->a[0].g, c->na > 1 ? c->a[1].g : NULL, c->na > 1 ? c->a[2].g : NULL,
                           c->R, c->a[0].x, c->na > 1 ? c->a[1].x : NULL,
                           c->na > 1 ? c->a[2].x : NULL, c->aux1, c->w, c->w + (size_t)T * hd,
                           T, c->K, c->N, hd);
}
/* ---- attention: M=T, K=nh, N=nkv, flag = hd*2 + causal, seg (idx = count) ---- */
static double at_loss(op_case *c) {
  const int hd = c->flag / 2, causal = c->flag % 2, nseg = c->idx[0];
  o->attention_forward(o, c->out, c->aux1, c->a[0].x, c->seg, c->seg, nseg, c->M, c->K, c->N, hd,
                       1.0f / sqrtf((float)hd), causal);
  return dot(c->out, c->R, c->n_out);
}
static void at_grad(op_case *c) {
  const int hd = c->flag / 2, causal = c->flag % 2, nseg = c->idx[0];
  o->attention_backward(o, c->a[0].g, c->R, c->out, c->aux1, c->a[0].x, c->seg, c->seg, nseg,
                        c->M, c->K, c->N, hd, 1.0f / sqrtf((float)hd), causal);
}
/* ---- embed bag: M=n, K=K, N=C ---- */
static double eb_loss(op_case *c) {
  o->embed_bag_forward(o, c->out, c->a[0].x, c->idx, c->w, c->M, c->K, c->N, 0);
  return dot(c->out, c->R, c->n_out);
}
static void eb_grad(op_case *c) { o->embed_bag_backward(o, c->a[0].g, c->R, c->idx, c->w, c->M, c->K, c->N); }
/* ---- rows: gather from table a[0] (rows K) into out (M rows); scatter into out ---- */
static double rg_loss(op_case *c) {
  o->rows_gather(o, c->out, c->a[0].x, c->idx, c->M, c->N, 0);
  return dot(c->out, c->R, c->n_out);
}
static void rg_grad(op_case *c) { o->rows_scatter(o, c->a[0].g, c->R, c->idx, c->M, c->N, 1); }
static double rs_loss(op_case *c) {
  memset(c->out, 0, c->n_out * sizeof(float));
  o->rows_scatter(o, c->out, c->a[0].x, c->idx, c->M, c->N, 1);
  return dot(c->out, c->R, c->n_out);
}
static void rs_grad(op_case *c) { o->rows_gather(o, c->a[0].g, c->R, c->idx, c->M, c->N, 1); }
/* ---- lm head + CE: M=T, K=H, N=V; idx = targets; loss = scale*sum ---- */
static double ce_loss(op_case *c) {
  o->lmhead_ce(o, c->out, NULL, NULL, NULL, c->a[0].x, c->a[1].x, c->idx, c->M, c->K, c->N, 0.0f);
  double s = 0;
  for (int t = 0; t < c->M; t++) s += c->out[t];
  return 0.25 * s;
}
static void ce_grad(op_case *c) {
  o->lmhead_ce(o, c->out, c->a[0].g, c->a[1].g, NULL, c->a[0].x, c->a[1].x, c->idx, c->M, c->K,
               c->N, 0.25f);
}

static op_case make(const char *name, double (*L)(op_case *), void (*G)(op_case *), size_t n_out) {
  op_case c;
  memset(&c, 0, sizeof c);
  c.name = name;
  c.loss = L;
  c.grad = G;
  c.n_out = n_out;
  c.out = zerov(n_out);
  c.R = randv(n_out, 1.0f);
  return c;
}
static void arg(op_case *c, const char *name, size_t n, float scale) {
  c->a[c->na].name = name;
  c->a[c->na].x = randv(n, scale);
  c->a[c->na].g = zerov(n);
  c->a[c->na].n = n;
  c->na++;
}

int main(void) {
  if (vl_ops_cpu_create(&o)) return 1;
  /* matmul */
  for (int with_bias = 0; with_bias < 2; with_bias++) {
    op_case c = make(with_bias ? "matmul (bias)" : "matmul", mm_loss, mm_grad, 7 * 5);
    c.M = 7; c.K = 6; c.N = 5;
    arg(&c, "inp", 42, 1); arg(&c, "W", 30, 1);
    if (with_bias) arg(&c, "bias", 5, 1);
    fd_check(&c, 1e-2, 2e-3);
  }
  /* activations, with known values */
  const char *act_names[] = {"act gelu_tanh", "act gelu_erf", "act quick_gelu", "act silu"};
  for (int a = 0; a < 4; a++) {
    op_case c = make(act_names[a], act_loss, act_grad, 50);
    c.flag = a;
    arg(&c, "x", 50, 1.5f);
    fd_check(&c, 1e-2, 3e-3);
  }
  {
    float one = 1.0f, y;
    o->act_forward(o, &y, &one, 1, VL_ACT_GELU_ERF);
    CHECK(fabs(y - 0.8413447460685429) < 1e-6, "gelu_erf(1) = %.9f", y);
    o->act_forward(o, &y, &one, 1, VL_ACT_GELU_TANH);
    CHECK(fabs(y - 0.8411919906082768) < 1e-6, "gelu_tanh(1) = %.9f", y);
    o->act_forward(o, &y, &one, 1, VL_ACT_SILU);
    CHECK(fabs(y - 0.7310585786300049) < 1e-6, "silu(1) = %.9f", y);
  }
  {
    op_case c = make("swiglu", swi_loss, swi_grad, 6 * 5);
    c.M = 6; c.N = 5;
    arg(&c, "gate|up", 60, 1.2f);
    fd_check(&c, 1e-2, 3e-3);
  }
  /* layernorm: output moments with w = 1, b = 0 */
  {
    op_case c = make("layernorm", ln_loss, ln_grad, 5 * 16);
    c.M = 5; c.N = 16;
    c.aux1 = zerov(5); c.aux2 = zerov(5);
    arg(&c, "inp", 80, 2); arg(&c, "w", 16, 1); arg(&c, "b", 16, 1);
    fd_check(&c, 1e-2, 5e-3);
    float w1[16], b0[16] = {0}, y[80];
    for (int k = 0; k < 16; k++) w1[k] = 1;
    o->layernorm_forward(o, y, c.aux1, c.aux2, c.a[0].x, w1, b0, 5, 16, 1e-5f);
    for (int i = 0; i < 5; i++) {
      double m = 0, v = 0;
      for (int k = 0; k < 16; k++) m += y[i * 16 + k];
      m /= 16;
      for (int k = 0; k < 16; k++) v += (y[i * 16 + k] - m) * (y[i * 16 + k] - m);
      CHECK(fabs(m) < 1e-5 && fabs(v / 16 - 1) < 1e-3, "layernorm row %d: mean %g var %g", i, m, v / 16);
    }
  }
  {
    op_case c = make("rmsnorm", rms_loss, rms_grad, 5 * 16);
    c.M = 5; c.N = 16;
    c.aux1 = zerov(5);
    arg(&c, "inp", 80, 2); arg(&c, "w", 16, 1);
    fd_check(&c, 1e-2, 5e-3);
  }
  /* q/k norm + rope (LLM: norms, GQA) and rope only (vision) */
  for (int norms = 1; norms >= 0; norms--) {
    const int T = 5, nh = 4, nkv = norms ? 2 : 4, hd = 8, W = (nh + 2 * nkv) * hd;
    op_case c = make(norms ? "qk_norm_rope (norms)" : "qk_norm_rope (rope only)", qk_loss, qk_grad,
                     (size_t)T * W);
    c.M = T; c.K = nh; c.N = nkv; c.flag = hd;
    c.aux1 = zerov((size_t)T * (nh + nkv));
    c.w = malloc(sizeof(float) * 2 * T * hd);
    for (int t = 0; t < T; t++)
      for (int j = 0; j < hd / 2; j++) {
        float ang = (float)(t + 1) * powf(100.0f, -(float)j / (hd / 2));
        c.w[t * hd + j] = c.w[t * hd + j + hd / 2] = cosf(ang);
        c.w[T * hd + t * hd + j] = c.w[T * hd + t * hd + j + hd / 2] = sinf(ang);
      }
    arg(&c, "qkv", (size_t)T * W, 1.5f);
    if (norms) { arg(&c, "q_w", hd, 1); arg(&c, "k_w", hd, 1); }
    fd_check(&c, 1e-2, 5e-3);
    if (!norms) { /* direct formula: rotation of the first q head of row 2 */
      const float *x = c.a[0].x + 2 * W, *cs = c.w + 2 * hd, *sn = c.w + T * hd + 2 * hd;
      double e = 0;
      for (int k = 0; k < hd / 2; k++) {
        e += fabs(c.out[2 * W + k] - (x[k] * cs[k] - x[k + hd / 2] * sn[k]));
        e += fabs(c.out[2 * W + k + hd / 2] - (x[k + hd / 2] * cs[k] + x[k] * sn[k]));
      }
      CHECK(e < 1e-5, "rope formula error %g", e);
    }
  }
  /* attention: causal GQA over 3 unequal segments; bidirectional MHA over 2 */
  for (int causal = 1; causal >= 0; causal--) {
    const int T = causal ? 11 : 9, nh = 4, nkv = causal ? 2 : 4, hd = 8;
    const int W = (nh + 2 * nkv) * hd;
    int32_t seg_c[] = {0, 3, 9, 11}, seg_b[] = {0, 4, 9};
    op_case c = make(causal ? "attention (causal, GQA)" : "attention (bidirectional)", at_loss,
                     at_grad, (size_t)T * nh * hd);
    c.M = T; c.K = nh; c.N = nkv; c.flag = hd * 2 + causal;
    c.seg = causal ? seg_c : seg_b;
    c.idx = malloc(sizeof(int32_t));
    c.idx[0] = causal ? 3 : 2;
    c.aux1 = zerov((size_t)nh * T);
    arg(&c, "qkv", (size_t)T * W, 1.0f);
    fd_check(&c, 1e-2, 5e-3);
    /* naive masked softmax in double */
    double e = 0, n = 0;
    for (int s = 0; s < c.idx[0]; s++)
      for (int h = 0; h < nh; h++)
        for (int i = c.seg[s]; i < c.seg[s + 1]; i++) {
          const float *q = c.a[0].x + i * W + h * hd;
          double sc[16], mx = -1e30, sum = 0;
          int jend = causal ? i + 1 : c.seg[s + 1];
          for (int j = c.seg[s]; j < jend; j++) {
            const float *k = c.a[0].x + j * W + (nh + h / (nh / nkv)) * hd;
            double d = 0;
            for (int q2 = 0; q2 < hd; q2++) d += (double)q[q2] * k[q2];
            sc[j - c.seg[s]] = d / sqrt(hd);
            if (sc[j - c.seg[s]] > mx) mx = sc[j - c.seg[s]];
          }
          for (int j = c.seg[s]; j < jend; j++) sum += exp(sc[j - c.seg[s]] - mx);
          for (int d = 0; d < hd; d++) {
            double y = 0;
            for (int j = c.seg[s]; j < jend; j++)
              y += exp(sc[j - c.seg[s]] - mx) / sum *
                   c.a[0].x[j * W + (nh + nkv + h / (nh / nkv)) * hd + d];
            double got = c.out[i * nh * hd + h * hd + d];
            e += (got - y) * (got - y);
            n += y * y;
          }
        }
    at_loss(&c);
    CHECK(sqrt(e / n) < 1e-5, "attention vs naive softmax: %.3e", sqrt(e / n));
  }
  /* embed bag (bilinear weights) */
  {
    op_case c = make("embed_bag", eb_loss, eb_grad, 6 * 5);
    c.M = 6; c.K = 4; c.N = 5;
    c.idx = malloc(sizeof(int32_t) * 24);
    c.w = malloc(sizeof(float) * 24);
    for (int i = 0; i < 24; i++) { c.idx[i] = (int32_t)(vl_rng_next(&rng) % 9); c.w[i] = vl_rng_uniform(&rng); }
    arg(&c, "table", 9 * 5, 1);
    fd_check(&c, 1e-2, 2e-3);
  }
  /* rows: gather (its backward scatters with repeats) and scatter (+=, repeats) */
  {
    int32_t idx[] = {3, 0, 3, 5, 1, 3};
    op_case c = make("rows_gather / scatter", rg_loss, rg_grad, 6 * 4);
    c.M = 6; c.N = 4; c.idx = idx;
    arg(&c, "table", 7 * 4, 1);
    fd_check(&c, 1e-2, 2e-3);
    op_case d = make("rows_scatter (+=, repeats)", rs_loss, rs_grad, 7 * 4);
    d.M = 6; d.N = 4; d.idx = idx;
    arg(&d, "src", 6 * 4, 1);
    fd_check(&d, 1e-2, 2e-3);
  }
  /* lm head + cross-entropy with ignored rows, over more rows than one chunk */
  {
    const int T = 70, H = 8, V = 23;
    op_case c = make("lmhead_ce", ce_loss, ce_grad, T);
    c.M = T; c.K = H; c.N = V;
    c.idx = malloc(sizeof(int32_t) * T);
    for (int t = 0; t < T; t++) c.idx[t] = t % 5 == 0 ? -100 : (int32_t)(vl_rng_next(&rng) % V);
    arg(&c, "h", (size_t)T * H, 1); arg(&c, "W", (size_t)V * H, 1);
    fd_check(&c, 1e-2, 3e-3);
    float *logits = zerov((size_t)T * V);
    o->lmhead_ce(o, c.out, NULL, NULL, logits, c.a[0].x, c.a[1].x, c.idx, T, H, V, 0.0f);
    double e = 0;
    for (int t = 0; t < T; t++) {
      double mx = -1e30, s = 0;
      for (int v = 0; v < V; v++) {
        double z = dot(c.a[0].x + t * H, c.a[1].x + v * H, H);
        CHECK(fabs(z - logits[t * V + v]) < 1e-4, "logit %d,%d", t, v);
        if (z > mx) mx = z;
      }
      for (int v = 0; v < V; v++) s += exp(dot(c.a[0].x + t * H, c.a[1].x + v * H, H) - mx);
      double want = c.idx[t] < 0 ? 0 : mx + log(s) - dot(c.a[0].x + t * H, c.a[1].x + c.idx[t] * H, H);
      e = fmax(e, fabs(want - c.out[t]));
    }
    CHECK(e < 1e-4, "loss vs naive log-sum-exp: %.3e", e);
  }
  vl_ops_destroy(o);
  TEST_END();
}
