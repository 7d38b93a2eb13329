/* strmap: a map from byte strings (any bytes, with their length) to int32,
 * open addressing with FNV-1a hashing, growing as entries are added.
 * Owns its copies of the keys.  Used by the tokenizer (vocabulary, piece
 * cache) and the BPE trainer (pieces, token strings). */
#ifndef VL_STRMAP_H
#define VL_STRMAP_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

typedef struct {
  char **keys;   /* NUL-terminated copies; NULL = empty slot */
  size_t *klen;
  int32_t *vals;
  size_t cap, n; /* cap is 0 or a power of two */
} vl_strmap;

/* An empty map with room for `expected` entries before it grows (a zeroed
 * vl_strmap is also a valid empty map). */
int vl_strmap_init(vl_strmap *m, size_t expected);
void vl_strmap_free(vl_strmap *m);
/* FNV-1a of the bytes: the slot hash. */
static inline uint64_t vl_strmap_hash(const char *s, size_t n) {
  uint64_t h = 1469598103934665603ull;
  for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)s[i]) * 1099511628211ull;
  return h;
}

/* The value of s[0..n), -1 when absent.  Inline: the tokenizer's piece
 * cache asks once a piece. */
static inline int32_t vl_strmap_get(const vl_strmap *m, const char *s, size_t n) {
  if (!m->cap) return -1;
  for (size_t i = vl_strmap_hash(s, n) & (m->cap - 1); m->keys[i]; i = (i + 1) & (m->cap - 1))
    if (m->klen[i] == n && memcmp(m->keys[i], s, n) == 0) return m->vals[i];
  return -1;
}
/* Inserts s[0..n) -> v, or replaces its value. */
int vl_strmap_put(vl_strmap *m, const char *s, size_t n, int32_t v);

#endif
