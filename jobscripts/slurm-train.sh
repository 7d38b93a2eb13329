#!/bin/bash
# Slurm batch script: one rank per GPU, restarts itself after preemption.
#   sbatch jobscripts/slurm-train.sh inputs/example-finetune.yaml
# Five minutes before the time limit Slurm sends SIGUSR1 to every rank;
# vltrain finishes the step, writes a checkpoint and exits 75, and the job
# requeues itself; the next start resumes from OUT/ckpt/latest
# (run.resume: true).  A preemption by the scheduler (SIGTERM) does the same.
#SBATCH --job-name=vltrain
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=2
#SBATCH --gpus-per-node=2
#SBATCH --cpus-per-task=8
#SBATCH --time=24:00:00
#SBATCH --signal=USR1@300
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=vltrain-%j.out
set -uo pipefail
config=${1:?usage: sbatch slurm-train.sh CONFIG.yaml}
vltrain=${VLTRAIN:-${SLURM_SUBMIT_DIR:-.}/build/src/vltrain}
export NCCL_NVLS_ENABLE=0 OMP_NUM_THREADS=${SLURM_CPUS_PER_TASK:-8}
echo "$(date -Is) job ${SLURM_JOB_ID:-?} restart ${SLURM_RESTART_COUNT:-0}: $vltrain $config"
srun --kill-on-bad-exit=1 --cpu-bind=cores "$vltrain" "$config"
rc=$?
if [ $rc -eq 75 ]; then
  echo "$(date -Is) checkpoint written on signal: requeueing"
  scontrol requeue "$SLURM_JOB_ID"
fi
exit $rc
