/* ops_backend: backend-independent entry points of the op interface. */
#include "err.h"
#include "ops.h"

int vl_ops_destroy(vl_ops *o) {
  if (!o) return VL_OK;
  return o->destroy(o);
}

#ifndef VL_HAVE_CUDA_KERNELS
/* The CUDA kernels (kernels/, built when configure finds CUDA) provide the
 * real vl_ops_cuda_create; without them asking for the GPU backend is an
 * error that says why. */
int vl_ops_cuda_create(vl_ops **out, int device) {
  *out = 0;
#ifdef VL_HAVE_CUDA
  VL_ERROR(VL_ENOTSUP, "the CUDA op backend (kernels/) is not in this build yet: "
           "set run.backend: cpu");
#else
  VL_ERROR(VL_ENOTSUP, "this vltrain was built without CUDA (configure --with-cuda)");
#endif
}
#endif
