/* bench_host: times the host work of one micro-batch of the 8B benchmark
 * workload (bench_8b.sh: grid 112 x 80, 662 text tokens, 400 answer) on
 * this CPU: generating the sample (vl_synth_fixed), building the batch
 * (vl_batch_build) and the host side of vl_graph_set_batch (copying every
 * input into one staging area, and, for comparison, an fp32 -> bf16
 * conversion of the pixels on the host).  Not a test: prints timings.
 * Usage: bench_host CONFIG.yaml [repeats] */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "batch.h"
#include "config.h"
#include "err.h"
#include "synth.h"

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static uint16_t to_bf16(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  u += 0x7FFF + ((u >> 16) & 1); /* round to nearest even (finite inputs) */
  return (uint16_t)(u >> 16);
}

int main(int argc, char **argv) {
  if (argc < 2) { fprintf(stderr, "usage: %s CONFIG.yaml [repeats]\n", argv[0]); return 2; }
  const int reps = argc > 2 ? atoi(argv[2]) : 3;
  static vl_config cfg;
  if (vl_config_load(&cfg, argv[1])) { fprintf(stderr, "%s\n", vl_err_last()); return 1; }
  double t_synth = 0, t_build = 0, t_copy = 0, t_conv = 0;
  size_t bytes = 0;
  uint64_t hash = 0xCBF29CE484222325ull;
  long P = 0, T = 0;
  for (int r = 0; r < reps; r++) {
    vl_synth s;
    memset(&s, 0, sizeof s);
    vl_batch b;
    double t0 = now();
    if (vl_synth_fixed(&s, &cfg.model, 1234, (uint64_t)r, 112, 80, 662, 400)) goto fail;
    double t1 = now();
    if (vl_batch_build(&b, &cfg.model, &s.sample, 1)) goto fail;
    double t2 = now();
    /* what set_batch moves: every table and the pixels */
    const size_t hd = (size_t)cfg.model.text.head_dim;
    const size_t vhd = (size_t)cfg.model.vision.hidden_size / cfg.model.vision.num_heads;
    const size_t npix = (size_t)b.P * b.patch_dim;
    const size_t parts[][2] = {
        {(size_t)b.T * 4, 0}, {(size_t)b.T * 4, 1}, {((size_t)b.n_seq + 1) * 4, 2},
        {(size_t)b.T * hd * 4, 3}, {(size_t)b.T * hd * 4, 4}, {(size_t)b.n_visual * 4, 5},
        {((size_t)b.n_vseg + 1) * 4, 6}, {(size_t)b.P * vhd * 4, 7}, {(size_t)b.P * vhd * 4, 8},
        {(size_t)b.P * 16, 9}, {(size_t)b.P * 16, 10}, {npix * 4, 11}};
    const void *src[] = {b.ids, b.targets, b.seq_offsets, b.rope_cos, b.rope_sin, b.visual_pos,
                         b.vseg_offsets, b.vrope_cos, b.vrope_sin, b.pos_idx, b.pos_w, b.pixels};
    size_t total = 0;
    for (int k = 0; k < 12; k++) total += parts[k][0];
    char *stage = malloc(total);
    uint16_t *h16 = malloc(npix * sizeof *h16);
    if (!stage || !h16) { fprintf(stderr, "out of memory\n"); return 1; }
    memset(stage, 0, total);
    memset(h16, 0, npix * sizeof *h16);
    double t3 = now();
    size_t off = 0;
    for (int k = 0; k < 12; k++) {
      memcpy(stage + off, src[k], parts[k][0]);
      off += parts[k][0];
    }
    double t4 = now();
    for (size_t i = 0; i < npix; i++) h16[i] = to_bf16(b.pixels[i]);
    double t5 = now();
    for (size_t i = 0; i < npix; i++) { /* FNV-1a of the pixels' bits: changes must keep them */
      uint32_t u;
      memcpy(&u, &b.pixels[i], 4);
      hash = (hash ^ u) * 0x100000001B3ull;
    }
    if (r > 0 || reps == 1) {
      t_synth += t1 - t0; t_build += t2 - t1; t_copy += t4 - t3; t_conv += t5 - t4;
    }
    bytes = total; P = b.P; T = b.T;
    free(stage); free(h16);
    vl_batch_free(&b);
    vl_synth_free(&s);
  }
  const int n = reps > 1 ? reps - 1 : 1;
  printf("host work of one 8B micro-batch (%ld tokens, %ld patches; mean of %d after a warm-up):\n", T, P, n);
  printf("  vl_synth_fixed         %8.1f ms\n", 1e3 * t_synth / n);
  printf("  vl_batch_build         %8.1f ms\n", 1e3 * t_build / n);
  printf("  copy inputs to staging %8.1f ms (%.1f MB)\n", 1e3 * t_copy / n, bytes / 1e6);
  printf("  pixels fp32 -> bf16    %8.1f ms (host loop, one thread)\n", 1e3 * t_conv / n);
  printf("  pixel bits hash        %016llx\n", (unsigned long long)hash);
  return 0;
fail:
  fprintf(stderr, "%s\n", vl_err_last());
  return 1;
}
