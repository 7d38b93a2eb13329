/* test_hf_parity: vltrain's CPU model against Hugging Face transformers on
 * the same tiny random Qwen3-VL (fixtures made by
 * tests/reference/make_qwen3vl_fixtures.py in float64): weights read through
 * vltrain's own safetensors reader; one sample with two images of different
 * sizes and one text-only sample.  Loss and logits must agree to 1e-5
 * relative, every parameter's gradient to 1e-4. */
#include "parity_fixture.h"

int main(void) {
  vl_ops *o;
  if (vl_ops_cpu_create(&o) != VL_OK) return 1;
  parity_result r;
  int rc = parity_run(o, &r);
  CHECK(rc == VL_OK, "parity run: %s", vl_err_last());
  if (rc == VL_OK) {
    CHECK(r.loss < 1e-5, "loss relative error %.3e", r.loss);
    CHECK(r.logits < 1e-5, "logits relative error %.3e", r.logits);
    CHECK(r.grad_worst < 1e-4, "gradient of %s: relative error %.3e", r.worst_name, r.grad_worst);
  }
  vl_ops_destroy(o);
  TEST_END();
}
