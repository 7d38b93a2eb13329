/* ckpt: checkpoints in parallel HDF5.
 *
 * One file per checkpoint, OUT/ckpt/step_NNNNNNN.h5:
 *   /params/<HF name>         fp32 master weights, the tensor's HF shape
 *   /optimizer/m/<HF name>    AdamW first moment, same shape
 *   /optimizer/v/<HF name>    AdamW second moment
 *   attributes of /: format, vltrain version, step, world_size (writer's),
 *   seed, config (the merged YAML text), n_parameters, family, and the
 *   sampler's cursor: data_samples (global samples consumed), data_seed,
 *   data_size (samples in the training split; 0 = generated samples).
 * Every tensor is stored whole, so any number of ranks can read it back:
 * each rank writes (and reads) the part of each tensor inside its ZeRO-1
 * shard as a hyperslab selection, collectively.  Written to a temporary
 * name, closed, renamed; then OUT/ckpt/latest (a text file naming it) is
 * replaced the same way; older checkpoints beyond keep are removed.
 */
#ifndef VL_CKPT_H
#define VL_CKPT_H

#include "optim.h"

/* Where the data stream stands: global sample numbers 0 .. samples-1 were
 * consumed, drawn with seed from a split of size samples (0: generated). */
typedef struct {
  long long samples;      /* -1 when loading a checkpoint that predates the cursor */
  unsigned long long seed;
  long long size;
} vl_ckpt_cursor;

/* Writes step t->opt.step from the optimizer's shards and the cursor.
 * Collective. */
int vl_ckpt_save(const char *out_dir, const vl_optim *opt, const vl_config *cfg, int keep,
                 const vl_ckpt_cursor *cur);
/* Path of the newest complete checkpoint in out_dir, "" if none. */
int vl_ckpt_latest(const char *out_dir, char *path, size_t n);
/* Restores master weights, moments and the step into opt (shards of this
 * world size) and the working weights into params (backend memory).
 * Checks the file against the model: every tensor present, shapes equal. */
int vl_ckpt_load(const char *path, vl_optim *opt, vl_t *params, vl_ckpt_cursor *cur);

#endif
