/* weights: random initialisation and safetensors loading (see weights.h). */
#include "weights.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "err.h"
#include "safetensors.h"

uint64_t vl_rng_next(uint64_t *s) {
  uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

float vl_rng_uniform(uint64_t *s) { return (float)((vl_rng_next(s) >> 40) * 0x1.0p-24); }

float vl_rng_normal(uint64_t *s) {
  double u1 = ((vl_rng_next(s) >> 11) + 1.0) * 0x1.0p-53; /* (0, 1] */
  double u2 = (vl_rng_next(s) >> 11) * 0x1.0p-53;
  return (float)(sqrt(-2.0 * log(u1)) * cos(2.0 * M_PI * u2));
}

void vl_weights_init_random(const vl_model *m, float *host, uint64_t seed, float std) {
  /* One stream per tensor, seeded by (seed, index): parallel and reproducible. */
#pragma omp parallel for schedule(dynamic)
  for (int i = 0; i < m->n_params; i++) {
    const vl_param *p = &m->params[i];
    float *w = host + p->offset;
    uint64_t s = seed * 0x100000001B3ull + (uint64_t)i * 0x9E3779B97F4A7C15ull;
    if (p->is_norm_weight)
      for (size_t j = 0; j < p->numel; j++) w[j] = 1.0f;
    else if (p->ndim == 1)
      memset(w, 0, p->numel * sizeof(float));
    else
      for (size_t j = 0; j < p->numel; j++) w[j] = std * vl_rng_normal(&s);
  }
}

int vl_weights_load(const vl_model *m, const char *path, float *host, int allow_unexpected) {
  vl_safetensors *st = NULL;
  VL_CALL(vl_st_open(&st, path));
  int rc = VL_OK, missing = 0;
  char first_missing[VL_NAME_MAX] = "";
  for (int i = 0; i < m->n_params && rc == VL_OK; i++) {
    const vl_param *p = &m->params[i];
    const vl_st_tensor *t = vl_st_find(st, p->name);
    if (!t) {
      if (!missing++) snprintf(first_missing, sizeof first_missing, "%s", p->name);
      fprintf(stderr, "vltrain: %s: missing tensor %s\n", path, p->name);
      continue;
    }
    rc = vl_st_check_shape(st, t, p->ndim, p->shape);
    if (rc == VL_OK) rc = vl_st_read_f32(t, host + p->offset, p->numel);
  }
  if (rc == VL_OK && missing)
    rc = vl_err_raise(VL_ESHAPE, __FILE__, __LINE__, __func__,
                      "%s: %d tensor(s) of the model are missing (first: %s)", path,
                      missing, first_missing);
  if (rc == VL_OK && !allow_unexpected) {
    int unexpected = 0;
    for (size_t k = 0; k < vl_st_count(st); k++) {
      const vl_st_tensor *t = vl_st_at(st, k);
      const char *name = vl_st_tensor_name(t);
      if (vl_model_find(m, name) < 0 &&
          !(m->cfg.text.tie_word_embeddings && strcmp(name, "lm_head.weight") == 0)) {
        if (!unexpected++) fprintf(stderr, "vltrain: %s: unexpected tensor %s\n", path, name);
      }
    }
    if (unexpected)
      rc = vl_err_raise(VL_ESHAPE, __FILE__, __LINE__, __func__,
                        "%s: %d tensor(s) not in the model (wrong family or config?)",
                        path, unexpected);
  }
  vl_st_close(st);
  if (rc != VL_OK) return vl_err_trace(rc, __FILE__, __LINE__, __func__);
  return VL_OK;
}
