/* ops_backend: backend-independent entry points of the op interface. */
#include "err.h"
#include "ops.h"

int vl_ops_destroy(vl_ops *o) {
  if (!o) return VL_OK;
  return o->destroy(o);
}

#ifndef VL_HAVE_CUDA
int vl_ops_cuda_create(vl_ops **out, int device) {
  *out = 0;
  VL_ERROR(VL_ENOTSUP, "this vltrain was built without CUDA (configure --with-cuda to build the GPU backend)");
}
#endif
