/* chat: the Qwen-VL chat template and loss mask (see chat.h). */
#include "chat.h"

#include <stdlib.h>
#include <string.h>

#include "err.h"

#define IMAGE_TAG "<image>"
#define IMAGE_TAG_LEN 7

static const char qwen2_default_system[] = "You are a helpful assistant.";

static int special_id(const vl_tokenizer *tok, const char *s, int32_t *id) {
  *id = vl_tokenizer_token_id(tok, s);
  if (*id < 0) VL_ERROR(VL_EINVAL, "the tokenizer has no %s token (not a Qwen-VL tokenizer?)", s);
  return VL_OK;
}

int vl_chat_init(vl_chat *c, vl_tokenizer *tok, vl_family family, int merge_size) {
  memset(c, 0, sizeof *c);
  if (merge_size < 1) VL_ERROR(VL_EINVAL, "chat: merge size %d", merge_size);
  c->tok = tok;
  c->family = family;
  c->merge_size = merge_size;
  VL_CALL(special_id(tok, "<|im_start|>", &c->im_start));
  VL_CALL(special_id(tok, "<|im_end|>", &c->im_end));
  VL_CALL(special_id(tok, "<|vision_start|>", &c->vision_start));
  VL_CALL(special_id(tok, "<|vision_end|>", &c->vision_end));
  VL_CALL(special_id(tok, "<|image_pad|>", &c->image_pad));
  size_t cap = 0;
  VL_CALL(vl_tokenizer_encode(tok, "assistant\n", 10, &c->header_ids, &c->n_header, &cap));
  return VL_OK;
}

void vl_chat_free(vl_chat *c) {
  free(c->header_ids);
  memset(c, 0, sizeof *c);
}

void vl_chat_tokens_free(vl_chat_tokens *t) {
  free(t->ids);
  free(t->mask);
  free(t->image_start);
  memset(t, 0, sizeof *t);
}

long vl_chat_image_tokens(const int32_t grid[3], int merge_size) {
  return (long)grid[0] * grid[1] * grid[2] / ((long)merge_size * merge_size);
}

static int reserve(vl_chat_tokens *t, size_t extra) {
  if (t->n + extra <= t->cap) return VL_OK;
  size_t cap = t->cap ? t->cap : 256;
  while (cap < t->n + extra) cap *= 2;
  int32_t *ids = realloc(t->ids, cap * sizeof *ids);
  if (ids) t->ids = ids;
  uint8_t *mask = realloc(t->mask, cap);
  if (mask) t->mask = mask;
  if (!ids || !mask) VL_ERROR(VL_ENOMEM, "chat: %zu tokens", cap);
  t->cap = cap;
  return VL_OK;
}

static int push(vl_chat_tokens *t, int32_t id, uint8_t m) {
  VL_CALL(reserve(t, 1));
  t->ids[t->n] = id;
  t->mask[t->n++] = m;
  return VL_OK;
}

/* Appends the ids of text; the new mask entries are m. */
static int push_text(vl_chat *c, vl_chat_tokens *t, const char *s, size_t len, uint8_t m) {
  size_t n0 = t->n, cap = t->cap;
  int32_t *ids = t->ids;
  VL_CALL(vl_tokenizer_encode(c->tok, s, len, &ids, &t->n, &cap));
  t->ids = ids;
  if (cap != t->cap) {
    uint8_t *mask = realloc(t->mask, cap);
    if (!mask) VL_ERROR(VL_ENOMEM, "chat: %zu tokens", cap);
    t->mask = mask;
    t->cap = cap;
  }
  memset(t->mask + n0, m, t->n - n0);
  return VL_OK;
}

static int count_tags(const char *s) {
  int n = 0;
  for (const char *p = strstr(s, IMAGE_TAG); p; p = strstr(p + IMAGE_TAG_LEN, IMAGE_TAG)) n++;
  return n;
}

/* "<|im_start|>" + role + "\n" + text + "<|im_end|>" + "\n" for a message
 * without images (system, or the default system prompt). */
static int plain_turn(vl_chat *c, vl_chat_tokens *t, const char *role, const char *text) {
  size_t rl = strlen(role), tl = strlen(text);
  char *buf = malloc(rl + tl + 2);
  if (!buf) VL_ERROR(VL_ENOMEM, "chat: message of %zu bytes", tl);
  memcpy(buf, role, rl);
  buf[rl] = '\n';
  memcpy(buf + rl + 1, text, tl);
  int rc = VL_OK;
  VL_CALL_GOTO(rc, done, push(t, c->im_start, 0));
  VL_CALL_GOTO(rc, done, push_text(c, t, buf, rl + 1 + tl, 0));
  VL_CALL_GOTO(rc, done, push(t, c->im_end, 0));
  VL_CALL_GOTO(rc, done, push_text(c, t, "\n", 1, 0));
done:
  free(buf);
  return rc;
}

static int user_turn(vl_chat *c, vl_chat_tokens *t, const char *text, const int32_t (*grids)[3],
                     int *next_image) {
  VL_CALL(push(t, c->im_start, 0));
  /* "user\n" and the text up to the first image are one piece */
  const char *p = text, *tag = strstr(p, IMAGE_TAG);
  size_t first = tag ? (size_t)(tag - p) : strlen(p);
  char *buf = malloc(first + 6);
  if (!buf) VL_ERROR(VL_ENOMEM, "chat: message of %zu bytes", first);
  memcpy(buf, "user\n", 5);
  memcpy(buf + 5, p, first);
  int rc = push_text(c, t, buf, first + 5, 0);
  free(buf);
  if (rc) return vl_err_trace(rc, __FILE__, __LINE__, __func__);
  while (tag) {
    const int32_t *g = grids[*next_image];
    if (t->n_images == t->cap_images) {
      int cap = t->cap_images ? 2 * t->cap_images : 8;
      size_t *s = realloc(t->image_start, (size_t)cap * sizeof *s);
      if (!s) VL_ERROR(VL_ENOMEM, "chat: image list");
      t->image_start = s;
      t->cap_images = cap;
    }
    t->image_start[t->n_images++] = t->n;
    long npad = vl_chat_image_tokens(g, c->merge_size);
    VL_CALL(reserve(t, (size_t)npad + 2));
    t->ids[t->n] = c->vision_start;
    t->mask[t->n++] = 0;
    for (long k = 0; k < npad; k++) {
      t->ids[t->n] = c->image_pad;
      t->mask[t->n++] = 0;
    }
    t->ids[t->n] = c->vision_end;
    t->mask[t->n++] = 0;
    (*next_image)++;
    p = tag + IMAGE_TAG_LEN;
    tag = strstr(p, IMAGE_TAG);
    size_t len = tag ? (size_t)(tag - p) : strlen(p);
    VL_CALL(push_text(c, t, p, len, 0));
  }
  VL_CALL(push(t, c->im_end, 0));
  VL_CALL(push_text(c, t, "\n", 1, 0));
  return VL_OK;
}

static int assistant_turn(vl_chat *c, vl_chat_tokens *t, const char *text) {
  VL_CALL(push(t, c->im_start, 0));
  size_t n0 = t->n, tl = strlen(text);
  char *buf = malloc(tl + 11);
  if (!buf) VL_ERROR(VL_ENOMEM, "chat: message of %zu bytes", tl);
  memcpy(buf, "assistant\n", 10);
  memcpy(buf + 10, text, tl);
  int rc = push_text(c, t, buf, tl + 10, 1);
  free(buf);
  if (rc) return vl_err_trace(rc, __FILE__, __LINE__, __func__);
  /* the header's own ids are not supervised; a token that holds header and
   * answer bytes (an answer starting with a newline) is */
  size_t k = 0;
  while (k < c->n_header && n0 + k < t->n && t->ids[n0 + k] == c->header_ids[k]) k++;
  memset(t->mask + n0, 0, k);
  VL_CALL(push(t, c->im_end, 1));
  VL_CALL(push_text(c, t, "\n", 1, 0));
  return VL_OK;
}

int vl_chat_encode(vl_chat *c, const vl_chat_message *msgs, int n_msgs,
                   const int32_t (*grids)[3], int n_images, vl_chat_tokens *out) {
  out->n = 0;
  out->n_images = 0;
  if (n_msgs <= 0) VL_ERROR(VL_EINVAL, "no messages");
  int tags = 0, n_assistant = 0;
  for (int i = 0; i < n_msgs; i++) {
    const char *r = msgs[i].role;
    if (!r || !msgs[i].content) VL_ERROR(VL_EINVAL, "message %d: no role or content", i + 1);
    int user = !strcmp(r, "user"), assistant = !strcmp(r, "assistant"), system = !strcmp(r, "system");
    if (!user && !assistant && !system)
      VL_ERROR(VL_EINVAL, "message %d: role \"%s\" (expected system, user or assistant)", i + 1, r);
    if (system && i > 0) VL_ERROR(VL_EINVAL, "message %d: a system message must be the first", i + 1);
    int n = count_tags(msgs[i].content);
    if (n && !user) VL_ERROR(VL_EINVAL, "message %d: <image> in a %s message (only user messages hold images)", i + 1, r);
    tags += n;
    n_assistant += assistant;
  }
  if (!n_assistant) VL_ERROR(VL_EINVAL, "no assistant message (nothing to learn)");
  if (tags != n_images)
    VL_ERROR(VL_EINVAL, "%d <image> placeholder%s but %d image%s", tags, tags == 1 ? "" : "s",
             n_images, n_images == 1 ? "" : "s");
  for (int i = 0; i < n_images; i++) {
    const int32_t *g = grids[i];
    if (g[0] < 1 || g[1] < 1 || g[2] < 1 || g[1] % c->merge_size || g[2] % c->merge_size)
      VL_ERROR(VL_EINVAL, "image %d: grid (%d, %d, %d) is not a positive multiple of merge size %d",
               i + 1, g[0], g[1], g[2], c->merge_size);
  }
  int next_image = 0;
  if (strcmp(msgs[0].role, "system") && c->family == VL_FAMILY_QWEN2_VL)
    VL_CALL(plain_turn(c, out, "system", qwen2_default_system));
  for (int i = 0; i < n_msgs; i++) {
    const char *r = msgs[i].role;
    if (!strcmp(r, "system")) VL_CALL(plain_turn(c, out, "system", msgs[i].content));
    else if (!strcmp(r, "user")) VL_CALL(user_turn(c, out, msgs[i].content, grids, &next_image));
    else VL_CALL(assistant_turn(c, out, msgs[i].content));
  }
  return VL_OK;
}
