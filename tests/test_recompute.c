/* test_recompute: train.recompute (activations rebuilt per layer in the
 * backward pass) gives the same loss and gradients as keeping every
 * activation -- bit for bit on the CPU backend, which runs the same ops in
 * the same order -- over two accumulated micro-batches (images, DeepStack,
 * a text-only sample), and allocates fewer activation bytes; the memory
 * plan's activation line drops by the same amount.  A frozen vision tower
 * (no backward through it) keeps none of its activations and gives the same
 * loss and LLM gradients.
 * VL_TEST_BACKEND=cuda: the same on the GPU within 1e-2 (atomics: no bitwise
 * claim). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "batch.h"
#include "config.h"
#include "err.h"
#include "graph.h"
#include "model.h"
#include "ops.h"
#include "test_util.h"
#include "weights.h"

static const char *micro_yaml =
    "model:\n"
    "  family: qwen3-vl\n"
    "  text: {vocab_size: 64, hidden_size: 16, intermediate_size: 24, num_hidden_layers: 3,\n"
    "         num_attention_heads: 2, num_key_value_heads: 1, head_dim: 8, rms_norm_eps: 1.0e-6,\n"
    "         rope_theta: 10000, mrope_section: [2, 1, 1], mrope_interleaved: true,\n"
    "         tie_word_embeddings: false}\n"
    "  vision: {depth: 3, hidden_size: 16, intermediate_size: 24, num_heads: 2, patch_size: 2,\n"
    "           temporal_patch_size: 2, spatial_merge_size: 2, out_hidden_size: 16,\n"
    "           num_position_embeddings: 16, deepstack_visual_indexes: [0, 2]}\n"
    "  tokens: {image_token_id: 60, video_token_id: 61, vision_start_token_id: 58,\n"
    "           vision_end_token_id: 59}\n"
    "train: {max_seq_len: 32, max_vision_patches: 32, micro_batch: 1}\n";

static const int32_t ids0[] = {5, 9, 58, 60, 60, 59, 17, 58, 60, 60, 59, 33, 7, 21, 40};
static const int32_t lab0[] = {-100, -100, -100, -100, -100, -100, -100, -100, -100, -100,
                               -100, 33, 7, 21, 40};
static const int32_t ids1[] = {3, 14, 15, 9, 26, 53, 5, 8};
static const int32_t lab1[] = {-100, -100, -100, 9, 26, 53, 5, 8};
static const int32_t grids0[2][3] = {{1, 2, 4}, {1, 4, 2}};

/* loss sums of the two micro-batches and the accumulated gradients */
static int run(vl_ops *o, const vl_model *m, const float *w, const vl_batch *b, int nb,
               int recompute, double *loss, float *grad, size_t *act_bytes) {
  vl_graph g;
  if (vl_graph_create_opts(&g, m, o, 32, 32, 0, m->n_elements, recompute)) return 1;
  o->put(o, g.params, w, m->n_elements);
  o->zero(o, g.grads, m->n_elements * o->elem_size);
  for (int i = 0; i < nb; i++)
    if (vl_graph_set_batch(&g, &b[i]) || vl_graph_forward(&g, 0.1f, &loss[i]) ||
        vl_graph_backward(&g))
      return 1;
  o->get(o, grad, g.grads, m->n_elements);
  *act_bytes = g.activation_bytes;
  vl_graph_destroy(&g);
  return 0;
}

int main(void) {
  vl_config cfg;
  vl_model m;
  if (vl_config_load_string(&cfg, micro_yaml, "micro.yaml") || vl_model_build(&m, &cfg.model)) {
    fprintf(stderr, "%s\n", vl_err_last());
    return 1;
  }
  const char *be = getenv("VL_TEST_BACKEND");
  const int on_gpu = be && !strcmp(be, "cuda");
  vl_ops *o = NULL;
  if (on_gpu ? vl_ops_cuda_create(&o, 0) : vl_ops_cpu_create(&o)) {
    if (on_gpu) TEST_SKIP("no CUDA backend: %s", vl_err_last());
    return 1;
  }
  float *pix = malloc(sizeof(float) * 16 * 24);
  uint64_t rs = 42;
  for (int i = 0; i < 16 * 24; i++) pix[i] = vl_rng_normal(&rs);
  vl_sample s[2] = {{15, ids0, lab0, 2, grids0, pix}, {8, ids1, lab1, 0, NULL, NULL}};
  vl_batch b[2];
  CHECK(vl_batch_build(&b[0], &cfg.model, &s[0], 1) == VL_OK, "batch 0: %s", vl_err_last());
  CHECK(vl_batch_build(&b[1], &cfg.model, &s[1], 1) == VL_OK, "batch 1: %s", vl_err_last());
  const size_t n = m.n_elements;
  float *w = malloc(n * 4), *g0 = malloc(n * 4), *g1 = malloc(n * 4);
  vl_weights_init_random(&m, w, 7, 0.3f);
  double l0[2] = {0, 0}, l1[2] = {0, 0};
  size_t a0 = 0, a1 = 0;
  CHECK(run(o, &m, w, b, 2, 0, l0, g0, &a0) == 0, "without recompute: %s", vl_err_last());
  CHECK(run(o, &m, w, b, 2, 1, l1, g1, &a1) == 0, "with recompute: %s", vl_err_last());
  double e = rel_err_f32(g1, g0, n);
  if (on_gpu) {
    CHECK(fabs(l1[0] - l0[0]) < 1e-2 * fabs(l0[0]) && fabs(l1[1] - l0[1]) < 1e-2 * fabs(l0[1]),
          "loss %.9g %.9g vs %.9g %.9g", l1[0], l1[1], l0[0], l0[1]);
    CHECK(e < 1e-2, "gradients differ by %.3e", e);
  } else {
    CHECK(l1[0] == l0[0] && l1[1] == l0[1], "loss %.9g %.9g vs %.9g %.9g", l1[0], l1[1], l0[0], l0[1]);
    CHECK(memcmp(g1, g0, n * 4) == 0, "gradients differ: %.3e", e);
  }
  double gn = 0;
  for (size_t i = 0; i < n; i++) gn += (double)g0[i] * g0[i];
  CHECK(gn > 0 && isfinite(gn), "gradient norm^2 %g", gn);
  CHECK(a1 < a0, "activation bytes %zu with recompute, %zu without", a1, a0);
  printf("%s: loss %.6f + %.6f, gradients %s with and without recompute (rel. diff %.2e); "
         "activations %zu -> %zu bytes\n", o->name, l0[0], l0[1],
         memcmp(g1, g0, n * 4) ? "close" : "bitwise equal", e, a0, a1);
  /* a frozen vision tower keeps none of its activations: the same loss and
   * LLM-side gradients bit for bit (CPU), no vision gradients */
  {
    vl_model mf;
    size_t nf = 0;
    float *gf = malloc(n * 4);
    double lf[2] = {0, 0};
    size_t af = 0;
    CHECK(vl_model_build(&mf, &cfg.model) == VL_OK && vl_model_freeze(&mf, "model.visual.*", &nf) == VL_OK,
          "freeze: %s", vl_err_last());
    CHECK(vl_graph_vision_frozen(&mf) && !vl_graph_vision_frozen(&m), "vision_frozen");
    CHECK(run(o, &mf, w, b, 2, 0, lf, gf, &af) == 0, "frozen vision: %s", vl_err_last());
    size_t differ = 0, vision_nonzero = 0;
    for (int i = 0; i < m.n_params; i++) {
      const vl_param *p = &m.params[i];
      const int vis = p->group == VL_GROUP_VISION || p->group == VL_GROUP_MERGER;
      for (size_t j = p->offset; j < p->offset + p->numel; j++) {
        if (vis) vision_nonzero += gf[j] != 0;
        else differ += on_gpu ? fabsf(gf[j] - g0[j]) > 1e-2f * (fabsf(g0[j]) + 1e-3f) : memcmp(&gf[j], &g0[j], 4) != 0;
      }
    }
    CHECK(on_gpu ? fabs(lf[0] - l0[0]) < 1e-2 * fabs(l0[0]) : lf[0] == l0[0] && lf[1] == l0[1],
          "frozen vision: loss %.9g vs %.9g", lf[0], l0[0]);
    CHECK(differ == 0 && vision_nonzero == 0, "frozen vision: %zu LLM gradients differ, %zu vision ones non-zero",
          differ, vision_nonzero);
    CHECK(af < a0, "frozen vision: activation bytes %zu vs %zu", af, a0);
    vl_memory_plan pf;
    vl_graph_memory_plan(&mf, &cfg.train, 1, o->elem_size, &pf);
    CHECK(pf.activations == af, "frozen plan %zu vs allocated %zu", pf.activations, af);
    printf("frozen vision tower: same loss, LLM gradients %s; activations %zu -> %zu bytes\n",
           on_gpu ? "close" : "bitwise equal", a0, af);
    free(gf);
    vl_model_free(&mf);
  }
  /* the plan follows the allocation */
  vl_memory_plan p0, p1;
  cfg.train.recompute = 0;
  vl_graph_memory_plan(&m, &cfg.train, 1, o->elem_size, &p0);
  cfg.train.recompute = 1;
  vl_graph_memory_plan(&m, &cfg.train, 1, o->elem_size, &p1);
  CHECK(p0.activations == a0 && p1.activations == a1, "plan %zu/%zu vs allocated %zu/%zu",
        p0.activations, p1.activations, a0, a1);
  CHECK(p0.total - p1.total == a0 - a1, "plan totals");
  /* the 8B preset at its benchmark shape: the saving in GiB */
  {
    vl_config c8;
    vl_model m8;
    char path[1024];
    const char *src = getenv("VL_SRCDIR");
    snprintf(path, sizeof path, "%s/inputs/qwen3-vl-8b.yaml", src ? src : "..");
    if (vl_config_load(&c8, path) == VL_OK && vl_model_build(&m8, &c8.model) == VL_OK) {
      vl_memory_plan q0, q1;
      c8.train.recompute = 0;
      vl_graph_memory_plan(&m8, &c8.train, 1, 2, &q0);
      c8.train.recompute = 1;
      vl_graph_memory_plan(&m8, &c8.train, 1, 2, &q1);
      vl_memory_plan q2;
      size_t nf8 = 0;
      c8.train.recompute = 0;
      vl_model_freeze(&m8, "model.visual.*", &nf8);
      vl_graph_memory_plan(&m8, &c8.train, 1, 2, &q2);
      printf("8B preset (%d tokens, %d patches, bf16): activations %.2f GiB, %.2f GiB with recompute, "
             "%.2f GiB with the vision tower frozen\n", c8.train.max_seq_len, c8.train.max_vision_patches,
             q0.activations / 1073741824.0, q1.activations / 1073741824.0, q2.activations / 1073741824.0);
      CHECK(q1.activations < q0.activations / 2, "8B: recompute saves too little");
      vl_model_free(&m8);
      vl_config_free(&c8);
    }
  }
  vl_batch_free(&b[0]);
  vl_batch_free(&b[1]);
  free(w); free(g0); free(g1); free(pix);
  vl_ops_destroy(o);
  vl_model_free(&m);
  vl_config_free(&cfg);
  TEST_END();
}
