/* test_safetensors: the safetensors module against independent truth —
 * files whose bytes are written by hand here, the writer's exact bytes,
 * dtype conversions against hand-computed bit patterns and a bit-level
 * reference, a file written by HF's Python safetensors (the parity fixture),
 * sharded folders, and every kind of corrupt file giving its error code and
 * a message that names the file, the tensor and the problem. */
#include <cjson/cJSON.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "err.h"
#include "safetensors.h"
#include "test_util.h"

static char dir[] = "/tmp/vl_st_test_XXXXXX";

/* dir/name in one of 8 rotating buffers */
static const char *in_dir(const char *name) {
  static char p[8][600];
  static int k;
  k = (k + 1) % 8;
  snprintf(p[k], sizeof p[k], "%s/%s", dir, name);
  return p[k];
}

static void write_bytes(const char *path, const void *b, size_t n) {
  FILE *f = fopen(path, "wb");
  if (!f || fwrite(b, 1, n, f) != n) fprintf(stderr, "cannot write %s\n", path);
  if (f) fclose(f);
}

/* 8-byte little-endian length hlen (byte by byte), the JSON text, data bytes. */
static void write_st(const char *name, uint64_t hlen, const char *json, const void *data, size_t n) {
  FILE *f = fopen(in_dir(name), "wb");
  for (int i = 0; i < 8; i++) fputc((int)((hlen >> (8 * i)) & 255), f);
  fputs(json, f);
  if (n) fwrite(data, 1, n, f);
  fclose(f);
}
static void write_json(const char *name, const char *json, const void *data, size_t n) {
  write_st(name, strlen(json), json, data, n);
}

static unsigned char *slurp(const char *path, size_t *n) {
  FILE *f = fopen(path, "rb");
  if (!f) return NULL;
  fseek(f, 0, SEEK_END);
  *n = (size_t)ftell(f);
  fseek(f, 0, SEEK_SET);
  unsigned char *b = malloc(*n + 1);
  if (fread(b, 1, *n, f) != *n) *n = 0;
  fclose(f);
  b[*n] = 0;
  return b;
}

/* Opening path fails with code; the message holds each of the words. */
static void expect_fail(const char *path, int code, const char *w1, const char *w2) {
  vl_safetensors *st = (vl_safetensors *)1;
  vl_err_clear();
  int rc = vl_st_open(&st, path);
  const char *m = vl_err_last();
  CHECK(rc == code, "%s: rc %d, expected %d (%s)", path, rc, code, m);
  CHECK(st == NULL, "%s: handle not NULL after failure", path);
  CHECK(strstr(m, w1) != NULL, "%s: message '%s' lacks '%s'", path, m, w1);
  CHECK(!w2 || strstr(m, w2) != NULL, "%s: message '%s' lacks '%s'", path, m, w2);
  if (rc == VL_OK) vl_st_close(st);
}
/* A crafted single file: the message must name it and the words. */
static void bad_file(const char *name, int code, const char *words) {
  expect_fail(in_dir(name), code, name, words);
}

static float f32_bits(uint32_t u) {
  float f;
  memcpy(&f, &u, 4);
  return f;
}
static uint32_t bits_f32(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  return u;
}

/* f16 -> f32 built from bit fields (an implementation independent of ldexpf). */
static float f16_reference(uint16_t h) {
  uint32_t s = (uint32_t)(h >> 15) << 31, e = (h >> 10) & 31, m = h & 1023;
  if (e == 0) {
    float v = (float)m / 16777216.0f; /* m * 2^-24, exact */
    return s ? -v : v;
  }
  if (e == 31) return f32_bits(s | 0x7F800000u | (m << 13));
  return f32_bits(s | ((e - 15 + 127) << 23) | (m << 13));
}

/* bf16 rounding by comparing distances in double (independent of the bit trick). */
static uint16_t bf16_reference(float x) {
  uint16_t lo = (uint16_t)(bits_f32(x) >> 16), hi = (uint16_t)(lo + 1);
  double dl = fabs((double)x - (double)vl_f32_from_bf16(lo));
  double dh = fabs((double)vl_f32_from_bf16(hi) - (double)x);
  if (dl < dh) return lo;
  if (dh < dl) return hi;
  return (lo & 1) ? hi : lo;
}

static void test_conversions(void) {
  CHECK(vl_bf16_from_f32(1.0f) == 0x3F80, "bf16(1) = %04x", vl_bf16_from_f32(1.0f));
  CHECK(vl_bf16_from_f32(-2.0f) == 0xC000, "bf16(-2)");
  /* 0.1f = 0x3DCCCCCD: dropped half 0xCCCD > 0x8000 rounds up */
  CHECK(vl_bf16_from_f32(0.1f) == 0x3DCD, "bf16(0.1) = %04x", vl_bf16_from_f32(0.1f));
  /* exact ties go to the even neighbour */
  CHECK(vl_bf16_from_f32(f32_bits(0x3F808000u)) == 0x3F80, "tie 1+2^-8 -> even 0x3F80");
  CHECK(vl_bf16_from_f32(f32_bits(0x3F818000u)) == 0x3F82, "tie -> even 0x3F82");
  CHECK(vl_bf16_from_f32(f32_bits(0x3F807FFFu)) == 0x3F80, "below tie");
  CHECK(vl_bf16_from_f32(f32_bits(0x3F808001u)) == 0x3F81, "above tie");
  CHECK(vl_bf16_from_f32(f32_bits(0xBF818000u)) == 0xBF82, "negative tie");
  CHECK(vl_bf16_from_f32(f32_bits(0x7F7FFFFFu)) == 0x7F80, "max f32 rounds to inf");
  CHECK(vl_bf16_from_f32(INFINITY) == 0x7F80 && vl_bf16_from_f32(-INFINITY) == 0xFF80, "inf");
  uint16_t nb = vl_bf16_from_f32(f32_bits(0x7F800001u)); /* NaN with only a low payload bit */
  CHECK((nb & 0x7F80) == 0x7F80 && (nb & 0x7F), "NaN stays NaN: %04x", nb);
  CHECK(vl_bf16_from_f32(-0.0f) == 0x8000, "-0");
  CHECK(vl_f32_from_bf16(0x3F80) == 1.0f && vl_f32_from_bf16(0xC000) == -2.0f, "bf16 -> f32");
  CHECK(bits_f32(vl_f32_from_bf16(0x3DCD)) == 0x3DCD0000u, "bf16 -> f32 bits");
  uint64_t s = 12345;
  int bad = 0;
  for (int i = 0; i < 200000; i++) {
    s = s * 6364136223846793005ull + 1442695040888963407ull;
    uint32_t u = (uint32_t)(s >> 32);
    if ((u & 0x7F800000u) == 0x7F800000u || (u & 0x7FFF0000u) == 0x7F7F0000u) continue;
    if (vl_bf16_from_f32(f32_bits(u)) != bf16_reference(f32_bits(u))) bad++;
  }
  CHECK(bad == 0, "bf16 rounding differs from the reference on %d random floats", bad);

  CHECK(vl_f32_from_f16(0x3C00) == 1.0f && vl_f32_from_f16(0xC000) == -2.0f, "f16 1, -2");
  CHECK(vl_f32_from_f16(0x0001) == 0x1p-24f, "f16 smallest subnormal");
  CHECK(vl_f32_from_f16(0x03FF) == 1023 * 0x1p-24f && vl_f32_from_f16(0x0400) == 0x1p-14f,
        "f16 largest subnormal, smallest normal");
  CHECK(vl_f32_from_f16(0x7BFF) == 65504.0f, "f16 max");
  CHECK(vl_f32_from_f16(0x3555) == 0.333251953125f, "f16 0x3555 = 1365/4096");
  CHECK(isinf(vl_f32_from_f16(0x7C00)) && vl_f32_from_f16(0xFC00) < 0, "f16 inf");
  CHECK(isnan(vl_f32_from_f16(0x7E00)), "f16 NaN");
  CHECK(bits_f32(vl_f32_from_f16(0x8000)) == 0x80000000u, "f16 -0");
  bad = 0;
  for (uint32_t h = 0; h < 65536; h++) {
    float a = vl_f32_from_f16((uint16_t)h), b = f16_reference((uint16_t)h);
    if (isnan(b) ? !isnan(a) : bits_f32(a) != bits_f32(b)) bad++;
  }
  CHECK(bad == 0, "f16 -> f32 differs from the bit-field reference on %d of 65536", bad);
  CHECK(vl_dtype_size(VL_DT_BF16) == 2 && vl_dtype_size(VL_DT_I64) == 8 &&
        vl_dtype_size(VL_DT_BOOL) == 1 && !strcmp(vl_dtype_name(VL_DT_U8), "U8"), "dtype table");
}

/* Every byte written here by hand; header length 322 = 0x142, not a multiple
 * of 8, so the data is unaligned in the map. */
static void test_hand_written_file(void) {
  static const char json[] =
      "{\"__metadata__\":{\"format\":\"pt\",\"note\":\"hand\"},"
      "\"b\":{\"dtype\":\"BF16\",\"shape\":[2],\"data_offsets\":[8,12]},"
      "\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
      "\"s\":{\"dtype\":\"I64\",\"shape\":[],\"data_offsets\":[12,20]},"
      "\"h\":{\"dtype\":\"F16\",\"shape\":[1,2],\"data_offsets\":[20,24]},"
      "\"e\":{\"dtype\":\"F32\",\"shape\":[0,3],\"data_offsets\":[24,24]}}";
  static const unsigned char len[8] = {0x42, 0x01, 0, 0, 0, 0, 0, 0};
  static const unsigned char data[24] = {
      0x00, 0x00, 0xC0, 0x3F, 0x00, 0x00, 0x50, 0xC0, /* a: 1.5f, -3.25f */
      0x80, 0x3F, 0x00, 0xC0,                         /* b: bf16 1.0, -2.0 */
      0xF9, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, /* s: -7 */
      0x01, 0x00, 0x00, 0x3C};                        /* h: f16 2^-24, 1.0 */
  CHECK(strlen(json) == 322, "hand header is %zu bytes", strlen(json));
  FILE *f = fopen(in_dir("hand.safetensors"), "wb");
  fwrite(len, 1, 8, f);
  fwrite(json, 1, strlen(json), f);
  fwrite(data, 1, sizeof data, f);
  fclose(f);

  vl_safetensors *st = NULL;
  CHECK(vl_st_open(&st, in_dir("hand.safetensors")) == VL_OK, "open hand: %s", vl_err_last());
  if (!st) return;
  CHECK(vl_st_count(st) == 5, "count %zu", vl_st_count(st));
  const char *order[5] = {"a", "b", "e", "h", "s"};
  for (size_t i = 0; i < 5 && i < vl_st_count(st); i++)
    CHECK(!strcmp(vl_st_tensor_name(vl_st_at(st, i)), order[i]), "vl_st_at(%zu) = %s", i,
          vl_st_tensor_name(vl_st_at(st, i)));
  CHECK(vl_st_at(st, 5) == NULL, "vl_st_at past the end");
  const vl_st_tensor *a = vl_st_find(st, "a"), *b = vl_st_find(st, "b"), *s = vl_st_find(st, "s");
  const vl_st_tensor *h = vl_st_find(st, "h"), *e = vl_st_find(st, "e");
  CHECK(a && b && s && h && e, "all found");
  if (!(a && b && s && h && e)) {
    vl_st_close(st);
    return;
  }
  float out[2] = {0};
  CHECK(vl_st_tensor_dtype(a) == VL_DT_F32 && vl_st_tensor_ndim(a) == 1 &&
        vl_st_tensor_shape(a)[0] == 2 && vl_st_tensor_nbytes(a) == 8, "a header");
  CHECK(vl_st_read_f32(a, out, 2) == VL_OK && out[0] == 1.5f && out[1] == -3.25f, "a values");
  CHECK(!memcmp(vl_st_tensor_data(b), data + 8, 4), "b data pointer");
  CHECK(vl_st_read_f32(b, out, 2) == VL_OK && out[0] == 1.0f && out[1] == -2.0f, "b values");
  int64_t sv = 0;
  int32_t s32 = 0;
  CHECK(vl_st_tensor_ndim(s) == 0 && vl_st_tensor_numel(s) == 1, "scalar shape []");
  CHECK(vl_st_read_i64(s, &sv, 1) == VL_OK && sv == -7, "s = %lld", (long long)sv);
  CHECK(vl_st_read_i32(s, &s32, 1) == VL_OK && s32 == -7, "s as i32");
  CHECK(vl_st_read_f32(s, out, 1) == VL_OK && out[0] == -7.0f, "s as f32");
  CHECK(vl_st_tensor_ndim(h) == 2 && vl_st_read_f32(h, out, 2) == VL_OK && out[0] == 0x1p-24f &&
        out[1] == 1.0f, "h values");
  CHECK(vl_st_tensor_numel(e) == 0 && vl_st_tensor_nbytes(e) == 0 && vl_st_tensor_shape(e)[1] == 3,
        "empty tensor");
  CHECK(vl_st_metadata(st, "format") && !strcmp(vl_st_metadata(st, "format"), "pt"), "format");
  CHECK(vl_st_metadata(st, "note") && !strcmp(vl_st_metadata(st, "note"), "hand"), "note");
  CHECK(vl_st_metadata(st, "nope") == NULL && vl_st_find(st, "c") == NULL && vl_st_find(st, "") == NULL,
        "absent key and tensor");
  CHECK(strstr(vl_st_tensor_file(a), "hand.safetensors") != NULL, "tensor file");
  vl_err_clear();
  CHECK(vl_st_read_f32(a, out, 3) == VL_ESHAPE && strstr(vl_err_last(), "'a' has 2 elements"),
        "count mismatch: %s", vl_err_last());
  int64_t iv[2];
  CHECK(vl_st_read_i64(a, iv, 2) == VL_ESHAPE && strstr(vl_err_last(), "integer tensor"),
        "i64 from F32: %s", vl_err_last());
  CHECK(vl_st_read_i32(b, (int32_t *)iv, 2) == VL_ESHAPE && strstr(vl_err_last(), "'b' is BF16"),
        "i32 from BF16: %s", vl_err_last());
  vl_st_close(st);
}

/* The writer's exact bytes: header, spaces to a multiple of 8, data in order. */
static void test_writer_bytes(void) {
  float x[2] = {1.5f, -3.25f};
  uint16_t y = 0x3F80;
  vl_st_entry e[2] = {{"x", VL_DT_F32, 1, {2}, x}, {"y\"q", VL_DT_BF16, 0, {0}, &y}};
  const char *meta[2] = {"format", "pt"};
  CHECK(vl_st_write(in_dir("exact.safetensors"), e, 2, meta, 1) == VL_OK, "write: %s", vl_err_last());
  static const char want_json[] =
      "{\"__metadata__\":{\"format\":\"pt\"},"
      "\"x\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
      "\"y\\\"q\":{\"dtype\":\"BF16\",\"shape\":[],\"data_offsets\":[8,10]}}  ";
  unsigned char want[8 + 144 + 10] = {0x90, 0, 0, 0, 0, 0, 0, 0};
  CHECK(strlen(want_json) == 144, "expected header %zu", strlen(want_json));
  memcpy(want + 8, want_json, 144);
  static const unsigned char tail[10] = {0x00, 0x00, 0xC0, 0x3F, 0x00, 0x00, 0x50, 0xC0, 0x80, 0x3F};
  memcpy(want + 152, tail, 10);
  size_t n = 0;
  unsigned char *got = slurp(in_dir("exact.safetensors"), &n);
  CHECK(got && n == sizeof want && !memcmp(got, want, sizeof want), "writer bytes (%zu): %.160s", n,
        got ? (const char *)got + 8 : "");
  free(got);
  CHECK(access(in_dir("exact.safetensors.tmp"), F_OK) != 0, "no .tmp left");
}

static void test_round_trip(void) {
  float w[6] = {0.1f, -1e-30f, 3.4e38f, 0.0f, -0.0f, 7.0f};
  float specials[4] = {f32_bits(0x7FC00123u), f32_bits(0x00000001u), INFINITY, -INFINITY};
  int64_t ids[3] = {-5, 151655, 1LL << 40};
  int32_t i32[2] = {-2147483647 - 1, 2147483647};
  int16_t i16[2] = {-32768, 1234};
  int8_t i8[2] = {-128, 127};
  uint8_t u8[2] = {0, 255}, bools[3] = {1, 0, 1};
  double f64[2] = {0.1, -1e300};
  uint16_t bf[3] = {vl_bf16_from_f32(0.1f), 0xC000, 0x0001};
  uint16_t f16[2] = {0x3555, 0x8001};
  float eight[256];
  for (int i = 0; i < 256; i++) eight[i] = (float)i;
  vl_st_entry e[] = {
      {"x.weight", VL_DT_F32, 2, {2, 3}, w}, {"special", VL_DT_F32, 1, {4}, specials},
      {"ids", VL_DT_I64, 1, {3}, ids},       {"i32", VL_DT_I32, 1, {2}, i32},
      {"i16", VL_DT_I16, 1, {2}, i16},       {"i8", VL_DT_I8, 1, {2}, i8},
      {"u8", VL_DT_U8, 1, {2}, u8},          {"bool", VL_DT_BOOL, 1, {3}, bools},
      {"f64", VL_DT_F64, 1, {2}, f64},       {"bf", VL_DT_BF16, 1, {3}, bf},
      {"f16", VL_DT_F16, 1, {2}, f16},       {"eight", VL_DT_F32, 8, {2, 2, 2, 2, 2, 2, 2, 2}, eight},
      {"none", VL_DT_F32, 2, {0, 5}, NULL},
  };
  const int ne = (int)(sizeof e / sizeof e[0]);
  const char *meta[4] = {"format", "pt", "with \"quote\"", "line\nbreak"};
  const char *path = in_dir("rt.safetensors");
  CHECK(vl_st_write(path, e, ne, meta, 2) == VL_OK, "write: %s", vl_err_last());
  vl_safetensors *st = NULL;
  CHECK(vl_st_open(&st, path) == VL_OK, "reopen: %s", vl_err_last());
  if (!st) return;
  CHECK(vl_st_count(st) == (size_t)ne, "count");
  for (size_t i = 1; i < vl_st_count(st); i++)
    CHECK(strcmp(vl_st_tensor_name(vl_st_at(st, i - 1)), vl_st_tensor_name(vl_st_at(st, i))) < 0,
          "name order at %zu", i);
  float fb[256];
  int64_t ib[3];
  int32_t jb[3];
  const vl_st_tensor *t = vl_st_find(st, "x.weight");
  CHECK(t && vl_st_read_f32(t, fb, 6) == VL_OK && !memcmp(fb, w, sizeof w), "F32 bitwise");
  CHECK(((uintptr_t)vl_st_tensor_data(t) & 7) == 0, "data 8-byte aligned (padded header)");
  t = vl_st_find(st, "special");
  CHECK(t && vl_st_read_f32(t, fb, 4) == VL_OK && !memcmp(fb, specials, sizeof specials),
        "NaN payload, subnormal, inf bitwise");
  CHECK(vl_st_read_i64(vl_st_find(st, "ids"), ib, 3) == VL_OK && !memcmp(ib, ids, sizeof ids), "I64");
  vl_err_clear();
  CHECK(vl_st_read_i32(vl_st_find(st, "ids"), jb, 3) == VL_ESHAPE &&
        strstr(vl_err_last(), "element 2 = 1099511627776 does not fit in int32"), "i32 range: %s",
        vl_err_last());
  CHECK(vl_st_read_i32(vl_st_find(st, "i32"), jb, 2) == VL_OK && jb[0] == i32[0] && jb[1] == i32[1], "I32");
  CHECK(vl_st_read_i64(vl_st_find(st, "i16"), ib, 2) == VL_OK && ib[0] == -32768 && ib[1] == 1234, "I16");
  CHECK(vl_st_read_i32(vl_st_find(st, "i8"), jb, 2) == VL_OK && jb[0] == -128 && jb[1] == 127, "I8");
  CHECK(vl_st_read_i64(vl_st_find(st, "u8"), ib, 2) == VL_OK && ib[0] == 0 && ib[1] == 255, "U8");
  CHECK(vl_st_read_f32(vl_st_find(st, "u8"), fb, 2) == VL_OK && fb[1] == 255.0f, "U8 -> f32");
  CHECK(vl_st_read_i32(vl_st_find(st, "bool"), jb, 3) == VL_OK && jb[0] == 1 && jb[1] == 0 && jb[2] == 1,
        "BOOL");
  CHECK(vl_st_read_f32(vl_st_find(st, "f64"), fb, 2) == VL_OK && bits_f32(fb[0]) == 0x3DCCCCCDu &&
        isinf(fb[1]) && fb[1] < 0, "F64 rounds to nearest (0.1 -> 0x3DCCCCCD, -1e300 -> -inf)");
  CHECK(vl_st_read_f32(vl_st_find(st, "bf"), fb, 3) == VL_OK && bits_f32(fb[0]) == 0x3DCD0000u &&
        fb[1] == -2.0f && bits_f32(fb[2]) == 0x00010000u, "BF16 exact");
  CHECK(vl_st_read_f32(vl_st_find(st, "f16"), fb, 2) == VL_OK && fb[0] == 0.333251953125f &&
        fb[1] == -0x1p-24f, "F16 exact");
  t = vl_st_find(st, "eight");
  CHECK(t && vl_st_tensor_ndim(t) == 8 && vl_st_read_f32(t, fb, 256) == VL_OK &&
        !memcmp(fb, eight, sizeof eight), "8 dims");
  t = vl_st_find(st, "none");
  CHECK(t && vl_st_tensor_numel(t) == 0 && vl_st_tensor_shape(t)[1] == 5, "empty");
  CHECK(vl_st_metadata(st, "with \"quote\"") && !strcmp(vl_st_metadata(st, "with \"quote\""), "line\nbreak"),
        "escaped metadata");

  /* checked lookup */
  const vl_st_tensor *g = NULL;
  int64_t ok_shape[2] = {2, 3}, wild[2] = {-1, 3}, bad_shape[2] = {3, 3};
  CHECK(vl_st_get(st, "x.weight", VL_DT_MASK(VL_DT_F32), 2, ok_shape, &g) == VL_OK && g &&
        !strcmp(vl_st_tensor_name(g), "x.weight"), "get ok");
  CHECK(vl_st_get(st, "x.weight", VL_DT_FLOATS, 2, wild, &g) == VL_OK, "get with wildcard");
  CHECK(vl_st_get(st, "x.weight", VL_DT_ANY, -1, NULL, &g) == VL_OK, "get any");
  CHECK(vl_st_get(st, "x.weight", VL_DT_ANY, 2, NULL, &g) == VL_OK, "get ndim only");
  char want[700];
  snprintf(want, sizeof want, "%s: tensor 'x.weight' has shape [2, 3], expected [3, 3]", path);
  vl_err_clear();
  CHECK(vl_st_get(st, "x.weight", VL_DT_ANY, 2, bad_shape, &g) == VL_ESHAPE && g == NULL &&
        !strcmp(vl_err_last(), want), "shape message '%s'", vl_err_last());
  CHECK(vl_st_get(st, "x.weight", VL_DT_ANY, 1, NULL, &g) == VL_ESHAPE &&
        strstr(vl_err_last(), "has shape [2, 3], expected 1 dimensions"), "ndim message '%s'", vl_err_last());
  snprintf(want, sizeof want, "%s: tensor 'ids' has dtype I64, expected F32 or BF16", path);
  CHECK(vl_st_get(st, "ids", VL_DT_MASK(VL_DT_F32) | VL_DT_MASK(VL_DT_BF16), -1, NULL, &g) == VL_ESHAPE &&
        !strcmp(vl_err_last(), want), "dtype message '%s'", vl_err_last());
  snprintf(want, sizeof want, "tensor 'x.weigth' not found in %s", path);
  CHECK(vl_st_get(st, "x.weigth", VL_DT_ANY, -1, NULL, &g) == VL_ESHAPE && !strcmp(vl_err_last(), want),
        "not-found message '%s'", vl_err_last());
  CHECK(vl_st_check_shape(st, vl_st_find(st, "ids"), 1, (int64_t[]){3}) == VL_OK, "check_shape ok");
  vl_st_close(st);

  /* a bf16 tensor large enough for the threaded conversion */
  const size_t big = 300000;
  uint16_t *bb = malloc(big * 2);
  float *fr = malloc(big * 4);
  for (size_t i = 0; i < big; i++) bb[i] = (uint16_t)(i * 2654435761u >> 7);
  vl_st_entry be = {"big", VL_DT_BF16, 2, {600, 500}, bb};
  CHECK(vl_st_write(in_dir("big.safetensors"), &be, 1, NULL, 0) == VL_OK, "write big");
  CHECK(vl_st_open(&st, in_dir("big.safetensors")) == VL_OK, "open big");
  if (st) {
    size_t bad = 0;
    CHECK(vl_st_read_f32(vl_st_find(st, "big"), fr, big) == VL_OK, "read big");
    for (size_t i = 0; i < big; i++) {
      uint32_t want_bits = (uint32_t)bb[i] << 16;
      bad += bits_f32(fr[i]) != want_bits;
    }
    CHECK(bad == 0, "big bf16 conversion: %zu wrong", bad);
    vl_st_close(st);
  }
  free(bb);
  free(fr);
}

/* 1,000 tensors: every name found, absent names not. */
static void test_many_tensors(void) {
  enum { N = 1000 };
  static char names[N][48];
  static vl_st_entry e[N];
  static int32_t v[N];
  for (int i = 0; i < N; i++) {
    snprintf(names[i], sizeof names[i], "model.layers.%d.mlp.w%d", (i * 7919) % N, i % 3);
    v[i] = i;
    e[i] = (vl_st_entry){names[i], VL_DT_I32, 1, {1}, &v[i]};
  }
  CHECK(vl_st_write(in_dir("many.safetensors"), e, N, NULL, 0) == VL_OK, "write many");
  vl_safetensors *st = NULL;
  CHECK(vl_st_open(&st, in_dir("many.safetensors")) == VL_OK, "open many: %s", vl_err_last());
  if (!st) return;
  int bad = 0;
  for (int i = 0; i < N; i++) {
    const vl_st_tensor *t = vl_st_find(st, names[i]);
    int32_t x = -1;
    if (!t || vl_st_read_i32(t, &x, 1) != VL_OK || x != i) bad++;
  }
  CHECK(bad == 0 && vl_st_count(st) == N, "%d of %d lookups wrong", bad, N);
  CHECK(!vl_st_find(st, "model.layers.1000.mlp.w0") && !vl_st_find(st, "model.layers.0.mlp.w") &&
        !vl_st_find(st, "zzz") && !vl_st_find(st, "a"), "absent names");
  vl_st_close(st);
}

static void test_sharded(void) {
  static float big[3][100];
  static uint16_t l3[500];
  for (int s = 0; s < 3; s++)
    for (int i = 0; i < 100; i++) big[s][i] = (float)(s * 1000 + i);
  for (int i = 0; i < 500; i++) l3[i] = (uint16_t)(0x3F80 + i);
  /* 400, 400, 400 and 1,000 bytes with a limit of 850: [l0 l1] [l2] [l3],
   * l3 alone in a shard although larger than the limit */
  vl_st_entry se[4] = {{"l0.w", VL_DT_F32, 1, {100}, big[0]},
                       {"l1.w", VL_DT_F32, 1, {100}, big[1]},
                       {"l2.w", VL_DT_F32, 1, {100}, big[2]},
                       {"l3.w", VL_DT_BF16, 2, {5, 100}, l3}};
  char folder[600], single[600], empty[600], p3[600];
  snprintf(folder, sizeof folder, "%s", in_dir("sharded")); /* created by the writer */
  const char *meta[2] = {"format", "pt"};
  CHECK(vl_st_write_sharded(folder, se, 4, 850, meta, 1) == VL_OK, "sharded write: %s", vl_err_last());
  const char *shard[3] = {"sharded/model-00001-of-00003.safetensors",
                          "sharded/model-00002-of-00003.safetensors",
                          "sharded/model-00003-of-00003.safetensors"};
  for (int s = 0; s < 3; s++) CHECK(access(in_dir(shard[s]), R_OK) == 0, "%s exists", shard[s]);
  CHECK(access(in_dir("sharded/model-00001-of-00004.safetensors"), F_OK) != 0, "no 4th shard");
  /* the index as an independent JSON parser reads it */
  size_t n;
  unsigned char *text = slurp(in_dir("sharded/model.safetensors.index.json"), &n);
  cJSON *idx = text ? cJSON_Parse((const char *)text) : NULL;
  const cJSON *ts = cJSON_GetObjectItem(cJSON_GetObjectItem(idx, "metadata"), "total_size");
  const cJSON *wm = cJSON_GetObjectItem(idx, "weight_map");
  CHECK(cJSON_IsNumber(ts) && ts->valuedouble == 2200, "total_size");
  CHECK(cJSON_GetArraySize(wm) == 4, "weight_map size");
  const char *want_shard[4] = {"model-00001-of-00003.safetensors", "model-00001-of-00003.safetensors",
                               "model-00002-of-00003.safetensors", "model-00003-of-00003.safetensors"};
  for (int i = 0; i < 4; i++) {
    const cJSON *v = cJSON_GetObjectItem(wm, se[i].name);
    CHECK(cJSON_IsString(v) && !strcmp(v->valuestring, want_shard[i]), "%s in %s", se[i].name, want_shard[i]);
  }
  cJSON_Delete(idx);
  free(text);

  vl_safetensors *st = NULL;
  CHECK(vl_st_open(&st, folder) == VL_OK, "sharded open: %s", vl_err_last());
  if (st) {
    float back[200];
    CHECK(vl_st_count(st) == 4, "count");
    for (int i = 0; i < 3; i++) {
      const vl_st_tensor *t = vl_st_find(st, se[i].name);
      CHECK(t && vl_st_read_f32(t, back, 100) == VL_OK && !memcmp(back, big[i], 400), "%s values",
            se[i].name);
      CHECK(t && strstr(vl_st_tensor_file(t), want_shard[i]), "%s file", se[i].name);
    }
    const vl_st_tensor *t3 = vl_st_find(st, "l3.w");
    CHECK(t3 && vl_st_tensor_nbytes(t3) == 1000 && !memcmp(vl_st_tensor_data(t3), l3, 1000), "l3 bytes");
    CHECK(vl_st_metadata(st, "total_size") && !strcmp(vl_st_metadata(st, "total_size"), "2200"),
          "total_size metadata");
    CHECK(vl_st_metadata(st, "format") && !strcmp(vl_st_metadata(st, "format"), "pt"), "shard metadata");
    vl_err_clear();
    CHECK(vl_st_get(st, "l9.w", VL_DT_ANY, -1, NULL, NULL) == VL_ESHAPE &&
          strstr(vl_err_last(), "not found in") && strstr(vl_err_last(), "sharded"), "%s", vl_err_last());
    vl_st_close(st);
  }

  /* a tensor in two shards */
  snprintf(p3, sizeof p3, "%s", in_dir(shard[2]));
  vl_st_entry dup[2] = {se[3], se[0]};
  CHECK(vl_st_write(p3, dup, 2, NULL, 0) == VL_OK, "rewrite shard 3");
  expect_fail(folder, VL_EIO, "duplicate tensor name 'l0.w'", "model-00003-of-00003");
  /* a tensor listed in the index but not in its shard */
  vl_st_entry other[1] = {{"l3.other", VL_DT_F32, 1, {100}, big[2]}};
  CHECK(vl_st_write(p3, other, 1, NULL, 0) == VL_OK, "rewrite shard 3");
  expect_fail(folder, VL_EIO, "tensor 'l3.w' is listed in the index but not found",
              "model-00003-of-00003");
  /* a tensor in another shard than the index says */
  vl_st_entry moved[2] = {se[2], se[3]};
  CHECK(vl_st_write(in_dir(shard[1]), moved, 2, NULL, 0) == VL_OK, "rewrite shard 2");
  CHECK(vl_st_write(p3, other, 1, NULL, 0) == VL_OK, "rewrite shard 3");
  expect_fail(folder, VL_EIO, "'l3.w' is listed in the index for shard model-00003", "found in");
  /* a missing shard */
  unlink(p3);
  expect_fail(folder, VL_EIO, "shard file 'model-00003-of-00003.safetensors'", "missing");
  /* a broken index */
  write_bytes(in_dir("sharded/model.safetensors.index.json"), "{\"weight_map\": [", 16);
  expect_fail(folder, VL_EIO, "index.json: JSON syntax error", NULL);
  write_bytes(in_dir("sharded/model.safetensors.index.json"), "{\"metadata\": {}}", 16);
  expect_fail(folder, VL_EIO, "no \"weight_map\"", NULL);

  /* a folder with model.safetensors only; an empty folder */
  snprintf(single, sizeof single, "%s", in_dir("single"));
  mkdir(single, 0755);
  CHECK(vl_st_write(in_dir("single/model.safetensors"), se, 1, NULL, 0) == VL_OK, "single write");
  CHECK(vl_st_open(&st, single) == VL_OK && vl_st_count(st) == 1, "folder with model.safetensors");
  vl_st_close(st);
  snprintf(empty, sizeof empty, "%s", in_dir("empty"));
  mkdir(empty, 0755);
  expect_fail(empty, VL_EIO, "neither model.safetensors.index.json nor model.safetensors", NULL);
}

/* Files from HF's Python safetensors (tests/reference/make_qwen3vl_fixtures.py):
 * the values that script put there. */
static void test_hf_written(void) {
  char p[1024];
  test_path(p, sizeof p, "tests/data/qwen3vl_parity/inputs.safetensors");
  if (access(p, R_OK)) {
    fprintf(stderr, "note: %s absent (set VL_SRCDIR); HF-written file not checked\n", p);
    return;
  }
  vl_safetensors *st = NULL;
  CHECK(vl_st_open(&st, p) == VL_OK, "open %s: %s", p, vl_err_last());
  if (!st) return;
  const vl_st_tensor *g = NULL, *pv = NULL;
  int64_t grid[6], want[6] = {1, 4, 6, 1, 8, 6}, gshape[2] = {2, 3}, pshape[2] = {72, 1536};
  CHECK(vl_st_get(st, "image_grid_thw", VL_DT_MASK(VL_DT_I64), 2, gshape, &g) == VL_OK &&
        vl_st_read_i64(g, grid, 6) == VL_OK && !memcmp(grid, want, sizeof want), "grid_thw");
  CHECK(vl_st_get(st, "pixel_values", VL_DT_MASK(VL_DT_F32), 2, pshape, &pv) == VL_OK, "pixel_values");
  CHECK(vl_st_count(st) == 6, "6 tensors in inputs");
  vl_st_close(st);
  test_path(p, sizeof p, "tests/data/qwen3vl_parity/model.safetensors");
  CHECK(vl_st_open(&st, p) == VL_OK && vl_st_metadata(st, "format") &&
        !strcmp(vl_st_metadata(st, "format"), "pt"), "HF model metadata format=pt");
  vl_st_close(st);
}

static void test_bad_files(void) {
  unsigned char data[64] = {0};
  write_bytes(in_dir("short.safetensors"), "abc", 3);
  bad_file("short.safetensors", VL_EIO, "truncated: 3 bytes");
  write_bytes(in_dir("empty.safetensors"), "", 0);
  bad_file("empty.safetensors", VL_EIO, "truncated: 0 bytes");
  const char *good = "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}";
  write_st("hlen.safetensors", strlen(good) + 9, good, data, 8);
  bad_file("hlen.safetensors", VL_EIO, "exceeds the file");
  write_st("huge.safetensors", 200000000, good, data, 8);
  bad_file("huge.safetensors", VL_EIO, "over the 100 MB limit");
  /* ',' at byte 20 where a key is due; cJSON reports the byte after it */
  write_json("json.safetensors", "{\"a\":{\"dtype\":\"F32\",,\"shape\":[2]}}", data, 8);
  bad_file("json.safetensors", VL_EIO, "JSON syntax error at byte 21 of the header (file offset 29)");
  CHECK(strstr(vl_err_last(), "\"F32\",,\"shape\"") != NULL, "snippet: %s", vl_err_last());
  write_json("cut.safetensors", "{\"a\": {\"dtype\": \"F32\",", data, 8);
  bad_file("cut.safetensors", VL_EIO, "JSON syntax error");
  write_json("trail.safetensors", "{}xy", NULL, 0);
  bad_file("trail.safetensors", VL_EIO, "bytes after its JSON object");
  write_json("list.safetensors", "[1,2]", NULL, 0);
  bad_file("list.safetensors", VL_EIO, "not an object");
  write_json("notobj.safetensors", "{\"a\":5}", NULL, 0);
  bad_file("notobj.safetensors", VL_EIO, "tensor 'a': entry is not a JSON object");
  write_json("nodtype.safetensors", "{\"a\":{\"shape\":[2],\"data_offsets\":[0,8]}}", data, 8);
  bad_file("nodtype.safetensors", VL_EIO, "tensor 'a': entry lacks 'dtype'");
  write_json("noshape.safetensors", "{\"a\":{\"dtype\":\"F32\",\"data_offsets\":[0,8]}}", data, 8);
  bad_file("noshape.safetensors", VL_EIO, "lacks 'shape'");
  write_json("nooffs.safetensors", "{\"a\":{\"dtype\":\"F32\",\"shape\":[2]}}", data, 8);
  bad_file("nooffs.safetensors", VL_EIO, "lacks 'data_offsets'");
  write_json("dtnum.safetensors", "{\"a\":{\"dtype\":4,\"shape\":[2],\"data_offsets\":[0,8]}}", data, 8);
  bad_file("dtnum.safetensors", VL_EIO, "dtype is not a string");
  write_json("dtype.safetensors", "{\"a\":{\"dtype\":\"F33\",\"shape\":[2],\"data_offsets\":[0,8]}}", data, 8);
  bad_file("dtype.safetensors", VL_EIO, "tensor 'a': unknown dtype 'F33'");
  write_json("shstr.safetensors", "{\"a\":{\"dtype\":\"F32\",\"shape\":\"2\",\"data_offsets\":[0,8]}}", data, 8);
  bad_file("shstr.safetensors", VL_EIO, "shape is not a list");
  write_json("neg.safetensors", "{\"a\":{\"dtype\":\"F32\",\"shape\":[-2],\"data_offsets\":[0,8]}}", data, 8);
  bad_file("neg.safetensors", VL_EIO, "shape entry 0 is not a non-negative integer");
  write_json("frac.safetensors", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1,2.5],\"data_offsets\":[0,8]}}", data, 8);
  bad_file("frac.safetensors", VL_EIO, "shape entry 1 is not a non-negative integer");
  write_json("dims.safetensors", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,2],"
             "\"data_offsets\":[0,8]}}", data, 8);
  bad_file("dims.safetensors", VL_EIO, "9 dimensions");
  write_json("size.safetensors", "{\"a\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", data, 8);
  bad_file("size.safetensors", VL_EIO, "byte size mismatch: shape [3] of F32 needs 12 bytes");
  write_json("past.safetensors", "{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}", data, 8);
  bad_file("past.safetensors", VL_EIO, "end 16 is past the end of the data buffer (8 bytes)");
  write_json("order.safetensors", "{\"a\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[8,0]}}", data, 8);
  bad_file("order.safetensors", VL_EIO, "begin > end");
  write_json("offs3.safetensors", "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8,9]}}", data, 8);
  bad_file("offs3.safetensors", VL_EIO, "data_offsets is not [begin, end]");
  write_json("offneg.safetensors", "{\"a\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[-4,-4]}}", data, 8);
  bad_file("offneg.safetensors", VL_EIO, "data_offsets is not [begin, end]");
  write_json("overlap.safetensors", "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
             "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}", data, 12);
  bad_file("overlap.safetensors", VL_EIO, "tensors 'a' and 'b' overlap");
  write_json("dupkey.safetensors", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
             "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", data, 8);
  bad_file("dupkey.safetensors", VL_EIO, "duplicate tensor name 'a'");
  write_json("meta.safetensors", "{\"__metadata__\":[1]}", NULL, 0);
  bad_file("meta.safetensors", VL_EIO, "__metadata__ is not a JSON object");
  expect_fail(in_dir("nonexistent.safetensors"), VL_EIO, "nonexistent.safetensors", "No such file");
  /* what may pass: empty tensors sharing an offset, gaps, no tensors at all */
  write_json("ok.safetensors", "{\"a\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[4,4]},"
             "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
             "\"c\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[10,11]}}", data, 12);
  vl_safetensors *st = NULL;
  CHECK(vl_st_open(&st, in_dir("ok.safetensors")) == VL_OK && vl_st_count(st) == 3, "ok file: %s",
        vl_err_last());
  vl_st_close(st);
  write_json("none.safetensors", "{}", NULL, 0);
  CHECK(vl_st_open(&st, in_dir("none.safetensors")) == VL_OK && vl_st_count(st) == 0, "no tensors");
  vl_st_close(st);
}

static void test_writer_errors(void) {
  float x[4] = {0};
  vl_st_entry two[2] = {{"w", VL_DT_F32, 1, {2}, x}, {"w", VL_DT_F32, 1, {2}, x + 2}};
  vl_err_clear();
  CHECK(vl_st_write(in_dir("dup.safetensors"), two, 2, NULL, 0) == VL_EINVAL &&
        strstr(vl_err_last(), "tensor name 'w' given twice"), "dup: %s", vl_err_last());
  CHECK(access(in_dir("dup.safetensors"), F_OK) != 0, "nothing written");
  vl_st_entry neg = {"w", VL_DT_F32, 1, {-2}, x};
  CHECK(vl_st_write(in_dir("neg_w.safetensors"), &neg, 1, NULL, 0) == VL_EINVAL &&
        strstr(vl_err_last(), "bad shape"), "neg: %s", vl_err_last());
  vl_st_entry nul = {"w", VL_DT_F32, 1, {2}, NULL};
  CHECK(vl_st_write(in_dir("nul.safetensors"), &nul, 1, NULL, 0) == VL_EINVAL &&
        strstr(vl_err_last(), "data is NULL"), "null data: %s", vl_err_last());
  vl_st_entry meta_name = {"__metadata__", VL_DT_F32, 1, {2}, x};
  CHECK(vl_st_write(in_dir("m.safetensors"), &meta_name, 1, NULL, 0) == VL_EINVAL, "__metadata__ name");
  vl_st_entry ok = {"w", VL_DT_F32, 1, {2}, x};
  CHECK(vl_st_write(in_dir("no/such/dir/x.safetensors"), &ok, 1, NULL, 0) == VL_EIO &&
        strstr(vl_err_last(), "cannot create"), "bad dir: %s", vl_err_last());
  CHECK(vl_st_write_sharded(in_dir("zero"), &ok, 1, 0, NULL, 0) == VL_EINVAL, "zero shard size");
}

int main(void) {
  vl_err_set_quiet(1);
  if (!mkdtemp(dir)) TEST_SKIP("mkdtemp failed");
  test_conversions();
  test_hand_written_file();
  test_writer_bytes();
  test_round_trip();
  test_many_tensors();
  test_sharded();
  test_hf_written();
  test_bad_files();
  test_writer_errors();
  char cmd[700];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
  CHECK(system(cmd) == 0, "cleanup");
  TEST_END();
}
