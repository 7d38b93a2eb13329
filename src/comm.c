/* comm: MPI bootstrap, GPU binding, NCCL, collectives (see comm.h). */
#include "comm.h"

#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "err.h"

#ifdef VL_HAVE_CUDA
#include <cuda_runtime.h>
#include <nccl.h>
#endif

#define MPI_CHECK(call)                                                        \
  do {                                                                         \
    int mpi_rc_ = (call);                                                      \
    if (mpi_rc_ != MPI_SUCCESS) {                                              \
      char mpi_msg_[MPI_MAX_ERROR_STRING];                                     \
      int mpi_len_ = 0;                                                        \
      MPI_Error_string(mpi_rc_, mpi_msg_, &mpi_len_);                          \
      VL_ERROR(VL_EMPI, "%s failed: %s", #call, mpi_msg_);                     \
    }                                                                          \
  } while (0)

#ifdef VL_HAVE_CUDA
#define CUDA_CHECK(call)                                                       \
  do {                                                                         \
    cudaError_t cu_rc_ = (call);                                               \
    if (cu_rc_ != cudaSuccess)                                                 \
      VL_ERROR(VL_ECUDA, "%s failed: %s", #call, cudaGetErrorString(cu_rc_));   \
  } while (0)
#define NCCL_CHECK(call)                                                       \
  do {                                                                         \
    ncclResult_t nc_rc_ = (call);                                              \
    if (nc_rc_ != ncclSuccess)                                                 \
      VL_ERROR(VL_ENCCL, "%s failed: %s", #call, ncclGetErrorString(nc_rc_));   \
  } while (0)
#endif

int vl_comm_mpi_init(int *argc, char ***argv) {
  int provided = 0;
  MPI_CHECK(MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided));
  if (provided < MPI_THREAD_FUNNELED)
    VL_ERROR(VL_EMPI, "the MPI library gives thread level %d, vltrain needs FUNNELED", provided);
  return VL_OK;
}

int vl_comm_mpi_finalize(void) {
  MPI_CHECK(MPI_Finalize());
  return VL_OK;
}

int vl_comm_pick_device(int local_rank, int local_size, int n_gpus, int allow_shared,
                        const char *host, int *device) {
  *device = -1;
  if (n_gpus <= 0) VL_ERROR(VL_ECUDA, "no CUDA device visible on host %s", host);
  if (local_size > n_gpus && !allow_shared)
    VL_ERROR(VL_EINVAL, "host %s: %d ranks on this node but only %d GPUs visible "
             "(set run.allow_shared_gpu: true to share)", host, local_size, n_gpus);
  *device = local_rank % n_gpus;
  return VL_OK;
}

static int visible_gpus(void) {
#ifdef VL_HAVE_CUDA
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError(); /* clear the sticky "no device" error */
    return 0;
  }
  return n;
#else
  return 0;
#endif
}

int vl_comm_init(vl_comm *c, vl_backend_kind want, int allow_shared_gpu, double timeout_s) {
  return vl_comm_init_on(c, MPI_COMM_WORLD, want, allow_shared_gpu, timeout_s);
}

int vl_comm_init_on(vl_comm *c, MPI_Comm world, vl_backend_kind want, int allow_shared_gpu,
                    double timeout_s) {
  memset(c, 0, sizeof *c);
  c->world = world;
  c->device = -1;
  c->timeout_s = timeout_s > 0 ? timeout_s : 600.0;
  MPI_CHECK(MPI_Comm_rank(c->world, &c->rank));
  MPI_CHECK(MPI_Comm_size(c->world, &c->size));
  MPI_CHECK(MPI_Comm_split_type(c->world, MPI_COMM_TYPE_SHARED, c->rank, MPI_INFO_NULL, &c->node));
  MPI_CHECK(MPI_Comm_rank(c->node, &c->local_rank));
  MPI_CHECK(MPI_Comm_size(c->node, &c->local_size));
  if (gethostname(c->host, sizeof c->host - 1)) snprintf(c->host, sizeof c->host, "unknown");

  int gpus = visible_gpus();
  int min_gpus = gpus, max_gpus = gpus;
  MPI_CHECK(MPI_Allreduce(&gpus, &min_gpus, 1, MPI_INT, MPI_MIN, c->world));
  MPI_CHECK(MPI_Allreduce(&gpus, &max_gpus, 1, MPI_INT, MPI_MAX, c->world));
  if (want == VL_BACKEND_AUTO) {
#ifdef VL_HAVE_CUDA
    if (min_gpus == 0 && max_gpus > 0)
      VL_ERROR(VL_EINVAL, "some ranks see GPUs and some do not (rank %d on %s sees %d): "
               "set run.backend explicitly", c->rank, c->host, gpus);
    want = max_gpus > 0 ? VL_BACKEND_CUDA : VL_BACKEND_CPU;
#else
    want = VL_BACKEND_CPU;
#endif
  }
  c->backend = want;
  if (want == VL_BACKEND_CPU) return VL_OK;
#ifndef VL_HAVE_CUDA
  VL_ERROR(VL_ENOTSUP, "run.backend is cuda but this vltrain was built without CUDA "
           "(configure --with-cuda)");
#else
  if (gpus == 0)
    VL_ERROR(VL_ECUDA, "no CUDA device visible on host %s (rank %d)", c->host, c->rank);
  VL_CALL(vl_comm_pick_device(c->local_rank, c->local_size, gpus, allow_shared_gpu, c->host,
                              &c->device));
  CUDA_CHECK(cudaSetDevice(c->device));
  cudaStream_t s;
  CUDA_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  c->stream = s;
  /* NCCL refuses two ranks on one GPU: shared GPUs reduce through host
   * memory with MPI (functional runs only; vl_comm_print_map says so). */
  int shared = c->local_size > gpus, any_shared = shared;
  MPI_CHECK(MPI_Allreduce(&shared, &any_shared, 1, MPI_INT, MPI_MAX, c->world));
  if (any_shared) return VL_OK;
  ncclUniqueId id;
  if (c->rank == 0) NCCL_CHECK(ncclGetUniqueId(&id));
  MPI_CHECK(MPI_Bcast(&id, sizeof id, MPI_BYTE, 0, c->world));
  ncclComm_t nc;
  NCCL_CHECK(ncclCommInitRank(&nc, c->size, id, c->rank));
  c->nccl = nc;
  return VL_OK;
#endif
}

int vl_comm_free(vl_comm *c) {
#ifdef VL_HAVE_CUDA
  if (c->nccl) NCCL_CHECK(ncclCommDestroy((ncclComm_t)c->nccl));
  if (c->stream) CUDA_CHECK(cudaStreamDestroy((cudaStream_t)c->stream));
#endif
  if (c->node != MPI_COMM_NULL && c->node) MPI_CHECK(MPI_Comm_free(&c->node));
  memset(c, 0, sizeof *c);
  return VL_OK;
}

/* MPI counts are int: split large messages. */
#define CHUNK ((size_t)1 << 30)

#ifdef VL_HAVE_CUDA
static float bf16_bits_to_f32(uint16_t b) {
  uint32_t u = (uint32_t)b << 16;
  float f;
  memcpy(&f, &u, 4);
  return f;
}
static uint16_t f32_to_bf16_bits(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  u += 0x7FFFu + ((u >> 16) & 1u);
  return (uint16_t)(u >> 16);
}
/* Shared-GPU mode: device buffer -> host fp32 -> MPI -> device. */
static int staged_allreduce(vl_comm *c, vl_comm_dtype dt, void *buf, size_t n) {
  size_t el = dt == VL_COMM_F32 ? 4 : 2;
  void *raw = NULL;
  float *f = NULL;
  VL_CALL(vl_malloc(&raw, n * el, "staged collective"));
  int rc = vl_malloc((void **)&f, n * sizeof(float), "staged collective");
  if (rc) { free(raw); return rc; }
  cudaError_t ce = cudaMemcpy(raw, buf, n * el, cudaMemcpyDeviceToHost);
  if (ce == cudaSuccess) {
    for (size_t i = 0; i < n; i++)
      f[i] = dt == VL_COMM_F32 ? ((float *)raw)[i] : bf16_bits_to_f32(((uint16_t *)raw)[i]);
    for (size_t o = 0; o < n && rc == VL_OK; o += CHUNK) {
      size_t k = n - o < CHUNK ? n - o : CHUNK;
      if (MPI_Allreduce(MPI_IN_PLACE, f + o, (int)k, MPI_FLOAT, MPI_SUM, c->world) != MPI_SUCCESS)
        rc = vl_err_raise(VL_EMPI, __FILE__, __LINE__, __func__, "MPI_Allreduce of %zu floats failed", k);
    }
    for (size_t i = 0; i < n; i++) {
      if (dt == VL_COMM_F32) ((float *)raw)[i] = f[i];
      else ((uint16_t *)raw)[i] = f32_to_bf16_bits(f[i]);
    }
    if (rc == VL_OK) ce = cudaMemcpy(buf, raw, n * el, cudaMemcpyHostToDevice);
  }
  free(raw);
  free(f);
  if (ce != cudaSuccess)
    VL_ERROR(VL_ECUDA, "staging a collective through host memory: %s", cudaGetErrorString(ce));
  return rc;
}

/* Shared-GPU mode for reduce-scatter (kind 0) and all-gather (kind 1). */
static int staged_collective(vl_comm *c, vl_comm_dtype dt, const void *send, void *recv,
                             size_t n_per_rank, int kind) {
  const size_t el = dt == VL_COMM_F32 ? 4 : 2, W = (size_t)c->size;
  const size_t n_send = kind == 0 ? n_per_rank * W : n_per_rank;
  const size_t n_recv = kind == 0 ? n_per_rank : n_per_rank * W;
  if (n_per_rank > INT_MAX) VL_ERROR(VL_EINVAL, "staged collective of %zu elements per rank", n_per_rank);
  void *raw = NULL;
  float *fs = NULL, *fr = NULL;
  int rc = vl_malloc(&raw, (n_send > n_recv ? n_send : n_recv) * el, "staged collective");
  if (rc == VL_OK) rc = vl_malloc((void **)&fs, n_send * sizeof(float), "staged collective");
  if (rc == VL_OK) rc = vl_malloc((void **)&fr, n_recv * sizeof(float), "staged collective");
  cudaError_t ce = cudaSuccess;
  if (rc == VL_OK) ce = cudaMemcpy(raw, send, n_send * el, cudaMemcpyDeviceToHost);
  if (rc == VL_OK && ce == cudaSuccess) {
    for (size_t i = 0; i < n_send; i++)
      fs[i] = el == 4 ? ((float *)raw)[i] : bf16_bits_to_f32(((uint16_t *)raw)[i]);
    int mrc = kind == 0
        ? MPI_Reduce_scatter_block(fs, fr, (int)n_per_rank, MPI_FLOAT, MPI_SUM, c->world)
        : MPI_Allgather(fs, (int)n_per_rank, MPI_FLOAT, fr, (int)n_per_rank, MPI_FLOAT, c->world);
    if (mrc != MPI_SUCCESS)
      rc = vl_err_raise(VL_EMPI, __FILE__, __LINE__, __func__, "staged %s failed",
                        kind == 0 ? "MPI_Reduce_scatter_block" : "MPI_Allgather");
    for (size_t i = 0; rc == VL_OK && i < n_recv; i++) {
      if (el == 4) ((float *)raw)[i] = fr[i];
      else ((uint16_t *)raw)[i] = f32_to_bf16_bits(fr[i]);
    }
    if (rc == VL_OK) ce = cudaMemcpy(recv, raw, n_recv * el, cudaMemcpyHostToDevice);
  }
  free(raw); free(fs); free(fr);
  if (ce != cudaSuccess)
    VL_ERROR(VL_ECUDA, "staging a collective through host memory: %s", cudaGetErrorString(ce));
  return rc;
}
#endif

int vl_comm_allreduce_sum(vl_comm *c, vl_comm_dtype dt, void *buf, size_t n) {
#ifdef VL_HAVE_CUDA
  if (c->backend == VL_BACKEND_CUDA && !c->nccl) return staged_allreduce(c, dt, buf, n);
  if (c->backend == VL_BACKEND_CUDA) {
    NCCL_CHECK(ncclAllReduce(buf, buf, n, dt == VL_COMM_F32 ? ncclFloat32 : ncclBfloat16,
                             ncclSum, (ncclComm_t)c->nccl, (cudaStream_t)c->stream));
    return VL_OK;
  }
#endif
  if (dt != VL_COMM_F32) VL_ERROR(VL_ENOTSUP, "bf16 collectives need the CUDA backend");
  float *f = buf;
  for (size_t o = 0; o < n; o += CHUNK) {
    size_t k = n - o < CHUNK ? n - o : CHUNK;
    MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, f + o, (int)k, MPI_FLOAT, MPI_SUM, c->world));
  }
  return VL_OK;
}

int vl_comm_reduce_scatter(vl_comm *c, vl_comm_dtype dt, const void *send, void *recv,
                           size_t n_per_rank) {
#ifdef VL_HAVE_CUDA
  if (c->backend == VL_BACKEND_CUDA && !c->nccl)
    return staged_collective(c, dt, send, recv, n_per_rank, 0);
  if (c->backend == VL_BACKEND_CUDA) {
    NCCL_CHECK(ncclReduceScatter(send, recv, n_per_rank,
                                 dt == VL_COMM_F32 ? ncclFloat32 : ncclBfloat16, ncclSum,
                                 (ncclComm_t)c->nccl, (cudaStream_t)c->stream));
    return VL_OK;
  }
#endif
  if (dt != VL_COMM_F32) VL_ERROR(VL_ENOTSUP, "bf16 collectives need the CUDA backend");
  if (n_per_rank > INT_MAX)
    VL_ERROR(VL_EINVAL, "reduce-scatter of %zu elements per rank exceeds MPI's int count", n_per_rank);
  MPI_CHECK(MPI_Reduce_scatter_block(send, recv, (int)n_per_rank, MPI_FLOAT, MPI_SUM, c->world));
  return VL_OK;
}

int vl_comm_allgather(vl_comm *c, vl_comm_dtype dt, const void *send, void *recv,
                      size_t n_per_rank) {
#ifdef VL_HAVE_CUDA
  if (c->backend == VL_BACKEND_CUDA && !c->nccl)
    return staged_collective(c, dt, send, recv, n_per_rank, 1);
  if (c->backend == VL_BACKEND_CUDA) {
    NCCL_CHECK(ncclAllGather(send, recv, n_per_rank,
                             dt == VL_COMM_F32 ? ncclFloat32 : ncclBfloat16,
                             (ncclComm_t)c->nccl, (cudaStream_t)c->stream));
    return VL_OK;
  }
#endif
  if (dt != VL_COMM_F32) VL_ERROR(VL_ENOTSUP, "bf16 collectives need the CUDA backend");
  if (n_per_rank > INT_MAX)
    VL_ERROR(VL_EINVAL, "allgather of %zu elements per rank exceeds MPI's int count", n_per_rank);
  MPI_CHECK(MPI_Allgather(send, (int)n_per_rank, MPI_FLOAT, recv, (int)n_per_rank, MPI_FLOAT,
                          c->world));
  return VL_OK;
}

int vl_comm_reduce_scatter_inplace(vl_comm *c, vl_comm_dtype dt, void *buf, size_t n) {
  const size_t el = dt == VL_COMM_F32 ? 4 : 2;
  char *mine = (char *)buf + (size_t)c->rank * n * el;
#ifdef VL_HAVE_CUDA
  if (c->backend == VL_BACKEND_CUDA && c->nccl) {
    NCCL_CHECK(ncclReduceScatter(buf, mine, n, dt == VL_COMM_F32 ? ncclFloat32 : ncclBfloat16,
                                 ncclSum, (ncclComm_t)c->nccl, (cudaStream_t)c->stream));
    return VL_OK;
  }
  if (c->backend == VL_BACKEND_CUDA) { /* shared GPUs: through host memory */
    VL_CALL(staged_collective(c, dt, buf, mine, n, 0));
    return VL_OK;
  }
#endif
  if (dt != VL_COMM_F32) VL_ERROR(VL_ENOTSUP, "bf16 collectives need the CUDA backend");
  if (n > INT_MAX) VL_ERROR(VL_EINVAL, "reduce-scatter of %zu elements per rank exceeds MPI's int count", n);
  MPI_CHECK(MPI_Reduce_scatter_block(MPI_IN_PLACE, buf, (int)n, MPI_FLOAT, MPI_SUM, c->world));
  if (c->rank) memmove(mine, buf, n * el); /* MPI leaves the result at the front */
  return VL_OK;
}

int vl_comm_allgather_inplace(vl_comm *c, vl_comm_dtype dt, void *buf, size_t n) {
#ifdef VL_HAVE_CUDA
  const size_t el = dt == VL_COMM_F32 ? 4 : 2;
  char *mine = (char *)buf + (size_t)c->rank * n * el;
  if (c->backend == VL_BACKEND_CUDA && c->nccl) {
    NCCL_CHECK(ncclAllGather(mine, buf, n, dt == VL_COMM_F32 ? ncclFloat32 : ncclBfloat16,
                             (ncclComm_t)c->nccl, (cudaStream_t)c->stream));
    return VL_OK;
  }
  if (c->backend == VL_BACKEND_CUDA) {
    VL_CALL(staged_collective(c, dt, mine, buf, n, 1));
    return VL_OK;
  }
#endif
  if (dt != VL_COMM_F32) VL_ERROR(VL_ENOTSUP, "bf16 collectives need the CUDA backend");
  if (n > INT_MAX) VL_ERROR(VL_EINVAL, "all-gather of %zu elements per rank exceeds MPI's int count", n);
  MPI_CHECK(MPI_Allgather(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, buf, (int)n, MPI_FLOAT, c->world));
  return VL_OK;
}

int vl_comm_sync(vl_comm *c) {
#ifdef VL_HAVE_CUDA
  if (c->backend != VL_BACKEND_CUDA || !c->nccl) return VL_OK;
  struct timespec t0, t;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  for (;;) {
    cudaError_t q = cudaStreamQuery((cudaStream_t)c->stream);
    if (q == cudaSuccess) return VL_OK;
    if (q != cudaErrorNotReady)
      VL_ERROR(VL_ECUDA, "rank %d on %s: communication stream failed: %s", c->rank, c->host,
               cudaGetErrorString(q));
    ncclResult_t async = ncclSuccess;
    NCCL_CHECK(ncclCommGetAsyncError((ncclComm_t)c->nccl, &async));
    clock_gettime(CLOCK_MONOTONIC, &t);
    double waited = (double)(t.tv_sec - t0.tv_sec) + 1e-9 * (double)(t.tv_nsec - t0.tv_nsec);
    if (async != ncclSuccess || waited > c->timeout_s) {
      ncclCommAbort((ncclComm_t)c->nccl);
      c->nccl = NULL;
      if (async != ncclSuccess)
        VL_ERROR(VL_ENCCL, "rank %d on %s: NCCL error in a collective: %s", c->rank, c->host,
                 ncclGetErrorString(async));
      VL_ERROR(VL_ENCCL, "rank %d on %s: a collective did not finish in %.0f s "
               "(run.nccl_timeout_s): another rank stopped answering", c->rank, c->host, c->timeout_s);
    }
    usleep(waited < 0.01 ? 10 : 1000);
  }
#else
  return VL_OK;
#endif
}

int vl_comm_bcast(vl_comm *c, void *buf, size_t bytes, int root) {
  char *b = buf;
  for (size_t o = 0; o < bytes; o += CHUNK) {
    size_t k = bytes - o < CHUNK ? bytes - o : CHUNK;
    MPI_CHECK(MPI_Bcast(b + o, (int)k, MPI_BYTE, root, c->world));
  }
  return VL_OK;
}

int vl_comm_allreduce_double(vl_comm *c, double *v, int n, vl_comm_op op) {
  MPI_Op mop = op == VL_COMM_MAX ? MPI_MAX : op == VL_COMM_MIN ? MPI_MIN : MPI_SUM;
  MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, v, n, MPI_DOUBLE, mop, c->world));
  return VL_OK;
}

int vl_comm_barrier(vl_comm *c) {
  MPI_CHECK(MPI_Barrier(c->world));
  return VL_OK;
}

int vl_comm_print_map(vl_comm *c) {
  char line[768], gpu[400] = "cpu";
#ifdef VL_HAVE_CUDA
  if (c->backend == VL_BACKEND_CUDA) {
    struct cudaDeviceProp p;
    CUDA_CHECK(cudaGetDeviceProperties(&p, c->device));
    snprintf(gpu, sizeof gpu, "GPU %d (%s)%s", c->device, p.name,
             c->nccl ? "" : ", shared: collectives over MPI through host memory");
  }
#endif
  snprintf(line, sizeof line, "rank %d  host %s  local %d/%d  device %s", c->rank, c->host,
           c->local_rank, c->local_size, gpu);
  char *all = NULL;
  if (c->rank == 0) VL_CALL(vl_malloc((void **)&all, sizeof line * (size_t)c->size, "rank map"));
  int rc = MPI_Gather(line, sizeof line, MPI_CHAR, all, sizeof line, MPI_CHAR, 0, c->world);
  if (rc != MPI_SUCCESS) {
    free(all);
    MPI_CHECK(rc);
  }
  if (c->rank == 0) {
    for (int r = 0; r < c->size; r++) printf("  %s\n", all + (size_t)r * sizeof line);
    fflush(stdout);
    free(all);
  }
  return VL_OK;
}

void vl_comm_abort(vl_comm *c, int code) {
  MPI_Abort(c && c->world ? c->world : MPI_COMM_WORLD, code ? code : 1);
}
