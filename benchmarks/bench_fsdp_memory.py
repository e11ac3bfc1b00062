"""Memory per process of trainer.strategy=fsdp over 2 processes vs DDP over 2 vs one process (CPU, gloo).

    python benchmarks/bench_fsdp_memory.py                   # a ~270 MB TinyMLP (4 Linear(4096, 4096)), 1 run each
    python benchmarks/bench_fsdp_memory.py --runs 3          # median of 3 runs of each
    python benchmarks/bench_fsdp_memory.py --width 2048      # smaller, quicker

The source is the model's own random weights, saved as .safetensors in a temporary folder; the run
loads all of it (every tensor, the head too), trains everything (freeze=none, AdamW) for
--steps steps of data=synthetic (8x8 images, flattened: 64 features) and evaluates 64 samples.

Figures, per process:

- peak RSS: each process's own high-water mark (VmHWM of /proc/self/status), read as it exits
  (run.py is started through a small wrapper that records it per rank).
- state: parameters + gradients + AdamW state (exp_avg, exp_avg_sq) in bytes. Under fsdp each
  rank reports its local shards after the first step (summary.json: fsdp.local_bytes); for DDP
  and one process every process holds all of it (4 bytes x params x 4).

The source's weights are memory-mapped: the pages of the file a process reads count in its RSS,
though the machine holds them once (page cache).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
IN_FEATURES, CLASSES = 64, 5  # data=synthetic: 1 x 8 x 8 images, 5 classes


def sizes(width: int, layers: int) -> list[int]:
    return [width] * layers


def make_source(folder: Path, width: int, layers: int) -> tuple[Path, int]:
    import torch
    from safetensors.torch import save_file

    sys.path.insert(0, str(ROOT))
    from transfer_pipeline.models import TinyMLP

    torch.manual_seed(0)
    model = TinyMLP(IN_FEATURES, sizes(width, layers), CLASSES)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    path = folder / "mlp.safetensors"
    save_file(state, path)
    return path, sum(v.numel() for v in state.values())


def args_for(source: Path, width: int, layers: int, steps: int, run_dir: Path) -> list[str]:
    hidden = ",".join(map(str, sizes(width, layers)))
    return ["device=cpu", "model=tiny_mlp", f"model.in_features={IN_FEATURES}", f"model.hidden=[{hidden}]",
            f"model.num_classes={CLASSES}", f"source.path={source}", "mapping=default",
            "freeze=none", "data=synthetic", "data.num_samples=256", "data.num_classes=5", "trainer.batch_size=32",
            "trainer.epochs=1", f"trainer.limit_train_batches={steps}", "trainer.progress=false",
            "trainer.save_checkpoints=false", f"hydra.run.dir={run_dir}"]


WRAPPER = r"""
import atexit, os, runpy, sys
def peak():
    with open("/proc/self/status") as f:
        hwm = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
    with open(os.path.join(os.environ["BENCH_PEAK_DIR"], f"rank{os.environ.get('RANK', '0')}"), "w") as f:
        f.write(str(hwm))
atexit.register(peak)
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def run(kind: str, common: list[str], run_dir: Path) -> dict:
    peaks = run_dir.parent / f"{run_dir.name}_peaks"
    peaks.mkdir()
    wrapper = run_dir.parent / "peak_wrapper.py"
    wrapper.write_text(WRAPPER)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "BENCH_PEAK_DIR": str(peaks)}
    base = [sys.executable, str(wrapper), "run.py"]
    if kind != "one":
        base = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone", str(wrapper),
                "run.py"]
    extra = ["trainer.strategy=fsdp", "trainer.fsdp.units=['re:fc[0-9]+']"] if kind == "fsdp" else (
        ["trainer.strategy=ddp"] if kind == "ddp" else [])
    cmd = [*base, *common, *extra]
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env, timeout=1800)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{kind} failed:\n{' '.join(cmd)}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    summary = json.loads((run_dir / "summary.json").read_text())
    shown = [c for c in cmd if c != str(wrapper)]
    out = {"command": " ".join(shown), "seconds": seconds,
           "rss": [int((peaks / f"rank{i}").read_text()) for i in range(1 if kind == "one" else 2)]}
    if kind == "fsdp":
        rows = summary["fsdp"]["local_bytes"]
        out["rss_after_step1"] = [row["peak_rss"] for row in rows]
        out["state"] = [row["total"] for row in rows]
        out["source_bytes_read"] = summary["fsdp"]["source_bytes_read"]
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--width", type=int, default=4096)
    p.add_argument("--layers", type=int, default=5, help="hidden layers: layers-1 Linear(width, width) between them")
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--runs", type=int, default=1, help="runs of each; the median is shown")
    args = p.parse_args()
    print(f"machine: {platform.node()}, {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
          f"python {platform.python_version()}")
    print("command: python benchmarks/bench_fsdp_memory.py " + " ".join(sys.argv[1:]))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        source, params = make_source(tmp, args.width, args.layers)
        whole = 4 * params
        print(f"model: TinyMLP {IN_FEATURES} -> {args.layers} x {args.width} -> {CLASSES}: {params:,} parameters, "
              f"{whole / 2**20:.0f} MiB (fp32); params + grads + AdamW state of one process: "
              f"{4 * whole / 2**20:.0f} MiB")
        results: dict[str, list[dict]] = {"one": [], "ddp": [], "fsdp": []}
        for i in range(args.runs):
            for kind in results:  # each a fresh process tree
                run_dir = tmp / f"{kind}_{i}"
                results[kind].append(run(kind, args_for(source, args.width, args.layers, args.steps, run_dir), run_dir))
        print(f"\nexample command (fsdp): {results['fsdp'][0]['command']}\n")
        med = statistics.median
        mib = lambda b: f"{b / 2**20:,.0f} MiB"  # noqa: E731
        print(f"{'':<22}{'peak RSS':>12}{'params+grads+AdamW':>22}{'wall':>9}")
        rows = [("one process", "one", 0), ("DDP, 2: rank 0", "ddp", 0), ("DDP, 2: rank 1", "ddp", 1),
                ("FSDP, 2: rank 0", "fsdp", 0), ("FSDP, 2: rank 1", "fsdp", 1)]
        for label, kind, rank in rows:
            rss = med(r["rss"][rank] for r in results[kind])
            state = med(r["state"][rank] for r in results[kind]) if kind == "fsdp" else 4 * whole
            print(f"{label:<22}{mib(rss):>12}{mib(state):>22}{med(r['seconds'] for r in results[kind]):>8.1f}s")
        print(f"\nsource bytes read per rank under fsdp: {results['fsdp'][0]['source_bytes_read']}")
        print(f"runs: {args.runs} of each (median shown)")


if __name__ == "__main__":
    main()
