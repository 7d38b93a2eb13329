/* ops: the op interface between the model's math (forward.c, backward.c) and
 * a backend (ops_cpu.c: fp32 reference; kernels/ops_cuda.cu: bf16 on GPU).
 *
 * A backend is a table of function pointers (vl_ops).  Everything above this
 * header is written once against it; a new backend touches nothing above.
 *
 * Memory.  Pointers passed to ops are backend memory (host for CPU, device for
 * CUDA) obtained from ops->alloc.  Three element types appear:
 *   vl_t      "working" tensors: activations, weights, their gradients.  The
 *             backend picks the type (fp32 on CPU, bf16 on CUDA); the size is
 *             ops->elem_size.  Declared void * so code above cannot assume it.
 *   float     always fp32: norm statistics, log-sum-exp, losses, rope tables,
 *             interpolation weights, fp32 master weights and moments.
 *   int32_t   indices: token ids, row indices, segment offsets.
 * Host data moves in and out with put/get (converting fp32 <-> vl_t).
 *
 * Gradient convention (llm.c's): every backward ACCUMULATES (+=) into every
 * gradient it writes, inputs and parameters alike, so micro-batch
 * accumulation and residual branches need no extra code; callers zero
 * activation-gradient buffers before use.  A NULL gradient pointer means
 * "not needed" (frozen weight, first layer's input) and is skipped.
 *
 * Shapes are given in comments as (rows, cols), row-major, contiguous.  All
 * ops return VL_OK or an error code with a message (err.h).
 *
 * Argument rules the CPU reference enforces (VL_EINVAL): hd even; nh a
 * multiple of nkv; segment offsets ascending and within T; targets < V; in
 * qk_norm_rope a NULL q_w means no norm at all (k_w ignored).  Attention
 * rows outside every segment are left unwritten.  A second backward adds
 * the same again bitwise on the CPU, except embed_bag, rows_scatter with
 * repeated indices and lmhead_ce's dW over several chunks (within 1e-7); the
 * CUDA backend uses atomics for weight gradients and is not bitwise
 * repeatable.  rows_scatter(=) with repeated indices: which row wins is
 * unspecified.  CUDA: a target >= V gives that row a NaN loss (caught by the
 * trainer's non-finite check) instead of VL_EINVAL.
 */
#ifndef VL_OPS_H
#define VL_OPS_H

#include <stddef.h>
#include <stdint.h>

#include "config.h"

typedef void vl_t; /* backend working element: see above */

#define VL_OPS_FENCES 8
/* phases announced through ops->phase */
enum { VL_PHASE_VISION_FWD, VL_PHASE_TEXT_FWD, VL_PHASE_LOSS, VL_PHASE_TEXT_BWD, VL_PHASE_VISION_BWD,
       VL_PHASE_OTHER, VL_N_PHASES };
#define VL_OPS_TIMERS 32768

typedef struct vl_ops vl_ops;
struct vl_ops {
  const char *name;  /* "cpu", "cuda" */
  size_t elem_size;  /* bytes of one vl_t element: 4 (cpu), 2 (cuda) */
  void *ctx;         /* backend state (streams, handles, workspace) */

  /* ---- memory ---------------------------------------------------------- */
  int (*alloc)(vl_ops *o, void **ptr, size_t bytes, const char *what);
  int (*free)(vl_ops *o, void *ptr);
  int (*zero)(vl_ops *o, void *ptr, size_t bytes);
  int (*copy)(vl_ops *o, void *dst, const void *src, size_t bytes); /* backend->backend */
  /* host fp32 <-> working tensor of n elements */
  int (*put)(vl_ops *o, vl_t *dst, const float *src, size_t n);
  int (*get)(vl_ops *o, float *dst, const vl_t *src, size_t n);
  /* host bytes <-> backend bytes, no conversion (float / int32 buffers) */
  int (*put_raw)(vl_ops *o, void *dst, const void *src, size_t bytes);
  int (*get_raw)(vl_ops *o, void *dst, const void *src, size_t bytes);
  int (*sync)(vl_ops *o);
  /* device memory free and total, bytes (CPU: the host's available memory) */
  int (*mem_info)(vl_ops *o, size_t *free_bytes, size_t *total_bytes);
  int (*destroy)(vl_ops *o);
  /* Asynchronous transfers, queued in order with the ops (CUDA: on the
   * compute stream; CPU: done at once).  The host side must be memory from
   * host_alloc (CUDA: pinned) and stays in use until the work queued before
   * a later fence_record has passed fence_wait (or sync): do not touch it
   * before.  put_async converts fp32 -> vl_t like put. */
  int (*host_alloc)(vl_ops *o, void **ptr, size_t bytes, const char *what);
  int (*host_free)(vl_ops *o, void *ptr);
  int (*put_raw_async)(vl_ops *o, void *dst, const void *src, size_t bytes);
  int (*get_raw_async)(vl_ops *o, void *dst, const void *src, size_t bytes);
  int (*put_async)(vl_ops *o, vl_t *dst, const float *src, size_t n);
  /* fences i < VL_OPS_FENCES: record after the work queued so far; wait
   * blocks the host until that work is done (a fence never recorded: at once) */
  int (*fence_record)(vl_ops *o, int i);
  int (*fence_wait)(vl_ops *o, int i);
  /* timers i < VL_OPS_TIMERS (profiling): record a timestamp in the queue;
   * timer_ms gives the milliseconds from timer i to timer j once both are
   * done (after sync) */
  /* the stream the ops are queued on (CUDA: a cudaStream_t), so that the
   * communication stream can wait for the work queued so far
   * (vl_comm_wait_compute); NULL, or a NULL pointer, where ops are done when
   * they return (CPU) */
  void *(*compute_stream)(vl_ops *o);
  int (*timer_record)(vl_ops *o, int i);
  int (*timer_ms)(vl_ops *o, int i, int j, float *ms);
  /* profiling hook (opsprof.h): the graph announces the phase of the ops
   * that follow; NULL unless the table is wrapped by the profiler */
  void (*phase)(vl_ops *o, int phase);

  /* ---- linear ------------------------------------------------------------
   * out (M,N) = inp (M,K) . W(N,K)^T + bias(N)    [bias may be NULL]
   * accumulate=1: out += ... (residual adds for free).                      */
  int (*matmul_forward)(vl_ops *o, vl_t *out, const vl_t *inp, const vl_t *W,
                        const vl_t *bias, int M, int K, int N, int accumulate);
  /* dinp (M,K) += dout . W ;  dW (N,K) += dout^T . inp ;  dbias (N) += sum_rows dout */
  int (*matmul_backward)(vl_ops *o, vl_t *dinp, vl_t *dW, vl_t *dbias,
                         const vl_t *dout, const vl_t *inp, const vl_t *W,
                         int M, int K, int N);

  /* ---- elementwise -------------------------------------------------------- */
  /* out (n) = a + b */
  int (*add)(vl_ops *o, vl_t *out, const vl_t *a, const vl_t *b, size_t n);
  /* out (n) = act(inp); act: gelu_tanh, gelu_erf, quick_gelu, silu */
  int (*act_forward)(vl_ops *o, vl_t *out, const vl_t *inp, size_t n, vl_act_kind act);
  int (*act_backward)(vl_ops *o, vl_t *dinp, const vl_t *dout, const vl_t *inp,
                      size_t n, vl_act_kind act);
  /* gate_up (M, 2I) = [gate | up] per row -> out (M,I) = silu(gate) * up */
  int (*swiglu_forward)(vl_ops *o, vl_t *out, const vl_t *gate_up, int M, int I);
  int (*swiglu_backward)(vl_ops *o, vl_t *dgate_up, const vl_t *dout,
                         const vl_t *gate_up, int M, int I);

  /* ---- normalisation ------------------------------------------------------ */
  /* out (M,C) = (inp - mean) * rstd * w + b ; saves mean (M), rstd (M) */
  int (*layernorm_forward)(vl_ops *o, vl_t *out, float *mean, float *rstd,
                           const vl_t *inp, const vl_t *w, const vl_t *b,
                           int M, int C, float eps);
  int (*layernorm_backward)(vl_ops *o, vl_t *dinp, vl_t *dw, vl_t *db,
                            const vl_t *dout, const vl_t *inp, const vl_t *w,
                            const float *mean, const float *rstd, int M, int C);
  /* out (M,C) = inp * rstd * w, rstd = 1/sqrt(mean(inp^2) + eps); saves rstd (M) */
  int (*rmsnorm_forward)(vl_ops *o, vl_t *out, float *rstd, const vl_t *inp,
                         const vl_t *w, int M, int C, float eps);
  int (*rmsnorm_backward)(vl_ops *o, vl_t *dinp, vl_t *dw, const vl_t *dout,
                          const vl_t *inp, const vl_t *w, const float *rstd,
                          int M, int C);

  /* ---- attention block pieces -------------------------------------------
   * Packed projections: qkv (T, (nh + 2 nkv) hd), each row [q heads | k heads
   * | v heads] (the layout of the vision `qkv` linear and of the LLM's fused
   * q_proj/k_proj/v_proj).
   *
   * qk_norm_rope: out = qkv with, per q head and per k head, an optional
   * RMSNorm over hd (q_w, k_w (hd); NULL = no norm, e.g. the vision tower)
   * followed by rotate-half RoPE with tables cos, sin (T, hd) (fp32); v is
   * copied.  Saves rstd (T, nh + nkv) when norms are used.                   */
  int (*qk_norm_rope_forward)(vl_ops *o, vl_t *out, float *rstd, const vl_t *qkv,
                              const vl_t *q_w, const vl_t *k_w,
                              const float *cos, const float *sin,
                              int T, int nh, int nkv, int hd, float eps);
  int (*qk_norm_rope_backward)(vl_ops *o, vl_t *dqkv, vl_t *dq_w, vl_t *dk_w,
                               const vl_t *dout, const vl_t *qkv,
                               const vl_t *q_w, const vl_t *k_w, const float *rstd,
                               const float *cos, const float *sin,
                               int T, int nh, int nkv, int hd);
  /* Scaled dot-product attention over segments: rows seg[s] .. seg[s+1]-1
   * attend only within their segment (an image in the vision tower, a sample
   * in the LLM), causally if causal=1.  GQA: q head h reads kv head
   * h / (nh / nkv).  qkv as above (after rope); out (T, nh hd); lse (nh, T)
   * fp32 log-sum-exp of the scaled scores, for the backward.  seg is an
   * int32 array of nseg + 1 offsets in backend memory, seg_host the same on
   * the host (backends that need the lengths on the host use it).          */
  int (*attention_forward)(vl_ops *o, vl_t *out, float *lse, const vl_t *qkv,
                           const int32_t *seg, const int32_t *seg_host, int nseg,
                           int T, int nh, int nkv, int hd, float scale, int causal);
  int (*attention_backward)(vl_ops *o, vl_t *dqkv, const vl_t *dout,
                            const vl_t *out, const float *lse, const vl_t *qkv,
                            const int32_t *seg, const int32_t *seg_host, int nseg,
                            int T, int nh, int nkv, int hd, float scale, int causal);

  /* ---- rows: gathers and scatters ----------------------------------------
   * rows_gather:  dst[i, :] (= or +=) src[idx[i], :]   i < n, C columns
   * rows_scatter: dst[idx[i], :] (= or +=) src[i, :]   (+= safe with repeats)
   * rows_zero:    dst[idx[i], :] = 0
   * embedding forward = rows_gather(table, ids); its backward =
   * rows_scatter(+=).  Image-token replacement and DeepStack injection are
   * scatters at the visual positions; their backwards gathers.              */
  int (*rows_gather)(vl_ops *o, vl_t *dst, const vl_t *src, const int32_t *idx,
                     int n, int C, int accumulate);
  int (*rows_scatter)(vl_ops *o, vl_t *dst, const vl_t *src, const int32_t *idx,
                      int n, int C, int accumulate);
  int (*rows_zero)(vl_ops *o, vl_t *dst, const int32_t *idx, int n, int C);
  /* Weighted bag of K rows: out[i,:] (= or +=) sum_k w[i,k] * table[idx[i,k], :]
   * (the bilinear interpolation of learned vision position embeddings, K=4).
   * idx, w (n, K).  Backward: dtable[idx[i,k], :] += w[i,k] * dout[i, :].   */
  int (*embed_bag_forward)(vl_ops *o, vl_t *out, const vl_t *table,
                           const int32_t *idx, const float *w, int n, int K,
                           int C, int accumulate);
  int (*embed_bag_backward)(vl_ops *o, vl_t *dtable, const vl_t *dout,
                            const int32_t *idx, const float *w, int n, int K, int C);

  /* ---- output head + loss --------------------------------------------------
   * For T rows of final hidden states h (T,H) and lm_head W (V,H):
   *   logits = h . W^T (fp32 accumulation), per row
   *   loss[t] = logsumexp(logits[t]) - logits[t, target[t]]   (target >= 0)
   *   loss[t] = 0                                             (target < 0: ignored)
   * If dh/dW are not NULL also the gradient of  scale * sum_t loss[t]:
   *   dh += scale (softmax - onehot) . W ;  dW += scale (softmax - onehot)^T . h
   * Backends process rows in chunks and never hold (T,V) fp32 logits, except
   * when logits_out (T,V) fp32 is given (tests, evaluation).  loss (T) fp32. */
  int (*lmhead_ce)(vl_ops *o, float *loss, vl_t *dh, vl_t *dW, float *logits_out,
                   const vl_t *h, const vl_t *W, const int32_t *target,
                   int T, int H, int V, float scale);

  /* ---- optimizer -----------------------------------------------------------
   * sumsq: *out (host) = sum of x[i]^2 over n working elements (fp64 sum on
   * the host side of the reduction).
   * adamw on n elements of a shard (torch.optim.AdamW semantics, decoupled
   * weight decay), with g = grad_scale * grad:
   *   master *= 1 - lr * wd
   *   m = b1 m + (1 - b1) g ;  v = b2 v + (1 - b2) g^2
   *   master -= (lr / (1 - b1^t)) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
   *   param = master (rounded to the working type)
   * master, m, v fp32; grad, param working type; t = step (1-based).        */
  int (*sumsq)(vl_ops *o, const vl_t *x, size_t n, double *out);
  /* *out (host) = sum of (a[i] - b[i])^2: the size of an update */
  int (*diff_sumsq)(vl_ops *o, const vl_t *a, const vl_t *b, size_t n, double *out);
  int (*adamw)(vl_ops *o, float *master, float *m, float *v, const vl_t *grad, vl_t *param,
               size_t n, float lr, float b1, float b2, float eps, float wd, float grad_scale,
               int t);
  /* adamw_lean: the same update without an fp32 master (train.optimizer:
   * lean, 12 bytes a parameter): the working weights are the only copy.
   *   p = param (as fp32) * (1 - lr * wd) - (lr / (1 - b1^t)) * m / (...)
   *   param = p rounded to bf16 stochastically (sround.h) with the random
   *           bits vl_sr_hash(index0 + i, seed)
   * index0: offset of element 0 in the whole parameter block; seed: the
   * step's (vl_sr_step_seed).  The CPU backend (fp32 storage) writes the fp32
   * value of that bf16 number; both evaluate the fp32 arithmetic in the same
   * order without contraction, so they agree bit for bit on m, v and param. */
  int (*adamw_lean)(vl_ops *o, float *m, float *v, const vl_t *grad, vl_t *param, size_t n,
                    float lr, float b1, float b2, float eps, float wd, float grad_scale, int t,
                    uint64_t seed, size_t index0);
};

/* The fp32 reference backend; always available. */
int vl_ops_cpu_create(vl_ops **out);
/* The CUDA backend on the current device (kernels/); VL_ENOTSUP when built
 * without CUDA. */
int vl_ops_cuda_create(vl_ops **out, int device);
/* The CUDA backend's attention engine, for the start-up report: "cuDNN
 * 9.19.0 fused attention" when built with cuDNN (the default path for
 * head_dim % 8 == 0 up to 128), else "own flash kernels (built without
 * cuDNN)". */
const char *vl_ops_cuda_attention_engine(void);
/* Frees the table and its backend state. */
int vl_ops_destroy(vl_ops *o);

#endif
