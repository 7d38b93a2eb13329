#!/bin/bash
# scaling-study.sh: the same experiment over a list of rank counts.
#   scaling-study.sh --config CFG.yaml --ranks "1 2 4 8" [--mode strong|weak|both]
#                    [--global-batch 16] [--accum 8] [--steps 6] [--out DIR]
#                    [--launcher "mpirun --bind-to none -np"] (or "srun -c 8 --cpu-bind=cores -n")
#                    [--flops-per-token F] [--peak-flops P]
#                    [--peer-cmd "torchrun --nproc_per_node {n} hf_peer.py --accum {accum} --steps 2"]
# strong scaling: global batch fixed, accumulation = global / (ranks x micro);
# weak scaling: accumulation per rank fixed (--accum).  Each run's step lines
# give tokens/s and seconds per step (median over the steps after the first);
# DIR/results.csv gets one row per run with the efficiency against the
# smallest run (tokens/s per rank relative to it), and DIR/scaling.png a plot
# when gnuplot is installed.  With --flops-per-token (model FLOPs per LLM
# token: 1.936e14 / 2902 = 6.671e10 for the Qwen3-VL-8B workload of
# shared/BENCHMARK.md) the rows carry MFU against --peak-flops per GPU
# (989e12).  With --peer-cmd each run is followed by the peer at the same
# rank count and accumulation ({n}, {accum} substituted; its last line is the
# JSON of shared/bench/hf_peer.py: tokens_per_s, step_s), and the rows carry
# its tokens/s, s/step and vltrain's speed relative to it.
# The default launcher leaves ranks unbound: Open MPI would bind each of
# one or two ranks to a single core, where vltrain's launch and host
# pipeline threads contend (measured on nvidia-h200-x2, 8B lean, one rank:
# 4.700 s/step under the default binding; 3.571 s/step in another call with
# --bind-to none, tests/bench/bench_8b.sh; the binding is the likely cause).
set -uo pipefail
cfg="" ranks="1 2" mode=both gb=16 accum=8 steps=6 out=scaling launcher=${LAUNCHER:-"mpirun --bind-to none -np"}
fpt=0 peak=989e12 peer_cmd=""
while [ $# -gt 0 ]; do
  case "$1" in
    --config) cfg=$2; shift 2 ;; --ranks) ranks=$2; shift 2 ;; --mode) mode=$2; shift 2 ;;
    --global-batch) gb=$2; shift 2 ;; --accum) accum=$2; shift 2 ;; --steps) steps=$2; shift 2 ;;
    --out) out=$2; shift 2 ;; --launcher) launcher=$2; shift 2 ;;
    --flops-per-token) fpt=$2; shift 2 ;; --peak-flops) peak=$2; shift 2 ;; --peer-cmd) peer_cmd=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
[ -n "$cfg" ] || { echo "usage: scaling-study.sh --config CFG.yaml --ranks \"1 2 4\"" >&2; exit 2; }
top=$(cd "$(dirname "$0")/.." && pwd)
vltrain=${VLTRAIN:-$top/build/src/vltrain}
cfg=$(cd "$(dirname "$cfg")" && pwd)/$(basename "$cfg")
mkdir -p "$out"
csv="$out/results.csv"
echo "mode,ranks,micro_batch,grad_accum,global_batch,tokens_per_s,s_per_step,tokens_per_s_per_rank,efficiency,mfu,peer_tokens_per_s,peer_s_per_step,speedup_vs_peer" > "$csv"
modes=$mode; [ "$mode" = both ] && modes="strong weak"
for m in $modes; do
  base=""
  for w in $ranks; do
    if [ "$m" = strong ]; then a=$((gb / w)); [ $((a * w)) -eq "$gb" ] || { echo "skip: $gb not divisible by $w"; continue; }
    else a=$accum; fi
    run="$out/$m-$w"
    mkdir -p "$run"
    cat > "$run/run.yaml" <<EOY
include: $cfg
train: {micro_batch: 1, grad_accum: $a, steps: $steps, stats_every: 0, eval_samples: 0}
run: {out_dir: $run/out, resume: false, checkpoint_every: 1000000}
EOY
    echo "== $m scaling: $w rank(s), accumulation $a"
    VL_PROGRESS_BAR=0 $launcher "$w" "$vltrain" "$run/run.yaml" > "$run/log" 2>&1 \
      || { echo "run failed: $run/log"; tail -5 "$run/log"; exit 1; }
    rm -rf "$run/out/ckpt"
    # median over steps 2..N of tok/s and s/step
    read -r tps sps < <(grep -E '^step [0-9]+/' "$run/log" | tail -n +2 |
      sed -E 's/.* ([0-9.]+) tok\/s +([0-9.]+) s\/step.*/\1 \2/' | sort -n |
      awk '{t[NR]=$1; s[NR]=$2} END {m=int((NR+1)/2); if (NR==0) print "0 0"; else print t[m], s[m]}')
    per=$(awk -v t="$tps" -v w="$w" 'BEGIN {printf "%.1f", t / w}')
    [ -z "$base" ] && base=$per
    eff=$(awk -v p="$per" -v b="$base" 'BEGIN {printf "%.3f", (b > 0) ? p / b : 0}')
    mfu=$(awk -v p="$per" -v f="$fpt" -v k="$peak" 'BEGIN {if (f > 0 && k > 0) printf "%.4f", p * f / k}')
    ptps="" psps="" spd=""
    if [ -n "$peer_cmd" ]; then
      pc=$(echo "$peer_cmd" | sed "s/{n}/$w/g; s/{accum}/$a/g")
      echo "   peer: $pc"
      sh -c "$pc" > "$run/peer.log" 2>&1 || { echo "peer failed: $run/peer.log"; tail -5 "$run/peer.log"; exit 1; }
      j=$(grep '"tokens_per_s"' "$run/peer.log" | tail -n 1)
      ptps=$(echo "$j" | sed -n 's/.*"tokens_per_s": *\([0-9.eE+-]*\).*/\1/p')
      psps=$(echo "$j" | sed -n 's/.*"step_s": *\([0-9.eE+-]*\).*/\1/p')
      [ -n "$ptps" ] || { echo "peer printed no tokens_per_s: $run/peer.log"; exit 1; }
      spd=$(awk -v v="$tps" -v p="$ptps" 'BEGIN {if (p > 0) printf "%.3f", v / p}')
    fi
    echo "$m,$w,1,$a,$((w * a)),$tps,$sps,$per,$eff,$mfu,$ptps,$psps,$spd" | tee -a "$csv"
  done
done
if command -v gnuplot >/dev/null 2>&1; then
  gnuplot <<EOG
set terminal png size 900,500
set output "$out/scaling.png"
set datafile separator ","
set title "vltrain scaling (tokens/s per rank relative to the smallest run)"
set xlabel "ranks"; set ylabel "efficiency"; set yrange [0:1.2]; set key bottom left
set logscale x 2
plot "< grep '^strong' $csv" using 2:9 with linespoints title "strong", \
     "< grep '^weak' $csv" using 2:9 with linespoints title "weak"
EOG
  [ -s "$out/scaling.png" ] || { echo "gnuplot did not draw $out/scaling.png"; exit 1; }
  echo "plot: $out/scaling.png"
else
  echo "gnuplot not installed: no plot (apt-get install gnuplot-nox)"
fi
echo "results: $csv"
