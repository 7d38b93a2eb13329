#!/usr/bin/env python3
"""Time PyTorch's fused attention back-ends at the 8B workload's shapes.

This measures the alternatives to kernels/attention.cu on the same card:
cuDNN's fused attention (SDPBackend.CUDNN_ATTENTION), FlashAttention-2
(FLASH_ATTENTION) and the memory-efficient kernel (EFFICIENT_ATTENTION).
The FLOP counts are the ones tests/test_ops_cuda's VL_ATTENTION_BENCH uses
(4 L^2 d H forward, causal half, backward 2.5x forward), so the TFLOP/s
columns compare directly.  Run on the GPU machine:

    python3 tests/bench/sdpa_torch.py

Shapes: vision one image of 8,960 patches, 16 heads of 72, bidirectional;
text 2,902 tokens, 32 query heads of 128 over 8 key/value heads, causal.
"""
import sys
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

SHAPES = [
    # name, L, query heads, kv heads, head dim, causal
    ("vision", 8960, 16, 16, 72, False),
    ("text", 2902, 32, 8, 128, True),
]
BACKENDS = [
    ("cudnn", SDPBackend.CUDNN_ATTENTION),
    ("flash2", SDPBackend.FLASH_ATTENTION),
    ("efficient", SDPBackend.EFFICIENT_ATTENTION),
]


def timed(fn, reps=20):
    """Median of 5 timings of reps back-to-back calls, ms per call."""
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(5):
        start = torch.cuda.Event(enable_timing=True)
        stop = torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(reps):
            fn()
        stop.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(stop) / reps)
    times.sort()
    return times[len(times) // 2]


def main():
    dev = torch.device("cuda")
    print("device", torch.cuda.get_device_name(0), "torch", torch.__version__,
          "cudnn", torch.backends.cudnn.version())
    for name, L, hq, hkv, d, causal in SHAPES:
        flop_fwd = 4.0 * L * L * d * hq * (0.5 if causal else 1.0)
        g = torch.Generator(device=dev).manual_seed(1)
        q = torch.randn(1, hq, L, d, device=dev, dtype=torch.bfloat16, generator=g)
        k = torch.randn(1, hkv, L, d, device=dev, dtype=torch.bfloat16, generator=g)
        v = torch.randn(1, hkv, L, d, device=dev, dtype=torch.bfloat16, generator=g)
        # Every back-end gets K/V expanded to the query heads (the same FLOPs;
        # not all of them take enable_gqa).
        k = k.repeat_interleave(hq // hkv, dim=1).contiguous()
        v = v.repeat_interleave(hq // hkv, dim=1).contiguous()
        dout = torch.randn(1, hq, L, d, device=dev, dtype=torch.bfloat16, generator=g)
        ref = None
        for bname, backend in BACKENDS:
            qq, kk, vv = (t.detach().clone().requires_grad_(True) for t in (q, k, v))
            try:
                with sdpa_kernel([backend]):
                    out = F.scaled_dot_product_attention(qq, kk, vv, is_causal=causal)
                    fwd = timed(lambda: F.scaled_dot_product_attention(
                        qq, kk, vv, is_causal=causal))

                    def fwd_bwd():
                        o = F.scaled_dot_product_attention(qq, kk, vv, is_causal=causal)
                        torch.autograd.grad(o, (qq, kk, vv), dout)
                    both = timed(fwd_bwd, reps=10)
            except RuntimeError as exc:
                print(f"{name:7s} {bname:10s} not available: {str(exc).splitlines()[0]}")
                continue
            bwd = both - fwd
            if ref is None:
                ref = out.float()
                diff = 0.0
            else:
                diff = ((out.float() - ref).norm() / ref.norm()).item()
            print(f"{name:7s} {bname:10s} fwd {fwd:7.3f} ms {flop_fwd / fwd / 1e9:6.1f} TFLOP/s"
                  f"   bwd {bwd:7.3f} ms {2.5 * flop_fwd / bwd / 1e9:6.1f} TFLOP/s"
                  f"   out vs cudnn {diff:.1e}")
            sys.stdout.flush()


if __name__ == "__main__":
    main()
