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
# the last step (the first includes start-up)
line=$(grep -E '^step [0-9]+/' "$out/vltrain.log" | tail -n 1)
mb=$(echo "$line" | sed -E 's/.*\(([0-9.]+) s\/micro-batch.*/\1/')
optsec=$(echo "$line" | sed -E 's/.*optimizer ([0-9.]+) s.*/\1/')
stepsec=$(echo "$line" | sed -E 's/.* ([0-9.]+) s\/step.*/\1/')
peak=$(echo "$line" | sed -E 's/.*peak ([0-9.]+) GiB.*/\1/')
# Two figures per micro-batch: the forward + backward alone (BENCHMARK.md's
# "seconds per micro-batch"), and the step time over the accumulation,
# which includes the optimizer step and its collectives: the peer's
# per_micro_s is measured that way, so the ratio uses it.
awk -v mb="$mb" -v o="$optsec" -v st="$stepsec" -v a="$accum" -v p="$peak" 'BEGIN {
  if (mb == "" || mb + 0 == 0) { print "vltrain: no step line"; exit }
  printf "vltrain: %.3f s/micro-batch forward+backward, %.3f s/step, %.3f s/micro-batch with the optimizer (step / %d), optimizer %.3f s, %.0f tokens/s/GPU, MFU %.1f%% (forward+backward) %.1f%% (step), peak %s GiB\n",
         mb, st, st / a, a, o, 2902 / (st / a), 100 * 1.936e14 / (mb * 989e12), 100 * 1.936e14 / (st / a * 989e12), p }' | tee "$out/summary.txt"
if [ -n "$peer" ] && [ -f "$peer" ]; then
  echo "== peer: HF transformers + PyTorch DDP, $n GPU(s)"
  if [ "$n" -gt 1 ]; then
    torchrun --nproc_per_node "$n" "$peer" --mode full --accum "$accum" --steps "$steps" ${PEER_ARGS:-} > "$out/peer.log" 2>&1
  else
    python3 "$peer" --mode full --accum "$accum" --steps "$steps" ${PEER_ARGS:-} > "$out/peer.log" 2>&1
  fi
  tail -n 3 "$out/peer.log" | tee -a "$out/summary.txt"
  pm=$(grep -o '"per_micro_s": [0-9.]*' "$out/peer.log" | tail -n 1 | awk '{print $2}')
  awk -v st="$stepsec" -v a="$accum" -v pm="$pm" 'BEGIN { v = st / a; if (v > 0 && pm + 0 > 0)
    printf "ratio (step time / accumulation, optimizer included on both sides): peer %.3f s / vltrain %.3f s per micro-batch = %.2fx (%s)\n",
           pm, v, pm / v, (pm >= v) ? "vltrain faster" : "vltrain slower" }' | tee -a "$out/summary.txt"
fi
