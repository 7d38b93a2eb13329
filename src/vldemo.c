/* vldemo: writes the demo dataset (demo.h) as PNG images and JSONL records
 * in the format users bring for Qwen-VL fine-tuning:
 *   {"messages": [{"role": "user", "content": "<image>question"},
 *                 {"role": "assistant", "content": "short reasoning. answer"}],
 *    "images": ["img/000123.png"]}
 * Seeded and deterministic: the same arguments give the same bytes. */
#include <errno.h>
#include <png.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "demo.h"
#include "err.h"

static void usage(FILE *f) {
  fprintf(f,
          "usage: vldemo --out DIR --count N [--seed S] [--size WxH] [--val-count M]\n"
          "  Draws N demo scenes (tissue background, 1-3 instruments) and writes\n"
          "  DIR/img/NNNNNN.png and DIR/demo.jsonl, one question per image.\n"
          "  --seed S        seed of every scene and question (default 1)\n"
          "  --size WxH      image size in pixels (default 64x64)\n"
          "  --val-count M   also draw M more records and write DIR/train.jsonl (the N)\n"
          "                  and DIR/val.jsonl (the M) instead of DIR/demo.jsonl\n"
          "  Prints the chance level: the accuracy of guessing uniformly among each\n"
          "  question's possible answers.\n");
}

static int write_png(const char *path, const uint8_t *rgb, int w, int h) {
  FILE *f = fopen(path, "wb");
  if (!f) VL_ERROR(VL_EIO, "%s: cannot create: %s", path, strerror(errno));
  png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, NULL, NULL, NULL);
  png_infop info = png ? png_create_info_struct(png) : NULL;
  if (!png || !info) {
    png_destroy_write_struct(&png, &info);
    fclose(f);
    VL_ERROR(VL_ENOMEM, "%s: libpng write structures", path);
  }
  if (setjmp(png_jmpbuf(png))) {
    png_destroy_write_struct(&png, &info);
    fclose(f);
    VL_ERROR(VL_EIO, "%s: libpng failed writing", path);
  }
  png_init_io(png, f);
  png_set_IHDR(png, info, (png_uint_32)w, (png_uint_32)h, 8, PNG_COLOR_TYPE_RGB, PNG_INTERLACE_NONE,
               PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
  png_write_info(png, info);
  for (int y = 0; y < h; y++) png_write_row(png, (png_const_bytep)(rgb + (size_t)y * (size_t)w * 3));
  png_write_end(png, NULL);
  png_destroy_write_struct(&png, &info);
  if (fclose(f) != 0) VL_ERROR(VL_EIO, "%s: write failed: %s", path, strerror(errno));
  return VL_OK;
}

/* Records first .. first+count-1 into the JSONL file at path. */
static int write_split(const char *dir, const char *name, uint64_t seed, long first, long count,
                       int w, int h, uint8_t *rgb, double *chance_sum, long qcount[VL_DEMO_N_QTYPES]) {
  char path[4096];
  snprintf(path, sizeof path, "%s/%s", dir, name);
  FILE *f = fopen(path, "w");
  if (!f) VL_ERROR(VL_EIO, "%s: cannot create: %s", path, strerror(errno));
  int rc = VL_OK;
  for (long i = first; i < first + count; i++) {
    vl_demo_scene s;
    vl_demo_scene_make(&s, seed, (uint64_t)i);
    VL_CALL_GOTO(rc, done, vl_demo_draw(&s, seed, (uint64_t)i, w, h, rgb));
    char img[64], ipath[4200];
    snprintf(img, sizeof img, "img/%06ld.png", i);
    snprintf(ipath, sizeof ipath, "%s/%s", dir, img);
    VL_CALL_GOTO(rc, done, write_png(ipath, rgb, w, h));
    /* our texts hold no characters that JSON escapes */
    fprintf(f,
            "{\"messages\": [{\"role\": \"user\", \"content\": \"<image>%s\"}, "
            "{\"role\": \"assistant\", \"content\": \"%s\"}], \"images\": [\"%s\"]}\n",
            s.question, s.answer, img);
    *chance_sum += 1.0 / s.n_classes;
    qcount[s.qtype]++;
  }
done:
  if (fclose(f) != 0 && rc == VL_OK) VL_ERROR(VL_EIO, "%s: write failed: %s", path, strerror(errno));
  return rc;
}

static int make_dir(const char *path) {
  if (mkdir(path, 0777) != 0 && errno != EEXIST) VL_ERROR(VL_EIO, "%s: cannot create: %s", path, strerror(errno));
  return VL_OK;
}

int main(int argc, char **argv) {
  const char *out = NULL;
  long count = -1, val = 0;
  unsigned long long seed = 1;
  int w = 64, h = 64;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
    char *end = NULL;
    if (!strcmp(a, "--help") || !strcmp(a, "-h")) { usage(stdout); return 0; }
    if (!v) { fprintf(stderr, "vldemo: %s needs a value\n", a); usage(stderr); return 2; }
    i++;
    errno = 0;
    if (!strcmp(a, "--out")) out = v;
    else if (!strcmp(a, "--count")) count = strtol(v, &end, 10);
    else if (!strcmp(a, "--val-count")) val = strtol(v, &end, 10);
    else if (!strcmp(a, "--seed")) seed = strtoull(v, &end, 10);
    else if (!strcmp(a, "--size")) {
      if (sscanf(v, "%dx%d", &w, &h) != 2) { fprintf(stderr, "vldemo: --size %s: expected WxH\n", v); return 2; }
    } else { fprintf(stderr, "vldemo: unknown option %s\n", a); usage(stderr); return 2; }
    if (end && (*end || errno)) { fprintf(stderr, "vldemo: %s %s: expected a number\n", a, v); return 2; }
  }
  if (!out || count < 1 || val < 0 || count > 999999 - val) {
    fprintf(stderr, "vldemo: --out DIR and --count N (1..999999 with --val-count) are required\n");
    usage(stderr);
    return 2;
  }
  if (w < 16 || h < 16 || w > 4096 || h > 4096) {
    fprintf(stderr, "vldemo: --size %dx%d: each side 16..4096\n", w, h);
    return 2;
  }
  uint8_t *rgb = malloc((size_t)w * (size_t)h * 3);
  char img_dir[4096];
  snprintf(img_dir, sizeof img_dir, "%s/img", out);
  double chance = 0;
  long qcount[VL_DEMO_N_QTYPES] = {0};
  if (!rgb) { fprintf(stderr, "vldemo: out of memory\n"); return 1; }
  vl_err_set_quiet(1); /* main prints the message once */
  int rc = make_dir(out);
  if (rc == VL_OK) rc = make_dir(img_dir);
  if (rc == VL_OK) rc = write_split(out, val ? "train.jsonl" : "demo.jsonl", seed, 0, count, w, h, rgb, &chance, qcount);
  if (rc == VL_OK && val) rc = write_split(out, "val.jsonl", seed, count, val, w, h, rgb, &chance, qcount);
  free(rgb);
  if (rc) { fprintf(stderr, "vldemo: %s\n", vl_err_last()); return 1; }
  printf("vldemo: %ld records (%ld colour, %ld count, %ld side questions), %dx%d images, in %s/%s\n",
         count + val, qcount[VL_DEMO_Q_COLOUR], qcount[VL_DEMO_Q_COUNT], qcount[VL_DEMO_Q_SIDE], w, h,
         out, val ? "{train,val}.jsonl" : "demo.jsonl");
  printf("vldemo: chance level %.1f%%\n", 100.0 * chance / (double)(count + val));
  return 0;
}
