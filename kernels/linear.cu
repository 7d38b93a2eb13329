/* linear: matmul forward/backward through cuBLASLt (bf16 in, fp32 compute),
 * bias by the epilogue, bias gradient by a column-sum kernel. */
#include "cuda_common.h"

int vl_cuda_gemm(vl_ops *o, void *C, int c_is_f32, const bf16 *A, int ta, const bf16 *B, int tb,
                 const bf16 *bias, int M, int N, int K, float alpha, float beta) {
  return vl_cuda_gemm_ld(o, C, c_is_f32, 0, A, ta, 0, B, tb, 0, bias, M, N, K, alpha, beta);
}

int vl_cuda_gemm_ld(vl_ops *o, void *C, int c_is_f32, int64_t ldc_rm, const bf16 *A, int ta,
                    int64_t lda_rm, const bf16 *B, int tb, int64_t ldb_rm, const bf16 *bias, int M,
                    int N, int K, float alpha, float beta) {
  vl_cuda_ctx *c = vl_ctx(o);
  /* row-major C (M,N) = column-major C^T (N,M): C^T = op(B)^T op(A)^T */
  cublasOperation_t opa = tb ? CUBLAS_OP_T : CUBLAS_OP_N; /* cuBLAS "A" is our B */
  cublasOperation_t opb = ta ? CUBLAS_OP_T : CUBLAS_OP_N; /* cuBLAS "B" is our A */
  const uint64_t m = (uint64_t)N, n = (uint64_t)M, k = (uint64_t)K;
  /* row-major leading dimensions (0: packed) become the column-major ones */
  const int64_t lda = ldb_rm ? ldb_rm : (tb ? K : N), ldb = lda_rm ? lda_rm : (ta ? M : K);
  const int64_t ldc = ldc_rm ? ldc_rm : N;
  cublasLtMatmulDesc_t desc = NULL;
  cublasLtMatrixLayout_t la = NULL, lb = NULL, lc = NULL;
  cublasLtMatmulPreference_t pref = NULL;
  int rc = VL_OK;
  cublasLtMatmulHeuristicResult_t heur;
  int found = 0;
  cudaDataType_t ct = c_is_f32 ? CUDA_R_32F : CUDA_R_16BF;
#define LT(call)                                                                     \
  do {                                                                               \
    cublasStatus_t s_ = (call);                                                      \
    if (s_ != CUBLAS_STATUS_SUCCESS) {                                               \
      rc = vl_err_raise(VL_ECUDA, __FILE__, __LINE__, __func__,                      \
                        "%s failed (status %d) for GEMM M=%d N=%d K=%d", #call,      \
                        (int)s_, M, N, K);                                           \
      goto done;                                                                     \
    }                                                                                \
  } while (0)
  LT(cublasLtMatmulDescCreate(&desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  LT(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSA, &opa, sizeof opa));
  LT(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSB, &opb, sizeof opb));
  if (bias) {
    cublasLtEpilogue_t epi = CUBLASLT_EPILOGUE_BIAS;
    cudaDataType_t bt = CUDA_R_16BF;
    LT(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof epi));
    LT(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof bias));
    LT(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bt, sizeof bt));
  }
  LT(cublasLtMatrixLayoutCreate(&la, CUDA_R_16BF, opa == CUBLAS_OP_N ? m : k, opa == CUBLAS_OP_N ? k : m, lda));
  LT(cublasLtMatrixLayoutCreate(&lb, CUDA_R_16BF, opb == CUBLAS_OP_N ? k : n, opb == CUBLAS_OP_N ? n : k, ldb));
  LT(cublasLtMatrixLayoutCreate(&lc, ct, m, n, ldc));
  LT(cublasLtMatmulPreferenceCreate(&pref));
  LT(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                          &c->lt_workspace_bytes, sizeof c->lt_workspace_bytes));
  LT(cublasLtMatmulAlgoGetHeuristic(c->lt, desc, la, lb, lc, lc, pref, 1, &heur, &found));
  if (!found) {
    rc = vl_err_raise(VL_ECUDA, __FILE__, __LINE__, __func__,
                      "cuBLASLt has no algorithm for GEMM M=%d N=%d K=%d", M, N, K);
    goto done;
  }
  LT(cublasLtMatmul(c->lt, desc, &alpha, B, la, A, lb, &beta, C, lc, C, lc, &heur.algo,
                    c->lt_workspace, c->lt_workspace_bytes, c->stream));
done:
  if (pref) cublasLtMatmulPreferenceDestroy(pref);
  if (la) cublasLtMatrixLayoutDestroy(la);
  if (lb) cublasLtMatrixLayoutDestroy(lb);
  if (lc) cublasLtMatrixLayoutDestroy(lc);
  if (desc) cublasLtMatmulDescDestroy(desc);
#undef LT
  return rc;
}

static int cu_matmul_forward(vl_ops *o, vl_t *out, const vl_t *inp, const vl_t *W,
                             const vl_t *bias, int M, int K, int N, int acc) {
  VL_CALL(vl_cuda_gemm(o, out, 0, (const bf16 *)inp, 0, (const bf16 *)W, 1, (const bf16 *)bias,
                       M, N, K, 1.0f, acc ? 1.0f : 0.0f));
  return VL_OK;
}

/* s[col] += sum over a block of rows of x (rows, N) */
__global__ void column_sums(float *s, const bf16 *x, int rows, int N, int rows_per_block) {
  int col = blockIdx.x * blockDim.x + threadIdx.x;
  if (col >= N) return;
  int r0 = blockIdx.y * rows_per_block, r1 = min(rows, r0 + rows_per_block);
  float acc = 0.0f;
  for (int r = r0; r < r1; r++) acc += __bfloat162float(x[(size_t)r * N + col]);
  atomicAdd(&s[col], acc);
}

static int cu_matmul_backward(vl_ops *o, vl_t *dinp, vl_t *dW, vl_t *dbias, const vl_t *dout,
                              const vl_t *inp, const vl_t *W, int M, int K, int N) {
  if (dinp)
    VL_CALL(vl_cuda_gemm(o, dinp, 0, (const bf16 *)dout, 0, (const bf16 *)W, 0, NULL, M, K, N, 1.0f, 1.0f));
  if (dW)
    VL_CALL(vl_cuda_gemm(o, dW, 0, (const bf16 *)dout, 1, (const bf16 *)inp, 0, NULL, N, K, M, 1.0f, 1.0f));
  if (dbias) {
    float *s;
    VL_CALL(vl_cuda_scratch(o, VL_SCRATCH_A, (size_t)N * sizeof(float), (void **)&s));
    CUDA_CHECK(cudaMemsetAsync(s, 0, (size_t)N * sizeof(float), vl_ctx(o)->stream));
    const int rpb = 256;
    dim3 grid(vl_blocks((size_t)N, 256), (unsigned)((M + rpb - 1) / rpb));
    column_sums<<<grid, 256, 0, vl_ctx(o)->stream>>>(s, (const bf16 *)dout, M, N, rpb);
    LAUNCH_CHECK("column_sums");
    VL_CALL(vl_cuda_add_f32_to_bf16(o, (bf16 *)dbias, s, (size_t)N));
  }
  return VL_OK;
}

void vl_cuda_register_linear(vl_ops *o) {
  o->matmul_forward = cu_matmul_forward;
  o->matmul_backward = cu_matmul_backward;
}
