/* test_chat: the Qwen-VL chat template and loss mask against transformers.
 * tests/data/chat/reference.json holds, for Qwen3-VL and Qwen2-VL, the
 * input_ids that Qwen3VLProcessor / Qwen2VLProcessor (transformers 5.17,
 * the Instruct models' chat templates, the Qwen3 tokenizer.json) give for
 * the conversations of tests/data/chat/conversations.json (0-2 images of
 * different grids, system prompt or none, several turns, unicode, odd
 * whitespace), the image_grid_thw, and the loss mask from the offsets of the
 * assistant content (tests/reference/make_chat_refs.py).  Checks identical
 * ids and masks, the grids against vl_smart_resize, and the errors for bad
 * conversations.  Skips without the Qwen3 tokenizer.json. */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chat.h"
#include "err.h"
#include "image.h"
#include "test_util.h"

static cJSON *load_json(const char *rel) {
  char p[1024];
  FILE *f = fopen(test_path(p, sizeof p, rel), "rb");
  if (!f) { fprintf(stderr, "cannot open %s\n", p); exit(1); }
  fseek(f, 0, SEEK_END);
  long n = ftell(f);
  fseek(f, 0, SEEK_SET);
  char *b = malloc((size_t)n + 1);
  if (fread(b, 1, (size_t)n, f) != (size_t)n) exit(1);
  b[n] = 0;
  fclose(f);
  cJSON *j = cJSON_Parse(b);
  free(b);
  if (!j) { fprintf(stderr, "%s: bad JSON\n", p); exit(1); }
  return j;
}

static int n_msgs_of(const cJSON *msgs, vl_chat_message *out) {
  int n = 0;
  const cJSON *m;
  cJSON_ArrayForEach(m, msgs) {
    out[n].role = cJSON_GetObjectItem(m, "role")->valuestring;
    out[n].content = cJSON_GetObjectItem(m, "content")->valuestring;
    n++;
  }
  return n;
}

static void check_family(vl_tokenizer *tok, const char *fname, vl_family fam, const cJSON *ref,
                         const cJSON *convs) {
  const cJSON *fr = cJSON_GetObjectItem(cJSON_GetObjectItem(ref, "families"), fname);
  CHECK(fr != NULL, "family %s in reference.json", fname);
  if (!fr) return;
  int merge = cJSON_GetObjectItem(fr, "merge_size")->valueint;
  int patch = cJSON_GetObjectItem(fr, "patch_size")->valueint;
  long minp = (long)cJSON_GetObjectItem(fr, "min_pixels")->valuedouble;
  long maxp = (long)cJSON_GetObjectItem(fr, "max_pixels")->valuedouble;
  vl_chat c;
  if (vl_chat_init(&c, tok, fam, merge) != VL_OK) { CHECK(0, "chat init"); return; }
  vl_chat_tokens t = {0};
  const cJSON *rc = cJSON_GetObjectItem(fr, "conversations"), *conv = convs->child;
  for (const cJSON *r = rc->child; r; r = r->next, conv = conv->next) {
    const char *name = cJSON_GetObjectItem(r, "name")->valuestring;
    CHECK(conv && !strcmp(cJSON_GetObjectItem(conv, "name")->valuestring, name), "%s: order", name);
    if (!conv) break;
    vl_chat_message msgs[16];
    int nm = n_msgs_of(cJSON_GetObjectItem(conv, "messages"), msgs);
    int32_t grids[8][3];
    int ni = 0;
    const cJSON *g, *sizes = cJSON_GetObjectItem(conv, "images")->child;
    cJSON_ArrayForEach(g, cJSON_GetObjectItem(r, "grids")) {
      for (int k = 0; k < 3; k++) grids[ni][k] = cJSON_GetArrayItem(g, k)->valueint;
      /* the processor's grid is smart_resize of the image size / patch */
      int h = cJSON_GetArrayItem(sizes, 0)->valueint, w = cJSON_GetArrayItem(sizes, 1)->valueint, oh, ow;
      CHECK(vl_smart_resize(h, w, patch * merge, minp, maxp, &oh, &ow) == VL_OK, "%s: resize", name);
      CHECK(grids[ni][0] == 1 && grids[ni][1] == oh / patch && grids[ni][2] == ow / patch,
            "%s/%s image %d: grid (%d,%d,%d) vs smart_resize %dx%d", fname, name, ni, grids[ni][0],
            grids[ni][1], grids[ni][2], oh, ow);
      sizes = sizes->next;
      ni++;
    }
    int rcode = vl_chat_encode(&c, msgs, nm, (const int32_t(*)[3])grids, ni, &t);
    CHECK(rcode == VL_OK, "%s/%s: encode: %s", fname, name, vl_err_last());
    if (rcode) continue;
    const cJSON *ids = cJSON_GetObjectItem(r, "ids"), *mask = cJSON_GetObjectItem(r, "mask");
    size_t n = (size_t)cJSON_GetArraySize(ids);
    CHECK(t.n == n, "%s/%s: %zu ids, reference %zu", fname, name, t.n, n);
    size_t bad_id = n, bad_mask = n, nsup = 0;
    const cJSON *ie = ids->child, *me = mask->child;
    for (size_t i = 0; i < n && i < t.n; i++, ie = ie->next, me = me->next) {
      if (bad_id == n && t.ids[i] != ie->valueint) bad_id = i;
      if (bad_mask == n && t.mask[i] != me->valueint) bad_mask = i;
      nsup += t.mask[i];
    }
    CHECK(bad_id == n, "%s/%s: first differing id at %zu", fname, name, bad_id);
    CHECK(bad_mask == n, "%s/%s: first differing mask at %zu", fname, name, bad_mask);
    CHECK(nsup > 0, "%s/%s: supervised tokens", fname, name);
    CHECK(t.n_images == ni, "%s/%s: image starts", fname, name);
    for (int k = 0; k < t.n_images; k++)
      CHECK(t.ids[t.image_start[k]] == c.vision_start, "%s/%s: image %d start", fname, name, k);
  }
  vl_chat_tokens_free(&t);
  vl_chat_free(&c);
}

static void check_bad(vl_tokenizer *tok) {
  vl_chat c;
  CHECK(vl_chat_init(&c, tok, VL_FAMILY_QWEN3_VL, 2) == VL_OK, "init");
  vl_chat_tokens t = {0};
  int32_t g[2][3] = {{1, 4, 4}, {1, 2, 6}};
  vl_err_set_quiet(1);
  vl_chat_message m1[] = {{"user", "<image>hi"}, {"assistant", "yo"}};
  CHECK(vl_chat_encode(&c, m1, 2, (const int32_t(*)[3])g, 2, &t) == VL_EINVAL &&
            strstr(vl_err_last(), "1 <image> placeholder but 2 images"), "%s", vl_err_last());
  vl_chat_message m2[] = {{"user", "hi"}};
  CHECK(vl_chat_encode(&c, m2, 1, NULL, 0, &t) == VL_EINVAL && strstr(vl_err_last(), "no assistant"),
        "%s", vl_err_last());
  vl_chat_message m3[] = {{"user", "hi"}, {"system", "x"}, {"assistant", "a"}};
  CHECK(vl_chat_encode(&c, m3, 3, NULL, 0, &t) == VL_EINVAL && strstr(vl_err_last(), "system"),
        "%s", vl_err_last());
  vl_chat_message m4[] = {{"user", "hi"}, {"assistant", "<image>"}};
  CHECK(vl_chat_encode(&c, m4, 2, (const int32_t(*)[3])g, 1, &t) == VL_EINVAL &&
            strstr(vl_err_last(), "assistant message"), "%s", vl_err_last());
  vl_chat_message m5[] = {{"tool", "hi"}, {"assistant", "a"}};
  CHECK(vl_chat_encode(&c, m5, 2, NULL, 0, &t) == VL_EINVAL && strstr(vl_err_last(), "role"),
        "%s", vl_err_last());
  int32_t odd[1][3] = {{1, 3, 4}};
  vl_chat_message m6[] = {{"user", "<image>"}, {"assistant", "a"}};
  CHECK(vl_chat_encode(&c, m6, 2, (const int32_t(*)[3])odd, 1, &t) == VL_EINVAL &&
            strstr(vl_err_last(), "merge"), "%s", vl_err_last());
  vl_err_set_quiet(0);
  /* hand-computed: 2 images of 4 and 3 pads, mask on "yo" + <|im_end|> */
  vl_chat_message m7[] = {{"user", "<image><image>"}, {"assistant", "yo"}};
  CHECK(vl_chat_encode(&c, m7, 2, (const int32_t(*)[3])g, 2, &t) == VL_OK, "encode");
  int32_t *buf = NULL;
  size_t nyo = 0, cap = 0;
  vl_tokenizer_encode(tok, "yo", 2, &buf, &nyo, &cap);
  /* <|im_start|> user \n | vs 4pad ve | vs 3pad ve | im_end \n | im_start assistant \n yo.. im_end \n */
  size_t expect = 1 + 2 + (1 + 4 + 1) + (1 + 3 + 1) + 2 + 1 + 2 + nyo + 2;
  CHECK(t.n == expect, "%zu tokens, expected %zu", t.n, expect);
  size_t sup = 0;
  for (size_t i = 0; i < t.n; i++) sup += t.mask[i];
  CHECK(sup == nyo + 1, "supervised %zu, expected %zu", sup, nyo + 1);
  CHECK(t.mask[t.n - 1] == 0 && t.mask[t.n - 2] == 1 && t.ids[t.n - 2] == c.im_end, "mask tail");
  free(buf);
  vl_chat_tokens_free(&t);
  vl_chat_free(&c);
}

int main(void) {
  char def[1024];
  const char *path = test_qwen_tokenizer(def, sizeof def);
  vl_tokenizer *tok;
  if (vl_tokenizer_load(&tok, path) != VL_OK) return 1;
  cJSON *ref = load_json("tests/data/chat/reference.json");
  cJSON *convs = load_json("tests/data/chat/conversations.json");
  check_family(tok, "qwen3-vl", VL_FAMILY_QWEN3_VL, ref, convs);
  check_family(tok, "qwen2-vl", VL_FAMILY_QWEN2_VL, ref, convs);
  check_bad(tok);
  cJSON_Delete(ref);
  cJSON_Delete(convs);
  vl_tokenizer_free(tok);
  TEST_END();
}
