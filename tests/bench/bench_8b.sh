#!/bin/bash
# bench_8b.sh NGPU ACCUM STEPS OUTDIR [peer.py]
# The shared/BENCHMARK.md workload — Qwen3-VL-8B with random weights, one
# image of 112 x 80 patches (2,240 merged tokens) and 662 text tokens of
# which 400 carry the loss (2,902 LLM tokens), micro-batch 1 — trained by
# vltrain under mpirun with NGPU ranks (ZeRO-1 AdamW), then by the peer
# (HF transformers + PyTorch DDP, shared/bench/hf_peer.py, copied beside this
# script) in the same call.  Prints seconds per micro-batch (forward +
# backward, and step time / accumulation), optimizer seconds, tokens/s per
# GPU, MFU (1.936e14 FLOPs per micro-batch, 989 TFLOP/s) and peak memory for
# both, and their ratio on step time / accumulation (how the peer measures).
# Environment: VL_BENCH_OPTIMIZER (zero1 | lean, default zero1),
# VL_BENCH_RECOMPUTE (true | false), VL_BENCH_OVERLAP (true | false: the
# gradient reduction overlapped with the last backward), PEER_ARGS (extra arguments of the peer,
# e.g. "--ckpt 0" for its run without activation recomputation), VL_PROFILE.
set -uo pipefail
n=${1:-2} accum=${2:-2} steps=${3:-2} out=${4:-bench-out} peer=${5:-}
top=$(cd "$(dirname "$0")/../.." && pwd)
vltrain=${VLTRAIN:-$top/build-gpu/src/vltrain}
mkdir -p "$out"
cat > "$out/bench.yaml" <<EOY
include: $top/inputs/bench-8b.yaml
train: {grad_accum: $accum, steps: $steps,
        optimizer: ${VL_BENCH_OPTIMIZER:-zero1}, recompute: ${VL_BENCH_RECOMPUTE:-false},
        overlap_grad_reduce: ${VL_BENCH_OVERLAP:-true}}
run: {out_dir: $out/run}
EOY
export VL_PROFILE=${VL_PROFILE:-0}
echo "== vltrain: $n GPU(s), accumulation $accum, $steps steps"
VL_PROGRESS_BAR=0 NCCL_NVLS_ENABLE=0 mpirun -np "$n" --bind-to none -x NCCL_NVLS_ENABLE -x VL_PROFILE "$vltrain" "$out/bench.yaml" \
  2>&1 | tee "$out/vltrain.log" | grep -E "^step|memory|error|rank"
peerlog=""
if [ -n "$peer" ] && [ -f "$peer" ]; then
  echo "== peer: HF transformers + PyTorch DDP, $n GPU(s)"
  if [ "$n" -gt 1 ]; then
    torchrun --nproc_per_node "$n" "$peer" --mode full --accum "$accum" --steps "$steps" ${PEER_ARGS:-} > "$out/peer.log" 2>&1
  else
    python3 "$peer" --mode full --accum "$accum" --steps "$steps" ${PEER_ARGS:-} > "$out/peer.log" 2>&1
  fi
  peerlog=$out/peer.log
fi
sh "$(cd "$(dirname "$0")" && pwd)/bench_summary.sh" "$out/vltrain.log" "$accum" $peerlog | tee "$out/summary.txt"
