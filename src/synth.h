/* synth: generated training samples, a deterministic function of (seed,
 * index): a prompt, one image of varying size, a supervised answer drawn
 * from a small token set so that a model can learn it.  The stand-in data
 * source until datasets (dataset.h5) land; also what tests and benchmarks
 * feed the trainer. */
#ifndef VL_SYNTH_H
#define VL_SYNTH_H

#include <stdint.h>

#include "batch.h"
#include "config.h"

typedef struct {
  int32_t *ids, *labels;
  int32_t grid[1][3];
  float *pixels;
  vl_sample sample;  /* points into the buffers above */
} vl_synth;

/* max_tokens / max_patches bound the sample's size (the run's limits). */
int vl_synth_sample(vl_synth *s, const vl_model_config *mc, uint64_t seed, uint64_t index,
                    int max_tokens, int max_patches);
/* A sample of a fixed shape (the benchmark workload: grid 112 x 80, 662
 * text tokens of which 400 answer): text tokens include vision start/end. */
int vl_synth_fixed(vl_synth *s, const vl_model_config *mc, uint64_t seed, uint64_t index,
                   int grid_h, int grid_w, int text, int answer);
void vl_synth_free(vl_synth *s);

#endif
