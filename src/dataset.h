/* dataset: the HDF5 training-data file (dataset.h5) that vlprep writes and
 * every rank reads, and the sampler that walks it.
 *
 * Owns: the file format (below), writing it (append samples, then commit:
 * temporary name, flush, rename), reading it (random access to samples,
 * provenance checks against the model config), the seeded per-epoch shuffle,
 * and a background prefetch thread.
 * Does not own: tokenization, chat templates, image decoding or resizing
 * (vlprep, chat, image), building the micro-batch (batch).
 *
 * Format (format_version 1).  One group per split, "/train" and optionally
 * "/val"; in each group:
 *   tokens          int32  (n_tokens)       token ids of every sample, concatenated
 *   loss_mask       uint8  (n_tokens)       1 = supervised (assistant content + <|im_end|>)
 *   sample_offsets  int64  (n_samples + 1)  sample i = tokens[off[i] .. off[i+1])
 *   image_offsets   int64  (n_samples + 1)  sample i has images img_off[i] .. img_off[i+1]
 *   image_grid_thw  int32  (n_images, 3)    the processor's image_grid_thw
 *   image_hw        int32  (n_images, 2)    resized height, width (pixels)
 *   pixel_offsets   int64  (n_images + 1)   image j = pixels[po[j] .. po[j+1])
 *   pixels          uint8  (n_pixel_bytes)  the images, as the root attribute
 *                   pixel_storage says: "encoded" (the default): each image
 *                   file's bytes as the user gave them (JPEG, PNG), decoded,
 *                   resized to image_hw (bicubic) and patchified when read;
 *                   "rgb": h*w*3 bytes of RGB after smart_resize + bicubic.
 * All datasets are chunked and extendable; tokens (16,384 per chunk),
 * loss_mask (65,536) and pixels (262,144 bytes) are deflate-compressed (the
 * writer compresses whole chunks on every core and writes them with
 * H5Dwrite_chunk; any HDF5 reader decodes them).  Root attributes
 * (provenance; vocab_size is the MODEL config's text vocab_size, which
 * vl_dataset_check compares for equality):
 *   format = "vltrain-dataset", format_version = 1, family ("qwen3-vl" |
 *   "qwen2-vl"), vocab_size, image_token_id, vision_start_token_id,
 *   vision_end_token_id, tokenizer_sha256 (hex of tokenizer.json's bytes),
 *   patch_size, temporal_patch_size, merge_size, min_pixels, max_pixels,
 *   image_mean[3], image_std[3], max_seq_len, truncation ("skip" |
 *   "truncate"), pixel_storage ("encoded" | "rgb"; absent = "rgb"), source
 *   (the JSONL path), vltrain_version, and the counts
 *   n_read, n_written, n_skipped_bad, n_skipped_long, n_truncated.
 * Encoded storage keeps the file the size of the source images and vlprep
 * fast (no resize, no recompression); decoding and resizing when a sample
 * is read run the same code vlprep would have run, so the pixel values are
 * identical either way.  RGB storage (vlprep --pixels rgb) trades size for
 * cheaper reads.  Its chunks are deflated; encoded ones are stored as they
 * are (the deflate filter skipped per chunk, which HDF5 readers honour).
 *
 * Sampler: global sample number g (0, 1, 2, ... over the whole run) maps to
 * epoch e = g / n and position g % n of the epoch's permutation, a seeded
 * Fisher-Yates shuffle of (seed, e).  The trainer asks for g = ((s*A + a)*W
 * + r)*mb + k (train.h), so ranks read disjoint samples and the cursor a
 * checkpoint needs is the number of samples consumed, which does not depend
 * on the world size.
 */
#ifndef VL_DATASET_H
#define VL_DATASET_H

#include <stddef.h>
#include <stdint.h>

#include "batch.h"
#include "config.h"

#define VL_DATASET_FORMAT_VERSION 1

/* ---- provenance ---------------------------------------------------------- */
typedef struct {
  vl_family family;
  int vocab_size;
  int image_token_id, vision_start_token_id, vision_end_token_id;
  char tokenizer_sha256[65];
  int patch_size, temporal_patch_size, merge_size;
  long min_pixels, max_pixels;
  float image_mean[3], image_std[3];
  int max_seq_len;
  char truncation[16];
  char pixel_storage[16];    /* "encoded" | "rgb": set by the writer (ignored in
                              * what commit is given), read back by open */
  char source[VL_PATH_MAX];
  long n_read, n_written, n_skipped_bad, n_skipped_long, n_truncated;
} vl_dataset_info;

/* ---- writing (vlprep; one process) --------------------------------------- */
typedef struct vl_dataset_writer vl_dataset_writer;

/* Creates path's temporary sibling (path + ".tmp.<pid>"); nothing appears at
 * path until commit.  Serial HDF5 (default file driver): needs no MPI_Init.
 * Not thread-safe: one writer, one thread (HDF5 here is not thread-safe). */
int vl_dataset_writer_open(vl_dataset_writer **w, const char *path);
/* One image of a sample as stored: resized RGB and its grid. */
typedef struct {
  int h, w;               /* resized size */
  const uint8_t *rgb;     /* h * w * 3, or NULL when encoded is given */
  int32_t grid_thw[3];
  const uint8_t *encoded; /* the image file's bytes (decoded and resized when read) */
  size_t n_encoded;
} vl_dataset_image;
/* Appends a sample to split "train" or "val" (buffered; written in blocks).
 * Bad arguments give VL_EINVAL and leave w usable; any other failure leaves
 * w only fit for abort. */
int vl_dataset_writer_add(vl_dataset_writer *w, const char *split, const int32_t *ids,
                          const uint8_t *loss_mask, int n_tokens,
                          const vl_dataset_image *images, int n_images);
/* Writes the attributes, flushes, closes, fsyncs and renames the temporary
 * file to path; frees w.  On failure the temporary file is already removed
 * and w is left for vl_dataset_writer_abort (which then only frees it). */
int vl_dataset_writer_commit(vl_dataset_writer *w, const vl_dataset_info *info);
/* Removes the temporary file (after an error).  w may be NULL. */
void vl_dataset_writer_abort(vl_dataset_writer *w);

/* ---- reading (every rank) ------------------------------------------------- */
typedef struct vl_dataset vl_dataset;

/* Opens one split ("train" or "val") read-only (serial HDF5 per rank; the
 * index datasets are read into memory, tokens and pixels on demand). */
int vl_dataset_open(vl_dataset **d, const char *path, const char *split);
/* *has = 1 when the file has the group `split` (e.g. "val"). */
int vl_dataset_has_split(const char *path, const char *split, int *has);
void vl_dataset_close(vl_dataset *d);
long vl_dataset_size(const vl_dataset *d);
/* The largest sample: tokens, and vision patches (sum of t*h*w of its images). */
void vl_dataset_limits(const vl_dataset *d, long *max_tokens, long *max_patches, long *at_tokens,
                       long *at_patches);
const vl_dataset_info *vl_dataset_provenance(const vl_dataset *d);
/* Checks family, vocabulary size and special-token ids, patch/merge sizes
 * against the model; VL_EINVAL "PATH: dataset made for X, model is Y". */
int vl_dataset_check(const vl_dataset *d, const vl_model_config *mc);

/* A sample as the model's input: ids, labels (ids where loss_mask, else
 * -100), normalized patches (the processor's pixel_values) and grid_thw. */
typedef struct {
  int32_t *ids, *labels;
  int32_t (*grid)[3];
  float *pixels;
  uint8_t *bytes;      /* scratch: loss mask, RGB, chunks */
  size_t cap_tokens, cap_images, cap_pixels, cap_bytes;  /* buffers are reused */
  vl_sample sample;   /* points into the buffers above */
} vl_dataset_sample;

/* Reads sample i (0 <= i < size) into s (grows its buffers; a zeroed s
 * starts empty).  Any thread may read (pread + zlib; no HDF5 calls), each
 * into its own s. */
int vl_dataset_read(vl_dataset *d, long i, vl_dataset_sample *s);
void vl_dataset_sample_free(vl_dataset_sample *s);

/* The sample index of global sample number g: epoch g / n, shuffled with
 * (seed, epoch).  A pure function: the same on every rank and world size. */
long vl_dataset_index(const vl_dataset *d, uint64_t seed, uint64_t g);

/* ---- prefetch -------------------------------------------------------------- */
/* A background thread reads requested samples (global numbers g, through
 * vl_dataset_index with seed) ahead of the taker, at most `depth` samples
 * ahead.  Requests queue without bound; samples are taken in request order.
 * A read error travels to the vl_prefetch_take of that sample (VL_EIO ...
 * with the reader's message).  The thread makes no HDF5 calls. */
typedef struct vl_prefetch vl_prefetch;
int vl_prefetch_start(vl_prefetch **p, vl_dataset *d, uint64_t seed, int depth);
/* Requests the next global sample number, in the order they will be taken. */
int vl_prefetch_request(vl_prefetch *p, uint64_t g);
/* Takes the sample of global number g (must be the oldest request), blocking
 * until it is ready: its buffers are swapped with *out's, so nothing is
 * copied and *out owns the sample until the caller frees or reuses it. */
int vl_prefetch_take(vl_prefetch *p, uint64_t g, vl_dataset_sample *out);
/* Stops the thread (after the sample it is reading) and drops what is
 * queued.  p may be NULL. */
void vl_prefetch_stop(vl_prefetch *p);

#endif
