/* test_image: image preprocessing against transformers' Pillow image
 * processor (fixtures by tests/reference/make_image_fixtures.py, Qwen3-VL
 * settings, min 4,096 / max 16,384 pixels): 12 images in PNG (RGB 8 and 16
 * bit, grey, palette, alpha) and JPEG (EXIF orientations 3, 6, 8):
 * the grid (smart_resize and EXIF) exactly, Pillow's bicubic resize within
 * one grey level on >= 99% of values, and pixel_values within one grey level
 * (1/255/0.5 after normalisation) on >= 99%.  The same for six of them with
 * Qwen2-VL's settings (reference-qwen2vl.safetensors: patch 14, factor 28,
 * CLIP mean and std, min_pixels 3136, max_pixels 12845056). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "err.h"
#include "image.h"
#include "safetensors.h"
#include "test_util.h"

static const char *const names[] = {"rgb8.png", "wide.png", "tall.jpg", "grey.png", "palette.png", "alpha.png",
                                    "rgb16.png", "small.jpg", "exif3.jpg", "exif6.jpg", "exif8.jpg", "large.jpg"};
/* the images of reference-qwen2vl.safetensors (QWEN2_NAMES in the script) */
static const char *const names_qwen2[] = {"rgb8.png", "wide.png", "tall.jpg", "small.jpg", "exif6.jpg",
                                          "alpha.png"};

typedef struct {
  const char *ref;          /* reference file in tests/data/images */
  const char *const *names; /* images */
  int n_names;
  vl_patch_params pp;
  long min_pixels, max_pixels;
} image_set;

/* One reference set: grids exactly, resize and pixel_values within one grey
 * level (after normalisation: 1/255/std, plus F16 storage) on >= 99%. */
static void check_set(const char *dir, const image_set *set) {
  char path[1200], key[128];
  snprintf(path, sizeof path, "%s/%s", dir, set->ref);
  vl_safetensors *ref;
  if (vl_st_open(&ref, path) != VL_OK) { CHECK(0, "%s: %s", set->ref, vl_err_last()); return; }
  const vl_patch_params pp = set->pp;
  const int p = pp.patch, factor = pp.patch * pp.merge;
  float min_std = pp.std[0];
  for (int c = 1; c < 3; c++) if (pp.std[c] < min_std) min_std = pp.std[c];
  const float tol_p = 1.0f / 255 / min_std + 2e-3f;
  size_t total_r = 0, ok_r = 0, total_p = 0, ok_p = 0;
  int worst_r = 0;
  printf("%s: patch %d, factor %d, pixels [%ld, %ld]\n", set->ref, p, factor, set->min_pixels,
         set->max_pixels);
  for (int i = 0; i < set->n_names; i++) {
    const char *name = set->names[i];
    vl_image img, rs;
    snprintf(path, sizeof path, "%s/%s", dir, name);
    int rc = vl_image_load(&img, path);
    CHECK(rc == VL_OK, "%s: %s", name, vl_err_last());
    if (rc) continue;
    char base[64];
    snprintf(base, sizeof base, "%s", name);
    *strchr(base, '.') = '_';
    snprintf(key, sizeof key, "%s.grid", base);
    int64_t g[3];
    vl_st_read_i64(vl_st_find(ref, key), g, 3);
    int oh, ow;
    vl_smart_resize(img.h, img.w, factor, set->min_pixels, set->max_pixels, &oh, &ow);
    CHECK(oh / p == g[1] && ow / p == g[2], "%s: grid %d x %d, HF %lld x %lld (image %d x %d)", name,
          oh / p, ow / p, (long long)g[1], (long long)g[2], img.w, img.h);
    if (oh / p != g[1] || ow / p != g[2]) { vl_image_free(&img); continue; }
    CHECK(vl_image_resize_bicubic(&img, ow, oh, &rs) == VL_OK, "resize");
    snprintf(key, sizeof key, "%s.resized", base);
    const vl_st_tensor *tr = vl_st_find(ref, key);
    const uint8_t *want = vl_st_tensor_data(tr);
    size_t n = (size_t)oh * ow * 3, good = 0;
    for (size_t k = 0; k < n; k++) {
      int d = abs((int)rs.rgb[k] - (int)want[k]);
      good += d <= 1;
      if (d > worst_r) worst_r = d;
    }
    total_r += n;
    ok_r += good;
    /* pixel_values */
    int32_t grid[3];
    size_t rows = (size_t)(oh / p) * (ow / p), cols = (size_t)3 * pp.temporal * p * p;
    float *pv = malloc(rows * cols * sizeof(float)), *hf = malloc(rows * cols * sizeof(float));
    vl_image_patchify(&rs, &pp, pv, grid);
    snprintf(key, sizeof key, "%s.pixel_values", base);
    vl_st_read_f32(vl_st_find(ref, key), hf, rows * cols);
    size_t goodp = 0;
    for (size_t k = 0; k < rows * cols; k++) goodp += fabsf(pv[k] - hf[k]) <= tol_p;
    total_p += rows * cols;
    ok_p += goodp;
    printf("%-12s %4d x %-4d -> grid %d x %-3d resize within 1 level %6.2f%%, pixel_values %6.2f%%\n",
           name, img.w, img.h, grid[1], grid[2], 100.0 * good / n, 100.0 * goodp / (rows * cols));
    free(pv); free(hf);
    vl_image_free(&rs);
    vl_image_free(&img);
  }
  printf("all: resize %.3f%% within one grey level (max difference %d), pixel_values %.3f%%\n",
         100.0 * ok_r / total_r, worst_r, 100.0 * ok_p / total_p);
  CHECK(ok_r >= 0.99 * total_r, "%s: resize parity %.3f%%", set->ref, 100.0 * ok_r / total_r);
  CHECK(ok_p >= 0.99 * total_p, "%s: pixel_values parity %.3f%%", set->ref, 100.0 * ok_p / total_p);
  vl_st_close(ref);
}

int main(void) {
  char dir[1024];
  test_path(dir, sizeof dir, "tests/data/images");
  const image_set qwen3 = {"reference.safetensors", names, (int)(sizeof names / sizeof *names),
                           {16, 2, 2, {0.5f, 0.5f, 0.5f}, {0.5f, 0.5f, 0.5f}}, 4096, 16384};
  check_set(dir, &qwen3);
  /* Qwen2-VL's published preprocessor_config.json: patch 14, factor 28,
   * OpenAI CLIP mean/std, min_pixels 3136, max_pixels 12845056 */
  const image_set qwen2 = {"reference-qwen2vl.safetensors", names_qwen2,
                           (int)(sizeof names_qwen2 / sizeof *names_qwen2),
                           {14, 2, 2, {0.48145466f, 0.4578275f, 0.40821073f},
                            {0.26862954f, 0.26130258f, 0.27577711f}},
                           3136, 12845056};
  check_set(dir, &qwen2);
  /* the family defaults are those settings (Qwen3-VL's published pixel range
   * is wider than the fixtures' [4096, 16384]) */
  vl_patch_params d;
  long lo, hi;
  CHECK(vl_image_family_defaults(VL_FAMILY_QWEN2_VL, &d, &lo, &hi) == VL_OK &&
            !memcmp(&d, &qwen2.pp, sizeof d) && lo == 3136 && hi == 12845056,
        "qwen2-vl processor defaults");
  CHECK(vl_image_family_defaults(VL_FAMILY_QWEN3_VL, &d, &lo, &hi) == VL_OK &&
            !memcmp(&d, &qwen3.pp, sizeof d) && lo == 65536 && hi == 16777216,
        "qwen3-vl processor defaults");
  /* smart_resize by hand: HF's documented examples with Qwen3 settings */
  int oh, ow;
  vl_smart_resize(333, 517, 32, 65536, 16777216, &oh, &ow);
  CHECK(oh == 320 && ow == 512, "333 x 517 -> %d x %d (grid 20 x 32)", oh, ow);
  vl_smart_resize(1024, 1280, 32, 65536, 16777216, &oh, &ow);
  CHECK(oh == 1024 && ow == 1280, "1024 x 1280 -> %d x %d (grid 64 x 80)", oh, ow);
  vl_err_set_quiet(1);
  vl_image bad;
  CHECK(vl_image_decode(&bad, "GIF89a....", 10, "x.gif") == VL_EIO, "not an image");
  CHECK(vl_image_decode(&bad, "\x89PNG\r\n\x1a\nxxxxxxxx", 16, "cut.png") == VL_EIO, "truncated PNG");
  CHECK(vl_image_decode(&bad, "\xFF\xD8\xFF\xE0\x00\x10JFIF", 10, "cut.jpg") == VL_EIO && strstr(vl_err_last(), "cut.jpg"),
        "truncated JPEG: %s", vl_err_last());
  TEST_END();
}
