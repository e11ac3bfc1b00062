"""The recipe: config -> source -> build -> plan -> load -> report -> adapters -> freeze -> groups -> train -> outputs.

Each mode's steps are listed in `STEPS` and done top to bottom by lifecycle.run_job, each a plain
function of one `Run` (state.py: the config, the run folder and what the steps before it made).
They take plain dataclasses (no Hydra): `lifecycle.run(cfg, run_dir)` runs them from Python. The
steps that end a mode with its files are in endings.py; the load's aids (suggested rules, verify)
in load_aids.py; `resume` (trainer.resume) in resuming.py.
"""

from __future__ import annotations

import logging
import os
import random
import signal
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from . import adapting, classes, endings, interpolating, load_aids, provenance, souping
from .resuming import resume
from ..errors import Interrupted, UserError
from ..names import printable_text
from .state import Run
from ..schema import MODEL_OUTPUT_KEY, Mode, OnMismatch

log = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def make_deterministic() -> None:
    """`trainer.deterministic`: the same config gives bitwise the same weights (on CPU; on CUDA as far
    as torch's deterministic algorithms go, which raise where an op has none)."""
    import torch

    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it for deterministic matmuls
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


def device_name(device: Any) -> str:
    """What the device is: the GPU's name, or the CPU's model (Linux), for the run's record."""
    import platform

    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        model = ""
    return f"{model or platform.processor() or 'cpu'} ({os.cpu_count()} cores)"


# --- the steps ---------------------------------------------------------------------------------------

def setup(r: Run) -> None:
    """Everything that can be checked without the model or the data, before anything heavy."""
    r.source_hash = provenance.early_hash(r.cfg.source.path)  # before the imports below (torch)
    from ..training import distributed
    from ..training.engine import Engine, resolve_device

    t = r.cfg.trainer
    if t.strategy.value == "fsdp":
        from ..training.sharding import check_config

        check_config(r.cfg, distributed.launched())
    joined = distributed.join(r.cfg.device)  # under torchrun: the process group and this rank's device
    r.group, r.device = joined if joined is not None else (None, resolve_device(r.cfg.device))
    r.main_dir = Path(r.group.broadcast(str(r.run_dir))) if r.group is not None else r.run_dir
    r.engine = Engine(r.device, t.precision, t.channels_last, t.compile, t.accumulate_grad_batches, t.grad_clip, r.group,
                      output=r.cfg.model.get(MODEL_OUTPUT_KEY), target_key=r.cfg.data.target_key)
    if t.deterministic:
        make_deterministic()
    elif r.device.type == "cuda" and t.cudnn_benchmark:
        import torch

        torch.backends.cudnn.benchmark = True  # fixed input shapes: the kernel search pays off from the second step
    seed_everything(r.cfg.seed)
    r.summary.update(device=str(r.device), device_name=device_name(r.device), seed=r.cfg.seed)
    if r.group is not None:
        r.summary["processes"] = r.group.world
        log.info("torchrun: process %d of %d (%s, %s)", r.group.rank, r.group.world, r.device, r.group.backend)


def plan(r: Run) -> None:
    """Build the target (on the meta device when weights will be assigned), read the source, plan, report."""
    from ..api import plan_report
    from ..build import build_model
    from ..sources.read import read_source
    from .. import files
    from .folder import check_source_outside
    from ..model_parts import expand_mapping

    cfg = r.cfg
    on_meta = cfg.source.meta_init and (cfg.source.path is not None or cfg.source.weights is not None)
    early = read_source(cfg.source) if classes.wants_source(r) else None  # its metadata names the classes
    r.model_node = classes.with_class_count(r, early)
    r.model = build_model(r.model_node, meta=on_meta)
    mapping = expand_mapping(load_aids.with_rules_file(cfg.mapping), find_parts(r))
    source = early if early is not None else read_source(cfg.source)
    if source is not None and source.all_files:
        check_source_outside(source.all_files, r.main_dir or r.run_dir)
    suggesting = cfg.mapping.suggest or (cfg.mapping.suggest is None and cfg.mode == Mode.plan)
    try:
        r.report, r.weights = plan_report(r.model, source, mapping, cfg.source)
    except UserError as e:  # a name of another shape: what the rules should say is most wanted then
        if suggesting and source is not None and "mapping.on_mismatch=error" in str(e):
            report, weights = plan_report(r.model, source, replace(mapping, on_mismatch=OnMismatch.skip), cfg.source)
            load_aids.suggest(r, report, weights, replace(mapping, on_mismatch=OnMismatch.skip))
        raise
    log.info(printable_text(r.report.table()))  # names come from the file: no terminal escapes
    files.write_json(r.run_dir / "load_report.json", r.report.to_dict())
    if suggesting and r.weights is not None:
        load_aids.suggest(r, r.report, r.weights, mapping)
    r.summary.update(source=r.report.source, loaded_fraction=r.report.loaded_fraction,
                     loaded_tensors=len(r.report.loaded), missing_tensors=len(r.report.missing))
    if source is not None and source.hub is not None:
        r.summary["hub_source"] = source.hub  # repo, commit, files (their SHA-256 filled in by the hash below)
    if r.weights is not None and r.weights.all_files:
        # every shard counts; lifecycle records it. One started early (setup) is kept if it hashes these files
        if r.source_hash is None or r.source_hash.paths != [Path(p) for p in r.weights.all_files] or r.weights.hub:
            r.source_hash = provenance.BackgroundHash(r.weights.all_files, r.weights.hub)
    try:
        r.report.check(mapping.expect)  # after the plan is shown and written: the person sees why
    except UserError as e:
        raise load_aids.suggestion_first(r, e) from None
    describe_preprocessing(r)


def find_parts(r: Run) -> Any:
    """`@head` / `@blocks` of the built target: shown, recorded, then expanded in every selector that names them."""
    from ..model_parts import model_parts

    r.parts = model_parts(r.model)
    log.info(r.parts.describe())
    r.summary["model_parts"] = r.parts.to_dict()
    return r.parts


def describe_preprocessing(r: Run) -> None:
    """Images read from files: the resize / crop / normalisation and the augmentation, in the plan and the summary."""
    cfg = r.cfg
    images = cfg.data.target is None and cfg.data.name == "image_folder" and cfg.mode in (Mode.train, Mode.eval,
                                                                                           Mode.plan, Mode.predict)
    if not (images or (cfg.mode == Mode.predict and cfg.predict.input is not None)):
        return
    from ..data.preprocess import describe_augment, preset_source, resolve_preprocessing

    pre = resolve_preprocessing(cfg.data, preset_source(cfg.source))
    augment = describe_augment(cfg.data.augment, cfg.data.mixup, cfg.data.cutmix) if cfg.mode in (Mode.train,
                                                                                                  Mode.plan) else ""
    r.summary["preprocessing"] = pre.describe()
    log.info("Preprocessing: %s%s", pre.describe(), f"\n  {augment}" if augment else "")


def load(r: Run) -> None:
    """Put the planned tensors into the model (assign from the memory map, or copy), on the device."""
    from ..build import build_model
    from ..mapping.apply import load_model

    def build_normally():  # load_model's fallback: full random init, seeded as a first build would be
        seed_everything(r.cfg.seed)
        return build_model(r.model_node)  # as plan built it (model.num_classes filled in)

    if r.cfg.trainer.strategy.value == "fsdp":  # rank 0 loads; the shards get its tensors by broadcast (tune)
        from .sharded_load import load_on_rank0

        if load_on_rank0(r, build_normally):
            return
    r.model = load_model(r.model, r.report.plan, r.weights, r.device, build_normally,
                         r.cfg.source.allow_nonfinite, r.cfg.source.allow_lossy_cast)


def tune(r: Run) -> None:
    """Freezing (requires_grad, BN policy, events) and the parameter groups with their first LRs."""
    from ..model_parts import expand_freeze, expand_optim
    from ..tuning.batchnorm import apply_bn_policy, format_bn_plan
    from ..tuning.freezing import plan_freezing, set_requires_grad
    from ..tuning.lr_schedule import initial_lrs
    from ..tuning.param_groups import build_groups, format_groups, group_rows, no_decay_names

    cfg, model = r.cfg, r.model
    freeze, optim = expand_freeze(cfg.freeze, r.parts), expand_optim(cfg.optim, r.parts)  # @head, @blocks -> names
    if r.adapters is not None:  # the adapters, and what freeze trains in full, in the target's names (tuning/adapter_tuning.py)
        from ..tuning.adapter_tuning import adapter_freeze_plan, adapter_groups, adapter_no_decay, head_copies

        r.freeze = adapter_freeze_plan(model, freeze, r.adapters, max(cfg.trainer.epochs, 1))
        set_requires_grad(model, r.freeze.trainable)
        r.groups = adapter_groups(model, r.adapters, optim, adapter_no_decay(model, r.adapters, optim), r.freeze)
        unused = head_copies(model)  # peft's copies of the loaded head and layers: frozen, not counted
    else:
        r.freeze = plan_freezing(model, freeze, max(cfg.trainer.epochs, 1))
        set_requires_grad(model, r.freeze.trainable)
        r.groups = build_groups(r.freeze.names, optim, r.freeze.events, r.freeze.blocks, no_decay_names(model, optim))
        unused = set()
    if cfg.optim.regularize is not None:
        regularize(r)
    lrs = initial_lrs(r.groups, r.freeze.trainable, r.freeze.events, cfg.optim.scheduler)
    params = dict(model.named_parameters())
    r.summary.update(trainable_params=sum(params[n].numel() for n in r.freeze.trainable),
                     frozen_params=sum(p.numel() for n, p in params.items()
                                       if n not in r.freeze.trainable and n not in unused))
    model.train()
    apply_bn_policy(model, r.freeze.bn_modes)
    r.summary["param_groups"] = group_rows(model, r.groups, lrs, r.freeze.bn_modes)
    log.info("Parameter groups (before epoch 0):\n%s", format_groups(model, r.groups, lrs, r.freeze.bn_modes))
    log.info(format_bn_plan(model, r.freeze.bn_modes, cfg.freeze.bn.value))
    if cfg.trainer.cache_features:
        from ..data.datasets import augments
        from ..training.feature_cache import cache_plan

        in_run = set(r.freeze.trainable).union(*(ev.names for ev in r.freeze.events))
        cache = cache_plan(model, in_run, r.freeze.bn_modes, augments(cfg.data))
        r.summary["cache_features"] = cache.head
        log.info("%s%s", cache.describe(), " (checked again on a batch when training starts)" if cache.head else "")
    if cfg.trainer.strategy.value == "fsdp":
        from .sharded_load import plan_shards

        plan_shards(r)


def regularize(r: Run) -> None:
    """optim.regularize=l2_sp: the loaded values that training pulls toward (tuning/l2_sp.py), copied now."""
    from ..tuning.l2_sp import plan_l2_sp

    if r.adapters is not None:
        raise UserError("optim.regularize=l2_sp with adapters: the adapted base is frozen, so there is nothing loaded "
                        "to pull toward the source; drop one of them.")
    ever = set(r.freeze.trainable).union(*(ev.names for ev in r.freeze.events))
    r.l2_sp = plan_l2_sp(r.model, r.report.plan.loaded if r.report is not None else [], ever,
                         *r.cfg.optim.l2_sp.values(), has_source=r.weights is not None)
    log.info(r.l2_sp.describe())
    r.summary["l2_sp"] = r.l2_sp.to_dict()


def data(r: Run) -> None:
    """The splits and loaders, the task's loss, and one forward pass that checks model and data fit together."""
    from ..data.datasets import build_data, loaders
    from ..data.preprocess import preset_source
    from ..training.batch_checks import check_batch
    from ..training.task import task_metrics

    cfg = r.cfg
    if r.data is None:  # else read already for model.num_classes (classes.py)
        r.data = build_data(cfg.data, cfg.seed, preset_source(cfg.source))
    r.task = task_metrics(cfg.task, cfg.loss, r.data.class_names)
    rank, world = (r.group.rank, r.group.world) if r.group is not None else (0, 1)

    def make(mixer=None) -> tuple:
        return loaders(r.data, cfg.trainer.batch_size, cfg.seed, cfg.data.num_workers,
                       pin_memory=r.device.type == "cuda", rank=rank, world=world, mixer=mixer)

    r.loaders = make()
    check_batch(r.model, r.loaders[1], r.engine, r.task)
    if cfg.trainer.monitor.endswith("top5_acc") and r.task.size is not None and r.task.size <= 5:
        raise UserError(f"trainer.monitor={cfg.trainer.monitor}: with {r.task.size} classes every sample's class is "
                        "among the top 5, so it is always 1 and no epoch would be best; monitor val_acc.")
    if cfg.data.mixup or cfg.data.cutmix:  # needs the class count, which the check may have just learnt
        from ..data.preprocess import batch_mixer

        r.loaders = (make(batch_mixer(cfg.data.mixup, cfg.data.cutmix, r.task.size))[0], r.loaders[1])  # the val
        # loader that was checked stays: its workers (data.num_workers) have started
    r.summary.update(task=cfg.task.value, num_classes=r.task.size, train_samples=len(r.data.train),
                     val_samples=len(r.data.val), test_samples=len(r.data.test) if r.data.test is not None else None)
    if r.data.extra:  # evaluated every epoch beside val, read as val is
        from ..data.datasets import eval_loader

        val = r.loaders[1]
        r.extra_loaders = {name: eval_loader(ds, val.batch_size, val.num_workers, val.pin_memory)
                           for name, ds in r.data.extra.items()}
        r.summary.update({f"{name}_samples": len(ds) for name, ds in r.data.extra.items()})
        log.info("Extra split(s), evaluated beside val: %s", ", ".join(f"{name} ({len(ds)} samples)"
                                                                      for name, ds in r.data.extra.items()))
    if r.data.class_names is not None:
        r.summary["classes"] = r.data.class_names


def train(r: Run) -> None:
    """Train every epoch (training/fit.py: checkpoints, best, EMA, early stopping, loggers, curves)."""
    from ..training.fit import FitJob, fit
    from ..training.loop import steps_per_epoch
    from ..tuning.lr_schedule import build_schedule, write_lrs
    from ..tuning.param_groups import current_lrs, format_groups, make_optimizer

    cfg, model = r.cfg, r.model
    r.engine.prepare(model)
    if cfg.trainer.sync_batchnorm:
        model = r.model = sync_batchnorm(model, r.group, r.device)
    if r.shard_plan is not None:  # trainer.strategy=fsdp: the optimizer must see the sharded (DTensor) parameters
        from ..training.sharding import shard_model

        shard_model(model, r.shard_plan, cfg.trainer.precision, r.device)
        r.engine.sharded = True
    r.optimizer = make_optimizer(model, r.groups, cfg.optim)
    if r.l2_sp is not None:
        r.engine.regularize = r.l2_sp.add_gradients(model)
    if r.engine.sharded:  # each rank's parameter, gradient and optimizer-state bytes after the first step
        from .sharded_load import watch_memory

        watch_memory(r, r.optimizer)
    schedule = build_schedule(r.groups, r.freeze.trainable, r.freeze.events, cfg.optim.scheduler, cfg.trainer.epochs,
                              steps_per_epoch(r.loaders[0], cfg.trainer.limit_train_batches,
                                              cfg.trainer.accumulate_grad_batches))
    write_lrs(r.optimizer, schedule.lrs(0))

    def on_event(evs) -> None:
        log.info("%s\n%s", "\n".join(ev.describe() for ev in evs),
                 format_groups(model, r.groups, current_lrs(r.optimizer), r.freeze.bn_modes))

    r.signals.graceful = True  # from here a first Ctrl-C / SIGTERM finishes the step and saves
    try:
        result = fit(FitJob(cfg, r.run_dir, model, r.optimizer, r.freeze, r.loaders, r.engine, r.task, schedule,
                            stop_requested=r.signals.requested, on_event=on_event, plan_text=r.report.table(),
                            source=str(r.summary["source"]), resume=r.resume_state, weights_meta=weights_meta(r),
                            write_weights=adapting.final_weights(r) if r.adapters is not None else None,
                            main_dir=r.main_dir, extra_loaders=r.extra_loaders))
    finally:
        r.signals.graceful = False
    state, best = result.state, result.best
    r.summary["cache_features"] = result.cached
    if r.l2_sp is not None:  # how far the loaded tensors moved (the model as training left it)
        r.summary["l2_sp"].update(distance_to_source=r.l2_sp.distance(model), penalty=r.l2_sp.penalty(model))
    r.summary.update(epochs=len(state.history), train_samples_per_s=state.samples / state.seconds if state.seconds else None,
                     monitor=best.metric, best_epoch=best.epoch, **{f"best_{best.metric}": best.value},
                     stopped_early=state.stopped_early)
    if state.history:
        last = state.history[-1]
        extra = tuple(f"{name}_" for name in r.extra_loaders)
        r.summary.update({k: v for k, v in last.items() if k.startswith(("val_", "ema_val_", *extra))},
                         final_trainable_params=last["trainable_params"])
    if result.interrupted:
        if not r.engine.is_main:  # rank 0 says how to resume (another rank's folder is not the run's)
            raise Interrupted(r.signals.signum or signal.SIGINT)
        last = "last.dcp" if r.engine.sharded else "last.pt"  # fsdp: the folder every rank wrote its shards to
        if (r.run_dir / "checkpoints" / last).exists():
            command = r.signals.resume_command(r.run_dir)
            r.summary["resume_command"] = command
            log.warning("Stopped in epoch %d after %d batch(es): checkpoints/%s holds the state. Resume with:\n  %s",
                        state.position.epoch + 1, state.position.step_in_epoch, last, command)
        else:
            log.warning("Stopped in epoch %d; trainer.save_checkpoints=false, so there is no checkpoint to resume from.",
                        state.position.epoch + 1)
        raise Interrupted(r.signals.signum or signal.SIGINT)
    r.summary["status"] = "completed"
    final = "val_acc" if "val_acc" in r.summary else "val_loss"
    log.info("Done: %s %.4f (best %s %.4f at epoch %s), weights (%s) in %s", final, r.summary.get(final, float("nan")),
             best.metric, best.value if best.value is not None else float("nan"), (best.epoch or 0) + 1,
             cfg.trainer.final_weights.value, r.run_dir / "model.safetensors")


def weights_meta(r: Run) -> dict[str, str]:
    """What a later mode=predict needs to know about the weights: the task and the class names."""
    import json

    meta = {"task": r.cfg.task.value}
    if r.data is not None and r.data.class_names is not None:
        meta["classes"] = json.dumps(r.data.class_names)
    return meta


def sync_batchnorm(model: Any, group: Any, device: Any) -> Any:
    """`trainer.sync_batchnorm`: BatchNorm statistics over the global batch, as one process with the whole batch."""
    if group is None:
        log.info("trainer.sync_batchnorm: one process, so every BatchNorm layer already sees the whole batch")
        return model
    if device.type != "cuda":
        raise UserError("trainer.sync_batchnorm=true: torch's SyncBatchNorm runs on CUDA only; on CPU drop it (each "
                        "process's BatchNorm layers then see their share of the batch) or freeze them (freeze.bn).")
    import torch

    return torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)  # the same Parameter objects: groups still hold


# Each mode's steps, in order: a plan reads no tensor data (freezing and groups need names only); eval and
# predict train nothing, so they neither freeze nor build groups (your own model needs no freeze=none there).
verify = load_aids.verify
adapt = adapting.adapt  # adapters=lora | dora, source.adapter: after the load, before freezing and groups
STEPS: dict[Mode, tuple[Callable[[Run], None], ...]] = {
    Mode.plan: (setup, plan, adapt, tune, endings.planned),
    Mode.export: (setup, plan, load, adapt, verify, adapting.exported),  # source.adapter: merged in
    Mode.eval: (setup, plan, load, adapt, data, verify, endings.evaluated),  # trains nothing: no freeze or groups
    Mode.train: (setup, resume, plan, load, adapt, tune, data, verify, train),
    Mode.predict: (setup, plan, load, adapt, endings.predicted),
    Mode.interpolate: (setup, plan, load, data, interpolating.interpolated),  # WiSE-FT (run/interpolating.py)
    Mode.soup: (setup, plan, load, data, souping.souped),  # model soups of a sweep (run/souping.py)
}
