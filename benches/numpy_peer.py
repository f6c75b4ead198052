"""numpy (OpenBLAS) float32 matrix products at the sizes `signflow bench` uses, for comparison
on the same machine. Run with OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE unset:
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python3 benches/numpy_peer.py
"""
import time

import numpy as np

SIZES = [(s, s, s) for s in (256, 512, 1024, 2048)] + [
    (2048, n, k) for k, n in ((469, 256), (256, 768), (256, 1024), (1024, 256))
]

rng = np.random.default_rng(0)
for m, n, k in SIZES:
    a = rng.uniform(-1, 1, (m, k)).astype(np.float32)
    b = rng.uniform(-1, 1, (k, n)).astype(np.float32)
    a @ b
    first = time.perf_counter()
    a @ b
    reps = max(1, int(0.02 / max(time.perf_counter() - first, 1e-6)))
    samples = []
    for _ in range(9):
        t = time.perf_counter()
        for _ in range(reps):
            a @ b
        samples.append((time.perf_counter() - t) / reps)
    med = sorted(samples)[len(samples) // 2]
    print(f"matmul {m}x{n}x{k}: median {med * 1e3:.3f} ms, {2 * m * n * k / med / 1e9:.1f} GFLOP/s")
