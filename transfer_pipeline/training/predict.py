"""mode=predict: a trained model's predictions on image files or a data split -> predictions.csv.

The weights come from `source.path` (a run's model.safetensors, or any checkpoint the planner
reads); the class names and the task from that file's metadata (written by every training run),
else from the data, else 0..C-1. Inputs: `predict.input` (an image file or a folder of images, at
any depth, preprocessed as data.preset says) or, without it, the data's test split (else val),
whose targets get a column of their own. Rows are written as they come, to a temporary file that
is renamed when every input is done (files.atomic_path): an interrupted prediction leaves no half
file. Text cells that a spreadsheet would run as formulas are written as text.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from ..errors import UserError
from ..files import atomic_path
from ..schema import RunConfig, Task
from .engine import Engine

log = logging.getLogger(__name__)


class ImagePaths(Dataset):
    """(image, path) items of image files, through the evaluation transform."""

    def __init__(self, paths: list[Path], transform: Any, mode: str) -> None:
        self.paths, self.transform, self.mode = paths, transform, mode

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[Any, str]:
        from PIL import Image

        path = self.paths[i]
        try:
            with Image.open(path) as im:
                image = im.convert(self.mode)
        except (OSError, SyntaxError, ValueError) as e:  # changed on disk since it was checked
            raise UserError(f"predict.input: cannot read image {path} ({type(e).__name__}: {str(e)[:120]}).") from None
        return self.transform(image), str(path)


def image_inputs(cfg: RunConfig) -> ImagePaths:
    """The image files of predict.input, checked (decodable) and preprocessed as data.preset says."""
    from ..files import resolve_path
    from ..data.image_files import EXTENSIONS, _walk, check_images
    from ..data.preprocess import eval_transform, preset_source, resolve_preprocessing

    root = resolve_path(cfg.predict.input, "predict.input")
    if root.is_dir():
        paths = list(_walk(root))
        if not paths:
            raise UserError(f"predict.input: {root} holds no image files ({', '.join(EXTENSIONS)}) at any depth.")
    elif root.is_file():
        paths = [root]
    else:
        raise UserError(f"predict.input: {cfg.predict.input} is not a file or folder (looked at {root}).")
    checked = check_images([(p, 0) for p in paths], cfg.data.skip_bad_images, "predict.input")
    pre = resolve_preprocessing(cfg.data, preset_source(cfg.source))
    return ImagePaths([p for p, _ in checked], eval_transform(pre), "L" if cfg.data.channels == 1 else "RGB")


def saved_classes(extra: dict[str, Any], task: Task) -> list[str] | None:
    """Class names from the weights' metadata (a training run writes them); a task mismatch is an error."""
    saved_task = extra.get("task")
    if saved_task is not None and saved_task != task.value:
        raise UserError(f"task={task.value}: the weights were trained with task={saved_task} (their metadata says so); "
                        f"set task={saved_task}.")
    return class_names(extra)


def class_names(extra: dict[str, Any]) -> list[str] | None:
    """The class names a training run wrote into the weights' metadata; None where there are none (or unreadable)."""
    try:
        names = json.loads(extra["classes"]) if "classes" in extra else None
    except (TypeError, ValueError):
        return None
    return [str(n) for n in names] if isinstance(names, list) else None


def check_same_classes(saved: list[str] | None, data: list[str] | None, mode: str) -> None:
    """The weights' class names (their metadata) against the data's: the same names in the same order, or
    the targets would be scored against other classes' outputs without a word."""
    if saved is None or data is None or list(saved) == list(data):
        return
    how = "the same classes in another order" if sorted(saved) == sorted(data) else "other classes"
    raise UserError(f"mode={mode}: the weights were trained on the classes {_shown(saved)} and the data has "
                    f"{how}: {_shown(data)}, so output k would be scored as another class. Give the data the weights' "
                    f"classes in their order (data.classes=[...]), or train on these classes first.")


def _shown(names: list[str]) -> str:
    return "[" + ", ".join(names[:8]) + (f", ... ({len(names)})" if len(names) > 8 else "") + "]"


def input_name(dataset: Dataset, i: int) -> str:
    """How row i names its input: the image file (image_folder), the text (datasets with `texts`), else the index."""
    samples, texts = getattr(dataset, "samples", None), getattr(dataset, "texts", None)
    if isinstance(samples, list) and i < len(samples) and isinstance(samples[i], tuple):
        return str(samples[i][0])
    if isinstance(texts, list) and i < len(texts):
        return str(texts[i])
    return str(i)


def columns(task: Task, names: list[str] | None, width: int, with_target: bool, top_k: int) -> list[str]:
    head = ["input"] + (["target"] if with_target else [])
    if task == Task.regression:
        return head + (["prediction"] if width == 1 else [f"prediction_{i}" for i in range(width)])
    names = names or [str(i) for i in range(width)]
    probs = [f"prob_{n}" for n in names]
    if task == Task.multilabel:
        return head + ["predicted"] + probs
    return head + ["predicted", "probability"] + ([f"top_{min(top_k, width)}"] if width > 1 else []) + probs


def rows(task: Task, logits: torch.Tensor, names: list[str], keys: list[str], targets: list[str] | None,
         top_k: int, threshold: float) -> list[list[Any]]:
    out = []
    logits = logits.float().cpu()
    if task == Task.regression:
        values = logits.reshape(len(keys), -1).tolist()
    elif task == Task.multilabel:
        values = torch.sigmoid(logits).tolist()
    else:
        values = torch.softmax(logits, dim=1).tolist()
    for i, (key, v) in enumerate(zip(keys, values)):
        head = [key] + ([targets[i]] if targets is not None else [])
        if task == Task.regression:
            out.append(head + [f"{x:.6g}" for x in v])
            continue
        probs = [f"{p:.6f}" for p in v]
        if task == Task.multilabel:
            out.append(head + [" ".join(n for n, p in zip(names, v) if p >= threshold)] + probs)
            continue
        order = sorted(range(len(v)), key=lambda j: -v[j])
        top = [" ".join(f"{names[j]}:{v[j]:.4f}" for j in order[:top_k])] if len(v) > 1 else []
        out.append(head + [names[order[0]], f"{v[order[0]]:.6f}"] + top + probs)
    return out


def target_text(y: Any, names: list[str] | None, task: Task) -> list[str]:
    y = torch.as_tensor(y)
    if task == Task.classification and y.ndim == 1 and not y.is_floating_point():
        return [names[int(c)] if names and 0 <= int(c) < len(names) else str(int(c)) for c in y]
    if task == Task.multilabel:
        return [" ".join((names[j] if names and j < len(names) else str(j)) for j, t in enumerate(r) if t >= 0.5)
                for r in y.reshape(len(y), -1).tolist()]
    return [" ".join(f"{v:.6g}" for v in r) for r in y.reshape(len(y), -1).tolist()]


FORMULA_START = ("=", "+", "-", "@", "\t", "\r")  # what a spreadsheet reads as a formula


def spreadsheet_safe(cell: Any) -> Any:
    """A text cell that a spreadsheet would run as a formula (`=HYPERLINK(...)` as a class name or a file
    name) gets a leading `'`, which shows it as text; numbers, negative ones too, are left as they are."""
    if not isinstance(cell, str) or not cell.startswith(FORMULA_START):
        return cell
    try:
        float(cell)
        return cell
    except ValueError:
        return "'" + cell


class SpreadsheetSafeWriter:
    """csv.writer whose text cells are `spreadsheet_safe`: class names and inputs come from files."""

    def __init__(self, f: Any) -> None:
        self._writer = csv.writer(f)

    def writerow(self, row: list[Any]) -> None:
        self._writer.writerow([spreadsheet_safe(c) for c in row])

    def writerows(self, rows: Any) -> None:
        for row in rows:
            self.writerow(row)


@torch.no_grad()
def predict(cfg: RunConfig, model: Any, engine: Engine, dataset: Dataset, names: list[str] | None, out: Path,
            progress: Any = None, labelled: bool = False) -> dict[str, Any]:
    """Write predictions.csv for `dataset` (items (input, key) for files, (input, target) or dicts when
    `labelled`); returns the figures for summary.json."""
    from ..data.datasets import eval_loader
    from ..model_io import split_batch

    loader = eval_loader(dataset, cfg.trainer.batch_size * 2, cfg.data.num_workers, engine.device.type == "cuda")
    model.eval()
    n, t0, header = 0, time.perf_counter(), None
    bar = progress(0, len(loader)) if progress is not None else None
    try:
        with atomic_path(out) as tmp, open(tmp, "w", newline="") as f:
            writer = SpreadsheetSafeWriter(f)
            for batch in loader:
                x, y = split_batch(batch, cfg.data.target_key)
                logits = engine.logits(model, engine.inputs(x))
                if header is None:
                    width = logits[0].numel() if logits.ndim > 1 else 1
                    if names is not None and cfg.task != Task.regression and len(names) != width:
                        raise UserError(f"predict: the model outputs {width} values per input, and there are "
                                        f"{len(names)} class names ({', '.join(names[:5])} ...); the weights and the "
                                        "class names do not belong together.")
                    names = names if cfg.task == Task.regression or names else [str(i) for i in range(width)]
                    header = columns(cfg.task, names, width, labelled, cfg.predict.top_k)
                    writer.writerow(header)
                keys = [input_name(dataset, n + i) for i in range(len(logits))] if labelled else list(y)
                targets = target_text(y, names, cfg.task) if labelled else None
                writer.writerows(rows(cfg.task, logits, names or [], keys, targets, cfg.predict.top_k,
                                      cfg.predict.threshold))
                n += len(logits)
                if bar is not None:
                    bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    seconds = time.perf_counter() - t0
    log.info("Predicted %d input(s) in %.1f s (%.0f/s): %s", n, seconds, n / seconds if seconds else math.nan, out)
    return {"predictions": n, "predict_seconds": seconds}
