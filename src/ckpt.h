/* ckpt: checkpoints in parallel HDF5.
 *
 * One file per checkpoint, OUT/ckpt/step_NNNNNNN.h5:
 *   /params/<HF name>         fp32 master weights, the tensor's HF shape
 *                             (train.optimizer: lean: the working weights as fp32)
 *   /optimizer/m/<HF name>    AdamW first moment, same shape
 *   /optimizer/v/<HF name>    AdamW second moment
 *   attributes of /: format, vltrain version, step, world_size (writer's),
 *   seed, config (the merged YAML text), n_parameters, family, and the
 *   sampler's cursor: data_samples (global samples consumed), data_seed,
 *   data_size (samples in the training split; 0 = generated samples).
 *   attribute "checksum" (uint64) of every tensor: the sum mod 2^64 of a
 *   hash of (flat index, fp32 bits) over its elements, the same whatever
 *   the number of ranks; vl_ckpt_load checks the format name, the step, the
 *   parameter count, every shape and every checksum, and names what
 *   differs (a damaged or altered file, another model) instead of loading it.
 * Every tensor is stored whole, so any number of ranks can read it back:
 * each rank writes (and reads) the part of each tensor inside its ZeRO-1
 * shard as a hyperslab selection, collectively.  Written to a temporary
 * name, closed, renamed; then OUT/ckpt/latest (a text file naming it) is
 * replaced the same way; older checkpoints beyond keep are removed (one
 * pass over the folder), and so are the temporary files of earlier steps
 * whose write never finished.
 *
 * Test hook (tests/test_ckpt_kill.sh): VL_TEST_CKPT_KILL_AT=STEP:RANK:POINT
 * makes rank RANK raise SIGKILL while writing the checkpoint of step STEP, at
 * POINT: "tensors" (half-way through the first moments), "flush" (file
 * flushed, not closed), "rename" (rank 0: file renamed, latest not yet
 * written), "latest" (rank 0: latest.tmp written, not yet renamed).  One
 * getenv per point; unset, it does nothing.
 */
#ifndef VL_CKPT_H
#define VL_CKPT_H

#include <stdint.h>

#include "optim.h"

/* The checksum stored with every tensor (attribute "checksum", uint64) of
 * n values that are the tensor's flat elements first .. first+n-1; the
 * checksums of the parts of a tensor add up (mod 2^64) to the whole's. */
uint64_t vl_ckpt_checksum(const float *x, size_t first, size_t n);

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
