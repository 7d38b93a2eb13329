/* vltrain: main — arguments, configuration, MPI bootstrap, the dry run, and
 * the training run. */
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
#include "train.h"
#include "weights.h"

static void usage(FILE *f) {
  fprintf(f,
          "usage: vltrain [--dry-run] CONFIG.yaml\n"
          "       vltrain --help-config   (every configuration key)\n"
          "  --dry-run   validate the configuration, print the model summary and the\n"
          "              memory plan per rank, and exit\n");
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

static int train(const vl_config *cfg, const vl_model *m, vl_comm *comm) {
  vl_ops *ops = NULL;
  if (comm->backend == VL_BACKEND_CUDA) VL_CALL(vl_ops_cuda_create(&ops, comm->device));
  else VL_CALL(vl_ops_cpu_create(&ops));
  float *w = NULL;
  int rc = vl_malloc((void **)&w, m->n_elements * sizeof(float), "host weights");
  if (rc == VL_OK) {
    if (cfg->model.path[0]) rc = vl_weights_load(m, cfg->model.path, w, 0);
    else vl_weights_init_random(m, w, cfg->train.seed, 0.02f);
  }
  int preempted = 0;
  if (rc == VL_OK) rc = vl_train_run(cfg, m, comm, ops, w, &preempted);
  if (rc == VL_OK && preempted) rc = -1;
  free(w);
  vl_ops_destroy(ops);
  if (rc == -1) return -1; /* preempted: a checkpoint was written */
  if (rc) return vl_err_trace(rc, __FILE__, __LINE__, __func__);
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
  size_t frozen = 0;
  if (rc == VL_OK && cfg.train.freeze[0]) {
    rc = vl_model_freeze(&m, cfg.train.freeze, &frozen);
    char b[40];
    if (rc == VL_OK && rank == 0)
      printf("frozen: %s parameters (train.freeze: %s)\n", vl_fmt_count(b, sizeof b, frozen), cfg.train.freeze);
  }
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
      vl_train_catch_signals();
      if (rc == VL_OK) rc = train(&cfg, &m, &comm);
    }
    if (rc == -1) { /* preempted after a checkpoint: the job script requeues */
      vl_comm_free(&comm);
      vl_model_free(&m);
      vl_config_free(&cfg);
      vl_comm_mpi_finalize();
      return VL_EXIT_PREEMPTED;
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
