/* model: the architecture as data — dimensions, the parameter table and its
 * one contiguous memory layout, parameter counts.  No math.
 *
 * Every parameter is one entry (Hugging Face name, shape, group, decay flag,
 * element offset) in one contiguous block, so that weights, gradients,
 * master weights and moments are each a single allocation that a ZeRO-1
 * shard is a [begin, end) range of, and a checkpoint is one loop.
 *
 * Layout choices (ours, not HF's): the LLM's q_proj, k_proj, v_proj weights
 * are adjacent (then their biases, if any), so the three projections are
 * one GEMM with W ((nh + 2 nkv) hd, H); gate_proj and up_proj are adjacent
 * for one GEMM with W (2 I, H).  With tied embeddings lm_head.weight is not
 * in the table and the head reads embed_tokens.
 *
 * Families (model.family) share the structure; Qwen2-VL differs by names
 * and absent tensors: no patch_embed bias, no pos_embed, no DeepStack
 * mergers, block MLP mlp.fc1/mlp.fc2 (Qwen3-VL mlp.linear_fc1/linear_fc2),
 * merger ln_q/mlp.0/mlp.2 (Qwen3-VL norm/linear_fc1/linear_fc2), q/k/v
 * biases in the LLM (attention_bias) but no o_proj bias and no q/k norms.
 */
#ifndef VL_MODEL_H
#define VL_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "config.h"

#define VL_NAME_MAX 96
#define VL_MAX_DIMS 5

typedef enum {
  VL_GROUP_VISION = 0,   /* patch embed, pos embed, ViT blocks */
  VL_GROUP_MERGER = 1,   /* main merger and DeepStack mergers */
  VL_GROUP_EMBED = 2,    /* embed_tokens */
  VL_GROUP_LLM = 3,      /* decoder layers and final norm */
  VL_GROUP_LM_HEAD = 4,  /* untied lm_head */
  VL_GROUP_COUNT = 5
} vl_param_group;

typedef struct {
  char name[VL_NAME_MAX];       /* Hugging Face name */
  int ndim;
  int64_t shape[VL_MAX_DIMS];
  size_t numel;
  size_t offset;                /* in elements, into the parameter block */
  vl_param_group group;
  int no_decay;                 /* norms, biases, embeddings */
  int is_norm_weight;           /* initialised to 1 (RMSNorm/LayerNorm gains) */
  int frozen;                   /* no gradient, no update (train.freeze) */
} vl_param;

/* Indices into the parameter table, per structural unit; -1 = absent. */
typedef struct {
  int norm1_w, norm1_b, qkv_w, qkv_b, proj_w, proj_b;
  int norm2_w, norm2_b, fc1_w, fc1_b, fc2_w, fc2_b;
} vl_vision_block_params;

typedef struct {
  int norm_w, norm_b;   /* LayerNorm over C (main) or 4C (postshuffle, DeepStack) */
  int fc1_w, fc1_b, fc2_w, fc2_b;
  int postshuffle;      /* 1: norm after the 2x2 merge (DeepStack mergers) */
} vl_merger_params;

typedef struct {
  int input_norm_w;
  int q_w, k_w, v_w, q_b, k_b, v_b;   /* q,k,v weights adjacent; biases adjacent */
  int q_norm_w, k_norm_w;             /* -1 for Qwen2-VL */
  int o_w, o_b;                       /* o_b: qwen3-vl with attention_bias */
  int post_norm_w;
  int gate_w, up_w, down_w;           /* gate, up adjacent */
} vl_text_layer_params;

typedef struct {
  vl_model_config cfg;
  int n_params;
  vl_param *params;
  size_t n_elements;                  /* total parameters */
  size_t group_elements[VL_GROUP_COUNT];

  int patch_embed_w, patch_embed_b, pos_embed; /* bias, pos_embed: -1 for Qwen2-VL */
  vl_vision_block_params *vblocks;    /* [vision.depth] */
  vl_merger_params merger;
  vl_merger_params *deepstack;        /* [vision.n_deepstack] */
  int embed_tokens;
  vl_text_layer_params *layers;       /* [text.num_hidden_layers] */
  int final_norm_w;
  int lm_head;                        /* == embed_tokens when tied */
} vl_model;

/* Builds the table from the configuration (checked by config.c). */
int vl_model_build(vl_model *m, const vl_model_config *cfg);
void vl_model_free(vl_model *m);

/* Freezes every parameter whose HF name matches one of the comma-separated
 * shell patterns (fnmatch), e.g. "model.visual.*".  A pattern matching no
 * parameter is an error.  Returns the number of frozen elements. */
int vl_model_freeze(vl_model *m, const char *patterns, size_t *frozen_elements);

/* Norms, biases and embeddings get no weight decay (no_decay); those whose
 * HF name matches one of the comma-separated patterns (train.decay_also)
 * get it like the others.  A pattern matching no parameter is an error.
 * Returns the number of elements that no_decay left. */
int vl_model_decay_also(vl_model *m, const char *patterns, size_t *elements);

/* Index of the parameter with Hugging Face name `name`, or -1. */
int vl_model_find(const vl_model *m, const char *name);
const char *vl_group_name(vl_param_group g);

/* Derived sizes. */
int vl_model_q_dim(const vl_model *m);    /* nh * hd */
int vl_model_kv_dim(const vl_model *m);   /* nkv * hd */
int vl_model_patch_dim(const vl_model *m);/* in_ch * temporal * patch^2 */

/* Prints the summary (groups, exact total) on stdout. */
void vl_model_print_summary(const vl_model *m);
/* Prints n with thousands separators into buf ("8,767,123,696"). */
const char *vl_fmt_count(char *buf, size_t n_buf, size_t n);

#endif
