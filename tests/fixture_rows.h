/* fixture_rows: the rows of a Hugging Face parity fixture's inputs
 * (input_ids, attention_mask, labels as int64 with right padding;
 * image_grid_thw; pixel_values) as packed vltrain samples: each row without
 * its padding, its images in order.  Shared by parity_fixture.h and
 * vlckpt_util.c. */
#ifndef VL_FIXTURE_ROWS_H
#define VL_FIXTURE_ROWS_H

#include <stdint.h>
#include <stdlib.h>

#include "batch.h"
#include "config.h"
#include "err.h"

#define PF_MAX_ROWS 8

typedef struct {
  int B;
  vl_sample s[PF_MAX_ROWS];
  int row_len[PF_MAX_ROWS];   /* tokens of row b before its padding */
  int32_t *ids32, *lab32;
  int32_t (*grid32)[3];
} pf_rows;

static void pf_rows_free(pf_rows *r) {
  free(r->ids32);
  free(r->lab32);
  free(r->grid32);
  r->ids32 = r->lab32 = NULL;
  r->grid32 = NULL;
}

/* B x L tokens; n_grid = 3 x images; n_pix floats of pixel_values. */
static int pf_rows_build(pf_rows *r, const vl_model_config *mc, const int64_t *ids, const int64_t *mask,
                         const int64_t *labels, int B, int L, const int64_t *grid, size_t n_grid,
                         const float *pix, size_t n_pix, int patch_dim) {
  if (B > PF_MAX_ROWS) VL_ERROR(VL_EINVAL, "fixture: %d rows, at most %d", B, PF_MAX_ROWS);
  const int n_images = (int)(n_grid / 3);
  r->B = B;
  r->ids32 = malloc((size_t)B * L * 4 + 4);
  r->lab32 = malloc((size_t)B * L * 4 + 4);
  r->grid32 = malloc(sizeof(int32_t[3]) * (size_t)(n_images + 1));
  if (!r->ids32 || !r->lab32 || !r->grid32) { pf_rows_free(r); VL_ERROR(VL_ENOMEM, "fixture rows"); }
  for (int i = 0; i < n_images; i++)
    for (int k = 0; k < 3; k++) r->grid32[i][k] = (int32_t)grid[3 * i + k];
  int img = 0;
  size_t pix_row = 0;
  for (int b = 0; b < B; b++) {
    int len = 0, runs = 0;
    for (int t = 0; t < L; t++) {
      size_t j = (size_t)b * L + t;
      r->ids32[j] = (int32_t)ids[j];
      r->lab32[j] = (int32_t)labels[j];
      if (mask[j]) len = t + 1;
      if (mask[j] && ids[j] == mc->tokens.vision_start_token_id) runs++;
    }
    r->row_len[b] = len;
    r->s[b] = (vl_sample){len, r->ids32 + (size_t)b * L, r->lab32 + (size_t)b * L, runs,
                          runs ? (const int32_t(*)[3])r->grid32[img] : NULL,
                          runs ? pix + pix_row * patch_dim : NULL};
    for (int i = 0; i < runs; i++, img++)
      pix_row += (size_t)r->grid32[img][0] * r->grid32[img][1] * r->grid32[img][2];
  }
  if (img != n_images || pix_row * patch_dim != n_pix) {
    pf_rows_free(r);
    VL_ERROR(VL_EIO, "fixture images do not add up (%d of %d images, %zu of %zu pixel values)", img, n_images,
             pix_row * patch_dim, n_pix);
  }
  return VL_OK;
}

#endif
