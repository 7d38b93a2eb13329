/* gradstats: training statistics in HDF5, appended every N steps
 * (train.stats_every), flushed every few rows so the file can be read while
 * the run goes on and a crash loses little.  Written by rank 0, without
 * HDF5's file lock, so readers open it while the run holds it
 * (tests/test_stats_live.sh).
 *
 * Datasets (rows = recorded steps, extendable, chunked):
 *   step, loss, lr, tokens_per_s, grad_norm, clip_coef, skipped,
 *   nonfinite_ranks, noise_scale (B_simple of McCandlish et al. 2018 from
 *   per-rank vs global gradient norms, in tokens; NaN with one rank),
 *                                                              (rows)
 *   tensor_grad_norm, tensor_param_norm, tensor_update_ratio   (rows, tensors)
 *   rank_grad_norm                                             (rows, ranks)
 *   eval_step, eval_loss, eval_accuracy: validation loss and exact-match
 *   answer accuracy (fraction of samples whose every supervised token is
 *   the argmax prediction) at each evaluation                   (evaluations)
 *   tensor_names (tensors) strings; attribute world_size.
 */
#ifndef VL_GRADSTATS_H
#define VL_GRADSTATS_H

#include "model.h"

typedef struct vl_gradstats vl_gradstats;

typedef struct {
  int step;
  double loss, lr, tokens_per_s, grad_norm, clip_coef, noise_scale;
  int skipped, nonfinite_ranks;
  const double *tensor_grad_norm, *tensor_param_norm, *tensor_update_ratio; /* [n_params] */
  const double *rank_grad_norm;                                             /* [world] */
} vl_gradstats_row;

/* Creates path, or (append) reopens it and drops rows with step > last_step. */
int vl_gradstats_open(vl_gradstats **out, const char *path, const vl_model *m, int world,
                      int append, int last_step);
int vl_gradstats_append(vl_gradstats *gs, const vl_gradstats_row *row);
/* Records a validation loss and exact-match accuracy (0..1). */
int vl_gradstats_eval(vl_gradstats *gs, int step, double loss, double accuracy);
int vl_gradstats_close(vl_gradstats *gs);

/* B_simple from the squared norms of the per-rank mean gradients (mean over
 * ranks: small_sq, batch b_small tokens) and of the global one (big_sq,
 * b_big tokens). */
double vl_noise_scale(double small_sq, double b_small, double big_sq, double b_big);

#endif
