"""PyTorch CPU peer for `signflow bench --filter attention` (and the memory-bound ops): scaled
dot-product attention forward, and forward + backward, at the bench's shapes, f32, on this
machine's threads (2 here), timed like signflow bench (median of 9 samples after a warm-up).
usage: /tmp/venv/bin/python benches/torch_attention_peer.py [--long]
"""
import statistics
import sys
import time

import torch
import torch.nn.functional as F


def median_ms(f, min_sample=0.02, samples=9):
    f()
    t = time.perf_counter()
    f()
    reps = max(1, int(min_sample / max(time.perf_counter() - t, 1e-6)))
    times = []
    for _ in range(samples):
        t = time.perf_counter()
        for _ in range(reps):
            f()
        times.append((time.perf_counter() - t) / reps * 1e3)
    return statistics.median(times)


def attention(b, h, t, d):
    q, k, v = (torch.randn(b, h, t, d, requires_grad=True) for _ in range(3))
    mask = torch.ones(b, 1, 1, t, dtype=torch.bool)
    dout = torch.randn(b, h, t, d)

    def fwd():
        with torch.no_grad():
            F.scaled_dot_product_attention(q, k, v, attn_mask=mask)

    def fwd_bwd():
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        o.backward(dout)

    flops = 4 * b * h * t * t * d
    for name, f, factor in (("attention_fwd", fwd, 1.0), ("attention_fwd_bwd", fwd_bwd, 3.5)):
        ms = median_ms(f)
        print(f"{name:18} b{b} t{t} h{h} d{d}  {ms:9.3f} ms  {factor * flops / ms / 1e6:7.1f} GFLOP/s")


def memory_ops(rows=2048, cols=1024):
    x, y = torch.randn(rows, cols), torch.randn(rows, cols)
    out = torch.empty_like(x)
    ln = torch.nn.LayerNorm(cols)
    # The backward alone, as signflow's layernorm_bwd: dx, dw and db from x, dy and the saved
    # statistics.
    _, mean, rstd = torch.ops.aten.native_layer_norm(x, [cols], ln.weight, ln.bias, 1e-5)

    def layernorm_bwd():
        torch.ops.aten.native_layer_norm_backward(
            y, x, [cols], mean, rstd, ln.weight, ln.bias, [True, True, True]
        )

    mb = x.numel() * 4
    for name, f, moved in (
        ("copy", lambda: out.copy_(x), 2 * mb),
        ("add", lambda: torch.add(x, y, out=out), 3 * mb),
        ("gelu_fwd", lambda: F.gelu(x), 2 * mb),
        ("layernorm_fwd", lambda: ln(x), 2 * mb),
        ("layernorm_bwd", layernorm_bwd, 3 * mb),
    ):
        with torch.no_grad():
            ms = median_ms(f)
        print(f"{name:18} {rows}x{cols}  {ms:9.3f} ms  {moved / ms / 1e6:7.1f} GB/s")


print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
attention(32, 8, 64, 32)
if "--long" in sys.argv:
    attention(8, 16, 1024, 64)
memory_ops()
