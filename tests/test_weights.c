/* test_weights: (1) a checkpoint saved with transformers 4's tensor names
 * (the published Qwen2-VL folders: "visual.*", "model.layers.*") loads into
 * the transformers 5 table bitwise, as transformers itself renames on load;
 * the same file with a tensor missing is refused naming it by our name.
 * (2) a rank's ZeRO-1 shard, read (vl_weights_load_range) or drawn
 * (vl_weights_init_random_range) alone, equals that slice of the whole, bit
 * for bit, for shard boundaries inside and between tensors. */
#include <stdint.h>
#include <unistd.h>

#include "config.h"
#include "err.h"
#include "model.h"
#include "optim.h"
#include "safetensors.h"
#include "test_util.h"
#include "weights.h"

/* Writes every parameter (skip one index, -1 for none) under its old name. */
static int write_legacy(const vl_model *m, const float *w, const char *path, int skip) {
  vl_st_entry *e = calloc((size_t)m->n_params, sizeof *e);
  char (*names)[VL_NAME_MAX] = calloc((size_t)m->n_params, sizeof *names);
  int n = 0;
  for (int i = 0; i < m->n_params; i++) {
    if (i == skip) continue;
    const vl_param *p = &m->params[i];
    vl_weights_legacy_name(p->name, names[n], sizeof names[n]);
    if (!names[n][0]) snprintf(names[n], sizeof names[n], "%s", p->name);
    e[n].name = names[n];
    e[n].dtype = VL_DT_F32;
    e[n].ndim = p->ndim;
    for (int d = 0; d < p->ndim; d++) e[n].shape[d] = p->shape[d];
    e[n].data = w + p->offset;
    n++;
  }
  int rc = vl_st_write(path, e, n, NULL, 0);
  free(e);
  free(names);
  return rc;
}

int main(void) {
  char path[1024], file[] = "/tmp/vl_legacyXXXXXX";
  vl_config cfg;
  int rc = vl_config_load(&cfg, test_path(path, sizeof path, "tests/data/qwen2vl_parity/vltrain.yaml"));
  CHECK(rc == VL_OK, "config: %s", vl_err_last());
  if (rc) TEST_END();
  vl_model m;
  rc = vl_model_build(&m, &cfg.model);
  CHECK(rc == VL_OK, "model: %s", vl_err_last());
  if (rc) TEST_END();

  char name[VL_NAME_MAX];
  vl_weights_legacy_name("model.visual.blocks.0.attn.qkv.weight", name, sizeof name);
  CHECK(strcmp(name, "visual.blocks.0.attn.qkv.weight") == 0, "vision: %s", name);
  vl_weights_legacy_name("model.language_model.layers.1.self_attn.q_proj.bias", name, sizeof name);
  CHECK(strcmp(name, "model.layers.1.self_attn.q_proj.bias") == 0, "llm: %s", name);
  vl_weights_legacy_name("lm_head.weight", name, sizeof name);
  CHECK(name[0] == 0, "lm_head keeps its name: %s", name);

  float *w = malloc(m.n_elements * sizeof *w), *back = malloc(m.n_elements * sizeof *back);
  vl_weights_init_random(&m, w, 7, 0.02f);
  for (size_t i = 0; i < m.n_elements; i++) w[i] += 1e-3f * (float)(i % 17); /* no zero biases */
  int fd = mkstemp(file);
  close(fd);
  int renamed = 0;
  for (int i = 0; i < m.n_params; i++) {
    vl_weights_legacy_name(m.params[i].name, name, sizeof name);
    renamed += name[0] != 0;
  }
  CHECK(renamed > m.n_params / 2, "only %d of %d tensors have old names", renamed, m.n_params);

  CHECK(write_legacy(&m, w, file, -1) == VL_OK, "write: %s", vl_err_last());
  memset(back, 0xff, m.n_elements * sizeof *back);
  rc = vl_weights_load(&m, file, back, 0);
  CHECK(rc == VL_OK, "legacy names load: %s", vl_err_last());
  CHECK(memcmp(w, back, m.n_elements * sizeof *w) == 0, "legacy load is not bitwise");

  /* one tensor missing: named by our (transformers 5) name */
  int victim = 1;
  CHECK(write_legacy(&m, w, file, victim) == VL_OK, "write: %s", vl_err_last());
  rc = vl_weights_load(&m, file, back, 0);
  CHECK(rc == VL_ESHAPE, "missing tensor accepted (rc %d)", rc);
  CHECK(strstr(vl_err_last(), m.params[victim].name) != NULL, "error does not name %s: %s",
        m.params[victim].name, vl_err_last());
  /* (2) ranges: the shards of 1..7 ranks and a few odd ranges */
  CHECK(write_legacy(&m, w, file, -1) == VL_OK, "write: %s", vl_err_last());
  float *ref = malloc(m.n_elements * sizeof *ref), *part = malloc(m.n_elements * sizeof *part);
  vl_weights_init_random(&m, ref, 11, 0.02f);
  int bad_init = 0, bad_load = 0, ranges = 0;
  for (int world = 1; world <= 7; world++)
    for (int r = 0; r <= world; r++) {
      size_t b, e;
      if (r < world) {
        size_t mine;
        vl_optim_shard_range(m.n_elements, world, r, &b, &mine);
        e = b + mine;
      } else { /* an odd range: from inside one tensor to inside another */
        b = m.n_elements / (size_t)(world + 2) + 3;
        e = m.n_elements - (size_t)world * 7;
      }
      memset(part, 0xff, m.n_elements * sizeof *part);
      vl_weights_init_random_range(&m, part, b, e, 11, 0.02f);
      bad_init += memcmp(part, ref + b, (e - b) * sizeof *part) != 0;
      memset(part, 0xff, m.n_elements * sizeof *part);
      CHECK(vl_weights_load_range(&m, file, part, b, e, 0) == VL_OK, "load [%zu, %zu): %s", b, e, vl_err_last());
      bad_load += memcmp(part, w + b, (e - b) * sizeof *part) != 0;
      ranges++;
    }
  CHECK(bad_init == 0, "%d of %d ranges of the random initialisation differ from the whole's slice", bad_init, ranges);
  CHECK(bad_load == 0, "%d of %d loaded ranges differ from the whole's slice", bad_load, ranges);
  vl_err_set_quiet(1);
  CHECK(vl_weights_load_range(&m, file, part, 5, m.n_elements + 1, 0) == VL_EINVAL, "range past the end refused");
  vl_err_set_quiet(0);
  free(ref);
  free(part);
  unlink(file);
  free(w);
  free(back);
  vl_model_free(&m);
  vl_config_free(&cfg);
  TEST_END();
}
