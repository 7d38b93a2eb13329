/* vltrain: main — arguments, configuration, MPI bootstrap, the dry run, and
 * (until the training loop lands) one forward/backward step per rank on a
 * generated sample with gradients all-reduced across ranks. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "batch.h"
#include "comm.h"
#include "config.h"
#include "err.h"
#include "graph.h"
#include "model.h"
#include "ops.h"
#include "weights.h"

static void usage(FILE *f) {
  fprintf(f,
          "usage: vltrain [--dry-run] CONFIG.yaml\n"
          "       vltrain --help-config   (every configuration key)\n"
          "  --dry-run   validate the configuration, print the model summary and the\n"
          "              memory plan per rank, and exit\n");
}

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* Which backend the plan is for: cuda when asked, or auto in a CUDA build. */
static int plan_elem_size(const vl_config *cfg, const char **device) {
#ifdef VL_HAVE_CUDA
  if (cfg->run.backend != VL_BACKEND_CPU) { *device = "cuda, bf16 weights and activations"; return 2; }
#endif
  *device = "cpu, fp32";
  return 4;
}

static int dry_run(const vl_config *cfg, const vl_model *m, int world) {
  const char *device;
  size_t el = (size_t)plan_elem_size(cfg, &device);
  vl_model_print_summary(m);
  vl_memory_plan plan;
  vl_graph_memory_plan(m, &cfg->train, world, el, &plan);
  char dev[160];
  snprintf(dev, sizeof dev, "%s, %d rank(s), micro-batch %d x %d tokens, %d patches", device,
           world, cfg->train.micro_batch, cfg->train.max_seq_len, cfg->train.max_vision_patches);
  vl_graph_print_memory_plan(&plan, dev);
  printf("global batch: %d ranks x %d micro-batch x %d accumulation = %d samples per step\n",
         world, cfg->train.micro_batch, cfg->train.grad_accum,
         world * cfg->train.micro_batch * cfg->train.grad_accum);
  return VL_OK;
}

/* A generated sample: prompt, one image of 2*merge x 4*merge patches, answer. */
static int make_sample(const vl_config *cfg, uint64_t seed, int32_t **ids_out,
                       int32_t **labels_out, float **pix_out, int32_t grid[3], int *n_out) {
  const vl_model_config *mc = &cfg->model;
  const int m = mc->vision.spatial_merge_size;
  grid[0] = 1; grid[1] = 2 * m; grid[2] = 4 * m;
  const int n_img = grid[1] * grid[2] / (m * m), prompt = 12, answer = 24;
  const int n = prompt + 2 + n_img + answer;
  const int patch_dim = mc->vision.in_channels * mc->vision.temporal_patch_size *
                        mc->vision.patch_size * mc->vision.patch_size;
  int32_t *ids, *lab;
  float *pix;
  VL_CALL(vl_malloc((void **)&ids, sizeof(int32_t) * (size_t)n, "sample ids"));
  VL_CALL(vl_malloc((void **)&lab, sizeof(int32_t) * (size_t)n, "sample labels"));
  VL_CALL(vl_malloc((void **)&pix, sizeof(float) * (size_t)grid[1] * grid[2] * patch_dim, "pixels"));
  uint64_t s = seed;
  const int text_vocab = mc->tokens.vision_start_token_id < mc->text.vocab_size
                             ? mc->tokens.vision_start_token_id : mc->text.vocab_size;
  int t = 0;
  for (int i = 0; i < prompt; i++) ids[t++] = (int32_t)(vl_rng_next(&s) % (uint64_t)text_vocab);
  ids[t++] = mc->tokens.vision_start_token_id;
  for (int i = 0; i < n_img; i++) ids[t++] = mc->tokens.image_token_id;
  ids[t++] = mc->tokens.vision_end_token_id;
  for (int i = 0; i < answer; i++) ids[t++] = (int32_t)(vl_rng_next(&s) % (uint64_t)text_vocab);
  for (int i = 0; i < n; i++) lab[i] = i >= n - answer ? ids[i] : -100;
  for (size_t i = 0; i < (size_t)grid[1] * grid[2] * patch_dim; i++) pix[i] = vl_rng_normal(&s);
  *ids_out = ids; *labels_out = lab; *pix_out = pix; *n_out = n;
  return VL_OK;
}

static int smoke_step(const vl_config *cfg, const vl_model *m, vl_comm *comm) {
  vl_ops *ops = NULL;
  if (comm->backend == VL_BACKEND_CUDA) VL_CALL(vl_ops_cuda_create(&ops, comm->device));
  else VL_CALL(vl_ops_cpu_create(&ops));
  int32_t *ids = NULL, *lab = NULL, grid[3];
  float *pix = NULL;
  int n = 0;
  VL_CALL(make_sample(cfg, cfg->train.seed + 7919u * (uint64_t)comm->rank, &ids, &lab, &pix, grid, &n));
  vl_sample s = {n, ids, lab, 1, (const int32_t(*)[3])grid, pix};
  vl_batch b;
  VL_CALL(vl_batch_build(&b, &cfg->model, &s, 1));
  vl_graph g;
  VL_CALL(vl_graph_create(&g, m, ops, b.T, b.P, 0));
  float *w;
  VL_CALL(vl_malloc((void **)&w, m->n_elements * sizeof(float), "host weights"));
  if (cfg->model.path[0]) VL_CALL(vl_weights_load(m, cfg->model.path, w, 0));
  else vl_weights_init_random(m, w, cfg->train.seed, 0.02f);
  VL_CALL(ops->put(ops, g.params, w, m->n_elements));
  VL_CALL(ops->zero(ops, g.grads, m->n_elements * ops->elem_size));
  VL_CALL(vl_graph_set_batch(&g, &b));
  /* mean over every supervised token of every rank, as DDP with one global batch */
  double targets = b.n_targets;
  VL_CALL(vl_comm_allreduce_double(comm, &targets, 1, VL_COMM_SUM));
  double t0 = now(), loss = 0;
  VL_CALL(vl_graph_forward(&g, (float)(1.0 / targets), &loss));
  VL_CALL(vl_graph_backward(&g));
  VL_CALL(ops->sync(ops));
  double t1 = now();
  /* gradients summed over ranks, in backend memory (bf16 on GPUs) */
  VL_CALL(vl_comm_allreduce_sum(comm, ops->elem_size == 2 ? VL_COMM_BF16 : VL_COMM_F32, g.grads,
                                m->n_elements));
  VL_CALL(vl_comm_sync(comm));
  double t2 = now();
  float *grad;
  VL_CALL(vl_malloc((void **)&grad, m->n_elements * sizeof(float), "host gradients"));
  VL_CALL(ops->get(ops, grad, g.grads, m->n_elements));
  double norm = 0;
  for (size_t i = 0; i < m->n_elements; i++) norm += (double)grad[i] * grad[i];
  double sums[2] = {loss, (double)b.T};
  VL_CALL(vl_comm_allreduce_double(comm, sums, 2, VL_COMM_SUM));
  if (comm->rank == 0)
    printf("step 0: loss %.6f (mean over %.0f supervised tokens on %d ranks), grad norm %.6e, "
           "forward+backward %.3f s, all-reduce %.3f s, %.0f tokens\n",
           sums[0] / targets, targets, comm->size, sqrt(norm), t1 - t0, t2 - t1, sums[1]);
  if (comm->rank == 0)
    printf("note: the training loop (optimizer, data, checkpoints) arrives with issue 4; "
           "this run checks the model and the gradient reduction end to end.\n");
  free(grad); free(w); free(ids); free(lab); free(pix);
  vl_graph_destroy(&g);
  vl_batch_free(&b);
  vl_ops_destroy(ops);
  return VL_OK;
}

int main(int argc, char **argv) {
  int dry = 0;
  const char *path = NULL;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--dry-run")) dry = 1;
    else if (!strcmp(argv[i], "--help-config")) { vl_config_print_keys(); return 0; }
    else if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) { usage(stdout); return 0; }
    else if (argv[i][0] == '-') { usage(stderr); return 2; }
    else path = argv[i];
  }
  if (!path) { usage(stderr); return 2; }
  if (vl_comm_mpi_init(&argc, &argv)) return 1;
  int rank = 0, size = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  if (rank != 0) vl_err_set_quiet(1); /* one message, from rank 0 */
  vl_config cfg;
  vl_model m;
  int rc = vl_config_load(&cfg, path);
  if (rc == VL_OK) rc = vl_model_build(&m, &cfg.model);
  if (rc == VL_OK && dry) {
    if (rank == 0) rc = dry_run(&cfg, &m, size);
  } else if (rc == VL_OK) {
    vl_comm comm;
    vl_err_set_quiet(0);
    rc = vl_comm_init(&comm, cfg.run.backend, cfg.run.allow_shared_gpu, cfg.run.nccl_timeout_s);
    if (rc == VL_OK) {
      if (rank == 0) {
        printf("vltrain %s: %s on %d rank(s), backend %s\n", PACKAGE_VERSION, path, size,
               comm.backend == VL_BACKEND_CUDA ? "cuda" : "cpu");
        vl_model_print_summary(&m);
      }
      rc = vl_comm_print_map(&comm);
      if (rc == VL_OK) rc = smoke_step(&cfg, &m, &comm);
    }
    if (rc != VL_OK) {
      fprintf(stderr, "vltrain: rank %d stopping (%s)\n", rank, vl_err_name(rc));
      MPI_Abort(MPI_COMM_WORLD, rc);
    }
    vl_comm_free(&comm);
  }
  if (rc != VL_OK) {
    if (size > 1) MPI_Abort(MPI_COMM_WORLD, rc);
    vl_comm_mpi_finalize();
    return 1;
  }
  vl_model_free(&m);
  vl_config_free(&cfg);
  vl_comm_mpi_finalize();
  return 0;
}
