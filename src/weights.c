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
  vl_weights_init_random_range(m, host, 0, m->n_elements, seed, std);
}

void vl_weights_init_random_range(const vl_model *m, float *host, size_t begin, size_t end, uint64_t seed,
                                  float std) {
  /* One stream per tensor, seeded by (seed, index): parallel and reproducible.
   * A normal draw takes two steps of the splitmix64 counter, so a range
   * starting inside a tensor jumps the counter there directly. */
#pragma omp parallel for schedule(dynamic)
  for (int i = 0; i < m->n_params; i++) {
    const vl_param *p = &m->params[i];
    const size_t lo = begin > p->offset ? begin : p->offset;
    const size_t hi = end < p->offset + p->numel ? end : p->offset + p->numel;
    if (lo >= hi) continue;
    const size_t j0 = lo - p->offset, j1 = hi - p->offset;
    float *w = host + (lo - begin) - j0; /* w[j] is element j of the tensor */
    uint64_t s = seed * 0x100000001B3ull + (uint64_t)i * 0x9E3779B97F4A7C15ull;
    if (p->is_norm_weight)
      for (size_t j = j0; j < j1; j++) w[j] = 1.0f;
    else if (p->ndim == 1)
      for (size_t j = j0; j < j1; j++) w[j] = 0.0f;
    else {
      s += (uint64_t)(2 * j0) * 0x9E3779B97F4A7C15ull;
      for (size_t j = j0; j < j1; j++) w[j] = std * vl_rng_normal(&s);
    }
  }
}

/* Checkpoints saved by transformers 4 (the published Qwen2-VL ones) name the
 * vision tower "visual.*" and the language model "model.*"; transformers 5
 * (our table) names them "model.visual.*" and "model.language_model.*" and
 * renames on load.  legacy: our name -> the old one, "" when it has none. */
void vl_weights_legacy_name(const char *name, char *out, size_t n) {
  static const char vis[] = "model.visual.", lm[] = "model.language_model.";
  if (strncmp(name, vis, sizeof vis - 1) == 0)
    snprintf(out, n, "visual.%s", name + sizeof vis - 1);
  else if (strncmp(name, lm, sizeof lm - 1) == 0)
    snprintf(out, n, "model.%s", name + sizeof lm - 1);
  else
    out[0] = 0;
}

/* The old name's new form, "" when name is not an old one. */
static void modern_name(const char *name, char *out, size_t n) {
  if (strncmp(name, "visual.", 7) == 0)
    snprintf(out, n, "model.visual.%s", name + 7);
  else if (strncmp(name, "model.", 6) == 0 && strncmp(name, "model.visual.", 13) != 0 &&
           strncmp(name, "model.language_model.", 21) != 0)
    snprintf(out, n, "model.language_model.%s", name + 6);
  else
    out[0] = 0;
}

/* One piece of the parallel copy: elements [begin, end) of parameter i. */
typedef struct {
  int param;
  size_t begin, end;
} load_chunk;

#define VL_LOAD_CHUNK ((size_t)1 << 22) /* elements per piece: 16 MB of fp32 */

int vl_weights_load(const vl_model *m, const char *path, float *host, int allow_unexpected) {
  return vl_weights_load_range(m, path, host, 0, m->n_elements, allow_unexpected);
}

int vl_weights_load_range(const vl_model *m, const char *path, float *host, size_t begin, size_t end,
                          int allow_unexpected) {
  if (begin > end || end > m->n_elements)
    VL_ERROR(VL_EINVAL, "weights: range [%zu, %zu) outside the model's %zu elements", begin, end, m->n_elements);
  vl_safetensors *st = NULL;
  VL_CALL(vl_st_open(&st, path));
  int rc = VL_OK, missing = 0, misshaped = 0, unexpected = 0;
  char first_missing[VL_NAME_MAX] = "", first_bad[VL_NAME_MAX] = "", first_extra[VL_NAME_MAX] = "";
  const vl_st_tensor **found = calloc((size_t)m->n_params, sizeof *found);
  load_chunk *chunks = NULL;
  if (!found) VL_ERROR_GOTO(rc, done, VL_ENOMEM, "weights: out of memory");
  /* every problem is named on stderr; the error counts them */
  size_t n_chunks = 0;
  for (int i = 0; i < m->n_params; i++) {
    const vl_param *p = &m->params[i];
    const vl_st_tensor *t = vl_st_find(st, p->name);
    if (!t) {
      char old[VL_NAME_MAX];
      vl_weights_legacy_name(p->name, old, sizeof old);
      if (old[0]) t = vl_st_find(st, old);
    }
    if (!t) {
      if (!missing++) snprintf(first_missing, sizeof first_missing, "%s", p->name);
      fprintf(stderr, "vltrain: %s: missing tensor %s\n", path, p->name);
      continue;
    }
    if (!(VL_DT_FLOATS & VL_DT_MASK(vl_st_tensor_dtype(t))) ||
        vl_st_check_shape(st, t, p->ndim, p->shape) != VL_OK) {
      if (!misshaped++) snprintf(first_bad, sizeof first_bad, "%s", p->name);
      char got[160], want[160];
      size_t o = 0, w = 0;
      for (int d = 0; d < vl_st_tensor_ndim(t); d++)
        o += (size_t)snprintf(got + o, sizeof got - o, "%s%lld", d ? ", " : "", (long long)vl_st_tensor_shape(t)[d]);
      for (int d = 0; d < p->ndim; d++)
        w += (size_t)snprintf(want + w, sizeof want - w, "%s%lld", d ? ", " : "", (long long)p->shape[d]);
      fprintf(stderr, "vltrain: %s: tensor %s has %s [%s], expected a float [%s]\n", path, p->name,
              vl_dtype_name(vl_st_tensor_dtype(t)), got, want);
      continue;
    }
    found[i] = t;
  }
  for (size_t k = 0; k < vl_st_count(st); k++) {
    const char *name = vl_st_tensor_name(vl_st_at(st, k));
    char modern[VL_NAME_MAX];
    modern_name(name, modern, sizeof modern);
    if (vl_model_find(m, name) < 0 && !(modern[0] && vl_model_find(m, modern) >= 0) &&
        !(m->cfg.text.tie_word_embeddings && strcmp(name, "lm_head.weight") == 0)) {
      if (!unexpected++) snprintf(first_extra, sizeof first_extra, "%s", name);
      if (!allow_unexpected) fprintf(stderr, "vltrain: %s: unexpected tensor %s\n", path, name);
    }
  }
  if (missing || misshaped || (unexpected && !allow_unexpected))
    VL_ERROR_GOTO(rc, done, VL_ESHAPE,
                  "%s: does not match the %s model of %d tensors: %d missing%s%s%s, %d of the wrong "
                  "shape or dtype%s%s%s, %d not in the model%s%s%s (each named above)",
                  path, m->cfg.family == VL_FAMILY_QWEN3_VL ? "qwen3-vl" : "qwen2-vl", m->n_params,
                  missing, missing ? " (first: " : "", first_missing, missing ? ")" : "",
                  misshaped, misshaped ? " (first: " : "", first_bad, misshaped ? ")" : "",
                  allow_unexpected ? 0 : unexpected, unexpected && !allow_unexpected ? " (first: " : "",
                  allow_unexpected ? "" : first_extra, unexpected && !allow_unexpected ? ")" : "");
  /* the pieces of the tensors' parts inside [begin, end) */
  for (int pass = 0; pass < 2; pass++) {
    size_t c = 0;
    for (int i = 0; i < m->n_params; i++) {
      const vl_param *p = &m->params[i];
      const size_t lo = begin > p->offset ? begin : p->offset;
      const size_t hi = end < p->offset + p->numel ? end : p->offset + p->numel;
      for (size_t b = lo; b < hi; b += VL_LOAD_CHUNK) {
        if (pass) chunks[c] = (load_chunk){i, b - p->offset, (b + VL_LOAD_CHUNK < hi ? b + VL_LOAD_CHUNK : hi) - p->offset};
        c++;
      }
    }
    if (!pass) {
      n_chunks = c;
      chunks = malloc((n_chunks ? n_chunks : 1) * sizeof *chunks);
      if (!chunks) VL_ERROR_GOTO(rc, done, VL_ENOMEM, "weights: out of memory");
    }
  }
  /* The map's pages fault in from many threads at once: parallel reads. */
  int bad = 0;
#pragma omp parallel for schedule(dynamic, 1) reduction(| : bad)
  for (size_t k = 0; k < n_chunks; k++) {
    const load_chunk *ch = &chunks[k];
    const vl_param *p = &m->params[ch->param];
    const vl_st_tensor *t = found[ch->param];
    float *dst = host + (p->offset + ch->begin - begin);
    const size_t n = ch->end - ch->begin;
    const unsigned char *src = vl_st_tensor_data(t);
    switch (vl_st_tensor_dtype(t)) {
    case VL_DT_F32: memcpy(dst, src + ch->begin * 4, n * 4); break;
    case VL_DT_BF16: {
      const unsigned char *s2 = src + ch->begin * 2;
      for (size_t j = 0; j < n; j++) {
        uint16_t b;
        memcpy(&b, s2 + 2 * j, 2);
        uint32_t u = (uint32_t)b << 16;
        memcpy(dst + j, &u, 4);
      }
      break;
    }
    default: { /* F16, F64: rare; the whole tensor converted, this piece kept */
      float *tmp = malloc(p->numel * sizeof(float));
      bad |= !tmp || vl_st_read_f32(t, tmp, p->numel) != VL_OK;
      if (tmp) memcpy(dst, tmp + ch->begin, n * sizeof(float));
      free(tmp);
      break;
    }
    }
  }
  if (bad) VL_ERROR_GOTO(rc, done, VL_EIO, "%s: converting a tensor failed", path);
done:
  free(chunks);
  free(found);
  vl_st_close(st);
  if (rc != VL_OK) return vl_err_trace(rc, __FILE__, __LINE__, __func__);
  return VL_OK;
}
