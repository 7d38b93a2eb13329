/* optim: the optimizer step — gradient reduction across ranks, global-norm
 * clipping, AdamW on ZeRO-1 shards, the learning-rate schedule.
 *
 * ZeRO-1: the parameter block (padded to a multiple of the world size) is
 * cut into equal contiguous shards; rank r owns shard r's fp32 master
 * weights and AdamW moments.  A step reduce-scatters the summed gradients
 * to the owners, each owner updates its shard, and an all-gather brings the
 * updated working weights back to every rank.  Owns: shards, moments, step
 * count.  Does not own: the forward/backward (graph), communication (comm).
 *
 * train.optimizer: lean (one GPU for a model that zero1 cannot fit): no fp32
 * master; the working weights (bf16 on the GPU) are the only copy and are
 * updated in place by AdamW with stochastic rounding (ops.h adamw_lean),
 * moments fp32 and sharded as above: 12 bytes a parameter instead of 16.
 * Checkpoints hold the same tensors either way (/params = the weights as
 * fp32), so a lean checkpoint resumes under zero1 and the reverse.
 *
 * train.overlap_grad_reduce (more than one rank): the trainer arms the
 * optimizer (vl_optim_overlap_begin) before the backward of a step's last
 * micro-batch; each bucket of gradients the backward finishes (graph.h:
 * grad_ready) is then reduced to its owners at once (comm.h:
 * vl_comm_reduce_range_to_owners, after vl_comm_wait_compute: on the GPU
 * the comm stream waits for the bucket's last kernel and the reduction runs
 * while the compute stream goes on with earlier layers).  The contiguous
 * shard layout is kept: each owner gets the sums of its shard's part of the
 * bucket.  The bucket ending at the model's last element takes the padded
 * tail with it.  A bucket whose parameters are all frozen is only recorded
 * (its gradients are zero on every rank).  vl_optim_step then reduces only
 * what no bucket covered (nothing when they tile [0, padded)) and waits for
 * the comm stream.  Statistics steps (per-rank or per-tensor norms
 * requested) are not overlapped: the per-rank norms need the local,
 * unreduced gradients of the whole block, so the trainer does not arm on
 * them and vl_optim_step refuses statistics after an armed backward.
 */
#ifndef VL_OPTIM_H
#define VL_OPTIM_H

#include <stddef.h>

#include "comm.h"
#include "config.h"
#include "graph.h"

typedef struct {
  const vl_model *m;
  vl_ops *ops;
  vl_comm *comm;
  vl_train_config cfg;
  size_t n, padded, shard, begin;  /* elements: model, padded block, per rank, my offset */
  float *master, *mom1, *mom2;     /* backend fp32 (shard); master NULL when lean */
  int lean;                        /* train.optimizer: lean */
  vl_t *work;                      /* the graph's working weights (vl_optim_bind) */
  int step;                        /* optimizer steps taken */
  /* overlap: the graph armed for, and the ranges [a, b) its buckets covered */
  vl_graph *ovl_graph;
  size_t (*ovl_done)[2];
  int ovl_n, ovl_cap;
  int overlapped_steps;            /* steps whose buckets were reduced during the backward */
} vl_optim;

typedef struct {
  double grad_norm;  /* global, before clipping */
  double lr;
  double clip_coef;  /* 1 when not clipped */
  int skipped;       /* non-finite gradient: no update (train.nonfinite: skip) */
  /* Filled when the caller points them at arrays (gradient statistics):
   * per tensor [n_params]: gradient norm, weight norm after the update,
   * ||update|| / ||weight after||; per rank [world]: the norm of the rank's
   * own (unreduced) gradient.  NULL: not computed. */
  double *tensor_grad_norm, *tensor_param_norm, *tensor_update_ratio, *rank_grad_norm;
  int nonfinite_ranks;  /* ranks whose local gradient was not finite */
} vl_optim_stats;

/* Learning rate of optimizer step `step` (0-based): Hugging Face's
 * get_{cosine,linear,constant}_schedule_with_warmup times train.lr. */
double vl_optim_lr(const vl_train_config *t, int step);

/* Elements the graph's parameter and gradient blocks need (padded to equal
 * shards) for a model of n elements on `world` ranks. */
size_t vl_optim_padded_size(size_t n, int world);

/* The shard rank `rank` of `world` owns: elements [*begin, *begin + *mine)
 * of a model of n elements (*mine is 0 for shards of padding only). */
void vl_optim_shard_range(size_t n, int world, int rank, size_t *begin, size_t *mine);

/* shard_init: the initial fp32 weights of this rank's shard (the *mine
 * elements from *begin of vl_optim_shard_range).  The graph's params/grads
 * must hold vl_optim_padded_size elements: the collectives run in place on
 * them. */
int vl_optim_create(vl_optim *o, const vl_model *m, vl_ops *ops, vl_comm *comm,
                    const vl_train_config *cfg, const float *shard_init);
/* Tells the optimizer where the graph's working weights are (checkpoints of
 * a lean run read the weights from there).  vl_trainer_create calls it. */
void vl_optim_bind(vl_optim *o, vl_graph *g);
/* Elements of the shard this rank owns that lie inside the model (the last
 * shards may hold padding only). */
size_t vl_optim_mine(const vl_optim *o);
/* Overlapped reduction (see above): the next vl_graph_backward of g hands
 * each finished bucket to the optimizer, which reduces it to its owners on
 * the comm stream.  Call before the step's last backward only (earlier
 * micro-batches still add to every gradient); vl_optim_step disarms. */
int vl_optim_overlap_begin(vl_optim *o, vl_graph *g);
/* Reduces g->grads over ranks (in place; what an armed backward reduced
 * already is only waited for), clips, updates this rank's shard of
 * g->params, all-gathers g->params, zeroes g->grads.
 * force_skip: drop this step's gradients (a rank saw a non-finite loss). */
int vl_optim_step(vl_optim *o, vl_graph *g, int force_skip, vl_optim_stats *stats);
void vl_optim_destroy(vl_optim *o);

#endif
