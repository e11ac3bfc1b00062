"""Every speed figure the docs quote, as paired ratios against the hand-written way, measured the same way.

    python benchmarks/bench_ratios.py                 # 5 runs of each pair (about 4 minutes on 2 cores)
    python benchmarks/bench_ratios.py --runs 7 --size-gb 0.5

Pairs (whole processes take turns, alternating which goes first; the ratio is the median over the
runs, and each side's median is shown):
- `python run.py mode=plan` vs `python -c "import torch"`: what the pipeline adds to start-up.
- `python run.py` (the default experiment: 6 epochs of the shipped digits transfer, with its run
  folder, checkpoints, metrics and plots) vs a hand-written script of the same transfer (same model,
  shipped weights, data, freezing, unfreezing event, optimizer, epochs; it writes only the weights).
- the training loop, samples/s of the pipeline's loop / a minimal hand-written loop (one process,
  epoch by epoch; rows of benchmarks/bench_train.py).
- `python run.py mode=export` of a Lightning checkpoint vs the hand-written conversion (rows of
  benchmarks/bench_export.py: hash cache warm and cold, peak memory too).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
ROOT = Path(__file__).resolve().parent.parent

import bench_export  # noqa: E402  (this folder, put on the path above)

HAND_DEFAULT = r"""
import sys, torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from sklearn.datasets import load_digits
sys.path.insert(0, {root!r})
from transfer_pipeline.models import DigitsCNN

torch.manual_seed(0)
raw = load_digits()
keep = raw.target >= 5
x = (torch.tensor(raw.images[keep], dtype=torch.float32).unsqueeze(1) / 16.0 - 0.30) / 0.38
y = torch.tensor(raw.target[keep]) - 5
order = torch.randperm(len(y))
val, train = order[: len(y) // 5], order[len(y) // 5:]
model = DigitsCNN(num_classes=5)
weights = {{k: v for k, v in load_file({weights!r}).items() if not k.startswith("head.")}}
model.load_state_dict(weights, strict=False)
for p in model.parameters():
    p.requires_grad_(False)
for p in model.head.parameters():
    p.requires_grad_(True)
optimizer = torch.optim.AdamW(model.head.parameters(), lr=0.01, weight_decay=0.0)
for epoch in range(6):
    if epoch == 3:  # the last block trains from here, at a smaller LR
        for p in model.block2.parameters():
            p.requires_grad_(True)
        optimizer.add_param_group({{"params": list(model.block2.parameters()), "lr": 0.002}})
    model.train()
    for name in ("stem", "block1", "block2") if epoch < 3 else ("stem", "block1"):
        getattr(model, name).eval()  # frozen blocks keep their BatchNorm statistics
    shuffled = train[torch.randperm(len(train))]
    for i in range(0, len(shuffled), 64):
        batch = shuffled[i:i + 64]
        loss = F.cross_entropy(model(x[batch]), y[batch])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        accuracy = (model(x[val]).argmax(1) == y[val]).float().mean().item()
    print(f"epoch {{epoch}} val_acc {{accuracy:.4f}}")
save_file(model.state_dict(), sys.argv[1])
"""


def train_rows(rounds: int) -> list[tuple[str, float]]:
    """The pipeline's loop / the hand loop (samples/s): bench_train.py's CPU rows, its cache row left out."""
    import bench_train
    import torch

    args = argparse.Namespace(epochs=3, rounds=rounds, batch_size=64, device="cpu", precision="32",
                              channels_last=False, compile=False, model="resnet18", image_size=32, samples=1024,
                              skip_small=False)
    device = torch.device("cpu")
    return [(name, bench_train.row(name, make, args, device, **kw)[3])
            for name, make, kw in bench_train.benchmark_rows(args, cache=False)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5, help="runs of each side of each whole-process pair")
    parser.add_argument("--size-gb", type=float, default=1.0, help="the export's checkpoint")
    parser.add_argument("--rounds", type=int, default=4, help="training rows: turns each loop takes (3 epochs each)")
    args = parser.parse_args()
    if args.runs < 1 or args.rounds < 1 or not args.size_gb > 0:
        parser.error("--runs and --rounds must be at least 1, --size-gb above 0")
    python = sys.executable
    weights = str(ROOT / "transfer_pipeline" / "assets" / "digits_cnn_0to4.safetensors")
    lines = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        counter = iter(range(10 ** 6))

        def fresh(name: str) -> str:  # a new run folder for every run: the pipeline refuses to reuse one
            return f"hydra.run.dir={folder / f'{name}_{next(counter)}'}"

        plan = [python, "run.py", "mode=plan"]
        subprocess.run([*plan, fresh("plan")], cwd=ROOT, check=True, capture_output=True)  # .pyc files, page cache
        plan_s, torch_s, plan_ratio = paired(plan, [python, "-c", "import torch"], args.runs, fresh, "plan")
        lines.append(("start-up: `python run.py mode=plan` / `python -c \"import torch\"`",
                      f"{plan_s:.2f} / {torch_s:.2f} s", plan_ratio, "<= 1.25x"))
        hand = [python, "-c", HAND_DEFAULT.format(root=str(ROOT), weights=weights), str(folder / "hand.safetensors")]
        run_s, hand_s, run_ratio = paired([python, "run.py"], hand, args.runs, fresh, "default")
        lines.append(("the default run: `python run.py` / the hand-written transfer", f"{run_s:.2f} / {hand_s:.2f} s",
                      run_ratio, "well under a minute"))
    for name, ratio in train_rows(args.rounds):
        lines.append((f"training loop, {name}: pipeline / hand samples/s", "", ratio, ">= 0.97"))
    figures = bench_export.export_figures(args.size_gb, args.runs)
    med = bench_export.medians(figures)
    hand_s, hand_rss = med[bench_export.HAND_ROW]
    for row in (bench_export.WARM_ROW, bench_export.COLD_ROW):
        which = row.removeprefix("python run.py mode=export, ")
        lines.append((f"export {figures['size'] / 2 ** 30:.2f} GiB .ckpt, {which}: time / hand",
                      f"{med[row][0]:.2f} / {hand_s:.2f} s", med[row][0] / hand_s, "<= 1.5x"))
        lines.append((f"export, {which}: peak RSS / hand", f"{med[row][1] / 2 ** 30:.2f} / {hand_rss / 2 ** 30:.2f} GiB",
                      med[row][1] / hand_rss, "<= 1.25x"))
    print("command: python benchmarks/bench_ratios.py " + " ".join(sys.argv[1:]))
    print(f"machine: {bench_export.machine()}")
    print(f"whole-process pairs: median of {args.runs} runs each; training rows: median of {args.rounds} x 3 "
          "epoch-by-epoch pairs")
    print(f"{'pair':<76} {'medians':>18} {'ratio':>7}  target")
    for name, sides, ratio, target in lines:
        print(f"{name:<76} {sides:>18} {ratio:>6.2f}x  {target}")


def paired(first: list[str], second: list[str], runs: int, fresh, name: str) -> tuple[float, float, float]:
    """(median seconds of `first`, of `second`, median of the per-run ratios); `first` is a run.py command and
    gets a new run folder each time."""
    a, b = [], []
    for i in range(runs):
        order = ((first + [fresh(name)], a), (second, b))
        for cmd, out in order if i % 2 == 0 else order[::-1]:
            out.append(bench_export.measure(cmd, None, lambda: None)[0])
    return statistics.median(a), statistics.median(b), statistics.median(x / y for x, y in zip(a, b))


if __name__ == "__main__":
    main()
