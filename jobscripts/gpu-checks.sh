#!/bin/bash
# gpu-checks.sh OUTDIR: configure --with-cuda, build, and run the GPU checks
# on a machine with GPUs: every CUDA op against the CPU backend, the test
# suite, the trainer checks on the GPU backend (one rank per GPU, NCCL), the
# lean optimizer and activation recomputation on the GPU, checkpoints moving
# between the GPU and CPU backends (tests/test_xresume), compute-sanitizer
# memcheck over a few steps of the tiny model, and the default job under
# mpirun -np 2.  Logs go to OUTDIR; the last line of each check says PASS/FAIL.
set -uo pipefail
out=${1:-gpu-logs}; mkdir -p "$out"; out=$(cd "$out" && pwd)
top=$(cd "$(dirname "$0")/.." && pwd)
export NCCL_NVLS_ENABLE=0 OMPI_MCA_rmaps_base_oversubscribe=1
mkdir -p "$top/build-gpu" && cd "$top/build-gpu"
../configure --with-cuda > "$out/configure.log" 2>&1 || { tail -30 "$out/configure.log"; exit 1; }
make -j"$(nproc)" > "$out/make.log" 2>&1 && make -j"$(nproc)" tests/test_ops_cuda tests/test_train \
  tests/test_lean tests/test_recompute tests/test_xresume >> "$out/make.log" 2>&1 \
  || { grep -E "error" "$out/make.log" | head -30; exit 1; }
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$out/gpu.txt"
ngpu=$(nvidia-smi -L | wc -l)
VL_SRCDIR="$top" ./tests/test_ops_cuda 2>&1 | tee "$out/test_ops_cuda.log"
make -j8 check-summary > "$out/check.log" 2>&1; tail -1 "$out/check.log"
echo "== trainer on the GPU backend, $ngpu rank(s)"
VL_TEST_BACKEND=cuda mpirun -np "$ngpu" tests/test_train 2>&1 | tee "$out/test_train_gpu.log"
echo "== overlapped gradient reduction (train.overlap_grad_reduce) on the GPU backend, $ngpu rank(s)"
make tests/test_overlap >> "$out/make.log" 2>&1
VL_TEST_BACKEND=cuda mpirun -np "$ngpu" tests/test_overlap 2>&1 | tee "$out/test_overlap_gpu.log"
echo "== lean optimizer (zero1 vs lean on the micro model, GPU) and recomputation on the GPU"
VL_TEST_BACKEND=cuda tests/test_lean 2>&1 | tee "$out/test_lean_gpu.log"
VL_TEST_BACKEND=cuda VL_SRCDIR="$top" tests/test_recompute 2>&1 | tee "$out/test_recompute_gpu.log"
echo "== checkpoints between backends"
tests/test_xresume 2>&1 | tee "$out/test_xresume.log"
echo "== compute-sanitizer memcheck: 3 steps of the tiny model (zero1, then lean + recompute)"
san=$(command -v compute-sanitizer || echo "${CUDA_HOME:-/usr/local/cuda}/bin/compute-sanitizer")
i=0
for mode in "optimizer: zero1, recompute: false" "optimizer: lean, recompute: true"; do
  i=$((i + 1))
  cat > "$out/tiny-san.yaml" <<EOY
include: $top/inputs/tiny.yaml
train: {steps: 3, grad_accum: 1, $mode, eval_samples: 2, eval_every: 3}
run: {backend: cuda, out_dir: $out/tiny-san, checkpoint_every: 2}
EOY
  # API errors are not reported: vltrain checks every CUDA call itself, and
  # inside ncclCommInitRank NCCL 2.28 calls cudaFuncGetAttributes on kernels
  # with no image for the device (cudaErrorNoKernelImageForDevice, handled
  # by NCCL), which memcheck would count as 4 errors (H100, CUDA 13.0).
  "$san" --tool memcheck --leak-check full --report-api-errors no --error-exitcode 9 \
    src/vltrain "$out/tiny-san.yaml" \
    > "$out/sanitizer-$i.log" 2>&1; rc=$?
  tr '\r' '\n' < "$out/sanitizer-$i.log" | grep -E "ERROR SUMMARY|LEAK SUMMARY|step 3/3"
  [ $rc -eq 0 ] && echo "memcheck ($mode): PASS" || { echo "memcheck ($mode): FAIL (exit $rc)"; grep -m 20 -E "=========" "$out/sanitizer-$i.log"; }
  rm -rf "$out/tiny-san"
done
# the default job as the README's first command runs it: demo data, 2 ranks
bash "$top/jobscripts/quickstart.sh" --workdir "$out/quickstart" > "$out/quickstart.log" 2>&1
echo "quickstart exit $?: $(tail -n 1 "$out/quickstart.log")"
rm -rf "$out/quickstart/run" "$out/quickstart/demo"
