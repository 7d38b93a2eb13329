/* safetensors: Hugging Face safetensors files — reading (mmap, single files
 * and sharded folders with model.safetensors.index.json) and writing.
 *
 * Owns: the format (8-byte little-endian header length, JSON header parsed
 * with cJSON, data buffer), validation with errors naming file and tensor,
 * dtype conversion (bf16/f16/f64/integers -> f32).  Does not own: which
 * tensors a model needs (weights.c).
 */
#ifndef VL_SAFETENSORS_H
#define VL_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

typedef enum {
  VL_DT_F64, VL_DT_F32, VL_DT_F16, VL_DT_BF16, VL_DT_I64, VL_DT_I32, VL_DT_I16,
  VL_DT_I8, VL_DT_U8, VL_DT_BOOL, VL_DT_COUNT
} vl_dtype;

typedef struct vl_safetensors vl_safetensors;
typedef struct vl_st_tensor vl_st_tensor;

/* path: a .safetensors file, or a folder holding model.safetensors.index.json
 * (sharded) or model.safetensors. */
int vl_st_open(vl_safetensors **out, const char *path);
void vl_st_close(vl_safetensors *st);

const vl_st_tensor *vl_st_find(const vl_safetensors *st, const char *name); /* NULL if absent */
size_t vl_st_count(const vl_safetensors *st);
const vl_st_tensor *vl_st_at(const vl_safetensors *st, size_t i);
const char *vl_st_metadata(const vl_safetensors *st, const char *key);

const char *vl_st_tensor_name(const vl_st_tensor *t);
vl_dtype vl_st_tensor_dtype(const vl_st_tensor *t);
int vl_st_tensor_ndim(const vl_st_tensor *t);
const int64_t *vl_st_tensor_shape(const vl_st_tensor *t);
size_t vl_st_tensor_numel(const vl_st_tensor *t);
const void *vl_st_tensor_data(const vl_st_tensor *t);
size_t vl_st_tensor_nbytes(const vl_st_tensor *t);
const char *vl_dtype_name(vl_dtype dt);
size_t vl_dtype_size(vl_dtype dt);

/* VL_ESHAPE "FILE: tensor 'x' has shape [3, 4], expected [4, 4]" */
int vl_st_check_shape(const vl_safetensors *st, const vl_st_tensor *t, int ndim,
                      const int64_t *shape);
/* n must equal numel.  Float dtypes convert exactly (f64 rounds); integers convert. */
int vl_st_read_f32(const vl_st_tensor *t, float *dst, size_t n);
/* Integer dtypes only. */
int vl_st_read_i64(const vl_st_tensor *t, int64_t *dst, size_t n);

uint16_t vl_bf16_from_f32(float f); /* round to nearest even; NaN stays NaN */
float vl_f32_from_bf16(uint16_t b);
float vl_f32_from_f16(uint16_t h);

typedef struct {
  const char *name;
  vl_dtype dtype;
  int ndim;
  int64_t shape[8];
  const void *data;
} vl_st_entry;

/* One file (PATH.tmp, then renamed).  meta_kv: n_meta key/value pairs. */
int vl_st_write(const char *path, const vl_st_entry *entries, int n, const char *const *meta_kv,
                int n_meta);
/* model-0000i-of-0000N.safetensors + model.safetensors.index.json in dir. */
int vl_st_write_sharded(const char *dir, const vl_st_entry *entries, int n,
                        size_t max_shard_bytes, const char *const *meta_kv, int n_meta);

#endif
