/* test_batch: the host-side micro-batch against values worked by hand from
 * Hugging Face's Qwen-VL code: Qwen3VLModel.get_rope_index (positions),
 * ForCausalLMLoss (the label shift), Qwen3VLTextRotaryEmbedding with
 * apply_interleaved_mrope and Qwen2-VL's sectioned
 * apply_multimodal_rotary_pos_emb (text rope), Qwen3VLVisionModel.rot_pos_emb
 * (vision rope, merge-window order), fast_pos_embed_interpolate (bilinear
 * position-embedding bag) and the vision cu_seqlens; then every input error.
 * The model config is built by hand (no YAML) so the test needs only
 * batch.c and err.c. */
#include <math.h>
#include <string.h>

#include "batch.h"
#include "config.h"
#include "err.h"
#include "test_util.h"

enum { VOCAB = 64, I = 60, VID = 61, VS = 58, VE = 59, PD = 3 * 2 * 2 * 2 };

/* text: head_dim 16 (8 frequencies), rope_theta 5e6, mrope [3, 3, 2]
 * interleaved; vision: hidden 16 / 2 heads = head_dim 8, merge 2, patch 2,
 * temporal 2, 3 channels (patch_dim 24), a learned 8 x 8 position grid. */
static vl_model_config tiny(void) {
  vl_model_config c;
  memset(&c, 0, sizeof c);
  c.family = VL_FAMILY_QWEN3_VL;
  c.text.vocab_size = VOCAB;
  c.text.hidden_size = 32;
  c.text.num_attention_heads = 2;
  c.text.num_key_value_heads = 1;
  c.text.head_dim = 16;
  c.text.rope_theta = 5e6;
  c.text.mrope_section[0] = 3; c.text.mrope_section[1] = 3; c.text.mrope_section[2] = 2;
  c.text.mrope_interleaved = 1;
  c.vision.hidden_size = 16;
  c.vision.num_heads = 2;
  c.vision.in_channels = 3;
  c.vision.patch_size = 2;
  c.vision.temporal_patch_size = 2;
  c.vision.spatial_merge_size = 2;
  c.vision.num_position_embeddings = 64;
  c.tokens.image_token_id = I;
  c.tokens.video_token_id = VID;
  c.tokens.vision_start_token_id = VS;
  c.tokens.vision_end_token_id = VE;
  return c;
}

/* max |cos - want| + |sin - want| over a row of head_dim 16, the angle of
 * column d being pos[axis[d]] * theta^(-2 (d mod 8) / 16), in double */
static double text_row_err(const float *c, const float *s, const int32_t p[3],
                           const int axis[16], double theta) {
  double e = 0;
  for (int d = 0; d < 16; d++) {
    const double ang = p[axis[d]] * pow(theta, -2.0 * (d % 8) / 16.0);
    e = fmax(e, fabs(c[d] - cos(ang)) + fabs(s[d] - sin(ang)));
  }
  return e;
}

static void check_positions(const int32_t *pos, size_t stride, int off, int n,
                            const int32_t *want, const char *what) {
  for (int a = 0; a < 3; a++)
    for (int t = 0; t < n; t++)
      CHECK(pos[a * stride + off + t] == want[a * n + t], "%s: pos[%d][%d] = %d, want %d", what,
            a, t, pos[a * stride + off + t], want[a * n + t]);
}

/* builds a one-sample batch that must fail; the message must contain frag */
static void expect_fail(const vl_model_config *mc, const vl_sample *s, int n, const char *frag,
                        const char *what) {
  vl_batch b;
  memset(&b, 0xff, sizeof b); /* build must not trust the caller's struct */
  int rc = vl_batch_build(&b, mc, s, n);
  CHECK(rc == VL_EINVAL, "%s: rc %d", what, rc);
  CHECK(strstr(vl_err_last(), frag) != NULL, "%s: message '%s' lacks '%s'", what, vl_err_last(),
        frag);
  CHECK(b.ids == NULL && b.positions == NULL && b.T == 0, "%s: struct not cleared", what);
  vl_batch_free(&b);
}

int main(void) {
  const vl_model_config cfg = tiny();
  const vl_model_config *mc = &cfg;
  vl_err_set_quiet(1);
  int32_t pos[3 * 32];

  /* (1) text only: get_rope_index finds no <|vision_start|><|image_pad|>,
   * so image_nums = 0 and the one text block is arange(n) on every axis */
  {
    const int32_t ids[5] = {1, 2, 3, 4, 5};
    const int32_t want[3][5] = {{0, 1, 2, 3, 4}, {0, 1, 2, 3, 4}, {0, 1, 2, 3, 4}};
    CHECK(vl_batch_mrope_positions(mc, ids, 5, NULL, 0, pos) == VL_OK, "text: %s", vl_err_last());
    check_positions(pos, 5, 0, 5, &want[0][0], "text only");
    /* a video token with no <|vision_start|> before it is text, never image */
    const int32_t vid[3] = {1, VID, 2};
    const int32_t wantv[3][3] = {{0, 1, 2}, {0, 1, 2}, {0, 1, 2}};
    CHECK(vl_batch_mrope_positions(mc, vid, 3, NULL, 0, pos) == VL_OK, "video id as text");
    check_positions(pos, 3, 0, 3, &wantv[0][0], "bare video id");
  }

  /* (2) a b VS [image (1,4,4)] VE c d, merge 2: merged grid (1, 2, 2) = 4
   * pad tokens.  Image 0: ed = 3 (first pad), text_len = 3 -> text 0,1,2;
   * st_idx 0, block t = [0,0,0,0], h = [0,0,1,1], w = [0,1,0,1] (raster over
   * the merged 2x2), + text_len + st_idx = 3; st = 3 + 4 = 7.  Tail: st_idx =
   * block max + 1 = 5, so VE c d are 5, 6, 7. */
  const int32_t g144[1][3] = {{1, 4, 4}};
  const int32_t ids2[10] = {1, 2, VS, I, I, I, I, VE, 3, 4};
  const int32_t want2[3][10] = {{0, 1, 2, 3, 3, 3, 3, 5, 6, 7},
                                {0, 1, 2, 3, 3, 4, 4, 5, 6, 7},
                                {0, 1, 2, 3, 4, 3, 4, 5, 6, 7}};
  CHECK(vl_batch_mrope_positions(mc, ids2, 10, g144, 1, pos) == VL_OK, "image: %s", vl_err_last());
  check_positions(pos, 10, 0, 10, &want2[0][0], "one image");

  /* (3) sample A: two images, (1,2,6) -> merged (1,1,3) = 3 pads and
   * (1,4,2) -> merged (1,2,1) = 2 pads; sample B text only, packed after A.
   * A positions: image 0: ed = 2, text 0,1; block t [0,0,0] h [0,0,0]
   * w [0,1,2] + 2; max 4, st = 5.  Image 1: ed = 8, text_len 3 (VE 7 VS)
   * from st_idx 5 -> 5,6,7; block t [0,0] h [0,1] w [0,0] + 3 + 5 = 8; max 9,
   * st = 10.  Tail from 10: VE 8 9 -> 10, 11, 12. */
  const int32_t ida[13] = {5, VS, I, I, I, VE, 7, VS, I, I, VE, 8, 9};
  const int32_t laba[13] = {-100, -100, -100, -100, -100, -100, -100, -100, -100, -100, VE, 8, 9};
  const int32_t wantA[3][13] = {{0, 1, 2, 2, 2, 5, 6, 7, 8, 8, 10, 11, 12},
                                {0, 1, 2, 2, 2, 5, 6, 7, 8, 9, 10, 11, 12},
                                {0, 1, 2, 3, 4, 5, 6, 7, 8, 8, 10, 11, 12}};
  /* labels[0] = 11 is never a target: the shift drops it */
  const int32_t idb[4] = {11, 12, 13, 14}, labb[4] = {11, -100, 13, 14};
  const int32_t ga[2][3] = {{1, 2, 6}, {1, 4, 2}};
  float pix[20 * PD];
  for (int i = 0; i < 20 * PD; i++) pix[i] = (float)i;
  {
    vl_sample s[2] = {{13, ida, laba, 2, ga, pix}, {4, idb, labb, 0, NULL, NULL}};
    vl_batch b;
    CHECK(vl_batch_build(&b, mc, s, 2) == VL_OK, "build: %s", vl_err_last());
    /* ForCausalLMLoss: labels padded with -100 and shifted per sample:
     * target[t] = labels[t + 1], the last token of each sample -100 */
    const int32_t want_t[17] = {-100, -100, -100, -100, -100, -100, -100, -100, -100, VE, 8, 9,
                                -100, /* B: */ -100, 13, 14, -100};
    const int32_t want_vis[5] = {2, 3, 4, 8, 9};
    CHECK(b.T == 17 && b.n_seq == 2, "T %d n_seq %d", b.T, b.n_seq);
    CHECK(b.seq_offsets[0] == 0 && b.seq_offsets[1] == 13 && b.seq_offsets[2] == 17, "offsets");
    CHECK(!memcmp(b.ids, ida, sizeof ida) && !memcmp(b.ids + 13, idb, sizeof idb), "ids copied");
    for (int i = 0; i < 17; i++)
      CHECK(b.targets[i] == want_t[i], "target[%d] = %d, want %d", i, b.targets[i], want_t[i]);
    CHECK(b.n_targets == 5, "n_targets %d", b.n_targets);
    CHECK(b.n_visual == 5 && !memcmp(b.visual_pos, want_vis, sizeof want_vis), "visual_pos");
    check_positions(b.positions, 17, 0, 13, &wantA[0][0], "sample A");
    const int32_t wantB[3][4] = {{0, 1, 2, 3}, {0, 1, 2, 3}, {0, 1, 2, 3}};
    check_positions(b.positions, 17, 13, 4, &wantB[0][0], "sample B");
    /* cu_seqlens = [0, 12, 20]: one segment per frame (h*w = 12, then 8) */
    CHECK(b.P == 20 && b.n_vseg == 2 && b.vseg_offsets[0] == 0 && b.vseg_offsets[1] == 12 &&
          b.vseg_offsets[2] == 20, "vision segments");
    CHECK(b.P == b.n_visual * 4, "P = n_visual * merge^2");
    CHECK(b.patch_dim == PD && !memcmp(b.pixels, pix, sizeof pix), "pixels copied");
    CHECK(b.pos_idx && b.pos_w, "pos-embed tables for a learned grid");

    /* (4a) text rope of token 9 of A, positions (t, h, w) = (8, 9, 8).
     * apply_interleaved_mrope, sections [3, 3, 2]: frequency j takes h where
     * j = 1, 4, 7 (slice(1, 9, 3)), w where j = 2, 5 (slice(2, 6, 3)), t at
     * j = 0, 3, 6; then emb = cat(freqs, freqs) repeats it for d = 8..15. */
    const int inter[16] = {0, 1, 2, 0, 1, 2, 0, 1, 0, 1, 2, 0, 1, 2, 0, 1};
    const int32_t p9[3] = {8, 9, 8};
    double e = text_row_err(b.rope_cos + 9 * 16, b.rope_sin + 9 * 16, p9, inter, 5e6);
    CHECK(e < 1e-5, "text rope, token 9 of A: error %g", e);
    /* token 14 = B's position 1 on every axis: plain rope */
    const int32_t p14[3] = {1, 1, 1};
    e = text_row_err(b.rope_cos + 14 * 16, b.rope_sin + 14 * 16, p14, inter, 5e6);
    CHECK(e < 1e-5, "text rope, sample B: error %g", e);
    vl_batch_free(&b);
    vl_batch_free(&b); /* cleared: a second free is harmless */
  }

  /* (4b) one distinct triple (3, 5, 9) on both layouts, with rope_theta 100
   * so that the slowest frequencies still turn visibly (at 5e6 the last
   * ones are ~1e-6 rad per position and any axis would pass).  Sectioned
   * (Qwen2-VL):
   * HF splits the doubled cos (16) by mrope_section * 2 = [3,3,2,3,3,2] and
   * takes chunk i from axis i % 3: d 0-2 t, 3-5 h, 6-7 w, 8-10 t, 11-13 h,
   * 14-15 w. */
  {
    const int32_t p3[3] = {3, 5, 9};
    const int inter[16] = {0, 1, 2, 0, 1, 2, 0, 1, 0, 1, 2, 0, 1, 2, 0, 1};
    const int sect[16] = {0, 0, 0, 1, 1, 1, 2, 2, 0, 0, 0, 1, 1, 1, 2, 2};
    float c[16], s[16];
    vl_text_config t1 = mc->text;
    t1.rope_theta = 100;
    vl_batch_text_rope(&t1, p3, 1, 1, c, s);
    double e = text_row_err(c, s, p3, inter, 100);
    CHECK(e < 1e-5, "interleaved rope error %g", e);
    vl_text_config sec = t1;
    sec.mrope_interleaved = 0;
    vl_batch_text_rope(&sec, p3, 1, 1, c, s);
    e = text_row_err(c, s, p3, sect, 100);
    CHECK(e < 1e-5, "sectioned rope error %g", e);
    /* the layouts really differ for this triple */
    float c2[16], s2[16];
    vl_batch_text_rope(&t1, p3, 1, 1, c2, s2);
    CHECK(memcmp(c, c2, sizeof c), "sectioned and interleaved tables differ");
    /* interleaved slices stop at 3 * section: [4, 2, 2] gives h at
     * slice(1, 6, 3) = 1, 4 and w at slice(2, 6, 3) = 2, 5, so j = 7 stays t;
     * [4, 3, 1] gives h at 1, 4, 7 and w at slice(2, 3, 3) = 2 only, so j = 5
     * stays t */
    const int i422[16] = {0, 1, 2, 0, 1, 2, 0, 0, 0, 1, 2, 0, 1, 2, 0, 0};
    const int i431[16] = {0, 1, 2, 0, 1, 0, 0, 1, 0, 1, 2, 0, 1, 0, 0, 1};
    vl_text_config t2 = t1;
    t2.mrope_section[0] = 4; t2.mrope_section[1] = 2; t2.mrope_section[2] = 2;
    vl_batch_text_rope(&t2, p3, 1, 1, c, s);
    e = text_row_err(c, s, p3, i422, 100);
    CHECK(e < 1e-5, "interleaved [4,2,2] rope error %g", e);
    t2.mrope_section[1] = 3; t2.mrope_section[2] = 1;
    vl_batch_text_rope(&t2, p3, 1, 1, c, s);
    e = text_row_err(c, s, p3, i431, 100);
    CHECK(e < 1e-5, "interleaved [4,3,1] rope error %g", e);
  }

  /* (5) vision rope and (6) pos-embed bag of the 1x4x4 image of (2).
   * rot_pos_emb: merge windows (2x2) in raster order, raster inside each:
   * (0,0) (0,1) (1,0) (1,1) | (0,2) (0,3) (1,2) (1,3) | (2,0) ... | (2,2) ...
   * vision head_dim 8: rotary dim 4, inv_freq = [1, 10000^(-2/4) = 1/100];
   * row vector [r, r/100, c, c/100], doubled to 8. */
  {
    const int rows[16] = {0, 0, 1, 1, 0, 0, 1, 1, 2, 2, 3, 3, 2, 2, 3, 3};
    const int cols[16] = {0, 1, 0, 1, 2, 3, 2, 3, 0, 1, 0, 1, 2, 3, 2, 3};
    const int32_t lab2[10] = {-100, -100, -100, -100, -100, -100, -100, -100, 3, 4};
    vl_sample s = {10, ids2, lab2, 1, g144, pix};
    vl_batch b;
    CHECK(vl_batch_build(&b, mc, &s, 1) == VL_OK, "build 1x4x4: %s", vl_err_last());
    CHECK(b.P == 16 && b.n_vseg == 1 && b.vseg_offsets[1] == 16, "one segment of 16");
    check_positions(b.positions, 10, 0, 10, &want2[0][0], "batch of (2)");
    double e = 0;
    for (int p = 0; p < 16; p++) {
      const double ang[8] = {rows[p], rows[p] / 100.0, cols[p], cols[p] / 100.0,
                             rows[p], rows[p] / 100.0, cols[p], cols[p] / 100.0};
      for (int d = 0; d < 8; d++)
        e = fmax(e, fabs(b.vrope_cos[p * 8 + d] - cos(ang[d])) +
                        fabs(b.vrope_sin[p * 8 + d] - sin(ang[d])));
    }
    CHECK(e < 1e-6, "vision rope error %g", e);

    /* fast_pos_embed_interpolate, side 8, h = w = 4: linspace(0, 7, 4) in
     * fp32: step = 7/3; i < 2 count up (0, step), i >= 2 count down from 7
     * (7 - step, 7): rows/cols at 0, 2.333, 4.667, 7 -> floors 0, 2, 4, 7;
     * ceils min(floor + 1, 7) = 1, 3, 5, 7.  Bag (idx, weight):
     * (fh*8+fw, (1-dh)(1-dw)), (fh*8+cw, (1-dh)dw), (ch*8+fw, dh(1-dw)),
     * (ch*8+cw, dh*dw). */
    for (int p = 0; p < 16; p++) {
      float sum = b.pos_w[p * 4] + b.pos_w[p * 4 + 1] + b.pos_w[p * 4 + 2] + b.pos_w[p * 4 + 3];
      CHECK(fabsf(sum - 1.0f) < 1e-6f, "weights of patch %d sum to %.9g", p, sum);
    }
    /* patch 0 = (0,0): grid corner 0 with weight 1 */
    const int32_t i0[4] = {0, 1, 8, 9};
    CHECK(!memcmp(b.pos_idx, i0, sizeof i0) && b.pos_w[0] == 1.0f && b.pos_w[1] == 0.0f &&
          b.pos_w[2] == 0.0f && b.pos_w[3] == 0.0f, "first patch");
    /* patch 15 = (3,3): h = w = 7 exactly, floor = ceil = 7 -> row 63 */
    const int32_t i15[4] = {63, 63, 63, 63};
    CHECK(!memcmp(b.pos_idx + 60, i15, sizeof i15) && b.pos_w[60] == 1.0f && b.pos_w[61] == 0.0f,
          "last patch: %d %g", b.pos_idx[60], b.pos_w[60]);
    /* patch 3 = (1,1): h = w = 7/3, floor 2 ceil 3, d = 1/3:
     * idx 18 19 26 27, weights 4/9 2/9 2/9 1/9 */
    const int32_t i3[4] = {18, 19, 26, 27};
    const double w3[4] = {4.0 / 9, 2.0 / 9, 2.0 / 9, 1.0 / 9};
    CHECK(!memcmp(b.pos_idx + 12, i3, sizeof i3), "patch 3 indices %d %d %d %d", b.pos_idx[12],
          b.pos_idx[13], b.pos_idx[14], b.pos_idx[15]);
    for (int k = 0; k < 4; k++)
      CHECK(fabs(b.pos_w[12 + k] - w3[k]) < 1e-6, "patch 3 weight %d = %g", k, b.pos_w[12 + k]);
    /* patch 4 = (0,2): h 0, w = 7 - 7/3 (the counting-down half: in fp32
     * this is not 2 * (7/3)), floor 4 ceil 5: idx 4 5 12 13, weights
     * (1 - dw, dw, 0, 0) with dw = (7 - 7/3) - 4 exactly */
    const int32_t i4[4] = {4, 5, 12, 13};
    const float dw = (7.0f - 7.0f / 3.0f) - 4.0f;
    CHECK(!memcmp(b.pos_idx + 16, i4, sizeof i4), "patch 4 indices");
    CHECK(b.pos_w[17] == dw && b.pos_w[16] == 1.0f - dw && b.pos_w[18] == 0.0f &&
          b.pos_w[19] == 0.0f, "patch 4 weights %.9g %.9g (dw %.9g)", b.pos_w[16], b.pos_w[17], dw);
    vl_batch_free(&b);
  }

  /* (5b) an image with two frames, (2, 2, 2): one merged token per frame.
   * Positions: VS 0; block base 1: t [0,1] + 1, h [0,0] + 1, w [0,0] + 1;
   * max 2 -> VE 3.  cu_seqlens repeat h*w = 4 per frame: [0, 4, 8]; both
   * frames get the same rope rows and the same pos-embed bag. */
  {
    const int32_t ids[4] = {VS, I, I, VE}, lab[4] = {-100, -100, -100, -100};
    const int32_t g[1][3] = {{2, 2, 2}};
    const int32_t want[3][4] = {{0, 1, 2, 3}, {0, 1, 1, 3}, {0, 1, 1, 3}};
    vl_sample s = {4, ids, lab, 1, g, pix};
    vl_batch b;
    CHECK(vl_batch_build(&b, mc, &s, 1) == VL_OK, "two frames: %s", vl_err_last());
    check_positions(b.positions, 4, 0, 4, &want[0][0], "two frames");
    CHECK(b.n_targets == 0 && b.P == 8 && b.n_vseg == 2 && b.vseg_offsets[1] == 4 &&
          b.vseg_offsets[2] == 8, "frame segments");
    CHECK(!memcmp(b.vrope_cos, b.vrope_cos + 4 * 8, 4 * 8 * sizeof(float)) &&
          !memcmp(b.pos_idx, b.pos_idx + 16, 16 * sizeof(int32_t)) &&
          !memcmp(b.pos_w, b.pos_w + 16, 16 * sizeof(float)), "frames repeat");
    /* a 2x2 image spans the whole 8x8 grid: corners 0, 7, 56, 63 */
    CHECK(b.pos_idx[0] == 0 && b.pos_idx[4] == 7 && b.pos_idx[8] == 56 && b.pos_idx[12] == 63,
          "2x2 corners");
    vl_batch_free(&b);
  }

  /* (6b) h == 1 (merge 1): torch.linspace(0, 7, 1) = [0]; w = 3:
   * linspace(0, 7, 3) = 0, 7 - 3.5 = 3.5, 7.  Raster order (merge 1).
   * (0,0): idx 0 1 8 9, w 1 0 0 0; (0,1): floor 3 ceil 4, dw 0.5:
   * idx 3 4 11 12, w .5 .5 0 0; (0,2): idx 7 7 15 15, w 1 0 0 0. */
  {
    vl_model_config m1 = cfg;
    m1.vision.spatial_merge_size = 1;
    const int32_t ids[5] = {VS, I, I, I, VE}, lab[5] = {-100, -100, -100, -100, -100};
    const int32_t g[1][3] = {{1, 1, 3}};
    vl_sample s = {5, ids, lab, 1, g, pix};
    vl_batch b;
    CHECK(vl_batch_build(&b, &m1, &s, 1) == VL_OK, "h = 1: %s", vl_err_last());
    const int32_t want_idx[12] = {0, 1, 8, 9, 3, 4, 11, 12, 7, 7, 15, 15};
    const float want_w[12] = {1, 0, 0, 0, 0.5f, 0.5f, 0, 0, 1, 0, 0, 0};
    CHECK(!memcmp(b.pos_idx, want_idx, sizeof want_idx), "h = 1 indices");
    CHECK(!memcmp(b.pos_w, want_w, sizeof want_w), "h = 1 weights");
    vl_batch_free(&b);
  }

  /* no learned grid (Qwen2-VL): no bag */
  {
    vl_model_config q2 = cfg;
    q2.family = VL_FAMILY_QWEN2_VL;
    q2.vision.num_position_embeddings = 0;
    q2.text.mrope_interleaved = 0;
    const int32_t lab2[10] = {-100, -100, -100, -100, -100, -100, -100, -100, 3, 4};
    vl_sample s = {10, ids2, lab2, 1, g144, pix};
    vl_batch b;
    CHECK(vl_batch_build(&b, &q2, &s, 1) == VL_OK, "qwen2: %s", vl_err_last());
    CHECK(b.pos_idx == NULL && b.pos_w == NULL, "no pos-embed tables");
    check_positions(b.positions, 10, 0, 10, &want2[0][0], "qwen2 positions");
    vl_batch_free(&b);
  }

  /* (7) each input error, named by sample */
  {
    const int32_t ok[3] = {1, 2, 3}, lab[8] = {-100, -100, -100, -100, -100, -100, -100, -100};
    const int32_t big[3] = {1, VOCAB, 2}, neg[3] = {1, -5, 2};
    const int32_t badlab[3] = {-100, VOCAB, -100}, neglab[3] = {-100, -1, -100};
    const int32_t shortrun[7] = {1, VS, I, I, I, VE, 2};
    const int32_t novs[6] = {1, I, I, I, I, VE};
    const int32_t video[4] = {1, VS, VID, VE};
    const int32_t g344[1][3] = {{1, 3, 4}}, g044[1][3] = {{0, 4, 4}}, g14m[1][3] = {{1, 4, -2}};
    vl_sample s[2] = {{3, ok, lab, 0, NULL, NULL}, {3, big, lab, 0, NULL, NULL}};
    expect_fail(mc, s, 2, "sample 1 token 1: id 64 is outside the vocabulary", "id >= vocab");
    s[1].ids = neg;
    expect_fail(mc, s, 2, "sample 1 token 1: id -5", "id < 0");
    s[1] = (vl_sample){3, ok, badlab, 0, NULL, NULL};
    expect_fail(mc, s, 2, "sample 1 token 1: label 64", "label >= vocab");
    s[1].labels = neglab;
    expect_fail(mc, s, 2, "sample 1 token 1: label -1", "label < 0, not -100");
    s[1] = (vl_sample){7, shortrun, lab, 1, g144, pix};
    expect_fail(mc, s, 2, "sample 1: image 0: its image-pad run at token 2 has 3 tokens",
                "run too short");
    s[1] = (vl_sample){10, ids2, lab, 0, NULL, NULL};
    expect_fail(mc, s, 2, "sample 1: more image-pad runs", "more runs than images");
    s[1] = (vl_sample){3, ok, lab, 1, g144, pix};
    expect_fail(mc, s, 2, "sample 1: 0 image-pad run(s) for 1 image(s)", "fewer runs than images");
    s[1] = (vl_sample){6, novs, lab, 1, g144, pix};
    expect_fail(mc, s, 2, "sample 1: the image-pad run at token 1 does not follow",
                "run without vision_start");
    s[1] = (vl_sample){4, video, lab, 0, NULL, NULL};
    expect_fail(mc, s, 2, "sample 1: a video", "video");
    s[1] = (vl_sample){10, ids2, lab, 1, g344, pix};
    expect_fail(mc, s, 2, "sample 1: image 0: grid (1, 3, 4): h and w must be divisible",
                "h not divisible by merge");
    s[1].grid_thw = g044;
    expect_fail(mc, s, 2, "sample 1: image 0: grid (0, 4, 4) has a size <= 0", "t = 0");
    s[1].grid_thw = g14m;
    expect_fail(mc, s, 2, "size <= 0", "w < 0");
    s[1] = (vl_sample){0, ok, lab, 0, NULL, NULL};
    expect_fail(mc, s, 2, "sample 1 has 0 tokens", "empty sample");
    s[1] = (vl_sample){10, ids2, lab, 1, g144, NULL};
    expect_fail(mc, s, 2, "sample 1: 1 image(s) but no grids or pixels", "no pixels");
    /* the exposed position function names no sample */
    CHECK(vl_batch_mrope_positions(mc, shortrun, 7, g144, 1, pos) == VL_EINVAL &&
              strncmp(vl_err_last(), "image 0: its image-pad run", 26) == 0,
          "positions alone: %s", vl_err_last());
  }

  /* an empty batch is valid and freeable; a zeroed struct frees safely */
  {
    vl_batch b;
    CHECK(vl_batch_build(&b, mc, NULL, 0) == VL_OK && b.T == 0 && b.P == 0 &&
          b.seq_offsets[0] == 0 && b.vseg_offsets[0] == 0, "empty batch");
    vl_batch_free(&b);
    vl_batch zero;
    memset(&zero, 0, sizeof zero);
    vl_batch_free(&zero);
    CHECK(zero.ids == NULL && zero.T == 0, "zeroed struct");
  }
  TEST_END();
}
