#!/bin/sh
# A rank killed with SIGKILL while a checkpoint is being written leaves the
# previous checkpoint intact and named by ckpt/latest, and the rerun resumes
# from it and trains exactly like an uninterrupted run.  The kill is placed
# deterministically by the test hook of src/ckpt.h,
# VL_TEST_CKPT_KILL_AT=STEP:RANK:POINT, in four places: rank 1 half-way
# through the tensors; rank 1 after the flush, before the close; rank 0 after
# the rename of the file, before latest is written; rank 0 with latest.tmp
# written, not yet renamed.  2 ranks under mpirun, a checkpoint every 2 steps,
# run.resume: false: the reruns resume because of vltrain --resume, and a run
# without it starts afresh.
[ -n "${MPIRUN:-}" ] && command -v "$MPIRUN" >/dev/null 2>&1 || { echo "no mpirun"; exit 77; }
if [ "$(id -u)" = 0 ]; then export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1; fi
export OMPI_MCA_rmaps_base_oversubscribe=1 OMP_NUM_THREADS=1
dir=$(mktemp -d /tmp/vl_ckptkill_XXXXXX)
trap 'rm -rf "$dir"' EXIT
fail() { echo "FAIL: $*"; exit 1; }
run() { # name [vltrain options] -> log in $dir/NAME.log, exit status
  n=$1; shift
  cat > "$dir/$n.yaml" <<EOY
include: $VL_SRCDIR/tests/data/micro.yaml
train: {steps: 8, grad_accum: 1, lr: 1.0e-3}
run: {out_dir: $dir/$n, checkpoint_every: 2, keep_checkpoints: 3, resume: false}
EOY
  timeout 120 "$MPIRUN" --oversubscribe -np 2 "$VL_BUILDDIR/src/vltrain" "$@" "$dir/$n.yaml" > "$dir/$n.log" 2>&1
}
# the step lines without timings: step, loss, learning rate, gradient norm
steps() { sed -n 's/^\(step [0-9]*\/[0-9]*  loss [^ ]*  lr [^ ]*  grad norm [^ ]*\).*/\1/p' "$1"; }

run ref || { cat "$dir/ref.log"; fail "the reference run failed"; }
[ "$(steps "$dir/ref.log" | wc -l)" = 8 ] || fail "the reference run printed $(steps "$dir/ref.log" | wc -l) steps"

check() { # name, kill spec, previous step, 1 if the new file must be complete
  name=$1 spec=$2 prev=$3 step=${2%%:*}
  VL_TEST_CKPT_KILL_AT=$spec run "$name"
  rc=$?
  [ $rc -ne 0 ] || { cat "$dir/$name.log"; fail "$spec: the run was not stopped"; }
  grep -q "VL_TEST_CKPT_KILL_AT: rank .* kills itself" "$dir/$name.log" || { cat "$dir/$name.log"; fail "$spec: the hook did not fire"; }
  ck="$dir/$name/ckpt"
  latest=$(cat "$ck/latest")
  [ "$latest" = "$(printf 'step_%07d.h5' "$prev")" ] || fail "$spec: latest names '$latest', expected step $prev"
  if [ "$4" = 1 ]; then
    [ -f "$ck/$(printf 'step_%07d.h5' "$step")" ] || fail "$spec: the renamed file is missing"
  else
    [ ! -e "$ck/$(printf 'step_%07d.h5' "$step")" ] || fail "$spec: an incomplete checkpoint carries the final name"
    [ -f "$ck/$(printf 'step_%07d.h5' "$step").tmp" ] || fail "$spec: no temporary file: killed elsewhere?"
  fi
  # stale files: a temporary file of an earlier unfinished write goes, others stay
  touch "$ck/step_0000001.h5.tmp" "$ck/step_0000001.h5.bak" "$ck/notes.txt"
  # the rerun (no hook; --resume over run.resume: false) resumes from the
  # previous checkpoint and trains like the reference
  run "$name" --resume || { cat "$dir/$name.log"; fail "$spec: the rerun failed"; }
  grep -q "resumed from $ck/$latest at step $prev\$" "$dir/$name.log" || { cat "$dir/$name.log"; fail "$spec: did not resume from step $prev"; }
  steps "$dir/ref.log" | tail -n $((8 - prev)) > "$dir/want"
  steps "$dir/$name.log" > "$dir/got"
  cmp -s "$dir/want" "$dir/got" || { diff "$dir/want" "$dir/got"; fail "$spec: the resumed steps differ from the uninterrupted run"; }
  [ "$(cat "$ck/latest")" = step_0000008.h5 ] || fail "$spec: latest after the rerun: $(cat "$ck/latest")"
  [ "$(cd "$ck" && echo step_*.h5)" = "step_0000004.h5 step_0000006.h5 step_0000008.h5" ] \
    || fail "$spec: keep_checkpoints 3 left: $(ls "$ck")"
  [ ! -e "$ck/step_0000001.h5.tmp" ] && [ -e "$ck/step_0000001.h5.bak" ] && [ -e "$ck/notes.txt" ] \
    || fail "$spec: cleaning: $(ls "$ck")"
  echo "killed at $spec: latest still named step $prev; resumed there, steps $((prev + 1))-8 identical to the uninterrupted run"
}
check tensors 4:1:tensors 2 0
check flush 6:1:flush 4 0
check rename 4:0:rename 2 1
check latest 6:0:latest 4 1
# without --resume (run.resume: false) the checkpoints there are not used
run ref || fail "the second reference run"
! grep -q resumed "$dir/ref.log" && [ "$(steps "$dir/ref.log" | wc -l)" = 8 ] || fail "run.resume: false resumed"
echo "checkpoint kill ok"
