/* attention_cudnn: scaled dot-product attention through cuDNN's fused
 * flash-attention engines (the backend graph API; no cudnn-frontend).
 *
 * Owns: the cuDNN handle, the operation graphs of the forward and backward
 * per segment shape (matmul -> scale -> causal mask -> softmax with stats ->
 * matmul, and the backward's dO.O, recomputed P, dV, dP, dS, dK, dQ), the
 * cache of finalised execution plans, and their execution on the ops
 * stream.  Does not own: the choice between this and the own kernels
 * (kernels/attention.cu), the argument checks (same there).
 *
 * Layout: qkv rows [q heads | k heads | v heads] (ops.h) are read in place
 * through strides; each segment is one batch-1 problem: bidirectional ones
 * (images) at their own length, causal ones (text) at their length rounded
 * up to a bucket of 128 rows through a zero-padded staging copy (exact; see
 * bucket_rows), so that varied text lengths build few plans.  A plan per
 * distinct (rows, heads, head_dim, causal), ~0.1 s to build, LRU-cached.  lse (nh, T) is
 * cuDNN's softmax statistic (max + log sum exp of the scaled scores, the
 * same quantity the own kernels store).  The backward writes dQ, dK, dV of
 * a segment into a scratch and adds them into dqkv (ops.h: +=).
 *
 * Built only with VL_HAVE_CUDNN (configure found cudnn_graph.h and
 * libcudnn); vl_cudnn_attn_compiled() says so at run time. */
#ifndef VL_ATTENTION_CUDNN_H
#define VL_ATTENTION_CUDNN_H
#include "cuda_common.h"

extern "C" {
/* 1 when the cuDNN path is compiled in. */
int vl_cudnn_attn_compiled(void);
/* 1 when this shape can take the cuDNN path: compiled in, head_dim a
 * multiple of 8 up to 128, 16-byte aligned tensors, and VL_ATTENTION_CUDNN
 * not 0.  The own-kernel switches (VL_ATTENTION_GEMM, VL_ATTENTION_FLASH=0,
 * VL_ATTENTION_DETERMINISTIC, VL_ATTENTION_HEADSPLIT) select those kernels
 * and so also turn this path off. */
int vl_cudnn_attn_wanted(int hd, const void *a, const void *b, const void *c, const void *d);
int vl_cudnn_attn_forward(vl_ops *o, bf16 *out, float *lse, const bf16 *qkv,
                          const int32_t *seg_host, int nseg, int T, int nh, int nkv, int hd,
                          float scale, int causal);
int vl_cudnn_attn_backward(vl_ops *o, bf16 *dqkv, const bf16 *dout, const bf16 *out,
                           const float *lse, const bf16 *qkv, const int32_t *seg_host, int nseg,
                           int T, int nh, int nkv, int hd, float scale, int causal);
/* The cuDNN library version (e.g. 91900), 0 when not compiled in. */
long vl_cudnn_version(void);
/* Plans built so far and the seconds spent building them (start-up cost of
 * each new segment length). */
void vl_cudnn_attn_plan_stats(int *n_plans, double *build_s);
/* Releases the plans and the handle (backend destruction). */
void vl_cudnn_attn_free(void);
}
#endif
