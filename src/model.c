/* model: the parameter table and its layout (see model.h). */
#include "model.h"

#include <fnmatch.h>
#include <stddef.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "err.h"

typedef struct {
  vl_model *m;
  int cap;
} table_builder;

/* Appends one parameter; returns its index (or -1 after recording an error). */
static int add_param(table_builder *tb, vl_param_group group, int no_decay,
                     int is_norm, int ndim, const int64_t *shape,
                     const char *fmt, ...) __attribute__((format(printf, 7, 8)));
static int add_param(table_builder *tb, vl_param_group group, int no_decay,
                     int is_norm, int ndim, const int64_t *shape,
                     const char *fmt, ...) {
  vl_model *m = tb->m;
  if (m->n_params == tb->cap) {
    int cap = tb->cap ? 2 * tb->cap : 256;
    vl_param *p = realloc(m->params, (size_t)cap * sizeof *p);
    if (!p) return -1;
    m->params = p;
    tb->cap = cap;
  }
  vl_param *p = &m->params[m->n_params];
  memset(p, 0, sizeof *p);
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(p->name, sizeof p->name, fmt, ap);
  va_end(ap);
  p->ndim = ndim;
  p->numel = 1;
  for (int d = 0; d < ndim; d++) {
    p->shape[d] = shape[d];
    p->numel *= (size_t)shape[d];
  }
  p->offset = m->n_elements;
  p->group = group;
  p->no_decay = no_decay;
  p->is_norm_weight = is_norm;
  m->n_elements += p->numel;
  m->group_elements[group] += p->numel;
  return m->n_params++;
}

#define SHAPE(...) ((const int64_t[]){__VA_ARGS__})
#define NDIM(...) ((int)(sizeof((int64_t[]){__VA_ARGS__}) / sizeof(int64_t)))
/* weight (rows, cols) */
#define W2(tb, g, rows, cols, ...) \
  add_param(tb, g, 0, 0, 2, SHAPE(rows, cols), __VA_ARGS__)
#define BIAS(tb, g, n, ...) add_param(tb, g, 1, 0, 1, SHAPE(n), __VA_ARGS__)
#define NORM(tb, g, n, ...) add_param(tb, g, 1, 1, 1, SHAPE(n), __VA_ARGS__)

/* The same merger in both families, under different names: Qwen3-VL
 * norm / linear_fc1 / linear_fc2, Qwen2-VL's PatchMerger ln_q / mlp.0 / mlp.2
 * (an nn.Sequential of Linear, GELU, Linear). */
static void build_merger(table_builder *tb, vl_merger_params *mp,
                         const vl_model_config *c, int postshuffle,
                         const char *prefix) {
  const vl_vision_config *v = &c->vision;
  const int q2 = c->family == VL_FAMILY_QWEN2_VL;
  const char *norm = q2 ? "ln_q" : "norm", *fc1 = q2 ? "mlp.0" : "linear_fc1";
  const char *fc2 = q2 ? "mlp.2" : "linear_fc2";
  int64_t merged = (int64_t)v->hidden_size * v->spatial_merge_size * v->spatial_merge_size;
  int64_t norm_dim = postshuffle ? merged : v->hidden_size;
  mp->postshuffle = postshuffle;
  mp->norm_w = NORM(tb, VL_GROUP_MERGER, norm_dim, "%s.%s.weight", prefix, norm);
  mp->norm_b = BIAS(tb, VL_GROUP_MERGER, norm_dim, "%s.%s.bias", prefix, norm);
  mp->fc1_w = W2(tb, VL_GROUP_MERGER, merged, merged, "%s.%s.weight", prefix, fc1);
  mp->fc1_b = BIAS(tb, VL_GROUP_MERGER, merged, "%s.%s.bias", prefix, fc1);
  mp->fc2_w = W2(tb, VL_GROUP_MERGER, v->out_hidden_size, merged, "%s.%s.weight", prefix, fc2);
  mp->fc2_b = BIAS(tb, VL_GROUP_MERGER, v->out_hidden_size, "%s.%s.bias", prefix, fc2);
}

static void build_vision(table_builder *tb, const vl_model_config *c) {
  vl_model *m = tb->m;
  const vl_vision_config *v = &c->vision;
  const int64_t vh = v->hidden_size, vi = v->intermediate_size;
  /* Qwen2-VL: Conv3d without bias, VisionMlp fc1/fc2; Qwen3-VL: with bias,
   * linear_fc1/linear_fc2. */
  const int q2 = c->family == VL_FAMILY_QWEN2_VL;
  const char *fc1 = q2 ? "fc1" : "linear_fc1", *fc2 = q2 ? "fc2" : "linear_fc2";
  m->patch_embed_w = add_param(tb, VL_GROUP_VISION, 0, 0, 5,
      SHAPE(vh, v->in_channels, v->temporal_patch_size, v->patch_size, v->patch_size),
      "model.visual.patch_embed.proj.weight");
  m->patch_embed_b = -1;
  if (!q2) m->patch_embed_b = BIAS(tb, VL_GROUP_VISION, vh, "model.visual.patch_embed.proj.bias");
  m->pos_embed = -1;
  if (v->num_position_embeddings > 0)
    m->pos_embed = add_param(tb, VL_GROUP_VISION, 1, 0, 2,
                             SHAPE(v->num_position_embeddings, vh),
                             "model.visual.pos_embed.weight");
  for (int l = 0; l < v->depth; l++) {
    vl_vision_block_params *b = &m->vblocks[l];
    const char *pre = "model.visual.blocks";
    b->norm1_w = NORM(tb, VL_GROUP_VISION, vh, "%s.%d.norm1.weight", pre, l);
    b->norm1_b = BIAS(tb, VL_GROUP_VISION, vh, "%s.%d.norm1.bias", pre, l);
    b->qkv_w = W2(tb, VL_GROUP_VISION, 3 * vh, vh, "%s.%d.attn.qkv.weight", pre, l);
    b->qkv_b = BIAS(tb, VL_GROUP_VISION, 3 * vh, "%s.%d.attn.qkv.bias", pre, l);
    b->proj_w = W2(tb, VL_GROUP_VISION, vh, vh, "%s.%d.attn.proj.weight", pre, l);
    b->proj_b = BIAS(tb, VL_GROUP_VISION, vh, "%s.%d.attn.proj.bias", pre, l);
    b->norm2_w = NORM(tb, VL_GROUP_VISION, vh, "%s.%d.norm2.weight", pre, l);
    b->norm2_b = BIAS(tb, VL_GROUP_VISION, vh, "%s.%d.norm2.bias", pre, l);
    b->fc1_w = W2(tb, VL_GROUP_VISION, vi, vh, "%s.%d.mlp.%s.weight", pre, l, fc1);
    b->fc1_b = BIAS(tb, VL_GROUP_VISION, vi, "%s.%d.mlp.%s.bias", pre, l, fc1);
    b->fc2_w = W2(tb, VL_GROUP_VISION, vh, vi, "%s.%d.mlp.%s.weight", pre, l, fc2);
    b->fc2_b = BIAS(tb, VL_GROUP_VISION, vh, "%s.%d.mlp.%s.bias", pre, l, fc2);
  }
  build_merger(tb, &m->merger, c, 0, "model.visual.merger");
  for (int k = 0; k < v->n_deepstack; k++) {
    char prefix[64];
    snprintf(prefix, sizeof prefix, "model.visual.deepstack_merger_list.%d", k);
    build_merger(tb, &m->deepstack[k], c, 1, prefix);
  }
}

static void build_text(table_builder *tb, const vl_model_config *c) {
  vl_model *m = tb->m;
  const vl_text_config *t = &c->text;
  const int64_t h = t->hidden_size, it = t->intermediate_size;
  const int64_t qd = (int64_t)t->num_attention_heads * t->head_dim;
  const int64_t kvd = (int64_t)t->num_key_value_heads * t->head_dim;
  const char *pre = "model.language_model";
  m->embed_tokens = add_param(tb, VL_GROUP_EMBED, 1, 0, 2, SHAPE(t->vocab_size, h),
                              "%s.embed_tokens.weight", pre);
  for (int l = 0; l < t->num_hidden_layers; l++) {
    vl_text_layer_params *L = &m->layers[l];
    L->input_norm_w = NORM(tb, VL_GROUP_LLM, h, "%s.layers.%d.input_layernorm.weight", pre, l);
    /* q, k, v weights adjacent: one GEMM with W (qd + 2 kvd, h) */
    L->q_w = W2(tb, VL_GROUP_LLM, qd, h, "%s.layers.%d.self_attn.q_proj.weight", pre, l);
    L->k_w = W2(tb, VL_GROUP_LLM, kvd, h, "%s.layers.%d.self_attn.k_proj.weight", pre, l);
    L->v_w = W2(tb, VL_GROUP_LLM, kvd, h, "%s.layers.%d.self_attn.v_proj.weight", pre, l);
    L->q_b = L->k_b = L->v_b = -1;
    if (t->attention_bias) {
      L->q_b = BIAS(tb, VL_GROUP_LLM, qd, "%s.layers.%d.self_attn.q_proj.bias", pre, l);
      L->k_b = BIAS(tb, VL_GROUP_LLM, kvd, "%s.layers.%d.self_attn.k_proj.bias", pre, l);
      L->v_b = BIAS(tb, VL_GROUP_LLM, kvd, "%s.layers.%d.self_attn.v_proj.bias", pre, l);
    }
    L->q_norm_w = L->k_norm_w = -1;
    if (c->family == VL_FAMILY_QWEN3_VL) {
      L->q_norm_w = NORM(tb, VL_GROUP_LLM, t->head_dim, "%s.layers.%d.self_attn.q_norm.weight", pre, l);
      L->k_norm_w = NORM(tb, VL_GROUP_LLM, t->head_dim, "%s.layers.%d.self_attn.k_norm.weight", pre, l);
    }
    L->o_w = W2(tb, VL_GROUP_LLM, h, qd, "%s.layers.%d.self_attn.o_proj.weight", pre, l);
    L->o_b = -1;
    if (t->attention_bias && c->family == VL_FAMILY_QWEN3_VL)
      L->o_b = BIAS(tb, VL_GROUP_LLM, h, "%s.layers.%d.self_attn.o_proj.bias", pre, l);
    L->post_norm_w = NORM(tb, VL_GROUP_LLM, h, "%s.layers.%d.post_attention_layernorm.weight", pre, l);
    /* gate, up adjacent: one GEMM with W (2 it, h) */
    L->gate_w = W2(tb, VL_GROUP_LLM, it, h, "%s.layers.%d.mlp.gate_proj.weight", pre, l);
    L->up_w = W2(tb, VL_GROUP_LLM, it, h, "%s.layers.%d.mlp.up_proj.weight", pre, l);
    L->down_w = W2(tb, VL_GROUP_LLM, h, it, "%s.layers.%d.mlp.down_proj.weight", pre, l);
  }
  m->final_norm_w = NORM(tb, VL_GROUP_LLM, h, "%s.norm.weight", pre);
  if (t->tie_word_embeddings)
    m->lm_head = m->embed_tokens;
  else
    m->lm_head = add_param(tb, VL_GROUP_LM_HEAD, 0, 0, 2, SHAPE(t->vocab_size, h),
                           "lm_head.weight");
}

int vl_model_build(vl_model *m, const vl_model_config *cfg) {
  memset(m, 0, sizeof *m);
  m->cfg = *cfg;
  if (cfg->family != VL_FAMILY_QWEN3_VL && cfg->family != VL_FAMILY_QWEN2_VL)
    VL_ERROR(VL_ENOTSUP, "model family %d is not known", (int)cfg->family);
  VL_CALL(vl_calloc((void **)&m->vblocks, (size_t)cfg->vision.depth + 1,
                    sizeof *m->vblocks, "vision block table"));
  VL_CALL(vl_calloc((void **)&m->deepstack, (size_t)cfg->vision.n_deepstack + 1,
                    sizeof *m->deepstack, "deepstack table"));
  VL_CALL(vl_calloc((void **)&m->layers, (size_t)cfg->text.num_hidden_layers + 1,
                    sizeof *m->layers, "layer table"));
  table_builder tb = {m, 0};
  build_vision(&tb, cfg);
  build_text(&tb, cfg);
  for (int i = 0; i < m->n_params; i++)
    if (m->params[i].numel == 0)
      VL_ERROR(VL_EINVAL, "parameter %s has an empty shape", m->params[i].name);
  if (!m->params)
    VL_ERROR(VL_ENOMEM, "cannot allocate the parameter table");
  return VL_OK;
}

void vl_model_free(vl_model *m) {
  free(m->params);
  free(m->vblocks);
  free(m->deepstack);
  free(m->layers);
  memset(m, 0, sizeof *m);
}

/* For each comma- or space-separated fnmatch pattern of `key`, sets the
 * flag at byte `flag` of every matching parameter to `value`; *changed
 * counts the elements whose flag changed.  A pattern matching nothing is an
 * error (example: a name that would match). */
static int apply_patterns(vl_model *m, const char *patterns, const char *key, const char *example, size_t flag,
                          int value, size_t *changed) {
  char buf[512];
  snprintf(buf, sizeof buf, "%s", patterns ? patterns : "");
  *changed = 0;
  for (char *save = NULL, *pat = strtok_r(buf, ", ", &save); pat; pat = strtok_r(NULL, ", ", &save)) {
    int hits = 0;
    for (int i = 0; i < m->n_params; i++)
      if (fnmatch(pat, m->params[i].name, 0) == 0) {
        int *f = (int *)((char *)&m->params[i] + flag);
        if (*f != value) *changed += m->params[i].numel;
        *f = value;
        hits++;
      }
    if (!hits)
      VL_ERROR(VL_EINVAL, "%s: pattern '%s' matches no parameter (names are Hugging Face's, e.g. %s)", key, pat,
               example);
  }
  return VL_OK;
}

int vl_model_freeze(vl_model *m, const char *patterns, size_t *frozen_elements) {
  return apply_patterns(m, patterns, "train.freeze", "model.visual.*", offsetof(vl_param, frozen), 1,
                        frozen_elements);
}

int vl_model_decay_also(vl_model *m, const char *patterns, size_t *elements) {
  return apply_patterns(m, patterns, "train.decay_also", "*norm*", offsetof(vl_param, no_decay), 0, elements);
}

int vl_model_find(const vl_model *m, const char *name) {
  for (int i = 0; i < m->n_params; i++)
    if (strcmp(m->params[i].name, name) == 0) return i;
  return -1;
}

const char *vl_group_name(vl_param_group g) {
  static const char *names[VL_GROUP_COUNT] = {"vision tower", "vision mergers",
                                              "token embedding", "language model",
                                              "lm_head"};
  return (g >= 0 && g < VL_GROUP_COUNT) ? names[g] : "?";
}

int vl_model_q_dim(const vl_model *m) {
  return m->cfg.text.num_attention_heads * m->cfg.text.head_dim;
}
int vl_model_kv_dim(const vl_model *m) {
  return m->cfg.text.num_key_value_heads * m->cfg.text.head_dim;
}
int vl_model_patch_dim(const vl_model *m) {
  const vl_vision_config *v = &m->cfg.vision;
  return v->in_channels * v->temporal_patch_size * v->patch_size * v->patch_size;
}

const char *vl_fmt_count(char *buf, size_t n_buf, size_t n) {
  char digits[32];
  int len = snprintf(digits, sizeof digits, "%zu", n);
  size_t o = 0;
  for (int i = 0; i < len && o + 1 < n_buf; i++) {
    buf[o++] = digits[i];
    int left = len - 1 - i;
    if (left > 0 && left % 3 == 0 && o + 1 < n_buf) buf[o++] = ',';
  }
  buf[o] = '\0';
  return buf;
}

void vl_model_print_summary(const vl_model *m) {
  char b[40];
  const vl_model_config *c = &m->cfg;
  printf("model: %s, %d tensors\n",
         c->family == VL_FAMILY_QWEN3_VL ? "qwen3-vl" : "qwen2-vl", m->n_params);
  printf("  vision: depth %d, hidden %d, heads %d, patch %d, merge %d, deepstack %d\n",
         c->vision.depth, c->vision.hidden_size, c->vision.num_heads,
         c->vision.patch_size, c->vision.spatial_merge_size, c->vision.n_deepstack);
  printf("  text:   %d layers, hidden %d, heads %d/%d x %d, vocab %d%s\n",
         c->text.num_hidden_layers, c->text.hidden_size, c->text.num_attention_heads,
         c->text.num_key_value_heads, c->text.head_dim, c->text.vocab_size,
         c->text.tie_word_embeddings ? ", tied lm_head" : "");
  for (int g = 0; g < VL_GROUP_COUNT; g++)
    if (m->group_elements[g])
      printf("  %-16s %18s parameters\n", vl_group_name((vl_param_group)g),
             vl_fmt_count(b, sizeof b, m->group_elements[g]));
  printf("  %-16s %18s parameters\n", "total", vl_fmt_count(b, sizeof b, m->n_elements));
}
