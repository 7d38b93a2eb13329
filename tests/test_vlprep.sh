#!/bin/bash
# vlprep end to end: a good run (YAML model and Hugging Face folders of both
# families; token ids against transformers' references of
# tests/data/chat/reference.json; grids against hand-computed smart_resize;
# provenance attributes; the val split; the same file with 1 and 2 threads),
# the over-long policies, and each bad input (malformed JSON, missing and
# undecodable image, <image> count != images, no assistant turn, empty
# file): "FILE:LINE: what is wrong", a non-zero exit, no output file; with
# --skip-bad the run goes on and counts them.  Needs the Qwen3 tokenizer.json
# (skips without it) and h5dump (hdf5-tools).
set -u
bin="$VL_BUILDDIR/src/vlprep"
tokjson="${VL_QWEN_TOKENIZER:-$VL_BUILDDIR/tests/data/qwen3-tokenizer.json}"
[ -s "$tokjson" ] || { echo "SKIP: no Qwen tokenizer.json at $tokjson"; exit 77; }
command -v h5dump >/dev/null || { echo "SKIP: h5dump not found (apt-get install hdf5-tools)"; exit 77; }
command -v python3 >/dev/null || { echo "SKIP: python3 not found"; exit 77; }
d=$(mktemp -d /tmp/vl_vlprep_XXXXXX)
trap 'rm -rf "$d"' EXIT
fail=0
ok() { echo "ok: $*"; }
bad() { echo "FAIL: $*"; fail=1; }
cp "$VL_SRCDIR"/tests/data/images/{rgb8.png,wide.png,tall.jpg,large.jpg} "$d"/
mkdir -p "$d/sub" && cp "$VL_SRCDIR/tests/data/images/small.jpg" "$d/sub/"
# tiny.yaml with the real Qwen tokenizer: its vocabulary, special ids and the
# family's default preprocessing instead of inputs/tiny/'s
printf 'include: tiny.yaml\nmodel:\n  tokenizer: tok/tokenizer.json\n  preprocessor: ""\n  text: {vocab_size: 151936}\n  tokens: {image_token_id: 151655, video_token_id: 151656, vision_start_token_id: 151652, vision_end_token_id: 151653}\n' > "$d/m.yaml"
mkdir -p "$d/tok" && ln -s "$tokjson" "$d/tok/tokenizer.json"
attr() { h5dump -a "/$2" "$1" | sed -n 's/^ *(0): *//p' | tr -d '"'; }
data() { h5dump -d "$2" -y -w 0 "$1" | sed -n '/DATA {/,/}/p' | grep -v '[{}]' | tr -d ' \n' | tr ',' ' '; }

# the reference conversations without images, as JSONL lines
python3 - "$VL_SRCDIR/tests/data/chat" "$d" <<'PY'
import json, sys
src, d = sys.argv[1], sys.argv[2]
convs = {c["name"]: c for c in json.load(open(src + "/conversations.json", encoding="utf-8"))}
ref = json.load(open(src + "/reference.json", encoding="utf-8"))
names = ["no_image_unicode", "special_in_text"]
with open(d + "/ref.jsonl", "w", encoding="utf-8") as f:
    for n in names:
        f.write(json.dumps({"messages": convs[n]["messages"]}, ensure_ascii=False) + "\n")
for fam in ("qwen3-vl", "qwen2-vl"):
    rc = {c["name"]: c for c in ref["families"][fam]["conversations"]}
    with open(d + "/ref-" + fam + ".ids", "w") as f:
        f.write(" ".join(str(i) for n in names for i in rc[n]["ids"]))
PY

# ---- a good run ------------------------------------------------------------------
cat > "$d/in.jsonl" <<'J'
{"messages": [{"role": "user", "content": "<image>What is this?"}, {"role": "assistant", "content": "A test image."}], "images": ["rgb8.png"]}
{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "<image> and <image>"}, {"role": "assistant", "content": "Two images."}], "images": ["wide.png", "tall.jpg"]}

{"messages": [{"role": "user", "content": "No image here."}, {"role": "assistant", "content": "Fine."}]}
{"messages": [{"role": "user", "content": "<image>Small"}, {"role": "assistant", "content": "Small one."}], "images": ["sub/small.jpg"]}
{"messages": [{"role": "user", "content": "<image>Large"}, {"role": "assistant", "content": "Big one."}], "images": ["large.jpg"]}
J
"$bin" --model "$d/m.yaml" --input "$d/in.jsonl" --output "$d/out.h5" --threads 2 --val-count 1 > "$d/log" 2>&1; rc=$?
cat "$d/log"
[ $rc -eq 0 ] && [ -s "$d/out.h5" ] && ok "good run" || bad "good run exited $rc"
ls "$d" | grep -q tmp && bad "temporary file left behind"
[ "$(attr "$d/out.h5" n_written)" = 5 ] && ok "n_written 5" || bad "n_written $(attr "$d/out.h5" n_written)"
[ "$(attr "$d/out.h5" n_read)" = 5 ] || bad "n_read (the blank line is not a record)"
[ "$(attr "$d/out.h5" family)" = qwen3-vl ] || bad "family attribute"
[ "$(attr "$d/out.h5" format)" = vltrain-dataset ] || bad "format attribute"
sha=$(sha256sum "$tokjson" | cut -d' ' -f1)
[ "$(attr "$d/out.h5" tokenizer_sha256)" = "$sha" ] && ok "tokenizer sha256" || bad "tokenizer_sha256"
[ "$(attr "$d/out.h5" patch_size) $(attr "$d/out.h5" merge_size) $(attr "$d/out.h5" min_pixels)" = "16 2 65536" ] \
  || bad "preprocessing attributes"
ntr=$(data "$d/out.h5" /train/sample_offsets | wc -w); nva=$(data "$d/out.h5" /val/sample_offsets | wc -w)
[ "$ntr $nva" = "5 2" ] && ok "split 4 + 1" || bad "split: sample_offsets of $ntr and $nva entries"
# smart_resize by hand (Qwen3-VL: factor 32, min_pixels 65536): rgb8 64x64 ->
# 256x256 (grid 16x16); wide 203x97 (w x h) -> h 96->? : beta = sqrt(203*97/65536)
# < 1, so h = ceil(97/b/32)*32 = 192, w = ceil(203/b/32)*32 = 384 -> grid 12x24
grids="$(data "$d/out.h5" /train/image_grid_thw) $(data "$d/out.h5" /val/image_grid_thw)"
echo "$grids" | grep -q "1 16 16" && echo "$grids" | grep -q "1 12 24" && ok "grids" || bad "grids: $grids"
# pixels (default --pixels encoded): the image files' bytes, both splits together
[ "$(attr "$d/out.h5" pixel_storage)" = encoded ] && ok "pixel_storage encoded" || bad "pixel_storage $(attr "$d/out.h5" pixel_storage)"
po=$(data "$d/out.h5" /train/pixel_offsets); pv=$(data "$d/out.h5" /val/pixel_offsets)
files=$(cat "$d"/rgb8.png "$d"/wide.png "$d"/tall.jpg "$d"/sub/small.jpg "$d"/large.jpg | wc -c)
[ $(( ${po##* } + ${pv##* } )) = "$files" ] && ok "encoded pixels = the files' bytes" \
  || bad "encoded pixel bytes $(( ${po##* } + ${pv##* } )) vs files $files"
# --pixels rgb: sum of h*w*3 of the resized images
"$bin" --model "$d/m.yaml" --input "$d/in.jsonl" --output "$d/rgb.h5" --val-count 1 --pixels rgb --quiet >/dev/null 2>&1 \
  || bad "--pixels rgb run"
[ "$(attr "$d/rgb.h5" pixel_storage)" = rgb ] || bad "pixel_storage of --pixels rgb"
hw=$(data "$d/rgb.h5" /train/image_hw); po=$(data "$d/rgb.h5" /train/pixel_offsets)
sum=$(echo "$hw" | awk '{s=0; for (i=1;i<=NF;i+=2) s+=$i*$(i+1)*3; print s}')
[ "${po##* }" = "$sum" ] && ok "rgb pixel offsets" || bad "rgb pixel offsets ${po##* } vs $sum"
[ "$(data "$d/rgb.h5" /train/image_hw)" = "$(data "$d/out.h5" /train/image_hw)" ] || bad "image_hw differs between storages"
"$bin" --model "$d/m.yaml" --input "$d/in.jsonl" --output "$d/x.h5" --pixels png --quiet >/dev/null 2>&1 \
  && bad "--pixels png accepted" || ok "--pixels png refused"
# the same output with one thread (in-order writing)
"$bin" --model "$d/m.yaml" --input "$d/in.jsonl" --output "$d/one.h5" --threads 1 --val-count 1 --quiet >/dev/null 2>&1
for ds in /train/tokens /train/loss_mask /train/pixels /val/tokens /train/image_grid_thw; do
  [ "$(data "$d/out.h5" $ds | md5sum)" = "$(data "$d/one.h5" $ds | md5sum)" ] || bad "$ds differs between 1 and 2 threads"
done
ok "1 and 2 threads agree"

# the split: --val-fraction by a seeded hash of the line number, repeatable
for seed in 1 1 2; do
  "$bin" --model "$d/m.yaml" --input "$d/in.jsonl" --output "$d/vf$seed.h5" --val-fraction 0.5 --seed $seed --quiet >/dev/null 2>&1
  data "$d/vf$seed.h5" /train/tokens | md5sum >> "$d/vf.sums"
done
[ "$(sort -u "$d/vf.sums" | wc -l)" = 2 ] && [ "$(head -1 "$d/vf.sums")" = "$(sed -n 2p "$d/vf.sums")" ] \
  && ok "--val-fraction repeatable, seeded" || bad "--val-fraction: $(cat "$d/vf.sums")"
# interrupted: no output, no temporary file
for i in 1 2 3 4 5 6 7 8; do cat "$d/in.jsonl"; done > "$d/big.jsonl"
"$bin" --model "$d/m.yaml" --input "$d/big.jsonl" --output "$d/int.h5" --threads 1 --quiet >/dev/null 2>&1 &
pid=$!
for i in $(seq 100); do ls "$d" | grep -q "int.h5.tmp" && break; sleep 0.05; done
ls "$d" | grep -q "int.h5.tmp" || bad "interrupted: no temporary file seen while running"
kill -TERM $pid 2>/dev/null; wait $pid 2>/dev/null
[ ! -e "$d/int.h5" ] && ! ls "$d" | grep -q "int.h5.tmp" && ok "interrupted: nothing left" || bad "interrupted: files left: $(ls "$d" | grep int.h5)"

# ---- token ids against transformers, both families, Hugging Face folders --------
for fam in qwen3-vl qwen2-vl; do
  mt=${fam/-/_}
  mkdir -p "$d/$fam" && ln -sf "$tokjson" "$d/$fam/tokenizer.json"
  printf '{"model_type": "%s", "vocab_size": 151936, "image_token_id": 151655, "vision_start_token_id": 151652, "vision_end_token_id": 151653, "vision_config": {"patch_size": %s, "spatial_merge_size": 2}}\n' \
    "$mt" "$([ $fam = qwen3-vl ] && echo 16 || echo 14)" > "$d/$fam/config.json"
  "$bin" --model "$d/$fam" --input "$d/ref.jsonl" --output "$d/ref-$fam.h5" --quiet >/dev/null 2>&1 || bad "$fam folder run"
  got=$(data "$d/ref-$fam.h5" /train/tokens); want=$(cat "$d/ref-$fam.ids")
  [ "$got" = "$want" ] && ok "$fam ids identical to transformers" || bad "$fam ids differ"
  [ "$(attr "$d/ref-$fam.h5" family)" = "$fam" ] || bad "$fam family attribute"
done
[ "$(attr "$d/ref-qwen2-vl.h5" patch_size)" = 14 ] || bad "qwen2-vl default patch size"

# a tokenizer that is not the model's
mkdir -p "$d/wrong" && ln -sf "$tokjson" "$d/wrong/tokenizer.json"
echo '{"model_type": "qwen3_vl", "vocab_size": 151936, "image_token_id": 5, "vision_config": {"patch_size": 16, "spatial_merge_size": 2}}' > "$d/wrong/config.json"
out=$("$bin" --model "$d/wrong" --input "$d/ref.jsonl" --output "$d/wrong.h5" --quiet 2>&1); rc=$?
[ $rc -ne 0 ] && echo "$out" | grep -q "does not fit the model" && [ ! -e "$d/wrong.h5" ] && ok "wrong tokenizer refused" \
  || bad "wrong tokenizer: $rc $out"

# ---- over-long samples: 40 tokens at most ------------------------------------------
long=$(printf 'word %.0s' $(seq 100))
{ echo '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}'
  echo "{\"messages\": [{\"role\": \"user\", \"content\": \"say it\"}, {\"role\": \"assistant\", \"content\": \"$long\"}]}"
  echo '{"messages": [{"role": "user", "content": "<image>Large"}, {"role": "assistant", "content": "Big."}], "images": ["large.jpg"]}'
} > "$d/long.jsonl"
"$bin" --model "$d/m.yaml" --input "$d/long.jsonl" --output "$d/long.h5" --max-seq-len 40 --quiet >/dev/null 2>&1
[ "$(attr "$d/long.h5" n_skipped_long) $(attr "$d/long.h5" n_written)" = "2 1" ] && ok "overlong skip" \
  || bad "overlong skip: $(attr "$d/long.h5" n_skipped_long) skipped, $(attr "$d/long.h5" n_written) written"
# truncate: the long answer is cut at 40; the image sample would be cut inside
# its image, leaving nothing supervised, so it is skipped
"$bin" --model "$d/m.yaml" --input "$d/long.jsonl" --output "$d/trunc.h5" --max-seq-len 40 --overlong truncate --quiet >/dev/null 2>&1
offs=$(data "$d/trunc.h5" /train/sample_offsets)
[ "$(attr "$d/trunc.h5" n_truncated) $(attr "$d/trunc.h5" n_skipped_long) $(attr "$d/trunc.h5" n_written)" = "1 1 2" ] \
  && [ "$(echo "$offs" | awk '{print $3-$2}')" = 40 ] && ok "overlong truncate: $offs" \
  || bad "overlong truncate: $(attr "$d/trunc.h5" n_truncated) truncated, offsets $offs"

# ---- bad input -----------------------------------------------------------------------
echo garbage > "$d/junk.png"
good='{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}'
check_bad() { # name, record, expected message
  printf '%s\n%s\n' "$good" "$2" > "$d/$1.jsonl"
  out=$("$bin" --model "$d/m.yaml" --input "$d/$1.jsonl" --output "$d/$1.h5" --quiet 2>&1); rc=$?
  [ $rc -ne 0 ] || bad "$1: exit 0"
  echo "$out" | grep -q "^$d/$1.jsonl:2: $3" && ok "$1: $(echo "$out" | head -1)" || bad "$1: message: $out"
  [ ! -e "$d/$1.h5" ] || bad "$1: output file left"
  ls "$d" | grep -q "$1.h5.tmp" && bad "$1: temporary file left"
}
check_bad json '{"messages": [' "malformed JSON"
check_bad missing '{"messages": [{"role": "user", "content": "<image>x"}, {"role": "assistant", "content": "y"}], "images": ["nope.png"]}' "image 1: .*nope.png: no such file"
check_bad undecodable '{"messages": [{"role": "user", "content": "<image>x"}, {"role": "assistant", "content": "y"}], "images": ["junk.png"]}' "image 1: .*junk.png: not a PNG or JPEG"
check_bad count '{"messages": [{"role": "user", "content": "<image><image>x"}, {"role": "assistant", "content": "y"}], "images": ["rgb8.png"]}' "2 <image> placeholders in user messages but 1 image"
check_bad noassistant '{"messages": [{"role": "user", "content": "x"}]}' "no assistant message"
: > "$d/empty.jsonl"
out=$("$bin" --model "$d/m.yaml" --input "$d/empty.jsonl" --output "$d/empty.h5" --quiet 2>&1); rc=$?
[ $rc -ne 0 ] && echo "$out" | grep -q "^$d/empty.jsonl:1: empty input" && [ ! -e "$d/empty.h5" ] && ok "empty file" || bad "empty file: $rc $out"
cat "$d"/{json,missing,undecodable,count,noassistant}.jsonl > "$d/mixed.jsonl"
out=$("$bin" --model "$d/m.yaml" --input "$d/mixed.jsonl" --output "$d/mixed.h5" --skip-bad --quiet 2>&1); rc=$?
[ $rc -eq 0 ] && [ "$(attr "$d/mixed.h5" n_skipped_bad) $(attr "$d/mixed.h5" n_written)" = "5 5" ] \
  && [ "$(echo "$out" | grep -c "mixed.jsonl:[0-9]*: ")" = 5 ] && ok "--skip-bad: 5 skipped, 5 written" || bad "--skip-bad: $rc $out"

[ $fail -eq 0 ] && echo "vlprep ok"
exit $fail
