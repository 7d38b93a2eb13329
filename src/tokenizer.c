/* tokenizer: byte-level BPE as Hugging Face tokenizers computes it (see
 * tokenizer.h). */
#define PCRE2_CODE_UNIT_WIDTH 8
#include "tokenizer.h"

#include <cjson/cJSON.h>
#include <pcre2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#include "err.h"
#include "strmap.h"

/* ---- pair -> (rank, merged id) ----------------------------------------------- */
typedef struct {
  uint64_t *keys; /* (a << 32 | b) + 1, 0 = empty */
  int32_t *rank, *merged;
  size_t cap;
} pair_map;

static inline uint64_t mix64(uint64_t x) {
  x ^= x >> 33; x *= 0xff51afd7ed558ccdull; x ^= x >> 33; x *= 0xc4ceb9fe1a85ec53ull;
  return x ^ (x >> 33);
}

static int pair_get(const pair_map *p, int32_t a, int32_t b, int32_t *rank, int32_t *merged) {
  uint64_t k = (((uint64_t)(uint32_t)a << 32) | (uint32_t)b) + 1;
  size_t i = mix64(k) & (p->cap - 1);
  while (p->keys[i]) {
    if (p->keys[i] == k) { *rank = p->rank[i]; *merged = p->merged[i]; return 1; }
    i = (i + 1) & (p->cap - 1);
  }
  return 0;
}

static void pair_put(pair_map *p, int32_t a, int32_t b, int32_t rank, int32_t merged) {
  uint64_t k = (((uint64_t)(uint32_t)a << 32) | (uint32_t)b) + 1;
  size_t i = mix64(k) & (p->cap - 1);
  while (p->keys[i] && p->keys[i] != k) i = (i + 1) & (p->cap - 1);
  if (p->keys[i]) return; /* the first (lowest) rank wins */
  p->keys[i] = k;
  p->rank[i] = rank;
  p->merged[i] = merged;
}

typedef struct {
  char *content;
  size_t len;
  int32_t id;
} added_token;

struct vl_tokenizer {
  vl_strmap vocab;          /* byte-level token string -> id */
  char **id_str;          /* id -> token string (NULL: none) */
  unsigned char *id_added;/* id is an added token (decoded verbatim) */
  int n_ids;
  pair_map merges;
  added_token *added;
  int n_added;
  int32_t byte_id[256];   /* id of each single byte's symbol */
  char byte_chr[256][3];  /* UTF-8 of each byte's symbol */
  int dec_byte[512];      /* code point (< 512) -> byte, -1 if none */
  pcre2_code *re;
  pcre2_match_data *md;
  vl_strmap cache;          /* piece -> index into cache_ids */
  int32_t *cache_ids;     /* [len, ids...] records */
  size_t cache_n, cache_cap;
};

/* GPT-2's reversible byte -> printable code point mapping */
static void byte_level_tables(vl_tokenizer *t) {
  int n = 0;
  for (int b = 0; b < 256; b++) {
    int printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
    int cp = printable ? b : 256 + n++;
    utf8proc_uint8_t buf[4];
    utf8proc_ssize_t k = utf8proc_encode_char(cp, buf);
    memset(t->byte_chr[b], 0, 3);
    memcpy(t->byte_chr[b], buf, (size_t)k);
    t->dec_byte[cp] = b;
  }
}

void vl_tokenizer_free(vl_tokenizer *t) {
  if (!t) return;
  vl_strmap_free(&t->vocab);
  vl_strmap_free(&t->cache);
  for (int i = 0; i < t->n_ids; i++) free(t->id_str ? t->id_str[i] : NULL);
  free(t->id_str);
  free(t->id_added);
  free(t->merges.keys); free(t->merges.rank); free(t->merges.merged);
  for (int i = 0; i < t->n_added; i++) free(t->added[i].content);
  free(t->added);
  if (t->md) pcre2_match_data_free(t->md);
  if (t->re) pcre2_code_free(t->re);
  free(t->cache_ids);
  free(t);
}

static int cmp_added(const void *a, const void *b) {
  const added_token *x = a, *y = b;
  return x->len < y->len ? 1 : x->len > y->len ? -1 : 0; /* longest first */
}

int vl_tokenizer_load(vl_tokenizer **out, const char *path) {
  *out = NULL;
  FILE *f = fopen(path, "rb");
  if (!f) VL_ERROR(VL_EIO, "%s: cannot open", path);
  fseek(f, 0, SEEK_END);
  long sz = ftell(f);
  fseek(f, 0, SEEK_SET);
  char *text = malloc((size_t)sz + 1);
  if (!text || fread(text, 1, (size_t)sz, f) != (size_t)sz) {
    free(text);
    fclose(f);
    VL_ERROR(VL_EIO, "%s: read failed", path);
  }
  fclose(f);
  text[sz] = 0;
  cJSON *root = cJSON_ParseWithLength(text, (size_t)sz);
  free(text);
  if (!root) VL_ERROR(VL_EIO, "%s: not valid JSON", path);
  int rc = VL_OK;
  vl_tokenizer *t = calloc(1, sizeof *t);
  if (!t) { cJSON_Delete(root); VL_ERROR(VL_ENOMEM, "tokenizer"); }
  memset(t->dec_byte, -1, sizeof t->dec_byte);
  byte_level_tables(t);
  const cJSON *model = cJSON_GetObjectItemCaseSensitive(root, "model");
  const cJSON *type = cJSON_GetObjectItemCaseSensitive(model, "type");
  const cJSON *vocab = cJSON_GetObjectItemCaseSensitive(model, "vocab");
  const cJSON *merges = cJSON_GetObjectItemCaseSensitive(model, "merges");
  const cJSON *added = cJSON_GetObjectItemCaseSensitive(root, "added_tokens");
  if (!cJSON_IsString(type) || strcmp(type->valuestring, "BPE") || !cJSON_IsObject(vocab) ||
      !cJSON_IsArray(merges))
    VL_ERROR_GOTO(rc, done, VL_EIO, "%s: not a byte-level BPE tokenizer.json (model.type BPE, vocab, merges)", path);
  /* the pre-tokenizer regex of the Split step */
  const cJSON *pre = cJSON_GetObjectItemCaseSensitive(root, "pre_tokenizer");
  const char *pattern = NULL;
  const cJSON *steps = cJSON_GetObjectItemCaseSensitive(pre, "pretokenizers"), *st;
  cJSON_ArrayForEach(st, steps) {
    const cJSON *ty = cJSON_GetObjectItemCaseSensitive(st, "type");
    if (cJSON_IsString(ty) && !strcmp(ty->valuestring, "Split")) {
      const cJSON *re = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(st, "pattern"), "Regex");
      if (cJSON_IsString(re)) pattern = re->valuestring;
    }
  }
  if (!pattern) VL_ERROR_GOTO(rc, done, VL_EIO, "%s: no Split pre-tokenizer regex", path);
  int err;
  PCRE2_SIZE eoff;
  t->re = pcre2_compile((PCRE2_SPTR)pattern, PCRE2_ZERO_TERMINATED, PCRE2_UTF | PCRE2_UCP, &err, &eoff, NULL);
  if (!t->re) {
    PCRE2_UCHAR msg[256];
    pcre2_get_error_message(err, msg, sizeof msg);
    VL_ERROR_GOTO(rc, done, VL_EIO, "%s: pre-tokenizer regex does not compile at %zu: %s", path, (size_t)eoff, msg);
  }
  pcre2_jit_compile(t->re, PCRE2_JIT_COMPLETE); /* optional speed-up; interpretive match otherwise */
  t->md = pcre2_match_data_create_from_pattern(t->re, NULL);
  /* vocabulary */
  int max_id = -1, nv = cJSON_GetArraySize(vocab), na = cJSON_GetArraySize(added);
  VL_CALL_GOTO(rc, done, vl_strmap_init(&t->vocab, (size_t)(nv + na + 16)));
  const cJSON *e;
  cJSON_ArrayForEach(e, vocab) {
    if (!cJSON_IsNumber(e)) VL_ERROR_GOTO(rc, done, VL_EIO, "%s: vocab entry '%s' is not an id", path, e->string);
    VL_CALL_GOTO(rc, done, vl_strmap_put(&t->vocab, e->string, strlen(e->string), e->valueint));
    if (e->valueint > max_id) max_id = e->valueint;
  }
  cJSON_ArrayForEach(e, added) {
    const cJSON *id = cJSON_GetObjectItemCaseSensitive(e, "id");
    if (cJSON_IsNumber(id) && id->valueint > max_id) max_id = id->valueint;
  }
  t->n_ids = max_id + 1;
  t->id_str = calloc((size_t)t->n_ids, sizeof *t->id_str);
  t->id_added = calloc((size_t)t->n_ids, 1);
  t->added = calloc((size_t)na + 1, sizeof *t->added);
  if (!t->id_str || !t->id_added || !t->added) VL_ERROR_GOTO(rc, done, VL_ENOMEM, "tokenizer tables");
  cJSON_ArrayForEach(e, vocab) if (e->valueint >= 0) t->id_str[e->valueint] = strdup(e->string);
  cJSON_ArrayForEach(e, added) {
    const cJSON *id = cJSON_GetObjectItemCaseSensitive(e, "id"), *c = cJSON_GetObjectItemCaseSensitive(e, "content");
    if (!cJSON_IsNumber(id) || !cJSON_IsString(c)) continue;
    added_token *a = &t->added[t->n_added++];
    a->content = strdup(c->valuestring);
    a->len = strlen(c->valuestring);
    a->id = id->valueint;
    free(t->id_str[a->id]);
    t->id_str[a->id] = strdup(c->valuestring);
    t->id_added[a->id] = 1;
    VL_CALL_GOTO(rc, done, vl_strmap_put(&t->vocab, a->content, a->len, a->id));
  }
  qsort(t->added, (size_t)t->n_added, sizeof *t->added, cmp_added);
  for (int b = 0; b < 256; b++) {
    t->byte_id[b] = vl_strmap_get(&t->vocab, t->byte_chr[b], strlen(t->byte_chr[b]));
    if (t->byte_id[b] < 0) VL_ERROR_GOTO(rc, done, VL_EIO, "%s: byte %d has no token (not byte-level?)", path, b);
  }
  /* merges: "a b" strings or [a, b] pairs */
  int nm = cJSON_GetArraySize(merges);
  t->merges.cap = 16;
  while (t->merges.cap < (size_t)nm * 2 + 2) t->merges.cap *= 2;
  t->merges.keys = calloc(t->merges.cap, sizeof(uint64_t));
  t->merges.rank = calloc(t->merges.cap, sizeof(int32_t));
  t->merges.merged = calloc(t->merges.cap, sizeof(int32_t));
  if (!t->merges.keys || !t->merges.rank || !t->merges.merged) VL_ERROR_GOTO(rc, done, VL_ENOMEM, "merges");
  int rank = 0;
  char buf[1024];
  cJSON_ArrayForEach(e, merges) {
    const char *a = NULL, *b = NULL;
    if (cJSON_IsArray(e) && cJSON_GetArraySize(e) == 2) {
      a = cJSON_GetArrayItem(e, 0)->valuestring;
      b = cJSON_GetArrayItem(e, 1)->valuestring;
    } else if (cJSON_IsString(e)) {
      const char *sp = strchr(e->valuestring, ' ');
      if (sp && (size_t)(sp - e->valuestring) < sizeof buf) {
        snprintf(buf, sizeof buf, "%.*s", (int)(sp - e->valuestring), e->valuestring);
        a = buf;
        b = sp + 1;
      }
    }
    if (!a || !b) VL_ERROR_GOTO(rc, done, VL_EIO, "%s: merge %d is malformed", path, rank);
    int32_t ia = vl_strmap_get(&t->vocab, a, strlen(a)), ib = vl_strmap_get(&t->vocab, b, strlen(b));
    char cat[2048];
    int nc = snprintf(cat, sizeof cat, "%s%s", a, b);
    int32_t im = vl_strmap_get(&t->vocab, cat, (size_t)nc);
    if (ia < 0 || ib < 0 || im < 0)
      VL_ERROR_GOTO(rc, done, VL_EIO, "%s: merge %d ('%s' '%s') names tokens not in the vocabulary", path, rank, a, b);
    pair_put(&t->merges, ia, ib, rank, im);
    rank++;
  }
  VL_CALL_GOTO(rc, done, vl_strmap_init(&t->cache, 1 << 19));
done:
  cJSON_Delete(root);
  if (rc) { vl_tokenizer_free(t); return rc; }
  *out = t;
  return VL_OK;
}

int32_t vl_tokenizer_token_id(const vl_tokenizer *t, const char *token) {
  return vl_strmap_get(&t->vocab, token, strlen(token));
}
int vl_tokenizer_vocab_size(const vl_tokenizer *t) { return t->n_ids; }

static int push_ids(int32_t **ids, size_t *n, size_t *cap, const int32_t *v, size_t k) {
  if (*n + k > *cap) {
    size_t c = *cap ? *cap : 256;
    while (c < *n + k) c *= 2;
    int32_t *p = realloc(*ids, c * sizeof(int32_t));
    if (!p) VL_ERROR(VL_ENOMEM, "token ids");
    *ids = p;
    *cap = c;
  }
  memcpy(*ids + *n, v, k * sizeof(int32_t));
  *n += k;
  return VL_OK;
}

/* BPE of one pre-tokenized piece (raw bytes). */
static int bpe_piece(vl_tokenizer *t, const unsigned char *s, size_t len, int32_t **ids, size_t *n,
                     size_t *cap) {
  int32_t ci = len <= 256 ? vl_strmap_get(&t->cache, (const char *)s, len) : -1;
  if (ci >= 0) return push_ids(ids, n, cap, t->cache_ids + ci + 1, (size_t)t->cache_ids[ci]);
  int32_t stack_sym[512], *sym = len <= 512 ? stack_sym : malloc(len * sizeof(int32_t));
  if (!sym) VL_ERROR(VL_ENOMEM, "bpe symbols");
  size_t m = len;
  for (size_t i = 0; i < len; i++) sym[i] = t->byte_id[s[i]];
  for (;;) {
    int32_t best = INT32_MAX, best_new = -1;
    size_t at = 0;
    for (size_t i = 0; i + 1 < m; i++) {
      int32_t r, nw;
      if (pair_get(&t->merges, sym[i], sym[i + 1], &r, &nw) && r < best) { best = r; best_new = nw; at = i; }
    }
    if (best_new < 0) break;
    /* merge every non-overlapping occurrence of this pair, left to right */
    int32_t a = sym[at], b = sym[at + 1];
    size_t w = 0;
    for (size_t i = 0; i < m;) {
      if (i + 1 < m && sym[i] == a && sym[i + 1] == b) { sym[w++] = best_new; i += 2; }
      else sym[w++] = sym[i++];
    }
    m = w;
  }
  int rc = push_ids(ids, n, cap, sym, m);
  if (rc == VL_OK && len <= 256) { /* remember it */
    if (t->cache.n + 1 > (size_t)1 << 19 || t->cache_n + m + 1 > (size_t)1 << 26) { /* full: start over */
      vl_strmap_free(&t->cache);
      rc = vl_strmap_init(&t->cache, 1 << 19);
      t->cache_n = 0;
    }
    if (rc == VL_OK && t->cache_n + m + 1 > t->cache_cap) {
      size_t c = t->cache_cap ? t->cache_cap * 2 : 1 << 16;
      while (c < t->cache_n + m + 1) c *= 2;
      int32_t *p = realloc(t->cache_ids, c * sizeof(int32_t));
      if (p) { t->cache_ids = p; t->cache_cap = c; }
    }
    if (rc == VL_OK && t->cache_n + m + 1 <= t->cache_cap) {
      t->cache_ids[t->cache_n] = (int32_t)m;
      memcpy(t->cache_ids + t->cache_n + 1, sym, m * sizeof(int32_t));
      rc = vl_strmap_put(&t->cache, (const char *)s, len, (int32_t)t->cache_n);
      t->cache_n += m + 1;
    }
  }
  if (sym != stack_sym) free(sym);
  return rc;
}

/* NFC, then the Split regex (Isolated: matches and the gaps are pieces). */
static int encode_segment(vl_tokenizer *t, const char *s, size_t len, int32_t **ids, size_t *n,
                          size_t *cap) {
  if (!len) return VL_OK;
  utf8proc_uint8_t *nfc = NULL;
  utf8proc_ssize_t nl = utf8proc_map((const utf8proc_uint8_t *)s, (utf8proc_ssize_t)len, &nfc,
                                     UTF8PROC_STABLE | UTF8PROC_COMPOSE);
  if (nl < 0) VL_ERROR(VL_EINVAL, "text is not valid UTF-8 (%s)", utf8proc_errmsg(nl));
  size_t pos = 0, gap = 0;
  int rc = VL_OK;
  while (pos < (size_t)nl && rc == VL_OK) {
    int r = pcre2_match(t->re, nfc, (size_t)nl, pos, 0, t->md, NULL);
    if (r < 0) break;
    PCRE2_SIZE *ov = pcre2_get_ovector_pointer(t->md);
    size_t a = ov[0], b = ov[1];
    if (a > gap) rc = bpe_piece(t, nfc + gap, a - gap, ids, n, cap);
    if (rc == VL_OK && b > a) rc = bpe_piece(t, nfc + a, b - a, ids, n, cap);
    pos = b > a ? b : b + 1;
    gap = b;
  }
  if (rc == VL_OK && gap < (size_t)nl) rc = bpe_piece(t, nfc + gap, (size_t)nl - gap, ids, n, cap);
  free(nfc);
  return rc;
}

int vl_tokenizer_encode(vl_tokenizer *t, const char *text, size_t len, int32_t **ids, size_t *n,
                        size_t *cap) {
  size_t start = 0;
  for (size_t i = 0; i < len;) {
    int hit = -1;
    for (int k = 0; k < t->n_added; k++)
      if (t->added[k].len <= len - i && t->added[k].content[0] == text[i] &&
          !memcmp(text + i, t->added[k].content, t->added[k].len)) { hit = k; break; }
    if (hit < 0) { i++; continue; }
    VL_CALL(encode_segment(t, text + start, i - start, ids, n, cap));
    VL_CALL(push_ids(ids, n, cap, &t->added[hit].id, 1));
    i += t->added[hit].len;
    start = i;
  }
  VL_CALL(encode_segment(t, text + start, len - start, ids, n, cap));
  return VL_OK;
}

int vl_tokenizer_decode(const vl_tokenizer *t, const int32_t *ids, size_t n, char **out, size_t *len) {
  size_t cap = n * 4 + 16, o = 0;
  char *buf = malloc(cap);
  if (!buf) VL_ERROR(VL_ENOMEM, "decode");
  for (size_t i = 0; i < n; i++) {
    if (ids[i] < 0 || ids[i] >= t->n_ids || !t->id_str[ids[i]]) {
      free(buf);
      VL_ERROR(VL_EINVAL, "id %d is not in the vocabulary", (int)ids[i]);
    }
    const char *s = t->id_str[ids[i]];
    size_t sl = strlen(s);
    if (o + sl + 1 > cap) {
      cap = (o + sl + 1) * 2;
      char *p = realloc(buf, cap);
      if (!p) { free(buf); VL_ERROR(VL_ENOMEM, "decode"); }
      buf = p;
    }
    if (t->id_added[ids[i]]) { memcpy(buf + o, s, sl); o += sl; continue; }
    for (size_t k = 0; k < sl;) {
      utf8proc_int32_t cp;
      utf8proc_ssize_t r = utf8proc_iterate((const utf8proc_uint8_t *)s + k, (utf8proc_ssize_t)(sl - k), &cp);
      if (r <= 0 || cp >= 512 || t->dec_byte[cp] < 0) {
        free(buf);
        VL_ERROR(VL_EINVAL, "token %d is not byte-level", (int)ids[i]);
      }
      buf[o++] = (char)t->dec_byte[cp];
      k += (size_t)r;
    }
  }
  buf[o] = 0;
  *out = buf;
  *len = o;
  return VL_OK;
}
