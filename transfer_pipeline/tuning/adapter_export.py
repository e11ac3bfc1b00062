"""The adapters' outputs: `adapter/` in peft's own format, and the merged weights, checked against the adapted model.

The merge is peft's (`merge_and_unload` on a copy, so the adapted model stays as trained): every
update goes into its base weight, the head's trained copy takes the head's place, and what is
left is the target model with its own names. Before anything is written the merged copy and the
adapted model must give the same outputs on a batch: the largest difference at most
`MERGE_RTOL` x max(1, the largest output magnitude), float32, without autocast. The check runs
through mapping.verify's per-module recording (mapping/verify.py `record_pairs`): every module of
the merged copy is paired with the adapted model's module of the same plain name (`plain_modules`:
a layer peft wrapped answers for its name), so a merge that goes wrong is named where it starts.
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
from ..names import join_name

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


def plain_modules(model: nn.Module, adapted: bool) -> dict[str, nn.Module]:
    """A model with adapters as modules under the names they have without them (the load's, the merged
    model's): a layer peft wrapped answers for its name as the wrapper (`adapted`: its output has the
    update in) or as the base layer it wraps; the head (modules_to_save) as peft's trained copy
    (`adapted`) or the loaded original. The adapters' own parts (lora_A, hada_w1_a, ...) have no plain name."""
    from peft.tuners.tuners_utils import BaseTunerLayer
    from peft.utils import ModulesToSaveWrapper

    out: dict[str, nn.Module] = {}

    def walk(module: nn.Module, name: str) -> None:
        inner = module
        if isinstance(module, BaseTunerLayer):
            inner = module.get_base_layer()
            if adapted:  # the base layer's own parts do not see the update
                out[name] = module
                return
        elif isinstance(module, ModulesToSaveWrapper):
            inner = module.modules_to_save[module.active_adapters[0]] if adapted else module.original_module
        out[name] = module if adapted else inner
        for child, m in inner.named_children():
            walk(m, join_name(name, child))

    walk(model, "")
    return out


def plain_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The base's tensors of a model with adapters, in the base's own state_dict names (the load's targets)."""
    return {join_name(name, k): v for name, m in plain_modules(model, adapted=False).items()
            for k, v in [*m._parameters.items(), *((k, b) for k, b in m._buffers.items()
                                                   if k not in m._non_persistent_buffers_set)] if v is not None}


class MergeCheck(float):
    """`check_merge`'s result: the final outputs' largest difference relative to their scale (the float itself),
    and the paired modules' agreement (`to_dict`, for summary.json)."""

    modules: int = 0  # paired modules compared
    worst: float = 0.0  # their largest difference relative to max(1, that module's largest output)
    worst_module: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"merge_modules_compared": self.modules, "merge_module_max_rel_diff": self.worst,
                "merge_worst_module": self.worst_module}


def _rel(p: Any, seen: dict) -> float:
    want = [t for t in seen[p.source][1] if t is not None and t.numel()]
    return p.diff / max([1.0, *(float(t.abs().max()) for t in want)])


def check_merge(adapted: nn.Module, merged: nn.Module, x: Any, output: int | str | None) -> MergeCheck:
    """The largest output difference of merged vs adapted on `x`, relative to max(1, the largest output), with
    every module of the merged copy compared with the adapted model's of the same name (mapping.verify's
    recording); a UserError naming the first module that differs (the run fails, nothing is written) when
    the final outputs, or a module's outputs on agreeing inputs, differ by more than MERGE_RTOL."""
    from ..mapping.verify_record import record_pairs

    mine, theirs = plain_modules(adapted, adapted=True), dict(merged.named_modules())
    src_of = {n: n for n in mine if n and n in theirs}
    rec = record_pairs(merged, adapted, src_of, theirs, mine, x, MERGE_RTOL, 0.0, scaled=True,
                       run=lambda m, inputs, _side: call(m, inputs))
    a = pick_output(rec.out_t, output).float()
    b = pick_output(rec.out_s, output).float()
    scale = max(1.0, float(a.abs().max()))
    err = MergeCheck(float((a - b).abs().max()) / scale)
    rels = {p.target: _rel(p, rec.seen) for p in rec.observed}
    err.modules = len(rels)
    if rels:
        err.worst_module = max(rels, key=lambda n: (rels[n] != rels[n], rels[n]))  # NaN first
        err.worst = rels[err.worst_module]
    differ = [p for p in rec.observed if not p.agree]
    first = next((p for p in differ if p.input_agrees), differ[0] if differ else None)
    if not err <= MERGE_RTOL or (first is not None and first.input_agrees):  # NaN fails too
        where = "" if first is None else (
            f"; first difference at module `{first.target}` ({type(mine[first.target]).__name__} vs merged "
            f"{type(theirs[first.target]).__name__}: {rels[first.target]:.3g} x its output scale"
            f"{'' if first.input_agrees else ', its input already differs'}), {len(differ)} of {err.modules} "
            "modules differ")
        raise UserError(f"adapters: the merged model and the adapted model disagree on a validation batch (largest "
                        f"difference {float(err):.3g} x the output scale, allowed {MERGE_RTOL:g}{where}); "
                        "model.safetensors and adapter/ were not written. The weights may have grown non-finite or "
                        "very large (lower optim.lr / adapters.lr, or set trainer.grad_clip).")
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
