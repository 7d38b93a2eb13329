/* test_batch: positions and tables of a micro-batch against values worked by
 * hand from Hugging Face's Qwen3-VL code (get_rope_index, rot_pos_emb,
 * fast_pos_embed_interpolate, apply_interleaved_mrope, the label shift). */
#include <math.h>
#include <string.h>

#include "batch.h"
#include "config.h"
#include "err.h"
#include "test_util.h"

static const char *yaml =
    "model:\n  family: qwen3-vl\n"
    "  text: {vocab_size: 64, hidden_size: 16, intermediate_size: 24, num_hidden_layers: 2,\n"
    "         num_attention_heads: 2, num_key_value_heads: 1, head_dim: 8, rope_theta: 10000,\n"
    "         mrope_section: [2, 1, 1]}\n"
    "  vision: {depth: 2, hidden_size: 16, intermediate_size: 24, num_heads: 2, patch_size: 2,\n"
    "           spatial_merge_size: 2, out_hidden_size: 16, num_position_embeddings: 64,\n"
    "           deepstack_visual_indexes: [0]}\n"
    "  tokens: {image_token_id: 60, video_token_id: 61, vision_start_token_id: 58,\n"
    "           vision_end_token_id: 59}\n";
enum { I = 60, VS = 58, VE = 59 };

int main(void) {
  vl_config cfg;
  if (vl_config_load_string(&cfg, yaml, "batch.yaml")) { fprintf(stderr, "%s\n", vl_err_last()); return 1; }
  const vl_model_config *mc = &cfg.model;
  vl_err_set_quiet(1);

  /* (1) text only: 0..n-1 on every axis */
  int32_t t1[5] = {1, 2, 3, 4, 5}, pos[3 * 64];
  CHECK(vl_batch_mrope_positions(mc, t1, 5, NULL, 0, pos) == VL_OK, "text only");
  for (int a = 0; a < 3; a++)
    for (int i = 0; i < 5; i++) CHECK(pos[a * 5 + i] == i, "text pos[%d][%d] = %d", a, i, pos[a * 5 + i]);

  /* (2) a b VS [2x2 merged] VE c d: text 0,1,2; image base 3 (t 3; h 3,3,4,4;
   * w 3,4,3,4); the next text starts at max + 1 = 5 */
  int32_t s2[10] = {1, 2, VS, I, I, I, I, VE, 3, 4};
  const int32_t g44[1][3] = {{1, 4, 4}};
  const int32_t want2[3][10] = {{0, 1, 2, 3, 3, 3, 3, 5, 6, 7},
                                {0, 1, 2, 3, 3, 4, 4, 5, 6, 7},
                                {0, 1, 2, 3, 4, 3, 4, 5, 6, 7}};
  CHECK(vl_batch_mrope_positions(mc, s2, 10, g44, 1, pos) == VL_OK, "image: %s", vl_err_last());
  for (int a = 0; a < 3; a++)
    for (int i = 0; i < 10; i++) CHECK(pos[a * 10 + i] == want2[a][i], "image pos[%d][%d] = %d", a, i, pos[a * 10 + i]);

  /* (3) sample A: two images (1,2,4) -> 2 tokens and (1,4,2) -> 2 tokens;
   * sample B text only; packed */
  int32_t ida[12] = {5, VS, I, I, VE, 7, VS, I, I, VE, 8, 9};
  int32_t laba[12] = {-100, -100, -100, -100, -100, -100, -100, -100, -100, -100, 8, 9};
  int32_t idb[4] = {11, 12, 13, 14}, labb[4] = {-100, 12, 13, 14};
  const int32_t ga[2][3] = {{1, 2, 4}, {1, 4, 2}};
  const int pd = 3 * 2 * 2 * 2;
  float pix[16 * 24];
  for (int i = 0; i < 16 * 24; i++) pix[i] = (float)i;
  vl_sample s[2] = {{12, ida, laba, 2, ga, pix}, {4, idb, labb, 0, NULL, NULL}};
  vl_batch b;
  CHECK(vl_batch_build(&b, mc, s, 2) == VL_OK, "build: %s", vl_err_last());
  const int32_t want_targets[16] = {-100, -100, -100, -100, -100, -100, -100, -100, -100, 8, 9, -100,
                                    12, 13, 14, -100};
  const int32_t want_vis[4] = {2, 3, 7, 8};
  CHECK(b.T == 16 && b.n_seq == 2 && b.seq_offsets[1] == 12 && b.seq_offsets[2] == 16, "offsets");
  for (int i = 0; i < 16; i++) CHECK(b.targets[i] == want_targets[i], "target[%d] = %d", i, b.targets[i]);
  CHECK(b.n_targets == 5, "n_targets %d", b.n_targets);
  CHECK(b.n_visual == 4 && !memcmp(b.visual_pos, want_vis, sizeof want_vis), "visual positions");
  CHECK(b.P == 16 && b.n_vseg == 2 && b.vseg_offsets[1] == 8 && b.vseg_offsets[2] == 16, "vision segments");
  CHECK(b.patch_dim == pd && b.pixels[15 * pd + 23] == (float)(15 * pd + 23), "pixels copied");
  /* sample B's positions restart at 0 */
  for (int i = 0; i < 4; i++) CHECK(b.positions[12 + i] == i && b.positions[2 * 16 + 12 + i] == i, "B pos");
  /* image 1 of A: base = 6 (text 5, VS, I, I, VE, 7, VS -> st_idx...) worked:
   * A: [5 VS] text 0,1; img0 base 2: h 2, w 2,3 (grid 1x2 merged: h'=1, w'=2);
   * next 4: VE 4, 7 5, VS 6; img1 base 7: h 7,8 w 7 (h'=2, w'=1); next 9 */
  const int32_t wantA[3][12] = {{0, 1, 2, 2, 4, 5, 6, 7, 7, 9, 10, 11},
                                {0, 1, 2, 2, 4, 5, 6, 7, 8, 9, 10, 11},
                                {0, 1, 2, 3, 4, 5, 6, 7, 7, 9, 10, 11}};
  for (int a = 0; a < 3; a++)
    for (int i = 0; i < 12; i++)
      CHECK(b.positions[a * 16 + i] == wantA[a][i], "A pos[%d][%d] = %d", a, i, b.positions[a * 16 + i]);

  /* (4) text rope: interleaved axes for sections [2,1,1] over hd/2 = 4
   * frequencies: j=0 T, j=1 H (1 < 3*1), j=2 W (2 < 3*1), j=3 T */
  {
    const int axis[4] = {0, 1, 2, 0}, t = 8; /* token 8 of A: image, pos (7, 8, 7) */
    double e = 0;
    for (int j = 0; j < 4; j++) {
      double inv = 1.0 / pow(10000.0, 2.0 * j / 8.0);
      double ang = b.positions[axis[j] * 16 + t] * inv;
      e = fmax(e, fabs(cos(ang) - b.rope_cos[t * 8 + j]) + fabs(sin(ang) - b.rope_sin[t * 8 + j + 4]));
    }
    CHECK(e < 1e-5, "text rope error %g", e);
    vl_text_config sec = mc->text;
    sec.mrope_interleaved = 0; /* sectioned: j<2 T, j<3 H, else W */
    float c2[8], s2b[8];
    int32_t p3[3] = {3, 5, 9};
    vl_batch_text_rope(&sec, p3, 1, 1, c2, s2b);
    const int sax[4] = {0, 0, 1, 2};
    e = 0;
    for (int j = 0; j < 4; j++) e = fmax(e, fabs(cos(p3[sax[j]] / pow(10000.0, j / 4.0)) - c2[j]));
    CHECK(e < 1e-5, "sectioned rope error %g", e);
  }

  /* (5) vision rope order for image A0, grid (1,2,4): merge windows of 2x2;
   * patch p -> (row, col): (0,0) (0,1) (1,0) (1,1) (0,2) (0,3) (1,2) (1,3).
   * vhd = 8: [row*inv0, row*inv1, col*inv0, col*inv1] twice, inv = 1, 1/100 */
  {
    const int rows[8] = {0, 0, 1, 1, 0, 0, 1, 1}, cols[8] = {0, 1, 0, 1, 2, 3, 2, 3};
    double e = 0;
    for (int p = 0; p < 8; p++) {
      e += fabs(b.vrope_cos[p * 8 + 0] - cos(rows[p])) + fabs(b.vrope_cos[p * 8 + 2] - cos(cols[p]));
      e += fabs(b.vrope_sin[p * 8 + 1] - sin(rows[p] / 100.0)) + fabs(b.vrope_sin[p * 8 + 7] - sin(cols[p] / 100.0));
      e += fabs(b.vrope_cos[p * 8 + 4] - b.vrope_cos[p * 8]);
    }
    CHECK(e < 1e-5, "vision rope error %g", e);
  }

  /* (6) bilinear position weights, side 8, for image A1 grid (1,4,2):
   * h: linspace(0,7,4) = 0, 7/3, 14/3, 7; w: linspace(0,7,2) = 0, 7 */
  {
    const int p0 = 8; /* first patch of image A1: raster (0,0) */
    CHECK(b.pos_idx[p0 * 4] == 0 && fabsf(b.pos_w[p0 * 4] - 1.0f) < 1e-6, "corner (0,0)");
    for (int p = 0; p < 16; p++) {
      float s = b.pos_w[p * 4] + b.pos_w[p * 4 + 1] + b.pos_w[p * 4 + 2] + b.pos_w[p * 4 + 3];
      CHECK(fabsf(s - 1.0f) < 1e-6, "weights of patch %d sum to %g", p, s);
    }
    /* last patch = raster (3,1): h = 7, w = 7 -> row 63 with weight 1 */
    CHECK(b.pos_idx[15 * 4] == 63 && fabsf(b.pos_w[15 * 4] - 1.0f) < 1e-6, "corner (7,7)");
    /* patch 9 = raster (0,1): h 0, w 7 -> index 7 */
    CHECK(b.pos_idx[9 * 4] == 7 && fabsf(b.pos_w[9 * 4] - 1.0f) < 1e-6, "corner (0,7)");
    /* patch 10 = raster (1,0): h = 7/3 -> floor 2, dh 1/3: idx 16 w 2/3, idx 24 w 1/3 */
    CHECK(b.pos_idx[10 * 4] == 16 && b.pos_idx[10 * 4 + 2] == 24 &&
          fabsf(b.pos_w[10 * 4] - 2.0f / 3) < 1e-6 && fabsf(b.pos_w[10 * 4 + 2] - 1.0f / 3) < 1e-6,
          "interior row: %d %g %d %g", b.pos_idx[40], b.pos_w[40], b.pos_idx[42], b.pos_w[42]);
  }
  vl_batch_free(&b);

  /* (7) validation */
  int32_t short_run[9] = {1, VS, I, I, I, VE, 2, 3, 4};
  vl_sample bad = {9, short_run, short_run, 1, g44, pix};
  CHECK(vl_batch_build(&b, mc, &bad, 1) == VL_EINVAL && strstr(vl_err_last(), "3 <|image_pad|> tokens"),
        "short run: %s", vl_err_last());
  int32_t big_id[3] = {1, 64, 2};
  vl_sample bad2 = {3, big_id, big_id, 0, NULL, NULL};
  CHECK(vl_batch_build(&b, mc, &bad2, 1) == VL_EINVAL && strstr(vl_err_last(), "outside the vocabulary"),
        "vocab: %s", vl_err_last());
  const int32_t odd[1][3] = {{1, 3, 4}};
  vl_sample bad3 = {10, s2, s2, 1, odd, pix};
  CHECK(vl_batch_build(&b, mc, &bad3, 1) == VL_EINVAL && strstr(vl_err_last(), "divisible"),
        "odd grid: %s", vl_err_last());
  vl_sample bad4 = {10, s2, s2, 0, NULL, NULL};
  CHECK(vl_batch_build(&b, mc, &bad4, 1) == VL_EINVAL, "image tokens without an image");
  vl_batch zero;
  memset(&zero, 0, sizeof zero);
  vl_batch_free(&zero);
  vl_config_free(&cfg);
  TEST_END();
}
