#!/bin/sh
# gradstats.h5 can be read while training runs (issue 4 item 4): a separate
# process opens it with HDF5's default file access (as h5py or h5ls would)
# during a 2-rank run and finds the flushed rows; after SIGUSR1 stops the
# run, it finds one row per step.
[ -n "${MPIRUN:-}" ] && command -v "$MPIRUN" >/dev/null 2>&1 || { echo "no mpirun"; exit 77; }
if [ "$(id -u)" = 0 ]; then export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1; fi
export OMPI_MCA_rmaps_base_oversubscribe=1 OMP_NUM_THREADS=1
dir=$(mktemp -d /tmp/vl_statslive_XXXXXX)
job=
trap '[ -n "$job" ] && kill $job 2>/dev/null; rm -rf "$dir"' EXIT
fail() { echo "FAIL: $*"; exit 1; }
cat > "$dir/run.yaml" <<EOY
include: $VL_SRCDIR/tests/data/micro.yaml
train: {steps: 100000, grad_accum: 1, lr: 1.0e-3, stats_every: 1, eval_samples: 0}
run: {out_dir: $dir/out, resume: false}
EOY
"$MPIRUN" --oversubscribe -np 2 "$VL_BUILDDIR/src/vltrain" "$dir/run.yaml" > "$dir/log" 2>&1 &
job=$!
i=0
until grep -q "^step 40/" "$dir/log" 2>/dev/null; do
  i=$((i + 1)); [ $i -gt 600 ] && { cat "$dir/log"; fail "no progress"; }
  sleep 0.1
done
live=$("$VL_BUILDDIR/tests/stats_rows" "$dir/out/gradstats.h5" 2>&1) || fail "read while running: $live"
kill -0 $job 2>/dev/null || fail "the run ended before the read"
echo "while running: $live"
rows=$(echo "$live" | sed -n 's/^rows \([0-9]*\) last_step \([0-9]*\) .*/\1/p')
st=$(echo "$live" | sed -n 's/^rows \([0-9]*\) last_step \([0-9]*\) .*/\2/p')
[ -n "$rows" ] && [ "$rows" -ge 36 ] && [ "$st" = "$rows" ] || fail "rows $rows, last step $st"
pid=$(pgrep -P $job -f "src/vltrain $dir/run.yaml" | tail -n 1)
[ -n "$pid" ] || fail "no rank process"
kill -USR1 "$pid"
wait $job; rc=$?; job=
[ $rc -eq 75 ] || { tail -n 5 "$dir/log"; fail "exit $rc, expected 75"; }
k=$(sed -n 's/.*stopping at step \([0-9]*\) .*/\1/p' "$dir/log")
end=$("$VL_BUILDDIR/tests/stats_rows" "$dir/out/gradstats.h5") || fail "read after the run"
echo "after the stop at step $k: $end"
echo "$end" | grep -q "^rows $k last_step $k " || fail "expected $k rows ending at step $k"
# the recorded loss of that step, as printed on its step line: read from the
# finished file (a read during a write is not SWMR: it may see a row's value
# before it is complete, so values are compared after the stop)
row=$("$VL_BUILDDIR/tests/stats_rows" "$dir/out/gradstats.h5" "$st") || fail "row $st"
echo "$row" | grep -q "last_step $st " || fail "row $st holds: $row"
grep -q "^step $st/.*loss $(printf %.4f "$(echo "$row" | sed -n 's/.*last_loss //p')")" "$dir/log" \
  || fail "the recorded loss of step $st ($row) differs from its step line"
echo "statistics readable while running ok"
