/* dataset_write: the writer half of dataset.h (vl_dataset_writer_*), the
 * dataset.h5 format version 1 as dataset.h lays it out.  One process, serial
 * HDF5.  Each dataset grows by appending: rows collect in a buffer that is
 * written (H5Dset_extent + a hyperslab write) when it holds a few chunks, so
 * memory stays bounded whatever the dataset size.  The file is written at
 * path.tmp.<pid> and renamed to path by commit, after the attributes and a
 * flush; abort removes it. */
#include <hdf5.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "dataset.h"
#include "err.h"

#ifndef PACKAGE_VERSION
#define PACKAGE_VERSION "unknown"
#endif

enum { COL_TOKENS, COL_MASK, COL_SOFF, COL_IOFF, COL_GRID, COL_HW, COL_POFF, COL_PIXELS, N_COLS };

typedef struct {
  hid_t ds, type;   /* type: the native type of the elements */
  size_t esize;       /* bytes per element */
  int width;          /* elements per row (1, 2 or 3) */
  unsigned char *buf; /* pending rows */
  size_t n, cap;      /* pending rows, capacity (rows) */
  hsize_t written;    /* rows in the file */
  int64_t total;      /* rows appended (file + pending): offsets count these */
} column;

typedef struct {
  char name[8];
  hid_t group;
  column col[N_COLS];
} split;

struct vl_dataset_writer {
  char path[VL_PATH_MAX], tmp[VL_PATH_MAX + 32];
  hid_t file;
  split sp[2];      /* train, val */
  int n_sp;
};

static const struct {
  const char *name;
  int width;
  int compress;     /* deflate level, 0 = none */
  hsize_t chunk;    /* rows per chunk */
} cols[N_COLS] = {
  {"tokens", 1, 4, 1 << 16},         {"loss_mask", 1, 4, 1 << 16},
  {"sample_offsets", 1, 0, 1 << 13}, {"image_offsets", 1, 0, 1 << 13},
  {"image_grid_thw", 3, 0, 1 << 12}, {"image_hw", 2, 0, 1 << 12},
  {"pixel_offsets", 1, 0, 1 << 13},  {"pixels", 1, 1, 1 << 20},
};

static hid_t col_type(int c) {
  switch (c) {
  case COL_TOKENS: case COL_GRID: case COL_HW: return H5T_NATIVE_INT32;
  case COL_MASK: case COL_PIXELS: return H5T_NATIVE_UINT8;
  default: return H5T_NATIVE_INT64;
  }
}

static int col_flush(column *c, const char *what) {
  if (!c->n) return VL_OK;
  hsize_t dims[2] = {c->written + c->n, (hsize_t)c->width};
  if (H5Dset_extent(c->ds, dims) < 0) VL_ERROR(VL_EHDF5, "H5Dset_extent(%s)", what);
  hid_t fs = H5Dget_space(c->ds);
  if (fs < 0) VL_ERROR(VL_EHDF5, "H5Dget_space(%s)", what);
  hsize_t start[2] = {c->written, 0}, count[2] = {c->n, (hsize_t)c->width};
  hid_t ms = H5Screate_simple(c->width > 1 ? 2 : 1, count, NULL);
  herr_t e = ms < 0 ? -1 : H5Sselect_hyperslab(fs, H5S_SELECT_SET, start, NULL, count, NULL);
  if (e >= 0) e = H5Dwrite(c->ds, c->type, ms, fs, H5P_DEFAULT, c->buf);
  if (ms >= 0) H5Sclose(ms);
  H5Sclose(fs);
  if (e < 0) VL_ERROR(VL_EHDF5, "H5Dwrite(%s, %llu rows)", what, (unsigned long long)c->n);
  c->written += c->n;
  c->n = 0;
  return VL_OK;
}

static int col_append(column *c, int ci, const void *rows, size_t n) {
  if (c->n + n > c->cap) {
    size_t cap = c->cap ? c->cap : cols[ci].chunk;
    while (cap < c->n + n) cap *= 2;
    unsigned char *b = realloc(c->buf, cap * c->esize * (size_t)c->width);
    if (!b) VL_ERROR(VL_ENOMEM, "dataset writer: %s buffer of %zu rows", cols[ci].name, cap);
    c->buf = b;
    c->cap = cap;
  }
  memcpy(c->buf + c->n * c->esize * (size_t)c->width, rows, n * c->esize * (size_t)c->width);
  c->n += n;
  c->total += (int64_t)n;
  /* write out every 4 chunks' worth */
  if (c->n >= 4 * cols[ci].chunk) VL_CALL(col_flush(c, cols[ci].name));
  return VL_OK;
}

static int split_open(vl_dataset_writer *w, const char *name, split **out) {
  for (int i = 0; i < w->n_sp; i++)
    if (!strcmp(w->sp[i].name, name)) { *out = &w->sp[i]; return VL_OK; }
  if (strcmp(name, "train") && strcmp(name, "val"))
    VL_ERROR(VL_EINVAL, "dataset writer: split \"%s\" (expected train or val)", name);
  split *s = &w->sp[w->n_sp];
  memset(s, 0, sizeof *s);
  snprintf(s->name, sizeof s->name, "%s", name);
  s->group = H5Gcreate2(w->file, name, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
  if (s->group < 0) VL_ERROR(VL_EHDF5, "%s: H5Gcreate2(/%s)", w->tmp, name);
  w->n_sp++;
  for (int c = 0; c < N_COLS; c++) {
    column *col = &s->col[c];
    col->ds = -1;
    col->width = cols[c].width;
    col->type = col_type(c);
    col->esize = H5Tget_size(col->type);
    int rank = col->width > 1 ? 2 : 1;
    hsize_t dims[2] = {0, (hsize_t)col->width}, maxd[2] = {H5S_UNLIMITED, (hsize_t)col->width};
    hsize_t chunk[2] = {cols[c].chunk, (hsize_t)col->width};
    hid_t sp = H5Screate_simple(rank, dims, maxd), dcpl = H5Pcreate(H5P_DATASET_CREATE);
    herr_t e = (sp < 0 || dcpl < 0) ? -1 : H5Pset_chunk(dcpl, rank, chunk);
    if (e >= 0 && cols[c].compress) e = H5Pset_deflate(dcpl, (unsigned)cols[c].compress);
    if (e >= 0)
      col->ds = H5Dcreate2(s->group, cols[c].name, col_type(c), sp, H5P_DEFAULT, dcpl, H5P_DEFAULT);
    if (sp >= 0) H5Sclose(sp);
    if (dcpl >= 0) H5Pclose(dcpl);
    if (col->ds < 0) VL_ERROR(VL_EHDF5, "%s: H5Dcreate2(/%s/%s)", w->tmp, name, cols[c].name);
  }
  /* the offsets start at 0 */
  const int64_t zero = 0;
  VL_CALL(col_append(&s->col[COL_SOFF], COL_SOFF, &zero, 1));
  VL_CALL(col_append(&s->col[COL_IOFF], COL_IOFF, &zero, 1));
  VL_CALL(col_append(&s->col[COL_POFF], COL_POFF, &zero, 1));
  *out = s;
  return VL_OK;
}

int vl_dataset_writer_open(vl_dataset_writer **out, const char *path) {
  *out = NULL;
  vl_dataset_writer *w;
  VL_CALL(vl_calloc((void **)&w, 1, sizeof *w, "dataset writer"));
  w->file = -1;
  if (strlen(path) >= sizeof w->path) { free(w); VL_ERROR(VL_EINVAL, "output path too long: %s", path); }
  snprintf(w->path, sizeof w->path, "%s", path);
  snprintf(w->tmp, sizeof w->tmp, "%s.tmp.%ld", path, (long)getpid());
  H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
  w->file = H5Fcreate(w->tmp, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
  if (w->file < 0) { free(w); VL_ERROR(VL_EHDF5, "%s: cannot create (H5Fcreate)", path); }
  *out = w;
  return VL_OK;
}

int vl_dataset_writer_add(vl_dataset_writer *w, const char *name, const int32_t *ids,
                          const uint8_t *loss_mask, int n_tokens,
                          const vl_dataset_image *images, int n_images) {
  if (n_tokens <= 0 || n_images < 0) VL_ERROR(VL_EINVAL, "dataset writer: sample of %d tokens, %d images", n_tokens, n_images);
  split *s;
  VL_CALL(split_open(w, name, &s));
  VL_CALL(col_append(&s->col[COL_TOKENS], COL_TOKENS, ids, (size_t)n_tokens));
  VL_CALL(col_append(&s->col[COL_MASK], COL_MASK, loss_mask, (size_t)n_tokens));
  for (int i = 0; i < n_images; i++) {
    const vl_dataset_image *im = &images[i];
    if (im->h <= 0 || im->w <= 0) VL_ERROR(VL_EINVAL, "dataset writer: image of %d x %d", im->w, im->h);
    int32_t hw[2] = {im->h, im->w};
    VL_CALL(col_append(&s->col[COL_GRID], COL_GRID, im->grid_thw, 1));
    VL_CALL(col_append(&s->col[COL_HW], COL_HW, hw, 1));
    VL_CALL(col_append(&s->col[COL_PIXELS], COL_PIXELS, im->rgb, (size_t)im->h * im->w * 3));
    int64_t po = s->col[COL_PIXELS].total;
    VL_CALL(col_append(&s->col[COL_POFF], COL_POFF, &po, 1));
  }
  int64_t so = s->col[COL_TOKENS].total, io = s->col[COL_GRID].total;
  VL_CALL(col_append(&s->col[COL_SOFF], COL_SOFF, &so, 1));
  VL_CALL(col_append(&s->col[COL_IOFF], COL_IOFF, &io, 1));
  return VL_OK;
}

static int attr_write(hid_t obj, const char *name, hid_t type, int n, const void *v) {
  hsize_t d = (hsize_t)n;
  hid_t sp = n == 1 ? H5Screate(H5S_SCALAR) : H5Screate_simple(1, &d, NULL);
  hid_t a = sp < 0 ? -1 : H5Acreate2(obj, name, type, sp, H5P_DEFAULT, H5P_DEFAULT);
  herr_t e = a < 0 ? -1 : H5Awrite(a, type, v);
  if (a >= 0) H5Aclose(a);
  if (sp >= 0) H5Sclose(sp);
  if (e < 0) VL_ERROR(VL_EHDF5, "attribute %s (H5Awrite)", name);
  return VL_OK;
}

static int attr_str(hid_t obj, const char *name, const char *s) {
  hid_t t = H5Tcopy(H5T_C_S1);
  if (t < 0 || H5Tset_size(t, strlen(s) + 1) < 0 || H5Tset_strpad(t, H5T_STR_NULLTERM) < 0) {
    if (t >= 0) H5Tclose(t);
    VL_ERROR(VL_EHDF5, "attribute %s: string type", name);
  }
  int rc = attr_write(obj, name, t, 1, s);
  H5Tclose(t);
  return rc;
}

static int attr_int(hid_t obj, const char *name, long v) {
  int64_t x = v;
  return attr_write(obj, name, H5T_NATIVE_INT64, 1, &x);
}

static void close_all(vl_dataset_writer *w) {
  for (int i = 0; i < w->n_sp; i++) {
    for (int c = 0; c < N_COLS; c++) {
      if (w->sp[i].col[c].ds >= 0) H5Dclose(w->sp[i].col[c].ds);
      w->sp[i].col[c].ds = -1;
      free(w->sp[i].col[c].buf);
      w->sp[i].col[c].buf = NULL;
    }
    if (w->sp[i].group >= 0) H5Gclose(w->sp[i].group);
    w->sp[i].group = -1;
  }
  if (w->file >= 0) H5Fclose(w->file);
  w->file = -1;
}

int vl_dataset_writer_commit(vl_dataset_writer *w, const vl_dataset_info *info) {
  split *s;
  VL_CALL(split_open(w, "train", &s)); /* an empty train split still exists */
  for (int i = 0; i < w->n_sp; i++)
    for (int c = 0; c < N_COLS; c++) VL_CALL(col_flush(&w->sp[i].col[c], cols[c].name));
  hid_t f = w->file;
  VL_CALL(attr_str(f, "format", "vltrain-dataset"));
  VL_CALL(attr_int(f, "format_version", VL_DATASET_FORMAT_VERSION));
  VL_CALL(attr_str(f, "family", info->family == VL_FAMILY_QWEN2_VL ? "qwen2-vl" : "qwen3-vl"));
  VL_CALL(attr_int(f, "vocab_size", info->vocab_size));
  VL_CALL(attr_int(f, "image_token_id", info->image_token_id));
  VL_CALL(attr_int(f, "vision_start_token_id", info->vision_start_token_id));
  VL_CALL(attr_int(f, "vision_end_token_id", info->vision_end_token_id));
  VL_CALL(attr_str(f, "tokenizer_sha256", info->tokenizer_sha256));
  VL_CALL(attr_int(f, "patch_size", info->patch_size));
  VL_CALL(attr_int(f, "temporal_patch_size", info->temporal_patch_size));
  VL_CALL(attr_int(f, "merge_size", info->merge_size));
  VL_CALL(attr_int(f, "min_pixels", info->min_pixels));
  VL_CALL(attr_int(f, "max_pixels", info->max_pixels));
  VL_CALL(attr_write(f, "image_mean", H5T_NATIVE_FLOAT, 3, info->image_mean));
  VL_CALL(attr_write(f, "image_std", H5T_NATIVE_FLOAT, 3, info->image_std));
  VL_CALL(attr_int(f, "max_seq_len", info->max_seq_len));
  VL_CALL(attr_str(f, "truncation", info->truncation));
  VL_CALL(attr_str(f, "source", info->source));
  VL_CALL(attr_str(f, "vltrain_version", PACKAGE_VERSION));
  VL_CALL(attr_int(f, "n_read", info->n_read));
  VL_CALL(attr_int(f, "n_written", info->n_written));
  VL_CALL(attr_int(f, "n_skipped_bad", info->n_skipped_bad));
  VL_CALL(attr_int(f, "n_skipped_long", info->n_skipped_long));
  VL_CALL(attr_int(f, "n_truncated", info->n_truncated));
  if (H5Fflush(f, H5F_SCOPE_GLOBAL) < 0) VL_ERROR(VL_EHDF5, "%s: H5Fflush", w->tmp);
  close_all(w);
  if (rename(w->tmp, w->path) != 0) VL_ERROR(VL_EIO, "rename %s -> %s failed", w->tmp, w->path);
  free(w);
  return VL_OK;
}

void vl_dataset_writer_abort(vl_dataset_writer *w) {
  if (!w) return;
  close_all(w);
  remove(w->tmp);
  free(w);
}
