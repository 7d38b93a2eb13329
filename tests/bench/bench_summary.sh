#!/bin/sh
# bench_summary.sh VLTRAIN_LOG ACCUM [PEER_LOG]: the figures of a benchmark
# run from vltrain's last step line (the first step includes start-up) and,
# with the peer's log (shared/bench/hf_peer.py's JSON line), the ratio.
# Two figures per micro-batch: the forward + backward alone (BENCHMARK.md's
# "seconds per micro-batch") and the step time over the accumulation, which
# includes the optimizer step and its collectives; the peer's per_micro_s is
# its step time over the accumulation, so the ratio uses the second.
# MFU: 1.936e14 model FLOPs per micro-batch (2,902 tokens) on 989 TFLOP/s.
log=${1:?usage: bench_summary.sh VLTRAIN_LOG ACCUM [PEER_LOG]} accum=${2:?accumulation} peerlog=${3:-}
line=$(grep -E '^step [0-9]+/' "$log" | tail -n 1)
mb=$(echo "$line" | sed -E 's/.*\(([0-9.]+) s\/micro-batch.*/\1/')
optsec=$(echo "$line" | sed -E 's/.*optimizer ([0-9.]+) s.*/\1/')
stepsec=$(echo "$line" | sed -E 's/.* ([0-9.]+) s\/step.*/\1/')
peak=$(echo "$line" | sed -E 's/.*peak ([0-9.]+) GiB.*/\1/')
if [ -z "$line" ]; then echo "vltrain: no step line in $log"; exit 1; fi
awk -v mb="$mb" -v o="$optsec" -v st="$stepsec" -v a="$accum" -v p="$peak" 'BEGIN {
  printf "vltrain: %.3f s/micro-batch forward+backward, %.3f s/step, %.3f s/micro-batch with the optimizer (step / %d), optimizer %.3f s, %.0f tokens/s/GPU, MFU %.1f%% (forward+backward) %.1f%% (step), peak %s GiB\n",
         mb, st, st / a, a, o, 2902 / (st / a), 100 * 1.936e14 / (mb * 989e12), 100 * 1.936e14 / (st / a * 989e12), p }'
[ -n "$peerlog" ] || exit 0
tail -n 3 "$peerlog"
pm=$(grep -o '"per_micro_s": [0-9.]*' "$peerlog" | tail -n 1 | awk '{print $2}')
[ -n "$pm" ] || { echo "peer: no per_micro_s in $peerlog"; exit 1; }
awk -v st="$stepsec" -v a="$accum" -v pm="$pm" 'BEGIN { v = st / a;
  printf "ratio (step time / accumulation, optimizer included on both sides): peer %.3f s / vltrain %.3f s per micro-batch = %.2fx (%s)\n",
         pm, v, pm / v, (pm >= v) ? "vltrain faster" : "vltrain slower" }'
