#!/bin/sh
# Prints "N passed, N failed, N skipped" from the automake .trs files under
# the build directory $1 (default .).  XFAIL counts as passed, XPASS and
# ERROR as failed.
dir=${1:-.}
find "$dir" -name '*.trs' -exec grep -h '^:test-result:' {} + 2>/dev/null |
awk '{ r=$2; if (r=="PASS"||r=="XFAIL") p++; else if (r=="SKIP") s++; else f++ }
     END { printf "%d passed, %d failed, %d skipped\n", p, f, s }'
