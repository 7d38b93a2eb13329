/* test_overlap: train.overlap_grad_reduce (the ZeRO-1 reduction in buckets
 * during the last backward), under mpirun -np 2 and 3 (and 1):
 *  - vl_comm_reduce_range_to_owners on odd sizes (7 elements a rank; a
 *    range straddling 2 and 3 shards, an empty one, the tail), with MPI's
 *    count limit lowered so ranges go in pieces, against the plain sum
 *    (integer-valued floats: exact in any order) and against the
 *    reduce-scatter; the elements outside this rank's shard keep their
 *    local values; leaving one range out leaves a wrong shard; bad ranges
 *    are errors;
 *  - the backward's buckets: they tile the model's elements exactly, each
 *    gradient is final when its bucket is handed over (equal, bitwise, to
 *    the gradient at the end of the pass), and the sequence is the same for
 *    a batch with an image, one without and a frozen vision tower;
 *  - the trainer (accumulation 2, 4 steps) with the overlap on gives the
 *    weights it gives with it off: bitwise on 2 ranks (a + b commutes),
 *    within 1e-6 on 3; the overlap really ran (steps counted);
 *  - the optimizer with one bucket dropped from the backward's hand-over
 *    reduces the gap itself and gives the same weights; statistics after an
 *    armed backward are refused;
 *  - gradient statistics (per-rank local norms, per-tensor norms, global
 *    norm) through vl_train_run every 2 steps are unchanged by the overlap.
 * VL_TEST_BACKEND=cuda runs the same on GPUs (NCCL; bf16 limits, no
 * bitwise claims between runs); with VL_TEST_SHARED_GPU=1 too, ranks may
 * share a GPU (run.allow_shared_gpu: the staged path through host memory). */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <hdf5.h>

#include "batch.h"
#include "comm.h"
#include "config.h"
#include "err.h"
#include "graph.h"
#include "micro_model.h"
#include "optim.h"
#include "synth.h"
#include "test_util.h"
#include "train.h"
#include "weights.h"

static const char *yaml =
    VL_TEST_MICRO_MODEL
    "train: {micro_batch: 1, grad_accum: 2, steps: 4, lr: 1.0e-2, warmup_steps: 0, weight_decay: 0.1,\n"
    "        grad_clip: 0.5, max_seq_len: 96, max_vision_patches: 64, seed: 7, eval_samples: 0,\n"
    "        stats_every: 0}\n"
    "run: {resume: false, save_final: false}\n";

static int rank, W, on_gpu;

/* ---- the range-to-owner reduction ---------------------------------------- */

static float value(int r, size_t i) { return (float)((r + 1) * 1000 + (int)i); }

/* buf (device) <- this rank's values; returns 0 on success */
static int fill(vl_ops *o, float *dev, float *host, size_t total) {
  for (size_t i = 0; i < total; i++) host[i] = value(rank, i);
  return o->put_raw(o, dev, host, total * sizeof(float));
}

static void test_range_reduce(vl_comm *c, vl_ops *o) {
  const size_t n = 7, total = n * (size_t)W;
  /* cuts: [0,3) in shard 0, [3,3) empty, [3, 3+2n) over min(3, W) shards, then the tail */
  size_t cut[5] = {0, 3, 3, 3 + 2 * n, total};
  for (int i = 0; i < 5; i++) if (cut[i] > total) cut[i] = total;
  float *dev = NULL, *h = malloc(total * sizeof(float)), *got = malloc(total * sizeof(float));
  float *rs = malloc(total * sizeof(float));
  CHECK(o->alloc(o, (void **)&dev, total * sizeof(float), "test buffer") == VL_OK, "alloc");
  const size_t lo = (size_t)rank * n, hi = lo + n;
  for (int pass = 0; pass < 2; pass++) {
    c->max_count = pass ? 4 : (size_t)2147483647; /* pass 1: MPI calls of at most 4 */
    CHECK(fill(o, dev, h, total) == VL_OK, "put");
    for (int k = 0; k + 1 < 5; k++)
      CHECK(vl_comm_reduce_range_to_owners(c, VL_COMM_F32, dev, cut[k], cut[k + 1], n) == VL_OK,
            "range [%zu, %zu): %s", cut[k], cut[k + 1], vl_err_last());
    CHECK(vl_comm_sync(c) == VL_OK, "sync: %s", vl_err_last());
    o->get_raw(o, got, dev, total * sizeof(float));
    int bad_sum = 0, bad_local = 0;
    for (size_t i = 0; i < total; i++) {
      double sum = 0;
      for (int r = 0; r < W; r++) sum += value(r, i);
      if (i >= lo && i < hi) bad_sum += got[i] != (float)sum;
      else bad_local += got[i] != value(rank, i);
    }
    CHECK(bad_sum == 0, "pass %d: %d elements of rank %d's shard are not the sum", pass, bad_sum, rank);
    CHECK(bad_local == 0, "pass %d: %d elements outside the shard changed", pass, bad_local);
    /* the same as the reduce-scatter, bitwise */
    CHECK(fill(o, dev, h, total) == VL_OK, "put");
    CHECK(vl_comm_reduce_scatter_inplace(c, VL_COMM_F32, dev, n) == VL_OK && vl_comm_sync(c) == VL_OK,
          "reduce-scatter: %s", vl_err_last());
    o->get_raw(o, rs, dev, total * sizeof(float));
    CHECK(memcmp(rs + lo, got + lo, n * sizeof(float)) == 0, "pass %d: ranges differ from the reduce-scatter", pass);
  }
  c->max_count = 2147483647;
  /* leave out the range over several shards: the shards it meets are wrong */
  CHECK(fill(o, dev, h, total) == VL_OK, "put");
  for (int k = 0; k + 1 < 5; k++)
    if (k != 2) CHECK(vl_comm_reduce_range_to_owners(c, VL_COMM_F32, dev, cut[k], cut[k + 1], n) == VL_OK, "range");
  vl_comm_sync(c);
  o->get_raw(o, got, dev, total * sizeof(float));
  int wrong = 0, meets = lo < cut[3] && hi > cut[2];
  for (size_t i = lo; i < hi; i++) {
    double sum = 0;
    for (int r = 0; r < W; r++) sum += value(r, i);
    wrong += got[i] != (float)sum;
  }
  if (W > 1) CHECK(!meets || wrong > 0, "a skipped range went unnoticed on rank %d", rank);
  /* errors, the same on every rank */
  vl_err_set_quiet(1);
  CHECK(vl_comm_reduce_range_to_owners(c, VL_COMM_F32, dev, 0, total + 1, n) == VL_EINVAL, "past the end");
  CHECK(vl_comm_reduce_range_to_owners(c, VL_COMM_F32, dev, 5, 4, n) == VL_EINVAL, "a > b");
  CHECK(vl_comm_reduce_range_to_owners(c, VL_COMM_F32, dev, 0, 0, 0) == VL_EINVAL, "no elements per rank");
  if (!on_gpu)
    CHECK(vl_comm_reduce_range_to_owners(c, VL_COMM_BF16, dev, 0, 2, n) == VL_ENOTSUP, "bf16 on the CPU");
  vl_err_set_quiet(0);
  CHECK(vl_comm_wait_compute(c, o->compute_stream ? o->compute_stream(o) : NULL) == VL_OK, "wait: %s",
        vl_err_last());
  o->free(o, dev);
  free(h); free(got); free(rs);
  if (rank == 0) printf("range-to-owner reduction on %d ranks: exact, equal to the reduce-scatter\n", W);
}

/* ---- the backward's buckets ----------------------------------------------- */

typedef struct {
  vl_graph *g;
  int n;
  size_t a[256], b[256];
  float *snap;   /* (n_elements) gradients as handed over */
  int rc;
} recorder;

static int record(void *ctx, size_t a, size_t b) {
  recorder *r = ctx;
  if (r->n < 256) { r->a[r->n] = a; r->b[r->n] = b; }
  r->n++;
  vl_ops *o = r->g->ops;
  float *tmp = malloc((b - a) * sizeof(float));
  if (!tmp) return VL_ENOMEM;
  int rc = o->get(o, tmp, (char *)r->g->grads + a * o->elem_size, b - a);
  memcpy(r->snap + a, tmp, (b - a) * sizeof(float));
  free(tmp);
  return rc;
}

/* One forward + backward of `s` from zero gradients with the recorder; checks finality. */
static void buckets_of(vl_graph *g, const vl_model *m, const vl_sample *s, recorder *r, const char *what) {
  vl_ops *o = g->ops;
  const size_t n = m->n_elements;
  r->n = 0;
  r->g = g;
  for (size_t i = 0; i < n; i++) r->snap[i] = NAN;
  vl_batch b;
  double loss = 0;
  CHECK(vl_batch_build(&b, &m->cfg, s, 1) == VL_OK, "%s: batch: %s", what, vl_err_last());
  o->zero(o, g->grads, n * o->elem_size);
  g->grad_ready = record;
  g->grad_ready_ctx = r;
  CHECK(vl_graph_set_batch(g, &b) == VL_OK && vl_graph_forward(g, 0.01f, &loss) == VL_OK &&
        vl_graph_backward(g) == VL_OK, "%s: passes: %s", what, vl_err_last());
  g->grad_ready = NULL;
  vl_batch_free(&b);
  float *fin = malloc(n * sizeof(float));
  o->get(o, fin, g->grads, n);
  /* tiling: sorted ranges are contiguous from 0 to n */
  size_t order[256];
  int k = r->n < 256 ? r->n : 256;
  for (int i = 0; i < k; i++) order[i] = (size_t)i;
  for (int i = 1; i < k; i++)
    for (int j = i; j > 0 && r->a[order[j]] < r->a[order[j - 1]]; j--) {
      size_t t = order[j]; order[j] = order[j - 1]; order[j - 1] = t;
    }
  size_t next = 0;
  int tiles = 1;
  for (int i = 0; i < k; i++) {
    if (r->a[order[i]] != next) tiles = 0;
    next = r->b[order[i]];
  }
  CHECK(tiles && next == n, "%s: the %d buckets do not tile [0, %zu) (end %zu)", what, r->n, n, next);
  /* finality: nothing was added after the hand-over */
  size_t late = 0;
  for (size_t i = 0; i < n; i++) late += memcmp(&fin[i], &r->snap[i], sizeof(float)) != 0;
  CHECK(late == 0, "%s: %zu gradients changed after their bucket was handed over", what, late);
  free(fin);
}

static void test_buckets(vl_ops *o, const vl_config *cfg) {
  vl_model m, mf;
  vl_model_build(&m, &cfg->model);
  vl_model_build(&mf, &cfg->model);
  size_t nf = 0;
  vl_model_freeze(&mf, "model.visual.*", &nf);
  const size_t n = m.n_elements;
  float *w = malloc(n * sizeof(float));
  vl_weights_init_random(&m, w, 11, 0.2f);
  static recorder r[3];
  for (int i = 0; i < 3; i++) r[i].snap = malloc(n * sizeof(float));
  vl_synth s;
  memset(&s, 0, sizeof s);
  vl_synth_sample(&s, &cfg->model, 3, (uint64_t)rank, 96, 64);
  /* a text-only sample: no image tokens, no patches */
  int32_t ids[24], labels[24];
  for (int i = 0; i < 24; i++) { ids[i] = (i * 7 + 3) % 80; labels[i] = i >= 12 ? ids[i] : -100; }
  vl_sample text = {24, ids, labels, 0, NULL, NULL};
  vl_graph g, gf;
  CHECK(vl_graph_create(&g, &m, o, 96, 64, 0) == VL_OK, "graph: %s", vl_err_last());
  CHECK(vl_graph_create(&gf, &mf, o, 96, 64, 0) == VL_OK, "graph (frozen vision): %s", vl_err_last());
  o->put(o, g.params, w, n);
  o->put(o, gf.params, w, n);
  CHECK(s.sample.n_images > 0, "the synthetic sample has an image");
  buckets_of(&g, &m, &s.sample, &r[0], "with an image");
  buckets_of(&g, &m, &text, &r[1], "text only");
  buckets_of(&gf, &mf, &s.sample, &r[2], "frozen vision");
  const vl_model_config *c = &cfg->model;
  const int want = c->text.num_hidden_layers + 2 + c->vision.depth + 1 + c->vision.n_deepstack + 1;
  CHECK(r[0].n == want, "%d buckets, expected %d", r[0].n, want);
  for (int k = 1; k < 3; k++)
    CHECK(r[k].n == r[0].n && !memcmp(r[k].a, r[0].a, sizeof r[0].a) && !memcmp(r[k].b, r[0].b, sizeof r[0].b),
          "case %d hands over other buckets or another order", k);
  if (rank == 0) printf("backward: %d buckets tile the %zu elements, each final when handed over, same order "
                        "without an image or with a frozen tower\n", r[0].n, n);
  vl_graph_destroy(&g);
  vl_graph_destroy(&gf);
  vl_synth_free(&s);
  for (int i = 0; i < 3; i++) free(r[i].snap);
  free(w);
  vl_model_free(&m);
  vl_model_free(&mf);
}

/* ---- the trainer and the optimizer ---------------------------------------- */

static double compare(const float *a, const float *b, size_t n, int *bitwise) {
  *bitwise = memcmp(a, b, n * sizeof(float)) == 0;
  return rel_err_f32(a, b, n);
}

static void test_trainer(vl_comm *c, vl_ops *o, const vl_config *cfg, const vl_model *m, const float *w0) {
  const size_t n = m->n_elements;
  float *p[2] = {malloc(n * sizeof(float)), malloc(n * sizeof(float))};
  double norm[2][4];
  int overlapped[2] = {0, 0};
  for (int on = 0; on < 2; on++) {
    vl_config cc = *cfg;
    cc.train.overlap_grad_reduce = on;
    vl_trainer tr;
    CHECK(vl_trainer_create(&tr, &cc, m, c, o, w0) == VL_OK, "trainer: %s", vl_err_last());
    for (int s = 0; s < 4; s++) {
      vl_step_report rep;
      CHECK(vl_trainer_step(&tr, &rep) == VL_OK, "step (overlap %d): %s", on, vl_err_last());
      norm[on][s] = rep.grad_norm;
    }
    overlapped[on] = tr.opt.overlapped_steps;
    vl_trainer_params(&tr, p[on]);
    vl_trainer_destroy(&tr);
  }
  int bit = 0;
  const double e = compare(p[1], p[0], n, &bit);
  /* ranks sharing a GPU (staged collectives) do not overlap (train.c) */
  const int staged = c->backend == VL_BACKEND_CUDA && c->staged;
  CHECK(overlapped[0] == 0 && overlapped[1] == (W > 1 && !staged ? 4 : 0), "overlapped steps: %d off, %d on",
        overlapped[0], overlapped[1]);
  if (on_gpu) CHECK(e < 3e-2, "GPU: overlap on vs off %.3e", e);
  else if (W <= 2) CHECK(bit && !memcmp(norm[0], norm[1], sizeof norm[0]), "overlap on vs off not bitwise (%.3e)", e);
  else CHECK(e < 1e-6, "overlap on vs off: %.3e", e);
  if (rank == 0)
    printf("trainer, %d ranks x accumulation 2, 4 steps (%zu elements, padded %zu): overlap on vs off %s "
           "(rel. %.2e)\n", W, n, vl_optim_padded_size(n, W), bit ? "bitwise" : "differ", e);
  free(p[0]); free(p[1]);
}

typedef struct {
  int (*inner)(void *, size_t, size_t);
  void *inner_ctx;
  int drop, seen;
} dropper;

static int drop_one(void *ctx, size_t a, size_t b) {
  dropper *d = ctx;
  return d->seen++ == d->drop ? VL_OK : d->inner(d->inner_ctx, a, b);
}

/* optimizer-level: a dropped bucket is reduced by the step; statistics refused */
static void test_optim_gap(vl_comm *c, vl_ops *o, const vl_config *cfg, const vl_model *m, const float *w0) {
  const size_t n = m->n_elements, padded = vl_optim_padded_size(n, W);
  float *p[3];
  vl_synth s[2];
  memset(s, 0, sizeof s);
  for (int a = 0; a < 2; a++) vl_synth_sample(&s[a], &cfg->model, 5, (uint64_t)(a * W + rank), 96, 64);
  for (int mode = 0; mode < 3; mode++) { /* 0: plain, 1: armed, bucket 3 dropped, 2: armed + statistics */
    p[mode] = malloc(n * sizeof(float));
    size_t begin, mine;
    vl_optim_shard_range(n, W, rank, &begin, &mine);
    vl_graph g;
    vl_optim opt;
    CHECK(vl_graph_create_padded(&g, m, o, 96, 64, 0, padded) == VL_OK, "graph: %s", vl_err_last());
    o->put(o, g.params, w0, n);
    CHECK(vl_optim_create(&opt, m, o, c, &cfg->train, w0 + begin) == VL_OK, "optim: %s", vl_err_last());
    vl_optim_bind(&opt, &g);
    dropper d = {0};
    for (int a = 0; a < 2; a++) {
      vl_batch b;
      double loss = 0;
      vl_batch_build(&b, &cfg->model, &s[a].sample, 1);
      if (mode && a == 1) {
        CHECK(vl_optim_overlap_begin(&opt, &g) == VL_OK, "arm: %s", vl_err_last());
        d.inner = g.grad_ready;
        d.inner_ctx = g.grad_ready_ctx;
        d.drop = 3;
        g.grad_ready = drop_one;
        g.grad_ready_ctx = &d;
      }
      CHECK(vl_graph_set_batch(&g, &b) == VL_OK && vl_graph_forward(&g, 0.02f, &loss) == VL_OK &&
            vl_graph_backward(&g) == VL_OK, "passes: %s", vl_err_last());
      vl_batch_free(&b);
    }
    vl_optim_stats st;
    memset(&st, 0, sizeof st);
    double *rk = calloc((size_t)W, sizeof(double));
    if (mode == 2) st.rank_grad_norm = rk;
    vl_err_set_quiet(mode == 2);
    int rc = vl_optim_step(&opt, &g, 0, &st);
    vl_err_set_quiet(0);
    if (mode < 2) CHECK(rc == VL_OK && opt.overlapped_steps == mode, "step %d: %s", mode, vl_err_last());
    else CHECK(rc == VL_EINVAL && strstr(vl_err_last(), "overlap"), "statistics after an armed backward: rc %d %s",
               rc, vl_err_last());
    CHECK(g.grad_ready == NULL, "the step disarms the graph");
    if (mode == 1) CHECK(d.seen > 3, "only %d buckets", d.seen);
    o->get(o, p[mode], g.params, n);
    free(rk);
    vl_optim_destroy(&opt);
    vl_graph_destroy(&g);
  }
  int bit = 0;
  const double e = compare(p[1], p[0], n, &bit);
  if (on_gpu) CHECK(e < 3e-2, "GPU: dropped bucket %.3e", e);
  else if (W <= 2) CHECK(bit, "a dropped bucket: not bitwise (%.3e)", e);
  else CHECK(e < 1e-6, "a dropped bucket: %.3e", e);
  if (rank == 0) printf("optimizer: a bucket left out of the backward's hand-over is reduced by the step (%s)\n",
                        bit ? "bitwise" : "within limits");
  for (int i = 0; i < 3; i++) free(p[i]);
  for (int a = 0; a < 2; a++) vl_synth_free(&s[a]);
}

/* gradient statistics through vl_train_run, every 2 steps */
static int read_set(hid_t f, const char *name, double *out, size_t cap) {
  hid_t d = H5Dopen2(f, name, H5P_DEFAULT);
  if (d < 0) return -1;
  hid_t sp = H5Dget_space(d);
  hssize_t k = H5Sget_simple_extent_npoints(sp);
  H5Sclose(sp);
  int rc = k > 0 && (size_t)k <= cap && H5Dread(d, H5T_NATIVE_DOUBLE, H5S_ALL, H5S_ALL, H5P_DEFAULT, out) >= 0
               ? (int)k : -1;
  H5Dclose(d);
  return rc;
}

static void test_stats(vl_comm *c, vl_ops *o, const vl_config *cfg, const vl_model *m, const float *w0,
                       const char *dir) {
  const size_t cap = 64 * (size_t)m->n_params + 64 * (size_t)W + 64;
  double *v[2][3];
  int k[2][3];
  static const char *sets[3] = {"rank_grad_norm", "tensor_grad_norm", "grad_norm"};
  for (int on = 0; on < 2; on++) {
    vl_config cc = *cfg;
    cc.train.overlap_grad_reduce = on;
    cc.train.stats_every = 2;
    snprintf(cc.run.out_dir, sizeof cc.run.out_dir, "%s/stats%d", dir, on);
    int pre = 0;
    CHECK(vl_train_run(&cc, m, c, o, w0, &pre) == VL_OK && !pre, "train run (overlap %d): %s", on, vl_err_last());
    for (int i = 0; i < 3; i++) {
      v[on][i] = calloc(cap, sizeof(double));
      k[on][i] = 0;
    }
    if (rank == 0) {
      char path[VL_PATH_MAX + 32];
      snprintf(path, sizeof path, "%s/gradstats.h5", cc.run.out_dir);
      hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
      CHECK(f >= 0, "open %s", path);
      for (int i = 0; i < 3 && f >= 0; i++) k[on][i] = read_set(f, sets[i], v[on][i], cap);
      if (f >= 0) H5Fclose(f);
    }
  }
  if (rank == 0) {
    CHECK(k[0][0] == 2 * W && k[0][2] == 2, "rows: %d rank norms, %d global", k[0][0], k[0][2]);
    for (int i = 0; i < 3; i++) {
      /* relative to the set's size: a tensor's norm of a few elements sums
       * few terms, its relative rounding is larger */
      int same = k[0][i] == k[1][i] && k[0][i] > 0, bit = same;
      double num = 0, den = 0;
      for (int j = 0; same && j < k[0][i]; j++) {
        double a = v[0][i][j], b = v[1][i][j];
        if (a != b) bit = 0;
        num += (a - b) * (a - b);
        den += a * a;
      }
      const double worst = den > 0 ? sqrt(num / den) : sqrt(num);
      if (on_gpu) CHECK(same && worst < 3e-2, "GPU: %s differs by %.3e", sets[i], worst);
      else if (W <= 2) CHECK(same && bit, "%s not bitwise with the overlap (%.3e)", sets[i], worst);
      else CHECK(same && worst < 1e-6, "%s differs by %.3e", sets[i], worst);
      printf("  %s with the overlap: %s (rel. %.2e)\n", sets[i], bit ? "bitwise" : "differs", worst);
    }
    printf("gradient statistics (per-rank, per-tensor and global norms) unchanged by the overlap\n");
  }
  for (int on = 0; on < 2; on++)
    for (int i = 0; i < 3; i++) free(v[on][i]);
}

int main(int argc, char **argv) {
  if (vl_comm_mpi_init(&argc, &argv)) return 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &W);
  const char *be = getenv("VL_TEST_BACKEND");
  on_gpu = be && !strcmp(be, "cuda");
  vl_config cfg;
  if (vl_config_load_string(&cfg, yaml, "overlap.yaml")) { fprintf(stderr, "%s\n", vl_err_last()); return 1; }
  vl_model m;
  if (vl_model_build(&m, &cfg.model)) return 1;
  vl_comm c;
  const char *shared = getenv("VL_TEST_SHARED_GPU");
  if (vl_comm_init(&c, on_gpu ? VL_BACKEND_CUDA : VL_BACKEND_CPU, shared && !strcmp(shared, "1"), 60)) {
    fprintf(stderr, "comm: %s\n", vl_err_last());
    return on_gpu ? 77 : 1;
  }
  vl_ops *o;
  if (on_gpu ? vl_ops_cuda_create(&o, c.device) : vl_ops_cpu_create(&o)) {
    fprintf(stderr, "ops: %s\n", vl_err_last());
    return 1;
  }
  char dir[64] = "/tmp/vl_overlap_XXXXXX";
  if (rank == 0 && !mkdtemp(dir)) { fprintf(stderr, "mkdtemp\n"); return 1; }
  MPI_Bcast(dir, sizeof dir, MPI_CHAR, 0, MPI_COMM_WORLD);
  float *w0 = malloc(m.n_elements * sizeof(float));
  vl_weights_init_random(&m, w0, 5, 0.2f);

  test_range_reduce(&c, o);
  test_buckets(o, &cfg);
  test_trainer(&c, o, &cfg, &m, w0);
  test_optim_gap(&c, o, &cfg, &m, w0);
  test_stats(&c, o, &cfg, &m, w0, dir);

  MPI_Barrier(MPI_COMM_WORLD);
  if (rank == 0) {
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", dir);
  }
  free(w0);
  vl_ops_destroy(o);
  vl_comm_free(&c);
  vl_model_free(&m);
  vl_config_free(&cfg);
  int f = test_failures_;
  MPI_Allreduce(MPI_IN_PLACE, &f, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
  vl_comm_mpi_finalize();
  if (f && !test_failures_) fprintf(stderr, "another rank failed\n");
  test_failures_ += f && !test_failures_;
  TEST_END();
}
