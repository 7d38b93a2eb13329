#!/usr/bin/env python3
"""Hugging Face parity fixtures for vltrain's Qwen2-VL.

The Qwen2-VL twin of make_qwen3vl_fixtures.py (same seeds, draws, batch
shape and file format).  Builds a tiny random Qwen2-VL with transformers,
runs one forward + backward in float64 on the CPU (eager attention) on a
batch of two samples (one with two images of different sizes, one text-only,
right padded), and writes:

  config.json           the model's HF config
  model.safetensors     every parameter (F32), HF names
  inputs.safetensors    input_ids, attention_mask, labels, mm_token_type_ids,
                        pixel_values (F32), image_grid_thw
  outputs.safetensors   loss (F64), logits (F32, B x L x V), position_ids,
                        grad.<name> (F32) for every parameter

Run on the GPU machine (transformers 5.17, torch 2.11):
  python3 tests/reference/make_qwen2vl_fixtures.py --out tests/data/qwen2vl_parity
The dimensions match tests/data/qwen2vl_parity/vltrain.yaml.  What Qwen2-VL
exercises that Qwen3-VL does not: q/k/v biases without q/k norms, sectioned
M-RoPE (mrope_section [2, 3, 3]: t, h, w in blocks, unlike [3, 3, 2]
interleaved), quick_gelu ViT MLP (fc1/fc2), the PatchMerger (ln_q, mlp.0,
mlp.2), no patch bias, no learned position embedding, no DeepStack, patch 14.
"""
import argparse
import inspect
import json
import os
import sys

import numpy as np
import torch
import transformers
from safetensors.torch import save_file
from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

# head_dim = hidden_size / num_attention_heads = 16 (Qwen2-VL has no head_dim key)
TEXT = dict(vocab_size=384, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
            num_attention_heads=2, num_key_value_heads=1, rms_norm_eps=1e-6,
            hidden_act="silu", max_position_embeddings=4096, tie_word_embeddings=False)
ROPE = dict(rope_type="default", rope_theta=1000000.0, mrope_section=[2, 3, 3])
# embed_dim is the ViT width, hidden_size the merger's output (= text width)
VISION = dict(depth=3, embed_dim=32, mlp_ratio=2, num_heads=2, in_channels=3, hidden_size=32,
              patch_size=14, temporal_patch_size=2, spatial_merge_size=2, hidden_act="quick_gelu")
PATCH = 14
TOKENS = dict(image_token_id=380, video_token_id=381, vision_start_token_id=378,
              vision_end_token_id=379)


def make_config():
    new_form = {"rope_parameters": dict(ROPE)}                       # transformers 5.x
    old_form = {"rope_theta": ROPE["rope_theta"],                    # 4.x
                "rope_scaling": {"type": "mrope", "mrope_section": ROPE["mrope_section"]}}
    # Both forms at once first (what made the committed fixtures with 5.17);
    # one form alone only if a version rejects the other.
    cfg, err = None, None
    for rope in ({**new_form, **old_form}, new_form, old_form):
        try:
            cfg = Qwen2VLConfig(text_config={**TEXT, **rope}, vision_config=dict(VISION),
                                tie_word_embeddings=False, **TOKENS)
            break
        except (TypeError, ValueError, KeyError) as e:
            print("warning: config with", sorted(rope), "rejected:", e)
            err = e
    if cfg is None:
        raise err
    for c in (cfg, cfg.text_config, cfg.vision_config):
        c._attn_implementation = "eager"
    return cfg


def randomize(model, gen):
    """O(1) signals: std 0.2 matrices, norm gains 1 + N(0, 0.1), biases N(0, 0.1).
    ln_q (the merger's LayerNorm) counts as a norm."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            shape = p.shape
            if name.endswith("embed_tokens.weight"):
                v = torch.randn(shape, generator=gen) * 0.5
            elif ("norm" in name or "ln_q" in name) and name.endswith("weight"):
                v = 1.0 + 0.1 * torch.randn(shape, generator=gen)
            elif name.endswith("bias"):
                v = 0.1 * torch.randn(shape, generator=gen)
            else:
                v = 0.2 * torch.randn(shape, generator=gen)
            p.copy_(v.to(torch.float32))


def make_inputs(gen):
    def text(n):
        return torch.randint(0, 370, (n,), generator=gen).tolist()
    vs, ve, img = TOKENS["vision_start_token_id"], TOKENS["vision_end_token_id"], TOKENS["image_token_id"]
    grids = [(1, 4, 6), (1, 8, 6)]
    answer = text(7)
    s0 = text(5) + [vs] + [img] * 6 + [ve] + text(4) + [vs] + [img] * 12 + [ve] + answer
    l0 = [-100] * (len(s0) - 7) + answer
    s1 = text(20)
    l1 = [-100] * 8 + s1[8:]
    L = max(len(s0), len(s1))
    ids = torch.zeros((2, L), dtype=torch.long)
    mask = torch.zeros((2, L), dtype=torch.long)
    labels = torch.full((2, L), -100, dtype=torch.long)
    for b, (s, l) in enumerate(((s0, l0), (s1, l1))):
        ids[b, :len(s)] = torch.tensor(s)
        mask[b, :len(s)] = 1
        labels[b, :len(l)] = torch.tensor(l)
    mm = (ids == img).long()
    n_patches = sum(t * h * w for t, h, w in grids)
    pixels = torch.randn((n_patches, 3 * 2 * PATCH * PATCH), generator=gen).to(torch.float32)
    grid = torch.tensor(grids, dtype=torch.long)
    return ids, mask, labels, mm, pixels, grid


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="tests/data/qwen2vl_parity")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    print("transformers", transformers.__version__, "torch", torch.__version__)
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1234)

    cfg = make_config()
    model = Qwen2VLForConditionalGeneration(cfg)
    randomize(model, gen)
    model = model.double()
    model.train()
    tc = model.config.text_config
    rp = getattr(tc, "rope_parameters", None) or tc.rope_scaling
    print("rope:", rp, "attn:", model.config._attn_implementation)
    assert list(rp["mrope_section"]) == ROPE["mrope_section"], rp
    assert not rp.get("mrope_interleaved", False), rp
    names = dict(model.named_parameters())
    assert "model.visual.patch_embed.proj.bias" not in names
    assert "model.language_model.layers.0.self_attn.q_proj.bias" in names
    assert "model.language_model.layers.0.self_attn.o_proj.bias" not in names

    n_all = 0
    for n, p in model.named_parameters():
        print("param %-70s %s" % (n, tuple(p.shape)))
        n_all += p.numel()
    print("parameter tensors:", len(list(model.parameters())), "elements:", n_all)

    ids, mask, labels, mm, pixels, grid = make_inputs(gen)
    kwargs = dict(input_ids=ids, attention_mask=mask, labels=labels,
                  pixel_values=pixels.double(), image_grid_thw=grid)
    if "mm_token_type_ids" in inspect.signature(model.forward).parameters:
        kwargs["mm_token_type_ids"] = mm
    out = model(**kwargs)
    loss = out.loss
    assert torch.isfinite(loss), loss
    loss.backward()
    print("loss %.12f  logits norm %.6f" % (loss.item(), out.logits.norm().item()))

    # position ids as the model computed them
    pos = None
    try:
        sig = inspect.signature(model.model.get_rope_index).parameters
        pk = {"input_ids": ids, "image_grid_thw": grid, "attention_mask": mask}
        if "mm_token_type_ids" in sig:
            pk["mm_token_type_ids"] = mm
        pk = {k: v for k, v in pk.items() if k in sig}
        pos = model.model.get_rope_index(**pk)[0]
    except Exception as e:  # informative only
        print("warning: get_rope_index failed:", e)

    params = {n: p.detach().to(torch.float32).contiguous() for n, p in model.named_parameters()}
    save_file(params, os.path.join(args.out, "model.safetensors"), metadata={"format": "pt"})
    save_file({"input_ids": ids, "attention_mask": mask, "labels": labels,
               "mm_token_type_ids": mm, "pixel_values": pixels.contiguous(),
               "image_grid_thw": grid}, os.path.join(args.out, "inputs.safetensors"))
    outs = {"loss": loss.detach().reshape(1).to(torch.float64),
            "logits": out.logits.detach().to(torch.float32).contiguous()}
    if pos is not None:
        outs["position_ids"] = pos.to(torch.long).contiguous()
    for n, p in model.named_parameters():
        g = p.grad if p.grad is not None else torch.zeros_like(p)
        outs["grad." + n] = g.detach().to(torch.float32).contiguous()
        print("%-70s %-18s grad norm %.6e" % (n, tuple(p.shape), g.norm().item()))
    save_file(outs, os.path.join(args.out, "outputs.safetensors"))
    with open(os.path.join(args.out, "config.json"), "w") as f:
        f.write(model.config.to_json_string())
    print("parameters:", sum(p.numel() for p in model.parameters()))
    print("wrote", args.out)


if __name__ == "__main__":
    sys.exit(main())
