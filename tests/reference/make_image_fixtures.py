#!/usr/bin/env python3
"""Image-preprocessing parity fixtures (run on the GPU machine: Pillow,
numpy, transformers 5.17, safetensors).

Draws 12 small test images procedurally (gradients, shapes, noise), saves
them in different formats (PNG RGB 8-bit, 16-bit RGB, grey, palette, RGBA;
JPEG, JPEG with EXIF orientations 3, 6 and 8), then runs transformers'
Pillow image processor with Qwen3-VL settings (patch 16, merge 2, mean = std
= 0.5, min_pixels 4096, max_pixels 16384) and writes
tests/data/images/reference.safetensors:
  NAME.pixel_values (F16)  NAME.grid (I64)  NAME.resized (U8, h x w x 3:
  Pillow's BICUBIC resize of the RGB image, the step before rescaling)
  python3 tests/reference/make_image_fixtures.py --out tests/data/images

With --qwen2vl it draws nothing: it reads QWEN2_NAMES from the folder (the
images written before) and runs the processor with Qwen2-VL's published
settings (patch 14, merge 2, factor 28, OpenAI CLIP mean and std, min_pixels
3136, max_pixels 12845056 as in Qwen2-VL-7B-Instruct's
preprocessor_config.json), writing reference-qwen2vl.safetensors (same keys):
  python3 tests/reference/make_image_fixtures.py --qwen2vl --out tests/data/images
"""
import argparse
import os
import struct
import zlib

import numpy as np
from PIL import Image, ImageDraw, ImageOps
from safetensors.numpy import save_file

MIN_PIXELS, MAX_PIXELS = 4096, 16384
QWEN3 = dict(patch_size=16, temporal_patch_size=2, merge_size=2, image_mean=[0.5] * 3,
             image_std=[0.5] * 3, min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS)
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
QWEN2 = dict(patch_size=14, temporal_patch_size=2, merge_size=2, image_mean=CLIP_MEAN,
             image_std=CLIP_STD, min_pixels=3136, max_pixels=12845056)
QWEN2_NAMES = ["rgb8.png", "wide.png", "tall.jpg", "small.jpg", "exif6.jpg", "alpha.png"]


def draw(w, h, seed):
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([(x * 255 // max(w - 1, 1)), (y * 255 // max(h - 1, 1)),
                     ((x + y) * 128 // max(w + h - 2, 1))], -1).astype(np.float64)
    base += rng.normal(0, 18, base.shape)
    img = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8), "RGB")
    d = ImageDraw.Draw(img)
    for _ in range(4):
        x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
        x1, y1 = x0 + int(rng.integers(4, w // 2 + 5)), y0 + int(rng.integers(4, h // 2 + 5))
        col = tuple(int(c) for c in rng.integers(0, 256, 3))
        (d.ellipse if rng.random() < 0.5 else d.rectangle)([x0, y0, x1, y1], fill=col)
    return img


def png16(path, arr16):
    """A 16-bit RGB PNG written by hand (Pillow does not write RGB;16)."""
    h, w, _ = arr16.shape
    raw = b"".join(b"\x00" + arr16[r].astype(">u2").tobytes() for r in range(h))
    def chunk(t, data):
        return struct.pack(">I", len(data)) + t + data + struct.pack(">I", zlib.crc32(t + data) & 0xFFFFFFFF)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
                + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))


def processor(settings=QWEN3):
    import transformers
    cls = getattr(transformers, "Qwen2VLImageProcessorPil", None)
    if cls is None:
        from transformers.models.qwen2_vl import image_processing_qwen2_vl as m
        cls = m.Qwen2VLImageProcessor
    kw = {k: v for k, v in settings.items() if k not in ("min_pixels", "max_pixels")}
    lo, hi = settings["min_pixels"], settings["max_pixels"]
    try:
        p = cls(size={"shortest_edge": lo, "longest_edge": hi}, **kw)
    except Exception:
        p = cls(min_pixels=lo, max_pixels=hi, **kw)
    print("processor:", cls.__name__, transformers.__version__, settings)
    return p


def reference(proc, path, patch):
    """The processor's output for one image file, and Pillow's resize."""
    src = ImageOps.exif_transpose(Image.open(path))
    rgb = to_rgb(src)
    res = proc(images=[rgb], return_tensors="np")
    pv, grid = res["pixel_values"], res["image_grid_thw"]
    gh, gw = int(grid[0][1]), int(grid[0][2])
    resized = np.asarray(rgb.resize((gw * patch, gh * patch), Image.BICUBIC))
    key = os.path.basename(path).replace(".", "_")
    print(f"{os.path.basename(path):12s} {src.mode:5s} -> {rgb.size} grid {grid.tolist()} pixel_values {pv.shape}")
    return {key + ".pixel_values": pv.astype(np.float16),
            key + ".grid": np.asarray(grid, dtype=np.int64).reshape(3),
            key + ".resized": resized.astype(np.uint8)}


def qwen2vl(out):
    proc = processor(QWEN2)
    tensors = {}
    for name in QWEN2_NAMES:
        tensors.update(reference(proc, os.path.join(out, name), QWEN2["patch_size"]))
    save_file(tensors, os.path.join(out, "reference-qwen2vl.safetensors"))


def to_rgb(img):
    """transformers' convert_to_rgb: alpha composited on white."""
    if img.mode == "RGB":
        return img
    rgba = img.convert("RGBA")
    bg = Image.new("RGBA", rgba.size, (255, 255, 255))
    return Image.alpha_composite(bg, rgba).convert("RGB")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="tests/data/images")
    ap.add_argument("--qwen2vl", action="store_true", help="Qwen2-VL settings on the existing images")
    args = ap.parse_args()
    out = args.out
    if args.qwen2vl:
        return qwen2vl(out)
    os.makedirs(out, exist_ok=True)
    specs = [("rgb8.png", 64, 64), ("wide.png", 203, 97), ("tall.jpg", 40, 150), ("grey.png", 120, 90),
             ("palette.png", 90, 121), ("alpha.png", 77, 133), ("rgb16.png", 100, 61), ("small.jpg", 33, 33),
             ("exif3.jpg", 96, 72), ("exif6.jpg", 130, 70), ("exif8.jpg", 70, 110), ("large.jpg", 300, 220)]
    proc = processor()
    tensors = {}
    for i, (name, w, h) in enumerate(specs):
        img = draw(w, h, i)
        path = os.path.join(out, name)
        if name == "grey.png":
            img.convert("L").save(path)
        elif name == "palette.png":
            img.convert("P", palette=Image.ADAPTIVE, colors=64).save(path)
        elif name == "alpha.png":
            a = img.convert("RGBA")
            alpha = Image.fromarray((np.add.outer(np.arange(h), np.arange(w)) * 255 // (w + h)).astype(np.uint8))
            a.putalpha(alpha)
            a.save(path)
        elif name == "rgb16.png":
            arr = np.asarray(img).astype(np.uint16) * 257 + np.uint16(i)
            png16(path, arr)
        elif name.startswith("exif"):
            ex = Image.Exif()
            ex[0x0112] = int(name[4])
            img.save(path, quality=90, exif=ex.tobytes())
        else:
            img.save(path, quality=90)
        src = ImageOps.exif_transpose(Image.open(path))
        rgb = to_rgb(src)
        res = proc(images=[rgb], return_tensors="np")
        pv, grid = res["pixel_values"], res["image_grid_thw"]
        gh, gw = int(grid[0][1]), int(grid[0][2])
        resized = np.asarray(rgb.resize((gw * 16, gh * 16), Image.BICUBIC))
        key = name.replace(".", "_")
        tensors[key + ".pixel_values"] = pv.astype(np.float16)
        tensors[key + ".grid"] = np.asarray(grid, dtype=np.int64).reshape(3)
        tensors[key + ".resized"] = resized.astype(np.uint8)
        print(f"{name:12s} {src.mode:5s} {w}x{h} -> {rgb.size} grid {grid.tolist()} pixel_values {pv.shape}")
    save_file(tensors, os.path.join(out, "reference.safetensors"))


if __name__ == "__main__":
    main()
