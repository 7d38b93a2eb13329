/* test_train: the optimizer and the loop, under mpirun -np 2 (or 1).
 *  - the learning-rate schedules against Hugging Face's formulas by hand;
 *  - 10 steps with W ranks x accumulation 1 (ZeRO-1: optimizer state sharded)
 *    equal 10 steps on one rank x accumulation W over the same samples;
 *  - and equal a plain unsharded AdamW written here in double precision on
 *    the host (decoupled decay, no decay on norms/biases/embeddings, global
 *    norm clipping) fed by the model's gradients;
 *  - the loss goes down;
 *  - train.freeze: a frozen vision tower stays bitwise unchanged while the
 *    LLM trains; train.decay_also adds the weight decay to the norms it names; a non-finite loss skips the step (or stops, by policy);
 *  - gradient statistics: rows every stats_every steps, per-tensor
 *    gradient norms whose root sum of squares is the global norm, parameter
 *    norms and update ratios equal to those of two saved checkpoints, the
 *    noise-scale formula on hand-made norms;
 *  - checkpoints: 5 steps + save + resume + 5 steps is bitwise identical to
 *    10 straight steps on the same ranks; a checkpoint written by W ranks
 *    resumes on one rank and continues like the one-rank run; truncated,
 *    foreign and another model's checkpoints, one value changed (weights or
 *    a moment: checksums), a tensor of another shape with the same parameter
 *    count, and another format name give clear errors;
 *  - train.optimizer: lean on W ranks equals one rank with accumulation W. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <hdf5.h>

#include "batch.h"
#include "ckpt.h"
#include "comm.h"
#include "config.h"
#include "err.h"
#include "gradstats.h"
#include "graph.h"
#include "optim.h"
#include "synth.h"
#include "micro_model.h"
#include "test_util.h"
#include "train.h"
#include "safetensors.h"
#include "weights.h"

static const char *yaml =
    VL_TEST_MICRO_MODEL
    "train: {micro_batch: 1, steps: 10, lr: 1.0e-2, warmup_steps: 2, weight_decay: 0.1,\n"
    "        grad_clip: 0.5, max_seq_len: 96, max_vision_patches: 64, seed: 99}\n";

static double hf_cosine(double lr, int step, int warm, int total) {
  if (step < warm) return lr * step / (double)(warm > 1 ? warm : 1);
  double p = (double)(step - warm) / (double)(total - warm);
  return lr * fmax(0.0, 0.5 * (1.0 + cos(M_PI * p)));
}

int main(int argc, char **argv) {
  if (vl_comm_mpi_init(&argc, &argv)) return 1;
  int rank, W;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &W);
  vl_config cfg;
  if (vl_config_load_string(&cfg, yaml, "train.yaml")) { fprintf(stderr, "%s\n", vl_err_last()); return 1; }
  vl_model m;
  if (vl_model_build(&m, &cfg.model)) return 1;
  const size_t n = m.n_elements;

  /* schedules */
  vl_train_config t = cfg.train;
  CHECK(vl_optim_lr(&t, 0) == 0 && fabs(vl_optim_lr(&t, 1) - 5e-3) < 1e-12 &&
        fabs(vl_optim_lr(&t, 2) - 1e-2) < 1e-12, "warmup");
  CHECK(fabs(vl_optim_lr(&t, 6) - 5e-3) < 1e-12, "cosine midpoint %g", vl_optim_lr(&t, 6));
  t.schedule = VL_SCHED_LINEAR;
  CHECK(fabs(vl_optim_lr(&t, 6) - 5e-3) < 1e-12 && vl_optim_lr(&t, 10) == 0, "linear");
  t.schedule = VL_SCHED_CONSTANT;
  CHECK(vl_optim_lr(&t, 9) == 1e-2, "constant");
  /* gradient noise scale (McCandlish et al. 2018, B_simple = S / |G|^2) from
   * |G_B|^2 = |G|^2 + S / B: with |G|^2 = 4, S = 2: |G_1|^2 = 6, |G_2|^2 = 5 */
  CHECK(fabs(vl_noise_scale(6.0, 1.0, 5.0, 2.0) - 0.5) < 1e-12, "noise scale %g", vl_noise_scale(6.0, 1.0, 5.0, 2.0));
  CHECK(fabs(vl_noise_scale(4.0 + 8.0 / 4, 4.0, 4.0 + 8.0 / 16, 16.0) - 2.0) < 1e-12, "noise scale B 4 vs 16");
  CHECK(isnan(vl_noise_scale(6.0, 2.0, 5.0, 2.0)), "noise scale with equal batches is undefined");

  float *w0 = malloc(n * sizeof(float));
  vl_weights_init_random(&m, w0, 5, 0.2f);

  /* VL_TEST_BACKEND=cuda runs the same checks on GPUs (one per rank; NCCL),
   * with bf16 limits instead of fp32 ones and no bitwise claims. */
  const char *be = getenv("VL_TEST_BACKEND");
  const int on_gpu = be && !strcmp(be, "cuda");
  const double tol = on_gpu ? 3e-2 : 1e-5, tol_ref = on_gpu ? 3e-2 : 1e-4;
  vl_comm cw;
  if (vl_comm_init(&cw, on_gpu ? VL_BACKEND_CUDA : VL_BACKEND_CPU, 0, 60)) {
    fprintf(stderr, "comm: %s\n", vl_err_last());
    return 1;
  }
  vl_ops *o;
  if (on_gpu ? vl_ops_cuda_create(&o, cw.device) : vl_ops_cpu_create(&o)) {
    fprintf(stderr, "ops: %s\n", vl_err_last());
    return 1;
  }
  vl_ops *ocpu = o;
  if (on_gpu) vl_ops_cpu_create(&ocpu); /* the double-precision reference uses the CPU graph */
  /* A: W ranks x accumulation 1 */
  cfg.train.grad_accum = 1;
  vl_trainer tr;
  double first = 0, last = 0;
  CHECK(vl_trainer_create(&tr, &cfg, &m, &cw, o, w0) == VL_OK, "trainer: %s", vl_err_last());
  for (int s = 0; s < 10; s++) {
    vl_step_report r;
    CHECK(vl_trainer_step(&tr, &r) == VL_OK, "step: %s", vl_err_last());
    if (s == 0) first = r.loss;
    last = r.loss;
  }
  float *pa = malloc(n * sizeof(float));
  vl_trainer_params(&tr, pa);
  vl_trainer_destroy(&tr);
  if (rank == 0) printf("%d ranks x accumulation 1: loss %.4f -> %.4f\n", W, first, last);
  CHECK(last < first, "loss did not go down: %.4f -> %.4f", first, last);

  /* P: the pipelined step (micro-batch a+1 staged while a runs, losses read
   * once per step, samples from the prefetch thread) computes what the plain
   * sequential loop computes: the same loss and gradients, bitwise on the CPU */
  if (!on_gpu) {
    const int A = 3, mb = 2;
    vl_config cp = cfg;
    cp.train.grad_accum = A;
    cp.train.micro_batch = mb;
    CHECK(vl_trainer_create(&tr, &cp, &m, &cw, o, w0) == VL_OK, "trainer P: %s", vl_err_last());
    vl_graph g;
    CHECK(vl_graph_create(&g, &m, o, 96 * mb, 64 * mb, 0) == VL_OK, "graph P");
    o->put(o, g.params, w0, n);
    o->zero(o, g.grads, n * 4);
    vl_synth sm[6];
    memset(sm, 0, sizeof sm);
    double sums[2] = {0, 0}; /* supervised tokens, loss */
    for (int a = 0; a < A; a++)
      for (int k = 0; k < mb; k++) {
        vl_synth_sample(&sm[a * mb + k], &cp.model, cp.train.seed, (uint64_t)((a * W + rank) * mb + k), 96, 64);
        for (int i = 1; i < sm[a * mb + k].sample.n_tokens; i++) sums[0] += sm[a * mb + k].sample.labels[i] >= 0;
      }
    MPI_Allreduce(MPI_IN_PLACE, sums, 1, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
    for (int a = 0; a < A; a++) {
      vl_sample xs[2] = {sm[a * mb].sample, sm[a * mb + 1].sample};
      vl_batch b;
      double loss = 0;
      vl_batch_build(&b, &cp.model, xs, mb);
      vl_graph_set_batch(&g, &b);
      vl_graph_forward(&g, (float)(1.0 / sums[0]), &loss);
      vl_graph_backward(&g);
      sums[1] += loss;
      vl_batch_free(&b);
    }
    for (int i = 0; i < 6; i++) vl_synth_free(&sm[i]);
    MPI_Allreduce(MPI_IN_PLACE, sums + 1, 1, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
    float *gs = malloc(n * sizeof(float)), *gt = malloc(n * sizeof(float));
    o->get(o, gs, g.grads, n);
    /* the trainer's own gradients, before its optimizer: the same passes */
    vl_step_report r;
    CHECK(vl_trainer_step(&tr, &r) == VL_OK, "step P: %s", vl_err_last());
    CHECK(r.loss == sums[1] / sums[0], "pipelined step loss %.17g vs sequential %.17g", r.loss, sums[1] / sums[0]);
    MPI_Allreduce(gs, gt, (int)n, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
    double ss = 0;
    for (size_t i = 0; i < n; i++) ss += (double)gt[i] * gt[i];
    /* one rank: the same bits summed the same way; more: a float sum order */
    const double gerr = fabs(sqrt(ss) - r.grad_norm) / r.grad_norm;
    CHECK(gerr < (W == 1 ? 1e-12 : 1e-6), "pipelined step gradient norm %.17g vs sequential %.17g", r.grad_norm,
          sqrt(ss));
    vl_graph_destroy(&g);
    free(gs); free(gt);
    vl_trainer_destroy(&tr);
    if (rank == 0) printf("pipelined step (A %d x mb %d) vs the sequential loop: loss %.6f, bitwise\n", A, mb, r.loss);
  }

  /* frozen vision tower */
  {
    vl_model mf;
    vl_model_build(&mf, &cfg.model);
    size_t nf = 0;
    CHECK(vl_model_freeze(&mf, "model.visual.*", &nf) == VL_OK && nf > 0, "freeze");
    vl_err_set_quiet(1);
    size_t dummy;
    CHECK(vl_model_freeze(&mf, "model.nothing.*", &dummy) == VL_EINVAL, "a pattern matching nothing is an error");
    vl_err_set_quiet(0);
    CHECK(vl_trainer_create(&tr, &cfg, &mf, &cw, o, w0) == VL_OK, "trainer F");
    for (int s = 0; s < 3; s++) { vl_step_report r; vl_trainer_step(&tr, &r); }
    float *pf = malloc(n * sizeof(float)), *w0r = malloc(n * sizeof(float));
    vl_trainer_params(&tr, pf);
    vl_trainer_destroy(&tr);
    /* compare with the initial weights as the backend holds them (bf16 on GPUs) */
    memcpy(w0r, w0, n * sizeof(float));
    if (on_gpu) for (size_t i = 0; i < n; i++) w0r[i] = vl_f32_from_bf16(vl_bf16_from_f32(w0r[i]));
    int vision_same = 1, llm_moved = 0;
    for (int i = 0; i < mf.n_params; i++) {
      const vl_param *p = &mf.params[i];
      int same = !memcmp(pf + p->offset, w0r + p->offset, p->numel * sizeof(float));
      if (p->frozen) vision_same &= same;
      else if (!same) llm_moved++;
    }
    CHECK(vision_same, "a frozen parameter changed");
    CHECK(llm_moved > 10, "only %d trainable tensors changed", llm_moved);
    free(pf); free(w0r);
    vl_model_free(&mf);
  }
  /* train.decay_also: norms get the decoupled weight decay too; after one
   * step they differ from the default run by lr * wd * w0, the rest not at all */
  if (!on_gpu) {
    vl_config cd = cfg; /* a shallow copy, not freed */
    cd.train.warmup_steps = 0;
    vl_model md;
    vl_model_build(&md, &cd.model);
    size_t nd = 0;
    CHECK(vl_model_decay_also(&md, "*norm*", &nd) == VL_OK && nd > 0, "decay_also: %s", vl_err_last());
    vl_err_set_quiet(1);
    size_t dummy;
    CHECK(vl_model_decay_also(&md, "model.nothing.*", &dummy) == VL_EINVAL, "a pattern matching nothing is an error");
    vl_err_set_quiet(0);
    float *p1 = malloc(n * sizeof(float)), *p2 = malloc(n * sizeof(float));
    vl_step_report r;
    CHECK(vl_trainer_create(&tr, &cd, &m, &cw, o, w0) == VL_OK && vl_trainer_step(&tr, &r) == VL_OK, "step D1");
    vl_trainer_params(&tr, p1);
    vl_trainer_destroy(&tr);
    CHECK(vl_trainer_create(&tr, &cd, &md, &cw, o, w0) == VL_OK && vl_trainer_step(&tr, &r) == VL_OK, "step D2");
    vl_trainer_params(&tr, p2);
    vl_trainer_destroy(&tr);
    const double lwd = vl_optim_lr(&cd.train, 0) * cd.train.weight_decay;
    double worst = 0;
    int changed = 0, others_same = 1;
    size_t counted = 0;
    for (int i = 0; i < md.n_params; i++) {
      const vl_param *p = &md.params[i];
      if (p->no_decay == m.params[i].no_decay) {
        others_same &= !memcmp(p1 + p->offset, p2 + p->offset, p->numel * sizeof(float));
        continue;
      }
      changed++;
      for (size_t j = p->offset; j < p->offset + p->numel; j++, counted++) {
        double e = fabs(((double)p1[j] - p2[j]) - lwd * w0[j]) / (lwd * fabs(w0[j]) + 1e-12);
        if (e > worst) worst = e;
      }
    }
    CHECK(counted == nd && changed > 0, "decay_also changed %d tensors, %zu of %zu elements", changed, counted, nd);
    CHECK(others_same, "decay_also changed a parameter it does not name");
    CHECK(worst < 1e-3, "norms with decay differ from lr*wd*w0 by %.3e of it", worst);
    if (rank == 0) printf("train.decay_also *norm*: %d tensors decayed by lr*wd*w0 within %.1e of it\n", changed, worst);
    free(p1); free(p2);
    vl_model_free(&md);
  }
  /* non-finite: a NaN weight makes every loss NaN: steps are skipped, or stop */
  {
    float *wn = malloc(n * sizeof(float));
    memcpy(wn, w0, n * sizeof(float));
    wn[m.params[m.final_norm_w].offset] = NAN;
    CHECK(vl_trainer_create(&tr, &cfg, &m, &cw, o, wn) == VL_OK, "trainer N");
    vl_step_report r;
    CHECK(vl_trainer_step(&tr, &r) == VL_OK && r.skipped, "NaN loss: step not skipped");
    float *pn = malloc(n * sizeof(float));
    vl_trainer_params(&tr, pn);
    size_t moved = 0;
    for (size_t i = 0; i < n; i++) moved += pn[i] != wn[i] && !(isnan(pn[i]) && isnan(wn[i]));
    CHECK(on_gpu || moved == 0, "a skipped step changed %zu weights", moved);
    vl_trainer_destroy(&tr);
    cfg.train.nonfinite = VL_NONFINITE_STOP;
    vl_err_set_quiet(1);
    vl_trainer_create(&tr, &cfg, &m, &cw, o, wn);
    CHECK(vl_trainer_step(&tr, &r) == VL_EINVAL && strstr(vl_err_last(), "not finite"), "stop policy: %s", vl_err_last());
    vl_err_set_quiet(0);
    vl_trainer_destroy(&tr);
    cfg.train.nonfinite = VL_NONFINITE_SKIP;
    free(pn); free(wn);
  }

  /* checkpoint directory shared by the ranks */
  char dir[256] = "/tmp/vl_ckpt_XXXXXX";
  if (rank == 0 && !mkdtemp(dir)) return 1;
  MPI_Bcast(dir, sizeof dir, MPI_CHAR, 0, MPI_COMM_WORLD);
  /* 5 steps, save (keep 2, saved twice: both kept), resume in a new trainer, 5 more */
  double lost_a = last;
  CHECK(vl_trainer_create(&tr, &cfg, &m, &cw, o, w0) == VL_OK, "trainer C");
  for (int s = 0; s < 5; s++) { vl_step_report r; vl_trainer_step(&tr, &r); if (s == 3) vl_trainer_save(&tr, dir, 2); }
  CHECK(vl_trainer_save(&tr, dir, 2) == VL_OK, "save: %s", vl_err_last());
  vl_trainer_destroy(&tr);
  char latest[512];
  CHECK(vl_ckpt_latest(dir, latest, sizeof latest) == VL_OK && strstr(latest, "step_0000005.h5"), "latest %s", latest);
  CHECK(vl_trainer_create(&tr, &cfg, &m, &cw, o, w0) == VL_OK && vl_trainer_resume(&tr, latest) == VL_OK,
        "resume: %s", vl_err_last());
  CHECK(tr.step == 5, "resumed at step %d", tr.step);
  double last_d = 0;
  for (int s = 0; s < 5; s++) { vl_step_report r; vl_trainer_step(&tr, &r); last_d = r.loss; }
  float *pd = malloc(n * sizeof(float));
  vl_trainer_params(&tr, pd);
  vl_trainer_destroy(&tr);
  if (on_gpu) CHECK(rel_err_f32(pd, pa, n) < tol, "GPU resume: %.3e", rel_err_f32(pd, pa, n));
  else CHECK(memcmp(pd, pa, n * sizeof(float)) == 0 && last_d == lost_a,
        "5 + resume + 5 differs from 10 straight: %.3e, loss %.9g vs %.9g", rel_err_f32(pd, pa, n), last_d, lost_a);
  if (rank == 0) printf("5 steps + checkpoint + resume + 5 steps == 10 steps: %s\n",
                        memcmp(pd, pa, n * sizeof(float)) ? "NO" : "bitwise");
  free(pd);

  if (rank == 0) {
    /* B: one rank x accumulation W over the same samples */
    vl_comm cs;
    if (vl_comm_init_on(&cs, MPI_COMM_SELF, on_gpu ? VL_BACKEND_CUDA : VL_BACKEND_CPU, 0, 60)) return 1;
    cfg.train.grad_accum = W;
    CHECK(vl_trainer_create(&tr, &cfg, &m, &cs, o, w0) == VL_OK, "trainer B");
    for (int s = 0; s < 10; s++) {
      vl_step_report r;
      vl_trainer_step(&tr, &r);
    }
    float *pb = malloc(n * sizeof(float));
    vl_trainer_params(&tr, pb);
    vl_trainer_destroy(&tr);
    double e = rel_err_f32(pa, pb, n);
    printf("%d ranks x accumulation 1 vs 1 rank x accumulation %d: parameters differ by %.2e\n", W, W, e);
    CHECK(e < tol, "sharded vs one-rank accumulation: %.3e", e);

    /* the W-rank checkpoint of step 5, resumed on one rank with accumulation W */
    char p5[600];
    snprintf(p5, sizeof p5, "%s/ckpt/step_0000005.h5", dir);
    CHECK(vl_trainer_create(&tr, &cfg, &m, &cs, o, w0) == VL_OK && vl_trainer_resume(&tr, p5) == VL_OK,
          "resume on one rank: %s", vl_err_last());
    for (int s = 0; s < 5; s++) { vl_step_report r; vl_trainer_step(&tr, &r); }
    float *pe = malloc(n * sizeof(float));
    vl_trainer_params(&tr, pe);
    vl_trainer_destroy(&tr);
    e = rel_err_f32(pe, pb, n);
    printf("%d-rank checkpoint resumed on 1 rank: parameters after 10 steps differ by %.2e\n", W, e);
    CHECK(e < tol, "cross-world-size resume: %.3e", e);
    free(pe);

    /* damaged and foreign checkpoints: clear errors */
    vl_err_set_quiet(1);
    char bad[700], cmd[1600];
    snprintf(bad, sizeof bad, "%s/truncated.h5", dir);
    snprintf(cmd, sizeof cmd, "head -c 100000 %s > %s", p5, bad);
    CHECK(system(cmd) == 0, "truncate");
    vl_trainer_create(&tr, &cfg, &m, &cs, o, w0);
    int rc = vl_trainer_resume(&tr, bad);
    CHECK(rc == VL_EIO || rc == VL_EHDF5, "truncated: rc %d %s", rc, vl_err_last());
    snprintf(bad, sizeof bad, "%s/garbage.h5", dir);
    FILE *gf = fopen(bad, "w"); fputs("not a checkpoint\n", gf); fclose(gf);
    rc = vl_trainer_resume(&tr, bad);
    CHECK(rc == VL_EIO && strstr(vl_err_last(), "cannot open as HDF5"), "garbage: %s", vl_err_last());
    vl_trainer_destroy(&tr);
    vl_config other;
    char oy[4096];
    snprintf(oy, sizeof oy, "%s", yaml);
    char *v = strstr(oy, "vocab_size: 96");
    memcpy(v, "vocab_size: 97", 14);
    vl_config_load_string(&other, oy, "other.yaml");
    vl_model mo;
    vl_model_build(&mo, &other.model);
    float *w2 = calloc(mo.n_elements, sizeof(float));
    vl_trainer_create(&tr, &other, &mo, &cs, o, w2);
    rc = vl_trainer_resume(&tr, p5);
    CHECK(rc == VL_ESHAPE && strstr(vl_err_last(), "another model"), "other model: %s", vl_err_last());
    vl_trainer_destroy(&tr);
    free(w2);
    vl_model_free(&mo);
    vl_config_free(&other);
    /* altered copies of the step-5 checkpoint (serial HDF5 edits): one value
     * changed, a tensor stored with a transposed shape (same parameter
     * count), another format: each a clear error, and the original still loads */
    {
      int q2 = -1; /* a 2-D tensor that is not square */
      for (int i = 0; i < m.n_params && q2 < 0; i++)
        if (m.params[i].ndim == 2 && m.params[i].shape[0] != m.params[i].shape[1]) q2 = i;
      const vl_param *pq = &m.params[q2];
      float *buf = malloc(pq->numel * sizeof(float));
      char dname[VL_NAME_MAX + 32];
      for (int what = 0; what < 4; what++) {
        snprintf(bad, sizeof bad, "%s/altered%d.h5", dir, what);
        snprintf(cmd, sizeof cmd, "cp %s %s", p5, bad);
        CHECK(system(cmd) == 0, "copy");
        hid_t hf = H5Fopen(bad, H5F_ACC_RDWR, H5P_DEFAULT);
        snprintf(dname, sizeof dname, "%s/%s", what == 1 ? "optimizer/v" : "params", pq->name);
        hid_t ds = H5Dopen2(hf, dname, H5P_DEFAULT);
        CHECK(hf >= 0 && ds >= 0 && H5Dread(ds, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, buf) >= 0,
              "read %s", dname);
        if (what <= 1) { /* one value changed in the last bit, in the weights or a moment */
          uint32_t bits;
          memcpy(&bits, &buf[pq->numel / 2], 4);
          bits ^= 1;
          memcpy(&buf[pq->numel / 2], &bits, 4);
          H5Dwrite(ds, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, buf);
          H5Dclose(ds);
        } else if (what == 2) { /* [r, c] stored as [c, r], the same data and checksum */
          unsigned long long sum = 0;
          hid_t a = H5Aopen(ds, "checksum", H5P_DEFAULT);
          H5Aread(a, H5T_NATIVE_ULLONG, &sum);
          H5Aclose(a);
          H5Dclose(ds);
          H5Ldelete(hf, dname, H5P_DEFAULT);
          hsize_t dims[2] = {(hsize_t)pq->shape[1], (hsize_t)pq->shape[0]};
          hid_t sp = H5Screate_simple(2, dims, NULL), one = H5Screate(H5S_SCALAR);
          ds = H5Dcreate2(hf, dname, H5T_IEEE_F32LE, sp, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
          H5Dwrite(ds, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, buf);
          a = H5Acreate2(ds, "checksum", H5T_NATIVE_ULLONG, one, H5P_DEFAULT, H5P_DEFAULT);
          H5Awrite(a, H5T_NATIVE_ULLONG, &sum);
          H5Aclose(a); H5Sclose(one); H5Sclose(sp); H5Dclose(ds);
        } else { /* another format name */
          H5Dclose(ds);
          H5Adelete(hf, "format");
          hid_t st = H5Tcopy(H5T_C_S1), one = H5Screate(H5S_SCALAR);
          H5Tset_size(st, 16);
          hid_t a = H5Acreate2(hf, "format", st, one, H5P_DEFAULT, H5P_DEFAULT);
          H5Awrite(a, st, "other-format-9\0\0");
          H5Aclose(a); H5Sclose(one); H5Tclose(st);
        }
        CHECK(H5Fclose(hf) >= 0, "close %s", bad);
        vl_trainer_create(&tr, &cfg, &m, &cs, o, w0);
        rc = vl_trainer_resume(&tr, bad);
        vl_trainer_destroy(&tr);
        const char *msg = vl_err_last();
        if (what <= 1)
          CHECK(rc == VL_EIO && strstr(msg, "does not match its checksum") && strstr(msg, pq->name) &&
                strstr(msg, what ? "/optimizer/v/" : "/params/"), "altered value: rc %d %s", rc, msg);
        else if (what == 2)
          CHECK(rc == VL_ESHAPE && strstr(msg, pq->name) && strstr(msg, "the model expects"),
                "transposed tensor: rc %d %s", rc, msg);
        else
          CHECK(rc == VL_EIO && strstr(msg, "other-format-9"), "another format: rc %d %s", rc, msg);
        printf("altered checkpoint %d: %s\n", what, msg);
      }
      free(buf);
      vl_trainer_create(&tr, &cfg, &m, &cs, o, w0);
      CHECK(vl_trainer_resume(&tr, p5) == VL_OK && tr.step == 5, "the original after the copies: %s", vl_err_last());
      vl_trainer_destroy(&tr);
    }
    vl_err_set_quiet(0);
    snprintf(cmd, sizeof cmd, "ls %s/ckpt | grep -c step_ | grep -qx 2", dir);
    CHECK(system(cmd) == 0, "keep 2: the newest two checkpoints remain");

    /* C: a plain AdamW in double, unsharded, on gradients from the graph */
    vl_graph g;
    vl_graph_create(&g, &m, ocpu, 96, 64, 0);
    double *p = malloc(n * sizeof(double)), *m1 = calloc(n, sizeof(double)), *m2 = calloc(n, sizeof(double));
    float *pf = malloc(n * sizeof(float)), *gr = malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) p[i] = w0[i];
    for (int s = 0; s < 10; s++) {
      vl_synth sm[8];
      memset(sm, 0, sizeof sm);
      double count = 0;
      for (int k = 0; k < W; k++) {
        vl_synth_sample(&sm[k], &cfg.model, cfg.train.seed, (uint64_t)(s * W + k), 96, 64);
        for (int i = 1; i < sm[k].sample.n_tokens; i++) count += sm[k].sample.labels[i] >= 0;
      }
      for (size_t i = 0; i < n; i++) pf[i] = (float)p[i];
      ocpu->put(ocpu, g.params, pf, n);
      ocpu->zero(ocpu, g.grads, n * 4);
      for (int k = 0; k < W; k++) {
        vl_batch b;
        double loss;
        vl_batch_build(&b, &cfg.model, &sm[k].sample, 1);
        vl_graph_set_batch(&g, &b);
        vl_graph_forward(&g, (float)(1.0 / count), &loss);
        vl_graph_backward(&g);
        vl_batch_free(&b);
        vl_synth_free(&sm[k]);
      }
      ocpu->get(ocpu, gr, g.grads, n);
      double norm = 0;
      for (size_t i = 0; i < n; i++) norm += (double)gr[i] * gr[i];
      norm = sqrt(norm);
      double clip = norm > 0.5 ? 0.5 / (norm + 1e-6) : 1.0;
      double lr = hf_cosine(1e-2, s, 2, 10), b1 = 0.9, b2 = 0.999, t1 = s + 1;
      for (int q = 0; q < m.n_params; q++) {
        const vl_param *pp = &m.params[q];
        double wd = pp->no_decay ? 0.0 : 0.1;
        for (size_t i = pp->offset; i < pp->offset + pp->numel; i++) {
          double gg = gr[i] * clip;
          p[i] *= 1 - lr * wd;
          m1[i] = b1 * m1[i] + (1 - b1) * gg;
          m2[i] = b2 * m2[i] + (1 - b2) * gg * gg;
          double mh = m1[i] / (1 - pow(b1, t1)), vh = m2[i] / (1 - pow(b2, t1));
          p[i] -= lr * mh / (sqrt(vh) + 1e-8);
        }
      }
    }
    for (size_t i = 0; i < n; i++) pf[i] = (float)p[i];
    double e2 = rel_err_f32(pa, pf, n);
    printf("ZeRO-1 trainer vs plain AdamW in double: parameters differ by %.2e\n", e2);
    CHECK(e2 < tol_ref, "trainer vs plain AdamW: %.3e", e2);
    vl_graph_destroy(&g);
    free(p); free(m1); free(m2); free(pf); free(gr); free(pb);
    vl_comm_free(&cs);
  }
  /* train.optimizer: lean sharded over W ranks (moments ZeRO-1) equals one
   * rank with accumulation W: the stochastic rounding draws on the element's
   * place in the whole block, not on the shard */
  {
    vl_config cl = cfg;
    cl.train.optimizer = VL_OPTIM_LEAN;
    cl.train.grad_accum = 1;
    float *pl = malloc(n * sizeof(float)), *p1 = malloc(n * sizeof(float));
    CHECK(vl_trainer_create(&tr, &cl, &m, &cw, o, w0) == VL_OK, "lean trainer: %s", vl_err_last());
    for (int s = 0; s < 10; s++) { vl_step_report r; CHECK(vl_trainer_step(&tr, &r) == VL_OK, "lean step"); }
    vl_trainer_params(&tr, pl);
    vl_trainer_destroy(&tr);
    if (rank == 0) {
      vl_comm cs;
      vl_comm_init_on(&cs, MPI_COMM_SELF, on_gpu ? VL_BACKEND_CUDA : VL_BACKEND_CPU, 0, 60);
      cl.train.grad_accum = W;
      CHECK(vl_trainer_create(&tr, &cl, &m, &cs, o, w0) == VL_OK, "lean trainer, one rank");
      for (int s = 0; s < 10; s++) { vl_step_report r; vl_trainer_step(&tr, &r); }
      vl_trainer_params(&tr, p1);
      vl_trainer_destroy(&tr);
      vl_comm_free(&cs);
      size_t diff = 0;
      for (size_t i = 0; i < n; i++) diff += pl[i] != p1[i];
      double e = rel_err_f32(pl, p1, n);
      printf("lean: %d ranks x accumulation 1 vs 1 rank x accumulation %d: %zu of %zu weights differ, "
             "relative %.2e\n", W, W, diff, n, e);
      CHECK(e < (on_gpu ? 3e-2 : 1e-3), "lean sharded vs one-rank accumulation: %.3e", e);
    }
    free(pl); free(p1);
  }
  int f = test_failures_;
  MPI_Allreduce(MPI_IN_PLACE, &f, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
  /* gradient statistics through vl_train_run */
  {
    vl_config c2 = cfg;
    snprintf(c2.run.out_dir, sizeof c2.run.out_dir, "%s/stats", dir);
    c2.train.steps = 6;
    c2.train.stats_every = 2;
    c2.run.checkpoint_every = 1; /* steps 5 and 6 kept: the update of step 6 */
    c2.run.keep_checkpoints = 2;
    int pre = 0;
    CHECK(vl_train_run(&c2, &m, &cw, o, w0, &pre) == VL_OK && !pre, "train run: %s", vl_err_last());
    /* validation loss of the initial weights, split over W ranks and on one */
    double l0 = 0, l1 = 0;
    vl_eval_result e0, e1;
    vl_trainer_create(&tr, &cfg, &m, &cw, o, w0);
    CHECK(vl_trainer_eval(&tr, 16, &e0) == VL_OK, "eval: %s", vl_err_last());
    l0 = e0.loss;
    vl_trainer_destroy(&tr);
    if (rank == 0) {
      vl_comm one;
      vl_comm_init_on(&one, MPI_COMM_SELF, on_gpu ? VL_BACKEND_CUDA : VL_BACKEND_CPU, 0, 60);
      vl_trainer_create(&tr, &cfg, &m, &one, o, w0);
      vl_trainer_eval(&tr, 16, &e1);
      l1 = e1.loss;
      CHECK(e0.samples == 16 && e1.samples == 16 && e0.correct == e1.correct,
            "exact-match on %d ranks %ld/%ld, on one %ld/%ld", W, e0.correct, e0.samples, e1.correct, e1.samples);
      vl_trainer_destroy(&tr);
      vl_comm_free(&one);
      CHECK(fabs(l0 - l1) <= 1e-6 * l1, "validation loss on %d ranks %.9g, on one %.9g", W, l0, l1);
    }
    if (rank == 0) {
      char path[VL_PATH_MAX + 32];
      snprintf(path, sizeof path, "%s/gradstats.h5", c2.run.out_dir);
      hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
      CHECK(f >= 0, "open %s", path);
      double step[8] = {0}, gn[8] = {0}, *tg = calloc((size_t)8 * m.n_params, sizeof(double));
      double rk[32] = {0};
      hid_t d = H5Dopen2(f, "step", H5P_DEFAULT);
      hid_t sp = H5Dget_space(d);
      hsize_t rows = 0;
      H5Sget_simple_extent_dims(sp, &rows, NULL);
      H5Sclose(sp);
      CHECK(rows == 3, "rows %llu", (unsigned long long)rows);
      H5Dread(d, H5T_NATIVE_DOUBLE, H5S_ALL, H5S_ALL, H5P_DEFAULT, step); H5Dclose(d);
      d = H5Dopen2(f, "grad_norm", H5P_DEFAULT);
      H5Dread(d, H5T_NATIVE_DOUBLE, H5S_ALL, H5S_ALL, H5P_DEFAULT, gn); H5Dclose(d);
      d = H5Dopen2(f, "tensor_grad_norm", H5P_DEFAULT);
      H5Dread(d, H5T_NATIVE_DOUBLE, H5S_ALL, H5S_ALL, H5P_DEFAULT, tg); H5Dclose(d);
      d = H5Dopen2(f, "rank_grad_norm", H5P_DEFAULT);
      H5Dread(d, H5T_NATIVE_DOUBLE, H5S_ALL, H5S_ALL, H5P_DEFAULT, rk); H5Dclose(d);
      CHECK(step[0] == 2 && step[1] == 4 && step[2] == 6, "steps %g %g %g", step[0], step[1], step[2]);
      for (hsize_t r = 0; r < rows && r < 8; r++) {
        double ss = 0;
        for (int i = 0; i < m.n_params; i++) ss += tg[r * m.n_params + i] * tg[r * m.n_params + i];
        CHECK(fabs(sqrt(ss) - gn[r]) <= 1e-6 * gn[r], "row %llu: per-tensor norms give %.9g, global %.9g",
              (unsigned long long)r, sqrt(ss), gn[r]);
        for (int q = 0; q < W; q++) CHECK(rk[r * W + q] > 0, "rank %d gradient norm", q);
      }
      char names[2][VL_NAME_MAX];
      hid_t st = H5Tcopy(H5T_C_S1);
      H5Tset_size(st, VL_NAME_MAX);
      d = H5Dopen2(f, "tensor_names", H5P_DEFAULT);
      hsize_t two = 2, zero = 0;
      hid_t fs = H5Dget_space(d), ms = H5Screate_simple(1, &two, NULL);
      H5Sselect_hyperslab(fs, H5S_SELECT_SET, &zero, NULL, &two, NULL);
      H5Dread(d, st, ms, fs, H5P_DEFAULT, names);
      CHECK(!strcmp(names[1], m.params[1].name), "tensor_names[1] = %s", names[1]);
      H5Sclose(ms); H5Sclose(fs); H5Dclose(d); H5Tclose(st);
      double es = 0, el = 0;
      d = H5Dopen2(f, "eval_step", H5P_DEFAULT);
      H5Dread(d, H5T_NATIVE_DOUBLE, H5S_ALL, H5S_ALL, H5P_DEFAULT, &es); H5Dclose(d);
      d = H5Dopen2(f, "eval_loss", H5P_DEFAULT);
      H5Dread(d, H5T_NATIVE_DOUBLE, H5S_ALL, H5S_ALL, H5P_DEFAULT, &el); H5Dclose(d);
      double ea = -1;
      d = H5Dopen2(f, "eval_accuracy", H5P_DEFAULT);
      CHECK(d >= 0 && H5Dread(d, H5T_NATIVE_DOUBLE, H5S_ALL, H5S_ALL, H5P_DEFAULT, &ea) >= 0, "eval_accuracy");
      H5Dclose(d);
      CHECK(ea >= 0 && ea <= 1, "eval_accuracy %g", ea);
      CHECK(es == 6 && el < l0, "validation loss at step %g: %.4f, initial %.4f", es, el, l0);
      /* the row of step 6 against the checkpoints of steps 5 and 6: parameter
       * norms of the updated weights, update ratios |w6 - w5| / |w6| */
      {
        double *pn = calloc(m.n_params, sizeof(double)), *ur = calloc(m.n_params, sizeof(double));
        hsize_t st2[2] = {2, 0}, cnt[2] = {1, (hsize_t)m.n_params};
        hid_t ms = H5Screate_simple(2, cnt, NULL);
        const char *sets[2] = {"tensor_param_norm", "tensor_update_ratio"};
        double *dst[2] = {pn, ur};
        for (int k = 0; k < 2; k++) {
          d = H5Dopen2(f, sets[k], H5P_DEFAULT);
          hid_t fs = H5Dget_space(d);
          H5Sselect_hyperslab(fs, H5S_SELECT_SET, st2, NULL, cnt, NULL);
          CHECK(H5Dread(d, H5T_NATIVE_DOUBLE, ms, fs, H5P_DEFAULT, dst[k]) >= 0, "read %s", sets[k]);
          H5Sclose(fs); H5Dclose(d);
        }
        H5Sclose(ms);
        char c5[VL_PATH_MAX + 64], c6[VL_PATH_MAX + 64];
        snprintf(c5, sizeof c5, "%s/ckpt/step_0000005.h5", c2.run.out_dir);
        snprintf(c6, sizeof c6, "%s/ckpt/step_0000006.h5", c2.run.out_dir);
        hid_t f5 = H5Fopen(c5, H5F_ACC_RDONLY, H5P_DEFAULT), f6 = H5Fopen(c6, H5F_ACC_RDONLY, H5P_DEFAULT);
        CHECK(f5 >= 0 && f6 >= 0, "checkpoints of steps 5 and 6");
        double worst_n = 0, worst_u = 0;
        for (int i = 0; i < m.n_params && f5 >= 0 && f6 >= 0; i++) {
          const vl_param *pp = &m.params[i];
          float *a5 = malloc(pp->numel * sizeof(float)), *a6 = malloc(pp->numel * sizeof(float));
          char nm[VL_NAME_MAX + 16];
          snprintf(nm, sizeof nm, "params/%s", pp->name);
          hid_t d5 = H5Dopen2(f5, nm, H5P_DEFAULT), d6 = H5Dopen2(f6, nm, H5P_DEFAULT);
          H5Dread(d5, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, a5);
          H5Dread(d6, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, a6);
          H5Dclose(d5); H5Dclose(d6);
          double n6 = 0, du = 0;
          for (size_t j = 0; j < pp->numel; j++) {
            n6 += (double)a6[j] * a6[j];
            du += ((double)a6[j] - a5[j]) * ((double)a6[j] - a5[j]);
          }
          n6 = sqrt(n6);
          double u = n6 > 0 ? sqrt(du) / n6 : 0;
          double en = fabs(pn[i] - n6) / (n6 > 0 ? n6 : 1), eu = fabs(ur[i] - u) / (u > 0 ? u : 1);
          if (en > worst_n) worst_n = en;
          if (eu > worst_u) worst_u = eu;
          free(a5); free(a6);
        }
        if (f5 >= 0) H5Fclose(f5);
        if (f6 >= 0) H5Fclose(f6);
        CHECK(worst_n < (on_gpu ? 3e-2 : 1e-6), "parameter norms vs the checkpoint: %.3e", worst_n);
        CHECK(worst_u < (on_gpu ? 3e-1 : 1e-5), "update ratios vs two checkpoints: %.3e", worst_u);
        printf("statistics of step 6 vs checkpoints 5 and 6: parameter norms within %.1e, update ratios within %.1e\n",
               worst_n, worst_u);
        free(pn); free(ur);
      }
      printf("validation loss: %.4f at start, %.4f after 6 steps\n", l0, el);
      H5Fclose(f);
      free(tg);
      printf("gradient statistics: %llu rows, per-tensor norms consistent with the global norm\n",
             (unsigned long long)rows);
    }
    /* non-finite steps in the statistics: a NaN weight, 2 steps, both
     * recorded as skipped with every rank's gradient non-finite */
    {
      float *wn = malloc(n * sizeof(float));
      memcpy(wn, w0, n * sizeof(float));
      wn[m.params[m.final_norm_w].offset] = NAN;
      vl_config c3 = cfg;
      snprintf(c3.run.out_dir, sizeof c3.run.out_dir, "%s/nan", dir);
      c3.train.steps = 2;
      c3.train.stats_every = 1;
      c3.train.eval_samples = 0;
      c3.run.checkpoint_every = 0;
      c3.run.save_final = 0;
      int pre = 0;
      CHECK(vl_train_run(&c3, &m, &cw, o, wn, &pre) == VL_OK, "NaN run: %s", vl_err_last());
      if (rank == 0) {
        char path[VL_PATH_MAX + 32];
        snprintf(path, sizeof path, "%s/gradstats.h5", c3.run.out_dir);
        hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
        double sk[2] = {0, 0}, nf[2] = {0, 0}, ls[2] = {0, 0};
        const char *names[3] = {"skipped", "nonfinite_ranks", "loss"};
        double *dst[3] = {sk, nf, ls};
        for (int k = 0; k < 3 && f >= 0; k++) {
          hid_t d = H5Dopen2(f, names[k], H5P_DEFAULT);
          CHECK(d >= 0 && H5Dread(d, H5T_NATIVE_DOUBLE, H5S_ALL, H5S_ALL, H5P_DEFAULT, dst[k]) >= 0, "%s", names[k]);
          if (d >= 0) H5Dclose(d);
        }
        if (f >= 0) H5Fclose(f);
        CHECK(f >= 0 && sk[0] == 1 && sk[1] == 1 && nf[0] == W && nf[1] == W && isnan(ls[0]) && isnan(ls[1]),
              "NaN steps recorded as skipped %g %g, non-finite ranks %g %g, loss %g %g", sk[0], sk[1], nf[0], nf[1],
              ls[0], ls[1]);
        printf("non-finite steps recorded: skipped, %d of %d ranks non-finite\n", (int)nf[0], W);
      }
      free(wn);
    }
  }

  if (rank == 0) {
    char cmd[400];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    if (system(cmd)) fprintf(stderr, "cleanup of %s failed\n", dir);
  }
  if (ocpu != o) vl_ops_destroy(ocpu);
  vl_ops_destroy(o);
  free(pa); free(w0);
  vl_model_free(&m);
  vl_config_free(&cfg);
  vl_comm_free(&cw);
  vl_comm_mpi_finalize();
  if (rank == 0) fprintf(stderr, "test_train on %d ranks: %d failures\n", W, f);
  return f ? 1 : 0;
}
