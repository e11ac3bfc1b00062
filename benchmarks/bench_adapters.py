"""Adapters (`adapters=lora`) against full fine-tuning, in the same benchmark run, on four models.

    python benchmarks/bench_adapters.py                         # CPU, the four models below, one run each
    python benchmarks/bench_adapters.py --runs 3                # medians of 3 (whole runs and step timings)
    python benchmarks/bench_adapters.py --models bert --bert-hidden 768 --bert-layers 12 --device cuda

Models (each: full fine-tuning `freeze=none` vs `adapters=lora`, everything else the same):

- `digits`: the shipped default transfer (`python run.py`: DigitsCNN, 28k parameters, digits 0-4 -> 5-9);
  LoRA on its three convolutions (the default targets), `adapters.lr=0.02` (2x optim.lr).
- `text`: the shipped `experiment=text_classifier` (TextTransformer, 21k parameters, sentiment on sport
  and food -> weather and music) against the shipped `experiment=text_lora` (the same transfer, LoRA on
  the encoder layers' feed-forward layers and the pooler, `adapters.lr=0.01`). The "full" side is
  the experiment as shipped (`freeze=none`, with its `freeze.frozen=[embeddings.*]`).
- `bert`: a Hugging Face BERT built from a config.json (`model=hf`, no download; `--bert-hidden`,
  `--bert-layers`), first trained from scratch here on sport and food (`source=none`), then transferred
  to weather and music from that run's model.safetensors; LoRA on the attention's query and value
  (`adapters.targets=[*.query,*.value]`).
- `resnet18`: torchvision resnet18 (`model=torchvision`) on the digits as 3-channel `--image-size`
  images, first trained from scratch here on digits 0-4, then transferred to 5-9 (`mapping=new_head`);
  LoRA on every convolution (the default targets).

Two measurements per side:

1. The whole run, `python run.py ...` in a subprocess; from its summary.json: trainable parameters and
   their fraction, the validation metric (last epoch and best), `train_samples_per_s` (all epochs, the
   first included), and the weights a run writes for the task (adapter/adapter_model.safetensors with
   adapters, model.safetensors without).
2. One training step in a fresh subprocess (this script with `--step`): the run's own steps up to
   training (build, load, adapters, freezing, groups, data) on the same overrides, then the pipeline's
   optimizer and engine for 1 + `--steps` steps on one batch. Peak memory of the steps above the
   process's memory just before them (the model loaded, the optimizer made, the batch ready): on CPU
   the resident set's high-water mark (/proc/self/status VmHWM, reset through /proc/self/clear_refs),
   on CUDA torch's allocated-memory peak. The optimizer's state (bytes of its state tensors after the
   steps), and the median time of the steps after the first.

The sides take turns (`--runs` rounds, alternating which goes first), so drift on a shared machine hits
both; timings are medians over the rounds. Prints the machine, the commands, a table and the goals.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MIB = 1024 * 1024


# --- the four models ------------------------------------------------------------------------------------

def bert_folder(folder: Path, hidden: int, layers: int) -> Path:
    """A BERT config.json over the toy text vocabulary (as tests/helpers.py bert_config, sizes from the flags)."""
    sys.path.insert(0, str(ROOT))
    from transfer_pipeline.data.toy_text import vocab

    folder.mkdir(parents=True, exist_ok=True)
    heads = max(1, hidden // 64)
    config = {"model_type": "bert", "vocab_size": len(vocab()), "hidden_size": hidden, "num_hidden_layers": layers,
              "num_attention_heads": heads, "intermediate_size": 4 * hidden, "max_position_embeddings": 16,
              "num_labels": 2, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def models(args, work: Path) -> dict[str, dict]:
    """name -> {what, pretrain (overrides of a from-scratch run whose model.safetensors is the source, or None),
    common, full, lora}."""
    epochs = [f"trainer.epochs={args.epochs}"] if args.epochs else []
    lora = ["adapters=lora", f"adapters.rank={args.rank}"]

    def adapters_lr(default: float | None) -> list[str]:  # --adapters-lr, else the model's own (None: optim.lr)
        lr = args.adapters_lr or default
        return [f"adapters.lr={lr}"] if lr else []

    out = {}
    out["digits"] = dict(
        what="DigitsCNN, shipped default (digits 0-4 -> 5-9)", pretrain=None,
        common=[*epochs], full=["freeze=none"], lora=[*lora, *adapters_lr(0.02)])
    out["text"] = dict(  # the lora side is the shipped experiment=text_lora (adapters.lr=0.01 there)
        what="TextTransformer, shipped experiment=text_classifier vs experiment=text_lora", pretrain=None,
        common=[*epochs], full=["experiment=text_classifier"],
        lora=["experiment=text_lora", f"adapters.rank={args.rank}", *adapters_lr(None)])
    bert = bert_folder(work / "bert_config", args.bert_hidden, args.bert_layers)
    text = ["model=hf", f"model.name={bert}", "data=toy_text", "mapping=default", "trainer.batch_size=32"]
    out["bert"] = dict(
        what=f"HF BERT from a config ({args.bert_layers} layers, hidden {args.bert_hidden}), "
             "sport+food -> weather+music",
        pretrain=[*text, "data.topics=[sport,food]", "source=none", "freeze=none", "optim.lr=0.001",
                  "trainer.epochs=5"],
        common=[*text, "data.topics=[weather,music]", "optim.lr=0.001", f"trainer.epochs={args.epochs or 3}"],
        full=["freeze=none"], lora=[*lora, "adapters.targets=[*.query,*.value]"])
    image = ["model=torchvision", "model.name=resnet18", "data.channels=3", f"data.image_size={args.image_size}",
             "optim.lr=0.001"]
    out["resnet18"] = dict(
        what=f"torchvision resnet18, digits 0-4 -> 5-9 as 3x{args.image_size}x{args.image_size}",
        pretrain=[*image, "data.classes=[0,1,2,3,4]", "source=none", "mapping=default", "freeze=none",
                  "trainer.epochs=3"],
        common=[*image, "mapping=new_head", f"trainer.epochs={args.epochs or 3}"], full=["freeze=none"], lora=[*lora])
    return {k: v for k, v in out.items() if k in args.models}


THREADS: int | None = None  # --threads: torch's intra-op threads in every process this script starts


def child_env() -> dict[str, str]:
    return {**os.environ, **({"OMP_NUM_THREADS": str(THREADS)} if THREADS else {})}


# --- measurement 1: whole runs --------------------------------------------------------------------------

def run_cli(overrides: list[str], run_dir: Path, device: str) -> tuple[dict, float]:
    command = [sys.executable, str(ROOT / "run.py"), *overrides, f"device={device}", "trainer.progress=false",
               f"hydra.run.dir={run_dir}"]
    t0 = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env=child_env())
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        sys.exit(f"failed ({done.returncode}): {shlex.join(command)}\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
    return json.loads((run_dir / "summary.json").read_text()), seconds


def whole_run(overrides: list[str], run_dir: Path, device: str) -> dict:
    summary, seconds = run_cli(overrides, run_dir, device)
    a = summary.get("adapters")
    weights = run_dir / "adapter" / "adapter_model.safetensors" if a else run_dir / "model.safetensors"
    trainable = summary["trainable_params"]
    return {"trainable": trainable,  # with adapters: of the base's parameters plus the adapters'
            "fraction": a["trainable_fraction"] if a else trainable / (trainable + summary["frozen_params"]),
            "file_bytes": a["adapter_bytes"] if a else weights.stat().st_size,
            "val": summary.get("val_acc"), "best": summary.get("best_val_acc"),
            "samples_per_s": summary["train_samples_per_s"], "seconds": seconds,
            "targets": a["targets"] if a else None}


# --- measurement 2: one training step, in a fresh process -----------------------------------------------

def _status() -> dict[str, int]:
    text = Path("/proc/self/status").read_text()
    return {k: int(re.search(rf"{k}:\s+(\d+)", text).group(1)) * 1024 for k in ("VmRSS", "VmHWM")}


def step_here(overrides: list[str], steps: int) -> dict:
    """The run's steps up to training, then 1 + `steps` optimizer steps on one batch; memory and time."""
    import gc
    import logging

    sys.path.insert(0, str(ROOT))
    import torch
    from hydra import compose, initialize_config_dir

    from transfer_pipeline.run.recipe import STEPS
    from transfer_pipeline.run.signals import StopSignals
    from transfer_pipeline.run.state import Run
    from transfer_pipeline.schema import Mode, register_configs, to_run_config
    from transfer_pipeline.tuning.param_groups import make_optimizer

    logging.disable(logging.WARNING)
    register_configs()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = to_run_config(compose("config", overrides=overrides))
    with tempfile.TemporaryDirectory() as tmp:
        r = Run(cfg, Path(tmp), {}, signals=StopSignals())
        for step in STEPS[Mode.train]:
            if step.__name__ == "train":
                break
            step(r)
        model, engine = r.model, r.engine
        engine.prepare(model)
        optimizer = make_optimizer(model, r.groups, cfg.optim)
        params = [p for p in model.parameters() if p.requires_grad]
        x, y = engine.batch(next(iter(r.loaders[0])))
        cuda = r.device.type == "cuda"

        def one() -> float:
            if cuda:
                torch.cuda.synchronize(r.device)
            t0 = time.perf_counter()
            loss = r.task.loss(engine.forward(model, x), y)
            optimizer.zero_grad(set_to_none=True)
            engine.backward(loss)
            engine.step(optimizer, params)
            if cuda:
                torch.cuda.synchronize(r.device)
            return time.perf_counter() - t0

        one()  # warm-up: what the first step of a process sets up once (autograd, kernels) is not the step's
        optimizer.state.clear()  # the measured steps allocate the optimizer's state and the gradients afresh
        optimizer.zero_grad(set_to_none=True)
        gc.collect()
        if cuda:
            torch.cuda.reset_peak_memory_stats(r.device)
            before = torch.cuda.memory_allocated(r.device)
        else:
            Path("/proc/self/clear_refs").write_text("5")  # the high-water mark starts again from the RSS now
            before = _status()["VmRSS"]
        times = [one() for _ in range(1 + steps)]
        peak = (torch.cuda.max_memory_allocated(r.device) if cuda else _status()["VmHWM"]) - before
        state = sum(t.numel() * t.element_size() for s in optimizer.state.values() for t in s.values()
                    if torch.is_tensor(t))
        grads = sum(p.grad.numel() * p.grad.element_size() for p in params if p.grad is not None)
    return {"peak_bytes": peak, "optimizer_bytes": state, "grad_bytes": grads,
            "step_s": statistics.median(times[1:]) if steps else times[0]}


def step_subprocess(overrides: list[str], steps: int) -> dict:
    command = [sys.executable, __file__, "--step", json.dumps(overrides), "--steps", str(steps)]
    # glibc returns every block of 64 KiB or more to the system when it is freed (no adaptive threshold), so the
    # resident set follows what the tensors take and the high-water mark is the steps' own
    env = {**child_env(), "MALLOC_MMAP_THRESHOLD_": "65536"}
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        sys.exit(f"step measurement failed: {shlex.join(command)}\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# --- the report ------------------------------------------------------------------------------------------

def machine(device: str) -> str:
    import torch

    if device.startswith("cuda"):
        where = torch.cuda.get_device_name(0)
    else:
        cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name")), platform.processor() or "cpu")
        where = f"{cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, no GPU used"
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return f"{platform.machine()} {where}; torch {torch.__version__}; load average {load}"


def kib(n: float) -> str:
    return f"{n / 1024:,.0f} KiB" if n < MIB else f"{n / MIB:,.1f} MiB"


def median_of(rows: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="*", default=["digits", "text", "bert", "resnet18"],
                    choices=["digits", "text", "bert", "resnet18"])
    ap.add_argument("--runs", type=int, default=1, help="rounds of (full, lora) whole runs and step measurements")
    ap.add_argument("--steps", type=int, default=10, help="timed steps after the first, per step measurement")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (memory: RSS on CPU, allocated on CUDA)")
    ap.add_argument("--epochs", type=int, default=None, help="epochs of every transfer run (default: each model's)")
    ap.add_argument("--rank", type=int, default=8, help="adapters.rank")
    ap.add_argument("--adapters-lr", type=float, default=None, help="adapters.lr for every model (default: digits 0.02, text_lora's 0.01, else optim.lr)")
    ap.add_argument("--bert-hidden", type=int, default=128)
    ap.add_argument("--bert-layers", type=int, default=2)
    ap.add_argument("--image-size", type=int, default=16, help="resnet18: the digits resized to this size")
    ap.add_argument("--threads", type=int, default=None,
                    help="OMP_NUM_THREADS of every run (default: torch's own, one per core)")
    ap.add_argument("--keep", type=Path, default=None, help="keep the run folders here (default: a temporary folder)")
    ap.add_argument("--step", default=None, help=argparse.SUPPRESS)  # internal: one step measurement, JSON overrides
    args = ap.parse_args()
    if args.step is not None:
        print(json.dumps(step_here(json.loads(args.step), args.steps)))
        return

    global THREADS
    THREADS = args.threads
    if THREADS:
        import torch

        torch.set_num_threads(THREADS)  # for the machine line: the runs get OMP_NUM_THREADS
    started = time.perf_counter()
    tmp = tempfile.TemporaryDirectory(prefix="bench_adapters_") if args.keep is None else None
    work = Path(tmp.name) if tmp is not None else args.keep.resolve()
    work.mkdir(parents=True, exist_ok=True)
    argv = " ".join(shlex.quote(a) for a in sys.argv[1:])
    print(f"# {machine(args.device)}")
    print(f"# python benchmarks/bench_adapters.py {argv}".rstrip())
    results: dict[str, dict] = {}
    for name, m in models(args, work).items():
        device = [f"device={args.device}"]
        print(f"\n## {name}: {m['what']}")
        common = list(m["common"])
        if m["pretrain"] is not None:
            pre = work / f"{name}_pretrain"
            _, seconds = run_cli(m["pretrain"], pre, args.device)
            print(f"pretrain ({seconds:.0f} s): python run.py {shlex.join(m['pretrain'] + device)}")
            common.append(f"source.path={pre / 'model.safetensors'}")
        sides: dict[str, dict] = {"full": {"runs": [], "steps": []}, "lora": {"runs": [], "steps": []}}
        for side in sides:
            print(f"{side:<4}: python run.py {shlex.join(common + m[side] + device)}")
        for i in range(args.runs):
            for side in (("full", "lora") if i % 2 == 0 else ("lora", "full")):
                overrides = common + m[side]
                sides[side]["runs"].append(whole_run(overrides, work / f"{name}_{side}_{i}", args.device))
                sides[side]["steps"].append(step_subprocess(overrides + device, args.steps))
        results[name] = sides
        if sides["lora"]["runs"][0]["targets"]:
            targets = sides["lora"]["runs"][0]["targets"]
            print(f"lora targets ({len(targets)}): {', '.join(targets[:6])}" + (", ..." if len(targets) > 6 else ""))

    memory = "RSS" if not args.device.startswith("cuda") else "CUDA allocated"
    print(f"\n## Figures (medians of {args.runs} round(s); step: median of {args.steps} steps after the first, "
          f"one batch; peak: {memory} above the loaded model)")
    print("| model | side | trainable | fraction | weights written | optimizer state | step peak | step ms "
          "| run samples/s | val_acc last (best) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, sides in results.items():
        for side, got in sides.items():
            r0, s0 = got["runs"][0], got["steps"][0]
            print(f"| {name} | {side} | {r0['trainable']:,} | {100 * r0['fraction']:.2f}% | {kib(r0['file_bytes'])} | "
                  f"{kib(s0['optimizer_bytes'])} | {kib(median_of(got['steps'], 'peak_bytes'))} | "
                  f"{1000 * median_of(got['steps'], 'step_s'):.1f} | {median_of(got['runs'], 'samples_per_s'):,.0f} | "
                  f"{r0['val']:.4f} ({r0['best']:.4f}) |")

    print("\n## Goals (lora vs full)")
    print("| model | trainable < 2 % | optimizer state >= 20x smaller | step peak lower | step time no worse "
          "(<= 1.05x) | run samples/s | val_acc within 1 point (last) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")

    def yes(ok: bool) -> str:
        return "yes" if ok else "NO"

    for name, sides in results.items():
        full, lora = sides["full"], sides["lora"]
        frac = lora["runs"][0]["fraction"]
        opt = full["steps"][0]["optimizer_bytes"] / max(lora["steps"][0]["optimizer_bytes"], 1)
        pf, pl = median_of(full["steps"], "peak_bytes"), median_of(lora["steps"], "peak_bytes")
        tf, tl = median_of(full["steps"], "step_s"), median_of(lora["steps"], "step_s")
        rf, rl = median_of(full["runs"], "samples_per_s"), median_of(lora["runs"], "samples_per_s")
        dv = lora["runs"][0]["val"] - full["runs"][0]["val"]
        print(f"| {name} | {yes(frac < 0.02)} ({100 * frac:.2f}%) | {yes(opt >= 20)} ({opt:.1f}x) | "
              f"{yes(pl < pf)} ({kib(pl)} vs {kib(pf)}) | {yes(tl <= 1.05 * tf)} ({tl / tf:.2f}x) | "
              f"{rl / rf:.2f}x | {yes(abs(dv) <= 0.01)} ({100 * dv:+.1f}) |")
    print(f"\n# {time.perf_counter() - started:.0f} s in all; load average at the end "
          f"{', '.join(f'{x:.1f}' for x in os.getloadavg())}")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
