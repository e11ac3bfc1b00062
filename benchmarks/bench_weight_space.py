"""Weight-space transfer on a shift: in-distribution (val) and shifted accuracy of each method, one table.

    python benchmarks/bench_weight_space.py                    # rotated digits, seed 0
    python benchmarks/bench_weight_space.py --shift noisy --seeds 0 1 2

The shipped digits transfer (DigitsCNN trained on digits 0-4 -> digits 5-9, 6 epochs) with
`data.shift` (the val images rotated 30 degrees, or noisy): every row is `python run.py ...` in a
subprocess, its numbers read from summary.json (val_acc and shifted_acc of the weights it writes:
the last epoch's for training runs).

- fine-tuned: `freeze=none`, every tensor trained (the endpoint the others are measured against);
- WiSE-FT, chosen by val: `mode=interpolate` toward that run, a picked by val_acc (the mode's rule);
- WiSE-FT, best shifted at the fine-tuned val_acc or better: the a an oracle would pick from
  interpolate.csv (shown to say what the interpolation can give, not what the mode picks);
- greedy soup: `mode=soup` of a sweep of three learning rates (0.003, 0.01, 0.02) of the fine-tune;
- LP-FT: `experiment=lp_ft`;
- L2-SP: `freeze=none optim.regularize=l2_sp` (alpha 0.01, beta 0.0001);
- the default transfer (`python run.py`: the head, then block2 at epoch 3) for reference.

With --seeds, each row is the median over the seeds (the seed moves the val split, the new head's
init and the shuffling).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run(args: list[str], folder: Path, multirun: bool = False) -> dict:
    where = f"hydra.sweep.dir={folder}" if multirun else f"hydra.run.dir={folder}"
    cmd = [sys.executable, str(ROOT / "run.py"), *(["-m"] if multirun else []), *args, where]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "2"})
    if out.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{out.stderr[-2000:]}")
    return {} if multirun else json.loads((folder / "summary.json").read_text())


def one_seed(seed: int, shift: str, tmp: Path) -> dict[str, tuple[float, float]]:
    data = [f"data.shift={shift}", f"seed={seed}"]
    rows: dict[str, tuple[float, float]] = {}

    def keep(name: str, s: dict) -> None:
        rows[name] = (s["val_acc"], s["shifted_acc"])

    tuned = tmp / f"tuned{seed}"
    keep("fine-tuned (freeze=none)", run(["freeze=none", *data], tuned))
    s = run(["mode=interpolate", f"interpolate.run={tuned}", *data], tmp / f"wise{seed}")
    keep("WiSE-FT, a by val", s)
    with open(tmp / f"wise{seed}" / "interpolate.csv") as f:
        table = [{k: float(v) for k, v in r.items()} for r in csv.DictReader(f)]
    end = next(r for r in table if r["alpha"] == 1.0)
    oracle = max((r for r in table if r["val_acc"] >= end["val_acc"]), key=lambda r: r["shifted_acc"])
    rows["WiSE-FT, best shifted at >= fine-tuned val"] = (oracle["val_acc"], oracle["shifted_acc"])
    run(["freeze=none", *data, "optim.lr=0.003,0.01,0.02"], tmp / f"sweep{seed}", multirun=True)
    keep("greedy soup (3 learning rates)", run(["mode=soup", f"soup.sweep={tmp / f'sweep{seed}'}", *data],
                                               tmp / f"soup{seed}"))
    keep("LP-FT (experiment=lp_ft)", run(["experiment=lp_ft", *data], tmp / f"lpft{seed}"))
    keep("L2-SP (optim.regularize=l2_sp)", run(["freeze=none", "optim.regularize=l2_sp", *data], tmp / f"l2sp{seed}"))
    keep("default transfer (head, then block2)", run(data, tmp / f"default{seed}"))
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shift", default="rotated", choices=["rotated", "noisy"])
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    a = p.parse_args()
    print(f"machine: {platform.node() or 'unknown'}, {platform.machine()}, {os.cpu_count()} cores; python "
          f"{platform.python_version()}")
    print(f"command: python benchmarks/bench_weight_space.py --shift {a.shift} --seeds {' '.join(map(str, a.seeds))}")
    with tempfile.TemporaryDirectory() as tmp:
        per_seed = [one_seed(seed, a.shift, Path(tmp)) for seed in a.seeds]
    names = list(per_seed[0])
    width = max(map(len, names)) + 2
    print(f"\n{'method':<{width}}{'val_acc':>9}{'shifted_acc':>13}   (digits 5-9, shift: {a.shift}; median of "
          f"{len(a.seeds)} seed(s))")
    for name in names:
        val = statistics.median(r[name][0] for r in per_seed)
        shifted = statistics.median(r[name][1] for r in per_seed)
        print(f"{name:<{width}}{val:>9.4f}{shifted:>13.4f}")


if __name__ == "__main__":
    main()
