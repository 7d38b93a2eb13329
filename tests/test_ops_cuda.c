/* test_ops_cuda: every op of the CUDA backend against the fp32 CPU backend on
 * the same bf16-rounded random inputs (GPU outputs poisoned with NaN first,
 * gradients pre-filled with the same random values to check +=), relative
 * error ||gpu - cpu|| / ||cpu|| < 1e-2 for bf16 tensors and < 2e-3 for the
 * fp32 statistics; plus the whole tiny model's loss and gradients.  Skips
 * (77) without a GPU. */
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
  report("rows gather/scatter/zero", "12x64", e, last_ms);
  int32_t bidx[24];
  for (int i = 0; i < 24; i++) bidx[i] = (int32_t)(vl_rng_next(&rng) % 10);
  buf bi = mk_idx(24, bidx), bw = mk(24, 0.5f, 1), out = mk(6 * 64, 1, 0), dtab = mk(10 * 64, 1, 0);
  BOTH(cpu->embed_bag_forward(cpu, out.c, tab.c, bi.c, bw.c, 6, 4, 64, 1), gpu->embed_bag_forward(gpu, out.g, tab.g, bi.g, bw.g, 6, 4, 64, 1));
  e = cmp("embed_bag_forward", "out", &out, 1e-2);
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
  poison(&y); poison(&rstd);
  BOTH(cpu->rmsnorm_forward(cpu, y.c, rstd.c, x.c, w.c, M, C, 1e-6f), gpu->rmsnorm_forward(gpu, y.g, rstd.g, x.g, w.g, M, C, 1e-6f));
  e = mx(cmp("rmsnorm_forward", "out", &y, 1e-2), cmp("rmsnorm_forward", "rstd", &rstd, 2e-3));
  report("rmsnorm_forward", shape, e, last_ms);
  BOTH(cpu->rmsnorm_backward(cpu, dx.c, dw.c, dy.c, x.c, w.c, rstd.c, M, C), gpu->rmsnorm_backward(gpu, dx.g, dw.g, dy.g, x.g, w.g, rstd.g, M, C));
  e = mx(cmp("rmsnorm_backward", "dinp", &dx, 1e-2), cmp("rmsnorm_backward", "dw", &dw, 1e-2));
  report("rmsnorm_backward", shape, e, last_ms);
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
  free(c); free(s);
}

static void test_attention(int T, int nseg, int nh, int nkv, int hd, int causal) {
  char shape[80]; snprintf(shape, sizeof shape, "T%d seg%d h%d/%d d%d %s", T, nseg, nh, nkv, hd, causal ? "causal" : "bidir");
  int32_t seg[16];
  seg[0] = 0;
  for (int s = 1; s < nseg; s++) seg[s] = (int32_t)((long)T * s * s / (nseg * nseg)) + s; /* unequal */
  seg[nseg] = T;
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
  BOTH(cpu->attention_backward(cpu, dx.c, dy.c, out.c, lse.c, qkv.c, sg.c, seg, nseg, T, nh, nkv, hd, sc, causal),
       gpu->attention_backward(gpu, dx.g, dy.g, out.g, lse.g, qkv.g, sg.g, seg, nseg, T, nh, nkv, hd, sc, causal));
  report("attention_backward", shape, cmp("attention_backward", "dqkv", &dx, 1e-2), last_ms);
  free(o_h); free(l_h);
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
  free(tg);
}

int main(void) {
  if (vl_ops_cuda_create(&gpu, 0) != VL_OK) TEST_SKIP("no CUDA backend here: %s", vl_err_last());
  if (vl_ops_cpu_create(&cpu) != VL_OK) return 1;
  test_matmul(37, 64, 48);
  test_matmul(512, 1152, 4304);
  test_pointwise();
  test_norms(37, 64);
  test_norms(2048, 1152);
  test_rope(37, 4, 2, 128, 1);
  test_rope(37, 4, 4, 72, 0);
  test_rope(37, 2, 1, 16, 1);
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
  test_loss(37, 32, 384);
  test_loss(300, 256, 151936);
  /* the whole tiny model on the GPU against transformers (float64 reference):
   * bf16 weights and activations, so bf16-level limits */
  parity_result r;
  int rc = parity_run(gpu, &r);
  CHECK(rc == VL_OK, "GPU parity run: %s", vl_err_last());
  if (rc == VL_OK) {
    CHECK(r.loss < 1e-2, "GPU loss vs transformers: relative error %.3e", r.loss);
    CHECK(r.logits < 3e-2, "GPU logits vs transformers: relative error %.3e", r.logits);
    CHECK(r.grad_all < 5e-2, "GPU gradients vs transformers: relative error %.3e", r.grad_all);
  }
  vl_ops_destroy(gpu);
  vl_ops_destroy(cpu);
  TEST_END();
}
