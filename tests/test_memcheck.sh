#!/bin/sh
# The start-up report (software versions, rank map) and the memory check:
# vltrain prints the plan and the free memory,
# and a run that does not fit stops before allocating with ONE error from
# rank 0 that says what would help, exit 1.  VL_MEMORY_LIMIT_BYTES (a
# test-only cap on the free memory the check sees) makes the micro model
# "not fit" on any machine.
[ -n "${MPIRUN:-}" ] && command -v "$MPIRUN" >/dev/null 2>&1 || { echo "no mpirun"; exit 77; }
if [ "$(id -u)" = 0 ]; then export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1; fi
export OMPI_MCA_rmaps_base_oversubscribe=1 OMP_NUM_THREADS=1
bin="$VL_BUILDDIR/src/vltrain"
dir=$(mktemp -d /tmp/vl_memcheck_XXXXXX)
trap 'rm -rf "$dir"' EXIT
fail() { echo "FAIL: $*"; exit 1; }
cat > "$dir/run.yaml" <<EOY
include: $VL_SRCDIR/tests/data/micro.yaml
train: {steps: 1, grad_accum: 1, eval_samples: 0}
run: {out_dir: $dir/out, save_final: false}
EOY
# 1. fits: the plan and the free memory are printed, training runs
"$MPIRUN" --oversubscribe -np 2 "$bin" "$dir/run.yaml" > "$dir/ok.out" 2> "$dir/ok.err" || { cat "$dir/ok.err"; fail "run without a cap"; }
grep -q "memory plan per rank" "$dir/ok.out" || fail "no plan printed"
grep -q "  free " "$dir/ok.out" || fail "no free memory printed"
grep -q "step 1/1" "$dir/ok.out" || fail "did not train"
# the start-up report: software versions once, the rank -> host -> device map
[ "$(grep -c '^software: backend cpu' "$dir/ok.out")" -eq 1 ] || fail "no single software line"
grep -q "^rank -> host -> device:" "$dir/ok.out" && grep -q "rank 1  host .* device cpu" "$dir/ok.out" || fail "no rank map"
# 2. a cap below the plan: one error, from rank 0, with advice; nothing trained
VL_MEMORY_LIMIT_BYTES=300000 "$MPIRUN" --oversubscribe -np 2 "$bin" "$dir/run.yaml" > "$dir/no.out" 2> "$dir/no.err"; rc=$?
cat "$dir/no.err"
[ $rc -ne 0 ] || fail "a run that does not fit exited 0"
[ "$(grep -c 'vltrain: error' "$dir/no.err")" -eq 1 ] || fail "expected exactly one error message"
grep -q "does not fit: the memory plan needs" "$dir/no.err" || fail "no plan in the message"
grep -q "train.recompute: true" "$dir/no.err" || fail "no recompute advice"
grep -q "train.optimizer: lean" "$dir/no.err" || fail "no lean advice"
grep -q "max_seq_len" "$dir/no.err" || fail "no sequence-length advice"
# (micro.yaml's one-block tower saves nothing by freezing: no such line)
grep -q 'train.freeze' "$dir/no.err" && fail "vision-freeze advice that saves nothing"
grep -q "capped by VL_MEMORY_LIMIT_BYTES" "$dir/no.out" || fail "the cap is not shown"
grep -q "step 1/" "$dir/no.out" && fail "trained anyway"
# 3. a cap between the unsharded part and the total: more ranks would fit
VL_MEMORY_LIMIT_BYTES=580000 "$MPIRUN" --oversubscribe -np 2 "$bin" "$dir/run.yaml" > "$dir/r.out" 2> "$dir/r.err"; rc=$?
[ $rc -eq 1 ] || { cat "$dir/r.err"; fail "580000 bytes: exit $rc"; }
grep "more ranks" "$dir/r.err"
grep -q "more ranks: ZeRO-1 shards the optimizer state .* [0-9]* ranks of this size would fit" "$dir/r.err" || fail "no more-ranks advice"
# 4. a two-block vision tower: freezing it would save its activations
cat > "$dir/v2.yaml" <<EOY
include: $dir/run.yaml
model: {vision: {depth: 2}}
EOY
VL_MEMORY_LIMIT_BYTES=300000 "$MPIRUN" --oversubscribe -np 1 "$bin" "$dir/v2.yaml" > /dev/null 2> "$dir/v2.err"
grep 'train.freeze' "$dir/v2.err"
grep -q 'train.freeze: "model.visual.\*" (no backward through the vision tower' "$dir/v2.err" || { cat "$dir/v2.err"; fail "no vision-freeze advice"; }
VL_MEMORY_LIMIT_BYTES=abc "$MPIRUN" --oversubscribe -np 1 "$bin" "$dir/run.yaml" > /dev/null 2> "$dir/bad.err" && fail "a bad cap accepted"
grep -q "VL_MEMORY_LIMIT_BYTES=abc is not a number" "$dir/bad.err" || fail "bad cap message"
echo "memory check ok"
