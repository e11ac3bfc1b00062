"""`mapping.verify`: prove a load numerically, not just by names and shapes.

With a source model: run source and target on the same seeded input and compare the outputs of
the modules the plan pairs (pairs.py, hooks here), then the final outputs; the report names the
first target module, in the order the target computed them, whose output differs. Pairs whose
computations cannot correspond (a fused norm+activation, a skip on one side, a cell stepped per
time step: verify_compare.py) are reported as not comparable, not as differences. Without a source
model: verify_tensors.py checks every loaded tensor against its source tensor after the op, bit for bit.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
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
from .verify_compare import AGREE, FAULTY, NOT_COMPARABLE, Seen, compare, judge
from .verify_record import record_pairs

log = logging.getLogger(__name__)


def _num(x: float) -> float | str:
    return x if math.isfinite(x) else str(x)  # json has no inf / nan


def _listed(names: list[str], limit: int = 10) -> str:
    return ", ".join(names[:limit]) + (f" +{len(names) - limit} more" if len(names) > limit else "")


# how describe() counts each kind of not comparable pair (verify_compare.judge's reasons)
_KINDS = {"fused": "fused", "skip": "with a skip on one side", "call count": "called another number of times",
          "different shapes": "with other output shapes", "different kinds": "of different kinds"}


@dataclass
class VerifyResult:
    """What `verify_outputs` found; `describe()` is the log's text, `to_dict()` the json file's."""

    ok: bool
    compared: int  # paired modules whose outputs were compared (not counting the not comparable ones)
    # the first target module (in the order the target computed them) whose output differs while its
    # input agrees: the difference starts inside it (else simply the first that differs, with a note)
    first_difference: str | None = None
    first_source: str | None = None  # its source module
    max_abs_diff: dict[str, float] = field(default_factory=dict)  # per compared target module
    final: str = ""  # what happened to the final outputs
    final_diff: float | None = None  # None: final outputs not compared
    differing: list[str] = field(default_factory=list)  # every compared target module that differs, in order
    # target module -> why its outputs cannot correspond to its source module's (`kind: short; why`): a fused
    # module, a skip on one side, another call count or shape; reported, never counted as a difference
    not_comparable: dict[str, str] = field(default_factory=dict)
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
        return "\n".join([f"mapping.verify: {head}{final}{self._not_comparable()}",
                          *(f"  {n}" for n in self.notes)])

    def _not_comparable(self) -> str:
        """'; 45 pair(s) not comparable: 45 fused (e.g. bn1: BatchNormAct2d vs BatchNorm2d)'."""
        kinds: dict[str, list[str]] = {}
        for t, why in self.not_comparable.items():
            kinds.setdefault(why.split(": ", 1)[0], []).append(t)
        short = {t: why.split(": ", 1)[-1].split("; ")[0] for t, why in self.not_comparable.items()}
        parts = [f"{len(ts)} {_KINDS.get(k, k)} (e.g. {ts[0]}: {short[ts[0]]})" for k, ts in kinds.items()]
        return f"; {len(self.not_comparable)} pair(s) not comparable: {', '.join(parts)}" if parts else ""

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["max_abs_diff"] = {k: _num(v) for k, v in self.max_abs_diff.items()}
        out["final_diff"] = None if self.final_diff is None else _num(self.final_diff)
        return out


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


def _final_blocker(plan: LoadPlan, source_names: set[str]) -> str | None:
    """Why the whole models need not agree even when the load is right; None when they must."""
    fresh = [m for m in plan.missing if not m.endswith("num_batches_tracked")]
    if fresh:
        return f"{len(fresh)} target tensor(s) not loaded ({', '.join(fresh[:3])}{' ...' if len(fresh) > 3 else ''})"
    changed = [e for e in plan.entries if e.op not in EXACT_OPS]
    if changed:
        return f"op {changed[0].op} changes the function ({changed[0].target})"
    cut = len(plan.stripped_prefix)  # a source model that holds part of the file: what the rest loaded differs
    foreign = [e.target for e in plan.entries if source_names and not all(
        n in source_names or (cut and n[cut:] in source_names) for n in e.sources)]
    return (f"{len(foreign)} target tensor(s) load from tensors the source model does not hold "
            f"({', '.join(foreign[:3])}{' ...' if len(foreign) > 3 else ''})" if foreign else None)


def _pick(out: Any, spec: int | str | None, side: str) -> tuple[torch.Tensor | None, str]:
    try:
        return pick_output(out, spec), ""
    except UserError as e:
        return None, f"the {side} output: {str(e).split('. ')[0]}"


@torch.no_grad()
def verify_outputs(source_model: nn.Module, target_model: nn.Module, plan: LoadPlan, inputs: Any,
                   atol: float = 1e-5, rtol: float = 1e-4, source_output: int | str | None = None,
                   target_output: int | str | None = None,
                   target_modules: Mapping[str, nn.Module] | None = None) -> VerifyResult:
    """Run both models (eval, no grad) on `inputs` (a tensor or a dict of keyword inputs) and compare.

    Paired modules (`paired_modules`) compare their first call's outputs; a pair whose computations
    cannot correspond (verify_compare.judge: fused, a skip on one side, another call count or shape)
    is reported as not comparable, not as a difference. The final outputs (`pick_output` with each
    side's `model.output`) compare when their shapes agree and the plan loads the whole target by
    exact ops; when they agree, only a real difference (agreeing inputs, differing outputs of
    corresponding modules) fails. Every module's training flag is restored afterwards.
    `target_modules`: the target's modules by the names the plan uses, where they are not its own
    (a model with adapters: the wrapped base layers, tuning/adapter_export.plain_modules).
    """
    s_mods = dict(source_model.named_modules())
    t_mods = dict(target_modules) if target_modules is not None else dict(target_model.named_modules())
    pairs = _called(paired_modules(plan, list(s_mods), list(t_mods)), s_mods, t_mods)
    src_of = {t: s for s, t in pairs}
    res = VerifyResult(ok=True, compared=0, atol=atol, rtol=rtol)
    rec = record_pairs(source_model, target_model, src_of, s_mods, t_mods, inputs, atol, rtol, run=_run)
    if not rec.hooked_source:
        res.notes.append("the source is TorchScript (no forward hooks): only the final outputs are compared")
    seen, observed, s_calls, t_calls = rec.seen, rec.observed, rec.s_calls, rec.t_calls
    final = _final(res, plan, set(source_model.state_dict()), _pick(rec.out_s, source_output, "source"),
                   _pick(rec.out_t, target_output, "target"))
    faulty, downstream, whys = _judge_all(res, observed, s_mods, t_mods, s_calls, t_calls, final)
    _notes(res, pairs, seen, t_calls, s_calls)
    # a difference on inputs that already differ is excused only by final outputs that agree; a proof needs
    # something compared: nothing paired and no final output is not a pass
    res.ok = (not faulty and final is not False and (not downstream or final is True)
              and (res.compared > 0 or final is not None))
    if not res.ok and (faulty or downstream):  # the first module that goes wrong on agreeing inputs is where to look
        res.first_difference = faulty[0] if faulty else next(iter(downstream))
        res.first_source = src_of[res.first_difference]
    _explain(res, faulty, downstream, whys.get(res.first_difference or ""), observed, final)
    return res


def _called(pairs: list[tuple[str, str]], s_mods: dict, t_mods: dict) -> list[tuple[str, str]]:
    """A ModuleList / ModuleDict is never called (its owner loops over it): its side of a pair moves up to the
    module around it that holds the same tensors (a streaming wrapper stepping its `cells`), not the root."""
    def tensors_of(m: nn.Module) -> set[int]:
        return {id(t) for t in m.state_dict(keep_vars=True).values()}

    def up(name: str, mods: dict, taken: set[str]) -> str:
        while isinstance(mods[name], (nn.ModuleList, nn.ModuleDict)) and "." in name:
            parent = name.rpartition(".")[0]
            if parent in taken or tensors_of(mods[parent]) != tensors_of(mods[name]):
                break
            name = parent
        return name

    s_taken, t_taken = {s for s, _ in pairs}, {t for _, t in pairs}
    return [(up(s, s_mods, s_taken), up(t, t_mods, t_taken)) for s, t in pairs]


def _judge_all(res: VerifyResult, observed: list[Seen], s_mods: dict, t_mods: dict, s_calls: dict,
               t_calls: dict, final: bool | None) -> tuple[list[str], dict[str, str | None], dict[str, str]]:
    """Sort the observed pairs into `res` (compared, not comparable); (faulty, downstream: target -> the not
    comparable pair that ran last before it or None, what more there is to say about a difference)."""
    faulty: list[str] = []
    whys: dict[str, str] = {}
    downstream: dict[str, str | None] = {}
    last_apart: str | None = None  # the latest not comparable pair, in the order the target computed them
    for p in observed:
        verdict, why = judge(p, type(s_mods[p.source]), type(t_mods[p.target]), s_calls.get(p.source, 0),
                             t_calls.get(p.target, 0), final is True)
        if verdict == NOT_COMPARABLE:
            res.not_comparable[p.target] = why
            last_apart = p.target
            continue
        res.compared += 1
        res.max_abs_diff[p.target] = p.part_diff[1] if verdict == FAULTY and p.part_diff else p.diff
        if verdict == AGREE:
            continue
        res.differing.append(p.target)
        if verdict == FAULTY:
            faulty.append(p.target)
        else:
            downstream[p.target] = last_apart
        if why:  # a fused pair's shared part, outputs of other sizes
            whys[p.target] = why
    return faulty, downstream, whys


def _explain(res: VerifyResult, faulty: list[str], downstream: dict[str, str | None], why: str | None,
             observed: list[Seen], final: bool | None) -> None:
    """Notes on differences that are not where a load went wrong: inputs that already differ, and not
    comparable pairs that nothing after them checks."""
    def short(t: str) -> str:
        return res.not_comparable[t].split("; ")[0]

    first = res.first_difference
    if why:
        res.notes.append(f"`{first}`: {why}")
    elif first is not None and first not in faulty:
        apart = downstream[first]
        res.notes.append(f"the input of `{first}` already differs: " + (
            f"downstream of not comparable `{apart}` ({short(apart)}); the difference starts there or in code "
            "outside the paired modules, before it" if apart else
            "the difference starts in code outside the paired modules, before it"))
    elif res.ok and downstream:
        by: dict[str | None, list[str]] = {}
        for t, apart in downstream.items():
            by.setdefault(apart, []).append(t)
        for apart, ts in by.items():
            res.notes.append(f"{len(ts)} module(s) differ " + (f"downstream of not comparable `{apart}`" if apart else
                                                               f"on inputs that already differ (e.g. {ts[0]})")
                             + "; their inputs already differ, and the final output agrees")
    elif not res.ok and first is None and final is False and res.not_comparable:
        res.notes.append("no compared module differs: the difference starts in a not comparable pair ("
                         f"{_listed(list(res.not_comparable), 3)}) or in code outside the paired modules")
    if final is None:  # nothing after them was compared: their load is not proven
        last = max((i for i, p in enumerate(observed) if p.target not in res.not_comparable), default=-1)
        unchecked = [p.target for p in observed[last + 1:]]
        if unchecked:
            res.notes.append(f"nothing compared after not comparable {_listed(unchecked, 3)}: "
                             "their load is not proven by this check")
    for kind in dict.fromkeys(why.split(": ", 1)[0] for why in res.not_comparable.values()):
        t = next(t for t, why in res.not_comparable.items() if why.startswith(kind + ":"))
        res.notes.append(f"not comparable, e.g. `{t}`: {res.not_comparable[t].split('; ', 1)[-1]}")


def _notes(res: VerifyResult, pairs: list[tuple[str, str]], seen: dict, t_calls: dict, s_calls: dict) -> None:
    idle = [t for s, t in pairs if t not in res.max_abs_diff and t not in res.not_comparable]
    if idle and seen:
        res.notes.append(f"{len(idle)} paired module(s) not compared: not run on both sides, or no tensor output "
                         f"(e.g. {', '.join(idle[:3])}; a parent may use their weights without calling them)")
    apart = set(res.not_comparable) | {s for s, t in pairs if t in res.not_comparable}  # their counts are said there
    twice = sorted({t for t, c in t_calls.items() if c > 1 and t not in apart}
                   | {s for s, c in s_calls.items() if c > 1 and s not in apart})
    if twice:
        res.notes.append(f"{len(twice)} module(s) ran more than once (e.g. {', '.join(twice[:3])}): their first "
                         "calls were compared")


def _final(res: VerifyResult, plan: LoadPlan, source_names: set[str], source: tuple, target: tuple) -> bool | None:
    """Compare the final outputs into `res`: agree, differ, or None (not compared, `res.final` says why)."""
    (b, why_b), (a, why_a) = source, target
    blocker = _final_blocker(plan, source_names)
    if a is None or b is None:
        res.final = f"final outputs not compared: {why_b or why_a}"
    elif a.shape != b.shape:
        res.final = (f"final outputs not compared: shapes source {tuple(b.shape)} vs target {tuple(a.shape)} "
                     "(a new head)")
    elif blocker:
        res.final = f"final outputs not compared: {blocker}"
    else:
        agree, res.final_diff = compare([a], [b], res.atol, res.rtol)  # type: ignore[misc]
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
                  stripped_prefix: str = "", notes: list[str] | None = None) -> nn.Module | None:
    """The source as a model to run, or None: `mapping.verify.source_model` (the checkpoint's class, built
    and given the source's tensors), else the module the source was read from (`source.model`, a
    TorchScript archive: sources/read.py keeps it).

    The class may hold part of the checkpoint (a backbone of a file with extra heads): the tensors it
    leaves out are listed in `notes` (logged when None); a tensor it holds that the file lacks, or
    holds in another shape, is an error."""
    from ..build import build_model

    if weights is None:
        return None
    if verify.source_model is None:
        return weights.module if isinstance(weights.module, nn.Module) else None
    where = "mapping.verify.source_model"
    with torch.random.fork_rng(devices=[]):  # its random init is overwritten: leave the run's RNG as it was
        model = build_model(verify.source_model, where)
    state, name = model.state_dict(), type(model).__name__
    stored = {k: next((n for n in (k, stripped_prefix + k) if n in weights.meta), None) for k in state}
    absent = [k for k, n in stored.items() if n is None]
    wrong = [f"{k} {tuple(state[k].shape)} vs {weights.meta[n].shape}" for k, n in stored.items()
             if n is not None and tuple(state[k].shape) != weights.meta[n].shape]
    if absent or wrong:
        why = [f"not in the source: {_listed(absent)}" if absent else "",
               f"another shape (model vs source): {_listed(wrong)}" if wrong else ""]
        raise UserError(f"{where}: {name} does not fit the source's tensors: {'; '.join(w for w in why if w)}. "
                        "Name the checkpoint's own architecture (with its arguments).")
    model.load_state_dict({k: weights.get(n) for k, n in stored.items()})
    extra = sorted(set(weights.meta) - set(stored.values()))
    if extra:
        note = (f"{where}: {name} holds {len(stored)} of the source's {len(weights.meta)} tensors; the other "
                f"{len(extra)} are left out of the run: {_listed(extra)}")
        notes.append(note) if notes is not None else log.info("%s", note)
    return model
