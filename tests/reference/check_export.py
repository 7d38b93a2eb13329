#!/usr/bin/env python3
"""Does transformers load a folder written by `vlckpt export`, and does it
give the logits vltrain gives on the same inputs?

  python3 tests/reference/check_export.py EXPORT_DIR INPUTS VLTRAIN_LOGITS [--tol 1e-4]

EXPORT_DIR      the exported Hugging Face folder (config.json, safetensors)
INPUTS          safetensors with input_ids, attention_mask, pixel_values,
                image_grid_thw (and mm_token_type_ids): the parity fixture's
                tests/data/qwen3vl_parity/inputs.safetensors
VLTRAIN_LOGITS  safetensors with "logits" [B, L, V] that vltrain computed
                from EXPORT_DIR on INPUTS (tests/vlckpt_util logits ...)

Loads EXPORT_DIR with Qwen3VLForConditionalGeneration (Qwen2VL... for a
qwen2_vl config) in float32, eager attention, on the CPU; fails if any
weight is missing, unexpected or mis-shaped, or if the largest logit
difference over the unpadded positions exceeds tol * max(1, max |logit|).
Prints the differences.  Needs torch, transformers (5.x), safetensors.
"""
import argparse
import inspect
import json
import os
import sys

import torch
import transformers
from safetensors.torch import load_file


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("export_dir")
    ap.add_argument("inputs")
    ap.add_argument("vltrain_logits")
    ap.add_argument("--tol", type=float, default=1e-4)
    a = ap.parse_args()
    with open(os.path.join(a.export_dir, "config.json")) as f:
        mt = json.load(f)["model_type"]
    cls = {"qwen3_vl": "Qwen3VLForConditionalGeneration",
           "qwen2_vl": "Qwen2VLForConditionalGeneration"}[mt]
    cls = getattr(transformers, cls)
    print("transformers", transformers.__version__, "torch", torch.__version__, "class", cls.__name__)
    kw = dict(attn_implementation="eager", output_loading_info=True)
    try:
        model, info = cls.from_pretrained(a.export_dir, dtype=torch.float32, **kw)
    except TypeError:
        model, info = cls.from_pretrained(a.export_dir, torch_dtype=torch.float32, **kw)
    bad = {k: v for k, v in info.items() if v and k != "error_msgs"}
    if info.get("error_msgs"):
        bad["error_msgs"] = info["error_msgs"]
    if bad:
        print("FAIL: loading info:", bad)
        return 1
    model = model.float().eval()
    n = sum(p.numel() for p in model.parameters())
    print("loaded %s: %d parameters, every weight present and used" % (a.export_dir, n))

    x = load_file(a.inputs)
    kwargs = dict(input_ids=x["input_ids"], attention_mask=x["attention_mask"],
                  pixel_values=x["pixel_values"].float(), image_grid_thw=x["image_grid_thw"])
    if "mm_token_type_ids" in x and "mm_token_type_ids" in inspect.signature(model.forward).parameters:
        kwargs["mm_token_type_ids"] = x["mm_token_type_ids"]
    with torch.no_grad():
        ref = model(**kwargs).logits.float()
    mine = load_file(a.vltrain_logits)["logits"].float()
    if mine.shape != ref.shape:
        print("FAIL: vltrain logits", tuple(mine.shape), "transformers", tuple(ref.shape))
        return 1
    m = x["attention_mask"].bool()
    d = (mine - ref)[m]
    r = ref[m]
    max_abs = d.abs().max().item()
    scale = max(1.0, r.abs().max().item())
    rel = (d.norm() / r.norm()).item()
    print("logits: %d positions x %d; max |transformers - vltrain| = %.3e (max |logit| %.3f), "
          "relative (Frobenius) %.3e" % (int(m.sum()), ref.shape[-1], max_abs, r.abs().max().item(), rel))
    if not max_abs <= a.tol * scale:
        print("FAIL: above tolerance %.1e x %.3f" % (a.tol, scale))
        return 1
    print("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
