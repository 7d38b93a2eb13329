/* test_xresume: checkpoints move between backends.  A checkpoint written by
 * a GPU run (bf16 working weights, fp32 master and moments) resumes on the
 * CPU backend and a CPU run's on the GPU: the restored fp32 master and
 * moments equal the writer's bit for bit, and 5 more steps on the other
 * backend end close to 5 more steps on the writer's (bf16 limits: 3e-2);
 * the same for train.optimizer: lean (weights as fp32 values of bf16).
 * Needs a GPU and the CUDA backend; otherwise it skips (77). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ckpt.h"
#include "comm.h"
#include "config.h"
#include "err.h"
#include "optim.h"
#include "micro_model.h"
#include "test_util.h"
#include "train.h"
#include "weights.h"

static const char *yaml =
    VL_TEST_MICRO_MODEL
    "train: {micro_batch: 1, grad_accum: 1, steps: 10, lr: 1.0e-2, warmup_steps: 2,\n"
    "        weight_decay: 0.1, grad_clip: 1.0, max_seq_len: 96, max_vision_patches: 64,\n"
    "        seed: 11, schedule: constant}\n";

typedef struct { vl_comm *c; vl_ops *o; const char *name; } backend;

/* host copies of the optimizer state (master or weights, m, v) of a trainer */
static void state(vl_trainer *t, float *w, float *m1, float *m2) {
  vl_optim *op = &t->opt;
  size_t n = op->n;
  if (op->master) op->ops->get_raw(op->ops, w, op->master, n * 4);
  else vl_trainer_params(t, w);
  op->ops->get_raw(op->ops, m1, op->mom1, n * 4);
  op->ops->get_raw(op->ops, m2, op->mom2, n * 4);
}

static void cross(vl_config *cfg, const vl_model *m, const float *w0, backend *wr, backend *rd,
                  const char *dir) {
  const size_t n = m->n_elements;
  float *a[3], *b[3], *pw = malloc(n * 4), *pr = malloc(n * 4);
  for (int k = 0; k < 3; k++) { a[k] = malloc(n * 4); b[k] = malloc(n * 4); }
  vl_trainer tw, tr;
  vl_step_report r;
  double lw = 0, lr = 0;
  CHECK(vl_trainer_create(&tw, cfg, m, wr->c, wr->o, w0) == VL_OK, "%s trainer: %s", wr->name, vl_err_last());
  for (int s = 0; s < 5; s++) CHECK(vl_trainer_step(&tw, &r) == VL_OK, "step: %s", vl_err_last());
  CHECK(vl_trainer_save(&tw, dir, 1) == VL_OK, "save: %s", vl_err_last());
  char path[512];
  vl_ckpt_latest(dir, path, sizeof path);
  state(&tw, a[0], a[1], a[2]);
  CHECK(vl_trainer_create(&tr, cfg, m, rd->c, rd->o, w0) == VL_OK, "%s trainer", rd->name);
  CHECK(vl_trainer_resume(&tr, path) == VL_OK, "%s resumes %s's checkpoint: %s", rd->name, wr->name, vl_err_last());
  CHECK(tr.step == 5, "resumed at %d", tr.step);
  state(&tr, b[0], b[1], b[2]);
  /* a lean reader on the GPU holds bf16 weights: the writer's fp32 rounded */
  const int exact_w = !(cfg->train.optimizer == VL_OPTIM_LEAN && rd->o->elem_size == 2 && wr->o->elem_size == 4);
  CHECK((exact_w ? memcmp(a[0], b[0], n * 4) == 0 : rel_err_f32(b[0], a[0], n) < 1e-2) &&
        memcmp(a[1], b[1], n * 4) == 0 && memcmp(a[2], b[2], n * 4) == 0,
        "%s -> %s: restored state differs (weights %.3e, m %.3e, v %.3e)", wr->name, rd->name,
        rel_err_f32(b[0], a[0], n), rel_err_f32(b[1], a[1], n), rel_err_f32(b[2], a[2], n));
  for (int s = 0; s < 5; s++) {
    CHECK(vl_trainer_step(&tw, &r) == VL_OK, "writer step"); lw = r.loss;
    CHECK(vl_trainer_step(&tr, &r) == VL_OK, "reader step"); lr = r.loss;
  }
  vl_trainer_params(&tw, pw);
  vl_trainer_params(&tr, pr);
  double e = rel_err_f32(pr, pw, n);
  CHECK(fabs(lr - lw) < 3e-2 * fabs(lw) && e < 3e-2, "%s -> %s: 5 more steps: loss %.5f vs %.5f, weights %.3e",
        wr->name, rd->name, lr, lw, e);
  printf("%-5s %s checkpoint -> %s: state restored %s; after 5 more steps loss %.5f vs %.5f on %s, weights differ by %.2e\n",
         cfg->train.optimizer == VL_OPTIM_LEAN ? "lean" : "zero1", wr->name, rd->name,
         exact_w ? "bitwise" : "(weights rounded to bf16)", lr, lw, wr->name, e);
  vl_trainer_destroy(&tw);
  vl_trainer_destroy(&tr);
  for (int k = 0; k < 3; k++) { free(a[k]); free(b[k]); }
  free(pw); free(pr);
}

int main(int argc, char **argv) {
  if (vl_comm_mpi_init(&argc, &argv)) return 1;
  vl_config cfg;
  vl_model m;
  if (vl_config_load_string(&cfg, yaml, "x.yaml") || vl_model_build(&m, &cfg.model)) return 1;
  vl_comm cc, cg;
  vl_ops *oc, *og;
  vl_err_set_quiet(1);
  if (vl_comm_init_on(&cg, MPI_COMM_SELF, VL_BACKEND_CUDA, 1, 60) ||
      vl_ops_cuda_create(&og, cg.device))
    TEST_SKIP("no GPU backend: %s", vl_err_last());
  vl_err_set_quiet(0);
  if (vl_comm_init_on(&cc, MPI_COMM_SELF, VL_BACKEND_CPU, 0, 60) || vl_ops_cpu_create(&oc)) return 1;
  backend cpu = {&cc, oc, "cpu"}, gpu = {&cg, og, "cuda"};
  float *w0 = malloc(m.n_elements * 4);
  vl_weights_init_random(&m, w0, 3, 0.2f);
  char dir[] = "/tmp/vl_xresume_XXXXXX";
  if (!mkdtemp(dir)) return 1;
  for (int lean = 0; lean <= 1; lean++) {
    cfg.train.optimizer = lean ? VL_OPTIM_LEAN : VL_OPTIM_ZERO1;
    char d1[64], d2[64];
    snprintf(d1, sizeof d1, "%s/g%d", dir, lean);
    snprintf(d2, sizeof d2, "%s/c%d", dir, lean);
    cross(&cfg, &m, w0, &gpu, &cpu, d1);
    cross(&cfg, &m, w0, &cpu, &gpu, d2);
  }
  char cmd[96];
  snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
  if (system(cmd)) fprintf(stderr, "could not remove %s\n", dir);
  free(w0);
  vl_ops_destroy(og);
  vl_ops_destroy(oc);
  vl_comm_free(&cg);
  vl_comm_free(&cc);
  vl_model_free(&m);
  vl_comm_mpi_finalize();
  TEST_END();
}
