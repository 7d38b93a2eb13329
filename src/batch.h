/* batch: one micro-batch prepared on the host — everything the forward pass
 * needs besides the weights, computed from the samples' token ids, labels
 * and image grids exactly as Hugging Face's Qwen-VL model computes it.
 *
 * Owns: packing several samples into one token stream with per-sample
 * attention segments (equivalent to HF's right padding + attention mask),
 * the shifted loss targets, M-RoPE position ids (HF get_rope_index) and the
 * text rope tables (interleaved for Qwen3-VL, sectioned for Qwen2-VL), the
 * vision segments (one per image frame, HF cu_seqlens), the vision 2D rope
 * tables (HF rot_pos_emb, merge-window order), the bilinear position-embedding
 * interpolation indices and weights (HF fast_pos_embed_interpolate), and the
 * positions of image tokens in the packed stream.
 * Does not own: reading samples from disk (dataset), moving to a backend.
 */
#ifndef VL_BATCH_H
#define VL_BATCH_H

#include <stdint.h>

#include "config.h"

/* One training sample as stored: token ids, labels (the id to predict AT this
 * position in HF's convention, i.e. labels == ids where supervised, -100
 * elsewhere; the batch shifts them), and its images in order of their
 * placeholder runs.  pixels: sum over images of t*h*w rows of
 * in_ch*temporal*patch*patch floats, the HF image processor's pixel_values. */
typedef struct {
  int n_tokens;
  const int32_t *ids;
  const int32_t *labels;
  int n_images;
  const int32_t (*grid_thw)[3];
  const float *pixels;
} vl_sample;

typedef struct {
  /* ---- LLM stream (T tokens, n_seq samples) ---- */
  int T;
  int n_seq;
  int32_t *seq_offsets;   /* (n_seq + 1) */
  int32_t *ids;           /* (T) */
  int32_t *targets;       /* (T) next-token target, -100 = no loss */
  int n_targets;          /* targets >= 0 */
  int32_t *positions;     /* (3, T) M-RoPE t/h/w position ids */
  float *rope_cos;        /* (T, head_dim) */
  float *rope_sin;        /* (T, head_dim) */
  int n_visual;           /* image-pad tokens = merged visual tokens */
  int32_t *visual_pos;    /* (n_visual) positions in the stream, ascending */

  /* ---- vision tower (P patches) ---- */
  int P;
  int patch_dim;          /* in_ch * temporal * patch^2 */
  float *pixels;          /* (P, patch_dim) */
  int n_vseg;             /* frames */
  int32_t *vseg_offsets;  /* (n_vseg + 1) */
  float *vrope_cos;       /* (P, vision head_dim) */
  float *vrope_sin;
  int32_t *pos_idx;       /* (P, 4) rows of pos_embed, NULL when no learned grid */
  float *pos_w;           /* (P, 4) bilinear weights */
} vl_batch;

/* Builds the batch; checks ids and labels (-100 or < vocab_size), grids, and
 * that each image's pad run follows <|vision_start|> with t*h*w/merge^2
 * tokens; VL_EINVAL naming the sample.  On failure *b is zeroed.
 * n_samples may be 0.  Videos are refused for now. */
int vl_batch_build(vl_batch *b, const vl_model_config *cfg,
                   const vl_sample *samples, int n_samples);
void vl_batch_free(vl_batch *b);

/* Pieces, exposed for tests. */
/* HF get_rope_index for one sample: pos (3, n). */
int vl_batch_mrope_positions(const vl_model_config *cfg, const int32_t *ids, int n,
                             const int32_t (*grid_thw)[3], int n_images,
                             int32_t *pos);
/* cos/sin (n, head_dim) from pos (3, n) — pos rows are t, h, w. */
void vl_batch_text_rope(const vl_text_config *tc, const int32_t *pos, int n,
                        int pos_stride, float *cos, float *sin);

#endif
