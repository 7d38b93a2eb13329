#!/bin/bash
# jobscripts/train.slurm under a real single-node Slurm (Debian's slurm-wlm):
# the test starts munged, slurmctld and slurmd on localhost with a generated
# key and slurm.conf in a temporary folder (free ports, state there too),
# then
#   1. sbatch train.slurm: 2 tasks launched by srun (PMIx; Open MPI's direct
#      launch), 6 steps, a checkpoint every 3: the job completes with exit 0,
#      both ranks ran, the checkpoint of step 6 is there and named by latest;
#   2. a second job is sent SIGUSR1 as Slurm's --signal does before the time
#      limit (scancel --signal=USR1): every rank checkpoints and exits 75, the
#      script requeues the job, the requeued job (restart 1) resumes from that
#      checkpoint and finishes;
#   3. sbatch scaling-study.slurm: the scaling study over 1 and 2 ranks of
#      the allocation under srun, one results row per run.
# The daemons are stopped at the end whatever happens.  Needs root (slurmd
# runs the job as its owner) and the packages slurmctld, slurmd,
# slurm-client, munge (.ci/run installs them); skips (77) otherwise or when
# the daemons cannot start, saying why.
# The node declares two GPUs (gres, backed by /dev/null and /dev/zero) so the
# script's #SBATCH --gpus-per-node=2 is honoured as written; only
# --cpus-per-task=1 is given at submission, for a 2-core machine.
set -u
skip() { echo "SKIP: $*"; exit 77; }
fail() { echo "FAIL: $*"; exit 1; }
[ "$(id -u)" = 0 ] || skip "needs root to run slurmd"
for c in munged munge slurmctld slurmd sbatch squeue scontrol scancel sinfo srun; do
  command -v $c >/dev/null 2>&1 || skip "$c not installed (Debian: slurmctld slurmd slurm-client munge)"
done
vltrain="$VL_BUILDDIR/src/vltrain"
script="$VL_SRCDIR/jobscripts/train.slurm"
[ -x "$vltrain" ] || fail "no $vltrain"

dir=$(mktemp -d /tmp/vl_slurm_XXXXXX)
chmod 755 "$dir"
pids=()
stop_all() {
  # jobs first (the controller kills their processes), then the daemons
  if [ -n "${SLURM_CONF:-}" ] && [ -n "$(squeue -h 2>/dev/null)" ]; then
    scancel --full $(squeue -h -o %i 2>/dev/null) 2>/dev/null
    for _ in $(seq 40); do [ -z "$(squeue -h 2>/dev/null)" ] && break; sleep 0.5; done
  fi
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
  for p in "${pids[@]}"; do
    for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$p" 2>/dev/null
  done
  rm -rf "$dir"
}
trap stop_all EXIT
trap 'exit 1' INT TERM
show_logs() { for f in "$dir"/*.log "$dir"/munge/*.log; do [ -f "$f" ] && { echo "---- $f"; tail -n 15 "$f"; }; done; }

# ---- munge -----------------------------------------------------------------------
mkdir -m 755 "$dir/munge" "$dir/state" "$dir/spool"
head -c 1024 /dev/urandom > "$dir/munge/munge.key" && chmod 600 "$dir/munge/munge.key"
sock="$dir/munge/munge.sock"
munged -F --force --key-file="$dir/munge/munge.key" --socket="$sock" --pid-file="$dir/munge/munged.pid" \
  --seed-file="$dir/munge/munged.seed" > "$dir/munge/munged.log" 2>&1 &
pids+=($!)
for _ in $(seq 50); do [ -S "$sock" ] && break; sleep 0.1; done
munge -S "$sock" -n 2>/dev/null | unmunge -S "$sock" >/dev/null 2>&1 || { show_logs; skip "munged does not start"; }

# ---- slurm.conf: two free ports -------------------------------------------------
in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
port=0
for _ in $(seq 20); do
  p=$((20000 + RANDOM % 20000))
  in_use $p || in_use $((p + 1)) || { port=$p; break; }
done
[ $port -gt 0 ] || skip "no free port pair"
# the hardware's cores (nproc would follow OMP_NUM_THREADS); at least the 2
# that 2 tasks need, declared over the hardware on a 1-core machine
ncpu=$(getconf _NPROCESSORS_ONLN)
over=""
[ "$ncpu" -ge 2 ] || { ncpu=2; over="SlurmdParameters=config_overrides"; }
cat > "$dir/slurm.conf" <<EOF
ClusterName=vltest
SlurmctldHost=localhost
SlurmctldPort=$port
SlurmdPort=$((port + 1))
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$sock
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
MailProg=/bin/true
ProctrackType=proctrack/pgid
TaskPlugin=task/affinity
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=pmix
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
ReturnToService=2
$over
GresTypes=gpu
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$ncpu Gres=gpu:2 State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF
printf 'NodeName=localhost Name=gpu File=/dev/null\nNodeName=localhost Name=gpu File=/dev/zero\n' > "$dir/gres.conf"
export SLURM_CONF="$dir/slurm.conf"
slurmctld -D -f "$SLURM_CONF" > "$dir/slurmctld.out" 2>&1 &
pids+=($!)
slurmd -D -N localhost -f "$SLURM_CONF" > "$dir/slurmd.out" 2>&1 &
pids+=($!)
state=""
for _ in $(seq 60); do
  state=$(sinfo -h -n localhost -o %T 2>/dev/null)
  [ "$state" = idle ] && break
  sleep 0.5
done
if [ "$state" != idle ]; then
  cat "$dir/slurmctld.out" "$dir/slurmd.out"; show_logs
  skip "slurmctld + slurmd did not bring the node up (state '$state')"
fi
echo "slurm $(sinfo -V | awk '{print $2}') up on localhost, ports $port-$((port + 1))"

# ---- the jobs --------------------------------------------------------------------
export VLTRAIN="$vltrain"
job_state() { scontrol show job "$1" 2>/dev/null | sed -n 's/.*JobState=\([A-Z_]*\).*/\1/p'; }
wait_job_end() { # job, seconds
  local s
  for _ in $(seq $(($2 * 4))); do
    s=$(job_state "$1")
    case "$s" in COMPLETED|FAILED|CANCELLED|TIMEOUT|NODE_FAIL|OUT_OF_MEMORY|BOOT_FAIL|DEADLINE) return 0;; esac
    sleep 0.25
  done
  return 1
}
wait_grep() { # pattern, file, seconds
  for _ in $(seq $(($3 * 10))); do grep -q "$1" "$2" 2>/dev/null && return 0; sleep 0.1; done
  return 1
}
submit() { # config -> job id
  timeout 30 sbatch --parsable --chdir="$dir" --cpus-per-task=1 "$script" "$1"
}

# 1. a short run to the end
cat > "$dir/run1.yaml" <<EOY
include: $VL_SRCDIR/tests/data/micro.yaml
train: {steps: 6, grad_accum: 1, lr: 1.0e-3}
run: {out_dir: $dir/out1, checkpoint_every: 3}
EOY
j1=$(submit "$dir/run1.yaml") || fail "sbatch: $j1"
out1="$dir/vltrain-$j1.out"
wait_job_end "$j1" 60 || { cat "$out1"; show_logs; fail "job $j1 did not end (state $(job_state "$j1"))"; }
cat "$out1"
scontrol show job "$j1" | grep -q "JobState=COMPLETED .*" || fail "job $j1: $(job_state "$j1")"
scontrol show job "$j1" | grep -q "ExitCode=0:0" || fail "job $j1 exit code not 0"
grep -q "on 2 rank(s)" "$out1" || fail "not 2 ranks"
grep -q "rank 1  host" "$out1" || fail "rank 1 missing"
grep -q "step 6/6" "$out1" || fail "did not train 6 steps"
[ -s "$dir/out1/ckpt/step_0000006.h5" ] || fail "no checkpoint of step 6"
[ "$(cat "$dir/out1/ckpt/latest")" = step_0000006.h5 ] || fail "latest: $(cat "$dir/out1/ckpt/latest")"
echo "job $j1: 2 tasks, 6 steps, checkpoint step_0000006.h5, exit 0"

# 2. preempted by SIGUSR1, requeued by the script, resumed
cat > "$dir/run2.yaml" <<EOY
include: $VL_SRCDIR/tests/data/micro.yaml
train: {steps: 100000, grad_accum: 1, lr: 1.0e-3}
run: {out_dir: $dir/out2, checkpoint_every: 0, save_final: true}
EOY
j2=$(submit "$dir/run2.yaml") || fail "sbatch: $j2"
out2="$dir/vltrain-$j2.out"
wait_grep "step 5/" "$out2" 60 || { cat "$out2"; show_logs; fail "job $j2 made no progress"; }
scancel --signal=USR1 "$j2" || fail "scancel --signal=USR1"
wait_grep "stopping at step" "$out2" 30 || { cat "$out2"; fail "no checkpoint on the signal"; }
k=$(sed -n 's/.*stopping at step \([0-9]*\) on signal 10.*/\1/p' "$out2")
[ -n "$k" ] || { cat "$out2"; fail "the stop message does not name SIGUSR1"; }
# Slurm holds a requeued job back (BeginTime, about 2 minutes): while it is
# pending, give it an end (k + 3 steps) and let it start now.
for _ in $(seq 120); do [ "$(job_state "$j2")" = PENDING ] && break; sleep 0.25; done
[ "$(job_state "$j2")" = PENDING ] || { cat "$out2"; show_logs; fail "job $j2 not requeued (state $(job_state "$j2"))"; }
sed -i "s/steps: 100000/steps: $((k + 3))/" "$dir/run2.yaml"
scontrol update JobId="$j2" StartTime=now || fail "scontrol update StartTime"
wait_job_end "$j2" 60 || { cat "$out2"; show_logs; fail "requeued job $j2 did not end (state $(job_state "$j2"))"; }
grep -v '^step' "$out2"
scontrol show job "$j2" | grep -q "JobState=COMPLETED" || fail "job $j2: $(job_state "$j2")"
scontrol show job "$j2" | grep -q "Restarts=1 " || fail "job $j2 was not restarted once"
grep -q "exit code 75" "$out2" || fail "srun did not report exit 75"
grep -q "checkpoint written on signal: requeueing" "$out2" || fail "the script did not requeue"
grep -q "job $j2 restart 1:" "$out2" || fail "no second start"
grep -q "resumed from $dir/out2/ckpt/step_0*$k.h5 at step $k" "$out2" || fail "did not resume from step $k"
grep -q "step $((k + 3))/$((k + 3))" "$out2" || fail "did not finish after the resume"
echo "job $j2: SIGUSR1 at step $k, checkpoint, exit 75, requeued, resumed at step $k, finished at step $((k + 3))"
# 3. the scaling study across the allocation's tasks (scaling-study.slurm):
#    srun launches 1 then 2 ranks inside the job; one row per run
sdir="$dir/study"
cat > "$dir/micro-study.yaml" <<EOY
include: $VL_SRCDIR/tests/data/micro.yaml
EOY
j3=$(VL_TOP="$VL_SRCDIR" STUDY_OUT="$sdir" timeout 30 sbatch --parsable --chdir="$dir" --cpus-per-task=1 \
       --ntasks-per-node=2 --gpus-per-node=2 "$VL_SRCDIR/jobscripts/scaling-study.slurm" \
       "$dir/micro-study.yaml" --mode weak --accum 1 --steps 3) || fail "sbatch scaling-study.slurm: $j3"
out3="$dir/vltrain-scaling-$j3.out"
wait_job_end "$j3" 120 || { cat "$out3"; show_logs; fail "study job $j3 did not end (state $(job_state "$j3"))"; }
cat "$out3"
scontrol show job "$j3" | grep -q "JobState=COMPLETED" || fail "study job $j3: $(job_state "$j3")"
grep -q "rank counts: 1 2" "$sdir/MACHINE" || fail "MACHINE does not name the rank counts 1 2"
grep -q '^weak,1,1,1,1,' "$sdir/results.csv" || fail "no 1-rank row: $(cat "$sdir/results.csv")"
grep -q '^weak,2,1,1,2,' "$sdir/results.csv" || fail "no 2-rank row: $(cat "$sdir/results.csv")"
grep -q "on 2 rank(s)" "$sdir/weak-2/log" || fail "the 2-rank run did not have 2 ranks"
echo "job $j3: scaling study over 1 and 2 ranks under srun"
echo "slurm ok"
