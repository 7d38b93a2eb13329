/* weights: the values of the parameter block on the host (fp32) — seeded
 * random initialisation and loading from Hugging Face safetensors by name.
 * Does not own: moving them to a backend (graph/ops put), the layout (model). */
#ifndef VL_WEIGHTS_H
#define VL_WEIGHTS_H

#include <stdint.h>

#include "model.h"

/* Hugging Face's initialisation for Qwen-VL: linear and embedding weights
 * normal(0, std) (std = initializer_range, 0.02), biases 0, norm gains 1.
 * Deterministic for a seed, independent of thread count.  host: n_elements. */
void vl_weights_init_random(const vl_model *m, float *host, uint64_t seed, float std);
/* Elements [begin, end) of the same initialisation into host[0 .. end-begin),
 * equal bit for bit to that slice of the whole (a rank's ZeRO-1 shard). */
void vl_weights_init_random_range(const vl_model *m, float *host, size_t begin, size_t end, uint64_t seed,
                                  float std);

/* Reads every parameter of the table from a safetensors file or a Hugging
 * Face folder (sharded or not) into host (fp32, converting bf16/f16).  Every
 * missing or mis-shaped tensor is named in the error; tensors in the file
 * that the model does not have are an error unless allow_unexpected. */
int vl_weights_load(const vl_model *m, const char *path, float *host, int allow_unexpected);
/* Elements [begin, end) of the parameter block into host[0 .. end-begin):
 * only the file's bytes of that range are read; every tensor is still
 * checked (present, shape, dtype). */
int vl_weights_load_range(const vl_model *m, const char *path, float *host, size_t begin, size_t end,
                          int allow_unexpected);

/* Tensor names as transformers 4 saved them (the published Qwen2-VL
 * checkpoints): "model.visual.X" -> "visual.X", "model.language_model.X" ->
 * "model.X"; "" for names that did not change.  vl_weights_load accepts
 * either form. */
void vl_weights_legacy_name(const char *name, char *out, size_t n);

/* splitmix64 stream and a standard normal (Box-Muller), shared by tests. */
uint64_t vl_rng_next(uint64_t *state);
float vl_rng_normal(uint64_t *state);
float vl_rng_uniform(uint64_t *state); /* [0, 1) */

#endif
