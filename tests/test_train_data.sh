#!/bin/sh
# Training from a dataset.h5 (run.data):
#  1. tests/test_train_data under mpirun -np 2 and -np 3 (equivalence of
#     world sizes, bitwise resume, accuracy, errors: see the .c file);
#  2. vltrain end to end: `mpirun -np 2` with accumulation 1 and `-np 1`
#     with accumulation 2 from the same dataset print the same loss at steps
#     1..3 (a relative run.data resolves against the YAML's folder; the runs
#     start elsewhere), and the validation line has the accuracy; the dry
#     run opens and checks the dataset.
[ -n "${MPIRUN:-}" ] && command -v "$MPIRUN" >/dev/null 2>&1 || { echo "no mpirun"; exit 77; }
if [ "$(id -u)" = 0 ]; then export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1; fi
export OMPI_MCA_rmaps_base_oversubscribe=1 OMP_NUM_THREADS=1
for n in 2 3; do
  echo "== mpirun -np $n test_train_data"
  timeout 300 "$MPIRUN" --oversubscribe -np $n "$VL_BUILDDIR/tests/test_train_data" || { echo "FAIL with $n ranks"; exit 1; }
done
dir=$(mktemp -d /tmp/vl_traindata_XXXXXX)
trap 'rm -rf "$dir"' EXIT
mkdir -p "$dir/exp"
"$VL_BUILDDIR/tests/test_train_data" --write "$dir/exp/data.h5" || { echo "FAIL: writing the dataset"; exit 1; }
for a in 1 2; do
  cat > "$dir/exp/run$a.yaml" <<EOY
include: $VL_SRCDIR/tests/data/micro.yaml
train: {steps: 3, grad_accum: $a, lr: 1.0e-2, eval_samples: 100, seed: 3}
run: {data: data.h5, out_dir: $dir/out$a}
EOY
done
cd / || exit 1
"$VL_BUILDDIR/src/vltrain" --dry-run "$dir/exp/run1.yaml" > "$dir/dry" 2>&1 || { echo "FAIL: dry run"; cat "$dir/dry"; exit 1; }
grep "^data:" "$dir/dry"
grep -q "^data: $dir/exp/data.h5: train split 13 samples" "$dir/dry" || { echo "FAIL: dry run data line"; exit 1; }
"$MPIRUN" --oversubscribe -np 2 "$VL_BUILDDIR/src/vltrain" "$dir/exp/run1.yaml" > "$dir/log2" 2>&1 \
  || { echo "FAIL: 2-rank run"; cat "$dir/log2"; exit 1; }
"$MPIRUN" --oversubscribe -np 1 "$VL_BUILDDIR/src/vltrain" "$dir/exp/run2.yaml" > "$dir/log1" 2>&1 \
  || { echo "FAIL: 1-rank run"; cat "$dir/log1"; exit 1; }
grep "^data:\|^eval" "$dir/log2"
grep -q "^data: $dir/exp/data.h5: 13 training samples" "$dir/log2" || { echo "FAIL: data line"; cat "$dir/log2"; exit 1; }
grep -q "^eval step 3: val loss [0-9.]*, exact-match accuracy [0-9.]*% ([0-9]*/8)" "$dir/log2" \
  || { echo "FAIL: eval line"; exit 1; }
losses() { sed -n 's/^step \([0-9]*\)\/3  loss \([0-9.]*\) .*/\2/p' "$1" | tr '\n' ' '; }
l2=$(losses "$dir/log2"); l1=$(losses "$dir/log1")
echo "vltrain -np 2 x accumulation 1, losses of steps 1..3: $l2"
echo "vltrain -np 1 x accumulation 2, losses of steps 1..3: $l1"
echo "$l2|$l1" | awk -F'|' '{ n = split($1, a, " "); m = split($2, b, " ");
  if (n != 3 || m != 3) exit 1;
  for (i = 1; i <= 3; i++) { d = a[i] - b[i]; if (d < 0) d = -d; if (d > 1e-4) exit 1 } }' \
  || { echo "FAIL: the two runs differ"; exit 1; }
v2=$(grep "^eval step 3" "$dir/log2"); v1=$(grep "^eval step 3" "$dir/log1")
[ "$v2" = "$v1" ] || { echo "FAIL: validation differs: '$v2' vs '$v1'"; exit 1; }
echo "training from a dataset: ok"
