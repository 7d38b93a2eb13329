/* attention_cudnn: scaled dot-product attention on cuDNN's fused engines
 * (see attention_cudnn.h for what this module owns).
 *
 * The graphs are the ones cuDNN's runtime fusion recognises as flash
 * attention (the same sequence of backend operations cudnn-frontend's SDPA
 * node lowers to on Hopper with cuDNN 9):
 *   forward:  S = Q K^T; S *= scale; [causal: S = row >= col ? S : -inf];
 *             m = max_j S; E = exp(S - m); z = sum_j E; stats = m + log z;
 *             P = E / z (bf16); O = P V
 *   backward: Dsum = sum_d dO * O; S = Q K^T * scale - stats; [mask];
 *             P = exp(S); dV = P^T dO; dP = dO V^T; dS = P (dP - Dsum) scale;
 *             dK = dS^T Q; dQ = dS K (fp32 accumulator, then bf16)
 * with GQA (K/V with fewer heads) as broadcast batch dimensions and, for the
 * key/value gradients, a sum over each group's query heads. */
#include "attention_cudnn.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#ifdef VL_HAVE_CUDNN
#include <cudnn.h>

#define CUDNN_CHECK(call)                                                                 \
  do {                                                                                    \
    cudnnStatus_t dn_rc_ = (call);                                                        \
    if (dn_rc_ != CUDNN_STATUS_SUCCESS) {                                                 \
      char dn_msg_[512];                                                                  \
      cudnnGetLastErrorString(dn_msg_, sizeof dn_msg_);                                   \
      VL_ERROR(VL_ECUDA, "%s failed: %s%s%s", #call, cudnnGetErrorString(dn_rc_),        \
               dn_msg_[0] ? ": " : "", dn_msg_);                                          \
    }                                                                                     \
  } while (0)

/* ---- a small builder over the backend descriptors ------------------------------ */

enum { MAX_DESC = 96, MAX_OPS = 48 };

struct graph_builder {
  cudnnBackendDescriptor_t all[MAX_DESC]; /* every descriptor made, for release */
  int n_all;
  cudnnBackendDescriptor_t ops[MAX_OPS];
  int n_ops;
  int64_t next_virtual_uid;
};

static int gb_new(graph_builder *g, cudnnBackendDescriptorType_t type,
                  cudnnBackendDescriptor_t *out) {
  if (g->n_all >= MAX_DESC) VL_ERROR(VL_EINVAL, "cuDNN attention graph: too many descriptors");
  CUDNN_CHECK(cudnnBackendCreateDescriptor(type, out));
  g->all[g->n_all++] = *out;
  return VL_OK;
}

static void gb_release(graph_builder *g) {
  for (int i = g->n_all - 1; i >= 0; i--) cudnnBackendDestroyDescriptor(g->all[i]);
  g->n_all = g->n_ops = 0;
}

/* A 4-d tensor; uid < 0 asks for a fresh virtual (intermediate) tensor. */
static int gb_tensor(graph_builder *g, cudnnBackendDescriptor_t *t, int64_t uid,
                     cudnnDataType_t dt, const int64_t dims[4], const int64_t strides[4],
                     bool by_value = false) {
  const bool is_virtual = uid < 0;
  if (is_virtual) uid = g->next_virtual_uid++;
  VL_CALL(gb_new(g, CUDNN_BACKEND_TENSOR_DESCRIPTOR, t));
  int64_t align = 16;
  CUDNN_CHECK(cudnnBackendSetAttribute(*t, CUDNN_ATTR_TENSOR_DATA_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &dt));
  CUDNN_CHECK(cudnnBackendSetAttribute(*t, CUDNN_ATTR_TENSOR_DIMENSIONS, CUDNN_TYPE_INT64, 4, dims));
  CUDNN_CHECK(cudnnBackendSetAttribute(*t, CUDNN_ATTR_TENSOR_STRIDES, CUDNN_TYPE_INT64, 4, strides));
  CUDNN_CHECK(cudnnBackendSetAttribute(*t, CUDNN_ATTR_TENSOR_UNIQUE_ID, CUDNN_TYPE_INT64, 1, &uid));
  CUDNN_CHECK(cudnnBackendSetAttribute(*t, CUDNN_ATTR_TENSOR_BYTE_ALIGNMENT, CUDNN_TYPE_INT64, 1, &align));
  if (is_virtual)
    CUDNN_CHECK(cudnnBackendSetAttribute(*t, CUDNN_ATTR_TENSOR_IS_VIRTUAL, CUDNN_TYPE_BOOLEAN, 1, &is_virtual));
  if (by_value)
    CUDNN_CHECK(cudnnBackendSetAttribute(*t, CUDNN_ATTR_TENSOR_IS_BY_VALUE, CUDNN_TYPE_BOOLEAN, 1, &by_value));
  CUDNN_CHECK(cudnnBackendFinalize(*t));
  return VL_OK;
}

/* A host scalar passed by value at execution (uid names its pointer). */
static int gb_scalar(graph_builder *g, cudnnBackendDescriptor_t *t, int64_t uid) {
  static const int64_t one[4] = {1, 1, 1, 1};
  return gb_tensor(g, t, uid, CUDNN_DATA_FLOAT, one, one, true);
}

static int gb_add_op(graph_builder *g, cudnnBackendDescriptor_t op) {
  if (g->n_ops >= MAX_OPS) VL_ERROR(VL_EINVAL, "cuDNN attention graph: too many operations");
  CUDNN_CHECK(cudnnBackendFinalize(op));
  g->ops[g->n_ops++] = op;
  return VL_OK;
}

/* y = mode(x [, b [, t]]); axis >= 0 for GEN_INDEX. */
static int gb_pointwise(graph_builder *g, cudnnPointwiseMode_t mode, cudnnDataType_t prec,
                        cudnnBackendDescriptor_t x, cudnnBackendDescriptor_t b,
                        cudnnBackendDescriptor_t t, cudnnBackendDescriptor_t y, int64_t axis = -1) {
  cudnnBackendDescriptor_t pw, op;
  VL_CALL(gb_new(g, CUDNN_BACKEND_POINTWISE_DESCRIPTOR, &pw));
  CUDNN_CHECK(cudnnBackendSetAttribute(pw, CUDNN_ATTR_POINTWISE_MODE, CUDNN_TYPE_POINTWISE_MODE, 1, &mode));
  CUDNN_CHECK(cudnnBackendSetAttribute(pw, CUDNN_ATTR_POINTWISE_MATH_PREC, CUDNN_TYPE_DATA_TYPE, 1, &prec));
  if (axis >= 0)
    CUDNN_CHECK(cudnnBackendSetAttribute(pw, CUDNN_ATTR_POINTWISE_AXIS, CUDNN_TYPE_INT64, 1, &axis));
  CUDNN_CHECK(cudnnBackendFinalize(pw));
  VL_CALL(gb_new(g, CUDNN_BACKEND_OPERATION_POINTWISE_DESCRIPTOR, &op));
  float alpha = 1.0f;
  CUDNN_CHECK(cudnnBackendSetAttribute(op, CUDNN_ATTR_OPERATION_POINTWISE_PW_DESCRIPTOR, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &pw));
  CUDNN_CHECK(cudnnBackendSetAttribute(op, CUDNN_ATTR_OPERATION_POINTWISE_XDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &x));
  if (b) CUDNN_CHECK(cudnnBackendSetAttribute(op, CUDNN_ATTR_OPERATION_POINTWISE_BDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &b));
  if (t) CUDNN_CHECK(cudnnBackendSetAttribute(op, CUDNN_ATTR_OPERATION_POINTWISE_TDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &t));
  CUDNN_CHECK(cudnnBackendSetAttribute(op, CUDNN_ATTR_OPERATION_POINTWISE_YDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &y));
  CUDNN_CHECK(cudnnBackendSetAttribute(op, CUDNN_ATTR_OPERATION_POINTWISE_ALPHA1, CUDNN_TYPE_FLOAT, 1, &alpha));
  CUDNN_CHECK(cudnnBackendSetAttribute(op, CUDNN_ATTR_OPERATION_POINTWISE_ALPHA2, CUDNN_TYPE_FLOAT, 1, &alpha));
  return gb_add_op(g, op);
}

/* c = a b over the last two dimensions (leading ones broadcast). */
static int gb_matmul(graph_builder *g, cudnnBackendDescriptor_t a, cudnnBackendDescriptor_t b,
                     cudnnBackendDescriptor_t c) {
  cudnnBackendDescriptor_t mm, op;
  cudnnDataType_t comp = CUDNN_DATA_FLOAT;
  VL_CALL(gb_new(g, CUDNN_BACKEND_MATMUL_DESCRIPTOR, &mm));
  CUDNN_CHECK(cudnnBackendSetAttribute(mm, CUDNN_ATTR_MATMUL_COMP_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &comp));
  CUDNN_CHECK(cudnnBackendFinalize(mm));
  VL_CALL(gb_new(g, CUDNN_BACKEND_OPERATION_MATMUL_DESCRIPTOR, &op));
  CUDNN_CHECK(cudnnBackendSetAttribute(op, CUDNN_ATTR_OPERATION_MATMUL_ADESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &a));
  CUDNN_CHECK(cudnnBackendSetAttribute(op, CUDNN_ATTR_OPERATION_MATMUL_BDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &b));
  CUDNN_CHECK(cudnnBackendSetAttribute(op, CUDNN_ATTR_OPERATION_MATMUL_CDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &c));
  CUDNN_CHECK(cudnnBackendSetAttribute(op, CUDNN_ATTR_OPERATION_MATMUL_DESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &mm));
  return gb_add_op(g, op);
}

/* y = reduce(x) over the dimensions where y has extent 1. */
static int gb_reduce(graph_builder *g, cudnnReduceTensorOp_t mode, cudnnBackendDescriptor_t x,
                     cudnnBackendDescriptor_t y) {
  cudnnBackendDescriptor_t rd, op;
  cudnnDataType_t comp = CUDNN_DATA_FLOAT;
  VL_CALL(gb_new(g, CUDNN_BACKEND_REDUCTION_DESCRIPTOR, &rd));
  CUDNN_CHECK(cudnnBackendSetAttribute(rd, CUDNN_ATTR_REDUCTION_COMP_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &comp));
  CUDNN_CHECK(cudnnBackendSetAttribute(rd, CUDNN_ATTR_REDUCTION_OPERATOR, CUDNN_TYPE_REDUCTION_OPERATOR_TYPE, 1, &mode));
  CUDNN_CHECK(cudnnBackendFinalize(rd));
  VL_CALL(gb_new(g, CUDNN_BACKEND_OPERATION_REDUCTION_DESCRIPTOR, &op));
  CUDNN_CHECK(cudnnBackendSetAttribute(op, CUDNN_ATTR_OPERATION_REDUCTION_XDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &x));
  CUDNN_CHECK(cudnnBackendSetAttribute(op, CUDNN_ATTR_OPERATION_REDUCTION_YDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &y));
  CUDNN_CHECK(cudnnBackendSetAttribute(op, CUDNN_ATTR_OPERATION_REDUCTION_DESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &rd));
  return gb_add_op(g, op);
}

/* y = x seen through other dimensions/strides (a transpose here). */
static int gb_reshape(graph_builder *g, cudnnBackendDescriptor_t x, cudnnBackendDescriptor_t y) {
  cudnnBackendDescriptor_t op;
  VL_CALL(gb_new(g, CUDNN_BACKEND_OPERATION_RESHAPE_DESCRIPTOR, &op));
  CUDNN_CHECK(cudnnBackendSetAttribute(op, CUDNN_ATTR_OPERATION_RESHAPE_XDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &x));
  CUDNN_CHECK(cudnnBackendSetAttribute(op, CUDNN_ATTR_OPERATION_RESHAPE_YDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &y));
  return gb_add_op(g, op);
}

/* ---- the two graphs -------------------------------------------------------------- */

/* Unique ids of the tensors bound at execution. */
enum {
  UID_Q = 1, UID_K, UID_V, UID_O, UID_STATS, UID_SCALE, UID_NEG_INF, UID_DO, UID_DQ, UID_DK,
  UID_DV, UID_DSUM, UID_DQ_ACC, UID_ONE, UID_FIRST_VIRTUAL = 100
};

struct shape_key {
  int backward, L, nh, nkv, hd, causal;
  int64_t ld_qkv, ld_out;
};

/* The causal mask on the scores s (1, nh, L, L): row >= col keeps s, else -inf. */
static int gb_causal(graph_builder *g, cudnnBackendDescriptor_t s, cudnnBackendDescriptor_t neg_inf,
                     const int64_t sd[4], const int64_t ss[4], cudnnBackendDescriptor_t *out) {
  cudnnBackendDescriptor_t row, col, keep;
  VL_CALL(gb_tensor(g, &row, -1, CUDNN_DATA_INT32, sd, ss));
  VL_CALL(gb_tensor(g, &col, -1, CUDNN_DATA_INT32, sd, ss));
  VL_CALL(gb_tensor(g, &keep, -1, CUDNN_DATA_BOOLEAN, sd, ss));
  VL_CALL(gb_tensor(g, out, -1, CUDNN_DATA_FLOAT, sd, ss));
  VL_CALL(gb_pointwise(g, CUDNN_POINTWISE_GEN_INDEX, CUDNN_DATA_FLOAT, s, NULL, NULL, row, 2));
  VL_CALL(gb_pointwise(g, CUDNN_POINTWISE_GEN_INDEX, CUDNN_DATA_FLOAT, s, NULL, NULL, col, 3));
  VL_CALL(gb_pointwise(g, CUDNN_POINTWISE_CMP_GE, CUDNN_DATA_BOOLEAN, row, col, NULL, keep));
  VL_CALL(gb_pointwise(g, CUDNN_POINTWISE_BINARY_SELECT, CUDNN_DATA_FLOAT, s, neg_inf, keep, *out));
  return VL_OK;
}

static int build_forward(graph_builder *g, const shape_key *k) {
  const int64_t L = k->L, nh = k->nh, nkv = k->nkv, hd = k->hd, ld = k->ld_qkv, ldo = k->ld_out;
  const int64_t qd[4] = {1, nh, L, hd}, qs[4] = {L * ld, hd, ld, 1};
  const int64_t ktd[4] = {1, nkv, hd, L}, kts[4] = {L * ld, hd, 1, ld};
  const int64_t vd[4] = {1, nkv, L, hd}, vs[4] = {L * ld, hd, ld, 1};
  const int64_t od[4] = {1, nh, L, hd}, os[4] = {L * ldo, hd, ldo, 1};
  const int64_t sd[4] = {1, nh, L, L}, ss[4] = {nh * L * L, L * L, L, 1};
  const int64_t rd[4] = {1, nh, L, 1}, rs[4] = {nh * L, L, 1, 1};
  cudnnBackendDescriptor_t q, kt, v, o, stats, scale, neg_inf;
  VL_CALL(gb_tensor(g, &q, UID_Q, CUDNN_DATA_BFLOAT16, qd, qs));
  VL_CALL(gb_tensor(g, &kt, UID_K, CUDNN_DATA_BFLOAT16, ktd, kts));
  VL_CALL(gb_tensor(g, &v, UID_V, CUDNN_DATA_BFLOAT16, vd, vs));
  VL_CALL(gb_tensor(g, &o, UID_O, CUDNN_DATA_BFLOAT16, od, os));
  VL_CALL(gb_tensor(g, &stats, UID_STATS, CUDNN_DATA_FLOAT, rd, rs));
  VL_CALL(gb_scalar(g, &scale, UID_SCALE));
  cudnnBackendDescriptor_t s, s1, m, sub, e, z, logz, p;
  VL_CALL(gb_tensor(g, &s, -1, CUDNN_DATA_FLOAT, sd, ss));
  VL_CALL(gb_matmul(g, q, kt, s));
  VL_CALL(gb_tensor(g, &s1, -1, CUDNN_DATA_FLOAT, sd, ss));
  VL_CALL(gb_pointwise(g, CUDNN_POINTWISE_MUL, CUDNN_DATA_FLOAT, s, scale, NULL, s1));
  if (k->causal) {
    VL_CALL(gb_scalar(g, &neg_inf, UID_NEG_INF));
    VL_CALL(gb_causal(g, s1, neg_inf, sd, ss, &s1));
  }
  VL_CALL(gb_tensor(g, &m, -1, CUDNN_DATA_FLOAT, rd, rs));
  VL_CALL(gb_reduce(g, CUDNN_REDUCE_TENSOR_MAX, s1, m));
  VL_CALL(gb_tensor(g, &sub, -1, CUDNN_DATA_FLOAT, sd, ss));
  VL_CALL(gb_pointwise(g, CUDNN_POINTWISE_SUB, CUDNN_DATA_FLOAT, s1, m, NULL, sub));
  VL_CALL(gb_tensor(g, &e, -1, CUDNN_DATA_FLOAT, sd, ss));
  VL_CALL(gb_pointwise(g, CUDNN_POINTWISE_EXP, CUDNN_DATA_FLOAT, sub, NULL, NULL, e));
  VL_CALL(gb_tensor(g, &z, -1, CUDNN_DATA_FLOAT, rd, rs));
  VL_CALL(gb_reduce(g, CUDNN_REDUCE_TENSOR_ADD, e, z));
  VL_CALL(gb_tensor(g, &logz, -1, CUDNN_DATA_FLOAT, rd, rs));
  VL_CALL(gb_pointwise(g, CUDNN_POINTWISE_LOG, CUDNN_DATA_FLOAT, z, NULL, NULL, logz));
  VL_CALL(gb_pointwise(g, CUDNN_POINTWISE_ADD, CUDNN_DATA_FLOAT, m, logz, NULL, stats));
  VL_CALL(gb_tensor(g, &p, -1, CUDNN_DATA_BFLOAT16, sd, ss));
  VL_CALL(gb_pointwise(g, CUDNN_POINTWISE_DIV, CUDNN_DATA_FLOAT, e, z, NULL, p));
  VL_CALL(gb_matmul(g, p, v, o));
  return VL_OK;
}

/* The key/value gradient of a group of query heads: straight into the output
 * (MHA), or per query head then summed over each group (GQA). */
static int gb_kv_grad(graph_builder *g, cudnnBackendDescriptor_t a, cudnnBackendDescriptor_t b,
                      cudnnBackendDescriptor_t out, const shape_key *k) {
  if (k->nh == k->nkv) return gb_matmul(g, a, b, out);
  const int64_t L = k->L, nh = k->nh, hd = k->hd;
  const int64_t fd[4] = {1, nh, L, hd}, fs[4] = {nh * L * hd, L * hd, hd, 1};
  cudnnBackendDescriptor_t full;
  VL_CALL(gb_tensor(g, &full, -1, CUDNN_DATA_BFLOAT16, fd, fs));
  VL_CALL(gb_matmul(g, a, b, full));
  return gb_reduce(g, CUDNN_REDUCE_TENSOR_ADD, full, out);
}

static int build_backward(graph_builder *g, const shape_key *k) {
  const int64_t L = k->L, nh = k->nh, nkv = k->nkv, hd = k->hd, ld = k->ld_qkv, ldo = k->ld_out;
  const int64_t qd[4] = {1, nh, L, hd}, qs[4] = {L * ld, hd, ld, 1};
  const int64_t ktd[4] = {1, nkv, hd, L}, kts[4] = {L * ld, hd, 1, ld};
  const int64_t kd[4] = {1, nkv, L, hd}, ks[4] = {L * ld, hd, ld, 1};
  const int64_t od[4] = {1, nh, L, hd}, os[4] = {L * ldo, hd, ldo, 1};
  const int64_t sd[4] = {1, nh, L, L}, ss[4] = {nh * L * L, L * L, L, 1};
  const int64_t st[4] = {nh * L * L, L * L, 1, L}; /* the transpose of (L, L) */
  const int64_t rd[4] = {1, nh, L, 1}, rs[4] = {nh * L, L, 1, 1};
  const int64_t ad[4] = {1, nh, L, hd}, as[4] = {nh * L * hd, L * hd, hd, 1};
  cudnnBackendDescriptor_t q, kt, vt, o, dout, stats, scale, one, neg_inf = NULL;
  cudnnBackendDescriptor_t dq, dk, dv, dsum, dq_acc;
  VL_CALL(gb_tensor(g, &q, UID_Q, CUDNN_DATA_BFLOAT16, qd, qs));
  VL_CALL(gb_tensor(g, &kt, UID_K, CUDNN_DATA_BFLOAT16, ktd, kts));
  VL_CALL(gb_tensor(g, &vt, UID_V, CUDNN_DATA_BFLOAT16, ktd, kts));
  VL_CALL(gb_tensor(g, &o, UID_O, CUDNN_DATA_BFLOAT16, od, os));
  VL_CALL(gb_tensor(g, &dout, UID_DO, CUDNN_DATA_BFLOAT16, od, os));
  VL_CALL(gb_tensor(g, &stats, UID_STATS, CUDNN_DATA_FLOAT, rd, rs));
  VL_CALL(gb_tensor(g, &dq, UID_DQ, CUDNN_DATA_BFLOAT16, qd, qs));
  VL_CALL(gb_tensor(g, &dk, UID_DK, CUDNN_DATA_BFLOAT16, kd, ks));
  VL_CALL(gb_tensor(g, &dv, UID_DV, CUDNN_DATA_BFLOAT16, kd, ks));
  VL_CALL(gb_tensor(g, &dsum, UID_DSUM, CUDNN_DATA_FLOAT, rd, rs));
  VL_CALL(gb_tensor(g, &dq_acc, UID_DQ_ACC, CUDNN_DATA_FLOAT, ad, as));
  VL_CALL(gb_scalar(g, &scale, UID_SCALE));
  VL_CALL(gb_scalar(g, &one, UID_ONE));
  if (k->causal) VL_CALL(gb_scalar(g, &neg_inf, UID_NEG_INF));
  /* Dsum = sum_d dO * O */
  cudnnBackendDescriptor_t prod, red;
  VL_CALL(gb_tensor(g, &prod, -1, CUDNN_DATA_FLOAT, od, os));
  VL_CALL(gb_pointwise(g, CUDNN_POINTWISE_MUL, CUDNN_DATA_FLOAT, dout, o, NULL, prod));
  VL_CALL(gb_tensor(g, &red, -1, CUDNN_DATA_FLOAT, rd, rs));
  VL_CALL(gb_reduce(g, CUDNN_REDUCE_TENSOR_ADD, prod, red));
  VL_CALL(gb_pointwise(g, CUDNN_POINTWISE_MUL, CUDNN_DATA_FLOAT, red, one, NULL, dsum));
  /* P = exp(Q K^T scale - stats), masked */
  cudnnBackendDescriptor_t s, s1, s2, p;
  VL_CALL(gb_tensor(g, &s, -1, CUDNN_DATA_FLOAT, sd, ss));
  VL_CALL(gb_matmul(g, q, kt, s));
  VL_CALL(gb_tensor(g, &s1, -1, CUDNN_DATA_FLOAT, sd, ss));
  VL_CALL(gb_pointwise(g, CUDNN_POINTWISE_MUL, CUDNN_DATA_FLOAT, s, scale, NULL, s1));
  VL_CALL(gb_tensor(g, &s2, -1, CUDNN_DATA_FLOAT, sd, ss));
  VL_CALL(gb_pointwise(g, CUDNN_POINTWISE_SUB, CUDNN_DATA_FLOAT, s1, stats, NULL, s2));
  if (k->causal) VL_CALL(gb_causal(g, s2, neg_inf, sd, ss, &s2));
  VL_CALL(gb_tensor(g, &p, -1, CUDNN_DATA_FLOAT, sd, ss));
  VL_CALL(gb_pointwise(g, CUDNN_POINTWISE_EXP, CUDNN_DATA_FLOAT, s2, NULL, NULL, p));
  /* dV = P^T dO */
  cudnnBackendDescriptor_t pt;
  VL_CALL(gb_tensor(g, &pt, -1, CUDNN_DATA_BFLOAT16, sd, st));
  VL_CALL(gb_reshape(g, p, pt));
  VL_CALL(gb_kv_grad(g, pt, dout, dv, k));
  /* dS = P (dO V^T - Dsum) scale */
  cudnnBackendDescriptor_t dp, dp1, ds, ds1, dst;
  VL_CALL(gb_tensor(g, &dp, -1, CUDNN_DATA_FLOAT, sd, ss));
  VL_CALL(gb_matmul(g, dout, vt, dp));
  VL_CALL(gb_tensor(g, &dp1, -1, CUDNN_DATA_FLOAT, sd, ss));
  VL_CALL(gb_pointwise(g, CUDNN_POINTWISE_SUB, CUDNN_DATA_FLOAT, dp, dsum, NULL, dp1));
  VL_CALL(gb_tensor(g, &ds, -1, CUDNN_DATA_FLOAT, sd, ss));
  VL_CALL(gb_pointwise(g, CUDNN_POINTWISE_MUL, CUDNN_DATA_FLOAT, dp1, p, NULL, ds));
  VL_CALL(gb_tensor(g, &ds1, -1, CUDNN_DATA_FLOAT, sd, ss));
  VL_CALL(gb_pointwise(g, CUDNN_POINTWISE_MUL, CUDNN_DATA_FLOAT, ds, scale, NULL, ds1));
  /* dK = dS^T Q */
  VL_CALL(gb_tensor(g, &dst, -1, CUDNN_DATA_BFLOAT16, sd, st));
  VL_CALL(gb_reshape(g, ds1, dst));
  VL_CALL(gb_kv_grad(g, dst, q, dk, k));
  /* dQ = dS K (fp32 accumulator, then bf16) */
  cudnnBackendDescriptor_t kk;
  VL_CALL(gb_tensor(g, &kk, -1, CUDNN_DATA_BFLOAT16, kd, ks));
  VL_CALL(gb_reshape(g, kt, kk));
  VL_CALL(gb_matmul(g, ds1, kk, dq_acc));
  VL_CALL(gb_pointwise(g, CUDNN_POINTWISE_IDENTITY, CUDNN_DATA_FLOAT, dq_acc, NULL, NULL, dq));
  return VL_OK;
}

/* ---- plans ------------------------------------------------------------------------- */

struct plan_entry {
  shape_key key;
  graph_builder g;                 /* tensors and operations, kept alive with the plan */
  cudnnBackendDescriptor_t graph, heur, plan;
  cudnnBackendDescriptor_t *cfgs;
  int64_t n_cfgs;
  int64_t workspace;
  unsigned long last_use;
};

enum { MAX_PLANS = 512 };
static cudnnHandle_t g_handle;
static int g_device = -1;
static plan_entry *g_plans[MAX_PLANS];
static int g_n_plans, g_built;
static double g_build_s;
static unsigned long g_clock;

static void plan_free(plan_entry *e) {
  if (!e) return;
  if (e->plan) cudnnBackendDestroyDescriptor(e->plan);
  for (int64_t i = 0; i < e->n_cfgs; i++) cudnnBackendDestroyDescriptor(e->cfgs[i]);
  free(e->cfgs);
  if (e->heur) cudnnBackendDestroyDescriptor(e->heur);
  if (e->graph) cudnnBackendDestroyDescriptor(e->graph);
  gb_release(&e->g);
  free(e);
}

static int handle_for(vl_cuda_ctx *c) {
  if (g_handle && g_device != c->device) { /* plans belong to the handle's device */
    for (int i = 0; i < g_n_plans; i++) plan_free(g_plans[i]);
    g_n_plans = 0;
    cudnnDestroy(g_handle);
    g_handle = NULL;
  }
  if (!g_handle) {
    CUDNN_CHECK(cudnnCreate(&g_handle));
    g_device = c->device;
  }
  CUDNN_CHECK(cudnnSetStream(g_handle, c->stream));
  return VL_OK;
}

static const char *key_text(const shape_key *k, char *buf, size_t n) {
  snprintf(buf, n, "%s L=%d heads %d/%d head_dim %d %s", k->backward ? "backward" : "forward",
           k->L, k->nh, k->nkv, k->hd, k->causal ? "causal" : "bidirectional");
  return buf;
}

/* Heuristics (mode A), then the first engine configuration that finalises. */
static int build_plan(plan_entry *e) {
  char what[128];
  key_text(&e->key, what, sizeof what);
  e->g.next_virtual_uid = UID_FIRST_VIRTUAL;
  VL_CALL(e->key.backward ? build_backward(&e->g, &e->key) : build_forward(&e->g, &e->key));
  CUDNN_CHECK(cudnnBackendCreateDescriptor(CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR, &e->graph));
  CUDNN_CHECK(cudnnBackendSetAttribute(e->graph, CUDNN_ATTR_OPERATIONGRAPH_OPS, CUDNN_TYPE_BACKEND_DESCRIPTOR, e->g.n_ops, e->g.ops));
  CUDNN_CHECK(cudnnBackendSetAttribute(e->graph, CUDNN_ATTR_OPERATIONGRAPH_HANDLE, CUDNN_TYPE_HANDLE, 1, &g_handle));
  cudnnStatus_t rc = cudnnBackendFinalize(e->graph);
  if (rc != CUDNN_STATUS_SUCCESS) {
    char msg[512];
    cudnnGetLastErrorString(msg, sizeof msg);
    VL_ERROR(VL_ECUDA, "cuDNN attention %s: the operation graph was rejected: %s %s", what,
             cudnnGetErrorString(rc), msg);
  }
  CUDNN_CHECK(cudnnBackendCreateDescriptor(CUDNN_BACKEND_ENGINEHEUR_DESCRIPTOR, &e->heur));
  cudnnBackendHeurMode_t mode = CUDNN_HEUR_MODE_A;
  CUDNN_CHECK(cudnnBackendSetAttribute(e->heur, CUDNN_ATTR_ENGINEHEUR_OPERATION_GRAPH, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &e->graph));
  CUDNN_CHECK(cudnnBackendSetAttribute(e->heur, CUDNN_ATTR_ENGINEHEUR_MODE, CUDNN_TYPE_HEUR_MODE, 1, &mode));
  CUDNN_CHECK(cudnnBackendFinalize(e->heur));
  int64_t count = 0;
  CUDNN_CHECK(cudnnBackendGetAttribute(e->heur, CUDNN_ATTR_ENGINEHEUR_RESULTS, CUDNN_TYPE_BACKEND_DESCRIPTOR, 0, &count, NULL));
  if (count <= 0)
    VL_ERROR(VL_ECUDA, "cuDNN attention %s: no engine supports this graph (cuDNN %ld)", what,
             (long)cudnnGetVersion());
  e->cfgs = (cudnnBackendDescriptor_t *)calloc((size_t)count, sizeof *e->cfgs);
  if (!e->cfgs) VL_ERROR(VL_ENOMEM, "cuDNN attention: out of host memory");
  for (int64_t i = 0; i < count; i++) {
    CUDNN_CHECK(cudnnBackendCreateDescriptor(CUDNN_BACKEND_ENGINECFG_DESCRIPTOR, &e->cfgs[i]));
    e->n_cfgs = i + 1;
  }
  int64_t got = 0;
  CUDNN_CHECK(cudnnBackendGetAttribute(e->heur, CUDNN_ATTR_ENGINEHEUR_RESULTS, CUDNN_TYPE_BACKEND_DESCRIPTOR, count, &got, e->cfgs));
  char last[512] = "";
  for (int64_t i = 0; i < got; i++) {
    cudnnBackendDescriptor_t plan;
    CUDNN_CHECK(cudnnBackendCreateDescriptor(CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR, &plan));
    CUDNN_CHECK(cudnnBackendSetAttribute(plan, CUDNN_ATTR_EXECUTION_PLAN_HANDLE, CUDNN_TYPE_HANDLE, 1, &g_handle));
    CUDNN_CHECK(cudnnBackendSetAttribute(plan, CUDNN_ATTR_EXECUTION_PLAN_ENGINE_CONFIG, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &e->cfgs[i]));
    if (cudnnBackendFinalize(plan) == CUDNN_STATUS_SUCCESS) {
      int64_t n = 0;
      CUDNN_CHECK(cudnnBackendGetAttribute(plan, CUDNN_ATTR_EXECUTION_PLAN_WORKSPACE_SIZE, CUDNN_TYPE_INT64, 1, &n, &e->workspace));
      e->plan = plan;
      return VL_OK;
    }
    cudnnGetLastErrorString(last, sizeof last);
    cudnnBackendDestroyDescriptor(plan);
  }
  VL_ERROR(VL_ECUDA, "cuDNN attention %s: none of the %ld engine configurations finalised%s%s",
           what, (long)got, last[0] ? ": " : "", last);
}

static int plan_for(const shape_key *k, plan_entry **out) {
  for (int i = 0; i < g_n_plans; i++)
    if (!memcmp(&g_plans[i]->key, k, sizeof *k)) {
      g_plans[i]->last_use = ++g_clock;
      *out = g_plans[i];
      return VL_OK;
    }
  plan_entry *e = (plan_entry *)calloc(1, sizeof *e);
  if (!e) VL_ERROR(VL_ENOMEM, "cuDNN attention: out of host memory");
  e->key = *k;
  struct timespec t0, t1;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  int rc = build_plan(e);
  clock_gettime(CLOCK_MONOTONIC, &t1);
  if (rc != VL_OK) {
    plan_free(e);
    return rc;
  }
  g_build_s += (t1.tv_sec - t0.tv_sec) + 1e-9 * (t1.tv_nsec - t0.tv_nsec);
  g_built++;
  if (g_n_plans == MAX_PLANS) { /* evict the least recently used */
    int old = 0;
    for (int i = 1; i < g_n_plans; i++)
      if (g_plans[i]->last_use < g_plans[old]->last_use) old = i;
    plan_free(g_plans[old]);
    g_plans[old] = g_plans[--g_n_plans];
  }
  e->last_use = ++g_clock;
  g_plans[g_n_plans++] = e;
  *out = e;
  return VL_OK;
}

static int execute(vl_ops *o, plan_entry *e, int n, const int64_t *uids, void **ptrs) {
  vl_cuda_ctx *c = vl_ctx(o);
  void *ws = NULL;
  if (e->workspace > 0) VL_CALL(vl_cuda_scratch(o, VL_SCRATCH_A, (size_t)e->workspace, &ws));
  cudnnBackendDescriptor_t vp;
  CUDNN_CHECK(cudnnBackendCreateDescriptor(CUDNN_BACKEND_VARIANT_PACK_DESCRIPTOR, &vp));
  cudnnStatus_t rc = cudnnBackendSetAttribute(vp, CUDNN_ATTR_VARIANT_PACK_UNIQUE_IDS, CUDNN_TYPE_INT64, n, uids);
  if (rc == CUDNN_STATUS_SUCCESS)
    rc = cudnnBackendSetAttribute(vp, CUDNN_ATTR_VARIANT_PACK_DATA_POINTERS, CUDNN_TYPE_VOID_PTR, n, ptrs);
  if (rc == CUDNN_STATUS_SUCCESS)
    rc = cudnnBackendSetAttribute(vp, CUDNN_ATTR_VARIANT_PACK_WORKSPACE, CUDNN_TYPE_VOID_PTR, 1, &ws);
  if (rc == CUDNN_STATUS_SUCCESS) rc = cudnnBackendFinalize(vp);
  if (rc == CUDNN_STATUS_SUCCESS) {
    VL_CALL(handle_for(c));
    rc = cudnnBackendExecute(g_handle, e->plan, vp);
  }
  cudnnBackendDestroyDescriptor(vp);
  if (rc != CUDNN_STATUS_SUCCESS) {
    char what[128], msg[512];
    cudnnGetLastErrorString(msg, sizeof msg);
    VL_ERROR(VL_ECUDA, "cuDNN attention %s: execution failed: %s %s",
             key_text(&e->key, what, sizeof what), cudnnGetErrorString(rc), msg);
  }
  return VL_OK;
}

int vl_cudnn_attn_compiled(void) { return 1; }
long vl_cudnn_version(void) { return (long)cudnnGetVersion(); }

int vl_cudnn_attn_wanted(int hd, const void *a, const void *b, const void *c, const void *d) {
  const char *env = getenv("VL_ATTENTION_CUDNN");
  if (env && atoi(env) == 0) return 0;
  if (getenv("VL_ATTENTION_GEMM") || getenv("VL_ATTENTION_DETERMINISTIC") ||
      getenv("VL_ATTENTION_HEADSPLIT"))
    return 0;
  const char *fl = getenv("VL_ATTENTION_FLASH");
  if (fl && atoi(fl) == 0) return 0;
  if (hd % 8 || hd > 128 || hd <= 0) return 0;
  if ((((uintptr_t)a | (uintptr_t)b | (uintptr_t)c | (uintptr_t)d) & 15) != 0) return 0;
  return 1;
}

/* Causal segments run at their length rounded up to a bucket, so that a
 * dataset of many text lengths builds a bounded number of plans (each takes
 * ~0.1 s).  This is exact: the segment's rows are copied into a staging
 * buffer whose extra rows are zero (q, k, v, out, dout) with statistics 0;
 * a real row i < L attends to keys j <= i < L only, and the extra rows add
 * nothing to dK, dV (their dout is zero, so P^T dO and dS vanish).
 * Bidirectional segments (images) run at their exact length.
 * VL_ATTENTION_CUDNN_BUCKET=N sets the bucket (default 128; 1 = exact). */
static int bucket_rows(int L, int causal) {
  if (!causal) return L;
  const char *env = getenv("VL_ATTENTION_CUDNN_BUCKET");
  const int bucket = env && atoi(env) > 0 ? atoi(env) : 128;
  return (L + bucket - 1) / bucket * bucket;
}

/* dst (Lp rows of width w) = src's L rows (row stride lds), rows L.. zero */
static int stage_rows(vl_cuda_ctx *c, bf16 *dst, const bf16 *src, int64_t lds, int L, int Lp, int64_t w) {
  CUDA_CHECK(cudaMemcpy2DAsync(dst, (size_t)w * sizeof(bf16), src, (size_t)lds * sizeof(bf16),
                               (size_t)w * sizeof(bf16), (size_t)L, cudaMemcpyDeviceToDevice, c->stream));
  if (Lp > L)
    CUDA_CHECK(cudaMemsetAsync(dst + (size_t)L * w, 0, (size_t)(Lp - L) * w * sizeof(bf16), c->stream));
  return VL_OK;
}

/* 256-byte aligned carving of one scratch buffer */
static size_t carve(size_t *off, size_t bytes) {
  const size_t at = *off;
  *off = (at + bytes + 255) & ~(size_t)255;
  return at;
}

int vl_cudnn_attn_forward(vl_ops *o, bf16 *out, float *lse, const bf16 *qkv,
                          const int32_t *seg_host, int nseg, int T, int nh, int nkv, int hd,
                          float scale, int causal) {
  vl_cuda_ctx *c = vl_ctx(o);
  VL_CALL(handle_for(c));
  const int64_t ld = (int64_t)(nh + 2 * nkv) * hd, ldo = (int64_t)nh * hd;
  float neg_inf = -INFINITY;
  for (int s = 0; s < nseg; s++) {
    const int r0 = seg_host[s], L = seg_host[s + 1] - seg_host[s];
    if (L <= 0) continue;
    const int Lp = bucket_rows(L, causal);
    const int padded = Lp != L;
    shape_key k = {0, Lp, nh, nkv, hd, causal, ld, ldo};
    plan_entry *e;
    VL_CALL(plan_for(&k, &e));
    const bf16 *x = qkv + (size_t)r0 * ld;
    bf16 *o_rows = out + (size_t)r0 * ldo;
    float *stats = lse + r0;
    const int stats_direct = (L == T && !padded);
    char *b;
    size_t off = 0, at_st = carve(&off, (size_t)nh * Lp * sizeof(float));
    size_t at_x = padded ? carve(&off, (size_t)Lp * ld * sizeof(bf16)) : 0;
    size_t at_o = padded ? carve(&off, (size_t)Lp * ldo * sizeof(bf16)) : 0;
    VL_CALL(vl_cuda_scratch(o, VL_SCRATCH_B, off, (void **)&b));
    if (!stats_direct) stats = (float *)(b + at_st);
    if (padded) {
      VL_CALL(stage_rows(c, (bf16 *)(b + at_x), x, ld, L, Lp, ld));
      x = (const bf16 *)(b + at_x);
      o_rows = (bf16 *)(b + at_o);
    }
    int64_t u[7] = {UID_Q, UID_K, UID_V, UID_O, UID_STATS, UID_SCALE, UID_NEG_INF};
    void *p[7] = {(void *)x, (void *)(x + (size_t)nh * hd), (void *)(x + (size_t)(nh + nkv) * hd),
                  o_rows, stats, &scale, &neg_inf};
    VL_CALL(execute(o, e, causal ? 7 : 6, u, p));
    if (padded)
      CUDA_CHECK(cudaMemcpy2DAsync(out + (size_t)r0 * ldo, (size_t)ldo * sizeof(bf16), o_rows,
                                   (size_t)ldo * sizeof(bf16), (size_t)ldo * sizeof(bf16), (size_t)L,
                                   cudaMemcpyDeviceToDevice, c->stream));
    if (!stats_direct)
      CUDA_CHECK(cudaMemcpy2DAsync(lse + r0, (size_t)T * sizeof(float), stats, (size_t)Lp * sizeof(float),
                                   (size_t)L * sizeof(float), (size_t)nh, cudaMemcpyDeviceToDevice, c->stream));
  }
  return VL_OK;
}

int vl_cudnn_attn_backward(vl_ops *o, bf16 *dqkv, const bf16 *dout, const bf16 *out,
                           const float *lse, const bf16 *qkv, const int32_t *seg_host, int nseg,
                           int T, int nh, int nkv, int hd, float scale, int causal) {
  vl_cuda_ctx *c = vl_ctx(o);
  VL_CALL(handle_for(c));
  const int64_t ld = (int64_t)(nh + 2 * nkv) * hd, ldo = (int64_t)nh * hd;
  float neg_inf = -INFINITY, one = 1.0f;
  for (int s = 0; s < nseg; s++) {
    const int r0 = seg_host[s], L = seg_host[s + 1] - seg_host[s];
    if (L <= 0) continue;
    const int Lp = bucket_rows(L, causal);
    const int padded = Lp != L;
    shape_key k = {1, Lp, nh, nkv, hd, causal, ld, ldo};
    plan_entry *e;
    VL_CALL(plan_for(&k, &e));
    /* scratch B: stats | Dsum (nh, Lp) | dQ accumulator (nh, Lp, hd) fp32 |
     * (padded) staged q|k|v, out, dout; scratch C: the segment's dq|dk|dv
     * rows (Lp, ld) bf16, then added into dqkv (ops.h: +=) */
    const size_t nst = (size_t)nh * Lp, nacc = (size_t)nh * Lp * hd;
    size_t off = 0;
    const size_t at_st = carve(&off, nst * sizeof(float)), at_ds = carve(&off, nst * sizeof(float));
    const size_t at_acc = carve(&off, nacc * sizeof(float));
    const size_t at_x = padded ? carve(&off, (size_t)Lp * ld * sizeof(bf16)) : 0;
    const size_t at_o = padded ? carve(&off, (size_t)Lp * ldo * sizeof(bf16)) : 0;
    const size_t at_do = padded ? carve(&off, (size_t)Lp * ldo * sizeof(bf16)) : 0;
    char *b;
    bf16 *grad;
    VL_CALL(vl_cuda_scratch(o, VL_SCRATCH_B, off, (void **)&b));
    VL_CALL(vl_cuda_scratch(o, VL_SCRATCH_C, (size_t)Lp * ld * sizeof(bf16), (void **)&grad));
    float *stats = (float *)(b + at_st), *dsum = (float *)(b + at_ds), *acc = (float *)(b + at_acc);
    const bf16 *x = qkv + (size_t)r0 * ld, *o_rows = out + (size_t)r0 * ldo,
               *do_rows = dout + (size_t)r0 * ldo;
    if (L == T && !padded) stats = (float *)lse;
    else {
      if (padded) CUDA_CHECK(cudaMemsetAsync(stats, 0, nst * sizeof(float), c->stream));
      CUDA_CHECK(cudaMemcpy2DAsync(stats, (size_t)Lp * sizeof(float), lse + r0, (size_t)T * sizeof(float),
                                   (size_t)L * sizeof(float), (size_t)nh, cudaMemcpyDeviceToDevice, c->stream));
    }
    if (padded) {
      VL_CALL(stage_rows(c, (bf16 *)(b + at_x), x, ld, L, Lp, ld));
      VL_CALL(stage_rows(c, (bf16 *)(b + at_o), o_rows, ldo, L, Lp, ldo));
      VL_CALL(stage_rows(c, (bf16 *)(b + at_do), do_rows, ldo, L, Lp, ldo));
      x = (const bf16 *)(b + at_x);
      o_rows = (const bf16 *)(b + at_o);
      do_rows = (const bf16 *)(b + at_do);
    }
    CUDA_CHECK(cudaMemsetAsync(acc, 0, nacc * sizeof(float), c->stream));
    int64_t u[14] = {UID_Q, UID_K, UID_V, UID_O, UID_DO, UID_STATS, UID_DQ, UID_DK, UID_DV,
                     UID_DSUM, UID_DQ_ACC, UID_SCALE, UID_ONE, UID_NEG_INF};
    void *p[14] = {(void *)x, (void *)(x + (size_t)nh * hd), (void *)(x + (size_t)(nh + nkv) * hd),
                   (void *)o_rows, (void *)do_rows, stats, grad, grad + (size_t)nh * hd,
                   grad + (size_t)(nh + nkv) * hd, dsum, acc, &scale, &one, &neg_inf};
    VL_CALL(execute(o, e, causal ? 14 : 13, u, p));
    bf16 *rows = dqkv + (size_t)r0 * ld; /* the real rows only: dqkv += grad */
    VL_CALL(o->add(o, rows, rows, grad, (size_t)L * ld));
  }
  return VL_OK;
}

void vl_cudnn_attn_plan_stats(int *n_plans, double *build_s) {
  *n_plans = g_built;
  *build_s = g_build_s;
}

void vl_cudnn_attn_free(void) {
  for (int i = 0; i < g_n_plans; i++) plan_free(g_plans[i]);
  g_n_plans = 0;
  if (g_handle) cudnnDestroy(g_handle);
  g_handle = NULL;
  g_device = -1;
}

#else /* !VL_HAVE_CUDNN */

int vl_cudnn_attn_compiled(void) { return 0; }
long vl_cudnn_version(void) { return 0; }
int vl_cudnn_attn_wanted(int, const void *, const void *, const void *, const void *) { return 0; }
int vl_cudnn_attn_forward(vl_ops *, bf16 *, float *, const bf16 *, const int32_t *, int, int, int,
                          int, int, float, int) {
  VL_ERROR(VL_EINVAL, "attention: built without cuDNN (configure did not find cudnn_graph.h and libcudnn)");
}
int vl_cudnn_attn_backward(vl_ops *, bf16 *, const bf16 *, const bf16 *, const float *, const bf16 *,
                           const int32_t *, int, int, int, int, int, float, int) {
  VL_ERROR(VL_EINVAL, "attention: built without cuDNN (configure did not find cudnn_graph.h and libcudnn)");
}
void vl_cudnn_attn_plan_stats(int *n_plans, double *build_s) {
  *n_plans = 0;
  *build_s = 0;
}
void vl_cudnn_attn_free(void) {}

#endif
