/* train: the training loop (see train.h). */
#include "train.h"

#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/stat.h>
#include <unistd.h>

#include "batch.h"
#include "ckpt.h"
#include "err.h"
#include "synth.h"

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

void vl_train_data_path(const vl_config *cfg, char *out, size_t n) {
  const char *d = cfg->run.data, *slash = strrchr(cfg->source, '/');
  if (!d[0] || d[0] == '/' || !slash) snprintf(out, n, "%s", d);
  else snprintf(out, n, "%.*s/%s", (int)(slash - cfg->source), cfg->source, d);
}

/* The background source of training samples: the dataset's, or generated
 * ones (the same (seed, g) samples the step made itself before). */
static int start_prefetch(vl_trainer *t) {
  const vl_train_config *tc = &t->cfg->train;
  const int per_step = tc->grad_accum * tc->micro_batch;
  if (t->train_set) {
    VL_CALL(vl_prefetch_start(&t->prefetch, t->train_set, tc->seed, per_step));
    return VL_OK;
  }
  vl_prefetch_synth ps = {&t->cfg->model, tc->synth_grid[0], tc->synth_grid[1], tc->synth_text,
                          tc->synth_answer, tc->max_seq_len, tc->max_vision_patches};
  VL_CALL(vl_prefetch_start_synth(&t->prefetch, &ps, tc->seed, per_step));
  return VL_OK;
}

/* Opens run.data's splits, checks them against the model and the run's
 * limits, and starts the prefetch thread (also of generated samples). */
static int open_data(vl_trainer *t) {
  const vl_train_config *tc = &t->cfg->train;
  const char *path = t->data_path;
  const int per_step = tc->grad_accum * tc->micro_batch;
  vl_train_data_path(t->cfg, t->data_path, sizeof t->data_path);
  VL_CALL(vl_calloc((void **)&t->slots, (size_t)per_step, sizeof *t->slots, "step samples"));
  if (!path[0]) {
    VL_CALL(start_prefetch(t));
    return VL_OK;
  }
  VL_CALL(vl_dataset_open(&t->train_set, path, "train"));
  VL_CALL(vl_dataset_check(t->train_set, &t->cfg->model));
  if (vl_dataset_size(t->train_set) == 0) VL_ERROR(VL_EINVAL, "%s: the \"train\" split has no samples", path);
  int has = 0;
  VL_CALL(vl_dataset_has_split(path, "val", &has));
  if (has) VL_CALL(vl_dataset_open(&t->val_set, path, "val"));
  for (int k = 0; k < 1 + (t->val_set != NULL); k++) {
    const vl_dataset *d = k ? t->val_set : t->train_set;
    long mt, mp, it, ip;
    vl_dataset_limits(d, &mt, &mp, &it, &ip);
    if (mt > tc->max_seq_len)
      VL_ERROR(VL_EINVAL, "%s: %s sample %ld has %ld tokens, more than train.max_seq_len %d", path,
               k ? "val" : "train", it, mt, tc->max_seq_len);
    if (mp > tc->max_vision_patches)
      VL_ERROR(VL_EINVAL, "%s: %s sample %ld has %ld vision patches, more than train.max_vision_patches %d", path,
               k ? "val" : "train", ip, mp, tc->max_vision_patches);
  }
  VL_CALL(start_prefetch(t));
  return VL_OK;
}

/* full: the whole block (n floats); else shard: this rank's ZeRO-1 shard, and
 * the working weights are all-gathered from the shards. */
static int trainer_create(vl_trainer *t, const vl_config *cfg, const vl_model *m, vl_comm *comm,
                          vl_ops *ops, const float *full, const float *shard) {
  memset(t, 0, sizeof *t);
  const char *prof = getenv("VL_PROFILE");
  if (prof && atoi(prof) == 2) {
    t->ops_in = ops;
    VL_CALL(vl_opsprof_wrap(&ops, &t->prof, ops));
  }
  t->cfg = cfg; t->m = m; t->comm = comm; t->ops = ops;
  const vl_train_config *tc = &cfg->train;
  VL_CALL(vl_graph_create_opts(&t->g, m, ops, tc->max_seq_len * tc->micro_batch,
                               tc->max_vision_patches * tc->micro_batch, 0,
                               vl_optim_padded_size(m->n_elements, comm->size), tc->recompute));
  size_t begin, mine;
  vl_optim_shard_range(m->n_elements, comm->size, comm->rank, &begin, &mine);
  if (full) {
    VL_CALL(ops->put(ops, t->g.params, full, m->n_elements));
  } else {
    const size_t padded = vl_optim_padded_size(m->n_elements, comm->size);
    VL_CALL(ops->zero(ops, t->g.params, padded * ops->elem_size));
    if (mine) VL_CALL(ops->put(ops, (char *)t->g.params + begin * ops->elem_size, shard, mine));
    if (comm->size > 1) {
      VL_CALL(ops->sync(ops));
      VL_CALL(vl_comm_allgather_inplace(comm, ops->elem_size == 2 ? VL_COMM_BF16 : VL_COMM_F32, t->g.params,
                                        padded / (size_t)comm->size));
      VL_CALL(vl_comm_sync(comm));
    }
  }
  VL_CALL(ops->zero(ops, t->g.grads, m->n_elements * ops->elem_size));
  VL_CALL(vl_optim_create(&t->opt, m, ops, comm, tc, full ? full + begin : shard));
  vl_optim_bind(&t->opt, &t->g);
  VL_CALL(ops->host_alloc(ops, (void **)&t->loss_host,
                          (size_t)tc->grad_accum * tc->max_seq_len * tc->micro_batch * sizeof(float),
                          "per-token losses"));
  /* every rank opens the data; they agree before anything collective follows */
  int rc = open_data(t);
  double bad = rc != VL_OK;
  int crc = vl_comm_allreduce_double(comm, &bad, 1, VL_COMM_MAX);
  if (rc || crc || bad > 0) {
    vl_trainer_destroy(t);
    if (rc) return vl_err_trace(rc, __FILE__, __LINE__, __func__);
    VL_CALL(crc);
    VL_ERROR(VL_EIO, "another rank could not open the data %s", cfg->run.data);
  }
  return VL_OK;
}

int vl_trainer_create(vl_trainer *t, const vl_config *cfg, const vl_model *m, vl_comm *comm,
                      vl_ops *ops, const float *host_params) {
  return trainer_create(t, cfg, m, comm, ops, host_params, NULL);
}

int vl_trainer_create_shard(vl_trainer *t, const vl_config *cfg, const vl_model *m, vl_comm *comm,
                            vl_ops *ops, const float *shard_params) {
  return trainer_create(t, cfg, m, comm, ops, NULL, shard_params);
}

int vl_trainer_resume(vl_trainer *t, const char *path) {
  vl_ckpt_cursor cur;
  VL_CALL(vl_ckpt_load(path, &t->opt, t->g.params, &cur));
  t->step = t->opt.step;
  const vl_train_config *tc = &t->cfg->train;
  const long long size = t->train_set ? vl_dataset_size(t->train_set) : 0;
  if (cur.samples < 0) { /* a checkpoint from before the cursor: the same global batch is assumed */
    t->samples_done = (uint64_t)t->step * tc->grad_accum * tc->micro_batch * t->comm->size;
  } else {
    if (cur.seed != (unsigned long long)tc->seed)
      VL_ERROR(VL_EINVAL, "%s: its samples were drawn with seed %llu, train.seed is %llu: the sample sequence "
               "would not continue (set train.seed: %llu)", path, cur.seed, (unsigned long long)tc->seed, cur.seed);
    if (cur.size != size)
      VL_ERROR(VL_EINVAL, "%s: its data cursor is for a training split of %lld samples, this run's has %lld "
               "(0 = generated samples): the sample sequence would not continue", path, cur.size, size);
    t->samples_done = (uint64_t)cur.samples;
  }
  /* requests made before the resume are for the wrong samples */
  vl_prefetch_stop(t->prefetch);
  t->prefetch = NULL;
  t->next_ready = t->pre_staged = 0;
  VL_CALL(start_prefetch(t));
  t->req_cursor = t->samples_done;
  return VL_OK;
}

int vl_trainer_save(vl_trainer *t, const char *out_dir, int keep) {
  vl_ckpt_cursor cur = {(long long)t->samples_done, (unsigned long long)t->cfg->train.seed,
                        t->train_set ? vl_dataset_size(t->train_set) : 0};
  VL_CALL(vl_ckpt_save(out_dir, &t->opt, t->cfg, keep, &cur));
  return VL_OK;
}

void vl_trainer_destroy(vl_trainer *t) {
  vl_prefetch_stop(t->prefetch);
  if (t->slots)
    for (int i = 0; i < t->cfg->train.grad_accum * t->cfg->train.micro_batch; i++)
      vl_dataset_sample_free(&t->slots[i]);
  free(t->slots);
  if (t->loss_host) t->ops->host_free(t->ops, t->loss_host);
  vl_dataset_close(t->train_set);
  vl_dataset_close(t->val_set);
  vl_optim_destroy(&t->opt);
  vl_graph_destroy(&t->g);
  vl_opsprof_free(t->prof);
  memset(t, 0, sizeof *t);
}

int vl_trainer_params(vl_trainer *t, float *host) {
  return t->ops->get(t->ops, host, t->g.params, t->m->n_elements);
}

/* Requests from the prefetch the samples of this rank for the steps whose
 * cursor is <= upto. */
static int request_until(vl_trainer *t, uint64_t upto) {
  const vl_train_config *tc = &t->cfg->train;
  const int A = tc->grad_accum, mb = tc->micro_batch, W = t->comm->size, rank = t->comm->rank;
  const uint64_t G = (uint64_t)A * mb * W;
  for (; t->req_cursor <= upto; t->req_cursor += G)
    for (int a = 0; a < A; a++)
      for (int k = 0; k < mb; k++)
        VL_CALL(vl_prefetch_request(t->prefetch, t->req_cursor + ((uint64_t)a * W + rank) * mb + k));
  return VL_OK;
}

/* Takes this rank's samples of the step at cursor C into slots. */
static int take_step(vl_trainer *t, uint64_t C, vl_dataset_sample *slots) {
  const vl_train_config *tc = &t->cfg->train;
  const int A = tc->grad_accum, mb = tc->micro_batch, W = t->comm->size, rank = t->comm->rank;
  for (int a = 0; a < A; a++)
    for (int k = 0; k < mb; k++)
      VL_CALL(vl_prefetch_take(t->prefetch, C + ((uint64_t)a * W + rank) * mb + k, &slots[a * mb + k]));
  return VL_OK;
}

/* Builds micro-batch a of the step from its samples and copies it into the
 * graph's host staging (host work only: it runs while the GPU computes). */
static int stage_micro(vl_trainer *t, const vl_sample **view, vl_sample *samples, int a) {
  const int mb = t->cfg->train.micro_batch;
  for (int k = 0; k < mb; k++) samples[k] = *view[a * mb + k];
  vl_batch b;
  VL_CALL(vl_batch_build(&b, &t->cfg->model, samples, mb));
  int rc = vl_graph_stage_batch(&t->g, &b);
  vl_batch_free(&b);
  return rc;
}

/* Between the forward and the backward of the step's last micro-batch:
 * when the samples of the next step (cursor C) are all read, takes them and
 * stages its first micro-batch, so that the next step starts on the GPU at
 * once.  Never waits for the prefetch (then the next step takes them); a
 * failure is kept for the next step, where every rank learns of it (a
 * failed build: that step builds again and reports it). */
static int take_ahead(vl_trainer *t, uint64_t C, const vl_sample **view, vl_sample *samples) {
  const int n = t->cfg->train.grad_accum * t->cfg->train.micro_batch;
  if (!vl_prefetch_ready(t->prefetch, n)) return VL_OK;
  t->next_rc = take_step(t, C, t->slots); /* this step's are all staged: free */
  if (t->next_rc) snprintf(t->next_err, sizeof t->next_err, "%s", vl_err_last());
  t->next_ready = 1;
  if (!t->next_rc) {
    for (int i = 0; i < n; i++) view[i] = &t->slots[i].sample;
    t->pre_staged = stage_micro(t, view, samples, 0) == VL_OK;
  }
  return VL_OK;
}

int vl_trainer_step(vl_trainer *t, vl_step_report *r) {
  const vl_train_config *tc = &t->cfg->train;
  const int A = tc->grad_accum, mb = tc->micro_batch, W = t->comm->size, rank = t->comm->rank;
  const uint64_t G = (uint64_t)A * mb * W, C = t->samples_done;
  const double t0 = now();
  /* this rank's samples for the whole step, to agree on the token count */
  const vl_sample **view = calloc((size_t)2 * A * mb, sizeof *view), **view_next = view + (size_t)A * mb;
  vl_sample *samples = calloc((size_t)mb, sizeof *samples);
  int *Ta = calloc((size_t)A, sizeof *Ta);
  if (!samples || !view || !Ta) { free(samples); free(view); free(Ta); VL_ERROR(VL_ENOMEM, "step samples"); }
  int rc = VL_OK;
  double counts[3] = {0, 0, 0}; /* supervised tokens, loss sum, LLM tokens */
  double local_targets = 0;      /* this rank's supervised tokens */
  /* the samples of this step and the next are read (or generated) ahead */
  rc = request_until(t, C + G);
  /* taken during the previous step's last backward, or now */
  if (rc == VL_OK && t->next_ready) {
    t->next_ready = 0;
    rc = t->next_rc;
    if (rc) vl_err_raise(rc, __FILE__, __LINE__, __func__, "%s", t->next_err);
  } else if (rc == VL_OK) {
    t->pre_staged = 0;
    rc = take_step(t, C, t->slots);
  }
  for (int i = 0; i < A * mb && rc == VL_OK; i++) {
    const vl_sample *x = view[i] = &t->slots[i].sample;
    for (int j = 1; j < x->n_tokens; j++) counts[0] += x->labels[j] >= 0;
    counts[2] += x->n_tokens;
  }
  if (rc) t->pre_staged = 0;
  /* every rank joins the count, also after a local failure (a read error) */
  double total[2] = {rc == VL_OK ? counts[0] : 0, rc != VL_OK};
  int crc = vl_comm_allreduce_double(t->comm, total, 2, VL_COMM_SUM);
  if (rc == VL_OK && crc) rc = crc;
  if (rc == VL_OK && total[1] > 0)
    rc = vl_err_raise(VL_EIO, __FILE__, __LINE__, __func__, "another rank could not get its samples of step %d",
                      t->step + 1);
  if (rc == VL_OK) {
    local_targets = counts[0];
    const float scale = total[0] > 0 ? (float)(1.0 / total[0]) : 0.0f;
    const size_t rows = (size_t)tc->max_seq_len * mb; /* loss_host row stride */
    /* Pipelined: the forward of micro-batch a is queued, micro-batch a+1 is
     * built and staged on the host while the GPU runs it, then a's backward
     * is queued and a+1's upload after it (stream order).  The only wait is
     * at the end of the step; the losses come back with it. */
    if (!t->pre_staged) rc = stage_micro(t, view, samples, 0);
    t->pre_staged = 0;
    if (rc == VL_OK) rc = vl_graph_commit_batch(&t->g);
    /* VL_PROFILE=2: the last micro-batch of the second step (of the first if it is the only one) */
    const int prof = t->prof && !t->prof_done && (t->step >= 1 || tc->steps == 1);
    /* train.overlap_grad_reduce: the last backward reduces each bucket as it
     * finishes (optim.h); not on statistics steps (local norms needed), nor
     * when ranks share a GPU: staged collectives go through host memory
     * synchronously, so a bucket would stall the enqueueing of the backward
     * instead of overlapping it */
    const int stats_step = t->record && tc->stats_every > 0 && (t->step + 1) % tc->stats_every == 0;
    const int staged = t->comm->backend == VL_BACKEND_CUDA && t->comm->staged;
    const int overlap = tc->overlap_grad_reduce && W > 1 && !stats_step && !staged;
    for (int a = 0; a < A && rc == VL_OK; a++) {
      Ta[a] = t->g.T;
      if (prof && a == A - 1) vl_opsprof_arm(t->prof);
      rc = vl_graph_forward_async(&t->g, scale, t->loss_host + (size_t)a * rows);
      if (rc == VL_OK && a + 1 < A) rc = stage_micro(t, view, samples, a + 1);
      if (rc == VL_OK && a + 1 == A) rc = take_ahead(t, C + G, view_next, samples);
      if (rc == VL_OK && overlap && a + 1 == A) rc = vl_optim_overlap_begin(&t->opt, &t->g);
      if (rc == VL_OK) rc = vl_graph_backward(&t->g);
      if (prof && a == A - 1) vl_opsprof_disarm(t->prof);
      if (rc == VL_OK && a + 1 < A) rc = vl_graph_commit_batch(&t->g);
    }
    if (rc == VL_OK) rc = t->ops->sync(t->ops);
    if (rc == VL_OK && prof) {
      rc = vl_opsprof_collect(t->prof);
      t->prof_done = 1;
      t->prof_step = t->step + 1;
    }
    size_t fr = 0, tot = 0;
    if (rc == VL_OK && t->ops->mem_info && t->ops->mem_info(t->ops, &fr, &tot) == VL_OK &&
        tot - fr > t->peak_bytes)
      t->peak_bytes = tot - fr;
    for (int a = 0; a < A && rc == VL_OK; a++) {
      double loss = 0;
      const float *l = t->loss_host + (size_t)a * rows;
      for (int i = 0; i < Ta[a]; i++) loss += l[i];
      counts[1] += loss;
    }
    counts[0] = total[0];
  }
  free(view);
  free(samples);
  free(Ta);
  if (rc) return vl_err_trace(rc, __FILE__, __LINE__, __func__);
  double sums[3] = {counts[1], counts[2], isfinite(counts[1]) ? 0.0 : 1.0};
  VL_CALL(vl_comm_allreduce_double(t->comm, sums, 3, VL_COMM_SUM));
  /* detailed statistics every train.stats_every steps (all ranks take part) */
  const int every = tc->stats_every, np = t->m->n_params;
  const int detail = t->record && every > 0 && (t->step + 1) % every == 0;
  double *tg = NULL, *rank_tok = NULL;
  vl_optim_stats st;
  memset(&st, 0, sizeof st);
  if (detail) {
    tg = calloc((size_t)3 * np + 2 * (size_t)W + 2, sizeof(double));
    if (!tg) VL_ERROR(VL_ENOMEM, "statistics");
    st.tensor_grad_norm = tg;
    st.tensor_param_norm = tg + np;
    st.tensor_update_ratio = tg + 2 * np;
    st.rank_grad_norm = tg + 3 * np;
    rank_tok = tg + 3 * np + W;
    rank_tok[rank] = local_targets;
    int trc = vl_comm_allreduce_double(t->comm, rank_tok, W, VL_COMM_SUM);
    if (trc) { free(tg); return vl_err_trace(trc, __FILE__, __LINE__, __func__); }
  }
  const double t_fb = now() - t0;
  int orc = vl_optim_step(&t->opt, &t->g, sums[2] > 0, &st);
  if (orc) { free(tg); return vl_err_trace(orc, __FILE__, __LINE__, __func__); }
  if (st.skipped) t->skipped++;
  t->step++;
  t->samples_done += G;
  t->tokens_done += sums[1];
  r->step = t->step;
  r->targets = counts[0];
  r->loss = counts[0] > 0 ? sums[0] / counts[0] : 0.0;
  r->lr = st.lr;
  r->grad_norm = st.grad_norm;
  r->tokens = sums[1];
  r->seconds = now() - t0;
  r->microbatch_seconds = t_fb / A;
  r->optimizer_seconds = r->seconds - t_fb;
  r->peak_bytes = (double)t->peak_bytes;
  r->skipped = st.skipped;
  if (detail && t->stats) {
    /* noise scale: per-rank mean gradients G_r = g_r N / n_r (g_r is scaled by 1/N) */
    double small_sq = 0, b_small = 0;
    for (int q = 0; q < W; q++) {
      double gr = rank_tok[q] > 0 ? st.rank_grad_norm[q] * counts[0] / rank_tok[q] : 0;
      small_sq += gr * gr / W;
      b_small += rank_tok[q] / W;
    }
    vl_gradstats_row row = {t->step, r->loss, r->lr, r->tokens / r->seconds, r->grad_norm,
                            st.clip_coef, vl_noise_scale(small_sq, b_small, r->grad_norm * r->grad_norm, counts[0]),
                            st.skipped, st.nonfinite_ranks, st.tensor_grad_norm,
                            st.tensor_param_norm, st.tensor_update_ratio, st.rank_grad_norm};
    int grc = vl_gradstats_append(t->stats, &row);
    if (grc) { free(tg); return vl_err_trace(grc, __FILE__, __LINE__, __func__); }
  }
  free(tg);
  return VL_OK;
}

/* held-out samples live far from the training indices */
#define VL_EVAL_INDEX_BASE ((uint64_t)1 << 48)

/* Backend scratch for the argmax of the supervised rows, R rows at a time. */
typedef struct {
  int R;
  vl_t *h;
  int32_t *idx, *tgt;
  float *loss, *logits;
  int32_t *hidx, *htgt;
  float *hlogits;
} argmax_scratch;

static void argmax_free(vl_ops *o, argmax_scratch *a) {
  if (a->h) o->free(o, a->h);
  if (a->idx) o->free(o, a->idx);
  if (a->tgt) o->free(o, a->tgt);
  if (a->loss) o->free(o, a->loss);
  if (a->logits) o->free(o, a->logits);
  free(a->hidx); free(a->htgt); free(a->hlogits);
  memset(a, 0, sizeof *a);
}

static int argmax_alloc(vl_ops *o, argmax_scratch *a, int H, int V) {
  memset(a, 0, sizeof *a);
  a->R = 64;
  const size_t R = (size_t)a->R;
  VL_CALL(o->alloc(o, (void **)&a->h, R * H * o->elem_size, "evaluation rows"));
  VL_CALL(o->alloc(o, (void **)&a->idx, R * sizeof(int32_t), "evaluation rows"));
  VL_CALL(o->alloc(o, (void **)&a->tgt, R * sizeof(int32_t), "evaluation targets"));
  VL_CALL(o->alloc(o, (void **)&a->loss, R * sizeof(float), "evaluation losses"));
  VL_CALL(o->alloc(o, (void **)&a->logits, R * V * sizeof(float), "evaluation logits"));
  VL_CALL(vl_malloc((void **)&a->hidx, R * sizeof(int32_t), "evaluation rows"));
  VL_CALL(vl_malloc((void **)&a->htgt, R * sizeof(int32_t), "evaluation targets"));
  VL_CALL(vl_malloc((void **)&a->hlogits, R * V * sizeof(float), "evaluation logits"));
  return VL_OK;
}

/* After a forward pass over batch b (one sample): *n = its supervised
 * positions, *exact = 1 when the argmax of the logits equals the target at
 * every one of them (teacher forcing). */
static int exact_match(vl_trainer *t, const vl_batch *b, argmax_scratch *a, int *n, int *exact) {
  vl_ops *o = t->ops;
  const int H = t->m->cfg.text.hidden_size, V = t->m->cfg.text.vocab_size;
  const vl_t *W = vl_graph_param(&t->g, t->g.params, t->m->lm_head);
  *n = 0;
  *exact = 1;
  for (int i = 0; i < b->T;) {
    int r = 0;
    for (; i < b->T && r < a->R; i++)
      if (b->targets[i] >= 0) { a->hidx[r] = i; a->htgt[r] = b->targets[i]; r++; }
    if (!r) continue;
    VL_CALL(o->put_raw(o, a->idx, a->hidx, (size_t)r * sizeof(int32_t)));
    VL_CALL(o->put_raw(o, a->tgt, a->htgt, (size_t)r * sizeof(int32_t)));
    VL_CALL(o->rows_gather(o, a->h, t->g.xf, a->idx, r, H, 0));
    VL_CALL(o->lmhead_ce(o, a->loss, NULL, NULL, a->logits, a->h, W, a->tgt, r, H, V, 0.0f));
    VL_CALL(o->get_raw(o, a->hlogits, a->logits, (size_t)r * V * sizeof(float)));
    for (int q = 0; q < r; q++) {
      const float *z = a->hlogits + (size_t)q * V;
      int best = 0;
      for (int v = 1; v < V; v++)
        if (z[v] > z[best]) best = v;
      if (best != a->htgt[q]) *exact = 0;
    }
    *n += r;
  }
  return VL_OK;
}

int vl_trainer_eval(vl_trainer *t, int n, vl_eval_result *res) {
  const vl_train_config *tc = &t->cfg->train;
  t->pre_staged = 0; /* its batches go through the same staging */
  if (t->data_path[0] && !t->val_set)
    VL_ERROR(VL_EINVAL, "%s has no \"val\" split: nothing to validate on (make one with vlprep's validation option)",
             t->data_path);
  if (t->val_set && n > vl_dataset_size(t->val_set)) n = (int)vl_dataset_size(t->val_set);
  double acc[4] = {0, 0, 0, 0}; /* loss sum, supervised tokens, exact samples, samples with targets */
  argmax_scratch am;
  int rc = argmax_alloc(t->ops, &am, t->m->cfg.text.hidden_size, t->m->cfg.text.vocab_size);
  vl_dataset_sample ds;
  memset(&ds, 0, sizeof ds);
  for (int i = t->comm->rank; i < n && rc == VL_OK; i += t->comm->size) {
    vl_synth s;
    memset(&s, 0, sizeof s);
    vl_batch b;
    memset(&b, 0, sizeof b);
    double l = 0;
    const vl_sample *x = NULL;
    if (t->val_set) {
      rc = vl_dataset_read(t->val_set, i, &ds);
      x = &ds.sample;
    } else {
      rc = vl_synth_sample(&s, &t->cfg->model, tc->seed, VL_EVAL_INDEX_BASE + (uint64_t)i,
                           tc->max_seq_len, tc->max_vision_patches);
      x = &s.sample;
    }
    if (rc == VL_OK) rc = vl_batch_build(&b, &t->cfg->model, x, 1);
    if (rc == VL_OK) rc = vl_graph_set_batch(&t->g, &b);
    if (rc == VL_OK) rc = vl_graph_forward(&t->g, 0.0f, &l);
    int nt = 0, exact = 0;
    if (rc == VL_OK) rc = exact_match(t, &b, &am, &nt, &exact);
    acc[0] += l;
    acc[1] += b.n_targets;
    acc[2] += nt > 0 && exact;
    acc[3] += nt > 0;
    vl_batch_free(&b);
    vl_synth_free(&s);
  }
  vl_dataset_sample_free(&ds);
  argmax_free(t->ops, &am);
  /* every rank joins the reduction even after a local failure */
  double bad = rc != VL_OK;
  double all[5] = {acc[0], acc[1], acc[2], acc[3], bad};
  VL_CALL(vl_comm_allreduce_double(t->comm, all, 5, VL_COMM_SUM));
  if (rc) return vl_err_trace(rc, __FILE__, __LINE__, __func__);
  if (all[4] > 0) VL_ERROR(VL_EINVAL, "evaluation failed on another rank");
  res->loss = all[1] > 0 ? all[0] / all[1] : NAN;
  res->correct = (long)all[2];
  res->samples = (long)all[3];
  res->accuracy = all[3] > 0 ? all[2] / all[3] : NAN;
  return VL_OK;
}

static volatile sig_atomic_t stop_requested;
static void on_signal(int sig) { stop_requested = sig; }

void vl_train_catch_signals(void) {
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGTERM, &sa, NULL);
  sigaction(SIGUSR1, &sa, NULL);
}

static void fmt_time(char *buf, size_t n, double s) {
  if (s < 3600) snprintf(buf, n, "%dm%02ds", (int)s / 60, (int)s % 60);
  else snprintf(buf, n, "%dh%02dm", (int)s / 3600, ((int)s % 3600) / 60);
}

static int train_run(const vl_config *cfg, const vl_model *m, vl_comm *comm, vl_ops *ops,
                     const float *full, const float *shard, int *preempted);

int vl_train_run(const vl_config *cfg, const vl_model *m, vl_comm *comm, vl_ops *ops,
                 const float *host_params, int *preempted) {
  return train_run(cfg, m, comm, ops, host_params, NULL, preempted);
}

int vl_train_run_shard(const vl_config *cfg, const vl_model *m, vl_comm *comm, vl_ops *ops,
                       const float *shard_params, int *preempted) {
  return train_run(cfg, m, comm, ops, NULL, shard_params, preempted);
}

static int train_run(const vl_config *cfg, const vl_model *m, vl_comm *comm, vl_ops *ops,
                     const float *full, const float *shard, int *preempted) {
  vl_trainer t;
  *preempted = 0;
  VL_CALL(trainer_create(&t, cfg, m, comm, ops, full, shard));
  /* a progress bar only on a terminal we own: launchers (mpirun, srun) give
   * ranks a pty even when the job's output goes to a file */
  const char *bar = getenv("VL_PROGRESS_BAR");
  const int launched = getenv("OMPI_COMM_WORLD_SIZE") || getenv("SLURM_PROCID") || getenv("PMI_RANK");
  const int S = cfg->train.steps, tty = bar ? atoi(bar) != 0 : (isatty(1) && !launched);
  if (cfg->run.resume) {
    char path[VL_PATH_MAX + 64];
    int rc0 = vl_ckpt_latest(cfg->run.out_dir, path, sizeof path);
    if (rc0 == VL_OK && path[0]) rc0 = vl_trainer_resume(&t, path);
    if (rc0) { vl_trainer_destroy(&t); return vl_err_trace(rc0, __FILE__, __LINE__, __func__); }
    if (path[0] && comm->rank == 0) printf("resumed from %s at step %d\n", path, t.step);
  }
  const double start = now();
  int rc = VL_OK;
  if (comm->rank == 0) {
    if (t.train_set)
      printf("data: %s: %ld training samples (seed %llu, %llu consumed), %s\n", t.data_path,
             vl_dataset_size(t.train_set), (unsigned long long)cfg->train.seed, (unsigned long long)t.samples_done,
             t.val_set ? "a validation split" : "no validation split (no evaluation)");
    else
      printf("data: generated samples (run.data is empty)\n");
    if (t.val_set) printf("validation: %ld samples in the val split, %d per evaluation\n",
                          vl_dataset_size(t.val_set), cfg->train.eval_samples < vl_dataset_size(t.val_set)
                              ? cfg->train.eval_samples : (int)vl_dataset_size(t.val_set));
  }
  if (comm->rank == 0)
    printf("training: %d steps, global batch %d = %d ranks x %d micro-batch x %d accumulation\n", S,
           comm->size * cfg->train.micro_batch * cfg->train.grad_accum, comm->size,
           cfg->train.micro_batch, cfg->train.grad_accum);
  if (cfg->train.stats_every > 0) {
    t.record = 1;
    if (comm->rank == 0) {
      char sp[VL_PATH_MAX + 32];
      snprintf(sp, sizeof sp, "%s/gradstats.h5", cfg->run.out_dir);
      mkdir(cfg->run.out_dir, 0755);
      rc = vl_gradstats_open(&t.stats, sp, m, comm->size, t.step > 0, t.step);
    }
    double bad = rc;
    int rc2 = vl_comm_allreduce_double(comm, &bad, 1, VL_COMM_MAX);
    if (rc2 || bad) {
      vl_gradstats_close(t.stats);
      vl_trainer_destroy(&t);
      if (rc) return vl_err_trace(rc, __FILE__, __LINE__, __func__);
      VL_ERROR(VL_EHDF5, "rank 0 could not open the statistics file");
    }
  }
  const int every = cfg->run.checkpoint_every;
  for (int s = t.step; s < S && rc == VL_OK; s++) {
    vl_step_report r;
    rc = vl_trainer_step(&t, &r);
    double stop = stop_requested;
    if (rc == VL_OK) rc = vl_comm_allreduce_double(comm, &stop, 1, VL_COMM_MAX);
    if (rc == VL_OK && stop > 0) *preempted = 1;
    if (rc == VL_OK && ((every > 0 && r.step % every == 0) || (r.step == S && cfg->run.save_final) || *preempted)) {
      rc = vl_trainer_save(&t, cfg->run.out_dir, cfg->run.keep_checkpoints);
      if (rc == VL_OK && comm->rank == 0 && !tty)
        printf("checkpoint %s/ckpt/step_%07d.h5\n", cfg->run.out_dir, r.step);
    }
    if (rc == VL_OK && *preempted && comm->rank == 0)
      printf("%sstopping at step %d on signal %d: checkpoint written, exit %d (requeue to continue)\n",
             tty ? "\n" : "", r.step, (int)stop, VL_EXIT_PREEMPTED);
    if (*preempted) break;
    const int ev = cfg->train.eval_every;
    const int can_eval = cfg->train.eval_samples > 0 && (t.val_set || !t.train_set);
    if (rc == VL_OK && can_eval && ((ev > 0 && r.step % ev == 0) || r.step == S)) {
      vl_eval_result e;
      rc = vl_trainer_eval(&t, cfg->train.eval_samples, &e);
      if (rc == VL_OK && t.stats) rc = vl_gradstats_eval(t.stats, r.step, e.loss, e.accuracy);
      if (rc == VL_OK && comm->rank == 0)
        printf("%seval step %d: val loss %.4f, exact-match accuracy %.1f%% (%ld/%ld)\n", tty ? "\n" : "", r.step,
               e.loss, 100.0 * e.accuracy, e.correct, e.samples);
    }
    if (rc || comm->rank != 0) continue;
    double elapsed = now() - start, eta = elapsed / r.step * (S - r.step);
    char e1[32], e2[32];
    fmt_time(e1, sizeof e1, elapsed);
    fmt_time(e2, sizeof e2, eta);
    if (tty) {
      int w = 20, done = (int)((double)r.step / S * w);
      printf("\r[%.*s%*s] ", done, "####################", w - done, "");
    }
    printf("step %d/%d  loss %.4f  lr %.3e  grad norm %.3e  %.0f tok/s  %.3f s/step  "
           "(%.3f s/micro-batch, optimizer %.3f s, peak %.1f GiB)  elapsed %s  ETA %s%s%s",
           r.step, S, r.loss, r.lr, r.grad_norm, r.tokens / r.seconds, r.seconds,
           r.microbatch_seconds, r.optimizer_seconds, r.peak_bytes / 1073741824.0, e1, e2,
           r.skipped ? "  SKIPPED (non-finite loss or gradient)" : "", tty ? "   " : "\n");
    fflush(stdout);
  }
  if (comm->rank == 0 && tty) printf("\n");
  if (t.g.profile && comm->rank == 0) {
    const double *p = t.g.phase_s;
    printf("profile (rank 0, s summed over %d steps): vision forward %.3f, text forward %.3f, "
           "loss %.3f, text backward %.3f, vision backward %.3f\n", t.step, p[0], p[1], p[2], p[3], p[4]);
  }
  if (t.prof && t.prof_done && comm->rank == 0) {
    char title[160];
    snprintf(title, sizeof title, "rank 0, backend %s, step %d, micro-batch %d of %d", t.ops_in->name, t.prof_step,
             cfg->train.grad_accum, cfg->train.grad_accum);
    vl_opsprof_print(t.prof, stdout, title);
  }
  int crc = vl_gradstats_close(t.stats);
  if (rc == VL_OK) rc = crc;
  vl_trainer_destroy(&t);
  if (rc) return vl_err_trace(rc, __FILE__, __LINE__, __func__);
  return VL_OK;
}

int vl_train_resolve_batch(vl_train_config *t, int world) {
  if (world < 1 || t->micro_batch < 1) VL_ERROR(VL_EINVAL, "%d ranks x micro-batch %d", world, t->micro_batch);
  if (t->global_batch <= 0) return VL_OK;
  const long long per = (long long)world * t->micro_batch;
  if (t->global_batch % per)
    VL_ERROR(VL_EINVAL, "train.global_batch %d does not divide into %d rank(s) x micro_batch %d = %lld "
             "samples per micro-step: use a multiple of %lld, or another number of ranks",
             t->global_batch, world, t->micro_batch, per, per);
  const long long a = t->global_batch / per;
  if (a > 65536)
    VL_ERROR(VL_EINVAL, "train.global_batch %d on %d rank(s) x micro_batch %d needs %lld accumulation steps "
             "(at most 65536)", t->global_batch, world, t->micro_batch, a);
  t->grad_accum = (int)a;
  return VL_OK;
}
