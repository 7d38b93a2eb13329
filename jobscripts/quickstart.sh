#!/bin/bash
# jobscripts/quickstart.sh [--workdir DIR] [--count N] [--val-count M]
#
# The README's first command.  On a fresh Debian or Ubuntu machine it
#  1. installs what the build needs (apt-get; sudo when not root),
#  2. builds vltrain in build/ (with CUDA when the toolkit is there),
#  3. draws the demo dataset: N images of tissue with 1-3 instruments and a
#     question each (vldemo), and turns it into dataset.h5 with M samples
#     held out for validation (vlprep, the tiny model's own tokenizer),
#  4. trains the tiny model (inputs/tiny.yaml) under mpirun -np 2, on the GPU
#     when there is one, else on the CPU, for a few minutes: the loss falls
#     and the validation answers' accuracy rises well above chance;
#  5. halfway, interrupts the run as Slurm does before a time limit (SIGUSR1:
#     every rank finishes its step, writes a checkpoint, exits 75), and runs
#     the same command again, which resumes from that checkpoint.
# Checkpoints, statistics (gradstats.h5) and logs go to DIR (default
# build/quickstart).  The last line reads "accuracy N% (chance M%)".
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
work="$top/build/quickstart"
count=6000
val=200
while [ $# -gt 0 ]; do
  case "$1" in
    --workdir) work=$2; shift 2 ;;
    --count) count=$2; shift 2 ;;
    --val-count) val=$2; shift 2 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "quickstart: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
start=$(date +%s)
say() { printf '\n== %s\n' "$*"; }

# ---- 1. what the build needs ---------------------------------------------------
pkgs="autoconf automake libtool pkg-config make gcc libopenmpi-dev openmpi-bin
      libhdf5-openmpi-dev libyaml-dev libcjson-dev
      libpcre2-dev libutf8proc-dev libpng-dev libjpeg62-turbo-dev"
if command -v dpkg >/dev/null && ! dpkg -s $pkgs >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  say "installing $(echo $pkgs)"
  # a machine that has the libraries by other means (a module system, an
  # unpacked prefix) goes on: configure names anything still missing
  { $SUDO apt-get update -qq && $SUDO env DEBIAN_FRONTEND=noninteractive \
      apt-get install -y -qq --no-install-recommends $pkgs >/dev/null; } \
    || echo "quickstart: apt-get could not install them; trying the build with what is there"
fi
if [ "$(id -u)" = 0 ]; then export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1; fi
export OMPI_MCA_rmaps_base_oversubscribe=1

# ---- 2. build --------------------------------------------------------------------
say "building in $top/build"
cd "$top"
[ -x configure ] || autoreconf -fi >/dev/null 2>&1
mkdir -p build
cd build
[ -f Makefile ] || ../configure >/dev/null
make -j"$(nproc)" >/dev/null
bin="$top/build/src"
gpus=0
if grep -q -- "-DVL_HAVE_CUDA=1" Makefile && command -v nvidia-smi >/dev/null; then
  gpus=$(nvidia-smi -L 2>/dev/null | grep -c "^GPU" || true)
fi
if [ "$gpus" -gt 0 ]; then
  device="the GPU ($gpus visible)"
  export OMP_NUM_THREADS=1
else
  device="the CPU"
  cores=$(nproc)
  export OMP_NUM_THREADS=$(( cores / 2 > 0 ? cores / 2 : 1 ))
fi

# ---- 3. data -------------------------------------------------------------------
mkdir -p "$work"
work=$(cd "$work" && pwd)
say "drawing $count demo scenes into $work/demo"
rm -rf "$work/demo"
"$bin/vldemo" --out "$work/demo" --count "$count" --seed 1 | tee "$work/vldemo.log"
chance=$(sed -n 's/.*chance level \([0-9.]*\)%.*/\1/p' "$work/vldemo.log")
say "vlprep: $work/demo/demo.jsonl -> $work/demo.h5 ($val samples for validation)"
"$bin/vlprep" --model "$top/inputs/tiny.yaml" --input "$work/demo/demo.jsonl" \
  --output "$work/demo.h5" --val-count "$val" 2>&1 | tr '\r' '\n' | grep -v '^$' | tail -n 4

# ---- 4, 5. train, interrupt, resume ---------------------------------------------------
cfg="$work/quickstart.yaml"
cat > "$cfg" <<EOY
# made by jobscripts/quickstart.sh: the tiny model on the demo dataset
include: $top/inputs/tiny.yaml
run:
  data: $work/demo.h5
  out_dir: $work/run
  allow_shared_gpu: true
  resume: true
EOY
rm -rf "$work/run"
steps=$(sed -n 's/^ *steps: *\([0-9]*\).*/\1/p' "$top/inputs/tiny.yaml" | head -n 1)
half=$(( steps / 2 ))
show=$(( steps / 15 > 0 ? steps / 15 : 1 ))
# every `show`-th step line, the evaluations, checkpoints and messages
filter() {
  tr '\r' '\n' | awk -v k="$show" '
    /^step [0-9]+\// { split($2, a, "/"); if (a[1] % k == 0 || a[1] == a[2]) { print; fflush() } next }
    /^\[/ { next }
    /^-----|^Primary job|^a non-zero exit|^mpirun|^the job to be terminated|^  Process name|^  Exit code/ { next }
    NF { print; fflush() }'
}
# On the GPU each rank runs a launch thread and a host producer: leave the
# ranks unbound (Open MPI binds two ranks to one core each by default)
bind=(); [ "$gpus" -gt 0 ] && bind=(--bind-to none)
train_cmd=(mpirun -np 2 "${bind[@]}" "$bin/vltrain" "$cfg")
say "training the tiny model on $device: mpirun -np 2 vltrain $cfg ($steps steps; interrupted near step $half)"
"${train_cmd[@]}" > "$work/train1.log" 2>&1 &
job=$!
( tail -n +1 -f "$work/train1.log" --pid=$job 2>/dev/null | filter ) &
shower=$!
# interrupt once the run passes the halfway step, as Slurm's --signal would
until grep -q "^step $half/" "$work/train1.log" 2>/dev/null || ! kill -0 $job 2>/dev/null; do sleep 0.2; done
kill -USR1 $job 2>/dev/null || true # mpirun forwards it to every rank
rc=0
wait $job || rc=$?
wait $shower 2>/dev/null || true
if [ $rc -eq 75 ]; then
  say "interrupted with a checkpoint (exit 75); the same command again resumes"
elif [ $rc -ne 0 ]; then
  echo "quickstart: training failed (exit $rc); the log is $work/train1.log" >&2
  tail -n 20 "$work/train1.log" >&2
  exit $rc
else
  say "the run finished before the interruption arrived; the same command again finds its last checkpoint"
fi
rc=0
"${train_cmd[@]}" > "$work/train2.log" 2>&1 || rc=$?
filter < "$work/train2.log"
if [ $rc -ne 0 ]; then
  echo "quickstart: the resumed run failed (exit $rc); the log is $work/train2.log" >&2
  exit $rc
fi

# ---- the result ------------------------------------------------------------------------
acc=$(cat "$work/train1.log" "$work/train2.log" | tr '\r' '\n' |
      sed -n 's/.*exact-match accuracy \([0-9.]*\)%.*/\1/p' | tail -n 1)
if [ -z "$acc" ]; then
  echo "quickstart: the trainer printed no validation accuracy (see $work/train2.log)" >&2
  exit 1
fi
secs=$(( $(date +%s) - start ))
say "done in $((secs / 60))m$((secs % 60))s on $device; checkpoints, statistics and logs in $work"
echo "accuracy $acc% (chance $chance%)"
