"""The pipeline's training loop against a plain hand-written loop: samples/s of each and the ratio.

    python benchmarks/bench_train.py                 # CPU, synthetic 8x8 data, DigitsCNN and a small MLP
    python benchmarks/bench_train.py --epochs 5 --device cuda

Same model, data, batch size, optimizer and seed on both sides; each row is the median of the
epochs after a warm-up epoch. The pipeline side is `transfer_pipeline.training.loop.train` with
everything a run switches on by default (events, per-step LRs, the finite-loss check, metrics),
so the ratio is what the pipeline's bookkeeping costs. (A first version: issue 12 adds resnet18
rows, a frozen backbone and feature caching.)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def plain_epoch(model, loader, optimizer, device) -> float:
    import torch.nn.functional as F

    model.train()
    start, n = time.perf_counter(), 0
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        n += len(y)
    if device.type == "cuda":
        import torch

        torch.cuda.synchronize(device)
    return n / (time.perf_counter() - start)


def pipeline_epochs(model, loader, val, optimizer, device, epochs: int) -> list[float]:
    from transfer_pipeline.training.loop import train

    state = train(model, optimizer, loader, val, epochs=epochs, events=(), bn_policy="train", device=device,
                  precision="32")
    return [row["samples_per_s"] for row in state.history]


def row(name: str, make_model, epochs: int, device, batch_size: int) -> tuple[str, float, float]:
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    g = torch.Generator().manual_seed(0)
    x = torch.randn(4096, 1, 8, 8, generator=g)
    y = torch.randint(0, 5, (4096,), generator=g)
    results = {}
    for side in ("plain", "pipeline"):
        torch.manual_seed(0)
        model = make_model().to(device)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        loader = DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=True,
                            generator=torch.Generator().manual_seed(0))
        val = DataLoader(TensorDataset(x[:256], y[:256]), batch_size=batch_size)
        if side == "plain":
            rates = [plain_epoch(model, loader, optimizer, device) for _ in range(epochs + 1)][1:]
        else:
            rates = pipeline_epochs(model, loader, val, optimizer, device, epochs + 1)[1:]
        results[side] = statistics.median(rates)
    return name, results["plain"], results["pipeline"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=3, help="measured epochs per side (after one warm-up)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    import torch
    from torch import nn

    from transfer_pipeline.models import DigitsCNN

    device = torch.device(args.device)
    models = {"DigitsCNN (full fine-tune)": lambda: DigitsCNN(num_classes=5),
              "MLP 64-256-5": lambda: nn.Sequential(nn.Flatten(), nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 5))}
    print(f"device {device}, batch {args.batch_size}, median of {args.epochs} epochs after a warm-up, synthetic 4096 x 8x8")
    print(f"{'model':<30} {'plain samples/s':>16} {'pipeline samples/s':>19} {'ratio':>6}")
    for name, make in models.items():
        name, plain, pipe = row(name, make, args.epochs, device, args.batch_size)
        print(f"{name:<30} {plain:>16,.0f} {pipe:>19,.0f} {pipe / plain:>6.2f}")


if __name__ == "__main__":
    main()
