/* test_ops_cuda: every op of the CUDA backend against the fp32 CPU backend on
 * the same bf16-rounded random inputs (GPU outputs poisoned with NaN first,
 * gradients pre-filled with the same random values to check +=), relative
 * error ||gpu - cpu|| / ||cpu|| < 1e-2 for bf16 tensors and < 2e-3 for the
 * fp32 statistics; the memory ops (bf16 round-to-nearest-even conversion
 * bit for bit), the optimizer ops, NULL gradients, zero sizes, rows outside
 * every attention segment, argument errors; plus the whole tiny model's
 * loss and gradients.  Skips (77) only when the build has no CUDA backend or
 * no GPU is visible; any other failure to create the backend fails. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "parity_fixture.h"

static vl_ops *cpu, *gpu;
static uint64_t rng = 777;

typedef struct {
  size_t n;
  int kind;  /* 0 working (bf16 on GPU), 1 fp32, 2 int32 */
  float *h;
  void *c, *g;
} buf;

static float round_bf16(float f) { return vl_f32_from_bf16(vl_bf16_from_f32(f)); }

static buf mk(size_t n, float scale, int kind) {
  buf b = {n, kind, malloc((n + 1) * sizeof(float)), NULL, NULL};
  for (size_t i = 0; i < n; i++) b.h[i] = kind == 0 ? round_bf16(scale * vl_rng_normal(&rng)) : scale * vl_rng_normal(&rng);
  cpu->alloc(cpu, &b.c, (n + 1) * 4, "test");
  gpu->alloc(gpu, &b.g, (n + 1) * 4, "test");
  if (kind == 0) { cpu->put(cpu, b.c, b.h, n); gpu->put(gpu, b.g, b.h, n); }
  else { cpu->put_raw(cpu, b.c, b.h, n * 4); gpu->put_raw(gpu, b.g, b.h, n * 4); }
  return b;
}
static buf mk_idx(size_t n, const int32_t *v) {
  buf b = {n, 2, malloc((n + 1) * sizeof(float)), NULL, NULL};
  memcpy(b.h, v, n * 4);
  cpu->alloc(cpu, &b.c, (n + 1) * 4, "idx");
  gpu->alloc(gpu, &b.g, (n + 1) * 4, "idx");
  cpu->put_raw(cpu, b.c, v, n * 4);
  gpu->put_raw(gpu, b.g, v, n * 4);
  return b;
}
static void poison(buf *b) {
  float *nan = malloc(b->n * sizeof(float));
  for (size_t i = 0; i < b->n; i++) nan[i] = NAN;
  if (b->kind == 0) gpu->put(gpu, b->g, nan, b->n); else gpu->put_raw(gpu, b->g, nan, b->n * 4);
  free(nan);
}
static void drop(buf *b) {
  cpu->free(cpu, b->c); gpu->free(gpu, b->g); free(b->h);
}
static double cmp(const char *op, const char *what, buf *b, double tol) {
  float *x = malloc(b->n * 4), *y = malloc(b->n * 4);
  if (b->kind == 0) { cpu->get(cpu, x, b->c, b->n); gpu->get(gpu, y, b->g, b->n); }
  else { cpu->get_raw(cpu, x, b->c, b->n * 4); gpu->get_raw(gpu, y, b->g, b->n * 4); }
  double e = rel_err_f32(y, x, b->n);
  int nan = 0;
  for (size_t i = 0; i < b->n; i++) nan += !isfinite(y[i]);
  CHECK(nan == 0 && e < tol, "%s: %s relative error %.3e (tolerance %.0e), %d non-finite", op, what, e, tol, nan);
  free(x); free(y);
  return nan ? INFINITY : e;
}
static double t_start;
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + 1e-9 * t.tv_nsec; }
static void tic(void) { gpu->sync(gpu); t_start = now(); }
static double toc(void) { gpu->sync(gpu); return (now() - t_start) * 1e3; }
static void report(const char *op, const char *shape, double err, double ms) {
  printf("%-26s %-28s max rel err %.2e   gpu %8.3f ms\n", op, shape, err, ms);
}
#define BOTH(call_c, call_g) do { int rc_ = (call_c); CHECK(rc_ == VL_OK, "cpu: %s", vl_err_last()); tic(); rc_ = (call_g); double ms_ = toc(); CHECK(rc_ == VL_OK, "gpu: %s", vl_err_last()); last_ms = ms_; } while (0)
static double last_ms;
static double mx(double a, double b) { return a > b ? a : b; }

static void test_matmul(int M, int K, int N) {
  char shape[64]; snprintf(shape, sizeof shape, "%dx%dx%d", M, K, N);
  buf x = mk((size_t)M * K, 1, 0), w = mk((size_t)N * K, 0.1f, 0), b = mk(N, 1, 0), y = mk((size_t)M * N, 1, 0);
  poison(&y);
  BOTH(cpu->matmul_forward(cpu, y.c, x.c, w.c, b.c, M, K, N, 0), gpu->matmul_forward(gpu, y.g, x.g, w.g, b.g, M, K, N, 0));
  double e = cmp("matmul_forward", "out", &y, 1e-2);
  report("matmul_forward (bias)", shape, e, last_ms);
  BOTH(cpu->matmul_forward(cpu, y.c, x.c, w.c, b.c, M, K, N, 1), gpu->matmul_forward(gpu, y.g, x.g, w.g, b.g, M, K, N, 1));
  e = cmp("matmul_forward", "out (accumulate)", &y, 1e-2);
  report("matmul_forward (+=)", shape, e, last_ms);
  buf dy = mk((size_t)M * N, 1, 0), dx = mk((size_t)M * K, 1, 0), dw = mk((size_t)N * K, 1, 0), db = mk(N, 1, 0);
  BOTH(cpu->matmul_backward(cpu, dx.c, dw.c, db.c, dy.c, x.c, w.c, M, K, N), gpu->matmul_backward(gpu, dx.g, dw.g, db.g, dy.g, x.g, w.g, M, K, N));
  e = mx(mx(cmp("matmul_backward", "dinp", &dx, 1e-2), cmp("matmul_backward", "dW", &dw, 1e-2)), cmp("matmul_backward", "dbias", &db, 1e-2));
  report("matmul_backward", shape, e, last_ms);
  if ((size_t)M * K * N <= 1000000) {
    poison(&y);
    BOTH(cpu->matmul_forward(cpu, y.c, x.c, w.c, NULL, M, K, N, 0), gpu->matmul_forward(gpu, y.g, x.g, w.g, NULL, M, K, N, 0));
    e = cmp("matmul_forward", "out (no bias)", &y, 1e-2);
    /* NULL gradients are skipped: dinp alone, then dW and dbias alone */
    BOTH(cpu->matmul_backward(cpu, dx.c, NULL, NULL, dy.c, x.c, w.c, M, K, N), gpu->matmul_backward(gpu, dx.g, NULL, NULL, dy.g, x.g, w.g, M, K, N));
    e = mx(e, cmp("matmul_backward", "dinp (dW, dbias NULL)", &dx, 1e-2));
    BOTH(cpu->matmul_backward(cpu, NULL, dw.c, db.c, dy.c, x.c, w.c, M, K, N), gpu->matmul_backward(gpu, NULL, dw.g, db.g, dy.g, x.g, w.g, M, K, N));
    e = mx(e, mx(cmp("matmul_backward", "dW (dinp NULL)", &dw, 1e-2), cmp("matmul_backward", "dbias (dinp NULL)", &db, 1e-2)));
    report("matmul (no bias, NULL grads)", shape, e, last_ms);
  }
  drop(&x); drop(&w); drop(&b); drop(&y); drop(&dy); drop(&dx); drop(&dw); drop(&db);
}

static void test_pointwise(void) {
  const size_t n = 3001;
  for (int a = 0; a < 4; a++) {
    buf x = mk(n, 2, 0), y = mk(n, 1, 0), dy = mk(n, 1, 0), dx = mk(n, 1, 0);
    poison(&y);
    BOTH(cpu->act_forward(cpu, y.c, x.c, n, a), gpu->act_forward(gpu, y.g, x.g, n, a));
    double e = cmp("act_forward", vl_act_name(a), &y, 1e-2);
    BOTH(cpu->act_backward(cpu, dx.c, dy.c, x.c, n, a), gpu->act_backward(gpu, dx.g, dy.g, x.g, n, a));
    e = mx(e, cmp("act_backward", vl_act_name(a), &dx, 1e-2));
    report("act", vl_act_name(a), e, last_ms);
    drop(&x); drop(&y); drop(&dy); drop(&dx);
  }
  const int M = 37, I = 96;
  buf gu = mk((size_t)M * 2 * I, 1.5f, 0), y = mk((size_t)M * I, 1, 0), dy = mk((size_t)M * I, 1, 0), dgu = mk((size_t)M * 2 * I, 1, 0);
  poison(&y);
  BOTH(cpu->swiglu_forward(cpu, y.c, gu.c, M, I), gpu->swiglu_forward(gpu, y.g, gu.g, M, I));
  double e = cmp("swiglu_forward", "out", &y, 1e-2);
  BOTH(cpu->swiglu_backward(cpu, dgu.c, dy.c, gu.c, M, I), gpu->swiglu_backward(gpu, dgu.g, dy.g, gu.g, M, I));
  report("swiglu", "37x96", mx(e, cmp("swiglu_backward", "dgate_up", &dgu, 1e-2)), last_ms);
  buf a = mk(500, 1, 0), bb = mk(500, 1, 0), s = mk(500, 1, 0);
  poison(&s);
  BOTH(cpu->add(cpu, s.c, a.c, bb.c, 500), gpu->add(gpu, s.g, a.g, bb.g, 500));
  report("add", "500", cmp("add", "out", &s, 1e-2), last_ms);
  /* rows and the embedding bag (repeated indices) */
  int32_t idx[12] = {3, 0, 3, 9, 1, 3, 7, 7, 2, 5, 3, 0};
  buf ix = mk_idx(12, idx), tab = mk(10 * 64, 1, 0), g = mk(12 * 64, 1, 0);
  poison(&g);
  BOTH(cpu->rows_gather(cpu, g.c, tab.c, ix.c, 12, 64, 0), gpu->rows_gather(gpu, g.g, tab.g, ix.g, 12, 64, 0));
  e = cmp("rows_gather", "dst", &g, 1e-2);
  BOTH(cpu->rows_scatter(cpu, tab.c, g.c, ix.c, 12, 64, 1), gpu->rows_scatter(gpu, tab.g, g.g, ix.g, 12, 64, 1));
  e = mx(e, cmp("rows_scatter", "dst (+=, repeats)", &tab, 1e-2));
  BOTH(cpu->rows_zero(cpu, tab.c, ix.c, 4, 64), gpu->rows_zero(gpu, tab.g, ix.g, 4, 64));
  e = mx(e, cmp("rows_zero", "dst", &tab, 1e-2));
  BOTH(cpu->rows_gather(cpu, g.c, tab.c, ix.c, 12, 64, 1), gpu->rows_gather(gpu, g.g, tab.g, ix.g, 12, 64, 1));
  e = mx(e, cmp("rows_gather", "dst (+=)", &g, 1e-2));
  int32_t uidx[6] = {4, 9, 0, 2, 7, 5}; /* = with repeats is unspecified: distinct rows */
  buf ux = mk_idx(6, uidx);
  BOTH(cpu->rows_scatter(cpu, tab.c, g.c, ux.c, 6, 64, 0), gpu->rows_scatter(gpu, tab.g, g.g, ux.g, 6, 64, 0));
  e = mx(e, cmp("rows_scatter", "dst (=)", &tab, 1e-2));
  drop(&ux);
  report("rows gather/scatter/zero", "12x64", e, last_ms);
  int32_t bidx[24];
  for (int i = 0; i < 24; i++) bidx[i] = (int32_t)(vl_rng_next(&rng) % 10);
  buf bi = mk_idx(24, bidx), bw = mk(24, 0.5f, 1), out = mk(6 * 64, 1, 0), dtab = mk(10 * 64, 1, 0);
  BOTH(cpu->embed_bag_forward(cpu, out.c, tab.c, bi.c, bw.c, 6, 4, 64, 1), gpu->embed_bag_forward(gpu, out.g, tab.g, bi.g, bw.g, 6, 4, 64, 1));
  e = cmp("embed_bag_forward", "out (+=)", &out, 1e-2);
  buf out0 = mk(6 * 64, 1, 0);
  poison(&out0);
  BOTH(cpu->embed_bag_forward(cpu, out0.c, tab.c, bi.c, bw.c, 6, 4, 64, 0), gpu->embed_bag_forward(gpu, out0.g, tab.g, bi.g, bw.g, 6, 4, 64, 0));
  e = mx(e, cmp("embed_bag_forward", "out (=)", &out0, 1e-2));
  drop(&out0);
  BOTH(cpu->embed_bag_backward(cpu, dtab.c, out.c, bi.c, bw.c, 6, 4, 64), gpu->embed_bag_backward(gpu, dtab.g, out.g, bi.g, bw.g, 6, 4, 64));
  report("embed_bag", "6x4x64", mx(e, cmp("embed_bag_backward", "dtable", &dtab, 1e-2)), last_ms);
}

static void test_norms(int M, int C) {
  char shape[64]; snprintf(shape, sizeof shape, "%dx%d", M, C);
  buf x = mk((size_t)M * C, 2, 0), w = mk(C, 1, 0), b = mk(C, 1, 0), y = mk((size_t)M * C, 1, 0);
  buf mean = mk(M, 1, 1), rstd = mk(M, 1, 1);
  poison(&y); poison(&mean); poison(&rstd);
  BOTH(cpu->layernorm_forward(cpu, y.c, mean.c, rstd.c, x.c, w.c, b.c, M, C, 1e-6f), gpu->layernorm_forward(gpu, y.g, mean.g, rstd.g, x.g, w.g, b.g, M, C, 1e-6f));
  double e = mx(cmp("layernorm_forward", "out", &y, 1e-2), mx(cmp("layernorm_forward", "mean", &mean, 2e-3), cmp("layernorm_forward", "rstd", &rstd, 2e-3)));
  report("layernorm_forward", shape, e, last_ms);
  buf dy = mk((size_t)M * C, 1, 0), dx = mk((size_t)M * C, 1, 0), dw = mk(C, 1, 0), db = mk(C, 1, 0);
  BOTH(cpu->layernorm_backward(cpu, dx.c, dw.c, db.c, dy.c, x.c, w.c, mean.c, rstd.c, M, C), gpu->layernorm_backward(gpu, dx.g, dw.g, db.g, dy.g, x.g, w.g, mean.g, rstd.g, M, C));
  e = mx(cmp("layernorm_backward", "dinp", &dx, 1e-2), mx(cmp("layernorm_backward", "dw", &dw, 1e-2), cmp("layernorm_backward", "db", &db, 1e-2)));
  report("layernorm_backward", shape, e, last_ms);
  /* NULL gradients are skipped: dw alone, then dinp and db */
  BOTH(cpu->layernorm_backward(cpu, NULL, dw.c, NULL, dy.c, x.c, w.c, mean.c, rstd.c, M, C), gpu->layernorm_backward(gpu, NULL, dw.g, NULL, dy.g, x.g, w.g, mean.g, rstd.g, M, C));
  e = cmp("layernorm_backward", "dw (dinp, db NULL)", &dw, 1e-2);
  BOTH(cpu->layernorm_backward(cpu, dx.c, NULL, db.c, dy.c, x.c, w.c, mean.c, rstd.c, M, C), gpu->layernorm_backward(gpu, dx.g, NULL, db.g, dy.g, x.g, w.g, mean.g, rstd.g, M, C));
  e = mx(e, mx(cmp("layernorm_backward", "dinp (dw NULL)", &dx, 1e-2), cmp("layernorm_backward", "db (dw NULL)", &db, 1e-2)));
  report("layernorm_backward", "(NULL grads)", e, last_ms);
  poison(&y); poison(&rstd);
  BOTH(cpu->rmsnorm_forward(cpu, y.c, rstd.c, x.c, w.c, M, C, 1e-6f), gpu->rmsnorm_forward(gpu, y.g, rstd.g, x.g, w.g, M, C, 1e-6f));
  e = mx(cmp("rmsnorm_forward", "out", &y, 1e-2), cmp("rmsnorm_forward", "rstd", &rstd, 2e-3));
  report("rmsnorm_forward", shape, e, last_ms);
  BOTH(cpu->rmsnorm_backward(cpu, dx.c, dw.c, dy.c, x.c, w.c, rstd.c, M, C), gpu->rmsnorm_backward(gpu, dx.g, dw.g, dy.g, x.g, w.g, rstd.g, M, C));
  e = mx(cmp("rmsnorm_backward", "dinp", &dx, 1e-2), cmp("rmsnorm_backward", "dw", &dw, 1e-2));
  report("rmsnorm_backward", shape, e, last_ms);
  BOTH(cpu->rmsnorm_backward(cpu, NULL, dw.c, dy.c, x.c, w.c, rstd.c, M, C), gpu->rmsnorm_backward(gpu, NULL, dw.g, dy.g, x.g, w.g, rstd.g, M, C));
  e = cmp("rmsnorm_backward", "dw (dinp NULL)", &dw, 1e-2);
  BOTH(cpu->rmsnorm_backward(cpu, dx.c, NULL, dy.c, x.c, w.c, rstd.c, M, C), gpu->rmsnorm_backward(gpu, dx.g, NULL, dy.g, x.g, w.g, rstd.g, M, C));
  e = mx(e, cmp("rmsnorm_backward", "dinp (dw NULL)", &dx, 1e-2));
  report("rmsnorm_backward", "(NULL grads)", e, last_ms);
  drop(&x); drop(&w); drop(&b); drop(&y); drop(&mean); drop(&rstd);
  drop(&dy); drop(&dx); drop(&dw); drop(&db);
}

static void test_rope(int T, int nh, int nkv, int hd, int norms) {
  char shape[64]; snprintf(shape, sizeof shape, "T%d h%d/%d d%d%s", T, nh, nkv, hd, norms ? " norms" : "");
  const size_t W = (size_t)(nh + 2 * nkv) * hd;
  buf qkv = mk(T * W, 1.5f, 0), out = mk(T * W, 1, 0), qw = mk(hd, 1, 0), kw = mk(hd, 1, 0);
  buf rstd = mk((size_t)T * (nh + nkv), 1, 1), cs = mk((size_t)T * hd, 1, 1), sn = mk((size_t)T * hd, 1, 1);
  float *c = malloc((size_t)T * hd * 4), *s = malloc((size_t)T * hd * 4);
  for (int t = 0; t < T; t++) for (int j = 0; j < hd; j++) { float a = t * powf(1000.f, -(float)(j % (hd / 2)) / (hd / 2)); c[t * hd + j] = cosf(a); s[t * hd + j] = sinf(a); }
  cpu->put_raw(cpu, cs.c, c, (size_t)T * hd * 4); gpu->put_raw(gpu, cs.g, c, (size_t)T * hd * 4);
  cpu->put_raw(cpu, sn.c, s, (size_t)T * hd * 4); gpu->put_raw(gpu, sn.g, s, (size_t)T * hd * 4);
  poison(&out);
  BOTH(cpu->qk_norm_rope_forward(cpu, out.c, rstd.c, qkv.c, norms ? qw.c : NULL, norms ? kw.c : NULL, cs.c, sn.c, T, nh, nkv, hd, 1e-6f),
       gpu->qk_norm_rope_forward(gpu, out.g, rstd.g, qkv.g, norms ? qw.g : NULL, norms ? kw.g : NULL, cs.g, sn.g, T, nh, nkv, hd, 1e-6f));
  double e = cmp("qk_norm_rope_forward", "out", &out, 1e-2);
  if (norms) e = mx(e, cmp("qk_norm_rope_forward", "rstd", &rstd, 2e-3));
  report("qk_norm_rope_forward", shape, e, last_ms);
  buf dy = mk(T * W, 1, 0), dx = mk(T * W, 1, 0), dqw = mk(hd, 1, 0), dkw = mk(hd, 1, 0);
  BOTH(cpu->qk_norm_rope_backward(cpu, dx.c, norms ? dqw.c : NULL, norms ? dkw.c : NULL, dy.c, qkv.c, norms ? qw.c : NULL, norms ? kw.c : NULL, rstd.c, cs.c, sn.c, T, nh, nkv, hd),
       gpu->qk_norm_rope_backward(gpu, dx.g, norms ? dqw.g : NULL, norms ? dkw.g : NULL, dy.g, qkv.g, norms ? qw.g : NULL, norms ? kw.g : NULL, rstd.g, cs.g, sn.g, T, nh, nkv, hd));
  e = cmp("qk_norm_rope_backward", "dqkv", &dx, 1e-2);
  if (norms) e = mx(e, mx(cmp("qk_norm_rope_backward", "dq_w", &dqw, 1e-2), cmp("qk_norm_rope_backward", "dk_w", &dkw, 1e-2)));
  report("qk_norm_rope_backward", shape, e, last_ms);
  if (norms) {
    BOTH(cpu->qk_norm_rope_backward(cpu, NULL, dqw.c, dkw.c, dy.c, qkv.c, qw.c, kw.c, rstd.c, cs.c, sn.c, T, nh, nkv, hd),
         gpu->qk_norm_rope_backward(gpu, NULL, dqw.g, dkw.g, dy.g, qkv.g, qw.g, kw.g, rstd.g, cs.g, sn.g, T, nh, nkv, hd));
    e = mx(cmp("qk_norm_rope_backward", "dq_w (dqkv NULL)", &dqw, 1e-2), cmp("qk_norm_rope_backward", "dk_w (dqkv NULL)", &dkw, 1e-2));
    report("qk_norm_rope_backward", "(dqkv NULL)", e, last_ms);
  }
  drop(&qkv); drop(&out); drop(&qw); drop(&kw); drop(&rstd); drop(&cs); drop(&sn);
  drop(&dy); drop(&dx); drop(&dqw); drop(&dkw);
  free(c); free(s);
}

/* the CUDA backend's attention path for a shape (kernels/attention.cu);
 * weak, since builds without CUDA have no such symbol */
const char *vl_cuda_attention_path(const int32_t *seg_host, int nseg, int hd) __attribute__((weak));
void vl_cudnn_attn_plan_stats(int *n_plans, double *build_s) __attribute__((weak));
static const char *att_path(const int32_t *seg, int nseg, int hd) {
  return vl_cuda_attention_path ? vl_cuda_attention_path(seg, nseg, hd) : "?";
}

static void test_attention(int T, int nseg, int nh, int nkv, int hd, int causal) {
  int32_t seg[16];
  seg[0] = 0;
  for (int s = 1; s < nseg; s++) seg[s] = (int32_t)((long)T * s * s / (nseg * nseg)) + s; /* unequal */
  seg[nseg] = T;
  char shape[80];
  snprintf(shape, sizeof shape, "T%d seg%d h%d/%d d%d %s %s", T, nseg, nh, nkv, hd,
           causal ? "causal" : "bidir", att_path(seg, nseg, hd));
  buf sg = mk_idx((size_t)nseg + 1, seg);
  const size_t W = (size_t)(nh + 2 * nkv) * hd;
  buf qkv = mk(T * W, 1, 0), out = mk((size_t)T * nh * hd, 1, 0), lse = mk((size_t)nh * T, 1, 1);
  poison(&out); poison(&lse);
  const float sc = 1.0f / sqrtf((float)hd);
  BOTH(cpu->attention_forward(cpu, out.c, lse.c, qkv.c, sg.c, seg, nseg, T, nh, nkv, hd, sc, causal),
       gpu->attention_forward(gpu, out.g, lse.g, qkv.g, sg.g, seg, nseg, T, nh, nkv, hd, sc, causal));
  double e = mx(cmp("attention_forward", "out", &out, 1e-2), cmp("attention_forward", "lse", &lse, 2e-3));
  report("attention_forward", shape, e, last_ms);
  buf dy = mk((size_t)T * nh * hd, 1, 0), dx = mk(T * W, 1, 0);
  /* both backwards from the CPU's forward outputs, so only the backward differs */
  float *o_h = malloc((size_t)T * nh * hd * 4), *l_h = malloc((size_t)nh * T * 4);
  cpu->get(cpu, o_h, out.c, (size_t)T * nh * hd); gpu->put(gpu, out.g, o_h, (size_t)T * nh * hd);
  cpu->get_raw(cpu, l_h, lse.c, (size_t)nh * T * 4); gpu->put_raw(gpu, lse.g, l_h, (size_t)nh * T * 4);
  /* from zero first: with long segments the gradients are small next to a
   * random pre-fill, which would hide their errors; then += on the pre-fill */
  buf dz = mk(T * W, 0, 0);
  BOTH(cpu->attention_backward(cpu, dz.c, dy.c, out.c, lse.c, qkv.c, sg.c, seg, nseg, T, nh, nkv, hd, sc, causal),
       gpu->attention_backward(gpu, dz.g, dy.g, out.g, lse.g, qkv.g, sg.g, seg, nseg, T, nh, nkv, hd, sc, causal));
  e = cmp("attention_backward", "dqkv (from zero)", &dz, 1e-2);
  BOTH(cpu->attention_backward(cpu, dx.c, dy.c, out.c, lse.c, qkv.c, sg.c, seg, nseg, T, nh, nkv, hd, sc, causal),
       gpu->attention_backward(gpu, dx.g, dy.g, out.g, lse.g, qkv.g, sg.g, seg, nseg, T, nh, nkv, hd, sc, causal));
  report("attention_backward", shape, mx(e, cmp("attention_backward", "dqkv", &dx, 1e-2)), last_ms);
  free(o_h); free(l_h);
  drop(&sg); drop(&qkv); drop(&out); drop(&lse); drop(&dy); drop(&dx); drop(&dz);
}

/* Segments that leave rows uncovered (before seg[0], after seg[nseg]) and an
 * empty segment: those rows are neither written nor given gradients, so
 * outputs and gradients start equal (same random values) on both sides. */
static void test_attention_partial(int path, int causal) { /* path: 0 cores, 1 gemm, 2 flash */
  const int T = path == 2 ? 301 : 37, nseg = 3, nh = 4, nkv = 2, hd = 16;
  int32_t seg[4] = {5, 20, 20, path == 2 ? 290 : 33};
  char shape[80];
  if (path < 2) setenv("VL_ATTENTION_GEMM", path ? "1" : "0", 1);
  snprintf(shape, sizeof shape, "T%d rows 5..%d %s %s", T, seg[3] - 1, causal ? "causal" : "bidir",
           att_path(seg, nseg, hd));
  buf sg = mk_idx(nseg + 1, seg);
  const size_t W = (size_t)(nh + 2 * nkv) * hd;
  buf qkv = mk(T * W, 1, 0), out = mk((size_t)T * nh * hd, 1, 0), lse = mk((size_t)nh * T, 1, 1);
  const float sc = 1.0f / sqrtf((float)hd);
  BOTH(cpu->attention_forward(cpu, out.c, lse.c, qkv.c, sg.c, seg, nseg, T, nh, nkv, hd, sc, causal),
       gpu->attention_forward(gpu, out.g, lse.g, qkv.g, sg.g, seg, nseg, T, nh, nkv, hd, sc, causal));
  double e = mx(cmp("attention_forward", "out (partial cover)", &out, 1e-2), cmp("attention_forward", "lse (partial cover)", &lse, 2e-3));
  buf dy = mk((size_t)T * nh * hd, 1, 0), dx = mk(T * W, 1, 0);
  BOTH(cpu->attention_backward(cpu, dx.c, dy.c, out.c, lse.c, qkv.c, sg.c, seg, nseg, T, nh, nkv, hd, sc, causal),
       gpu->attention_backward(gpu, dx.g, dy.g, out.g, lse.g, qkv.g, sg.g, seg, nseg, T, nh, nkv, hd, sc, causal));
  e = mx(e, cmp("attention_backward", "dqkv (partial cover)", &dx, 1e-2));
  report("attention (partial cover)", shape, e, last_ms);
  unsetenv("VL_ATTENTION_GEMM");
  drop(&sg); drop(&qkv); drop(&out); drop(&lse); drop(&dy); drop(&dx);
}

static void test_loss(int T, int H, int V) {
  char shape[64]; snprintf(shape, sizeof shape, "T%d H%d V%d", T, H, V);
  int32_t *tg = malloc(T * 4);
  for (int t = 0; t < T; t++) tg[t] = t % 7 == 0 ? -100 : (int32_t)(vl_rng_next(&rng) % V);
  buf tgt = mk_idx(T, tg), h = mk((size_t)T * H, 1, 0), W = mk((size_t)V * H, 0.05f, 0);
  buf loss = mk(T, 1, 1), dh = mk((size_t)T * H, 1, 0), dW = mk((size_t)V * H, 1, 0);
  poison(&loss);
  BOTH(cpu->lmhead_ce(cpu, loss.c, dh.c, dW.c, NULL, h.c, W.c, tgt.c, T, H, V, 0.01f),
       gpu->lmhead_ce(gpu, loss.g, dh.g, dW.g, NULL, h.g, W.g, tgt.g, T, H, V, 0.01f));
  double e = mx(cmp("lmhead_ce", "loss", &loss, 2e-3), mx(cmp("lmhead_ce", "dh", &dh, 1e-2), cmp("lmhead_ce", "dW", &dW, 1e-2)));
  report("lmhead_ce", shape, e, last_ms);
  if ((size_t)T * V <= 8000000) { /* logits_out (T, V) and the forward alone */
    buf z = mk((size_t)T * V, 1, 1);
    poison(&z); poison(&loss);
    BOTH(cpu->lmhead_ce(cpu, loss.c, NULL, NULL, z.c, h.c, W.c, tgt.c, T, H, V, 0.01f),
         gpu->lmhead_ce(gpu, loss.g, NULL, NULL, z.g, h.g, W.g, tgt.g, T, H, V, 0.01f));
    e = mx(cmp("lmhead_ce", "loss (no grads)", &loss, 2e-3), cmp("lmhead_ce", "logits_out", &z, 2e-3));
    report("lmhead_ce (logits, no grads)", shape, e, last_ms);
    drop(&z);
  }
  drop(&tgt); drop(&h); drop(&W); drop(&loss); drop(&dh); drop(&dW);
  free(tg);
}

/* A target >= V cannot be reported from the device without a sync: its
 * row's loss is NaN (caught by the trainer's non-finite check), its
 * gradient zero, and the other rows are unaffected. */
static void test_loss_bad_target(void) {
  const int T = 5, H = 32, V = 100;
  int32_t tg[5] = {3, 100, -100, 7, 99};
  buf tgt = mk_idx(T, tg), h = mk((size_t)T * H, 1, 0), W = mk((size_t)V * H, 0.05f, 0);
  buf loss = mk(T, 1, 1), dh = mk((size_t)T * H, 0, 0), dW = mk((size_t)V * H, 0, 0);
  int rc = gpu->lmhead_ce(gpu, loss.g, dh.g, dW.g, NULL, h.g, W.g, tgt.g, T, H, V, 1.0f);
  CHECK(rc == VL_OK, "lmhead_ce with a target >= V: %s", vl_err_last());
  float l[5], d[5 * 32];
  gpu->get_raw(gpu, l, loss.g, sizeof l);
  gpu->get(gpu, d, dh.g, (size_t)T * H);
  CHECK(isnan(l[1]) && isfinite(l[0]) && l[2] == 0.0f && isfinite(l[3]) && isfinite(l[4]),
        "lmhead_ce losses with a bad target: %g %g %g %g %g", l[0], l[1], l[2], l[3], l[4]);
  int bad = 0;
  for (int i = 0; i < T * H; i++) bad += !isfinite(d[i]) || ((i / H == 1 || i / H == 2) && d[i] != 0.0f);
  CHECK(bad == 0, "lmhead_ce dh with a bad target: %d elements not finite or not zero", bad);
  printf("%-26s %-28s NaN loss, zero gradient row\n", "lmhead_ce (target >= V)", "T5 H32 V100");
  drop(&tgt); drop(&h); drop(&W); drop(&loss); drop(&dh); drop(&dW);
}

/* put/get round to nearest even exactly as the safetensors converter; zero,
 * copy, the raw transfers, mem_info, and a failing alloc's message. */
static void test_memory(void) {
  const size_t n = 100003;
  float *x = malloc(n * 4), *y = malloc(n * 4);
  const float special[] = {0.0f, -0.0f, 1.0f, 1.00390625f /* tie: 1 + 2^-8 */, 1.01171875f /* tie: 1 + 3 * 2^-8 */,
                           -1.00390625f, 3.3895314e38f, 1e-40f /* subnormal */, -2.5e-39f, INFINITY, -INFINITY,
                           65504.0f, 1.0f / 3.0f, 1e30f, -7.0e-30f};
  const size_t ns = sizeof special / sizeof special[0];
  for (size_t i = 0; i < n; i++)
    x[i] = i < ns ? special[i] : ldexpf(vl_rng_normal(&rng), (int)(vl_rng_next(&rng) % 80) - 40);
  void *d, *d2;
  CHECK(gpu->alloc(gpu, &d, n * 2, "round trip") == VL_OK && gpu->alloc(gpu, &d2, n * 2, "copy") == VL_OK, "alloc: %s", vl_err_last());
  CHECK(gpu->put(gpu, d, x, n) == VL_OK && gpu->get(gpu, y, d, n) == VL_OK, "put/get: %s", vl_err_last());
  size_t bad = 0;
  for (size_t i = 0; i < n; i++) {
    float want = vl_f32_from_bf16(vl_bf16_from_f32(x[i]));
    if (memcmp(&want, &y[i], 4) != 0 && !(isnan(want) && isnan(y[i]))) {
      if (bad < 5) fprintf(stderr, "  put/get of %.9g gave %.9g, want %.9g\n", x[i], y[i], want);
      bad++;
    }
  }
  CHECK(bad == 0, "put/get: %zu of %zu values not rounded to nearest even bf16", bad, n);
  /* zero a middle range, copy, read back */
  CHECK(gpu->zero(gpu, (char *)d + 200, 2000) == VL_OK, "zero: %s", vl_err_last());
  CHECK(gpu->copy(gpu, d2, d, n * 2) == VL_OK, "copy: %s", vl_err_last());
  CHECK(gpu->get(gpu, y, d2, n) == VL_OK, "get: %s", vl_err_last());
  bad = 0;
  for (size_t i = 0; i < n; i++) {
    float want = i >= 100 && i < 1100 ? 0.0f : vl_f32_from_bf16(vl_bf16_from_f32(x[i]));
    bad += memcmp(&want, &y[i], 4) != 0 && !(isnan(want) && isnan(y[i]));
  }
  CHECK(bad == 0, "zero/copy: %zu values wrong", bad);
  int32_t iv[257], ib[257];
  for (int i = 0; i < 257; i++) iv[i] = (int32_t)(vl_rng_next(&rng) & 0x7fffffff) - (1 << 30);
  CHECK(gpu->put_raw(gpu, d, iv, sizeof iv) == VL_OK && gpu->get_raw(gpu, ib, d, sizeof ib) == VL_OK, "raw: %s", vl_err_last());
  CHECK(memcmp(iv, ib, sizeof iv) == 0, "put_raw/get_raw changed the bytes");
  CHECK(gpu->put(gpu, d, x, 0) == VL_OK && gpu->get(gpu, y, d, 0) == VL_OK, "put/get of 0 elements: %s", vl_err_last());
  size_t fr = 0, tot = 0;
  CHECK(gpu->mem_info(gpu, &fr, &tot) == VL_OK && tot > 0 && fr <= tot, "mem_info: free %zu total %zu", fr, tot);
  gpu->free(gpu, d); gpu->free(gpu, d2);
  void *huge = NULL;
  vl_err_set_quiet(1);
  int rc = gpu->alloc(gpu, &huge, (size_t)1 << 50, "a test's impossible buffer");
  vl_err_set_quiet(0);
  CHECK(rc == VL_ENOMEM && huge == NULL && strstr(vl_err_last(), "a test's impossible buffer") && strstr(vl_err_last(), "GiB free"),
        "alloc of 1 PiB: rc %d, message \"%s\"", rc, vl_err_last());
  CHECK(gpu->sync(gpu) == VL_OK, "sync after a failed alloc: %s", vl_err_last());
  printf("%-26s %-28s put/get bf16 RNE exact, zero, copy, raw, mem_info %.1f/%.1f GiB\n", "memory", "100003",
         fr / 1073741824.0, tot / 1073741824.0);
  free(x); free(y);
}

/* sumsq, diff_sumsq and three AdamW steps on the same shard */
static void test_optim(size_t n) {
  char shape[32]; snprintf(shape, sizeof shape, "%zu", n);
  buf a = mk(n, 1, 0), b = mk(n, 1, 0);
  double sc = 0, sg = 0, dc = 0, dg = 0;
  BOTH(cpu->sumsq(cpu, a.c, n, &sc), gpu->sumsq(gpu, a.g, n, &sg));
  BOTH(cpu->diff_sumsq(cpu, a.c, b.c, n, &dc), gpu->diff_sumsq(gpu, a.g, b.g, n, &dg));
  double e = mx(fabs(sg - sc) / sc, fabs(dg - dc) / dc);
  CHECK(e < 1e-5, "sumsq %.9g vs %.9g, diff_sumsq %.9g vs %.9g", sg, sc, dg, dc);
  report("sumsq, diff_sumsq", shape, e, last_ms);
  buf master = mk(n, 1, 1), m = mk(n, 0.01f, 1), v = mk(n, 0.01f, 1), p = mk(n, 1, 0);
  for (size_t i = 0; i < n; i++) v.h[i] = v.h[i] * v.h[i]; /* second moments are >= 0 */
  cpu->put_raw(cpu, v.c, v.h, n * 4); gpu->put_raw(gpu, v.g, v.h, n * 4);
  poison(&p);
  e = 0;
  for (int t = 1; t <= 3; t++) {
    BOTH(cpu->adamw(cpu, master.c, m.c, v.c, a.c, p.c, n, 1e-3f, 0.9f, 0.95f, 1e-8f, 0.1f, 0.5f, t),
         gpu->adamw(gpu, master.g, m.g, v.g, a.g, p.g, n, 1e-3f, 0.9f, 0.95f, 1e-8f, 0.1f, 0.5f, t));
  }
  e = mx(mx(cmp("adamw", "master", &master, 1e-5), cmp("adamw", "m", &m, 1e-5)), mx(cmp("adamw", "v", &v, 1e-5), cmp("adamw", "param", &p, 1e-2)));
  report("adamw (3 steps)", shape, e, last_ms);
  /* lean AdamW (stochastic rounding): the same bits as the CPU backend */
  buf lp = mk(n, 1, 0), lm = mk(n, 0.01f, 1), lv = mk(n, 0.01f, 1);
  for (size_t i = 0; i < n; i++) lv.h[i] = lv.h[i] * lv.h[i];
  cpu->put_raw(cpu, lv.c, lv.h, n * 4); gpu->put_raw(gpu, lv.g, lv.h, n * 4);
  for (int t = 1; t <= 3; t++)
    BOTH(cpu->adamw_lean(cpu, lm.c, lv.c, a.c, lp.c, n, 1e-2f, 0.9f, 0.95f, 1e-8f, 0.1f, 0.5f, t, 1234567u + t, 1000),
         gpu->adamw_lean(gpu, lm.g, lv.g, a.g, lp.g, n, 1e-2f, 0.9f, 0.95f, 1e-8f, 0.1f, 0.5f, t, 1234567u + t, 1000));
  {
    float *x = malloc(n * 4), *y = malloc(n * 4), *x0 = malloc(n * 4);
    size_t diff[3] = {0, 0, 0}, moved = 0;
    const buf *bs[3] = {&lp, &lm, &lv};
    for (int k = 0; k < 3; k++) {
      if (k == 0) { cpu->get(cpu, x, lp.c, n); gpu->get(gpu, y, lp.g, n); }
      else { cpu->get_raw(cpu, x, bs[k]->c, n * 4); gpu->get_raw(gpu, y, bs[k]->g, n * 4); }
      for (size_t i = 0; i < n; i++) diff[k] += memcmp(&x[i], &y[i], 4) != 0;
      if (k == 0) for (size_t i = 0; i < n; i++) moved += x[i] != lp.h[i];
    }
    CHECK(diff[0] == 0 && diff[1] == 0 && diff[2] == 0,
          "adamw_lean: %zu weights, %zu m, %zu v of %zu differ from the CPU's bits", diff[0], diff[1], diff[2], n);
    CHECK(moved > n / 2, "adamw_lean moved only %zu of %zu weights", moved, n);
    printf("%-26s %-28s bitwise equal to the CPU (weights, m, v); %zu of %zu weights moved   gpu %8.3f ms\n",
           "adamw_lean (3 steps, SR)", shape, moved, n, last_ms);
    free(x); free(y); free(x0);
  }
  drop(&lp); drop(&lm); drop(&lv);
  drop(&a); drop(&b); drop(&master); drop(&m); drop(&v); drop(&p);
}

/* Every op on zero rows / elements succeeds and launches nothing invalid. */
static void test_zero_sizes(void) {
  buf x = mk(64, 1, 0), f = mk(64, 1, 1);
  int32_t z[2] = {0, 0};
  buf ix = mk_idx(2, z);
  void *g = x.g;
  float *fg = f.g;
  const int32_t *ig = ix.g;
  double s = -1;
  int rc = 0, k = 0;
#define Z(call) do { int r_ = (call); k++; if (r_ != VL_OK) { rc = r_; fprintf(stderr, "  zero size: %s failed: %s\n", #call, vl_err_last()); } } while (0)
  Z(gpu->add(gpu, g, g, g, 0));
  Z(gpu->act_forward(gpu, g, g, 0, VL_ACT_SILU));
  Z(gpu->act_backward(gpu, g, g, g, 0, VL_ACT_GELU_TANH));
  Z(gpu->swiglu_forward(gpu, g, g, 0, 8));
  Z(gpu->swiglu_backward(gpu, g, g, g, 0, 8));
  Z(gpu->rows_gather(gpu, g, g, ig, 0, 8, 1));
  Z(gpu->rows_scatter(gpu, g, g, ig, 0, 8, 1));
  Z(gpu->rows_scatter(gpu, g, g, ig, 0, 8, 0));
  Z(gpu->rows_zero(gpu, g, ig, 0, 8));
  Z(gpu->embed_bag_forward(gpu, g, g, ig, fg, 0, 4, 8, 0));
  Z(gpu->embed_bag_backward(gpu, g, g, ig, fg, 0, 4, 8));
  Z(gpu->layernorm_forward(gpu, g, fg, fg, g, g, g, 0, 8, 1e-6f));
  Z(gpu->layernorm_backward(gpu, g, g, g, g, g, g, fg, fg, 0, 8));
  Z(gpu->rmsnorm_forward(gpu, g, fg, g, g, 0, 8, 1e-6f));
  Z(gpu->rmsnorm_backward(gpu, g, g, g, g, g, fg, 0, 8));
  Z(gpu->qk_norm_rope_forward(gpu, g, fg, g, g, g, fg, fg, 0, 2, 1, 8, 1e-6f));
  Z(gpu->qk_norm_rope_backward(gpu, g, g, g, g, g, g, g, fg, fg, fg, 0, 2, 1, 8));
  Z(gpu->attention_forward(gpu, g, fg, g, ig, z, 0, 0, 2, 1, 8, 1.0f, 1));
  Z(gpu->attention_backward(gpu, g, g, g, fg, g, ig, z, 0, 0, 2, 1, 8, 1.0f, 1));
  Z(gpu->lmhead_ce(gpu, fg, g, g, NULL, g, g, ig, 0, 8, 8, 1.0f));
  Z(gpu->sumsq(gpu, g, 0, &s));
  Z(gpu->adamw(gpu, fg, fg, fg, g, g, 0, 1e-3f, 0.9f, 0.95f, 1e-8f, 0.0f, 1.0f, 1));
#undef Z
  CHECK(rc == VL_OK && s == 0.0, "zero-size calls: last failure %d, sumsq of nothing %g", rc, s);
  CHECK(gpu->sync(gpu) == VL_OK, "sync after zero-size calls: %s", vl_err_last());
  printf("%-26s %-28s %d ops return VL_OK\n", "zero sizes", "n = 0", k);
  drop(&x); drop(&f); drop(&ix);
}

/* Bad arguments are VL_EINVAL with a message, on both backends alike. */
static void test_bad_args(void) {
  buf x = mk(4096, 1, 0), f = mk(4096, 1, 1);
  int32_t seg[3] = {0, 10, 8};
  buf sg = mk_idx(3, seg);
  vl_err_set_quiet(1);
  int r1 = gpu->attention_forward(gpu, x.g, f.g, x.g, sg.g, seg, 1, 10, 3, 2, 8, 1.0f, 1); /* nh % nkv */
  int r2 = gpu->attention_forward(gpu, x.g, f.g, x.g, sg.g, seg, 2, 10, 2, 1, 8, 1.0f, 1); /* reversed */
  int r3 = gpu->qk_norm_rope_forward(gpu, x.g, f.g, x.g, NULL, NULL, f.g, f.g, 4, 2, 1, 7, 1e-6f); /* odd hd */
  int r4 = gpu->act_forward(gpu, x.g, x.g, 16, (vl_act_kind)99);
  int r5 = gpu->layernorm_forward(gpu, x.g, f.g, f.g, x.g, x.g, NULL, 4, 0, 1e-6f);
  int r6 = gpu->lmhead_ce(gpu, f.g, NULL, NULL, NULL, x.g, x.g, (const int32_t *)sg.g, 2, 8, 0, 1.0f);
  vl_err_set_quiet(0);
  CHECK(r1 == VL_EINVAL && r2 == VL_EINVAL && r3 == VL_EINVAL && r4 == VL_EINVAL && r5 == VL_EINVAL && r6 == VL_EINVAL,
        "bad arguments: %d %d %d %d %d %d (want %d)", r1, r2, r3, r4, r5, r6, VL_EINVAL);
  CHECK(gpu->sync(gpu) == VL_OK, "sync after bad arguments: %s", vl_err_last());
  printf("%-26s %-28s VL_EINVAL\n", "bad arguments", "6 calls");
  drop(&x); drop(&f); drop(&sg);
}

/* VL_ATTENTION_BENCH=1: times attention forward and backward at the 8B
 * workload's shapes on the flash path and on the older path
 * (VL_ATTENTION_FLASH=0) in the same process, median of 20 runs each after
 * warm-up, and prints TFLOP/s (forward 4 nh hd pairs, backward 2.5 times
 * that: the usual convention; the one-pass flash backward does that, the
 * two-pass one 7/5 of it).  Each path's backward runs twice from zero to
 * report whether it is bitwise repeatable (the deterministic one must be). */
static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}
static void bench_attention_shape(const char *name, int T, int nh, int nkv, int hd, int causal) {
  int32_t seg[2] = {0, T};
  buf sg = mk_idx(2, seg);
  const size_t W = (size_t)(nh + 2 * nkv) * hd;
  void *qkv, *out, *dy, *dx;
  float *lse;
  gpu->alloc(gpu, &qkv, T * W * 2, "bench");
  gpu->alloc(gpu, &dx, T * W * 2, "bench");
  gpu->alloc(gpu, &out, (size_t)T * nh * hd * 2, "bench");
  gpu->alloc(gpu, &dy, (size_t)T * nh * hd * 2, "bench");
  gpu->alloc(gpu, (void **)&lse, (size_t)T * nh * 4, "bench");
  float *h = malloc(T * W * 4);
  for (size_t i = 0; i < T * W; i++) h[i] = vl_rng_normal(&rng);
  gpu->put(gpu, qkv, h, T * W);
  gpu->put(gpu, dx, h, T * W);
  gpu->put(gpu, dy, h, (size_t)T * nh * hd);
  const double pairs = causal ? 0.5 * T * (T + 1.0) : (double)T * T;
  const double ffwd = 4.0 * nh * hd * pairs, fbwd = 2.5 * ffwd;
  const float sc = 1.0f / sqrtf((float)hd);
  enum { NP = 5 };
  float *oh[NP], *gh[NP]; /* out, and dqkv from one backward on zeros */
  for (int k = 0; k < NP; k++) oh[k] = malloc((size_t)T * nh * hd * 4), gh[k] = malloc(T * W * 4);
  /* the flash path (one-pass backward, a block per q head with GQA); the
   * same with a block per kv head (VL_ATTENTION_HEADSPLIT=0); the two-pass
   * deterministic backward (VL_ATTENTION_DETERMINISTIC=1, the flash path
   * before the one-pass form); the older path (VL_ATTENTION_FLASH=0) */
  static const char *const pname[NP] = {"cudnn", "flash", "flash-kvh", "flash2", NULL};
  for (int path = 0; path < NP; path++) {
    if (path == 0 && strcmp(att_path(seg, 1, hd), "cudnn")) {
      printf("bench %-7s cudnn      not taken (built without cuDNN or VL_ATTENTION_CUDNN=0)\n", name);
      continue;
    }
    if (path >= 1) setenv("VL_ATTENTION_CUDNN", "0", 1);
    if (path == 2) setenv("VL_ATTENTION_HEADSPLIT", "0", 1);
    if (path == 3) setenv("VL_ATTENTION_DETERMINISTIC", "1", 1);
    if (path == NP - 1) setenv("VL_ATTENTION_FLASH", "0", 1);
    const char *pn = pname[path] ? pname[path] : att_path(seg, 1, hd);
    double tf[20], tb[20];
    for (int r = -3; r < 20; r++) {
      tic();
      int rc = gpu->attention_forward(gpu, out, lse, qkv, sg.g, seg, 1, T, nh, nkv, hd, sc, causal);
      double a = toc();
      tic();
      rc |= gpu->attention_backward(gpu, dx, dy, out, lse, qkv, sg.g, seg, 1, T, nh, nkv, hd, sc, causal);
      double b = toc();
      CHECK(rc == VL_OK, "bench %s: %s", name, vl_err_last());
      if (r >= 0) { tf[r] = a; tb[r] = b; }
    }
    /* outputs of each path against the last (older) path's: a cross-check */
    gpu->get(gpu, oh[path], out, (size_t)T * nh * hd);
    gpu->zero(gpu, dx, T * W * 2); /* one backward from zero for the cross-check */
    CHECK(gpu->attention_backward(gpu, dx, dy, out, lse, qkv, sg.g, seg, 1, T, nh, nkv, hd, sc, causal) == VL_OK,
          "bench %s: %s", name, vl_err_last());
    gpu->get(gpu, gh[path], dx, T * W);
    { /* the same backward again: bitwise repeatable or not */
      float *g2 = malloc(T * W * 4);
      gpu->zero(gpu, dx, T * W * 2);
      CHECK(gpu->attention_backward(gpu, dx, dy, out, lse, qkv, sg.g, seg, 1, T, nh, nkv, hd, sc, causal) == VL_OK,
            "bench %s: %s", name, vl_err_last());
      gpu->get(gpu, g2, dx, T * W);
      const int same = memcmp(g2, gh[path], T * W * 4) == 0;
      printf("bench %-7s %-10s backward twice: %s\n", name, pn, same ? "bitwise equal" : "differs (fp32 reduction order)");
      if (path == 3) CHECK(same, "bench %s: the deterministic backward is not repeatable", name);
      free(g2);
    }
    qsort(tf, 20, sizeof(double), cmp_double);
    qsort(tb, 20, sizeof(double), cmp_double);
    printf("bench %-7s %-10s T%d h%d/%d d%d %s: forward %8.3f ms %6.1f TFLOP/s   backward %8.3f ms %6.1f TFLOP/s\n",
           name, pn, T, nh, nkv, hd, causal ? "causal" : "bidir", tf[10], ffwd / tf[10] * 1e-9,
           tb[10], fbwd / tb[10] * 1e-9);
    unsetenv("VL_ATTENTION_FLASH");
    unsetenv("VL_ATTENTION_DETERMINISTIC");
    unsetenv("VL_ATTENTION_HEADSPLIT");
  }
  unsetenv("VL_ATTENTION_CUDNN");
  for (int k = strcmp(att_path(seg, 1, hd), "cudnn") ? 1 : 0; k < NP - 1; k++) {
    double e = rel_err_f32(oh[k], oh[NP - 1], (size_t)T * nh * hd);
    double eg = rel_err_f32(gh[k], gh[NP - 1], T * W);
    printf("bench %-7s %s vs the older path: relative difference out %.2e, dqkv %.2e\n", name, pname[k], e, eg);
    CHECK(e < 1e-2 && eg < 1e-2, "bench %s: path %d differs from the older path's: out %.2e, dqkv %.2e",
          name, k, e, eg);
  }
  for (int k = 0; k < NP; k++) free(oh[k]), free(gh[k]);
  free(h);
  gpu->free(gpu, qkv); gpu->free(gpu, dx); gpu->free(gpu, out); gpu->free(gpu, dy); gpu->free(gpu, lse);
  drop(&sg);
}
static void bench_attention(void) {
  bench_attention_shape("vision", 8960, 16, 16, 72, 0);
  bench_attention_shape("text", 2902, 32, 8, 128, 1);
}

/* VL_NORM_BENCH=1: the norm and rope ops at the 8B workload's shapes, the
 * fast kernels and the older ones (VL_NORM_LEGACY=1) in the same process:
 * median over 7 timings of 20 back-to-back calls (device timers), with the
 * GB/s of the fewest bytes each op must move (inputs read once, outputs
 * written once, a += gradient read and written), and the two versions'
 * outputs compared (relative difference, < 1e-2). */
typedef struct { const char *name; double bytes; } nb_op;
static double nb_time(int (*call)(void *), void *arg) {
  double t[7];
  for (int i = 0; i < 3; i++) CHECK(call(arg) == VL_OK, "bench: %s", vl_err_last());
  for (int r = 0; r < 7; r++) {
    gpu->timer_record(gpu, 0);
    for (int i = 0; i < 20; i++) CHECK(call(arg) == VL_OK, "bench: %s", vl_err_last());
    gpu->timer_record(gpu, 1);
    gpu->sync(gpu);
    float ms = 0;
    CHECK(gpu->timer_ms(gpu, 0, 1, &ms) == VL_OK, "bench timer: %s", vl_err_last());
    t[r] = ms / 20;
  }
  qsort(t, 7, sizeof(double), cmp_double);
  return t[3];
}
typedef struct {
  int op, M, C, T, nh, nkv, hd, norms;
  void *x, *y, *dy, *dx, *w, *b, *dw, *db, *w2, *dw2;
  float *mean, *rstd, *cs, *sn;
} nb_args;
static int nb_call(void *p) {
  nb_args *a = p;
  switch (a->op) {
    case 0: return gpu->rmsnorm_forward(gpu, a->y, a->rstd, a->x, a->w, a->M, a->C, 1e-6f);
    case 1: return gpu->rmsnorm_backward(gpu, a->dx, a->dw, a->dy, a->x, a->w, a->rstd, a->M, a->C);
    case 2: return gpu->layernorm_forward(gpu, a->y, a->mean, a->rstd, a->x, a->w, a->b, a->M, a->C, 1e-6f);
    case 3: return gpu->layernorm_backward(gpu, a->dx, a->dw, a->db, a->dy, a->x, a->w, a->mean, a->rstd, a->M, a->C);
    case 4: return gpu->qk_norm_rope_forward(gpu, a->y, a->rstd, a->x, a->norms ? a->w : NULL, a->norms ? a->w2 : NULL, a->cs, a->sn, a->T, a->nh, a->nkv, a->hd, 1e-6f);
    default: return gpu->qk_norm_rope_backward(gpu, a->dx, a->norms ? a->dw : NULL, a->norms ? a->dw2 : NULL, a->dy, a->x, a->norms ? a->w : NULL, a->norms ? a->w2 : NULL, a->rstd, a->cs, a->sn, a->T, a->nh, a->nkv, a->hd);
  }
}
static void *nb_rand(size_t n, float scale) {
  void *p;
  float *h = malloc(n * 4);
  for (size_t i = 0; i < n; i++) h[i] = scale * vl_rng_normal(&rng);
  gpu->alloc(gpu, &p, n * 4, "bench");
  gpu->put(gpu, p, h, n);
  free(h);
  return p;
}
static void bench_norm_op(const char *label, nb_args *a, double bytes) {
  static const char *names[] = {"rmsnorm_forward", "rmsnorm_backward", "layernorm_forward",
                                "layernorm_backward", "qk_norm_rope_forward", "qk_norm_rope_backward"};
  size_t n = a->op < 4 ? (size_t)a->M * a->C : (size_t)a->T * (a->nh + 2 * a->nkv) * a->hd;
  void *outp = a->op % 2 == 0 ? a->y : a->dx;
  if (!outp) { /* backward for the weight gradient alone: compare that */
    outp = a->dw;
    n = a->op < 4 ? (size_t)a->C : (size_t)a->hd;
  }
  float *o[2];
  double ms[2];
  for (int v = 0; v < 2; v++) { /* 0 fast, 1 legacy */
    if (v) setenv("VL_NORM_LEGACY", "1", 1);
    ms[v] = nb_time(nb_call, a);
    /* the output of one call from a fixed state, for the cross-check */
    gpu->zero(gpu, outp, n * 2);
    if (a->dw && a->op % 2) gpu->zero(gpu, a->dw, (size_t)(a->op < 4 ? a->C : a->hd) * 2);
    CHECK(nb_call(a) == VL_OK, "bench: %s", vl_err_last());
    o[v] = malloc(n * 4);
    gpu->get(gpu, o[v], outp, n);
    unsetenv("VL_NORM_LEGACY");
  }
  double e = rel_err_f32(o[0], o[1], n);
  printf("normbench %-22s %-26s old %8.1f us %6.0f GB/s   new %8.1f us %6.0f GB/s   x%5.2f  diff %.1e\n",
         names[a->op], label, ms[1] * 1e3, bytes / ms[1] * 1e-6, ms[0] * 1e3, bytes / ms[0] * 1e-6,
         ms[1] / ms[0], e);
  CHECK(e < 1e-2, "bench %s %s: fast and older kernels differ by %.2e", names[a->op], label, e);
  free(o[0]); free(o[1]);
}
static void bench_norms_shape(int M, int C) {
  char label[64]; snprintf(label, sizeof label, "%dx%d", M, C);
  size_t n = (size_t)M * C;
  nb_args a = {0};
  a.M = M; a.C = C;
  a.x = nb_rand(n, 2); a.y = nb_rand(n, 1); a.dy = nb_rand(n, 1); a.dx = nb_rand(n, 1);
  a.w = nb_rand(C, 1); a.b = nb_rand(C, 1); a.dw = nb_rand(C, 1); a.db = nb_rand(C, 1);
  gpu->alloc(gpu, (void **)&a.mean, (size_t)M * 4, "bench");
  gpu->alloc(gpu, (void **)&a.rstd, (size_t)M * 4, "bench");
  const double t = 2.0 * n; /* bytes of one bf16 tensor */
  a.op = 0; bench_norm_op(label, &a, 2 * t);
  a.op = 1; bench_norm_op(label, &a, 4 * t);
  a.op = 2; bench_norm_op(label, &a, 2 * t);
  a.op = 3; bench_norm_op(label, &a, 4 * t);
  /* the weight-gradient share: backward without dinp */
  void *dx = a.dx; a.dx = NULL;
  char l2[80]; snprintf(l2, sizeof l2, "%s dw only", label);
  a.op = 1; bench_norm_op(l2, &a, 2 * t);
  a.op = 3; bench_norm_op(l2, &a, 2 * t);
  a.dx = dx;
  /* grids aimed at other residencies (VL_NORM_TPS threads per SM) */
  const char *tps[] = {"512", "2048"};
  for (int i = 0; i < 2; i++) {
    setenv("VL_NORM_TPS", tps[i], 1);
    snprintf(l2, sizeof l2, "%s tps %s", label, tps[i]);
    a.op = 1; bench_norm_op(l2, &a, 4 * t);
    a.op = 3; bench_norm_op(l2, &a, 4 * t);
    unsetenv("VL_NORM_TPS");
  }
  void *all[] = {a.x, a.y, a.dy, a.dx, a.w, a.b, a.dw, a.db, a.mean, a.rstd};
  for (int i = 0; i < 10; i++) gpu->free(gpu, all[i]);
}
static void bench_rope_shape(int T, int nh, int nkv, int hd, int norms) {
  char label[64]; snprintf(label, sizeof label, "T%d h%d/%d d%d%s", T, nh, nkv, hd, norms ? " norms" : "");
  const size_t W = (size_t)(nh + 2 * nkv) * hd, n = (size_t)T * W;
  nb_args a = {0};
  a.T = T; a.nh = nh; a.nkv = nkv; a.hd = hd; a.norms = norms;
  a.x = nb_rand(n, 1.5f); a.y = nb_rand(n, 1); a.dy = nb_rand(n, 1); a.dx = nb_rand(n, 1);
  a.w = nb_rand(hd, 1); a.w2 = nb_rand(hd, 1); a.dw = nb_rand(hd, 1); a.dw2 = nb_rand(hd, 1);
  gpu->alloc(gpu, (void **)&a.rstd, (size_t)T * (nh + nkv) * 4, "bench");
  float *c = malloc((size_t)T * hd * 4), *s = malloc((size_t)T * hd * 4);
  for (int t = 0; t < T; t++) for (int j = 0; j < hd; j++) { float ang = t * powf(1000.f, -(float)(j % (hd / 2)) / (hd / 2)); c[t * hd + j] = cosf(ang); s[t * hd + j] = sinf(ang); }
  gpu->alloc(gpu, (void **)&a.cs, (size_t)T * hd * 4, "bench");
  gpu->alloc(gpu, (void **)&a.sn, (size_t)T * hd * 4, "bench");
  gpu->put_raw(gpu, a.cs, c, (size_t)T * hd * 4); gpu->put_raw(gpu, a.sn, s, (size_t)T * hd * 4);
  const double t = 2.0 * n, tab = 8.0 * T * hd, qk = 2.0 * T * (nh + nkv) * hd;
  a.op = 4; bench_norm_op(label, &a, 2 * t + tab);
  a.op = 5; bench_norm_op(label, &a, 3 * t + (norms ? qk : 0) + tab);
  void *all[] = {a.x, a.y, a.dy, a.dx, a.w, a.w2, a.dw, a.dw2, a.rstd, a.cs, a.sn};
  for (int i = 0; i < 11; i++) gpu->free(gpu, all[i]);
  free(c); free(s);
}
static void bench_norms(void) {
  bench_norms_shape(2902, 4096);
  bench_norms_shape(8960, 1152);
  bench_rope_shape(2902, 32, 8, 128, 1);
  bench_rope_shape(8960, 16, 16, 72, 0);
}

/* Shapes for the fused attention paths (head_dim % 8 == 0, <= 128): one
 * segment of thousands of rows, uneven segments, causal and not, GQA, the
 * own flash kernels' padded widths (8 -> 16, 40 -> 64, 72 -> 80). */
static void test_attention_shapes(void) {
  static const int shapes[][6] = {/* T, nseg, nh, nkv, hd, causal */
                                  {3000, 1, 8, 2, 128, 1}, {2500, 1, 4, 4, 72, 0}, {2000, 5, 8, 2, 72, 1},
                                  {777, 4, 4, 1, 128, 0},  {129, 3, 2, 1, 8, 1},   {200, 2, 4, 2, 40, 0},
                                  {130, 2, 2, 2, 32, 1},   {257, 2, 2, 1, 64, 0}};
  for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++) {
    const int *x = shapes[i];
    test_attention(x[0], x[1], x[2], x[3], x[4], x[5]);
  }
}

int main(void) {
  vl_err_set_quiet(1);
  int rc = vl_ops_cuda_create(&gpu, 0);
  vl_err_set_quiet(0);
  if (rc == VL_ENOTSUP || (rc != VL_OK && strstr(vl_err_last(), "no CUDA device visible")))
    TEST_SKIP("%s", vl_err_last());
  if (rc != VL_OK) {
    fprintf(stderr, "FAIL: a GPU is visible but the CUDA backend cannot start: %s\n", vl_err_last());
    return 1;
  }
  if (vl_ops_cpu_create(&cpu) != VL_OK) return 1;
  if (getenv("VL_ATTENTION_BENCH")) {
    bench_attention();
    vl_ops_destroy(gpu);
    vl_ops_destroy(cpu);
    TEST_END();
  }
  if (getenv("VL_NORM_BENCH")) {
    bench_norms();
    vl_ops_destroy(gpu);
    vl_ops_destroy(cpu);
    TEST_END();
  }
  test_memory();
  test_zero_sizes();
  test_bad_args();
  test_optim(10007);
  test_optim(3000017);
  test_matmul(37, 64, 48);
  test_matmul(512, 1152, 4304);
  test_pointwise();
  test_norms(37, 64);
  test_norms(2048, 1152);
  /* the 8B shapes; odd sizes: one row, C % 8 != 0 and C > 8192 (the older
   * kernels), 125 and 1,024 vectors a row (two a thread) */
  test_norms(2902, 4096);
  test_norms(8960, 1152);
  test_norms(1, 8);
  test_norms(3, 4100);
  test_norms(5, 1000);
  test_norms(300, 8192);
  test_norms(17, 8200);
  test_rope(37, 4, 2, 128, 1);
  test_rope(37, 4, 4, 72, 0);
  test_rope(37, 2, 1, 16, 1);
  /* the 8B shapes (vision with norms too: 9 threads a head, the older
   * kernels); odd ones: V = 2, G = 3 and V = 4, G = 5 with norms (older
   * kernels), V = 4, G = 1 without (V elements a thread, G threads a head) */
  test_rope(2902, 32, 8, 128, 1);
  test_rope(8960, 16, 16, 72, 0);
  test_rope(301, 16, 16, 72, 1);
  test_rope(37, 3, 1, 12, 1);
  test_rope(37, 5, 1, 40, 1);
  test_rope(5, 3, 3, 8, 0);
  test_rope(37, 4, 2, 32, 1); /* fast path with norms: V = 8, G = 2 */
  test_rope(37, 2, 1, 8, 1);  /* V = 4, G = 1 */
  test_rope(37, 2, 2, 4, 1);  /* V = 2, G = 1 */
  test_attention(37, 3, 4, 2, 16, 1);
  test_attention(300, 3, 4, 2, 128, 1);
  test_attention(300, 2, 4, 4, 72, 0);
  test_attention(1024, 2, 16, 16, 72, 0);
  test_attention(1024, 1, 32, 8, 128, 1);
  /* segments of 256+ rows take the tensor-core GEMM path; force it on short ones too */
  setenv("VL_ATTENTION_GEMM", "1", 1);
  test_attention(300, 3, 4, 2, 128, 1);
  test_attention(300, 2, 4, 4, 72, 0);
  test_attention(37, 3, 4, 2, 16, 1);
  setenv("VL_ATTENTION_GEMM", "0", 1);
  test_attention(1024, 1, 32, 8, 128, 1);
  unsetenv("VL_ATTENTION_GEMM");
  test_attention(4096, 2, 16, 16, 72, 0);
  test_attention(1000, 3, 16, 8, 128, 1);
  test_attention(1000, 3, 16, 16, 72, 0);
  test_attention(64, 2, 2, 1, 256, 1); /* head_dim > 128: the GEMM path */
  test_attention(50, 3, 4, 2, 6, 1);   /* head_dim % 8 != 0: not the flash path */
  /* the fused paths' shapes on the default path (cuDNN when built in, else
   * the own flash kernels) */
  test_attention_shapes();
  /* the flash backward's deterministic two-pass form (the default is one
   * pass with fp32 dQ reductions) */
  setenv("VL_ATTENTION_DETERMINISTIC", "1", 1);
  test_attention(3000, 1, 8, 2, 128, 1);
  test_attention(2000, 5, 8, 2, 72, 1);
  test_attention(777, 4, 4, 1, 128, 0);
  test_attention(129, 3, 2, 1, 8, 1);
  test_attention_partial(2, 1);
  unsetenv("VL_ATTENTION_DETERMINISTIC");
  /* the one-pass backward with GQA and a block per kv head (not per q head) */
  setenv("VL_ATTENTION_HEADSPLIT", "0", 1);
  test_attention(3000, 1, 8, 2, 128, 1);
  test_attention(2000, 5, 8, 2, 72, 1);
  test_attention_partial(2, 1);
  unsetenv("VL_ATTENTION_HEADSPLIT");
  test_attention_partial(0, 1);
  test_attention_partial(1, 0);
  test_attention_partial(2, 1);
  test_attention_partial(2, 0);
  /* With cuDNN built in, the calls above without a path switch took cuDNN's
   * fused attention (the default); the own flash kernels on the same shapes: */
  setenv("VL_ATTENTION_CUDNN", "0", 1);
  test_attention_shapes();
  test_attention(1024, 1, 32, 8, 128, 1);
  test_attention_partial(2, 1);
  test_attention_partial(2, 0);
  unsetenv("VL_ATTENTION_CUDNN");
  /* cuDNN causal segments at their exact length (no bucket padding) */
  setenv("VL_ATTENTION_CUDNN_BUCKET", "1", 1);
  test_attention(1000, 3, 16, 8, 128, 1);
  test_attention(37, 3, 4, 2, 16, 1);
  unsetenv("VL_ATTENTION_CUDNN_BUCKET");
  if (vl_cudnn_attn_plan_stats) { /* plan reuse: lengths seen before build no new plan */
    int n0, n1;
    double s0, s1;
    vl_cudnn_attn_plan_stats(&n0, &s0);
    test_attention(2000, 5, 8, 2, 72, 1);
    vl_cudnn_attn_plan_stats(&n1, &s1);
    printf("cuDNN attention plans: %d built in %.2f s (%.1f ms each)\n", n1, s1, n1 ? 1e3 * s1 / n1 : 0.0);
    CHECK(n1 == n0, "the same shapes built %d new cuDNN plans", n1 - n0);
  }
  test_rope(37, 2, 1, 256, 1);
  test_loss(37, 32, 384);
  test_loss(1100, 64, 5003); /* more rows than one chunk (1,024) */
  test_loss(300, 256, 151936);
  test_loss_bad_target();
  /* the whole tiny model on the GPU against transformers (float64 reference):
   * bf16 weights and activations, so bf16-level limits */
  const char *fixtures[] = {"tests/data/qwen3vl_parity", "tests/data/qwen2vl_parity"};
  for (int f = 0; f < 2; f++) {
    parity_result r;
    rc = parity_run_dir(gpu, fixtures[f], &r);
    CHECK(rc == VL_OK, "%s: GPU parity run: %s", fixtures[f], vl_err_last());
    if (rc == VL_OK) {
      CHECK(r.loss < 1e-2, "%s: GPU loss vs transformers: relative error %.3e", fixtures[f], r.loss);
      CHECK(r.logits < 3e-2, "%s: GPU logits vs transformers: relative error %.3e", fixtures[f],
            r.logits);
      CHECK(r.grad_all < 5e-2, "%s: GPU gradients vs transformers: relative error %.3e",
            fixtures[f], r.grad_all);
    }
  }
  vl_ops_destroy(gpu);
  vl_ops_destroy(cpu);
  TEST_END();
}
