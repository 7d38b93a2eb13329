#!/bin/sh
# Runs tests/test_train under mpirun with 2 and 3 ranks (CPU backend).
[ -n "${MPIRUN:-}" ] && command -v "$MPIRUN" >/dev/null 2>&1 || { echo "no mpirun"; exit 77; }
if [ "$(id -u)" = 0 ]; then export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1; fi
export OMPI_MCA_rmaps_base_oversubscribe=1 OMP_NUM_THREADS=1
for n in 2 3; do
  echo "== mpirun -np $n test_train"
  timeout 300 "$MPIRUN" --oversubscribe -np $n "$VL_BUILDDIR/tests/test_train" || { echo "FAIL with $n ranks"; exit 1; }
done
