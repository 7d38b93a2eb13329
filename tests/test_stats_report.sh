#!/bin/sh
# vlckpt stats: the report and the CSV of a run's gradstats.h5 against what
# the run printed (its step and eval lines): 12 steps on 2 ranks with
# statistics every step and two evaluations; a one-rank run has no noise
# scale; a file that is not a statistics file is refused with a reason.
[ -n "${MPIRUN:-}" ] && command -v "$MPIRUN" >/dev/null 2>&1 || { echo "no mpirun"; exit 77; }
if [ "$(id -u)" = 0 ]; then export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1; fi
export OMPI_MCA_rmaps_base_oversubscribe=1 OMP_NUM_THREADS=1
B=$VL_BUILDDIR/src
dir=$(mktemp -d /tmp/vl_statsrep_XXXXXX)
trap 'rm -rf "$dir"' EXIT
fail() { echo "FAIL: $*"; exit 1; }
cat > "$dir/run.yaml" <<EOY
include: $VL_SRCDIR/tests/data/micro.yaml
train: {steps: 12, grad_accum: 1, lr: 1.0e-3, stats_every: 1, eval_samples: 4, eval_every: 6}
run: {out_dir: $dir/out}
EOY
"$MPIRUN" --oversubscribe -np 2 "$B/vltrain" "$dir/run.yaml" > "$dir/log" 2>&1 || { cat "$dir/log"; fail "training"; }
"$B/vlckpt" stats "$dir/out/gradstats.h5" --top 5 > "$dir/report" 2>&1 || { cat "$dir/report"; fail "stats"; }
cat "$dir/report"
# the losses the run printed, one per step
grep -E '^step [0-9]+/12 ' "$dir/log" | sed -E 's/^step ([0-9]+)\/12 +loss ([0-9.]+) .*grad norm ([0-9.e+-]+) .*/\1 \2 \3/' > "$dir/printed"
[ "$(wc -l < "$dir/printed")" -eq 12 ] || fail "the run printed $(wc -l < "$dir/printed") step lines"
grep -q "world size 2, 46 tensors, 12 recorded steps (1 .. 12), 2 evaluations" "$dir/report" || fail "header"
last=$(awk '$1 == 12 {print $2}' "$dir/printed")
grep -q "last $last (step 12)" "$dir/report" || fail "last loss: the run printed $last"
low=$(sort -k2,2g "$dir/printed" | head -n 1)
grep -q "lowest $(echo "$low" | cut -d' ' -f2) (step $(echo "$low" | cut -d' ' -f1))" "$dir/report" \
  || fail "lowest loss: the run printed $low"
# the evaluations as printed
grep '^eval step' "$dir/log" | sed -E 's/eval step ([0-9]+): val loss ([0-9.]+), exact-match accuracy ([0-9.]+)%.*/\1 \2 \3/' |
while read -r st l a; do
  grep -qE "^ +$st +$l +$a%" "$dir/report" || fail "evaluation at step $st ($l, $a%) not in the report"
done || exit 1
[ "$(grep -cE '^  model\.' "$dir/report")" -eq 5 ] || fail "expected 5 tensor lines (--top 5)"
grep -q "^noise scale  B_simple median" "$dir/report" || fail "no noise scale with 2 ranks"
# CSV: a header and a row per step, each loss and gradient norm as printed
"$B/vlckpt" stats "$dir/out/gradstats.h5" --csv > "$dir/csv" || fail "stats --csv"
head -n 1 "$dir/csv" | grep -q '^step,loss,lr,tokens_per_s,grad_norm,clip_coef,skipped,nonfinite_ranks,noise_scale$' \
  || fail "CSV header: $(head -n 1 "$dir/csv")"
[ "$(wc -l < "$dir/csv")" -eq 13 ] || fail "CSV rows: $(wc -l < "$dir/csv")"
tail -n +2 "$dir/csv" | awk -F, '{ printf "%d %.4f %.3e\n", $1, $2, $5 }' > "$dir/from_csv"
diff "$dir/printed" "$dir/from_csv" > "$dir/diff" || { cat "$dir/diff"; fail "CSV values differ from the step lines"; }
clipped=$(tail -n +2 "$dir/csv" | awk -F, '$6 < 1 {n++} END {print n + 0}')
grep -q "clipped on $clipped of 12 steps" "$dir/report" || fail "clipped count: the CSV has $clipped"
echo "report and CSV agree with the run's output"
# one rank: no noise scale
sed -e "s|$dir/out|$dir/out1|" -e 's/steps: 12/steps: 3/' "$dir/run.yaml" > "$dir/run1.yaml"
"$B/vltrain" "$dir/run1.yaml" > "$dir/log1" 2>&1 || { cat "$dir/log1"; fail "one-rank training"; }
"$B/vlckpt" stats "$dir/out1/gradstats.h5" > "$dir/report1" 2>&1 || { cat "$dir/report1"; fail "stats of one rank"; }
grep -q "noise scale  not available" "$dir/report1" || { cat "$dir/report1"; fail "one rank: noise scale shown"; }
# not a statistics file: a checkpoint
ck=$(ls "$dir"/out/ckpt/step_*.h5 | head -n 1)
if "$B/vlckpt" stats "$ck" > "$dir/bad" 2>&1; then fail "a checkpoint was accepted as statistics"; fi
grep -q "not a vltrain statistics file" "$dir/bad" || { cat "$dir/bad"; fail "no reason given"; }
echo "stats report ok"
