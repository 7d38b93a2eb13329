/* test_hf_parity: vltrain's CPU model against Hugging Face transformers on
 * the same tiny random Qwen3-VL (fixtures made by
 * tests/reference/make_qwen3vl_fixtures.py in float64): the weights are read
 * through vltrain's own safetensors reader; the batch holds one sample with
 * two images of different sizes and one text-only sample.  Loss and logits
 * must agree to 1e-5 relative, every parameter's gradient to 1e-4. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "batch.h"
#include "config.h"
#include "err.h"
#include "graph.h"
#include "model.h"
#include "ops.h"
#include "safetensors.h"
#include "test_util.h"
#include "weights.h"

static const char *dir_rel = "tests/data/qwen3vl_parity";

static int64_t *read_i64(vl_safetensors *st, const char *name, size_t *n) {
  const vl_st_tensor *t = vl_st_find(st, name);
  if (!t) { fprintf(stderr, "fixture lacks %s\n", name); exit(1); }
  *n = vl_st_tensor_numel(t);
  int64_t *v = malloc(*n * sizeof *v);
  if (vl_st_read_i64(t, v, *n) != VL_OK) exit(1);
  return v;
}

static float *read_f32(vl_safetensors *st, const char *name, size_t *n) {
  const vl_st_tensor *t = vl_st_find(st, name);
  if (!t) { fprintf(stderr, "fixture lacks %s\n", name); exit(1); }
  *n = vl_st_tensor_numel(t);
  float *v = malloc(*n * sizeof *v);
  if (vl_st_read_f32(t, v, *n) != VL_OK) exit(1);
  return v;
}

int main(void) {
  char path[1024], file[1200];
  test_path(path, sizeof path, dir_rel);
  vl_config cfg;
  snprintf(file, sizeof file, "%s/vltrain.yaml", path);
  if (vl_config_load(&cfg, file) != VL_OK) return 1;
  vl_model m;
  if (vl_model_build(&m, &cfg.model) != VL_OK) return 1;
  const int V = cfg.model.text.vocab_size;

  /* weights through our reader, by HF name: every tensor present, no extra */
  float *w = malloc(m.n_elements * sizeof(float));
  snprintf(file, sizeof file, "%s/model.safetensors", path);
  int rc = vl_weights_load(&m, file, w, 0);
  CHECK(rc == VL_OK, "loading HF weights: %s", vl_err_last());
  if (rc) TEST_END();

  vl_safetensors *in = NULL, *out = NULL;
  snprintf(file, sizeof file, "%s/inputs.safetensors", path);
  if (vl_st_open(&in, file) != VL_OK) return 1;
  snprintf(file, sizeof file, "%s/outputs.safetensors", path);
  if (vl_st_open(&out, file) != VL_OK) return 1;

  size_t n_ids, n_mask, n_lab, n_grid, n_pix, n_logits, n_loss;
  int64_t *ids = read_i64(in, "input_ids", &n_ids);
  int64_t *mask = read_i64(in, "attention_mask", &n_mask);
  int64_t *labels = read_i64(in, "labels", &n_lab);
  int64_t *grid = read_i64(in, "image_grid_thw", &n_grid);
  float *pix = read_f32(in, "pixel_values", &n_pix);
  float *ref_logits = read_f32(out, "logits", &n_logits);
  const vl_st_tensor *tl = vl_st_find(out, "loss");
  CHECK(tl != NULL, "outputs lack loss");
  double ref_loss = 0;
  {
    n_loss = vl_st_tensor_numel(tl);
    float lf; /* loss is stored F64; read through the f32 path and the raw bytes */
    vl_st_read_f32(tl, &lf, 1);
    ref_loss = lf;
    if (vl_st_tensor_dtype(tl) == VL_DT_F64) memcpy(&ref_loss, vl_st_tensor_data(tl), 8);
  }
  const vl_st_tensor *tid = vl_st_find(in, "input_ids");
  const int B = (int)vl_st_tensor_shape(tid)[0], Lmax = (int)vl_st_tensor_shape(tid)[1];
  const int n_images = (int)(n_grid / 3);

  /* samples: each row without its right padding; images in order */
  vl_sample s[8];
  int32_t *ids32 = malloc(n_ids * sizeof(int32_t)), *lab32 = malloc(n_ids * sizeof(int32_t));
  int32_t(*grid32)[3] = malloc(sizeof(int32_t[3]) * (size_t)(n_images + 1));
  for (int i = 0; i < n_images; i++)
    for (int k = 0; k < 3; k++) grid32[i][k] = (int32_t)grid[3 * i + k];
  int img = 0;
  size_t pix_row = 0;
  const int patch_dim = vl_model_patch_dim(&m);
  int row_len[8];
  for (int b = 0; b < B; b++) {
    int len = 0, n_runs = 0;
    for (int t = 0; t < Lmax; t++) {
      size_t j = (size_t)b * Lmax + t;
      ids32[j] = (int32_t)ids[j];
      lab32[j] = (int32_t)labels[j];
      if (mask[j]) len = t + 1;
      if (mask[j] && ids[j] == cfg.model.tokens.vision_start_token_id) n_runs++;
    }
    row_len[b] = len;
    s[b].n_tokens = len;
    s[b].ids = ids32 + (size_t)b * Lmax;
    s[b].labels = lab32 + (size_t)b * Lmax;
    s[b].n_images = n_runs;
    s[b].grid_thw = n_runs ? (const int32_t(*)[3])grid32[img] : NULL;
    s[b].pixels = n_runs ? pix + pix_row * patch_dim : NULL;
    for (int i = 0; i < n_runs; i++, img++)
      pix_row += (size_t)grid32[img][0] * grid32[img][1] * grid32[img][2];
  }
  CHECK(img == n_images && pix_row * patch_dim == n_pix, "images %d/%d, pixel rows %zu",
        img, n_images, pix_row);

  vl_batch batch;
  rc = vl_batch_build(&batch, &cfg.model, s, B);
  CHECK(rc == VL_OK, "batch: %s", vl_err_last());
  if (rc) TEST_END();

  vl_ops *o;
  if (vl_ops_cpu_create(&o) != VL_OK) return 1;
  vl_graph g;
  if (vl_graph_create(&g, &m, o, batch.T, batch.P, 1) != VL_OK) return 1;
  o->put(o, g.params, w, m.n_elements);
  o->zero(o, g.grads, m.n_elements * sizeof(float));
  if (vl_graph_set_batch(&g, &batch) != VL_OK) return 1;
  double loss_sum = 0;
  rc = vl_graph_forward(&g, 1.0f / (float)batch.n_targets, &loss_sum);
  if (rc == VL_OK) rc = vl_graph_backward(&g);
  CHECK(rc == VL_OK, "forward/backward: %s", vl_err_last());
  if (rc) TEST_END();

  /* loss: HF's mean over supervised tokens */
  double loss = loss_sum / batch.n_targets;
  double loss_err = fabs(loss - ref_loss) / fabs(ref_loss);
  printf("loss: vltrain %.10f, transformers %.10f, relative error %.2e\n", loss, ref_loss, loss_err);
  CHECK(loss_err < 1e-5, "loss relative error %.3e", loss_err);

  /* logits: packed rows vs HF's padded (B, L, V), real tokens only */
  float *mine = malloc((size_t)batch.T * V * sizeof(float));
  o->get_raw(o, mine, g.logits, (size_t)batch.T * V * sizeof(float));
  float *ref = malloc((size_t)batch.T * V * sizeof(float));
  size_t r = 0;
  for (int b = 0; b < B; b++)
    for (int t = 0; t < row_len[b]; t++, r++)
      memcpy(ref + r * V, ref_logits + ((size_t)b * Lmax + t) * V, (size_t)V * sizeof(float));
  double logit_err = rel_err_f32(mine, ref, (size_t)batch.T * V);
  printf("logits: %d tokens x %d, relative error %.2e\n", batch.T, V, logit_err);
  CHECK(logit_err < 1e-5, "logits relative error %.3e", logit_err);

  /* every parameter's gradient */
  float *grad = malloc(m.n_elements * sizeof(float));
  o->get(o, grad, g.grads, m.n_elements);
  double worst = 0;
  const char *worst_name = "";
  for (int i = 0; i < m.n_params; i++) {
    char name[VL_NAME_MAX + 8];
    snprintf(name, sizeof name, "grad.%s", m.params[i].name);
    size_t n;
    float *ref_g = read_f32(out, name, &n);
    CHECK(n == m.params[i].numel, "%s: %zu elements, expected %zu", name, n, m.params[i].numel);
    double e = rel_err_f32(grad + m.params[i].offset, ref_g, m.params[i].numel);
    if (e > worst) { worst = e; worst_name = m.params[i].name; }
    CHECK(e < 1e-4, "%s: gradient relative error %.3e", m.params[i].name, e);
    free(ref_g);
  }
  printf("gradients: %d tensors, worst relative error %.2e (%s)\n", m.n_params, worst, worst_name);

  free(grad); free(mine); free(ref); free(w); free(ids); free(mask); free(labels);
  free(grid); free(pix); free(ref_logits); free(ids32); free(lab32); free(grid32);
  vl_graph_destroy(&g);
  vl_batch_free(&batch);
  vl_ops_destroy(o);
  vl_st_close(in);
  vl_st_close(out);
  vl_model_free(&m);
  vl_config_free(&cfg);
  (void)n_mask; (void)n_lab; (void)n_loss;
  TEST_END();
}
