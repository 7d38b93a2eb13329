/* Helper of tests/test_vlckpt.sh (not a test by itself):
 *   compare CKPT HFDIR fp32|bf16  model.path=HFDIR gives the checkpoint's model
 *                                 config, and its weights equal the checkpoint's
 *                                 parameters bitwise (fp32) or after bf16 rounding
 *   load HFDIR                    loads model.path=HFDIR (config + weights)
 *   hfkeys DIR                    the vltrain keys hfconfig reads from DIR/config.json
 *   tamper-drop CKPT NAME         removes /params/NAME
 *   tamper-shape CKPT NAME        replaces /params/NAME by a [1] dataset
 *   tamper-config CKPT            replaces the config attribute by junk
 *   tamper-value CKPT NAME        flips the lowest bit of /params/NAME's first value
 *   st-drop HFDIR NAME OUT        OUT/model.safetensors: HFDIR's tensors less NAME
 *   st-reshape HFDIR NAME OUT     ... NAME flattened to one dimension
 *   logits HFDIR INPUTS OUT       forward (CPU, fp32) of model.path=HFDIR on the
 *                                 parity fixture's inputs.safetensors; writes
 *                                 OUT: logits [B, L, V] F32 (0 at padding)
 *   random-hf PRESET OUTDIR       a random bf16 HF folder of a preset's dims
 *   hfconfig-roundtrip YAML DIR   writes DIR/config.json from YAML's model config,
 *                                 reads it back (model.path=DIR): same config?
 *   cmp-logits MINE REF INPUTS    max |MINE - REF| of "logits" over INPUTS'
 *                                 attention_mask; fails above 1e-4 x max(1, |REF|)
 *   time-load HFDIR               seconds to read config + weights (fp32), after
 *                                 dropping the shards from the page cache
 * Exit 0 on success, 1 on a mismatch or error (message on stderr). */
#include <hdf5.h>
#include <math.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "batch.h"
#include "err.h"
#include "fixture_rows.h"
#include "graph.h"
#include "hfconfig.h"
#include "ops.h"
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
  } else if (!strcmp(what, "tamper-value")) {
    hid_t d = H5Dopen2(f, path, H5P_DEFAULT), fs = d >= 0 ? H5Dget_space(d) : -1;
    hsize_t zero[8] = {0}, one[8] = {1, 1, 1, 1, 1, 1, 1, 1}, n1 = 1;
    int nd = fs >= 0 ? H5Sget_simple_extent_ndims(fs) : -1;
    hid_t ms = H5Screate_simple(1, &n1, NULL);
    float v = 0;
    unsigned int bits;
    rc = d < 0 || nd < 1 || nd > 8 || H5Sselect_hyperslab(fs, H5S_SELECT_SET, zero, NULL, one, NULL) < 0 ||
         H5Dread(d, H5T_NATIVE_FLOAT, ms, fs, H5P_DEFAULT, &v) < 0;
    memcpy(&bits, &v, 4);
    bits ^= 1u;
    memcpy(&v, &bits, 4);
    rc = rc || H5Dwrite(d, H5T_NATIVE_FLOAT, ms, fs, H5P_DEFAULT, &v) < 0;
    H5Sclose(ms);
    if (fs >= 0) H5Sclose(fs);
    if (d >= 0) H5Dclose(d);
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

static int64_t *read_i64(vl_safetensors *st, const char *name, size_t *n) {
  const vl_st_tensor *t = vl_st_find(st, name);
  if (!t) return NULL;
  *n = vl_st_tensor_numel(t);
  int64_t *v = malloc(*n * 8 + 8);
  if (v && vl_st_read_i64(t, v, *n)) { free(v); return NULL; }
  return v;
}

static int logits(const char *dir, const char *inputs, const char *outp) {
  vl_config cfg;
  vl_model m;
  float *w = NULL;
  VL_CALL(load_folder(dir, &cfg, &m, &w));
  vl_safetensors *in;
  VL_CALL(vl_st_open(&in, inputs));
  size_t n_ids, n_mask, n_lab, n_grid, n_pix;
  int64_t *ids = read_i64(in, "input_ids", &n_ids), *mask = read_i64(in, "attention_mask", &n_mask);
  int64_t *labels = read_i64(in, "labels", &n_lab), *grid = read_i64(in, "image_grid_thw", &n_grid);
  const vl_st_tensor *tp = vl_st_find(in, "pixel_values"), *tid = vl_st_find(in, "input_ids");
  if (!ids || !mask || !labels || !grid || !tp) VL_ERROR(VL_EIO, "%s: incomplete inputs", inputs);
  n_pix = vl_st_tensor_numel(tp);
  float *pix = malloc(n_pix * 4);
  VL_CALL(vl_st_read_f32(tp, pix, n_pix));
  const int B = (int)vl_st_tensor_shape(tid)[0], L = (int)vl_st_tensor_shape(tid)[1];
  const int V = cfg.model.text.vocab_size, pd = vl_model_patch_dim(&m);
  pf_rows rows;
  VL_CALL(pf_rows_build(&rows, &cfg.model, ids, mask, labels, B, L, grid, n_grid, pix, n_pix, pd));
  const int *row_len = rows.row_len;
  const vl_sample *s = rows.s;
  vl_ops *o;
  VL_CALL(vl_ops_cpu_create(&o));
  vl_batch batch;
  VL_CALL(vl_batch_build(&batch, &cfg.model, s, B));
  vl_graph g;
  VL_CALL(vl_graph_create(&g, &m, o, batch.T, batch.P, 1));
  VL_CALL(o->put(o, g.params, w, m.n_elements));
  VL_CALL(vl_graph_set_batch(&g, &batch));
  double loss_sum = 0;
  VL_CALL(vl_graph_forward(&g, 1.0f / (float)batch.n_targets, &loss_sum));
  float *mine = malloc((size_t)batch.T * V * 4), *out = calloc((size_t)B * L * V, 4);
  VL_CALL(o->get_raw(o, mine, g.logits, (size_t)batch.T * V * 4));
  size_t rr = 0;
  for (int b = 0; b < B; b++)
    for (int t = 0; t < row_len[b]; t++, rr++)
      memcpy(out + ((size_t)b * L + t) * V, mine + rr * V, (size_t)V * 4);
  double loss = loss_sum / batch.n_targets;
  vl_st_entry e[2] = {{.name = "logits", .dtype = VL_DT_F32, .ndim = 3, .shape = {B, L, V}, .data = out},
                      {.name = "loss", .dtype = VL_DT_F64, .ndim = 1, .shape = {1}, .data = &loss}};
  VL_CALL(vl_st_write(outp, e, 2, NULL, 0));
  printf("vltrain logits of %s: %d rows x %d tokens x %d, loss %.10f -> %s\n", dir, B, L, V, loss, outp);
  pf_rows_free(&rows);
  return VL_OK;
}

static int random_hf(const char *preset, const char *outdir) {
  vl_config cfg;
  vl_model m;
  VL_CALL(vl_config_load(&cfg, preset));
  VL_CALL(vl_model_build(&m, &cfg.model));
  float *w;
  VL_CALL(vl_malloc((void **)&w, m.n_elements * sizeof(float), "weights"));
  /* cheap values (uniform, +-0.02): what is timed is the reading */
#pragma omp parallel for schedule(static)
  for (size_t j = 0; j < m.n_elements; j += 65536) {
    uint64_t st = 0x9E3779B97F4A7C15ull * (j + 1);
    size_t e = j + 65536 < m.n_elements ? j + 65536 : m.n_elements;
    for (size_t k = j; k < e; k++) w[k] = 0.04f * (vl_rng_uniform(&st) - 0.5f);
  }
  VL_CALL(vl_hf_export(&m, w, outdir, VL_DT_BF16, (size_t)5e9, NULL));
  printf("wrote %s: %zu parameters (bf16)\n", outdir, m.n_elements);
  return VL_OK;
}

#include <fcntl.h>
#include <omp.h>
#include <time.h>
#include <unistd.h>

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + 1e-9 * ts.tv_nsec;
}

static int time_load(const char *dir) {
  vl_safetensors *st;
  VL_CALL(vl_st_open(&st, dir));
  size_t bytes = 0;
  const char *done[64];
  int nd = 0;
  for (size_t i = 0; i < vl_st_count(st); i++) {
    const vl_st_tensor *t = vl_st_at(st, i);
    bytes += vl_st_tensor_nbytes(t);
    const char *f = vl_st_tensor_file(t);
    int seen = 0;
    for (int k = 0; k < nd; k++) seen |= !strcmp(done[k], f);
    if (seen || nd == 64) continue;
    done[nd++] = f;
    int fd = open(f, O_RDONLY);
    if (fd >= 0) { posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED); close(fd); }
  }
  vl_st_close(st);
  double t0 = now_s();
  vl_config cfg;
  vl_model m;
  float *w = NULL;
  VL_CALL(load_folder(dir, &cfg, &m, &w));
  double t1 = now_s();
  printf("time-load %s: %zu parameters, %.2f GB in %d shard(s), %.2f s with %d threads "
         "(%.2f GB/s; page cache dropped with POSIX_FADV_DONTNEED first)\n", dir, m.n_elements,
         bytes / 1e9, nd, t1 - t0, omp_get_max_threads(), bytes / 1e9 / (t1 - t0));
  return VL_OK;
}

static int hfconfig_roundtrip(const char *yaml, const char *dir) {
  vl_config a, b;
  VL_CALL(vl_config_load(&a, yaml));
  char *json;
  VL_CALL(vl_hfconfig_write(&a.model, "bfloat16", &json));
  mkdir(dir, 0755);
  char p[VL_PATH_MAX + 32], y[VL_PATH_MAX + 64];
  snprintf(p, sizeof p, "%s/config.json", dir);
  FILE *f = fopen(p, "w");
  if (!f) VL_ERROR(VL_EIO, "%s", p);
  fputs(json, f);
  fclose(f);
  snprintf(y, sizeof y, "model: {path: \"%s\"}\n", dir);
  VL_CALL(vl_config_load_string(&b, y, "(roundtrip)"));
  if (!same_model_config(&a.model, &b.model)) {
    fprintf(stderr, "FAIL: %s -> %s -> another model config\n", yaml, p);
    return VL_EINVAL;
  }
  printf("%s -> config.json -> the same model config\n", yaml);
  return VL_OK;
}

static int cmp_logits(const char *a, const char *b, const char *inputs) {
  vl_safetensors *sa, *sb, *si;
  VL_CALL(vl_st_open(&sa, a));
  VL_CALL(vl_st_open(&sb, b));
  VL_CALL(vl_st_open(&si, inputs));
  const vl_st_tensor *ta, *tb, *tm;
  VL_CALL(vl_st_get(sa, "logits", VL_DT_MASK(VL_DT_F32), 3, NULL, &ta));
  VL_CALL(vl_st_get(sb, "logits", VL_DT_MASK(VL_DT_F32), 3, vl_st_tensor_shape(ta), &tb));
  size_t n = vl_st_tensor_numel(ta), nm = 0;
  VL_CALL(vl_st_get(si, "attention_mask", VL_DT_ANY, 2, vl_st_tensor_shape(ta), &tm));
  int64_t *mask = read_i64(si, "attention_mask", &nm);
  float *x = malloc(n * 4), *y = malloc(n * 4);
  VL_CALL(vl_st_read_f32(ta, x, n));
  VL_CALL(vl_st_read_f32(tb, y, n));
  const size_t V = (size_t)vl_st_tensor_shape(ta)[2];
  double worst = 0, big = 0;
  size_t pos = 0;
  for (size_t r = 0; r < nm; r++) {
    if (!mask[r]) continue;
    pos++;
    for (size_t v = 0; v < V; v++) {
      double d = fabs((double)x[r * V + v] - y[r * V + v]);
      if (d > worst) worst = d;
      if (fabs(y[r * V + v]) > big) big = fabs(y[r * V + v]);
    }
  }
  printf("logits %s vs %s: %zu positions x %zu, max difference %.3e (max |logit| %.3f)\n", a, b, pos,
         V, worst, big);
  return worst <= 1e-4 * (big > 1 ? big : 1) ? VL_OK : VL_ESHAPE;
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
  else if (!strcmp(c, "logits") && argc == 5) rc = logits(argv[2], argv[3], argv[4]) ? 1 : 0;
  else if (!strcmp(c, "random-hf") && argc == 4) rc = random_hf(argv[2], argv[3]) ? 1 : 0;
  else if (!strcmp(c, "hfconfig-roundtrip") && argc == 4) rc = hfconfig_roundtrip(argv[2], argv[3]) ? 1 : 0;
  else if (!strcmp(c, "cmp-logits") && argc == 5) rc = cmp_logits(argv[2], argv[3], argv[4]) ? 1 : 0;
  else if (!strcmp(c, "time-load") && argc == 3) rc = time_load(argv[2]) ? 1 : 0;
  MPI_Finalize();
  return rc;
}
