/* dataset: reading dataset.h5 and the sampler (see dataset.h; the writer is
 * dataset_write.c, the prefetch thread prefetch.c).
 *
 * HDF5 here is the parallel library, which is not thread-safe, and other
 * modules (checkpoints, statistics) call it from the main thread while the
 * prefetch thread reads.  So HDF5 is used only to write and to open: the
 * reader takes the attributes, the index arrays and the file address and
 * size of every chunk of tokens, loss_mask and pixels (H5Dget_chunk_info_by_coord)
 * and closes the file; samples are then read with pread(2) and inflated with
 * zlib, which any thread may do.
 */
#include "dataset.h"
#include "dataset_format.h"

#include <errno.h>
#include <fcntl.h>
#include <hdf5.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include "err.h"
#include "image.h"

int vl_dataset_check_info(const vl_dataset_info *in, const char *path) {
  if (in->family != VL_FAMILY_QWEN3_VL && in->family != VL_FAMILY_QWEN2_VL)
    VL_ERROR(VL_EINVAL, "%s: provenance: unknown family %d", path, (int)in->family);
  if (in->vocab_size <= 0 || in->image_token_id < 0 || in->image_token_id >= in->vocab_size ||
      in->vision_start_token_id < 0 || in->vision_start_token_id >= in->vocab_size ||
      in->vision_end_token_id < 0 || in->vision_end_token_id >= in->vocab_size)
    VL_ERROR(VL_EINVAL, "%s: provenance: vocab_size %d and special token ids %d/%d/%d inconsistent", path,
             in->vocab_size, in->image_token_id, in->vision_start_token_id, in->vision_end_token_id);
  if (in->patch_size <= 0 || in->temporal_patch_size <= 0 || in->merge_size <= 0)
    VL_ERROR(VL_EINVAL, "%s: provenance: patch_size %d, temporal_patch_size %d, merge_size %d must be positive",
             path, in->patch_size, in->temporal_patch_size, in->merge_size);
  for (int c = 0; c < 3; c++)
    if (!(in->image_std[c] > 0)) VL_ERROR(VL_EINVAL, "%s: provenance: image_std[%d] = %g", path, c, in->image_std[c]);
  if (strnlen(in->truncation, sizeof in->truncation) == sizeof in->truncation ||
      strnlen(in->tokenizer_sha256, sizeof in->tokenizer_sha256) == sizeof in->tokenizer_sha256 ||
      strnlen(in->source, sizeof in->source) == sizeof in->source)
    VL_ERROR(VL_EINVAL, "%s: provenance: a string field is not terminated", path);
  return VL_OK;
}

/* ============================== reader ================================== */

/* Where a dataset's bytes are in the file, for pread. */
typedef struct {
  uint64_t addr, size;
  unsigned mask; /* HDF5 filter mask: bit 0 set = deflate skipped for this chunk */
} chunk_loc;

typedef struct {
  size_t elem;        /* bytes per element */
  uint64_t n;         /* elements */
  uint64_t chunk;     /* elements per chunk; 0 = contiguous */
  int deflate;
  uint64_t addr;      /* contiguous layout */
  chunk_loc *chunks;
  uint64_t n_chunks, max_csize;
} rawds;

enum { R_TOKENS, R_MASK, R_PIX, R_N };

struct vl_dataset {
  char path[VL_PATH_MAX];
  char split[8];
  vl_dataset_info info;
  vl_patch_params pp;
  int fd;
  uint64_t file_size;
  long n_samples, n_images;
  int64_t *soff, *ioff, *poff;
  int32_t (*grid)[3];
  int32_t (*hw)[2];
  int encoded;   /* images stored as their files' bytes */
  rawds raw[R_N];
  /* the sampler's permutation of one epoch, cached (any thread may ask) */
  pthread_mutex_t perm_mu;
  long *perm;
  int perm_valid;
  uint64_t perm_seed, perm_epoch;
};

long vl_dataset_size(const vl_dataset *d) { return d ? d->n_samples : 0; }
const vl_dataset_info *vl_dataset_provenance(const vl_dataset *d) { return &d->info; }

void vl_dataset_limits(const vl_dataset *d, long *max_tokens, long *max_patches, long *at_tokens,
                       long *at_patches) {
  *max_tokens = *max_patches = 0;
  *at_tokens = *at_patches = -1;
  for (long i = 0; i < d->n_samples; i++) {
    long n = (long)(d->soff[i + 1] - d->soff[i]), p = 0;
    for (int64_t j = d->ioff[i]; j < d->ioff[i + 1]; j++) p += (long)d->grid[j][0] * d->grid[j][1] * d->grid[j][2];
    if (n > *max_tokens) { *max_tokens = n; *at_tokens = i; }
    if (p > *max_patches) { *max_patches = p; *at_patches = i; }
  }
}

void vl_dataset_close(vl_dataset *d) {
  if (!d) return;
  if (d->fd >= 0) close(d->fd);
  free(d->soff); free(d->ioff); free(d->poff); free(d->grid); free(d->hw);
  for (int k = 0; k < R_N; k++) free(d->raw[k].chunks);
  free(d->perm);
  pthread_mutex_destroy(&d->perm_mu);
  free(d);
}

/* ---- attributes (with HDF5's error printing off: foreign files) ---- */
static int attr_get_i64(hid_t f, const char *name, long long *v, const char *path) {
  if (H5Aexists(f, name) <= 0)
    VL_ERROR(VL_EIO, "%s: attribute %s missing: not a vltrain dataset, or an incomplete one (remake it with vlprep)",
             path, name);
  hid_t a = H5Aopen(f, name, H5P_DEFAULT), s = a >= 0 ? H5Aget_space(a) : -1;
  int rc = VL_OK;
  if (a < 0 || s < 0 || H5Sget_simple_extent_npoints(s) != 1 || H5Aread(a, H5T_NATIVE_LLONG, v) < 0)
    rc = vl_err_raise(VL_EIO, __FILE__, __LINE__, __func__, "%s: attribute %s is not one integer", path, name);
  if (s >= 0) H5Sclose(s);
  if (a >= 0) H5Aclose(a);
  return rc;
}
static int attr_get_int(hid_t f, const char *name, int *v, const char *path) {
  long long x = 0;
  VL_CALL(attr_get_i64(f, name, &x, path));
  if (x < -2147483647LL || x > 2147483647LL) VL_ERROR(VL_EIO, "%s: attribute %s = %lld is out of range", path, name, x);
  *v = (int)x;
  return VL_OK;
}
static int attr_get_f64s(hid_t f, const char *name, int n, double *v, const char *path) {
  if (H5Aexists(f, name) <= 0) VL_ERROR(VL_EIO, "%s: attribute %s missing: not a vltrain dataset", path, name);
  hid_t a = H5Aopen(f, name, H5P_DEFAULT), s = a >= 0 ? H5Aget_space(a) : -1;
  int rc = VL_OK;
  if (a < 0 || s < 0 || H5Sget_simple_extent_npoints(s) != n || H5Aread(a, H5T_NATIVE_DOUBLE, v) < 0)
    rc = vl_err_raise(VL_EIO, __FILE__, __LINE__, __func__, "%s: attribute %s is not %d numbers", path, name, n);
  if (s >= 0) H5Sclose(s);
  if (a >= 0) H5Aclose(a);
  return rc;
}
/* Fixed-length or variable-length string attribute into buf[n]. */
static int attr_get_str(hid_t f, const char *name, char *buf, size_t n, const char *path) {
  if (H5Aexists(f, name) <= 0)
    VL_ERROR(VL_EIO, "%s: attribute %s missing: not a vltrain dataset, or an incomplete one (remake it with vlprep)",
             path, name);
  int rc = VL_OK;
  hid_t a = H5Aopen(f, name, H5P_DEFAULT), t = a >= 0 ? H5Aget_type(a) : -1, mt = -1;
  if (t < 0 || H5Tget_class(t) != H5T_STRING)
    VL_ERROR_GOTO(rc, done, VL_EIO, "%s: attribute %s is not a string", path, name);
  if (H5Tis_variable_str(t) > 0) {
    char *s = NULL;
    mt = H5Tcopy(H5T_C_S1);
    if (mt < 0 || H5Tset_size(mt, H5T_VARIABLE) < 0 || H5Aread(a, mt, &s) < 0 || !s)
      VL_ERROR_GOTO(rc, done, VL_EIO, "%s: cannot read attribute %s", path, name);
    snprintf(buf, n, "%s", s);
    H5free_memory(s);
  } else {
    size_t sz = H5Tget_size(t);
    char *s = calloc(sz + 1, 1);
    mt = H5Tcopy(H5T_C_S1);
    if (!s || mt < 0 || H5Tset_size(mt, sz + 1) < 0 || H5Aread(a, mt, s) < 0) {
      free(s);
      VL_ERROR_GOTO(rc, done, VL_EIO, "%s: cannot read attribute %s", path, name);
    }
    if (strlen(s) >= n) {
      free(s);
      VL_ERROR_GOTO(rc, done, VL_EIO, "%s: attribute %s is too long (%zu bytes)", path, name, sz);
    }
    snprintf(buf, n, "%s", s);
    free(s);
  }
done:
  if (mt >= 0) H5Tclose(mt);
  if (t >= 0) H5Tclose(t);
  if (a >= 0) H5Aclose(a);
  return rc;
}

static int read_info(hid_t f, vl_dataset_info *in, const char *path) {
  char s[VL_PATH_MAX];
  long long v = 0;
  if (H5Aexists(f, "format") <= 0) VL_ERROR(VL_EIO, "%s: not a vltrain dataset (no format attribute; made by vlprep?)", path);
  VL_CALL(attr_get_str(f, "format", s, sizeof s, path));
  if (strcmp(s, DS_FORMAT)) VL_ERROR(VL_EIO, "%s: not a vltrain dataset (format is \"%s\", expected \"%s\")", path, s, DS_FORMAT);
  VL_CALL(attr_get_i64(f, "format_version", &v, path));
  if (v != VL_DATASET_FORMAT_VERSION)
    VL_ERROR(VL_EIO, "%s: dataset format_version %lld, this vltrain reads %d (remake it with this version's vlprep)",
             path, v, VL_DATASET_FORMAT_VERSION);
  VL_CALL(attr_get_str(f, "family", s, sizeof s, path));
  if (!strcmp(s, "qwen3-vl")) in->family = VL_FAMILY_QWEN3_VL;
  else if (!strcmp(s, "qwen2-vl")) in->family = VL_FAMILY_QWEN2_VL;
  else VL_ERROR(VL_EIO, "%s: unknown model family \"%s\"", path, s);
  VL_CALL(attr_get_int(f, "vocab_size", &in->vocab_size, path));
  VL_CALL(attr_get_int(f, "image_token_id", &in->image_token_id, path));
  VL_CALL(attr_get_int(f, "vision_start_token_id", &in->vision_start_token_id, path));
  VL_CALL(attr_get_int(f, "vision_end_token_id", &in->vision_end_token_id, path));
  VL_CALL(attr_get_str(f, "tokenizer_sha256", in->tokenizer_sha256, sizeof in->tokenizer_sha256, path));
  VL_CALL(attr_get_int(f, "patch_size", &in->patch_size, path));
  VL_CALL(attr_get_int(f, "temporal_patch_size", &in->temporal_patch_size, path));
  VL_CALL(attr_get_int(f, "merge_size", &in->merge_size, path));
  VL_CALL(attr_get_i64(f, "min_pixels", &v, path)); in->min_pixels = (long)v;
  VL_CALL(attr_get_i64(f, "max_pixels", &v, path)); in->max_pixels = (long)v;
  double m[3], sd[3];
  VL_CALL(attr_get_f64s(f, "image_mean", 3, m, path));
  VL_CALL(attr_get_f64s(f, "image_std", 3, sd, path));
  for (int c = 0; c < 3; c++) { in->image_mean[c] = (float)m[c]; in->image_std[c] = (float)sd[c]; }
  VL_CALL(attr_get_int(f, "max_seq_len", &in->max_seq_len, path));
  VL_CALL(attr_get_str(f, "truncation", in->truncation, sizeof in->truncation, path));
  snprintf(in->pixel_storage, sizeof in->pixel_storage, "rgb");
  if (H5Aexists(f, "pixel_storage") > 0)
    VL_CALL(attr_get_str(f, "pixel_storage", in->pixel_storage, sizeof in->pixel_storage, path));
  if (strcmp(in->pixel_storage, "rgb") && strcmp(in->pixel_storage, "encoded"))
    VL_ERROR(VL_EIO, "%s: pixel_storage \"%s\": this vltrain reads \"rgb\" or \"encoded\"", path,
             in->pixel_storage);
  VL_CALL(attr_get_str(f, "source", in->source, sizeof in->source, path));
  VL_CALL(attr_get_i64(f, "n_read", &v, path)); in->n_read = (long)v;
  VL_CALL(attr_get_i64(f, "n_written", &v, path)); in->n_written = (long)v;
  VL_CALL(attr_get_i64(f, "n_skipped_bad", &v, path)); in->n_skipped_bad = (long)v;
  VL_CALL(attr_get_i64(f, "n_skipped_long", &v, path)); in->n_skipped_long = (long)v;
  VL_CALL(attr_get_i64(f, "n_truncated", &v, path)); in->n_truncated = (long)v;
  VL_CALL(vl_dataset_check_info(in, path));
  return VL_OK;
}

/* Opens dataset k of the group and checks its element type and shape;
 * *rows = its length. */
static int ds_open(hid_t g, int k, hid_t *d, hsize_t *rows, const char *path, const char *split) {
  *d = -1;
  const char *name = dspec[k].name;
  if (H5Lexists(g, name, H5P_DEFAULT) <= 0)
    VL_ERROR(VL_EIO, "%s: dataset /%s/%s missing (damaged or not a vltrain dataset)", path, split, name);
  int rc = VL_OK;
  hid_t t = -1, s = -1;
  *d = H5Dopen2(g, name, H5P_DEFAULT);
  if (*d < 0) VL_ERROR_GOTO(rc, done, VL_EIO, "%s: cannot open /%s/%s", path, split, name);
  t = H5Dget_type(*d);
  const size_t want = type_size(dspec[k].type);
  if (t < 0 || H5Tget_class(t) != H5T_INTEGER || H5Tget_size(t) != want ||
      (want > 1 && H5Tget_order(t) != H5T_ORDER_LE) ||
      (dspec[k].type == T_U8) != (H5Tget_sign(t) == H5T_SGN_NONE))
    VL_ERROR_GOTO(rc, done, VL_EIO, "%s: /%s/%s has the wrong element type (expected %s)", path, split, name,
                  dspec[k].type == T_U8 ? "uint8" : dspec[k].type == T_I32 ? "int32" : "int64");
  s = H5Dget_space(*d);
  hsize_t dims[2] = {0, 0};
  const int nd = s >= 0 ? H5Sget_simple_extent_ndims(s) : -1, want_nd = dspec[k].cols > 1 ? 2 : 1;
  if (nd != want_nd || H5Sget_simple_extent_dims(s, dims, NULL) < 0 ||
      (want_nd == 2 && dims[1] != (hsize_t)dspec[k].cols))
    VL_ERROR_GOTO(rc, done, VL_EIO, "%s: /%s/%s has the wrong shape", path, split, name);
  *rows = dims[0];
done:
  if (s >= 0) H5Sclose(s);
  if (t >= 0) H5Tclose(t);
  if (rc && *d >= 0) { H5Dclose(*d); *d = -1; }
  return rc;
}

static int ds_read_all(hid_t d, int k, hsize_t rows, void **out, const char *path, const char *split) {
  const size_t bytes = (size_t)rows * type_size(dspec[k].type) * (size_t)dspec[k].cols;
  VL_CALL(vl_malloc(out, bytes, dspec[k].name));
  if (rows && H5Dread(d, mem_type(dspec[k].type), H5S_ALL, H5S_ALL, H5P_DEFAULT, *out) < 0)
    VL_ERROR(VL_EIO, "%s: reading /%s/%s failed (truncated or damaged file?)", path, split, dspec[k].name);
  return VL_OK;
}

/* The file addresses of a bulk dataset's bytes. */
static int raw_map(hid_t d, int k, hsize_t n, rawds *r, uint64_t file_size, const char *path, const char *split) {
  const char *name = dspec[k].name;
  int rc = VL_OK;
  hid_t dcpl = H5Dget_create_plist(d);
  memset(r, 0, sizeof *r);
  r->elem = type_size(dspec[k].type);
  r->n = n;
  if (dcpl < 0) VL_ERROR(VL_EIO, "%s: /%s/%s: no creation properties", path, split, name);
  H5D_layout_t lay = H5Pget_layout(dcpl);
  if (lay == H5D_CONTIGUOUS) {
    haddr_t a = H5Dget_offset(d);
    if (n > 0 && (a == HADDR_UNDEF || a + n * r->elem > file_size))
      VL_ERROR_GOTO(rc, done, VL_EIO, "%s: /%s/%s: data outside the file (truncated?)", path, split, name);
    r->addr = a;
  } else if (lay == H5D_CHUNKED) {
    hsize_t cd[2];
    if (H5Pget_chunk(dcpl, 1, cd) != 1 || cd[0] == 0)
      VL_ERROR_GOTO(rc, done, VL_EIO, "%s: /%s/%s: bad chunking", path, split, name);
    r->chunk = cd[0];
    int nf = H5Pget_nfilters(dcpl);
    for (int i = 0; i < nf; i++) {
      unsigned flags = 0, cv[8];
      size_t ncv = 8;
      H5Z_filter_t fid = H5Pget_filter2(dcpl, (unsigned)i, &flags, &ncv, cv, 0, NULL, NULL);
      if (fid != H5Z_FILTER_DEFLATE || nf > 1)
        VL_ERROR_GOTO(rc, done, VL_ENOTSUP, "%s: /%s/%s uses HDF5 filter %d; vltrain reads deflate only",
                      path, split, name, (int)fid);
      r->deflate = 1;
    }
    r->n_chunks = (n + r->chunk - 1) / r->chunk;
    VL_CALL_GOTO(rc, done, vl_calloc((void **)&r->chunks, r->n_chunks + 1, sizeof *r->chunks, "chunk map"));
    for (uint64_t c = 0; c < r->n_chunks; c++) {
      hsize_t off = c * r->chunk, size = 0;
      haddr_t a = HADDR_UNDEF;
      unsigned mask = 0;
      if (H5Dget_chunk_info_by_coord(d, &off, &mask, &a, &size) < 0 || a == HADDR_UNDEF || size == 0 ||
          a + size > file_size)
        VL_ERROR_GOTO(rc, done, VL_EIO, "%s: /%s/%s: chunk %llu is missing or outside the file (truncated?)", path,
                      split, name, (unsigned long long)c);
      r->chunks[c] = (chunk_loc){a, size, mask};
      if (size > r->max_csize) r->max_csize = size;
    }
  } else {
    VL_ERROR_GOTO(rc, done, VL_ENOTSUP, "%s: /%s/%s: unsupported storage layout", path, split, name);
  }
done:
  H5Pclose(dcpl);
  return rc;
}

static int check_index(vl_dataset *d, uint64_t n_soff, uint64_t n_ioff, uint64_t n_grid, uint64_t n_hw,
                       uint64_t n_poff) {
  const char *p = d->path, *sp = d->split;
  if (n_soff < 1) VL_ERROR(VL_EIO, "%s: /%s/sample_offsets is empty (damaged file)", p, sp);
  const long n = (long)(n_soff - 1);
  if (n_ioff != n_soff) VL_ERROR(VL_EIO, "%s: /%s: image_offsets has %llu entries, sample_offsets %llu", p, sp,
                                 (unsigned long long)n_ioff, (unsigned long long)n_soff);
  if (n_grid != n_hw || n_poff != n_grid + 1)
    VL_ERROR(VL_EIO, "%s: /%s: image tables disagree (%llu grids, %llu sizes, %llu pixel offsets)", p, sp,
             (unsigned long long)n_grid, (unsigned long long)n_hw, (unsigned long long)n_poff);
  if (d->raw[R_MASK].n != d->raw[R_TOKENS].n)
    VL_ERROR(VL_EIO, "%s: /%s: loss_mask has %llu entries, tokens %llu", p, sp,
             (unsigned long long)d->raw[R_MASK].n, (unsigned long long)d->raw[R_TOKENS].n);
  if (d->soff[0] != 0 || d->ioff[0] != 0 || d->poff[0] != 0)
    VL_ERROR(VL_EIO, "%s: /%s: offsets do not start at 0 (damaged file)", p, sp);
  for (long i = 0; i < n; i++) {
    if (d->soff[i + 1] <= d->soff[i] || d->soff[i + 1] - d->soff[i] > 1 << 30)
      VL_ERROR(VL_EIO, "%s: /%s: sample %ld has %lld tokens (offsets out of order: damaged file)", p, sp, i,
               (long long)(d->soff[i + 1] - d->soff[i]));
    if (d->ioff[i + 1] < d->ioff[i])
      VL_ERROR(VL_EIO, "%s: /%s: image offsets of sample %ld out of order (damaged file)", p, sp, i);
  }
  if ((uint64_t)d->soff[n] != d->raw[R_TOKENS].n)
    VL_ERROR(VL_EIO, "%s: /%s: sample offsets end at %lld, tokens has %llu (damaged file)", p, sp,
             (long long)d->soff[n], (unsigned long long)d->raw[R_TOKENS].n);
  if ((uint64_t)d->ioff[n] != n_grid)
    VL_ERROR(VL_EIO, "%s: /%s: image offsets end at %lld, there are %llu images (damaged file)", p, sp,
             (long long)d->ioff[n], (unsigned long long)n_grid);
  const int pm = d->info.patch_size * d->info.merge_size;
  for (uint64_t j = 0; j < n_grid; j++) {
    const int32_t h = d->hw[j][0], w = d->hw[j][1];
    if (h <= 0 || w <= 0 || h % pm || w % pm || h > 1 << 16 || w > 1 << 16)
      VL_ERROR(VL_EIO, "%s: /%s: image %llu is %d x %d, not a positive multiple of %d (patch x merge)", p, sp,
               (unsigned long long)j, (int)w, (int)h, pm);
    if (d->grid[j][0] != 1 || d->grid[j][1] != h / d->info.patch_size || d->grid[j][2] != w / d->info.patch_size)
      VL_ERROR(VL_EIO, "%s: /%s: image %llu: grid_thw (%d, %d, %d) does not match its size %d x %d", p, sp,
               (unsigned long long)j, (int)d->grid[j][0], (int)d->grid[j][1], (int)d->grid[j][2], (int)w, (int)h);
    const int64_t nb = d->poff[j + 1] - d->poff[j];
    if (d->encoded ? (nb <= 0 || nb > (int64_t)1 << 31) : nb != (int64_t)h * w * 3)
      VL_ERROR(VL_EIO, "%s: /%s: image %llu: %lld pixel bytes for a %d x %d %s image (damaged file)", p, sp,
               (unsigned long long)j, (long long)nb, (int)w, (int)h, d->info.pixel_storage);
  }
  if ((uint64_t)d->poff[n_grid] != d->raw[R_PIX].n)
    VL_ERROR(VL_EIO, "%s: /%s: pixel offsets end at %lld, pixels has %llu bytes (damaged file)", p, sp,
             (long long)d->poff[n_grid], (unsigned long long)d->raw[R_PIX].n);
  d->n_samples = n;
  d->n_images = (long)n_grid;
  return VL_OK;
}

static hid_t open_readonly(const char *path) {
  hid_t fapl = H5Pcreate(H5P_FILE_ACCESS), f = -1;
  if (fapl < 0) return -1;
  /* many ranks read one file, possibly on a file system without flock */
  if (H5Pset_file_locking(fapl, 0, 1) >= 0) f = H5Fopen(path, H5F_ACC_RDONLY, fapl);
  H5Pclose(fapl);
  return f;
}

static int open_hdf5(vl_dataset *d) {
  const char *path = d->path, *split = d->split;
  int rc = VL_OK;
  hid_t f = -1, g = -1, ds[D_N];
  hsize_t rows[D_N];
  for (int k = 0; k < D_N; k++) ds[k] = -1;
  f = open_readonly(path);
  if (f < 0) VL_ERROR(VL_EIO, "%s: cannot open as HDF5 (truncated, or not a dataset made by vlprep)", path);
  VL_CALL_GOTO(rc, done, read_info(f, &d->info, path));
  d->encoded = !strcmp(d->info.pixel_storage, "encoded");
  if (H5Lexists(f, split, H5P_DEFAULT) <= 0 || (g = H5Gopen2(f, split, H5P_DEFAULT)) < 0)
    VL_ERROR_GOTO(rc, done, VL_EIO, "%s: no \"%s\" split in this dataset", path, split);
  for (int k = 0; k < D_N; k++) VL_CALL_GOTO(rc, done, ds_open(g, k, &ds[k], &rows[k], path, split));
  VL_CALL_GOTO(rc, done, ds_read_all(ds[D_SOFF], D_SOFF, rows[D_SOFF], (void **)&d->soff, path, split));
  VL_CALL_GOTO(rc, done, ds_read_all(ds[D_IOFF], D_IOFF, rows[D_IOFF], (void **)&d->ioff, path, split));
  VL_CALL_GOTO(rc, done, ds_read_all(ds[D_POFF], D_POFF, rows[D_POFF], (void **)&d->poff, path, split));
  VL_CALL_GOTO(rc, done, ds_read_all(ds[D_GRID], D_GRID, rows[D_GRID], (void **)&d->grid, path, split));
  VL_CALL_GOTO(rc, done, ds_read_all(ds[D_HW], D_HW, rows[D_HW], (void **)&d->hw, path, split));
  VL_CALL_GOTO(rc, done, raw_map(ds[D_TOKENS], D_TOKENS, rows[D_TOKENS], &d->raw[R_TOKENS], d->file_size, path, split));
  VL_CALL_GOTO(rc, done, raw_map(ds[D_MASK], D_MASK, rows[D_MASK], &d->raw[R_MASK], d->file_size, path, split));
  VL_CALL_GOTO(rc, done, raw_map(ds[D_PIX], D_PIX, rows[D_PIX], &d->raw[R_PIX], d->file_size, path, split));
  VL_CALL_GOTO(rc, done, check_index(d, rows[D_SOFF], rows[D_IOFF], rows[D_GRID], rows[D_HW], rows[D_POFF]));
done:
  for (int k = 0; k < D_N; k++)
    if (ds[k] >= 0) H5Dclose(ds[k]);
  if (g >= 0) H5Gclose(g);
  if (f >= 0 && H5Fclose(f) < 0 && rc == VL_OK)
    rc = vl_err_raise(VL_EHDF5, __FILE__, __LINE__, __func__, "%s: close failed", path);
  return rc;
}

int vl_dataset_open(vl_dataset **out, const char *path, const char *split) {
  *out = NULL;
  if (!path || !path[0]) VL_ERROR(VL_EINVAL, "dataset: no path given");
  if (strlen(path) >= VL_PATH_MAX) VL_ERROR(VL_EINVAL, "dataset: path too long: %.80s...", path);
  if (split_index(split) < 0) VL_ERROR(VL_EINVAL, "%s: split must be \"train\" or \"val\"", path);
  vl_dataset *d = calloc(1, sizeof *d);
  if (!d) VL_ERROR(VL_ENOMEM, "dataset");
  snprintf(d->path, sizeof d->path, "%s", path);
  snprintf(d->split, sizeof d->split, "%s", split);
  pthread_mutex_init(&d->perm_mu, NULL);
  d->fd = open(path, O_RDONLY | O_CLOEXEC);
  if (d->fd < 0) {
    int e = errno;
    vl_dataset_close(d);
    VL_ERROR(VL_EIO, "%s: cannot open: %s%s", path, strerror(e),
             e == ENOENT ? " (datasets are made by vlprep; ./quickstart.sh run makes the demo's)" : "");
  }
  struct stat st;
  if (fstat(d->fd, &st) != 0) {
    int e = errno;
    vl_dataset_close(d);
    VL_ERROR(VL_EIO, "%s: cannot stat: %s", path, strerror(e));
  }
  d->file_size = (uint64_t)st.st_size;
  int rc;
  H5E_BEGIN_TRY { rc = open_hdf5(d); } H5E_END_TRY;
  if (rc) {
    vl_dataset_close(d);
    return vl_err_trace(rc, __FILE__, __LINE__, __func__);
  }
  d->pp.patch = d->info.patch_size;
  d->pp.temporal = d->info.temporal_patch_size;
  d->pp.merge = d->info.merge_size;
  for (int c = 0; c < 3; c++) { d->pp.mean[c] = d->info.image_mean[c]; d->pp.std[c] = d->info.image_std[c]; }
  *out = d;
  return VL_OK;
}

int vl_dataset_has_split(const char *path, const char *split, int *has) {
  *has = 0;
  hid_t f;
  H5E_BEGIN_TRY { f = open_readonly(path); } H5E_END_TRY;
  if (f < 0) VL_ERROR(VL_EIO, "%s: cannot open as HDF5 (missing, truncated, or not a dataset made by vlprep)", path);
  htri_t e;
  H5E_BEGIN_TRY { e = H5Lexists(f, split, H5P_DEFAULT); } H5E_END_TRY;
  if (H5Fclose(f) < 0 || e < 0) VL_ERROR(VL_EHDF5, "%s: cannot look for split %s", path, split);
  *has = e > 0;
  return VL_OK;
}

int vl_dataset_check(const vl_dataset *d, const vl_model_config *mc) {
  const vl_dataset_info *in = &d->info;
  const char *p = d->path;
  if (in->family != mc->family)
    VL_ERROR(VL_EINVAL, "%s: dataset made for %s, model is %s", p, family_name(in->family), family_name(mc->family));
  if (in->vocab_size != mc->text.vocab_size)
    VL_ERROR(VL_EINVAL, "%s: dataset made for vocab_size %d, model is %d (another tokenizer or model?)", p,
             in->vocab_size, mc->text.vocab_size);
  const int dt[3] = {in->image_token_id, in->vision_start_token_id, in->vision_end_token_id};
  const int mt[3] = {mc->tokens.image_token_id, mc->tokens.vision_start_token_id, mc->tokens.vision_end_token_id};
  const char *tn[3] = {"image_token_id", "vision_start_token_id", "vision_end_token_id"};
  for (int k = 0; k < 3; k++)
    if (dt[k] != mt[k]) VL_ERROR(VL_EINVAL, "%s: dataset made for %s %d, model is %d", p, tn[k], dt[k], mt[k]);
  const int dv[3] = {in->patch_size, in->temporal_patch_size, in->merge_size};
  const int mv[3] = {mc->vision.patch_size, mc->vision.temporal_patch_size, mc->vision.spatial_merge_size};
  const char *vn[3] = {"patch_size", "temporal_patch_size", "spatial_merge_size"};
  for (int k = 0; k < 3; k++)
    if (dv[k] != mv[k]) VL_ERROR(VL_EINVAL, "%s: dataset made for %s %d, model is %d", p, vn[k], dv[k], mv[k]);
  if (mc->vision.in_channels != 3)
    VL_ERROR(VL_EINVAL, "%s: dataset holds RGB images, model has %d input channels", p, mc->vision.in_channels);
  return VL_OK;
}

/* ---- bulk reads: pread + inflate, no HDF5 (any thread) ---- */
static int pread_full(int fd, void *buf, size_t n, uint64_t off, const char *path) {
  size_t got = 0;
  while (got < n) {
    ssize_t r = pread(fd, (char *)buf + got, n - got, (off_t)(off + got));
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) VL_ERROR(VL_EIO, "%s: read failed at byte %llu: %s", path, (unsigned long long)(off + got), strerror(errno));
    if (r == 0) VL_ERROR(VL_EIO, "%s: unexpected end of file at byte %llu (truncated?)", path, (unsigned long long)(off + got));
    got += (size_t)r;
  }
  return VL_OK;
}

/* Elements [a, b) of r into out; cbuf/ubuf are scratch of max_csize and
 * chunk * elem bytes. */
static int raw_read(const vl_dataset *d, const rawds *r, const char *name, uint64_t a, uint64_t b, void *out,
                    uint8_t *cbuf, uint8_t *ubuf) {
  if (a > b || b > r->n) VL_ERROR(VL_EIO, "%s: %s range [%llu, %llu) outside its %llu elements", d->path, name,
                                  (unsigned long long)a, (unsigned long long)b, (unsigned long long)r->n);
  if (a == b) return VL_OK;
  if (!r->chunk) return pread_full(d->fd, out, (b - a) * r->elem, r->addr + a * r->elem, d->path);
  const size_t cbytes = r->chunk * r->elem;
  for (uint64_t c = a / r->chunk; c <= (b - 1) / r->chunk; c++) {
    const chunk_loc *L = &r->chunks[c];
    const uint8_t *src;
    VL_CALL(pread_full(d->fd, cbuf, L->size, L->addr, d->path));
    if (r->deflate && !(L->mask & 1)) {
      uLongf len = cbytes;
      int z = uncompress(ubuf, &len, cbuf, L->size);
      if (z != Z_OK || len != cbytes)
        VL_ERROR(VL_EIO, "%s: /%s/%s chunk %llu does not inflate (%s): damaged file", d->path, d->split, name,
                 (unsigned long long)c, z == Z_OK ? "short" : zError(z));
      src = ubuf;
    } else {
      if (L->size != cbytes)
        VL_ERROR(VL_EIO, "%s: /%s/%s chunk %llu has %llu bytes, expected %zu", d->path, d->split, name,
                 (unsigned long long)c, (unsigned long long)L->size, cbytes);
      src = cbuf;
    }
    const uint64_t lo = a > c * r->chunk ? a : c * r->chunk, hi = b < (c + 1) * r->chunk ? b : (c + 1) * r->chunk;
    memcpy((char *)out + (lo - a) * r->elem, src + (lo - c * r->chunk) * r->elem, (hi - lo) * r->elem);
  }
  return VL_OK;
}

static int grow(void **p, size_t *cap, size_t need, size_t elem, const char *what) {
  if (need <= *cap) return VL_OK;
  void *q = realloc(*p, need * elem);
  if (!q) VL_ERROR(VL_ENOMEM, "cannot allocate %zu bytes for %s", need * elem, what);
  *p = q;
  *cap = need;
  return VL_OK;
}

void vl_dataset_sample_free(vl_dataset_sample *s) {
  free(s->ids); free(s->labels); free(s->grid); free(s->pixels); free(s->bytes);
  memset(s, 0, sizeof *s);
}

int vl_dataset_read(vl_dataset *d, long i, vl_dataset_sample *s) {
  if (i < 0 || i >= d->n_samples)
    VL_ERROR(VL_EINVAL, "%s: sample %ld of split %s out of range (%ld samples)", d->path, i, d->split, d->n_samples);
  memset(&s->sample, 0, sizeof s->sample); /* nothing stale after a failure */
  const uint64_t t0 = (uint64_t)d->soff[i], t1 = (uint64_t)d->soff[i + 1];
  const int n = (int)(t1 - t0);
  const long j0 = (long)d->ioff[i], j1 = (long)d->ioff[i + 1];
  const int ni = (int)(j1 - j0), p = d->pp.patch;
  const size_t patch_dim = (size_t)3 * d->pp.temporal * p * p;
  size_t rows = 0, max_rgb = (size_t)n;
  for (long j = j0; j < j1; j++) {
    rows += (size_t)(d->hw[j][0] / p) * (size_t)(d->hw[j][1] / p);
    size_t b = (size_t)(d->poff[j + 1] - d->poff[j]);
    if (b > max_rgb) max_rgb = b;
  }
  /* chunk scratch: the largest compressed chunk, then one inflated chunk */
  uint64_t mc = 0, mu = 0;
  for (int k = 0; k < R_N; k++) {
    const rawds *r = &d->raw[k];
    if (r->max_csize > mc) mc = r->max_csize;
    if (r->chunk * r->elem > mu) mu = r->chunk * r->elem;
  }
  if (s->cap_tokens < (size_t)n) {
    size_t cap = s->cap_tokens;
    VL_CALL(grow((void **)&s->labels, &cap, (size_t)n, 4, "sample labels"));
    VL_CALL(grow((void **)&s->ids, &s->cap_tokens, (size_t)n, 4, "sample ids"));
  }
  VL_CALL(grow((void **)&s->grid, &s->cap_images, (size_t)(ni ? ni : 1), sizeof *s->grid, "sample grids"));
  VL_CALL(grow((void **)&s->pixels, &s->cap_pixels, rows * patch_dim + 1, sizeof(float), "sample pixels"));
  VL_CALL(grow((void **)&s->bytes, &s->cap_bytes, max_rgb + mc + mu, 1, "sample read buffer"));
  uint8_t *buf = s->bytes, *cbuf = s->bytes + max_rgb, *ubuf = cbuf + mc;
  VL_CALL(raw_read(d, &d->raw[R_TOKENS], "tokens", t0, t1, s->ids, cbuf, ubuf));
  VL_CALL(raw_read(d, &d->raw[R_MASK], "loss_mask", t0, t1, buf, cbuf, ubuf));
  const int V = d->info.vocab_size;
  for (int t = 0; t < n; t++) {
    if (s->ids[t] < 0 || s->ids[t] >= V || buf[t] > 1)
      VL_ERROR(VL_EIO, "%s: /%s sample %ld token %d: id %d (vocab_size %d), loss_mask %d: damaged file", d->path,
               d->split, i, t, (int)s->ids[t], V, buf[t]);
    s->labels[t] = buf[t] ? s->ids[t] : -100;
  }
  size_t at = 0;
  for (long j = j0; j < j1; j++) {
    const int h = d->hw[j][0], w = d->hw[j][1];
    vl_image img = {w, h, buf};
    VL_CALL(raw_read(d, &d->raw[R_PIX], "pixels", (uint64_t)d->poff[j], (uint64_t)d->poff[j + 1], buf, cbuf, ubuf));
    int32_t g[3];
    if (d->encoded) { /* what vlprep would have stored: decode, then resize to image_hw */
      char name[VL_PATH_MAX + 64];
      snprintf(name, sizeof name, "%s: /%s image %ld", d->path, d->split, j);
      vl_image dec = {0, 0, NULL}, res = {0, 0, NULL};
      int rc = vl_image_decode(&dec, buf, (size_t)(d->poff[j + 1] - d->poff[j]), name);
      if (rc == VL_OK && (dec.w != w || dec.h != h)) rc = vl_image_resize_bicubic(&dec, w, h, &res);
      if (rc == VL_OK) rc = vl_image_patchify(res.rgb ? &res : &dec, &d->pp, s->pixels + at * patch_dim, g);
      vl_image_free(&dec);
      vl_image_free(&res);
      VL_CALL(rc);
    } else {
      VL_CALL(vl_image_patchify(&img, &d->pp, s->pixels + at * patch_dim, g));
    }
    for (int c = 0; c < 3; c++) s->grid[j - j0][c] = d->grid[j][c];
    at += (size_t)g[1] * g[2];
  }
  s->sample = (vl_sample){n, s->ids, s->labels, ni, ni ? (const int32_t(*)[3])s->grid : NULL, ni ? s->pixels : NULL};
  return VL_OK;
}

/* ============================== sampler ================================= */

static uint64_t splitmix64(uint64_t *x) {
  uint64_t z = (*x += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

/* Fisher-Yates over 0..n-1 from a stream seeded by (seed, epoch). */
static void epoch_permutation(long *perm, long n, uint64_t seed, uint64_t epoch) {
  uint64_t x = seed ^ 0x5DEECE66Dull, e = epoch;
  x ^= splitmix64(&e);
  for (long i = 0; i < n; i++) perm[i] = i;
  for (long i = n - 1; i > 0; i--) {
    /* j uniform in [0, i]: the high word of a 64 x 64 product */
    long j = (long)(((unsigned __int128)splitmix64(&x) * (uint64_t)(i + 1)) >> 64);
    long t = perm[i]; perm[i] = perm[j]; perm[j] = t;
  }
}

long vl_dataset_index(const vl_dataset *dc, uint64_t seed, uint64_t g) {
  vl_dataset *d = (vl_dataset *)dc; /* the cache is not part of the value */
  const long n = d->n_samples;
  if (n <= 0) return -1;
  const uint64_t e = g / (uint64_t)n;
  long r = -1;
  pthread_mutex_lock(&d->perm_mu);
  if (!d->perm) d->perm = malloc((size_t)n * sizeof(long));
  if (d->perm) {
    if (!d->perm_valid || d->perm_seed != seed || d->perm_epoch != e) {
      epoch_permutation(d->perm, n, seed, e);
      d->perm_valid = 1;
      d->perm_seed = seed;
      d->perm_epoch = e;
    }
    r = d->perm[g % (uint64_t)n];
  }
  pthread_mutex_unlock(&d->perm_mu);
  return r;
}

