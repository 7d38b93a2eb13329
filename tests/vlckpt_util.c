/* Helper of tests/test_vlckpt.sh (not a test by itself):
 *   compare CKPT HFDIR fp32|bf16  model.path=HFDIR gives the checkpoint's model
 *                                 config, and its weights equal the checkpoint's
 *                                 parameters bitwise (fp32) or after bf16 rounding
 *   load HFDIR                    loads model.path=HFDIR (config + weights)
 *   hfkeys DIR                    the vltrain keys hfconfig reads from DIR/config.json
 *   tamper-drop CKPT NAME         removes /params/NAME
 *   tamper-shape CKPT NAME        replaces /params/NAME by a [1] dataset
 *   tamper-config CKPT            replaces the config attribute by junk
 *   st-drop HFDIR NAME OUT        OUT/model.safetensors: HFDIR's tensors less NAME
 *   st-reshape HFDIR NAME OUT     ... NAME flattened to one dimension
 * Exit 0 on success, 1 on a mismatch or error (message on stderr). */
#include <hdf5.h>
#include <math.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "err.h"
#include "hfconfig.h"
#include "hfexport.h"
#include "weights.h"

static int load_folder(const char *dir, vl_config *cfg, vl_model *m, float **w) {
  char yaml[VL_PATH_MAX + 64];
  snprintf(yaml, sizeof yaml, "model: {path: \"%s\"}\n", dir);
  VL_CALL(vl_config_load_string(cfg, yaml, "(test)"));
  VL_CALL(vl_model_build(m, &cfg->model));
  VL_CALL(vl_malloc((void **)w, m->n_elements * sizeof(float), "weights"));
  VL_CALL(vl_weights_load(m, dir, *w, 0));
  return VL_OK;
}

static int same_model_config(const vl_model_config *a, const vl_model_config *b) {
  return a->family == b->family && !memcmp(&a->text, &b->text, sizeof a->text) &&
         !memcmp(&a->vision, &b->vision, sizeof a->vision) &&
         !memcmp(&a->tokens, &b->tokens, sizeof a->tokens);
}

static int compare(const char *ckpt, const char *dir, const char *mode) {
  vl_ckptfile f;
  if (vl_ckptfile_open(&f, ckpt)) return 1;
  float *ref = malloc(f.model.n_elements * sizeof(float));
  if (!ref || vl_ckptfile_read(&f, "params", ref)) return 1;
  vl_config cfg;
  vl_model m;
  float *w = NULL;
  if (load_folder(dir, &cfg, &m, &w)) return 1;
  if (!same_model_config(&cfg.model, &f.model.cfg)) {
    fprintf(stderr, "FAIL: %s/config.json gives another model config than %s\n", dir, ckpt);
    return 1;
  }
  if (m.n_elements != f.model.n_elements) {
    fprintf(stderr, "FAIL: %zu parameters vs %zu\n", m.n_elements, f.model.n_elements);
    return 1;
  }
  const int bf16 = !strcmp(mode, "bf16");
  size_t diff = 0, changed = 0;
  double max_rel = 0;
  for (int i = 0; i < m.n_params; i++) {
    const vl_param *p = &m.params[i];
    int j = vl_model_find(&f.model, p->name);
    if (j < 0) { fprintf(stderr, "FAIL: %s not in the checkpoint's model\n", p->name); return 1; }
    const float *r = ref + f.model.params[j].offset, *x = w + p->offset;
    for (size_t k = 0; k < p->numel; k++) {
      float want = bf16 ? vl_f32_from_bf16(vl_bf16_from_f32(r[k])) : r[k];
      if (memcmp(&want, &x[k], sizeof want)) diff++;
      if (memcmp(&r[k], &x[k], sizeof want)) changed++;
      if (r[k] != 0) {
        double rel = fabs((double)x[k] - r[k]) / fabs(r[k]);
        if (rel > max_rel) max_rel = rel;
      }
    }
  }
  printf("%s: %zu parameters, %zu differ from the checkpoint's %s (%zu differ from its fp32; "
         "max relative difference %.3g)\n", dir, m.n_elements, diff,
         bf16 ? "values rounded to bf16" : "fp32 values bitwise", changed, max_rel);
  vl_ckptfile_close(&f);
  return diff ? 1 : 0;
}

static int tamper(const char *ckpt, const char *what, const char *name) {
  hid_t f = H5Fopen(ckpt, H5F_ACC_RDWR, H5P_DEFAULT);
  if (f < 0) return 1;
  int rc = 0;
  char path[256];
  snprintf(path, sizeof path, "params/%s", name ? name : "");
  if (!strcmp(what, "tamper-drop")) {
    rc = H5Ldelete(f, path, H5P_DEFAULT) < 0;
  } else if (!strcmp(what, "tamper-shape")) {
    hsize_t one = 1;
    float z = 0;
    rc = H5Ldelete(f, path, H5P_DEFAULT) < 0;
    hid_t sp = H5Screate_simple(1, &one, NULL);
    hid_t d = H5Dcreate2(f, path, H5T_IEEE_F32LE, sp, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    rc |= d < 0 || H5Dwrite(d, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, &z) < 0;
    H5Dclose(d);
    H5Sclose(sp);
  } else {
    const char *junk = "# --- file: x.yaml\nmodel: {family: qwen3-vl, text: {hidden_size: [}\n";
    rc = H5Adelete(f, "config") < 0;
    hid_t t = H5Tcopy(H5T_C_S1), sp = H5Screate(H5S_SCALAR);
    H5Tset_size(t, strlen(junk) + 1);
    hid_t a = H5Acreate2(f, "config", t, sp, H5P_DEFAULT, H5P_DEFAULT);
    rc |= a < 0 || H5Awrite(a, t, junk) < 0;
    H5Aclose(a);
    H5Tclose(t);
    H5Sclose(sp);
  }
  H5Fclose(f);
  return rc;
}

static int st_edit(const char *dir, const char *name, const char *out, int drop) {
  vl_safetensors *st;
  if (vl_st_open(&st, dir)) return 1;
  size_t n = vl_st_count(st);
  vl_st_entry *e = calloc(n, sizeof *e);
  int k = 0;
  for (size_t i = 0; i < n; i++) {
    const vl_st_tensor *t = vl_st_at(st, i);
    if (drop && !strcmp(vl_st_tensor_name(t), name)) continue;
    e[k].name = vl_st_tensor_name(t);
    e[k].dtype = vl_st_tensor_dtype(t);
    e[k].ndim = vl_st_tensor_ndim(t);
    memcpy(e[k].shape, vl_st_tensor_shape(t), (size_t)e[k].ndim * sizeof(int64_t));
    if (!drop && !strcmp(e[k].name, name)) {
      e[k].ndim = 1;
      e[k].shape[0] = (int64_t)vl_st_tensor_numel(t);
    }
    e[k].data = vl_st_tensor_data(t);
    k++;
  }
  mkdir(out, 0755);
  char p[VL_PATH_MAX + 32];
  snprintf(p, sizeof p, "%s/model.safetensors", out);
  int rc = vl_st_write(p, e, k, NULL, 0);
  free(e);
  vl_st_close(st);
  return rc ? 1 : 0;
}

int main(int argc, char **argv) {
  if (argc < 3) return 2;
  MPI_Init(&argc, &argv);
  int rc = 2;
  const char *c = argv[1];
  if (!strcmp(c, "compare") && argc == 5) rc = compare(argv[2], argv[3], argv[4]);
  else if (!strcmp(c, "load") && argc == 3) {
    vl_config cfg;
    vl_model m;
    float *w = NULL;
    rc = load_folder(argv[2], &cfg, &m, &w) ? 1 : 0;
    if (!rc) printf("loaded %s: %zu parameters\n", argv[2], m.n_elements);
  } else if (!strcmp(c, "hfkeys") && argc == 3) {
    char *text, path[VL_PATH_MAX + 16];
    vl_hf_kv kv[VL_HF_MAX_KEYS];
    int n;
    rc = vl_hfconfig_read_file(argv[2], &text, path, sizeof path) ||
         vl_hfconfig_parse(text, path, kv, &n);
    for (int i = 0; !rc && i < n; i++) printf("%s = %s\n", kv[i].key, kv[i].value);
  } else if (!strncmp(c, "tamper-", 7) && argc >= 3) rc = tamper(argv[2], c, argc > 3 ? argv[3] : NULL);
  else if (!strcmp(c, "st-drop") && argc == 5) rc = st_edit(argv[2], argv[3], argv[4], 1);
  else if (!strcmp(c, "st-reshape") && argc == 5) rc = st_edit(argv[2], argv[3], argv[4], 0);
  MPI_Finalize();
  return rc;
}
