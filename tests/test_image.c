/* test_image: image preprocessing against transformers' Pillow image
 * processor (fixtures by tests/reference/make_image_fixtures.py, Qwen3-VL
 * settings, min 4,096 / max 16,384 pixels): 12 images in PNG (RGB 8 and 16
 * bit, grey, palette, alpha) and JPEG (EXIF orientations 3, 6, 8):
 * the grid (smart_resize and EXIF) exactly, Pillow's bicubic resize within
 * one grey level on >= 99% of values, and pixel_values within one grey level
 * (1/255/0.5 after normalisation) on >= 99%. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "err.h"
#include "image.h"
#include "safetensors.h"
#include "test_util.h"

static const char *names[] = {"rgb8.png", "wide.png", "tall.jpg", "grey.png", "palette.png", "alpha.png",
                              "rgb16.png", "small.jpg", "exif3.jpg", "exif6.jpg", "exif8.jpg", "large.jpg"};

int main(void) {
  char dir[1024], path[1200], key[128];
  test_path(dir, sizeof dir, "tests/data/images");
  snprintf(path, sizeof path, "%s/reference.safetensors", dir);
  vl_safetensors *ref;
  if (vl_st_open(&ref, path) != VL_OK) return 1;
  const vl_patch_params pp = {16, 2, 2, {0.5f, 0.5f, 0.5f}, {0.5f, 0.5f, 0.5f}};
  size_t total_r = 0, ok_r = 0, total_p = 0, ok_p = 0;
  int worst_r = 0;
  for (size_t i = 0; i < sizeof names / sizeof *names; i++) {
    vl_image img, rs;
    snprintf(path, sizeof path, "%s/%s", dir, names[i]);
    int rc = vl_image_load(&img, path);
    CHECK(rc == VL_OK, "%s: %s", names[i], vl_err_last());
    if (rc) continue;
    char base[64];
    snprintf(base, sizeof base, "%s", names[i]);
    *strchr(base, '.') = '_';
    snprintf(key, sizeof key, "%s.grid", base);
    int64_t g[3];
    vl_st_read_i64(vl_st_find(ref, key), g, 3);
    int oh, ow;
    vl_smart_resize(img.h, img.w, 32, 4096, 16384, &oh, &ow);
    CHECK(oh / 16 == g[1] && ow / 16 == g[2], "%s: grid %d x %d, HF %lld x %lld (image %d x %d)", names[i],
          oh / 16, ow / 16, (long long)g[1], (long long)g[2], img.w, img.h);
    if (oh / 16 != g[1] || ow / 16 != g[2]) { vl_image_free(&img); continue; }
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
    size_t rows = (size_t)(oh / 16) * (ow / 16), cols = 1536;
    float *pv = malloc(rows * cols * sizeof(float)), *hf = malloc(rows * cols * sizeof(float));
    vl_image_patchify(&rs, &pp, pv, grid);
    snprintf(key, sizeof key, "%s.pixel_values", base);
    vl_st_read_f32(vl_st_find(ref, key), hf, rows * cols);
    size_t goodp = 0;
    for (size_t k = 0; k < rows * cols; k++) goodp += fabsf(pv[k] - hf[k]) <= 1.0f / 255 / 0.5f + 2e-3f;
    total_p += rows * cols;
    ok_p += goodp;
    printf("%-12s %4d x %-4d -> grid %d x %-3d resize within 1 level %6.2f%%, pixel_values %6.2f%%\n",
           names[i], img.w, img.h, grid[1], grid[2], 100.0 * good / n, 100.0 * goodp / (rows * cols));
    free(pv); free(hf);
    vl_image_free(&rs);
    vl_image_free(&img);
  }
  printf("all: resize %.3f%% within one grey level (max difference %d), pixel_values %.3f%%\n",
         100.0 * ok_r / total_r, worst_r, 100.0 * ok_p / total_p);
  CHECK(ok_r >= 0.99 * total_r, "resize parity %.3f%%", 100.0 * ok_r / total_r);
  CHECK(ok_p >= 0.99 * total_p, "pixel_values parity %.3f%%", 100.0 * ok_p / total_p);
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
  vl_st_close(ref);
  TEST_END();
}
