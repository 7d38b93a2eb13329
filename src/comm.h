/* comm: MPI bootstrap and the few collectives the trainer needs.
 *
 * Owns: world/node-local ranks (MPI_COMM_TYPE_SHARED), the rank -> GPU
 * binding (node-local rank), the NCCL communicator (rank 0 makes the unique
 * id, MPI_Bcast carries it), the communication stream and the hang timeout.
 * The same calls reduce with MPI on the CPU backend and with NCCL on GPUs;
 * buffers are backend memory (host on CPU, device on CUDA).
 */
#ifndef VL_COMM_H
#define VL_COMM_H

#include <mpi.h>
#include <stddef.h>

#include "config.h"

typedef enum { VL_COMM_F32 = 0, VL_COMM_BF16 = 1 } vl_comm_dtype;
typedef enum { VL_COMM_SUM = 0, VL_COMM_MAX = 1, VL_COMM_MIN = 2 } vl_comm_op;

typedef struct {
  int rank, size;              /* world */
  int local_rank, local_size;  /* this node */
  char host[256];
  vl_backend_kind backend;     /* resolved: VL_BACKEND_CPU or VL_BACKEND_CUDA */
  int device;                  /* GPU index, -1 on the CPU backend */
  double timeout_s;            /* a collective that takes longer aborts the job */
  MPI_Comm world, node;
  void *nccl;                  /* ncclComm_t */
  void *stream;                /* cudaStream_t of the collectives */
} vl_comm;

int vl_comm_mpi_init(int *argc, char ***argv); /* MPI_Init_thread(FUNNELED) */
int vl_comm_mpi_finalize(void);

/* Resolves the backend on all ranks alike (auto: CUDA if built with it and
 * every rank sees a GPU), binds the GPU, sets up NCCL. */
int vl_comm_init(vl_comm *c, vl_backend_kind want, int allow_shared_gpu, double timeout_s);
/* The same on a sub-communicator (tests: MPI_COMM_SELF for a one-rank run). */
int vl_comm_init_on(vl_comm *c, MPI_Comm world, vl_backend_kind want, int allow_shared_gpu,
                    double timeout_s);
int vl_comm_free(vl_comm *c);

/* The binding rule, pure for tests: device = local_rank; more local ranks
 * than GPUs is an error unless allow_shared (then local_rank % n_gpus). */
int vl_comm_pick_device(int local_rank, int local_size, int n_gpus, int allow_shared,
                        const char *host, int *device);

/* Collectives on backend memory.  On CUDA they are enqueued on the comm
 * stream; vl_comm_sync waits (with the timeout). */
int vl_comm_allreduce_sum(vl_comm *c, vl_comm_dtype dt, void *buf, size_t n);
int vl_comm_reduce_scatter(vl_comm *c, vl_comm_dtype dt, const void *send, void *recv,
                           size_t n_per_rank);
int vl_comm_allgather(vl_comm *c, vl_comm_dtype dt, const void *send, void *recv,
                      size_t n_per_rank);
int vl_comm_sync(vl_comm *c);

/* Host-memory helpers. */
int vl_comm_bcast(vl_comm *c, void *buf, size_t bytes, int root);
int vl_comm_allreduce_double(vl_comm *c, double *v, int n, vl_comm_op op);
int vl_comm_barrier(vl_comm *c);

/* Rank 0 prints one line per rank: rank, host, local rank, device. */
int vl_comm_print_map(vl_comm *c);
void vl_comm_abort(vl_comm *c, int code);

#endif
