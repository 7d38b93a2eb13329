#!/bin/sh
# The step line (issue 4 item 1): on rank 0, one line per step with
# step/total, loss, learning rate, gradient norm, tokens/s, s/step, elapsed
# and ETA when the output is a file; a progress bar redrawn in place when
# vltrain owns a terminal (a pty made by script(1)).  One rank, no launcher.
set -u
export OMP_NUM_THREADS=1
dir=$(mktemp -d /tmp/vl_progress_XXXXXX)
trap 'rm -rf "$dir"' EXIT
fail() { echo "FAIL: $*"; exit 1; }
cat > "$dir/run.yaml" <<EOY
include: $VL_SRCDIR/tests/data/micro.yaml
train: {steps: 4, grad_accum: 1, lr: 1.0e-3, eval_samples: 0}
run: {out_dir: $dir/out, save_final: false, resume: false}
EOY
vltrain="$VL_BUILDDIR/src/vltrain"
"$vltrain" "$dir/run.yaml" > "$dir/file.log" 2>&1 || { cat "$dir/file.log"; fail "vltrain"; }
num='[0-9][0-9.e+-]*'
re="^step [1-4]/4  loss $num  lr $num  grad norm $num  [0-9][0-9]* tok/s  $num s/step  .*  elapsed [0-9][0-9]*m[0-9][0-9]s  ETA [0-9][0-9]*m[0-9][0-9]s\$"
[ "$(grep -c "$re" "$dir/file.log")" = 4 ] || { cat "$dir/file.log"; fail "4 complete step lines expected"; }
! grep -q "$(printf '\r')" "$dir/file.log" || fail "carriage returns in a file"
grep "^step 4/4" "$dir/file.log"
command -v script >/dev/null 2>&1 || { echo "SKIP: no script(1) for the terminal part"; exit 77; }
script -qec "$vltrain $dir/run.yaml" /dev/null < /dev/null > "$dir/tty.log" 2>&1 || { cat "$dir/tty.log"; fail "vltrain on a terminal"; }
cr=$(printf '\r')
[ "$(tr "$cr" '\n' < "$dir/tty.log" | grep -c '^\[#*  *\] step [1-3]/4  loss ')" = 3 ] || { cat -A "$dir/tty.log"; fail "no progress bar on a terminal"; }
tr "$cr" '\n' < "$dir/tty.log" | grep -q '^\[####################\] step 4/4  loss .* ETA ' || fail "the bar does not end full"
echo "step lines and progress bar ok"
