/* vltrain: main — arguments, configuration, MPI bootstrap, the dry run, and
 * the training run. */
#define _GNU_SOURCE /* sched_getaffinity, CPU_COUNT */
#include <math.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#ifdef VL_HAVE_CUDA
#include <cublasLt.h>
#include <cuda_runtime.h>
#include <nccl.h>
#endif
#ifdef _OPENMP
#include <omp.h>
static int omp_threads(void) { return omp_get_max_threads(); }
#else
static int omp_threads(void) { return 1; }
#endif

#include "batch.h"
#include "comm.h"
#include "config.h"
#include "dataset.h"
#include "err.h"
#include "graph.h"
#include "model.h"
#include "ops.h"
#include "optim.h"
#include "train.h"
#include "weights.h"

static void usage(FILE *f) {
  fprintf(f,
          "usage: vltrain [--dry-run] [--resume | --no-resume] CONFIG.yaml\n"
          "       vltrain --help-config   (every configuration key)\n"
          "  --dry-run   validate the configuration, print the model summary and the\n"
          "              memory plan per rank, and exit\n"
          "  --resume    continue from OUT/ckpt/latest when there is one (run.resume: true)\n"
          "  --no-resume start from the initial weights even if there is one\n"
          "At start vltrain prints the memory plan and stops (exit 1, with advice)\n"
          "when it does not fit the free device memory.  Environment:\n"
          "  VL_MEMORY_LIMIT_BYTES=N   treat at most N bytes as free (tests of the check)\n");
}

/* One line of this rank's software: backend, CUDA runtime and driver,
 * cuBLASLt, NCCL, MPI library. */
static void versions(const vl_comm *comm, char *buf, size_t n) {
  char mpi[MPI_MAX_LIBRARY_VERSION_STRING] = "?";
  int len = 0;
  if (MPI_Get_library_version(mpi, &len) != MPI_SUCCESS) snprintf(mpi, sizeof mpi, "?");
  mpi[strcspn(mpi, ",\n")] = '\0'; /* "Open MPI v4.1.4, package: ..." -> the name and version */
#ifdef VL_HAVE_CUDA
  if (comm->backend == VL_BACKEND_CUDA) {
    int rt = 0, drv = 0, nccl = 0;
    if (cudaRuntimeGetVersion(&rt) != cudaSuccess) rt = -1;
    if (cudaDriverGetVersion(&drv) != cudaSuccess) drv = -1;
    if (ncclGetVersion(&nccl) != ncclSuccess) nccl = -1;
    size_t lt = cublasLtGetVersion();
    snprintf(buf, n, "backend cuda (bf16), CUDA runtime %d.%d, driver supports CUDA %d.%d, "
             "cuBLASLt %zu.%zu.%zu, NCCL %d.%d.%d, attention %s, %.100s", rt / 1000, rt % 1000 / 10,
             drv / 1000, drv % 1000 / 10, lt / 10000, lt / 100 % 100, lt % 100, nccl / 10000,
             nccl / 100 % 100, nccl % 100, vl_ops_cuda_attention_engine(), mpi);
    return;
  }
#endif
  snprintf(buf, n, "backend cpu (fp32, %d OpenMP thread(s)), %.100s", omp_threads(), mpi);
}

/* On the GPU backend each rank runs a launch thread and a host producer
 * thread (batch assembly, image decoding); bound to a single CPU they
 * contend and the GPU waits.  Open MPI binds a rank to one core by default
 * when there are at most two ranks.  Each such rank says so, with the fix. */
static void warn_single_cpu(const vl_comm *comm) {
  cpu_set_t set;
  if (comm->backend != VL_BACKEND_CUDA || sched_getaffinity(0, sizeof set, &set) != 0) return;
  const int n = CPU_COUNT(&set);
  if (n < 2)
    fprintf(stderr, "warning: rank %d (host %s) may run on %d CPU core only: its host pipeline "
            "and kernel launches will contend and slow every step; give each rank several cores "
            "(mpirun --bind-to none, or --map-by slot:PE=8; srun --cpus-per-task=8 --cpu-bind=cores)\n",
            comm->rank, comm->host, n);
}

/* Rank 0 prints rank 0's software line and which ranks differ from it. */
static int print_versions(const vl_comm *comm) {
  enum { LINE = 384 };
  char mine[LINE];
  memset(mine, 0, sizeof mine);
  versions(comm, mine, sizeof mine);
  char *all = comm->rank == 0 ? calloc((size_t)comm->size, LINE) : NULL;
  int fail = comm->rank == 0 && !all;
  MPI_Bcast(&fail, 1, MPI_INT, 0, comm->world);
  if (fail) VL_ERROR(VL_ENOMEM, "the software table of %d ranks", comm->size);
  int m = MPI_Gather(mine, LINE, MPI_CHAR, all, LINE, MPI_CHAR, 0, comm->world);
  if (m != MPI_SUCCESS) { free(all); VL_ERROR(VL_EMPI, "MPI_Gather of the software versions failed"); }
  if (comm->rank == 0) {
    int differ = 0;
    printf("software: %s%s\n", all, comm->size > 1 ? " (all ranks alike unless listed)" : "");
    for (int r = 1; r < comm->size; r++)
      if (strcmp(all + (size_t)r * LINE, all)) {
        if (!differ++) printf("  differs on:\n");
        printf("  rank %d: %s\n", r, all + (size_t)r * LINE);
      }
    fflush(stdout);
  }
  free(all);
  return VL_OK;
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
  /* the data: opened and checked as the run will */
  char data[VL_PATH_MAX];
  vl_train_data_path(cfg, data, sizeof data);
  if (!data[0]) {
    printf("data: generated samples (run.data is empty)\n");
    return VL_OK;
  }
  const char *split[2] = {"train", "val"};
  for (int k = 0; k < 2; k++) {
    int has = 1;
    if (k) VL_CALL(vl_dataset_has_split(data, split[k], &has));
    if (!has) { printf("data: %s: no val split (no evaluation)\n", data); break; }
    vl_dataset *d = NULL;
    VL_CALL(vl_dataset_open(&d, data, split[k]));
    int rc = vl_dataset_check(d, &cfg->model);
    long mt, mp, it, ip;
    vl_dataset_limits(d, &mt, &mp, &it, &ip);
    if (rc == VL_OK)
      printf("data: %s: %s split %ld samples, longest %ld tokens (train.max_seq_len %d), most %ld vision patches "
             "(train.max_vision_patches %d)%s\n", data, split[k], vl_dataset_size(d), mt, cfg->train.max_seq_len,
             mp, cfg->train.max_vision_patches,
             mt > cfg->train.max_seq_len || mp > cfg->train.max_vision_patches ? "  TOO LARGE: raise the limits" : "");
    vl_dataset_close(d);
    VL_CALL(rc);
  }
  return VL_OK;
}

/* train() after a memory check every rank agreed on and rank 0 reported */
#define VL_MEMORY_SHORT (-2)

/* The memory plan, printed on rank 0 and checked on every rank against the
 * device's free memory before anything large is allocated.  The environment
 * variable VL_MEMORY_LIMIT_BYTES (tests) caps the free memory seen. */
static int memory_check(const vl_config *cfg, const vl_model *m, vl_comm *comm, vl_ops *ops) {
  vl_memory_plan plan;
  vl_graph_memory_plan(m, &cfg->train, comm->size, ops->elem_size, &plan);
  size_t fr = 0, tot = 0;
  VL_CALL(ops->mem_info(ops, &fr, &tot));
  const char *lim = getenv("VL_MEMORY_LIMIT_BYTES");
  if (lim && *lim) {
    char *end;
    unsigned long long v = strtoull(lim, &end, 10);
    if (*end) VL_ERROR(VL_EINVAL, "VL_MEMORY_LIMIT_BYTES=%s is not a number of bytes", lim);
    if (v < fr) fr = (size_t)v;
  }
  /* every rank's free memory: the smallest decides */
  double least = (double)fr;
  VL_CALL(vl_comm_allreduce_double(comm, &least, 1, VL_COMM_MIN));
  if (comm->rank == 0) {
    char dev[200];
    snprintf(dev, sizeof dev, "%s, %d rank(s), micro-batch %d x %d tokens, %d patches, %s%s",
             ops->elem_size == 2 ? "bf16" : "fp32", comm->size, cfg->train.micro_batch,
             cfg->train.max_seq_len, cfg->train.max_vision_patches,
             cfg->train.optimizer == VL_OPTIM_LEAN ? "lean optimizer" : "zero1 optimizer",
             cfg->train.recompute ? ", recompute" : "");
    vl_graph_print_memory_plan(&plan, dev);
    const int mib = plan.total < ((size_t)1 << 30);
    printf("  free         %9.3f %s (least over ranks%s)\n", least / (mib ? 1048576.0 : 1073741824.0),
           mib ? "MiB" : "GiB", lim && *lim ? ", capped by VL_MEMORY_LIMIT_BYTES" : "");
    fflush(stdout);
  }
  char advice[2048];
  if (!vl_graph_memory_advice(m, &cfg->train, comm->size, ops->elem_size, (size_t)least, advice,
                              sizeof advice))
    return VL_OK;
  if (comm->rank == 0) {
    vl_err_raise(VL_ENOMEM, __FILE__, __LINE__, __func__, "this run does not fit: %s", advice);
    fflush(stderr);
  }
  return VL_MEMORY_SHORT;
}

static int train(const vl_config *cfg, const vl_model *m, vl_comm *comm) {
  vl_ops *ops = NULL;
  if (comm->backend == VL_BACKEND_CUDA) VL_CALL(vl_ops_cuda_create(&ops, comm->device));
  else VL_CALL(vl_ops_cpu_create(&ops));
  int mc = memory_check(cfg, m, comm, ops);
  if (mc != VL_OK) {
    vl_ops_destroy(ops);
    return mc;
  }
  /* each rank reads (or draws) only its ZeRO-1 shard of the initial weights;
   * the working copy is all-gathered on the device */
  size_t begin, mine;
  vl_optim_shard_range(m->n_elements, comm->size, comm->rank, &begin, &mine);
  float *w = NULL;
  int rc = vl_malloc((void **)&w, (mine ? mine : 1) * sizeof(float), "host weights (this rank's shard)");
  if (rc == VL_OK) {
    if (cfg->model.path[0]) {
      struct timespec t0, t1;
      clock_gettime(CLOCK_MONOTONIC, &t0);
      rc = vl_weights_load_range(m, cfg->model.path, w, begin, begin + mine, 0);
      clock_gettime(CLOCK_MONOTONIC, &t1);
      if (rc == VL_OK && comm->rank == 0)
        printf("weights: %s (%zu parameters, %zu on each of %d rank(s)) read in %.2f s\n", cfg->model.path,
               m->n_elements, mine, comm->size,
               (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec));
    } else {
      vl_weights_init_random_range(m, w, begin, begin + mine, cfg->train.seed, 0.02f);
    }
  }
  int preempted = 0;
  if (rc == VL_OK) rc = vl_train_run_shard(cfg, m, comm, ops, w, &preempted);
  if (rc == VL_OK && preempted) rc = -1;
  free(w);
  vl_ops_destroy(ops);
  if (rc == -1) return -1; /* preempted: a checkpoint was written */
  if (rc) return vl_err_trace(rc, __FILE__, __LINE__, __func__);
  return VL_OK;
}

int main(int argc, char **argv) {
  int dry = 0, resume = -1;
  const char *path = NULL;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--dry-run")) dry = 1;
    else if (!strcmp(argv[i], "--resume")) resume = 1;
    else if (!strcmp(argv[i], "--no-resume")) resume = 0;
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
  if (rc == VL_OK && resume >= 0) cfg.run.resume = resume;
  if (rc == VL_OK) rc = vl_train_resolve_batch(&cfg.train, size);
  if (rc == VL_OK) rc = vl_model_build(&m, &cfg.model);
  size_t frozen = 0;
  if (rc == VL_OK && cfg.train.freeze[0]) {
    rc = vl_model_freeze(&m, cfg.train.freeze, &frozen);
    char b[40];
    if (rc == VL_OK && rank == 0)
      printf("frozen: %s parameters (train.freeze: %s)\n", vl_fmt_count(b, sizeof b, frozen), cfg.train.freeze);
  }
  if (rc == VL_OK && cfg.train.decay_also[0]) {
    size_t n_decay = 0;
    rc = vl_model_decay_also(&m, cfg.train.decay_also, &n_decay);
    char b[40];
    if (rc == VL_OK && rank == 0)
      printf("weight decay also on %s parameters of norms, biases or embeddings (train.decay_also: %s)\n",
             vl_fmt_count(b, sizeof b, n_decay), cfg.train.decay_also);
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
      rc = print_versions(&comm);
      warn_single_cpu(&comm);
      if (rc == VL_OK && rank == 0) printf("rank -> host -> device:\n");
      if (rc == VL_OK) rc = vl_comm_print_map(&comm);
      vl_train_catch_signals();
      if (rc == VL_OK) rc = train(&cfg, &m, &comm);
    }
    if (rc == VL_MEMORY_SHORT) { /* every rank agreed; rank 0 said why */
      vl_comm_free(&comm);
      vl_model_free(&m);
      vl_config_free(&cfg);
      vl_comm_mpi_finalize();
      return 1;
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
