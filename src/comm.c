/* comm: MPI bootstrap, backend choice, GPU binding, NCCL, collectives (see
 * comm.h).  Layout: checked-call helpers; setup (every failure agreed on by
 * all ranks); the MPI fp32 collectives (CPU backend, and the staged path for
 * shared GPUs); the NCCL path and the timed sync; host helpers. */
#include "comm.h"

#include <limits.h>
#include <stdarg.h>
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

/* ---- checked calls: messages name the function called, the rank and host -- */

/* "MPI_Allreduce(MPI_IN_PLACE, ...)" -> "MPI_Allreduce" */
static const char *call_name(const char *expr, char *buf, size_t n) {
  size_t k = strcspn(expr, "(");
  if (k >= n) k = n - 1;
  memcpy(buf, expr, k);
  buf[k] = '\0';
  return buf;
}

static int mpi_fail(int mrc, const vl_comm *c, const char *expr, const char *file, int line,
                    const char *func) {
  char msg[MPI_MAX_ERROR_STRING], name[64];
  int len = 0;
  if (MPI_Error_string(mrc, msg, &len) != MPI_SUCCESS)
    snprintf(msg, sizeof msg, "MPI error code %d", mrc);
  call_name(expr, name, sizeof name);
  if (c && c->host[0])
    return vl_err_raise(VL_EMPI, file, line, func, "%s failed on rank %d (host %s): %s", name,
                        c->rank, c->host, msg);
  return vl_err_raise(VL_EMPI, file, line, func, "%s failed: %s", name, msg);
}

#define MPI_CHECK(c, call)                                                     \
  do {                                                                         \
    int mpi_rc_ = (call);                                                      \
    if (mpi_rc_ != MPI_SUCCESS)                                                \
      return mpi_fail(mpi_rc_, (c), #call, __FILE__, __LINE__, __func__);      \
  } while (0)

#ifdef VL_HAVE_CUDA
static int cuda_fail(cudaError_t e, const vl_comm *c, const char *expr, const char *file,
                     int line, const char *func) {
  char name[64];
  return vl_err_raise(VL_ECUDA, file, line, func, "%s failed on rank %d (host %s): %s",
                      call_name(expr, name, sizeof name), c->rank, c->host,
                      cudaGetErrorString(e));
}

static int nccl_fail(ncclResult_t r, const vl_comm *c, const char *expr, const char *file,
                     int line, const char *func) {
  char name[64];
  const char *last = ncclGetLastError(NULL);
  return vl_err_raise(VL_ENCCL, file, line, func, "%s failed on rank %d (host %s): %s%s%s",
                      call_name(expr, name, sizeof name), c->rank, c->host,
                      ncclGetErrorString(r), last && last[0] ? ": " : "", last ? last : "");
}

#define CUDA_CHECK(c, call)                                                    \
  do {                                                                         \
    cudaError_t cu_rc_ = (call);                                               \
    if (cu_rc_ != cudaSuccess)                                                 \
      return cuda_fail(cu_rc_, (c), #call, __FILE__, __LINE__, __func__);      \
  } while (0)

#define NCCL_CHECK(c, call)                                                    \
  do {                                                                         \
    ncclResult_t nc_rc_ = (call);                                              \
    if (nc_rc_ != ncclSuccess)                                                 \
      return nccl_fail(nc_rc_, (c), #call, __FILE__, __LINE__, __func__);      \
  } while (0)
#endif

/* ---- MPI lifetime ------------------------------------------------------------ */

int vl_comm_mpi_init(int *argc, char ***argv) {
  int provided = 0, done = 0;
  MPI_CHECK(NULL, MPI_Initialized(&done));
  if (done) VL_ERROR(VL_EMPI, "MPI is already initialised (vl_comm_mpi_init called twice)");
  MPI_CHECK(NULL, MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided));
  if (provided < MPI_THREAD_FUNNELED)
    VL_ERROR(VL_EMPI, "the MPI library gives thread level %d, vltrain needs "
             "MPI_THREAD_FUNNELED (%d)", provided, MPI_THREAD_FUNNELED);
  return VL_OK;
}

int vl_comm_mpi_finalize(void) {
  int done = 0;
  MPI_CHECK(NULL, MPI_Finalized(&done));
  if (!done) MPI_CHECK(NULL, MPI_Finalize());
  return VL_OK;
}

/* ---- setup ------------------------------------------------------------------- */

int vl_comm_pick_device(int local_rank, int local_size, int n_gpus, int allow_shared,
                        const char *host, int *device) {
  *device = -1;
  if (local_size < 1 || local_rank < 0 || local_rank >= local_size)
    VL_ERROR(VL_EINVAL, "host %s: local rank %d of %d is out of range", host, local_rank,
             local_size);
  if (n_gpus <= 0) VL_ERROR(VL_ECUDA, "no CUDA device visible on host %s", host);
  if (local_size > n_gpus && !allow_shared)
    VL_ERROR(VL_EINVAL, "host %s: %d ranks on this node but only %d GPUs visible "
             "(set run.allow_shared_gpu: true to share)", host, local_size, n_gpus);
  *device = local_rank % n_gpus;
  return VL_OK;
}

/* GPUs this process sees; `why` gets a reason when none (for messages). */
static int visible_gpus(char *why, size_t n) {
  why[0] = '\0';
#ifdef VL_HAVE_CUDA
  int count = 0;
  cudaError_t e = cudaGetDeviceCount(&count);
  const char *vis = getenv("CUDA_VISIBLE_DEVICES");
  if (e != cudaSuccess) {
    (void)cudaGetLastError(); /* clear it: the CPU backend may still run */
    snprintf(why, n, " (cudaGetDeviceCount: %s%s%s)", cudaGetErrorString(e),
             vis ? "; CUDA_VISIBLE_DEVICES=" : "", vis ? vis : "");
    return 0;
  }
  if (count == 0) snprintf(why, n, " (0 devices%s%s)", vis ? "; CUDA_VISIBLE_DEVICES=" : "",
                           vis ? vis : "");
  return count;
#else
  (void)n;
  return 0;
#endif
}

/* All ranks learn whether any failed a step: a rank that failed alone would
 * leave the others waiting in the next collective.  Returns rc where it
 * failed; elsewhere the first failing rank's code, naming it. */
static int agree(vl_comm *c, int rc, const char *step) {
  int in[2] = {rc, c->rank}, out[2] = {0, 0};
  int m = MPI_Allreduce(in, out, 1, MPI_2INT, MPI_MAXLOC, c->world);
  if (rc != VL_OK) return rc;
  if (m != MPI_SUCCESS) return mpi_fail(m, c, "MPI_Allreduce", __FILE__, __LINE__, __func__);
  if (out[0] != VL_OK)
    VL_ERROR(out[0], "rank %d failed while %s (see its message); rank %d on %s stops too",
             out[1], step, c->rank, c->host);
  return VL_OK;
}

#ifdef VL_HAVE_CUDA
static void append(char *buf, size_t n, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void append(char *buf, size_t n, const char *fmt, ...) {
  size_t len = strlen(buf);
  if (len + 1 >= n) return;
  va_list ap;
  va_start(ap, fmt);
  int w = vsnprintf(buf + len, n - len, fmt, ap);
  va_end(ap);
  if (w >= 0 && (size_t)w >= n - len && n > 4) strcpy(buf + n - 4, "...");
}

/* Collective: "hostA (rank 0 1), hostB (rank 3)" for the ranks where flag
 * is set, in rank order; *count = how many. */
static int rank_list(vl_comm *c, int flag, char *out, size_t n, int *count) {
  struct entry { int flag; char host[60]; } me, *all = NULL;
  memset(&me, 0, sizeof me);
  me.flag = flag;
  snprintf(me.host, sizeof me.host, "%.59s", c->host);
  VL_CALL(vl_malloc((void **)&all, (size_t)c->size * sizeof me, "host list"));
  int m = MPI_Allgather(&me, (int)sizeof me, MPI_BYTE, all, (int)sizeof me, MPI_BYTE, c->world);
  if (m != MPI_SUCCESS) {
    free(all);
    return mpi_fail(m, c, "MPI_Allgather", __FILE__, __LINE__, __func__);
  }
  out[0] = '\0';
  *count = 0;
  const char *prev = NULL;
  for (int r = 0; r < c->size; r++) {
    if (!all[r].flag) continue;
    if (prev && !strcmp(prev, all[r].host)) {
      append(out, n, " %d", r);
    } else {
      if (prev) append(out, n, "), ");
      append(out, n, "%s (rank %d", all[r].host, r);
      prev = all[r].host;
    }
    (*count)++;
  }
  if (prev) append(out, n, ")");
  free(all);
  return VL_OK;
}

/* Collective on the node: whether the ranks' GPU `dev` are distinct
 * physical devices (by UUID).  A rank that cannot tell counts as a clash. */
static int node_gpus_distinct(vl_comm *c, int dev, int *distinct) {
  struct cudaDeviceProp p;
  unsigned char me[17] = {0}, *all = NULL;
  if (cudaGetDeviceProperties(&p, dev) == cudaSuccess) {
    memcpy(me, p.uuid.bytes, 16);
    me[16] = 1;
  } else {
    (void)cudaGetLastError();
  }
  VL_CALL(vl_malloc((void **)&all, 17 * (size_t)c->local_size, "GPU UUIDs"));
  int m = MPI_Allgather(me, 17, MPI_BYTE, all, 17, MPI_BYTE, c->node);
  if (m != MPI_SUCCESS) {
    free(all);
    return mpi_fail(m, c, "MPI_Allgather", __FILE__, __LINE__, __func__);
  }
  *distinct = 1;
  for (int i = 0; i < c->local_size; i++)
    for (int j = i; j < c->local_size; j++)
      if (!all[17 * i + 16] || (j > i && !memcmp(all + 17 * i, all + 17 * j, 16))) *distinct = 0;
  free(all);
  return VL_OK;
}

static int cuda_bind(vl_comm *c) {
  CUDA_CHECK(c, cudaSetDevice(c->device));
  cudaStream_t s;
  /* non-blocking: the comm stream must not serialise with the legacy stream */
  CUDA_CHECK(c, cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  c->stream = s;
  cudaEvent_t ev;
  CUDA_CHECK(c, cudaEventCreateWithFlags(&ev, cudaEventDisableTiming));
  c->event = ev;
  return VL_OK;
}

static int setup_cuda(vl_comm *c, int gpus, int min_gpus, const char *why, int allow_shared) {
  if (min_gpus == 0) { /* the same on every rank: all fail, none waits */
    char list[512];
    int none = 0;
    VL_CALL(rank_list(c, gpus == 0, list, sizeof list, &none));
    if (gpus == 0)
      VL_ERROR(VL_ECUDA, "no CUDA device visible on host %s (rank %d)%s; run.backend is cuda, "
               "and %d of %d ranks see none: %s", c->host, c->rank, why, none, c->size, list);
    VL_ERROR(VL_ECUDA, "run.backend is cuda but %d of %d ranks see no CUDA device: %s", none,
             c->size, list);
  }
  c->backend = VL_BACKEND_CUDA;
  /* Slurm's --gpus-per-task (a CUDA_VISIBLE_DEVICES per rank) shows each
   * rank its own single GPU: fewer visible than local ranks, none shared */
  int own = 0, rc = VL_OK, one = gpus == 1, all_one = 0;
  MPI_CHECK(c, MPI_Allreduce(&one, &all_one, 1, MPI_INT, MPI_MIN, c->node));
  if (all_one && c->local_size > 1) VL_CALL(node_gpus_distinct(c, 0, &own));
  if (own) c->device = 0;
  else rc = vl_comm_pick_device(c->local_rank, c->local_size, gpus, allow_shared, c->host,
                                &c->device);
  VL_CALL(agree(c, rc, "choosing its GPU"));
  VL_CALL(agree(c, cuda_bind(c), "binding its GPU"));
  /* NCCL refuses two ranks on one GPU: if any node shares, all stage */
  int distinct = 1;
  if (c->local_size > 1) VL_CALL(node_gpus_distinct(c, c->device, &distinct));
  int shared = !distinct;
  MPI_CHECK(c, MPI_Allreduce(&shared, &c->staged, 1, MPI_INT, MPI_MAX, c->world));
  if (c->staged) return VL_OK;
  struct { int rc; ncclUniqueId id; } boot;
  memset(&boot, 0, sizeof boot);
  if (c->rank == 0) {
    ncclResult_t r = ncclGetUniqueId(&boot.id);
    if (r != ncclSuccess)
      boot.rc = nccl_fail(r, c, "ncclGetUniqueId", __FILE__, __LINE__, __func__);
  }
  MPI_CHECK(c, MPI_Bcast(&boot, (int)sizeof boot, MPI_BYTE, 0, c->world));
  if (boot.rc != VL_OK) {
    if (c->rank == 0) return boot.rc;
    VL_ERROR(boot.rc, "rank 0 could not make the NCCL unique id (see its message)");
  }
  ncclComm_t nc = NULL;
  ncclResult_t r = ncclCommInitRank(&nc, c->size, boot.id, c->rank);
  rc = VL_OK;
  if (r == ncclSuccess) c->nccl = nc;
  else rc = nccl_fail(r, c, "ncclCommInitRank", __FILE__, __LINE__, __func__);
  VL_CALL(agree(c, rc, "creating the NCCL communicator"));
  return VL_OK;
}
#endif

static int setup(vl_comm *c, MPI_Comm world, vl_backend_kind want, int allow_shared) {
  /* our own duplicate: our messages cannot match the caller's, and MPI errors
   * on it come back as codes instead of killing the job */
  MPI_CHECK(NULL, MPI_Comm_dup(world, &c->world));
  MPI_CHECK(NULL, MPI_Comm_set_errhandler(c->world, MPI_ERRORS_RETURN));
  MPI_CHECK(NULL, MPI_Comm_rank(c->world, &c->rank));
  MPI_CHECK(NULL, MPI_Comm_size(c->world, &c->size));
  if (gethostname(c->host, sizeof c->host - 1) != 0) snprintf(c->host, sizeof c->host, "unknown");
  c->host[sizeof c->host - 1] = '\0';
  MPI_CHECK(c, MPI_Comm_split_type(c->world, MPI_COMM_TYPE_SHARED, c->rank, MPI_INFO_NULL,
                                   &c->node));
  MPI_CHECK(c, MPI_Comm_set_errhandler(c->node, MPI_ERRORS_RETURN));
  MPI_CHECK(c, MPI_Comm_rank(c->node, &c->local_rank));
  MPI_CHECK(c, MPI_Comm_size(c->node, &c->local_size));

  char why[256];
  int gpus = visible_gpus(why, sizeof why);
  int mm[2] = {gpus, -gpus}, red[2];
  MPI_CHECK(c, MPI_Allreduce(mm, red, 2, MPI_INT, MPI_MIN, c->world));
  const int min_gpus = red[0], max_gpus = -red[1];
  if (want == VL_BACKEND_AUTO) {
#ifdef VL_HAVE_CUDA
    if (min_gpus == 0 && max_gpus > 0) {
      char none[400], some[400];
      int n_none = 0, n_some = 0;
      VL_CALL(rank_list(c, gpus == 0, none, sizeof none, &n_none));
      VL_CALL(rank_list(c, gpus > 0, some, sizeof some, &n_some));
      VL_ERROR(VL_EINVAL, "run.backend auto: %d of %d ranks see no GPU: %s; %d see one: %s. "
               "Set run.backend, or make every rank see a GPU", n_none, c->size, none, n_some,
               some);
    }
    want = max_gpus > 0 ? VL_BACKEND_CUDA : VL_BACKEND_CPU;
#else
    (void)min_gpus, (void)max_gpus;
    want = VL_BACKEND_CPU;
#endif
  }
  if (want == VL_BACKEND_CPU) {
    c->backend = VL_BACKEND_CPU;
    return VL_OK;
  }
#ifdef VL_HAVE_CUDA
  return setup_cuda(c, gpus, min_gpus, why, allow_shared);
#else
  (void)allow_shared;
  VL_ERROR(VL_ENOTSUP, "run.backend is cuda but this vltrain was built without CUDA "
           "(configure --with-cuda)");
#endif
}

/* Releases what exists; goes on after a failure and returns the first.
 * report 0: raise nothing (cleanup after a failed setup keeps its message). */
static int release(vl_comm *c, int report) {
  int rc = VL_OK;
#ifdef VL_HAVE_CUDA
  if (c->nccl) {
    ncclResult_t r = ncclCommDestroy((ncclComm_t)c->nccl);
    if (r != ncclSuccess)
      rc = report ? nccl_fail(r, c, "ncclCommDestroy", __FILE__, __LINE__, __func__) : VL_ENCCL;
  }
  if (c->event) {
    cudaError_t e = cudaEventDestroy((cudaEvent_t)c->event);
    if (e != cudaSuccess && !rc)
      rc = report ? cuda_fail(e, c, "cudaEventDestroy", __FILE__, __LINE__, __func__) : VL_ECUDA;
  }
  if (c->stream) {
    cudaError_t e = cudaStreamDestroy((cudaStream_t)c->stream);
    if (e != cudaSuccess && !rc)
      rc = report ? cuda_fail(e, c, "cudaStreamDestroy", __FILE__, __LINE__, __func__) : VL_ECUDA;
  }
#endif
  c->nccl = c->stream = c->event = NULL;
  /* 0 is never a valid handle: a zeroed vl_comm frees as a no-op */
  MPI_Comm *comms[2] = {&c->node, &c->world};
  for (int i = 0; i < 2; i++) {
    if (!*comms[i] || *comms[i] == MPI_COMM_NULL) continue;
    int m = MPI_Comm_free(comms[i]);
    if (m != MPI_SUCCESS && !rc)
      rc = report ? mpi_fail(m, c, "MPI_Comm_free", __FILE__, __LINE__, __func__) : VL_EMPI;
  }
  c->node = c->world = MPI_COMM_NULL;
  return rc;
}

int vl_comm_init(vl_comm *c, vl_backend_kind want, int allow_shared_gpu, double timeout_s) {
  VL_CALL(vl_comm_init_on(c, MPI_COMM_WORLD, want, allow_shared_gpu, timeout_s));
  return VL_OK;
}

int vl_comm_init_on(vl_comm *c, MPI_Comm world, vl_backend_kind want, int allow_shared_gpu,
                    double timeout_s) {
  memset(c, 0, sizeof *c);
  c->world = c->node = MPI_COMM_NULL;
  c->backend = VL_BACKEND_CPU;
  c->device = -1;
  c->timeout_s = timeout_s > 0 ? timeout_s : 600.0;
  c->max_count = INT_MAX;
  if (want != VL_BACKEND_AUTO && want != VL_BACKEND_CPU && want != VL_BACKEND_CUDA)
    VL_ERROR(VL_EINVAL, "unknown backend %d (auto, cpu or cuda)", (int)want);
  int rc = setup(c, world, want, allow_shared_gpu);
  if (rc != VL_OK) {
    release(c, 0);
    return vl_err_trace(rc, __FILE__, __LINE__, __func__);
  }
  return VL_OK;
}

int vl_comm_free(vl_comm *c) {
  int rc = release(c, 1);
  memset(c, 0, sizeof *c);
  c->world = c->node = MPI_COMM_NULL;
  c->device = -1;
  VL_CALL(rc);
  return VL_OK;
}

/* ---- fp32 collectives with MPI on host memory -------------------------------- */

typedef enum { COLL_ALLREDUCE = 0, COLL_REDUCE_SCATTER = 1, COLL_ALLGATHER = 2 } coll_kind;
static const char *const coll_name[] = {"all-reduce", "reduce-scatter", "all-gather"};

static size_t piece(const vl_comm *c, size_t left) {
  size_t m = c->max_count > 0 && c->max_count <= INT_MAX ? c->max_count : INT_MAX;
  return left < m ? left : m;
}

static int mpi_allreduce_f32(vl_comm *c, float *buf, size_t n) {
  for (size_t o = 0, k; o < n; o += k) {
    k = piece(c, n - o);
    MPI_CHECK(c, MPI_Allreduce(MPI_IN_PLACE, buf + o, (int)k, MPI_FLOAT, MPI_SUM, c->world));
  }
  return VL_OK;
}

/* In place when recv == send + rank * n (NCCL's convention). */
static int mpi_reduce_scatter_f32(vl_comm *c, const float *send, float *recv, size_t n) {
  const int inplace = recv == send + (size_t)c->rank * n;
  if (n == piece(c, n)) {
    if (inplace) {
      float *buf = (float *)(uintptr_t)send;
      MPI_CHECK(c, MPI_Reduce_scatter_block(MPI_IN_PLACE, buf, (int)n, MPI_FLOAT, MPI_SUM,
                                            c->world));
      if (c->rank) memmove(recv, buf, n * sizeof(float)); /* MPI leaves it at the front */
    } else {
      MPI_CHECK(c, MPI_Reduce_scatter_block(send, recv, (int)n, MPI_FLOAT, MPI_SUM, c->world));
    }
    return VL_OK;
  }
  /* over MPI's int count: one reduce per owner, in pieces (same volume) */
  for (int q = 0; q < c->size; q++)
    for (size_t o = 0, k; o < n; o += k) {
      k = piece(c, n - o);
      const float *s = send + (size_t)q * n + o;
      const void *sb = q == c->rank && inplace ? MPI_IN_PLACE : (const void *)s;
      MPI_CHECK(c, MPI_Reduce(sb, q == c->rank ? recv + o : NULL, (int)k, MPI_FLOAT, MPI_SUM, q,
                              c->world));
    }
  return VL_OK;
}

/* In place when send == recv + rank * n. */
static int mpi_allgather_f32(vl_comm *c, const float *send, float *recv, size_t n) {
  float *mine = recv + (size_t)c->rank * n;
  if (n == piece(c, n)) {
    if (send == mine)
      MPI_CHECK(c, MPI_Allgather(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, recv, (int)n, MPI_FLOAT,
                                 c->world));
    else
      MPI_CHECK(c, MPI_Allgather(send, (int)n, MPI_FLOAT, recv, (int)n, MPI_FLOAT, c->world));
    return VL_OK;
  }
  /* over MPI's int count: each owner broadcasts its block, in pieces */
  if (send != mine) memmove(mine, send, n * sizeof(float));
  for (int q = 0; q < c->size; q++)
    for (size_t o = 0, k; o < n; o += k) {
      k = piece(c, n - o);
      MPI_CHECK(c, MPI_Bcast(recv + (size_t)q * n + o, (int)k, MPI_FLOAT, q, c->world));
    }
  return VL_OK;
}

static int mpi_collective_f32(vl_comm *c, coll_kind k, const float *send, float *recv,
                              size_t n) {
  switch (k) {
  case COLL_ALLREDUCE: VL_CALL(mpi_allreduce_f32(c, recv, n)); break;
  case COLL_REDUCE_SCATTER: VL_CALL(mpi_reduce_scatter_f32(c, send, recv, n)); break;
  case COLL_ALLGATHER: VL_CALL(mpi_allgather_f32(c, send, recv, n)); break;
  }
  return VL_OK;
}

/* Elements [a, b) of a block layout of n per rank, summed into their owners
 * with one MPI_Reduce (in pieces) per owner; seg[0] is element a. */
static int mpi_reduce_range_f32(vl_comm *c, float *seg, size_t a, size_t b, size_t n) {
  for (size_t q = a / n; q < (size_t)c->size && q * n < b; q++) {
    const size_t lo = q * n > a ? q * n : a, hi = (q + 1) * n < b ? (q + 1) * n : b;
    const int mine = q == (size_t)c->rank;
    for (size_t o = lo, k; o < hi; o += k) {
      k = piece(c, hi - o);
      float *p = seg + (o - a);
      MPI_CHECK(c, MPI_Reduce(mine ? MPI_IN_PLACE : (const void *)p, mine ? p : NULL, (int)k,
                              MPI_FLOAT, MPI_SUM, (int)q, c->world));
    }
  }
  return VL_OK;
}

/* ---- CUDA: NCCL on the comm stream, or staged through host memory ------------- */

#ifdef VL_HAVE_CUDA
static float bf16_to_f32(uint16_t b) {
  uint32_t u = (uint32_t)b << 16;
  float f;
  memcpy(&f, &u, 4);
  return f;
}

static uint16_t f32_to_bf16(float f) { /* round to nearest even, NaN stays NaN */
  uint32_t u;
  memcpy(&u, &f, 4);
  if ((u & 0x7FFFFFFFu) > 0x7F800000u) return (uint16_t)((u >> 16) | 0x40u);
  u += 0x7FFFu + ((u >> 16) & 1u);
  return (uint16_t)(u >> 16);
}

static int staged_copy(vl_comm *c, void *dst, const void *src, size_t bytes,
                       enum cudaMemcpyKind kind) {
  CUDA_CHECK(c, cudaMemcpyAsync(dst, src, bytes, kind, (cudaStream_t)c->stream));
  CUDA_CHECK(c, cudaStreamSynchronize((cudaStream_t)c->stream));
  return VL_OK;
}

/* Shared GPUs: device -> host fp32 -> MPI -> device.  Synchronous. */
static int staged(vl_comm *c, coll_kind k, vl_comm_dtype dt, const void *send, void *recv,
                  size_t n) {
  const size_t R = (size_t)c->size, el = dt == VL_COMM_BF16 ? 2 : 4;
  const size_t n_in = k == COLL_REDUCE_SCATTER ? n * R : n;
  const size_t n_out = k == COLL_ALLGATHER ? n * R : n;
  float *hin = NULL, *hout = NULL;
  uint16_t *raw = NULL;
  int rc = vl_malloc((void **)&hin, n_in * sizeof(float), "staged collective (host copy)");
  if (rc == VL_OK && k != COLL_ALLREDUCE)
    rc = vl_malloc((void **)&hout, n_out * sizeof(float), "staged collective (host result)");
  if (rc == VL_OK && el == 2)
    rc = vl_malloc((void **)&raw, (n_in > n_out ? n_in : n_out) * 2, "staged collective (bf16)");
  if (k == COLL_ALLREDUCE) hout = hin;
  if (rc == VL_OK) rc = staged_copy(c, el == 2 ? (void *)raw : (void *)hin, send, n_in * el,
                                    cudaMemcpyDeviceToHost);
  if (rc == VL_OK && el == 2)
    for (size_t i = 0; i < n_in; i++) hin[i] = bf16_to_f32(raw[i]);
  if (rc == VL_OK) rc = mpi_collective_f32(c, k, hin, hout, n);
  if (rc == VL_OK && el == 2)
    for (size_t i = 0; i < n_out; i++) raw[i] = f32_to_bf16(hout[i]);
  if (rc == VL_OK) rc = staged_copy(c, recv, el == 2 ? (void *)raw : (void *)hout, n_out * el,
                                    cudaMemcpyHostToDevice);
  if (hout != hin) free(hout);
  free(hin);
  free(raw);
  VL_CALL(rc);
  return VL_OK;
}

static int nccl_enqueue(vl_comm *c, coll_kind k, vl_comm_dtype dt, const void *send, void *recv,
                        size_t n) {
  if (!c->nccl)
    VL_ERROR(VL_ENCCL, "rank %d (host %s): the NCCL communicator was aborted after an "
             "earlier failure; no further collectives", c->rank, c->host);
  const ncclDataType_t t = dt == VL_COMM_BF16 ? ncclBfloat16 : ncclFloat32;
  ncclComm_t nc = (ncclComm_t)c->nccl;
  cudaStream_t s = (cudaStream_t)c->stream;
  snprintf(c->pending, sizeof c->pending, "%s of %zu %s%s", coll_name[k], n,
           dt == VL_COMM_BF16 ? "bf16" : "fp32", k == COLL_ALLREDUCE ? "" : " per rank");
  switch (k) {
  case COLL_ALLREDUCE: NCCL_CHECK(c, ncclAllReduce(send, recv, n, t, ncclSum, nc, s)); break;
  case COLL_REDUCE_SCATTER:
    NCCL_CHECK(c, ncclReduceScatter(send, recv, n, t, ncclSum, nc, s));
    break;
  case COLL_ALLGATHER: NCCL_CHECK(c, ncclAllGather(send, recv, n, t, nc, s)); break;
  }
  return VL_OK;
}

/* Shared GPUs: [a, b) to the host as fp32, MPI_Reduce per owner, this
 * rank's part of the sums back.  Synchronous (after the comm stream's
 * earlier work, a vl_comm_wait_compute included). */
static int staged_reduce_range(vl_comm *c, vl_comm_dtype dt, void *buf, size_t a, size_t b,
                               size_t n) {
  const size_t el = dt == VL_COMM_BF16 ? 2 : 4, len = b - a;
  const size_t own_lo = (size_t)c->rank * n, own_hi = own_lo + n;
  const size_t lo = own_lo > a ? own_lo : a, hi = own_hi < b ? own_hi : b;
  float *h = NULL;
  uint16_t *raw = NULL;
  int rc = vl_malloc((void **)&h, len * sizeof(float), "staged range reduction (host copy)");
  if (rc == VL_OK && el == 2)
    rc = vl_malloc((void **)&raw, len * 2, "staged range reduction (bf16)");
  if (rc == VL_OK) rc = staged_copy(c, el == 2 ? (void *)raw : (void *)h, (char *)buf + a * el,
                                    len * el, cudaMemcpyDeviceToHost);
  if (rc == VL_OK && el == 2)
    for (size_t i = 0; i < len; i++) h[i] = bf16_to_f32(raw[i]);
  if (rc == VL_OK) rc = mpi_reduce_range_f32(c, h, a, b, n);
  if (rc == VL_OK && lo < hi) {
    if (el == 2)
      for (size_t i = lo; i < hi; i++) raw[i - a] = f32_to_bf16(h[i - a]);
    const void *src = el == 2 ? (const void *)(raw + (lo - a)) : (const void *)(h + (lo - a));
    rc = staged_copy(c, (char *)buf + lo * el, src, (hi - lo) * el, cudaMemcpyHostToDevice);
  }
  free(h);
  free(raw);
  VL_CALL(rc);
  return VL_OK;
}

/* One ncclReduce (root q, in place) per owner q of a piece of [a, b), in
 * one group; the group is closed whatever failed inside it. */
static int nccl_reduce_range(vl_comm *c, vl_comm_dtype dt, void *buf, size_t a, size_t b,
                             size_t n) {
  if (!c->nccl)
    VL_ERROR(VL_ENCCL, "rank %d (host %s): the NCCL communicator was aborted after an "
             "earlier failure; no further collectives", c->rank, c->host);
  const ncclDataType_t t = dt == VL_COMM_BF16 ? ncclBfloat16 : ncclFloat32;
  const size_t el = dt == VL_COMM_BF16 ? 2 : 4;
  ncclComm_t nc = (ncclComm_t)c->nccl;
  cudaStream_t s = (cudaStream_t)c->stream;
  const size_t q0 = a / n, q1 = (b - 1) / n;
  snprintf(c->pending, sizeof c->pending, "reduce to owners of elements [%zu, %zu) (%s, ranks %zu-%zu)",
           a, b, dt == VL_COMM_BF16 ? "bf16" : "fp32", q0, q1);
  NCCL_CHECK(c, ncclGroupStart());
  int rc = VL_OK;
  for (size_t q = q0; q <= q1 && rc == VL_OK; q++) {
    const size_t lo = q * n > a ? q * n : a, hi = (q + 1) * n < b ? (q + 1) * n : b;
    char *p = (char *)buf + lo * el;
    ncclResult_t r = ncclReduce(p, p, hi - lo, t, ncclSum, (int)q, nc, s);
    if (r != ncclSuccess) rc = nccl_fail(r, c, "ncclReduce", __FILE__, __LINE__, __func__);
  }
  ncclResult_t r = ncclGroupEnd();
  if (r != ncclSuccess && rc == VL_OK)
    rc = nccl_fail(r, c, "ncclGroupEnd", __FILE__, __LINE__, __func__);
  VL_CALL(rc);
  return VL_OK;
}

static void abort_nccl(vl_comm *c) {
  if (c->nccl) ncclCommAbort((ncclComm_t)c->nccl);
  c->nccl = NULL;
}
#endif

/* send/recv follow NCCL: allreduce in place; reduce-scatter in place when
 * recv == send + rank*n; all-gather in place when send == recv + rank*n. */
static int collective(vl_comm *c, coll_kind k, vl_comm_dtype dt, const void *send, void *recv,
                      size_t n) {
  if (dt != VL_COMM_F32 && dt != VL_COMM_BF16)
    VL_ERROR(VL_EINVAL, "%s: unknown dtype %d", coll_name[k], (int)dt);
  if (dt == VL_COMM_BF16 && c->backend != VL_BACKEND_CUDA)
    VL_ERROR(VL_ENOTSUP, "%s: bf16 collectives need the CUDA backend (the CPU backend "
             "reduces fp32)", coll_name[k]);
  if (n == 0) return VL_OK; /* n is the same on every rank: all skip */
  if (!send || !recv) VL_ERROR(VL_EINVAL, "%s of %zu elements: NULL buffer", coll_name[k], n);
  if (k != COLL_ALLREDUCE && n > SIZE_MAX / 4 / (size_t)c->size)
    VL_ERROR(VL_EINVAL, "%s: %zu elements per rank x %d ranks overflows", coll_name[k], n,
             c->size);
#ifdef VL_HAVE_CUDA
  if (c->backend == VL_BACKEND_CUDA) {
    if (c->staged) VL_CALL(staged(c, k, dt, send, recv, n));
    else VL_CALL(nccl_enqueue(c, k, dt, send, recv, n));
    return VL_OK;
  }
#endif
  VL_CALL(mpi_collective_f32(c, k, send, recv, n));
  return VL_OK;
}

int vl_comm_allreduce_sum(vl_comm *c, vl_comm_dtype dt, void *buf, size_t n) {
  VL_CALL(collective(c, COLL_ALLREDUCE, dt, buf, buf, n));
  return VL_OK;
}

int vl_comm_reduce_scatter(vl_comm *c, vl_comm_dtype dt, const void *send, void *recv,
                           size_t n_per_rank) {
  VL_CALL(collective(c, COLL_REDUCE_SCATTER, dt, send, recv, n_per_rank));
  return VL_OK;
}

int vl_comm_allgather(vl_comm *c, vl_comm_dtype dt, const void *send, void *recv,
                      size_t n_per_rank) {
  VL_CALL(collective(c, COLL_ALLGATHER, dt, send, recv, n_per_rank));
  return VL_OK;
}

int vl_comm_reduce_scatter_inplace(vl_comm *c, vl_comm_dtype dt, void *buf, size_t n_per_rank) {
  const size_t el = dt == VL_COMM_BF16 ? 2 : 4;
  char *mine = buf ? (char *)buf + (size_t)c->rank * n_per_rank * el : NULL;
  VL_CALL(collective(c, COLL_REDUCE_SCATTER, dt, buf, mine, n_per_rank));
  return VL_OK;
}

int vl_comm_allgather_inplace(vl_comm *c, vl_comm_dtype dt, void *buf, size_t n_per_rank) {
  const size_t el = dt == VL_COMM_BF16 ? 2 : 4;
  char *mine = buf ? (char *)buf + (size_t)c->rank * n_per_rank * el : NULL;
  VL_CALL(collective(c, COLL_ALLGATHER, dt, mine, buf, n_per_rank));
  return VL_OK;
}

int vl_comm_wait_compute(vl_comm *c, void *compute_stream) {
#ifdef VL_HAVE_CUDA
  if (c->backend != VL_BACKEND_CUDA || !compute_stream) return VL_OK;
  if (!c->event || !c->stream)
    VL_ERROR(VL_EINVAL, "rank %d (host %s): no communication stream to make wait", c->rank,
             c->host);
  CUDA_CHECK(c, cudaEventRecord((cudaEvent_t)c->event, (cudaStream_t)compute_stream));
  CUDA_CHECK(c, cudaStreamWaitEvent((cudaStream_t)c->stream, (cudaEvent_t)c->event, 0));
#else
  (void)c, (void)compute_stream;
#endif
  return VL_OK;
}

int vl_comm_reduce_range_to_owners(vl_comm *c, vl_comm_dtype dt, void *buf, size_t a, size_t b,
                                   size_t n_per_rank) {
  const char *what = "reduce to owners";
  if (dt != VL_COMM_F32 && dt != VL_COMM_BF16)
    VL_ERROR(VL_EINVAL, "%s: unknown dtype %d", what, (int)dt);
  if (dt == VL_COMM_BF16 && c->backend != VL_BACKEND_CUDA)
    VL_ERROR(VL_ENOTSUP, "%s: bf16 collectives need the CUDA backend (the CPU backend "
             "reduces fp32)", what);
  if (n_per_rank == 0 || n_per_rank > SIZE_MAX / 4 / (size_t)c->size)
    VL_ERROR(VL_EINVAL, "%s: %zu elements per rank x %d ranks", what, n_per_rank, c->size);
  if (a > b || b > n_per_rank * (size_t)c->size)
    VL_ERROR(VL_EINVAL, "%s: elements [%zu, %zu) outside the %d x %zu of the buffer", what, a,
             b, c->size, n_per_rank);
  if (a == b) return VL_OK; /* the same on every rank: all skip */
  if (!buf) VL_ERROR(VL_EINVAL, "%s of elements [%zu, %zu): NULL buffer", what, a, b);
#ifdef VL_HAVE_CUDA
  if (c->backend == VL_BACKEND_CUDA) {
    if (c->staged) VL_CALL(staged_reduce_range(c, dt, buf, a, b, n_per_rank));
    else VL_CALL(nccl_reduce_range(c, dt, buf, a, b, n_per_rank));
    return VL_OK;
  }
#endif
  VL_CALL(mpi_reduce_range_f32(c, (float *)buf + a, a, b, n_per_rank));
  return VL_OK;
}

int vl_comm_sync(vl_comm *c) {
#ifdef VL_HAVE_CUDA
  if (c->backend != VL_BACKEND_CUDA || c->staged) return VL_OK;
  if (!c->nccl)
    VL_ERROR(VL_ENCCL, "rank %d (host %s): the NCCL communicator was aborted after an "
             "earlier failure", c->rank, c->host);
  const char *op = c->pending[0] ? c->pending : "a collective";
  struct timespec t0, t;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  useconds_t nap = 10; /* grows to 1 ms: fast for short collectives, cheap for long */
  for (;;) {
    cudaError_t q = cudaStreamQuery((cudaStream_t)c->stream);
    if (q == cudaSuccess) {
      c->pending[0] = '\0';
      return VL_OK;
    }
    if (q != cudaErrorNotReady) {
      abort_nccl(c);
      VL_ERROR(VL_ECUDA, "rank %d (host %s): the communication stream failed during %s: %s; "
               "NCCL communicator aborted", c->rank, c->host, op, cudaGetErrorString(q));
    }
    ncclResult_t async = ncclSuccess, r = ncclCommGetAsyncError((ncclComm_t)c->nccl, &async);
    if (r != ncclSuccess) async = r;
    if (async != ncclSuccess && async != ncclInProgress) {
      const char *last = ncclGetLastError((ncclComm_t)c->nccl);
      char detail[512];
      snprintf(detail, sizeof detail, "%s%s%s", ncclGetErrorString(async),
               last && last[0] ? ": " : "", last ? last : "");
      abort_nccl(c);
      VL_ERROR(VL_ENCCL, "rank %d (host %s): NCCL error during %s: %s; NCCL communicator "
               "aborted", c->rank, c->host, op, detail);
    }
    clock_gettime(CLOCK_MONOTONIC, &t);
    double waited = (double)(t.tv_sec - t0.tv_sec) + 1e-9 * (double)(t.tv_nsec - t0.tv_nsec);
    if (waited > c->timeout_s) {
      abort_nccl(c);
      VL_ERROR(VL_ENCCL, "rank %d (host %s): %s did not finish within %.0f s "
               "(run.nccl_timeout_s); another rank has probably stopped or hangs; NCCL "
               "communicator aborted", c->rank, c->host, op, c->timeout_s);
    }
    usleep(nap);
    if (nap < 1000) nap *= 2;
  }
#else
  (void)c;
  return VL_OK;
#endif
}

/* ---- host helpers ------------------------------------------------------------ */

int vl_comm_bcast(vl_comm *c, void *buf, size_t bytes, int root) {
  if (root < 0 || root >= c->size)
    VL_ERROR(VL_EINVAL, "broadcast from rank %d: there are %d ranks", root, c->size);
  if (bytes && !buf) VL_ERROR(VL_EINVAL, "broadcast of %zu bytes: NULL buffer", bytes);
  char *b = buf;
  for (size_t o = 0, k; o < bytes; o += k) {
    k = piece(c, bytes - o);
    MPI_CHECK(c, MPI_Bcast(b + o, (int)k, MPI_BYTE, root, c->world));
  }
  return VL_OK;
}

int vl_comm_allreduce_double(vl_comm *c, double *v, int n, vl_comm_op op) {
  if (n < 0 || (n > 0 && !v)) VL_ERROR(VL_EINVAL, "all-reduce of %d doubles: bad buffer", n);
  MPI_Op mop;
  switch (op) {
  case VL_COMM_SUM: mop = MPI_SUM; break;
  case VL_COMM_MAX: mop = MPI_MAX; break;
  case VL_COMM_MIN: mop = MPI_MIN; break;
  default: VL_ERROR(VL_EINVAL, "all-reduce: unknown operation %d", (int)op);
  }
  if (n == 0) return VL_OK;
  MPI_CHECK(c, MPI_Allreduce(MPI_IN_PLACE, v, n, MPI_DOUBLE, mop, c->world));
  return VL_OK;
}

int vl_comm_barrier(vl_comm *c) {
  MPI_CHECK(c, MPI_Barrier(c->world));
  return VL_OK;
}

int vl_comm_print_map(vl_comm *c) {
  enum { LINE = 768 }; /* bytes per rank's line: host <= 255, device <= 319 */
  char line[LINE], dev[320] = "cpu";
#ifdef VL_HAVE_CUDA
  if (c->backend == VL_BACKEND_CUDA) {
    struct cudaDeviceProp p;
    /* a failure here must not skip the gather below: name it instead */
    const char *name = cudaGetDeviceProperties(&p, c->device) == cudaSuccess ? p.name : "?";
    snprintf(dev, sizeof dev, "%d (%.200s)%s", c->device, name,
             c->staged ? ", shared: collectives through host memory" : "");
  }
#endif
  snprintf(line, sizeof line, "rank %d  host %.255s  local %d/%d  device %.319s", c->rank, c->host,
           c->local_rank, c->local_size, dev);
  char *all = NULL;
  int rc = c->rank == 0 ? vl_malloc((void **)&all, (size_t)LINE * (size_t)c->size, "rank map")
                        : VL_OK;
  VL_CALL(agree(c, rc, "allocating the rank map"));
  int m = MPI_Gather(line, LINE, MPI_CHAR, all, LINE, MPI_CHAR, 0, c->world);
  if (m == MPI_SUCCESS && c->rank == 0) {
    for (int r = 0; r < c->size; r++) printf("  %s\n", all + (size_t)r * LINE);
    fflush(stdout);
  }
  free(all);
  if (m != MPI_SUCCESS) return mpi_fail(m, c, "MPI_Gather", __FILE__, __LINE__, __func__);
  return VL_OK;
}

void vl_comm_abort(vl_comm *c, int code) {
  (void)c; /* the whole job, whatever communicator c was made on */
  MPI_Abort(MPI_COMM_WORLD, code ? code : 1);
}
