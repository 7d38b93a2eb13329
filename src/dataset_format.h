/* dataset_format: the layout of dataset.h5 shared by its writer
 * (dataset_write.c) and reader (dataset.c): the datasets of a split group,
 * their element types, chunking and compression, and the names written in
 * its attributes.  Private to the dataset module. */
#ifndef VL_DATASET_FORMAT_H
#define VL_DATASET_FORMAT_H

#include <hdf5.h>
#include <string.h>

#include "dataset.h"

#ifndef PACKAGE_VERSION
#define PACKAGE_VERSION "unknown"
#endif
#define DS_FORMAT "vltrain-dataset"

/* The datasets of a split group. */
enum { D_TOKENS, D_MASK, D_SOFF, D_IOFF, D_GRID, D_HW, D_POFF, D_PIX, D_N };
enum { T_I32, T_U8, T_I64 };
static const struct {
  const char *name;
  int type;      /* T_* */
  int cols;      /* 1, or 3 / 2 for the (n, cols) tables */
  hsize_t chunk; /* rows per chunk */
  int deflate;   /* compression level, 0 = none */
} dspec[D_N] = {
    {"tokens", T_I32, 1, 16384, 4},       {"loss_mask", T_U8, 1, 65536, 4},
    {"sample_offsets", T_I64, 1, 4096, 0}, {"image_offsets", T_I64, 1, 4096, 0},
    {"image_grid_thw", T_I32, 3, 4096, 0}, {"image_hw", T_I32, 2, 4096, 0},
    {"pixel_offsets", T_I64, 1, 4096, 0},  {"pixels", T_U8, 1, 262144, 1},
};
static inline size_t type_size(int t) { return t == T_U8 ? 1 : t == T_I32 ? 4 : 8; }
static inline hid_t file_type(int t) { return t == T_U8 ? H5T_STD_U8LE : t == T_I32 ? H5T_STD_I32LE : H5T_STD_I64LE; }
static inline hid_t mem_type(int t) { return t == T_U8 ? H5T_NATIVE_UINT8 : t == T_I32 ? H5T_NATIVE_INT32 : H5T_NATIVE_INT64; }

static inline const char *family_name(vl_family f) { return f == VL_FAMILY_QWEN2_VL ? "qwen2-vl" : "qwen3-vl"; }

/* The group of a split: 0 "train", 1 "val", -1 neither. */
static inline int split_index(const char *split) {
  if (!split) return -1;
  if (!strcmp(split, "train")) return 0;
  if (!strcmp(split, "val")) return 1;
  return -1;
}

enum { STORE_RGB = 0, STORE_ENCODED = 1 };
static inline const char *storage_name(int s) { return s == STORE_ENCODED ? "encoded" : "rgb"; }

/* The provenance fields a file must have (writer before commit, reader at
 * open): known family, ids inside the vocabulary, positive sizes, strings
 * terminated.  VL_EINVAL naming path. */
int vl_dataset_check_info(const vl_dataset_info *in, const char *path);

#endif
