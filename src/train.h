/* train: the training loop — micro-batches, gradient accumulation, the
 * optimizer step, one report line per step.
 *
 * A step of the global batch takes ranks x micro_batch x grad_accum samples;
 * sample (step s, micro a, rank r, slot k) is index ((s*A + a)*W + r)*mb + k
 * of the data source, so ranks see disjoint samples and the set a step sees
 * does not depend on how it is split between ranks and accumulation.  The
 * loss of a step is the mean over every supervised token of the global batch
 * (the count is agreed before the backward passes), so 2 ranks x accumulation
 * 1 and 1 rank x accumulation 2 compute the same update.
 */
#ifndef VL_TRAIN_H
#define VL_TRAIN_H

#include "comm.h"
#include "config.h"
#include "graph.h"
#include "model.h"
#include "ops.h"
#include "gradstats.h"
#include "optim.h"

typedef struct {
  const vl_config *cfg;
  const vl_model *m;
  vl_comm *comm;
  vl_ops *ops;
  vl_graph g;
  vl_optim opt;
  int step;            /* optimizer steps done */
  double tokens_done;  /* LLM tokens processed by all ranks */
  int skipped;         /* steps skipped for non-finite values */
  vl_gradstats *stats; /* rank 0, when statistics are recorded */
  int record;          /* every rank: compute statistics on stats steps */
  size_t peak_bytes;   /* most device (or host) memory in use seen after a micro-batch */
} vl_trainer;

typedef struct {
  int step;            /* 1-based */
  double loss;         /* mean over the global batch's supervised tokens */
  double lr, grad_norm, seconds, tokens;  /* tokens: LLM tokens of the global batch */
  double targets;
  int skipped;         /* the update was skipped (non-finite loss or gradient) */
  double microbatch_seconds, optimizer_seconds; /* forward+backward per micro-batch; the step's optimizer */
  double peak_bytes;   /* memory in use on this rank's device, peak so far */
} vl_step_report;

/* host_params: initial fp32 weights, identical on every rank. */
int vl_trainer_create(vl_trainer *t, const vl_config *cfg, const vl_model *m, vl_comm *comm,
                      vl_ops *ops, const float *host_params);
int vl_trainer_step(vl_trainer *t, vl_step_report *r);
/* Continues from a checkpoint (any writer world size). */
int vl_trainer_resume(vl_trainer *t, const char *path);
/* Validation loss: mean over the supervised tokens of n held-out samples
 * (indices disjoint from training), split across ranks; forward only. */
int vl_trainer_eval(vl_trainer *t, int n, double *loss);
/* Working weights to the host (n_elements floats). */
int vl_trainer_params(vl_trainer *t, float *host);
void vl_trainer_destroy(vl_trainer *t);

/* Exit status of a run stopped by SIGTERM/SIGUSR1 after writing a
 * checkpoint: the job script requeues it (EX_TEMPFAIL). */
#define VL_EXIT_PREEMPTED 75

/* SIGTERM and SIGUSR1 ask every rank to finish the current step, write a
 * checkpoint and stop (the ranks agree after each step). */
void vl_train_catch_signals(void);
/* global = ranks x micro_batch x grad_accum.  With train.global_batch set,
 * sets grad_accum = global_batch / (world x micro_batch); an error naming
 * the numbers when that does not divide (or exceeds grad_accum's range). */
int vl_train_resolve_batch(vl_train_config *t, int world);

/* Runs train.steps steps with a report line per step on rank 0 (a progress
 * bar on a terminal).  *preempted = 1 when a signal stopped it early. */
int vl_train_run(const vl_config *cfg, const vl_model *m, vl_comm *comm, vl_ops *ops,
                 const float *host_params, int *preempted);

#endif
