"""Check `signflow predict` and `signflow train --init` against PyTorch's reference model.

    python scripts/torch_parity.py SIGNFLOW_BINARY [--device cpu|vulkan] [--work DIR]

Needs torch, numpy, safetensors (see ../shared/DESIGN.md, Benchmarks). Builds a fresh
SignTransformer of a shape other than the golden fixture's, a feature pack with ragged masks,
then compares (1) the logits of `signflow predict --output` with PyTorch's (eval mode), and
(2) the losses and final parameters of a few AdamW steps of `signflow train --init` with
PyTorch's. Prints the errors and exits 1 when a tolerance is missed.
"""
import argparse, json, os, shutil, subprocess, sys

import numpy as np
import torch
from safetensors.numpy import save_file, load_file

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "shared", "reference"))
from sign_transformer import ModelConfig, SignTransformer, loss_fn, save_safetensors  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("signflow")
ap.add_argument("--device", default="cpu")
ap.add_argument("--work", default="/tmp/signflow-torch-parity")
ap.add_argument("--steps", type=int, default=4)
a = ap.parse_args()
os.makedirs(a.work, exist_ok=True)
torch.manual_seed(1)
cfg = ModelConfig(num_features=469, num_classes=7, d_model=48, num_heads=3, num_layers=3,
                  ff_dim=96, max_seq_len=20, dropout=0.0)
model = SignTransformer(cfg).double()
with torch.no_grad():
    for n, p in model.named_parameters():
        if "norm" in n:
            p.add_(torch.randn_like(p) * 0.1)
model_path = f"{a.work}/model.safetensors"
save_safetensors(model, model_path)

b, t = 6, 17
x = torch.randn(b, t, cfg.num_features, dtype=torch.float64)
lengths = torch.tensor([17, 1, 5, 16, 9, 2])
mask = torch.arange(t).unsqueeze(0) < lengths.unsqueeze(1)
x = x * mask.unsqueeze(-1)
y = torch.randint(0, cfg.num_classes, (b,))
classes = [f"c{i}" for i in range(cfg.num_classes)]
pack = f"{a.work}/features.safetensors"
save_file({"features": x.float().numpy(), "mask": mask.numpy().astype(np.uint8), "labels": y.numpy()},
          pack, metadata={"format": "signflow-features/1", "classes": json.dumps(classes)})
x = x.float().double()  # what the pack holds

ok = True
# 1. predict
model.eval()
with torch.no_grad():
    want = model(x, mask).numpy()
out = f"{a.work}/pred.safetensors"
subprocess.run([a.signflow, "predict", "--model", model_path, "--input", pack, "--output", out,
                "--device", a.device], check=True, capture_output=True)
got = load_file(out)["logits"]
rel = np.abs(got - want).max() / np.abs(want).max()
print(f"predict logits on {a.device}: max rel err {rel:.2e} (tol 1e-5)")
ok &= rel <= 1e-5

# 2. AdamW steps through train --init
lr, wd = 5e-3, 0.1
model.train()
opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=wd)
losses = []
for _ in range(a.steps):
    opt.zero_grad()
    l = loss_fn(model(x, mask), y)
    losses.append(l.item())
    l.backward()
    opt.step()
run = f"{a.work}/run-{a.device}"
shutil.rmtree(run, ignore_errors=True)  # train refuses to start a run over an old one
subprocess.run([a.signflow, "train", "--data", pack, "--init", model_path, "--out", run, "--device", a.device,
                "--epochs", str(a.steps), "--batch-size", str(b), "--lr", str(lr), "--weight-decay", str(wd),
                "--warmup-steps", "0", "--warmup-ratio", "0", "--schedule", "constant", "--label-smoothing", "0",
                "--grad-clip", "0", "--dropout", "0", "--no-shuffle", "--log-every", "1"], check=True,
               capture_output=True)
steps = [json.loads(l) for l in open(f"{run}/metrics.jsonl") if '"step"' in l]
got_losses = np.array([s["loss"] for s in steps])
lrel = np.abs(got_losses - np.array(losses)).max() / np.abs(np.array(losses)).max()
print(f"train --init losses on {a.device}: max rel err {lrel:.2e} (tol 1e-4)")
ok &= lrel <= 1e-4
final = load_file(f"{run}/final.safetensors")
worst = 0.0
for n, p in model.named_parameters():
    w, g = p.detach().numpy(), final[n]
    if n.endswith("in_proj_bias"):
        w = np.concatenate([w[:cfg.d_model], w[2 * cfg.d_model:]])
        g = np.concatenate([g[:cfg.d_model], g[2 * cfg.d_model:]])
    worst = max(worst, float(np.abs(w - g).max()))
print(f"parameters after {a.steps} steps on {a.device}: max abs err {worst:.2e} (tol 5e-4)")
ok &= worst <= 5e-4
sys.exit(0 if ok else 1)
