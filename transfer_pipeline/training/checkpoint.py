"""Full-state checkpoints (`checkpoints/last.pt`): everything a run needs to go on bit for bit.

One `torch.save` file, written to a temporary name and renamed (never half-written, and the
state is streamed to disk, not built in memory first): the model, optimizer and GradScaler state,
the EMA weights, where the loop is (epoch, batches done in it, global step, the epoch's partial
sums, the train loader's generator at the epoch's start), every RNG (python, numpy, torch, CUDA),
the metrics so far, the best and early-stopping bookkeeping, and the config it belongs to.
Everything in it is a tensor, a number, a string or a container of them, so it loads with
`weights_only=True` like any other checkpoint.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import UserError
from ..files import atomic_path

FORMAT = 1
LAST = "last.pt"


def rng_state() -> dict[str, Any]:
    """Every RNG a training step may draw from, as plain data."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": [kind, torch.from_numpy(np.asarray(keys).copy()), int(pos), int(has_gauss), float(gauss)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(path: Path, state: dict[str, Any]) -> None:
    """`torch.save`, whole or not at all (`files.atomic_path`)."""
    with atomic_path(path) as tmp:
        torch.save({"format": FORMAT, **state}, tmp)


def read_state(path: Path, damaged: str) -> Any:
    """`path` unpickled with only the types a checkpoint holds (weights_only); one UserError naming it otherwise."""
    from ..sources.safe_load import SAFE_REAL

    try:
        with torch.serialization.safe_globals(list(SAFE_REAL.values())):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is the same message
        raise UserError(f"trainer.resume: cannot read {path} ({type(e).__name__}); {damaged}") from None


def load(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise UserError(f"trainer.resume: no checkpoint at {path}; a run writes checkpoints/{LAST} after its "
                        "first epoch (or every trainer.checkpoint_every_steps steps).")
    state = read_state(path, "it is not a checkpoint this pipeline wrote, or it is damaged.")
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise UserError(f"trainer.resume: {path} is not a full-state checkpoint of this pipeline (format "
                        f"{state.get('format') if isinstance(state, dict) else '?'}, expected {FORMAT}).")
    problem = structure_problem(state)
    if problem is not None:
        raise UserError(f"trainer.resume: {path} is not a checkpoint of a run of this pipeline, or it was changed "
                        f"after it was written: {problem}. Resume from the last.pt a run wrote, or start a fresh run.")
    return state


# what a full-state checkpoint holds at its top level, and where the loop was (loop.Position's fields)
TOP_KEYS = {"format": int, "model": dict, "optimizer": dict, "position": dict, "history": list, "best": dict,
            "config": dict, "fired": list, "samples": (int, float), "seconds": (int, float)}
POSITION_COUNTS = ("epoch", "step_in_epoch", "global_step", "n")
POSITION_KEYS = {*POSITION_COUNTS, "loss_sum", "stats", "seconds", "loader_rng", "rng"}


def structure_problem(state: dict[str, Any]) -> str | None:
    """What makes `state` not a checkpoint this pipeline wrote (a missing or extra key, a value of the wrong
    kind, a negative position, RNG states of another size), or None. Whether it fits the model and the
    optimizer is checked when they load it."""
    for key, kind in TOP_KEYS.items():
        if key not in state:
            return f"it has no {key!r}"
        if not isinstance(state[key], kind) or isinstance(state[key], bool):
            return f"its {key!r} is a {type(state[key]).__name__}"
    pos = state["position"]
    if set(pos) != POSITION_KEYS:
        extra, missing = sorted(set(pos) - POSITION_KEYS), sorted(POSITION_KEYS - set(pos))
        return f"its position has {'unknown keys ' + ', '.join(extra) if extra else ''}" \
               f"{' and ' if extra and missing else ''}{'no ' + ', '.join(missing) if missing else ''}"
    for key in POSITION_COUNTS:
        if not isinstance(pos[key], int) or isinstance(pos[key], bool) or pos[key] < 0:
            return f"its position.{key} is {pos[key]!r}, not a count (0 or more)"
    if pos["rng"] is not None:
        return _rng_problem(pos["rng"])
    return None


def _rng_problem(rng: Any) -> str | None:
    if not isinstance(rng, dict) or not {"python", "numpy", "torch"} <= set(rng):
        return "its RNG states are incomplete"
    torch_state = rng["torch"]
    if not isinstance(torch_state, torch.Tensor) or torch_state.shape != torch.get_rng_state().shape:
        return f"its torch RNG state has shape {getattr(torch_state, 'shape', '?')}, not {tuple(torch.get_rng_state().shape)}"
    numpy_state = rng["numpy"]
    if not isinstance(numpy_state, (list, tuple)) or len(numpy_state) != 5 or \
            not isinstance(numpy_state[1], torch.Tensor) or numpy_state[1].numel() != 624:
        return "its numpy RNG state is not one numpy would take"
    python_state = rng["python"]
    if not isinstance(python_state, (list, tuple)) or len(python_state) != 3 or len(python_state[1]) != 625:
        return "its Python RNG state is not one Python would take"
    return None


# config keys that may differ when resuming: they do not change what is computed
RESUME_FREE = ("trainer.resume", "trainer.progress", "trainer.checkpoint_every_steps", "device", "logger",
               "trainer.save_checkpoints", "trainer.keep_epoch_checkpoints", "data.num_workers", "trainer.max_minutes")


def flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    """{dotted key: value} of a config (dataclasses, dicts, lists), for comparing two configs."""
    import dataclasses
    from enum import Enum

    if dataclasses.is_dataclass(node):
        node = {f.name: getattr(node, f.name) for f in dataclasses.fields(node)}
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for k, v in node.items():
            out.update(flatten(v, f"{prefix}{k}."))
        return out or {prefix.rstrip("."): {}}
    if isinstance(node, (list, tuple)) and any(dataclasses.is_dataclass(v) or isinstance(v, dict) for v in node):
        out = {}
        for i, v in enumerate(node):
            out.update(flatten(v, f"{prefix.rstrip('.')}[{i}]."))
        return out or {prefix.rstrip("."): []}
    value = node.value if isinstance(node, Enum) else list(node) if isinstance(node, tuple) else node
    return {prefix.rstrip("."): value}


def config_differences(saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """The keys whose values differ (resume-free keys left out), as 'key: saved -> now'."""
    keys = sorted(set(saved) | set(now))
    diff = []
    for k in keys:
        if k.startswith(RESUME_FREE):
            continue
        a, b = saved.get(k, "<absent>"), now.get(k, "<absent>")
        if a != b:
            diff.append(f"{k}: {a!r} -> {b!r}")
    return diff
