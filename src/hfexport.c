/* hfexport: checkpoint reading (serial) and Hugging Face folders (see hfexport.h). */
#include "hfexport.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <hdf5.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ckpt.h"
#include "err.h"
#include "hfconfig.h"
#include "image.h"

#define CKPT_FORMAT "vltrain-checkpoint-1" /* ckpt.c's */

/* ---- checkpoint files ----------------------------------------------------------- */

static int attr_long(hid_t f, const char *file, const char *name, long long *v) {
  int ok = 0;
  H5E_BEGIN_TRY {
    if (H5Aexists(f, name) > 0) {
      hid_t a = H5Aopen(f, name, H5P_DEFAULT);
      ok = a >= 0 && H5Aread(a, H5T_NATIVE_LLONG, v) >= 0;
      if (a >= 0) H5Aclose(a);
    }
  } H5E_END_TRY;
  if (!ok) VL_ERROR(VL_EIO, "%s: attribute '%s' missing or unreadable: not a vltrain checkpoint, or a damaged one", file, name);
  return VL_OK;
}

/* A fixed-length string attribute, malloc'ed. */
static int attr_string(hid_t f, const char *file, const char *name, char **out) {
  int ok = 0;
  char *s = NULL;
  H5E_BEGIN_TRY {
    if (H5Aexists(f, name) > 0) {
      hid_t a = H5Aopen(f, name, H5P_DEFAULT), t = a >= 0 ? H5Aget_type(a) : -1;
      if (t >= 0 && H5Tget_class(t) == H5T_STRING && H5Tis_variable_str(t) == 0) {
        size_t n = H5Tget_size(t);
        s = calloc(n + 1, 1);
        hid_t mt = H5Tcopy(H5T_C_S1);
        if (s && mt >= 0 && H5Tset_size(mt, n) >= 0 && H5Aread(a, mt, s) >= 0) ok = 1;
        if (mt >= 0) H5Tclose(mt);
      }
      if (t >= 0) H5Tclose(t);
      if (a >= 0) H5Aclose(a);
    }
  } H5E_END_TRY;
  if (!ok) {
    free(s);
    VL_ERROR(VL_EIO, "%s: attribute '%s' missing or unreadable: not a vltrain checkpoint, or a damaged one", file, name);
  }
  *out = s;
  return VL_OK;
}

int vl_ckptfile_open(vl_ckptfile *f, const char *path) {
  memset(f, 0, sizeof *f);
  f->file_id = -1;
  snprintf(f->path, sizeof f->path, "%s", path);
  if (access(path, R_OK)) VL_ERROR(VL_EIO, "%s: cannot read: %s", path, strerror(errno));
  hid_t h;
  H5E_BEGIN_TRY { h = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT); } H5E_END_TRY;
  if (h < 0) VL_ERROR(VL_EIO, "%s: cannot open as HDF5 (truncated, damaged, or not a checkpoint)", path);
  f->file_id = h;
  int rc = VL_OK;
  char *fmt = NULL, *ver = NULL, *text = NULL;
  VL_CALL_GOTO(rc, fail, attr_string(h, path, "format", &fmt));
  if (strcmp(fmt, CKPT_FORMAT))
    VL_ERROR_GOTO(rc, fail, VL_EIO, "%s: format '%s', expected '%s'", path, fmt, CKPT_FORMAT);
  snprintf(f->format, sizeof f->format, "%s", fmt);
  VL_CALL_GOTO(rc, fail, attr_string(h, path, "vltrain_version", &ver));
  snprintf(f->version, sizeof f->version, "%s", ver);
  VL_CALL_GOTO(rc, fail, attr_long(h, path, "step", &f->step));
  VL_CALL_GOTO(rc, fail, attr_long(h, path, "world_size", &f->world_size));
  VL_CALL_GOTO(rc, fail, attr_long(h, path, "seed", &f->seed));
  VL_CALL_GOTO(rc, fail, attr_long(h, path, "n_parameters", &f->n_parameters));
  VL_CALL_GOTO(rc, fail, attr_string(h, path, "config", &text));
  if (vl_config_load_text(&f->cfg, text, path))
    VL_ERROR_GOTO(rc, fail, VL_EIO, "%s: its config text does not load: %s", path, vl_err_last());
  if (vl_model_build(&f->model, &f->cfg.model)) {
    vl_config_free(&f->cfg);
    VL_ERROR_GOTO(rc, fail, VL_EIO, "%s: its config does not give a model: %s", path, vl_err_last());
  }
  if ((size_t)f->n_parameters != f->model.n_elements) {
    vl_model_free(&f->model);
    vl_config_free(&f->cfg);
    VL_ERROR_GOTO(rc, fail, VL_EIO, "%s: n_parameters %lld, but its config gives a model of %zu",
                  path, f->n_parameters, f->model.n_elements);
  }
  free(fmt);
  free(ver);
  free(text);
  return VL_OK;
fail:
  free(fmt);
  free(ver);
  free(text);
  H5Fclose(h);
  f->file_id = -1;
  return rc;
}

void vl_ckptfile_close(vl_ckptfile *f) {
  if (f->file_id < 0) return;
  vl_model_free(&f->model);
  vl_config_free(&f->cfg);
  H5Fclose((hid_t)f->file_id);
  f->file_id = -1;
}

/* Reads one tensor whole; 0 ok, 1 missing, 2 wrong shape or type, 3 read error. */
static int read_tensor(hid_t g, const vl_param *p, float *dst, hsize_t *got, int *got_nd) {
  int res = 0;
  *got_nd = 0;
  H5E_BEGIN_TRY {
    if (H5Lexists(g, p->name, H5P_DEFAULT) <= 0) {
      res = 1;
    } else {
      hid_t d = H5Dopen2(g, p->name, H5P_DEFAULT);
      hid_t sp = d >= 0 ? H5Dget_space(d) : -1;
      hid_t t = d >= 0 ? H5Dget_type(d) : -1;
      int nd = sp >= 0 ? H5Sget_simple_extent_dims(sp, got, NULL) : -1;
      *got_nd = nd;
      int same = nd == p->ndim && t >= 0 && H5Tget_class(t) == H5T_FLOAT;
      for (int k = 0; same && k < nd; k++) same = got[k] == (hsize_t)p->shape[k];
      if (d < 0 || sp < 0) res = 3;
      else if (!same) res = 2;
      else if (H5Dread(d, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, dst) < 0) res = 3;
      if (t >= 0) H5Tclose(t);
      if (sp >= 0) H5Sclose(sp);
      if (d >= 0) H5Dclose(d);
    }
  } H5E_END_TRY;
  return res;
}

static void shape_text(char *buf, size_t n, const hsize_t *s, int nd) {
  size_t o = (size_t)snprintf(buf, n, "[");
  for (int k = 0; k < nd && o < n; k++)
    o += (size_t)snprintf(buf + o, n - o, "%s%llu", k ? ", " : "", (unsigned long long)s[k]);
  if (o < n) snprintf(buf + o, n - o, "]");
}

static void param_shape_text(char *buf, size_t n, const vl_param *p) {
  hsize_t s[VL_MAX_DIMS];
  for (int k = 0; k < p->ndim; k++) s[k] = (hsize_t)p->shape[k];
  shape_text(buf, n, s, p->ndim);
}

typedef struct {
  const vl_model *m;
  int extra;
  char first[VL_NAME_MAX];
  FILE *log;
  const char *where;
} extra_state;

#if H5_VERSION_GE(1, 12, 0)
#define VL_H5L_INFO H5L_info2_t
#define VL_H5LITERATE H5Literate2
#else
#define VL_H5L_INFO H5L_info_t
#define VL_H5LITERATE H5Literate
#endif

static herr_t count_extra(hid_t g, const char *name, const VL_H5L_INFO *info, void *op) {
  extra_state *e = op;
  if (vl_model_find(e->m, name) < 0) {
    if (!e->extra++) snprintf(e->first, sizeof e->first, "%s", name);
    if (e->log) fprintf(e->log, "vlckpt: %s: tensor %s is not in the model\n", e->where, name);
  }
  return 0;
}

/* Reads group into host; counts problems (printed to log). */
static int read_group(vl_ckptfile *f, const char *group, float *host, FILE *log, int *n_missing,
                      int *n_bad, int *n_unreadable, int *n_extra, int *n_altered, char *first,
                      size_t first_n) {
  const vl_model *m = &f->model;
  *n_missing = *n_bad = *n_unreadable = *n_extra = *n_altered = 0;
  first[0] = '\0';
  hid_t g;
  H5E_BEGIN_TRY { g = H5Gopen2((hid_t)f->file_id, group, H5P_DEFAULT); } H5E_END_TRY;
  if (g < 0) {
    if (log) fprintf(log, "vlckpt: %s: group /%s missing\n", f->path, group);
    *n_missing = m->n_params;
    snprintf(first, first_n, "/%s", group);
    return VL_OK;
  }
  char where[VL_PATH_MAX + 64];
  snprintf(where, sizeof where, "%s:/%s", f->path, group);
  for (int i = 0; i < m->n_params; i++) {
    const vl_param *p = &m->params[i];
    hsize_t got[32];
    int nd;
    int r = read_tensor(g, p, host + p->offset, got, &nd);
    if (r && !first[0]) snprintf(first, first_n, "%s", p->name);
    if (r == 1) {
      (*n_missing)++;
      if (log) fprintf(log, "vlckpt: %s: tensor %s missing\n", where, p->name);
    } else if (r == 2) {
      (*n_bad)++;
      char a[128], b[128];
      shape_text(a, sizeof a, got, nd > 0 && nd < 32 ? nd : 0);
      param_shape_text(b, sizeof b, p);
      if (log) fprintf(log, "vlckpt: %s: tensor %s has shape %s, the model expects float %s\n",
                       where, p->name, a, b);
    } else if (r == 3) {
      (*n_unreadable)++;
      if (log) fprintf(log, "vlckpt: %s: tensor %s cannot be read (truncated or damaged file)\n",
                       where, p->name);
    } else { /* the values against the checksum vl_ckpt_save stored with them */
      unsigned long long want = 0;
      int has = 0;
      H5E_BEGIN_TRY {
        hid_t a = H5Aexists_by_name(g, p->name, "checksum", H5P_DEFAULT) > 0
                      ? H5Aopen_by_name(g, p->name, "checksum", H5P_DEFAULT, H5P_DEFAULT) : -1;
        has = a >= 0 && H5Aread(a, H5T_NATIVE_ULLONG, &want) >= 0;
        if (a >= 0) H5Aclose(a);
      } H5E_END_TRY;
      if (!has || want != vl_ckpt_checksum(host + p->offset, 0, p->numel)) {
        (*n_altered)++;
        if (!first[0]) snprintf(first, first_n, "%s", p->name);
        if (log) fprintf(log, "vlckpt: %s: tensor %s %s\n", where, p->name,
                         has ? "does not match its checksum (altered or damaged)" : "has no checksum");
      }
    }
  }
  extra_state e = {.m = m, .log = log, .where = where};
  hsize_t idx = 0;
  H5E_BEGIN_TRY { VL_H5LITERATE(g, H5_INDEX_NAME, H5_ITER_NATIVE, &idx, count_extra, &e); } H5E_END_TRY;
  *n_extra = e.extra;
  if (e.extra && !first[0]) snprintf(first, first_n, "%s", e.first);
  H5Gclose(g);
  return VL_OK;
}

int vl_ckptfile_read(vl_ckptfile *f, const char *group, float *host) {
  int a, b, c, d, e;
  char first[VL_NAME_MAX + 16];
  VL_CALL(read_group(f, group, host, stderr, &a, &b, &c, &d, &e, first, sizeof first));
  if (a || b || c || d)
    VL_ERROR(VL_ESHAPE, "%s:/%s: %d tensor(s) missing, %d of the wrong shape, %d unreadable, "
             "%d not in the model (first: %s; each named above)", f->path, group, a, b, c, d, first);
  if (e)
    VL_ERROR(VL_EIO, "%s:/%s: %d tensor(s) differ from their checksum (first: %s): the file is damaged "
             "or was altered", f->path, group, e, first);
  return VL_OK;
}

int vl_ckptfile_inspect(vl_ckptfile *f, FILE *out, int *problems) {
  const vl_model *m = &f->model;
  *problems = 0;
  fprintf(out, "checkpoint: %s\nformat: %s (vltrain %s)\nstep: %lld\nworld size: %lld\nseed: %lld\n"
          "parameters: %lld in %d tensors (%s)\n", f->path, f->format, f->version, f->step,
          f->world_size, f->seed, f->n_parameters, m->n_params,
          m->cfg.family == VL_FAMILY_QWEN3_VL ? "qwen3-vl" : "qwen2-vl");
  fprintf(out, "config:\n");
  for (const char *p = f->cfg.text; p && *p;) {
    const char *e = strchr(p, '\n');
    int n = e ? (int)(e - p) : (int)strlen(p);
    fprintf(out, "  | %.*s\n", n, p);
    p += n + (e != NULL);
  }
  fprintf(out, "tensors (/params, /optimizer/m and /optimizer/v each; float32):\n");
  for (int i = 0; i < m->n_params; i++) {
    char s[128];
    param_shape_text(s, sizeof s, &m->params[i]);
    fprintf(out, "  %-60s %-20s %zu\n", m->params[i].name, s, m->params[i].numel);
  }
  float *host = NULL;
  VL_CALL(vl_malloc((void **)&host, m->n_elements * sizeof(float), "checkpoint tensors"));
  static const char *const groups[] = {"params", "optimizer/m", "optimizer/v"};
  int miss = 0, bad = 0, unread = 0, extra = 0, altered = 0;
  size_t nonfinite = 0;
  for (int k = 0; k < 3; k++) {
    int a, b, c, d, e;
    char first[VL_NAME_MAX + 16];
    memset(host, 0, m->n_elements * sizeof(float));
    VL_CALL(read_group(f, groups[k], host, out, &a, &b, &c, &d, &e, first, sizeof first));
    miss += a, bad += b, unread += c, extra += d, altered += e;
    for (size_t j = 0; j < m->n_elements; j++) nonfinite += !isfinite(host[j]);
  }
  free(host);
  fprintf(out, "checks:\n");
  fprintf(out, "  readable: %s (%d unreadable tensors)\n", unread ? "FAILED" : "ok", unread);
  fprintf(out, "  complete: %s (%d missing, %d of the wrong shape, %d not in the model, over 3 x %d tensors)\n",
          miss || bad || extra ? "FAILED" : "ok", miss, bad, extra, m->n_params);
  fprintf(out, "  finite:   %s (%zu non-finite values in weights and moments)\n",
          nonfinite ? "FAILED" : "ok", nonfinite);
  fprintf(out, "  intact:   %s (%d tensors differ from their checksum or have none)\n",
          altered ? "FAILED" : "ok", altered);
  *problems = (unread > 0) + (miss || bad || extra) + (nonfinite > 0) + (altered > 0);
  return VL_OK;
}

/* ---- export ------------------------------------------------------------------------ */

static int write_text(const char *dir, const char *name, const char *text) {
  char path[VL_PATH_MAX + 64];
  snprintf(path, sizeof path, "%s/%s", dir, name);
  FILE *fp = fopen(path, "w");
  if (!fp) VL_ERROR(VL_EIO, "%s: cannot create: %s", path, strerror(errno));
  int bad = fputs(text, fp) < 0 || fputc('\n', fp) < 0;
  bad |= fclose(fp) != 0;
  if (bad) VL_ERROR(VL_EIO, "%s: write failed: %s", path, strerror(errno));
  return VL_OK;
}

/* The ids of <|endoftext|> and <|im_end|> among a tokenizer.json's
 * added_tokens (-1 when absent). */
static int added_token_ids(const char *path, int32_t *eot, int32_t *eos) {
  uint8_t *bytes = NULL;
  size_t n = 0;
  VL_CALL(vl_image_read_file(path, &bytes, &n)); /* a file's bytes (image.h) */
  cJSON *root = cJSON_ParseWithLength((const char *)bytes, n);
  free(bytes);
  if (!root) VL_ERROR(VL_EIO, "not JSON");
  const cJSON *added = cJSON_GetObjectItemCaseSensitive(root, "added_tokens");
  const cJSON *a = NULL;
  if (!cJSON_IsArray(added)) added = NULL;
  cJSON_ArrayForEach(a, added) {
    const cJSON *c = cJSON_GetObjectItemCaseSensitive(a, "content"), *id = cJSON_GetObjectItemCaseSensitive(a, "id");
    if (!cJSON_IsString(c) || !cJSON_IsNumber(id)) continue;
    if (!strcmp(c->valuestring, "<|endoftext|>")) *eot = (int32_t)id->valuedouble;
    if (!strcmp(c->valuestring, "<|im_end|>")) *eos = (int32_t)id->valuedouble;
  }
  cJSON_Delete(root);
  return VL_OK;
}

/* Copies src_dir/name to dir/name if it exists; *copied set to 1 then. */
static int copy_if_present(const char *src_dir, const char *dir, const char *name, int *copied) {
  char from[VL_PATH_MAX + 64], to[VL_PATH_MAX + 64];
  snprintf(from, sizeof from, "%s/%s", src_dir, name);
  snprintf(to, sizeof to, "%s/%s", dir, name);
  return vl_hf_copy_file(from, to, copied);
}

int vl_hf_copy_file(const char *from, const char *to, int *copied) {
  *copied = 0;
  FILE *in = fopen(from, "rb");
  if (!in) return VL_OK;
  FILE *o = fopen(to, "wb");
  if (!o) {
    fclose(in);
    VL_ERROR(VL_EIO, "%s: cannot create: %s", to, strerror(errno));
  }
  char buf[65536];
  size_t n;
  int bad = 0;
  while ((n = fread(buf, 1, sizeof buf, in)) > 0)
    if (fwrite(buf, 1, n, o) != n) bad = 1;
  bad |= ferror(in);
  fclose(in);
  bad |= fclose(o) != 0;
  if (bad) VL_ERROR(VL_EIO, "copying %s to %s failed", from, to);
  *copied = 1;
  return VL_OK;
}

int vl_hf_export(const vl_model *m, const float *host, const char *outdir, vl_dtype dtype,
                 size_t shard_bytes, const char *src_dir) {
  if (dtype != VL_DT_BF16 && dtype != VL_DT_F32)
    VL_ERROR(VL_EINVAL, "export dtype %s: expected BF16 or F32", vl_dtype_name(dtype));
  struct stat sb;
  if (stat(outdir, &sb) == 0) {
    if (!S_ISDIR(sb.st_mode)) VL_ERROR(VL_EINVAL, "%s exists and is not a folder", outdir);
    char probe[VL_PATH_MAX + 64];
    static const char *const ours[] = {"config.json", "model.safetensors", "model.safetensors.index.json"};
    for (int i = 0; i < 3; i++) {
      snprintf(probe, sizeof probe, "%s/%s", outdir, ours[i]);
      if (access(probe, F_OK) == 0)
        VL_ERROR(VL_EINVAL, "%s already holds %s: export into a new or empty folder", outdir, ours[i]);
    }
  } else if (mkdir(outdir, 0755)) {
    VL_ERROR(VL_EIO, "cannot create %s: %s", outdir, strerror(errno));
  }
  const size_t es = vl_dtype_size(dtype);
  int rc = VL_OK;
  uint16_t *b16 = NULL;
  vl_st_entry *ents = calloc((size_t)m->n_params, sizeof *ents);
  char *json = NULL;
  if (!ents) VL_ERROR(VL_ENOMEM, "export: out of memory");
  if (dtype == VL_DT_BF16) {
    VL_CALL_GOTO(rc, done, vl_malloc((void **)&b16, m->n_elements * sizeof(uint16_t), "bf16 export"));
#pragma omp parallel for schedule(static)
    for (size_t j = 0; j < m->n_elements; j++) b16[j] = vl_bf16_from_f32(host[j]);
  }
  for (int i = 0; i < m->n_params; i++) {
    const vl_param *p = &m->params[i];
    ents[i].name = p->name;
    ents[i].dtype = dtype;
    ents[i].ndim = p->ndim;
    for (int d = 0; d < p->ndim; d++) ents[i].shape[d] = p->shape[d];
    ents[i].data = dtype == VL_DT_BF16 ? (const void *)(b16 + p->offset) : (const void *)(host + p->offset);
  }
  static const char *const meta[] = {"format", "pt"};
  if (m->n_elements * es <= shard_bytes) {
    char path[VL_PATH_MAX + 64];
    snprintf(path, sizeof path, "%s/model.safetensors", outdir);
    VL_CALL_GOTO(rc, done, vl_st_write(path, ents, m->n_params, meta, 1));
  } else {
    VL_CALL_GOTO(rc, done, vl_st_write_sharded(outdir, ents, m->n_params, shard_bytes, meta, 1));
  }
  VL_CALL_GOTO(rc, done, vl_hfconfig_write(&m->cfg, dtype == VL_DT_BF16 ? "bfloat16" : "float32", &json));
  VL_CALL_GOTO(rc, done, write_text(outdir, "config.json", json));
  int have_gen = 0;
  if (src_dir && src_dir[0]) {
    static const char *const files[] = {
        "tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt",
        "special_tokens_map.json", "added_tokens.json", "chat_template.json",
        "chat_template.jinja", "preprocessor_config.json", "video_preprocessor_config.json",
        "generation_config.json", NULL};
    for (int i = 0; files[i]; i++) {
      int c = 0;
      VL_CALL_GOTO(rc, done, copy_if_present(src_dir, outdir, files[i], &c));
      if (c && !strcmp(files[i], "generation_config.json")) have_gen = 1;
    }
  }
  /* No generation_config.json came with the files: the end-of-turn tokens
   * of the exported tokenizer (chat models stop at <|im_end|>), else the
   * Qwen vocabulary's ids when the model has that vocabulary. */
  if (!have_gen) {
    int32_t eot = -1, eos = -1;
    char tok[VL_PATH_MAX + 32];
    snprintf(tok, sizeof tok, "%s/tokenizer.json", outdir);
    if (access(tok, R_OK) == 0) {
      if (added_token_ids(tok, &eot, &eos) != VL_OK)
        fprintf(stderr, "export: %s: %s; no generation_config.json written\n", tok, vl_err_last());
    } else if (m->cfg.text.vocab_size > 151645) {
      eot = 151643, eos = 151645;
    }
    if (eot >= 0 && eos >= 0) {
      char gen[160];
      snprintf(gen, sizeof gen, "{\n  \"bos_token_id\": %d,\n  \"eos_token_id\": [%d, %d],\n"
               "  \"pad_token_id\": %d\n}", (int)eot, (int)eos, (int)eot, (int)eot);
      VL_CALL_GOTO(rc, done, write_text(outdir, "generation_config.json", gen));
    }
  }
done:
  free(json);
  free(b16);
  free(ents);
  return rc;
}
