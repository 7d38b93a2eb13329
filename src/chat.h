/* chat: the Qwen-VL chat template and the supervised-fine-tuning loss mask.
 *
 * Owns: turning one conversation (system/user/assistant messages, `<image>`
 * placeholders in user content, each image's grid_thw) into exactly the
 * token ids that the model's processor + chat template give, and the loss
 * mask (1 on assistant content and its <|im_end|>).
 * Does not own: tokenization itself (tokenizer), images (image), files.
 *
 * Layout, as the Hugging Face chat templates render it (tokenize=False, then
 * the processor expands each <|image_pad|> to grid t*h*w / merge^2 copies):
 *   [<|im_start|>system\nSYSTEM<|im_end|>\n]
 *   <|im_start|>user\nTEXT<|vision_start|><|image_pad|>xN<|vision_end|>TEXT<|im_end|>\n
 *   <|im_start|>assistant\nANSWER<|im_end|>\n   ...
 * Qwen2-VL's template starts with "<|im_start|>system\nYou are a helpful
 * assistant.<|im_end|>\n" when the first message is not a system message;
 * Qwen3-VL's writes no system turn then.  A system message is allowed only
 * first (Qwen3-VL's template drops one elsewhere).  No generation prompt.
 *
 * Special tokens split the text before pre-tokenization, so encoding the
 * pieces between them separately gives the ids of the whole rendered text.
 * Mask: the ids of "assistant\n" + ANSWER that are not the header's own
 * ids, and the <|im_end|> after them; everything else 0.
 *
 * A vl_chat is not thread-safe (the tokenizer caches): one per thread.
 */
#ifndef VL_CHAT_H
#define VL_CHAT_H

#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "tokenizer.h"

typedef struct {
  const char *role;     /* "system" | "user" | "assistant" */
  const char *content;  /* UTF-8; "<image>" in user content marks an image */
} vl_chat_message;

typedef struct {
  vl_tokenizer *tok;    /* borrowed */
  vl_family family;
  int merge_size;
  int32_t im_start, im_end, vision_start, vision_end, image_pad;
  int32_t *header_ids;  /* ids of "assistant\n" */
  size_t n_header;
} vl_chat;

/* Looks up the special tokens in tok (VL_EINVAL naming a missing one). */
int vl_chat_init(vl_chat *c, vl_tokenizer *tok, vl_family family, int merge_size);
void vl_chat_free(vl_chat *c);

/* A conversation's ids and mask; buffers grow and are reused. */
typedef struct {
  int32_t *ids;
  uint8_t *mask;
  size_t n, cap;
  size_t *image_start;  /* index of each image's <|vision_start|> */
  int n_images, cap_images;
} vl_chat_tokens;

/* Encodes msgs with the images' grids (grids[i] = t, h, w in patches, in
 * the order the `<image>` placeholders appear).  Bad conversations return
 * VL_EINVAL with a message for the user: wrong role or order, a system
 * message that is not first, `<image>` outside user content, placeholder
 * count != n_images, no assistant message, a grid not divisible by merge. */
int vl_chat_encode(vl_chat *c, const vl_chat_message *msgs, int n_msgs,
                   const int32_t (*grids)[3], int n_images, vl_chat_tokens *out);
void vl_chat_tokens_free(vl_chat_tokens *t);

/* The image-pad count of a grid: t*h*w / merge^2. */
long vl_chat_image_tokens(const int32_t grid[3], int merge_size);

#endif
