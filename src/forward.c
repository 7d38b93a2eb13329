/* forward: the model's forward pass over ops.h (see graph.h for the flow). */
#include <math.h>
#include <stdlib.h>
#include <time.h>

#include "err.h"
#include "graph.h"

#define PARAM(i) vl_graph_param(g, g->params, (i))
#define GRAD(i) vl_graph_grad(g, (i))

/* Main merger: LayerNorm per patch (P, Vh), then view (P/4, 4Vh).
 * DeepStack merger (postshuffle): view (P/4, 4Vh), then LayerNorm over 4Vh.
 * Both: fc1 (4Vh -> 4Vh), exact GELU, fc2 (4Vh -> H).  Patches arrive in
 * merge-window order, so a 2x2 window is 4 consecutive rows. */
static int merger_forward(vl_graph *g, const vl_merger_params *mp, vl_merger_acts *A,
                          const vl_t *x) {
  vl_ops *o = g->ops;
  const vl_vision_config *v = &g->m->cfg.vision;
  const int u = v->spatial_merge_size * v->spatial_merge_size;
  const int Vh = v->hidden_size, Vh4 = Vh * u, Pm = g->P / u, H = v->out_hidden_size;
  const float eps = (float)v->layer_norm_eps;
  if (mp->postshuffle)
    VL_CALL(o->layernorm_forward(o, A->ln, A->mean, A->rstd, x, PARAM(mp->norm_w),
                                 PARAM(mp->norm_b), Pm, Vh4, eps));
  else
    VL_CALL(o->layernorm_forward(o, A->ln, A->mean, A->rstd, x, PARAM(mp->norm_w),
                                 PARAM(mp->norm_b), g->P, Vh, eps));
  VL_CALL(o->matmul_forward(o, A->fc1, A->ln, PARAM(mp->fc1_w), PARAM(mp->fc1_b), Pm, Vh4, Vh4, 0));
  VL_CALL(o->act_forward(o, A->act, A->fc1, (size_t)Pm * Vh4, VL_ACT_GELU_ERF));
  VL_CALL(o->matmul_forward(o, A->out, A->act, PARAM(mp->fc2_w), PARAM(mp->fc2_b), Pm, Vh4, H, 0));
  return VL_OK;
}

static int deepstack_slot(const vl_vision_config *v, int layer) {
  for (int k = 0; k < v->n_deepstack; k++)
    if (v->deepstack_visual_indexes[k] == layer) return k;
  return -1;
}

/* Vision block l from x (P, Vh); full: also x_out and the DeepStack merger. */
static int vision_layer(vl_graph *g, int l, const vl_t *x, int full) {
  vl_ops *o = g->ops;
  const vl_model *m = g->m;
  const vl_vision_config *v = &m->cfg.vision;
  const int P = g->P, Vh = v->hidden_size, Vi = v->intermediate_size;
  const int nh = v->num_heads, hd = Vh / nh;
  const float eps = (float)v->layer_norm_eps, scale = 1.0f / sqrtf((float)hd);
  const size_t row = (size_t)P * Vh * o->elem_size;
  const vl_vision_block_params *B = &m->vblocks[l];
  vl_layer_acts *A = &g->vlayers[l];
  VL_CALL(o->layernorm_forward(o, A->ln1, A->ln1_mean, A->ln1_rstd, x, PARAM(B->norm1_w),
                               PARAM(B->norm1_b), P, Vh, eps));
  VL_CALL(o->matmul_forward(o, A->qkv, A->ln1, PARAM(B->qkv_w), PARAM(B->qkv_b), P, Vh, 3 * Vh, 0));
  VL_CALL(o->qk_norm_rope_forward(o, A->qkv_r, NULL, A->qkv, NULL, NULL, g->vrope_cos,
                                  g->vrope_sin, P, nh, nh, hd, 0.0f));
  VL_CALL(o->attention_forward(o, A->att, A->lse, A->qkv_r, g->vseg, g->vseg_host,
                               g->n_vseg, P, nh, nh, hd, scale, 0));
  VL_CALL(o->copy(o, A->x_mid, x, row));
  VL_CALL(o->matmul_forward(o, A->x_mid, A->att, PARAM(B->proj_w), PARAM(B->proj_b), P, Vh, Vh, 1));
  VL_CALL(o->layernorm_forward(o, A->ln2, A->ln2_mean, A->ln2_rstd, A->x_mid,
                               PARAM(B->norm2_w), PARAM(B->norm2_b), P, Vh, eps));
  VL_CALL(o->matmul_forward(o, A->fc1, A->ln2, PARAM(B->fc1_w), PARAM(B->fc1_b), P, Vh, Vi, 0));
  VL_CALL(o->act_forward(o, A->act, A->fc1, (size_t)P * Vi, v->hidden_act));
  if (!full) return VL_OK;
  VL_CALL(o->copy(o, A->x_out, A->x_mid, row));
  VL_CALL(o->matmul_forward(o, A->x_out, A->act, PARAM(B->fc2_w), PARAM(B->fc2_b), P, Vi, Vh, 1));
  int k = deepstack_slot(v, l);
  if (k >= 0) VL_CALL(merger_forward(g, &m->deepstack[k], &g->ds[k], A->x_out));
  return VL_OK;
}

static int vision_forward(vl_graph *g) {
  vl_ops *o = g->ops;
  const vl_model *m = g->m;
  const vl_vision_config *v = &m->cfg.vision;
  const int P = g->P, Vh = v->hidden_size;

  /* Conv3d with stride = kernel is a GEMM over flattened patches. */
  VL_CALL(o->matmul_forward(o, g->vx0, g->pixels, PARAM(m->patch_embed_w),
                            PARAM(m->patch_embed_b), P, vl_model_patch_dim(m), Vh, 0));
  if (m->pos_embed >= 0)
    VL_CALL(o->embed_bag_forward(o, g->vx0, PARAM(m->pos_embed), g->pos_idx, g->pos_w,
                                 P, 4, Vh, 1));
  const vl_t *x = g->vx0;
  for (int l = 0; l < v->depth; l++) {
    VL_CALL(vision_layer(g, l, x, 1));
    x = g->vlayers[l].x_out;
  }
  VL_CALL(merger_forward(g, &m->merger, &g->merger, x));
  return VL_OK;
}

/* Decoder layer l from x (T, H); full: also x_out with the DeepStack rows. */
static int text_layer(vl_graph *g, int l, const vl_t *x, int full) {
  vl_ops *o = g->ops;
  const vl_model *m = g->m;
  const vl_text_config *t = &m->cfg.text;
  const int T = g->T, H = t->hidden_size, I = t->intermediate_size;
  const int nh = t->num_attention_heads, nkv = t->num_key_value_heads, hd = t->head_dim;
  const int qd = nh * hd, W = qd + 2 * nkv * hd;
  const float eps = (float)t->rms_norm_eps, scale = 1.0f / sqrtf((float)hd);
  const size_t row = (size_t)T * H * o->elem_size;
  const vl_text_layer_params *L = &m->layers[l];
  vl_layer_acts *A = &g->layers[l];
  VL_CALL(o->rmsnorm_forward(o, A->ln1, A->ln1_rstd, x, PARAM(L->input_norm_w), T, H, eps));
  /* q|k|v weights (and biases) are adjacent in the block: one GEMM */
  VL_CALL(o->matmul_forward(o, A->qkv, A->ln1, PARAM(L->q_w), PARAM(L->q_b), T, H, W, 0));
  VL_CALL(o->qk_norm_rope_forward(o, A->qkv_r, A->qk_rstd, A->qkv, PARAM(L->q_norm_w),
                                  PARAM(L->k_norm_w), g->rope_cos, g->rope_sin, T, nh,
                                  nkv, hd, eps));
  VL_CALL(o->attention_forward(o, A->att, A->lse, A->qkv_r, g->seq, g->seq_host, g->n_seq,
                               T, nh, nkv, hd, scale, 1));
  VL_CALL(o->copy(o, A->x_mid, x, row));
  VL_CALL(o->matmul_forward(o, A->x_mid, A->att, PARAM(L->o_w), PARAM(L->o_b), T, qd, H, 1));
  VL_CALL(o->rmsnorm_forward(o, A->ln2, A->ln2_rstd, A->x_mid, PARAM(L->post_norm_w), T, H, eps));
  VL_CALL(o->matmul_forward(o, A->fc1, A->ln2, PARAM(L->gate_w), NULL, T, H, 2 * I, 0));
  VL_CALL(o->swiglu_forward(o, A->act, A->fc1, T, I));
  if (!full) return VL_OK;
  VL_CALL(o->copy(o, A->x_out, A->x_mid, row));
  VL_CALL(o->matmul_forward(o, A->x_out, A->act, PARAM(L->down_w), NULL, T, I, H, 1));
  if (g->n_visual > 0 && l < m->cfg.vision.n_deepstack)
    VL_CALL(o->rows_scatter(o, A->x_out, g->ds[l].out, g->visual_pos, g->n_visual, H, 1));
  return VL_OK;
}

int vl_graph_layer_forward(vl_graph *g, int vision, int l, const vl_t *x, int full) {
  return vision ? vision_layer(g, l, x, full) : text_layer(g, l, x, full);
}

static int text_forward(vl_graph *g) {
  vl_ops *o = g->ops;
  const vl_model *m = g->m;
  const vl_text_config *t = &m->cfg.text;
  const int T = g->T, H = t->hidden_size;
  const float eps = (float)t->rms_norm_eps;

  VL_CALL(o->rows_gather(o, g->x0, PARAM(m->embed_tokens), g->ids, T, H, 0));
  if (g->n_visual > 0)
    VL_CALL(o->rows_scatter(o, g->x0, g->merger.out, g->visual_pos, g->n_visual, H, 0));
  const vl_t *x = g->x0;
  for (int l = 0; l < t->num_hidden_layers; l++) {
    VL_CALL(text_layer(g, l, x, 1));
    x = g->layers[l].x_out;
  }
  VL_CALL(o->rmsnorm_forward(o, g->xf, g->xf_rstd, x, PARAM(m->final_norm_w), T, H, eps));
  return VL_OK;
}

double vl_graph_clock(vl_graph *g) {
  if (!g->profile) return 0.0;
  g->ops->sync(g->ops);
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

int vl_graph_forward(vl_graph *g, float loss_scale, double *loss_sum) {
  vl_ops *o = g->ops;
  const vl_model *m = g->m;
  const int T = g->T, H = m->cfg.text.hidden_size, V = m->cfg.text.vocab_size;
  double t0 = vl_graph_clock(g);
  if (g->P > 0) VL_CALL(vision_forward(g));
  double t1 = vl_graph_clock(g);
  VL_CALL(text_forward(g));
  double t2 = vl_graph_clock(g);
  vl_t *dh = NULL, *dW = NULL;
  if (loss_scale != 0.0f) {
    VL_CALL(o->zero(o, g->d_xf, (size_t)T * H * o->elem_size));
    dh = g->d_xf;
    dW = GRAD(m->lm_head);
  }
  VL_CALL(o->lmhead_ce(o, g->loss, dh, dW, g->logits, g->xf, PARAM(m->lm_head), g->targets,
                       T, H, V, loss_scale));
  double t3 = vl_graph_clock(g);
  g->phase_s[0] += t1 - t0;
  g->phase_s[1] += t2 - t1;
  g->phase_s[2] += t3 - t2;
  float *host = NULL;
  VL_CALL(vl_malloc((void **)&host, (size_t)T * sizeof(float), "per-token loss"));
  int rc = o->get_raw(o, host, g->loss, (size_t)T * sizeof(float));
  double sum = 0;
  for (int i = 0; i < T; i++) sum += host[i];
  free(host);
  VL_CALL(rc);
  *loss_sum = sum;
  return VL_OK;
}
