"""`python run.py mode=export` against a hand-written conversion script: wall time and peak memory.

    python benchmarks/bench_export.py                     # a 1 GiB Lightning-style checkpoint, 5 runs of each row
    python benchmarks/bench_export.py --size-gb 0.25 --runs 3
    python benchmarks/bench_export.py --breakdown         # and where the export's time goes (traced runs)

The source is a Lightning-style `.ckpt` (`{"state_dict": {"model.fc0.weight": ...}, "epoch": ...,
"optimizer_states": [...]}`) of a TinyMLP made of Linear(8192, 8192) layers. The hand-written
script is the fast way to convert one by hand: build the model on the meta device,
`torch.load(mmap=True, weights_only=True)`, strip the prefix, `load_state_dict(assign=True)`,
`safetensors.torch.save_file`. The pipeline is the whole `run.py mode=export` command with every
check on: it plans and reports the load, checks every loaded weight for NaN/inf, hashes the
source (SHA-256) and writes its run folder.

What is controlled, the same for every timed run of every row:
- whole processes (interpreter start included), taking turns in a rotating order;
- before each: the last outputs deleted, pending writes flushed (`sync`), and the source read once
  so that it is in the page cache (neither side pays for the other's writeback or for a cold disk);
  this is outside the timed span, as is the writeback of the run's own output after it exits;
- the source-hash cache (`$XDG_CACHE_HOME/transfer_pipeline/sha256.json`) is the benchmark's own:
  "hash cache warm" finds the source's hash there (a re-run, the common case), "hash cache cold"
  starts from an empty cache (the first export of a new file, which reads it whole to hash it).
Each figure is the median of `--runs` (min and max shown); peak memory is the process's high-water RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
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

# The pipeline in this process with a clock on the parts of an export: run as `bench_export.py --trace OUT run.py
# args...`. Functions are wrapped where the pipeline looks them up when it calls them (module attributes), so the
# run is the same run; the marks are wall-clock times (time.time()) so that the parent can place them in its span.
PARTS = (  # (module, attribute, part of the breakdown)
    ("transfer_pipeline.run.lifecycle", "run_job", "the run's steps (from the folder's claim to summary.json)"),
    ("transfer_pipeline.sources.read", "read_source", "read the source's header (names, shapes, dtypes)"),
    ("transfer_pipeline.api", "plan_report", "plan the load and report it"),
    ("transfer_pipeline.mapping.apply", "check_values", "value check (NaN/inf) of every loaded tensor, pages unmapped"),
    ("transfer_pipeline.mapping.apply", "assign_weights", "assign the mapped tensors to the meta-built model"),
    ("transfer_pipeline.run.provenance", "sha256_file", "SHA-256 of the source (its own thread)"),
    ("transfer_pipeline.files", "save_weights", "write model.safetensors"),
)


def trace(out: str, argv: list[str]) -> None:
    import builtins
    import runpy

    marks: list[tuple[str, float, float]] = []
    started = time.time()
    real_import = builtins.__import__
    waiting = list(PARTS)  # wrapped as soon as their module is imported, so that nothing is imported early

    def wrap(module: str, attr: str, label: str) -> None:
        mod = sys.modules[module]
        inner = getattr(mod, attr)

        def timed(*args, **kwargs):  # noqa: ANN202
            t = time.time()
            try:
                return inner(*args, **kwargs)
            finally:
                marks.append((label, t, time.time()))
        setattr(mod, attr, timed)

    def timed_import(name, *args, **kwargs):  # noqa: ANN001, ANN202 - builtins.__import__'s signature
        top = name.partition(".")[0]
        first = top in ("torch", "hydra") and top not in sys.modules
        t = time.time()
        try:
            return real_import(name, *args, **kwargs)
        finally:
            if first:
                marks.append((f"import {top}", t, time.time()))
            for part in [p for p in waiting if p[0] in sys.modules and hasattr(sys.modules[p[0]], p[1])]:
                waiting.remove(part)
                wrap(*part)

    builtins.__import__ = timed_import
    sys.argv = argv
    try:
        runpy.run_path(argv[0], run_name="__main__")
    except SystemExit as e:
        if e.code not in (0, None):
            raise
    finally:
        Path(out).write_text(json.dumps({"started": started, "marks": marks}))


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


def read_through(path: Path) -> None:
    """Every page of `path` into the page cache (as after any earlier read of it)."""
    with open(path, "rb") as f:
        while f.readinto(bytearray(1 << 24)):
            pass


def measure(cmd: list[str], env: dict[str, str], before) -> tuple[float, int, float]:
    """(seconds, peak RSS bytes, wall-clock start) of one whole process, `before()` done first and untimed."""
    before()
    start, wall = time.perf_counter(), time.time()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    err = proc.stderr.read()  # read while it runs: a full pipe would block the child
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    proc.stderr.close()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(cmd[:3])} ... failed:\n{err[-3000:]}")
    return seconds, usage.ru_maxrss * 1024, wall


def machine() -> str:
    import safetensors
    import torch

    cpu = platform.processor() or "cpu"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
        kb = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                  if line.startswith("MemTotal:"))
        memory = f", {kb / 2 ** 20:.0f} GiB memory"
    except (OSError, StopIteration, ValueError):
        memory = ""
    return (f"{cpu}, {os.cpu_count()} cores{memory}, {platform.system()} {platform.release()}; Python "
            f"{platform.python_version()}, torch {torch.__version__}, safetensors {safetensors.__version__}")


def breakdown(pipeline: list[str], env: dict[str, str], before, folder: Path, runs: int) -> list[tuple[str, float]]:
    """Median seconds of each part of `runs` traced exports (hash cache as `env` has it), in the order they happen."""
    per_part: dict[str, list[float]] = {}
    for _ in range(runs):
        out = folder / "trace.json"
        seconds, _, wall = measure([sys.executable, __file__, "--trace", str(out), *pipeline[1:]], env, before)
        got = json.loads(out.read_text())
        marks = {label: (t0 - wall, t1 - wall) for label, t0, t1 in got["marks"]}
        steps = marks.pop("the run's steps (from the folder's claim to summary.json)")
        begun = got["started"] - wall
        parts = {"interpreter start, until run.py's first line": begun}
        parts.update({label: t1 - t0 for label, (t0, t1) in marks.items() if t1 <= steps[0]})
        parts["run.py's other imports, Hydra's composition, the run folder's claim"] = steps[0] - begun - sum(
            t1 - t0 for t0, t1 in marks.values() if t1 <= steps[0])
        inside = {label: t1 - t0 for label, (t0, t1) in marks.items() if t0 >= steps[0]}
        parts.update(inside)
        parts["the rest of the steps (build on meta, logs, load_report.json, summary.json, wait for the hash)"] = (
            steps[1] - steps[0] - sum(v for label, v in inside.items() if not label.startswith("SHA")))
        parts["interpreter exit"] = seconds - steps[1]
        parts["whole process"] = seconds
        for label, value in parts.items():
            per_part.setdefault(label, []).append(value)
    return [(label, statistics.median(values)) for label, values in per_part.items()]


def export_figures(size_gb: float, runs: int, with_breakdown: bool = False) -> dict:
    """Every row's runs, and the traced parts when asked: what `main` prints and bench_ratios.py quotes."""
    layers = max(1, round(size_gb * 2 ** 30 / (WIDTH * WIDTH * 4)))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        ckpt = folder / "lightning.ckpt"
        make_checkpoint(ckpt, layers)
        out, run = folder / "hand.safetensors", folder / "run"
        hand = [sys.executable, "-c", HAND.format(root=str(ROOT), width=WIDTH, layers=layers), str(ckpt), str(out)]
        model = ["model=tiny_mlp", f"model.in_features={WIDTH}", f"model.hidden=[{','.join([str(WIDTH)] * (layers - 1))}]",
                 f"model.num_classes={WIDTH}", "mapping=default", "freeze=none", "mode=export", f"source.path={ckpt}"]
        pipeline = [sys.executable, str(ROOT / "run.py"), *model, f"hydra.run.dir={run}"]
        warm_cache, cold_cache = folder / "cache_warm", folder / "cache_cold"
        warm = {**os.environ, "XDG_CACHE_HOME": str(warm_cache)}
        cold = {**os.environ, "XDG_CACHE_HOME": str(cold_cache)}
        from safetensors.torch import save_file  # noqa: F401  (fails here, not in a child, if missing)

        def before() -> None:
            out.unlink(missing_ok=True)
            shutil.rmtree(run, ignore_errors=True)
            shutil.rmtree(cold_cache, ignore_errors=True)
            os.sync()
            read_through(ckpt)

        # warm-up: .pyc files, the page cache, the warm row's hash cache; and the two outputs compared
        subprocess.run(hand, check=True)
        subprocess.run(pipeline, check=True, env=warm, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        same = subprocess.run([sys.executable, "-c", SAME, str(out), str(run / "model.safetensors")],
                              capture_output=True, text=True).stdout.strip() == "True"
        hashed = (warm_cache / "transfer_pipeline" / "sha256.json").is_file()
        rows = {HAND_ROW: (hand, warm), WARM_ROW: (pipeline, warm), COLD_ROW: (pipeline, cold)}
        figures: dict[str, list[tuple[float, int, float]]] = {name: [] for name in rows}
        names = list(rows)
        for i in range(runs):
            for name in names[i % len(names):] + names[:i % len(names)]:  # each row goes first in turn
                figures[name].append(measure(*rows[name], before=before))
        parts = {"hash cache warm": breakdown(pipeline, warm, before, folder, runs),
                 "hash cache cold": breakdown(pipeline, cold, before, folder, runs)} if with_breakdown else {}
        size = ckpt.stat().st_size
    return {"size": size, "layers": layers, "same": same, "hashed": hashed, "runs": runs, "parts": parts,
            "rows": {name: {"seconds": [s for s, _, _ in got], "rss": [r for _, r, _ in got]}
                     for name, got in figures.items()}}


HAND_ROW = "hand-written meta + mmap + assign + save_file"
WARM_ROW = "python run.py mode=export, hash cache warm"
COLD_ROW = "python run.py mode=export, hash cache cold"


def medians(figures: dict) -> dict[str, tuple[float, float]]:
    """Each row's (median seconds, median peak RSS bytes)."""
    return {name: (statistics.median(row["seconds"]), statistics.median(row["rss"]))
            for name, row in figures["rows"].items()}


def main() -> None:
    if sys.argv[1:2] == ["--make"]:
        return _make(Path(sys.argv[2]), int(sys.argv[3]))
    if sys.argv[1:2] == ["--trace"]:
        return trace(sys.argv[2], sys.argv[3:])
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-gb", type=float, default=1.0)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--breakdown", action="store_true", help="also time the parts of the export (traced runs)")
    args = parser.parse_args()
    if args.runs < 1 or not args.size_gb > 0:
        parser.error("--runs must be at least 1 and --size-gb above 0")
    figures = export_figures(args.size_gb, args.runs, args.breakdown)
    print("command: python benchmarks/bench_export.py " + " ".join(sys.argv[1:]))
    print(f"machine: {machine()}")
    print(f"source: {figures['size'] / 2 ** 30:.2f} GiB Lightning-style .ckpt ({figures['layers']} x Linear({WIDTH}, "
          f"{WIDTH})); median of {args.runs} whole-process runs of each row; outputs identical: {figures['same']}; "
          f"warm row's hash cached: {figures['hashed']}")
    print(f"{'command':<52} {'seconds':>8} {'min':>6} {'max':>6} {'peak RSS':>10}")
    med = medians(figures)
    for name, row in figures["rows"].items():
        print(f"{name:<52} {med[name][0]:>8.2f} {min(row['seconds']):>6.2f} {max(row['seconds']):>6.2f} "
              f"{med[name][1] / 2 ** 30:>6.2f} GiB")
    hand_s, hand_rss = med[HAND_ROW]
    for name in (WARM_ROW, COLD_ROW):
        print(f"ratio {name.removeprefix('python run.py mode=export, ')} / hand: time {med[name][0] / hand_s:.2f}x, "
              f"peak RSS {med[name][1] / hand_rss:.2f}x (targets: <= 1.5x, <= 1.25x)")
    for title, rows in figures["parts"].items():
        print(f"\nwhere the export's time goes, {title} (median of {args.runs} traced runs; seconds; "
              "the hash overlaps the other parts):")
        for label, value in rows:
            print(f"  {label:<92} {value:>6.2f}")

if __name__ == "__main__":
    main()
