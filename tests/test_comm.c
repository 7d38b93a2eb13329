/* test_comm: the MPI bootstrap and collectives on the CPU backend, run under
 * mpirun -np 1, 2 and 3: node-local ranks, allreduce, reduce-scatter,
 * allgather and bcast against closed forms, the GPU binding rule, and the
 * error for a CUDA backend requested where no GPU is visible. */
#include <stdio.h>
#include <string.h>

#include "comm.h"
#include "err.h"
#include "test_util.h"

int main(int argc, char **argv) {
  if (vl_comm_mpi_init(&argc, &argv)) return 1;
  vl_comm c;
  int rc = vl_comm_init(&c, VL_BACKEND_CPU, 0, 60);
  CHECK(rc == VL_OK, "init: %s", vl_err_last());
  if (rc) { MPI_Abort(MPI_COMM_WORLD, 1); }
  const int R = c.size, r = c.rank;
  CHECK(c.backend == VL_BACKEND_CPU && c.device == -1, "cpu backend, no device");

  /* node-local ranks: distinct and 0..local_size-1 per host */
  int mine[2] = {c.local_rank, c.local_size}, all[2 * 64];
  char host[64] = {0}, hosts[64 * 64];
  snprintf(host, sizeof host, "%.63s", c.host);
  MPI_Gather(mine, 2, MPI_INT, all, 2, MPI_INT, 0, MPI_COMM_WORLD);
  MPI_Gather(host, 64, MPI_CHAR, hosts, 64, MPI_CHAR, 0, MPI_COMM_WORLD);
  if (r == 0 && R <= 64)
    for (int i = 0; i < R; i++) {
      int same = 0, seen = 0;
      for (int j = 0; j < R; j++)
        if (!strcmp(hosts + 64 * i, hosts + 64 * j)) {
          same++;
          if (all[2 * j] == all[2 * i]) seen++;
        }
      CHECK(all[2 * i + 1] == same, "rank %d: local size %d, %d ranks on its host", i, all[2 * i + 1], same);
      CHECK(seen == 1 && all[2 * i] < same, "rank %d: local rank %d not unique", i, all[2 * i]);
    }

  /* allreduce: element k of rank r is r*1000 + k -> sum = 1000 R(R-1)/2 + R k */
  enum { N = 1001 };
  float buf[N];
  for (int k = 0; k < N; k++) buf[k] = (float)(r * 1000 + k);
  CHECK(vl_comm_allreduce_sum(&c, VL_COMM_F32, buf, N) == VL_OK, "allreduce");
  int bad = 0;
  for (int k = 0; k < N; k++)
    if (buf[k] != (float)(1000 * R * (R - 1) / 2 + R * k)) bad++;
  CHECK(bad == 0, "allreduce: %d wrong elements", bad);

  /* reduce-scatter of 7 per rank: rank r receives block r, sum over ranks of
   * (q*100 + block*7 + i) = 100 R(R-1)/2 + R (r*7 + i) */
  float send[7 * 8], recv[7], gath[7 * 8];
  for (int b = 0; b < R; b++)
    for (int i = 0; i < 7; i++) send[b * 7 + i] = (float)(r * 100 + b * 7 + i);
  CHECK(vl_comm_reduce_scatter(&c, VL_COMM_F32, send, recv, 7) == VL_OK, "reduce_scatter");
  for (int i = 0; i < 7; i++)
    CHECK(recv[i] == (float)(100 * R * (R - 1) / 2 + R * (r * 7 + i)), "reduce_scatter[%d] = %g", i, recv[i]);
  /* allgather: block q holds q*10 + i */
  float part[7];
  for (int i = 0; i < 7; i++) part[i] = (float)(r * 10 + i);
  CHECK(vl_comm_allgather(&c, VL_COMM_F32, part, gath, 7) == VL_OK, "allgather");
  for (int q = 0; q < R; q++)
    for (int i = 0; i < 7; i++) CHECK(gath[q * 7 + i] == (float)(q * 10 + i), "allgather[%d][%d]", q, i);

  char word[16] = "";
  if (r == R - 1) strcpy(word, "vltrain");
  CHECK(vl_comm_bcast(&c, word, sizeof word, R - 1) == VL_OK && !strcmp(word, "vltrain"), "bcast");
  double mx[2] = {(double)r, -(double)r};
  vl_comm_allreduce_double(&c, mx, 2, VL_COMM_MAX);
  CHECK(mx[0] == R - 1 && mx[1] == 0, "max");
  double mn = r;
  vl_comm_allreduce_double(&c, &mn, 1, VL_COMM_MIN);
  CHECK(mn == 0, "min");

  /* binding rule */
  vl_err_set_quiet(1);
  CHECK(vl_comm_allreduce_sum(&c, VL_COMM_BF16, buf, 1) == VL_ENOTSUP, "bf16 on cpu");
  int dev;
  CHECK(vl_comm_pick_device(1, 2, 2, 0, "h", &dev) == VL_OK && dev == 1, "2 ranks, 2 GPUs");
  CHECK(vl_comm_pick_device(2, 4, 2, 0, "node7", &dev) == VL_EINVAL &&
        !strcmp(vl_err_last(), "host node7: 4 ranks on this node but only 2 GPUs visible "
                               "(set run.allow_shared_gpu: true to share)"), "refusal: %s", vl_err_last());
  CHECK(vl_comm_pick_device(3, 4, 2, 1, "h", &dev) == VL_OK && dev == 1, "shared: 3 %% 2");
  CHECK(vl_comm_pick_device(0, 1, 0, 0, "h", &dev) == VL_ECUDA &&
        strstr(vl_err_last(), "no CUDA device visible on host h"), "no gpu: %s", vl_err_last());

  /* a CUDA backend where none is visible: a clear error, not a crash */
  vl_comm c2;
  rc = vl_comm_init(&c2, VL_BACKEND_CUDA, 0, 60);
  if (rc == VL_ECUDA || rc == VL_ENOTSUP)
    CHECK(strstr(vl_err_last(), "CUDA") || strstr(vl_err_last(), "GPU"), "message: %s", vl_err_last());
  else if (rc == VL_OK)
    vl_comm_free(&c2); /* a GPU per rank, or shared GPUs allowed: fine */
  else if (rc == VL_EINVAL) /* a GPU is visible but fewer GPUs than ranks */
    CHECK(strstr(vl_err_last(), "ranks on this node but only"), "message: %s", vl_err_last());
  else
    CHECK(0, "cuda request gave %d: %s", rc, vl_err_last());
  vl_err_set_quiet(0);
  CHECK(vl_comm_print_map(&c) == VL_OK, "rank map");

  int failures = test_failures_;
  MPI_Allreduce(MPI_IN_PLACE, &failures, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
  if (r == 0) fprintf(stderr, "test_comm on %d ranks: %d failures\n", R, failures);
  vl_comm_free(&c);
  vl_comm_mpi_finalize();
  return failures ? 1 : 0;
}
