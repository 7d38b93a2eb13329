/* tokenizer: Hugging Face byte-level BPE tokenizers (tokenizer.json of the
 * Qwen2/Qwen3 family): added/special tokens matched on the raw text first,
 * NFC normalisation (utf8proc), the Split pre-tokenizer regex (PCRE2, UTF +
 * Unicode properties), the GPT-2 byte-to-unicode mapping, merges by rank.
 * Encode and decode; a per-piece cache makes repeated words cheap.
 * Does not own: chat templates, truncation, padding. */
#ifndef VL_TOKENIZER_H
#define VL_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

typedef struct vl_tokenizer vl_tokenizer;

int vl_tokenizer_load(vl_tokenizer **out, const char *tokenizer_json);
void vl_tokenizer_free(vl_tokenizer *t);

/* Appends the ids of text (len bytes of UTF-8) to *ids (growing *cap). */
int vl_tokenizer_encode(vl_tokenizer *t, const char *text, size_t len, int32_t **ids, size_t *n,
                        size_t *cap);
/* Decodes ids into *out (malloc'd, NUL-terminated, *len bytes). */
int vl_tokenizer_decode(const vl_tokenizer *t, const int32_t *ids, size_t n, char **out,
                        size_t *len);

/* Id of a token string (vocabulary or added token), -1 if none. */
int32_t vl_tokenizer_token_id(const vl_tokenizer *t, const char *token);
int vl_tokenizer_vocab_size(const vl_tokenizer *t); /* 1 + the largest id */

#endif
