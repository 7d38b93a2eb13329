/* config: YAML (libyaml document API) -> vl_config through one key table.
 *
 * Owns the key table (every key: dotted name, type, range, default,
 * required, help), `include:` chains (depth <= 8, cycles refused), defaults,
 * cross-key rules, and every user-facing message in the exact form
 * "FILE:LINE: KEY: what was expected".  Values are applied in load order
 * (included file first, then the includer), so the includer overrides. */
#include "config.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <yaml.h>

#include "err.h"
#include "hfconfig.h"

#ifndef VL_INPUTS_DIR
#define VL_INPUTS_DIR "inputs"
#endif

#define VL_CONFIG_MAX_INCLUDE 8 /* included files below the top-level one */

typedef enum { K_INT, K_U64, K_DOUBLE, K_BOOL, K_STRING, K_ENUM, K_INTLIST } key_type;

typedef struct {
  const char *name;
  key_type type;
  size_t offset;
  double min, max;      /* numbers; list length bounds for K_INTLIST */
  const char *def;      /* default as YAML text; NULL = none */
  int required;
  const char *const *enums;
  size_t count_offset;  /* K_INTLIST: offset of its int count (or SIZE_MAX: fixed = max) */
  const char *help;
} key_desc;

static const char *const families[] = {"qwen3-vl", "qwen2-vl", NULL};
static const char *const acts[] = {"gelu_pytorch_tanh", "gelu", "quick_gelu", "silu", NULL};
static const char *const backends[] = {"auto", "cpu", "cuda", NULL};
static const char *const optims[] = {"zero1", "lean", NULL};
static const char *const nonfinite[] = {"skip", "stop", NULL};
static const char *const schedules[] = {"cosine", "linear", "constant", NULL};

#define OFF(f) offsetof(vl_config, f)
#define BIG 1048576
static const key_desc keys[] = {
  {"model.family", K_ENUM, OFF(model.family), 0, 0, NULL, 1, families, 0, "model family"},
  {"model.path", K_STRING, OFF(model.path), 0, VL_PATH_MAX, "\"\"", 0, NULL, 0, "Hugging Face model folder (\"\": random init)"},
  {"model.tokenizer", K_STRING, OFF(model.tokenizer), 0, VL_PATH_MAX, "\"\"", 0, NULL, 0, "tokenizer.json for vlprep (\"\": model.path/tokenizer.json; relative to this file)"},
  {"model.preprocessor", K_STRING, OFF(model.preprocessor), 0, VL_PATH_MAX, "\"\"", 0, NULL, 0, "preprocessor_config.json for vlprep (\"\": model.path's, else the family's defaults)"},
  {"model.text.vocab_size", K_INT, OFF(model.text.vocab_size), 1, 1 << 24, NULL, 1, NULL, 0, "vocabulary rows"},
  {"model.text.hidden_size", K_INT, OFF(model.text.hidden_size), 1, BIG, NULL, 1, NULL, 0, "LLM width"},
  {"model.text.intermediate_size", K_INT, OFF(model.text.intermediate_size), 1, BIG, NULL, 1, NULL, 0, "MLP width"},
  {"model.text.num_hidden_layers", K_INT, OFF(model.text.num_hidden_layers), 1, 1024, NULL, 1, NULL, 0, "decoder layers"},
  {"model.text.num_attention_heads", K_INT, OFF(model.text.num_attention_heads), 1, 1024, NULL, 1, NULL, 0, "query heads"},
  {"model.text.num_key_value_heads", K_INT, OFF(model.text.num_key_value_heads), 1, 1024, NULL, 1, NULL, 0, "key/value heads (GQA)"},
  {"model.text.head_dim", K_INT, OFF(model.text.head_dim), 2, 1024, NULL, 1, NULL, 0, "per-head width"},
  {"model.text.rms_norm_eps", K_DOUBLE, OFF(model.text.rms_norm_eps), 1e-12, 0.1, "1e-6", 0, NULL, 0, "RMSNorm epsilon"},
  {"model.text.rope_theta", K_DOUBLE, OFF(model.text.rope_theta), 1, 1e12, NULL, 1, NULL, 0, "rope base"},
  {"model.text.mrope_section", K_INTLIST, OFF(model.text.mrope_section), 3, 3, NULL, 1, NULL, SIZE_MAX, "t/h/w frequency counts, sum head_dim/2"},
  {"model.text.mrope_interleaved", K_BOOL, OFF(model.text.mrope_interleaved), 0, 1, "true", 0, NULL, 0, "interleaved (Qwen3-VL) or sectioned (Qwen2-VL) M-RoPE"},
  {"model.text.attention_bias", K_BOOL, OFF(model.text.attention_bias), 0, 1, "false", 0, NULL, 0, "q/k/v projection biases"},
  {"model.text.tie_word_embeddings", K_BOOL, OFF(model.text.tie_word_embeddings), 0, 1, "false", 0, NULL, 0, "lm_head shares embed_tokens"},
  {"model.text.hidden_act", K_ENUM, OFF(model.text.hidden_act), 0, 0, "silu", 0, acts, 0, "MLP activation"},
  {"model.vision.depth", K_INT, OFF(model.vision.depth), 1, 1024, NULL, 1, NULL, 0, "ViT blocks"},
  {"model.vision.hidden_size", K_INT, OFF(model.vision.hidden_size), 1, BIG, NULL, 1, NULL, 0, "ViT width"},
  {"model.vision.intermediate_size", K_INT, OFF(model.vision.intermediate_size), 1, BIG, NULL, 1, NULL, 0, "ViT MLP width"},
  {"model.vision.num_heads", K_INT, OFF(model.vision.num_heads), 1, 1024, NULL, 1, NULL, 0, "ViT heads"},
  {"model.vision.in_channels", K_INT, OFF(model.vision.in_channels), 1, 16, "3", 0, NULL, 0, "image channels"},
  {"model.vision.patch_size", K_INT, OFF(model.vision.patch_size), 1, 1024, NULL, 1, NULL, 0, "patch side in pixels"},
  {"model.vision.temporal_patch_size", K_INT, OFF(model.vision.temporal_patch_size), 1, 16, "2", 0, NULL, 0, "frames per patch"},
  {"model.vision.spatial_merge_size", K_INT, OFF(model.vision.spatial_merge_size), 1, 16, NULL, 1, NULL, 0, "patches merged per side"},
  {"model.vision.out_hidden_size", K_INT, OFF(model.vision.out_hidden_size), 1, BIG, NULL, 1, NULL, 0, "merger output width (= text hidden_size)"},
  {"model.vision.num_position_embeddings", K_INT, OFF(model.vision.num_position_embeddings), 0, BIG, "0", 0, NULL, 0, "learned position grid (a square; 0 = none)"},
  {"model.vision.deepstack_visual_indexes", K_INTLIST, OFF(model.vision.deepstack_visual_indexes), 0, VL_MAX_DEEPSTACK, "[]", 0, NULL, OFF(model.vision.n_deepstack), "ViT blocks feeding DeepStack"},
  {"model.vision.hidden_act", K_ENUM, OFF(model.vision.hidden_act), 0, 0, "gelu_pytorch_tanh", 0, acts, 0, "ViT MLP activation"},
  {"model.vision.layer_norm_eps", K_DOUBLE, OFF(model.vision.layer_norm_eps), 1e-12, 0.1, "1e-6", 0, NULL, 0, "LayerNorm epsilon"},
  {"model.tokens.image_token_id", K_INT, OFF(model.tokens.image_token_id), 0, 1 << 24, NULL, 1, NULL, 0, "<|image_pad|>"},
  {"model.tokens.video_token_id", K_INT, OFF(model.tokens.video_token_id), 0, 1 << 24, NULL, 1, NULL, 0, "<|video_pad|>"},
  {"model.tokens.vision_start_token_id", K_INT, OFF(model.tokens.vision_start_token_id), 0, 1 << 24, NULL, 1, NULL, 0, "<|vision_start|>"},
  {"model.tokens.vision_end_token_id", K_INT, OFF(model.tokens.vision_end_token_id), 0, 1 << 24, NULL, 1, NULL, 0, "<|vision_end|>"},
  {"train.micro_batch", K_INT, OFF(train.micro_batch), 1, 1024, "1", 0, NULL, 0, "samples per rank per micro-step"},
  {"train.grad_accum", K_INT, OFF(train.grad_accum), 1, 65536, "8", 0, NULL, 0, "micro-steps per optimizer step"},
  {"train.global_batch", K_INT, OFF(train.global_batch), 0, INT_MAX, "0", 0, NULL, 0, "samples per optimizer step (0: ranks x micro_batch x grad_accum; else grad_accum = global_batch / (ranks x micro_batch), which must divide)"},
  {"train.max_seq_len", K_INT, OFF(train.max_seq_len), 1, 1 << 22, "2900", 0, NULL, 0, "LLM tokens per sample"},
  {"train.max_vision_patches", K_INT, OFF(train.max_vision_patches), 0, 1 << 24, "8960", 0, NULL, 0, "vision patches per sample"},
  {"train.steps", K_INT, OFF(train.steps), 0, INT_MAX, "100", 0, NULL, 0, "optimizer steps"},
  {"train.lr", K_DOUBLE, OFF(train.lr), 0, 1, "1e-5", 0, NULL, 0, "peak learning rate"},
  {"train.weight_decay", K_DOUBLE, OFF(train.weight_decay), 0, 10, "0.0", 0, NULL, 0, "AdamW decoupled weight decay"},
  {"train.adam_beta1", K_DOUBLE, OFF(train.adam_beta1), 0, 0.999999, "0.9", 0, NULL, 0, "AdamW beta1"},
  {"train.adam_beta2", K_DOUBLE, OFF(train.adam_beta2), 0, 0.999999999, "0.999", 0, NULL, 0, "AdamW beta2"},
  {"train.adam_eps", K_DOUBLE, OFF(train.adam_eps), 1e-20, 1, "1e-8", 0, NULL, 0, "AdamW epsilon"},
  {"train.grad_clip", K_DOUBLE, OFF(train.grad_clip), 0, 1e9, "1.0", 0, NULL, 0, "clip global gradient norm (0 = off)"},
  {"train.warmup_steps", K_INT, OFF(train.warmup_steps), 0, INT_MAX, "0", 0, NULL, 0, "linear warmup steps"},
  {"train.schedule", K_ENUM, OFF(train.schedule), 0, 0, "cosine", 0, schedules, 0, "decay after warmup, as Hugging Face's schedulers"},
  {"train.recompute", K_BOOL, OFF(train.recompute), 0, 1, "false", 0, NULL, 0, "recompute activations per layer"},
  {"train.overlap_grad_reduce", K_BOOL, OFF(train.overlap_grad_reduce), 0, 1, "true", 0, NULL, 0, "reduce each layer's gradients across ranks during the last backward of a step, overlapped with it (not on statistics steps, nor on ranks sharing a GPU)"},
  {"train.optimizer", K_ENUM, OFF(train.optimizer), 0, 0, "zero1", 0, optims, 0, "zero1: fp32 master+moments sharded; lean: 12 B/param"},
  {"train.freeze", K_STRING, OFF(train.freeze), 0, 256, "\"\"", 0, NULL, 0, "comma-separated name patterns to freeze"},
  {"train.decay_also", K_STRING, OFF(train.decay_also), 0, 256, "\"\"", 0, NULL, 0, "comma-separated name patterns of norms, biases and embeddings that get weight decay too (\"*\": every parameter; by default they get none)"},
  {"train.eval_every", K_INT, OFF(train.eval_every), 0, INT_MAX, "0", 0, NULL, 0, "steps between validation losses (0: at the end)"},
  {"train.eval_samples", K_INT, OFF(train.eval_samples), 0, 1 << 30, "16", 0, NULL, 0, "validation samples per evaluation: the first N of run.data's val split (0: none)"},
  {"train.stats_every", K_INT, OFF(train.stats_every), 0, INT_MAX, "10", 0, NULL, 0, "steps between rows of OUT/gradstats.h5 (0: off)"},
  {"train.nonfinite", K_ENUM, OFF(train.nonfinite), 0, 0, "skip", 0, nonfinite, 0, "a NaN/Inf loss or gradient: skip the step (logged) or stop"},
  {"train.seed", K_U64, OFF(train.seed), 0, 0, "1234", 0, NULL, 0, "random seed"},
  {"train.synth_grid", K_INTLIST, OFF(train.synth_grid), 2, 2, "[0, 0]", 0, NULL, SIZE_MAX, "generated samples: image grid (h, w) in patches; 0 = varied (benchmarks)"},
  {"train.synth_text", K_INT, OFF(train.synth_text), 0, 1 << 22, "0", 0, NULL, 0, "generated samples: text tokens (0 = varied)"},
  {"train.synth_answer", K_INT, OFF(train.synth_answer), 0, 1 << 22, "0", 0, NULL, 0, "generated samples: answer tokens among them"},
  {"run.backend", K_ENUM, OFF(run.backend), 0, 0, "auto", 0, backends, 0, "auto: cuda if built with it and a GPU is visible"},
  {"run.allow_shared_gpu", K_BOOL, OFF(run.allow_shared_gpu), 0, 1, "false", 0, NULL, 0, "allow more ranks than GPUs on a node"},
  {"run.data", K_STRING, OFF(run.data), 0, VL_PATH_MAX, "\"\"", 0, NULL, 0, "dataset.h5 made by vlprep (relative to the YAML's folder); \"\" = generated samples"},
  {"run.out_dir", K_STRING, OFF(run.out_dir), 0, VL_PATH_MAX, "out", 0, NULL, 0, "checkpoints and statistics"},
  {"run.checkpoint_every", K_INT, OFF(run.checkpoint_every), 0, INT_MAX, "0", 0, NULL, 0, "steps between checkpoints (0: at the end only)"},
  {"run.keep_checkpoints", K_INT, OFF(run.keep_checkpoints), 1, 1000000, "3", 0, NULL, 0, "newest checkpoints kept"},
  {"run.save_final", K_BOOL, OFF(run.save_final), 0, 1, "true", 0, NULL, 0, "checkpoint after the last step"},
  {"run.resume", K_BOOL, OFF(run.resume), 0, 1, "true", 0, NULL, 0, "continue from out_dir/ckpt/latest if present"},
  {"run.nccl_timeout_s", K_DOUBLE, OFF(run.nccl_timeout_s), 1, 1e7, "600", 0, NULL, 0, "abort a collective that hangs this long"},
};
#define N_KEYS ((int)(sizeof keys / sizeof *keys))

/* Sections (dotted prefixes of keys) whose line in the top-level file is
 * remembered, so a missing required key can point at its section. */
#define MAX_SECTIONS 16

/* Everything known while loading one top-level file. */
typedef struct {
  int set[N_KEYS];           /* key i was given by some file */
  const char *file[N_KEYS];  /* ... in this file (one of files[]) */
  int line[N_KEYS];          /* ... at this line (1-based) */
  char *files[VL_CONFIG_MAX_INCLUDE + 1];  /* display names of the files read (owned) */
  char *canon[VL_CONFIG_MAX_INCLUDE + 1];  /* their real paths, for cycles (owned) */
  int n_files;               /* = include depth + 1: one include per file */
  char section[MAX_SECTIONS][256]; /* dotted section names */
  int section_line[MAX_SECTIONS];
  int n_sections;
  size_t text_len, text_cap;
  /* vl_config_load_text: the files' texts come from a merged config text */
  int chain;                 /* 1: includes are the next "# --- file:" segment */
  int n_segs, next_seg;
  const char *seg_name[VL_CONFIG_MAX_INCLUDE + 1], *seg_text[VL_CONFIG_MAX_INCLUDE + 1];
  size_t seg_name_len[VL_CONFIG_MAX_INCLUDE + 1], seg_len[VL_CONFIG_MAX_INCLUDE + 1];
  const char *hf_text;       /* its "# --- config.json:" segment, or NULL */
  size_t hf_len;
  char hf_path[VL_PATH_MAX + 16]; /* model.path/config.json, for messages */
} load_state;

const char *vl_act_name(vl_act_kind act) {
  return (act >= 0 && act <= VL_ACT_SILU) ? acts[act] : "?";
}

static int find_key(const char *name) {
  for (int i = 0; i < N_KEYS; i++)
    if (strcmp(keys[i].name, name) == 0) return i;
  return -1;
}

/* 1 if `prefix` is a section: some key is "prefix.<rest>". */
static int is_section(const char *prefix) {
  size_t n = strlen(prefix);
  for (int i = 0; i < N_KEYS; i++)
    if (strncmp(keys[i].name, prefix, n) == 0 && keys[i].name[n] == '.') return 1;
  return 0;
}

static int edit_distance(const char *a, const char *b) {
  int la = (int)strlen(a), lb = (int)strlen(b);
  if (la > 63 || lb > 63) return 99;
  int d[64][64];
  for (int i = 0; i <= la; i++) d[i][0] = i;
  for (int j = 0; j <= lb; j++) d[0][j] = j;
  for (int i = 1; i <= la; i++)
    for (int j = 1; j <= lb; j++) {
      int c = d[i - 1][j - 1] + (a[i - 1] != b[j - 1]);
      if (d[i - 1][j] + 1 < c) c = d[i - 1][j] + 1;
      if (d[i][j - 1] + 1 < c) c = d[i][j - 1] + 1;
      d[i][j] = c;
    }
  return d[la][lb];
}

/* Candidate names for a suggestion: every key, every section, "include".
 * A candidate is offered at edit distance <= 3, and for short names at
 * most half their length (so "foo" does not suggest "run"). */
static void consider(const char *name, const char *cand, int *best_d, char *best, size_t n) {
  int d = edit_distance(name, cand);
  if (d <= 3 && 2 * d <= (int)strlen(cand) && d < *best_d) {
    *best_d = d;
    snprintf(best, n, "%s", cand);
  }
}

static int unknown_key(const char *file, int line, const char *name) {
  char best[64] = "";
  int bd = 99;
  consider(name, "include", &bd, best, sizeof best);
  for (int i = 0; i < N_KEYS; i++) {
    consider(name, keys[i].name, &bd, best, sizeof best);
    char sec[64];
    snprintf(sec, sizeof sec, "%s", keys[i].name);
    for (char *dot = strrchr(sec, '.'); dot; dot = strrchr(sec, '.')) {
      *dot = '\0';
      consider(name, sec, &bd, best, sizeof best);
    }
  }
  if (best[0])
    VL_ERROR(VL_EINVAL, "%s:%d: %s: unknown key (did you mean %s?)", file, line, name, best);
  VL_ERROR(VL_EINVAL, "%s:%d: %s: unknown key (vltrain --help-config lists them)", file, line, name);
}

static const char *type_text(const key_desc *k, char *buf, size_t n) {
  switch (k->type) {
  case K_INT: snprintf(buf, n, "an integer in [%.0f, %.0f]", k->min, k->max); break;
  case K_U64: snprintf(buf, n, "a non-negative integer"); break;
  case K_DOUBLE: snprintf(buf, n, "a number in [%g, %g]", k->min, k->max); break;
  case K_BOOL: snprintf(buf, n, "true or false"); break;
  case K_STRING: snprintf(buf, n, "a string"); break;
  case K_ENUM: {
    size_t o = (size_t)snprintf(buf, n, "one of ");
    for (int i = 0; k->enums[i] && o < n; i++)
      o += (size_t)snprintf(buf + o, n - o, "%s%s", i ? ", " : "", k->enums[i]);
    break;
  }
  case K_INTLIST:
    if (k->min == k->max) snprintf(buf, n, "a list of %.0f non-negative integers", k->min);
    else snprintf(buf, n, "a list of %.0f to %.0f non-negative integers", k->min, k->max);
    break;
  }
  return buf;
}

/* Plain decimal integers only: optional '-', digits (no '+', '_', 0x). */
static int parse_long(const char *s, long long *v) {
  const char *p = s + (*s == '-');
  if (!*p) return 0;
  for (const char *q = p; *q; q++)
    if (*q < '0' || *q > '9') return 0;
  errno = 0;
  *v = strtoll(s, NULL, 10);
  return !errno;
}

static int parse_u64(const char *s, uint64_t *v) {
  if (!*s) return 0;
  for (const char *q = s; *q; q++)
    if (*q < '0' || *q > '9') return 0;
  errno = 0;
  unsigned long long u = strtoull(s, NULL, 10);
  *v = u;
  return !errno;
}

/* Decimal numbers: [-+]digits[.digits][e[-+]digits], at least one digit
 * before the exponent (1e-6, 5000000, 0.5, .5); no hex, inf or nan. */
static int parse_double(const char *s, double *v) {
  const char *p = s;
  int digits = 0;
  if (*p == '-' || *p == '+') p++;
  while (*p >= '0' && *p <= '9') p++, digits++;
  if (*p == '.') {
    p++;
    while (*p >= '0' && *p <= '9') p++, digits++;
  }
  if (!digits) return 0;
  if (*p == 'e' || *p == 'E') {
    p++;
    if (*p == '-' || *p == '+') p++;
    if (!(*p >= '0' && *p <= '9')) return 0;
    while (*p >= '0' && *p <= '9') p++;
  }
  if (*p) return 0;
  errno = 0;
  *v = strtod(s, NULL);
  return !errno && isfinite(*v);
}

static const char *node_kind(const yaml_node_t *nd) {
  return nd->type == YAML_MAPPING_NODE ? "a mapping" : nd->type == YAML_SEQUENCE_NODE ? "a list" : "a scalar";
}

static int node_line(const yaml_node_t *nd) { return (int)nd->start_mark.line + 1; }

/* Sets key k from node nd of doc; `file` names the file in messages. */
static int set_value(vl_config *cfg, const key_desc *k, yaml_document_t *doc, yaml_node_t *nd,
                     const char *file) {
  char want[256];
  const int line = node_line(nd);
  char *base = (char *)cfg + k->offset;
  if (k->type == K_INTLIST) {
    if (nd->type != YAML_SEQUENCE_NODE)
      VL_ERROR(VL_EINVAL, "%s:%d: %s: expected %s, got %s", file, line, k->name,
               type_text(k, want, sizeof want), node_kind(nd));
    int n = (int)(nd->data.sequence.items.top - nd->data.sequence.items.start);
    if (n < k->min || n > k->max)
      VL_ERROR(VL_EINVAL, "%s:%d: %s: expected %s, got %d entries", file, line, k->name,
               type_text(k, want, sizeof want), n);
    int vals[VL_MAX_DEEPSTACK];
    for (int i = 0; i < n; i++) {
      yaml_node_t *it = yaml_document_get_node(doc, nd->data.sequence.items.start[i]);
      long long v;
      if (it->type != YAML_SCALAR_NODE)
        VL_ERROR(VL_EINVAL, "%s:%d: %s: expected %s, got %s as entry %d", file, node_line(it),
                 k->name, type_text(k, want, sizeof want), node_kind(it), i + 1);
      const char *s = (const char *)it->data.scalar.value;
      if (!parse_long(s, &v) || v < 0 || v > INT_MAX)
        VL_ERROR(VL_EINVAL, "%s:%d: %s: expected %s, got '%s'", file, node_line(it), k->name,
                 type_text(k, want, sizeof want), s);
      vals[i] = (int)v;
    }
    memcpy(base, vals, (size_t)n * sizeof(int));
    if (k->count_offset != SIZE_MAX) *(int *)((char *)cfg + k->count_offset) = n;
    return VL_OK;
  }
  if (nd->type != YAML_SCALAR_NODE)
    VL_ERROR(VL_EINVAL, "%s:%d: %s: expected %s, got %s", file, line, k->name,
             type_text(k, want, sizeof want), node_kind(nd));
  const char *s = (const char *)nd->data.scalar.value;
  switch (k->type) {
  case K_INT: {
    long long v;
    if (!parse_long(s, &v) || v < k->min || v > k->max)
      VL_ERROR(VL_EINVAL, "%s:%d: %s: expected %s, got '%s'", file, line, k->name,
               type_text(k, want, sizeof want), s);
    *(int *)base = (int)v;
    break;
  }
  case K_U64: {
    uint64_t v;
    if (!parse_u64(s, &v))
      VL_ERROR(VL_EINVAL, "%s:%d: %s: expected %s, got '%s'", file, line, k->name,
               type_text(k, want, sizeof want), s);
    *(uint64_t *)base = v;
    break;
  }
  case K_DOUBLE: {
    double v;
    if (!parse_double(s, &v) || v < k->min || v > k->max)
      VL_ERROR(VL_EINVAL, "%s:%d: %s: expected %s, got '%s'", file, line, k->name,
               type_text(k, want, sizeof want), s);
    *(double *)base = v;
    break;
  }
  case K_BOOL: {
    static const char *const yes[] = {"true", "yes", "on", "True", "TRUE", "Yes", "On"};
    static const char *const no[] = {"false", "no", "off", "False", "FALSE", "No", "Off"};
    int v = -1;
    for (size_t i = 0; i < sizeof yes / sizeof *yes; i++) {
      if (!strcmp(s, yes[i])) v = 1;
      if (!strcmp(s, no[i])) v = 0;
    }
    if (v < 0)
      VL_ERROR(VL_EINVAL, "%s:%d: %s: expected %s, got '%s'", file, line, k->name,
               type_text(k, want, sizeof want), s);
    *(int *)base = v;
    break;
  }
  case K_STRING:
    if (strlen(s) >= (size_t)k->max)
      VL_ERROR(VL_EINVAL, "%s:%d: %s: expected a string of fewer than %.0f characters", file,
               line, k->name, k->max);
    memcpy(base, s, strlen(s) + 1);
    break;
  case K_ENUM: {
    int v = -1;
    for (int i = 0; k->enums[i]; i++)
      if (!strcmp(s, k->enums[i])) v = i;
    if (v < 0)
      VL_ERROR(VL_EINVAL, "%s:%d: %s: expected %s, got '%s'", file, line, k->name,
               type_text(k, want, sizeof want), s);
    *(int *)base = v;
    break;
  }
  default: break;
  }
  return VL_OK;
}

/* Reads a whole file; returns 0 or an errno value (the caller words it). */
static int read_whole(const char *path, char **text, size_t *len) {
  FILE *f = fopen(path, "rb");
  if (!f) return errno ? errno : EIO;
  char *buf = NULL;
  size_t cap = 0, n = 0;
  for (;;) {
    if (n + 4096 > cap) {
      cap = cap ? 2 * cap : 8192;
      char *nb = realloc(buf, cap);
      if (!nb) { free(buf); fclose(f); return ENOMEM; }
      buf = nb;
    }
    size_t r = fread(buf + n, 1, cap - n - 1, f);
    n += r;
    if (r == 0) break;
  }
  int err = ferror(f) ? (errno ? errno : EIO) : 0;
  fclose(f);
  if (err) { free(buf); return err; }
  buf[n] = '\0';
  *text = buf;
  *len = n;
  return 0;
}

static int file_exists(const char *path) {
  FILE *f = fopen(path, "r");
  if (f) fclose(f);
  return f != NULL;
}

/* Resolves an include name: absolute as is; relative next to the
 * including file, then in VL_INPUTS_DIR.  0 if found. */
static int resolve_include(char *out, size_t n, const char *from, const char *inc) {
  if (inc[0] == '/') {
    snprintf(out, n, "%s", inc);
    return file_exists(out) ? 0 : -1;
  }
  const char *slash = strrchr(from, '/');
  if (slash) snprintf(out, n, "%.*s/%s", (int)(slash - from), from, inc);
  else snprintf(out, n, "%s", inc);
  if (file_exists(out)) return 0;
  snprintf(out, n, "%s/%s", VL_INPUTS_DIR, inc);
  return file_exists(out) ? 0 : -1;
}

static int append_text(vl_config *cfg, load_state *st, const char *path, const char *text,
                       size_t len) {
  size_t need = st->text_len + len + strlen(path) + 32;
  if (need > st->text_cap) {
    size_t cap = need * 2;
    char *nt = realloc(cfg->text, cap);
    if (!nt) VL_ERROR(VL_ENOMEM, "config text: out of memory (%zu bytes)", cap);
    cfg->text = nt;
    st->text_cap = cap;
  }
  st->text_len += (size_t)sprintf(cfg->text + st->text_len, "# --- file: %s\n", path);
  memcpy(cfg->text + st->text_len, text, len);
  st->text_len += len;
  if (len && text[len - 1] != '\n') cfg->text[st->text_len++] = '\n';
  cfg->text[st->text_len] = '\0';
  return VL_OK;
}

/* Walks a mapping whose dotted prefix is `prefix` ("" at the top). */
static int walk(vl_config *cfg, load_state *st, yaml_document_t *doc, yaml_node_t *map,
                const char *prefix, const char *file, int top_file) {
  for (yaml_node_pair_t *p = map->data.mapping.pairs.start; p < map->data.mapping.pairs.top; p++) {
    yaml_node_t *kn = yaml_document_get_node(doc, p->key);
    yaml_node_t *vn = yaml_document_get_node(doc, p->value);
    const int line = node_line(kn);
    if (kn->type != YAML_SCALAR_NODE)
      VL_ERROR(VL_EINVAL, "%s:%d: %s: expected a plain key name, got %s", file, line,
               *prefix ? prefix : "(top)", node_kind(kn));
    const char *leaf = (const char *)kn->data.scalar.value;
    char name[256];
    snprintf(name, sizeof name, "%s%s%s", prefix, *prefix ? "." : "", leaf);
    for (yaml_node_pair_t *q = map->data.mapping.pairs.start; q < p; q++) {
      yaml_node_t *qk = yaml_document_get_node(doc, q->key);
      if (qk->type == YAML_SCALAR_NODE && !strcmp((const char *)qk->data.scalar.value, leaf))
        VL_ERROR(VL_EINVAL, "%s:%d: %s: duplicate key (first at line %d)", file, line, name,
                 node_line(qk));
    }
    if (!*prefix && !strcmp(name, "include")) continue; /* loaded before the walk */
    int k = find_key(name);
    if (k >= 0) {
      VL_CALL(set_value(cfg, &keys[k], doc, vn, file));
      st->set[k] = 1;
      st->file[k] = file;
      st->line[k] = node_line(vn);
    } else if (is_section(name)) {
      if (vn->type != YAML_MAPPING_NODE)
        VL_ERROR(VL_EINVAL, "%s:%d: %s: expected a mapping of keys, got %s", file, line, name,
                 node_kind(vn));
      if (top_file && st->n_sections < MAX_SECTIONS) {
        snprintf(st->section[st->n_sections], sizeof st->section[0], "%s", name);
        st->section_line[st->n_sections++] = line;
      }
      VL_CALL(walk(cfg, st, doc, vn, name, file, top_file));
    } else {
      return unknown_key(file, line, name);
    }
  }
  return VL_OK;
}

/* Parses one file's text (already read) into doc; YAML errors and a second
 * document are user errors at libyaml's line. */
static int parse_doc(yaml_document_t *doc, const char *file, const char *text, size_t len) {
  yaml_parser_t parser;
  if (!yaml_parser_initialize(&parser)) VL_ERROR(VL_ENOMEM, "libyaml parser: out of memory");
  yaml_parser_set_input_string(&parser, (const unsigned char *)text, len);
  if (!yaml_parser_load(&parser, doc)) {
    int line = (int)parser.problem_mark.line + 1;
    char problem[256];
    snprintf(problem, sizeof problem, "%s%s%s", parser.problem ? parser.problem : "syntax error",
             parser.context ? " " : "", parser.context ? parser.context : "");
    yaml_parser_delete(&parser);
    VL_ERROR(VL_EINVAL, "%s:%d: (yaml): %s", file, line, problem);
  }
  yaml_document_t extra;
  int rc = VL_OK;
  if (yaml_document_get_root_node(doc)) {
    if (!yaml_parser_load(&parser, &extra)) {
      rc = vl_err_raise(VL_EINVAL, __FILE__, __LINE__, __func__, "%s:%d: (yaml): %s", file,
                        (int)parser.problem_mark.line + 1,
                        parser.problem ? parser.problem : "syntax error");
    } else {
      yaml_node_t *r = yaml_document_get_root_node(&extra);
      if (r)
        rc = vl_err_raise(VL_EINVAL, __FILE__, __LINE__, __func__,
                          "%s:%d: (yaml): expected one document per file, found a second",
                          file, node_line(r));
      yaml_document_delete(&extra);
    }
  }
  yaml_parser_delete(&parser);
  if (rc) yaml_document_delete(doc);
  return rc;
}

static int load_file(vl_config *cfg, load_state *st, const char *text, size_t len);

/* Loads the file named by an `include:` node of `file` (after the chain
 * checks), recursively. */
static int load_include(vl_config *cfg, load_state *st, const char *file, yaml_node_t *vn) {
  const int line = node_line(vn);
  if (vn->type != YAML_SCALAR_NODE || !vn->data.scalar.length)
    VL_ERROR(VL_EINVAL, "%s:%d: include: expected a file name, got %s", file, line,
             vn->type == YAML_SCALAR_NODE ? "nothing" : node_kind(vn));
  const char *name = (const char *)vn->data.scalar.value;
  char inc[VL_PATH_MAX + 512];
  if (st->chain) { /* the next segment of the merged text is this include */
    if (st->next_seg >= st->n_segs)
      VL_ERROR(VL_EINVAL, "%s:%d: include: '%s' is not in the merged config text", file, line, name);
    int i = st->next_seg++;
    snprintf(inc, sizeof inc, "%.*s", (int)st->seg_name_len[i], st->seg_name[i]);
    if (st->n_files > VL_CONFIG_MAX_INCLUDE)
      VL_ERROR(VL_EINVAL, "%s:%d: include: expected includes nested at most %d deep", file, line,
               VL_CONFIG_MAX_INCLUDE);
    st->canon[st->n_files] = strdup(inc);
    st->files[st->n_files] = strdup(inc);
    st->n_files++;
    if (!st->files[st->n_files - 1] || !st->canon[st->n_files - 1])
      VL_ERROR(VL_ENOMEM, "config: out of memory");
    VL_CALL(load_file(cfg, st, st->seg_text[i], st->seg_len[i]));
    return VL_OK;
  }
  if (resolve_include(inc, sizeof inc, file, name)) {
    if (name[0] == '/') VL_ERROR(VL_EINVAL, "%s:%d: include: cannot find '%s'", file, line, name);
    VL_ERROR(VL_EINVAL, "%s:%d: include: cannot find '%s' (looked next to %s and in %s)", file,
             line, name, file, VL_INPUTS_DIR);
  }
  char *canon = realpath(inc, NULL);
  if (!canon) canon = strdup(inc);
  if (!canon) VL_ERROR(VL_ENOMEM, "config: out of memory");
  for (int i = 0; i < st->n_files; i++) {
    if (strcmp(st->canon[i], canon)) continue;
    char chain[4096];
    size_t o = 0;
    for (int j = i; j < st->n_files && o < sizeof chain; j++)
      o += (size_t)snprintf(chain + o, sizeof chain - o, "%s -> ", st->files[j]);
    free(canon);
    VL_ERROR(VL_EINVAL, "%s:%d: include: include cycle (%s%s)", file, line, chain, inc);
  }
  if (st->n_files > VL_CONFIG_MAX_INCLUDE) {
    free(canon);
    VL_ERROR(VL_EINVAL, "%s:%d: include: expected includes nested at most %d deep", file, line,
             VL_CONFIG_MAX_INCLUDE);
  }
  char *text;
  size_t len;
  int err = read_whole(inc, &text, &len);
  if (err) {
    free(canon);
    VL_ERROR(VL_EINVAL, "%s:%d: include: cannot read '%s': %s", file, line, inc, strerror(err));
  }
  st->canon[st->n_files] = canon;
  st->files[st->n_files] = strdup(inc);
  st->n_files++;
  int rc = st->files[st->n_files - 1] ? load_file(cfg, st, text, len)
                                       : vl_err_raise(VL_ENOMEM, __FILE__, __LINE__, __func__,
                                                      "config: out of memory");
  free(text);
  if (rc) return vl_err_trace(rc, __FILE__, __LINE__, __func__);
  return VL_OK;
}

/* Loads the file st->files[st->n_files - 1] whose text is given: its
 * include first, then its own keys over it. */
static int load_file(vl_config *cfg, load_state *st, const char *text, size_t len) {
  const int depth = st->n_files - 1;
  const char *file = st->files[depth];
  VL_CALL(append_text(cfg, st, file, text, len));
  yaml_document_t doc;
  VL_CALL(parse_doc(&doc, file, text, len));
  int rc = VL_OK;
  yaml_node_t *root = yaml_document_get_root_node(&doc);
  if (!root) goto done; /* an empty file sets nothing */
  if (root->type != YAML_MAPPING_NODE)
    VL_ERROR_GOTO(rc, done, VL_EINVAL, "%s:%d: (top): expected a mapping of sections (model, train, run, include), got %s",
                  file, node_line(root), node_kind(root));
  /* the first include only: a second one is reported as a duplicate by walk */
  for (yaml_node_pair_t *p = root->data.mapping.pairs.start; p < root->data.mapping.pairs.top; p++) {
    yaml_node_t *kn = yaml_document_get_node(&doc, p->key);
    if (kn->type != YAML_SCALAR_NODE || strcmp((const char *)kn->data.scalar.value, "include"))
      continue;
    VL_CALL_GOTO(rc, done, load_include(cfg, st, file, yaml_document_get_node(&doc, p->value)));
    break;
  }
  VL_CALL_GOTO(rc, done, walk(cfg, st, &doc, root, "", file, depth == 0));
done:
  yaml_document_delete(&doc);
  return rc;
}

/* Line of the innermost section of `key` seen in the top-level file, or 1. */
static int section_line(const load_state *st, const char *key) {
  int best = 1;
  size_t best_len = 0;
  for (int i = 0; i < st->n_sections; i++) {
    size_t n = strlen(st->section[i]);
    if (n > best_len && !strncmp(key, st->section[i], n) && key[n] == '.') {
      best = st->section_line[i];
      best_len = n;
    }
  }
  return best;
}

static const char *where_file(const vl_config *c, const load_state *st, const char *key) {
  int k = find_key(key);
  return k >= 0 && st->set[k] ? st->file[k] : c->source;
}

static int where_line(const load_state *st, const char *key) {
  int k = find_key(key);
  return k >= 0 && st->set[k] ? st->line[k] : 1;
}

/* Cross-key rules, after every file and default is in. */
static int check(const vl_config *c, const load_state *st) {
  for (int i = 0; i < N_KEYS; i++)
    if (keys[i].required && !st->set[i])
      VL_ERROR(VL_EINVAL, "%s:%d: %s: required key missing", c->source,
               section_line(st, keys[i].name), keys[i].name);
  /* where a key was set: its file and line, or the top-level file's line 1 */
#define WHERE(key) where_file(c, st, key), where_line(st, key), key
  const vl_text_config *t = &c->model.text;
  const vl_vision_config *v = &c->model.vision;
  if (t->num_attention_heads % t->num_key_value_heads)
    VL_ERROR(VL_EINVAL, "%s:%d: %s: expected a divisor of num_attention_heads (%d), got %d",
             WHERE("model.text.num_key_value_heads"), t->num_attention_heads, t->num_key_value_heads);
  if (t->head_dim % 2)
    VL_ERROR(VL_EINVAL, "%s:%d: %s: expected an even number, got %d", WHERE("model.text.head_dim"), t->head_dim);
  int sum = t->mrope_section[0] + t->mrope_section[1] + t->mrope_section[2];
  if (sum != t->head_dim / 2)
    VL_ERROR(VL_EINVAL, "%s:%d: %s: expected sections summing to head_dim/2 = %d, got %d",
             WHERE("model.text.mrope_section"), t->head_dim / 2, sum);
  if (v->hidden_size % v->num_heads || (v->hidden_size / v->num_heads) % 4)
    VL_ERROR(VL_EINVAL, "%s:%d: %s: expected heads dividing hidden_size %d into a multiple of 4, got %d",
             WHERE("model.vision.num_heads"), v->hidden_size, v->num_heads);
  for (int i = 0; i < v->n_deepstack; i++) {
    if (v->deepstack_visual_indexes[i] >= v->depth ||
        (i && v->deepstack_visual_indexes[i] <= v->deepstack_visual_indexes[i - 1]))
      VL_ERROR(VL_EINVAL, "%s:%d: %s: expected ascending block indexes below depth %d",
               WHERE("model.vision.deepstack_visual_indexes"), v->depth);
  }
  if (v->n_deepstack > t->num_hidden_layers)
    VL_ERROR(VL_EINVAL, "%s:%d: %s: expected at most num_hidden_layers (%d) entries",
             WHERE("model.vision.deepstack_visual_indexes"), t->num_hidden_layers);
  int side = (int)lrint(sqrt((double)v->num_position_embeddings));
  if (side * side != v->num_position_embeddings)
    VL_ERROR(VL_EINVAL, "%s:%d: %s: expected a perfect square (a side x side grid), got %d",
             WHERE("model.vision.num_position_embeddings"), v->num_position_embeddings);
  if (v->out_hidden_size != t->hidden_size)
    VL_ERROR(VL_EINVAL, "%s:%d: %s: expected the text hidden_size %d, got %d",
             WHERE("model.vision.out_hidden_size"), t->hidden_size, v->out_hidden_size);
  const char *tk[] = {"model.tokens.image_token_id", "model.tokens.video_token_id",
                      "model.tokens.vision_start_token_id", "model.tokens.vision_end_token_id"};
  const int tv[] = {c->model.tokens.image_token_id, c->model.tokens.video_token_id,
                    c->model.tokens.vision_start_token_id, c->model.tokens.vision_end_token_id};
  for (int i = 0; i < 4; i++)
    if (tv[i] >= t->vocab_size)
      VL_ERROR(VL_EINVAL, "%s:%d: %s: expected an id below vocab_size %d, got %d", WHERE(tk[i]),
               t->vocab_size, tv[i]);
  if (c->model.family == VL_FAMILY_QWEN2_VL && (v->num_position_embeddings || v->n_deepstack))
    VL_ERROR(VL_EINVAL, "%s:%d: %s: qwen2-vl has no learned position grid and no DeepStack "
             "(expected num_position_embeddings 0 and deepstack_visual_indexes [])",
             WHERE("model.family"));
  if (c->model.family == VL_FAMILY_QWEN2_VL && t->mrope_interleaved)
    VL_ERROR(VL_EINVAL, "%s:%d: %s: qwen2-vl's M-RoPE is sectioned (expected "
             "mrope_interleaved: false)", WHERE("model.text.mrope_interleaved"));
#undef WHERE
  return VL_OK;
}

/* Every default, through the same parser and checks as user values. */
static int apply_defaults(vl_config *cfg) {
  for (int i = 0; i < N_KEYS; i++) {
    if (!keys[i].def) continue;
    yaml_document_t d;
    VL_CALL(parse_doc(&d, "(default)", keys[i].def, strlen(keys[i].def)));
    yaml_node_t *nd = yaml_document_get_root_node(&d);
    int rc = nd ? set_value(cfg, &keys[i], &d, nd, "(default)")
                : vl_err_raise(VL_EINVAL, __FILE__, __LINE__, __func__,
                               "(default): %s: empty default", keys[i].name);
    yaml_document_delete(&d);
    if (rc) return vl_err_trace(rc, __FILE__, __LINE__, __func__);
  }
  return VL_OK;
}

/* Bytes of key k's value in vl_config (for comparing two values). */
static size_t key_bytes(const key_desc *k) {
  switch (k->type) {
  case K_U64: return sizeof(uint64_t);
  case K_DOUBLE: return sizeof(double);
  case K_STRING: return (size_t)k->max;
  case K_INTLIST: return (size_t)k->max * sizeof(int);
  default: return sizeof(int);
  }
}

/* model.path naming a folder: its config.json gives the model keys, over
 * the presets (included files).  A model key that the top-level file sets
 * to another value is an error naming both; an equal one is fine. */
static int apply_hf_config(vl_config *cfg, load_state *st) {
  if (!cfg->model.path[0]) return VL_OK;
  char *own = NULL;
  const char *json;
  if (st->hf_text) {
    own = strndup(st->hf_text, st->hf_len);
    if (!own) VL_ERROR(VL_ENOMEM, "config: out of memory");
    json = own;
    snprintf(st->hf_path, sizeof st->hf_path, "%s/config.json", cfg->model.path);
  } else {
    struct stat sb;
    if (stat(cfg->model.path, &sb) == 0 && !S_ISDIR(sb.st_mode)) return VL_OK; /* a .safetensors file */
    int k = find_key("model.path");
    if (stat(cfg->model.path, &sb))
      VL_ERROR(VL_EINVAL, "%s:%d: model.path: cannot open '%s': %s", st->set[k] ? st->file[k] : cfg->source,
               st->set[k] ? st->line[k] : 1, cfg->model.path, strerror(errno));
    VL_CALL(vl_hfconfig_read_file(cfg->model.path, &own, st->hf_path, sizeof st->hf_path));
    json = own;
  }
  vl_hf_kv kv[VL_HF_MAX_KEYS];
  int n = 0, rc = VL_OK;
  vl_config *tmp = malloc(sizeof *tmp);
  if (!tmp) VL_ERROR_GOTO(rc, done, VL_ENOMEM, "config: out of memory");
  VL_CALL_GOTO(rc, done, vl_hfconfig_parse(json, st->hf_path, kv, &n));
  for (int i = 0; i < n; i++) {
    int k = find_key(kv[i].key);
    if (k < 0) VL_ERROR_GOTO(rc, done, VL_EINVAL, "internal: hfconfig key %s unknown", kv[i].key);
    const key_desc *kd = &keys[k];
    *tmp = *cfg;
    yaml_document_t d;
    char where[VL_PATH_MAX + 96];
    snprintf(where, sizeof where, "%s (%s)", st->hf_path, kv[i].source);
    VL_CALL_GOTO(rc, done, parse_doc(&d, where, kv[i].value, strlen(kv[i].value)));
    yaml_node_t *nd = yaml_document_get_root_node(&d);
    rc = nd ? set_value(tmp, kd, &d, nd, where)
            : vl_err_raise(VL_EINVAL, __FILE__, __LINE__, __func__, "%s: %s: empty value", where, kd->name);
    yaml_document_delete(&d);
    if (rc) goto done;
    char *dst = (char *)cfg + kd->offset;
    const char *src = (const char *)tmp + kd->offset;
    int differs = memcmp(dst, src, key_bytes(kd)) != 0;
    if (kd->type == K_INTLIST && kd->count_offset != SIZE_MAX)
      differs |= *(int *)((char *)cfg + kd->count_offset) != *(int *)((char *)tmp + kd->count_offset);
    if (differs && st->set[k] && st->file[k] == st->files[0])
      VL_ERROR_GOTO(rc, done, VL_EINVAL, "%s:%d: %s: conflicts with %s = %s in %s (the model "
                    "folder's config.json decides the architecture: remove the key or make it equal)",
                    st->file[k], st->line[k], kd->name, kv[i].source, kv[i].value, st->hf_path);
    memcpy(dst, src, key_bytes(kd));
    if (kd->type == K_INTLIST && kd->count_offset != SIZE_MAX)
      *(int *)((char *)cfg + kd->count_offset) = *(int *)((char *)tmp + kd->count_offset);
    if (!(st->set[k] && st->file[k] == st->files[0])) {
      st->set[k] = 1;
      st->file[k] = st->hf_path;
      st->line[k] = 1;
    }
  }
  /* keep config.json in the merged text, so a checkpoint is self-contained */
  {
    char head[VL_PATH_MAX + 64];
    snprintf(head, sizeof head, "config.json: %s", cfg->model.path);
    size_t need = st->text_len + strlen(json) + strlen(head) + 32;
    if (need > st->text_cap) {
      char *nt = realloc(cfg->text, need * 2);
      if (!nt) VL_ERROR_GOTO(rc, done, VL_ENOMEM, "config text: out of memory");
      cfg->text = nt;
      st->text_cap = need * 2;
    }
    st->text_len += (size_t)sprintf(cfg->text + st->text_len, "# --- %s\n%s", head, json);
    if (cfg->text[st->text_len - 1] != '\n') cfg->text[st->text_len++] = '\n';
    cfg->text[st->text_len] = '\0';
  }
done:
  free(tmp);
  free(own);
  return rc;
}

/* `name` is the top-level file's name; `canon` its real path (or NULL). */
static int load_common(vl_config *cfg, const char *name, const char *canon, const char *text,
                       size_t len, const load_state *chain) {
  memset(cfg, 0, sizeof *cfg);
  snprintf(cfg->source, sizeof cfg->source, "%s", name);
  load_state *st = calloc(1, sizeof *st);
  if (!st) VL_ERROR(VL_ENOMEM, "config: out of memory");
  if (chain) *st = *chain;
  int rc = VL_OK;
  st->files[0] = strdup(name);
  st->canon[0] = strdup(canon ? canon : name);
  st->n_files = 1;
  if (!st->files[0] || !st->canon[0])
    VL_ERROR_GOTO(rc, done, VL_ENOMEM, "config: out of memory");
  VL_CALL_GOTO(rc, done, apply_defaults(cfg));
  VL_CALL_GOTO(rc, done, load_file(cfg, st, text, len));
  VL_CALL_GOTO(rc, done, apply_hf_config(cfg, st));
  VL_CALL_GOTO(rc, done, check(cfg, st));
done:
  for (int i = 0; i < st->n_files; i++) {
    free(st->files[i]);
    free(st->canon[i]);
  }
  free(st);
  if (rc != VL_OK) {
    free(cfg->text);
    cfg->text = NULL;
  }
  return rc;
}

int vl_config_load(vl_config *cfg, const char *path) {
  char *text;
  size_t len;
  memset(cfg, 0, sizeof *cfg);
  int err = read_whole(path, &text, &len);
  if (err) VL_ERROR(VL_EIO, "%s: cannot read the config: %s", path, strerror(err));
  char *canon = realpath(path, NULL);
  int rc = load_common(cfg, path, canon, text, len, NULL);
  free(canon);
  free(text);
  if (rc) return vl_err_trace(rc, __FILE__, __LINE__, __func__);
  return VL_OK;
}

int vl_config_load_string(vl_config *cfg, const char *yaml, const char *name) {
  VL_CALL(load_common(cfg, name, NULL, yaml, strlen(yaml), NULL));
  return VL_OK;
}

int vl_config_load_text(vl_config *cfg, const char *text, const char *name) {
  memset(cfg, 0, sizeof *cfg);
  load_state *ch = calloc(1, sizeof *ch);
  if (!ch) VL_ERROR(VL_ENOMEM, "config: out of memory");
  ch->chain = 1;
  const char *p = text;
  int rc = VL_OK;
  static const char fmark[] = "# --- file: ", jmark[] = "# --- config.json: ";
  const char *seg_end_at = NULL; /* start of the marker that ends the last segment */
  while (*p) {
    const char *eol = strchr(p, '\n');
    const char *next = eol ? eol + 1 : p + strlen(p);
    if (!eol) eol = next;
    int isf = !strncmp(p, fmark, sizeof fmark - 1), isj = !strncmp(p, jmark, sizeof jmark - 1);
    if ((isf || isj) && ch->n_segs && !ch->seg_len[ch->n_segs - 1] && !seg_end_at)
      ch->seg_len[ch->n_segs - 1] = (size_t)(p - ch->seg_text[ch->n_segs - 1]);
    if (isf) {
      if (ch->hf_text || ch->n_segs > VL_CONFIG_MAX_INCLUDE)
        VL_ERROR_GOTO(rc, done, VL_EINVAL, "%s: malformed merged config text (a file after "
                      "config.json, or more than %d files)", name, VL_CONFIG_MAX_INCLUDE + 1);
      int i = ch->n_segs++;
      ch->seg_name[i] = p + sizeof fmark - 1;
      ch->seg_name_len[i] = (size_t)(eol - ch->seg_name[i]);
      ch->seg_text[i] = next;
    } else if (isj) {
      ch->hf_text = next; /* the rest of the text */
      seg_end_at = p;
      break;
    }
    p = next;
  }
  if (!ch->n_segs)
    VL_ERROR_GOTO(rc, done, VL_EINVAL, "%s: not a merged vltrain config text (no '# --- file:' line)", name);
  if (ch->hf_text) ch->hf_len = strlen(ch->hf_text);
  if (!seg_end_at) seg_end_at = p;
  if (!ch->seg_len[ch->n_segs - 1])
    ch->seg_len[ch->n_segs - 1] = (size_t)(seg_end_at - ch->seg_text[ch->n_segs - 1]);
  ch->next_seg = 1;
  {
    char top[VL_PATH_MAX];
    snprintf(top, sizeof top, "%.*s", (int)ch->seg_name_len[0], ch->seg_name[0]);
    char *seg0 = strndup(ch->seg_text[0], ch->seg_len[0]);
    if (!seg0) VL_ERROR_GOTO(rc, done, VL_ENOMEM, "config: out of memory");
    rc = load_common(cfg, top, NULL, seg0, ch->seg_len[0], ch);
    free(seg0);
  }
done:
  free(ch);
  if (rc) return vl_err_trace(rc, __FILE__, __LINE__, __func__);
  return VL_OK;
}

void vl_config_free(vl_config *cfg) {
  free(cfg->text);
  cfg->text = NULL;
}

void vl_config_print_keys(void) {
  char want[256];
  for (int i = 0; i < N_KEYS; i++)
    printf("%-42s %s%s%s%s  %s\n", keys[i].name, type_text(&keys[i], want, sizeof want),
           keys[i].required ? ", required" : "", keys[i].def ? ", default " : "",
           keys[i].def ? keys[i].def : "", keys[i].help);
}
