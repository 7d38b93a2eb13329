/* test_comm: the MPI bootstrap and collectives, run under mpirun -np 1, 2
 * and 3 (tests/test_comm_mpi.sh).  CPU backend: node-local ranks, allreduce,
 * reduce-scatter and allgather (odd counts, in place, and split into pieces
 * as for counts over INT_MAX) and bcast against closed forms, double
 * max/min/sum, the GPU binding rule, the rank map, and the error for a CUDA
 * backend requested where no GPU is visible.  Where a CUDA build sees GPUs
 * the same collectives run on device memory (f32 and bf16; NCCL, or staged
 * when ranks share a GPU), and a collective that one rank never joins must
 * time out on every rank.  Each rank checks; the failure counts are summed
 * so every rank exits alike. */
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "comm.h"
#include "err.h"
#include "test_util.h"

#ifdef VL_HAVE_CUDA
#include <cuda_runtime.h>
#endif

enum { MAXR = 64, HOSTLEN = 256 };

/* Local ranks on each host are 0..local_size-1, distinct, in world-rank
 * order, and local_size is the number of ranks on that host. */
static void check_local_ranks(const vl_comm *c) {
  int mine[2] = {c->local_rank, c->local_size};
  static int all[2 * MAXR];
  static char hosts[MAXR * HOSTLEN];
  if (c->size > MAXR) return;
  MPI_Gather(mine, 2, MPI_INT, all, 2, MPI_INT, 0, MPI_COMM_WORLD);
  MPI_Gather(c->host, HOSTLEN, MPI_CHAR, hosts, HOSTLEN, MPI_CHAR, 0, MPI_COMM_WORLD);
  if (c->rank != 0) return;
  for (int i = 0; i < c->size; i++) {
    int same = 0, before = 0, dup = 0;
    for (int j = 0; j < c->size; j++) {
      if (strcmp(hosts + HOSTLEN * i, hosts + HOSTLEN * j)) continue;
      same++;
      if (j < i) before++;
      if (j != i && all[2 * j] == all[2 * i]) dup++;
    }
    CHECK(all[2 * i + 1] == same, "rank %d: local size %d, %d ranks on its host", i,
          all[2 * i + 1], same);
    CHECK(all[2 * i] == before, "rank %d: local rank %d, expected %d", i, all[2 * i], before);
    CHECK(dup == 0 && all[2 * i] >= 0 && all[2 * i] < same, "rank %d: local rank %d not unique",
          i, all[2 * i]);
  }
}

/* allreduce: element k of rank r is (r+1)(k+1) -> sum (k+1) R(R+1)/2 */
static void check_allreduce(vl_comm *c, size_t max_count) {
  enum { N = 1001 };
  static float buf[N];
  const int R = c->size, r = c->rank;
  c->max_count = max_count;
  for (int k = 0; k < N; k++) buf[k] = (float)((r + 1) * (k + 1));
  CHECK(vl_comm_allreduce_sum(c, VL_COMM_F32, buf, N) == VL_OK, "allreduce: %s", vl_err_last());
  int bad = 0;
  for (int k = 0; k < N; k++)
    if (buf[k] != (float)((k + 1) * R * (R + 1) / 2)) bad++;
  CHECK(bad == 0, "allreduce (pieces of %zu): %d wrong elements", max_count, bad);
  c->max_count = INT_MAX;
}

/* reduce-scatter: rank q sends q*100 + j at index j = b*n + i; rank r gets
 * block r: sum_q (q*100 + r*n + i) = 100 R(R-1)/2 + R (r*n + i). */
static void check_reduce_scatter(vl_comm *c, int n, size_t max_count, int inplace) {
  const int R = c->size, r = c->rank;
  float *send = calloc((size_t)R * n, sizeof(float)), *recv = calloc((size_t)n, sizeof(float));
  c->max_count = max_count;
  for (int j = 0; j < R * n; j++) send[j] = (float)(r * 100 + j);
  int rc = inplace ? vl_comm_reduce_scatter_inplace(c, VL_COMM_F32, send, (size_t)n)
                   : vl_comm_reduce_scatter(c, VL_COMM_F32, send, recv, (size_t)n);
  CHECK(rc == VL_OK, "reduce_scatter: %s", vl_err_last());
  const float *got = inplace ? send + (size_t)r * n : recv;
  int bad = 0;
  for (int i = 0; i < n; i++)
    if (got[i] != (float)(100 * R * (R - 1) / 2 + R * (r * n + i))) bad++;
  CHECK(bad == 0, "reduce_scatter n=%d pieces=%zu inplace=%d: %d wrong", n, max_count, inplace,
        bad);
  c->max_count = INT_MAX;
  free(send);
  free(recv);
}

/* allgather: rank q contributes q*1000 + i; block q of the result holds it. */
static void check_allgather(vl_comm *c, int n, size_t max_count, int inplace) {
  const int R = c->size, r = c->rank;
  float *part = calloc((size_t)n, sizeof(float)), *all = calloc((size_t)R * n, sizeof(float));
  c->max_count = max_count;
  for (int j = 0; j < R * n; j++) all[j] = -1;
  float *mine = inplace ? all + (size_t)r * n : part;
  for (int i = 0; i < n; i++) mine[i] = (float)(r * 1000 + i);
  int rc = inplace ? vl_comm_allgather_inplace(c, VL_COMM_F32, all, (size_t)n)
                   : vl_comm_allgather(c, VL_COMM_F32, part, all, (size_t)n);
  CHECK(rc == VL_OK, "allgather: %s", vl_err_last());
  int bad = 0;
  for (int q = 0; q < R; q++)
    for (int i = 0; i < n; i++)
      if (all[(size_t)q * n + i] != (float)(q * 1000 + i)) bad++;
  CHECK(bad == 0, "allgather n=%d pieces=%zu inplace=%d: %d wrong", n, max_count, inplace, bad);
  c->max_count = INT_MAX;
  free(part);
  free(all);
}

static void check_host_helpers(vl_comm *c) {
  const int R = c->size, r = c->rank;
  char word[37] = "";
  if (r == R - 1) strcpy(word, "the root's thirty-six bytes of text.");
  c->max_count = 5; /* 37 bytes in 8 pieces */
  CHECK(vl_comm_bcast(c, word, sizeof word, R - 1) == VL_OK, "bcast: %s", vl_err_last());
  CHECK(!strcmp(word, "the root's thirty-six bytes of text."), "bcast gave '%s'", word);
  c->max_count = INT_MAX;
  double v[3] = {(double)r, -(double)r, 0.5 * r};
  CHECK(vl_comm_allreduce_double(c, v, 3, VL_COMM_MAX) == VL_OK, "max");
  CHECK(v[0] == R - 1 && v[1] == 0 && v[2] == 0.5 * (R - 1), "max: %g %g %g", v[0], v[1], v[2]);
  double w[2] = {(double)r + 3, -(double)r};
  CHECK(vl_comm_allreduce_double(c, w, 2, VL_COMM_MIN) == VL_OK, "min");
  CHECK(w[0] == 3 && w[1] == -(R - 1), "min: %g %g", w[0], w[1]);
  double s = r + 1;
  CHECK(vl_comm_allreduce_double(c, &s, 1, VL_COMM_SUM) == VL_OK && s == R * (R + 1) / 2.0,
        "sum: %g", s);
  CHECK(vl_comm_barrier(c) == VL_OK, "barrier");

  vl_err_set_quiet(1);
  CHECK(vl_comm_bcast(c, word, 1, R) == VL_EINVAL && strstr(vl_err_last(), "there are"),
        "bcast root out of range: %s", vl_err_last());
  CHECK(vl_comm_allreduce_double(c, &s, 1, (vl_comm_op)7) == VL_EINVAL, "unknown op");
  float f[2] = {1, 2};
  CHECK(vl_comm_allreduce_sum(c, VL_COMM_BF16, f, 2) == VL_ENOTSUP &&
        strstr(vl_err_last(), "bf16 collectives need the CUDA backend"), "bf16 on cpu: %s",
        vl_err_last());
  CHECK(vl_comm_reduce_scatter(c, VL_COMM_BF16, f, f, 1) == VL_ENOTSUP, "bf16 rs on cpu");
  CHECK(vl_comm_allgather_inplace(c, VL_COMM_BF16, f, 1) == VL_ENOTSUP, "bf16 ag on cpu");
  CHECK(f[0] == 1 && f[1] == 2, "a refused collective left the buffer alone");
  vl_err_set_quiet(0);
}

static void check_pick_device(void) {
  int dev = 7;
  vl_err_set_quiet(1);
  CHECK(vl_comm_pick_device(1, 2, 2, 0, "h", &dev) == VL_OK && dev == 1, "2 ranks, 2 GPUs");
  CHECK(vl_comm_pick_device(0, 1, 8, 0, "h", &dev) == VL_OK && dev == 0, "1 rank, 8 GPUs");
  CHECK(vl_comm_pick_device(2, 4, 2, 0, "node7", &dev) == VL_EINVAL && dev == -1 &&
        !strcmp(vl_err_last(), "host node7: 4 ranks on this node but only 2 GPUs visible "
                               "(set run.allow_shared_gpu: true to share)"),
        "refusal: %s", vl_err_last());
  CHECK(vl_comm_pick_device(3, 4, 2, 1, "h", &dev) == VL_OK && dev == 1, "shared: 3 %% 2");
  CHECK(vl_comm_pick_device(2, 3, 2, 1, "h", &dev) == VL_OK && dev == 0, "shared: 2 %% 2");
  CHECK(vl_comm_pick_device(0, 1, 0, 1, "gpu-less", &dev) == VL_ECUDA &&
        !strcmp(vl_err_last(), "no CUDA device visible on host gpu-less"), "no gpu: %s",
        vl_err_last());
  CHECK(vl_comm_pick_device(2, 2, 2, 0, "h", &dev) == VL_EINVAL, "local rank out of range");
  vl_err_set_quiet(0);
}

/* Rank 0's printed map: one line per rank, in rank order. */
static void check_print_map(vl_comm *c) {
  char path[] = "/tmp/test_comm_mapXXXXXX";
  int fd = -1, saved = -1;
  if (c->rank == 0) {
    fd = mkstemp(path);
    fflush(stdout);
    saved = dup(1);
    if (fd >= 0 && saved >= 0) dup2(fd, 1);
  }
  CHECK(vl_comm_print_map(c) == VL_OK, "print_map: %s", vl_err_last());
  if (c->rank != 0) return;
  fflush(stdout);
  if (saved >= 0) dup2(saved, 1), close(saved);
  CHECK(fd >= 0, "temporary file for the map");
  if (fd < 0) return;
  FILE *f = fdopen(fd, "r");
  rewind(f);
  char line[1024], want[512];
  int n = 0;
  while (fgets(line, sizeof line, f)) {
    snprintf(want, sizeof want, "  rank %d  host %s  local ", n, c->host);
    CHECK(!strncmp(line, want, strlen(want)), "map line %d: %s", n, line);
    CHECK(strstr(line, c->backend == VL_BACKEND_CPU ? "device cpu" : "device "), "device: %s",
          line);
    n++;
  }
  CHECK(n == c->size, "map has %d lines for %d ranks", n, c->size);
  fclose(f);
  unlink(path);
}

/* CUDA asked for: OK with GPUs; otherwise one clear error on every rank. */
static void check_cuda_request(const vl_comm *c) {
  vl_comm g;
  vl_err_set_quiet(1);
  vl_err_clear();
  int rc = vl_comm_init(&g, VL_BACKEND_CUDA, 0, 60);
  vl_err_set_quiet(0);
  char want[400];
  snprintf(want, sizeof want, "no CUDA device visible on host %s (rank %d)", c->host, c->rank);
#ifdef VL_HAVE_CUDA
  if (rc == VL_ECUDA)
    CHECK(strstr(vl_err_last(), want), "message '%s' lacks '%s'", vl_err_last(), want);
  else if (rc == VL_EINVAL) /* GPUs, but fewer than the ranks on a node */
    CHECK(strstr(vl_err_last(), "ranks on this node but only") ||
          strstr(vl_err_last(), "failed while choosing its GPU"), "message: %s", vl_err_last());
  else
    CHECK(rc == VL_OK && g.backend == VL_BACKEND_CUDA && g.device >= 0, "cuda: rc %d: %s", rc,
          vl_err_last());
#else
  CHECK(rc == VL_ENOTSUP && strstr(vl_err_last(), "built without CUDA"), "cpu-only build: %d %s",
        rc, vl_err_last());
#endif
  if (rc != VL_OK)
    CHECK(g.world == MPI_COMM_NULL && g.nccl == NULL && g.stream == NULL,
          "a failed init leaves nothing to free");
  CHECK(vl_comm_free(&g) == VL_OK, "free after init (rc %d)", rc);
  /* every rank failed or none did */
  int lo = rc, hi = rc;
  MPI_Allreduce(MPI_IN_PLACE, &lo, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
  MPI_Allreduce(MPI_IN_PLACE, &hi, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  CHECK((lo == VL_OK) == (hi == VL_OK), "ranks disagree on the cuda request: %d..%d", lo, hi);
}

#ifdef VL_HAVE_CUDA
static uint16_t to_bf16(float f) { /* exact for the small integers used here */
  uint32_t u;
  memcpy(&u, &f, 4);
  return (uint16_t)(u >> 16);
}
static float from_bf16(uint16_t b) {
  uint32_t u = (uint32_t)b << 16;
  float f;
  memcpy(&f, &u, 4);
  return f;
}
/* small integers: every sum over <= 8 ranks stays exact in bf16 */
static float val(int rank, size_t j) { return (float)(((size_t)rank + 1 + j) % 8); }

/* One collective on device memory against sums computed on the host. */
static void gpu_one(vl_comm *g, int kind, vl_comm_dtype dt, int inplace, size_t n) {
  const int R = g->size, r = g->rank;
  const size_t el = dt == VL_COMM_BF16 ? 2 : 4, total = kind == 0 ? n : n * (size_t)R;
  float *h = calloc(total, sizeof(float)), *want = calloc(total, sizeof(float));
  uint16_t *hb = calloc(total, 2);
  void *dbuf = NULL, *dout = NULL;
  if (cudaMalloc(&dbuf, total * el) != cudaSuccess ||
      cudaMalloc(&dout, total * el) != cudaSuccess) {
    CHECK(0, "cudaMalloc");
    return;
  }
  /* input: allreduce n, reduce-scatter R*n, all-gather my block (at rank*n) */
  for (size_t j = 0; j < total; j++) h[j] = kind == 2 && j / n != (size_t)r ? -1.0f : val(r, j);
  for (size_t j = 0; j < total; j++) {
    want[j] = 0;
    if (kind == 2) want[j] = val((int)(j / n), j);
    else for (int q = 0; q < R; q++) want[j] += val(q, j);
  }
  for (size_t j = 0; j < total; j++) hb[j] = to_bf16(h[j]);
  cudaMemcpy(dbuf, el == 2 ? (void *)hb : (void *)h, total * el, cudaMemcpyHostToDevice);
  /* a pageable upload may still be landing when cudaMemcpy returns, and the
   * comm stream does not wait for the legacy stream: the caller's duty */
  cudaDeviceSynchronize();
  char *mine = (char *)dbuf + (size_t)r * n * el;
  int rc;
  if (kind == 0) rc = vl_comm_allreduce_sum(g, dt, dbuf, n);
  else if (kind == 1) rc = inplace ? vl_comm_reduce_scatter_inplace(g, dt, dbuf, n)
                                   : vl_comm_reduce_scatter(g, dt, dbuf, dout, n);
  else rc = inplace ? vl_comm_allgather_inplace(g, dt, dbuf, n)
                    : vl_comm_allgather(g, dt, mine, dout, n);
  if (rc == VL_OK) rc = vl_comm_sync(g);
  CHECK(rc == VL_OK, "gpu kind %d dt %d: %s", kind, (int)dt, vl_err_last());
  /* where the result is: allreduce dbuf; rs my block (in place) or dout[0..n); ag all */
  const void *res = kind == 0 || inplace ? dbuf : dout;
  cudaMemcpy(el == 2 ? (void *)hb : (void *)h, res, total * el, cudaMemcpyDeviceToHost);
  if (el == 2) for (size_t j = 0; j < total; j++) h[j] = from_bf16(hb[j]);
  size_t off = kind == 1 && inplace ? (size_t)r * n : 0, cnt = kind == 1 ? n : total;
  size_t woff = kind == 1 ? (size_t)r * n : 0;
  int bad = 0;
  for (size_t i = 0; i < cnt; i++)
    if (h[off + i] != want[woff + i]) bad++;
  CHECK(bad == 0, "gpu kind %d dt %d inplace %d n %zu: %d wrong", kind, (int)dt, inplace, n, bad);
  cudaFree(dbuf);
  cudaFree(dout);
  free(h); free(want); free(hb);
}

/* The collectives on device memory, where GPUs are visible. */
static void check_gpu(void) {
  vl_comm g;
  vl_err_set_quiet(1);
  int rc = vl_comm_init(&g, VL_BACKEND_CUDA, 1, 60);
  vl_err_set_quiet(0);
  if (rc != VL_OK) {
    vl_comm_free(&g);
    return; /* no GPU: covered by check_cuda_request */
  }
  if (g.rank == 0)
    fprintf(stderr, "test_comm: GPU collectives on %d ranks (%s)\n", g.size,
            g.staged ? "shared GPUs: staged through host memory" : "NCCL");
  CHECK(vl_comm_print_map(&g) == VL_OK, "gpu rank map: %s", vl_err_last());
  const vl_comm_dtype dts[2] = {VL_COMM_F32, VL_COMM_BF16};
  for (int d = 0; d < 2; d++) {
    gpu_one(&g, 0, dts[d], 0, 1001);
    for (int inplace = 0; inplace < 2; inplace++) {
      gpu_one(&g, 1, dts[d], inplace, 7);
      gpu_one(&g, 2, dts[d], inplace, 7);
    }
  }
  gpu_one(&g, 1, VL_COMM_F32, 1, (size_t)1 << 20); /* several NCCL chunks */
  int staged = g.staged;
  CHECK(vl_comm_free(&g) == VL_OK, "free gpu comm: %s", vl_err_last());
  if (staged || g.size < 2) return;

  /* hang protection: only rank 0 starts an all-reduce, so it cannot finish;
   * its sync must give up after timeout_s, then the others' do too. */
  CHECK(vl_comm_init(&g, VL_BACKEND_CUDA, 0, 3) == VL_OK, "gpu comm for the timeout test");
  void *d = NULL;
  cudaMalloc(&d, 1024 * sizeof(float));
  cudaMemset(d, 0, 1024 * sizeof(float));
  cudaDeviceSynchronize();
  vl_err_set_quiet(1);
  if (g.rank == 0) {
    rc = vl_comm_allreduce_sum(&g, VL_COMM_F32, d, 1024);
    if (rc == VL_OK) rc = vl_comm_sync(&g);
    CHECK(rc == VL_ENCCL && strstr(vl_err_last(), "all-reduce of 1024 fp32") &&
          strstr(vl_err_last(), "did not finish within 3 s"), "rank 0 timeout: %d %s", rc,
          vl_err_last());
  }
  MPI_Barrier(MPI_COMM_WORLD);
  if (g.rank != 0) {
    rc = vl_comm_allreduce_sum(&g, VL_COMM_F32, d, 1024);
    if (rc == VL_OK) rc = vl_comm_sync(&g);
    CHECK(rc == VL_ENCCL, "rank %d after its peer aborted: %d %s", g.rank, rc, vl_err_last());
  }
  CHECK(g.nccl == NULL, "the NCCL communicator was aborted");
  CHECK(vl_comm_allreduce_sum(&g, VL_COMM_F32, d, 4) == VL_ENCCL &&
        strstr(vl_err_last(), "aborted"), "collective after abort: %s", vl_err_last());
  vl_err_set_quiet(0);
  cudaFree(d);
  vl_comm_free(&g);
}
#endif

int main(int argc, char **argv) {
  if (vl_comm_mpi_init(&argc, &argv)) return 1;
  vl_comm c;
  int rc = vl_comm_init(&c, VL_BACKEND_CPU, 0, 0);
  CHECK(rc == VL_OK, "init: %s", vl_err_last());
  if (rc) MPI_Abort(MPI_COMM_WORLD, 1);
  int wr = -1, ws = -1, cmp = -1;
  MPI_Comm_rank(MPI_COMM_WORLD, &wr);
  MPI_Comm_size(MPI_COMM_WORLD, &ws);
  MPI_Comm_compare(c.world, MPI_COMM_WORLD, &cmp);
  CHECK(c.rank == wr && c.size == ws, "rank %d/%d, MPI says %d/%d", c.rank, c.size, wr, ws);
  CHECK(cmp == MPI_CONGRUENT, "c.world is a duplicate of MPI_COMM_WORLD (compare %d)", cmp);
  CHECK(c.backend == VL_BACKEND_CPU && c.device == -1 && !c.nccl && !c.staged, "cpu backend");
  CHECK(c.timeout_s == 600.0, "default timeout %g", c.timeout_s);
  CHECK(c.host[0] != '\0', "host name");

  check_local_ranks(&c);
  check_allreduce(&c, INT_MAX);
  check_allreduce(&c, 64); /* 16 pieces, as for counts over INT_MAX */
  const int ns[3] = {7, 1, 13};
  for (int i = 0; i < 3; i++)
    for (int inplace = 0; inplace < 2; inplace++) {
      check_reduce_scatter(&c, ns[i], INT_MAX, inplace);
      check_reduce_scatter(&c, ns[i], 3, inplace); /* per-owner reduces in pieces */
      check_allgather(&c, ns[i], INT_MAX, inplace);
      check_allgather(&c, ns[i], 2, inplace);      /* per-owner broadcasts in pieces */
    }
  check_host_helpers(&c);
  check_pick_device();
  check_print_map(&c);

  /* a one-rank communicator: sums are the identity */
  vl_comm one;
  CHECK(vl_comm_init_on(&one, MPI_COMM_SELF, VL_BACKEND_CPU, 0, 5) == VL_OK, "init on self");
  float x[3] = {1, 2, 3};
  CHECK(one.size == 1 && one.rank == 0 && one.local_rank == 0 && one.local_size == 1 &&
        one.timeout_s == 5, "self: %d/%d local %d/%d", one.rank, one.size, one.local_rank,
        one.local_size);
  CHECK(vl_comm_allreduce_sum(&one, VL_COMM_F32, x, 3) == VL_OK && x[2] == 3, "self sum");
  CHECK(vl_comm_free(&one) == VL_OK && one.world == MPI_COMM_NULL, "free self");
  CHECK(vl_comm_free(&one) == VL_OK, "free twice is a no-op");

  /* auto: the same backend everywhere; CPU where no rank sees a GPU */
  vl_comm a;
  rc = vl_comm_init(&a, VL_BACKEND_AUTO, 1, 0);
  CHECK(rc == VL_OK, "auto: %s", vl_err_last());
  int be[2] = {rc ? -1 : (int)a.backend, rc ? 1 : -(int)a.backend};
  MPI_Allreduce(MPI_IN_PLACE, be, 2, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
  CHECK(be[0] == -be[1], "auto resolved differently across ranks");
#ifndef VL_HAVE_CUDA
  CHECK(rc == VL_OK && a.backend == VL_BACKEND_CPU, "auto without CUDA is cpu");
#endif
  if (rc == VL_OK) vl_comm_free(&a);

  check_cuda_request(&c);
#ifdef VL_HAVE_CUDA
  check_gpu();
#endif

  int failures = test_failures_, checks = test_checks_;
  MPI_Allreduce(MPI_IN_PLACE, &failures, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
  MPI_Allreduce(MPI_IN_PLACE, &checks, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
  if (c.rank == 0)
    fprintf(stderr, "test_comm on %d ranks: %d checks, %d failed\n", c.size, checks, failures);
  vl_comm_free(&c);
  vl_comm_mpi_finalize();
  return failures ? 1 : 0;
}
