/* test_safetensors: the reader against hand-written bytes and the writer;
 * dtype conversions against known bit patterns; sharded folders; and every
 * kind of corrupt file giving a clear error instead of a crash. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "err.h"
#include "safetensors.h"
#include "test_util.h"

static char dir[] = "/tmp/vl_st_XXXXXX";

static const char *path_in(const char *name) {
  static char p[4][512];
  static int k;
  k = (k + 1) % 4;
  snprintf(p[k], sizeof p[k], "%s/%s", dir, name);
  return p[k];
}

/* header JSON + data bytes, the length written little-endian by hand */
static void write_raw(const char *name, const char *json, const void *data, size_t n, long hlen_override) {
  FILE *f = fopen(path_in(name), "wb");
  uint64_t h = hlen_override >= 0 ? (uint64_t)hlen_override : strlen(json);
  for (int i = 0; i < 8; i++) fputc((int)((h >> (8 * i)) & 255), f);
  fputs(json, f);
  if (n) fwrite(data, 1, n, f);
  fclose(f);
}

static void expect_bad(const char *name, int code, const char *words) {
  vl_safetensors *st = NULL;
  int rc = vl_st_open(&st, path_in(name));
  CHECK(rc == code, "%s: rc %d, expected %d (%s)", name, rc, code, vl_err_last());
  CHECK(strstr(vl_err_last(), words) != NULL, "%s: message '%s' lacks '%s'", name, vl_err_last(), words);
  if (st) vl_st_close(st);
}

int main(void) {
  vl_err_set_quiet(1);
  CHECK(mkdtemp(dir) != NULL, "mkdtemp");
  /* conversions */
  CHECK(vl_bf16_from_f32(1.0f) == 0x3F80, "bf16(1)");
  CHECK(vl_bf16_from_f32(0.1f) == 0x3DCD, "bf16(0.1) = %04x", vl_bf16_from_f32(0.1f));
  CHECK(vl_bf16_from_f32(-2.0f) == 0xC000, "bf16(-2)");
  CHECK(vl_f32_from_bf16(0x3F80) == 1.0f, "f32(bf16 1)");
  CHECK(vl_f32_from_f16(0x3C00) == 1.0f && vl_f32_from_f16(0xC000) == -2.0f, "f16 1, -2");
  CHECK(vl_f32_from_f16(0x0001) == 0x1p-24f && vl_f32_from_f16(0x7BFF) == 65504.0f, "f16 subnormal, max");

  /* a file written by hand: two tensors, metadata */
  const char *json = "{\"__metadata__\":{\"format\":\"pt\"},"
                     "\"b\":{\"dtype\":\"BF16\",\"shape\":[2],\"data_offsets\":[8,12]},"
                     "\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}";
  unsigned char data[12];
  float a_vals[2] = {1.5f, -3.25f};
  uint16_t b_vals[2] = {0x3F80, 0xC000};
  memcpy(data, a_vals, 8);
  memcpy(data + 8, b_vals, 4);
  write_raw("hand.safetensors", json, data, 12, -1);
  vl_safetensors *st = NULL;
  CHECK(vl_st_open(&st, path_in("hand.safetensors")) == VL_OK, "open hand: %s", vl_err_last());
  if (st) {
    CHECK(vl_st_count(st) == 2, "count");
    const vl_st_tensor *ta = vl_st_find(st, "a"), *tb = vl_st_find(st, "b");
    float out[2];
    CHECK(ta && vl_st_tensor_dtype(ta) == VL_DT_F32 && vl_st_read_f32(ta, out, 2) == VL_OK &&
          out[0] == 1.5f && out[1] == -3.25f, "tensor a");
    CHECK(tb && vl_st_read_f32(tb, out, 2) == VL_OK && out[0] == 1.0f && out[1] == -2.0f, "tensor b");
    CHECK(vl_st_metadata(st, "format") && !strcmp(vl_st_metadata(st, "format"), "pt"), "metadata");
    CHECK(vl_st_find(st, "c") == NULL, "absent");
    int64_t want[2] = {4, 4};
    CHECK(vl_st_check_shape(st, ta, 2, want) == VL_ESHAPE &&
          strstr(vl_err_last(), "tensor 'a' has shape [2], expected [4, 4]"), "shape msg: %s", vl_err_last());
    int64_t iv[2];
    CHECK(vl_st_read_i64(ta, iv, 2) == VL_ESHAPE, "i64 from float");
    vl_st_close(st);
  }

  /* writer round trip: F32 bitwise, I64, metadata, header padded to 8 */
  float w[6] = {0.1f, -1e-30f, 3.4e38f, 0.0f, -0.0f, 7.0f};
  int64_t ids[3] = {-5, 151655, 1LL << 40};
  vl_st_entry e[2] = {{"x.weight", VL_DT_F32, 2, {2, 3}, w}, {"ids", VL_DT_I64, 1, {3}, ids}};
  const char *meta[2] = {"format", "pt"};
  CHECK(vl_st_write(path_in("w.safetensors"), e, 2, meta, 1) == VL_OK, "write: %s", vl_err_last());
  CHECK(vl_st_open(&st, path_in("w.safetensors")) == VL_OK, "reopen: %s", vl_err_last());
  if (st) {
    float back[6];
    int64_t ib[3];
    const vl_st_tensor *t = vl_st_find(st, "x.weight");
    CHECK(t && vl_st_read_f32(t, back, 6) == VL_OK && !memcmp(back, w, sizeof w), "f32 bitwise");
    CHECK(vl_st_read_i64(vl_st_find(st, "ids"), ib, 3) == VL_OK && !memcmp(ib, ids, sizeof ids), "i64");
    vl_st_close(st);
  }
  FILE *f = fopen(path_in("w.safetensors"), "rb");
  unsigned char h8[8];
  CHECK(fread(h8, 1, 8, f) == 8 && h8[0] % 8 == 0, "header length multiple of 8");
  fclose(f);

  /* sharded: 3 shards + index */
  float big[3][100];
  for (int s = 0; s < 3; s++)
    for (int i = 0; i < 100; i++) big[s][i] = (float)(s * 1000 + i);
  vl_st_entry se[3] = {{"l0.w", VL_DT_F32, 1, {100}, big[0]}, {"l1.w", VL_DT_F32, 1, {100}, big[1]},
                       {"l2.w", VL_DT_F32, 1, {100}, big[2]}};
  char shard_dir[600];
  snprintf(shard_dir, sizeof shard_dir, "%s/sharded", dir);
  mkdir(shard_dir, 0755);
  CHECK(vl_st_write_sharded(shard_dir, se, 3, 500, NULL, 0) == VL_OK, "sharded write: %s", vl_err_last());
  CHECK(vl_st_open(&st, shard_dir) == VL_OK, "sharded open: %s", vl_err_last());
  if (st) {
    float back[100];
    CHECK(vl_st_count(st) == 3 && vl_st_read_f32(vl_st_find(st, "l2.w"), back, 100) == VL_OK &&
          back[99] == 2099.0f, "sharded values");
    CHECK(vl_st_metadata(st, "total_size") == NULL, "total_size is a number");
    vl_st_close(st);
  }
  char p3[700];
  snprintf(p3, sizeof p3, "%s/model-00003-of-00003.safetensors", shard_dir);
  CHECK(access(p3, R_OK) == 0, "three shards");
  unlink(p3); /* index names a missing shard */
  CHECK(vl_st_open(&st, shard_dir) == VL_EIO && strstr(vl_err_last(), "model-00003-of-00003"),
        "missing shard: %s", vl_err_last());
  /* a tensor listed in the index but not in its shard */
  vl_st_entry only1[1] = {{"l2.other", VL_DT_F32, 1, {100}, big[2]}};
  CHECK(vl_st_write(p3, only1, 1, NULL, 0) == VL_OK, "rewrite shard 3");
  CHECK(vl_st_open(&st, shard_dir) == VL_EIO && strstr(vl_err_last(), "'l2.w' is listed"),
        "index vs shard: %s", vl_err_last());

  /* corrupt files */
  write_raw("short.safetensors", "", NULL, 0, -1);
  f = fopen(path_in("short.safetensors"), "wb"); fputs("abc", f); fclose(f);
  expect_bad("short.safetensors", VL_EIO, "truncated");
  write_raw("hlen.safetensors", json, data, 12, 1 << 20);
  expect_bad("hlen.safetensors", VL_EIO, "header length");
  write_raw("json.safetensors", "{\"a\": {\"dtype\": \"F32\",", data, 12, -1);
  expect_bad("json.safetensors", VL_EIO, "not valid JSON");
  write_raw("dtype.safetensors", "{\"a\":{\"dtype\":\"F33\",\"shape\":[2],\"data_offsets\":[0,8]}}", data, 8, -1);
  expect_bad("dtype.safetensors", VL_EIO, "unknown dtype 'F33'");
  write_raw("size.safetensors", "{\"a\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", data, 8, -1);
  expect_bad("size.safetensors", VL_EIO, "8 bytes for 3 elements of F32");
  write_raw("past.safetensors", "{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}", data, 8, -1);
  expect_bad("past.safetensors", VL_EIO, "data_offsets out of range");
  write_raw("neg.safetensors", "{\"a\":{\"dtype\":\"F32\",\"shape\":[-2],\"data_offsets\":[0,8]}}", data, 8, -1);
  expect_bad("neg.safetensors", VL_EIO, "non-negative integers");
  write_raw("entry.safetensors", "{\"a\":{\"dtype\":\"F32\",\"shape\":[2]}}", data, 8, -1);
  expect_bad("entry.safetensors", VL_EIO, "needs dtype");
  expect_bad("nonexistent.safetensors", VL_EIO, "No such file");

  char cmd[700];
  snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
  CHECK(system(cmd) == 0, "cleanup");
  TEST_END();
}
