/* config: YAML experiment files (libyaml) -> one typed vl_config.
 *
 * Owns: parsing, `include:` of presets (a file's keys override the included
 * file's, recursively, depth-limited), the key table (type, range, default,
 * required), and the error messages "file:line: key: what was expected".
 * Does not own: what the values mean for the model (model.c) or the run.
 *
 * Key names follow Hugging Face config.json where one exists, grouped:
 *   model.family, model.path, model.text.*, model.vision.*, model.tokens.*,
 *   train.*, run.*
 * The key table in config.c is the single list of every key; `vltrain
 * --help-config` prints it (name, type, range, default).
 */
#ifndef VL_CONFIG_H
#define VL_CONFIG_H

#include <stdint.h>

#define VL_MAX_DEEPSTACK 8
#define VL_PATH_MAX 1024

typedef enum { VL_FAMILY_QWEN3_VL = 0, VL_FAMILY_QWEN2_VL = 1 } vl_family;
typedef enum {
  VL_ACT_GELU_TANH = 0, /* "gelu_pytorch_tanh" */
  VL_ACT_GELU_ERF = 1,  /* "gelu" */
  VL_ACT_QUICK_GELU = 2,/* "quick_gelu" */
  VL_ACT_SILU = 3,      /* "silu" */
} vl_act_kind;
typedef enum { VL_BACKEND_AUTO = 0, VL_BACKEND_CPU = 1, VL_BACKEND_CUDA = 2 } vl_backend_kind;
typedef enum { VL_OPTIM_ZERO1 = 0, VL_OPTIM_LEAN = 1 } vl_optim_mode;
typedef enum { VL_NONFINITE_SKIP = 0, VL_NONFINITE_STOP = 1 } vl_nonfinite_policy;
typedef enum { VL_SCHED_COSINE = 0, VL_SCHED_LINEAR = 1, VL_SCHED_CONSTANT = 2 } vl_schedule;

typedef struct {
  int vocab_size;            /* 151936 */
  int hidden_size;           /* 4096 */
  int intermediate_size;     /* 12288 */
  int num_hidden_layers;     /* 36 */
  int num_attention_heads;   /* 32 */
  int num_key_value_heads;   /* 8 */
  int head_dim;              /* 128 */
  double rms_norm_eps;       /* 1e-6 */
  double rope_theta;         /* 5e6 */
  int mrope_section[3];      /* [24, 20, 20]; sums to head_dim / 2 */
  int mrope_interleaved;     /* 1 for Qwen3-VL, 0 (sectioned) for Qwen2-VL */
  int attention_bias;        /* q/k/v (and o) biases */
  int tie_word_embeddings;   /* lm_head shares embed_tokens */
  vl_act_kind hidden_act;    /* silu */
} vl_text_config;

typedef struct {
  int depth;                      /* 27 */
  int hidden_size;                /* 1152 */
  int intermediate_size;          /* 4304 */
  int num_heads;                  /* 16 */
  int in_channels;                /* 3 */
  int patch_size;                 /* 16 */
  int temporal_patch_size;        /* 2 */
  int spatial_merge_size;         /* 2 */
  int out_hidden_size;            /* 4096 (= text hidden_size) */
  int num_position_embeddings;    /* 2304 (48 x 48 grid); 0 = none (Qwen2-VL) */
  int n_deepstack;                /* entries used in deepstack_visual_indexes */
  int deepstack_visual_indexes[VL_MAX_DEEPSTACK]; /* [8, 16, 24] */
  vl_act_kind hidden_act;         /* gelu_pytorch_tanh */
  double layer_norm_eps;          /* 1e-6 */
} vl_vision_config;

typedef struct {
  int image_token_id;        /* 151655 */
  int video_token_id;        /* 151656 */
  int vision_start_token_id; /* 151652 */
  int vision_end_token_id;   /* 151653 */
} vl_token_config;

typedef struct {
  vl_family family;
  char path[VL_PATH_MAX];    /* Hugging Face model folder, "" = random init; a
                              * folder's config.json sets the model.* keys
                              * over presets (hfconfig.h) */
  char tokenizer[VL_PATH_MAX];    /* tokenizer.json; "" = path/tokenizer.json (vlprep) */
  char preprocessor[VL_PATH_MAX]; /* preprocessor_config.json; "" = path/..., else family defaults */
  vl_text_config text;
  vl_vision_config vision;
  vl_token_config tokens;
} vl_model_config;

typedef struct {
  int micro_batch;           /* samples per rank per micro-step (1) */
  int grad_accum;            /* micro-steps per optimizer step (8) */
  int global_batch;          /* samples per optimizer step; 0: ranks x micro x accum
                                (else grad_accum follows: vl_train_resolve_batch) */
  int max_seq_len;           /* LLM tokens per sample, for the memory plan (2900) */
  int max_vision_patches;    /* vision patches per sample, memory plan (8960) */
  int steps;                 /* optimizer steps */
  double lr;                 /* peak learning rate */
  double weight_decay;
  double adam_beta1, adam_beta2, adam_eps;
  double grad_clip;          /* global norm; 0 = off */
  int warmup_steps;
  vl_schedule schedule;      /* cosine | linear | constant after warmup (HF's) */
  int recompute;             /* activation recomputation per layer */
  int overlap_grad_reduce;   /* reduce each layer's gradients during the last backward */
  vl_optim_mode optimizer;   /* zero1 (fp32 master + moments sharded) | lean */
  char freeze[256];          /* comma-separated name patterns, "" = none */
  char decay_also[256];      /* patterns of norms/biases/embeddings that get weight decay */
  int eval_every;            /* steps between validation losses (0: at the end only) */
  int eval_samples;          /* validation samples per evaluation */
  int stats_every;           /* steps between gradient-statistics rows (0: off) */
  vl_nonfinite_policy nonfinite; /* a NaN/Inf loss or gradient: skip the step, or stop */
  uint64_t seed;
  int synth_grid[2];         /* generated samples: fixed image grid (h, w patches); 0 = varied */
  int synth_text, synth_answer; /* generated samples: text tokens, of which answer; 0 = varied */
} vl_train_config;

typedef struct {
  vl_backend_kind backend;   /* auto: cuda when built with it and a GPU exists */
  int allow_shared_gpu;      /* more local ranks than GPUs is an error unless 1 */
  char data[VL_PATH_MAX];    /* dataset.h5 */
  char out_dir[VL_PATH_MAX]; /* checkpoints, gradstats */
  double nccl_timeout_s;     /* abort a hung collective after this long */
  int checkpoint_every;      /* steps between checkpoints (0: only at the end) */
  int keep_checkpoints;      /* newest K kept */
  int save_final;            /* write a checkpoint after the last step */
  int resume;                /* continue from out_dir/ckpt/latest when there is one */
} vl_run_config;

typedef struct {
  char source[VL_PATH_MAX];  /* the top-level file given by the user */
  vl_model_config model;
  vl_train_config train;
  vl_run_config run;
  char *text;                /* the merged YAML text of every file read, for checkpoints */
} vl_config;

/* Loads `path` (following include:), applies defaults, checks types, ranges,
 * unknown keys, required keys and cross-key rules (heads divide, mrope
 * sections sum to head_dim/2, deepstack indexes < depth, ...).  Relative
 * include paths resolve against the including file's folder, then the
 * inputs/ folder of the source tree (VL_INPUTS_DIR).  On error returns
 * VL_EINVAL with vl_err_last() = "file:line: key: what was expected". */
int vl_config_load(vl_config *cfg, const char *path);
/* Same, from a string (tests); `name` stands in for the file name. */
int vl_config_load_string(vl_config *cfg, const char *yaml, const char *name);
/* Same, from a merged config text (cfg->text as a checkpoint stores it:
 * "# --- file: NAME" segments, top-level file first, each include the next
 * segment, and a "# --- config.json: PATH" segment when model.path named a
 * folder) -- nothing is read from disk.  cfg->text comes out identical. */
int vl_config_load_text(vl_config *cfg, const char *text, const char *name);
void vl_config_free(vl_config *cfg);
/* Prints every key: dotted name, type, range, default, one line each. */
void vl_config_print_keys(void);

const char *vl_act_name(vl_act_kind act);

#endif
