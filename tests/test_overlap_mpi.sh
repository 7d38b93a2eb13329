#!/bin/sh
# test_overlap_mpi.sh: runs tests/test_overlap (train.overlap_grad_reduce)
# under mpirun with 2, 3 and 1 ranks (CPU backend).  Called by `make check`
# with MPIRUN and VL_BUILDDIR set.  Exit 77 (skip) without mpirun, 1 on any
# failure or hang (300 s a run).
MPIRUN=${MPIRUN:-mpirun}
VL_BUILDDIR=${VL_BUILDDIR:-.}
prog=$VL_BUILDDIR/tests/test_overlap

command -v "$MPIRUN" >/dev/null 2>&1 || { echo "SKIP: no mpirun ($MPIRUN)"; exit 77; }
[ -x "$prog" ] || { echo "FAIL: $prog is not built"; exit 1; }

# Open MPI refuses root without being told, and fewer cores than ranks
# without --oversubscribe; other MPIs take neither flag.
flags=
if "$MPIRUN" --version 2>&1 | grep -q "Open MPI"; then
  flags=--oversubscribe
  if [ "$(id -u)" = 0 ]; then
    flags="$flags --allow-run-as-root"
    export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
  fi
fi
export OMP_NUM_THREADS=1

status=0
for n in 2 3 1; do
  echo "== $MPIRUN $flags -np $n $prog"
  # shellcheck disable=SC2086 # $flags is a list of words
  timeout 300 "$MPIRUN" $flags -np "$n" "$prog"
  rc=$?
  if [ "$rc" -eq 124 ]; then
    echo "FAIL: test_overlap on $n ranks did not finish in 300 s"; status=1
  elif [ "$rc" -ne 0 ]; then
    echo "FAIL: test_overlap on $n ranks exited with $rc"; status=1
  fi
done
exit $status
