"""The pipeline's training loop against a plain hand-written loop: samples/s of each and the ratio.

    python benchmarks/bench_train.py                        # CPU: small CNN, MLP, resnet18 rows
    python benchmarks/bench_train.py --device cuda --model resnet50 --image-size 224 --batch-size 256 \\
        --samples 8192 --precision bf16 --channels-last [--compile]    # the GPU rows

Same model, data, batch size, precision, memory format, optimizer and seed on both sides. After a
warm-up epoch each, the sides take turns epoch by epoch (`--rounds` x `--epochs` epochs each,
alternating which goes first); samples/s are the medians of the measured epochs, the ratio the
median of the epoch-by-epoch ratios (the machine's drift cancels within a pair). The pipeline side is
`transfer_pipeline.training.loop.train` with its engine (engine.py) and what a run switches on
by default (per-step LRs, deferred NaN check, metrics, events), so the ratio is what the
pipeline's bookkeeping costs. The hand-written loop is the minimal one: no metrics while it trains,
a validation pass after each epoch (untimed on both sides).

Rows: a small CNN and an MLP on 8x8 inputs (per-step overhead shows most there), the ResNet full
fine-tune, the ResNet with only `fc` trainable (frozen backbone, BatchNorm held: autograd builds
no graph through it), and only `fc` with `trainer.cache_features` (the backbone runs once, then
the head trains on its cached outputs; the hand-written side is the frozen loop). Then the
frozen/full and cached/frozen ratios.
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


def validate(model, loader, device) -> float:
    import torch

    model.eval()
    correct = 0
    with torch.no_grad():
        for x, y in loader:
            correct += int((model(x.to(device)).argmax(1) == y.to(device)).sum())
    return correct / len(loader.dataset)


def plain_epoch(model, loader, optimizer, device, autocast, channels_last: bool, forward=None) -> float:
    import torch
    import torch.nn.functional as F

    model.train()
    hold_frozen_bn(model)
    forward = forward or model
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start, n = time.perf_counter(), 0
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast():
            logits = forward(x)
        loss = F.cross_entropy(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        n += len(y)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return n / (time.perf_counter() - start)


class PipelineSide:
    """The pipeline's loop, one epoch per call (the loop continues from its state)."""

    def __init__(self, model, loaders, optimizer, engine, cache: bool) -> None:
        from transfer_pipeline.training import feature_cache
        from transfer_pipeline.training.position import TrainState
        from transfer_pipeline.tuning.batchnorm import bn_modules

        self.model, self.optimizer, self.engine = model, optimizer, engine
        self.policy = {name: "auto" for name in bn_modules(model)}
        self.head, self.built, self.state = None, 0.0, TrainState()
        if cache:
            t0 = time.perf_counter()
            trainable = {n for n, p in model.named_parameters() if p.requires_grad}
            name, loaders = feature_cache.prepare(model, trainable, self.policy, loaders, engine)
            assert name is not None, "the cache should apply to this row"
            self.head, self.built = model.get_submodule(name), time.perf_counter() - t0
        self.loaders = loaders

    def epoch(self) -> float:
        from transfer_pipeline.training.loop import TrainContext, train

        epochs = len(self.state.history) + 1
        train(TrainContext(self.model, self.optimizer, self.loaders[0], self.loaders[1], self.engine, epochs, events=(),
                           bn_policy=self.policy, forward_module=self.head), self.state)
        return self.state.history[-1]["samples_per_s"]


def make_side(make_model, x, y, args, device, trainable: str | None):
    import torch
    from torch.utils.data import TensorDataset

    from transfer_pipeline.data.datasets import DataBundle, loaders

    torch.manual_seed(0)
    model = make_model().to(device)
    if args.channels_last:
        model.to(memory_format=torch.channels_last)
    if trainable is not None:
        for n, p in model.named_parameters():
            p.requires_grad_(n.startswith(trainable + "."))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-3)
    for pg in optimizer.param_groups:
        pg["name"] = "default"
    bundle = DataBundle(TensorDataset(x, y), TensorDataset(x[:256], y[:256]), [str(c) for c in range(5)])
    return model, optimizer, loaders(bundle, args.batch_size, 0, pin_memory=device.type == "cuda")


def row(name: str, make_model, args, device, shape, samples: int, trainable: str | None = None,
        cache: bool = False) -> tuple[str, float, float, float, float]:
    """`trainable`: a top-level module that alone trains (the rest frozen, its BatchNorm layers in eval)."""
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from transfer_pipeline.training.engine import Engine

    g = torch.Generator().manual_seed(0)
    x = torch.randn(samples, *shape, generator=g)
    y = torch.randint(0, 5, (samples,), generator=g)
    rates: dict[str, list[float]] = {"plain": [], "pipeline": []}
    model, optimizer, _ = make_side(make_model, x, y, args, device, trainable)
    train_loader = DataLoader(TensorDataset(x, y), batch_size=args.batch_size, shuffle=True,
                              generator=torch.Generator().manual_seed(0), pin_memory=device.type == "cuda")
    engine = Engine(device, args.precision, args.channels_last, args.compile)
    forward = torch.compile(model) if args.compile else model

    val_loader = DataLoader(TensorDataset(x[:256], y[:256]), batch_size=args.batch_size * 2)

    def plain() -> float:
        rate = plain_epoch(model, train_loader, optimizer, device, engine.autocast, args.channels_last, forward)
        validate(model, val_loader, device)  # untimed, as on the pipeline side (which evaluates every epoch)
        return rate

    p_model, p_optimizer, p_loaders = make_side(make_model, x, y, args, device, trainable)
    side = PipelineSide(p_model, p_loaders, p_optimizer, engine, cache)
    plain(), side.epoch()  # warm-up
    for i in range(args.rounds * args.epochs):  # epoch by epoch, taking turns at going first: drift hits both
        first, second = (plain, side.epoch) if i % 2 == 0 else (side.epoch, plain)
        a, b = first(), second()
        rates["plain"].append(a if first is plain else b)
        rates["pipeline"].append(b if first is plain else a)
    pairs = statistics.median(q / p for p, q in zip(rates["plain"], rates["pipeline"]))  # drift cancels pair by pair
    return name, statistics.median(rates["plain"]), statistics.median(rates["pipeline"]), pairs, side.built


def benchmark_rows(args, cache: bool = True) -> list[tuple[str, object, dict]]:
    """(name, model builder, row() keywords) of each row: the small ones unless --skip-small, then the ResNet ones
    (the cache_features row with `cache`). bench_ratios.py measures the same rows."""
    import torchvision
    from torch import nn

    from transfer_pipeline.models import DigitsCNN

    resnet = getattr(torchvision.models, args.model)
    small = dict(shape=(1, 8, 8), samples=4096)
    rgb = dict(shape=(3, args.image_size, args.image_size), samples=args.samples)
    rows = [] if args.skip_small else [
        ("small CNN (full fine-tune)", lambda: DigitsCNN(num_classes=5), small),
        ("MLP 64-256-5", lambda: nn.Sequential(nn.Flatten(), nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 5)), small)]
    rows += [(f"{args.model} full fine-tune", lambda: resnet(num_classes=5), rgb),
             (f"{args.model} only fc trainable", lambda: resnet(num_classes=5), {**rgb, "trainable": "fc"})]
    if cache:
        rows.append((f"{args.model} fc + cache_features", lambda: resnet(num_classes=5),
                     {**rgb, "trainable": "fc", "cache": True}))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=3, help="measured epochs per side and round (after a warm-up)")
    parser.add_argument("--rounds", type=int, default=4, help="turns each side takes")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--model", default="resnet18", help="the torchvision ResNet of the large rows")
    parser.add_argument("--image-size", type=int, default=32, help="ResNet rows: synthetic RGB images of this size")
    parser.add_argument("--samples", type=int, default=1024, help="ResNet rows: images per epoch")
    parser.add_argument("--precision", default="32", choices=("32", "bf16", "16"))
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--compile", action="store_true", help="torch.compile on both sides")
    parser.add_argument("--skip-small", action="store_true", help="only the ResNet rows")
    args = parser.parse_args()
    import torch

    device = torch.device(args.device)
    rows = benchmark_rows(args)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    print(f"device {where}, torch {torch.__version__}, batch {args.batch_size}, precision {args.precision}"
          f"{', channels_last' if args.channels_last else ''}{', compiled' if args.compile else ''}; median of "
          f"{args.rounds} x {args.epochs} epochs after warm-ups; synthetic data (small rows 4096 x 1x8x8, "
          f"{args.model} rows {args.samples} x 3x{args.image_size}x{args.image_size})")
    print(f"{'model':<36} {'plain samples/s':>16} {'pipeline samples/s':>19} {'ratio':>6}")
    rates = {}
    for name, make, kw in rows:
        name, plain, pipe, ratio, built = row(name, make, args, device, **kw)
        rates[name] = pipe
        note = f"   (cache built in {built:.2f} s, once per run)" if built else ""
        print(f"{name:<36} {plain:>16,.0f} {pipe:>19,.0f} {ratio:>6.2f}{note}", flush=True)
    full, frozen = rates[f"{args.model} full fine-tune"], rates[f"{args.model} only fc trainable"]
    cached = rates[f"{args.model} fc + cache_features"]
    print(f"frozen backbone (only fc) vs full fine-tune, pipeline: {frozen / full:.2f}x")
    print(f"cache_features vs frozen backbone, pipeline: {cached / frozen:.2f}x")


if __name__ == "__main__":
    main()
