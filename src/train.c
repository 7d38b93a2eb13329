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

int vl_trainer_create(vl_trainer *t, const vl_config *cfg, const vl_model *m, vl_comm *comm,
                      vl_ops *ops, const float *host_params) {
  memset(t, 0, sizeof *t);
  t->cfg = cfg; t->m = m; t->comm = comm; t->ops = ops;
  const vl_train_config *tc = &cfg->train;
  VL_CALL(vl_graph_create_opts(&t->g, m, ops, tc->max_seq_len * tc->micro_batch,
                               tc->max_vision_patches * tc->micro_batch, 0,
                               vl_optim_padded_size(m->n_elements, comm->size), tc->recompute));
  VL_CALL(ops->put(ops, t->g.params, host_params, m->n_elements));
  VL_CALL(ops->zero(ops, t->g.grads, m->n_elements * ops->elem_size));
  VL_CALL(vl_optim_create(&t->opt, m, ops, comm, tc, host_params));
  vl_optim_bind(&t->opt, &t->g);
  return VL_OK;
}

int vl_trainer_resume(vl_trainer *t, const char *path) {
  VL_CALL(vl_ckpt_load(path, &t->opt, t->g.params));
  t->step = t->opt.step;
  return VL_OK;
}

void vl_trainer_destroy(vl_trainer *t) {
  vl_optim_destroy(&t->opt);
  vl_graph_destroy(&t->g);
  memset(t, 0, sizeof *t);
}

int vl_trainer_params(vl_trainer *t, float *host) {
  return t->ops->get(t->ops, host, t->g.params, t->m->n_elements);
}

int vl_trainer_step(vl_trainer *t, vl_step_report *r) {
  const vl_train_config *tc = &t->cfg->train;
  const int A = tc->grad_accum, mb = tc->micro_batch, W = t->comm->size, rank = t->comm->rank;
  const double t0 = now();
  /* this rank's samples for the whole step, to agree on the token count */
  vl_synth *s = calloc((size_t)A * mb, sizeof *s);
  vl_sample *samples = calloc((size_t)mb, sizeof *samples);
  if (!s || !samples) { free(s); free(samples); VL_ERROR(VL_ENOMEM, "step samples"); }
  int rc = VL_OK;
  double counts[3] = {0, 0, 0}; /* supervised tokens, loss sum, LLM tokens */
  double local_targets = 0;      /* this rank's supervised tokens */
  for (int a = 0; a < A && rc == VL_OK; a++)
    for (int k = 0; k < mb && rc == VL_OK; k++) {
      uint64_t index = ((uint64_t)(t->step * A + a) * W + rank) * mb + k;
      if (tc->synth_grid[0] > 0)
        rc = vl_synth_fixed(&s[a * mb + k], &t->cfg->model, tc->seed, index, tc->synth_grid[0],
                            tc->synth_grid[1], tc->synth_text, tc->synth_answer);
      else
        rc = vl_synth_sample(&s[a * mb + k], &t->cfg->model, tc->seed, index, tc->max_seq_len,
                             tc->max_vision_patches);
      if (rc == VL_OK) {
        const vl_sample *x = &s[a * mb + k].sample;
        for (int i = 1; i < x->n_tokens; i++) counts[0] += x->labels[i] >= 0;
        counts[2] += x->n_tokens;
      }
    }
  if (rc == VL_OK) {
    local_targets = counts[0];
    double total[1] = {counts[0]};
    rc = vl_comm_allreduce_double(t->comm, total, 1, VL_COMM_SUM);
    const float scale = total[0] > 0 ? (float)(1.0 / total[0]) : 0.0f;
    for (int a = 0; a < A && rc == VL_OK; a++) {
      for (int k = 0; k < mb; k++) samples[k] = s[a * mb + k].sample;
      vl_batch b;
      double loss = 0;
      rc = vl_batch_build(&b, &t->cfg->model, samples, mb);
      if (rc == VL_OK) rc = vl_graph_set_batch(&t->g, &b);
      if (rc == VL_OK) rc = vl_graph_forward(&t->g, scale, &loss);
      if (rc == VL_OK) rc = vl_graph_backward(&t->g);
      if (rc == VL_OK) rc = t->ops->sync(t->ops);
      size_t fr = 0, tot = 0;
      if (rc == VL_OK && t->ops->mem_info && t->ops->mem_info(t->ops, &fr, &tot) == VL_OK &&
          tot - fr > t->peak_bytes)
        t->peak_bytes = tot - fr;
      counts[1] += loss;
      vl_batch_free(&b);
    }
    counts[0] = total[0];
  }
  for (int i = 0; i < A * mb; i++) vl_synth_free(&s[i]);
  free(s);
  free(samples);
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

int vl_trainer_eval(vl_trainer *t, int n, double *loss) {
  const vl_train_config *tc = &t->cfg->train;
  double acc[2] = {0, 0}; /* loss sum, supervised tokens */
  int rc = VL_OK;
  for (int i = t->comm->rank; i < n && rc == VL_OK; i += t->comm->size) {
    vl_synth s;
    memset(&s, 0, sizeof s);
    vl_batch b;
    memset(&b, 0, sizeof b);
    double l = 0;
    rc = vl_synth_sample(&s, &t->cfg->model, tc->seed, VL_EVAL_INDEX_BASE + (uint64_t)i,
                         tc->max_seq_len, tc->max_vision_patches);
    if (rc == VL_OK) rc = vl_batch_build(&b, &t->cfg->model, &s.sample, 1);
    if (rc == VL_OK) rc = vl_graph_set_batch(&t->g, &b);
    if (rc == VL_OK) rc = vl_graph_forward(&t->g, 0.0f, &l);
    acc[0] += l;
    acc[1] += b.n_targets;
    vl_batch_free(&b);
    vl_synth_free(&s);
  }
  /* every rank joins the reduction even after a local failure */
  double bad = rc != VL_OK;
  double all[3] = {acc[0], acc[1], bad};
  VL_CALL(vl_comm_allreduce_double(t->comm, all, 3, VL_COMM_SUM));
  if (rc) return vl_err_trace(rc, __FILE__, __LINE__, __func__);
  if (all[2] > 0) VL_ERROR(VL_EINVAL, "evaluation failed on another rank");
  *loss = all[1] > 0 ? all[0] / all[1] : NAN;
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

int vl_train_run(const vl_config *cfg, const vl_model *m, vl_comm *comm, vl_ops *ops,
                 const float *host_params, int *preempted) {
  vl_trainer t;
  *preempted = 0;
  VL_CALL(vl_trainer_create(&t, cfg, m, comm, ops, host_params));
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
      rc = vl_ckpt_save(cfg->run.out_dir, &t.opt, cfg, cfg->run.keep_checkpoints);
      if (rc == VL_OK && comm->rank == 0 && !tty)
        printf("checkpoint %s/ckpt/step_%07d.h5\n", cfg->run.out_dir, r.step);
    }
    if (rc == VL_OK && *preempted && comm->rank == 0)
      printf("%sstopping at step %d on signal %d: checkpoint written, exit %d (requeue to continue)\n",
             tty ? "\n" : "", r.step, (int)stop, VL_EXIT_PREEMPTED);
    if (*preempted) break;
    const int ev = cfg->train.eval_every;
    if (rc == VL_OK && cfg->train.eval_samples > 0 && ((ev > 0 && r.step % ev == 0) || r.step == S)) {
      double vl = 0;
      rc = vl_trainer_eval(&t, cfg->train.eval_samples, &vl);
      if (rc == VL_OK && t.stats) rc = vl_gradstats_eval(t.stats, r.step, vl);
      if (rc == VL_OK && comm->rank == 0)
        printf("%seval step %d: validation loss %.4f over %d samples\n", tty ? "\n" : "", r.step, vl,
               cfg->train.eval_samples);
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
