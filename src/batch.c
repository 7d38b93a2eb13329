/* batch: one micro-batch prepared on the host (see batch.h).  Every table is
 * computed the way Hugging Face's Qwen-VL code computes it (get_rope_index,
 * the text and vision rotary embeddings, fast_pos_embed_interpolate, the
 * causal-LM label shift), with fp32 arithmetic where HF uses fp32, so that
 * the backends see the same numbers HF would. */
#include "batch.h"

#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "err.h"

#define IGNORE_INDEX (-100) /* HF's ignore_index: no loss at this position */

/* "sample 3: " when the failing sample is known, "" otherwise (the exposed
 * position function is also called on a lone sequence). */
static const char *where(char *buf, size_t n, int sample) {
  if (sample < 0) buf[0] = '\0';
  else snprintf(buf, n, "sample %d: ", sample);
  return buf;
}

/* A grid (t, h, w) in patches: positive, h and w whole merge windows, and
 * t*h*w small enough to count in an int. */
static int check_grid(const int32_t g[3], int merge, int sample, int image) {
  char w[32];
  if (g[0] <= 0 || g[1] <= 0 || g[2] <= 0)
    VL_ERROR(VL_EINVAL, "%simage %d: grid (%d, %d, %d) has a size <= 0",
             where(w, sizeof w, sample), image, (int)g[0], (int)g[1], (int)g[2]);
  if (g[1] % merge || g[2] % merge)
    VL_ERROR(VL_EINVAL, "%simage %d: grid (%d, %d, %d): h and w must be divisible by "
             "vision.spatial_merge_size %d", where(w, sizeof w, sample), image, (int)g[0],
             (int)g[1], (int)g[2], merge);
  if ((int64_t)g[0] * g[1] * g[2] > INT_MAX)
    VL_ERROR(VL_EINVAL, "%simage %d: grid (%d, %d, %d) has too many patches",
             where(w, sizeof w, sample), image, (int)g[0], (int)g[1], (int)g[2]);
  return VL_OK;
}

/* HF get_rope_index on one unpadded sequence, written to pos[a * stride + t]
 * (a = 0 t, 1 h, 2 w).  Text tokens count up from the last maximum + 1 on all
 * three axes; the k-th run of image-pad tokens is image k's merged grid
 * (t, h/m, w/m) in raster order, each axis offset by the position the run's
 * first token would have had as text.  HF finds images through
 * <|vision_start|> followed by <|image_pad|> and takes grid-many tokens from
 * the next image-pad token, so we require exactly that shape: each maximal
 * run follows <|vision_start|> and has the grid's length, and there are as
 * many runs as images.  Video tokens are never image tokens; a video after
 * <|vision_start|> is refused (videos are not supported yet). */
static int mrope_fill(const vl_model_config *cfg, const int32_t *ids, int n,
                      const int32_t (*grid)[3], int n_images, int32_t *pos, size_t stride,
                      int sample) {
  const int m = cfg->vision.spatial_merge_size;
  const int32_t img = cfg->tokens.image_token_id, vid = cfg->tokens.video_token_id;
  const int32_t vs = cfg->tokens.vision_start_token_id;
  char w[32];
  where(w, sizeof w, sample);
  if (n_images > 0 && !grid) VL_ERROR(VL_EINVAL, "%s%d image(s) but no grids", w, n_images);
  for (int k = 0; k < n_images; k++) VL_CALL(check_grid(grid[k], m, sample, k));
  for (int t = 0; t + 1 < n; t++)
    if (ids[t] == vs && ids[t + 1] == vid)
      VL_ERROR(VL_EINVAL, "%sa video (token %d after <|vision_start|> at token %d): videos "
               "are not supported", w, (int)vid, t);
  int32_t *pt = pos, *ph = pos + stride, *pw = pos + 2 * stride;
  int32_t next = 0; /* position of the next text token: last maximum + 1 */
  int im = 0, st = 0;
  for (;;) {
    int ed = st;
    while (ed < n && ids[ed] != img) ed++;
    for (int t = st; t < ed; t++) pt[t] = ph[t] = pw[t] = next + (t - st);
    next += ed - st;
    if (ed == n) break;
    int len = 0;
    while (ed + len < n && ids[ed + len] == img) len++;
    if (im == n_images)
      VL_ERROR(VL_EINVAL, "%smore image-pad runs (token %d) than its %d image(s): a run "
               "starts at token %d", w, (int)img, n_images, ed);
    if (ed == 0 || ids[ed - 1] != vs)
      VL_ERROR(VL_EINVAL, "%sthe image-pad run at token %d does not follow "
               "<|vision_start|> (token %d)", w, ed, (int)vs);
    const int gt = grid[im][0], gh = grid[im][1] / m, gw = grid[im][2] / m;
    if (len != gt * gh * gw)
      VL_ERROR(VL_EINVAL, "%simage %d: its image-pad run at token %d has %d tokens, but "
               "grid (%d, %d, %d) with merge %d needs %d", w, im, ed, len, (int)grid[im][0],
               (int)grid[im][1], (int)grid[im][2], m, gt * gh * gw);
    for (int a = 0; a < gt; a++)
      for (int r = 0; r < gh; r++)
        for (int c = 0; c < gw; c++) {
          const int t = ed + (a * gh + r) * gw + c;
          pt[t] = next + a;
          ph[t] = next + r;
          pw[t] = next + c;
        }
    int span = gt > gh ? gt : gh;
    if (gw > span) span = gw;
    next += span; /* the block's maximum + 1 */
    im++;
    st = ed + len;
  }
  if (im != n_images)
    VL_ERROR(VL_EINVAL, "%s%d image-pad run(s) for %d image(s)", w, im, n_images);
  return VL_OK;
}

int vl_batch_mrope_positions(const vl_model_config *cfg, const int32_t *ids, int n,
                             const int32_t (*grid_thw)[3], int n_images, int32_t *pos) {
  VL_CALL(mrope_fill(cfg, ids, n, grid_thw, n_images, pos, (size_t)n, -1));
  return VL_OK;
}

/* Rotary inverse frequency k of a table of width dim, as torch builds it in
 * fp32: 1 / theta ** (float(2k) / dim). */
static float inv_freq(int k, int dim, float theta) {
  const float e = (float)(2 * k) / (float)dim;
  return 1.0f / powf(theta, e);
}

/* The axis (0 t, 1 h, 2 w) whose position drives frequency j < head_dim/2.
 * Interleaved (Qwen3-VL apply_interleaved_mrope): h at j = 1, 4, 7, ... below
 * 3*s1, w at j = 2, 5, 8, ... below 3*s2, t elsewhere.  Sectioned (Qwen2-VL
 * apply_multimodal_rotary_pos_emb): HF splits the doubled head_dim by
 * mrope_section*2 and takes chunk i from axis i%3, which is this rule applied
 * to j mod head_dim/2: j < s0 t, j < s0+s1 h, else w. */
static int mrope_axis(const vl_text_config *tc, int j) {
  const int *s = tc->mrope_section;
  if (tc->mrope_interleaved) {
    if (j % 3 == 1 && j < 3 * s[1]) return 1;
    if (j % 3 == 2 && j < 3 * s[2]) return 2;
    return 0;
  }
  if (j < s[0]) return 0;
  if (j < s[0] + s[1]) return 1;
  return 2;
}

/* cos/sin (n, head_dim): angle = float(pos[axis(j)]) * inv_freq[j] in fp32,
 * columns j and j + head_dim/2 equal (HF: emb = cat(freqs, freqs)); HF's
 * attention_scaling is 1 for the default rope. */
void vl_batch_text_rope(const vl_text_config *tc, const int32_t *pos, int n, int pos_stride,
                        float *cos_out, float *sin_out) {
  const int hd = tc->head_dim, half = hd / 2;
  for (int j = 0; j < half; j++) {
    const float inv = inv_freq(j, hd, (float)tc->rope_theta);
    const int32_t *p = pos + (size_t)mrope_axis(tc, j) * pos_stride;
    for (int t = 0; t < n; t++) {
      const float ang = (float)p[t] * inv;
      const float c = cosf(ang), s = sinf(ang);
      cos_out[(size_t)t * hd + j] = cos_out[(size_t)t * hd + j + half] = c;
      sin_out[(size_t)t * hd + j] = sin_out[(size_t)t * hd + j + half] = s;
    }
  }
}

/* Element i of torch.linspace(0, end, steps) in fp32 (torch's formula: step
 * = end / (steps - 1); the first half counts up from 0, the second half down
 * from end; one step gives [0]). */
static float linspace_at(float end, int steps, int i) {
  if (steps == 1) return 0.0f;
  const float step = end / (float)(steps - 1);
  if (i < steps / 2) return step * (float)i;
  return end - step * (float)(steps - 1 - i);
}

/* Row and column (in patches) of patch i of a frame of width w, in HF's
 * merge-window order: windows of m x m patches in raster order, raster order
 * inside each window. */
static void merge_order(int i, int w, int m, int *row, int *col) {
  const int win = i / (m * m), in = i % (m * m);
  *row = (win / (w / m)) * m + in / m;
  *col = (win % (w / m)) * m + in % m;
}

/* Vision tables of one image (t, h, w) whose first patch is row 0 of the
 * arrays passed: rope cos/sin (t*h*w, vhd) and, when pidx is not NULL, the
 * bilinear bag (t*h*w, 4) over a side x side learned grid.  Frames repeat. */
static void vision_image(const vl_vision_config *v, const int32_t g[3], float *vcos,
                         float *vsin, int32_t *pidx, float *pw, int side) {
  const int m = v->spatial_merge_size, gt = g[0], gh = g[1], gw = g[2], hw = gh * gw;
  const int vhd = v->hidden_size / v->num_heads, q = vhd / 4;
  /* HF Qwen*VisionRotaryEmbedding(dim = vhd/2, theta 10000): q frequencies;
   * a patch's vector is [row * inv, col * inv] (vhd/2), doubled to vhd. */
  for (int k = 0; k < q; k++) {
    const float inv = inv_freq(k, vhd / 2, 10000.0f);
    for (int i = 0; i < hw; i++) {
      int row, col;
      merge_order(i, gw, m, &row, &col);
      const float ar = (float)row * inv, ac = (float)col * inv;
      float *c = vcos + (size_t)i * vhd, *s = vsin + (size_t)i * vhd;
      c[k] = c[k + 2 * q] = cosf(ar);
      s[k] = s[k + 2 * q] = sinf(ar);
      c[k + q] = c[k + 3 * q] = cosf(ac);
      s[k + q] = s[k + 3 * q] = sinf(ac);
    }
  }
  if (pidx) {
    /* HF fast_pos_embed_interpolate: the h x h grid's rows and columns spread
     * over linspace(0, side-1); four neighbours (floor/ceil of each) with
     * weights (1-dh)(1-dw), (1-dh)dw, dh(1-dw), dh*dw, in fp32. */
    for (int i = 0; i < hw; i++) {
      int row, col;
      merge_order(i, gw, m, &row, &col);
      const float hi = linspace_at((float)(side - 1), gh, row);
      const float wi = linspace_at((float)(side - 1), gw, col);
      const int hf = (int)hi, wf = (int)wi;
      const int hc = hf + 1 < side - 1 ? hf + 1 : side - 1;
      const int wc = wf + 1 < side - 1 ? wf + 1 : side - 1;
      const float dh = hi - (float)hf, dw = wi - (float)wf;
      int32_t *x = pidx + (size_t)i * 4;
      float *y = pw + (size_t)i * 4;
      x[0] = hf * side + wf; y[0] = (1.0f - dh) * (1.0f - dw);
      x[1] = hf * side + wc; y[1] = (1.0f - dh) * dw;
      x[2] = hc * side + wf; y[2] = dh * (1.0f - dw);
      x[3] = hc * side + wc; y[3] = dh * dw;
    }
  }
  for (int a = 1; a < gt; a++) {
    const size_t o = (size_t)a * hw;
    memcpy(vcos + o * vhd, vcos, (size_t)hw * vhd * sizeof(float));
    memcpy(vsin + o * vhd, vsin, (size_t)hw * vhd * sizeof(float));
    if (pidx) {
      memcpy(pidx + o * 4, pidx, (size_t)hw * 4 * sizeof(int32_t));
      memcpy(pw + o * 4, pw, (size_t)hw * 4 * sizeof(float));
    }
  }
}

/* int(sqrt(n)) exactly, as HF's int(num_position_embeddings ** 0.5). */
static int grid_side(int n) {
  int s = (int)sqrt((double)n);
  while (s > 0 && (int64_t)s * s > n) s--;
  while ((int64_t)(s + 1) * (s + 1) <= n) s++;
  return s;
}

void vl_batch_free(vl_batch *b) {
  free(b->seq_offsets); free(b->ids); free(b->targets); free(b->positions);
  free(b->rope_cos); free(b->rope_sin); free(b->visual_pos); free(b->pixels);
  free(b->vseg_offsets); free(b->vrope_cos); free(b->vrope_sin); free(b->pos_idx);
  free(b->pos_w);
  memset(b, 0, sizeof *b);
}

/* Checks one sample's tokens, labels and grids; adds its sizes. */
static int check_sample(const vl_model_config *cfg, const vl_sample *x, int i, int64_t *T,
                        int64_t *P, int64_t *frames, int64_t *n_visual) {
  const int vocab = cfg->text.vocab_size, m = cfg->vision.spatial_merge_size;
  if (x->n_tokens <= 0) VL_ERROR(VL_EINVAL, "sample %d has %d tokens", i, x->n_tokens);
  if (!x->ids || !x->labels) VL_ERROR(VL_EINVAL, "sample %d has no token ids or labels", i);
  if (x->n_images < 0) VL_ERROR(VL_EINVAL, "sample %d: %d images", i, x->n_images);
  if (x->n_images > 0 && (!x->grid_thw || !x->pixels))
    VL_ERROR(VL_EINVAL, "sample %d: %d image(s) but no grids or pixels", i, x->n_images);
  for (int t = 0; t < x->n_tokens; t++) {
    const int32_t id = x->ids[t];
    if (id < 0 || id >= vocab)
      VL_ERROR(VL_EINVAL, "sample %d token %d: id %d is outside the vocabulary [0, %d)", i, t,
               (int)id, vocab);
    if (id == cfg->tokens.image_token_id) (*n_visual)++;
    /* labels[0] is never a target (the shift drops it) */
    const int32_t l = x->labels[t];
    if (t > 0 && l != IGNORE_INDEX && (l < 0 || l >= vocab))
      VL_ERROR(VL_EINVAL, "sample %d token %d: label %d is neither -100 nor in [0, %d)", i, t,
               (int)l, vocab);
  }
  for (int k = 0; k < x->n_images; k++) {
    const int32_t *g = x->grid_thw[k];
    VL_CALL(check_grid(g, m, i, k));
    *P += (int64_t)g[0] * g[1] * g[2];
    *frames += g[0];
  }
  *T += x->n_tokens;
  return VL_OK;
}

int vl_batch_build(vl_batch *b, const vl_model_config *cfg, const vl_sample *s, int n) {
  memset(b, 0, sizeof *b);
  const vl_vision_config *v = &cfg->vision;
  const int m = v->spatial_merge_size, hd = cfg->text.head_dim;
  if (n < 0 || (n > 0 && !s)) VL_ERROR(VL_EINVAL, "%d samples", n);
  if (m <= 0 || v->num_heads <= 0 || (v->hidden_size / v->num_heads) % 4 || hd % 2)
    VL_ERROR(VL_EINVAL, "model: merge size %d, vision head_dim %d (a multiple of 4) and text "
             "head_dim %d (even) do not make rope tables", m,
             v->num_heads > 0 ? v->hidden_size / v->num_heads : 0, hd);
  const int vhd = v->hidden_size / v->num_heads;
  int64_t T64 = 0, P64 = 0, F64 = 0, V64 = 0;
  for (int i = 0; i < n; i++) VL_CALL(check_sample(cfg, &s[i], i, &T64, &P64, &F64, &V64));
  if (T64 > INT_MAX || P64 > INT_MAX)
    VL_ERROR(VL_EINVAL, "batch of %lld tokens and %lld patches is too large", (long long)T64,
             (long long)P64);
  /* per-sample runs are checked below; a mismatch here is caught there too */
  const int T = (int)T64, P = (int)P64, frames = (int)F64;
  b->T = T; b->n_seq = n; b->P = P; b->n_vseg = frames; b->n_visual = (int)V64;
  b->patch_dim = v->in_channels * v->temporal_patch_size * v->patch_size * v->patch_size;
  const int side = v->num_position_embeddings > 0 ? grid_side(v->num_position_embeddings) : 0;
  int rc = VL_OK;
#define ALLOC(ptr, count) \
  VL_CALL_GOTO(rc, fail, vl_calloc((void **)&(ptr), (size_t)(count), sizeof *(ptr), "batch " #ptr))
  ALLOC(b->seq_offsets, (size_t)n + 1);
  ALLOC(b->ids, T);
  ALLOC(b->targets, T);
  ALLOC(b->positions, 3 * (size_t)T);
  ALLOC(b->rope_cos, (size_t)T * hd);
  ALLOC(b->rope_sin, (size_t)T * hd);
  ALLOC(b->visual_pos, b->n_visual);
  ALLOC(b->pixels, (size_t)P * b->patch_dim);
  ALLOC(b->vseg_offsets, (size_t)frames + 1);
  ALLOC(b->vrope_cos, (size_t)P * vhd);
  ALLOC(b->vrope_sin, (size_t)P * vhd);
  if (side > 0) {
    ALLOC(b->pos_idx, (size_t)P * 4);
    ALLOC(b->pos_w, (size_t)P * 4);
  }
#undef ALLOC
  int off = 0, p = 0, seg = 0, nv = 0;
  for (int i = 0; i < n; i++) {
    const vl_sample *x = &s[i];
    const int len = x->n_tokens;
    b->seq_offsets[i] = off;
    memcpy(b->ids + off, x->ids, (size_t)len * sizeof(int32_t));
    /* HF ForCausalLMLoss: pad labels with -100 on the right, shift by one;
     * within a packed sample that makes its last token's target -100 */
    for (int t = 0; t < len; t++) {
      const int32_t y = t + 1 < len ? x->labels[t + 1] : IGNORE_INDEX;
      b->targets[off + t] = y;
      b->n_targets += y >= 0;
      if (x->ids[t] == cfg->tokens.image_token_id) b->visual_pos[nv++] = off + t;
    }
    VL_CALL_GOTO(rc, fail, mrope_fill(cfg, x->ids, len, x->grid_thw, x->n_images,
                                      b->positions + off, (size_t)T, i));
    const int p0 = p;
    for (int k = 0; k < x->n_images; k++) {
      const int32_t *g = x->grid_thw[k];
      for (int a = 0; a < g[0]; a++) b->vseg_offsets[seg++] = p + a * g[1] * g[2];
      vision_image(v, g, b->vrope_cos + (size_t)p * vhd, b->vrope_sin + (size_t)p * vhd,
                   side > 0 ? b->pos_idx + (size_t)p * 4 : NULL,
                   side > 0 ? b->pos_w + (size_t)p * 4 : NULL, side);
      p += g[0] * g[1] * g[2];
    }
    if (p > p0)
      memcpy(b->pixels + (size_t)p0 * b->patch_dim, x->pixels,
             (size_t)(p - p0) * b->patch_dim * sizeof(float));
    off += len;
  }
  b->seq_offsets[n] = off;
  b->vseg_offsets[frames] = P;
  vl_batch_text_rope(&cfg->text, b->positions, T, T, b->rope_cos, b->rope_sin);
  return VL_OK;
fail:
  vl_batch_free(b);
  return rc;
}
