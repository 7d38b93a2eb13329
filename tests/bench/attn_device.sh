#!/bin/sh
# Build on the GPU machine and run the attention checks and timings:
#   tests/bench/attn_device.sh [test|bench|both]   (logs under $OUT)
# test: tests/test_ops_cuda (every op against the CPU backend);
# bench: VL_ATTENTION_BENCH=1 (flash vs the older path at the 8B shapes).
set -e
what=${1:-both}
OUT=${OUT:-/tmp}
mkdir -p b && cd b
[ -f Makefile ] || { (cd .. && autoreconf -fi >/dev/null 2>&1); ../configure --with-cuda > "$OUT/configure.log" 2>&1 || { tail "$OUT/configure.log"; exit 1; }; }
make -j16 tests/test_ops_cuda > "$OUT/make.log" 2>&1 || { tail -30 "$OUT/make.log"; exit 1; }
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,temperature.gpu --format=csv,noheader
if [ "$what" != test ]; then
  VL_ATTENTION_BENCH=1 ./tests/test_ops_cuda > "$OUT/bench.log" 2>&1 || true
  cat "$OUT/bench.log"
fi
if [ "$what" != bench ]; then
  VL_SRCDIR=.. ./tests/test_ops_cuda > "$OUT/test.log" 2>&1 && echo "test_ops_cuda: pass" || echo "test_ops_cuda: FAIL"
  grep -E "attention|FAIL|checks|passed|failed" "$OUT/test.log" | tail -60
fi
if [ "$what" = ncu ] || [ "${NCU:-0}" = 1 ]; then
  VL_ATTENTION_BENCH=1 ncu --clock-control none --section SpeedOfLight --section WarpStateStats \
    --section Occupancy --section ComputeWorkloadAnalysis -k 'regex:k_fwd|k_dq|k_dkv' -c 3 \
    ./tests/test_ops_cuda > "$OUT/ncu.log" 2>&1 || true
  grep -E "k_fwd|k_dq|k_dkv|Duration|Throughput|Occupancy|Stall|Issue|Registers|Executed Ipc|Pipe" "$OUT/ncu.log" | head -80
fi
