#!/bin/sh
# The demo data generator and the tiny tokenizer: vldemo with the same seed
# writes the same bytes and with another seed other ones; the records parse,
# the images decode, the answers agree with the pixels and the texts
# round-trip through inputs/tiny/tokenizer.json (tests/test_demo); and the
# committed tokenizer is exactly what `make tiny-tokenizer` makes (the same
# commands as Makefile.am's tiny-tokenizer rule).
set -u
b="$VL_BUILDDIR"
tmp=$(mktemp -d /tmp/vl_demo_XXXXXX)
trap 'rm -rf "$tmp"' EXIT
fail() { echo "FAIL: $*"; exit 1; }
"$b/src/vldemo" --out "$tmp/a" --count 300 --seed 7 || fail "vldemo exited $?"
"$b/src/vldemo" --out "$tmp/b" --count 300 --seed 7 >/dev/null || fail "vldemo (again) exited $?"
diff -r "$tmp/a" "$tmp/b" >/dev/null || fail "the same seed gave different files"
"$b/src/vldemo" --out "$tmp/c" --count 300 --seed 8 >/dev/null || fail "vldemo --seed 8 exited $?"
cmp -s "$tmp/a/demo.jsonl" "$tmp/c/demo.jsonl" && fail "another seed gave the same records"
cmp -s "$tmp/a/img/000000.png" "$tmp/c/img/000000.png" && fail "another seed gave the same image"
[ "$(wc -l < "$tmp/a/demo.jsonl")" -eq 300 ] || fail "not 300 records"
"$b/tests/test_demo" "$tmp/a/demo.jsonl" 64 64 || fail "64x64 records"
"$b/src/vldemo" --out "$tmp/d" --count 40 --val-count 20 --seed 3 --size 96x80 || fail "vldemo --val-count exited $?"
[ "$(wc -l < "$tmp/d/train.jsonl")" -eq 40 ] && [ "$(wc -l < "$tmp/d/val.jsonl")" -eq 20 ] || fail "train/val counts"
"$b/tests/test_demo" "$tmp/d/val.jsonl" 96 80 || fail "96x80 records"
"$b/src/vldemo" --out "$tmp/bad" --count 0 2>/dev/null && fail "--count 0 accepted"
"$b/src/vldemo" --out "$tmp/t" --count 2000 --seed 1 >/dev/null || fail "vldemo for the tokenizer corpus"
"$b/src/vltoken-train" --input "$tmp/t/demo.jsonl" --output "$tmp/tokenizer.json" || fail "vltoken-train exited $?"
cmp "$tmp/tokenizer.json" "$VL_SRCDIR/inputs/tiny/tokenizer.json" || fail "inputs/tiny/tokenizer.json is not what make tiny-tokenizer makes"
echo "demo ok"
