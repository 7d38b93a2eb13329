/* vltoken-train: trains a small byte-level BPE tokenizer on the texts of
 * JSONL conversation records and writes it as a Hugging Face tokenizer.json
 * with the structure of Qwen's (NFC normalizer, the Qwen Split regex then
 * ByteLevel pre-tokenizer, ByteLevel post-processor and decoder, model BPE
 * with merges as pairs) and Qwen3-VL's added tokens (<|endoftext|>,
 * <|im_start|>, <|im_end|>, <|vision_start|>, <|image_pad|>, ...) after the
 * vocabulary.  This is how the tiny model's tokenizer (inputs/tiny/) is made:
 * see `make tiny-tokenizer`.
 *
 * Training: every message's role and content (less "<image>") is NFC
 * normalised and split by the regex into pieces, as the tokenizer does at
 * encoding time; pieces start as their bytes' symbols, and the most frequent
 * adjacent pair (ties: the smallest pair of ids) is merged, repeatedly, until
 * the vocabulary is full or no pair occurs min-frequency times.  The base
 * vocabulary is the 256 byte symbols in GPT-2's byte-to-unicode order, so
 * any text encodes.  Deterministic: the same input gives the same bytes. */
#define PCRE2_CODE_UNIT_WIDTH 8
#include <cjson/cJSON.h>
#include <errno.h>
#include <pcre2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#include "err.h"
#include "strmap.h"

static const char qwen_regex[] =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|"
    "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

/* Qwen3-VL's added tokens, in id order after the vocabulary, and whether
 * each is special. */
static const struct { const char *content; int special; } added_tokens[] = {
    {"<|endoftext|>", 1}, {"<|im_start|>", 1}, {"<|im_end|>", 1}, {"<|object_ref_start|>", 1},
    {"<|object_ref_end|>", 1}, {"<|box_start|>", 1}, {"<|box_end|>", 1}, {"<|quad_start|>", 1},
    {"<|quad_end|>", 1}, {"<|vision_start|>", 1}, {"<|vision_end|>", 1}, {"<|vision_pad|>", 1},
    {"<|image_pad|>", 1}, {"<|video_pad|>", 1}, {"<tool_call>", 0}, {"</tool_call>", 0},
    {"<|fim_prefix|>", 0}, {"<|fim_middle|>", 0}, {"<|fim_suffix|>", 0}, {"<|fim_pad|>", 0},
    {"<|repo_name|>", 0}, {"<|file_sep|>", 0}, {"<tool_response>", 0}, {"</tool_response>", 0},
    {"<think>", 0}, {"</think>", 0}};
#define N_ADDED ((int)(sizeof added_tokens / sizeof added_tokens[0]))

/* The value of s in the map, -1 if absent; with add, inserts it as `add_val`. */
static int strset_find(vl_strmap *m, const char *s, size_t n, int add, int add_val, int *out) {
  *out = vl_strmap_get(m, s, n);
  if (*out < 0 && add) {
    VL_CALL(vl_strmap_put(m, s, n, add_val));
    *out = add_val;
  }
  return VL_OK;
}

/* ---- the trainer's state ---------------------------------------------------------- */
typedef struct {
  int *sym, len;
  long count;
} word;

typedef struct {
  vl_strmap pieces;          /* piece bytes -> word index */
  word *words;
  int n_words, cap_words;
  char **tok;             /* id -> byte-level token string */
  int n_tok, cap_tok;
  vl_strmap tok_ids;         /* token string -> id */
  int (*merges)[2];
  int n_merges;
  char byte_sym[256][3];  /* UTF-8 of each byte's symbol */
  pcre2_code *re;
  pcre2_match_data *md;
  long n_docs;
} trainer;

static int add_token(trainer *t, const char *s, int *id) {
  int found;
  VL_CALL(strset_find(&t->tok_ids, s, strlen(s), 0, 0, &found));
  if (found >= 0) { *id = found; return VL_OK; } /* two pairs may spell one token */
  if (t->n_tok == t->cap_tok) {
    t->cap_tok = t->cap_tok ? 2 * t->cap_tok : 512;
    char **g = realloc(t->tok, (size_t)t->cap_tok * sizeof *g);
    if (!g) VL_ERROR(VL_ENOMEM, "token table");
    t->tok = g;
  }
  t->tok[t->n_tok] = strdup(s);
  if (!t->tok[t->n_tok]) VL_ERROR(VL_ENOMEM, "token table");
  VL_CALL(strset_find(&t->tok_ids, s, strlen(s), 1, t->n_tok, &found));
  *id = t->n_tok++;
  return VL_OK;
}

/* GPT-2's byte-to-unicode mapping; ids 0..255 in its order (printable bytes
 * first), as in GPT-2's and Qwen's vocabularies. */
static int init_bytes(trainer *t) {
  int order[256], n = 0, extra = 0;
  for (int b = 0; b < 256; b++) {
    int printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
    int cp = printable ? b : 256 + extra++;
    utf8proc_uint8_t buf[4];
    utf8proc_ssize_t k = utf8proc_encode_char(cp, buf);
    memset(t->byte_sym[b], 0, 3);
    memcpy(t->byte_sym[b], buf, (size_t)k);
    if (printable) order[n++] = b;
  }
  for (int b = 0; b < 256; b++) {
    int printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
    if (!printable) order[n++] = b;
  }
  for (int i = 0; i < 256; i++) {
    int id;
    VL_CALL(add_token(t, t->byte_sym[order[i]], &id));
  }
  return VL_OK;
}

static int add_piece(trainer *t, const char *s, size_t n) {
  int w;
  VL_CALL(strset_find(&t->pieces, s, n, 1, t->n_words, &w));
  if (w < t->n_words) { t->words[w].count++; return VL_OK; }
  if (t->n_words == t->cap_words) {
    t->cap_words = t->cap_words ? 2 * t->cap_words : 1024;
    word *g = realloc(t->words, (size_t)t->cap_words * sizeof *g);
    if (!g) VL_ERROR(VL_ENOMEM, "word table");
    t->words = g;
  }
  word *wd = &t->words[t->n_words++];
  wd->sym = malloc(n * sizeof *wd->sym);
  if (!wd->sym) VL_ERROR(VL_ENOMEM, "word table");
  wd->len = (int)n;
  wd->count = 1;
  for (size_t i = 0; i < n; i++) {
    int id;
    VL_CALL(strset_find(&t->tok_ids, t->byte_sym[(unsigned char)s[i]],
                        strlen(t->byte_sym[(unsigned char)s[i]]), 0, 0, &id));
    wd->sym[i] = id;
  }
  return VL_OK;
}

/* NFC, then the regex's pieces (and any text between matches, as the
 * Isolated split keeps it). */
static int add_text(trainer *t, const char *text) {
  utf8proc_uint8_t *nfc = utf8proc_NFC((const utf8proc_uint8_t *)text);
  if (!nfc) VL_ERROR(VL_EINVAL, "text is not valid UTF-8");
  const char *s = (const char *)nfc;
  size_t len = strlen(s), pos = 0;
  int rc = VL_OK;
  while (pos < len) {
    int m = pcre2_match(t->re, (PCRE2_SPTR)s, len, pos, 0, t->md, NULL);
    if (m < 0) {
      VL_CALL_GOTO(rc, done, add_piece(t, s + pos, len - pos));
      break;
    }
    PCRE2_SIZE *ov = pcre2_get_ovector_pointer(t->md);
    if (ov[0] > pos) VL_CALL_GOTO(rc, done, add_piece(t, s + pos, ov[0] - pos));
    if (ov[1] == ov[0]) { /* an empty match cannot happen with this regex; step on */
      pos = ov[0] + 1;
      continue;
    }
    VL_CALL_GOTO(rc, done, add_piece(t, s + ov[0], ov[1] - ov[0]));
    pos = ov[1];
  }
done:
  free(nfc);
  return rc;
}

/* Every message's role and content as the chat template lays them out
 * ("role\ncontent"), "<image>" placeholders removed. */
static int read_jsonl(trainer *t, const char *path) {
  FILE *f = fopen(path, "r");
  if (!f) VL_ERROR(VL_EIO, "%s: cannot open: %s", path, strerror(errno));
  char *line = NULL, *doc = NULL;
  size_t cap = 0, dcap = 0;
  long lineno = 0;
  int rc = VL_OK;
  while (getline(&line, &cap, f) > 0) {
    lineno++;
    if (line[strspn(line, " \t\r\n")] == 0) continue;
    cJSON *rec = cJSON_Parse(line);
    const cJSON *msgs = cJSON_GetObjectItemCaseSensitive(rec, "messages"), *msg;
    if (!cJSON_IsArray(msgs)) {
      cJSON_Delete(rec);
      VL_ERROR_GOTO(rc, done, VL_EINVAL, "%s:%ld: not a record with \"messages\"", path, lineno);
    }
    cJSON_ArrayForEach(msg, msgs) {
      const cJSON *role = cJSON_GetObjectItemCaseSensitive(msg, "role");
      const cJSON *content = cJSON_GetObjectItemCaseSensitive(msg, "content");
      if (!cJSON_IsString(role) || !cJSON_IsString(content)) {
        cJSON_Delete(rec);
        VL_ERROR_GOTO(rc, done, VL_EINVAL, "%s:%ld: a message without role and content strings", path, lineno);
      }
      size_t need = strlen(role->valuestring) + strlen(content->valuestring) + 2;
      if (need > dcap) {
        char *g = realloc(doc, need);
        if (!g) { cJSON_Delete(rec); VL_ERROR_GOTO(rc, done, VL_ENOMEM, "document buffer"); }
        doc = g;
        dcap = need;
      }
      size_t k = (size_t)sprintf(doc, "%s\n", role->valuestring);
      for (const char *c = content->valuestring; *c;) {
        if (!strncmp(c, "<image>", 7)) { c += 7; continue; }
        doc[k++] = *c++;
      }
      doc[k] = 0;
      rc = add_text(t, doc);
      if (rc) {
        cJSON_Delete(rec);
        VL_ERROR_GOTO(rc, done, VL_EINVAL, "%s:%ld: %s", path, lineno, vl_err_last());
      }
      t->n_docs++;
    }
    cJSON_Delete(rec);
  }
  if (ferror(f)) VL_ERROR_GOTO(rc, done, VL_EIO, "%s: read failed", path);
done:
  free(line);
  free(doc);
  fclose(f);
  return rc;
}

/* ---- merging ------------------------------------------------------------------------ */
typedef struct {
  uint64_t *key; /* (a << 32 | b) + 1; 0 = empty */
  long *count;
  size_t cap;
} pair_counts;

static int best_pair(trainer *t, pair_counts *pc, int *a, int *b, long *count) {
  size_t total = 0;
  for (int w = 0; w < t->n_words; w++) total += (size_t)t->words[w].len;
  size_t cap = 1024;
  while (cap < 2 * total) cap *= 2;
  if (cap > pc->cap) {
    free(pc->key);
    free(pc->count);
    pc->key = malloc(cap * sizeof *pc->key);
    pc->count = malloc(cap * sizeof *pc->count);
    if (!pc->key || !pc->count) VL_ERROR(VL_ENOMEM, "pair counts");
    pc->cap = cap;
  }
  memset(pc->key, 0, pc->cap * sizeof *pc->key);
  uint64_t best = 0;
  long best_n = 0;
  for (int w = 0; w < t->n_words; w++) {
    const word *wd = &t->words[w];
    for (int i = 0; i + 1 < wd->len; i++) {
      uint64_t k = ((uint64_t)(uint32_t)wd->sym[i] << 32 | (uint32_t)wd->sym[i + 1]) + 1;
      size_t j = (size_t)((k * 0x9e3779b97f4a7c15ull) >> 20) & (pc->cap - 1);
      while (pc->key[j] && pc->key[j] != k) j = (j + 1) & (pc->cap - 1);
      if (!pc->key[j]) { pc->key[j] = k; pc->count[j] = 0; }
      long c = pc->count[j] += wd->count;
      if (c > best_n || (c == best_n && k < best)) { best = k; best_n = c; }
    }
  }
  *count = best_n;
  if (best_n) {
    *a = (int)((best - 1) >> 32);
    *b = (int)((best - 1) & 0xffffffffu);
  }
  return VL_OK;
}

static int merge_step(trainer *t, int a, int b) {
  size_t la = strlen(t->tok[a]), lb = strlen(t->tok[b]);
  char *cat = malloc(la + lb + 1);
  if (!cat) VL_ERROR(VL_ENOMEM, "merge");
  memcpy(cat, t->tok[a], la);
  memcpy(cat + la, t->tok[b], lb + 1);
  int id, rc = add_token(t, cat, &id);
  free(cat);
  VL_CALL(rc);
  int (*g)[2] = realloc(t->merges, (size_t)(t->n_merges + 1) * sizeof *g);
  if (!g) VL_ERROR(VL_ENOMEM, "merges");
  t->merges = g;
  t->merges[t->n_merges][0] = a;
  t->merges[t->n_merges][1] = b;
  t->n_merges++;
  for (int w = 0; w < t->n_words; w++) {
    word *wd = &t->words[w];
    int o = 0;
    for (int i = 0; i < wd->len; i++) {
      if (i + 1 < wd->len && wd->sym[i] == a && wd->sym[i + 1] == b) { wd->sym[o++] = id; i++; }
      else wd->sym[o++] = wd->sym[i];
    }
    wd->len = o;
  }
  return VL_OK;
}

/* ---- output ----------------------------------------------------------------------------- */
static cJSON *byte_level(void) {
  cJSON *o = cJSON_CreateObject();
  cJSON_AddStringToObject(o, "type", "ByteLevel");
  cJSON_AddFalseToObject(o, "add_prefix_space");
  cJSON_AddFalseToObject(o, "trim_offsets");
  cJSON_AddFalseToObject(o, "use_regex");
  return o;
}

static int write_json(const trainer *t, const char *path) {
  cJSON *root = cJSON_CreateObject();
  cJSON_AddStringToObject(root, "version", "1.0");
  cJSON_AddNullToObject(root, "truncation");
  cJSON_AddNullToObject(root, "padding");
  cJSON *added = cJSON_AddArrayToObject(root, "added_tokens");
  for (int i = 0; i < N_ADDED; i++) {
    cJSON *a = cJSON_CreateObject();
    cJSON_AddNumberToObject(a, "id", t->n_tok + i);
    cJSON_AddStringToObject(a, "content", added_tokens[i].content);
    cJSON_AddFalseToObject(a, "single_word");
    cJSON_AddFalseToObject(a, "lstrip");
    cJSON_AddFalseToObject(a, "rstrip");
    cJSON_AddFalseToObject(a, "normalized");
    cJSON_AddBoolToObject(a, "special", added_tokens[i].special);
    cJSON_AddItemToArray(added, a);
  }
  cJSON *norm = cJSON_AddObjectToObject(root, "normalizer");
  cJSON_AddStringToObject(norm, "type", "NFC");
  cJSON *pre = cJSON_AddObjectToObject(root, "pre_tokenizer");
  cJSON_AddStringToObject(pre, "type", "Sequence");
  cJSON *steps = cJSON_AddArrayToObject(pre, "pretokenizers");
  cJSON *split = cJSON_CreateObject();
  cJSON_AddStringToObject(split, "type", "Split");
  cJSON_AddStringToObject(cJSON_AddObjectToObject(split, "pattern"), "Regex", qwen_regex);
  cJSON_AddStringToObject(split, "behavior", "Isolated");
  cJSON_AddFalseToObject(split, "invert");
  cJSON_AddItemToArray(steps, split);
  cJSON_AddItemToArray(steps, byte_level());
  cJSON_AddItemToObject(root, "post_processor", byte_level());
  cJSON_AddItemToObject(root, "decoder", byte_level());
  cJSON *model = cJSON_AddObjectToObject(root, "model");
  cJSON_AddStringToObject(model, "type", "BPE");
  cJSON_AddNullToObject(model, "dropout");
  cJSON_AddNullToObject(model, "unk_token");
  cJSON_AddStringToObject(model, "continuing_subword_prefix", "");
  cJSON_AddStringToObject(model, "end_of_word_suffix", "");
  cJSON_AddFalseToObject(model, "fuse_unk");
  cJSON_AddFalseToObject(model, "byte_fallback");
  cJSON_AddFalseToObject(model, "ignore_merges");
  cJSON *vocab = cJSON_AddObjectToObject(model, "vocab");
  for (int i = 0; i < t->n_tok; i++) cJSON_AddNumberToObject(vocab, t->tok[i], i);
  cJSON *merges = cJSON_AddArrayToObject(model, "merges");
  for (int i = 0; i < t->n_merges; i++) {
    const char *pair[2] = {t->tok[t->merges[i][0]], t->tok[t->merges[i][1]]};
    cJSON_AddItemToArray(merges, cJSON_CreateStringArray(pair, 2));
  }
  char *text = cJSON_Print(root);
  cJSON_Delete(root);
  if (!text) VL_ERROR(VL_ENOMEM, "printing the tokenizer JSON");
  char tmp[4200];
  snprintf(tmp, sizeof tmp, "%s.tmp", path);
  FILE *f = fopen(tmp, "w");
  if (!f) { free(text); VL_ERROR(VL_EIO, "%s: cannot create: %s", tmp, strerror(errno)); }
  int ok = fputs(text, f) >= 0 && fputc('\n', f) != EOF;
  free(text);
  if (fclose(f) != 0 || !ok) VL_ERROR(VL_EIO, "%s: write failed", tmp);
  if (rename(tmp, path) != 0) VL_ERROR(VL_EIO, "%s: cannot rename to %s: %s", tmp, path, strerror(errno));
  return VL_OK;
}

static void usage(FILE *f) {
  fprintf(f,
          "usage: vltoken-train --input FILE.jsonl [--input ...] --output tokenizer.json\n"
          "                     [--vocab-size N] [--min-frequency F]\n"
          "  Trains a byte-level BPE tokenizer (Qwen layout, Qwen3-VL's added tokens)\n"
          "  on the messages of JSONL conversation records.\n"
          "  --vocab-size N      at most N ids in all, added tokens included (default 2048)\n"
          "  --min-frequency F   merge only pairs seen at least F times (default 2)\n");
}

int main(int argc, char **argv) {
  const char *inputs[64], *output = NULL;
  int n_inputs = 0;
  long vocab_size = 2048, min_freq = 2;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
    if (!strcmp(a, "--help") || !strcmp(a, "-h")) { usage(stdout); return 0; }
    if (!v) { fprintf(stderr, "vltoken-train: %s needs a value\n", a); return 2; }
    i++;
    char *end = NULL;
    if (!strcmp(a, "--input") && n_inputs < 64) inputs[n_inputs++] = v;
    else if (!strcmp(a, "--output")) output = v;
    else if (!strcmp(a, "--vocab-size")) vocab_size = strtol(v, &end, 10);
    else if (!strcmp(a, "--min-frequency")) min_freq = strtol(v, &end, 10);
    else { fprintf(stderr, "vltoken-train: unknown option %s\n", a); usage(stderr); return 2; }
    if (end && *end) { fprintf(stderr, "vltoken-train: %s %s: expected a number\n", a, v); return 2; }
  }
  if (!n_inputs || !output || vocab_size < 256 + N_ADDED || min_freq < 1) {
    usage(stderr);
    return 2;
  }
  vl_err_set_quiet(1);
  trainer t;
  memset(&t, 0, sizeof t);
  pair_counts pc = {0};
  int err, rc = VL_OK;
  PCRE2_SIZE eoff;
  t.re = pcre2_compile((PCRE2_SPTR)qwen_regex, PCRE2_ZERO_TERMINATED, PCRE2_UTF | PCRE2_UCP, &err, &eoff, NULL);
  t.md = t.re ? pcre2_match_data_create_from_pattern(t.re, NULL) : NULL;
  if (!t.md) { fprintf(stderr, "vltoken-train: the pre-tokenizer regex does not compile\n"); return 1; }
  rc = init_bytes(&t);
  for (int i = 0; rc == VL_OK && i < n_inputs; i++) rc = read_jsonl(&t, inputs[i]);
  long last = 0;
  while (rc == VL_OK && t.n_tok + N_ADDED < vocab_size) {
    int a = 0, b = 0;
    long n = 0;
    rc = best_pair(&t, &pc, &a, &b, &n);
    if (rc || n < min_freq) break;
    rc = merge_step(&t, a, b);
    last = n;
  }
  if (rc == VL_OK) rc = write_json(&t, output);
  if (rc) fprintf(stderr, "vltoken-train: %s\n", vl_err_last());
  else
    printf("vltoken-train: %ld texts, %d distinct pieces, %d merges (last seen %ld times), "
           "%d tokens + %d added = vocabulary %d, in %s\n",
           t.n_docs, t.n_words, t.n_merges, last, t.n_tok, N_ADDED, t.n_tok + N_ADDED, output);
  for (int w = 0; w < t.n_words; w++) free(t.words[w].sym);
  free(t.words);
  for (int i = 0; i < t.n_tok; i++) free(t.tok[i]);
  free(t.tok);
  free(t.merges);
  free(pc.key);
  free(pc.count);
  vl_strmap_free(&t.pieces);
  vl_strmap_free(&t.tok_ids);
  pcre2_match_data_free(t.md);
  pcre2_code_free(t.re);
  return rc ? 1 : 0;
}
