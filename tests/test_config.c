/* test_config: presets load with the values of the published config.json
 * files; defaults; include, override, nesting, depth and cycles; every kind
 * of mistake stops with the exact "file:line: key: what was expected". */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config.h"
#include "err.h"
#include "test_util.h"

static char preset8b[1024];

/* Loads yaml text as "exp.yaml"; expects failure with exactly `want`, or
 * success when want is NULL. */
static void expect(const char *yaml, const char *want) {
  vl_config c;
  int rc = vl_config_load_string(&c, yaml, "exp.yaml");
  if (!want) {
    CHECK(rc == VL_OK, "unexpected error: %s\n   in: %s", vl_err_last(), yaml);
  } else {
    CHECK(rc == VL_EINVAL, "rc %d, expected VL_EINVAL with: %s", rc, want);
    CHECK(rc != VL_EINVAL || !strcmp(vl_err_last(), want), "\n   got  %s\n   want %s",
          vl_err_last(), want);
    CHECK(c.text == NULL, "a failed load keeps no text");
  }
  if (rc == VL_OK) vl_config_free(&c);
}

/* "include: <8b preset>" then body: body's first line is line 2. */
static const char *with_include(const char *body) {
  static char buf[8192];
  snprintf(buf, sizeof buf, "include: %s\n%s", preset8b, body);
  return buf;
}

static void write_file(const char *path, const char *text) {
  FILE *f = fopen(path, "w");
  CHECK(f != NULL, "cannot write %s", path);
  if (!f) return;
  fputs(text, f);
  fclose(f);
}

/* 1-based line of the first line of `path` containing `needle`. */
static int line_of(const char *path, const char *needle) {
  FILE *f = fopen(path, "r");
  char buf[512];
  int line = 0, found = 0;
  while (f && fgets(buf, sizeof buf, f)) {
    line++;
    if (strstr(buf, needle)) { found = line; break; }
  }
  if (f) fclose(f);
  return found;
}

static void test_presets(void) {
  vl_config c;
  /* Qwen3-VL-8B-Instruct config.json (shared/spec/qwen-vl.md) */
  CHECK(vl_config_load(&c, preset8b) == VL_OK, "8b: %s", vl_err_last());
  const vl_text_config *t = &c.model.text;
  const vl_vision_config *v = &c.model.vision;
  CHECK(c.model.family == VL_FAMILY_QWEN3_VL && t->vocab_size == 151936 && t->hidden_size == 4096 &&
        t->intermediate_size == 12288 && t->num_hidden_layers == 36 && t->num_attention_heads == 32 &&
        t->num_key_value_heads == 8 && t->head_dim == 128 && t->rms_norm_eps == 1e-6 &&
        t->rope_theta == 5e6 && t->mrope_section[0] == 24 && t->mrope_section[1] == 20 &&
        t->mrope_section[2] == 20 && t->mrope_interleaved == 1 && t->attention_bias == 0 &&
        t->tie_word_embeddings == 0 && t->hidden_act == VL_ACT_SILU, "8b text");
  CHECK(v->depth == 27 && v->hidden_size == 1152 && v->intermediate_size == 4304 && v->num_heads == 16 &&
        v->in_channels == 3 && v->patch_size == 16 && v->temporal_patch_size == 2 &&
        v->spatial_merge_size == 2 && v->out_hidden_size == 4096 && v->num_position_embeddings == 2304 &&
        v->n_deepstack == 3 && v->deepstack_visual_indexes[0] == 8 && v->deepstack_visual_indexes[1] == 16 &&
        v->deepstack_visual_indexes[2] == 24 && v->hidden_act == VL_ACT_GELU_TANH &&
        v->layer_norm_eps == 1e-6, "8b vision");
  CHECK(c.model.tokens.image_token_id == 151655 && c.model.tokens.video_token_id == 151656 &&
        c.model.tokens.vision_start_token_id == 151652 && c.model.tokens.vision_end_token_id == 151653,
        "8b tokens");
  /* the defaults of the issue, for keys the preset leaves out */
  const vl_train_config *tr = &c.train;
  CHECK(tr->micro_batch == 1 && tr->grad_accum == 8 && tr->max_seq_len == 2900 &&
        tr->max_vision_patches == 8960 && tr->steps == 100 && tr->lr == 1e-5 && tr->weight_decay == 0 &&
        tr->adam_beta1 == 0.9 && tr->adam_beta2 == 0.999 && tr->adam_eps == 1e-8 && tr->grad_clip == 1.0 &&
        tr->warmup_steps == 0 && tr->recompute == 0 && tr->optimizer == VL_OPTIM_ZERO1 &&
        tr->freeze[0] == '\0' && tr->seed == 1234 && tr->schedule == VL_SCHED_COSINE &&
        tr->nonfinite == VL_NONFINITE_SKIP, "train defaults");
  CHECK(tr->overlap_grad_reduce == 1, "train.overlap_grad_reduce defaults to true");
  CHECK(c.run.backend == VL_BACKEND_AUTO && c.run.allow_shared_gpu == 0 && c.run.data[0] == '\0' &&
        !strcmp(c.run.out_dir, "out") && c.run.nccl_timeout_s == 600 && c.model.path[0] == '\0',
        "run defaults");
  CHECK(!strcmp(c.source, preset8b), "source");
  vl_config_free(&c);
  CHECK(c.text == NULL, "free clears text");

  char p[1024];
  /* Qwen3-VL-4B-Instruct config.json */
  CHECK(vl_config_load(&c, test_path(p, sizeof p, "inputs/qwen3-vl-4b.yaml")) == VL_OK, "4b: %s", vl_err_last());
  CHECK(t->hidden_size == 2560 && t->intermediate_size == 9728 && t->num_hidden_layers == 36 &&
        t->num_attention_heads == 32 && t->num_key_value_heads == 8 && t->head_dim == 128 &&
        t->tie_word_embeddings == 1 && t->vocab_size == 151936 && v->depth == 24 && v->hidden_size == 1024 &&
        v->intermediate_size == 4096 && v->num_heads == 16 && v->out_hidden_size == 2560 &&
        v->num_position_embeddings == 2304 && v->n_deepstack == 3 && v->deepstack_visual_indexes[0] == 5 &&
        v->deepstack_visual_indexes[1] == 11 && v->deepstack_visual_indexes[2] == 17, "4b values");
  vl_config_free(&c);
  /* Qwen3-VL-2B-Instruct config.json */
  CHECK(vl_config_load(&c, test_path(p, sizeof p, "inputs/qwen3-vl-2b.yaml")) == VL_OK, "2b: %s", vl_err_last());
  CHECK(t->hidden_size == 2048 && t->intermediate_size == 6144 && t->num_hidden_layers == 28 &&
        t->num_attention_heads == 16 && t->num_key_value_heads == 8 && t->head_dim == 128 &&
        t->tie_word_embeddings == 1 && v->depth == 24 && v->hidden_size == 1024 && v->out_hidden_size == 2048 &&
        v->n_deepstack == 3 && v->deepstack_visual_indexes[2] == 17, "2b values");
  vl_config_free(&c);
  /* the embedded default */
  CHECK(vl_config_load(&c, test_path(p, sizeof p, "inputs/tiny.yaml")) == VL_OK, "tiny: %s", vl_err_last());
  CHECK(t->vocab_size == 401 && t->hidden_size == 32 && t->num_hidden_layers == 3 &&
        t->num_attention_heads == 4 && t->num_key_value_heads == 2 && t->head_dim == 16 &&
        t->mrope_section[0] == 3 && t->mrope_section[1] == 3 && t->mrope_section[2] == 2 &&
        t->tie_word_embeddings == 1 && v->depth == 3 && v->num_position_embeddings == 64 &&
        v->n_deepstack == 2 && c.model.tokens.image_token_id == 387 && c.train.grad_accum == 1 &&
        c.train.max_seq_len == 512 && !strcmp(c.run.data, "tiny-data.h5"), "tiny values");
  vl_config_free(&c);
  CHECK(vl_config_load(&c, test_path(p, sizeof p, "inputs/example-finetune.yaml")) == VL_OK, "example: %s",
        vl_err_last());
  CHECK(c.train.steps == 7700 && t->hidden_size == 4096, "example includes 8b");
  vl_config_free(&c);
  CHECK(vl_config_load(&c, "/nonexistent/exp.yaml") == VL_EIO && strstr(vl_err_last(), "/nonexistent/exp.yaml"),
        "missing top-level file: %s", vl_err_last());
}

static void test_include(void) {
  vl_config c;
  /* override; merged text keeps both files, this one first */
  CHECK(vl_config_load_string(&c, with_include("model:\n  text:\n    num_hidden_layers: 4\n"), "exp.yaml") == VL_OK,
        "override: %s", vl_err_last());
  CHECK(c.model.text.num_hidden_layers == 4 && c.model.text.hidden_size == 4096, "override values");
  char marker[1100];
  snprintf(marker, sizeof marker, "# --- file: %s\n", preset8b);
  const char *a = c.text ? strstr(c.text, "# --- file: exp.yaml\n") : NULL, *b = c.text ? strstr(c.text, marker) : NULL;
  CHECK(a == c.text && b && b > a && strstr(b, "hidden_size: 4096") && strstr(a, "num_hidden_layers: 4"),
        "merged text:\n%s", c.text ? c.text : "(null)");
  vl_config_free(&c);
  /* a bare name resolves in VL_INPUTS_DIR */
  expect("include: qwen3-vl-8b.yaml\ntrain:\n  steps: 3\n", NULL);

  char dir[] = "/tmp/vl_cfg_XXXXXX";
  CHECK(mkdtemp(dir) != NULL, "mkdtemp");
  char fa[1100], fb[1100], text[2048], want[8192];
  snprintf(fa, sizeof fa, "%s/a.yaml", dir);
  snprintf(fb, sizeof fb, "%s/b.yaml", dir);
  /* nested, relative to the including file; the includer wins */
  snprintf(text, sizeof text, "include: %s\ntrain:\n  lr: 3.0e-4\n  steps: 50\n", preset8b);
  write_file(fa, text);
  write_file(fb, "include: a.yaml\ntrain:\n  grad_accum: 4\n  lr: 2.0e-4\n");
  CHECK(vl_config_load(&c, fb) == VL_OK, "nested: %s", vl_err_last());
  CHECK(c.train.lr == 2e-4 && c.train.steps == 50 && c.train.grad_accum == 4 && c.model.text.head_dim == 128,
        "nested values");
  vl_config_free(&c);
  /* cycle a -> b -> a, named at the include that closes it */
  write_file(fa, "include: b.yaml\n");
  CHECK(vl_config_load(&c, fb) == VL_EINVAL, "cycle accepted");
  snprintf(want, sizeof want, "%s:1: include: include cycle (%s -> %s -> %s)", fa, fb, fa, fb);
  CHECK(!strcmp(vl_err_last(), want), "\n   got  %s\n   want %s", vl_err_last(), want);
  write_file(fa, "train:\n  steps: 1\ninclude: a.yaml\n");
  CHECK(vl_config_load(&c, fa) == VL_EINVAL, "self include accepted");
  snprintf(want, sizeof want, "%s:3: include: include cycle (%s -> %s)", fa, fa, fa);
  CHECK(!strcmp(vl_err_last(), want), "\n   got  %s\n   want %s", vl_err_last(), want);
  unlink(fa);
  unlink(fb);

  /* depth: c0 -> c1 -> ... -> c8 -> preset is 9 includes below c0, 8 below c1 */
  char f[10][1100];
  for (int i = 0; i <= 8; i++) {
    snprintf(f[i], sizeof f[i], "%s/c%d.yaml", dir, i);
    if (i < 8) snprintf(text, sizeof text, "include: c%d.yaml\n", i + 1);
    else snprintf(text, sizeof text, "include: %s\n", preset8b);
    write_file(f[i], text);
  }
  int rc = vl_config_load(&c, f[1]);
  CHECK(rc == VL_OK, "8 nested includes: %s", vl_err_last());
  if (rc == VL_OK) vl_config_free(&c);
  CHECK(vl_config_load(&c, f[0]) == VL_EINVAL, "9 nested includes accepted");
  snprintf(want, sizeof want, "%s:1: include: expected includes nested at most 8 deep", f[8]);
  CHECK(!strcmp(vl_err_last(), want), "\n   got  %s\n   want %s", vl_err_last(), want);
  for (int i = 0; i <= 8; i++) unlink(f[i]);
  rmdir(dir);
}

/* Each mistake and its exact message. */
static void test_errors(void) {
  char want[4096];
  /* keys */
  expect(with_include("model:\n  text:\n    hiden_size: 64\n"),
         "exp.yaml:4: model.text.hiden_size: unknown key (did you mean model.text.hidden_size?)");
  expect("modle:\n  family: qwen3-vl\n", "exp.yaml:1: modle: unknown key (did you mean model?)");
  expect("foo: 1\n", "exp.yaml:1: foo: unknown key (vltrain --help-config lists them)");
  expect(with_include("train:\n  frobnicate: 1\n"),
         "exp.yaml:3: train.frobnicate: unknown key (vltrain --help-config lists them)");
  expect(with_include("model:\n  include: x.yaml\n"),
         "exp.yaml:3: model.include: unknown key (vltrain --help-config lists them)");
  expect(with_include("train:\n  steps: 5\n  steps: 6\n"), "exp.yaml:4: train.steps: duplicate key (first at line 3)");
  expect(with_include("train:\n  steps: 5\ntrain:\n  lr: 0.1\n"), "exp.yaml:4: train: duplicate key (first at line 2)");
  snprintf(want, sizeof want, "include: %s\ninclude: %s\n", preset8b, preset8b);
  expect(want, "exp.yaml:2: include: duplicate key (first at line 1)");
  /* required */
  expect("train:\n  steps: 3\n", "exp.yaml:1: model.family: required key missing");
  expect("train:\n  steps: 3\nmodel:\n  family: qwen3-vl\n  text:\n    vocab_size: 10\n",
         "exp.yaml:5: model.text.hidden_size: required key missing");
  /* types and ranges */
  expect(with_include("model:\n  text:\n    hidden_size: abc\n"),
         "exp.yaml:4: model.text.hidden_size: expected an integer in [1, 1048576], got 'abc'");
  expect(with_include("model:\n  text:\n    hidden_size: 0\n"),
         "exp.yaml:4: model.text.hidden_size: expected an integer in [1, 1048576], got '0'");
  expect(with_include("model:\n  text:\n    hidden_size: {a: 1}\n"),
         "exp.yaml:4: model.text.hidden_size: expected an integer in [1, 1048576], got a mapping");
  expect(with_include("model:\n  text:\n    hidden_size: [1]\n"),
         "exp.yaml:4: model.text.hidden_size: expected an integer in [1, 1048576], got a list");
  const char *bad_ints[] = {"1_000", "+5", "0x10", "5.0", "1e3", ""};
  for (int i = 0; i < 6; i++) {
    char body[256];
    snprintf(body, sizeof body, "train:\n  steps: %s\n", bad_ints[i]);
    snprintf(want, sizeof want, "exp.yaml:3: train.steps: expected an integer in [0, %d], got '%s'", INT32_MAX,
             bad_ints[i]);
    expect(with_include(body), want);
  }
  expect(with_include("train:\n  lr: 2.5\n"), "exp.yaml:3: train.lr: expected a number in [0, 1], got '2.5'");
  expect(with_include("train:\n  lr: .nan\n"), "exp.yaml:3: train.lr: expected a number in [0, 1], got '.nan'");
  expect(with_include("train:\n  lr: 0x1p-3\n"), "exp.yaml:3: train.lr: expected a number in [0, 1], got '0x1p-3'");
  expect(with_include("train:\n  seed: -1\n"), "exp.yaml:3: train.seed: expected a non-negative integer, got '-1'");
  expect(with_include("train:\n  recompute: maybe\n"), "exp.yaml:3: train.recompute: expected true or false, got 'maybe'");
  expect(with_include("run:\n  backend: gpu\n"), "exp.yaml:3: run.backend: expected one of auto, cpu, cuda, got 'gpu'");
  expect(with_include("train:\n  optimizer: {a: 1}\n"),
         "exp.yaml:3: train.optimizer: expected one of zero1, lean, got a mapping");
  expect(with_include("train: 5\n"), "exp.yaml:2: train: expected a mapping of keys, got a scalar");
  char longfreeze[400];
  memset(longfreeze, 'x', 300);
  longfreeze[300] = '\0';
  snprintf(want, sizeof want, "train:\n  freeze: %s\n", longfreeze);
  expect(with_include(want), "exp.yaml:3: train.freeze: expected a string of fewer than 256 characters");
  /* lists */
  expect(with_include("model:\n  text:\n    mrope_section: [24, 20]\n"),
         "exp.yaml:4: model.text.mrope_section: expected a list of 3 non-negative integers, got 2 entries");
  expect(with_include("model:\n  text:\n    mrope_section: 64\n"),
         "exp.yaml:4: model.text.mrope_section: expected a list of 3 non-negative integers, got a scalar");
  expect(with_include("model:\n  text:\n    mrope_section:\n      - 24\n      - -4\n      - 20\n"),
         "exp.yaml:6: model.text.mrope_section: expected a list of 3 non-negative integers, got '-4'");
  expect(with_include("model:\n  text:\n    mrope_section: [24, [20], 20]\n"),
         "exp.yaml:4: model.text.mrope_section: expected a list of 3 non-negative integers, got a list as entry 2");
  expect(with_include("model:\n  vision:\n    deepstack_visual_indexes: [0, 1, 2, 3, 4, 5, 6, 7, 8]\n"),
         "exp.yaml:4: model.vision.deepstack_visual_indexes: expected a list of 0 to 8 non-negative integers, got 9 entries");
  /* YAML itself */
  expect("train: [1, 2\n", "exp.yaml:2: (yaml): did not find expected ',' or ']' while parsing a flow sequence");
  expect(with_include("train:\n  steps: 5\n---\ntrain:\n  steps: 6\n"),
         "exp.yaml:5: (yaml): expected one document per file, found a second");
  expect("- 1\n- 2\n", "exp.yaml:1: (top): expected a mapping of sections (model, train, run, include), got a list");
  /* include */
  expect("include: no-such-preset.yaml\n",
         "exp.yaml:1: include: cannot find 'no-such-preset.yaml' (looked next to exp.yaml and in " VL_INPUTS_DIR ")");
  expect("train:\n  steps: 1\ninclude: /nonexistent/x.yaml\n", "exp.yaml:3: include: cannot find '/nonexistent/x.yaml'");
  expect("include: [a.yaml]\n", "exp.yaml:1: include: expected a file name, got a list");
  /* cross-key rules, named where the offending key was set */
  expect(with_include("model:\n  text:\n    mrope_section: [24, 20, 21]\n"),
         "exp.yaml:4: model.text.mrope_section: expected sections summing to head_dim/2 = 64, got 65");
  expect(with_include("model:\n  text:\n    num_key_value_heads: 5\n"),
         "exp.yaml:4: model.text.num_key_value_heads: expected a divisor of num_attention_heads (32), got 5");
  expect(with_include("model:\n  text:\n    head_dim: 127\n"), "exp.yaml:4: model.text.head_dim: expected an even number, got 127");
  expect(with_include("model:\n  vision:\n    num_heads: 64\n"),
         "exp.yaml:4: model.vision.num_heads: expected heads dividing hidden_size 1152 into a multiple of 4, got 64");
  expect(with_include("model:\n  vision:\n    deepstack_visual_indexes: [8, 30]\n"),
         "exp.yaml:4: model.vision.deepstack_visual_indexes: expected ascending block indexes below depth 27");
  expect(with_include("model:\n  vision:\n    deepstack_visual_indexes: [16, 8]\n"),
         "exp.yaml:4: model.vision.deepstack_visual_indexes: expected ascending block indexes below depth 27");
  snprintf(want, sizeof want, "%s:%d: model.vision.deepstack_visual_indexes: expected at most num_hidden_layers (2) entries",
           preset8b, line_of(preset8b, "deepstack_visual_indexes:"));
  expect(with_include("model:\n  text:\n    num_hidden_layers: 2\n"), want);
  expect(with_include("model:\n  vision:\n    num_position_embeddings: 2300\n"),
         "exp.yaml:4: model.vision.num_position_embeddings: expected a perfect square (a side x side grid), got 2300");
  snprintf(want, sizeof want, "%s:%d: model.vision.out_hidden_size: expected the text hidden_size 2048, got 4096",
           preset8b, line_of(preset8b, "out_hidden_size:"));
  expect(with_include("model:\n  text:\n    hidden_size: 2048\n"), want);
  expect(with_include("model:\n  tokens:\n    image_token_id: 200000\n"),
         "exp.yaml:4: model.tokens.image_token_id: expected an id below vocab_size 151936, got 200000");
  expect(with_include("model:\n  family: qwen2-vl\n"),
         "exp.yaml:3: model.family: qwen2-vl has no learned position grid and no DeepStack "
         "(expected num_position_embeddings 0 and deepstack_visual_indexes [])");
  snprintf(want, sizeof want, "%s:%d: model.text.mrope_interleaved: qwen2-vl's M-RoPE is sectioned "
           "(expected mrope_interleaved: false)", preset8b, line_of(preset8b, "mrope_interleaved:"));
  expect(with_include("model:\n  family: qwen2-vl\n  vision:\n    num_position_embeddings: 0\n"
                      "    deepstack_visual_indexes: []\n"), want);
  expect(with_include("model:\n  family: qwen2-vl\n  text:\n    mrope_interleaved: false\n"
                      "  vision:\n    num_position_embeddings: 0\n    deepstack_visual_indexes: []\n"),
         NULL);
}

/* Accepted spellings. */
static void test_values(void) {
  vl_config c;
  const char *body = "train:\n  recompute: yes\n  lr: 1e-4\n  seed: 18446744073709551615\n  optimizer: lean\n"
                     "  steps: 0\nrun:\n  allow_shared_gpu: on\n  backend: cpu\n  data: \"/data/x.h5\"\n"
                     "model:\n  text:\n    attention_bias: True\n    tie_word_embeddings: off\n"
                     "    rope_theta: 1000000.0\n";
  CHECK(vl_config_load_string(&c, with_include(body), "exp.yaml") == VL_OK, "values: %s", vl_err_last());
  CHECK(c.train.recompute == 1 && c.train.lr == 1e-4 && c.train.seed == UINT64_MAX &&
        c.train.optimizer == VL_OPTIM_LEAN && c.train.steps == 0 && c.run.allow_shared_gpu == 1 &&
        c.run.backend == VL_BACKEND_CPU && !strcmp(c.run.data, "/data/x.h5") &&
        c.model.text.attention_bias == 1 && c.model.text.tie_word_embeddings == 0 &&
        c.model.text.rope_theta == 1e6, "values parsed");
  vl_config_free(&c);
  CHECK(vl_config_load_string(&c, with_include("train:\n  overlap_grad_reduce: false\n"), "exp.yaml") == VL_OK &&
        c.train.overlap_grad_reduce == 0, "overlap_grad_reduce: false: %s", vl_err_last());
  vl_config_free(&c);
}

/* --help-config lists every key of the issue, one line each. */
static void test_print_keys(void) {
  char tmp[] = "/tmp/vl_cfg_keys_XXXXXX";
  int fd = mkstemp(tmp);
  CHECK(fd >= 0, "mkstemp");
  if (fd < 0) return;
  fflush(stdout);
  int saved = dup(1);
  dup2(fd, 1);
  vl_config_print_keys();
  fflush(stdout);
  dup2(saved, 1);
  close(saved);
  close(fd);
  static const char *const names[] = {
      "model.family", "model.path", "model.text.vocab_size", "model.text.hidden_size",
      "model.text.intermediate_size", "model.text.num_hidden_layers", "model.text.num_attention_heads",
      "model.text.num_key_value_heads", "model.text.head_dim", "model.text.rms_norm_eps",
      "model.text.rope_theta", "model.text.mrope_section", "model.text.mrope_interleaved",
      "model.text.attention_bias", "model.text.tie_word_embeddings", "model.text.hidden_act",
      "model.vision.depth", "model.vision.hidden_size", "model.vision.intermediate_size",
      "model.vision.num_heads", "model.vision.in_channels", "model.vision.patch_size",
      "model.vision.temporal_patch_size", "model.vision.spatial_merge_size", "model.vision.out_hidden_size",
      "model.vision.num_position_embeddings", "model.vision.deepstack_visual_indexes",
      "model.vision.hidden_act", "model.vision.layer_norm_eps", "model.tokens.image_token_id",
      "model.tokens.video_token_id", "model.tokens.vision_start_token_id", "model.tokens.vision_end_token_id",
      "train.micro_batch", "train.grad_accum", "train.max_seq_len", "train.max_vision_patches", "train.steps",
      "train.lr", "train.weight_decay", "train.adam_beta1", "train.adam_beta2", "train.adam_eps",
      "train.grad_clip", "train.warmup_steps", "train.recompute", "train.optimizer", "train.freeze",
      "train.seed", "train.overlap_grad_reduce", "run.backend", "run.allow_shared_gpu", "run.data", "run.out_dir", "run.nccl_timeout_s"};
  for (size_t i = 0; i < sizeof names / sizeof *names; i++) {
    char needle[128];
    snprintf(needle, sizeof needle, "%s ", names[i]);
    CHECK(line_of(tmp, needle) > 0, "--help-config lacks %s", names[i]);
  }
  CHECK(line_of(tmp, "train.lr ") > 0 && line_of(tmp, "train.lr ") == line_of(tmp, "default 1e-5"),
        "train.lr line shows its default");
  unlink(tmp);
}

int main(void) {
  vl_err_set_quiet(1);
  /* absolute, so that files written under /tmp can include it */
  char rel[1024];
  char *abs = realpath(test_path(rel, sizeof rel, "inputs/qwen3-vl-8b.yaml"), NULL);
  if (!abs) TEST_SKIP("%s not found (set VL_SRCDIR)", rel);
  snprintf(preset8b, sizeof preset8b, "%s", abs);
  free(abs);
  test_presets();
  test_include();
  test_errors();
  test_values();
  test_print_keys();
  TEST_END();
}
