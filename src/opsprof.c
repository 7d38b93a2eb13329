/* opsprof: per-op timings of one micro-batch (see opsprof.h). */
#include "opsprof.h"

#include <stdlib.h>
#include <string.h>

#include "err.h"

enum {
  P_ZERO, P_COPY, P_MATMUL_F, P_MATMUL_B, P_ADD, P_ACT_F, P_ACT_B, P_SWIGLU_F, P_SWIGLU_B, P_LN_F, P_LN_B,
  P_RMS_F, P_RMS_B, P_QKROPE_F, P_QKROPE_B, P_ATT_F, P_ATT_B, P_GATHER, P_SCATTER, P_ROWS_ZERO, P_BAG_F,
  P_BAG_B, P_LMHEAD_CE, P_SUMSQ, P_DIFF_SUMSQ, P_ADAMW, P_ADAMW_LEAN, P_N
};
static const char *op_name[P_N] = {
    "zero", "copy", "matmul_forward", "matmul_backward", "add", "act_forward", "act_backward",
    "swiglu_forward", "swiglu_backward", "layernorm_forward", "layernorm_backward", "rmsnorm_forward",
    "rmsnorm_backward", "qk_norm_rope_forward", "qk_norm_rope_backward", "attention_forward",
    "attention_backward", "rows_gather", "rows_scatter", "rows_zero", "embed_bag_forward",
    "embed_bag_backward", "lmhead_ce", "sumsq", "diff_sumsq", "adamw", "adamw_lean"};
static const char *phase_name[VL_N_PHASES] = {"vision fwd", "text fwd", "loss", "text bwd", "vision bwd",
                                              "other"};

typedef struct {
  short op, phase;
  int timer; /* start; end = timer + 1 */
} call_rec;

struct vl_opsprof {
  vl_ops table; /* first: the wrapped table's address is the profiler's */
  vl_ops *in;
  int armed, phase, n_calls, dropped, err;
  call_rec calls[VL_OPS_TIMERS / 2];
  double ms[P_N][VL_N_PHASES];
  long count[P_N][VL_N_PHASES];
  int batches;
};

static int begin(vl_opsprof *p) {
  if (!p->armed) return -1;
  if (p->n_calls >= VL_OPS_TIMERS / 2) { p->dropped++; return -1; }
  const int k = 2 * p->n_calls;
  if (p->in->timer_record(p->in, k)) { p->err = 1; return -1; }
  return k;
}
static void end(vl_opsprof *p, int k, int op) {
  if (k < 0) return;
  if (p->in->timer_record(p->in, k + 1)) { p->err = 1; return; }
  p->calls[p->n_calls++] = (call_rec){(short)op, (short)p->phase, k};
}

#define WRAP(name, id, params, args)                 \
  static int w_##name params {                       \
    vl_opsprof *p = (vl_opsprof *)o;                 \
    const int k = begin(p);                          \
    const int rc = p->in->name args;                 \
    end(p, k, id);                                   \
    return rc;                                       \
  }

WRAP(zero, P_ZERO, (vl_ops *o, void *d, size_t bytes), (p->in, d, bytes))
WRAP(copy, P_COPY, (vl_ops *o, void *d, const void *s, size_t bytes), (p->in, d, s, bytes))
WRAP(matmul_forward, P_MATMUL_F,
     (vl_ops *o, vl_t *out, const vl_t *inp, const vl_t *W, const vl_t *bias, int M, int K, int N, int acc),
     (p->in, out, inp, W, bias, M, K, N, acc))
WRAP(matmul_backward, P_MATMUL_B,
     (vl_ops *o, vl_t *dinp, vl_t *dW, vl_t *dbias, const vl_t *dout, const vl_t *inp, const vl_t *W, int M, int K,
      int N),
     (p->in, dinp, dW, dbias, dout, inp, W, M, K, N))
WRAP(add, P_ADD, (vl_ops *o, vl_t *out, const vl_t *a, const vl_t *b, size_t n), (p->in, out, a, b, n))
WRAP(act_forward, P_ACT_F, (vl_ops *o, vl_t *out, const vl_t *inp, size_t n, vl_act_kind act),
     (p->in, out, inp, n, act))
WRAP(act_backward, P_ACT_B, (vl_ops *o, vl_t *dinp, const vl_t *dout, const vl_t *inp, size_t n, vl_act_kind act),
     (p->in, dinp, dout, inp, n, act))
WRAP(swiglu_forward, P_SWIGLU_F, (vl_ops *o, vl_t *out, const vl_t *gu, int M, int I), (p->in, out, gu, M, I))
WRAP(swiglu_backward, P_SWIGLU_B, (vl_ops *o, vl_t *dgu, const vl_t *dout, const vl_t *gu, int M, int I),
     (p->in, dgu, dout, gu, M, I))
WRAP(layernorm_forward, P_LN_F,
     (vl_ops *o, vl_t *out, float *mean, float *rstd, const vl_t *inp, const vl_t *w, const vl_t *b, int M, int C,
      float eps),
     (p->in, out, mean, rstd, inp, w, b, M, C, eps))
WRAP(layernorm_backward, P_LN_B,
     (vl_ops *o, vl_t *dinp, vl_t *dw, vl_t *db, const vl_t *dout, const vl_t *inp, const vl_t *w,
      const float *mean, const float *rstd, int M, int C),
     (p->in, dinp, dw, db, dout, inp, w, mean, rstd, M, C))
WRAP(rmsnorm_forward, P_RMS_F,
     (vl_ops *o, vl_t *out, float *rstd, const vl_t *inp, const vl_t *w, int M, int C, float eps),
     (p->in, out, rstd, inp, w, M, C, eps))
WRAP(rmsnorm_backward, P_RMS_B,
     (vl_ops *o, vl_t *dinp, vl_t *dw, const vl_t *dout, const vl_t *inp, const vl_t *w, const float *rstd, int M,
      int C),
     (p->in, dinp, dw, dout, inp, w, rstd, M, C))
WRAP(qk_norm_rope_forward, P_QKROPE_F,
     (vl_ops *o, vl_t *out, float *rstd, const vl_t *qkv, const vl_t *q_w, const vl_t *k_w, const float *cos,
      const float *sin, int T, int nh, int nkv, int hd, float eps),
     (p->in, out, rstd, qkv, q_w, k_w, cos, sin, T, nh, nkv, hd, eps))
WRAP(qk_norm_rope_backward, P_QKROPE_B,
     (vl_ops *o, vl_t *dqkv, vl_t *dq_w, vl_t *dk_w, const vl_t *dout, const vl_t *qkv, const vl_t *q_w,
      const vl_t *k_w, const float *rstd, const float *cos, const float *sin, int T, int nh, int nkv, int hd),
     (p->in, dqkv, dq_w, dk_w, dout, qkv, q_w, k_w, rstd, cos, sin, T, nh, nkv, hd))
WRAP(attention_forward, P_ATT_F,
     (vl_ops *o, vl_t *out, float *lse, const vl_t *qkv, const int32_t *seg, const int32_t *seg_host, int nseg,
      int T, int nh, int nkv, int hd, float scale, int causal),
     (p->in, out, lse, qkv, seg, seg_host, nseg, T, nh, nkv, hd, scale, causal))
WRAP(attention_backward, P_ATT_B,
     (vl_ops *o, vl_t *dqkv, const vl_t *dout, const vl_t *out, const float *lse, const vl_t *qkv,
      const int32_t *seg, const int32_t *seg_host, int nseg, int T, int nh, int nkv, int hd, float scale,
      int causal),
     (p->in, dqkv, dout, out, lse, qkv, seg, seg_host, nseg, T, nh, nkv, hd, scale, causal))
WRAP(rows_gather, P_GATHER, (vl_ops *o, vl_t *d, const vl_t *s, const int32_t *idx, int n, int C, int acc),
     (p->in, d, s, idx, n, C, acc))
WRAP(rows_scatter, P_SCATTER, (vl_ops *o, vl_t *d, const vl_t *s, const int32_t *idx, int n, int C, int acc),
     (p->in, d, s, idx, n, C, acc))
WRAP(rows_zero, P_ROWS_ZERO, (vl_ops *o, vl_t *d, const int32_t *idx, int n, int C), (p->in, d, idx, n, C))
WRAP(embed_bag_forward, P_BAG_F,
     (vl_ops *o, vl_t *out, const vl_t *table, const int32_t *idx, const float *w, int n, int K, int C, int acc),
     (p->in, out, table, idx, w, n, K, C, acc))
WRAP(embed_bag_backward, P_BAG_B,
     (vl_ops *o, vl_t *dtable, const vl_t *dout, const int32_t *idx, const float *w, int n, int K, int C),
     (p->in, dtable, dout, idx, w, n, K, C))
WRAP(lmhead_ce, P_LMHEAD_CE,
     (vl_ops *o, float *loss, vl_t *dh, vl_t *dW, float *logits, const vl_t *h, const vl_t *W,
      const int32_t *target, int T, int H, int V, float scale),
     (p->in, loss, dh, dW, logits, h, W, target, T, H, V, scale))
WRAP(sumsq, P_SUMSQ, (vl_ops *o, const vl_t *x, size_t n, double *out), (p->in, x, n, out))
WRAP(diff_sumsq, P_DIFF_SUMSQ, (vl_ops *o, const vl_t *a, const vl_t *b, size_t n, double *out),
     (p->in, a, b, n, out))
WRAP(adamw, P_ADAMW,
     (vl_ops *o, float *master, float *m, float *v, const vl_t *grad, vl_t *param, size_t n, float lr, float b1,
      float b2, float eps, float wd, float gs, int t),
     (p->in, master, m, v, grad, param, n, lr, b1, b2, eps, wd, gs, t))
WRAP(adamw_lean, P_ADAMW_LEAN,
     (vl_ops *o, float *m, float *v, const vl_t *grad, vl_t *param, size_t n, float lr, float b1, float b2,
      float eps, float wd, float gs, int t, uint64_t seed, size_t index0),
     (p->in, m, v, grad, param, n, lr, b1, b2, eps, wd, gs, t, seed, index0))

/* memory, transfers, fences, timers: straight through */
#define PASS(name, params, args)                     \
  static int p_##name params {                       \
    vl_opsprof *p = (vl_opsprof *)o;                 \
    return p->in->name args;                         \
  }
PASS(alloc, (vl_ops *o, void **ptr, size_t bytes, const char *what), (p->in, ptr, bytes, what))
PASS(free, (vl_ops *o, void *ptr), (p->in, ptr))
PASS(put, (vl_ops *o, vl_t *d, const float *s, size_t n), (p->in, d, s, n))
PASS(get, (vl_ops *o, float *d, const vl_t *s, size_t n), (p->in, d, s, n))
PASS(put_raw, (vl_ops *o, void *d, const void *s, size_t bytes), (p->in, d, s, bytes))
PASS(get_raw, (vl_ops *o, void *d, const void *s, size_t bytes), (p->in, d, s, bytes))
PASS(sync, (vl_ops *o), (p->in))
PASS(mem_info, (vl_ops *o, size_t *f, size_t *t), (p->in, f, t))
PASS(host_alloc, (vl_ops *o, void **ptr, size_t bytes, const char *what), (p->in, ptr, bytes, what))
PASS(host_free, (vl_ops *o, void *ptr), (p->in, ptr))
PASS(put_raw_async, (vl_ops *o, void *d, const void *s, size_t bytes), (p->in, d, s, bytes))
PASS(get_raw_async, (vl_ops *o, void *d, const void *s, size_t bytes), (p->in, d, s, bytes))
PASS(put_async, (vl_ops *o, vl_t *d, const float *s, size_t n), (p->in, d, s, n))
PASS(fence_record, (vl_ops *o, int i), (p->in, i))
PASS(fence_wait, (vl_ops *o, int i), (p->in, i))
PASS(timer_record, (vl_ops *o, int i), (p->in, i))
PASS(timer_ms, (vl_ops *o, int i, int j, float *ms), (p->in, i, j, ms))

static int p_destroy(vl_ops *o) {
  VL_ERROR(VL_EINVAL, "the profiling op table is freed with vl_opsprof_free, not vl_ops_destroy");
}
static void p_phase(vl_ops *o, int phase) {
  vl_opsprof *p = (vl_opsprof *)o;
  p->phase = phase >= 0 && phase < VL_N_PHASES ? phase : VL_PHASE_OTHER;
}

int vl_opsprof_wrap(vl_ops **out, vl_opsprof **prof, vl_ops *in) {
  *out = NULL;
  *prof = NULL;
  if (!in->timer_record || !in->timer_ms) VL_ERROR(VL_ENOTSUP, "the %s backend has no timers to profile with", in->name);
  vl_opsprof *p = NULL;
  VL_CALL(vl_calloc((void **)&p, 1, sizeof *p, "op profiler"));
  vl_ops *o = &p->table;
  *o = *in; /* name, elem_size, ctx and anything not wrapped below */
  p->in = in;
  p->phase = VL_PHASE_OTHER;
#define SET(name) o->name = w_##name;
  SET(zero) SET(copy) SET(matmul_forward) SET(matmul_backward) SET(add) SET(act_forward) SET(act_backward)
  SET(swiglu_forward) SET(swiglu_backward) SET(layernorm_forward) SET(layernorm_backward) SET(rmsnorm_forward)
  SET(rmsnorm_backward) SET(qk_norm_rope_forward) SET(qk_norm_rope_backward) SET(attention_forward)
  SET(attention_backward) SET(rows_gather) SET(rows_scatter) SET(rows_zero) SET(embed_bag_forward)
  SET(embed_bag_backward) SET(lmhead_ce) SET(sumsq) SET(diff_sumsq) SET(adamw) SET(adamw_lean)
#undef SET
#define SETP(name) o->name = in->name ? p_##name : NULL;
  SETP(alloc) SETP(free) SETP(put) SETP(get) SETP(put_raw) SETP(get_raw) SETP(sync) SETP(mem_info)
  SETP(host_alloc) SETP(host_free) SETP(put_raw_async) SETP(get_raw_async) SETP(put_async) SETP(fence_record)
  SETP(fence_wait) SETP(timer_record) SETP(timer_ms)
#undef SETP
  o->destroy = p_destroy;
  o->phase = p_phase;
  *out = o;
  *prof = p;
  return VL_OK;
}

void vl_opsprof_arm(vl_opsprof *p) {
  p->armed = 1;
  p->n_calls = 0;
}
void vl_opsprof_disarm(vl_opsprof *p) { p->armed = 0; }

int vl_opsprof_collect(vl_opsprof *p) {
  if (p->err) VL_ERROR(VL_ECUDA, "op profiler: a timer could not be recorded");
  for (int i = 0; i < p->n_calls; i++) {
    const call_rec *c = &p->calls[i];
    float ms = 0;
    VL_CALL(p->in->timer_ms(p->in, c->timer, c->timer + 1, &ms));
    p->ms[c->op][c->phase] += ms;
    p->count[c->op][c->phase]++;
  }
  if (p->n_calls) p->batches++;
  p->n_calls = 0;
  return VL_OK;
}

typedef struct {
  const char *a, *b;
  long calls;
  double ms;
} row;
static int by_ms(const void *x, const void *y) {
  const double d = ((const row *)y)->ms - ((const row *)x)->ms;
  return d > 0 ? 1 : d < 0 ? -1 : 0;
}
static void table(FILE *f, row *r, int n, double total, const char *h1, const char *h2) {
  qsort(r, (size_t)n, sizeof *r, by_ms);
  fprintf(f, "  %-12s %-22s %7s %10s %7s\n", h1, h2, "calls", "total ms", "share");
  for (int i = 0; i < n; i++)
    if (r[i].calls)
      fprintf(f, "  %-12s %-22s %7ld %10.3f %6.1f%%\n", r[i].a, r[i].b, r[i].calls, r[i].ms,
              total > 0 ? 100.0 * r[i].ms / total : 0.0);
}

void vl_opsprof_print(const vl_opsprof *p, FILE *f, const char *title) {
  static row r[P_N * VL_N_PHASES];
  double total = 0;
  int n = 0;
  const int mb = p->batches > 0 ? p->batches : 1;
  for (int o = 0; o < P_N; o++)
    for (int ph = 0; ph < VL_N_PHASES; ph++) {
      r[n++] = (row){phase_name[ph], op_name[o], p->count[o][ph] / mb, p->ms[o][ph] / mb};
      total += p->ms[o][ph] / mb;
    }
  fprintf(f, "per-op profile (%s): time between timers around each op call (CUDA: events on the stream), ms per micro-batch "
          "(mean of %d); op sum %.3f ms%s\n", title, p->batches, total, p->dropped ? " (some calls dropped)" : "");
  fprintf(f, " by phase and op:\n");
  table(f, r, n, total, "phase", "op");
  n = 0;
  for (int o = 0; o < P_N; o++) {
    row x = {"", op_name[o], 0, 0};
    for (int ph = 0; ph < VL_N_PHASES; ph++) { x.calls += p->count[o][ph] / mb; x.ms += p->ms[o][ph] / mb; }
    r[n++] = x;
  }
  fprintf(f, " by op:\n");
  table(f, r, n, total, "", "op");
  n = 0;
  for (int ph = 0; ph < VL_N_PHASES; ph++) {
    row x = {phase_name[ph], "", 0, 0};
    for (int o = 0; o < P_N; o++) { x.calls += p->count[o][ph] / mb; x.ms += p->ms[o][ph] / mb; }
    r[n++] = x;
  }
  fprintf(f, " by phase:\n");
  table(f, r, n, total, "phase", "");
}

void vl_opsprof_free(vl_opsprof *p) { free(p); }
