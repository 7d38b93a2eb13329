/* test_train_data: training from a dataset.h5 (run.data), under mpirun -np 2
 * (or 3; tests/test_train_data.sh).  The dataset is written here with the
 * writer: a 13-sample train split (steps cross epochs) and a val split.
 *  - W ranks x accumulation 1 and one rank x accumulation W read the same
 *    samples: the same loss at every step (fp32 reordering error) and the
 *    same parameters after 10 steps;
 *  - 5 steps + checkpoint + resume + 5 steps == 10 straight steps, bitwise
 *    (the sampler continues from the stored cursor); the W-rank checkpoint
 *    resumed on one rank (accumulation W) continues like the one-rank run;
 *    the cursor attributes are in the file; another seed or another
 *    training split on resume is refused;
 *  - evaluation on the val split: exact-match accuracy equals the count
 *    known by construction — val answers greedily decoded from the initial
 *    weights with full logits (vl_graph with logits) are exact, perturbed
 *    ones are not; the same split across W ranks and on one;
 *  - a dataset for another vocabulary, a missing file: clear errors on every
 *    rank (no hang); a file without a val split: eval says so.
 * `test_train_data --write PATH` only writes the dataset (for the vltrain
 * runs of test_train_data.sh). */
#include <hdf5.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "batch.h"
#include "comm.h"
#include "config.h"
#include "dataset.h"
#include "err.h"
#include "graph.h"
#include "image.h"
#include "micro_model.h"
#include "test_util.h"
#include "train.h"
#include "weights.h"

static const char *yaml =
    VL_TEST_MICRO_MODEL
    "train: {micro_batch: 1, steps: 10, lr: 1.0e-2, warmup_steps: 2, weight_decay: 0.1,\n"
    "        grad_clip: 0.5, max_seq_len: 96, max_vision_patches: 64, seed: 99}\n";

#define NTRAIN 13
#define NGREEDY 3
#define NPERTURB 2
#define NRANDOM 3

static uint64_t rng = 777;
static uint32_t rnd(void) {
  rng = rng * 6364136223846793005ull + 1442695040888963407ull;
  return (uint32_t)(rng >> 33);
}

typedef struct {
  int n, ni;
  int32_t ids[96];
  uint8_t mask[96];
  uint8_t rgb[16 * 16 * 3];
  vl_dataset_image im;
} gen_sample;

/* <vs> pads <ve> text, answer (supervised) to be filled in: returns the
 * prompt length. */
static int gen_prompt(gen_sample *s) {
  const int gh = 4 + 2 * (int)(rnd() % 3), gw = 4 + 2 * (int)(rnd() % 3);
  const int h = gh * 2, w = gw * 2;
  for (int q = 0; q < h * w * 3; q++) s->rgb[q] = (uint8_t)rnd();
  s->im = (vl_dataset_image){h, w, s->rgb, {1, gh, gw}, NULL, 0};
  s->ni = 1;
  int t = 0;
  s->ids[t++] = 90;
  for (int q = 0; q < gh * gw / 4; q++) s->ids[t++] = 92;
  s->ids[t++] = 91;
  const int text = 5 + (int)(rnd() % 10);
  for (int q = 0; q < text; q++) s->ids[t++] = (int32_t)(rnd() % 80);
  memset(s->mask, 0, sizeof s->mask);
  return t;
}

static void gen_random(gen_sample *s) {
  int t = gen_prompt(s);
  const int ans = 3 + (int)(rnd() % 4);
  for (int q = 0; q < ans; q++) { s->mask[t] = 1; s->ids[t++] = (int32_t)(rnd() % 80); }
  s->n = t;
}

static vl_dataset_info micro_info(int vocab) {
  vl_dataset_info in;
  memset(&in, 0, sizeof in);
  in.family = VL_FAMILY_QWEN3_VL;
  in.vocab_size = vocab;
  in.image_token_id = 92; in.vision_start_token_id = 90; in.vision_end_token_id = 91;
  snprintf(in.tokenizer_sha256, sizeof in.tokenizer_sha256, "none");
  in.patch_size = 2; in.temporal_patch_size = 2; in.merge_size = 2;
  in.min_pixels = 16; in.max_pixels = 1024;
  for (int c = 0; c < 3; c++) { in.image_mean[c] = 0.5f; in.image_std[c] = 0.5f; }
  in.max_seq_len = 96;
  snprintf(in.truncation, sizeof in.truncation, "skip");
  snprintf(in.source, sizeof in.source, "test_train_data");
  in.n_read = in.n_written = NTRAIN;
  return in;
}

/* Greedy answer from full logits: answer token k = argmax of the logits at
 * the row before it, given the prompt and answer tokens 0..k-1. */
static int greedy_answer(vl_graph *g, const vl_model_config *mc, gen_sample *s, int t, int ans) {
  int32_t labels[96];
  float pv[64 * 24];
  vl_image img = {s->im.w, s->im.h, s->rgb};
  vl_patch_params pp = {2, 2, 2, {0.5f, 0.5f, 0.5f}, {0.5f, 0.5f, 0.5f}};
  int32_t grid[1][3];
  vl_image_patchify(&img, &pp, pv, grid[0]);
  const int V = mc->text.vocab_size;
  for (int k = 0; k < ans; k++) {
    for (int q = 0; q < t; q++) labels[q] = -100;
    labels[t - 1] = s->ids[t - 1]; /* one target keeps the loss path ordinary */
    vl_sample x = {t, s->ids, labels, 1, (const int32_t(*)[3])grid, pv};
    vl_batch b;
    double loss;
    if (vl_batch_build(&b, mc, &x, 1) || vl_graph_set_batch(g, &b) || vl_graph_forward(g, 0.0f, &loss)) return 1;
    vl_batch_free(&b);
    const float *z = g->logits + (size_t)(t - 1) * V;
    int best = 0;
    for (int v = 1; v < V; v++)
      if (z[v] > z[best]) best = v;
    s->mask[t] = 1;
    s->ids[t++] = best;
  }
  s->n = t;
  return 0;
}

/* train: n_train samples; val: greedy + perturbed + random (if g). */
static int write_dataset(const char *path, int n_train, int vocab, int with_val, vl_graph *g,
                         const vl_model_config *mc) {
  vl_dataset_writer *w;
  if (vl_dataset_writer_open(&w, path)) return 1;
  gen_sample s;
  for (int i = 0; i < n_train; i++) {
    gen_random(&s);
    if (vl_dataset_writer_add(w, "train", s.ids, s.mask, s.n, &s.im, 1)) return 1;
  }
  if (with_val) {
    for (int i = 0; i < NGREEDY + NPERTURB; i++) {
      int t = gen_prompt(&s);
      if (greedy_answer(g, mc, &s, t, 3 + i % 2)) return 1;
      if (i >= NGREEDY) s.ids[s.n - 1] = (s.ids[s.n - 1] + 1) % 80; /* no longer the argmax */
      if (vl_dataset_writer_add(w, "val", s.ids, s.mask, s.n, &s.im, 1)) return 1;
    }
    for (int i = 0; i < NRANDOM; i++) {
      gen_random(&s);
      if (vl_dataset_writer_add(w, "val", s.ids, s.mask, s.n, &s.im, 1)) return 1;
    }
  }
  vl_dataset_info in = micro_info(vocab);
  if (vl_dataset_writer_commit(w, &in)) { vl_dataset_writer_abort(w); return 1; }
  return 0;
}

typedef struct { double loss[10]; float *params; } run_result;

static void run_steps(vl_trainer *tr, int from, int to, run_result *r) {
  for (int s = from; s < to; s++) {
    vl_step_report rep;
    CHECK(vl_trainer_step(tr, &rep) == VL_OK, "step %d: %s", s + 1, vl_err_last());
    r->loss[s] = rep.loss;
  }
}

int main(int argc, char **argv) {
  vl_config cfg;
  if (vl_config_load_string(&cfg, yaml, "train.yaml")) { fprintf(stderr, "%s\n", vl_err_last()); return 1; }
  vl_model m;
  if (vl_model_build(&m, &cfg.model)) return 1;
  const size_t n = m.n_elements;
  float *w0 = malloc(n * sizeof(float));
  vl_weights_init_random(&m, w0, 5, 0.2f);
  vl_ops *o;
  if (vl_ops_cpu_create(&o)) return 1;
  /* the greedy answers use a plain graph with full logits */
  vl_graph gl;
  if (vl_graph_create(&gl, &m, o, 96, 64, 1) || o->put(o, gl.params, w0, n)) return 1;

  if (argc == 3 && !strcmp(argv[1], "--write")) { /* no MPI needed */
    int rc = write_dataset(argv[2], NTRAIN, 96, 1, &gl, &cfg.model);
    if (rc) fprintf(stderr, "writing %s: %s\n", argv[2], vl_err_last());
    return rc;
  }

  if (vl_comm_mpi_init(&argc, &argv)) return 1;
  int rank, W;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &W);
  char dir[256] = "/tmp/vl_traindata_XXXXXX";
  if (rank == 0 && !mkdtemp(dir)) return 1;
  MPI_Bcast(dir, sizeof dir, MPI_CHAR, 0, MPI_COMM_WORLD);
  char data[300], other[300], noval[300], bigger[300];
  snprintf(data, sizeof data, "%s/data.h5", dir);
  snprintf(other, sizeof other, "%s/vocab97.h5", dir);
  snprintf(noval, sizeof noval, "%s/noval.h5", dir);
  snprintf(bigger, sizeof bigger, "%s/bigger.h5", dir);
  if (rank == 0) {
    CHECK(write_dataset(data, NTRAIN, 96, 1, &gl, &cfg.model) == 0, "write: %s", vl_err_last());
    CHECK(write_dataset(other, NTRAIN, 97, 0, NULL, NULL) == 0, "write 97");
    CHECK(write_dataset(noval, NTRAIN, 96, 0, NULL, NULL) == 0, "write noval");
    CHECK(write_dataset(bigger, NTRAIN + 1, 96, 0, NULL, NULL) == 0, "write bigger");
  }
  MPI_Barrier(MPI_COMM_WORLD);
  snprintf(cfg.run.data, sizeof cfg.run.data, "%s", data);
  vl_comm cw;
  if (vl_comm_init(&cw, VL_BACKEND_CPU, 0, 60)) return 1;

  /* A: W ranks x accumulation 1, 10 steps */
  cfg.train.grad_accum = 1;
  vl_trainer tr;
  run_result A = {{0}, malloc(n * sizeof(float))}, C = {{0}, malloc(n * sizeof(float))};
  CHECK(vl_trainer_create(&tr, &cfg, &m, &cw, o, w0) == VL_OK, "trainer: %s", vl_err_last());
  CHECK(tr.train_set && vl_dataset_size(tr.train_set) == NTRAIN && tr.val_set, "the dataset is open");
  run_steps(&tr, 0, 10, &A);
  vl_trainer_params(&tr, A.params);
  vl_eval_result ev_w;
  CHECK(vl_trainer_eval(&tr, 1000, &ev_w) == VL_OK, "eval: %s", vl_err_last());
  vl_trainer_destroy(&tr);

  /* C: 5 steps, checkpoint, a new trainer resumes, 5 steps */
  CHECK(vl_trainer_create(&tr, &cfg, &m, &cw, o, w0) == VL_OK, "trainer C");
  run_steps(&tr, 0, 5, &C);
  CHECK(vl_trainer_save(&tr, dir, 3) == VL_OK, "save: %s", vl_err_last());
  vl_trainer_destroy(&tr);
  char ck[600];
  snprintf(ck, sizeof ck, "%s/ckpt/step_0000005.h5", dir);
  CHECK(vl_trainer_create(&tr, &cfg, &m, &cw, o, w0) == VL_OK && vl_trainer_resume(&tr, ck) == VL_OK,
        "resume: %s", vl_err_last());
  CHECK(tr.step == 5 && tr.samples_done == (uint64_t)5 * W, "resumed at step %d, cursor %llu", tr.step,
        (unsigned long long)tr.samples_done);
  run_steps(&tr, 5, 10, &C);
  vl_trainer_params(&tr, C.params);
  vl_trainer_destroy(&tr);
  int bitwise = !memcmp(A.params, C.params, n * sizeof(float)) && !memcmp(A.loss, C.loss, sizeof A.loss);
  CHECK(bitwise, "5 + resume + 5 differs from 10 straight: params %.3e, loss 10: %.9g vs %.9g",
        rel_err_f32(C.params, A.params, n), C.loss[9], A.loss[9]);
  if (rank == 0)
    printf("dataset: 5 steps + checkpoint + resume + 5 steps == 10 straight steps on %d ranks: %s\n", W,
           bitwise ? "bitwise (parameters and all 10 losses)" : "NO");

  /* resume refusals: another seed, another training split */
  {
    vl_err_set_quiet(1);
    vl_config c2 = cfg;
    c2.train.seed = 100;
    vl_trainer_create(&tr, &c2, &m, &cw, o, w0);
    int rc = vl_trainer_resume(&tr, ck);
    CHECK(rc == VL_EINVAL && strstr(vl_err_last(), "seed 99, train.seed is 100"), "other seed: %s", vl_err_last());
    vl_trainer_destroy(&tr);
    c2 = cfg;
    snprintf(c2.run.data, sizeof c2.run.data, "%s", bigger);
    vl_trainer_create(&tr, &c2, &m, &cw, o, w0);
    rc = vl_trainer_resume(&tr, ck);
    CHECK(rc == VL_EINVAL && strstr(vl_err_last(), "13 samples, this run's has 14"), "other split: %s",
          vl_err_last());
    vl_trainer_destroy(&tr);
    /* creation errors reach every rank */
    c2 = cfg;
    snprintf(c2.run.data, sizeof c2.run.data, "%s", other);
    rc = vl_trainer_create(&tr, &c2, &m, &cw, o, w0);
    CHECK(rc == VL_EINVAL && strstr(vl_err_last(), "dataset made for vocab_size 97, model is 96"), "vocab: %s",
          vl_err_last());
    snprintf(c2.run.data, sizeof c2.run.data, "%s/absent.h5", dir);
    rc = vl_trainer_create(&tr, &c2, &m, &cw, o, w0);
    CHECK(rc == VL_EIO && strstr(vl_err_last(), "absent.h5: cannot open"), "absent: %s", vl_err_last());
    snprintf(c2.run.data, sizeof c2.run.data, "%s", noval);
    CHECK(vl_trainer_create(&tr, &c2, &m, &cw, o, w0) == VL_OK, "noval create");
    vl_eval_result e;
    rc = vl_trainer_eval(&tr, 4, &e);
    CHECK(rc == VL_EINVAL && strstr(vl_err_last(), "no \"val\" split"), "no val: %s", vl_err_last());
    vl_trainer_destroy(&tr);
    vl_err_set_quiet(0);
  }

  if (rank == 0) {
    /* the cursor in the file */
    hid_t f = H5Fopen(ck, H5F_ACC_RDONLY, H5P_DEFAULT);
    long long ds = -1, seed = -1, size = -1;
    hid_t a = H5Aopen(f, "data_samples", H5P_DEFAULT); H5Aread(a, H5T_NATIVE_LLONG, &ds); H5Aclose(a);
    a = H5Aopen(f, "data_seed", H5P_DEFAULT); H5Aread(a, H5T_NATIVE_LLONG, &seed); H5Aclose(a);
    a = H5Aopen(f, "data_size", H5P_DEFAULT); H5Aread(a, H5T_NATIVE_LLONG, &size); H5Aclose(a);
    H5Fclose(f);
    CHECK(ds == 5LL * W && seed == 99 && size == NTRAIN, "cursor attributes %lld %lld %lld", ds, seed, size);

    /* B: one rank x accumulation W over the same samples */
    vl_comm cs;
    if (vl_comm_init_on(&cs, MPI_COMM_SELF, VL_BACKEND_CPU, 0, 60)) return 1;
    cfg.train.grad_accum = W;
    run_result B = {{0}, malloc(n * sizeof(float))}, E = {{0}, malloc(n * sizeof(float))};
    CHECK(vl_trainer_create(&tr, &cfg, &m, &cs, o, w0) == VL_OK, "trainer B: %s", vl_err_last());
    run_steps(&tr, 0, 10, &B);
    vl_trainer_params(&tr, B.params);
    vl_eval_result ev_1;
    CHECK(vl_trainer_eval(&tr, 1000, &ev_1) == VL_OK, "eval B");
    vl_trainer_destroy(&tr);
    double worst = 0;
    for (int s = 0; s < 10; s++) worst = fmax(worst, fabs(A.loss[s] - B.loss[s]) / fabs(B.loss[s]));
    double e = rel_err_f32(A.params, B.params, n);
    printf("dataset: %d ranks x accumulation 1 vs 1 rank x accumulation %d: losses of steps 1..10 differ by "
           "at most %.2e (relative; step 1..3: %.6f %.6f %.6f vs %.6f %.6f %.6f), parameters by %.2e\n",
           W, W, worst, A.loss[0], A.loss[1], A.loss[2], B.loss[0], B.loss[1], B.loss[2], e);
    CHECK(worst < 1e-5, "losses differ by %.3e", worst);
    CHECK(e < 1e-5, "parameters differ by %.3e", e);
    int moved = 0;
    for (int s = 1; s < 10; s++) moved += A.loss[s] != A.loss[0];
    CHECK(moved > 5, "losses vary between steps");

    /* the W-rank checkpoint resumed on one rank continues the same samples */
    CHECK(vl_trainer_create(&tr, &cfg, &m, &cs, o, w0) == VL_OK && vl_trainer_resume(&tr, ck) == VL_OK,
          "resume on one rank: %s", vl_err_last());
    run_steps(&tr, 5, 10, &E);
    vl_trainer_params(&tr, E.params);
    vl_trainer_destroy(&tr);
    double e2 = rel_err_f32(E.params, B.params, n), wl = 0;
    for (int s = 5; s < 10; s++) wl = fmax(wl, fabs(E.loss[s] - B.loss[s]) / fabs(B.loss[s]));
    printf("dataset: %d-rank checkpoint resumed on 1 rank: losses of steps 6..10 differ by %.2e, parameters by %.2e\n",
           W, wl, e2);
    CHECK(e2 < 1e-5 && wl < 1e-5, "cross-world-size resume: params %.3e, losses %.3e", e2, wl);

    /* exact-match accuracy at the initial weights: known by construction */
    CHECK(vl_trainer_create(&tr, &cfg, &m, &cs, o, w0) == VL_OK, "trainer eval");
    vl_eval_result e0;
    CHECK(vl_trainer_eval(&tr, 1000, &e0) == VL_OK, "eval 0: %s", vl_err_last());
    vl_eval_result e3;
    CHECK(vl_trainer_eval(&tr, NGREEDY, &e3) == VL_OK, "eval 3");
    vl_trainer_destroy(&tr);
    const int nval = NGREEDY + NPERTURB + NRANDOM;
    printf("dataset: exact-match accuracy at the initial weights %ld/%ld (greedy-decoded answers %d of %d val "
           "samples), first %d samples %ld/%ld; val loss %.4f\n", e0.correct, e0.samples, NGREEDY, nval, NGREEDY,
           e3.correct, e3.samples, e0.loss);
    CHECK(e0.samples == nval && e0.correct == NGREEDY, "accuracy %ld/%ld, expected %d/%d", e0.correct, e0.samples,
          NGREEDY, nval);
    CHECK(e3.samples == NGREEDY && e3.correct == NGREEDY, "first %d: %ld/%ld", NGREEDY, e3.correct, e3.samples);
    CHECK(fabs(e0.accuracy - (double)NGREEDY / nval) < 1e-12, "accuracy %g", e0.accuracy);
    CHECK(ev_1.samples == nval && ev_w.samples == nval && ev_w.correct == ev_1.correct &&
          fabs(ev_w.loss - ev_1.loss) <= 1e-5 * ev_1.loss,
          "after training: eval on %d ranks %ld/%ld loss %.9g, on one %ld/%ld loss %.9g", W, ev_w.correct,
          ev_w.samples, ev_w.loss, ev_1.correct, ev_1.samples, ev_1.loss);
    free(B.params); free(E.params);
    vl_comm_free(&cs);
  }
  int f = test_failures_;
  MPI_Allreduce(MPI_IN_PLACE, &f, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
  if (rank == 0) {
    char cmd[400];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    if (system(cmd)) fprintf(stderr, "cleanup of %s failed\n", dir);
  }
  free(A.params); free(C.params); free(w0);
  vl_graph_destroy(&gl);
  vl_ops_destroy(o);
  vl_model_free(&m);
  vl_config_free(&cfg);
  vl_comm_free(&cw);
  vl_comm_mpi_finalize();
  if (rank == 0) fprintf(stderr, "test_train_data on %d ranks: %d failures\n", W, f);
  return f ? 1 : 0;
}
