"""Loading a big checkpoint: the naive way vs the pipeline's fast path, time and peak memory side by side.

    python benchmarks/bench_load.py                 # a 2 GiB checkpoint in a temporary folder
    python benchmarks/bench_load.py --size-gb 0.5   # smaller, quicker
    python benchmarks/bench_load.py --keep /tmp/b   # keep the checkpoints (and reuse them next time)

The checkpoint is a TinyMLP of Linear(8192, 8192) layers (256 MiB each), saved as .pt and
.safetensors. Every measurement runs in a fresh subprocess with a warm page cache:

- naive: build the model (random init), `torch.load` (or safetensors `load_file`), `load_state_dict`;
- pipeline: the Python API (`transfer_pipeline.load_weights`, the same sequence as `run/recipe.py`) on a
  model built on the meta device: read the source lazily, plan,
  assign loaded tensors;
- pipeline + use: the same, then read every weight once (as a first forward pass would);
- `run.py mode=plan`: the whole command, interpreter start included, next to the same command
  on the tiny shipped checkpoint (the fixed start-up cost).

Peak RSS is the process's high-water mark (getrusage) above what it held before loading (after
its imports); for run.py it is the child's high-water mark above that of the tiny-checkpoint run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WIDTH = 8192

CHILD = r"""
import json, resource, sys, time
sys.path.insert(0, {root!r})
import torch
from safetensors.torch import load_file
import transfer_pipeline as tp
from transfer_pipeline.build import build_model
from pathlib import Path

def rss():  # this process's high-water mark (VmHWM: not inherited from the parent, unlike ru_maxrss)
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

method, path, layers = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
node = {{"_target_": "transfer_pipeline.models.TinyMLP", "in_features": {width}, "hidden": [{width}] * (layers - 1),
         "num_classes": {width}}}
torch.manual_seed(0)
idle = rss()
start = time.perf_counter()
if method.startswith("naive"):
    model = build_model(node)
    sd = load_file(path) if path.suffix == ".safetensors" else torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(sd)
    del sd
else:
    model = build_model(node, meta=True)
    tp.load_weights(model, path)  # the Python API: plan, then assign from the memory map
    if method.endswith("use"):
        total = sum(float(p.detach().sum()) for p in model.parameters())
seconds = time.perf_counter() - start
assert not any(p.is_meta for p in model.parameters())
print(json.dumps({{"seconds": seconds, "rss": rss() - idle}}))
"""


def make_checkpoints(folder: Path, layers: int) -> tuple[Path, Path]:
    """The checkpoints, made in a child process: this one stays small, so the children's peak
    memory is their own (on Linux a child's ru_maxrss starts at its parent's)."""
    pt, st = folder / f"mlp{layers}.pt", folder / f"mlp{layers}.safetensors"
    if not (pt.is_file() and st.is_file()):
        subprocess.run([sys.executable, __file__, "--make", str(folder), str(layers)], check=True)
    return pt, st


def _make(folder: Path, layers: int) -> None:
    import torch
    from safetensors.torch import save_file

    pt, st = folder / f"mlp{layers}.pt", folder / f"mlp{layers}.safetensors"
    g = torch.Generator().manual_seed(0)
    sd = {}
    for i in range(layers):
        sd[f"fc{i}.weight"] = torch.empty(WIDTH, WIDTH).uniform_(-0.01, 0.01, generator=g)
        sd[f"fc{i}.bias"] = torch.zeros(WIDTH)
    torch.save(sd, pt)
    save_file(sd, st)


def read_seconds(path: Path, repeat: int = 3) -> float:
    """Best time to read the whole file from the page cache into a reused buffer."""
    buf = bytearray(16 << 20)
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        with open(path, "rb", buffering=0) as f:
            while f.readinto(buf):
                pass
        best = min(best, time.perf_counter() - start)
    return best


def child(method: str, path: Path, layers: int) -> dict:
    code = CHILD.format(root=str(ROOT), width=WIDTH)
    out = subprocess.run([sys.executable, "-c", code, method, str(path), str(layers)], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"{method} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_py(args: list[str], run_dir: Path) -> dict:
    """`python run.py ARGS` in a child: wall seconds and the child's peak RSS (bytes)."""
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, str(ROOT / "run.py"), *args, f"hydra.run.dir={run_dir}"], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"run.py {' '.join(args)} failed:\n{proc.stderr.read()[-3000:]}")
    proc.stderr.close()
    return {"seconds": seconds, "rss": usage.ru_maxrss * 1024}


def main() -> None:
    if sys.argv[1:2] == ["--make"]:
        return _make(Path(sys.argv[2]), int(sys.argv[3]))
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-gb", type=float, default=2.0, help="checkpoint size in GiB (default 2)")
    parser.add_argument("--keep", type=Path, default=None, help="folder for the checkpoints (kept, reused)")
    args = parser.parse_args()
    layers = max(1, round(args.size_gb * 2 ** 30 / (WIDTH * WIDTH * 4)))
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.keep or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        pt, st = make_checkpoints(folder, layers)
        size = st.stat().st_size
        reads = {p.suffix: read_seconds(p) for p in (pt, st)}

        rows = []
        for label, method, path in [
            ("naive .pt: init + torch.load + load_state_dict", "naive", pt),
            ("naive .safetensors: init + load_file + load_state_dict", "naive", st),
            ("pipeline .pt: meta build + mmap + assign", "pipeline", pt),
            ("pipeline .safetensors: meta build + lazy + assign", "pipeline", st),
            ("pipeline .safetensors, then read every weight once", "pipeline+use", st),
        ]:
            r = child(method, path, layers)
            rows.append((label, r["seconds"], r["rss"]))

        model = ["model=tiny_mlp", f"model.in_features={WIDTH}", f"model.hidden=[{','.join([str(WIDTH)] * (layers - 1))}]",
                 f"model.num_classes={WIDTH}", "mapping=default", "freeze=none", "mode=plan"]
        base = run_py(["mode=plan"], folder / "run_tiny")
        cli = {}
        for name, extra in [("fast", []), ("normal", ["source.meta_init=false"])]:
            cli[name] = run_py([*model, f"source.path={st}", *extra], folder / f"run_{name}")

    gib = size / 2 ** 30
    print(f"checkpoint: {gib:.2f} GiB ({layers} x Linear({WIDTH}, {WIDTH})), "
          f"read from page cache: .pt {reads['.pt']:.2f} s, .safetensors {reads['.safetensors']:.2f} s")
    print(f"{'load phase (fresh process, warm page cache)':<56} {'seconds':>8} {'peak RSS above idle':>20} {'x ckpt':>7}")
    for label, seconds, rss in rows:
        print(f"{label:<56} {seconds:>8.2f} {rss / 2 ** 30:>16.2f} GiB {rss / size:>6.2f}x")
    print(f"{'whole command':<56} {'seconds':>8} {'peak RSS above tiny':>20} {'x ckpt':>7}")
    print(f"{'python run.py mode=plan (tiny shipped checkpoint)':<56} {base['seconds']:>8.2f} {'-':>20} {'-':>7}")
    for name, label in [("fast", "python run.py mode=plan, 2 GiB .safetensors"),
                        ("normal", "  same with source.meta_init=false (random init first)")]:
        r = cli[name]
        extra = max(0, r["rss"] - base["rss"])  # the tiny run is the baseline; noise can make it negative
        print(f"{label.replace('2 GiB', f'{gib:.1f} GiB'):<56} {r['seconds']:>8.2f} {extra / 2 ** 30:>16.2f} GiB "
              f"{extra / size:>6.2f}x")
    budget = 2 * (reads[".safetensors"] + base["seconds"])
    print(f"target: mode=plan within 2 x (read {reads['.safetensors']:.2f} s + start {base['seconds']:.2f} s) = "
          f"{budget:.2f} s -> {'met' if cli['fast']['seconds'] <= budget else 'NOT met'}; "
          f"peak RSS at most 1.25x -> {'met' if cli['fast']['rss'] - base['rss'] <= 1.25 * size else 'NOT met'}")


if __name__ == "__main__":
    main()
