/* image: what Hugging Face's Qwen-VL image processor (the Pillow path) does
 * to an image file — decode JPEG/PNG to RGB (EXIF orientation applied,
 * alpha composited on white as transformers' convert_to_rgb does),
 * smart_resize, Pillow's bicubic resampling (same coefficients, same 8-bit
 * fixed point, horizontal then vertical pass), rescale, normalize, and the
 * patch layout (merge-window-major rows, grid_thw).
 * Does not own: where images come from (vlprep, dataset). */
#ifndef VL_IMAGE_H
#define VL_IMAGE_H

#include <stddef.h>
#include <stdint.h>

#include "config.h"

typedef struct {
  int w, h;
  uint8_t *rgb; /* h * w * 3, row-major */
} vl_image;

/* Decodes PNG or JPEG bytes (by signature); `name` is for messages. */
int vl_image_decode(vl_image *img, const void *bytes, size_t n, const char *name);
int vl_image_load(vl_image *img, const char *path);
/* A file's bytes (malloc'd; the caller frees *bytes). */
int vl_image_read_file(const char *path, uint8_t **bytes, size_t *n);
void vl_image_free(vl_image *img);

/* HF smart_resize: dimensions divisible by factor (patch * merge), pixel
 * count within [min_pixels, max_pixels], aspect ratio kept (< 200). */
int vl_smart_resize(int h, int w, int factor, long min_pixels, long max_pixels, int *oh, int *ow);

/* Pillow's Image.resize((ow, oh), BICUBIC) on an 8-bit RGB image. */
int vl_image_resize_bicubic(const vl_image *in, int ow, int oh, vl_image *out);

typedef struct {
  int patch, temporal, merge;
  float mean[3], std[3];
} vl_patch_params;

/* The published processor settings of a family (preprocessor_config.json):
 * Qwen3-VL patch 16, mean = std = 0.5, pixels [65536, 16777216]; Qwen2-VL
 * patch 14, OpenAI CLIP mean and std, pixels [3136, 12845056]; both
 * temporal 2, merge 2.  smart_resize's factor is patch * merge.  A model
 * folder's own preprocessor_config.json overrides these. */
int vl_image_family_defaults(vl_family family, vl_patch_params *pp, long *min_pixels,
                             long *max_pixels);

/* pixel_values rows of a resized image: (h/p)*(w/p) rows of
 * 3*temporal*p*p floats, (x/255 - mean)/std, the frame repeated temporal
 * times; grid = (1, h/p, w/p).  out must hold that many floats. */
int vl_image_patchify(const vl_image *img, const vl_patch_params *pp, float *out, int32_t grid[3]);

#endif
