/* test_config: presets load with their published values; include and
 * override; defaults; and every kind of mistake stops with the exact
 * "file:line: key: what was expected" message. */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config.h"
#include "err.h"
#include "test_util.h"

static char preset8b[1024];

/* Loads yaml text; expects failure with exactly `want` (or success if NULL). */
static void expect(const char *yaml, const char *want) {
  vl_config c;
  int rc = vl_config_load_string(&c, yaml, "exp.yaml");
  if (!want) {
    CHECK(rc == VL_OK, "unexpected error: %s", vl_err_last());
  } else {
    CHECK(rc == VL_EINVAL, "accepted, expected: %s", want);
    CHECK(rc != VL_EINVAL || !strcmp(vl_err_last(), want), "\n   got  %s\n   want %s", vl_err_last(), want);
  }
  if (rc == VL_OK) vl_config_free(&c);
}

static char *with_include(const char *body) {
  static char buf[4096];
  snprintf(buf, sizeof buf, "include: %s\n%s", preset8b, body);
  return buf;
}

static void write_file(const char *path, const char *text) {
  FILE *f = fopen(path, "w");
  fputs(text, f);
  fclose(f);
}

int main(void) {
  vl_err_set_quiet(1);
  test_path(preset8b, sizeof preset8b, "inputs/qwen3-vl-8b.yaml");
  vl_config c;
  CHECK(vl_config_load(&c, preset8b) == VL_OK, "8b: %s", vl_err_last());
  CHECK(c.model.text.hidden_size == 4096 && c.model.text.num_hidden_layers == 36 &&
        c.model.text.mrope_section[0] == 24 && c.model.vision.n_deepstack == 3 &&
        c.model.vision.deepstack_visual_indexes[2] == 24 && c.model.vision.hidden_act == VL_ACT_GELU_TANH &&
        c.model.tokens.image_token_id == 151655 && c.model.text.rope_theta == 5e6,
        "8b values");
  CHECK(c.train.grad_accum == 8 && c.train.adam_beta2 == 0.999 && c.run.backend == VL_BACKEND_AUTO &&
        c.train.seed == 1234 && !strcmp(c.run.out_dir, "out"), "defaults");
  vl_config_free(&c);
  const char *others[] = {"inputs/qwen3-vl-2b.yaml", "inputs/qwen3-vl-4b.yaml", "inputs/tiny.yaml",
                          "inputs/example-finetune.yaml"};
  for (int i = 0; i < 4; i++) {
    char p[1024];
    CHECK(vl_config_load(&c, test_path(p, sizeof p, others[i])) == VL_OK, "%s: %s", others[i], vl_err_last());
    if (i == 3) CHECK(c.train.steps == 7700 && c.model.text.hidden_size == 4096, "example includes 8b");
    vl_config_free(&c);
  }

  /* include + override; merged text keeps both files */
  CHECK(vl_config_load_string(&c, with_include("model:\n  text:\n    num_hidden_layers: 4\n"),
                              "exp.yaml") == VL_OK, "override: %s", vl_err_last());
  CHECK(c.model.text.num_hidden_layers == 4 && c.model.text.hidden_size == 4096, "override values");
  CHECK(c.text && strstr(c.text, "# --- file: exp.yaml") && strstr(c.text, "qwen3-vl-8b.yaml"), "merged text");
  vl_config_free(&c);
  /* nested include through files in a temp folder, relative names */
  char dir[] = "/tmp/vl_cfg_XXXXXX";
  CHECK(mkdtemp(dir) != NULL, "mkdtemp");
  char a[1100], b[1100], text[2048];
  snprintf(a, sizeof a, "%s/a.yaml", dir);
  snprintf(b, sizeof b, "%s/b.yaml", dir);
  snprintf(text, sizeof text, "include: %s\ntrain:\n  lr: 3.0e-4\n", preset8b);
  write_file(a, text);
  write_file(b, "include: a.yaml\ntrain:\n  grad_accum: 4\n");
  CHECK(vl_config_load(&c, b) == VL_OK, "nested: %s", vl_err_last());
  CHECK(c.train.lr == 3e-4 && c.train.grad_accum == 4 && c.model.text.head_dim == 128, "nested values");
  vl_config_free(&c);
  /* include cycle */
  write_file(a, "include: b.yaml\n");
  CHECK(vl_config_load(&c, b) == VL_EINVAL && strstr(vl_err_last(), "include cycle"), "cycle: %s", vl_err_last());
  unlink(a); unlink(b); rmdir(dir);

  /* each mistake, the exact message */
  expect(with_include("model:\n  text:\n    hiden_size: 64\n"),
         "exp.yaml:4: model.text.hiden_size: unknown key (did you mean model.text.hidden_size?)");
  expect(with_include("model:\n  text:\n    hidden_size: abc\n"),
         "exp.yaml:4: model.text.hidden_size: expected an integer in [1, 1048576], got 'abc'");
  expect(with_include("model:\n  text:\n    hidden_size: 0\n"),
         "exp.yaml:4: model.text.hidden_size: expected an integer in [1, 1048576], got '0'");
  expect(with_include("train:\n  lr: 2.5\n"), "exp.yaml:3: train.lr: expected a number in [0, 1], got '2.5'");
  expect(with_include("train:\n  recompute: maybe\n"),
         "exp.yaml:3: train.recompute: expected true or false, got 'maybe'");
  expect(with_include("run:\n  backend: gpu\n"),
         "exp.yaml:3: run.backend: expected one of auto, cpu, cuda, got 'gpu'");
  expect(with_include("model:\n  text:\n    mrope_section: [24, 20]\n"),
         "exp.yaml:4: model.text.mrope_section: expected a list of 3 integers, got 2");
  expect(with_include("model:\n  text:\n    hidden_size: {a: 1}\n"),
         "exp.yaml:4: model.text.hidden_size: expected an integer in [1, 1048576], got a mapping");
  expect(with_include("train:\n  steps: 5\n  steps: 6\n"),
         "exp.yaml:4: train.steps: duplicate key (first at line 3)");
  expect(with_include("model:\n  text:\n    mrope_section: [24, 20, 21]\n"),
         "exp.yaml:4: model.text.mrope_section: expected sections summing to head_dim/2 = 64, got 65");
  expect("model:\n  family: qwen3-vl\n", "exp.yaml:1: model.text.vocab_size: required key missing");
  expect("train: [1, 2\n", "exp.yaml:2: (yaml): did not find expected ',' or ']' while parsing a flow sequence");
  expect("include: no-such-preset.yaml\n",
         "exp.yaml:1: include: cannot find 'no-such-preset.yaml' (looked next to exp.yaml and in " VL_INPUTS_DIR ")");
  expect(with_include("model:\n  text:\n    num_key_value_heads: 5\n"),
         "exp.yaml:4: model.text.num_key_value_heads: expected a divisor of num_attention_heads (32), got 5");
  expect(with_include("model:\n  vision:\n    deepstack_visual_indexes: [8, 30]\n"),
         "exp.yaml:4: model.vision.deepstack_visual_indexes: expected ascending block indexes below depth 27");
  expect(with_include("train:\n  micro_batch: 2\n"), NULL);
  TEST_END();
}
