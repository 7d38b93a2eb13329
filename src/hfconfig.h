/* hfconfig: Hugging Face config.json <-> the model part of vl_config.
 *
 * Owns both families' config.json layouts:
 *   qwen3_vl: text keys under "text_config" (rope in "rope_scaling" with
 *     rope_theta beside it, or transformers 5's "rope_parameters" holding
 *     rope_theta), vision keys under "vision_config" (depth, hidden_size,
 *     intermediate_size, num_heads, out_hidden_size, num_position_embeddings,
 *     deepstack_visual_indexes, ...), special-token ids at the top.
 *   qwen2_vl: text keys at the top (or under "text_config"), head_dim =
 *     hidden_size / num_attention_heads, q/k/v biases always, sectioned
 *     M-RoPE from rope_scaling.mrope_section; vision_config with embed_dim
 *     (the ViT width), mlp_ratio, in_chans, and hidden_size (the merger's
 *     output = text hidden_size), quick_gelu.
 * Reading gives (dotted vltrain key, YAML value text) pairs, which config.c
 * applies through its key table (so ranges and cross-key rules are the
 * same as for YAML); writing gives the family's config.json text.
 * Does not own: which source wins (config.c), weights (weights.c). */
#ifndef VL_HFCONFIG_H
#define VL_HFCONFIG_H

#include <stddef.h>

#include "config.h"

#define VL_HF_MAX_KEYS 48

typedef struct {
  const char *key;  /* "model.text.hidden_size" (static string) */
  char value[96];   /* YAML text: "4096", "true", "[24, 20, 20]", "silu" */
  char source[96];  /* the config.json key it came from: "text_config.hidden_size" */
} vl_hf_kv;

/* Parses config.json text (`name` for messages) into pairs.  A missing
 * required key, a value of the wrong JSON type or an unsupported
 * model_type is VL_EINVAL naming the file and the key. */
int vl_hfconfig_parse(const char *json, const char *name, vl_hf_kv *kv, int *n);

/* Reads DIR/config.json whole (text malloc'ed, NUL-terminated). */
int vl_hfconfig_read_file(const char *dir, char **text, char *path, size_t path_n);

/* The family's config.json for mc, with "torch_dtype"/"dtype" = dtype
 * ("bfloat16" or "float32").  *out is malloc'ed. */
int vl_hfconfig_write(const vl_model_config *mc, const char *dtype, char **out);

#endif
