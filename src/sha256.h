/* sha256: FIPS 180-4 SHA-256 of a byte string or a file, as lowercase hex
 * (provenance: the dataset records the tokenizer.json it was made with).
 * Does not own: anything else; not for secrets (no constant-time care). */
#ifndef VL_SHA256_H
#define VL_SHA256_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
  uint32_t h[8];
  uint64_t len;        /* bytes so far */
  unsigned char buf[64];
  size_t nbuf;
} vl_sha256_ctx;

void vl_sha256_init(vl_sha256_ctx *c);
void vl_sha256_update(vl_sha256_ctx *c, const void *data, size_t n);
void vl_sha256_final(vl_sha256_ctx *c, uint8_t out[32]);
/* hex[65]: 64 lowercase hex digits and a NUL. */
void vl_sha256_hex(const void *data, size_t n, char hex[65]);
int vl_sha256_file(const char *path, char hex[65]);

#endif
