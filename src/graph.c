/* graph: allocation of parameters, gradients and activations; batch upload;
 * the memory plan.  The passes are in forward.c and backward.c. */
#include "graph.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "err.h"

/* One routine both sizes and allocates, so the plan is what is allocated:
 * with g->ops == NULL it only adds up bytes. */
typedef struct {
  vl_graph *g;
  size_t elem;   /* bytes of one vl_t */
  size_t bytes;  /* running total */
} sizer;

static int take(sizer *s, void *ptr_out, size_t bytes, const char *what) {
  void **p = (void **)ptr_out;
  bytes = (bytes + 255) & ~(size_t)255;
  s->bytes += bytes;
  if (!s->g->ops) {
    *p = NULL;
    return VL_OK;
  }
  VL_CALL(s->g->ops->alloc(s->g->ops, p, bytes, what));
  return VL_OK;
}

static size_t max_sz(size_t a, size_t b) { return a > b ? a : b; }

static int layer_acts(sizer *s, vl_layer_acts *A, size_t rows, size_t C, size_t W,
                      size_t att_w, size_t fc1_w, size_t act_w, int heads, int qk_heads,
                      int layernorm, size_t el) {
  VL_CALL(take(s, &A->ln1, rows * C * el, "ln1"));
  VL_CALL(take(s, &A->qkv, rows * W * el, "qkv"));
  VL_CALL(take(s, &A->qkv_r, rows * W * el, "qkv after rope"));
  VL_CALL(take(s, &A->att, rows * att_w * el, "attention output"));
  VL_CALL(take(s, &A->x_mid, rows * C * el, "residual after attention"));
  VL_CALL(take(s, &A->ln2, rows * C * el, "ln2"));
  VL_CALL(take(s, &A->fc1, rows * fc1_w * el, "mlp input projection"));
  VL_CALL(take(s, &A->act, rows * act_w * el, "mlp activation"));
  VL_CALL(take(s, &A->x_out, rows * C * el, "residual after mlp"));
  VL_CALL(take(s, &A->ln1_rstd, rows * sizeof(float), "ln1 rstd"));
  VL_CALL(take(s, &A->ln2_rstd, rows * sizeof(float), "ln2 rstd"));
  if (layernorm) {
    VL_CALL(take(s, &A->ln1_mean, rows * sizeof(float), "ln1 mean"));
    VL_CALL(take(s, &A->ln2_mean, rows * sizeof(float), "ln2 mean"));
  }
  if (qk_heads) VL_CALL(take(s, &A->qk_rstd, rows * (size_t)qk_heads * sizeof(float), "q/k rstd"));
  VL_CALL(take(s, &A->lse, rows * (size_t)heads * sizeof(float), "attention lse"));
  return VL_OK;
}

static int merger_acts(sizer *s, vl_merger_acts *A, size_t Pm, size_t Vh4, size_t out,
                       int postshuffle, size_t el) {
  size_t norm_rows = postshuffle ? Pm : Pm * 4;
  VL_CALL(take(s, &A->ln, Pm * Vh4 * el, "merger norm"));
  VL_CALL(take(s, &A->mean, norm_rows * sizeof(float), "merger mean"));
  VL_CALL(take(s, &A->rstd, norm_rows * sizeof(float), "merger rstd"));
  VL_CALL(take(s, &A->fc1, Pm * Vh4 * el, "merger fc1"));
  VL_CALL(take(s, &A->act, Pm * Vh4 * el, "merger act"));
  VL_CALL(take(s, &A->out, Pm * out * el, "merger out"));
  return VL_OK;
}

/* Everything that depends on max_T / max_P. */
static int size_or_alloc(sizer *s, int want_logits) {
  vl_graph *g = s->g;
  const vl_model *m = g->m;
  const vl_model_config *c = &m->cfg;
  const size_t el = s->elem;
  const size_t T = (size_t)g->max_T, P = (size_t)g->max_P;
  const size_t u = (size_t)c->vision.spatial_merge_size * c->vision.spatial_merge_size;
  const size_t Pm = P / u;
  const size_t H = c->text.hidden_size, I = c->text.intermediate_size;
  const size_t qd = vl_model_q_dim(m), kvd = vl_model_kv_dim(m), W = qd + 2 * kvd;
  const size_t Vh = c->vision.hidden_size, Vi = c->vision.intermediate_size;
  const size_t Vh4 = Vh * u, hd = c->text.head_dim, vhd = Vh / c->vision.num_heads;
  const int nh = c->text.num_attention_heads, nkv = c->text.num_key_value_heads;
  const int nds = c->vision.n_deepstack;

  /* batch inputs */
  VL_CALL(take(s, &g->ids, T * sizeof(int32_t), "token ids"));
  VL_CALL(take(s, &g->targets, T * sizeof(int32_t), "targets"));
  VL_CALL(take(s, &g->seq, (T + 1) * sizeof(int32_t), "sequence offsets"));
  VL_CALL(take(s, &g->rope_cos, T * hd * sizeof(float), "rope cos"));
  VL_CALL(take(s, &g->rope_sin, T * hd * sizeof(float), "rope sin"));
  VL_CALL(take(s, &g->visual_pos, (Pm + 1) * sizeof(int32_t), "visual positions"));
  VL_CALL(take(s, &g->vseg, (P + 1) * sizeof(int32_t), "vision segments"));
  VL_CALL(take(s, &g->pos_idx, P * 4 * sizeof(int32_t), "pos-embed indices"));
  VL_CALL(take(s, &g->pos_w, P * 4 * sizeof(float), "pos-embed weights"));
  VL_CALL(take(s, &g->vrope_cos, P * vhd * sizeof(float), "vision rope cos"));
  VL_CALL(take(s, &g->vrope_sin, P * vhd * sizeof(float), "vision rope sin"));
  VL_CALL(take(s, &g->pixels, P * (size_t)vl_model_patch_dim(m) * el, "pixels"));

  /* vision activations (recompute: one shared set + every layer's output) */
  VL_CALL(take(s, &g->vx0, P * Vh * el, "patch embeddings"));
  if ((g->recompute || g->vision_shared) && c->vision.depth > 0)
    VL_CALL(layer_acts(s, &g->vwork, P, Vh, 3 * Vh, Vh, Vi, Vi, c->vision.num_heads, 0, 1, el));
  for (int l = 0; l < c->vision.depth; l++) {
    if (g->vision_shared) { /* no backward: x_out shared too (layer l reads it first) */
      g->vlayers[l] = g->vwork;
      continue;
    }
    if (!g->recompute) {
      VL_CALL(layer_acts(s, &g->vlayers[l], P, Vh, 3 * Vh, Vh, Vi, Vi,
                         c->vision.num_heads, 0, 1, el));
      continue;
    }
    g->vlayers[l] = g->vwork;
    VL_CALL(take(s, &g->vlayers[l].x_out, P * Vh * el, "vision layer output"));
  }
  VL_CALL(merger_acts(s, &g->merger, Pm, Vh4, H, 0, el));
  for (int k = 0; k < nds; k++) VL_CALL(merger_acts(s, &g->ds[k], Pm, Vh4, H, 1, el));

  /* LLM activations */
  VL_CALL(take(s, &g->x0, T * H * el, "embeddings"));
  int qk_any = 0;
  for (int l = 0; l < c->text.num_hidden_layers; l++) qk_any |= m->layers[l].q_norm_w >= 0;
  if (g->recompute && c->text.num_hidden_layers > 0)
    VL_CALL(layer_acts(s, &g->twork, T, H, W, qd, 2 * I, I, nh, qk_any ? nh + nkv : 0, 0, el));
  for (int l = 0; l < c->text.num_hidden_layers; l++) {
    if (!g->recompute) {
      VL_CALL(layer_acts(s, &g->layers[l], T, H, W, qd, 2 * I, I, nh,
                         m->layers[l].q_norm_w >= 0 ? nh + nkv : 0, 0, el));
      continue;
    }
    g->layers[l] = g->twork;
    if (m->layers[l].q_norm_w < 0) g->layers[l].qk_rstd = NULL;
    VL_CALL(take(s, &g->layers[l].x_out, T * H * el, "layer output"));
  }
  VL_CALL(take(s, &g->xf, T * H * el, "final norm"));
  VL_CALL(take(s, &g->xf_rstd, T * sizeof(float), "final norm rstd"));
  VL_CALL(take(s, &g->loss, T * sizeof(float), "per-token loss"));
  g->logits = NULL;
  if (want_logits)
    VL_CALL(take(s, &g->logits, T * (size_t)c->text.vocab_size * sizeof(float), "logits"));

  /* gradient scratch: the widest intermediate of either tower */
  size_t wide = 0;
  wide = max_sz(wide, T * max_sz(max_sz(W, 2 * I), max_sz(qd, H)));
  wide = max_sz(wide, P * max_sz(3 * Vh, Vi));
  wide = max_sz(wide, Pm * Vh4);
  VL_CALL(take(s, &g->d_xf, T * H * el, "d final norm"));
  VL_CALL(take(s, &g->dres, max_sz(T * H, P * Vh) * el, "d residual"));
  VL_CALL(take(s, &g->d_a, wide * el, "gradient scratch a"));
  VL_CALL(take(s, &g->d_b, wide * el, "gradient scratch b"));
  VL_CALL(take(s, &g->d_c, wide * el, "gradient scratch c"));
  VL_CALL(take(s, &g->d_visual, (Pm + 1) * H * el, "d visual tokens"));
  VL_CALL(take(s, &g->d_ds, ((size_t)nds * Pm + 1) * H * el, "d deepstack"));
  return VL_OK;
}

static int alloc_tables(vl_graph *g) {
  const vl_model_config *c = &g->m->cfg;
  VL_CALL(vl_calloc((void **)&g->vlayers, (size_t)c->vision.depth + 1, sizeof *g->vlayers, "vision acts"));
  VL_CALL(vl_calloc((void **)&g->layers, (size_t)c->text.num_hidden_layers + 1, sizeof *g->layers, "layer acts"));
  VL_CALL(vl_calloc((void **)&g->ds, (size_t)c->vision.n_deepstack + 1, sizeof *g->ds, "deepstack acts"));
  VL_CALL(vl_calloc((void **)&g->seq_host, (size_t)g->max_T + 2, sizeof(int32_t), "offsets"));
  VL_CALL(vl_calloc((void **)&g->vseg_host, (size_t)g->max_P + 2, sizeof(int32_t), "offsets"));
  return VL_OK;
}

int vl_graph_vision_frozen(const vl_model *m) {
  for (int i = 0; i < m->n_params; i++) {
    const vl_param *p = &m->params[i];
    if ((p->group == VL_GROUP_VISION || p->group == VL_GROUP_MERGER) && !p->frozen) return 0;
  }
  return 1;
}

static size_t activation_bytes(const vl_model *m, int max_T, int max_P, size_t elem_size,
                               int recompute, int vision_shared) {
  vl_graph g;
  memset(&g, 0, sizeof g);
  g.m = m;
  g.recompute = recompute;
  g.vision_shared = vision_shared;
  g.max_T = max_T;
  g.max_P = max_P;
  if (alloc_tables(&g) != VL_OK) return 0;
  sizer s = {&g, elem_size, 0};
  size_or_alloc(&s, 0);
  free(g.vlayers); free(g.layers); free(g.ds); free(g.seq_host); free(g.vseg_host);
  return s.bytes;
}

size_t vl_graph_activation_bytes(const vl_model *m, int max_T, int max_P, size_t elem_size,
                                 int recompute) {
  return activation_bytes(m, max_T, max_P, elem_size, recompute, vl_graph_vision_frozen(m));
}

int vl_graph_create(vl_graph *g, const vl_model *m, vl_ops *ops, int max_T, int max_P,
                    int want_logits) {
  return vl_graph_create_padded(g, m, ops, max_T, max_P, want_logits, m->n_elements);
}

int vl_graph_create_padded(vl_graph *g, const vl_model *m, vl_ops *ops, int max_T, int max_P,
                           int want_logits, size_t n_alloc) {
  return vl_graph_create_opts(g, m, ops, max_T, max_P, want_logits, n_alloc, 0);
}

int vl_graph_create_opts(vl_graph *g, const vl_model *m, vl_ops *ops, int max_T, int max_P,
                         int want_logits, size_t n_alloc, int recompute) {
  memset(g, 0, sizeof *g);
  g->recompute = recompute != 0;
  g->vision_shared = vl_graph_vision_frozen(m);
  if (n_alloc < m->n_elements) n_alloc = m->n_elements;
  g->n_alloc = n_alloc;
  g->m = m;
  g->ops = ops;
  g->max_T = max_T;
  g->max_P = max_P;
  VL_CALL(alloc_tables(g));
  size_t pbytes = n_alloc * ops->elem_size;
  VL_CALL(ops->alloc(ops, (void **)&g->params, pbytes, "parameters"));
  VL_CALL(ops->alloc(ops, (void **)&g->grads, pbytes, "gradients"));
  VL_CALL(ops->zero(ops, g->params, pbytes));
  VL_CALL(ops->zero(ops, g->grads, pbytes));
  sizer s = {g, ops->elem_size, 0};
  VL_CALL(size_or_alloc(&s, want_logits));
  /* VL_PROFILE=1: synchronised phase clocks; 2 is the per-op profile (opsprof.h, no syncs) */
  g->profile = getenv("VL_PROFILE") && atoi(getenv("VL_PROFILE")) == 1;
  g->activation_bytes = s.bytes;
  return VL_OK;
}

static void free_all(vl_graph *g, void **first, void **last) {
  for (void **p = first; p <= last; p++)
    if (*p) g->ops->free(g->ops, *p);
}

void vl_graph_destroy(vl_graph *g) {
  if (!g->ops) return;
  vl_ops *o = g->ops;
  void *singles[] = {g->params, g->grads, g->ids, g->targets, g->seq, g->rope_cos,
                     g->rope_sin, g->visual_pos, g->vseg, g->pos_idx, g->pos_w,
                     g->vrope_cos, g->vrope_sin, g->pixels, g->vx0, g->x0, g->xf,
                     g->xf_rstd, g->loss, g->logits, g->d_xf, g->dres, g->d_a,
                     g->d_b, g->d_c, g->d_visual, g->d_ds};
  for (size_t i = 0; i < sizeof singles / sizeof *singles; i++)
    if (singles[i]) o->free(o, singles[i]);
  const vl_model_config *c = &g->m->cfg;
  /* the shared sets once, then what each layer owns */
  free_all(g, (void **)&g->vwork.ln1, (void **)&g->vwork.lse);
  free_all(g, (void **)&g->twork.ln1, (void **)&g->twork.lse);
  for (int l = 0; g->vlayers && l < c->vision.depth; l++) {
    if (g->vision_shared) continue;
    if (g->recompute) {
      if (g->vlayers[l].x_out) o->free(o, g->vlayers[l].x_out);
    } else {
      free_all(g, (void **)&g->vlayers[l].ln1, (void **)&g->vlayers[l].lse);
    }
  }
  for (int l = 0; g->layers && l < c->text.num_hidden_layers; l++) {
    if (g->recompute) {
      if (g->layers[l].x_out) o->free(o, g->layers[l].x_out);
    } else {
      free_all(g, (void **)&g->layers[l].ln1, (void **)&g->layers[l].lse);
    }
  }
  if (g->ds || g->merger.ln) {
    free_all(g, (void **)&g->merger.ln, (void **)&g->merger.rstd);
    for (int k = 0; g->ds && k < c->vision.n_deepstack; k++)
      free_all(g, (void **)&g->ds[k].ln, (void **)&g->ds[k].rstd);
  }
  if (g->stage[0] || g->stage[1]) o->sync(o); /* no upload still reads them */
  for (int k = 0; k < 2; k++)
    if (g->stage[k]) o->host_free(o, g->stage[k]);
  free(g->vlayers); free(g->layers); free(g->ds); free(g->seq_host); free(g->vseg_host);
  memset(g, 0, sizeof *g);
}

/* Bytes of staging for batch b: every array, 256-byte aligned. */
static size_t stage_need(const vl_graph *g, const vl_batch *b) {
  const vl_model_config *c = &g->m->cfg;
  const size_t T = (size_t)b->T, P = (size_t)b->P, hd = (size_t)c->text.head_dim;
  const size_t vhd = (size_t)c->vision.hidden_size / c->vision.num_heads;
  const size_t sz[] = {T * 4, T * 4, ((size_t)b->n_seq + 1) * 4, T * hd * 4, T * hd * 4,
                       (size_t)b->n_visual * 4, ((size_t)b->n_vseg + 1) * 4, P * vhd * 4, P * vhd * 4,
                       P * 16, P * 16, P * (size_t)b->patch_dim * 4};
  size_t n = 0;
  for (size_t i = 0; i < sizeof sz / sizeof *sz; i++) n += (sz[i] + 255) & ~(size_t)255;
  return n;
}

/* dst = a copy of src's n bytes at *at in the staging (NULL when src is) */
static void *stage_copy(char *base, size_t *at, const void *src, size_t n) {
  if (!src) return NULL;
  void *d = base + *at;
  if (n) memcpy(d, src, n);
  *at += (n + 255) & ~(size_t)255;
  return d;
}

int vl_graph_stage_batch(vl_graph *g, const vl_batch *b) {
  vl_ops *o = g->ops;
  const vl_model_config *c = &g->m->cfg;
  if (b->T > g->max_T || b->P > g->max_P)
    VL_ERROR(VL_EINVAL, "batch of %d tokens and %d patches exceeds the allocation "
             "(%d tokens, %d patches: raise train.max_seq_len / train.max_vision_patches)",
             b->T, b->P, g->max_T, g->max_P);
  const int k = g->stage_next;
  VL_CALL(o->fence_wait(o, k)); /* its previous upload is done */
  const size_t need = stage_need(g, b);
  if (need > g->stage_bytes[k]) {
    if (g->stage[k]) VL_CALL(o->host_free(o, g->stage[k]));
    g->stage[k] = NULL;
    g->stage_bytes[k] = 0;
    VL_CALL(o->host_alloc(o, &g->stage[k], need, "batch staging"));
    g->stage_bytes[k] = need;
  }
  const size_t T = (size_t)b->T, P = (size_t)b->P, hd = (size_t)c->text.head_dim;
  const size_t vhd = (size_t)c->vision.hidden_size / c->vision.num_heads;
  char *base = g->stage[k];
  size_t at = 0;
  vl_batch *s = &g->staged[k];
  *s = *b;
  s->positions = NULL; /* not uploaded */
  s->ids = stage_copy(base, &at, b->ids, T * 4);
  s->targets = stage_copy(base, &at, b->targets, T * 4);
  s->seq_offsets = stage_copy(base, &at, b->seq_offsets, ((size_t)b->n_seq + 1) * 4);
  s->rope_cos = stage_copy(base, &at, b->rope_cos, T * hd * 4);
  s->rope_sin = stage_copy(base, &at, b->rope_sin, T * hd * 4);
  s->visual_pos = stage_copy(base, &at, b->visual_pos, (size_t)b->n_visual * 4);
  s->vseg_offsets = stage_copy(base, &at, b->vseg_offsets, ((size_t)b->n_vseg + 1) * 4);
  s->vrope_cos = stage_copy(base, &at, b->vrope_cos, P * vhd * 4);
  s->vrope_sin = stage_copy(base, &at, b->vrope_sin, P * vhd * 4);
  s->pos_idx = stage_copy(base, &at, b->pos_idx, P * 16);
  s->pos_w = stage_copy(base, &at, b->pos_w, P * 16);
  s->pixels = stage_copy(base, &at, b->pixels, P * (size_t)b->patch_dim * 4);
  g->stage_ready = k + 1;
  return VL_OK;
}

int vl_graph_commit_batch(vl_graph *g) {
  vl_ops *o = g->ops;
  const vl_model_config *c = &g->m->cfg;
  if (!g->stage_ready) VL_ERROR(VL_EINVAL, "no staged batch to commit");
  const int k = g->stage_ready - 1;
  const vl_batch *b = &g->staged[k];
  g->stage_ready = 0;
  g->stage_next = k ^ 1;
  g->T = b->T; g->P = b->P; g->n_visual = b->n_visual; g->n_seq = b->n_seq;
  g->n_vseg = b->n_vseg; g->n_targets = b->n_targets;
  const size_t T = (size_t)b->T, P = (size_t)b->P;
  memcpy(g->seq_host, b->seq_offsets, (T ? (size_t)b->n_seq + 1 : 1) * sizeof(int32_t));
  VL_CALL(o->put_raw_async(o, g->ids, b->ids, T * sizeof(int32_t)));
  VL_CALL(o->put_raw_async(o, g->targets, b->targets, T * sizeof(int32_t)));
  VL_CALL(o->put_raw_async(o, g->seq, b->seq_offsets, ((size_t)b->n_seq + 1) * sizeof(int32_t)));
  VL_CALL(o->put_raw_async(o, g->rope_cos, b->rope_cos, T * c->text.head_dim * sizeof(float)));
  VL_CALL(o->put_raw_async(o, g->rope_sin, b->rope_sin, T * c->text.head_dim * sizeof(float)));
  if (P > 0) {
    size_t vhd = (size_t)c->vision.hidden_size / c->vision.num_heads;
    memcpy(g->vseg_host, b->vseg_offsets, ((size_t)b->n_vseg + 1) * sizeof(int32_t));
    VL_CALL(o->put_raw_async(o, g->visual_pos, b->visual_pos, (size_t)b->n_visual * sizeof(int32_t)));
    VL_CALL(o->put_raw_async(o, g->vseg, b->vseg_offsets, ((size_t)b->n_vseg + 1) * sizeof(int32_t)));
    VL_CALL(o->put_raw_async(o, g->vrope_cos, b->vrope_cos, P * vhd * sizeof(float)));
    VL_CALL(o->put_raw_async(o, g->vrope_sin, b->vrope_sin, P * vhd * sizeof(float)));
    if (b->pos_idx) {
      VL_CALL(o->put_raw_async(o, g->pos_idx, b->pos_idx, P * 4 * sizeof(int32_t)));
      VL_CALL(o->put_raw_async(o, g->pos_w, b->pos_w, P * 4 * sizeof(float)));
    }
    VL_CALL(o->put_async(o, g->pixels, b->pixels, P * (size_t)b->patch_dim));
  }
  VL_CALL(o->fence_record(o, k));
  return VL_OK;
}

int vl_graph_set_batch(vl_graph *g, const vl_batch *b) {
  VL_CALL(vl_graph_stage_batch(g, b));
  VL_CALL(vl_graph_commit_batch(g));
  return VL_OK;
}

static void memory_plan(const vl_model *m, const vl_train_config *train, int world,
                        size_t elem_size, int vision_shared, vl_memory_plan *plan);

void vl_graph_memory_plan(const vl_model *m, const vl_train_config *train, int world,
                          size_t elem_size, vl_memory_plan *plan) {
  memory_plan(m, train, world, elem_size, vl_graph_vision_frozen(m), plan);
}

static void memory_plan(const vl_model *m, const vl_train_config *train, int world,
                        size_t elem_size, int vision_shared, vl_memory_plan *plan) {
  memset(plan, 0, sizeof *plan);
  plan->lean = train->optimizer == VL_OPTIM_LEAN;
  plan->recompute = train->recompute != 0;
  size_t n = m->n_elements;
  size_t shard = (n + (size_t)world - 1) / (size_t)world;
  int mb = train->micro_batch;
  plan->weights = n * elem_size;
  plan->grads = n * elem_size;
  if (train->optimizer == VL_OPTIM_LEAN) {
    /* bf16 weights updated in place (stochastic rounding), fp32 moments */
    plan->master = 0;
    plan->moments = shard * 8;
  } else {
    plan->master = shard * 4; /* allocated on the CPU backend too */
    plan->moments = shard * 8;
  }
  plan->activations = activation_bytes(m, train->max_seq_len * mb, train->max_vision_patches * mb,
                                       elem_size, train->recompute, vision_shared);
  plan->vision_frozen = vision_shared;
  /* loss chunk: up to 1,024 rows of fp32 logits and their gradient */
  size_t rows = (size_t)train->max_seq_len * mb < 1024 ? (size_t)train->max_seq_len * mb : 1024;
  plan->workspace = rows * (size_t)m->cfg.text.vocab_size * 4 * 2;
  /* attention backward: one segment's dq|dk|dv rows staged before they are
   * added (kernels/attention_cudnn.cu; the loss chunks' buffers cover its
   * fp32 parts); causal text rows rounded up to 128 */
  {
    const vl_text_config *tc = &m->cfg.text;
    const vl_vision_config *vc = &m->cfg.vision;
    const size_t text_rows = ((size_t)train->max_seq_len * mb + 127) / 128 * 128;
    const size_t text_w = (size_t)(tc->num_attention_heads + 2 * tc->num_key_value_heads) * tc->head_dim;
    const size_t vis_w = vc->num_heads > 0 ? (size_t)3 * vc->hidden_size : 0;
    const size_t t = text_rows * text_w, v = (size_t)train->max_vision_patches * mb * vis_w;
    plan->workspace += (t > v ? t : v) * elem_size;
  }
  plan->total = plan->weights + plan->grads + plan->master + plan->moments +
                plan->activations + plan->workspace;
}

void vl_graph_print_memory_plan(const vl_memory_plan *p, const char *device) {
  /* GiB, or MiB for small models (tests) */
  const int mib = p->total < ((size_t)1 << 30);
  const double G = mib ? 1048576.0 : 1073741824.0;
  const char *u = mib ? "MiB" : "GiB";
  printf("memory plan per rank (%s):\n", device);
  printf("  weights      %9.3f %s\n", p->weights / G, u);
  printf("  gradients    %9.3f %s\n", p->grads / G, u);
  if (p->lean)
    printf("  fp32 master  %9.3f %s (train.optimizer: lean: none)\n", p->master / G, u);
  else
    printf("  fp32 master  %9.3f %s (ZeRO-1 shard)\n", p->master / G, u);
  printf("  AdamW m, v   %9.3f %s (ZeRO-1 shard)\n", p->moments / G, u);
  printf("  activations  %9.3f %s (one micro-batch, saved for backward%s%s)\n", p->activations / G, u,
         p->recompute ? "; recomputed per layer" : "", p->vision_frozen ? "; vision tower frozen" : "");
  printf("  workspace    %9.3f %s (loss chunks, attention staging)\n", p->workspace / G, u);
  printf("  total        %9.3f %s\n", p->total / G, u);
}

/* appends to buf (always terminated) */
static void add(char *buf, size_t n, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void add(char *buf, size_t n, const char *fmt, ...) {
  size_t used = strlen(buf);
  if (used + 1 >= n) return;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf + used, n - used, fmt, ap);
  va_end(ap);
}

/* "12.34 GiB", "5.6 MiB" or "789 KiB" */
static const char *sz(char *out, double bytes) {
  if (bytes >= 1073741824.0) snprintf(out, 24, "%.2f GiB", bytes / 1073741824.0);
  else if (bytes >= 1048576.0) snprintf(out, 24, "%.2f MiB", bytes / 1048576.0);
  else snprintf(out, 24, "%.1f KiB", bytes / 1024.0);
  return out;
}

int vl_graph_memory_advice(const vl_model *m, const vl_train_config *train, int world,
                           size_t elem_size, size_t free_bytes, char *buf, size_t n) {
  char b0[24], b1[24], b2[24];
  vl_memory_plan p;
  vl_graph_memory_plan(m, train, world, elem_size, &p);
  buf[0] = '\0';
  if (p.total <= free_bytes) return 0;
  add(buf, n, "the memory plan needs %s per rank, %s are free (%s short). What would help:",
      sz(b0, p.total), sz(b1, free_bytes), sz(b2, p.total - free_bytes));
  /* ZeRO-1: master and moments shrink with the number of ranks */
  const size_t fixed = p.weights + p.grads + p.activations + p.workspace;
  const double state = (double)(p.master + p.moments) * world; /* whole optimizer state */
  if (fixed < free_bytes) {
    long need = (long)ceil(state / (double)(free_bytes - fixed));
    if (need > world)
      add(buf, n, "\n  - more ranks: ZeRO-1 shards the optimizer state (%s in all): "
          "%ld ranks of this size would fit", sz(b0, state), need);
  } else {
    add(buf, n, "\n  - more ranks alone cannot help: weights, gradients and activations "
        "(%s) are not sharded", sz(b0, fixed));
  }
  vl_train_config t = *train;
  if (train->optimizer != VL_OPTIM_LEAN) {
    vl_memory_plan q;
    t.optimizer = VL_OPTIM_LEAN;
    vl_graph_memory_plan(m, &t, world, elem_size, &q);
    add(buf, n, "\n  - train.optimizer: lean (bf16 weights with stochastic rounding, no fp32 "
        "master): saves %s%s", sz(b0, p.total - q.total),
        q.total <= free_bytes ? ", enough alone" : "");
    t.optimizer = train->optimizer;
  }
  if (!train->recompute) {
    vl_memory_plan q;
    t.recompute = 1;
    vl_graph_memory_plan(m, &t, world, elem_size, &q);
    add(buf, n, "\n  - train.recompute: true (activations rebuilt per layer in the backward): "
        "saves %s%s", sz(b0, p.total - q.total), q.total <= free_bytes ? ", enough alone" : "");
    t.recompute = train->recompute;
  }
  {
    vl_memory_plan q;
    t.max_seq_len = train->max_seq_len / 2;
    t.max_vision_patches = train->max_vision_patches / 2;
    vl_graph_memory_plan(m, &t, world, elem_size, &q);
    add(buf, n, "\n  - smaller train.max_seq_len / train.max_vision_patches / train.micro_batch: "
        "activations are %s; halving both sequence limits saves %s%s", sz(b0, p.activations),
        sz(b1, p.total - q.total), q.total <= free_bytes ? ", enough alone" : "");
  }
  if (!vl_graph_vision_frozen(m)) {
    vl_memory_plan q;
    memory_plan(m, train, world, elem_size, 1, &q);
    if (q.total < p.total)
      add(buf, n, "\n  - train.freeze: \"model.visual.*\" (no backward through the vision tower, "
        "so none of its activations are kept): saves %s%s", sz(b0, p.total - q.total),
        q.total <= free_bytes ? ", enough alone" : "");
  }
  return 1;
}
