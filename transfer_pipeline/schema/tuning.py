"""`freeze` and `optim`: what trains when, and at which learning rate."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, List, Optional

from omegaconf import MISSING

from .checks import check_lr_fields, check_number
from ..errors import UserError


class BatchNormPolicy(Enum):  # freeze.bn: every BN layer no override names
    auto = "auto"  # statistics fixed while all of the layer's parameters are frozen, updated once any trains
    eval = "eval"  # the old spelling of auto (kept so configs written before `auto` behave as before)
    train = "train"  # statistics always updated
    frozen = "frozen"  # statistics and affine parameters fixed for the whole run


class BatchNormMode(Enum):  # freeze.bn_overrides[].mode: the layers an override selects
    train = "train"  # statistics always updated
    eval = "eval"  # statistics always fixed (the affine parameters train if selected)
    frozen = "frozen"  # statistics and affine parameters fixed for the whole run


class GradualOrder(Enum):
    head_first = "head_first"  # the block nearest the head first (ULMFiT)
    stem_first = "stem_first"


class OptimizerName(Enum):
    adamw = "adamw"
    adam = "adam"
    sgd = "sgd"


class SchedulerName(Enum):
    constant = "constant"  # every group at its own LR (times its warmup)
    cosine = "cosine"  # cosine from each group's LR to min_lr_mult x it, over the whole run
    linear = "linear"  # linear decay to min_lr_mult x the group's LR, over the whole run
    step = "step"  # x gamma every step_epochs epochs
    onecycle = "onecycle"  # torch OneCycleLR: up from lr/div_factor, cosine down to lr/div_factor/final_div_factor


@dataclass
class UnfreezeEvent:
    epoch: Optional[int] = None  # 0-based: applied before this epoch trains (one of epoch / step)
    step: Optional[int] = None  # 0-based optimizer step over the whole run: applied before that step
    unfreeze: List[str] = field(default_factory=list)  # selectors made trainable
    freeze: List[str] = field(default_factory=list)  # selectors frozen again (gradient off, no decay)
    lr: Optional[float] = None  # own group at this LR for what it unfreezes
    lr_mult: Optional[float] = None  # ... or at optim.lr x lr_mult
    warmup_steps: Optional[int] = None  # linear warmup of the groups this event starts
    name: Optional[str] = None  # name of its group (default unfreeze@<epoch> / unfreeze@step<step>)
    restart_schedule: bool = False  # the schedule starts again here over the rest of the run; all groups re-warm

    def check(self, where: str) -> None:
        if (self.epoch is None) == (self.step is None):
            raise UserError(f"{where}: give epoch: N (applied before epoch N trains) or step: N (before optimizer "
                            f"step N), {'not both' if self.epoch is not None else 'one of them'}.")
        if self.epoch is not None and self.epoch < 0:
            raise UserError(f"{where}.epoch={self.epoch}: epochs count from 0 (epoch: 0 is before the first epoch).")
        if self.step is not None and self.step < 0:
            raise UserError(f"{where}.step={self.step}: steps count from 0.")
        if not self.unfreeze and not self.freeze:
            raise UserError(f"{where}: does nothing; give unfreeze: [selectors] and/or freeze: [selectors].")
        check_lr_fields(where, self.lr, self.lr_mult, self.warmup_steps)
        if not self.unfreeze and (self.lr is not None or self.lr_mult is not None
                                  or (self.warmup_steps is not None and not self.restart_schedule)):
            raise UserError(f"{where}: lr/lr_mult/warmup_steps apply to what an event unfreezes, and this one "
                            "unfreezes nothing. Drop them or add unfreeze: [selectors].")


@dataclass
class GradualConfig:
    """`freeze.gradual`: one more block unfrozen every `every` epochs (blocks: `freeze.blocks`); off without `every`."""

    every: Optional[int] = None  # epochs between two unfreezes; null = off
    order: GradualOrder = GradualOrder.head_first  # which block unfreezes first (formerly `from: head | stem`)
    start: Optional[int] = None  # epoch of the first unfreeze (default: `every`)
    lr: Optional[float] = None  # own group LR for the blocks it unfreezes
    lr_mult: Optional[float] = None  # ... or at optim.lr x lr_mult
    warmup_steps: Optional[int] = None  # linear warmup of the groups it starts

    def __post_init__(self) -> None:
        if self.every is not None and self.every < 1:
            raise UserError(f"freeze.gradual.every={self.every}: unfreeze one block every N epochs, N >= 1.")
        if self.start is not None and self.start < 0:
            raise UserError(f"freeze.gradual.start={self.start}: the epoch of the first unfreeze, >= 0.")
        check_lr_fields("freeze.gradual", self.lr, self.lr_mult, self.warmup_steps)

    @property
    def enabled(self) -> bool:
        return self.every is not None

    @property
    def first_epoch(self) -> int:
        return (self.every or 1) if self.start is None else self.start


@dataclass
class BatchNormOverride:
    params: List[str] = MISSING  # selectors of BN layers (module names or their parameter names)
    mode: BatchNormMode = MISSING  # train | eval (statistics fixed) | frozen (statistics and affine fixed)


@dataclass
class FreezeConfig:
    trainable: Optional[List[str]] = None  # selectors that train, the rest frozen; null = everything (minus `frozen`)
    frozen: List[str] = field(default_factory=list)  # selectors frozen (wins over `trainable`)
    until: Optional[str] = None  # freeze every parameter up to and including this module (module order)
    bn: BatchNormPolicy = BatchNormPolicy.auto  # BatchNorm layers no override names: when their statistics update
    bn_overrides: List[BatchNormOverride] = field(default_factory=list)  # per-selector BN modes
    schedule: List[UnfreezeEvent] = field(default_factory=list)  # unfreeze (or freeze) selectors during the run
    gradual: GradualConfig = field(default_factory=GradualConfig)  # {every: 1, order: head_first, ...}; off without every
    blocks: Optional[List[Any]] = None  # blocks stem -> head (selector or list of them); null = top-level modules

    def __post_init__(self) -> None:
        for i, ev in enumerate(self.schedule):
            ev.check(f"freeze.schedule[{i}]")
        by_step = {ev.step is not None for ev in self.schedule} | ({False} if self.gradual.enabled else set())
        if len(by_step) > 1:
            raise UserError("freeze.schedule: mixes epoch: and step: events (freeze.gradual counts as epoch events); "
                            "use one kind, since the steps per epoch are only known once the data is loaded.")


@dataclass
class ParamGroupConfig:
    params: List[str] = MISSING  # selectors of the group's parameters
    lr: Optional[float] = None  # the group's LR (default optim.lr)
    lr_mult: Optional[float] = None  # ... or optim.lr x lr_mult
    weight_decay: Optional[float] = None  # the group's decay (default optim.weight_decay)
    name: Optional[str] = None  # shown in tables and metrics.csv (default: the first selector)
    warmup_steps: Optional[int] = None  # the group's warmup (default optim.scheduler.warmup_steps)
    betas: Optional[List[float]] = None  # adam/adamw (default optim.betas)
    eps: Optional[float] = None  # adam/adamw: the denominator's epsilon (default torch's 1e-8)
    momentum: Optional[float] = None  # sgd (default optim.momentum)

    def check(self, where: str, optim: "OptimConfig") -> None:
        check_lr_fields(where, self.lr, self.lr_mult, self.warmup_steps)
        for key in ("weight_decay", "eps"):
            if getattr(self, key) is not None:
                check_number(f"{where}.{key}", getattr(self, key), 0, want="a finite number >= 0")
        if self.momentum is not None:
            check_number(f"{where}.momentum", self.momentum, 0, 1, high_open=True)
        if self.betas is not None:
            _check_betas(self.betas, f"{where}.betas", optim.name)
        if self.eps is not None and optim.name == OptimizerName.sgd:
            raise UserError(f"{where}.eps: eps is for adam/adamw, and optim.name=sgd.")
        if self.momentum is not None and optim.name != OptimizerName.sgd:
            raise UserError(f"{where}.momentum: momentum is for sgd; optim.name={optim.name.value} uses betas.")


def _check_betas(betas: List[float], where: str, name: OptimizerName) -> None:
    if name == OptimizerName.sgd:
        raise UserError(f"{where}: betas are for adam/adamw, and optim.name=sgd (use momentum).")
    if len(betas) != 2 or not all(math.isfinite(b) and 0 <= b < 1 for b in betas):
        raise UserError(f"{where}={list(betas)}: two numbers in [0, 1), e.g. [0.9, 0.999].")


@dataclass
class SchedulerConfig:
    name: SchedulerName = SchedulerName.constant  # how each group's LR changes over the run
    warmup_steps: int = 0  # linear warmup of every group from the step it starts training
    min_lr_mult: float = 0.0  # cosine / linear: end at this fraction of each group's LR
    step_epochs: int = 1  # step: multiply by gamma every this many epochs
    gamma: float = 0.1  # step: the factor applied every step_epochs epochs
    pct_start: float = 0.3  # onecycle: fraction of the run spent going up
    div_factor: float = 25.0  # onecycle: start at lr / div_factor
    final_div_factor: float = 1e4  # onecycle: end at lr / div_factor / final_div_factor

    def __post_init__(self) -> None:
        checks = [
            (self.warmup_steps >= 0, "warmup_steps", "a number of steps >= 0"),
            (0.0 <= self.min_lr_mult <= 1.0, "min_lr_mult", "a fraction of the group LR in [0, 1]"),
            (self.step_epochs >= 1, "step_epochs", "a number of epochs >= 1"),
            (self.gamma > 0, "gamma", "a factor > 0"),
            (0.0 < self.pct_start < 1.0, "pct_start", "a fraction of the run in (0, 1)"),
            (self.div_factor > 0 and self.final_div_factor > 0, "div_factor", "> 0 (and final_div_factor > 0)"),
        ]
        for ok, key, want in checks:
            if not ok or not math.isfinite(getattr(self, key)):
                raise UserError(f"optim.scheduler.{key}={getattr(self, key)}: must be {want}.")


class Regularizer(Enum):
    l2_sp = "l2_sp"  # pull the loaded tensors toward the source's values, the fresh ones toward zero (Li et al. 2018)


L2_SP_ALPHA, L2_SP_BETA = 0.01, 1e-4  # optim.l2_sp's values when left null


@dataclass
class L2SPConfig:
    alpha: Optional[float] = None  # strength of the pull of loaded tensors toward the source's values; null = 0.01
    beta: Optional[float] = None  # strength of the pull of fresh tensors (a new head) toward zero; null = 0.0001

    def check(self, on: bool) -> None:
        given = [k for k in ("alpha", "beta") if getattr(self, k) is not None]
        if given and not on:  # it would do nothing
            raise UserError(f"optim.l2_sp.{given[0]} is set but optim.regularize is null; add optim.regularize=l2_sp, "
                            f"or drop optim.l2_sp.{given[0]}.")
        for key in given:
            check_number(f"optim.l2_sp.{key}", getattr(self, key), 0, want="a finite number >= 0 (0.01 is usual)")
        if on and self.values() == (0.0, 0.0):
            raise UserError("optim.l2_sp.alpha=0 and optim.l2_sp.beta=0: optim.regularize=l2_sp would do nothing; "
                            "give alpha > 0 (e.g. 0.01), or drop optim.regularize.")

    def values(self) -> tuple[float, float]:
        """(alpha, beta) with the defaults filled in."""
        return (L2_SP_ALPHA if self.alpha is None else float(self.alpha),
                L2_SP_BETA if self.beta is None else float(self.beta))


@dataclass
class OptimConfig:
    name: OptimizerName = OptimizerName.adamw  # the optimizer
    lr: float = 1e-3  # the base learning rate (groups and events may set their own)
    weight_decay: float = 0.0  # decoupled for adamw, L2 for adam and sgd
    momentum: float = 0.9  # sgd only: its momentum
    betas: Optional[List[float]] = None  # adam/adamw; null = torch's (0.9, 0.999)
    groups: List[ParamGroupConfig] = field(default_factory=list)  # parameter groups with own LR / decay (disjoint)
    layer_decay: Optional[float] = None  # e.g. 0.75: block i below the head trains at lr x 0.75**i
    no_decay: Optional[List[str]] = None  # no weight decay: `bias`, `norm`, selectors; null = [bias, norm] for adamw
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    regularize: Optional[Regularizer] = None  # l2_sp: loaded tensors pulled toward the source's values (optim.l2_sp)
    l2_sp: L2SPConfig = field(default_factory=L2SPConfig)  # optim.regularize=l2_sp's strengths

    def __post_init__(self) -> None:
        check_number("optim.lr", self.lr, 0, want="a finite number >= 0")
        self.l2_sp.check(self.regularize is not None)
        decays = [("optim.weight_decay", self.weight_decay)] + [
            (f"optim.groups[{i}].weight_decay", g.weight_decay) for i, g in enumerate(self.groups)]
        decayed = [k for k, v in decays if v]
        if self.regularize is not None and decayed:  # both pulls at once: toward zero and toward the source
            raise UserError(f"{decayed[0]}={dict(decays)[decayed[0]]} with optim.regularize=l2_sp: L2-SP replaces "
                            "weight decay (it pulls loaded tensors toward the source's values and fresh ones toward "
                            "zero, optim.l2_sp.beta); set the weight decay to 0.")
        check_number("optim.weight_decay", self.weight_decay, 0, want="a finite number >= 0")
        check_number("optim.momentum", self.momentum, 0, 1, high_open=True)
        if self.layer_decay is not None and not (math.isfinite(self.layer_decay) and 0 < self.layer_decay <= 1):
            raise UserError(f"optim.layer_decay={self.layer_decay}: must be in (0, 1]; block k below the head trains "
                            "at optim.lr x layer_decay**k (0.75 is usual).")
        if self.betas is not None:
            _check_betas(self.betas, "optim.betas", self.name)
        for i, g in enumerate(self.groups):
            g.check(f"optim.groups[{i}]", self)
