#!/bin/sh
# The user's path of doc/USER-PATH.md on the tiny Qwen3-VL: a model folder
# (vlckpt init) -> [vlprep JSONL -> dataset.h5, when vlprep and the real
# tokenizer are there] -> mpirun -np 2 vltrain with model.path -> vlckpt
# export -> the export loads back as the checkpoint rounded to bf16, with the
# model folder's tokenizer files carried over.
[ -n "${MPIRUN:-}" ] && command -v "$MPIRUN" >/dev/null 2>&1 || { echo "no mpirun"; exit 77; }
if [ "$(id -u)" = 0 ]; then export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1; fi
export OMPI_MCA_rmaps_base_oversubscribe=1 OMP_NUM_THREADS=1
B=$VL_BUILDDIR/src
dir=$(mktemp -d /tmp/vl_userpath_XXXXXX)
trap 'rm -rf "$dir"' EXIT
fail() { echo "FAIL: $*"; exit 1; }
cd "$dir" || exit 1

# 1. a model folder: the tiny preset with random weights, and a tokenizer
"$B/vlckpt" init "$VL_SRCDIR/inputs/tiny.yaml" tiny-qwen3-vl > log0 2>&1 || { cat log0; fail "vlckpt init"; }
# (the tiny preset's own tokenizer; the Qwen2-VL folder below takes the real one)
tok=$VL_SRCDIR/inputs/tiny/tokenizer.json
qtok=$VL_BUILDDIR/tests/data/qwen3-tokenizer.json
cp "$tok" tiny-qwen3-vl/tokenizer.json
echo '{"min_pixels": 3136, "max_pixels": 50176, "patch_size": 16, "merge_size": 2}' > tiny-qwen3-vl/preprocessor_config.json

# 2. data: vlprep when the merged tree has it, else vltrain's generated samples
data=""
if [ -x "$B/vlprep" ] && [ -f "$tok" ]; then
  img=$VL_SRCDIR/tests/data/images
  : > train.jsonl
  for i in 1 2 3 4 5 6 7 8; do
    echo "{\"messages\": [{\"role\": \"user\", \"content\": \"<image>What is in the picture?\"}, {\"role\": \"assistant\", \"content\": \"A test image number $i.\"}], \"images\": [\"$img/rgb8.png\"]}" >> train.jsonl
  done
  "$B/vlprep" --model tiny-qwen3-vl --input train.jsonl --output train.h5 --val-count 2 --quiet > logp 2>&1 ||
    { cat logp; fail "vlprep"; }
  data="data: $dir/train.h5, "
  echo "vlprep: train.h5 written"
else
  echo "vlprep not in this tree (or no tokenizer): generated samples"
fi

# 3. fine-tune on 2 ranks from the folder
cat > finetune.yaml <<EOY
model: {path: $dir/tiny-qwen3-vl}
train: {steps: 3, micro_batch: 1, grad_accum: 1, lr: 1.0e-3, max_seq_len: 256, max_vision_patches: 256,
        stats_every: 0, eval_samples: 0}
run: {${data}out_dir: $dir/run, backend: cpu}
EOY
"$MPIRUN" --oversubscribe -np 2 "$B/vltrain" finetune.yaml > log1 2>&1 || { cat log1; fail "vltrain"; }
grep -q "step 3/3" log1 || { cat log1; fail "training did not finish"; }
ck=$dir/run/ckpt/$(cat run/ckpt/latest)

# 4. export, and check it
"$B/vlckpt" inspect "$ck" > insp 2>&1 || { cat insp; fail "inspect"; }
"$B/vlckpt" export "$ck" tiny-qwen3-vl-ft > log2 2>&1 || { cat log2; fail "export"; }
for f in config.json model.safetensors tokenizer.json preprocessor_config.json generation_config.json; do
  [ -f tiny-qwen3-vl-ft/$f ] || fail "export lacks $f"
done
# generation stops at the exported tokenizer's own end-of-turn ids (the tiny
# tokenizer's, read here from its added_tokens, not Qwen's 151645/151643)
tid() { awk -v want="\"$1\"" '/"id"/ { gsub(/[^0-9]/, "", $0); id = $0 } index($0, want) && /"content"/ { print id; exit }' \
  tiny-qwen3-vl-ft/tokenizer.json; }
eot=$(tid '<|endoftext|>'); eos=$(tid '<|im_end|>')
[ -n "$eot" ] && [ -n "$eos" ] || fail "the tiny tokenizer lacks <|endoftext|> or <|im_end|>"
tr -d ' \n' < tiny-qwen3-vl-ft/generation_config.json | grep -q "\"eos_token_id\":\[$eos,$eot\]" \
  || { cat tiny-qwen3-vl-ft/generation_config.json; fail "generation_config eos is not [$eos, $eot]"; }
tr -d ' \n' < tiny-qwen3-vl-ft/generation_config.json | grep -q "\"pad_token_id\":$eot" || fail "pad id"
cmp -s tiny-qwen3-vl/tokenizer.json tiny-qwen3-vl-ft/tokenizer.json || fail "tokenizer.json not carried"
"$VL_BUILDDIR/tests/vlckpt_util" compare "$ck" tiny-qwen3-vl-ft bf16 || fail "export != checkpoint"

# 5. the same path for the tiny Qwen2-VL (doc/USER-PATH.md's configuration)
cat > tiny-qwen2-vl.yaml <<'EOY'
model:
  family: qwen2-vl
  text: {vocab_size: 151936, hidden_size: 32, intermediate_size: 64, num_hidden_layers: 2,
         num_attention_heads: 4, num_key_value_heads: 2, head_dim: 8, rope_theta: 1000000,
         mrope_section: [1, 1, 2], mrope_interleaved: false, attention_bias: true,
         tie_word_embeddings: true}
  vision: {depth: 2, hidden_size: 32, intermediate_size: 128, num_heads: 2, patch_size: 14,
           temporal_patch_size: 2, spatial_merge_size: 2, out_hidden_size: 32,
           hidden_act: quick_gelu}
  tokens: {image_token_id: 151655, video_token_id: 151656, vision_start_token_id: 151652,
           vision_end_token_id: 151653}
EOY
"$B/vlckpt" init tiny-qwen2-vl.yaml tiny-qwen2-vl > log3 2>&1 || { cat log3; fail "vlckpt init qwen2-vl"; }
if [ -f "$qtok" ]; then cp "$qtok" tiny-qwen2-vl/tokenizer.json
else echo '{"note": "stand-in: the real tokenizer.json was not fetched"}' > tiny-qwen2-vl/tokenizer.json; fi
data2=""
if [ -n "$data" ] && [ -f "$qtok" ]; then
  "$B/vlprep" --model tiny-qwen2-vl --input train.jsonl --output train2.h5 --val-count 2 --quiet > logp2 2>&1 ||
    { cat logp2; fail "vlprep qwen2-vl"; }
  data2="data: $dir/train2.h5, "
fi
sed "s#tiny-qwen3-vl#tiny-qwen2-vl#; s#$dir/run#$dir/run2#; s#${data:-@@none@@}#${data2}#" finetune.yaml > finetune2.yaml
"$MPIRUN" --oversubscribe -np 2 "$B/vltrain" finetune2.yaml > log4 2>&1 || { cat log4; fail "vltrain qwen2-vl"; }
ck2=$dir/run2/ckpt/$(cat run2/ckpt/latest)
"$B/vlckpt" export "$ck2" tiny-qwen2-vl-ft > log5 2>&1 || { cat log5; fail "export qwen2-vl"; }
grep -q '"model_type":.*"qwen2_vl"' tiny-qwen2-vl-ft/config.json || fail "qwen2-vl config.json"
"$VL_BUILDDIR/tests/vlckpt_util" compare "$ck2" tiny-qwen2-vl-ft bf16 || fail "qwen2-vl export != checkpoint"
echo "user path ok (qwen3-vl and qwen2-vl)"
