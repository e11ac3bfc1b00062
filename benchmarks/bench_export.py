"""`python run.py mode=export` against a hand-written conversion script: wall time and peak memory.

    python benchmarks/bench_export.py                  # a 1 GiB Lightning-style checkpoint, 5 runs each
    python benchmarks/bench_export.py --size-gb 0.25 --runs 3

The source is a Lightning-style `.ckpt` (`{"state_dict": {"model.fc0.weight": ...}, "epoch": ...,
"optimizer_states": [...]}`) of a TinyMLP made of Linear(8192, 8192) layers. The hand-written
script is the fast way to convert one by hand: build the model on the meta device,
`torch.load(mmap=True, weights_only=True)`, strip the prefix, `load_state_dict(assign=True)`,
`safetensors.torch.save_file`. The pipeline is the whole `run.py mode=export` command, which also
plans and reports the load, checks every loaded weight for NaN/inf, hashes the source and writes
its run folder. Both are whole processes (interpreter start included), taking turns
(alternating which goes first) with a warm page cache; each timed run starts by deleting the
last output and flushing pending writes (`sync`), so neither side pays for the other's
writeback. Each figure is the median of `--runs`; peak memory is the process's high-water RSS.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WIDTH = 8192

HAND = r"""
import sys, torch
from safetensors.torch import save_file
sys.path.insert(0, {root!r})
from transfer_pipeline.models import TinyMLP

with torch.device("meta"):
    model = TinyMLP(in_features={width}, hidden=[{width}] * ({layers} - 1), num_classes={width})
ckpt = torch.load(sys.argv[1], map_location="cpu", mmap=True, weights_only=True)
sd = {{k.removeprefix("model."): v for k, v in ckpt["state_dict"].items()}}
model.load_state_dict(sd, assign=True)
save_file(model.state_dict(), sys.argv[2])
"""


SAME = r"""
import sys
from safetensors.torch import load_file
a, b = load_file(sys.argv[1]), load_file(sys.argv[2])
print(a.keys() == b.keys() and all(bool((a[k] == b[k]).all()) for k in a))
"""


def make_checkpoint(path: Path, layers: int) -> None:
    subprocess.run([sys.executable, __file__, "--make", str(path), str(layers)], check=True)


def _make(path: Path, layers: int) -> None:
    import torch

    g = torch.Generator().manual_seed(0)
    sd = {}
    for i in range(layers):
        sd[f"model.fc{i}.weight"] = torch.empty(WIDTH, WIDTH).uniform_(-0.01, 0.01, generator=g)
        sd[f"model.fc{i}.bias"] = torch.zeros(WIDTH)
    torch.save({"state_dict": sd, "epoch": 3, "global_step": 300, "pytorch-lightning_version": "2.4.0",
                "optimizer_states": [{"state": {}, "param_groups": [{"lr": 0.1}]}], "lr_schedulers": []}, path)


def measure(cmd: list[str], before=lambda: None) -> tuple[float, int]:
    start = time.perf_counter()
    before()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    err = proc.stderr.read()
    proc.stderr.close()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(cmd[:3])} ... failed:\n{err[-3000:]}")
    return seconds, usage.ru_maxrss * 1024


def main() -> None:
    if sys.argv[1:2] == ["--make"]:
        return _make(Path(sys.argv[2]), int(sys.argv[3]))
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-gb", type=float, default=1.0)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    layers = max(1, round(args.size_gb * 2 ** 30 / (WIDTH * WIDTH * 4)))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        ckpt = folder / "lightning.ckpt"
        make_checkpoint(ckpt, layers)
        out = folder / "hand.safetensors"
        hand = [sys.executable, "-c", HAND.format(root=str(ROOT), width=WIDTH, layers=layers), str(ckpt), str(out)]
        model = ["model=tiny_mlp", f"model.in_features={WIDTH}", f"model.hidden=[{','.join([str(WIDTH)] * (layers - 1))}]",
                 f"model.num_classes={WIDTH}", "mapping=default", "freeze=none", "mode=export", f"source.path={ckpt}"]
        pipeline = [sys.executable, str(ROOT / "run.py"), *model, f"hydra.run.dir={folder / 'run'}"]
        figures: dict[str, list[tuple[float, int]]] = {"hand": [], "pipeline": []}
        from safetensors.torch import save_file  # noqa: F401  (fails here, not in a child, if missing)

        subprocess.run(hand, check=True)  # warm-up: page cache, .pyc files; and the two outputs compared
        subprocess.run(pipeline, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        same = subprocess.run([sys.executable, "-c", SAME, str(out), str(folder / "run" / "model.safetensors")],
                              capture_output=True, text=True).stdout.strip() == "True"
        for i in range(args.runs):
            order = (("hand", hand), ("pipeline", pipeline)) if i % 2 == 0 else (("pipeline", pipeline), ("hand", hand))
            for side, cmd in order:
                # each run writes a new file into a quiet page cache: the last output goes (its dirty pages
                # with it) and what is pending is flushed, or one side's writeback would slow the other;
                # both are timed with that clean-up, the same for each
                figures[side].append(measure(cmd, before=lambda: (out.unlink(missing_ok=True),
                                                                  shutil.rmtree(folder / "run", ignore_errors=True),
                                                                  os.sync())))
        size = ckpt.stat().st_size
    med = {k: (statistics.median(s for s, _ in v), statistics.median(r for _, r in v)) for k, v in figures.items()}
    print(f"source: {size / 2 ** 30:.2f} GiB Lightning-style .ckpt ({layers} x Linear({WIDTH}, {WIDTH})); "
          f"median of {args.runs} whole-process runs each; outputs identical: {same}")
    print(f"{'command':<52} {'seconds':>8} {'peak RSS':>10}")
    print(f"{'hand-written meta + mmap + assign + save_file':<52} {med['hand'][0]:>8.2f} {med['hand'][1] / 2**30:>6.2f} GiB")
    print(f"{'python run.py mode=export':<52} {med['pipeline'][0]:>8.2f} {med['pipeline'][1] / 2**30:>6.2f} GiB")
    print(f"ratio pipeline / hand: time {med['pipeline'][0] / med['hand'][0]:.2f}x, "
          f"peak RSS {med['pipeline'][1] / med['hand'][1]:.2f}x (targets: <= 1.5x, <= 1.25x)")


if __name__ == "__main__":
    main()
