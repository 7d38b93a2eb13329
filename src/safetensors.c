/* safetensors: reader (mmap + cJSON) and writer (see safetensors.h). */
#include "safetensors.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "err.h"

struct vl_st_tensor {
  char *name;
  vl_dtype dtype;
  int ndim;
  int64_t shape[8];
  size_t numel, nbytes;
  const void *data;
  int shard;
};

typedef struct {
  char *path;
  void *map;
  size_t size;
} shard_map;

struct vl_safetensors {
  char *path;
  shard_map *shards;
  int n_shards;
  vl_st_tensor *t;     /* sorted by name */
  size_t n, cap;
  cJSON *meta;         /* __metadata__ of the first file or the index metadata */
};

static const char *const dt_names[VL_DT_COUNT] = {"F64", "F32", "F16", "BF16", "I64",
                                                  "I32", "I16", "I8",  "U8",  "BOOL"};
static const size_t dt_sizes[VL_DT_COUNT] = {8, 4, 2, 2, 8, 4, 2, 1, 1, 1};
const char *vl_dtype_name(vl_dtype d) { return d < VL_DT_COUNT ? dt_names[d] : "?"; }
size_t vl_dtype_size(vl_dtype d) { return d < VL_DT_COUNT ? dt_sizes[d] : 0; }

/* ---- conversions ------------------------------------------------------------ */
uint16_t vl_bf16_from_f32(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  if ((u & 0x7F800000u) == 0x7F800000u && (u & 0x007FFFFFu)) return (uint16_t)((u >> 16) | 0x40);
  u += 0x7FFFu + ((u >> 16) & 1u);
  return (uint16_t)(u >> 16);
}
float vl_f32_from_bf16(uint16_t b) {
  uint32_t u = (uint32_t)b << 16;
  float f;
  memcpy(&f, &u, 4);
  return f;
}
float vl_f32_from_f16(uint16_t h) {
  const int s = h >> 15, e = (h >> 10) & 31, m = h & 1023;
  float v;
  if (e == 0) v = ldexpf((float)m, -24);
  else if (e == 31) v = m ? NAN : INFINITY;
  else v = ldexpf((float)(m + 1024), e - 25);
  return s ? -v : v;
}

/* ---- accessors ------------------------------------------------------------ */
const char *vl_st_tensor_name(const vl_st_tensor *t) { return t->name; }
vl_dtype vl_st_tensor_dtype(const vl_st_tensor *t) { return t->dtype; }
int vl_st_tensor_ndim(const vl_st_tensor *t) { return t->ndim; }
const int64_t *vl_st_tensor_shape(const vl_st_tensor *t) { return t->shape; }
size_t vl_st_tensor_numel(const vl_st_tensor *t) { return t->numel; }
const void *vl_st_tensor_data(const vl_st_tensor *t) { return t->data; }
size_t vl_st_tensor_nbytes(const vl_st_tensor *t) { return t->nbytes; }
size_t vl_st_count(const vl_safetensors *st) { return st->n; }
const vl_st_tensor *vl_st_at(const vl_safetensors *st, size_t i) {
  return i < st->n ? &st->t[i] : NULL;
}

static int cmp_tensor(const void *a, const void *b) {
  return strcmp(((const vl_st_tensor *)a)->name, ((const vl_st_tensor *)b)->name);
}

const vl_st_tensor *vl_st_find(const vl_safetensors *st, const char *name) {
  size_t lo = 0, hi = st->n;
  while (lo < hi) {
    size_t mid = (lo + hi) / 2;
    int c = strcmp(st->t[mid].name, name);
    if (c == 0) return &st->t[mid];
    if (c < 0) lo = mid + 1; else hi = mid;
  }
  return NULL;
}

const char *vl_st_metadata(const vl_safetensors *st, const char *key) {
  const cJSON *v = st->meta ? cJSON_GetObjectItemCaseSensitive(st->meta, key) : NULL;
  return cJSON_IsString(v) ? v->valuestring : NULL;
}

static void shape_text(char *buf, size_t n, int ndim, const int64_t *shape) {
  size_t o = (size_t)snprintf(buf, n, "[");
  for (int d = 0; d < ndim && o < n; d++)
    o += (size_t)snprintf(buf + o, n - o, "%s%lld", d ? ", " : "", (long long)shape[d]);
  if (o < n) snprintf(buf + o, n - o, "]");
}

int vl_st_check_shape(const vl_safetensors *st, const vl_st_tensor *t, int ndim,
                      const int64_t *shape) {
  int same = t->ndim == ndim;
  for (int d = 0; same && d < ndim; d++) same = t->shape[d] == shape[d];
  if (same) return VL_OK;
  char a[128], b[128];
  shape_text(a, sizeof a, t->ndim, t->shape);
  shape_text(b, sizeof b, ndim, shape);
  VL_ERROR(VL_ESHAPE, "%s: tensor '%s' has shape %s, expected %s",
           st->shards[t->shard].path, t->name, a, b);
}

int vl_st_read_f32(const vl_st_tensor *t, float *dst, size_t n) {
  if (n != t->numel)
    VL_ERROR(VL_ESHAPE, "tensor '%s' has %zu elements, %zu requested", t->name, t->numel, n);
  const unsigned char *p = t->data;
  for (size_t i = 0; i < n; i++) {
    switch (t->dtype) {
    case VL_DT_F32: memcpy(&dst[i], p + 4 * i, 4); break;
    case VL_DT_F64: { double d; memcpy(&d, p + 8 * i, 8); dst[i] = (float)d; break; }
    case VL_DT_BF16: { uint16_t h; memcpy(&h, p + 2 * i, 2); dst[i] = vl_f32_from_bf16(h); break; }
    case VL_DT_F16: { uint16_t h; memcpy(&h, p + 2 * i, 2); dst[i] = vl_f32_from_f16(h); break; }
    case VL_DT_I64: { int64_t v; memcpy(&v, p + 8 * i, 8); dst[i] = (float)v; break; }
    case VL_DT_I32: { int32_t v; memcpy(&v, p + 4 * i, 4); dst[i] = (float)v; break; }
    case VL_DT_I16: { int16_t v; memcpy(&v, p + 2 * i, 2); dst[i] = (float)v; break; }
    case VL_DT_I8: dst[i] = (float)(int8_t)p[i]; break;
    default: dst[i] = (float)p[i]; break;
    }
  }
  return VL_OK;
}

int vl_st_read_i64(const vl_st_tensor *t, int64_t *dst, size_t n) {
  if (n != t->numel)
    VL_ERROR(VL_ESHAPE, "tensor '%s' has %zu elements, %zu requested", t->name, t->numel, n);
  const unsigned char *p = t->data;
  for (size_t i = 0; i < n; i++) {
    switch (t->dtype) {
    case VL_DT_I64: memcpy(&dst[i], p + 8 * i, 8); break;
    case VL_DT_I32: { int32_t v; memcpy(&v, p + 4 * i, 4); dst[i] = v; break; }
    case VL_DT_I16: { int16_t v; memcpy(&v, p + 2 * i, 2); dst[i] = v; break; }
    case VL_DT_I8: dst[i] = (int8_t)p[i]; break;
    case VL_DT_U8: case VL_DT_BOOL: dst[i] = p[i]; break;
    default:
      VL_ERROR(VL_ESHAPE, "tensor '%s' is %s, an integer tensor was expected", t->name,
               vl_dtype_name(t->dtype));
    }
  }
  return VL_OK;
}

/* ---- opening ------------------------------------------------------------------- */
static int add_tensor(vl_safetensors *st, vl_st_tensor *t) {
  if (st->n == st->cap) {
    size_t cap = st->cap ? 2 * st->cap : 64;
    vl_st_tensor *nt = realloc(st->t, cap * sizeof *nt);
    if (!nt) VL_ERROR(VL_ENOMEM, "tensor table");
    st->t = nt;
    st->cap = cap;
  }
  st->t[st->n++] = *t;
  return VL_OK;
}

static int map_shard(vl_safetensors *st, const char *path, int *index) {
  shard_map *ns = realloc(st->shards, (size_t)(st->n_shards + 1) * sizeof *ns);
  if (!ns) VL_ERROR(VL_ENOMEM, "shard table");
  st->shards = ns;
  shard_map *sh = &st->shards[st->n_shards];
  memset(sh, 0, sizeof *sh);
  sh->path = strdup(path);
  st->n_shards++;
  *index = st->n_shards - 1;
  int fd = open(path, O_RDONLY);
  if (fd < 0) VL_ERROR(VL_EIO, "%s: cannot open: %s", path, strerror(errno));
  struct stat sb;
  if (fstat(fd, &sb)) {
    close(fd);
    VL_ERROR(VL_EIO, "%s: cannot stat: %s", path, strerror(errno));
  }
  sh->size = (size_t)sb.st_size;
  if (sh->size < 8) {
    close(fd);
    VL_ERROR(VL_EIO, "%s: truncated: %zu bytes, a safetensors file has at least 8", path, sh->size);
  }
  sh->map = mmap(NULL, sh->size, PROT_READ, MAP_PRIVATE, fd, 0);
  close(fd);
  if (sh->map == MAP_FAILED) {
    sh->map = NULL;
    VL_ERROR(VL_EIO, "%s: mmap failed: %s", path, strerror(errno));
  }
  return VL_OK;
}

static int parse_dtype(const char *s, vl_dtype *dt) {
  for (int i = 0; i < VL_DT_COUNT; i++)
    if (!strcmp(s, dt_names[i])) { *dt = (vl_dtype)i; return 1; }
  return 0;
}

/* Parses one shard's header; adds its tensors (all, or only `only` if given). */
static int parse_shard(vl_safetensors *st, int index) {
  shard_map *sh = &st->shards[index];
  const unsigned char *b = sh->map;
  uint64_t hlen = 0;
  for (int i = 7; i >= 0; i--) hlen = (hlen << 8) | b[i];
  if (hlen > sh->size - 8 || hlen > 100u * 1024 * 1024)
    VL_ERROR(VL_EIO, "%s: header length %llu exceeds the file (%zu bytes) or 100 MB: "
             "truncated or not a safetensors file", sh->path, (unsigned long long)hlen, sh->size);
  const char *end = NULL;
  cJSON *root = cJSON_ParseWithLengthOpts((const char *)b + 8, (size_t)hlen, &end, 0);
  if (!root || !cJSON_IsObject(root)) {
    long at = end ? (long)(end - (const char *)b - 8) : -1;
    cJSON_Delete(root);
    VL_ERROR(VL_EIO, "%s: header is not valid JSON (error near byte %ld of the header)", sh->path, at);
  }
  const size_t data0 = 8 + (size_t)hlen, data_len = sh->size - data0;
  int rc = VL_OK;
  cJSON *item;
  cJSON_ArrayForEach(item, root) {
    if (!strcmp(item->string, "__metadata__")) {
      if (!st->meta && cJSON_IsObject(item)) st->meta = cJSON_Duplicate(item, 1);
      continue;
    }
    vl_st_tensor t;
    memset(&t, 0, sizeof t);
    t.shard = index;
    const cJSON *dt = cJSON_GetObjectItemCaseSensitive(item, "dtype");
    const cJSON *shape = cJSON_GetObjectItemCaseSensitive(item, "shape");
    const cJSON *offs = cJSON_GetObjectItemCaseSensitive(item, "data_offsets");
    if (!cJSON_IsString(dt) || !cJSON_IsArray(shape) || !cJSON_IsArray(offs) ||
        cJSON_GetArraySize(offs) != 2)
      VL_ERROR_GOTO(rc, done, VL_EIO, "%s: tensor '%s': entry needs dtype (string), shape (list) "
                    "and data_offsets ([begin, end])", sh->path, item->string);
    if (!parse_dtype(dt->valuestring, &t.dtype))
      VL_ERROR_GOTO(rc, done, VL_EIO, "%s: tensor '%s': unknown dtype '%s'", sh->path,
                    item->string, dt->valuestring);
    t.ndim = cJSON_GetArraySize(shape);
    if (t.ndim > 8)
      VL_ERROR_GOTO(rc, done, VL_EIO, "%s: tensor '%s': %d dimensions (at most 8)", sh->path,
                    item->string, t.ndim);
    t.numel = 1;
    for (int d = 0; d < t.ndim; d++) {
      const cJSON *e = cJSON_GetArrayItem(shape, d);
      if (!cJSON_IsNumber(e) || e->valuedouble < 0 || e->valuedouble != floor(e->valuedouble))
        VL_ERROR_GOTO(rc, done, VL_EIO, "%s: tensor '%s': shape entries must be non-negative integers",
                      sh->path, item->string);
      t.shape[d] = (int64_t)e->valuedouble;
      t.numel *= (size_t)t.shape[d];
    }
    const cJSON *o0 = cJSON_GetArrayItem(offs, 0), *o1 = cJSON_GetArrayItem(offs, 1);
    if (!cJSON_IsNumber(o0) || !cJSON_IsNumber(o1) || o0->valuedouble < 0 ||
        o1->valuedouble < o0->valuedouble || o1->valuedouble > (double)data_len)
      VL_ERROR_GOTO(rc, done, VL_EIO, "%s: tensor '%s': data_offsets out of range "
                    "(the data buffer has %zu bytes): truncated file?", sh->path, item->string, data_len);
    size_t begin = (size_t)o0->valuedouble;
    t.nbytes = (size_t)o1->valuedouble - begin;
    if (t.nbytes != t.numel * dt_sizes[t.dtype])
      VL_ERROR_GOTO(rc, done, VL_EIO, "%s: tensor '%s': %zu bytes for %zu elements of %s",
                    sh->path, item->string, t.nbytes, t.numel, dt_names[t.dtype]);
    t.data = b + data0 + begin;
    t.name = strdup(item->string);
    if (!t.name) VL_ERROR_GOTO(rc, done, VL_ENOMEM, "tensor name");
    VL_CALL_GOTO(rc, done, add_tensor(st, &t));
  }
done:
  cJSON_Delete(root);
  return rc;
}

static int finish(vl_safetensors *st) {
  qsort(st->t, st->n, sizeof *st->t, cmp_tensor);
  for (size_t i = 1; i < st->n; i++)
    if (!strcmp(st->t[i].name, st->t[i - 1].name))
      VL_ERROR(VL_EIO, "%s: tensor '%s' appears twice (%s and %s)", st->path, st->t[i].name,
               st->shards[st->t[i - 1].shard].path, st->shards[st->t[i].shard].path);
  return VL_OK;
}

static int read_text(const char *path, char **out) {
  FILE *f = fopen(path, "rb");
  if (!f) VL_ERROR(VL_EIO, "%s: cannot open: %s", path, strerror(errno));
  fseek(f, 0, SEEK_END);
  long n = ftell(f);
  fseek(f, 0, SEEK_SET);
  char *b = malloc((size_t)n + 1);
  if (!b || fread(b, 1, (size_t)n, f) != (size_t)n) {
    free(b);
    fclose(f);
    VL_ERROR(VL_EIO, "%s: read failed", path);
  }
  b[n] = 0;
  fclose(f);
  *out = b;
  return VL_OK;
}

static int open_index(vl_safetensors *st, const char *dir, const char *index_path) {
  char *text = NULL;
  VL_CALL(read_text(index_path, &text));
  cJSON *root = cJSON_Parse(text);
  free(text);
  int rc = VL_OK;
  const cJSON *map = root ? cJSON_GetObjectItemCaseSensitive(root, "weight_map") : NULL;
  if (!cJSON_IsObject(map))
    VL_ERROR_GOTO(rc, done, VL_EIO, "%s: not a safetensors index (no weight_map object)", index_path);
  const cJSON *meta = cJSON_GetObjectItemCaseSensitive(root, "metadata");
  if (cJSON_IsObject(meta)) st->meta = cJSON_Duplicate(meta, 1);
  const cJSON *e;
  cJSON_ArrayForEach(e, map) {
    if (!cJSON_IsString(e))
      VL_ERROR_GOTO(rc, done, VL_EIO, "%s: weight_map['%s'] is not a file name", index_path, e->string);
    int known = -1;
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, e->valuestring);
    for (int s = 0; s < st->n_shards; s++)
      if (!strcmp(st->shards[s].path, path)) known = s;
    if (known < 0) {
      VL_CALL_GOTO(rc, done, map_shard(st, path, &known));
      VL_CALL_GOTO(rc, done, parse_shard(st, known));
    }
  }
  VL_CALL_GOTO(rc, done, finish(st));
  cJSON_ArrayForEach(e, map) {
    const vl_st_tensor *t = vl_st_find(st, e->string);
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, e->valuestring);
    if (!t || strcmp(st->shards[t->shard].path, path))
      VL_ERROR_GOTO(rc, done, VL_EIO, "%s: tensor '%s' is listed in %s but not found in %s",
                    dir, e->string, index_path, e->valuestring);
  }
done:
  cJSON_Delete(root);
  return rc;
}

int vl_st_open(vl_safetensors **out, const char *path) {
  *out = NULL;
  vl_safetensors *st = calloc(1, sizeof *st);
  if (!st) VL_ERROR(VL_ENOMEM, "safetensors handle");
  st->path = strdup(path);
  struct stat sb;
  int rc = VL_OK, idx;
  if (stat(path, &sb))
    VL_ERROR_GOTO(rc, fail, VL_EIO, "%s: %s", path, strerror(errno));
  if (S_ISDIR(sb.st_mode)) {
    char p[4096];
    snprintf(p, sizeof p, "%s/model.safetensors.index.json", path);
    if (access(p, R_OK) == 0) {
      VL_CALL_GOTO(rc, fail, open_index(st, path, p));
    } else {
      snprintf(p, sizeof p, "%s/model.safetensors", path);
      if (access(p, R_OK))
        VL_ERROR_GOTO(rc, fail, VL_EIO, "%s: neither model.safetensors.index.json nor "
                      "model.safetensors in this folder", path);
      VL_CALL_GOTO(rc, fail, map_shard(st, p, &idx));
      VL_CALL_GOTO(rc, fail, parse_shard(st, idx));
      VL_CALL_GOTO(rc, fail, finish(st));
    }
  } else {
    VL_CALL_GOTO(rc, fail, map_shard(st, path, &idx));
    VL_CALL_GOTO(rc, fail, parse_shard(st, idx));
    VL_CALL_GOTO(rc, fail, finish(st));
  }
  *out = st;
  return VL_OK;
fail:
  vl_st_close(st);
  return rc;
}

void vl_st_close(vl_safetensors *st) {
  if (!st) return;
  for (size_t i = 0; i < st->n; i++) free(st->t[i].name);
  for (int s = 0; s < st->n_shards; s++) {
    if (st->shards[s].map) munmap(st->shards[s].map, st->shards[s].size);
    free(st->shards[s].path);
  }
  cJSON_Delete(st->meta);
  free(st->shards);
  free(st->t);
  free(st->path);
  free(st);
}

/* ---- writing -------------------------------------------------------------------- */
static size_t entry_bytes(const vl_st_entry *e) {
  size_t n = dt_sizes[e->dtype];
  for (int d = 0; d < e->ndim; d++) n *= (size_t)e->shape[d];
  return n;
}

int vl_st_write(const char *path, const vl_st_entry *entries, int n, const char *const *meta_kv,
                int n_meta) {
  cJSON *root = cJSON_CreateObject();
  if (!root) VL_ERROR(VL_ENOMEM, "JSON header");
  if (n_meta > 0) {
    cJSON *meta = cJSON_AddObjectToObject(root, "__metadata__");
    for (int i = 0; i < n_meta; i++) cJSON_AddStringToObject(meta, meta_kv[2 * i], meta_kv[2 * i + 1]);
  }
  size_t off = 0;
  for (int i = 0; i < n; i++) {
    cJSON *t = cJSON_AddObjectToObject(root, entries[i].name);
    cJSON_AddStringToObject(t, "dtype", dt_names[entries[i].dtype]);
    cJSON *sh = cJSON_AddArrayToObject(t, "shape");
    for (int d = 0; d < entries[i].ndim; d++)
      cJSON_AddItemToArray(sh, cJSON_CreateNumber((double)entries[i].shape[d]));
    cJSON *of = cJSON_AddArrayToObject(t, "data_offsets");
    size_t nb = entry_bytes(&entries[i]);
    cJSON_AddItemToArray(of, cJSON_CreateNumber((double)off));
    cJSON_AddItemToArray(of, cJSON_CreateNumber((double)(off + nb)));
    off += nb;
  }
  char *json = cJSON_PrintUnformatted(root);
  cJSON_Delete(root);
  if (!json) VL_ERROR(VL_ENOMEM, "JSON header");
  size_t hl = strlen(json), padded = (hl + 7) / 8 * 8;
  char tmp[4096];
  snprintf(tmp, sizeof tmp, "%s.tmp", path);
  FILE *f = fopen(tmp, "wb");
  if (!f) {
    free(json);
    VL_ERROR(VL_EIO, "%s: cannot create: %s", tmp, strerror(errno));
  }
  unsigned char len8[8];
  for (int i = 0; i < 8; i++) len8[i] = (unsigned char)(padded >> (8 * i));
  int ok = fwrite(len8, 1, 8, f) == 8 && fwrite(json, 1, hl, f) == hl;
  for (size_t i = hl; ok && i < padded; i++) ok = fputc(' ', f) != EOF;
  free(json);
  for (int i = 0; ok && i < n; i++) {
    size_t nb = entry_bytes(&entries[i]);
    ok = fwrite(entries[i].data, 1, nb, f) == nb;
  }
  if (fclose(f) != 0) ok = 0;
  if (!ok) {
    unlink(tmp);
    VL_ERROR(VL_EIO, "%s: write failed: %s", tmp, strerror(errno));
  }
  if (rename(tmp, path)) VL_ERROR(VL_EIO, "rename %s -> %s: %s", tmp, path, strerror(errno));
  return VL_OK;
}

int vl_st_write_sharded(const char *dir, const vl_st_entry *entries, int n,
                        size_t max_shard_bytes, const char *const *meta_kv, int n_meta) {
  int *shard_of = calloc((size_t)n + 1, sizeof(int));
  if (!shard_of) VL_ERROR(VL_ENOMEM, "shard plan");
  int n_shards = 0;
  size_t in_shard = 0, total = 0;
  for (int i = 0; i < n; i++) {
    size_t nb = entry_bytes(&entries[i]);
    if (i == 0 || (in_shard > 0 && in_shard + nb > max_shard_bytes)) { n_shards++; in_shard = 0; }
    shard_of[i] = n_shards - 1;
    in_shard += nb;
    total += nb;
  }
  int rc = VL_OK;
  cJSON *index = cJSON_CreateObject();
  cJSON *meta = cJSON_AddObjectToObject(index, "metadata");
  cJSON_AddNumberToObject(meta, "total_size", (double)total);
  cJSON *map = cJSON_AddObjectToObject(index, "weight_map");
  for (int s = 0; s < n_shards && rc == VL_OK; s++) {
    char name[64], path[4096];
    snprintf(name, sizeof name, "model-%05d-of-%05d.safetensors", s + 1, n_shards);
    snprintf(path, sizeof path, "%s/%s", dir, name);
    int first = -1, count = 0;
    for (int i = 0; i < n; i++)
      if (shard_of[i] == s) {
        if (first < 0) first = i;
        count++;
        cJSON_AddStringToObject(map, entries[i].name, name);
      }
    rc = vl_st_write(path, entries + first, count, meta_kv, n_meta);
  }
  free(shard_of);
  if (rc == VL_OK) {
    char *json = cJSON_Print(index);
    char path[4096];
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", dir);
    FILE *f = fopen(path, "w");
    if (!f || !json || fputs(json, f) < 0) rc = vl_err_raise(VL_EIO, __FILE__, __LINE__, __func__,
                                                              "%s: cannot write the index", path);
    if (f && fclose(f)) rc = VL_EIO;
    free(json);
  }
  cJSON_Delete(index);
  return rc;
}
