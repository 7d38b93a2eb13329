/* safetensors: Hugging Face safetensors files — reading (mmap, single files
 * and sharded folders with model.safetensors.index.json) and writing.
 *
 * Owns: the format (8-byte little-endian header length N, N bytes of JSON
 * header parsed with cJSON, then the data buffer that data_offsets index),
 * validation with errors naming the file and the tensor, dtype conversions
 * (bf16/f16/f64/integers -> f32; integers -> i32/i64; f32 -> bf16).
 * Does not own: which tensors a model needs, or their names (weights.c).
 *
 * A handle maps every shard read-only (MAP_PRIVATE) and keeps a table of its
 * tensors sorted by name (binary search).  Tensor pointers and their data
 * stay valid until vl_st_close.  Data pointers point into the map: they are
 * 8-byte aligned only when the writer padded the header (ours and HF's do),
 * so read them with memcpy or the vl_st_read_* helpers.
 * Errors: VL_EIO for a malformed or unreadable file, VL_ESHAPE for a tensor
 * that is absent or of the wrong dtype/shape, VL_EINVAL for bad writer input.
 */
#ifndef VL_SAFETENSORS_H
#define VL_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

typedef enum {
  VL_DT_F64, VL_DT_F32, VL_DT_F16, VL_DT_BF16, VL_DT_I64, VL_DT_I32, VL_DT_I16,
  VL_DT_I8, VL_DT_U8, VL_DT_BOOL, VL_DT_COUNT
} vl_dtype;

/* Sets of dtypes for vl_st_get: VL_DT_MASK(VL_DT_F32) | VL_DT_MASK(VL_DT_BF16). */
#define VL_DT_MASK(dt) (1u << (dt))
#define VL_DT_ANY 0u
#define VL_DT_FLOATS                                                        \
  (VL_DT_MASK(VL_DT_F64) | VL_DT_MASK(VL_DT_F32) | VL_DT_MASK(VL_DT_F16) | \
   VL_DT_MASK(VL_DT_BF16))
#define VL_ST_MAX_DIMS 8

const char *vl_dtype_name(vl_dtype dt); /* "BF16"; "?" if out of range */
size_t vl_dtype_size(vl_dtype dt);      /* bytes per element; 0 if out of range */

typedef struct vl_safetensors vl_safetensors;
typedef struct vl_st_tensor vl_st_tensor;

/* path: a .safetensors file, or a folder holding model.safetensors.index.json
 * (sharded; every listed tensor must be in the shard the index names) or
 * model.safetensors.  Validates every header entry before returning. */
int vl_st_open(vl_safetensors **out, const char *path);
void vl_st_close(vl_safetensors *st);

size_t vl_st_count(const vl_safetensors *st);
const vl_st_tensor *vl_st_at(const vl_safetensors *st, size_t i); /* name (strcmp) order */
const vl_st_tensor *vl_st_find(const vl_safetensors *st, const char *name); /* NULL if absent */
/* Index "metadata" first, then each shard's __metadata__; numbers come back as
 * their decimal text ("total_size" -> "1200").  NULL if absent. */
const char *vl_st_metadata(const vl_safetensors *st, const char *key);

/* Checked lookup.  dtypes: a VL_DT_MASK set, or VL_DT_ANY.  ndim < 0: any
 * shape; else ndim must match and, if shape is non-NULL, each dimension
 * (a negative entry matches any size).  VL_ESHAPE with
 *   "FILE: tensor 'x.weight' has shape [3, 4], expected [4, 4]",
 *   "FILE: tensor 'x' has dtype I64, expected F32 or BF16",
 *   "tensor 'x' not found in PATH". */
int vl_st_get(const vl_safetensors *st, const char *name, unsigned dtypes, int ndim,
              const int64_t *shape, const vl_st_tensor **out);
/* The shape part of vl_st_get, for a tensor already found. */
int vl_st_check_shape(const vl_safetensors *st, const vl_st_tensor *t, int ndim,
                      const int64_t *shape);

const char *vl_st_tensor_name(const vl_st_tensor *t);
const char *vl_st_tensor_file(const vl_st_tensor *t); /* the shard holding it */
vl_dtype vl_st_tensor_dtype(const vl_st_tensor *t);
int vl_st_tensor_ndim(const vl_st_tensor *t);
const int64_t *vl_st_tensor_shape(const vl_st_tensor *t); /* ndim entries */
size_t vl_st_tensor_numel(const vl_st_tensor *t);
size_t vl_st_tensor_nbytes(const vl_st_tensor *t);
const void *vl_st_tensor_data(const vl_st_tensor *t);

/* Copy-convert all n (== numel, else VL_ESHAPE) elements.  read_f32: any
 * dtype; F32 bitwise, BF16/F16 exactly, F64 rounded to nearest, integers
 * converted (rounded beyond 2^24), BOOL 0/1.  read_i32/i64: integer and BOOL
 * dtypes only (VL_ESHAPE for a float dtype, or a value outside int32). */
int vl_st_read_f32(const vl_st_tensor *t, float *dst, size_t n);
int vl_st_read_i32(const vl_st_tensor *t, int32_t *dst, size_t n);
int vl_st_read_i64(const vl_st_tensor *t, int64_t *dst, size_t n);

uint16_t vl_bf16_from_f32(float f); /* round to nearest even; NaN stays a (quiet) NaN */
float vl_f32_from_bf16(uint16_t b);
float vl_f32_from_f16(uint16_t h);  /* exact, subnormals included */

/* One tensor to write; data holds prod(shape) elements, C order. */
typedef struct {
  const char *name;
  vl_dtype dtype;
  int ndim;
  int64_t shape[VL_ST_MAX_DIMS];
  const void *data;
} vl_st_entry;

/* One file: header (__metadata__ from n_meta key/value pairs meta_kv[2i],
 * meta_kv[2i+1], may be NULL/0) padded with spaces to a multiple of 8 bytes,
 * then the tensors' bytes in the order given.  Written to PATH.tmp, synced,
 * then renamed to PATH. */
int vl_st_write(const char *path, const vl_st_entry *entries, int n,
                const char *const *meta_kv, int n_meta);
/* Into folder dir (created if absent): model-0000i-of-0000N.safetensors, each
 * holding consecutive entries up to max_shard_bytes of data (a larger tensor
 * gets a shard of its own), meta_kv in each shard; then
 * model.safetensors.index.json with metadata {"total_size": bytes, meta_kv}. */
int vl_st_write_sharded(const char *dir, const vl_st_entry *entries, int n,
                        size_t max_shard_bytes, const char *const *meta_kv, int n_meta);

#endif
