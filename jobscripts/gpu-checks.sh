#!/bin/bash
# gpu-checks.sh OUTDIR: configure --with-cuda, build, and run the GPU checks
# on a machine with GPUs: every CUDA op against the CPU backend, the test
# suite, the trainer checks on the GPU backend (one rank per GPU, NCCL), and
# the default job under mpirun -np 2.  Logs go to OUTDIR.
set -uo pipefail
out=${1:-gpu-logs}; mkdir -p "$out"
top=$(cd "$(dirname "$0")/.." && pwd)
export NCCL_NVLS_ENABLE=0 OMPI_MCA_rmaps_base_oversubscribe=1
mkdir -p "$top/build-gpu" && cd "$top/build-gpu"
../configure --with-cuda > "$out/configure.log" 2>&1 || { tail -30 "$out/configure.log"; exit 1; }
make -j"$(nproc)" > "$out/make.log" 2>&1 && make -j"$(nproc)" tests/test_ops_cuda tests/test_train >> "$out/make.log" 2>&1 \
  || { grep -E "error" "$out/make.log" | head -30; exit 1; }
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$out/gpu.txt"
ngpu=$(nvidia-smi -L | wc -l)
VL_SRCDIR="$top" ./tests/test_ops_cuda 2>&1 | tee "$out/test_ops_cuda.log"
make -j8 check-summary > "$out/check.log" 2>&1; tail -1 "$out/check.log"
echo "== trainer on the GPU backend, $ngpu rank(s)"
VL_TEST_BACKEND=cuda mpirun -np "$ngpu" tests/test_train 2>&1 | tee "$out/test_train_gpu.log"
cat > "$out/tiny-gpu.yaml" <<EOY
include: $top/inputs/tiny.yaml
run:
  backend: cuda
  allow_shared_gpu: true
  out_dir: $out/tiny-run
EOY
mpirun -np 2 src/vltrain "$out/tiny-gpu.yaml" 2>&1 | tr '\r' '\n' | tee "$out/tiny-gpu.log" | grep -E "rank|step (1|10|20|30)/|checkpoint|error"
rm -rf "$out/tiny-run"
