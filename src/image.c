/* image: decoding, resizing and patching as HF's Pillow path (see image.h). */
#include "image.h"

#include <fenv.h>
#include <stdio.h> /* before jpeglib.h, which uses FILE */
#include <jpeglib.h>
#include <math.h>
#include <png.h>
#include <setjmp.h>
#include <stdlib.h>
#include <string.h>

#include "err.h"

void vl_image_free(vl_image *img) {
  free(img->rgb);
  memset(img, 0, sizeof *img);
}

/* ---- EXIF orientation (APP1 "Exif\0\0", TIFF IFD0 tag 0x0112) -------------- */
static int exif_orientation(const uint8_t *p, size_t n) {
  if (n < 14 || memcmp(p, "Exif\0\0", 6)) return 1;
  p += 6; n -= 6;
  int le = p[0] == 'I';
#define U16(q) (le ? (unsigned)((q)[0] | (q)[1] << 8) : (unsigned)((q)[0] << 8 | (q)[1]))
#define U32(q) (le ? ((uint32_t)(q)[0] | (uint32_t)(q)[1] << 8 | (uint32_t)(q)[2] << 16 | (uint32_t)(q)[3] << 24) \
                   : ((uint32_t)(q)[0] << 24 | (uint32_t)(q)[1] << 16 | (uint32_t)(q)[2] << 8 | (uint32_t)(q)[3]))
  uint32_t ifd = U32(p + 4);
  if (ifd + 2 > n) return 1;
  unsigned count = U16(p + ifd);
  for (unsigned i = 0; i < count && ifd + 2 + 12 * (i + 1) <= n; i++) {
    const uint8_t *e = p + ifd + 2 + 12 * i;
    if (U16(e) == 0x0112) {
      unsigned v = U16(e + 8);
      return v >= 1 && v <= 8 ? (int)v : 1;
    }
  }
  return 1;
#undef U16
#undef U32
}

/* PIL's ImageOps.exif_transpose for orientations 2..8 */
static int apply_orientation(vl_image *img, int o) {
  if (o <= 1) return VL_OK;
  const int w = img->w, h = img->h, swap = o >= 5;
  const int ow = swap ? h : w, oh = swap ? w : h;
  uint8_t *d = malloc((size_t)ow * oh * 3);
  if (!d) VL_ERROR(VL_ENOMEM, "image rotation");
  for (int y = 0; y < oh; y++)
    for (int x = 0; x < ow; x++) {
      int sx, sy;
      switch (o) {
      case 2: sx = w - 1 - x; sy = y; break;           /* mirror */
      case 3: sx = w - 1 - x; sy = h - 1 - y; break;   /* 180 */
      case 4: sx = x; sy = h - 1 - y; break;           /* flip */
      case 5: sx = y; sy = x; break;                   /* transpose */
      case 6: sx = y; sy = h - 1 - x; break;           /* rotate 90 clockwise */
      case 7: sx = w - 1 - y; sy = h - 1 - x; break;   /* transverse */
      default: sx = w - 1 - y; sy = x; break;          /* 8: rotate 90 counter-clockwise */
      }
      memcpy(d + ((size_t)y * ow + x) * 3, img->rgb + ((size_t)sy * w + sx) * 3, 3);
    }
  free(img->rgb);
  img->rgb = d;
  img->w = ow;
  img->h = oh;
  return VL_OK;
}

/* ---- JPEG --------------------------------------------------------------------- */
typedef struct {
  struct jpeg_error_mgr pub;
  jmp_buf jb;
  char msg[JMSG_LENGTH_MAX];
} jpeg_err;

static void jpeg_fail(j_common_ptr c) {
  jpeg_err *e = (jpeg_err *)c->err;
  (*c->err->format_message)(c, e->msg);
  longjmp(e->jb, 1);
}

static void jpeg_quiet(j_common_ptr c) { (void)c; }

static int decode_jpeg(vl_image *img, const uint8_t *b, size_t n, const char *name) {
  struct jpeg_decompress_struct c;
  jpeg_err err;
  uint8_t *volatile rgb = NULL;
  c.err = jpeg_std_error(&err.pub);
  err.pub.error_exit = jpeg_fail;
  err.pub.output_message = jpeg_quiet; /* warnings are not errors; errors carry the text */
  if (setjmp(err.jb)) {
    jpeg_destroy_decompress(&c);
    free(rgb);
    VL_ERROR(VL_EIO, "%s: JPEG decoding failed: %s", name, err.msg);
  }
  jpeg_create_decompress(&c);
  jpeg_mem_src(&c, b, (unsigned long)n);
  jpeg_save_markers(&c, JPEG_APP0 + 1, 0xFFFF);
  jpeg_read_header(&c, TRUE);
  c.out_color_space = JCS_RGB;
  jpeg_start_decompress(&c);
  const int w = (int)c.output_width, h = (int)c.output_height;
  rgb = malloc((size_t)w * h * 3);
  if (!rgb) longjmp(err.jb, 1);
  while (c.output_scanline < c.output_height) {
    JSAMPROW row = rgb + (size_t)c.output_scanline * w * 3;
    jpeg_read_scanlines(&c, &row, 1);
  }
  int orient = 1;
  for (jpeg_saved_marker_ptr m = c.marker_list; m; m = m->next)
    if (m->marker == JPEG_APP0 + 1) orient = exif_orientation(m->data, m->data_length);
  jpeg_finish_decompress(&c);
  jpeg_destroy_decompress(&c);
  img->w = w; img->h = h; img->rgb = rgb;
  return apply_orientation(img, orient);
}

/* ---- PNG ---------------------------------------------------------------------- */
static int decode_png(vl_image *img, const uint8_t *b, size_t n, const char *name) {
  png_image p;
  memset(&p, 0, sizeof p);
  p.version = PNG_IMAGE_VERSION;
  if (!png_image_begin_read_from_memory(&p, b, n))
    VL_ERROR(VL_EIO, "%s: PNG decoding failed: %s", name, p.message);
  const int has_alpha = (p.format & PNG_FORMAT_FLAG_ALPHA) != 0;
  /* 16-bit files: read the samples unchanged (libpng would treat them as
   * linear light and gamma-encode them) and keep the high byte, as Pillow */
  const int sixteen = (p.format & PNG_FORMAT_FLAG_LINEAR) != 0;
  p.format = sixteen ? PNG_FORMAT_LINEAR_RGB_ALPHA : PNG_FORMAT_RGBA;
  void *buf = malloc(PNG_IMAGE_SIZE(p));
  if (!buf) { png_image_free(&p); VL_ERROR(VL_ENOMEM, "%s: image", name); }
  if (!png_image_finish_read(&p, NULL, buf, 0, NULL)) {
    free(buf);
    VL_ERROR(VL_EIO, "%s: PNG decoding failed: %s", name, p.message);
  }
  const int w = (int)p.width, h = (int)p.height;
  uint8_t *rgba = buf;
  if (sixteen) {
    const uint16_t *s16 = buf;
    rgba = malloc((size_t)w * h * 4);
    if (!rgba) { free(buf); VL_ERROR(VL_ENOMEM, "%s: image", name); }
    for (size_t i = 0; i < (size_t)w * h; i++) {
      const unsigned a = s16[4 * i + 3];
      for (int k = 0; k < 3; k++) { /* libpng premultiplies linear output by alpha */
        unsigned v = s16[4 * i + k];
        if (has_alpha && a) v = (unsigned)(((uint64_t)v * 65535 + a / 2) / a);
        rgba[4 * i + k] = (uint8_t)((v > 65535 ? 65535 : v) >> 8);
      }
      rgba[4 * i + 3] = (uint8_t)(a >> 8);
    }
    free(buf);
  }
  uint8_t *rgb = malloc((size_t)w * h * 3);
  if (!rgb) { free(rgba); VL_ERROR(VL_ENOMEM, "%s: image", name); }
  for (size_t i = 0; i < (size_t)w * h; i++) {
    const uint8_t *s = rgba + 4 * i;
    if (!has_alpha) { memcpy(rgb + 3 * i, s, 3); continue; }
    /* PIL's alpha_composite over opaque white, then RGB */
    const unsigned a = s[3];
    for (int k = 0; k < 3; k++) {
      unsigned v = s[k] * a + 255u * (255u - a);
      rgb[3 * i + k] = (uint8_t)((v + 127) / 255);
    }
  }
  free(rgba);
  img->w = w; img->h = h; img->rgb = rgb;
  return VL_OK;
}

int vl_image_decode(vl_image *img, const void *bytes, size_t n, const char *name) {
  memset(img, 0, sizeof *img);
  const uint8_t *b = bytes;
  if (n >= 8 && !memcmp(b, "\x89PNG\r\n\x1a\n", 8)) return decode_png(img, b, n, name);
  if (n >= 3 && b[0] == 0xFF && b[1] == 0xD8 && b[2] == 0xFF) return decode_jpeg(img, b, n, name);
  VL_ERROR(VL_EIO, "%s: not a PNG or JPEG file", name);
}

int vl_image_read_file(const char *path, uint8_t **bytes, size_t *n) {
  *bytes = NULL;
  *n = 0;
  FILE *f = fopen(path, "rb");
  if (!f) VL_ERROR(VL_EIO, "%s: cannot open", path);
  long len = -1;
  if (fseek(f, 0, SEEK_END) == 0) len = ftell(f);
  if (len < 0 || fseek(f, 0, SEEK_SET) != 0) { fclose(f); VL_ERROR(VL_EIO, "%s: cannot seek", path); }
  uint8_t *b = malloc(len > 0 ? (size_t)len : 1);
  if (!b || fread(b, 1, (size_t)len, f) != (size_t)len) { free(b); fclose(f); VL_ERROR(VL_EIO, "%s: read failed", path); }
  fclose(f);
  *bytes = b;
  *n = (size_t)len;
  return VL_OK;
}

int vl_image_load(vl_image *img, const char *path) {
  uint8_t *b;
  size_t n;
  VL_CALL(vl_image_read_file(path, &b, &n));
  int rc = vl_image_decode(img, b, n, path);
  free(b);
  return rc;
}

/* ---- smart_resize (Python round: half to even) -------------------------------- */
int vl_smart_resize(int h, int w, int factor, long min_pixels, long max_pixels, int *oh, int *ow) {
  if (h <= 0 || w <= 0) VL_ERROR(VL_EINVAL, "image of %d x %d pixels", w, h);
  if ((double)(h > w ? h : w) / (h < w ? h : w) > 200)
    VL_ERROR(VL_EINVAL, "image %d x %d: aspect ratio over 200", w, h);
  fesetround(FE_TONEAREST);
  double hb = nearbyint((double)h / factor) * factor, wb = nearbyint((double)w / factor) * factor;
  if (hb < factor) hb = factor;
  if (wb < factor) wb = factor;
  if (hb * wb > (double)max_pixels) {
    double beta = sqrt((double)h * w / (double)max_pixels);
    hb = fmax(factor, floor(h / beta / factor) * factor);
    wb = fmax(factor, floor(w / beta / factor) * factor);
  } else if (hb * wb < (double)min_pixels) {
    double beta = sqrt((double)min_pixels / ((double)h * w));
    hb = ceil(h * beta / factor) * factor;
    wb = ceil(w * beta / factor) * factor;
  }
  *oh = (int)hb;
  *ow = (int)wb;
  return VL_OK;
}

/* ---- Pillow bicubic --------------------------------------------------------------- */
#define PRECISION_BITS (32 - 8 - 2)

static double bicubic(double x) {
  const double a = -0.5;
  x = fabs(x);
  if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
  if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
  return 0.0;
}

/* Pillow's precompute_coeffs + normalize_coeffs_8bpc */
static int coeffs(int in_size, int out_size, int **bounds_out, int **k_out, int *ksize_out) {
  const double scale = (double)in_size / out_size, filterscale = scale < 1.0 ? 1.0 : scale;
  const double support = 2.0 * filterscale;
  const int ksize = (int)ceil(support) * 2 + 1;
  int *bounds = malloc(sizeof(int) * 2 * out_size);
  int *kk = malloc(sizeof(int) * (size_t)out_size * ksize);
  double *pk = malloc(sizeof(double) * ksize);
  if (!bounds || !kk || !pk) { free(bounds); free(kk); free(pk); VL_ERROR(VL_ENOMEM, "resize coefficients"); }
  for (int xx = 0; xx < out_size; xx++) {
    const double center = (xx + 0.5) * scale, ss = 1.0 / filterscale;
    int xmin = (int)(center - support + 0.5);
    if (xmin < 0) xmin = 0;
    int xmax = (int)(center + support + 0.5);
    if (xmax > in_size) xmax = in_size;
    xmax -= xmin;
    double ww = 0.0;
    int x = 0;
    for (; x < xmax; x++) {
      double w = bicubic((x + xmin - center + 0.5) * ss);
      pk[x] = w;
      ww += w;
    }
    for (x = 0; x < xmax; x++)
      if (ww != 0.0) pk[x] /= ww;
    for (x = 0; x < ksize; x++) {
      double v = x < xmax ? pk[x] : 0.0;
      kk[(size_t)xx * ksize + x] = (int)(v < 0 ? trunc(-0.5 + v * (1 << PRECISION_BITS))
                                               : trunc(0.5 + v * (1 << PRECISION_BITS)));
    }
    bounds[2 * xx] = xmin;
    bounds[2 * xx + 1] = xmax;
  }
  free(pk);
  *bounds_out = bounds;
  *k_out = kk;
  *ksize_out = ksize;
  return VL_OK;
}

static inline uint8_t clip8(int v) {
  v >>= PRECISION_BITS;
  return v < 0 ? 0 : v > 255 ? 255 : (uint8_t)v;
}

int vl_image_resize_bicubic(const vl_image *in, int ow, int oh, vl_image *out) {
  memset(out, 0, sizeof *out);
  if (ow <= 0 || oh <= 0) VL_ERROR(VL_EINVAL, "resize to %d x %d", ow, oh);
  const int iw = in->w, ih = in->h;
  uint8_t *mid = NULL, *dst = NULL;
  int *bx = NULL, *kx = NULL, *by = NULL, *ky = NULL, kxs = 0, kys = 0, rc = VL_OK;
  VL_CALL_GOTO(rc, done, coeffs(ih, oh, &by, &ky, &kys));
  /* the horizontal pass only needs the rows the vertical pass reads */
  int y0 = by[0], y1 = by[2 * (oh - 1)] + by[2 * (oh - 1) + 1];
  const int need_h = ow != iw, need_v = oh != ih;
  const uint8_t *src = in->rgb;
  int rows = ih, first = 0;
  if (need_h) {
    VL_CALL_GOTO(rc, done, coeffs(iw, ow, &bx, &kx, &kxs));
    if (!need_v) { y0 = 0; y1 = ih; }
    rows = y1 - y0;
    first = y0;
    mid = malloc((size_t)rows * ow * 3);
    if (!mid) VL_ERROR_GOTO(rc, done, VL_ENOMEM, "resize buffer");
    for (int y = 0; y < rows; y++)
      for (int x = 0; x < ow; x++) {
        const int xmin = bx[2 * x], xn = bx[2 * x + 1];
        const int *k = kx + (size_t)x * kxs;
        for (int c = 0; c < 3; c++) {
          int ss = 1 << (PRECISION_BITS - 1);
          for (int i = 0; i < xn; i++) ss += src[((size_t)(y + y0) * iw + xmin + i) * 3 + c] * k[i];
          mid[((size_t)y * ow + x) * 3 + c] = clip8(ss);
        }
      }
    src = mid;
  }
  const int sw = need_h ? ow : iw;
  dst = malloc((size_t)oh * ow * 3);
  if (!dst) VL_ERROR_GOTO(rc, done, VL_ENOMEM, "resize buffer");
  if (need_v) {
    for (int y = 0; y < oh; y++) {
      const int ymin = by[2 * y] - first, yn = by[2 * y + 1];
      const int *k = ky + (size_t)y * kys;
      for (int x = 0; x < ow; x++)
        for (int c = 0; c < 3; c++) {
          int ss = 1 << (PRECISION_BITS - 1);
          for (int i = 0; i < yn; i++) ss += src[((size_t)(ymin + i) * sw + x) * 3 + c] * k[i];
          dst[((size_t)y * ow + x) * 3 + c] = clip8(ss);
        }
    }
  } else {
    memcpy(dst, src, (size_t)oh * ow * 3);
  }
  out->w = ow; out->h = oh; out->rgb = dst; dst = NULL;
done:
  free(mid); free(dst); free(bx); free(kx); free(by); free(ky);
  return rc;
}

int vl_image_family_defaults(vl_family family, vl_patch_params *pp, long *min_pixels,
                             long *max_pixels) {
  static const vl_patch_params qwen3 = {16, 2, 2, {0.5f, 0.5f, 0.5f}, {0.5f, 0.5f, 0.5f}};
  static const vl_patch_params qwen2 = {14, 2, 2, {0.48145466f, 0.4578275f, 0.40821073f},
                                        {0.26862954f, 0.26130258f, 0.27577711f}};
  switch (family) {
  case VL_FAMILY_QWEN3_VL:
    *pp = qwen3;
    *min_pixels = 65536;
    *max_pixels = 16777216;
    return VL_OK;
  case VL_FAMILY_QWEN2_VL:
    *pp = qwen2;
    *min_pixels = 3136;
    *max_pixels = 12845056;
    return VL_OK;
  }
  VL_ERROR(VL_EINVAL, "image processor: unknown model family %d", (int)family);
}

int vl_image_patchify(const vl_image *img, const vl_patch_params *pp, float *out, int32_t grid[3]) {
  const int p = pp->patch, m = pp->merge, tps = pp->temporal;
  if (img->h % (p * m) || img->w % (p * m))
    VL_ERROR(VL_EINVAL, "image %d x %d is not a multiple of %d (patch x merge): resize first",
             img->w, img->h, p * m);
  const int gh = img->h / p, gw = img->w / p, row = 3 * tps * p * p;
  size_t r = 0;
  for (int bh = 0; bh < gh / m; bh++)
    for (int bw = 0; bw < gw / m; bw++)
      for (int ih = 0; ih < m; ih++)
        for (int iw = 0; iw < m; iw++, r++) {
          const int py = (bh * m + ih) * p, px = (bw * m + iw) * p;
          float *o = out + r * row;
          /* (channel, frame, y, x) within a patch; the frame is repeated */
          for (int c = 0; c < 3; c++)
            for (int t = 0; t < tps; t++)
              for (int y = 0; y < p; y++)
                for (int x = 0; x < p; x++) {
                  float v = img->rgb[((size_t)(py + y) * img->w + px + x) * 3 + c] / 255.0f;
                  o[((c * tps + t) * p + y) * p + x] = (v - pp->mean[c]) / pp->std[c];
                }
        }
  grid[0] = 1; grid[1] = gh; grid[2] = gw;
  return VL_OK;
}
