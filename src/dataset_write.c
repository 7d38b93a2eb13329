/* dataset_write: writing dataset.h5 (vl_dataset_writer_*, see dataset.h):
 * extendable chunked datasets per split, bulk chunks compressed on every
 * core and written with H5Dwrite_chunk, a temporary name until commit. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zlib.h>

#include "dataset_format.h"
#include "err.h"

/* ============================== writer ================================== */

typedef struct {
  char *data;
  size_t n, cap; /* bytes */
} wbuf;

typedef struct {
  hid_t group, dset[D_N];
  wbuf buf[D_N];
  hsize_t rows[D_N];          /* rows already in the file */
  int64_t n_tokens, n_images, n_pixels, n_samples; /* totals, buffered included */
} wsplit;

struct vl_dataset_writer {
  char path[VL_PATH_MAX], tmp[VL_PATH_MAX + 32];
  hid_t file;
  wsplit split[2]; /* train, val */
  size_t buffered;
  int failed;
  int storage; /* how the images are stored: -1 none yet, STORE_RGB, STORE_ENCODED */
};


#define WBUF_FLUSH_BYTES ((size_t)16 << 20)

static int wbuf_add(wbuf *b, const void *p, size_t n) {
  if (b->n + n > b->cap) {
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < b->n + n) cap *= 2;
    char *q = realloc(b->data, cap);
    if (!q) VL_ERROR(VL_ENOMEM, "dataset writer: cannot buffer %zu bytes", cap);
    b->data = q;
    b->cap = cap;
  }
  memcpy(b->data + b->n, p, n);
  b->n += n;
  return VL_OK;
}

int vl_dataset_writer_open(vl_dataset_writer **out, const char *path) {
  *out = NULL;
  if (!path || !path[0] || strlen(path) >= VL_PATH_MAX) VL_ERROR(VL_EINVAL, "dataset writer: bad output path");
  if (H5Zfilter_avail(H5Z_FILTER_DEFLATE) <= 0)
    VL_ERROR(VL_EHDF5, "this HDF5 library has no deflate filter (needed for %s)", path);
  vl_dataset_writer *w = calloc(1, sizeof *w);
  if (!w) VL_ERROR(VL_ENOMEM, "dataset writer");
  snprintf(w->path, sizeof w->path, "%s", path);
  snprintf(w->tmp, sizeof w->tmp, "%s.tmp.%ld", path, (long)getpid());
  w->storage = -1;
  for (int s = 0; s < 2; s++) {
    w->split[s].group = -1;
    for (int k = 0; k < D_N; k++) w->split[s].dset[k] = -1;
  }
  H5E_BEGIN_TRY { w->file = H5Fcreate(w->tmp, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT); } H5E_END_TRY;
  if (w->file < 0) {
    int e = errno;
    free(w);
    VL_ERROR(VL_EIO, "cannot create %s.tmp.%ld (is the folder there and writable? %s)", path,
             (long)getpid(), strerror(e));
  }
  *out = w;
  return VL_OK;
}

/* Creates the group and its empty extendable datasets; the offsets arrays
 * start with their leading 0. */
static int wsplit_create(vl_dataset_writer *w, int si) {
  wsplit *s = &w->split[si];
  const char *gname = si ? "val" : "train";
  int rc = VL_OK;
  hid_t space = -1, dcpl = -1;
  s->group = H5Gcreate2(w->file, gname, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
  if (s->group < 0) VL_ERROR(VL_EHDF5, "%s: cannot create group /%s", w->tmp, gname);
  for (int k = 0; k < D_N; k++) {
    hsize_t dims[2] = {0, (hsize_t)dspec[k].cols}, maxd[2] = {H5S_UNLIMITED, (hsize_t)dspec[k].cols};
    hsize_t chunk[2] = {dspec[k].chunk, (hsize_t)dspec[k].cols};
    const int nd = dspec[k].cols > 1 ? 2 : 1;
    space = H5Screate_simple(nd, dims, maxd);
    dcpl = H5Pcreate(H5P_DATASET_CREATE);
    if (space < 0 || dcpl < 0 || H5Pset_chunk(dcpl, nd, chunk) < 0 ||
        (dspec[k].deflate && H5Pset_deflate(dcpl, (unsigned)dspec[k].deflate) < 0))
      VL_ERROR_GOTO(rc, done, VL_EHDF5, "%s: cannot set up dataset /%s/%s", w->tmp, gname, dspec[k].name);
    s->dset[k] = H5Dcreate2(s->group, dspec[k].name, file_type(dspec[k].type), space, H5P_DEFAULT, dcpl,
                            H5P_DEFAULT);
    if (s->dset[k] < 0)
      VL_ERROR_GOTO(rc, done, VL_EHDF5, "%s: cannot create dataset /%s/%s", w->tmp, gname, dspec[k].name);
    H5Pclose(dcpl); dcpl = -1;
    H5Sclose(space); space = -1;
  }
  const int64_t zero = 0;
  VL_CALL_GOTO(rc, done, wbuf_add(&s->buf[D_SOFF], &zero, 8));
  VL_CALL_GOTO(rc, done, wbuf_add(&s->buf[D_IOFF], &zero, 8));
  VL_CALL_GOTO(rc, done, wbuf_add(&s->buf[D_POFF], &zero, 8));
  w->buffered += 24;
done:
  if (dcpl >= 0) H5Pclose(dcpl);
  if (space >= 0) H5Sclose(space);
  return rc;
}

/* tokens, loss_mask and pixels are written chunk by chunk, compressed here */
static int is_bulk(int k) { return k == D_TOKENS || k == D_MASK || k == D_PIX; }

/* Compresses the buffered whole chunks of bulk dataset k (and, when final,
 * the last partial one, zero-padded as HDF5 stores edge chunks) in parallel
 * and writes them with H5Dwrite_chunk: deflate on every core instead of
 * HDF5's one thread. */
static int flush_chunks(vl_dataset_writer *w, wsplit *s, int k, int final) {
  wbuf *b = &s->buf[k];
  const size_t elem = type_size(dspec[k].type), cbytes = (size_t)dspec[k].chunk * elem;
  const size_t nfull = b->n / cbytes, rem = b->n % cbytes;
  const size_t nch = nfull + (final && rem ? 1 : 0);
  if (!nch) return VL_OK;
  if (final && rem) {
    const size_t used = b->n;
    if (b->cap < nch * cbytes) {
      char *q = realloc(b->data, nch * cbytes);
      if (!q) VL_ERROR(VL_ENOMEM, "dataset writer: last chunk of %s", dspec[k].name);
      b->data = q;
      b->cap = nch * cbytes;
    }
    memset(b->data + used, 0, nch * cbytes - used);
  }
  /* encoded images (JPEG/PNG bytes) do not deflate: their chunks are
   * stored as they are, the filter marked skipped (bit 0 of the mask) */
  const int raw = k == D_PIX && w->storage == STORE_ENCODED;
  const uLong bound = raw ? (uLong)cbytes : compressBound((uLong)cbytes);
  uint8_t *out = raw ? (uint8_t *)b->data : malloc(nch * bound);
  uLongf *len = malloc(nch * sizeof *len);
  if (!out || !len) {
    if (!raw) free(out);
    free(len);
    VL_ERROR(VL_ENOMEM, "dataset writer: compression buffers for %zu chunks of %s", nch, dspec[k].name);
  }
  int bad = 0;
  const int level = dspec[k].deflate;
#pragma omp parallel for schedule(dynamic) reduction(| : bad)
  for (long c = 0; c < (long)nch; c++) {
    len[c] = bound;
    if (raw) continue;
    if (compress2(out + (size_t)c * bound, &len[c], (const Bytef *)b->data + (size_t)c * cbytes, (uLong)cbytes,
                  level) != Z_OK)
      bad = 1;
  }
  int rc = VL_OK;
  hsize_t rows = s->rows[k] + (hsize_t)nfull * dspec[k].chunk + (final ? rem / elem : 0);
  if (bad) VL_ERROR_GOTO(rc, done, VL_ENOMEM, "dataset writer: deflate of %s failed", dspec[k].name);
  if (H5Dset_extent(s->dset[k], &rows) < 0)
    VL_ERROR_GOTO(rc, done, VL_EHDF5, "%s: cannot extend %s", w->tmp, dspec[k].name);
  for (size_t c = 0; c < nch; c++) {
    hsize_t off = s->rows[k] + (hsize_t)c * dspec[k].chunk;
    if (H5Dwrite_chunk(s->dset[k], H5P_DEFAULT, raw ? 1u : 0u, &off, len[c], out + c * bound) < 0)
      VL_ERROR_GOTO(rc, done, VL_EHDF5, "%s: writing a chunk of %s failed (disk full?)", w->tmp, dspec[k].name);
  }
  const size_t consumed = final ? b->n : nfull * cbytes;
  memmove(b->data, b->data + consumed, b->n - consumed);
  b->n -= consumed;
  w->buffered -= consumed;
  s->rows[k] = rows;
done:
  if (!raw) free(out);
  free(len);
  return rc;
}

/* Appends the buffered rows of every dataset of the split to the file
 * (bulk datasets: whole chunks only, unless final). */
static int wsplit_flush(vl_dataset_writer *w, wsplit *s, int final) {
  int rc = VL_OK;
  for (int k = 0; k < D_N; k++) {
    wbuf *b = &s->buf[k];
    if (is_bulk(k)) {
      VL_CALL(flush_chunks(w, s, k, final));
      continue;
    }
    if (!b->n) continue;
    const size_t row = type_size(dspec[k].type) * (size_t)dspec[k].cols;
    hsize_t add = b->n / row, start[2] = {s->rows[k], 0}, count[2] = {add, (hsize_t)dspec[k].cols};
    hsize_t dims[2] = {s->rows[k] + add, (hsize_t)dspec[k].cols};
    const int nd = dspec[k].cols > 1 ? 2 : 1;
    hid_t fs = -1, ms = -1;
    if (H5Dset_extent(s->dset[k], dims) < 0 || (fs = H5Dget_space(s->dset[k])) < 0 ||
        H5Sselect_hyperslab(fs, H5S_SELECT_SET, start, NULL, count, NULL) < 0 ||
        (ms = H5Screate_simple(nd, count, NULL)) < 0 ||
        H5Dwrite(s->dset[k], mem_type(dspec[k].type), ms, fs, H5P_DEFAULT, b->data) < 0)
      rc = vl_err_raise(VL_EHDF5, __FILE__, __LINE__, __func__, "%s: writing %llu rows of %s failed (disk full?)",
                        w->tmp, (unsigned long long)add, dspec[k].name);
    if (ms >= 0) H5Sclose(ms);
    if (fs >= 0) H5Sclose(fs);
    if (rc) return rc;
    s->rows[k] += add;
    w->buffered -= b->n;
    b->n = 0;
  }
  return VL_OK;
}

int vl_dataset_writer_add(vl_dataset_writer *w, const char *split, const int32_t *ids,
                          const uint8_t *loss_mask, int n_tokens,
                          const vl_dataset_image *images, int n_images) {
  if (!w || w->failed) VL_ERROR(VL_EINVAL, "dataset writer: not open (an earlier error?)");
  const int si = split_index(split);
  if (si < 0) VL_ERROR(VL_EINVAL, "dataset writer: split must be \"train\" or \"val\", not \"%s\"", split ? split : "(null)");
  if (n_tokens <= 0 || !ids || !loss_mask) VL_ERROR(VL_EINVAL, "dataset writer: a sample needs tokens (%d given)", n_tokens);
  if (n_images < 0 || (n_images > 0 && !images)) VL_ERROR(VL_EINVAL, "dataset writer: bad image list (%d)", n_images);
  for (int i = 0; i < n_tokens; i++) {
    if (ids[i] < 0) VL_ERROR(VL_EINVAL, "dataset writer: token %d of a sample is negative (%d)", i, (int)ids[i]);
    if (loss_mask[i] > 1) VL_ERROR(VL_EINVAL, "dataset writer: loss_mask[%d] = %d, not 0 or 1", i, loss_mask[i]);
  }
  for (int j = 0; j < n_images; j++) {
    const vl_dataset_image *im = &images[j];
    if (im->h <= 0 || im->w <= 0 || (!im->rgb && (!im->encoded || !im->n_encoded)) || im->grid_thw[0] <= 0 ||
        im->grid_thw[1] <= 0 || im->grid_thw[2] <= 0)
      VL_ERROR(VL_EINVAL, "dataset writer: image %d: size %d x %d, grid (%d, %d, %d) invalid", j, im->w, im->h,
               (int)im->grid_thw[0], (int)im->grid_thw[1], (int)im->grid_thw[2]);
    const int st = im->rgb ? STORE_RGB : STORE_ENCODED;
    if (w->storage >= 0 && st != w->storage)
      VL_ERROR(VL_EINVAL, "dataset writer: image %d is %s, the file's images are %s (one kind per file)", j,
               storage_name(st), storage_name(w->storage));
    w->storage = st;
  }
  wsplit *s = &w->split[si];
  int rc = VL_OK;
  if (s->group < 0) VL_CALL_GOTO(rc, fail, wsplit_create(w, si));
  VL_CALL_GOTO(rc, fail, wbuf_add(&s->buf[D_TOKENS], ids, (size_t)n_tokens * 4));
  VL_CALL_GOTO(rc, fail, wbuf_add(&s->buf[D_MASK], loss_mask, (size_t)n_tokens));
  s->n_tokens += n_tokens;
  VL_CALL_GOTO(rc, fail, wbuf_add(&s->buf[D_SOFF], &s->n_tokens, 8));
  w->buffered += (size_t)n_tokens * 5 + 16;
  for (int j = 0; j < n_images; j++) {
    const vl_dataset_image *im = &images[j];
    const size_t bytes = im->rgb ? (size_t)im->h * im->w * 3 : im->n_encoded;
    int32_t hw[2] = {im->h, im->w};
    VL_CALL_GOTO(rc, fail, wbuf_add(&s->buf[D_GRID], im->grid_thw, 12));
    VL_CALL_GOTO(rc, fail, wbuf_add(&s->buf[D_HW], hw, 8));
    VL_CALL_GOTO(rc, fail, wbuf_add(&s->buf[D_PIX], im->rgb ? im->rgb : im->encoded, bytes));
    s->n_pixels += (int64_t)bytes;
    VL_CALL_GOTO(rc, fail, wbuf_add(&s->buf[D_POFF], &s->n_pixels, 8));
    w->buffered += bytes + 28;
  }
  s->n_images += n_images;
  VL_CALL_GOTO(rc, fail, wbuf_add(&s->buf[D_IOFF], &s->n_images, 8));
  s->n_samples++;
  if (w->buffered >= WBUF_FLUSH_BYTES)
    for (int q = 0; q < 2; q++)
      if (w->split[q].group >= 0) VL_CALL_GOTO(rc, fail, wsplit_flush(w, &w->split[q], 0));
  return VL_OK;
fail:
  w->failed = 1; /* buffers may hold half a sample: only abort is left */
  return rc;
}

static int attr_put(hid_t obj, const char *name, hid_t ftype, hid_t mtype, int n, const void *v,
                    const char *file) {
  int rc = VL_OK;
  hsize_t dim = (hsize_t)n;
  hid_t space = n ? H5Screate_simple(1, &dim, NULL) : H5Screate(H5S_SCALAR);
  hid_t a = space >= 0 ? H5Acreate2(obj, name, ftype, space, H5P_DEFAULT, H5P_DEFAULT) : -1;
  if (a < 0 || H5Awrite(a, mtype, v) < 0) rc = vl_err_raise(VL_EHDF5, __FILE__, __LINE__, __func__,
                                                             "%s: cannot write attribute %s", file, name);
  if (a >= 0) H5Aclose(a);
  if (space >= 0) H5Sclose(space);
  return rc;
}
static int attr_put_str(hid_t obj, const char *name, const char *v, const char *file) {
  hid_t t = H5Tcopy(H5T_C_S1);
  if (t < 0 || H5Tset_size(t, strlen(v) + 1) < 0) {
    if (t >= 0) H5Tclose(t);
    VL_ERROR(VL_EHDF5, "%s: string type for attribute %s", file, name);
  }
  int rc = attr_put(obj, name, t, t, 0, v, file);
  H5Tclose(t);
  return rc;
}
static int attr_put_i64(hid_t obj, const char *name, long long v, const char *file) {
  return attr_put(obj, name, H5T_STD_I64LE, H5T_NATIVE_LLONG, 0, &v, file);
}

static int write_info(vl_dataset_writer *w, const vl_dataset_info *in) {
  const hid_t f = w->file;
  const char *p = w->tmp;
  double mean[3], std[3];
  for (int c = 0; c < 3; c++) { mean[c] = in->image_mean[c]; std[c] = in->image_std[c]; }
  VL_CALL(attr_put_str(f, "format", DS_FORMAT, p));
  VL_CALL(attr_put_i64(f, "format_version", VL_DATASET_FORMAT_VERSION, p));
  VL_CALL(attr_put_str(f, "family", family_name(in->family), p));
  VL_CALL(attr_put_i64(f, "vocab_size", in->vocab_size, p));
  VL_CALL(attr_put_i64(f, "image_token_id", in->image_token_id, p));
  VL_CALL(attr_put_i64(f, "vision_start_token_id", in->vision_start_token_id, p));
  VL_CALL(attr_put_i64(f, "vision_end_token_id", in->vision_end_token_id, p));
  VL_CALL(attr_put_str(f, "tokenizer_sha256", in->tokenizer_sha256, p));
  VL_CALL(attr_put_i64(f, "patch_size", in->patch_size, p));
  VL_CALL(attr_put_i64(f, "temporal_patch_size", in->temporal_patch_size, p));
  VL_CALL(attr_put_i64(f, "merge_size", in->merge_size, p));
  VL_CALL(attr_put_i64(f, "min_pixels", in->min_pixels, p));
  VL_CALL(attr_put_i64(f, "max_pixels", in->max_pixels, p));
  VL_CALL(attr_put(f, "image_mean", H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, 3, mean, p));
  VL_CALL(attr_put(f, "image_std", H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, 3, std, p));
  VL_CALL(attr_put_i64(f, "max_seq_len", in->max_seq_len, p));
  VL_CALL(attr_put_str(f, "truncation", in->truncation, p));
  VL_CALL(attr_put_str(f, "pixel_storage", storage_name(w->storage), p));
  VL_CALL(attr_put_str(f, "source", in->source, p));
  VL_CALL(attr_put_str(f, "vltrain_version", PACKAGE_VERSION, p));
  VL_CALL(attr_put_i64(f, "n_read", in->n_read, p));
  VL_CALL(attr_put_i64(f, "n_written", in->n_written, p));
  VL_CALL(attr_put_i64(f, "n_skipped_bad", in->n_skipped_bad, p));
  VL_CALL(attr_put_i64(f, "n_skipped_long", in->n_skipped_long, p));
  VL_CALL(attr_put_i64(f, "n_truncated", in->n_truncated, p));
  return VL_OK;
}


int vl_dataset_writer_commit(vl_dataset_writer *w, const vl_dataset_info *info) {
  if (!w || w->failed) VL_ERROR(VL_EINVAL, "dataset writer: cannot commit after an error; abort it");
  int rc = VL_OK;
  VL_CALL_GOTO(rc, fail, vl_dataset_check_info(info, w->path));
  /* every file has a train group, possibly empty */
  if (w->split[0].group < 0) VL_CALL_GOTO(rc, fail, wsplit_create(w, 0));
  for (int q = 0; q < 2; q++)
    if (w->split[q].group >= 0) VL_CALL_GOTO(rc, fail, wsplit_flush(w, &w->split[q], 1));
  VL_CALL_GOTO(rc, fail, write_info(w, info));
  for (int q = 0; q < 2; q++) {
    for (int k = 0; k < D_N; k++) {
      if (w->split[q].dset[k] >= 0 && H5Dclose(w->split[q].dset[k]) < 0)
        VL_ERROR_GOTO(rc, fail, VL_EHDF5, "%s: closing %s failed", w->tmp, dspec[k].name);
      w->split[q].dset[k] = -1;
    }
    if (w->split[q].group >= 0 && H5Gclose(w->split[q].group) < 0)
      VL_ERROR_GOTO(rc, fail, VL_EHDF5, "%s: closing a group failed", w->tmp);
    w->split[q].group = -1;
  }
  if (H5Fflush(w->file, H5F_SCOPE_GLOBAL) < 0) VL_ERROR_GOTO(rc, fail, VL_EHDF5, "%s: flush failed", w->tmp);
  herr_t cl = H5Fclose(w->file);
  w->file = -1;
  if (cl < 0) VL_ERROR_GOTO(rc, fail, VL_EHDF5, "%s: close failed (disk full?)", w->tmp);
  int fd = open(w->tmp, O_RDONLY);
  if (fd < 0 || fsync(fd) != 0) {
    int e = errno;
    if (fd >= 0) close(fd);
    VL_ERROR_GOTO(rc, fail, VL_EIO, "%s: fsync failed: %s", w->tmp, strerror(e));
  }
  close(fd);
  if (rename(w->tmp, w->path) != 0)
    VL_ERROR_GOTO(rc, fail, VL_EIO, "cannot rename %s to %s: %s", w->tmp, w->path, strerror(errno));
  for (int q = 0; q < 2; q++)
    for (int k = 0; k < D_N; k++) free(w->split[q].buf[k].data);
  free(w);
  return VL_OK;
fail:
  /* nothing partial may remain under either name */
  w->failed = 1;
  if (w->file >= 0) {
    H5E_BEGIN_TRY { H5Fclose(w->file); } H5E_END_TRY;
    w->file = -1;
  }
  unlink(w->tmp);
  return rc;
}

void vl_dataset_writer_abort(vl_dataset_writer *w) {
  if (!w) return;
  H5E_BEGIN_TRY {
    for (int q = 0; q < 2; q++) {
      for (int k = 0; k < D_N; k++)
        if (w->split[q].dset[k] >= 0) H5Dclose(w->split[q].dset[k]);
      if (w->split[q].group >= 0) H5Gclose(w->split[q].group);
    }
    if (w->file >= 0) H5Fclose(w->file);
  } H5E_END_TRY;
  unlink(w->tmp);
  for (int q = 0; q < 2; q++)
    for (int k = 0; k < D_N; k++) free(w->split[q].buf[k].data);
  free(w);
}

