"""Helpers shared by the tests (importable as `helpers`; pytest puts tests/ on sys.path)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from hydra import compose as hydra_compose
from hydra import initialize_config_dir

from transfer_pipeline.schema import RunConfig, register_configs, to_run_config

ROOT = Path(__file__).resolve().parent.parent
CONF = ROOT / "conf"
register_configs()


def compose_config(*overrides: str) -> RunConfig:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = hydra_compose("config", overrides=list(overrides))
    return to_run_config(cfg)


def run_cli(*args: str, cwd: Path = ROOT, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """`python run.py ARGS` in a subprocess, as a person would type it."""
    return subprocess.run([sys.executable, str(ROOT / "run.py"), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


def read_json(path: Path):
    return json.loads(Path(path).read_text())


def failing_after(steps: int = 3, num_classes: int = 5, how: str = "nan"):
    """A small model whose training forwards go wrong after `steps`: NaN outputs (a diverging run,
    `how=nan`) or a plain RuntimeError (a bug, `how=raise`)."""
    import torch
    from torch import nn

    class FailsAfter(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(64, num_classes)
            self.calls = 0

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.calls += self.training
            out = self.fc(x.flatten(1))
            if self.calls > steps and how == "raise":
                raise RuntimeError("boom: a bug in the model")
            return out * float("nan") if self.calls > steps else out

    return FailsAfter()


def nan_after(steps: int = 3, num_classes: int = 5):
    return failing_after(steps, num_classes, "nan")


def boom_after(steps: int = 3, num_classes: int = 5):
    return failing_after(steps, num_classes, "raise")


def make_plan(source, target, rules=(), on_mismatch="error", exclude=(), strip_prefixes=None, auto=None,
              add_prefix=None):
    """`plan_load` from plain values, converted as the Python API converts its keyword arguments."""
    from transfer_pipeline.mapping.plan import plan_load
    from transfer_pipeline.schema.options import load_options

    mapping, prefixes = load_options(rules=list(rules), on_mismatch=on_mismatch, exclude=list(exclude),
                                     strip_prefixes=strip_prefixes, auto=auto, add_prefix=add_prefix)
    return plan_load(source, target, mapping, prefixes)


def start_cli(*args: str, cwd: Path = ROOT, env: dict | None = None) -> subprocess.Popen:
    """`python run.py ARGS` started in the background (to signal or kill it); tests/ is importable."""
    return subprocess.Popen([sys.executable, str(ROOT / "run.py"), *args], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT / "tests"), **(env or {})})


def wait_for(predicate, timeout: float = 60.0, every: float = 0.05) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {predicate}")
        time.sleep(every)


def slow_digits_cnn(delay: float = 0.02, **kwargs):
    """DigitsCNN slowed down per forward: a run that lasts long enough to be signalled or killed."""
    import time

    from transfer_pipeline.models import DigitsCNN

    class Slow(DigitsCNN):
        def forward(self, x):
            time.sleep(delay)
            return super().forward(x)

    return Slow(**kwargs)



def tuple_model(num_classes: int = 5):
    """A model that returns (logits, features), as many detection and HF-style models do."""
    from torch import nn

    class TupleOut(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(64, num_classes)

        def forward(self, x):
            return self.fc(x.flatten(1)), x

    return TupleOut()


def warning_model(num_classes: int = 5):
    """A model whose every forward warns, as a deprecated third-party call would."""
    import warnings

    from torch import nn

    class Warns(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(64, num_classes)

        def forward(self, x):
            warnings.warn("thirdparty.old_call is deprecated", FutureWarning)
            return self.fc(x.flatten(1))

    return Warns()


def inspect_cli(*args: str, timeout: int = 60) -> subprocess.CompletedProcess:
    """`python -m transfer_pipeline.inspect ARGS` in a subprocess."""
    return subprocess.run([sys.executable, "-m", "transfer_pipeline.inspect", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


def same_weights(src, sd: dict, prefix: str = "") -> None:
    """A read source holds exactly `sd` (names under `prefix`): names, values (torch.equal), shapes and dtypes."""
    import torch

    assert list(src.meta) == [prefix + k for k in sd] or sorted(src.meta) == sorted(prefix + k for k in sd)
    for k, v in sd.items():
        got = src.get(prefix + k)
        assert torch.equal(got, v), k
        assert src.meta[prefix + k].shape == tuple(v.shape) and src.meta[prefix + k].dtype == str(v.dtype)[6:]


def make_images(root: Path, per_class: int = 30) -> Path:
    """An image folder of two classes, cat (dark) and dog (light): 12x12 grey PNGs, `per_class` each."""
    import torch
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    for cls, colour in (("cat", 40), ("dog", 200)):
        folder = root / cls
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = (torch.full((12, 12), colour) + torch.randint(0, 20, (12, 12), generator=g)).to(torch.uint8)
            Image.fromarray(pixels.numpy()).save(folder / f"{i}.png")
    return root


def bert_config(folder: Path, num_labels: int) -> str:
    """A tiny BERT's config.json (over the toy text vocabulary) written into `folder`; its path."""
    from transfer_pipeline.data.toy_text import vocab

    config = {"model_type": "bert", "vocab_size": len(vocab()), "hidden_size": 32, "num_hidden_layers": 2,
              "num_attention_heads": 2, "intermediate_size": 64, "max_position_embeddings": 16,
              "num_labels": num_labels, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
    path = folder / "config.json"
    path.write_text(json.dumps(config))
    return str(path)


def index_with(folder: Path, weight_map) -> Path:
    """A shard index (model.safetensors.index.json) in `folder` with this weight_map, as Hugging Face writes it."""
    path = folder / "model.safetensors.index.json"
    path.write_text(json.dumps({"weight_map": weight_map}))
    return path


def raising_model(num_classes: int = 5, fail: bool = True, **ignored):
    """A model whose forward has a bug of its own (not a shape problem): its error must be shown as the model's.
    `fail=False`: the same layers, working."""
    import torch
    from torch import nn

    class Buggy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(64, num_classes)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if fail:
                raise KeyError("no such layer config: 'proj'")
            return self.fc(x.flatten(1))

    return Buggy()


def bug_in_training(num_classes: int = 5, **ignored):
    """Takes any model arguments; its forward raises a plain RuntimeError after 3 training steps (a bug)."""
    return failing_after(3, num_classes, "raise")


def stop_after(monkeypatch, steps: int) -> None:
    """The run's stop signal (as a first Ctrl-C gives) after `steps` training steps (in-process runs)."""
    from transfer_pipeline.run.signals import StopSignals

    calls = {"n": 0}

    def requested(self) -> bool:
        calls["n"] += 1
        return calls["n"] > steps

    monkeypatch.setattr(StopSignals, "requested", requested)


def stop_and_resume(run_pipeline, args, tmp_path, monkeypatch, steps: int):
    """A reference run of `args`, then the same run stopped after `steps` steps (checked to be inside epoch 1) and
    resumed with trainer.resume=auto: (reference summary, its folder, resumed summary, its folder)."""
    import pytest
    import torch

    from transfer_pipeline.errors import Interrupted

    reference, ref_dir = run_pipeline(*args, run_dir=tmp_path / "reference")
    with monkeypatch.context() as m:
        stop_after(m, steps)
        with pytest.raises(Interrupted):
            run_pipeline(*args, run_dir=tmp_path / "stopped")
    position = torch.load(tmp_path / "stopped" / "checkpoints" / "last.pt", weights_only=True)["position"]
    assert position["epoch"] == 1 and position["step_in_epoch"] > 0
    summary, out = run_pipeline(*args, "trainer.resume=auto", run_dir=tmp_path / "stopped")
    return reference, ref_dir, summary, out
