#!/bin/sh
# The job scripts parse, and the mpirun wrapper launches vltrain.
set -u
for f in "$VL_SRCDIR"/jobscripts/*.sh "$VL_SRCDIR"/jobscripts/train.slurm; do bash -n "$f" || { echo "FAIL: $f does not parse"; exit 1; }; done
grep -q -- "--signal=USR1@" "$VL_SRCDIR/jobscripts/train.slurm" || { echo "FAIL: no signal"; exit 1; }
[ -n "${MPIRUN:-}" ] || exit 77
export OMPI_MCA_rmaps_base_oversubscribe=1 OMP_NUM_THREADS=1
out=$(VLTRAIN="$VL_BUILDDIR/src/vltrain" "$VL_SRCDIR/jobscripts/train-mpirun.sh" 2 --dry-run "$VL_SRCDIR/inputs/qwen3-vl-2b.yaml" 2>&1) \
  || { echo "$out"; echo "FAIL: train-mpirun.sh"; exit 1; }
echo "$out" | grep -q "2,127,532,032" || { echo "$out"; echo "FAIL: no summary"; exit 1; }
echo "$out" | grep -q "global batch: 2 ranks" || { echo "FAIL: not 2 ranks"; exit 1; }
# a real run through the wrapper: 2 ranks train the micro model and checkpoint
d=$(mktemp -d /tmp/vl_jobscripts_XXXXXX)
printf 'include: %s\ntrain: {steps: 3, grad_accum: 1}\nrun: {out_dir: %s/out}\n' "$VL_SRCDIR/tests/data/micro.yaml" "$d" > "$d/run.yaml"
out=$(VLTRAIN="$VL_BUILDDIR/src/vltrain" "$VL_SRCDIR/jobscripts/train-mpirun.sh" 2 "$d/run.yaml" 2>&1); rc=$?
ck=$(cat "$d/out/ckpt/latest" 2>/dev/null)
rm -rf "$d"
[ $rc -eq 0 ] && echo "$out" | grep -q "on 2 rank(s)" && echo "$out" | grep -q "^step 3/3" && [ "$ck" = step_0000003.h5 ] \
  || { echo "$out"; echo "FAIL: train-mpirun.sh training run (exit $rc, latest '$ck')"; exit 1; }
echo "job scripts ok"
