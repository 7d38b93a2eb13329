/* comm: MPI bootstrap and the few collectives the trainer needs.
 *
 * Owns: world and node-local ranks (MPI_COMM_TYPE_SHARED), the choice of
 * backend (the same on every rank), the rank -> GPU binding (node-local
 * rank; or GPU 0 where each rank is shown only its own GPU, as with
 * Slurm's --gpus-per-task), the NCCL communicator (rank 0 makes the unique
 * id, MPI_Bcast carries it), the communication stream and the hang timeout.
 * Does not own: compute streams (ops backend), what is reduced (optim).
 *
 * The same calls reduce with MPI on the CPU backend and with NCCL on GPUs;
 * buffers are backend memory (host on CPU, device on CUDA).  On CUDA a
 * collective is enqueued on the comm stream and vl_comm_sync waits for it;
 * the caller makes its compute stream idle first.  When two ranks of a node
 * use one GPU (run.allow_shared_gpu; GPUs told apart by UUID) NCCL cannot
 * be used (one GPU, one NCCL rank), so CUDA collectives go through host
 * memory with MPI ("staged"; slow, for functional runs only); bf16 is
 * summed in fp32 there.
 *
 * Every setup failure is agreed on by all ranks (a rank that failed alone
 * would leave the others waiting in the next collective), so vl_comm_init
 * returns an error on every rank or on none.  MPI errors are returned, not
 * fatal, on the communicators this module creates.
 */
#ifndef VL_COMM_H
#define VL_COMM_H

#include <mpi.h>
#include <stddef.h>

#include "config.h"

typedef enum { VL_COMM_F32 = 0, VL_COMM_BF16 = 1 } vl_comm_dtype;
typedef enum { VL_COMM_SUM = 0, VL_COMM_MAX = 1, VL_COMM_MIN = 2 } vl_comm_op;

typedef struct {
  int rank, size;              /* in `world` */
  int local_rank, local_size;  /* this node (shared-memory domain) */
  char host[256];
  vl_backend_kind backend;     /* resolved: VL_BACKEND_CPU or VL_BACKEND_CUDA */
  int device;                  /* GPU index, -1 on the CPU backend */
  int staged;                  /* CUDA collectives through host memory (shared GPUs) */
  double timeout_s;            /* vl_comm_sync gives up after this long (s) */
  size_t max_count;            /* most elements per MPI call (INT_MAX; tests lower it) */
  char pending[128];           /* the last NCCL collective enqueued, for messages */
  MPI_Comm world;              /* a duplicate of the communicator given to init */
  MPI_Comm node;
  void *nccl;                  /* ncclComm_t; NULL on CPU, when staged or aborted */
  void *stream;                /* cudaStream_t of the collectives */
  void *event;                 /* cudaEvent_t for vl_comm_wait_compute */
} vl_comm;

/* MPI_Init_thread(FUNNELED), checked; MPI_Finalize. For main(). */
int vl_comm_mpi_init(int *argc, char ***argv);
int vl_comm_mpi_finalize(void);

/* Collective over MPI_COMM_WORLD.  want AUTO: CUDA when built with it and
 * every rank sees a GPU, CPU when none does, an error naming the hosts when
 * only some do.  timeout_s <= 0 means 600 s (run.nccl_timeout_s).  On error
 * every rank returns it and c is left so that vl_comm_free is a no-op. */
int vl_comm_init(vl_comm *c, vl_backend_kind want, int allow_shared_gpu, double timeout_s);
/* The same on another communicator (tests: MPI_COMM_SELF, a one-rank run). */
int vl_comm_init_on(vl_comm *c, MPI_Comm world, vl_backend_kind want, int allow_shared_gpu,
                    double timeout_s);
int vl_comm_free(vl_comm *c);

/* The binding rule, pure for tests: device = local_rank; more local ranks
 * than GPUs is VL_EINVAL ("host H: N ranks on this node but only G GPUs
 * visible (set run.allow_shared_gpu: true to share)") unless allow_shared,
 * then local_rank % n_gpus; no GPU at all is VL_ECUDA. */
int vl_comm_pick_device(int local_rank, int local_size, int n_gpus, int allow_shared,
                        const char *host, int *device);

/* Collectives on backend memory; n counts elements of dt.  bf16 needs the
 * CUDA backend (VL_ENOTSUP on CPU).  send and recv must not overlap (the
 * _inplace calls below are the overlapping forms).  n is the same on every
 * rank.  Counts over MPI's int limit are split (c->max_count). */
int vl_comm_allreduce_sum(vl_comm *c, vl_comm_dtype dt, void *buf, size_t n); /* in place */
/* send: size * n_per_rank elements, recv: n_per_rank (block `rank` of the sum). */
int vl_comm_reduce_scatter(vl_comm *c, vl_comm_dtype dt, const void *send, void *recv,
                           size_t n_per_rank);
/* send: n_per_rank elements, recv: size * n_per_rank, in rank order. */
int vl_comm_allgather(vl_comm *c, vl_comm_dtype dt, const void *send, void *recv,
                      size_t n_per_rank);
/* In place on a buffer of size x n_per_rank elements: after the
 * reduce-scatter, block `rank` holds the sum over ranks of that block (the
 * other blocks are undefined); the all-gather fills every block from its
 * owner's block. */
int vl_comm_reduce_scatter_inplace(vl_comm *c, vl_comm_dtype dt, void *buf, size_t n_per_rank);
int vl_comm_allgather_inplace(vl_comm *c, vl_comm_dtype dt, void *buf, size_t n_per_rank);
/* Overlapped ZeRO-1 reduction (optim.h, train.overlap_grad_reduce).
 * vl_comm_wait_compute: the collectives enqueued after this call start only
 * once the work queued so far on compute_stream (a cudaStream_t: the ops
 * backend's) is done -- a cudaEvent recorded there and cudaStreamWaitEvent
 * on the comm stream; the host does not wait.  No-op on the CPU backend
 * (its ops are done when they return) and for a NULL compute_stream.
 * vl_comm_reduce_range_to_owners: buf holds size x n_per_rank elements,
 * block q (elements [q n_per_rank, (q+1) n_per_rank)) owned by rank q, the
 * layout of vl_comm_reduce_scatter_inplace.  Sums elements [a, b) over the
 * ranks into their owners: for every rank q whose block meets [a, b) the
 * intersection is reduced to q, in place (NCCL: one ncclReduce with root q
 * per intersection, all in one ncclGroupStart/End, on the comm stream; MPI
 * on the CPU backend and staged: MPI_Reduce per intersection, synchronous).
 * Afterwards this rank's block holds the sums over [a, b); elements of
 * [a, b) outside its block keep their local values.  Reducing the blocks'
 * union [0, size x n_per_rank) range by range gives what the
 * reduce-scatter gives (bitwise for 2 ranks).  a, b and n_per_rank are the
 * same on every rank; a == b does nothing. */
int vl_comm_wait_compute(vl_comm *c, void *compute_stream);
int vl_comm_reduce_range_to_owners(vl_comm *c, vl_comm_dtype dt, void *buf, size_t a, size_t b,
                                   size_t n_per_rank);
/* Waits for the collectives enqueued on CUDA (no-op on CPU or staged).  A
 * NCCL error, or no progress within timeout_s, aborts the NCCL communicator
 * and returns VL_ENCCL naming rank, host and operation; main then aborts. */
int vl_comm_sync(vl_comm *c);

/* Host-memory helpers, MPI on every backend. */
int vl_comm_bcast(vl_comm *c, void *buf, size_t bytes, int root);
int vl_comm_allreduce_double(vl_comm *c, double *v, int n, vl_comm_op op); /* in place */
int vl_comm_barrier(vl_comm *c);

/* Rank 0 prints "rank R  host H  local L/LS  device D (GPU name)" for every
 * rank, in rank order.  Collective. */
int vl_comm_print_map(vl_comm *c);
/* MPI_Abort on MPI_COMM_WORLD (code 0 becomes 1); does not return. */
void vl_comm_abort(vl_comm *c, int code);

#endif
