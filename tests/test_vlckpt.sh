#!/bin/sh
# vlckpt and Hugging Face folders, end to end on the micro model:
# train 3 steps on 2 ranks -> inspect -> export (fp32, bf16, sharded) ->
# model.path loads each export back equal to the checkpoint (bitwise / to bf16
# rounding) -> a run from the export (lr 0) checkpoints the same parameters
# and its export is byte-identical (load -> export -> load round trip);
# tampered or truncated checkpoints and folders give errors naming the
# problem; config.json beats presets, a conflicting top-level key is an
# error; both families' published config.json layouts read right.
[ -n "${MPIRUN:-}" ] && command -v "$MPIRUN" >/dev/null 2>&1 || { echo "no mpirun"; exit 77; }
if [ "$(id -u)" = 0 ]; then export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1; fi
export OMPI_MCA_rmaps_base_oversubscribe=1 OMP_NUM_THREADS=1
B=$VL_BUILDDIR/src
U=$VL_BUILDDIR/tests/vlckpt_util
dir=$(mktemp -d /tmp/vl_vlckpt_XXXXXX)
trap 'rm -rf "$dir"' EXIT
fail() { echo "FAIL: $*"; exit 1; }
cd "$dir" || exit 1

# ---- a checkpoint -----------------------------------------------------------
cat > run.yaml <<EOY
include: $VL_SRCDIR/tests/data/micro.yaml
train: {steps: 3, grad_accum: 1, lr: 1.0e-3, stats_every: 0, eval_samples: 0}
run: {out_dir: $dir/out}
EOY
"$MPIRUN" --oversubscribe -np 2 "$B/vltrain" run.yaml > log1 2>&1 || { cat log1; fail "training"; }
A=$dir/out/ckpt/step_0000003.h5
[ -f "$A" ] || fail "no checkpoint"

# ---- inspect ----------------------------------------------------------------
"$B/vlckpt" inspect "$A" > insp 2>&1 || { cat insp; fail "inspect of a good checkpoint"; }
for want in "^step: 3$" "^world size: 2$" "parameters: 14872 in 46 tensors (qwen3-vl)" \
    "model.language_model.layers.1.self_attn.q_proj.weight  *\[16, 16\]  *256" \
    "model.visual.patch_embed.proj.weight  *\[16, 3, 2, 2, 2\]" "| include: .*micro.yaml" \
    "readable: ok" "complete: ok (0 missing" "finite:   ok"; do
  grep -q "$want" insp || { cat insp; fail "inspect output lacks '$want'"; }
done
echo "inspect ok"

# ---- export and load back -----------------------------------------------------
"$B/vlckpt" export "$A" E32 --dtype fp32 > /dev/null || fail "export fp32"
"$B/vlckpt" export "$A" E16 > /dev/null || fail "export bf16"
"$B/vlckpt" export "$A" ESH --dtype fp32 --shard-size 20KB > /dev/null || fail "export sharded"
[ -f E32/model.safetensors ] && [ -f E32/config.json ] || fail "E32 files"
grep -q '"torch_dtype":.*"bfloat16"' E16/config.json || fail "bf16 config dtype"
n=$(ls ESH | grep -c '^model-0000[0-9]-of-00004.safetensors$')  # 59 KB of fp32 in 20 KB shards
[ -f ESH/model.safetensors.index.json ] && [ "$n" = 4 ] && [ ! -f ESH/model.safetensors ] || { ls ESH; fail "shards"; }
grep -q '"total_size"' ESH/model.safetensors.index.json || fail "index metadata"
"$U" compare "$A" E32 fp32 || fail "fp32 export != checkpoint"
"$U" compare "$A" E16 bf16 || fail "bf16 export != checkpoint rounded to bf16"
"$U" compare "$A" ESH fp32 || fail "sharded export != checkpoint"
"$B/vlckpt" export "$A" E32 --dtype fp32 > err 2>&1 && fail "export over an existing export"
grep -q "already holds config.json" err || { cat err; fail "overwrite message"; }

# ---- load -> export -> load: a run from the export at lr 0 ------------------------
echo '{"dummy": "tokenizer"}' > E32/tokenizer.json
echo '{"dummy": "preprocessor"}' > E32/preprocessor_config.json
cat > run2.yaml <<EOY
model: {path: $dir/E32}
train: {steps: 1, grad_accum: 1, lr: 0, stats_every: 0, eval_samples: 0, max_seq_len: 96, max_vision_patches: 64}
run: {out_dir: $dir/out2, backend: cpu}
EOY
"$MPIRUN" --oversubscribe -np 2 "$B/vltrain" run2.yaml > log2 2>&1 || { cat log2; fail "training from the export"; }
A2=$dir/out2/ckpt/step_0000001.h5
"$U" compare "$A2" E32 fp32 || fail "checkpoint of the run from the export != the export"
"$B/vlckpt" export "$A2" E32b --dtype fp32 > /dev/null || fail "export of the round trip"
for f in model.safetensors config.json tokenizer.json preprocessor_config.json; do
  cmp -s E32/$f E32b/$f || fail "round trip: $f differs"
done
mv E32 E32.away  # the checkpoint carries config.json: no need of the folder
"$B/vlckpt" export "$A2" E32c --dtype fp32 > /dev/null || fail "export without the source folder"
cmp -s E32.away/config.json E32c/config.json && cmp -s E32.away/model.safetensors E32c/model.safetensors ||
  fail "export without the source folder differs"
mv E32.away E32
echo "round trip load -> export -> load: model.safetensors and config.json byte-identical"

# ---- tampered and truncated checkpoints -------------------------------------------
T=q_proj=model.language_model.layers.0.self_attn.q_proj.weight
T=${T#q_proj=}
cp "$A" drop.h5 && "$U" tamper-drop drop.h5 "$T" || fail "tamper tool"
"$B/vlckpt" inspect drop.h5 > msg 2>&1 && fail "inspect passed a checkpoint without $T"
grep -q "tensor $T missing" msg && grep -q "complete: FAILED" msg || { cat msg; fail "drop message"; }
"$B/vlckpt" export drop.h5 Ed > msg 2>&1 && fail "export of an incomplete checkpoint"
grep -q "$T" msg || { cat msg; fail "export names the missing tensor"; }
cp "$A" shape.h5 && "$U" tamper-shape shape.h5 "$T" || fail "tamper tool"
"$B/vlckpt" inspect shape.h5 > msg 2>&1 && fail "inspect passed a mis-shaped tensor"
grep -q "tensor $T has shape \[1\], the model expects float \[16, 16\]" msg || { cat msg; fail "shape message"; }
cp "$A" value.h5 && "$U" tamper-value value.h5 "$T" || fail "tamper tool"
"$B/vlckpt" inspect value.h5 > msg 2>&1 && fail "inspect passed a changed value"
grep -q "tensor $T does not match its checksum" msg && grep -q "intact:   FAILED (1 tensors" msg || { cat msg; fail "checksum message"; }
"$B/vlckpt" export value.h5 Ev > msg 2>&1 && fail "export of an altered checkpoint"
grep -q "differ from their checksum (first: $T)" msg || { cat msg; fail "export names the altered tensor"; }
"$B/vlckpt" inspect "$A" | grep -q "intact:   ok" || fail "the original is not intact"
cp "$A" conf.h5 && "$U" tamper-config conf.h5 || fail "tamper tool"
"$B/vlckpt" inspect conf.h5 > msg 2>&1 && fail "inspect passed a junk config"
grep -q "its config text does not load" msg || { cat msg; fail "config message"; }
size=$(wc -c < "$A")
head -c $((size / 2)) "$A" > trunc.h5
"$B/vlckpt" inspect trunc.h5 > msg 2>&1 && fail "inspect passed a truncated checkpoint"
grep -Eq "cannot open as HDF5|cannot be read" msg || { cat msg; fail "truncation message"; }
head -c 4000 /dev/urandom > junk.h5
"$B/vlckpt" inspect junk.h5 > msg 2>&1 && fail "inspect passed junk"
grep -q "cannot open as HDF5" msg || { cat msg; fail "junk message"; }
grep -q "Segmentation\|Abort\|core dumped" msg && fail "crash"
echo "tampered/truncated checkpoints: clear errors"

# ---- broken Hugging Face folders ----------------------------------------------------
"$U" st-drop E32 "$T" Fd || fail "st tool"; cp E32/config.json Fd/
"$U" load Fd > msg 2>&1 && fail "loaded a folder without $T"
grep -q "missing tensor $T" msg && grep -q "1 missing (first: $T)" msg || { cat msg; fail "missing-tensor message"; }
"$U" st-reshape E32 "$T" Fr || fail "st tool"; cp E32/config.json Fr/
"$U" load Fr > msg 2>&1 && fail "loaded a mis-shaped $T"
grep -q "tensor $T has F32 \[256\], expected a float \[16, 16\]" msg || { cat msg; fail "shape message"; }
mkdir Fx && cp E32/model.safetensors Fx/ &&
  sed 's/"num_hidden_layers":[[:space:]]*2/"num_hidden_layers": 1/' E32/config.json > Fx/config.json
"$U" load Fx > msg 2>&1 && fail "loaded a folder with tensors the model does not have"
grep -q "unexpected tensor model.language_model.layers.1" msg && grep -q "not in the model" msg || { cat msg; fail "unexpected message"; }
echo "broken folders: every missing, mis-shaped and unexpected tensor named"

# ---- config.json over presets; conflicts --------------------------------------------
cat > c1.yaml <<EOY
include: qwen3-vl-8b.yaml
model: {path: $dir/E32}
run: {backend: cpu}
EOY
"$B/vltrain" --dry-run c1.yaml > msg 2>&1 || { cat msg; fail "config.json over a preset"; }
grep -q "text:   2 layers, hidden 16" msg || { cat msg; fail "config.json did not override the preset"; }
cat > c2.yaml <<EOY
include: qwen3-vl-8b.yaml
model: {path: $dir/E32, text: {hidden_size: 16, num_hidden_layers: 3}}
EOY
"$B/vltrain" --dry-run c2.yaml > msg 2>&1 && fail "a conflicting key passed"
grep -q "c2.yaml:2: model.text.num_hidden_layers: conflicts with text_config.num_hidden_layers = 2 in $dir/E32/config.json" msg ||
  { cat msg; fail "conflict message"; }

# published layouts: Qwen3-VL-8B-Instruct (transformers 4.57) and Qwen2-VL-7B-Instruct
mkdir q3 q2
cat > q3/config.json <<'EOJ'
{"architectures": ["Qwen3VLForConditionalGeneration"], "image_token_id": 151655, "model_type": "qwen3_vl",
 "text_config": {"attention_bias": false, "attention_dropout": 0.0, "bos_token_id": 151643, "dtype": "bfloat16",
  "eos_token_id": 151645, "head_dim": 128, "hidden_act": "silu", "hidden_size": 4096, "initializer_range": 0.02,
  "intermediate_size": 12288, "max_position_embeddings": 262144, "model_type": "qwen3_vl_text",
  "num_attention_heads": 32, "num_hidden_layers": 36, "num_key_value_heads": 8, "rms_norm_eps": 1e-06,
  "rope_scaling": {"mrope_interleaved": true, "mrope_section": [24, 20, 20], "rope_type": "default"},
  "rope_theta": 5000000, "use_cache": true, "vocab_size": 151936},
 "tie_word_embeddings": false, "transformers_version": "4.57.0.dev0", "video_token_id": 151656,
 "vision_config": {"deepstack_visual_indexes": [8, 16, 24], "depth": 27, "hidden_act": "gelu_pytorch_tanh",
  "hidden_size": 1152, "in_channels": 3, "initializer_range": 0.02, "intermediate_size": 4304,
  "model_type": "qwen3_vl", "num_heads": 16, "num_position_embeddings": 2304, "out_hidden_size": 4096,
  "patch_size": 16, "spatial_merge_size": 2, "temporal_patch_size": 2},
 "vision_end_token_id": 151653, "vision_start_token_id": 151652}
EOJ
printf 'model: {path: %s/q3}\nrun: {backend: cpu}\n' "$dir" > q3.yaml
"$B/vltrain" --dry-run q3.yaml 2>&1 | grep -i "parameters" > q3.out
printf 'include: qwen3-vl-8b.yaml\nrun: {backend: cpu}\n' > p8.yaml
"$B/vltrain" --dry-run p8.yaml 2>&1 | grep -i "parameters" > p8.out
[ -s q3.out ] && cmp -s q3.out p8.out || { cat q3.out p8.out; fail "Qwen3-VL-8B config.json != the 8B preset"; }
grep -q "8,767,123,696" q3.out || { cat q3.out; fail "8B parameter count"; }
# transformers 5's layout (rope_parameters), the parity fixture's: = its vltrain.yaml
printf 'model: {path: %s}\nrun: {backend: cpu}\n' "$VL_SRCDIR/tests/data/qwen3vl_parity" > v5.yaml
"$B/vltrain" --dry-run v5.yaml > v5.out 2>&1 || { cat v5.out; fail "the fixture's config.json"; }
"$B/vltrain" --dry-run "$VL_SRCDIR/tests/data/qwen3vl_parity/vltrain.yaml" > fx.out 2>&1 || fail "fixture yaml"
grep -v "^vltrain\|memory plan" v5.out > v5.cmp; grep -v "^vltrain\|memory plan" fx.out > fx.cmp
cmp -s v5.cmp fx.cmp || { diff v5.cmp fx.cmp; fail "config.json (rope_parameters) != vltrain.yaml"; }
cat > q2/config.json <<'EOJ'
{"architectures": ["Qwen2VLForConditionalGeneration"], "attention_dropout": 0.0, "bos_token_id": 151643,
 "eos_token_id": 151645, "vision_start_token_id": 151652, "vision_end_token_id": 151653, "vision_token_id": 151654,
 "image_token_id": 151655, "video_token_id": 151656, "hidden_act": "silu", "hidden_size": 3584,
 "initializer_range": 0.02, "intermediate_size": 18944, "max_position_embeddings": 32768, "max_window_layers": 28,
 "model_type": "qwen2_vl", "num_attention_heads": 28, "num_hidden_layers": 28, "num_key_value_heads": 4,
 "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "sliding_window": 32768, "tie_word_embeddings": false,
 "torch_dtype": "bfloat16", "transformers_version": "4.41.2", "use_cache": true, "use_sliding_window": false,
 "vision_config": {"depth": 32, "embed_dim": 1280, "mlp_ratio": 4, "num_heads": 16, "in_chans": 3,
  "hidden_size": 3584, "patch_size": 14, "spatial_merge_size": 2, "spatial_patch_size": 14, "temporal_patch_size": 2},
 "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]}, "vocab_size": 152064}
EOJ
printf 'model: {path: %s/q2}\nrun: {backend: cpu}\n' "$dir" > q2.yaml
"$B/vltrain" --dry-run q2.yaml 2>&1 | grep -i "parameters" > q2.out
printf 'include: qwen2-vl-7b.yaml\nrun: {backend: cpu}\n' > p7.yaml
"$B/vltrain" --dry-run p7.yaml 2>&1 | grep -i "parameters" > p7.out
[ -s q2.out ] && cmp -s q2.out p7.out || { cat q2.out p7.out; fail "Qwen2-VL-7B config.json != the 7B preset"; }
grep -q "8,291,375,616" q2.out || { cat q2.out; fail "Qwen2-VL-7B parameter count"; }
"$U" hfkeys q2 > q2.keys || { cat q2.keys; fail "Qwen2-VL config.json"; }
for want in "model.family = qwen2-vl" "model.text.hidden_size = 3584" "model.text.head_dim = 128" \
    "model.text.num_key_value_heads = 4" "model.text.rope_theta = 1000000" "model.text.mrope_section = \[16, 24, 24\]" \
    "model.text.mrope_interleaved = false" "model.text.attention_bias = true" "model.text.vocab_size = 152064" \
    "model.vision.hidden_size = 1280" "model.vision.intermediate_size = 5120" "model.vision.out_hidden_size = 3584" \
    "model.vision.patch_size = 14" "model.vision.hidden_act = quick_gelu" "model.vision.num_position_embeddings = 0" \
    "model.vision.deepstack_visual_indexes = \[\]" "model.tokens.image_token_id = 151655"; do
  grep -q "^$want$" q2.keys || { cat q2.keys; fail "Qwen2-VL: no '$want'"; }
done
# bad config.json files: the key and the file named
mkdir bad1 bad2 bad3
sed 's/"model_type": "qwen3_vl",/"model_type": "llava",/' q3/config.json > bad1/config.json
sed 's/"hidden_size": 4096, //' q3/config.json > bad2/config.json
echo '{"model_type": "qwen3_vl", "text_config": {' > bad3/config.json
for b in bad1 bad2 bad3; do printf 'model: {path: %s/%s}\n' "$dir" $b > $b.yaml; done
"$B/vltrain" --dry-run bad1.yaml > msg 2>&1 && fail "model_type llava passed"
grep -q "bad1/config.json: model_type: 'llava' is not supported (qwen3_vl, qwen2_vl)" msg || { cat msg; fail "model_type message"; }
"$B/vltrain" --dry-run bad2.yaml > msg 2>&1 && fail "a config.json without hidden_size passed"
grep -q "bad2/config.json: text_config.hidden_size: required key missing" msg || { cat msg; fail "missing-key message"; }
"$B/vltrain" --dry-run bad3.yaml > msg 2>&1 && fail "a broken config.json passed"
grep -q "bad3/config.json: not valid JSON" msg || { cat msg; fail "JSON message"; }
printf 'model: {path: %s/nowhere}\n' "$dir" > bad4.yaml
"$B/vltrain" --dry-run bad4.yaml > msg 2>&1 && fail "a missing folder passed"
grep -q "bad4.yaml:1: model.path: cannot open '$dir/nowhere'" msg || { cat msg; fail "missing folder message"; }

# writing config.json and reading it back gives the same model, both families
cat > q2tiny.yaml <<'EOY'
model:
  family: qwen2-vl
  text: {vocab_size: 151936, hidden_size: 32, intermediate_size: 64, num_hidden_layers: 2,
         num_attention_heads: 4, num_key_value_heads: 2, head_dim: 8, rope_theta: 1000000,
         mrope_section: [1, 1, 2], mrope_interleaved: false, attention_bias: true,
         tie_word_embeddings: true, rms_norm_eps: 1.0e-5}
  vision: {depth: 2, hidden_size: 32, intermediate_size: 128, num_heads: 2, patch_size: 14,
           temporal_patch_size: 2, spatial_merge_size: 2, out_hidden_size: 32, hidden_act: quick_gelu}
  tokens: {image_token_id: 151655, video_token_id: 151656, vision_start_token_id: 151652, vision_end_token_id: 151653}
EOY
for y in q2tiny.yaml "$VL_SRCDIR/inputs/tiny.yaml" "$VL_SRCDIR/inputs/qwen3-vl-8b.yaml" "$VL_SRCDIR/tests/data/micro.yaml"; do
  "$U" hfconfig-roundtrip "$y" rt_$(basename "$y" .yaml) || fail "config.json round trip of $y"
done
# Hugging Face folders written by transformers 5.17 (the parity fixtures, both
# families): model.path reads config.json + weights, and vltrain's logits are
# transformers'; then from the Qwen2-VL folder: train at lr 0 -> export ->
# the export gives the same logits (load -> export -> load through transformers' numbers)
for fam in qwen3vl qwen2vl; do
  F=$VL_SRCDIR/tests/data/${fam}_parity
  "$U" logits "$F" "$F/inputs.safetensors" ${fam}_hf.safetensors > /dev/null || fail "logits of $F"
  "$U" cmp-logits ${fam}_hf.safetensors "$F/outputs.safetensors" "$F/inputs.safetensors" ||
    fail "vltrain from model.path=$F != transformers"
done
F=$VL_SRCDIR/tests/data/qwen2vl_parity
cat > q2run.yaml <<EOY
model: {path: $F}
train: {steps: 1, grad_accum: 1, lr: 0, stats_every: 0, eval_samples: 0, max_seq_len: 96, max_vision_patches: 256}
run: {out_dir: $dir/q2out, backend: cpu}
EOY
"$MPIRUN" --oversubscribe -np 2 "$B/vltrain" q2run.yaml > logq2 2>&1 || { cat logq2; fail "training from the Qwen2-VL folder"; }
"$B/vlckpt" export "$dir/q2out/ckpt/step_0000001.h5" Q2E --dtype fp32 > /dev/null || fail "Qwen2-VL export"
grep -q '"model_type":.*"qwen2_vl"' Q2E/config.json && grep -q '"embed_dim":' Q2E/config.json || fail "Qwen2-VL config.json layout"
"$U" compare "$dir/q2out/ckpt/step_0000001.h5" Q2E fp32 || fail "Qwen2-VL export != checkpoint"
"$U" logits Q2E "$F/inputs.safetensors" q2e.safetensors > /dev/null || fail "logits of the Qwen2-VL export"
"$U" cmp-logits q2e.safetensors "$F/outputs.safetensors" "$F/inputs.safetensors" ||
  fail "Qwen2-VL export's logits != transformers'"
echo "config.json: presets overridden, conflicts named, published layouts of both families read"
echo "vlckpt ok"
