/* test_lean: train.optimizer: lean (bf16-valued weights as the only copy,
 * AdamW with stochastic rounding, fp32 moments).
 *  - stochastic rounding: every result is one of the two bf16 neighbours of
 *    x, exact values stay, and the mean of many roundings equals x within
 *    5 standard errors (the expected value is x: unbiased);
 *  - the CPU op against the update computed here in double: each weight
 *    lands on a bf16 neighbour of the exact result; splitting the block into
 *    pieces (index0) gives the same bits as one call;
 *  - the micro model: 20 steps lean vs 20 steps zero1, final loss within 5%,
 *    trained weights bf16-representable;
 *  - checkpoints: lean 10 + save + resume + 10 equals 20 straight lean steps
 *    bitwise (CPU); a lean checkpoint resumes under zero1 and a zero1 one
 *    under lean, both ending near the straight runs.
 * VL_TEST_BACKEND=cuda: the same on the GPU, with no bitwise claims. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ckpt.h"
#include "comm.h"
#include "config.h"
#include "err.h"
#include "optim.h"
#include "sround.h"
#include "micro_model.h"
#include "test_util.h"
#include "train.h"
#include "weights.h"

static const char *yaml =
    VL_TEST_MICRO_MODEL
    "train: {micro_batch: 1, grad_accum: 1, steps: 20, lr: 1.0e-2, warmup_steps: 2,\n"
    "        weight_decay: 0.1, grad_clip: 1.0, max_seq_len: 96, max_vision_patches: 64,\n"
    "        seed: 7, schedule: constant}\n";

static uint32_t bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static float from_bits(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

static void test_rounding(void) {
  const float xs[] = {1.0f + 1.0f / 3.0f, -0.3f, 3.14159265f, 1e-20f, -7.77e5f, 0.1f};
  const int N = 200000;
  double worst = 0;
  for (size_t k = 0; k < sizeof xs / sizeof *xs; k++) {
    const float x = xs[k];
    const float lo = from_bits(bits(x) & 0xFFFF0000u), hi = from_bits((bits(x) & 0xFFFF0000u) + 0x10000u);
    double sum = 0;
    int bad = 0;
    for (int i = 0; i < N; i++) {
      float r = vl_sr_bf16_float(x, vl_sr_hash((uint64_t)i, 0xABCDEFull + k));
      bad += !(r == lo || r == hi) || (bits(r) & 0xFFFFu);
      sum += r;
    }
    const double p = ((double)x - lo) / ((double)hi - lo), mean = sum / N;
    const double se = fabs((double)hi - lo) * sqrt(p * (1 - p) / N);
    const double z = se > 0 ? fabs(mean - x) / se : 0;
    if (z > worst) worst = z;
    CHECK(bad == 0, "%g: %d roundings not a bf16 neighbour", x, bad);
    CHECK(z < 5, "%g: mean of %d roundings %.9g, %.1f standard errors away (p up %.4f)", x, N, mean, z, p);
  }
  printf("stochastic rounding: means of 200000 roundings within %.2f standard errors of x\n", worst);
  /* exact bf16 values, zero, inf stay; NaN stays NaN */
  const float ex[] = {1.0f, -2.5f, 0.0f, INFINITY, 0.15625f};
  for (size_t k = 0; k < sizeof ex / sizeof *ex; k++)
    for (int i = 0; i < 1000; i++)
      CHECK(vl_sr_bf16_float(ex[k], vl_sr_hash((uint64_t)i, 1)) == ex[k], "%g changed", ex[k]);
  CHECK(isnan(vl_sr_bf16_float(NAN, 123)), "NaN lost");
}

/* The CPU op against double arithmetic; pieces equal one call. */
static void test_op(vl_ops *o) {
  const size_t n = 5000;
  float *p = malloc(n * 4), *g = malloc(n * 4), *m = calloc(n, 4), *v = calloc(n, 4);
  float *p2 = malloc(n * 4), *m2 = calloc(n, 4), *v2 = calloc(n, 4);
  uint64_t rng = 5;
  for (size_t i = 0; i < n; i++) {
    p[i] = vl_sr_bf16_float(vl_rng_normal(&rng), 0);
    g[i] = vl_rng_normal(&rng);
  }
  memcpy(p2, p, n * 4);
  double *pd = malloc(n * sizeof(double)), *md = calloc(n, sizeof(double)), *vd = calloc(n, sizeof(double));
  const float lr = 1e-2f, b1 = 0.9f, b2 = 0.95f, eps = 1e-8f, wd = 0.1f, gs = 0.5f;
  int off = 0, same = 1;
  for (int t = 1; t <= 3; t++) {
    const uint64_t seed = vl_sr_step_seed(7, t);
    for (size_t i = 0; i < n; i++) { /* the exact update of the current (bf16) weight */
      double gg = (double)gs * g[i];
      md[i] = b1 * md[i] + (1 - b1) * gg;
      vd[i] = b2 * vd[i] + (1 - b2) * gg * gg;
      pd[i] = p[i] * (1 - (double)lr * wd) -
              lr / (1 - pow(b1, t)) * md[i] / (sqrt(vd[i]) / sqrt(1 - pow(b2, t)) + eps);
    }
    CHECK(o->adamw_lean(o, m, v, g, p, n, lr, b1, b2, eps, wd, gs, t, seed, 100) == VL_OK, "op: %s", vl_err_last());
    /* the same block in three pieces */
    size_t cut[4] = {0, 1234, 1235, n};
    for (int k = 0; k < 3; k++)
      o->adamw_lean(o, m2 + cut[k], v2 + cut[k], g + cut[k], p2 + cut[k], cut[k + 1] - cut[k], lr, b1,
                    b2, eps, wd, gs, t, seed, 100 + cut[k]);
    for (size_t i = 0; i < n; i++) {
      float lo = from_bits(bits((float)pd[i]) & 0xFFFF0000u);
      float ulp = fabsf(from_bits((bits(lo) & 0xFFFF0000u) + 0x10000u) - lo);
      off += (bits(p[i]) & 0xFFFFu) || fabs(p[i] - pd[i]) > 1.0001 * ulp;
    }
    same &= memcmp(p, p2, n * 4) == 0 && memcmp(m, m2, n * 4) == 0;
  }
  CHECK(off == 0, "adamw_lean: %d weights not on a bf16 neighbour of the exact update", off);
  CHECK(same, "adamw_lean in pieces differs from one call");
  CHECK(rel_err_f32(m, m2, n) == 0, "m");
  printf("adamw_lean (cpu): 3 steps on %zu weights, each on a bf16 neighbour of the exact update; pieces == one call\n", n);
  free(p); free(g); free(m); free(v); free(p2); free(m2); free(v2); free(pd); free(md); free(vd);
}

static double first_loss; /* step 1's loss of the latest run */
static double run(const vl_config *cfg, const vl_model *m, vl_comm *c, vl_ops *o, const float *w0,
                  int steps, const char *resume, const char *save_dir, float *out) {
  vl_trainer tr;
  double last = NAN;
  CHECK(vl_trainer_create(&tr, cfg, m, c, o, w0) == VL_OK, "trainer: %s", vl_err_last());
  if (resume) CHECK(vl_trainer_resume(&tr, resume) == VL_OK, "resume %s: %s", resume, vl_err_last());
  for (int s = 0; s < steps; s++) {
    vl_step_report r;
    CHECK(vl_trainer_step(&tr, &r) == VL_OK, "step: %s", vl_err_last());
    if (s == 0) first_loss = r.loss;
    last = r.loss;
  }
  if (save_dir) CHECK(vl_trainer_save(&tr, save_dir, 4) == VL_OK, "save: %s", vl_err_last());
  if (out) vl_trainer_params(&tr, out);
  vl_trainer_destroy(&tr);
  return last;
}

int main(int argc, char **argv) {
  if (vl_comm_mpi_init(&argc, &argv)) return 1;
  const char *be = getenv("VL_TEST_BACKEND");
  const int on_gpu = be && !strcmp(be, "cuda");
  test_rounding();
  vl_config cfg;
  vl_model m;
  if (vl_config_load_string(&cfg, yaml, "lean.yaml") || vl_model_build(&m, &cfg.model)) {
    fprintf(stderr, "%s\n", vl_err_last());
    return 1;
  }
  vl_comm c;
  if (vl_comm_init_on(&c, MPI_COMM_SELF, on_gpu ? VL_BACKEND_CUDA : VL_BACKEND_CPU, 0, 60)) {
    fprintf(stderr, "comm: %s\n", vl_err_last());
    return on_gpu ? 77 : 1;
  }
  vl_ops *cpu, *o;
  vl_ops_cpu_create(&cpu);
  test_op(cpu);
  if (on_gpu) {
    if (vl_ops_cuda_create(&o, c.device)) TEST_SKIP("no CUDA backend: %s", vl_err_last());
  } else o = cpu;
  const size_t n = m.n_elements;
  float *w0 = malloc(n * 4), *pz = malloc(n * 4), *pl = malloc(n * 4), *pr = malloc(n * 4);
  vl_weights_init_random(&m, w0, 5, 0.2f);
  char dir[] = "/tmp/vl_lean_XXXXXX", dz[] = "/tmp/vl_leanz_XXXXXX";
  if (!mkdtemp(dir) || !mkdtemp(dz)) return 1;

  cfg.train.optimizer = VL_OPTIM_ZERO1;
  double z20 = run(&cfg, &m, &c, o, w0, 20, NULL, NULL, pz), z1 = first_loss;
  cfg.train.optimizer = VL_OPTIM_LEAN;
  double l20 = run(&cfg, &m, &c, o, w0, 20, NULL, NULL, pl);
  printf("micro model, 20 steps (%s): step 1 loss %.4f; step 20: zero1 %.4f, lean %.4f (%+.2f%%); weights differ by %.2e\n",
         o->name, z1, z20, l20, 100 * (l20 - z20) / z20, rel_err_f32(pl, pz, n));
  CHECK(z20 < z1 && l20 < z1, "the loss did not go down: %.4f -> zero1 %.4f, lean %.4f", z1, z20, l20);
  CHECK(fabs(l20 - z20) < 0.05 * z20, "lean %.4f vs zero1 %.4f after 20 steps", l20, z20);
  {
    size_t odd = 0;
    for (size_t i = 0; i < n; i++) odd += (bits(pl[i]) & 0xFFFFu) != 0;
    CHECK(odd == 0, "%zu lean weights are not bf16 numbers", odd);
  }

  /* lean: 10 + save + resume + 10 */
  double l10 = run(&cfg, &m, &c, o, w0, 10, NULL, dir, NULL);
  char p10[512];
  CHECK(vl_ckpt_latest(dir, p10, sizeof p10) == VL_OK && strstr(p10, "step_0000010"), "latest %s", p10);
  double lr20 = run(&cfg, &m, &c, o, w0, 10, p10, NULL, pr);
  if (!on_gpu)
    CHECK(memcmp(pr, pl, n * 4) == 0 && lr20 == l20, "lean resume differs: %.3e, loss %.9g vs %.9g",
          rel_err_f32(pr, pl, n), lr20, l20);
  else
    CHECK(rel_err_f32(pr, pl, n) < 3e-2, "lean resume (GPU): %.3e", rel_err_f32(pr, pl, n));
  printf("lean: 10 steps (loss %.4f) + checkpoint + resume + 10 == 20 straight: %s\n", l10,
         memcmp(pr, pl, n * 4) ? "close" : "bitwise");
  /* a lean checkpoint under zero1 */
  cfg.train.optimizer = VL_OPTIM_ZERO1;
  double zl = run(&cfg, &m, &c, o, w0, 10, p10, NULL, pr);
  CHECK(fabs(zl - z20) < 0.05 * z20, "zero1 from a lean checkpoint: loss %.4f vs %.4f", zl, z20);
  /* a zero1 checkpoint under lean */
  run(&cfg, &m, &c, o, w0, 10, NULL, dz, NULL);
  char q10[512];
  vl_ckpt_latest(dz, q10, sizeof q10);
  cfg.train.optimizer = VL_OPTIM_LEAN;
  double lz = run(&cfg, &m, &c, o, w0, 10, q10, NULL, pr);
  CHECK(fabs(lz - z20) < 0.05 * z20, "lean from a zero1 checkpoint: loss %.4f vs %.4f", lz, z20);
  printf("cross resume after 10 + 10 steps: lean ckpt -> zero1 loss %.4f, zero1 ckpt -> lean loss %.4f\n", zl, lz);
  char cmd[128];
  snprintf(cmd, sizeof cmd, "rm -rf %s %s", dir, dz);
  if (system(cmd)) fprintf(stderr, "could not remove %s\n", dir);
  free(w0); free(pz); free(pl); free(pr);
  if (o != cpu) vl_ops_destroy(o);
  vl_ops_destroy(cpu);
  vl_comm_free(&c);
  vl_model_free(&m);
  vl_comm_mpi_finalize();
  TEST_END();
}
