/* backward: the model's backward pass over ops.h, the mirror of forward.c.
 * Every op accumulates into its gradients; scratch buffers are zeroed before
 * each use.  The residual-stream gradient lives in g->dres throughout.
 * With g->recompute each layer's activations are rebuilt from its input
 * (vl_graph_layer_forward) just before its backward.  With g->grad_ready
 * each bucket of gradients is handed on once final (graph.h). */
#include <math.h>
#include <stdint.h>

#include "err.h"
#include "graph.h"

#define PARAM(i) vl_graph_param(g, g->params, (i))
#define GRAD(i) vl_graph_grad(g, (i))

static int zero(vl_graph *g, vl_t *buf, size_t elements) {
  return g->ops->zero(g->ops, buf, elements * g->ops->elem_size);
}

/* ---- gradient buckets (graph.h: grad_ready) ---- */

/* The bucket of parameters idx[0..n) (-1: absent): the span of their
 * elements, handed to the hook. */
static int ready(vl_graph *g, const int *idx, int n) {
  if (!g->grad_ready) return VL_OK;
  size_t a = SIZE_MAX, b = 0;
  for (int i = 0; i < n; i++) {
    if (idx[i] < 0) continue;
    const vl_param *p = &g->m->params[idx[i]];
    if (p->offset < a) a = p->offset;
    if (p->offset + p->numel > b) b = p->offset + p->numel;
  }
  if (a >= b) return VL_OK;
  VL_CALL(g->grad_ready(g->grad_ready_ctx, a, b));
  return VL_OK;
}

static int ready_merger(vl_graph *g, const vl_merger_params *mp) {
  const int idx[] = {mp->norm_w, mp->norm_b, mp->fc1_w, mp->fc1_b, mp->fc2_w, mp->fc2_b};
  return ready(g, idx, (int)(sizeof idx / sizeof *idx));
}

static int ready_vblock(vl_graph *g, int l) {
  const vl_vision_block_params *B = &g->m->vblocks[l];
  const int idx[] = {B->norm1_w, B->norm1_b, B->qkv_w, B->qkv_b, B->proj_w, B->proj_b,
                     B->norm2_w, B->norm2_b, B->fc1_w, B->fc1_b, B->fc2_w, B->fc2_b};
  return ready(g, idx, (int)(sizeof idx / sizeof *idx));
}

static int ready_vembed(vl_graph *g) {
  const int idx[] = {g->m->patch_embed_w, g->m->patch_embed_b, g->m->pos_embed};
  return ready(g, idx, (int)(sizeof idx / sizeof *idx));
}

static int ready_layer(vl_graph *g, int l) {
  const vl_text_layer_params *L = &g->m->layers[l];
  const int idx[] = {L->input_norm_w, L->q_w, L->k_w, L->v_w, L->q_b, L->k_b, L->v_b,
                     L->q_norm_w, L->k_norm_w, L->o_w, L->o_b, L->post_norm_w,
                     L->gate_w, L->up_w, L->down_w};
  return ready(g, idx, (int)(sizeof idx / sizeof *idx));
}

/* When the vision backward does not run: its buckets, in its order. */
static int ready_vision_all(vl_graph *g) {
  const vl_vision_config *v = &g->m->cfg.vision;
  VL_CALL(ready_merger(g, &g->m->merger));
  for (int l = v->depth - 1; l >= 0; l--) {
    for (int k = 0; k < v->n_deepstack; k++)
      if (v->deepstack_visual_indexes[k] == l) VL_CALL(ready_merger(g, &g->m->deepstack[k]));
    VL_CALL(ready_vblock(g, l));
  }
  VL_CALL(ready_vembed(g));
  return VL_OK;
}

/* d_out (P/4, H) -> accumulates into dx, the gradient of the merger's input. */
static int merger_backward(vl_graph *g, const vl_merger_params *mp, const vl_merger_acts *A,
                           const vl_t *x, const vl_t *d_out, vl_t *dx) {
  vl_ops *o = g->ops;
  const vl_vision_config *v = &g->m->cfg.vision;
  const int u = v->spatial_merge_size * v->spatial_merge_size;
  const int Vh = v->hidden_size, Vh4 = Vh * u, Pm = g->P / u, H = v->out_hidden_size;
  const size_t n = (size_t)Pm * Vh4;
  VL_CALL(zero(g, g->d_a, n));
  VL_CALL(o->matmul_backward(o, g->d_a, GRAD(mp->fc2_w), GRAD(mp->fc2_b), d_out, A->act,
                             PARAM(mp->fc2_w), Pm, Vh4, H));
  VL_CALL(zero(g, g->d_b, n));
  VL_CALL(o->act_backward(o, g->d_b, g->d_a, A->fc1, n, VL_ACT_GELU_ERF));
  VL_CALL(zero(g, g->d_c, n));
  VL_CALL(o->matmul_backward(o, g->d_c, GRAD(mp->fc1_w), GRAD(mp->fc1_b), g->d_b, A->ln,
                             PARAM(mp->fc1_w), Pm, Vh4, Vh4));
  if (mp->postshuffle)
    VL_CALL(o->layernorm_backward(o, dx, GRAD(mp->norm_w), GRAD(mp->norm_b), g->d_c, x,
                                  PARAM(mp->norm_w), A->mean, A->rstd, Pm, Vh4));
  else
    VL_CALL(o->layernorm_backward(o, dx, GRAD(mp->norm_w), GRAD(mp->norm_b), g->d_c, x,
                                  PARAM(mp->norm_w), A->mean, A->rstd, g->P, Vh));
  return VL_OK;
}

static int vision_backward(vl_graph *g) {
  vl_ops *o = g->ops;
  const vl_model *m = g->m;
  const vl_vision_config *v = &m->cfg.vision;
  const int P = g->P, Vh = v->hidden_size, Vi = v->intermediate_size;
  const int nh = v->num_heads, hd = Vh / nh;
  const float scale = 1.0f / sqrtf((float)hd);
  vl_t *dv = g->dres;

  VL_CALL(zero(g, dv, (size_t)P * Vh));
  const vl_t *x_last = v->depth ? g->vlayers[v->depth - 1].x_out : g->vx0;
  VL_CALL(merger_backward(g, &m->merger, &g->merger, x_last, g->d_visual, dv));
  VL_CALL(ready_merger(g, &m->merger));
  for (int l = v->depth - 1; l >= 0; l--) {
    const vl_vision_block_params *B = &m->vblocks[l];
    vl_layer_acts *A = &g->vlayers[l];
    for (int k = 0; k < v->n_deepstack; k++)
      if (v->deepstack_visual_indexes[k] == l) {
        const vl_t *d_feat =
            (char *)g->d_ds + (size_t)k * g->n_visual * v->out_hidden_size * o->elem_size;
        VL_CALL(merger_backward(g, &m->deepstack[k], &g->ds[k], A->x_out, d_feat, dv));
        VL_CALL(ready_merger(g, &m->deepstack[k]));
      }
    const vl_t *x_in = l ? g->vlayers[l - 1].x_out : g->vx0;
    if (g->recompute) VL_CALL(vl_graph_layer_forward(g, 1, l, x_in, 0));
    /* MLP branch: dv = d x_out */
    VL_CALL(zero(g, g->d_a, (size_t)P * Vi));
    VL_CALL(o->matmul_backward(o, g->d_a, GRAD(B->fc2_w), GRAD(B->fc2_b), dv, A->act,
                               PARAM(B->fc2_w), P, Vi, Vh));
    VL_CALL(zero(g, g->d_b, (size_t)P * Vi));
    VL_CALL(o->act_backward(o, g->d_b, g->d_a, A->fc1, (size_t)P * Vi, v->hidden_act));
    VL_CALL(zero(g, g->d_c, (size_t)P * Vh));
    VL_CALL(o->matmul_backward(o, g->d_c, GRAD(B->fc1_w), GRAD(B->fc1_b), g->d_b, A->ln2,
                               PARAM(B->fc1_w), P, Vh, Vi));
    VL_CALL(o->layernorm_backward(o, dv, GRAD(B->norm2_w), GRAD(B->norm2_b), g->d_c, A->x_mid,
                                  PARAM(B->norm2_w), A->ln2_mean, A->ln2_rstd, P, Vh));
    /* attention branch: dv = d x_mid */
    VL_CALL(zero(g, g->d_a, (size_t)P * Vh));
    VL_CALL(o->matmul_backward(o, g->d_a, GRAD(B->proj_w), GRAD(B->proj_b), dv, A->att,
                               PARAM(B->proj_w), P, Vh, Vh));
    VL_CALL(zero(g, g->d_b, (size_t)P * 3 * Vh));
    VL_CALL(o->attention_backward(o, g->d_b, g->d_a, A->att, A->lse, A->qkv_r, g->vseg,
                                  g->vseg_host, g->n_vseg, P, nh, nh, hd, scale, 0));
    VL_CALL(zero(g, g->d_c, (size_t)P * 3 * Vh));
    VL_CALL(o->qk_norm_rope_backward(o, g->d_c, NULL, NULL, g->d_b, A->qkv, NULL, NULL, NULL,
                                     g->vrope_cos, g->vrope_sin, P, nh, nh, hd));
    VL_CALL(zero(g, g->d_a, (size_t)P * Vh));
    VL_CALL(o->matmul_backward(o, g->d_a, GRAD(B->qkv_w), GRAD(B->qkv_b), g->d_c, A->ln1,
                               PARAM(B->qkv_w), P, Vh, 3 * Vh));
    VL_CALL(o->layernorm_backward(o, dv, GRAD(B->norm1_w), GRAD(B->norm1_b), g->d_a, x_in,
                                  PARAM(B->norm1_w), A->ln1_mean, A->ln1_rstd, P, Vh));
    VL_CALL(ready_vblock(g, l));
  }
  if (m->pos_embed >= 0)
    VL_CALL(o->embed_bag_backward(o, GRAD(m->pos_embed), dv, g->pos_idx, g->pos_w, P, 4, Vh));
  VL_CALL(o->matmul_backward(o, NULL, GRAD(m->patch_embed_w), GRAD(m->patch_embed_b), dv,
                             g->pixels, PARAM(m->patch_embed_w), P, vl_model_patch_dim(m), Vh));
  VL_CALL(ready_vembed(g));
  return VL_OK;
}

static int text_backward(vl_graph *g) {
  vl_ops *o = g->ops;
  const vl_model *m = g->m;
  const vl_text_config *t = &m->cfg.text;
  const int T = g->T, H = t->hidden_size, I = t->intermediate_size;
  const int nh = t->num_attention_heads, nkv = t->num_key_value_heads, hd = t->head_dim;
  const int qd = nh * hd, W = qd + 2 * nkv * hd;
  const float scale = 1.0f / sqrtf((float)hd);
  const int nds = g->n_visual > 0 ? m->cfg.vision.n_deepstack : 0;
  const size_t ds_stride = (size_t)g->n_visual * H * o->elem_size;
  vl_t *dres = g->dres;
  const int L = t->num_hidden_layers;

  VL_CALL(zero(g, dres, (size_t)T * H));
  const vl_t *x_last = L ? g->layers[L - 1].x_out : g->x0;
  VL_CALL(o->rmsnorm_backward(o, dres, GRAD(m->final_norm_w), g->d_xf, x_last,
                              PARAM(m->final_norm_w), g->xf_rstd, T, H));
  { /* lm_head's gradient came with the loss (tied: embed_tokens', below) */
    const int top[] = {m->final_norm_w, m->lm_head != m->embed_tokens ? m->lm_head : -1};
    VL_CALL(ready(g, top, 2));
  }
  if (nds) VL_CALL(zero(g, g->d_ds, (size_t)nds * g->n_visual * H));
  for (int l = L - 1; l >= 0; l--) {
    const vl_text_layer_params *Lp = &m->layers[l];
    vl_layer_acts *A = &g->layers[l];
    const vl_t *x_in = l ? g->layers[l - 1].x_out : g->x0;
    if (l < nds) /* DeepStack features were added to this layer's output */
      VL_CALL(o->rows_gather(o, (char *)g->d_ds + (size_t)l * ds_stride, dres, g->visual_pos,
                             g->n_visual, H, 1));
    if (g->recompute) VL_CALL(vl_graph_layer_forward(g, 0, l, x_in, 0));
    /* MLP branch */
    VL_CALL(zero(g, g->d_a, (size_t)T * I));
    VL_CALL(o->matmul_backward(o, g->d_a, GRAD(Lp->down_w), NULL, dres, A->act,
                               PARAM(Lp->down_w), T, I, H));
    VL_CALL(zero(g, g->d_b, (size_t)T * 2 * I));
    VL_CALL(o->swiglu_backward(o, g->d_b, g->d_a, A->fc1, T, I));
    VL_CALL(zero(g, g->d_c, (size_t)T * H));
    VL_CALL(o->matmul_backward(o, g->d_c, GRAD(Lp->gate_w), NULL, g->d_b, A->ln2,
                               PARAM(Lp->gate_w), T, H, 2 * I));
    VL_CALL(o->rmsnorm_backward(o, dres, GRAD(Lp->post_norm_w), g->d_c, A->x_mid,
                                PARAM(Lp->post_norm_w), A->ln2_rstd, T, H));
    /* attention branch */
    VL_CALL(zero(g, g->d_a, (size_t)T * qd));
    VL_CALL(o->matmul_backward(o, g->d_a, GRAD(Lp->o_w), GRAD(Lp->o_b), dres, A->att,
                               PARAM(Lp->o_w), T, qd, H));
    VL_CALL(zero(g, g->d_b, (size_t)T * W));
    VL_CALL(o->attention_backward(o, g->d_b, g->d_a, A->att, A->lse, A->qkv_r, g->seq,
                                  g->seq_host, g->n_seq, T, nh, nkv, hd, scale, 1));
    VL_CALL(zero(g, g->d_c, (size_t)T * W));
    VL_CALL(o->qk_norm_rope_backward(o, g->d_c, GRAD(Lp->q_norm_w), GRAD(Lp->k_norm_w), g->d_b,
                                     A->qkv, PARAM(Lp->q_norm_w), PARAM(Lp->k_norm_w),
                                     A->qk_rstd, g->rope_cos, g->rope_sin, T, nh, nkv, hd));
    VL_CALL(zero(g, g->d_a, (size_t)T * H));
    VL_CALL(o->matmul_backward(o, g->d_a, GRAD(Lp->q_w), GRAD(Lp->q_b), g->d_c, A->ln1,
                               PARAM(Lp->q_w), T, H, W));
    VL_CALL(o->rmsnorm_backward(o, dres, GRAD(Lp->input_norm_w), g->d_a, x_in,
                                PARAM(Lp->input_norm_w), A->ln1_rstd, T, H));
    VL_CALL(ready_layer(g, l));
  }
  /* embeddings: image rows came from the merger, the rest from embed_tokens */
  if (g->n_visual > 0) {
    VL_CALL(zero(g, g->d_visual, (size_t)g->n_visual * H));
    VL_CALL(o->rows_gather(o, g->d_visual, dres, g->visual_pos, g->n_visual, H, 1));
    VL_CALL(o->rows_zero(o, dres, g->visual_pos, g->n_visual, H));
  }
  VL_CALL(o->rows_scatter(o, GRAD(m->embed_tokens), dres, g->ids, T, H, 1));
  VL_CALL(ready(g, &m->embed_tokens, 1));
  return VL_OK;
}

int vl_graph_backward(vl_graph *g) {
  vl_ops *o = g->ops;
  double t0 = vl_graph_clock(g);
  if (o->phase) o->phase(o, VL_PHASE_TEXT_BWD);
  VL_CALL(text_backward(g));
  double t1 = vl_graph_clock(g);
  if (o->phase) o->phase(o, VL_PHASE_VISION_BWD);
  if (g->P > 0 && !vl_graph_vision_frozen(g->m)) VL_CALL(vision_backward(g));
  else VL_CALL(ready_vision_all(g));
  double t2 = vl_graph_clock(g);
  if (o->phase) o->phase(o, VL_PHASE_OTHER);
  g->phase_s[3] += t1 - t0;
  g->phase_s[4] += t2 - t1;
  return VL_OK;
}
