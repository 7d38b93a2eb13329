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
echo "job scripts ok"
