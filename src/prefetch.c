/* prefetch: the background thread that reads (or generates) samples ahead
 * of the trainer, in the order of their global numbers (see dataset.h). */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dataset.h"
#include "err.h"
#include "synth.h"

/* ============================== prefetch ================================ */

typedef struct {
  uint64_t g;
  int state; /* 0 requested, 1 being read, 2 ready */
  int rc;
  char err[1024];
  vl_dataset_sample s;
} pf_slot;

struct vl_prefetch {
  vl_dataset *d;     /* NULL: generated samples (synth below) */
  vl_prefetch_synth synth;
  uint64_t seed;
  int depth;
  pthread_t thread;
  int running;
  pthread_mutex_t mu;
  pthread_cond_t cv_work, cv_ready;
  pf_slot **ring; /* requests in order; ring[(head + k) % cap], k < count */
  size_t cap, head, count, next; /* next: requests handed to the reader so far (from head) */
  int stop;
  /* buffers given back by takes, reused by the reader (no 30 MB mallocs per sample) */
  vl_dataset_sample *spare;
  int n_spare;
};

/* Generated sample g into s: its buffers become s's (s's old ones are freed). */
static int synth_read(vl_prefetch *p, uint64_t g, vl_dataset_sample *s) {
  const vl_prefetch_synth *c = &p->synth;
  vl_synth y;
  memset(&y, 0, sizeof y);
  int rc = c->grid_h > 0 ? vl_synth_fixed(&y, c->mc, p->seed, g, c->grid_h, c->grid_w, c->text, c->answer)
                         : vl_synth_sample(&y, c->mc, p->seed, g, c->max_tokens, c->max_patches);
  int32_t (*grid)[3] = rc == VL_OK ? malloc(sizeof *grid) : NULL;
  if (rc == VL_OK && !grid) rc = vl_err_raise(VL_ENOMEM, __FILE__, __LINE__, __func__, "sample grid");
  if (rc) {
    vl_synth_free(&y);
    return rc;
  }
  vl_dataset_sample_free(s);
  memcpy(grid[0], y.grid[0], sizeof grid[0]);
  s->ids = y.ids;
  s->labels = y.labels;
  s->pixels = y.pixels;
  s->grid = grid;
  s->cap_tokens = (size_t)y.sample.n_tokens;
  s->cap_images = 1;
  s->cap_pixels = (size_t)y.grid[0][0] * y.grid[0][1] * y.grid[0][2];
  s->sample = y.sample;
  s->sample.grid_thw = y.sample.n_images ? (const int32_t(*)[3])grid : NULL;
  return VL_OK;
}

static void *prefetch_main(void *arg) {
  vl_prefetch *p = arg;
  vl_err_set_quiet(1); /* this thread's messages go to the taker */
  pthread_mutex_lock(&p->mu);
  for (;;) {
    while (!p->stop && !(p->next < p->count && p->next < (size_t)p->depth))
      pthread_cond_wait(&p->cv_work, &p->mu);
    if (p->stop) break;
    pf_slot *sl = p->ring[(p->head + p->next) % p->cap];
    p->next++;
    sl->state = 1;
    if (p->n_spare > 0 && !sl->s.bytes) sl->s = p->spare[--p->n_spare];
    pthread_mutex_unlock(&p->mu);
    vl_err_clear();
    int rc = VL_OK;
    if (p->d) {
      long i = vl_dataset_index(p->d, p->seed, sl->g);
      rc = i < 0 ? vl_err_raise(VL_ENOMEM, __FILE__, __LINE__, __func__, "sampler permutation") : VL_OK;
      if (rc == VL_OK) rc = vl_dataset_read(p->d, i, &sl->s);
    } else {
      rc = synth_read(p, sl->g, &sl->s);
    }
    pthread_mutex_lock(&p->mu);
    sl->rc = rc;
    if (rc) snprintf(sl->err, sizeof sl->err, "%s", vl_err_last());
    sl->state = 2;
    pthread_cond_broadcast(&p->cv_ready);
  }
  pthread_mutex_unlock(&p->mu);
  return NULL;
}

static int prefetch_start(vl_prefetch **out, vl_dataset *d, const vl_prefetch_synth *synth, uint64_t seed,
                          int depth) {
  *out = NULL;
  if (depth < 1) VL_ERROR(VL_EINVAL, "prefetch depth %d must be at least 1", depth);
  if (d && vl_dataset_size(d) <= 0) VL_ERROR(VL_EINVAL, "the dataset split to prefetch from has no samples");
  vl_prefetch *p = calloc(1, sizeof *p);
  if (!p) VL_ERROR(VL_ENOMEM, "prefetch");
  p->spare = calloc((size_t)depth, sizeof *p->spare);
  if (!p->spare) { free(p); VL_ERROR(VL_ENOMEM, "prefetch"); }
  p->d = d;
  if (synth) p->synth = *synth;
  p->seed = seed;
  p->depth = depth;
  pthread_mutex_init(&p->mu, NULL);
  pthread_cond_init(&p->cv_work, NULL);
  pthread_cond_init(&p->cv_ready, NULL);
  int e = pthread_create(&p->thread, NULL, prefetch_main, p);
  if (e) {
    vl_prefetch_stop(p);
    VL_ERROR(VL_ENOMEM, "cannot start the prefetch thread: %s", strerror(e));
  }
  p->running = 1;
  *out = p;
  return VL_OK;
}

int vl_prefetch_start(vl_prefetch **out, vl_dataset *d, uint64_t seed, int depth) {
  if (!d) VL_ERROR(VL_EINVAL, "prefetch: no dataset");
  return prefetch_start(out, d, NULL, seed, depth);
}

int vl_prefetch_start_synth(vl_prefetch **out, const vl_prefetch_synth *synth, uint64_t seed, int depth) {
  if (!synth || !synth->mc) VL_ERROR(VL_EINVAL, "prefetch: no model for generated samples");
  return prefetch_start(out, NULL, synth, seed, depth);
}

int vl_prefetch_request(vl_prefetch *p, uint64_t g) {
  pf_slot *sl = calloc(1, sizeof *sl);
  if (!sl) VL_ERROR(VL_ENOMEM, "prefetch request");
  sl->g = g;
  pthread_mutex_lock(&p->mu);
  if (p->count == p->cap) { /* grow the ring, keeping the order */
    size_t cap = p->cap ? 2 * p->cap : 64;
    pf_slot **r = malloc(cap * sizeof *r);
    if (!r) {
      pthread_mutex_unlock(&p->mu);
      free(sl);
      VL_ERROR(VL_ENOMEM, "prefetch queue");
    }
    for (size_t k = 0; k < p->count; k++) r[k] = p->ring[(p->head + k) % p->cap];
    free(p->ring);
    p->ring = r;
    p->cap = cap;
    p->head = 0;
  }
  p->ring[(p->head + p->count) % p->cap] = sl;
  p->count++;
  pthread_cond_signal(&p->cv_work);
  pthread_mutex_unlock(&p->mu);
  return VL_OK;
}

int vl_prefetch_take(vl_prefetch *p, uint64_t g, vl_dataset_sample *out) {
  pthread_mutex_lock(&p->mu);
  if (!p->count || p->ring[p->head]->g != g) {
    long long want = p->count ? (long long)p->ring[p->head]->g : -1;
    pthread_mutex_unlock(&p->mu);
    VL_ERROR(VL_EINVAL, "prefetch: sample %llu taken, but the oldest request is %lld", (unsigned long long)g, want);
  }
  pf_slot *sl = p->ring[p->head];
  while (sl->state != 2) pthread_cond_wait(&p->cv_ready, &p->mu);
  p->head = (p->head + 1) % p->cap;
  p->count--;
  p->next--;
  pthread_cond_signal(&p->cv_work);
  pthread_mutex_unlock(&p->mu);
  int rc = sl->rc;
  if (rc == VL_OK) {
    vl_dataset_sample t = *out;
    *out = sl->s;
    sl->s = t;
  } else {
    vl_err_raise(rc, __FILE__, __LINE__, __func__, "%s (read ahead for global sample %llu)", sl->err,
                 (unsigned long long)g);
  }
  /* the caller's previous buffers go to the reader */
  pthread_mutex_lock(&p->mu);
  if (sl->s.bytes && p->n_spare < p->depth) p->spare[p->n_spare++] = sl->s;
  else vl_dataset_sample_free(&sl->s);
  pthread_mutex_unlock(&p->mu);
  free(sl);
  return rc;
}

int vl_prefetch_ready(vl_prefetch *p, int n) {
  pthread_mutex_lock(&p->mu);
  int ok = (size_t)n <= p->count;
  for (int k = 0; k < n && ok; k++) {
    const pf_slot *sl = p->ring[(p->head + (size_t)k) % p->cap];
    ok = sl->state == 2 && sl->rc == VL_OK;
  }
  pthread_mutex_unlock(&p->mu);
  return ok;
}

void vl_prefetch_stop(vl_prefetch *p) {
  if (!p) return;
  pthread_mutex_lock(&p->mu);
  p->stop = 1;
  pthread_cond_broadcast(&p->cv_work);
  pthread_mutex_unlock(&p->mu);
  if (p->running) pthread_join(p->thread, NULL);
  for (size_t k = 0; k < p->count; k++) {
    pf_slot *sl = p->ring[(p->head + k) % p->cap];
    vl_dataset_sample_free(&sl->s);
    free(sl);
  }
  free(p->ring);
  for (int k = 0; k < p->n_spare; k++) vl_dataset_sample_free(&p->spare[k]);
  free(p->spare);
  pthread_cond_destroy(&p->cv_work);
  pthread_cond_destroy(&p->cv_ready);
  pthread_mutex_destroy(&p->mu);
  free(p);
}

