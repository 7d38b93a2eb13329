/* test_hf_parity: vltrain's CPU model against Hugging Face transformers on
 * the same tiny random model of each family, Qwen3-VL and Qwen2-VL (fixtures
 * made by tests/reference/make_qwen3vl_fixtures.py and
 * make_qwen2vl_fixtures.py in float64): weights read through vltrain's own
 * safetensors reader; one sample with two images of different sizes and one
 * text-only sample.  Loss and logits must agree to 1e-5 relative, every
 * parameter's gradient to 1e-4. */
#include "parity_fixture.h"

static void check_family(vl_ops *o, const char *fixture) {
  parity_result r;
  int rc = parity_run_dir(o, fixture, &r);
  CHECK(rc == VL_OK, "%s: parity run: %s", fixture, vl_err_last());
  if (rc == VL_OK) {
    CHECK(r.loss < 1e-5, "%s: loss relative error %.3e", fixture, r.loss);
    CHECK(r.logits < 1e-5, "%s: logits relative error %.3e", fixture, r.logits);
    CHECK(r.grad_worst < 1e-4, "%s: gradient of %s: relative error %.3e", fixture, r.worst_name,
          r.grad_worst);
  }
}

int main(void) {
  vl_ops *o;
  if (vl_ops_cpu_create(&o) != VL_OK) return 1;
  check_family(o, "tests/data/qwen3vl_parity");
  check_family(o, "tests/data/qwen2vl_parity");
  vl_ops_destroy(o);
  TEST_END();
}
