"""The pipeline's training loop against a plain hand-written loop: samples/s of each and the ratio.

    python benchmarks/bench_train.py                 # CPU, synthetic 8x8 data, DigitsCNN and a small MLP
    python benchmarks/bench_train.py --epochs 5 --device cuda

Same model, data, batch size, optimizer and seed on both sides; each row is the median of the
epochs after a warm-up epoch. The pipeline side is `transfer_pipeline.training.loop.train` with
everything a run switches on by default (events, per-step LRs, the finite-loss check, metrics),
so the ratio is what the pipeline's bookkeeping costs. Rows: a small CNN, an MLP, resnet18 full
fine-tune and resnet18 with only `fc` trainable (the frozen backbone builds no autograd graph:
only its forward runs), and the frozen/full ratio. (Feature caching and GPU rows: issue 12.)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def hold_frozen_bn(model) -> None:
    """BatchNorm layers whose parameters are all frozen stay in eval (the pipeline's `freeze.bn: auto`)."""
    from torch import nn

    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and not any(p.requires_grad for p in m.parameters()):
            m.eval()


def plain_epoch(model, loader, optimizer, device) -> float:
    import torch.nn.functional as F

    model.train()
    hold_frozen_bn(model)
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

    from transfer_pipeline.tuning.batchnorm import bn_modules

    policy = {name: "auto" for name in bn_modules(model)}
    state = train(model, optimizer, loader, val, epochs=epochs, events=(), bn_policy=policy, device=device,
                  precision="32")
    return [row["samples_per_s"] for row in state.history]


def row(name: str, make_model, epochs: int, device, batch_size: int, shape=(1, 8, 8), samples: int = 4096,
        trainable: str | None = None) -> tuple[str, float, float]:
    """`trainable`: a top-level module that alone trains (the rest frozen, its BatchNorm layers in eval)."""
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    g = torch.Generator().manual_seed(0)
    x = torch.randn(samples, *shape, generator=g)
    y = torch.randint(0, 5, (samples,), generator=g)
    results = {}
    for side in ("plain", "pipeline"):
        torch.manual_seed(0)
        model = make_model().to(device)
        if trainable is not None:
            for n, p in model.named_parameters():
                p.requires_grad_(n.startswith(trainable + "."))
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=1e-3)
        for pg in optimizer.param_groups:
            pg["name"] = "default"
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
    parser.add_argument("--image-size", type=int, default=32, help="resnet18 rows: synthetic RGB images of this size")
    args = parser.parse_args()
    import torch
    import torchvision
    from torch import nn

    from transfer_pipeline.models import DigitsCNN

    device = torch.device(args.device)
    small = dict(shape=(1, 8, 8), samples=4096)
    rgb = dict(shape=(3, args.image_size, args.image_size), samples=512)
    rows = [("DigitsCNN (full fine-tune)", lambda: DigitsCNN(num_classes=5), small),
            ("MLP 64-256-5", lambda: nn.Sequential(nn.Flatten(), nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 5)), small),
            ("resnet18 full fine-tune", lambda: torchvision.models.resnet18(num_classes=5), rgb),
            ("resnet18 only fc trainable", lambda: torchvision.models.resnet18(num_classes=5), {**rgb, "trainable": "fc"})]
    print(f"device {device}, batch {args.batch_size}, median of {args.epochs} epochs after a warm-up, synthetic data "
          f"(4096 x 1x8x8; resnet18: 512 x 3x{args.image_size}x{args.image_size})")
    print(f"{'model':<30} {'plain samples/s':>16} {'pipeline samples/s':>19} {'ratio':>6}")
    rates = {}
    for name, make, kw in rows:
        name, plain, pipe = row(name, make, args.epochs, device, args.batch_size, **kw)
        rates[name] = pipe
        print(f"{name:<30} {plain:>16,.0f} {pipe:>19,.0f} {pipe / plain:>6.2f}")
    frozen = rates["resnet18 only fc trainable"] / rates["resnet18 full fine-tune"]
    print(f"frozen backbone (only fc) vs full fine-tune, pipeline: {frozen:.2f}x")


if __name__ == "__main__":
    main()
