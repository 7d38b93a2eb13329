/* train: the training loop — micro-batches, gradient accumulation, the
 * optimizer step, one report line per step.
 *
 * A step of the global batch takes ranks x micro_batch x grad_accum samples;
 * sample (step s, micro a, rank r, slot k) is global sample number
 * g = C + (a*W + r)*mb + k, where C counts the samples consumed before the
 * step (C = s*A*W*mb while the global batch stays the same, i.e.
 * g = ((s*A + a)*W + r)*mb + k), so ranks see disjoint samples and the set a
 * step sees does not depend on how it is split between ranks and
 * accumulation.  C is the data cursor a checkpoint stores.  The data
 * source: run.data's "train" split through the seeded sampler (dataset.h)
 * and a prefetch thread per rank, or, when run.data is "", the generated
 * samples of synth.h (index g).  The
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
#include "dataset.h"
#include "opsprof.h"

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
  size_t peak_bytes;   /* most device (or host) memory in use seen after a step's passes */
  /* ---- data ---- */
  char data_path[VL_PATH_MAX]; /* run.data resolved, "" = generated samples */
  vl_dataset *train_set, *val_set; /* val_set NULL when the file has no "val" split */
  vl_prefetch *prefetch;
  vl_dataset_sample *slots;    /* the step's A x mb samples */
  /* next_ready: slots hold the next step's samples, taken during this
   * step's last backward (every micro-batch of this step is staged by then),
   * and its first micro-batch is staged in the graph (pre_staged) */
  int next_ready, next_rc, pre_staged;
  char next_err[1024];
  uint64_t samples_done;       /* C: global samples consumed (the cursor) */
  uint64_t req_cursor;         /* C of the next step whose samples are not requested yet */
  float *loss_host;            /* (A, max_seq_len * mb) per-token losses of a step (ops->host_alloc) */
  /* VL_PROFILE=2: ops is the profiler's table around ops_in; one
   * micro-batch (the last of the second step) is profiled */
  vl_opsprof *prof;
  vl_ops *ops_in;
  int prof_step, prof_done;
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

/* host_params: initial fp32 weights, identical on every rank.  Opens
 * run.data (relative paths against the YAML's folder) and checks it against
 * the model, on every rank (collective). */
int vl_trainer_create(vl_trainer *t, const vl_config *cfg, const vl_model *m, vl_comm *comm,
                      vl_ops *ops, const float *host_params);
int vl_trainer_step(vl_trainer *t, vl_step_report *r);
/* The same from this rank's ZeRO-1 shard of the initial weights only (the
 * elements vl_optim_shard_range names): the working weights are all-gathered,
 * so no rank holds the whole model in host memory. */
int vl_trainer_create_shard(vl_trainer *t, const vl_config *cfg, const vl_model *m, vl_comm *comm,
                            vl_ops *ops, const float *shard_params);
/* Continues from a checkpoint (any writer world size): weights, optimizer,
 * step and the data cursor; the checkpoint's data seed and training-split
 * size must match this run's. */
int vl_trainer_resume(vl_trainer *t, const char *path);
/* Writes a checkpoint of the current step (collective). */
int vl_trainer_save(vl_trainer *t, const char *out_dir, int keep);

typedef struct {
  double loss;      /* mean over the supervised tokens */
  long correct;     /* samples whose every supervised token is the argmax prediction */
  long samples;     /* samples evaluated that have supervised tokens */
  double accuracy;  /* correct / samples (NaN when none) */
} vl_eval_result;
/* Validation: the first n samples of run.data's "val" split (all of it when
 * n >= its size), or n generated held-out samples (indices disjoint from
 * training) when run.data is "", split across ranks; forward only (teacher
 * forcing).  VL_EINVAL when run.data has no "val" split. */
int vl_trainer_eval(vl_trainer *t, int n, vl_eval_result *res);
/* run.data resolved against the folder of cfg->source ("" stays ""). */
void vl_train_data_path(const vl_config *cfg, char *out, size_t n);
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
/* The same from this rank's shard of the initial weights (vl_trainer_create_shard). */
int vl_train_run_shard(const vl_config *cfg, const vl_model *m, vl_comm *comm, vl_ops *ops,
                       const float *shard_params, int *preempted);

#endif
