/* backend: the CUDA vl_ops table — context (stream, cuBLASLt handle and
 * workspace, scratch), memory, fp32 <-> bf16 transfers, creation. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuda_common.h"
#include "attention_cudnn.h"

int vl_cuda_scratch(vl_ops *o, int which, size_t bytes, void **out) {
  vl_cuda_ctx *c = vl_ctx(o);
  if (bytes > c->scratch_bytes[which]) {
    if (c->scratch[which]) {
      CUDA_CHECK(cudaStreamSynchronize(c->stream));
      CUDA_CHECK(cudaFree(c->scratch[which]));
      c->scratch[which] = NULL;
    }
    size_t want = bytes + bytes / 4;
    cudaError_t rc = cudaMalloc(&c->scratch[which], want);
    if (rc != cudaSuccess) {
      c->scratch_bytes[which] = 0;
      VL_ERROR(VL_ENOMEM, "cudaMalloc of %zu bytes of scratch failed: %s", want, cudaGetErrorString(rc));
    }
    c->scratch_bytes[which] = want;
  }
  *out = c->scratch[which];
  return VL_OK;
}

static int cu_alloc(vl_ops *o, void **p, size_t bytes, const char *what) {
  cudaError_t rc = cudaMalloc(p, bytes ? bytes : 1);
  if (rc != cudaSuccess) {
    size_t free_b = 0, total_b = 0;
    cudaGetLastError();
    cudaMemGetInfo(&free_b, &total_b);
    *p = NULL;
    VL_ERROR(VL_ENOMEM, "cudaMalloc of %zu bytes for %s failed (%s): %.2f GiB free of %.2f GiB",
             bytes, what, cudaGetErrorString(rc), free_b / 1073741824.0, total_b / 1073741824.0);
  }
  return VL_OK;
}
static int cu_free(vl_ops *o, void *p) {
  if (p) CUDA_CHECK(cudaFree(p));
  return VL_OK;
}
static int cu_zero(vl_ops *o, void *p, size_t bytes) {
  CUDA_CHECK(cudaMemsetAsync(p, 0, bytes, vl_ctx(o)->stream));
  return VL_OK;
}
static int cu_copy(vl_ops *o, void *d, const void *s, size_t bytes) {
  CUDA_CHECK(cudaMemcpyAsync(d, s, bytes, cudaMemcpyDeviceToDevice, vl_ctx(o)->stream));
  return VL_OK;
}
static int cu_put_raw(vl_ops *o, void *d, const void *s, size_t bytes) {
  CUDA_CHECK(cudaMemcpyAsync(d, s, bytes, cudaMemcpyHostToDevice, vl_ctx(o)->stream));
  CUDA_CHECK(cudaStreamSynchronize(vl_ctx(o)->stream));
  return VL_OK;
}
static int cu_get_raw(vl_ops *o, void *d, const void *s, size_t bytes) {
  CUDA_CHECK(cudaMemcpyAsync(d, s, bytes, cudaMemcpyDeviceToHost, vl_ctx(o)->stream));
  CUDA_CHECK(cudaStreamSynchronize(vl_ctx(o)->stream));
  return VL_OK;
}

__global__ void f32_to_bf16(bf16 *d, const float *s, size_t n) {
  size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
  if (i < n) d[i] = __float2bfloat16(s[i]);
}
__global__ void bf16_to_f32(float *d, const bf16 *s, size_t n) {
  size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
  if (i < n) d[i] = __bfloat162float(s[i]);
}

/* in chunks through an fp32 staging buffer on the device */
static const size_t STAGE = (size_t)64 << 20; /* floats */

static int cu_put(vl_ops *o, vl_t *d, const float *s, size_t n) {
  vl_cuda_ctx *c = vl_ctx(o);
  for (size_t off = 0; off < n; off += STAGE) {
    size_t k = n - off < STAGE ? n - off : STAGE;
    float *st;
    VL_CALL(vl_cuda_scratch(o, VL_SCRATCH_C, k * sizeof(float), (void **)&st));
    CUDA_CHECK(cudaMemcpyAsync(st, s + off, k * sizeof(float), cudaMemcpyHostToDevice, c->stream));
    f32_to_bf16<<<vl_blocks(k, 256), 256, 0, c->stream>>>((bf16 *)d + off, st, k);
    LAUNCH_CHECK("f32_to_bf16");
    CUDA_CHECK(cudaStreamSynchronize(c->stream));
  }
  return VL_OK;
}
static int cu_get(vl_ops *o, float *d, const vl_t *s, size_t n) {
  vl_cuda_ctx *c = vl_ctx(o);
  for (size_t off = 0; off < n; off += STAGE) {
    size_t k = n - off < STAGE ? n - off : STAGE;
    float *st;
    VL_CALL(vl_cuda_scratch(o, VL_SCRATCH_C, k * sizeof(float), (void **)&st));
    bf16_to_f32<<<vl_blocks(k, 256), 256, 0, c->stream>>>(st, (const bf16 *)s + off, k);
    LAUNCH_CHECK("bf16_to_f32");
    CUDA_CHECK(cudaMemcpyAsync(d + off, st, k * sizeof(float), cudaMemcpyDeviceToHost, c->stream));
    CUDA_CHECK(cudaStreamSynchronize(c->stream));
  }
  return VL_OK;
}
/* ---- asynchronous transfers, fences, timers (ops.h) ---- */
static int cu_host_alloc(vl_ops *o, void **p, size_t bytes, const char *what) {
  cudaError_t rc = cudaMallocHost(p, bytes ? bytes : 1);
  if (rc != cudaSuccess) {
    *p = NULL;
    VL_ERROR(VL_ENOMEM, "cudaMallocHost of %zu bytes for %s failed: %s", bytes, what, cudaGetErrorString(rc));
  }
  return VL_OK;
}
static int cu_host_free(vl_ops *o, void *p) {
  if (p) CUDA_CHECK(cudaFreeHost(p));
  return VL_OK;
}
static int cu_put_raw_async(vl_ops *o, void *d, const void *s, size_t bytes) {
  if (bytes) CUDA_CHECK(cudaMemcpyAsync(d, s, bytes, cudaMemcpyHostToDevice, vl_ctx(o)->stream));
  return VL_OK;
}
static int cu_get_raw_async(vl_ops *o, void *d, const void *s, size_t bytes) {
  if (bytes) CUDA_CHECK(cudaMemcpyAsync(d, s, bytes, cudaMemcpyDeviceToHost, vl_ctx(o)->stream));
  return VL_OK;
}
/* fp32 through the context's device staging buffer, converted on the GPU */
static int cu_put_async(vl_ops *o, vl_t *d, const float *s, size_t n) {
  vl_cuda_ctx *c = vl_ctx(o);
  if (!n) return VL_OK;
  if (n * sizeof(float) > c->staging_bytes) {
    if (c->staging) {
      CUDA_CHECK(cudaStreamSynchronize(c->stream));
      CUDA_CHECK(cudaFree(c->staging));
      c->staging = NULL;
      c->staging_bytes = 0;
    }
    cudaError_t rc = cudaMalloc(&c->staging, n * sizeof(float));
    if (rc != cudaSuccess) {
      c->staging = NULL;
      VL_ERROR(VL_ENOMEM, "cudaMalloc of %zu bytes of upload staging failed: %s", n * sizeof(float),
               cudaGetErrorString(rc));
    }
    c->staging_bytes = n * sizeof(float);
  }
  CUDA_CHECK(cudaMemcpyAsync(c->staging, s, n * sizeof(float), cudaMemcpyHostToDevice, c->stream));
  f32_to_bf16<<<vl_blocks(n, 256), 256, 0, c->stream>>>((bf16 *)d, c->staging, n);
  LAUNCH_CHECK("f32_to_bf16");
  return VL_OK;
}
static void *cu_compute_stream(vl_ops *o) { return (void *)vl_ctx(o)->stream; }

static int cu_fence_record(vl_ops *o, int i) {
  vl_cuda_ctx *c = vl_ctx(o);
  if (i < 0 || i >= VL_OPS_FENCES) VL_ERROR(VL_EINVAL, "fence %d of %d", i, VL_OPS_FENCES);
  if (!c->fence[i]) CUDA_CHECK(cudaEventCreateWithFlags(&c->fence[i], cudaEventDisableTiming));
  CUDA_CHECK(cudaEventRecord(c->fence[i], c->stream));
  return VL_OK;
}
static int cu_fence_wait(vl_ops *o, int i) {
  vl_cuda_ctx *c = vl_ctx(o);
  if (i < 0 || i >= VL_OPS_FENCES) VL_ERROR(VL_EINVAL, "fence %d of %d", i, VL_OPS_FENCES);
  if (c->fence[i]) CUDA_CHECK(cudaEventSynchronize(c->fence[i]));
  return VL_OK;
}
static int cu_timer_record(vl_ops *o, int i) {
  vl_cuda_ctx *c = vl_ctx(o);
  if (i < 0 || i >= VL_OPS_TIMERS) VL_ERROR(VL_EINVAL, "timer %d of %d", i, VL_OPS_TIMERS);
  if (!c->timers) {
    c->timers = (cudaEvent_t *)calloc(VL_OPS_TIMERS, sizeof *c->timers);
    if (!c->timers) VL_ERROR(VL_ENOMEM, "timers");
  }
  if (!c->timers[i]) CUDA_CHECK(cudaEventCreate(&c->timers[i]));
  CUDA_CHECK(cudaEventRecord(c->timers[i], c->stream));
  return VL_OK;
}
static int cu_timer_ms(vl_ops *o, int i, int j, float *ms) {
  vl_cuda_ctx *c = vl_ctx(o);
  if (!c->timers || i < 0 || j < 0 || i >= VL_OPS_TIMERS || j >= VL_OPS_TIMERS || !c->timers[i] || !c->timers[j])
    VL_ERROR(VL_EINVAL, "timers %d, %d not recorded", i, j);
  CUDA_CHECK(cudaEventElapsedTime(ms, c->timers[i], c->timers[j]));
  return VL_OK;
}

static int cu_mem_info(vl_ops *o, size_t *free_b, size_t *total_b) {
  CUDA_CHECK(cudaMemGetInfo(free_b, total_b));
  return VL_OK;
}

static int cu_sync(vl_ops *o) {
  CUDA_CHECK(cudaStreamSynchronize(vl_ctx(o)->stream));
  return VL_OK;
}

__global__ void add_f32_to_bf16(bf16 *g, const float *s, size_t n) {
  size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
  if (i < n) g[i] = __float2bfloat16(__bfloat162float(g[i]) + s[i]);
}
int vl_cuda_add_f32_to_bf16(vl_ops *o, bf16 *g, const float *s, size_t n) {
  add_f32_to_bf16<<<vl_blocks(n, 256), 256, 0, vl_ctx(o)->stream>>>(g, s, n);
  LAUNCH_CHECK("add_f32_to_bf16");
  return VL_OK;
}

static int cu_destroy(vl_ops *o) {
  vl_cuda_ctx *c = vl_ctx(o);
  if (c) {
    cudaStreamSynchronize(c->stream);
    for (int i = 0; i < 3; i++)
      if (c->scratch[i]) cudaFree(c->scratch[i]);
    if (c->staging) cudaFree(c->staging);
    for (int i = 0; i < VL_OPS_FENCES; i++)
      if (c->fence[i]) cudaEventDestroy(c->fence[i]);
    if (c->timers) {
      for (int i = 0; i < VL_OPS_TIMERS; i++)
        if (c->timers[i]) cudaEventDestroy(c->timers[i]);
      free(c->timers);
    }
    vl_cuda_gemm_plans_free();
    vl_cudnn_attn_free();
    if (c->lt_workspace) cudaFree(c->lt_workspace);
    if (c->lt) cublasLtDestroy(c->lt);
    if (c->stream) cudaStreamDestroy(c->stream);
    free(c);
  }
  free(o);
  return VL_OK;
}

extern "C" int vl_ops_cuda_create(vl_ops **out, int device) {
  *out = NULL;
  int n = 0;
  cudaError_t rc = cudaGetDeviceCount(&n);
  if (rc != cudaSuccess || n == 0) {
    cudaGetLastError();
    VL_ERROR(VL_ECUDA, "no CUDA device visible (%s)", rc != cudaSuccess ? cudaGetErrorString(rc) : "0 devices");
  }
  if (device < 0 || device >= n) VL_ERROR(VL_EINVAL, "CUDA device %d does not exist (%d visible)", device, n);
  CUDA_CHECK(cudaSetDevice(device));
  vl_ops *o = (vl_ops *)calloc(1, sizeof *o);
  vl_cuda_ctx *c = (vl_cuda_ctx *)calloc(1, sizeof *c);
  if (!o || !c) {
    free(o);
    free(c);
    VL_ERROR(VL_ENOMEM, "CUDA op table");
  }
  o->ctx = c;
  c->device = device;
  int r = VL_OK;
  if (cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking) != cudaSuccess ||
      cublasLtCreate(&c->lt) != CUBLAS_STATUS_SUCCESS ||
      cudaMalloc(&c->lt_workspace, (size_t)32 << 20) != cudaSuccess)
    r = vl_err_raise(VL_ECUDA, __FILE__, __LINE__, __func__,
                     "cannot create the CUDA stream, cuBLASLt handle or workspace on device %d", device);
  c->lt_workspace_bytes = (size_t)32 << 20;
  o->name = "cuda";
  o->elem_size = sizeof(bf16);
  o->alloc = cu_alloc;
  o->free = cu_free;
  o->zero = cu_zero;
  o->copy = cu_copy;
  o->put = cu_put;
  o->get = cu_get;
  o->put_raw = cu_put_raw;
  o->get_raw = cu_get_raw;
  o->sync = cu_sync;
  o->mem_info = cu_mem_info;
  o->destroy = cu_destroy;
  o->host_alloc = cu_host_alloc;
  o->host_free = cu_host_free;
  o->put_raw_async = cu_put_raw_async;
  o->get_raw_async = cu_get_raw_async;
  o->put_async = cu_put_async;
  o->fence_record = cu_fence_record;
  o->compute_stream = cu_compute_stream;
  o->fence_wait = cu_fence_wait;
  o->timer_record = cu_timer_record;
  o->timer_ms = cu_timer_ms;
  vl_cuda_register_linear(o);
  vl_cuda_register_pointwise(o);
  vl_cuda_register_norm(o);
  vl_cuda_register_rope(o);
  vl_cuda_register_attention(o);
  vl_cuda_register_loss(o);
  vl_cuda_register_optim(o);
  if (r != VL_OK) {
    cu_destroy(o);
    return r;
  }
  *out = o;
  return VL_OK;
}
