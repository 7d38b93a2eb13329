/* optim: ZeRO-1 AdamW step (see optim.h). */
#include "optim.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "err.h"
#include "sround.h"

double vl_optim_lr(const vl_train_config *t, int step) {
  const int w = t->warmup_steps, total = t->steps;
  if (step < w) return t->lr * (double)step / (double)(w > 1 ? w : 1);
  switch (t->schedule) {
  case VL_SCHED_CONSTANT: return t->lr;
  case VL_SCHED_LINEAR: {
    double f = (double)(total - step) / (double)(total - w > 1 ? total - w : 1);
    return t->lr * (f > 0 ? f : 0);
  }
  case VL_SCHED_COSINE: default: {
    double progress = (double)(step - w) / (double)(total - w > 1 ? total - w : 1);
    double f = 0.5 * (1.0 + cos(M_PI * 2.0 * 0.5 * progress));
    return t->lr * (f > 0 ? f : 0);
  }
  }
}

size_t vl_optim_padded_size(size_t n, int world) {
  const size_t W = (size_t)world;
  return (n + W - 1) / W * W;
}

void vl_optim_shard_range(size_t n, int world, int rank, size_t *begin, size_t *mine) {
  const size_t shard = vl_optim_padded_size(n, world) / (size_t)world;
  *begin = shard * (size_t)rank;
  *mine = *begin < n ? (n - *begin < shard ? n - *begin : shard) : 0;
}

int vl_optim_create(vl_optim *o, const vl_model *m, vl_ops *ops, vl_comm *comm,
                    const vl_train_config *cfg, const float *shard_init) {
  memset(o, 0, sizeof *o);
  o->m = m; o->ops = ops; o->comm = comm; o->cfg = *cfg;
  const size_t W = (size_t)comm->size;
  o->n = m->n_elements;
  o->padded = vl_optim_padded_size(o->n, comm->size);
  o->shard = o->padded / W;
  o->begin = o->shard * (size_t)comm->rank;
  o->lean = cfg->optimizer == VL_OPTIM_LEAN;
  if (o->lean && !ops->adamw_lean)
    VL_ERROR(VL_ENOTSUP, "the %s backend has no lean AdamW (train.optimizer: lean)", ops->name);
  VL_CALL(ops->alloc(ops, (void **)&o->mom1, o->shard * sizeof(float), "AdamW m shard"));
  VL_CALL(ops->alloc(ops, (void **)&o->mom2, o->shard * sizeof(float), "AdamW v shard"));
  VL_CALL(ops->zero(ops, o->mom1, o->shard * sizeof(float)));
  VL_CALL(ops->zero(ops, o->mom2, o->shard * sizeof(float)));
  if (o->lean) return VL_OK; /* the working weights are the only copy */
  VL_CALL(ops->alloc(ops, (void **)&o->master, o->shard * sizeof(float), "fp32 master shard"));
  VL_CALL(ops->zero(ops, o->master, o->shard * sizeof(float)));
  size_t mine = vl_optim_mine(o);
  if (mine) VL_CALL(ops->put_raw(ops, o->master, shard_init, mine * sizeof(float)));
  return VL_OK;
}

size_t vl_optim_mine(const vl_optim *o) {
  size_t begin, mine;
  vl_optim_shard_range(o->n, o->comm->size, o->comm->rank, &begin, &mine);
  return mine;
}

void vl_optim_bind(vl_optim *o, vl_graph *g) { o->work = g->params; }

void vl_optim_destroy(vl_optim *o) {
  if (!o->ops) return;
  if (o->ovl_graph) o->ovl_graph->grad_ready = NULL;
  free(o->ovl_done);
  void *p[] = {o->master, o->mom1, o->mom2};
  for (int i = 0; i < 3; i++)
    if (p[i]) o->ops->free(o->ops, p[i]);
  memset(o, 0, sizeof *o);
}

/* ---- overlapped reduction ---- */

static vl_comm_dtype comm_dtype(const vl_optim *o) {
  return o->ops->elem_size == 2 ? VL_COMM_BF16 : VL_COMM_F32;
}

/* graph.h grad_ready: elements [a, b) are final; reduce them to their owners. */
static int bucket_ready(void *ctx, size_t a, size_t b) {
  vl_optim *o = ctx;
  vl_graph *g = o->ovl_graph;
  if (!g) VL_ERROR(VL_EINVAL, "a gradient bucket came while the optimizer was not armed");
  if (b == o->n) b = o->padded; /* the padded tail goes with the last bucket */
  if (a >= b || b > o->padded)
    VL_ERROR(VL_EINVAL, "gradient bucket [%zu, %zu) outside the block of %zu elements", a, b,
             o->padded);
  if (o->ovl_n == o->ovl_cap) {
    int cap = o->ovl_cap ? 2 * o->ovl_cap : 64;
    void *p = realloc(o->ovl_done, (size_t)cap * sizeof *o->ovl_done);
    if (!p) VL_ERROR(VL_ENOMEM, "list of %d reduced gradient buckets", cap);
    o->ovl_done = p;
    o->ovl_cap = cap;
  }
  o->ovl_done[o->ovl_n][0] = a;
  o->ovl_done[o->ovl_n][1] = b;
  o->ovl_n++;
  int all_frozen = 1;
  for (int i = 0; i < o->m->n_params && all_frozen; i++) {
    const vl_param *p = &o->m->params[i];
    if (p->offset < b && p->offset + p->numel > a && !p->frozen) all_frozen = 0;
  }
  if (all_frozen) return VL_OK; /* zero on every rank: the sum is what is there */
  vl_ops *ops = o->ops;
  VL_CALL(vl_comm_wait_compute(o->comm, ops->compute_stream ? ops->compute_stream(ops) : NULL));
  VL_CALL(vl_comm_reduce_range_to_owners(o->comm, comm_dtype(o), g->grads, a, b, o->shard));
  return VL_OK;
}

int vl_optim_overlap_begin(vl_optim *o, vl_graph *g) {
  if (g->n_alloc < o->padded)
    VL_ERROR(VL_EINVAL, "the graph's parameter block holds %zu elements, ZeRO-1 needs %zu "
             "(create it with vl_graph_create_padded)", g->n_alloc, o->padded);
  o->ovl_graph = g;
  o->ovl_n = 0;
  g->grad_ready = bucket_ready;
  g->grad_ready_ctx = o;
  return VL_OK;
}

static int cmp_range(const void *x, const void *y) {
  const size_t *a = x, *b = y;
  return a[0] < b[0] ? -1 : a[0] > b[0];
}

/* The whole block summed into the owners' shards: the reduce-scatter, or,
 * after an armed backward, the ranges no bucket covered; then the wait. */
static int reduce_grads(vl_optim *o, vl_graph *g) {
  const vl_comm_dtype dt = comm_dtype(o);
  if (o->ovl_n == 0) {
    VL_CALL(vl_comm_reduce_scatter_inplace(o->comm, dt, g->grads, o->shard));
  } else {
    qsort(o->ovl_done, (size_t)o->ovl_n, sizeof *o->ovl_done, cmp_range);
    size_t next = 0; /* first element not covered yet */
    for (int i = 0; i < o->ovl_n; i++) {
      const size_t a = o->ovl_done[i][0], b = o->ovl_done[i][1];
      if (a < next)
        VL_ERROR(VL_EINVAL, "gradient buckets overlap at elements [%zu, %zu): they would be "
                 "summed twice", a, next < b ? next : b);
      VL_CALL(vl_comm_reduce_range_to_owners(o->comm, dt, g->grads, next, a, o->shard));
      next = b;
    }
    VL_CALL(vl_comm_reduce_range_to_owners(o->comm, dt, g->grads, next, o->padded, o->shard));
  }
  VL_CALL(vl_comm_sync(o->comm));
  return VL_OK;
}

int vl_optim_step(vl_optim *o, vl_graph *g, int force_skip, vl_optim_stats *st) {
  vl_ops *ops = o->ops;
  const size_t el = ops->elem_size;
  const vl_comm_dtype dt = el == 2 ? VL_COMM_BF16 : VL_COMM_F32;
  if (g->n_alloc < o->padded)
    VL_ERROR(VL_EINVAL, "the graph's parameter block holds %zu elements, ZeRO-1 needs %zu "
             "(create it with vl_graph_create_padded)", g->n_alloc, o->padded);
  double *want_t[3] = {st->tensor_grad_norm, st->tensor_param_norm, st->tensor_update_ratio};
  double *want_r = st->rank_grad_norm;
  const int np = o->m->n_params, detail = want_t[0] || want_t[1] || want_t[2] || want_r;
  if (o->ovl_graph) o->ovl_graph->grad_ready = NULL; /* disarm */
  o->ovl_graph = NULL;
  const int overlapped = o->ovl_n;
  if (overlapped) o->overlapped_steps++;
  if (overlapped && detail) {
    o->ovl_n = 0;
    VL_ERROR(VL_EINVAL, "gradient statistics were asked for a step whose gradients were "
             "reduced during the backward (train.overlap_grad_reduce): the per-rank norms "
             "need the local gradients; do not arm the overlap on statistics steps");
  }
  /* local gradient norms before the reduction (per rank; noise scale) */
  double local = 0;
  if (detail) {
    VL_CALL(ops->sumsq(ops, g->grads, o->n, &local));
    for (int r = 0; r < o->comm->size && want_r; r++) want_r[r] = 0;
    if (want_r) want_r[o->comm->rank] = local;
    if (want_r) VL_CALL(vl_comm_allreduce_double(o->comm, want_r, o->comm->size, VL_COMM_SUM));
    for (int r = 0; r < o->comm->size && want_r; r++) want_r[r] = sqrt(want_r[r]);
  }
  /* gradients: summed over ranks, in place, each rank keeping its shard */
  VL_CALL(ops->sync(ops));
  {
    int rrc = o->comm->size > 1 ? reduce_grads(o, g) : VL_OK;
    o->ovl_n = 0; /* the next step starts unarmed, also after a failure */
    VL_CALL(rrc);
  }
  vl_t *grad_shard = (char *)g->grads + o->begin * el;
  vl_t *out_shard = (char *)g->params + o->begin * el;
  /* global norm from the shards */
  double ss = 0;
  size_t mine = vl_optim_mine(o);
  if (mine) VL_CALL(ops->sumsq(ops, grad_shard, mine, &ss));
  VL_CALL(vl_comm_allreduce_double(o->comm, &ss, 1, VL_COMM_SUM));
  const double norm = sqrt(ss);
  double coef = 1.0;
  if (o->cfg.grad_clip > 0 && norm > o->cfg.grad_clip) coef = o->cfg.grad_clip / (norm + 1e-6);
  {
    double bad = isfinite(local) ? 0 : 1;
    if (detail) VL_CALL(vl_comm_allreduce_double(o->comm, &bad, 1, VL_COMM_SUM));
    double *keep[4] = {st->tensor_grad_norm, st->tensor_param_norm, st->tensor_update_ratio,
                       st->rank_grad_norm};
    memset(st, 0, sizeof *st);
    st->tensor_grad_norm = keep[0]; st->tensor_param_norm = keep[1];
    st->tensor_update_ratio = keep[2]; st->rank_grad_norm = keep[3];
    st->nonfinite_ranks = (int)bad;
  }
  st->grad_norm = norm;
  if (!isfinite(norm) || force_skip) {
    if (o->cfg.nonfinite == VL_NONFINITE_STOP)
      VL_ERROR(VL_EINVAL, "step %d: the %s is not finite (train.nonfinite: stop)", o->step + 1,
               force_skip ? "loss" : "gradient norm");
    VL_CALL(ops->zero(ops, g->grads, g->n_alloc * el));
    VL_CALL(ops->sync(ops));
    st->skipped = 1;
    st->lr = vl_optim_lr(&o->cfg, o->step);
    return VL_OK;
  }
  const double lr = vl_optim_lr(&o->cfg, o->step);
  o->step++;
  /* statistics need the weights before the update: a shard copy on those steps */
  vl_t *old = NULL;
  if (detail && mine) {
    VL_CALL(ops->alloc(ops, (void **)&old, mine * el, "statistics: weights before the update"));
    VL_CALL(ops->copy(ops, old, out_shard, mine * el));
  }
  /* AdamW on my shard, one call per parameter piece (decay per parameter);
   * frozen parameters are left as they are */
  int rc = VL_OK;
  const uint64_t seed = vl_sr_step_seed(o->cfg.seed, o->step);
  for (int i = 0; i < np && mine && rc == VL_OK; i++) {
    const vl_param *p = &o->m->params[i];
    size_t a = p->offset > o->begin ? p->offset : o->begin;
    size_t b = p->offset + p->numel < o->begin + mine ? p->offset + p->numel : o->begin + mine;
    if (a >= b || p->frozen) continue;
    size_t off = a - o->begin;
    float wd = p->no_decay ? 0.0f : (float)o->cfg.weight_decay;
    if (o->lean)
      rc = ops->adamw_lean(ops, o->mom1 + off, o->mom2 + off, (char *)grad_shard + off * el,
                           (char *)out_shard + off * el, b - a, (float)lr,
                           (float)o->cfg.adam_beta1, (float)o->cfg.adam_beta2,
                           (float)o->cfg.adam_eps, wd, (float)coef, o->step, seed, a);
    else
      rc = ops->adamw(ops, o->master + off, o->mom1 + off, o->mom2 + off,
                      (char *)grad_shard + off * el, (char *)out_shard + off * el, b - a,
                      (float)lr, (float)o->cfg.adam_beta1, (float)o->cfg.adam_beta2,
                      (float)o->cfg.adam_eps, wd, (float)coef, o->step);
  }
  if (rc == VL_OK) rc = ops->sync(ops);
  if (rc == VL_OK && detail) { /* per-tensor norms from the shard pieces, summed over ranks */
    double *acc = calloc((size_t)3 * np + 1, sizeof(double));
    if (!acc) rc = vl_err_raise(VL_ENOMEM, __FILE__, __LINE__, __func__, "statistics");
    for (int i = 0; i < np && mine && rc == VL_OK; i++) {
      const vl_param *p = &o->m->params[i];
      size_t a = p->offset > o->begin ? p->offset : o->begin;
      size_t b = p->offset + p->numel < o->begin + mine ? p->offset + p->numel : o->begin + mine;
      if (a >= b) continue;
      size_t off = a - o->begin;
      const char *nw = (const char *)out_shard + off * el, *ow = (const char *)old + off * el;
      rc = ops->sumsq(ops, (const char *)grad_shard + off * el, b - a, &acc[i]);
      if (rc == VL_OK) rc = ops->sumsq(ops, nw, b - a, &acc[np + i]);
      if (rc == VL_OK) rc = ops->diff_sumsq(ops, nw, ow, b - a, &acc[2 * np + i]);
    }
    if (rc == VL_OK) rc = vl_comm_allreduce_double(o->comm, acc, 3 * np, VL_COMM_SUM);
    for (int i = 0; i < np && rc == VL_OK; i++) { /* gradient norms before clipping */
      if (want_t[0]) want_t[0][i] = sqrt(acc[i]);
      if (want_t[1]) want_t[1][i] = sqrt(acc[np + i]);
      if (want_t[2]) want_t[2][i] = acc[np + i] > 0 ? sqrt(acc[2 * np + i] / acc[np + i]) : 0.0;
    }
    free(acc);
  }
  if (old) ops->free(ops, old);
  if (rc) return vl_err_trace(rc, __FILE__, __LINE__, __func__);
  /* every rank gets every updated shard, in place */
  if (o->comm->size > 1) {
    VL_CALL(vl_comm_allgather_inplace(o->comm, dt, g->params, o->shard));
    VL_CALL(vl_comm_sync(o->comm));
  }
  VL_CALL(ops->zero(ops, g->grads, g->n_alloc * el));
  VL_CALL(ops->sync(ops));
  st->lr = lr;
  st->clip_coef = coef;
  return VL_OK;
}
