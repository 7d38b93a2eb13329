#!/bin/bash
# train-mpirun.sh NRANKS CONFIG.yaml [vltrain options]: one rank per GPU on
# hosts without Slurm (Open MPI); ranks bind to GPUs by node-local rank.
#   jobscripts/train-mpirun.sh 2 inputs/tiny.yaml
#   HOSTFILE=hosts jobscripts/train-mpirun.sh 16 inputs/example-finetune.yaml
set -uo pipefail
n=${1:?usage: train-mpirun.sh NRANKS CONFIG.yaml [options]}; shift
top=$(cd "$(dirname "$0")/.." && pwd)
vltrain=${VLTRAIN:-$top/build/src/vltrain}
extra=()
[ -n "${HOSTFILE:-}" ] && extra+=(--hostfile "$HOSTFILE")
[ "$(id -u)" = 0 ] && extra+=(--allow-run-as-root)
exec mpirun -np "$n" "${extra[@]}" --bind-to none -x NCCL_NVLS_ENABLE=0 -x OMP_NUM_THREADS \
  "$vltrain" "$@"
