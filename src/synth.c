/* synth: generated samples (see synth.h). */
#include "synth.h"

#include <stdlib.h>
#include <string.h>

#include "err.h"
#include "weights.h"

void vl_synth_free(vl_synth *s) {
  free(s->ids); free(s->labels); free(s->pixels);
  memset(s, 0, sizeof *s);
}

/* n normals into out, as n successive vl_rng_normal(r) calls would draw them,
 * in parallel: the generator's state is a counter (each vl_rng_next adds a
 * constant), so draw j starts from *r + 2 j steps and every thread computes
 * its own start.  Leaves *r where the serial loop would. */
#define RNG_STEP 0x9E3779B97F4A7C15ull /* vl_rng_next's increment (weights.c) */
static void normals(float *out, size_t n, uint64_t *r) {
  const uint64_t r0 = *r;
#pragma omp parallel for schedule(static)
  for (long long c = 0; c < (long long)((n + 65535) / 65536); c++) {
    const size_t lo = (size_t)c * 65536, hi = lo + 65536 < n ? lo + 65536 : n;
    uint64_t st = r0 + (uint64_t)(2 * lo) * RNG_STEP;
    for (size_t i = lo; i < hi; i++) out[i] = vl_rng_normal(&st);
  }
  *r = r0 + (uint64_t)(2 * n) * RNG_STEP;
}

int vl_synth_sample(vl_synth *s, const vl_model_config *mc, uint64_t seed, uint64_t index,
                    int max_tokens, int max_patches) {
  vl_synth_free(s);
  uint64_t r = seed * 0x9E3779B97F4A7C15ull + index * 0xD1B54A32D192ED03ull + 1;
  const int m = mc->vision.spatial_merge_size;
  /* image of (2..4)m x (2..4)m patches, shrunk to fit max_patches */
  int gh = m * (2 + (int)(vl_rng_next(&r) % 3)), gw = m * (2 + (int)(vl_rng_next(&r) % 3));
  while (gh * gw > max_patches && gh > m) gh -= m;
  while (gh * gw > max_patches && gw > m) gw -= m;
  const int with_image = gh * gw <= max_patches;
  const int n_img = with_image ? gh * gw / (m * m) : 0;
  int prompt = 8 + (int)(vl_rng_next(&r) % 8), answer = 12 + (int)(vl_rng_next(&r) % 12);
  int n = prompt + (with_image ? n_img + 2 : 0) + answer;
  if (n > max_tokens) {
    answer -= n - max_tokens;
    if (answer < 2) VL_ERROR(VL_EINVAL, "train.max_seq_len %d is too small for a generated sample", max_tokens);
    n = max_tokens;
  }
  const int patch_dim = mc->vision.in_channels * mc->vision.temporal_patch_size *
                        mc->vision.patch_size * mc->vision.patch_size;
  VL_CALL(vl_malloc((void **)&s->ids, (size_t)n * sizeof(int32_t), "sample ids"));
  VL_CALL(vl_malloc((void **)&s->labels, (size_t)n * sizeof(int32_t), "sample labels"));
  VL_CALL(vl_malloc((void **)&s->pixels, (size_t)(gh * gw + 1) * patch_dim * sizeof(float), "pixels"));
  /* a 64-token alphabet well inside the vocabulary and below the special ids */
  const int base = mc->text.vocab_size > 1100 ? 1000 : 0;
  int alpha = 64;
  const int special[4] = {mc->tokens.image_token_id, mc->tokens.video_token_id,
                          mc->tokens.vision_start_token_id, mc->tokens.vision_end_token_id};
  for (int k = 0; k < 4 && !base; k++)
    if (special[k] < alpha) alpha = special[k];
  if (alpha < 2) VL_ERROR(VL_EINVAL, "no room for generated text tokens below the special ids");
  int t = 0;
  for (int i = 0; i < prompt; i++) s->ids[t++] = base + (int32_t)(vl_rng_next(&r) % (uint64_t)alpha);
  if (with_image) {
    s->ids[t++] = mc->tokens.vision_start_token_id;
    for (int i = 0; i < n_img; i++) s->ids[t++] = mc->tokens.image_token_id;
    s->ids[t++] = mc->tokens.vision_end_token_id;
  }
  /* the answer repeats the prompt: learnable by attention */
  for (int i = 0; i < answer; i++) s->ids[t++] = s->ids[i % prompt];
  for (int i = 0; i < n; i++) s->labels[i] = i >= n - answer ? s->ids[i] : -100;
  normals(s->pixels, (size_t)gh * gw * patch_dim, &r);
  s->grid[0][0] = 1; s->grid[0][1] = gh; s->grid[0][2] = gw;
  s->sample = (vl_sample){n, s->ids, s->labels, with_image, with_image ? (const int32_t(*)[3])s->grid : NULL,
                          with_image ? s->pixels : NULL};
  return VL_OK;
}

int vl_synth_fixed(vl_synth *s, const vl_model_config *mc, uint64_t seed, uint64_t index,
                   int grid_h, int grid_w, int text, int answer) {
  vl_synth_free(s);
  uint64_t r = seed * 0x9E3779B97F4A7C15ull + index * 0xD1B54A32D192ED03ull + 7;
  const int m = mc->vision.spatial_merge_size;
  if (grid_h % m || grid_w % m || text < answer + 3)
    VL_ERROR(VL_EINVAL, "generated sample: grid %d x %d must be multiples of %d and text (%d) > answer (%d) + 2",
             grid_h, grid_w, m, text, answer);
  const int n_img = grid_h * grid_w / (m * m), n = text + n_img, prompt = text - 2 - answer;
  const int patch_dim = mc->vision.in_channels * mc->vision.temporal_patch_size *
                        mc->vision.patch_size * mc->vision.patch_size;
  VL_CALL(vl_malloc((void **)&s->ids, (size_t)n * sizeof(int32_t), "sample ids"));
  VL_CALL(vl_malloc((void **)&s->labels, (size_t)n * sizeof(int32_t), "sample labels"));
  VL_CALL(vl_malloc((void **)&s->pixels, (size_t)grid_h * grid_w * patch_dim * sizeof(float), "pixels"));
  const int base = mc->text.vocab_size > 1100 ? 1000 : 0, alpha = base ? 1000 : 32;
  int t = 0;
  s->ids[t++] = mc->tokens.vision_start_token_id;
  for (int i = 0; i < n_img; i++) s->ids[t++] = mc->tokens.image_token_id;
  s->ids[t++] = mc->tokens.vision_end_token_id;
  while (t < n) s->ids[t++] = base + (int32_t)(vl_rng_next(&r) % (uint64_t)alpha);
  (void)prompt;
  for (int i = 0; i < n; i++) s->labels[i] = i >= n - answer ? s->ids[i] : -100;
  normals(s->pixels, (size_t)grid_h * grid_w * patch_dim, &r);
  s->grid[0][0] = 1; s->grid[0][1] = grid_h; s->grid[0][2] = grid_w;
  s->sample = (vl_sample){n, s->ids, s->labels, 1, (const int32_t(*)[3])s->grid, s->pixels};
  return VL_OK;
}
