#!/bin/sh
# A checkpoint written by 2 ranks resumes on 3 ranks (and on 1) and training
# goes on correctly: with train.global_batch 6 the accumulation follows the
# ranks (2 ranks x 3 = 3 ranks x 2 = 1 rank x 6), every step draws the same samples, so steps 5-8
# after a resume at step 4 give the losses, gradient norms and final
# validation loss of the uninterrupted 2-rank run (to the printed digits;
# fp32 sums in another order).  The 2-rank run is stopped at step 4 with the
# checkpoint hook of src/ckpt.h (rank 1 killed while writing step 8's), so
# the schedule (8 steps) is the same in every run.
[ -n "${MPIRUN:-}" ] && command -v "$MPIRUN" >/dev/null 2>&1 || { echo "no mpirun"; exit 77; }
if [ "$(id -u)" = 0 ]; then export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1; fi
export OMPI_MCA_rmaps_base_oversubscribe=1 OMP_NUM_THREADS=1
dir=$(mktemp -d /tmp/vl_resranks_XXXXXX)
trap 'rm -rf "$dir"' EXIT
fail() { echo "FAIL: $*"; exit 1; }
run() { # out, ranks (train.global_batch 6: the accumulation follows)
  cat > "$dir/$1-$2.yaml" <<EOY
include: $VL_SRCDIR/tests/data/micro.yaml
train: {steps: 8, global_batch: 6, lr: 1.0e-3, warmup_steps: 2}
run: {out_dir: $dir/$1, checkpoint_every: 4}
EOY
  timeout 120 "$MPIRUN" --oversubscribe -np $2 "$VL_BUILDDIR/src/vltrain" "$dir/$1-$2.yaml" > "$dir/$1-$2.log" 2>&1
}
# "step loss gradnorm" of each step line, and "eval loss"
figures() {
  sed -n -e 's/^step \([0-9]*\)\/[0-9]*  loss \([^ ]*\)  lr [^ ]*  grad norm \([^ ]*\).*/\1 \2 \3/p' \
         -e 's/^eval step \([0-9]*\): val loss \([^ ]*\).*/eval\1 \2 0/p' "$1"
}
close() { # want got: same steps; loss within 2e-4, gradient norm within 0.2%
  awk 'NR == FNR { l[$1] = $2; g[$1] = $3; next }
       ($1 in l) { n++; dl = $2 - l[$1]; dg = $3 - g[$1]; if (dl < 0) dl = -dl; if (dg < 0) dg = -dg;
                   if (dl > 2e-4 || dg > 2e-3 * g[$1] + 1e-12) { print "  differs: " $0 " vs " l[$1] " " g[$1]; bad = 1 } }
       END { if (bad || n != 5) { print "  " n " of 5 lines compared"; exit 1 } }' "$1" "$2"
}

run ref 2 || { cat "$dir/ref-2.log"; fail "the 2-rank run"; }
figures "$dir/ref-2.log" | grep -E '^([5-8]|eval8) ' > "$dir/want"
for n in 3 1; do
  a=$((6 / n))
  rm -rf "$dir/part"
  VL_TEST_CKPT_KILL_AT=8:1:tensors run part 2
  [ "$(cat "$dir/part/ckpt/latest")" = step_0000004.h5 ] || { cat "$dir/part-2.log"; fail "the stopped run did not leave step 4"; }
  run part $n || { cat "$dir/part-$n.log"; fail "the resume on $n ranks"; }
  grep -q "on $n rank(s)" "$dir/part-$n.log" || fail "not $n ranks"
  grep -q "global batch 6 = $n ranks x 1 micro-batch x $a accumulation" "$dir/part-$n.log" || fail "train.global_batch 6 on $n ranks"
  grep -q "resumed from $dir/part/ckpt/step_0000004.h5 at step 4\$" "$dir/part-$n.log" || { cat "$dir/part-$n.log"; fail "no resume at step 4 on $n ranks"; }
  figures "$dir/part-$n.log" > "$dir/got"
  close "$dir/want" "$dir/got" || { cat "$dir/want" "$dir/got"; fail "2-rank checkpoint on $n ranks x $a: training differs from the 2-rank run"; }
  echo "2-rank checkpoint resumed on $n ranks x $a accumulation: steps 5-8 and the validation loss as the uninterrupted 2-rank run"
done
echo "resume on other world sizes ok"
