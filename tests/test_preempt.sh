#!/bin/sh
# Preemption: SIGUSR1 (Slurm's --signal before the time limit) or SIGTERM
# (a preemption or scancel) to one rank of a 2-rank run makes every rank
# finish its step, write a checkpoint and exit 75; the rerun resumes from it
# and finishes.  (See jobscripts/train.slurm and tests/test_slurm.sh.)
[ -n "${MPIRUN:-}" ] && command -v "$MPIRUN" >/dev/null 2>&1 || { echo "no mpirun"; exit 77; }
if [ "$(id -u)" = 0 ]; then export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1; fi
export OMPI_MCA_rmaps_base_oversubscribe=1 OMP_NUM_THREADS=1
dir=$(mktemp -d /tmp/vl_preempt_XXXXXX)
trap 'rm -rf "$dir"' EXIT
for sig in USR1 TERM; do
  case $sig in USR1) num=10;; TERM) num=15;; esac # Linux
  cat > "$dir/run-$sig.yaml" <<EOY
include: $VL_SRCDIR/tests/data/micro.yaml
train: {steps: 100000, grad_accum: 1, lr: 1.0e-3}
run: {out_dir: $dir/out-$sig}
EOY
  "$MPIRUN" --oversubscribe -np 2 "$VL_BUILDDIR/src/vltrain" "$dir/run-$sig.yaml" > "$dir/log1-$sig" 2>&1 &
  job=$!
  i=0
  until grep -q "step 5/" "$dir/log1-$sig" 2>/dev/null; do
    i=$((i + 1)); [ $i -gt 600 ] && { echo "FAIL: no progress"; cat "$dir/log1-$sig"; kill $job; exit 1; }
    sleep 0.1
  done
  # a rank (a child of mpirun), not mpirun itself, whose command line matches too
  pid=$(pgrep -P $job -f "src/vltrain $dir/run-$sig.yaml" | tail -n 1)
  [ -n "$pid" ] || { echo "FAIL: no rank process"; kill $job; exit 1; }
  kill -$sig "$pid"
  wait $job; rc=$?
  tail -n 3 "$dir/log1-$sig"
  [ $rc -eq 75 ] || { echo "FAIL: exit $rc, expected 75"; cat "$dir/log1-$sig"; exit 1; }
  grep -q "stopping at step .* on signal $num:" "$dir/log1-$sig" || { echo "FAIL: no stop message"; exit 1; }
  k=$(sed 's/step_0*\([0-9]*\).h5/\1/' "$dir/out-$sig/ckpt/latest")
  [ -n "$k" ] && [ "$k" -ge 5 ] || { echo "FAIL: checkpoint step '$k'"; exit 1; }
  echo "SIG$sig: preempted at step $k with a checkpoint; resuming"
  sed -i "s/steps: 100000/steps: $((k + 3))/" "$dir/run-$sig.yaml"
  "$MPIRUN" --oversubscribe -np 2 "$VL_BUILDDIR/src/vltrain" "$dir/run-$sig.yaml" > "$dir/log2-$sig" 2>&1; rc=$?
  tail -n 2 "$dir/log2-$sig"
  [ $rc -eq 0 ] || { echo "FAIL: resumed run exit $rc"; cat "$dir/log2-$sig"; exit 1; }
  grep -q "resumed from .*step_0*$k.h5 at step $k" "$dir/log2-$sig" || { echo "FAIL: did not resume from step $k"; exit 1; }
  grep -q "step $((k + 3))/$((k + 3))" "$dir/log2-$sig" || { echo "FAIL: did not finish"; exit 1; }
done
echo "preemption ok"
