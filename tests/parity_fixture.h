/* parity_fixture: loads a Hugging Face parity fixture folder
 * (tests/data/qwen3vl_parity, tests/data/qwen2vl_parity: the same format)
 * into vltrain's structures, runs the model on a backend and compares with
 * transformers' loss, logits and gradients.  Shared by test_hf_parity (CPU,
 * fp32 limits) and test_ops_cuda (GPU, bf16). */
#ifndef VL_PARITY_FIXTURE_H
#define VL_PARITY_FIXTURE_H

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "batch.h"
#include "config.h"
#include "err.h"
#include "fixture_rows.h"
#include "graph.h"
#include "model.h"
#include "ops.h"
#include "safetensors.h"
#include "test_util.h"
#include "weights.h"

typedef struct {
  double loss, logits, grad_worst, grad_all;  /* relative errors */
  const char *worst_name;
  int ok;
} parity_result;

static void *pf_read(vl_safetensors *st, const char *name, size_t *n, int as_int) {
  const vl_st_tensor *t = vl_st_find(st, name);
  if (!t) { fprintf(stderr, "fixture lacks %s\n", name); return NULL; }
  *n = vl_st_tensor_numel(t);
  void *v = malloc(*n * 8 + 8);
  int rc = as_int ? vl_st_read_i64(t, v, *n) : vl_st_read_f32(t, v, *n);
  if (rc) { free(v); return NULL; }
  return v;
}

/* Runs the fixture in `fixture` (a folder relative to the source tree, e.g.
 * "tests/data/qwen2vl_parity") on `o`; fills r; returns VL_OK or an error. */
static int parity_run_dir(vl_ops *o, const char *fixture, parity_result *r) {
  memset(r, 0, sizeof *r);
  char dir[1024], file[1200];
  test_path(dir, sizeof dir, fixture);
  printf("fixture %s\n", fixture);
  vl_config cfg;
  snprintf(file, sizeof file, "%s/vltrain.yaml", dir);
  VL_CALL(vl_config_load(&cfg, file));
  vl_model m;
  VL_CALL(vl_model_build(&m, &cfg.model));
  const int V = cfg.model.text.vocab_size;
  float *w = malloc(m.n_elements * sizeof(float));
  snprintf(file, sizeof file, "%s/model.safetensors", dir);
  VL_CALL(vl_weights_load(&m, file, w, 0));
  vl_safetensors *in = NULL, *out = NULL;
  snprintf(file, sizeof file, "%s/inputs.safetensors", dir);
  VL_CALL(vl_st_open(&in, file));
  snprintf(file, sizeof file, "%s/outputs.safetensors", dir);
  VL_CALL(vl_st_open(&out, file));
  size_t n_ids, n_mask, n_lab, n_grid, n_pix, n_logits;
  int64_t *ids = pf_read(in, "input_ids", &n_ids, 1), *mask = pf_read(in, "attention_mask", &n_mask, 1);
  int64_t *labels = pf_read(in, "labels", &n_lab, 1), *grid = pf_read(in, "image_grid_thw", &n_grid, 1);
  float *pix = pf_read(in, "pixel_values", &n_pix, 0), *ref_logits = pf_read(out, "logits", &n_logits, 0);
  const vl_st_tensor *tl = vl_st_find(out, "loss");
  if (!ids || !mask || !labels || !grid || !pix || !ref_logits || !tl || vl_st_tensor_dtype(tl) != VL_DT_F64)
    VL_ERROR(VL_EIO, "parity fixture incomplete");
  double ref_loss;
  memcpy(&ref_loss, vl_st_tensor_data(tl), 8);
  const vl_st_tensor *tid = vl_st_find(in, "input_ids");
  const int B = (int)vl_st_tensor_shape(tid)[0], L = (int)vl_st_tensor_shape(tid)[1];
  const int patch_dim = vl_model_patch_dim(&m);

  pf_rows rows;
  VL_CALL(pf_rows_build(&rows, &cfg.model, ids, mask, labels, B, L, grid, n_grid, pix, n_pix, patch_dim));
  const int *row_len = rows.row_len;
  const vl_sample *s = rows.s;
  vl_batch batch;
  VL_CALL(vl_batch_build(&batch, &cfg.model, s, B));
  vl_graph g;
  VL_CALL(vl_graph_create(&g, &m, o, batch.T, batch.P, 1));
  VL_CALL(o->put(o, g.params, w, m.n_elements));
  VL_CALL(o->zero(o, g.grads, m.n_elements * o->elem_size));
  VL_CALL(vl_graph_set_batch(&g, &batch));
  double loss_sum = 0;
  VL_CALL(vl_graph_forward(&g, 1.0f / (float)batch.n_targets, &loss_sum));
  VL_CALL(vl_graph_backward(&g));
  r->loss = fabs(loss_sum / batch.n_targets - ref_loss) / fabs(ref_loss);
  printf("loss: vltrain (%s) %.10f, transformers %.10f\n", o->name, loss_sum / batch.n_targets, ref_loss);

  float *mine = malloc((size_t)batch.T * V * 4), *ref = malloc((size_t)batch.T * V * 4);
  VL_CALL(o->get_raw(o, mine, g.logits, (size_t)batch.T * V * 4));
  size_t rr = 0;
  for (int b = 0; b < B; b++)
    for (int t = 0; t < row_len[b]; t++, rr++)
      memcpy(ref + rr * V, ref_logits + ((size_t)b * L + t) * V, (size_t)V * 4);
  r->logits = rel_err_f32(mine, ref, (size_t)batch.T * V);

  float *grad = malloc(m.n_elements * 4), *ref_all = malloc(m.n_elements * 4);
  VL_CALL(o->get(o, grad, g.grads, m.n_elements));
  r->worst_name = "";
  for (int i = 0; i < m.n_params; i++) {
    char name[VL_NAME_MAX + 8];
    size_t n;
    snprintf(name, sizeof name, "grad.%s", m.params[i].name);
    float *rg = pf_read(out, name, &n, 0);
    if (!rg || n != m.params[i].numel) VL_ERROR(VL_EIO, "fixture gradient %s missing or mis-sized", name);
    memcpy(ref_all + m.params[i].offset, rg, n * 4);
    double e = rel_err_f32(grad + m.params[i].offset, rg, n);
    if (e > r->grad_worst) { r->grad_worst = e; r->worst_name = m.params[i].name; }
    free(rg);
  }
  r->grad_all = rel_err_f32(grad, ref_all, m.n_elements);
  printf("logits: %d tokens x %d, relative error %.2e\n", batch.T, V, r->logits);
  printf("gradients: %d tensors, all together %.2e, worst tensor %.2e (%s)\n", m.n_params,
         r->grad_all, r->grad_worst, r->worst_name);
  free(grad); free(ref_all); free(mine); free(ref); free(w); free(ids); free(mask); free(labels);
  free(grid); free(pix); free(ref_logits); pf_rows_free(&rows);
  vl_graph_destroy(&g);
  vl_batch_free(&batch);
  vl_st_close(in);
  vl_st_close(out);
  vl_model_free(&m);
  vl_config_free(&cfg);
  r->ok = 1;
  return VL_OK;
}

#endif
