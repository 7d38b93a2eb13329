#!/bin/sh
# vltrain --dry-run on the 8B preset (and Qwen2-VL 7B) prints the exact parameter count and a
# memory plan and exits 0; on a bad config it exits non-zero with the
# file:line: key: message.
set -u
bin="$VL_BUILDDIR/src/vltrain"
out=$("$bin" --dry-run "$VL_SRCDIR/inputs/qwen3-vl-8b.yaml" 2>&1); rc=$?
echo "$out"
[ $rc -eq 0 ] || { echo "FAIL: dry-run exited $rc"; exit 1; }
echo "$out" | grep -q "total .*8,767,123,696 parameters" || { echo "FAIL: no exact total"; exit 1; }
echo "$out" | grep -q "memory plan per rank" || { echo "FAIL: no memory plan"; exit 1; }
# the Qwen2-VL family: the 7B preset's published total
out=$("$bin" --dry-run "$VL_SRCDIR/inputs/qwen2-vl-7b.yaml" 2>&1); rc=$?
echo "$out"
[ $rc -eq 0 ] || { echo "FAIL: qwen2-vl dry-run exited $rc"; exit 1; }
echo "$out" | grep -q "model: qwen2-vl" || { echo "FAIL: qwen2-vl family not shown"; exit 1; }
echo "$out" | grep -q "total .*8,291,375,616 parameters" || { echo "FAIL: no exact qwen2-vl total"; exit 1; }
bad=$(mktemp /tmp/vl_bad_XXXXXX.yaml)
printf 'include: %s\nmodel:\n  text:\n    hidden_size: many\n' "$VL_SRCDIR/inputs/tiny.yaml" > "$bad"
out=$("$bin" --dry-run "$bad" 2>&1); rc=$?
rm -f "$bad"
echo "$out"
[ $rc -ne 0 ] || { echo "FAIL: bad config accepted"; exit 1; }
echo "$out" | grep -q ":4: model.text.hidden_size:" || { echo "FAIL: message lacks file:line: key"; exit 1; }
# train.global_batch: grad_accum follows from the ranks; a batch that does not divide is an error
gb=$(mktemp /tmp/vl_gb_XXXXXX.yaml)
printf 'include: %s\ntrain: {micro_batch: 2, global_batch: 6}\nrun: {data: ""}\n' "$VL_SRCDIR/inputs/tiny.yaml" > "$gb"
out=$("$bin" --dry-run "$gb" 2>&1); rc=$?
echo "$out" | grep "global batch"
[ $rc -eq 0 ] && echo "$out" | grep -q "global batch: 1 ranks x 2 micro-batch x 3 accumulation = 6 samples" \
  || { rm -f "$gb"; echo "$out"; echo "FAIL: global_batch 6 = 1 x 2 x 3"; exit 1; }
printf 'include: %s\ntrain: {micro_batch: 4, global_batch: 6}\nrun: {data: ""}\n' "$VL_SRCDIR/inputs/tiny.yaml" > "$gb"
out=$("$bin" --dry-run "$gb" 2>&1); rc=$?
rm -f "$gb"
echo "$out" | tail -n 2
[ $rc -ne 0 ] && echo "$out" | grep -q "train.global_batch 6 does not divide into 1 rank(s) x micro_batch 4" \
  || { echo "FAIL: a global batch that does not divide was accepted or not named"; exit 1; }
# the benchmark workload's experiment file (tests/bench/bench_8b.sh, scaling-study.sh)
b8=$(mktemp /tmp/vl_b8_XXXXXX.yaml)
printf 'include: %s\nrun: {backend: cpu}\n' "$VL_SRCDIR/inputs/bench-8b.yaml" > "$b8"
out=$("$bin" --dry-run "$b8" 2>&1); rc=$?
rm -f "$b8"
[ $rc -eq 0 ] && echo "$out" | grep -q "8,767,123,696" && echo "$out" | grep -q "1 micro-batch x 8 accumulation" \
  || { echo "$out"; echo "FAIL: inputs/bench-8b.yaml"; exit 1; }
echo "dry-run ok"
