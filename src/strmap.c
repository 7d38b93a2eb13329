/* strmap: string -> int32 map (see strmap.h). */
#include "strmap.h"

#include <stdlib.h>
#include <string.h>

#include "err.h"

/* The slot of s: its own, or the empty one where it would go. */
static size_t slot(const vl_strmap *m, const char *s, size_t n) {
  size_t i = vl_strmap_hash(s, n) & (m->cap - 1);
  while (m->keys[i] && !(m->klen[i] == n && memcmp(m->keys[i], s, n) == 0)) i = (i + 1) & (m->cap - 1);
  return i;
}

static int alloc_table(vl_strmap *m, size_t cap) {
  m->keys = calloc(cap, sizeof *m->keys);
  m->klen = calloc(cap, sizeof *m->klen);
  m->vals = calloc(cap, sizeof *m->vals);
  m->cap = cap;
  m->n = 0;
  if (!m->keys || !m->klen || !m->vals) {
    free(m->keys); free(m->klen); free(m->vals);
    memset(m, 0, sizeof *m);
    VL_ERROR(VL_ENOMEM, "string map of %zu slots", cap);
  }
  return VL_OK;
}

int vl_strmap_init(vl_strmap *m, size_t expected) {
  size_t cap = 16;
  while (cap < expected * 2) cap *= 2;
  return alloc_table(m, cap);
}

void vl_strmap_free(vl_strmap *m) {
  for (size_t i = 0; i < m->cap; i++) free(m->keys[i]);
  free(m->keys); free(m->klen); free(m->vals);
  memset(m, 0, sizeof *m);
}

/* Doubles the table (at most half full after), moving the keys. */
static int grow(vl_strmap *m) {
  vl_strmap g;
  VL_CALL(alloc_table(&g, m->cap ? 2 * m->cap : 16));
  for (size_t i = 0; i < m->cap; i++)
    if (m->keys[i]) {
      size_t j = slot(&g, m->keys[i], m->klen[i]);
      g.keys[j] = m->keys[i];
      g.klen[j] = m->klen[i];
      g.vals[j] = m->vals[i];
      g.n++;
    }
  free(m->keys); free(m->klen); free(m->vals);
  *m = g;
  return VL_OK;
}

int vl_strmap_put(vl_strmap *m, const char *s, size_t n, int32_t v) {
  if (2 * (m->n + 1) > m->cap) VL_CALL(grow(m));
  size_t i = slot(m, s, n);
  if (m->keys[i]) { m->vals[i] = v; return VL_OK; }
  char *k = malloc(n + 1);
  if (!k) VL_ERROR(VL_ENOMEM, "string map key of %zu bytes", n);
  memcpy(k, s, n);
  k[n] = 0;
  m->keys[i] = k;
  m->klen[i] = n;
  m->vals[i] = v;
  m->n++;
  return VL_OK;
}
