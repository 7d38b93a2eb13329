#!/usr/bin/env python3
"""Chat-template reference ids and loss masks (run on the GPU machine:
transformers 5.17, tokenizers, Pillow, numpy; offline).

For each family (qwen3-vl, qwen2-vl) builds the processor offline from the
Qwen3 tokenizer.json and the family's chat template text
(tests/data/chat/<family>.jinja, the chat_template of Qwen/Qwen3-VL-*-Instruct
and Qwen/Qwen2-VL-*-Instruct) and an image processor with the family's
settings, then for each conversation of tests/data/chat/conversations.json:
  - turns "<image>" placeholders of user content into the list form the
    templates read ({"type": "image"} / {"type": "text"} items, in order),
  - renders it with processor.apply_chat_template(tokenize=False),
  - runs processor(text=..., images=...) on blank images of the listed sizes
    ([height, width] pixels) -> input_ids, image_grid_thw,
  - loss mask: tokens whose character span (offset mapping of the fast
    tokenizer on the expanded text) overlaps an assistant message's content
    or its <|im_end|>.
Writes tests/data/chat/reference.json:
  {"transformers": version, "path": "processor" | "tokenizer+image_processor",
   "families": {FAMILY: {"min_pixels", "max_pixels", "patch_size", "merge_size",
                "conversations": [{"name", "text", "ids", "mask", "grids"}]}}}

  python3 tests/reference/make_chat_refs.py --tokenizer qwen3-tokenizer.json \
      --dir tests/data/chat
"""
import argparse
import json
import os
import re

import numpy as np
from PIL import Image

FAMILIES = {
    # Qwen/Qwen3-VL-*-Instruct preprocessor_config.json
    "qwen3-vl": dict(patch_size=16, merge_size=2, temporal_patch_size=2, image_mean=[0.5] * 3,
                     image_std=[0.5] * 3, min_pixels=65536, max_pixels=16777216),
    # Qwen/Qwen2-VL-*-Instruct preprocessor_config.json
    "qwen2-vl": dict(patch_size=14, merge_size=2, temporal_patch_size=2,
                     image_mean=[0.48145466, 0.4578275, 0.40821073],
                     image_std=[0.26862954, 0.26130258, 0.27577711], min_pixels=3136, max_pixels=12845056),
}


def tokenizer(path):
    import transformers
    cls = getattr(transformers, "PreTrainedTokenizerFast", None) or transformers.TokenizersBackend
    tok = cls(tokenizer_file=path, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    return tok


def image_processor(f):
    import transformers
    kw = dict(patch_size=f["patch_size"], temporal_patch_size=f["temporal_patch_size"],
              merge_size=f["merge_size"], image_mean=f["image_mean"], image_std=f["image_std"])
    for name in ("Qwen2VLImageProcessor", "Qwen2VLImageProcessorPil", "Qwen2VLImageProcessorFast"):
        cls = getattr(transformers, name, None)
        if cls is None:
            continue
        try:
            return cls(size={"shortest_edge": f["min_pixels"], "longest_edge": f["max_pixels"]}, **kw)
        except Exception:
            return cls(min_pixels=f["min_pixels"], max_pixels=f["max_pixels"], **kw)
    raise RuntimeError("no Qwen2VL image processor in transformers")


def processor(family, tok, ip, template):
    import transformers
    name = "Qwen3VLProcessor" if family == "qwen3-vl" else "Qwen2VLProcessor"
    cls = getattr(transformers, name)
    try:
        return cls(image_processor=ip, tokenizer=tok, video_processor=None, chat_template=template)
    except Exception as e:
        print(f"{name}(video_processor=None) failed: {e!r}; trying with a video processor")
    vname = "Qwen3VLVideoProcessor" if family == "qwen3-vl" else "Qwen2VLVideoProcessor"
    vp = getattr(transformers, vname)()
    return cls(image_processor=ip, tokenizer=tok, video_processor=vp, chat_template=template)


def hf_messages(messages):
    out = []
    for m in messages:
        if m["role"] == "user" and "<image>" in m["content"]:
            items = []
            for k, piece in enumerate(m["content"].split("<image>")):
                if k:
                    items.append({"type": "image"})
                if piece:
                    items.append({"type": "text", "text": piece})
            out.append({"role": "user", "content": items})
        else:
            out.append(dict(m))
    return out


def expand(text, grids, merge):
    parts = text.split("<|image_pad|>")
    assert len(parts) == len(grids) + 1, (len(parts), len(grids))
    s = parts[0]
    for g, p in zip(grids, parts[1:]):
        s += "<|image_pad|>" * (int(np.prod(g)) // (merge * merge)) + p
    return s


def assistant_spans(text):
    """Character spans of each assistant message's content + <|im_end|>."""
    spans = []
    for m in re.finditer(re.escape("<|im_start|>assistant\n"), text):
        end = text.index("<|im_end|>", m.end()) + len("<|im_end|>")
        spans.append((m.end(), end))
    return spans


def main():
    import transformers
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--dir", default="tests/data/chat")
    a = ap.parse_args()
    convs = json.load(open(os.path.join(a.dir, "conversations.json"), encoding="utf-8"))
    tok = tokenizer(a.tokenizer)
    result = {"transformers": transformers.__version__, "families": {}}
    paths = set()
    for family, f in FAMILIES.items():
        template = open(os.path.join(a.dir, family + ".jinja"), encoding="utf-8").read()
        ip = image_processor(f)
        try:
            proc = processor(family, tok, ip, template)
        except Exception as e:
            print(f"{family}: processor failed ({e!r}): tokenizer + image processor path")
            proc = None
        fam = {k: f[k] for k in ("min_pixels", "max_pixels", "patch_size", "merge_size")}
        fam["conversations"] = []
        for c in convs:
            msgs = hf_messages(c["messages"])
            imgs = [Image.new("RGB", (w, h), (120, 60, 200)) for h, w in c["images"]]
            if proc is not None:
                text = proc.apply_chat_template(msgs, tokenize=False, add_generation_prompt=False)
                enc = proc(text=[text], images=imgs or None, return_tensors="np")
                ids = [int(x) for x in enc["input_ids"][0]]
                grids = enc["image_grid_thw"].tolist() if imgs else []
                paths.add("processor")
            else:
                text = tok.apply_chat_template(msgs, chat_template=template, tokenize=False,
                                               add_generation_prompt=False)
                grids = ip(images=imgs, return_tensors="np")["image_grid_thw"].tolist() if imgs else []
                ids = None
                paths.add("tokenizer+image_processor")
            full = expand(text, grids, f["merge_size"])
            enc2 = tok(full, add_special_tokens=False, return_offsets_mapping=True)
            ids2 = list(enc2["input_ids"])
            if ids is None:
                ids = ids2
            assert ids == ids2, f"{family}/{c['name']}: processor ids differ from the tokenizer's"
            spans = assistant_spans(full)
            mask = [int(any(s < e2 and e > s2 for s2, e2 in spans)) for s, e in enc2["offset_mapping"]]
            fam["conversations"].append({"name": c["name"], "text": text, "ids": ids, "mask": mask,
                                         "grids": [[int(x) for x in g] for g in grids]})
            print(f"{family} {c['name']}: {len(ids)} ids, {sum(mask)} supervised, grids {grids}")
        result["families"][family] = fam
    result["path"] = ",".join(sorted(paths))
    print("transformers", transformers.__version__, "path", result["path"])
    with open(os.path.join(a.dir, "reference.json"), "w", encoding="utf-8") as fo:
        json.dump(result, fo, ensure_ascii=False, separators=(",", ":"))


if __name__ == "__main__":
    main()
