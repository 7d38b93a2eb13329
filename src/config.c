/* config: YAML (libyaml document API) -> vl_config through one key table.
 * Every key: dotted name, type, range, default, required; every error
 * "FILE:LINE: KEY: what was expected". */
#include "config.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <yaml.h>

#include "err.h"

#ifndef VL_INPUTS_DIR
#define VL_INPUTS_DIR "inputs"
#endif

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
  {"train.optimizer", K_ENUM, OFF(train.optimizer), 0, 0, "zero1", 0, optims, 0, "zero1: fp32 master+moments sharded; lean: 12 B/param"},
  {"train.freeze", K_STRING, OFF(train.freeze), 0, 256, "\"\"", 0, NULL, 0, "comma-separated name patterns to freeze"},
  {"train.eval_every", K_INT, OFF(train.eval_every), 0, INT_MAX, "0", 0, NULL, 0, "steps between validation losses (0: at the end)"},
  {"train.eval_samples", K_INT, OFF(train.eval_samples), 0, 1 << 30, "16", 0, NULL, 0, "validation samples per evaluation (0: none)"},
  {"train.stats_every", K_INT, OFF(train.stats_every), 0, INT_MAX, "10", 0, NULL, 0, "steps between rows of OUT/gradstats.h5 (0: off)"},
  {"train.nonfinite", K_ENUM, OFF(train.nonfinite), 0, 0, "skip", 0, nonfinite, 0, "a NaN/Inf loss or gradient: skip the step (logged) or stop"},
  {"train.seed", K_U64, OFF(train.seed), 0, 0, "1234", 0, NULL, 0, "random seed"},
  {"train.synth_grid", K_INTLIST, OFF(train.synth_grid), 2, 2, "[0, 0]", 0, NULL, SIZE_MAX, "generated samples: image grid (h, w) in patches; 0 = varied (benchmarks)"},
  {"train.synth_text", K_INT, OFF(train.synth_text), 0, 1 << 22, "0", 0, NULL, 0, "generated samples: text tokens (0 = varied)"},
  {"train.synth_answer", K_INT, OFF(train.synth_answer), 0, 1 << 22, "0", 0, NULL, 0, "generated samples: answer tokens among them"},
  {"run.backend", K_ENUM, OFF(run.backend), 0, 0, "auto", 0, backends, 0, "auto: cuda if built with it and a GPU is visible"},
  {"run.allow_shared_gpu", K_BOOL, OFF(run.allow_shared_gpu), 0, 1, "false", 0, NULL, 0, "allow more ranks than GPUs on a node"},
  {"run.data", K_STRING, OFF(run.data), 0, VL_PATH_MAX, "\"\"", 0, NULL, 0, "dataset.h5"},
  {"run.out_dir", K_STRING, OFF(run.out_dir), 0, VL_PATH_MAX, "out", 0, NULL, 0, "checkpoints and statistics"},
  {"run.checkpoint_every", K_INT, OFF(run.checkpoint_every), 0, INT_MAX, "0", 0, NULL, 0, "steps between checkpoints (0: at the end only)"},
  {"run.keep_checkpoints", K_INT, OFF(run.keep_checkpoints), 1, 1000000, "3", 0, NULL, 0, "newest checkpoints kept"},
  {"run.save_final", K_BOOL, OFF(run.save_final), 0, 1, "true", 0, NULL, 0, "checkpoint after the last step"},
  {"run.resume", K_BOOL, OFF(run.resume), 0, 1, "true", 0, NULL, 0, "continue from out_dir/ckpt/latest if present"},
  {"run.nccl_timeout_s", K_DOUBLE, OFF(run.nccl_timeout_s), 1, 1e7, "600", 0, NULL, 0, "abort a collective that hangs this long"},
};
#define N_KEYS ((int)(sizeof keys / sizeof *keys))

/* Where each key was last set, for cross-key errors and required checks. */
typedef struct {
  int set[N_KEYS];
  const char *file[N_KEYS];
  int line[N_KEYS];
  char *files[16];  /* names of every file read (owned) */
  int n_files;
  const char *stack[16]; /* include chain, for cycles */
  int depth;
  size_t text_len, text_cap;
} load_state;

const char *vl_act_name(vl_act_kind act) {
  return (act >= 0 && act <= VL_ACT_SILU) ? acts[act] : "?";
}

static int find_key(const char *name) {
  for (int i = 0; i < N_KEYS; i++)
    if (strcmp(keys[i].name, name) == 0) return i;
  return -1;
}

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

static int unknown_key(const char *file, int line, const char *name) {
  int best = -1, bd = 4;
  for (int i = 0; i < N_KEYS; i++) {
    int dd = edit_distance(name, keys[i].name);
    if (dd < bd) { bd = dd; best = i; }
  }
  if (best >= 0)
    VL_ERROR(VL_EINVAL, "%s:%d: %s: unknown key (did you mean %s?)", file, line, name, keys[best].name);
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
    if (k->min == k->max) snprintf(buf, n, "a list of %.0f integers", k->min);
    else snprintf(buf, n, "a list of %.0f to %.0f integers", k->min, k->max);
    break;
  }
  return buf;
}

static int parse_long(const char *s, long long *v) {
  char *end;
  errno = 0;
  *v = strtoll(s, &end, 10);
  return *s && !*end && !errno;
}

/* Sets key k from a node of doc. */
static int set_value(vl_config *cfg, const key_desc *k, yaml_document_t *doc, yaml_node_t *nd,
                     const char *file) {
  char want[256];
  const int line = (int)nd->start_mark.line + 1;
  char *base = (char *)cfg + k->offset;
  if (k->type == K_INTLIST) {
    if (nd->type != YAML_SEQUENCE_NODE)
      VL_ERROR(VL_EINVAL, "%s:%d: %s: expected %s", file, line, k->name, type_text(k, want, sizeof want));
    int n = (int)(nd->data.sequence.items.top - nd->data.sequence.items.start);
    if (n < k->min || n > k->max)
      VL_ERROR(VL_EINVAL, "%s:%d: %s: expected %s, got %d", file, line, k->name,
               type_text(k, want, sizeof want), n);
    for (int i = 0; i < n; i++) {
      yaml_node_t *it = yaml_document_get_node(doc, nd->data.sequence.items.start[i]);
      long long v;
      if (!it || it->type != YAML_SCALAR_NODE || !parse_long((char *)it->data.scalar.value, &v) ||
          v < 0 || v > INT_MAX)
        VL_ERROR(VL_EINVAL, "%s:%d: %s: expected %s of non-negative integers", file, line,
                 k->name, type_text(k, want, sizeof want));
      ((int *)base)[i] = (int)v;
    }
    if (k->count_offset != SIZE_MAX) *(int *)((char *)cfg + k->count_offset) = n;
    return VL_OK;
  }
  if (nd->type != YAML_SCALAR_NODE)
    VL_ERROR(VL_EINVAL, "%s:%d: %s: expected %s, got a %s", file, line, k->name,
             type_text(k, want, sizeof want), nd->type == YAML_MAPPING_NODE ? "mapping" : "list");
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
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (!*s || *end || errno || s[0] == '-')
      VL_ERROR(VL_EINVAL, "%s:%d: %s: expected %s, got '%s'", file, line, k->name,
               type_text(k, want, sizeof want), s);
    *(uint64_t *)base = v;
    break;
  }
  case K_DOUBLE: {
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (!*s || *end || errno || !isfinite(v) || v < k->min || v > k->max)
      VL_ERROR(VL_EINVAL, "%s:%d: %s: expected %s, got '%s'", file, line, k->name,
               type_text(k, want, sizeof want), s);
    *(double *)base = v;
    break;
  }
  case K_BOOL: {
    static const char *const yes[] = {"true", "yes", "on", "True", "TRUE"};
    static const char *const no[] = {"false", "no", "off", "False", "FALSE"};
    int v = -1;
    for (int i = 0; i < 5; i++) {
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

static int load_file(vl_config *cfg, load_state *st, const char *path, const char *text,
                     size_t len);

static int resolve_include(char *out, size_t n, const char *from, const char *inc) {
  if (inc[0] == '/') {
    snprintf(out, n, "%s", inc);
    return 0;
  }
  const char *slash = strrchr(from, '/');
  if (slash) snprintf(out, n, "%.*s/%s", (int)(slash - from), from, inc);
  else snprintf(out, n, "%s", inc);
  FILE *f = fopen(out, "r");
  if (f) { fclose(f); return 0; }
  snprintf(out, n, "%s/%s", VL_INPUTS_DIR, inc);
  f = fopen(out, "r");
  if (f) { fclose(f); return 0; }
  return -1;
}

static int read_whole(const char *path, char **text, size_t *len) {
  FILE *f = fopen(path, "rb");
  if (!f) VL_ERROR(VL_EIO, "%s: cannot open: %s", path, strerror(errno));
  char *buf = NULL;
  size_t cap = 0, n = 0;
  for (;;) {
    if (n + 4096 > cap) {
      cap = cap ? 2 * cap : 8192;
      char *nb = realloc(buf, cap);
      if (!nb) { free(buf); fclose(f); VL_ERROR(VL_ENOMEM, "%s: out of memory", path); }
      buf = nb;
    }
    size_t r = fread(buf + n, 1, cap - n - 1, f);
    n += r;
    if (r == 0) break;
  }
  int bad = ferror(f);
  fclose(f);
  if (bad) { free(buf); VL_ERROR(VL_EIO, "%s: read error", path); }
  buf[n] = '\0';
  *text = buf;
  *len = n;
  return VL_OK;
}

static int append_text(vl_config *cfg, load_state *st, const char *path, const char *text,
                       size_t len) {
  size_t need = st->text_len + len + strlen(path) + 32;
  if (need > st->text_cap) {
    size_t cap = need * 2;
    char *nt = realloc(cfg->text, cap);
    if (!nt) VL_ERROR(VL_ENOMEM, "config text");
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
                const char *prefix, const char *file) {
  for (yaml_node_pair_t *p = map->data.mapping.pairs.start; p < map->data.mapping.pairs.top; p++) {
    yaml_node_t *kn = yaml_document_get_node(doc, p->key);
    yaml_node_t *vn = yaml_document_get_node(doc, p->value);
    const int line = (int)kn->start_mark.line + 1;
    if (kn->type != YAML_SCALAR_NODE)
      VL_ERROR(VL_EINVAL, "%s:%d: %s: keys must be plain names", file, line, *prefix ? prefix : "(top)");
    char name[256];
    snprintf(name, sizeof name, "%s%s%s", prefix, *prefix ? "." : "", (char *)kn->data.scalar.value);
    for (yaml_node_pair_t *q = map->data.mapping.pairs.start; q < p; q++) {
      yaml_node_t *qk = yaml_document_get_node(doc, q->key);
      if (qk->type == YAML_SCALAR_NODE &&
          !strcmp((char *)qk->data.scalar.value, (char *)kn->data.scalar.value))
        VL_ERROR(VL_EINVAL, "%s:%d: %s: duplicate key (first at line %d)", file, line, name,
                 (int)qk->start_mark.line + 1);
    }
    if (!*prefix && !strcmp(name, "include")) continue; /* handled before the walk */
    int k = find_key(name);
    if (k >= 0) {
      VL_CALL(set_value(cfg, &keys[k], doc, vn, file));
      st->set[k] = 1;
      st->file[k] = file;
      st->line[k] = (int)vn->start_mark.line + 1;
    } else if (is_section(name)) {
      if (vn->type != YAML_MAPPING_NODE)
        VL_ERROR(VL_EINVAL, "%s:%d: %s: expected a mapping of keys", file, line, name);
      VL_CALL(walk(cfg, st, doc, vn, name, file));
    } else {
      return unknown_key(file, line, name);
    }
  }
  return VL_OK;
}

static int load_file(vl_config *cfg, load_state *st, const char *path, const char *text,
                     size_t len) {
  for (int i = 0; i < st->depth; i++)
    if (!strcmp(st->stack[i], path))
      VL_ERROR(VL_EINVAL, "%s:1: include: include cycle (%s includes itself through the chain)",
               path, path);
  if (st->depth >= 8 || st->n_files >= 16)
    VL_ERROR(VL_EINVAL, "%s:1: include: includes nested deeper than 8 files", path);
  char *owned = strdup(path);
  if (!owned) VL_ERROR(VL_ENOMEM, "config");
  st->files[st->n_files++] = owned;
  const char *file = owned;
  st->stack[st->depth++] = file;
  VL_CALL(append_text(cfg, st, file, text, len));

  yaml_parser_t parser;
  yaml_document_t doc;
  if (!yaml_parser_initialize(&parser)) VL_ERROR(VL_ENOMEM, "libyaml parser");
  yaml_parser_set_input_string(&parser, (const unsigned char *)text, len);
  if (!yaml_parser_load(&parser, &doc)) {
    int line = (int)parser.problem_mark.line + 1;
    char problem[256];
    snprintf(problem, sizeof problem, "%s%s%s", parser.problem ? parser.problem : "syntax error",
             parser.context ? " " : "", parser.context ? parser.context : "");
    yaml_parser_delete(&parser);
    VL_ERROR(VL_EINVAL, "%s:%d: (yaml): %s", file, line, problem);
  }
  yaml_parser_delete(&parser);
  int rc = VL_OK;
  yaml_node_t *root = yaml_document_get_root_node(&doc);
  if (!root) goto done; /* empty file */
  if (root->type != YAML_MAPPING_NODE)
    VL_ERROR_GOTO(rc, done, VL_EINVAL, "%s:%d: (top): expected a mapping of sections (model, train, run, include)",
                  file, (int)root->start_mark.line + 1);
  for (yaml_node_pair_t *p = root->data.mapping.pairs.start; p < root->data.mapping.pairs.top; p++) {
    yaml_node_t *kn = yaml_document_get_node(&doc, p->key);
    yaml_node_t *vn = yaml_document_get_node(&doc, p->value);
    if (kn->type != YAML_SCALAR_NODE || strcmp((char *)kn->data.scalar.value, "include")) continue;
    int line = (int)vn->start_mark.line + 1;
    if (vn->type != YAML_SCALAR_NODE)
      VL_ERROR_GOTO(rc, done, VL_EINVAL, "%s:%d: include: expected a file name", file, line);
    char inc[VL_PATH_MAX + 512];
    const char *name = (const char *)vn->data.scalar.value;
    if (resolve_include(inc, sizeof inc, file, name))
      VL_ERROR_GOTO(rc, done, VL_EINVAL, "%s:%d: include: cannot find '%s' (looked next to %s and in %s)",
                    file, line, name, file, VL_INPUTS_DIR);
    char *itext;
    size_t ilen;
    VL_CALL_GOTO(rc, done, read_whole(inc, &itext, &ilen));
    rc = load_file(cfg, st, inc, itext, ilen);
    free(itext);
    if (rc) goto done;
  }
  rc = walk(cfg, st, &doc, root, "", file);
done:
  yaml_document_delete(&doc);
  st->depth--;
  return rc;
}

static int check(const vl_config *c, const load_state *st) {
  for (int i = 0; i < N_KEYS; i++)
    if (keys[i].required && !st->set[i])
      VL_ERROR(VL_EINVAL, "%s:1: %s: required key missing", c->source, keys[i].name);
#define WHERE(key) st->file[find_key(key)], st->line[find_key(key)], key
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
  if (c->model.family == VL_FAMILY_QWEN2_VL &&
      (v->num_position_embeddings || v->n_deepstack))
    VL_ERROR(VL_EINVAL, "%s:%d: %s: qwen2-vl has no learned position grid and no DeepStack",
             WHERE("model.family"));
#undef WHERE
  return VL_OK;
}

static int load_common(vl_config *cfg, const char *name, const char *text, size_t len) {
  memset(cfg, 0, sizeof *cfg);
  snprintf(cfg->source, sizeof cfg->source, "%s", name);
  load_state st;
  memset(&st, 0, sizeof st);
  int rc = VL_OK;
  /* defaults, through the same parser */
  for (int i = 0; i < N_KEYS && rc == VL_OK; i++) {
    if (!keys[i].def) continue;
    yaml_parser_t p;
    yaml_document_t d;
    yaml_parser_initialize(&p);
    yaml_parser_set_input_string(&p, (const unsigned char *)keys[i].def, strlen(keys[i].def));
    if (yaml_parser_load(&p, &d)) {
      yaml_node_t *nd = yaml_document_get_root_node(&d);
      if (nd) rc = set_value(cfg, &keys[i], &d, nd, "(default)");
      yaml_document_delete(&d);
    }
    yaml_parser_delete(&p);
  }
  if (rc == VL_OK) rc = load_file(cfg, &st, name, text, len);
  if (rc == VL_OK) rc = check(cfg, &st);
  for (int i = 0; i < st.n_files; i++) free(st.files[i]);
  if (rc != VL_OK) {
    free(cfg->text);
    cfg->text = NULL;
    return vl_err_trace(rc, __FILE__, __LINE__, __func__);
  }
  return VL_OK;
}

int vl_config_load(vl_config *cfg, const char *path) {
  char *text;
  size_t len;
  memset(cfg, 0, sizeof *cfg);
  VL_CALL(read_whole(path, &text, &len));
  int rc = load_common(cfg, path, text, len);
  free(text);
  return rc;
}

int vl_config_load_string(vl_config *cfg, const char *yaml, const char *name) {
  return load_common(cfg, name, yaml, strlen(yaml));
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
