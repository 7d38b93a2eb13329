/* batch: host-side micro-batch preparation, exactly as HF Qwen-VL computes
 * positions and tables (see batch.h).  fp32 arithmetic where HF uses fp32. */
#include "batch.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "err.h"

/* HF get_rope_index for one sample (attention mask all ones). */
int vl_batch_mrope_positions(const vl_model_config *cfg, const int32_t *ids, int n,
                             const int32_t (*grid)[3], int n_images, int32_t *pos) {
  const int m = cfg->vision.spatial_merge_size;
  const int32_t img = cfg->tokens.image_token_id;
  int st = 0, next = 0; /* next: first position id after what was placed */
  for (int im = 0; im < n_images; im++) {
    int ed = st;
    while (ed < n && ids[ed] != img) ed++;
    if (ed == n)
      VL_ERROR(VL_EINVAL, "image %d has no <|image_pad|> run (token %d) in the sample",
               im, (int)img);
    const int gt = grid[im][0], gh = grid[im][1] / m, gw = grid[im][2] / m;
    const int run = gt * gh * gw;
    int len = 0;
    while (ed + len < n && ids[ed + len] == img) len++;
    if (len != run)
      VL_ERROR(VL_EINVAL, "image %d: %d <|image_pad|> tokens, but its grid (%d, %d, %d) "
               "needs %d", im, len, grid[im][0], grid[im][1], grid[im][2], run);
    for (int t = st; t < ed; t++) pos[t] = pos[n + t] = pos[2 * n + t] = next + (t - st);
    const int base = next + (ed - st);
    int mx = base;
    for (int a = 0; a < gt; a++)
      for (int b = 0; b < gh; b++)
        for (int c = 0; c < gw; c++) {
          const int t = ed + (a * gh + b) * gw + c;
          pos[t] = base + a;
          pos[n + t] = base + b;
          pos[2 * n + t] = base + c;
          if (base + a > mx) mx = base + a;
          if (base + b > mx) mx = base + b;
          if (base + c > mx) mx = base + c;
        }
    next = mx + 1;
    st = ed + run;
  }
  for (int t = st; t < n; t++) pos[t] = pos[n + t] = pos[2 * n + t] = next + (t - st);
  for (int t = st; t < n; t++)
    if (ids[t] == img)
      VL_ERROR(VL_EINVAL, "more <|image_pad|> runs than the %d image(s) of the sample", n_images);
  return VL_OK;
}

/* inv_freq[j] = 1 / theta^(2j/dim) in fp32, as torch computes it */
static void inv_freqs(float *inv, int dim, double theta) {
  for (int j = 0; j < dim / 2; j++) {
    float e = (float)(2 * j) / (float)dim;
    inv[j] = 1.0f / powf((float)theta, e);
  }
}

/* which of t/h/w drives frequency j (< head_dim/2) */
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

void vl_batch_text_rope(const vl_text_config *tc, const int32_t *pos, int n, int pos_stride,
                        float *cos_out, float *sin_out) {
  const int hd = tc->head_dim, half = hd / 2;
  float inv[512];
  int axis[512];
  inv_freqs(inv, hd, tc->rope_theta);
  for (int j = 0; j < half; j++) axis[j] = mrope_axis(tc, j);
  for (int t = 0; t < n; t++)
    for (int j = 0; j < half; j++) {
      const float ang = (float)pos[(size_t)axis[j] * pos_stride + t] * inv[j];
      const float c = cosf(ang), s = sinf(ang);
      cos_out[(size_t)t * hd + j] = cos_out[(size_t)t * hd + j + half] = c;
      sin_out[(size_t)t * hd + j] = sin_out[(size_t)t * hd + j + half] = s;
    }
}

/* torch.linspace(0, end, steps) in fp32 */
static float linspace_at(float end, int steps, int i) {
  if (steps == 1) return 0.0f;
  const float step = end / (float)(steps - 1);
  if (i < steps / 2) return step * (float)i;
  return end - step * (float)(steps - 1 - i);
}

/* Vision rope rows, pos-embed bag and pixels of one image starting at patch p0. */
static void vision_tables(const vl_model_config *cfg, const int32_t g[3], int p0,
                          vl_batch *b) {
  const vl_vision_config *v = &cfg->vision;
  const int m = v->spatial_merge_size, gt = g[0], gh = g[1], gw = g[2];
  const int vhd = v->hidden_size / v->num_heads, quarter = vhd / 4;
  float inv[256];
  inv_freqs(inv, vhd / 2, 10000.0);
  const int side = (int)lrintf(sqrtf((float)v->num_position_embeddings));
  int p = p0;
  for (int a = 0; a < gt; a++)
    for (int br = 0; br < gh / m; br++)
      for (int bc = 0; bc < gw / m; bc++)
        for (int ir = 0; ir < m; ir++)
          for (int ic = 0; ic < m; ic++, p++) {
            const int row = br * m + ir, col = bc * m + ic;
            float *c = b->vrope_cos + (size_t)p * vhd, *s = b->vrope_sin + (size_t)p * vhd;
            for (int k = 0; k < quarter; k++) {
              const float ar = (float)row * inv[k], ac = (float)col * inv[k];
              c[k] = c[k + 2 * quarter] = cosf(ar);
              s[k] = s[k + 2 * quarter] = sinf(ar);
              c[k + quarter] = c[k + 3 * quarter] = cosf(ac);
              s[k + quarter] = s[k + 3 * quarter] = sinf(ac);
            }
            if (b->pos_idx) {
              const float hi = linspace_at((float)(side - 1), gh, row);
              const float wi = linspace_at((float)(side - 1), gw, col);
              const int hf = (int)hi, wf = (int)wi;
              const int hc = hf + 1 < side - 1 ? hf + 1 : side - 1;
              const int wc = wf + 1 < side - 1 ? wf + 1 : side - 1;
              const float dh = hi - (float)hf, dw = wi - (float)wf;
              int32_t *idx = b->pos_idx + (size_t)p * 4;
              float *w = b->pos_w + (size_t)p * 4;
              idx[0] = hf * side + wf; w[0] = (1.0f - dh) * (1.0f - dw);
              idx[1] = hf * side + wc; w[1] = (1.0f - dh) * dw;
              idx[2] = hc * side + wf; w[2] = dh * (1.0f - dw);
              idx[3] = hc * side + wc; w[3] = dh * dw;
            }
          }
}

void vl_batch_free(vl_batch *b) {
  free(b->seq_offsets); free(b->ids); free(b->targets); free(b->positions);
  free(b->rope_cos); free(b->rope_sin); free(b->visual_pos); free(b->pixels);
  free(b->vseg_offsets); free(b->vrope_cos); free(b->vrope_sin); free(b->pos_idx);
  free(b->pos_w);
  memset(b, 0, sizeof *b);
}

int vl_batch_build(vl_batch *b, const vl_model_config *cfg, const vl_sample *s, int n) {
  memset(b, 0, sizeof *b);
  const vl_vision_config *v = &cfg->vision;
  const int m = v->spatial_merge_size, u = m * m;
  const int hd = cfg->text.head_dim, vhd = v->hidden_size / v->num_heads;
  b->patch_dim = v->in_channels * v->temporal_patch_size * v->patch_size * v->patch_size;
  int T = 0, P = 0, nv = 0, nimg_frames = 0;
  for (int i = 0; i < n; i++) {
    if (s[i].n_tokens <= 0) VL_ERROR(VL_EINVAL, "sample %d has no tokens", i);
    T += s[i].n_tokens;
    for (int k = 0; k < s[i].n_images; k++) {
      const int32_t *g = s[i].grid_thw[k];
      if (g[0] <= 0 || g[1] <= 0 || g[2] <= 0 || g[1] % m || g[2] % m)
        VL_ERROR(VL_EINVAL, "sample %d image %d: grid (%d, %d, %d) must be positive with h and w "
                 "divisible by the merge size %d", i, k, g[0], g[1], g[2], m);
      P += g[0] * g[1] * g[2];
      nimg_frames += g[0];
    }
    for (int t = 0; t < s[i].n_tokens; t++) {
      if (s[i].ids[t] < 0 || s[i].ids[t] >= cfg->text.vocab_size)
        VL_ERROR(VL_EINVAL, "sample %d token %d: id %d outside the vocabulary [0, %d)", i, t,
                 (int)s[i].ids[t], cfg->text.vocab_size);
      if (s[i].ids[t] == cfg->tokens.image_token_id) nv++;
    }
  }
  if (nv * u != P)
    VL_ERROR(VL_EINVAL, "the batch has %d <|image_pad|> tokens but its images give %d "
             "merged tokens", nv, P / u);
  b->T = T; b->n_seq = n; b->P = P; b->n_visual = nv; b->n_vseg = nimg_frames;
  int rc = VL_OK;
#define ALLOC(ptr, count) \
  VL_CALL_GOTO(rc, fail, vl_calloc((void **)&(ptr), (size_t)(count) + 1, sizeof *(ptr), #ptr))
  ALLOC(b->seq_offsets, n + 1);
  ALLOC(b->ids, T);
  ALLOC(b->targets, T);
  ALLOC(b->positions, 3 * T);
  ALLOC(b->rope_cos, (size_t)T * hd);
  ALLOC(b->rope_sin, (size_t)T * hd);
  ALLOC(b->visual_pos, nv);
  ALLOC(b->pixels, (size_t)P * b->patch_dim);
  ALLOC(b->vseg_offsets, nimg_frames + 1);
  ALLOC(b->vrope_cos, (size_t)P * vhd);
  ALLOC(b->vrope_sin, (size_t)P * vhd);
  if (v->num_position_embeddings > 0) {
    ALLOC(b->pos_idx, (size_t)P * 4);
    ALLOC(b->pos_w, (size_t)P * 4);
  }
#undef ALLOC
  int32_t *pos_one = NULL;
  int off = 0, p = 0, vseg = 0, vi = 0;
  for (int i = 0; i < n; i++) {
    const int len = s[i].n_tokens;
    b->seq_offsets[i] = off;
    memcpy(b->ids + off, s[i].ids, (size_t)len * sizeof(int32_t));
    for (int t = 0; t < len; t++) {
      b->targets[off + t] = t + 1 < len ? s[i].labels[t + 1] : -100;
      if (b->targets[off + t] >= cfg->text.vocab_size)
        VL_ERROR_GOTO(rc, fail, VL_EINVAL, "sample %d: label %d outside the vocabulary", i,
                      (int)b->targets[off + t]);
      if (b->targets[off + t] >= 0) b->n_targets++;
      if (s[i].ids[t] == cfg->tokens.image_token_id) b->visual_pos[vi++] = off + t;
    }
    VL_CALL_GOTO(rc, fail, vl_calloc((void **)&pos_one, 3 * (size_t)len, sizeof(int32_t), "positions"));
    rc = vl_batch_mrope_positions(cfg, s[i].ids, len, s[i].grid_thw, s[i].n_images, pos_one);
    if (rc) {
      char why[512];
      snprintf(why, sizeof why, "%s", vl_err_last());
      vl_err_raise(rc, __FILE__, __LINE__, __func__, "sample %d: %s", i, why);
      free(pos_one);
      goto fail;
    }
    for (int a = 0; a < 3; a++)
      memcpy(b->positions + (size_t)a * T + off, pos_one + (size_t)a * len, (size_t)len * sizeof(int32_t));
    free(pos_one);
    pos_one = NULL;
    /* images */
    size_t rows = 0;
    for (int k = 0; k < s[i].n_images; k++) {
      const int32_t *g = s[i].grid_thw[k];
      vision_tables(cfg, g, p, b);
      for (int a = 0; a < g[0]; a++) {
        b->vseg_offsets[vseg] = p + a * g[1] * g[2];
        vseg++;
      }
      p += g[0] * g[1] * g[2];
      rows += (size_t)g[0] * g[1] * g[2];
    }
    if (rows)
      memcpy(b->pixels + (size_t)(p - (int)rows) * b->patch_dim, s[i].pixels,
             rows * b->patch_dim * sizeof(float));
    off += len;
  }
  b->seq_offsets[n] = off;
  b->vseg_offsets[nimg_frames] = P;
  vl_batch_text_rope(&cfg->text, b->positions, T, T, b->rope_cos, b->rope_sin);
  return VL_OK;
fail:
  vl_batch_free(b);
  return rc;
}
