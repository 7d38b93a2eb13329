/* safetensors: reader (mmap + cJSON, validation), dtype conversions and
 * writer (single file and sharded folder).  The contract is safetensors.h. */
#include "safetensors.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "err.h"

#define ST_HEADER_MAX 100000000ull /* bytes; the limit HF's reader enforces too */
#define ST_INDEX_NAME "model.safetensors.index.json"
#define ST_SINGLE_NAME "model.safetensors"
#define ST_JSON_INT_MAX 9007199254740992.0 /* 2^53: larger JSON integers are not exact */

struct vl_st_tensor {
  char *name;
  const char *file; /* shard path, owned by the handle */
  vl_dtype dtype;
  int ndim;
  int64_t shape[VL_ST_MAX_DIMS];
  size_t numel, nbytes;
  uint64_t begin; /* offset in the shard's data buffer (overlap check) */
  const void *data;
  int shard;
};

typedef struct {
  char *path;  /* as opened (dir/label for shards of an index) */
  char *label; /* file name as the index spells it; the path for single files */
  void *map;
  size_t size;
} st_shard;

struct vl_safetensors {
  char *path; /* what vl_st_open was given */
  st_shard *shards;
  int n_shards;
  vl_st_tensor *t; /* sorted by name once opened */
  size_t n, cap;
  char **meta_key, **meta_val;
  int n_meta;
};

static const char *const dt_names[VL_DT_COUNT] = {"F64", "F32", "F16", "BF16", "I64",
                                                  "I32", "I16", "I8",  "U8",  "BOOL"};
static const size_t dt_sizes[VL_DT_COUNT] = {8, 4, 2, 2, 8, 4, 2, 1, 1, 1};

const char *vl_dtype_name(vl_dtype dt) { return (unsigned)dt < VL_DT_COUNT ? dt_names[dt] : "?"; }
size_t vl_dtype_size(vl_dtype dt) { return (unsigned)dt < VL_DT_COUNT ? dt_sizes[dt] : 0; }

/* ---- scalar conversions ----------------------------------------------------- */

uint16_t vl_bf16_from_f32(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  /* NaN: truncation could clear every mantissa bit (-> Inf); set the quiet bit */
  if ((u & 0x7F800000u) == 0x7F800000u && (u & 0x007FFFFFu)) return (uint16_t)((u >> 16) | 0x40u);
  /* round to nearest, ties to the even bf16: add 0x7FFF plus the kept lsb */
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
  const int sign = h >> 15, e = (h >> 10) & 31, m = h & 1023;
  float v;
  if (e == 0) v = ldexpf((float)m, -24); /* zero and subnormals: m * 2^-24 */
  else if (e == 31) v = m ? NAN : INFINITY;
  else v = ldexpf((float)(m + 1024), e - 25); /* (1 + m/1024) * 2^(e-15) */
  return sign ? -v : v;
}

/* ---- small helpers ------------------------------------------------------------ */

static char *path_join(const char *dir, const char *name) {
  size_t a = strlen(dir), b = strlen(name);
  char *p = malloc(a + b + 2);
  if (p) {
    memcpy(p, dir, a);
    p[a] = '/';
    memcpy(p + a + 1, name, b + 1);
  }
  return p;
}

/* A JSON number that is a non-negative integer representable exactly. */
static int json_uint(const cJSON *e, uint64_t *v) {
  if (!cJSON_IsNumber(e)) return 0;
  double d = e->valuedouble;
  if (!(d >= 0 && d <= ST_JSON_INT_MAX) || d != floor(d)) return 0;
  *v = (uint64_t)d;
  return 1;
}

/* "[3, 4]" (negative entries of an expected shape print as '*') */
static void shape_text(char *buf, size_t n, int ndim, const int64_t *shape) {
  size_t o = (size_t)snprintf(buf, n, "[");
  for (int d = 0; d < ndim && o < n; d++) {
    if (shape[d] < 0) o += (size_t)snprintf(buf + o, n - o, "%s*", d ? ", " : "");
    else o += (size_t)snprintf(buf + o, n - o, "%s%lld", d ? ", " : "", (long long)shape[d]);
  }
  if (o < n) snprintf(buf + o, n - o, "]");
}

/* Up to 24 bytes of text[0..len) around the error position at (cJSON's
 * position can be one byte past the offending one), non-printables as '?'. */
static void snippet(char *buf, const char *text, size_t len, size_t at) {
  size_t from = at > 10 ? at - 10 : 0, k = 0;
  for (; k < 24 && from + k < len; k++) {
    char c = text[from + k];
    buf[k] = (c >= 32 && c < 127) ? c : '?';
  }
  buf[k] = 0;
}

/* Keeps the first value seen for a key; strings as they are, numbers as text. */
static int meta_add(vl_safetensors *st, const char *key, const cJSON *v) {
  for (int i = 0; i < st->n_meta; i++)
    if (!strcmp(st->meta_key[i], key)) return VL_OK;
  char num[64];
  const char *text = NULL;
  if (cJSON_IsString(v)) {
    text = v->valuestring;
  } else if (cJSON_IsNumber(v)) {
    double d = v->valuedouble;
    if (d == floor(d) && fabs(d) < 9.2e18) snprintf(num, sizeof num, "%lld", (long long)d);
    else snprintf(num, sizeof num, "%.17g", d);
    text = num;
  } else {
    return VL_OK; /* objects, lists, booleans: not key/value text */
  }
  char **k = realloc(st->meta_key, (size_t)(st->n_meta + 1) * sizeof *k);
  if (k) st->meta_key = k;
  char **vv = realloc(st->meta_val, (size_t)(st->n_meta + 1) * sizeof *vv);
  if (vv) st->meta_val = vv;
  if (!k || !vv) VL_ERROR(VL_ENOMEM, "safetensors metadata table");
  st->meta_key[st->n_meta] = strdup(key);
  st->meta_val[st->n_meta] = strdup(text);
  st->n_meta++;
  if (!st->meta_key[st->n_meta - 1] || !st->meta_val[st->n_meta - 1])
    VL_ERROR(VL_ENOMEM, "safetensors metadata text");
  return VL_OK;
}

/* ---- opening --------------------------------------------------------------------- */

static int map_shard(vl_safetensors *st, const char *path, const char *label, int *index) {
  st_shard *ns = realloc(st->shards, (size_t)(st->n_shards + 1) * sizeof *ns);
  if (!ns) VL_ERROR(VL_ENOMEM, "safetensors shard table");
  st->shards = ns;
  st_shard *sh = &st->shards[st->n_shards++];
  memset(sh, 0, sizeof *sh);
  *index = st->n_shards - 1;
  sh->path = strdup(path);
  sh->label = strdup(label);
  if (!sh->path || !sh->label) VL_ERROR(VL_ENOMEM, "safetensors shard name");
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) VL_ERROR(VL_EIO, "%s: cannot open: %s", path, strerror(errno));
  struct stat sb;
  if (fstat(fd, &sb)) {
    int e = errno;
    close(fd);
    VL_ERROR(VL_EIO, "%s: cannot stat: %s", path, strerror(e));
  }
  if (!S_ISREG(sb.st_mode)) {
    close(fd);
    VL_ERROR(VL_EIO, "%s: not a regular file", path);
  }
  if (sb.st_size < 8) {
    close(fd);
    VL_ERROR(VL_EIO, "%s: truncated: %lld bytes, a safetensors file starts with an 8-byte "
             "header length", path, (long long)sb.st_size);
  }
  sh->size = (size_t)sb.st_size;
  void *m = mmap(NULL, sh->size, PROT_READ, MAP_PRIVATE, fd, 0);
  close(fd);
  if (m == MAP_FAILED) VL_ERROR(VL_EIO, "%s: mmap failed: %s", path, strerror(errno));
  sh->map = m;
  return VL_OK;
}

static int parse_dtype(const char *s, vl_dtype *dt) {
  for (int i = 0; i < VL_DT_COUNT; i++)
    if (!strcmp(s, dt_names[i])) {
      *dt = (vl_dtype)i;
      return 1;
    }
  return 0;
}

/* One header entry {"dtype": .., "shape": [..], "data_offsets": [b, e]} -> t.
 * data/data_len: the shard's data buffer. */
static int parse_entry(const char *file, const cJSON *item, const unsigned char *data,
                       uint64_t data_len, vl_st_tensor *t) {
  const char *name = item->string;
  if (!cJSON_IsObject(item)) VL_ERROR(VL_EIO, "%s: tensor '%s': entry is not a JSON object", file, name);
  const cJSON *dt = cJSON_GetObjectItemCaseSensitive(item, "dtype");
  const cJSON *shape = cJSON_GetObjectItemCaseSensitive(item, "shape");
  const cJSON *offs = cJSON_GetObjectItemCaseSensitive(item, "data_offsets");
  if (!dt || !shape || !offs)
    VL_ERROR(VL_EIO, "%s: tensor '%s': entry lacks '%s' (it needs dtype, shape and data_offsets)",
             file, name, !dt ? "dtype" : !shape ? "shape" : "data_offsets");
  if (!cJSON_IsString(dt)) VL_ERROR(VL_EIO, "%s: tensor '%s': dtype is not a string", file, name);
  if (!parse_dtype(dt->valuestring, &t->dtype))
    VL_ERROR(VL_EIO, "%s: tensor '%s': unknown dtype '%s' (known: F64 F32 F16 BF16 I64 I32 "
             "I16 I8 U8 BOOL)", file, name, dt->valuestring);
  if (!cJSON_IsArray(shape)) VL_ERROR(VL_EIO, "%s: tensor '%s': shape is not a list", file, name);
  t->ndim = cJSON_GetArraySize(shape);
  if (t->ndim > VL_ST_MAX_DIMS)
    VL_ERROR(VL_EIO, "%s: tensor '%s': %d dimensions, at most %d are supported", file, name,
             t->ndim, VL_ST_MAX_DIMS);
  uint64_t numel = 1;
  int d = 0;
  const cJSON *e;
  cJSON_ArrayForEach(e, shape) {
    uint64_t v;
    if (!json_uint(e, &v))
      VL_ERROR(VL_EIO, "%s: tensor '%s': shape entry %d is not a non-negative integer", file,
               name, d);
    if (__builtin_mul_overflow(numel, v, &numel))
      VL_ERROR(VL_EIO, "%s: tensor '%s': shape has too many elements", file, name);
    t->shape[d++] = (int64_t)v;
  }
  uint64_t b, end, need;
  if (!cJSON_IsArray(offs) || cJSON_GetArraySize(offs) != 2 ||
      !json_uint(cJSON_GetArrayItem(offs, 0), &b) || !json_uint(cJSON_GetArrayItem(offs, 1), &end))
    VL_ERROR(VL_EIO, "%s: tensor '%s': data_offsets is not [begin, end] of non-negative integers",
             file, name);
  if (b > end)
    VL_ERROR(VL_EIO, "%s: tensor '%s': data_offsets [%llu, %llu] have begin > end", file, name,
             (unsigned long long)b, (unsigned long long)end);
  if (end > data_len)
    VL_ERROR(VL_EIO, "%s: tensor '%s': data_offsets end %llu is past the end of the data buffer "
             "(%llu bytes): truncated file?", file, name, (unsigned long long)end,
             (unsigned long long)data_len);
  if (__builtin_mul_overflow(numel, (uint64_t)dt_sizes[t->dtype], &need) || need != end - b) {
    char s[256];
    shape_text(s, sizeof s, t->ndim, t->shape);
    VL_ERROR(VL_EIO, "%s: tensor '%s': byte size mismatch: shape %s of %s needs %llu bytes, "
             "data_offsets [%llu, %llu] hold %llu", file, name, s, dt_names[t->dtype],
             (unsigned long long)need, (unsigned long long)b, (unsigned long long)end,
             (unsigned long long)(end - b));
  }
  t->numel = (size_t)numel;
  t->nbytes = (size_t)need;
  t->begin = b;
  t->data = data + b;
  t->file = file;
  return VL_OK;
}

static int add_tensor(vl_safetensors *st, const vl_st_tensor *t) {
  if (st->n == st->cap) {
    size_t cap = st->cap ? 2 * st->cap : 256;
    vl_st_tensor *nt = realloc(st->t, cap * sizeof *nt);
    if (!nt) VL_ERROR(VL_ENOMEM, "safetensors tensor table (%zu entries)", cap);
    st->t = nt;
    st->cap = cap;
  }
  st->t[st->n++] = *t;
  return VL_OK;
}

static int cmp_begin(const void *a, const void *b) {
  const vl_st_tensor *x = *(const vl_st_tensor *const *)a, *y = *(const vl_st_tensor *const *)b;
  return x->begin < y->begin ? -1 : x->begin > y->begin;
}

/* Non-empty tensors of one shard (st->t[first..n)) must not share bytes. */
static int check_overlap(vl_safetensors *st, size_t first) {
  size_t k = st->n - first;
  if (k < 2) return VL_OK;
  const vl_st_tensor **p = malloc(k * sizeof *p);
  if (!p) VL_ERROR(VL_ENOMEM, "safetensors overlap check");
  for (size_t i = 0; i < k; i++) p[i] = &st->t[first + i];
  qsort(p, k, sizeof *p, cmp_begin);
  const vl_st_tensor *far = NULL; /* the non-empty tensor reaching furthest so far */
  int rc = VL_OK;
  for (size_t i = 0; i < k && rc == VL_OK; i++) {
    if (!p[i]->nbytes) continue;
    if (far && p[i]->begin < far->begin + far->nbytes)
      rc = vl_err_raise(VL_EIO, __FILE__, __LINE__, __func__,
                        "%s: tensors '%s' and '%s' overlap in the data buffer", p[i]->file,
                        far->name, p[i]->name);
    if (!far || p[i]->begin + p[i]->nbytes > far->begin + far->nbytes) far = p[i];
  }
  free(p);
  return rc;
}

/* Validates one mapped shard's header and adds its tensors to st. */
static int parse_shard(vl_safetensors *st, int index) {
  const st_shard *sh = &st->shards[index];
  const char *file = sh->path;
  const unsigned char *b = sh->map;
  uint64_t hlen = 0;
  for (int i = 7; i >= 0; i--) hlen = (hlen << 8) | b[i];
  if (hlen > ST_HEADER_MAX)
    VL_ERROR(VL_EIO, "%s: header length %llu bytes is over the 100 MB limit: not a safetensors "
             "file?", file, (unsigned long long)hlen);
  if (hlen > sh->size - 8)
    VL_ERROR(VL_EIO, "%s: header length %llu bytes exceeds the file (%zu bytes): truncated or "
             "not a safetensors file", file, (unsigned long long)hlen, sh->size);
  const char *hdr = (const char *)b + 8, *end = NULL;
  cJSON *root = cJSON_ParseWithLengthOpts(hdr, (size_t)hlen, &end, 0);
  if (!root) {
    size_t at = end && end >= hdr ? (size_t)(end - hdr) : 0;
    char near[32];
    snippet(near, hdr, (size_t)hlen, at);
    VL_ERROR(VL_EIO, "%s: header JSON syntax error at byte %zu of the header (file offset %zu), "
             "near '%s'", file, at, at + 8, near);
  }
  int rc = VL_OK;
  if (!cJSON_IsObject(root))
    VL_ERROR_GOTO(rc, done, VL_EIO, "%s: header JSON is not an object", file);
  for (const char *q = end; q < hdr + hlen; q++)
    if (*q != ' ' && *q != '\t' && *q != '\n' && *q != '\r')
      VL_ERROR_GOTO(rc, done, VL_EIO, "%s: header has bytes after its JSON object (at byte %zu "
                    "of the header)", file, (size_t)(q - hdr));
  const size_t first = st->n;
  const cJSON *item;
  cJSON_ArrayForEach(item, root) {
    if (!strcmp(item->string, "__metadata__")) {
      if (!cJSON_IsObject(item))
        VL_ERROR_GOTO(rc, done, VL_EIO, "%s: __metadata__ is not a JSON object", file);
      const cJSON *kv;
      cJSON_ArrayForEach(kv, item) VL_CALL_GOTO(rc, done, meta_add(st, kv->string, kv));
      continue;
    }
    vl_st_tensor t;
    memset(&t, 0, sizeof t);
    t.shard = index;
    VL_CALL_GOTO(rc, done, parse_entry(file, item, b + 8 + hlen, sh->size - 8 - hlen, &t));
    t.name = strdup(item->string);
    if (!t.name) VL_ERROR_GOTO(rc, done, VL_ENOMEM, "tensor name");
    rc = add_tensor(st, &t);
    if (rc != VL_OK) {
      free(t.name);
      VL_CALL_GOTO(rc, done, rc);
    }
  }
  VL_CALL_GOTO(rc, done, check_overlap(st, first));
done:
  cJSON_Delete(root);
  return rc;
}

static int cmp_name(const void *a, const void *b) {
  return strcmp(((const vl_st_tensor *)a)->name, ((const vl_st_tensor *)b)->name);
}

/* Sorts the table for binary search; a name twice (in a file or across shards) is an error. */
static int finish(vl_safetensors *st) {
  if (st->n > 1) qsort(st->t, st->n, sizeof *st->t, cmp_name);
  for (size_t i = 1; i < st->n; i++)
    if (!strcmp(st->t[i].name, st->t[i - 1].name))
      VL_ERROR(VL_EIO, "%s: duplicate tensor name '%s' (in %s and in %s)", st->path,
               st->t[i].name, st->t[i - 1].file, st->t[i].file);
  return VL_OK;
}

static int read_text(const char *path, char **out) {
  *out = NULL;
  FILE *f = fopen(path, "rb");
  if (!f) VL_ERROR(VL_EIO, "%s: cannot open: %s", path, strerror(errno));
  struct stat sb;
  if (fstat(fileno(f), &sb) || !S_ISREG(sb.st_mode) || (uint64_t)sb.st_size > ST_HEADER_MAX) {
    fclose(f);
    VL_ERROR(VL_EIO, "%s: not a regular file of at most 100 MB", path);
  }
  size_t n = (size_t)sb.st_size;
  char *b = malloc(n + 1);
  if (!b || fread(b, 1, n, f) != n) {
    free(b);
    fclose(f);
    VL_ERROR(VL_EIO, "%s: read failed", path);
  }
  fclose(f);
  b[n] = 0;
  *out = b;
  return VL_OK;
}

static int find_shard(const vl_safetensors *st, const char *label) {
  for (int s = 0; s < st->n_shards; s++)
    if (!strcmp(st->shards[s].label, label)) return s;
  return -1;
}

static int open_index(vl_safetensors *st, const char *dir, const char *index_path) {
  char *text = NULL;
  VL_CALL(read_text(index_path, &text));
  const char *end = NULL;
  cJSON *root = cJSON_ParseWithOpts(text, &end, 1);
  int rc = VL_OK;
  if (!root) {
    size_t at = end && end >= text ? (size_t)(end - text) : 0;
    char near[32];
    snippet(near, text, strlen(text), at);
    VL_ERROR_GOTO(rc, done, VL_EIO, "%s: JSON syntax error at byte %zu, near '%s'", index_path,
                  at, near);
  }
  const cJSON *map = cJSON_GetObjectItemCaseSensitive(root, "weight_map");
  if (!cJSON_IsObject(map))
    VL_ERROR_GOTO(rc, done, VL_EIO, "%s: no \"weight_map\" object: not a safetensors index",
                  index_path);
  const cJSON *meta = cJSON_GetObjectItemCaseSensitive(root, "metadata"), *e;
  if (meta && !cJSON_IsObject(meta))
    VL_ERROR_GOTO(rc, done, VL_EIO, "%s: \"metadata\" is not a JSON object", index_path);
  if (meta) cJSON_ArrayForEach(e, meta) VL_CALL_GOTO(rc, done, meta_add(st, e->string, e));
  cJSON_ArrayForEach(e, map) {
    if (!cJSON_IsString(e) || !e->valuestring[0])
      VL_ERROR_GOTO(rc, done, VL_EIO, "%s: weight_map entry for tensor '%s' is not a file name",
                    index_path, e->string);
    if (find_shard(st, e->valuestring) >= 0) continue;
    char *path = path_join(dir, e->valuestring);
    struct stat sb;
    if (!path) VL_ERROR_GOTO(rc, done, VL_ENOMEM, "shard path");
    if (stat(path, &sb)) {
      int err = errno;
      free(path);
      VL_ERROR_GOTO(rc, done, VL_EIO, "%s: shard file '%s' (listed for tensor '%s') is missing: "
                    "%s", index_path, e->valuestring, e->string, strerror(err));
    }
    int idx;
    rc = map_shard(st, path, e->valuestring, &idx);
    free(path);
    VL_CALL_GOTO(rc, done, rc);
    VL_CALL_GOTO(rc, done, parse_shard(st, idx));
  }
  VL_CALL_GOTO(rc, done, finish(st));
  cJSON_ArrayForEach(e, map) {
    const vl_st_tensor *t = vl_st_find(st, e->string);
    if (!t)
      VL_ERROR_GOTO(rc, done, VL_EIO, "%s: tensor '%s' is listed in the index but not found in "
                    "its shard %s", index_path, e->string, e->valuestring);
    if (strcmp(st->shards[t->shard].label, e->valuestring))
      VL_ERROR_GOTO(rc, done, VL_EIO, "%s: tensor '%s' is listed in the index for shard %s but "
                    "found in %s", index_path, e->string, e->valuestring, t->file);
  }
done:
  cJSON_Delete(root);
  free(text);
  return rc;
}

static int open_single(vl_safetensors *st, const char *path) {
  int idx;
  VL_CALL(map_shard(st, path, path, &idx));
  VL_CALL(parse_shard(st, idx));
  VL_CALL(finish(st));
  return VL_OK;
}

int vl_st_open(vl_safetensors **out, const char *path) {
  if (!out || !path) VL_ERROR(VL_EINVAL, "vl_st_open: NULL argument");
  *out = NULL;
  vl_safetensors *st = calloc(1, sizeof *st);
  if (!st) VL_ERROR(VL_ENOMEM, "safetensors handle");
  int rc = VL_OK;
  char *p = NULL;
  struct stat sb;
  st->path = strdup(path);
  if (!st->path) VL_ERROR_GOTO(rc, fail, VL_ENOMEM, "safetensors path");
  if (stat(path, &sb)) VL_ERROR_GOTO(rc, fail, VL_EIO, "%s: cannot open: %s", path, strerror(errno));
  if (!S_ISDIR(sb.st_mode)) {
    VL_CALL_GOTO(rc, fail, open_single(st, path));
  } else {
    if (!(p = path_join(path, ST_INDEX_NAME))) VL_ERROR_GOTO(rc, fail, VL_ENOMEM, "path");
    if (access(p, F_OK) == 0) {
      VL_CALL_GOTO(rc, fail, open_index(st, path, p));
    } else {
      free(p);
      if (!(p = path_join(path, ST_SINGLE_NAME))) VL_ERROR_GOTO(rc, fail, VL_ENOMEM, "path");
      if (access(p, F_OK))
        VL_ERROR_GOTO(rc, fail, VL_EIO, "%s: folder has neither " ST_INDEX_NAME " nor "
                      ST_SINGLE_NAME, path);
      VL_CALL_GOTO(rc, fail, open_single(st, p));
    }
  }
  free(p);
  *out = st;
  return VL_OK;
fail:
  free(p);
  vl_st_close(st);
  return rc;
}

void vl_st_close(vl_safetensors *st) {
  if (!st) return;
  for (size_t i = 0; i < st->n; i++) free(st->t[i].name);
  for (int s = 0; s < st->n_shards; s++) {
    if (st->shards[s].map) munmap(st->shards[s].map, st->shards[s].size);
    free(st->shards[s].path);
    free(st->shards[s].label);
  }
  for (int i = 0; i < st->n_meta; i++) {
    free(st->meta_key[i]);
    free(st->meta_val[i]);
  }
  free(st->meta_key);
  free(st->meta_val);
  free(st->shards);
  free(st->t);
  free(st->path);
  free(st);
}

/* ---- lookup and accessors ------------------------------------------------------ */

size_t vl_st_count(const vl_safetensors *st) { return st->n; }
const vl_st_tensor *vl_st_at(const vl_safetensors *st, size_t i) { return i < st->n ? &st->t[i] : NULL; }

const vl_st_tensor *vl_st_find(const vl_safetensors *st, const char *name) {
  size_t lo = 0, hi = st->n;
  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;
    int c = strcmp(st->t[mid].name, name);
    if (c == 0) return &st->t[mid];
    if (c < 0) lo = mid + 1;
    else hi = mid;
  }
  return NULL;
}

const char *vl_st_metadata(const vl_safetensors *st, const char *key) {
  for (int i = 0; i < st->n_meta; i++)
    if (!strcmp(st->meta_key[i], key)) return st->meta_val[i];
  return NULL;
}

const char *vl_st_tensor_name(const vl_st_tensor *t) { return t->name; }
const char *vl_st_tensor_file(const vl_st_tensor *t) { return t->file; }
vl_dtype vl_st_tensor_dtype(const vl_st_tensor *t) { return t->dtype; }
int vl_st_tensor_ndim(const vl_st_tensor *t) { return t->ndim; }
const int64_t *vl_st_tensor_shape(const vl_st_tensor *t) { return t->shape; }
size_t vl_st_tensor_numel(const vl_st_tensor *t) { return t->numel; }
size_t vl_st_tensor_nbytes(const vl_st_tensor *t) { return t->nbytes; }
const void *vl_st_tensor_data(const vl_st_tensor *t) { return t->data; }

int vl_st_check_shape(const vl_safetensors *st, const vl_st_tensor *t, int ndim,
                      const int64_t *shape) {
  (void)st; /* the tensor knows its file */
  if (ndim < 0) return VL_OK;
  int same = t->ndim == ndim;
  for (int d = 0; same && shape && d < ndim; d++) same = shape[d] < 0 || t->shape[d] == shape[d];
  if (same) return VL_OK;
  char a[256], b[256];
  shape_text(a, sizeof a, t->ndim, t->shape);
  if (shape) shape_text(b, sizeof b, ndim, shape);
  else snprintf(b, sizeof b, "%d dimensions", ndim);
  VL_ERROR(VL_ESHAPE, "%s: tensor '%s' has shape %s, expected %s", t->file, t->name, a, b);
}

int vl_st_get(const vl_safetensors *st, const char *name, unsigned dtypes, int ndim,
              const int64_t *shape, const vl_st_tensor **out) {
  if (out) *out = NULL;
  const vl_st_tensor *t = vl_st_find(st, name);
  if (!t) VL_ERROR(VL_ESHAPE, "tensor '%s' not found in %s", name, st->path);
  if (dtypes && !(dtypes & VL_DT_MASK(t->dtype))) {
    char want[96] = "";
    int k = 0, total = __builtin_popcount(dtypes & (VL_DT_MASK(VL_DT_COUNT) - 1));
    for (int d = 0; d < VL_DT_COUNT; d++)
      if (dtypes & VL_DT_MASK(d)) {
        size_t o = strlen(want);
        snprintf(want + o, sizeof want - o, "%s%s", k == 0 ? "" : k == total - 1 ? " or " : ", ",
                 dt_names[d]);
        k++;
      }
    VL_ERROR(VL_ESHAPE, "%s: tensor '%s' has dtype %s, expected %s", t->file, name,
             dt_names[t->dtype], want);
  }
  VL_CALL(vl_st_check_shape(st, t, ndim, shape));
  if (out) *out = t;
  return VL_OK;
}

/* ---- array conversions ------------------------------------------------------------- */

/* dst[i] = EXPR(v) over elements v of type T read unaligned from the map;
 * threads only for large tensors (weights), where page faults dominate. */
#define ST_CONVERT(T, EXPR)                                                  \
  do {                                                                       \
    const unsigned char *src_ = t->data;                                     \
    _Pragma("omp parallel for if (n >= 262144) schedule(static)")            \
    for (size_t i = 0; i < n; i++) {                                         \
      T v;                                                                   \
      memcpy(&v, src_ + i * sizeof(T), sizeof(T));                           \
      dst[i] = (EXPR);                                                       \
    }                                                                        \
  } while (0)

static int check_count(const vl_st_tensor *t, size_t n) {
  if (n != t->numel)
    VL_ERROR(VL_ESHAPE, "%s: tensor '%s' has %zu elements, %zu requested", t->file, t->name,
             t->numel, n);
  return VL_OK;
}

int vl_st_read_f32(const vl_st_tensor *t, float *dst, size_t n) {
  VL_CALL(check_count(t, n));
  if (n == 0) return VL_OK;
  switch (t->dtype) {
  case VL_DT_F32: memcpy(dst, t->data, n * 4); break;
  case VL_DT_F64: ST_CONVERT(double, (float)v); break;
  case VL_DT_BF16: ST_CONVERT(uint16_t, vl_f32_from_bf16(v)); break;
  case VL_DT_F16: ST_CONVERT(uint16_t, vl_f32_from_f16(v)); break;
  case VL_DT_I64: ST_CONVERT(int64_t, (float)v); break;
  case VL_DT_I32: ST_CONVERT(int32_t, (float)v); break;
  case VL_DT_I16: ST_CONVERT(int16_t, (float)v); break;
  case VL_DT_I8: ST_CONVERT(int8_t, (float)v); break;
  case VL_DT_U8: ST_CONVERT(uint8_t, (float)v); break;
  case VL_DT_BOOL: ST_CONVERT(uint8_t, v ? 1.0f : 0.0f); break;
  default: VL_ERROR(VL_EIO, "%s: tensor '%s': bad dtype", t->file, t->name);
  }
  return VL_OK;
}

static int not_integer(const vl_st_tensor *t) {
  VL_ERROR(VL_ESHAPE, "%s: tensor '%s' is %s, an integer tensor was expected", t->file, t->name,
           dt_names[t->dtype]);
}

int vl_st_read_i64(const vl_st_tensor *t, int64_t *dst, size_t n) {
  VL_CALL(check_count(t, n));
  if (n == 0 && !(VL_DT_FLOATS & VL_DT_MASK(t->dtype))) return VL_OK;
  switch (t->dtype) {
  case VL_DT_I64: memcpy(dst, t->data, n * 8); break;
  case VL_DT_I32: ST_CONVERT(int32_t, v); break;
  case VL_DT_I16: ST_CONVERT(int16_t, v); break;
  case VL_DT_I8: ST_CONVERT(int8_t, v); break;
  case VL_DT_U8: ST_CONVERT(uint8_t, v); break;
  case VL_DT_BOOL: ST_CONVERT(uint8_t, v ? 1 : 0); break;
  default: VL_CALL(not_integer(t));
  }
  return VL_OK;
}

int vl_st_read_i32(const vl_st_tensor *t, int32_t *dst, size_t n) {
  VL_CALL(check_count(t, n));
  if (n == 0 && !(VL_DT_FLOATS & VL_DT_MASK(t->dtype))) return VL_OK;
  switch (t->dtype) {
  case VL_DT_I64: /* integer tensors are small (ids, grids): a checked serial loop */
    for (size_t i = 0; i < n; i++) {
      int64_t v;
      memcpy(&v, (const unsigned char *)t->data + 8 * i, 8);
      if (v < INT32_MIN || v > INT32_MAX)
        VL_ERROR(VL_ESHAPE, "%s: tensor '%s': element %zu = %lld does not fit in int32", t->file,
                 t->name, i, (long long)v);
      dst[i] = (int32_t)v;
    }
    break;
  case VL_DT_I32: memcpy(dst, t->data, n * 4); break;
  case VL_DT_I16: ST_CONVERT(int16_t, v); break;
  case VL_DT_I8: ST_CONVERT(int8_t, v); break;
  case VL_DT_U8: ST_CONVERT(uint8_t, v); break;
  case VL_DT_BOOL: ST_CONVERT(uint8_t, v ? 1 : 0); break;
  default: VL_CALL(not_integer(t));
  }
  return VL_OK;
}

/* ---- writing --------------------------------------------------------------------------- */

/* Growable text buffer for headers and the index; oom is sticky. */
typedef struct {
  char *p;
  size_t n, cap;
  int oom;
} st_buf;

static void buf_add(st_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void buf_add(st_buf *b, const char *fmt, ...) {
  if (b->oom) return;
  for (;;) {
    va_list ap;
    va_start(ap, fmt);
    int k = vsnprintf(b->p ? b->p + b->n : NULL, b->p ? b->cap - b->n : 0, fmt, ap);
    va_end(ap);
    if (k < 0) { b->oom = 1; return; }
    if (b->p && b->n + (size_t)k < b->cap) { b->n += (size_t)k; return; }
    size_t cap = (b->cap ? 2 * b->cap : 4096) + (size_t)k;
    char *np = realloc(b->p, cap);
    if (!np) { b->oom = 1; return; }
    b->p = np;
    b->cap = cap;
  }
}

/* A JSON string literal: quote, backslash and control bytes escaped; UTF-8 as is. */
static void buf_str(st_buf *b, const char *s) {
  buf_add(b, "\"");
  for (const unsigned char *c = (const unsigned char *)s; *c; c++) {
    if (*c == '"' || *c == '\\') buf_add(b, "\\%c", *c);
    else if (*c < 0x20) buf_add(b, "\\u%04x", *c);
    else buf_add(b, "%c", *c);
  }
  buf_add(b, "\"");
}

static int cmp_str(const void *a, const void *b) {
  return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* Entries and metadata are well formed; sizes[i] = bytes of entry i; total = their sum. */
static int check_entries(const char *path, const vl_st_entry *e, int n, const char *const *kv,
                         int n_meta, uint64_t *sizes, uint64_t *total) {
  if (n < 0 || n_meta < 0 || (n > 0 && !e) || (n_meta > 0 && !kv))
    VL_ERROR(VL_EINVAL, "%s: bad tensor or metadata list", path);
  for (int i = 0; i < 2 * n_meta; i++)
    if (!kv[i]) VL_ERROR(VL_EINVAL, "%s: metadata entry %d is NULL", path, i / 2);
  *total = 0;
  for (int i = 0; i < n; i++) {
    const char *name = e[i].name;
    if (!name || !name[0] || !strcmp(name, "__metadata__"))
      VL_ERROR(VL_EINVAL, "%s: tensor %d has no usable name", path, i);
    if ((unsigned)e[i].dtype >= VL_DT_COUNT || e[i].ndim < 0 || e[i].ndim > VL_ST_MAX_DIMS)
      VL_ERROR(VL_EINVAL, "%s: tensor '%s': bad dtype %d or ndim %d", path, name, (int)e[i].dtype,
               e[i].ndim);
    uint64_t nb = dt_sizes[e[i].dtype];
    for (int d = 0; d < e[i].ndim; d++)
      if (e[i].shape[d] < 0 || (double)e[i].shape[d] > ST_JSON_INT_MAX ||
          __builtin_mul_overflow(nb, (uint64_t)e[i].shape[d], &nb))
        VL_ERROR(VL_EINVAL, "%s: tensor '%s': bad shape entry %d", path, name, d);
    if (nb && !e[i].data) VL_ERROR(VL_EINVAL, "%s: tensor '%s': data is NULL", path, name);
    sizes[i] = nb;
    *total += nb;
  }
  if (n < 2) return VL_OK;
  const char **names = malloc((size_t)n * sizeof *names);
  if (!names) VL_ERROR(VL_ENOMEM, "name check");
  for (int i = 0; i < n; i++) names[i] = e[i].name;
  qsort(names, (size_t)n, sizeof *names, cmp_str);
  for (int i = 1; i < n; i++)
    if (!strcmp(names[i], names[i - 1])) {
      int rc = vl_err_raise(VL_EINVAL, __FILE__, __LINE__, __func__,
                            "%s: tensor name '%s' given twice", path, names[i]);
      free(names);
      return rc;
    }
  free(names);
  return VL_OK;
}

/* PATH.tmp written by the caller, then synced and renamed (ok == 0: removed). */
static int commit_file(FILE *f, const char *tmp, const char *path, int ok) {
  int err = ok ? 0 : errno;
  if (ok && (fflush(f) || fsync(fileno(f)))) ok = 0, err = errno;
  if (fclose(f) && ok) ok = 0, err = errno;
  if (!ok) {
    unlink(tmp);
    VL_ERROR(VL_EIO, "%s: write failed: %s", tmp, strerror(err));
  }
  if (rename(tmp, path)) {
    err = errno;
    unlink(tmp);
    VL_ERROR(VL_EIO, "rename %s -> %s failed: %s", tmp, path, strerror(err));
  }
  return VL_OK;
}

static int write_file(const char *path, const vl_st_entry *e, int n, const char *const *kv,
                      int n_meta, const uint64_t *sizes) {
  st_buf h = {0};
  buf_add(&h, "{");
  if (n_meta > 0) {
    buf_str(&h, "__metadata__");
    buf_add(&h, ":{");
    for (int i = 0; i < n_meta; i++) {
      if (i) buf_add(&h, ",");
      buf_str(&h, kv[2 * i]);
      buf_add(&h, ":");
      buf_str(&h, kv[2 * i + 1]);
    }
    buf_add(&h, "}");
  }
  uint64_t off = 0;
  for (int i = 0; i < n; i++) {
    if (i || n_meta > 0) buf_add(&h, ",");
    buf_str(&h, e[i].name);
    buf_add(&h, ":{\"dtype\":\"%s\",\"shape\":[", dt_names[e[i].dtype]);
    for (int d = 0; d < e[i].ndim; d++) buf_add(&h, "%s%lld", d ? "," : "", (long long)e[i].shape[d]);
    buf_add(&h, "],\"data_offsets\":[%llu,%llu]}", (unsigned long long)off,
            (unsigned long long)(off + sizes[i]));
    off += sizes[i];
  }
  buf_add(&h, "}");
  while (!h.oom && h.n % 8) buf_add(&h, " "); /* data then starts 8-byte aligned */
  if (h.oom) {
    free(h.p);
    VL_ERROR(VL_ENOMEM, "%s: header text", path);
  }
  char *tmp = malloc(strlen(path) + 5);
  if (!tmp) {
    free(h.p);
    VL_ERROR(VL_ENOMEM, "path");
  }
  sprintf(tmp, "%s.tmp", path);
  FILE *f = fopen(tmp, "wb");
  if (!f) {
    int err = errno;
    free(h.p);
    free(tmp);
    VL_ERROR(VL_EIO, "%s: cannot create: %s", path, strerror(err));
  }
  unsigned char len8[8];
  for (int i = 0; i < 8; i++) len8[i] = (unsigned char)((uint64_t)h.n >> (8 * i));
  int ok = fwrite(len8, 1, 8, f) == 8 && fwrite(h.p, 1, h.n, f) == h.n;
  for (int i = 0; ok && i < n; i++)
    if (sizes[i]) ok = fwrite(e[i].data, 1, sizes[i], f) == sizes[i];
  free(h.p);
  int rc = commit_file(f, tmp, path, ok);
  free(tmp);
  if (rc != VL_OK) return vl_err_trace(rc, __FILE__, __LINE__, __func__);
  return VL_OK;
}

int vl_st_write(const char *path, const vl_st_entry *entries, int n, const char *const *meta_kv,
                int n_meta) {
  if (!path) VL_ERROR(VL_EINVAL, "vl_st_write: NULL path");
  uint64_t *sizes = malloc(((size_t)(n > 0 ? n : 0) + 1) * sizeof *sizes), total;
  if (!sizes) VL_ERROR(VL_ENOMEM, "tensor sizes");
  int rc = check_entries(path, entries, n, meta_kv, n_meta, sizes, &total);
  if (rc == VL_OK) rc = write_file(path, entries, n, meta_kv, n_meta, sizes);
  free(sizes);
  if (rc != VL_OK) return vl_err_trace(rc, __FILE__, __LINE__, __func__);
  return VL_OK;
}

static int write_index(const char *dir, const vl_st_entry *e, int n, const int *shard_of,
                       int n_shards, uint64_t total, const char *const *kv, int n_meta) {
  st_buf b = {0};
  buf_add(&b, "{\n  \"metadata\": {\n    \"total_size\": %llu", (unsigned long long)total);
  for (int i = 0; i < n_meta; i++) {
    if (!strcmp(kv[2 * i], "total_size")) continue;
    buf_add(&b, ",\n    ");
    buf_str(&b, kv[2 * i]);
    buf_add(&b, ": ");
    buf_str(&b, kv[2 * i + 1]);
  }
  buf_add(&b, "\n  },\n  \"weight_map\": {");
  for (int i = 0; i < n; i++) {
    buf_add(&b, "%s\n    ", i ? "," : "");
    buf_str(&b, e[i].name);
    buf_add(&b, ": \"model-%05d-of-%05d.safetensors\"", shard_of[i] + 1, n_shards);
  }
  buf_add(&b, "\n  }\n}\n");
  char *path = path_join(dir, ST_INDEX_NAME), *tmp = path_join(dir, ST_INDEX_NAME ".tmp");
  int rc = VL_OK;
  FILE *f = NULL;
  if (b.oom || !path || !tmp) VL_ERROR_GOTO(rc, done, VL_ENOMEM, "index text");
  if (!(f = fopen(tmp, "wb")))
    VL_ERROR_GOTO(rc, done, VL_EIO, "%s: cannot create: %s", tmp, strerror(errno));
  VL_CALL_GOTO(rc, done, commit_file(f, tmp, path, fwrite(b.p, 1, b.n, f) == b.n));
done:
  free(b.p);
  free(path);
  free(tmp);
  return rc;
}

int vl_st_write_sharded(const char *dir, const vl_st_entry *entries, int n,
                        size_t max_shard_bytes, const char *const *meta_kv, int n_meta) {
  if (!dir || max_shard_bytes == 0)
    VL_ERROR(VL_EINVAL, "vl_st_write_sharded: NULL folder or zero shard size");
  const size_t cnt = (size_t)(n > 0 ? n : 0) + 1;
  uint64_t *sizes = malloc(cnt * sizeof *sizes), total;
  int *shard_of = malloc(cnt * sizeof *shard_of);
  char *index = path_join(dir, ST_INDEX_NAME), *path = NULL;
  int rc = VL_OK;
  if (!sizes || !shard_of || !index) VL_ERROR_GOTO(rc, done, VL_ENOMEM, "shard plan");
  VL_CALL_GOTO(rc, done, check_entries(dir, entries, n, meta_kv, n_meta, sizes, &total));
  if (mkdir(dir, 0777) && errno != EEXIST)
    VL_ERROR_GOTO(rc, done, VL_EIO, "%s: cannot create folder: %s", dir, strerror(errno));
  /* an index left from an earlier export must not describe the new shards */
  if (unlink(index) && errno != ENOENT)
    VL_ERROR_GOTO(rc, done, VL_EIO, "%s: cannot replace: %s", index, strerror(errno));
  int n_shards = 0;
  uint64_t fill = 0;
  for (int i = 0; i < n; i++) {
    if (n_shards == 0 || (fill > 0 && fill + sizes[i] > max_shard_bytes)) n_shards++, fill = 0;
    shard_of[i] = n_shards - 1;
    fill += sizes[i];
  }
  for (int s = 0, i = 0; s < n_shards; s++) {
    char name[64];
    snprintf(name, sizeof name, "model-%05d-of-%05d.safetensors", s + 1, n_shards);
    free(path);
    if (!(path = path_join(dir, name))) VL_ERROR_GOTO(rc, done, VL_ENOMEM, "shard path");
    int first = i;
    while (i < n && shard_of[i] == s) i++;
    VL_CALL_GOTO(rc, done, write_file(path, entries + first, i - first, meta_kv, n_meta,
                                      sizes + first));
  }
  VL_CALL_GOTO(rc, done, write_index(dir, entries, n, shard_of, n_shards, total, meta_kv, n_meta));
done:
  free(sizes);
  free(shard_of);
  free(index);
  free(path);
  return rc;
}
