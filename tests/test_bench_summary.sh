#!/bin/sh
# tests/bench/bench_summary.sh on the lines of a real run (2xH200, ZeRO-1,
# accumulation 2, tests/bench/results/bench_8b.h200x2-cudnn.summary.txt):
# the ratio to the peer is taken on vltrain's step time over the
# accumulation (the peer's per_micro_s includes its optimizer step), not on
# the forward + backward time alone (which gave 1.43x instead of 1.26x).
dir=$(mktemp -d /tmp/vl_benchsum_XXXXXX)
trap 'rm -rf "$dir"' EXIT
fail() { echo "FAIL: $*"; exit 1; }
S="$VL_SRCDIR/tests/bench/bench_summary.sh"
cat > "$dir/vltrain.log" <<'EOL'
step 1/3  loss 12.7284  lr 1.000e-05  grad norm 1.742e+01  6776 tok/s  2.853 s/step  (0.847 s/micro-batch, optimizer 0.077 s, peak 109.2 GiB)  elapsed 0m06s  ETA 0m06s
step 3/3  loss 11.7446  lr 2.500e-06  grad norm 1.152e+01  12383 tok/s  0.937 s/step  (0.414 s/micro-batch, optimizer 0.109 s, peak 109.2 GiB)  elapsed 0m06s  ETA 0m00s
EOL
cat > "$dir/peer.log" <<'EOL'
{"mode": "full", "world": 2, "layers": 36, "seq": 2902, "vision_patches": 8960, "params": 8767123696, "trainable": 8767123696, "ckpt": 0, "accum": 2, "step_s": 1.184, "per_micro_s": 0.592, "tokens_per_s": 9802.5, "peak_gib": 118.5, "loss": 10.3483304977417}
EOL
out=$(sh "$S" "$dir/vltrain.log" 2 "$dir/peer.log") || fail "bench_summary.sh: $out"
echo "$out"
echo "$out" | grep -q "^vltrain: 0.414 s/micro-batch forward+backward, 0.937 s/step, 0.46[89] s/micro-batch with the optimizer (step / 2), optimizer 0.109 s" \
  || fail "the vltrain figures (last step line)"
echo "$out" | grep -q "MFU 47.3% (forward+backward) 41.8% (step), peak 109.2 GiB" || fail "MFU or peak"
echo "$out" | grep -q "= 1.26x (vltrain faster)$" || fail "the ratio is not peer per_micro_s over vltrain step / accumulation"
# a log without a step line is an error, not a figure
echo "no steps here" > "$dir/empty.log"
if sh "$S" "$dir/empty.log" 2 > "$dir/o" 2>&1; then fail "a log without step lines gave figures: $(cat "$dir/o")"; fi
echo "bench summary ok"
