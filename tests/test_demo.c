/* test_demo FILE.jsonl [W H]: a JSONL file vldemo wrote (images relative to
 * its folder, W x H pixels, default 64 x 64) and the tiny tokenizer.
 *  - every JSONL line parses, has the user/assistant layout, one <image>
 *    and one image path; every image decodes (src/image.h) at WxH;
 *  - the answers agree with the pixels: an independent reading of each image
 *    (which quadrants hold instrument-coloured pixels, and which colour)
 *    gives the same count, side and colour the record states;
 *  - inputs/tiny/tokenizer.json loads, its special ids and size match
 *    inputs/tiny.yaml, every text of the dataset encodes and decodes back
 *    exactly, and a known sentence encodes to the ids its pieces have in the
 *    file's vocabulary (read here with cJSON, not by the tokenizer). */
#include <cjson/cJSON.h>
#include <stdint.h>

#include "config.h"
#include "err.h"
#include "image.h"
#include "tokenizer.h"
#include "test_util.h"

static const char *const colours[4] = {"green", "blue", "yellow", "black"};

/* An independent colour classifier: -1 tissue, else the colour index. */
static int classify(const uint8_t *p) {
  int r = p[0], g = p[1], b = p[2];
  if (g > 140 && r < 130 && b < 140) return 0;
  if (b > 170 && r < 110 && g < 150) return 1;
  if (r > 200 && g > 180 && b < 120) return 2;
  if (r < 80 && g < 80 && b < 90) return 3;
  return -1;
}

typedef struct {
  int colour[4]; /* per quadrant: the colour seen, -1 none */
} reading;

static void read_image(const vl_image *im, reading *rd) {
  int hist[4][4] = {{0}};
  for (int y = 0; y < im->h; y++)
    for (int x = 0; x < im->w; x++) {
      int c = classify(im->rgb + ((size_t)y * (size_t)im->w + (size_t)x) * 3);
      if (c >= 0) hist[(y >= im->h / 2) * 2 + (x >= im->w / 2)][c]++;
    }
  for (int q = 0; q < 4; q++) {
    rd->colour[q] = -1;
    int best = 0;
    for (int c = 0; c < 4; c++)
      if (hist[q][c] > best) { best = hist[q][c]; rd->colour[q] = c; }
    if (best < 8) rd->colour[q] = -1; /* a few stray pixels are no instrument */
  }
}

/* The answer the image gives to the question, or NULL. */
static const char *answer_from_image(const char *q, const reading *rd) {
  static const char *const counts[5] = {"zero", "one", "two", "three", "four"};
  int n = 0, on_side[2] = {0, 0}, colour_on[2] = {-1, -1};
  for (int k = 0; k < 4; k++)
    if (rd->colour[k] >= 0) { n++; on_side[k & 1]++; colour_on[k & 1] = rd->colour[k]; }
  if (strstr(q, "How many")) return counts[n];
  for (int c = 0; c < 4; c++) {
    char needle[32];
    snprintf(needle, sizeof needle, "the %s instrument", colours[c]);
    if (strstr(q, needle)) {
      for (int k = 0; k < 4; k++)
        if (rd->colour[k] == c) return (k & 1) ? "right" : "left";
      return NULL;
    }
  }
  if (strstr(q, "colour")) {
    int side = strstr(q, "on the left") ? 0 : strstr(q, "on the right") ? 1 : -1;
    if (side < 0) return n == 1 ? colours[colour_on[0] >= 0 ? colour_on[0] : colour_on[1]] : NULL;
    return on_side[side] == 1 ? colours[colour_on[side]] : NULL;
  }
  return NULL;
}

/* With VL_DEMO_IDS=FILE, every text checked is also written to FILE as a
 * JSON line {"text": ..., "ids": [...]}, for tests/reference/check_tiny_tokenizer.py
 * to compare with Hugging Face tokenizers' ids. */
static FILE *dump_ids;

static void check_roundtrip(vl_tokenizer *tok, const char *text) {
  int32_t *ids = NULL;
  size_t n = 0, cap = 0, len = 0;
  char *back = NULL;
  int ok = vl_tokenizer_encode(tok, text, strlen(text), &ids, &n, &cap) == VL_OK &&
           vl_tokenizer_decode(tok, ids, n, &back, &len) == VL_OK;
  CHECK(ok && len == strlen(text) && !memcmp(back, text, len), "round trip of '%s' gave '%s'", text,
        back ? back : "(error)");
  if (ok && dump_ids) {
    cJSON *o = cJSON_CreateObject(), *a = cJSON_AddArrayToObject(o, "ids");
    cJSON_AddStringToObject(o, "text", text);
    for (size_t i = 0; i < n; i++) cJSON_AddItemToArray(a, cJSON_CreateNumber(ids[i]));
    char *js = cJSON_PrintUnformatted(o);
    if (js) fprintf(dump_ids, "%s\n", js);
    free(js);
    cJSON_Delete(o);
  }
  free(ids);
  free(back);
}

static char *slurp(const char *path) {
  FILE *f = fopen(path, "rb");
  if (!f) return NULL;
  fseek(f, 0, SEEK_END);
  long n = ftell(f);
  fseek(f, 0, SEEK_SET);
  char *s = malloc((size_t)n + 1);
  if (s && fread(s, 1, (size_t)n, f) != (size_t)n) { free(s); s = NULL; }
  if (s) s[n] = 0;
  fclose(f);
  return s;
}

static void test_tokenizer(vl_tokenizer *tok) {
  char p[1024], cp[1024];
  vl_config cfg;
  CHECK(vl_config_load(&cfg, test_path(cp, sizeof cp, "inputs/tiny.yaml")) == VL_OK, "tiny.yaml: %s", vl_err_last());
  const vl_token_config *tc = &cfg.model.tokens;
  CHECK(vl_tokenizer_vocab_size(tok) == cfg.model.text.vocab_size, "tokenizer has %d ids, tiny.yaml %d",
        vl_tokenizer_vocab_size(tok), cfg.model.text.vocab_size);
  CHECK(vl_tokenizer_token_id(tok, "<|image_pad|>") == tc->image_token_id &&
        vl_tokenizer_token_id(tok, "<|video_pad|>") == tc->video_token_id &&
        vl_tokenizer_token_id(tok, "<|vision_start|>") == tc->vision_start_token_id &&
        vl_tokenizer_token_id(tok, "<|vision_end|>") == tc->vision_end_token_id,
        "special ids of tokenizer.json and tiny.yaml differ");
  CHECK(vl_tokenizer_token_id(tok, "<|im_start|>") >= 0 && vl_tokenizer_token_id(tok, "<|im_end|>") >= 0 &&
        vl_tokenizer_token_id(tok, "<|endoftext|>") >= 0, "chat tokens missing");
  vl_config_free(&cfg);

  /* expected ids from the file's vocabulary, read independently */
  char *text = slurp(test_path(p, sizeof p, "inputs/tiny/tokenizer.json"));
  cJSON *root = text ? cJSON_Parse(text) : NULL;
  free(text);
  const cJSON *vocab = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(root, "model"), "vocab");
  CHECK(cJSON_IsObject(vocab), "tokenizer.json has no model.vocab");
  /* "Ġ" is the byte-level symbol of the space */
  const char *pieces[] = {"Looking", "\xc4\xa0" "at", "\xc4\xa0" "the", "\xc4\xa0" "instrument", ".",
                          "\xc4\xa0" "green"};
  const char *sentence = "<|im_start|>assistant\nLooking at the instrument. green<|im_end|>";
  int32_t want[16];
  int nw = 0;
  want[nw++] = vl_tokenizer_token_id(tok, "<|im_start|>");
  want[nw++] = cJSON_GetObjectItemCaseSensitive(vocab, "assistant") ? cJSON_GetObjectItemCaseSensitive(vocab, "assistant")->valueint : -2;
  want[nw++] = cJSON_GetObjectItemCaseSensitive(vocab, "\xc4\x8a") ? cJSON_GetObjectItemCaseSensitive(vocab, "\xc4\x8a")->valueint : -2; /* "\n" */
  for (size_t i = 0; i < sizeof pieces / sizeof *pieces; i++) {
    const cJSON *e = cJSON_GetObjectItemCaseSensitive(vocab, pieces[i]);
    want[nw++] = e ? e->valueint : -2;
  }
  want[nw++] = vl_tokenizer_token_id(tok, "<|im_end|>");
  int32_t *ids = NULL;
  size_t n = 0, cap = 0;
  CHECK(vl_tokenizer_encode(tok, sentence, strlen(sentence), &ids, &n, &cap) == VL_OK, "encode: %s", vl_err_last());
  int same = n == (size_t)nw;
  for (int i = 0; same && i < nw; i++) same = ids[i] == want[i] && want[i] >= 0;
  CHECK(same, "'%s' encodes to %zu ids, expected the %d vocabulary ids of its pieces", sentence, n, nw);
  free(ids);
  cJSON_Delete(root);
  check_roundtrip(tok, "Text the demo never writes: naïve café, 1234, emoji \xf0\x9f\x98\x80, tabs\tand\r\nlines.");
  check_roundtrip(tok, "<|im_start|>user\n<|vision_start|><|image_pad|><|image_pad|><|vision_end|>How many instruments can you see?<|im_end|>\n");
  check_roundtrip(tok, "  double  spaces, 'quotes' it's, Caf\xc3\xa9 (composed)\n\n\n end ");
}

int main(int argc, char **argv) {
  if (argc < 2) { fprintf(stderr, "usage: test_demo FILE.jsonl [W H]\n"); return 2; }
  const char *path = argv[1];
  char dir[1024];
  snprintf(dir, sizeof dir, "%s", path);
  char *slash = strrchr(dir, '/');
  if (slash) *slash = 0;
  else snprintf(dir, sizeof dir, ".");
  int W = argc > 3 ? atoi(argv[2]) : 64, H = argc > 3 ? atoi(argv[3]) : 64;
  char p[1024];
  const char *dump = getenv("VL_DEMO_IDS");
  if (dump && !(dump_ids = fopen(dump, "w"))) { fprintf(stderr, "%s: cannot create\n", dump); return 1; }
  vl_tokenizer *tok = NULL;
  CHECK(vl_tokenizer_load(&tok, test_path(p, sizeof p, "inputs/tiny/tokenizer.json")) == VL_OK, "load: %s",
        vl_err_last());
  if (!tok) TEST_END();
  test_tokenizer(tok);

  FILE *f = fopen(path, "r");
  CHECK(f != NULL, "%s missing", path);
  if (!f) TEST_END();
  char *line = NULL;
  size_t cap = 0;
  long lines = 0, agree = 0;
  while (getline(&line, &cap, f) > 0) {
    lines++;
    cJSON *rec = cJSON_Parse(line);
    const cJSON *msgs = cJSON_GetObjectItemCaseSensitive(rec, "messages");
    const cJSON *imgs = cJSON_GetObjectItemCaseSensitive(rec, "images");
    const cJSON *u = cJSON_GetArrayItem(msgs, 0), *a = cJSON_GetArrayItem(msgs, 1);
    const cJSON *ur = cJSON_GetObjectItemCaseSensitive(u, "role"), *uc = cJSON_GetObjectItemCaseSensitive(u, "content");
    const cJSON *ar = cJSON_GetObjectItemCaseSensitive(a, "role"), *ac = cJSON_GetObjectItemCaseSensitive(a, "content");
    int ok = rec && cJSON_GetArraySize(msgs) == 2 && cJSON_IsString(ur) && !strcmp(ur->valuestring, "user") &&
             cJSON_IsString(ar) && !strcmp(ar->valuestring, "assistant") && cJSON_IsString(uc) &&
             cJSON_IsString(ac) && !strncmp(uc->valuestring, "<image>", 7) &&
             !strstr(uc->valuestring + 7, "<image>") && cJSON_GetArraySize(imgs) == 1 &&
             cJSON_IsString(cJSON_GetArrayItem(imgs, 0));
    CHECK(ok, "%s:%ld: not a one-image user/assistant record", path, lines);
    if (!ok) { cJSON_Delete(rec); continue; }
    char ip[2048];
    snprintf(ip, sizeof ip, "%s/%s", dir, cJSON_GetArrayItem(imgs, 0)->valuestring);
    vl_image im = {0};
    CHECK(vl_image_load(&im, ip) == VL_OK && im.w == W && im.h == H, "%s: %s (%dx%d)", ip, vl_err_last(), im.w, im.h);
    if (im.rgb) {
      reading rd;
      read_image(&im, &rd);
      const char *want = answer_from_image(uc->valuestring, &rd);
      const char *dot = strrchr(ac->valuestring, ' ');
      int match = want && dot && !strcmp(dot + 1, want);
      agree += match;
      CHECK(match, "%s:%ld: the image answers '%s' to '%s', the record '%s'", path, lines, want ? want : "(nothing)",
            uc->valuestring, ac->valuestring);
    }
    vl_image_free(&im);
    check_roundtrip(tok, uc->valuestring);
    check_roundtrip(tok, ac->valuestring);
    cJSON_Delete(rec);
  }
  free(line);
  fclose(f);
  CHECK(lines > 0, "%s is empty", path);
  printf("test_demo: %ld records, %ld answers read back from the pixels\n", lines, agree);
  vl_tokenizer_free(tok);
  if (dump_ids) fclose(dump_ids);
  TEST_END();
}
