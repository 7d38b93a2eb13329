/* graph: one model instance on one backend — parameters, gradients and the
 * activation buffers of one micro-batch — and the forward/backward passes
 * (forward.c, backward.c) written once over ops.h.
 *
 * Owns: allocation of every activation buffer for the largest batch the run
 * will see (max_T LLM tokens, max_P vision patches), uploading a vl_batch,
 * the order of ops.  Does not own: weights' values (weights.c), the optimizer,
 * communication.
 *
 * Data flow (Qwen3-VL; shapes per micro-batch):
 *   pixels (P, patch_dim) -> patch embed (P, Vh) + interpolated pos embed
 *   -> ViT blocks (LayerNorm, qkv, 2D rope, attention per image, proj,
 *      LayerNorm, fc1, gelu-tanh, fc2), DeepStack mergers at listed blocks
 *   -> merger (P/4, H) replaces the image-pad rows of embed_tokens[ids] (T, H)
 *   -> decoder layers (RMSNorm, qkv, q/k RMSNorm + M-RoPE, causal attention
 *      per sample, o_proj, RMSNorm, gate/up, SwiGLU, down); after layer k <
 *      n_deepstack the k-th DeepStack features are added at visual rows
 *   -> final RMSNorm -> lm_head + cross-entropy on shifted targets.
 * Qwen2-VL takes the same path without what it lacks (model.h): no patch
 * bias, no pos embed, quick_gelu in the ViT MLP (vision.hidden_act), no
 * DeepStack, no q/k norms (qk_norm_rope with NULL weights: rope only), q/k/v
 * biases, sectioned M-RoPE tables (batch.c).
 */
#ifndef VL_GRAPH_H
#define VL_GRAPH_H

#include <stddef.h>

#include "batch.h"
#include "model.h"
#include "ops.h"

typedef struct {
  /* LayerNorm/RMSNorm statistics are fp32; everything else is vl_t. */
  vl_t *ln1, *qkv, *qkv_r, *att, *x_mid, *ln2, *fc1, *act, *x_out;
  float *ln1_mean, *ln1_rstd, *ln2_mean, *ln2_rstd, *qk_rstd, *lse;
} vl_layer_acts;

typedef struct {
  vl_t *ln, *fc1, *act, *out;  /* ln: (P, Vh) main / (P/4, 4Vh) postshuffle */
  float *mean, *rstd;
} vl_merger_acts;

typedef struct {
  const vl_model *m;
  vl_ops *ops;
  vl_t *params;            /* (n_elements) working weights */
  vl_t *grads;             /* (n_elements) accumulated gradients */
  size_t n_alloc;          /* elements allocated for params and grads (>= n_elements) */
  int max_T, max_P;

  /* ---- current batch (sizes and indices in backend memory) ---- */
  int T, P, n_visual, n_seq, n_vseg, n_targets;
  int32_t *seq_host, *vseg_host;          /* host copies of the offsets */
  int32_t *ids, *targets, *visual_pos, *seq, *vseg, *pos_idx;
  float *pos_w, *rope_cos, *rope_sin, *vrope_cos, *vrope_sin;
  vl_t *pixels;
  /* Host staging of batch inputs (ops->host_alloc: pinned on CUDA), two
   * slots so one can be filled while the other's upload is still queued;
   * fences 0 and 1 guard them.  staged[k]: the batch in slot k, its arrays
   * pointing into stage[k]. */
  void *stage[2];
  size_t stage_bytes[2];
  vl_batch staged[2];
  int stage_next, stage_ready;  /* slot to fill next; k + 1: slot k filled, 0 none */

  /* ---- activations ---- */
  vl_t *vx0;                 /* (P, Vh) patch embed + pos embed */
  vl_layer_acts *vlayers;    /* [depth] */
  vl_merger_acts merger;
  vl_merger_acts *ds;        /* [n_deepstack] */
  vl_t *x0;                  /* (T, H) embeddings with image rows replaced */
  vl_layer_acts *layers;     /* [num_hidden_layers]; fc1 = gate|up (T, 2I), act = swiglu (T, I) */
  vl_t *xf;                  /* (T, H) final norm */
  float *xf_rstd;
  float *loss;               /* (T) per-token loss */
  float *logits;             /* (T, V) fp32, only if the caller asked (tests) */

  /* ---- gradient scratch ---- */
  vl_t *d_xf;                /* (T, H) from the loss */
  vl_t *dres;                /* (max(T, P), max(H, Vh)) residual-stream grad */
  vl_t *d_a, *d_b, *d_c;     /* scratch, sized for the widest intermediate */
  vl_t *d_visual;            /* (P/4, H) grad of merger output */
  vl_t *d_ds;                /* (n_deepstack, P/4, H) grads of DeepStack features */
  size_t activation_bytes;   /* what was allocated for the above */
  /* train.recompute: each layer keeps only its output x_out (the next
   * layer's input); the other activations of every layer of a tower alias
   * one shared set (vwork, twork), refilled for layer l by re-running its
   * forward (vl_graph_layer_forward) in the backward pass. */
  int recompute;
  vl_layer_acts vwork, twork;
  /* A frozen vision tower (vl_graph_vision_frozen at creation) has no
   * backward: its layers share one activation set, x_out included. */
  int vision_shared;
  /* Gradient buckets (optim.h: overlapped reduction).  When grad_ready is
   * set, the backward pass calls grad_ready(grad_ready_ctx, a, b) for each
   * bucket of the block -- elements [a, b) of one decoder layer, one ViT
   * block, one merger (main or DeepStack), the vision embeddings (patch and
   * position), embed_tokens, and final norm + lm_head -- as soon as the pass
   * writes none of its gradients any more.  The buckets tile [0, n_elements)
   * and come once per pass in an order fixed by the model alone (final norm
   * + lm_head, layers from the top, embed_tokens, then the vision side:
   * merger, for each block from the top its DeepStack mergers and itself,
   * the embeddings), also when the vision backward is skipped (no patches,
   * frozen tower: its buckets then come at once after the text side), so
   * every rank issues the same collectives in the same order.  NULL: none. */
  int (*grad_ready)(void *ctx, size_t a, size_t b);
  void *grad_ready_ctx;
  /* VL_PROFILE=1 (exactly): seconds per phase (synchronised), summed over calls:
   * vision forward, text forward, loss, text backward, vision backward */
  int profile;
  double phase_s[5];
} vl_graph;

/* Allocates parameters, gradients and activations on the backend (no
 * recomputation). */
int vl_graph_create(vl_graph *g, const vl_model *m, vl_ops *ops, int max_T, int max_P,
                    int want_logits);
/* The same with the parameter and gradient blocks padded (zeroed) to n_alloc
 * elements, so that ZeRO-1 collectives work in place on equal shards. */
int vl_graph_create_padded(vl_graph *g, const vl_model *m, vl_ops *ops, int max_T, int max_P,
                           int want_logits, size_t n_alloc);
/* The same with train.recompute's choice: recompute != 0 keeps one layer's
 * activations per tower plus every layer's output. */
int vl_graph_create_opts(vl_graph *g, const vl_model *m, vl_ops *ops, int max_T, int max_P,
                         int want_logits, size_t n_alloc, int recompute);
void vl_graph_destroy(vl_graph *g);

/* Uploads the batch's inputs and indices (batch sizes <= max_T, max_P):
 * vl_graph_stage_batch then vl_graph_commit_batch.  The uploads are queued
 * in order with the ops; b may be freed on return. */
int vl_graph_set_batch(vl_graph *g, const vl_batch *b);
/* Copies b into the next host staging slot (waiting until that slot's
 * previous upload has been done); touches nothing the queued ops read, so
 * it may run while the previous batch's passes are still being queued. */
int vl_graph_stage_batch(vl_graph *g, const vl_batch *b);
/* Makes the staged batch current: sizes and host offsets for the next
 * passes, and queues its uploads (asynchronous: after the ops queued
 * before, so a running pass never sees its inputs change). */
int vl_graph_commit_batch(vl_graph *g);

/* Forward pass.  Returns the sum of per-token losses in *loss_sum (host).
 * If loss_scale != 0 the gradient of loss_scale * sum(loss) w.r.t. the final
 * hidden states and lm_head is formed here (fused with the loss) and
 * vl_graph_backward must follow. */
int vl_graph_forward(vl_graph *g, float loss_scale, double *loss_sum);
/* The same without waiting for the GPU: the per-token losses (T floats) are
 * copied into loss_host (ops->host_alloc memory; NULL: not copied) once the
 * queued work is done (ops->sync). */
int vl_graph_forward_async(vl_graph *g, float loss_scale, float *loss_host);
/* With g->profile: synchronises and returns a monotonic time in s; else 0. */
double vl_graph_clock(vl_graph *g);
/* Backward pass: accumulates (+=) into g->grads. */
int vl_graph_backward(vl_graph *g);
/* Layer l of the vision tower (vision = 1) or of the LLM from its input x
 * into g->vlayers[l] / g->layers[l]; full = 0 stops after the MLP
 * activation (what the backward needs: recomputation), full = 1 also
 * writes x_out and the DeepStack pieces.  forward.c; backward.c calls it. */
int vl_graph_layer_forward(vl_graph *g, int vision, int l, const vl_t *x, int full);

/* True when no vision-side parameter (tower, mergers) wants a gradient: the
 * backward skips the tower, and graphs created so keep none of its
 * activations.  Freeze before creating the graph. */
int vl_graph_vision_frozen(const vl_model *m);

/* Bytes of activations (and gradient scratch) vl_graph_create_opts allocates
 * for max_T tokens and max_P patches with elements of elem_size bytes. */
size_t vl_graph_activation_bytes(const vl_model *m, int max_T, int max_P, size_t elem_size,
                                 int recompute);

/* Per-rank memory plan, in bytes. */
typedef struct {
  size_t weights, grads, master, moments, activations, workspace, total;
  int lean, recompute, vision_frozen;  /* the choices it was made for */
} vl_memory_plan;
/* world: ranks sharing the ZeRO-1 optimizer state.  elem_size 4 (cpu) or 2 (cuda). */
void vl_graph_memory_plan(const vl_model *m, const vl_train_config *train, int world,
                          size_t elem_size, vl_memory_plan *plan);
void vl_graph_print_memory_plan(const vl_memory_plan *plan, const char *device);
/* When the plan for (train, world) needs more than free_bytes: writes into
 * buf what would make it fit -- more ranks (ZeRO-1), train.optimizer: lean,
 * train.recompute: true, shorter sequences / fewer patches, train.freeze of
 * the vision tower -- with the bytes
 * each saves and whether it alone would be enough, freezing the vision tower
 * (its activations); returns 1.  Returns 0
 * (buf "") when it fits. */
int vl_graph_memory_advice(const vl_model *m, const vl_train_config *train, int world,
                           size_t elem_size, size_t free_bytes, char *buf, size_t n);

/* Pointer to parameter i inside a block (params or grads); NULL if i < 0. */
static inline vl_t *vl_graph_param(const vl_graph *g, vl_t *block, int i) {
  if (i < 0) return NULL;
  return (char *)block + g->m->params[i].offset * g->ops->elem_size;
}

/* Gradient of parameter i, or NULL if absent or frozen (ops then skip it). */
static inline vl_t *vl_graph_grad(const vl_graph *g, int i) {
  if (i < 0 || g->m->params[i].frozen) return NULL;
  return vl_graph_param(g, g->grads, i);
}

#endif
