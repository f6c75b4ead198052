"""PyTorch peer for `signflow bench --filter seed` (the replaced system's benchmarks), timed as
the bench times them: the reference model at its defaults (100 classes, 64 frames), random
weights and inputs uniform in [-1, 1].

- predictions_1000: 1,000 clips (a pool of 32 distinct ones, clip i is i mod 32), each a
  forward under torch.inference_mode and its top 5 classes; one clip at a time ("single"),
  then in batches of 32 ("batched", a batch's time shared among its clips). 5 warm-up calls;
  the total, and p50 and p99 per prediction (nearest rank).
- train_50x10k: the median of --steps training steps at batch 32 (forward with dropout, loss,
  backward, clipping to norm 1, AdamW) after 3 warm-up steps, projected to 50 epochs of
  ceil(10000 / 32) steps.

usage: OMP_NUM_THREADS=2 /tmp/venv/bin/python benches/torch_seed_peer.py [--threads 2]
       [--steps 10]
Prints one JSON row per case, with the bench's field names.
"""
import argparse
import json
import math
import os
import statistics
import sys
import time

sys.path.insert(
    0,
    os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "reference"),
)
import torch  # noqa: E402
from sign_transformer import ModelConfig, SignTransformer, loss_fn  # noqa: E402

BATCH = 32
PREDICTIONS = 1000
PROJECTED_EPOCHS = 50
PROJECTED_CLIPS = 10_000
WARM_UP = 5
TOP = 5


def percentile(values, p):
    s = sorted(values)
    return s[min(max(math.ceil(p * len(s)), 1), len(s)) - 1]


def uniform(*shape):
    return torch.rand(*shape) * 2 - 1


def predictions(model, cfg, pool, mode):
    size = 1 if mode == "single" else BATCH
    batches = []
    for first in range(0, PREDICTIONS, size):
        n = min(size, PREDICTIONS - first)
        ids = [(first + i) % BATCH for i in range(n)]
        x = pool[ids].contiguous()
        batches.append((x, torch.ones(n, cfg.max_seq_len, dtype=torch.bool)))

    def predict(x, mask):
        torch.topk(torch.softmax(model(x, mask), dim=-1), TOP, dim=-1)

    with torch.inference_mode():
        for i in range(WARM_UP):
            predict(*batches[i % len(batches)])
        per_clip = []
        start = time.perf_counter()
        for x, mask in batches:
            t = time.perf_counter()
            predict(x, mask)
            ms = (time.perf_counter() - t) * 1e3
            per_clip += [ms / x.shape[0]] * x.shape[0]
        total = (time.perf_counter() - start) * 1e3
    return dict(op="predictions_1000", mode=mode, dtype="f32", batch=size, seq=cfg.max_seq_len,
                clips=PREDICTIONS, total_ms=total, p50_ms=percentile(per_clip, 0.5),
                p99_ms=percentile(per_clip, 0.99))


def training(cfg, steps):
    model = SignTransformer(cfg)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    x = uniform(BATCH, cfg.max_seq_len, cfg.num_features)
    mask = torch.ones(BATCH, cfg.max_seq_len, dtype=torch.bool)
    y = torch.randint(0, cfg.num_classes, (BATCH,))

    def step():
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x, mask), y).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    for _ in range(3):
        step()
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        step()
        times.append((time.perf_counter() - t) * 1e3)
    step_ms = statistics.median(times)
    projected = step_ms * math.ceil(PROJECTED_CLIPS / BATCH) * PROJECTED_EPOCHS / 1e3
    return dict(op="train_50x10k", dtype="f32", batch=BATCH, step_ms=step_ms,
                min_ms=min(times), max_ms=max(times), projected_s=projected)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=10)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    cfg = ModelConfig()
    model = SignTransformer(cfg).eval()
    pool = uniform(BATCH, cfg.max_seq_len, cfg.num_features)
    common = dict(device="cpu", backend="pytorch " + torch.__version__,
                  threads=torch.get_num_threads())
    for mode in ("single", "batched"):
        print(json.dumps({**predictions(model, cfg, pool, mode), **common}), flush=True)
    print(json.dumps({**training(cfg, a.steps), **common}), flush=True)


if __name__ == "__main__":
    main()
