"""The adapters' outputs: `adapter/` in peft's own format, and the merged weights, checked against the adapted model.

The merge is peft's (`merge_and_unload` on a copy, so the adapted model stays as trained): every
update goes into its base weight, the head's trained copy takes the head's place, and what is
left is the target model with its own names. Before anything is written the merged copy and the
adapted model must give the same outputs on a batch: the largest difference at most
`MERGE_RTOL` x max(1, the largest output magnitude), float32, without autocast.
"""

from __future__ import annotations

import copy
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import UserError
from ..model_io import call, pick_output

MERGE_RTOL = 1e-4
ADAPTER_DIR = "adapter"
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


def merged_model(peft_model: Any, base_keys: list[str]) -> nn.Module:
    """A merged copy of the adapted model: the target's own module tree and names (checked against `base_keys`)."""
    merged = copy.deepcopy(peft_model).merge_and_unload(safe_merge=True)  # safe_merge: a NaN update is an error
    keys = list(merged.state_dict())
    if keys != list(base_keys):
        extra, lost = sorted(set(keys) - set(base_keys)), sorted(set(base_keys) - set(keys))
        raise RuntimeError(f"the merged model's names differ from the base's: extra {extra[:5]}, missing {lost[:5]}")
    return merged


def check_merge(adapted: nn.Module, merged: nn.Module, x: Any, output: int | str | None) -> float:
    """The largest output difference of merged vs adapted on `x`, relative to max(1, the largest output);
    a UserError (the run fails, nothing is written) when it exceeds MERGE_RTOL."""
    was = adapted.training
    adapted.eval()
    merged.eval()
    try:
        with torch.no_grad():
            a = pick_output(call(adapted, x), output).float()
            b = pick_output(call(merged, x), output).float()
    finally:
        adapted.train(was)
    scale = max(1.0, float(a.abs().max()))
    err = float((a - b).abs().max()) / scale
    if not err <= MERGE_RTOL:  # NaN fails too
        raise UserError(f"adapters: the merged model and the adapted model disagree on a validation batch (largest "
                        f"difference {err:.3g} x the output scale, allowed {MERGE_RTOL:g}); model.safetensors and "
                        "adapter/ were not written. The weights may have grown non-finite or very large (lower "
                        "optim.lr / adapters.lr, or set trainer.grad_clip).")
    return err


def write_adapter(peft_model: Any, folder: Path) -> int:
    """`folder` (adapter/) in peft's own format, written beside it and renamed into place; the adapter file's bytes."""
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.", suffix=".tmp"))
    try:
        peft_model.save_pretrained(str(tmp))
        missing = [f for f in ADAPTER_FILES if not (tmp / f).is_file()]
        if missing:
            raise RuntimeError(f"peft's save_pretrained wrote no {missing}")
        from ..files import FILE_MODE

        for f in tmp.iterdir():  # mkdtemp's folder and peft's files would be private (0700 / 0600)
            os.chmod(f, FILE_MODE)
        os.chmod(tmp, FILE_MODE | ((FILE_MODE & 0o444) >> 2))  # + x where r: a folder
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return (folder / "adapter_model.safetensors").stat().st_size
