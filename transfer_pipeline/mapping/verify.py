"""`mapping.verify`: prove a load numerically, not just by names and shapes.

With a source model: run source and target on the same seeded input and compare the outputs of
the modules the plan pairs (pairs.py, hooks here), then the final outputs; the report names the
first target module, in the order the target computed them, whose output differs. Without one:
verify_tensors.py checks every loaded tensor against its source tensor after the op, bit for bit.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from ..errors import UserError
from ..schema import SourceConfig, VerifyConfig
from ..sources.read import SourceWeights
from ..model_io import call, forward_fault, is_shape_error, pick_output, shape_text, to_device
from .pairs import EXACT_OPS, paired_modules
from .plan import LoadPlan

def _num(x: float) -> float | str:
    return x if math.isfinite(x) else str(x)  # json has no inf / nan


@dataclass
class VerifyResult:
    """What `verify_outputs` found; `describe()` is the log's text, `to_dict()` the json file's."""

    ok: bool
    compared: int  # paired modules whose outputs were compared
    # the first target module (in the order the target computed them) whose output differs while its
    # input agrees: the difference starts inside it (else simply the first that differs, with a note)
    first_difference: str | None = None
    first_source: str | None = None  # its source module
    max_abs_diff: dict[str, float] = field(default_factory=dict)  # per compared target module
    final: str = ""  # what happened to the final outputs
    final_diff: float | None = None  # None: final outputs not compared
    differing: list[str] = field(default_factory=list)  # every target module that differs, in order
    notes: list[str] = field(default_factory=list)
    atol: float = 0.0
    rtol: float = 0.0

    def describe(self) -> str:
        tol, first, n = f"atol {self.atol:g}, rtol {self.rtol:g}", self.first_difference, len(self.differing)
        if self.ok:
            worst = max([*self.max_abs_diff.values(), self.final_diff or 0.0])
            what = " and the final output" if self.final_diff is not None else ""
            head = f"outputs of {self.compared} paired modules{what} agree (max |diff| {worst:.2g}, {tol})"
        elif first is not None:
            also = [d for d in self.differing if d != first]
            head = (f"FAILED: first difference at target `{first}` (source `{self.first_source}`): max |diff| "
                    f"{self.max_abs_diff[first]:.3g} ({tol}); {n} of {self.compared} paired modules differ"
                    + (f" (also {', '.join(also[:5])}{' ...' if len(also) > 5 else ''})" if also else ""))
        else:
            head = (f"FAILED: {self.compared} paired modules agree, but" if self.compared or self.final_diff is not None
                    else "FAILED: nothing compared:")
        sep = " " if not self.ok and first is None else "; "
        final = "" if self.ok and self.final_diff is not None else sep + self.final
        return "\n".join([f"mapping.verify: {head}{final}", *(f"  {n}" for n in self.notes)])

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["max_abs_diff"] = {k: _num(v) for k, v in self.max_abs_diff.items()}
        out["final_diff"] = None if self.final_diff is None else _num(self.final_diff)
        return out


def _tensors(out: Any) -> list[torch.Tensor | None]:
    """A module's output as positions (tensors; tuples/lists/dict values element-wise; None: not a tensor)."""
    if isinstance(out, Mapping):
        out = list(out.values())
    if isinstance(out, (tuple, list)):
        return [o.detach().clone() if isinstance(o, torch.Tensor) else None for o in out]
    return [out.detach().clone()] if isinstance(out, torch.Tensor) else []


def _compare(got: list, want: list, atol: float, rtol: float) -> tuple[bool, float] | None:
    """(agree, max |diff|) over the positions both sides hold tensors; None when there are none."""
    pairs = [(a, b) for a, b in zip(got, want) if a is not None and b is not None]
    if not pairs:
        return None
    ok, worst = True, 0.0
    for a, b in pairs:
        if a.shape != b.shape:
            return False, math.inf
        wide = torch.float64 if torch.float64 in (a.dtype, b.dtype) else torch.float32
        a, b = a.to(b.device, wide), b.to(wide)  # b, the source's, is the reference
        diff = (a - b).abs()
        ok = ok and bool((diff <= atol + rtol * b.abs()).all())
        worst = max(worst, float(diff.max()) if diff.numel() else 0.0)
    return ok, worst


def _prepare(inputs: Any, model: nn.Module) -> Any:
    """The inputs on the model's device, floats in its dtype (a bf16 model gets bf16)."""
    p = next((t for t in [*model.parameters(), *model.buffers()] if t.is_floating_point()), None)
    if p is None:
        return inputs
    x = to_device(inputs, p.device)
    cast = (lambda t: t.to(p.dtype) if isinstance(t, torch.Tensor) and t.is_floating_point() else t)
    return {k: cast(v) for k, v in x.items()} if isinstance(x, Mapping) else cast(x)


def _run(model: nn.Module, inputs: Any, side: str) -> Any:
    try:
        return call(model, _prepare(inputs, model))
    except Exception as e:  # noqa: BLE001 - whatever a model raises on an input it cannot take
        if not is_shape_error(e) and not isinstance(e, TypeError):
            raise UserError(forward_fault(e, f"mapping.verify: the {side} model ({type(model).__name__})")) from None
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        raise UserError(f"mapping.verify.input_shape: the {side} model ({type(model).__name__}) cannot run on the "
                        f"verify input {shape_text(inputs)}: {type(e).__name__}: {first}. Give "
                        "mapping.verify.input_shape an input both models take (e.g. [2, 3, 224, 224]), or null to "
                        "take a batch of the configured data (models that read token ids need that).") from None


def _hook_all(model: nn.Module, names: Iterable[str], on_first: Any, calls: dict[str, int]) -> list:
    """Forward hooks calling `on_first(name, args, output)` on each module's first call; calls counted."""
    modules, handles = dict(model.named_modules()), []
    for name in names:
        def hook(_m: nn.Module, args: Any, out: Any, name: str = name) -> None:
            calls[name] = calls.get(name, 0) + 1
            if calls[name] == 1:  # a module run twice (shared weights) is compared on its first call only
                on_first(name, args, out)
        handles.append(modules[name].register_forward_hook(hook))
    return handles


def _final_blocker(plan: LoadPlan) -> str | None:
    """Why the whole models need not agree even when the load is right; None when they must."""
    fresh = [m for m in plan.missing if not m.endswith("num_batches_tracked")]
    if fresh:
        return f"{len(fresh)} target tensor(s) not loaded ({', '.join(fresh[:3])}{' ...' if len(fresh) > 3 else ''})"
    changed = [e for e in plan.entries if e.op not in EXACT_OPS]
    return f"op {changed[0].op} changes the function ({changed[0].target})" if changed else None


def _pick(out: Any, spec: int | str | None, side: str) -> tuple[torch.Tensor | None, str]:
    try:
        return pick_output(out, spec), ""
    except UserError as e:
        return None, f"the {side} output: {str(e).split('. ')[0]}"


@torch.no_grad()
def verify_outputs(source_model: nn.Module, target_model: nn.Module, plan: LoadPlan, inputs: Any,
                   atol: float = 1e-5, rtol: float = 1e-4, source_output: int | str | None = None,
                   target_output: int | str | None = None) -> VerifyResult:
    """Run both models (eval, no grad) on `inputs` (a tensor or a dict of keyword inputs) and compare.

    Paired modules (`paired_modules`) compare their first call's outputs; the final outputs
    (`pick_output` with each side's `model.output`) compare when their shapes agree and the plan
    loads the whole target by exact ops. Every module's training flag is restored afterwards.
    """
    pairs = paired_modules(plan, [n for n, _ in source_model.named_modules()],
                           [n for n, _ in target_model.named_modules()])
    src_of = {t: s for s, t in pairs}
    res = VerifyResult(ok=True, compared=0, atol=atol, rtol=rtol)
    seen: dict[str, tuple[list, list]] = {}  # source module -> its first call's (inputs, outputs)
    s_calls: dict[str, int] = {}
    t_calls: dict[str, int] = {}
    faulty: list[str] = []  # modules whose inputs agree and outputs differ: the difference starts inside them

    def on_source(name: str, args: Any, out: Any) -> None:
        seen[name] = (_tensors(args), _tensors(out))

    def on_target(name: str, args: Any, out: Any) -> None:  # compared at once: only the source's are kept
        if src_of[name] not in seen:
            return
        want_in, want_out = seen[src_of[name]]
        got = _compare(_tensors(out), want_out, atol, rtol)
        if got is not None:
            res.compared += 1
            res.max_abs_diff[name] = got[1]
            if not got[0]:
                res.differing.append(name)
                if (_compare(_tensors(args), want_in, atol, rtol) or (True, 0.0))[0]:
                    faulty.append(name)

    modes = {m: m.training for model in (source_model, target_model) for m in model.modules()}
    handles: list = []
    try:
        source_model.eval(), target_model.eval()
        try:
            handles += _hook_all(source_model, src_of.values(), on_source, s_calls)
        except RuntimeError:  # TorchScript modules take no hooks: only the final outputs can be compared
            res.notes.append("the source is TorchScript (no forward hooks): only the final outputs are compared")
        out_s = _run(source_model, inputs, "source")
        handles += _hook_all(target_model, src_of, on_target, t_calls)
        out_t = _run(target_model, inputs, "target")
    finally:
        for h in handles:
            h.remove()
        for m, mode in modes.items():
            m.training = mode
    _notes(res, pairs, seen, t_calls, s_calls)
    if res.differing:  # the first module that goes wrong on agreeing inputs is where to look
        res.first_difference = (faulty or res.differing)[0]
        res.first_source = src_of[res.first_difference]
        if not faulty:
            res.notes.append(f"the input of `{res.first_difference}` already differs: the difference starts in "
                             "code outside the paired modules, before it")
    final = _final(res, plan, _pick(out_s, source_output, "source"), _pick(out_t, target_output, "target"))
    # a proof needs something compared: nothing paired and no final output is not a pass
    res.ok = not res.differing and final is not False and (res.compared > 0 or final is not None)
    return res


def _notes(res: VerifyResult, pairs: list[tuple[str, str]], seen: dict, t_calls: dict, s_calls: dict) -> None:
    idle = [t for s, t in pairs if t not in res.max_abs_diff]
    if idle and seen:
        res.notes.append(f"{len(idle)} paired module(s) not compared: not run on both sides, or no tensor output "
                         f"(e.g. {', '.join(idle[:3])}; a parent may use their weights without calling them)")
    twice = sorted({t for t, c in t_calls.items() if c > 1} | {s for s, c in s_calls.items() if c > 1})
    if twice:
        res.notes.append(f"{len(twice)} module(s) ran more than once (e.g. {', '.join(twice[:3])}): their first "
                         "calls were compared")


def _final(res: VerifyResult, plan: LoadPlan, source: tuple, target: tuple) -> bool | None:
    """Compare the final outputs into `res`: agree, differ, or None (not compared, `res.final` says why)."""
    (b, why_b), (a, why_a) = source, target
    blocker = _final_blocker(plan)
    if a is None or b is None:
        res.final = f"final outputs not compared: {why_b or why_a}"
    elif a.shape != b.shape:
        res.final = (f"final outputs not compared: shapes source {tuple(b.shape)} vs target {tuple(a.shape)} "
                     "(a new head)")
    elif blocker:
        res.final = f"final outputs not compared: {blocker}"
    else:
        agree, res.final_diff = _compare([a], [b], res.atol, res.rtol)  # type: ignore[misc]
        res.final = (f"the final output agrees (max |diff| {res.final_diff:.2g})" if agree else
                     f"the final outputs differ (max |diff| {res.final_diff:.3g}, atol {res.atol:g}, rtol {res.rtol:g})")
        return agree
    return None


def verify_inputs(cfg: VerifyConfig, sample: Any | None = None) -> Any:
    """The verify input: `randn(*input_shape)` from `seed` (same on every run), else `sample` (a data batch)."""
    if cfg.input_shape:
        return torch.randn(*cfg.input_shape, generator=torch.Generator().manual_seed(cfg.seed))
    if sample is not None:
        return sample
    raise UserError("mapping.verify.enabled=true: give mapping.verify.input_shape (e.g. [2, 3, 224, 224]) or data "
                    "to take a batch from.")


def source_module(source: SourceConfig, verify: VerifyConfig, weights: SourceWeights | None,
                  stripped_prefix: str = "") -> nn.Module | None:
    """The source as a model to run, or None: `mapping.verify.source_model` (the checkpoint's class, built
    and given the source's tensors), else the module the source was read from (`source.model`, a
    TorchScript archive: sources/read.py keeps it)."""
    from ..build import build_model

    if weights is None:
        return None
    if verify.source_model is None:
        return weights.module if isinstance(weights.module, nn.Module) else None
    where = "mapping.verify.source_model"
    with torch.random.fork_rng(devices=[]):  # its random init is overwritten: leave the run's RNG as it was
        model = build_model(verify.source_model, where)
    state = model.state_dict()
    stored = {k: next((n for n in (k, stripped_prefix + k) if n in weights.meta), None) for k in state}
    absent = [k for k, n in stored.items() if n is None]
    wrong = [k for k, n in stored.items() if n is not None and tuple(state[k].shape) != weights.meta[n].shape]
    extra = sorted(set(weights.meta) - set(stored.values()))
    if absent or wrong or extra:
        raise UserError(f"{where}: {type(model).__name__} does not fit the source's tensors: not in the source "
                        f"{absent[:3] or 'none'}, other shape {wrong[:3] or 'none'}, only in the source "
                        f"{extra[:3] or 'none'}. Name the checkpoint's own architecture (with its arguments).")
    model.load_state_dict({k: weights.get(n) for k, n in stored.items()})
    return model
