"""The recipe: config -> source -> build -> plan -> load -> report -> freeze -> groups -> train -> outputs.

Reads top to bottom. Takes plain dataclasses (no Hydra) and a run folder, so tests and other
programs can call `run()` directly.
"""

from __future__ import annotations

import logging
import random
import time
from pathlib import Path
from typing import Any

from .errors import UserError
from .schema import Mode, RunConfig

log = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def run(cfg: RunConfig, run_dir: Path) -> dict[str, Any]:
    """Do what `cfg.mode` says; returns the summary (also written to summary.json)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {"status": "running", "mode": cfg.mode.value}
    started = time.perf_counter()
    try:
        _run(cfg, run_dir, summary)
    except UserError as e:
        summary.update(status="failed", error=str(e))
        raise
    finally:
        from .training.outputs import git_commit, versions, write_json

        summary["seconds"] = round(time.perf_counter() - started, 3)
        summary["versions"] = versions()
        summary["git_commit"] = git_commit(Path(__file__).resolve().parent)
        write_json(run_dir / "summary.json", summary)
    return summary


def _run(cfg: RunConfig, run_dir: Path, summary: dict[str, Any]) -> None:
    from .training import outputs
    from .tuning.batchnorm import apply_bn_policy, format_bn_plan
    from .build import build_model
    from .training.data import build_data, loaders
    from .tuning.freezing import plan_freezing, set_requires_grad
    from .mapping.apply import load_model, target_meta
    from .mapping.nested import choose_nested
    from .mapping.plan import check_expectations, plan_load
    from .tuning.lr_schedule import build_schedule, initial_lrs, write_lrs
    from .tuning.param_groups import build_groups, format_groups, group_rows, make_optimizer, no_decay_names
    from .mapping.report import format_plan, report_dict
    from .sources.read import read_source
    from .training.loop import autocast_context, check_output_size, evaluate, resolve_device, steps_per_epoch, train

    # setup: everything that can be checked without data is checked before anything heavy
    device = resolve_device(cfg.device)
    autocast_context(cfg.trainer.precision, device)
    seed_everything(cfg.seed)
    summary["device"] = str(device)

    # source -> build -> plan -> load -> report
    # weights from a checkpoint: build the target on the meta device (no random init of what gets
    # loaded), plan from names and shapes, then assign loaded tensors and initialise only the rest
    on_meta = cfg.source.meta_init and (cfg.source.path is not None or cfg.source.weights is not None)
    model = build_model(cfg.model, meta=on_meta)
    target = target_meta(model)
    source = read_source(cfg.source)
    source = choose_nested(source, target) if source else None
    plan = plan_load(source.meta if source else {}, target, cfg.mapping.rules, cfg.mapping.on_mismatch.value,
                     cfg.mapping.exclude, cfg.source.strip_prefixes, add_prefix=cfg.source.add_prefix,
                     auto=cfg.mapping.auto)
    target_name = type(model).__name__
    log.info(format_plan(plan, target, source.description if source else None, source.notes if source else ()))
    outputs.write_json(run_dir / "load_report.json", report_dict(plan, source.description if source else None, target_name))
    summary.update(source=source.description if source else None, loaded_fraction=plan.loaded_fraction,
                   loaded_tensors=len(plan.entries), missing_tensors=len(plan.missing))
    if source is not None and source.path is not None and source.path.is_file():
        summary["source_sha256"] = outputs.sha256_file(source.path)
    check_expectations(plan, cfg.mapping.expect.missing, cfg.mapping.expect.min_loaded,
                       source.meta if source else None, target)

    def build_normally():  # load_model's fallback: full random init, seeded as a first build would be
        seed_everything(cfg.seed)
        return build_model(cfg.model)

    if cfg.mode != Mode.plan:  # a plan reads no tensor data: freezing and groups need names only
        model = load_model(model, plan, source, device, build_normally)

    if cfg.mode == Mode.export:
        outputs.save_weights(run_dir / "model.safetensors", model.state_dict(), {"source": str(summary["source"])})
        summary["status"] = "exported"
        log.info("Exported %s weights to %s", target_name, run_dir / "model.safetensors")
        return

    # freezing -> param groups
    freeze = plan_freezing(model, cfg.freeze, max(cfg.trainer.epochs, 1))
    set_requires_grad(model, freeze.trainable)
    groups = build_groups(freeze.names, cfg.optim, freeze.events, freeze.blocks, no_decay_names(model, cfg.optim))
    if cfg.mode != Mode.plan:
        model.to(device)
    optimizer = make_optimizer(model, groups, cfg.optim)
    write_lrs(optimizer, initial_lrs(groups, freeze.trainable, freeze.events, cfg.optim.scheduler))
    params = dict(model.named_parameters())
    summary.update(trainable_params=sum(params[n].numel() for n in freeze.trainable),
                   frozen_params=sum(p.numel() for n, p in params.items() if n not in freeze.trainable))
    model.train()
    apply_bn_policy(model, freeze.bn_modes)
    summary["param_groups"] = group_rows(model, groups, optimizer, freeze.bn_modes)
    log.info("Parameter groups (before epoch 0):\n%s", format_groups(model, groups, optimizer, freeze.bn_modes))
    log.info(format_bn_plan(model, freeze.bn_modes, cfg.freeze.bn.value))
    if cfg.mode == Mode.plan:
        summary["status"] = "planned"
        return

    # data
    bundle = build_data(cfg.data, cfg.seed)
    train_loader, val_loader = loaders(bundle, cfg.trainer.batch_size, cfg.seed, cfg.data.num_workers,
                                       pin_memory=device.type == "cuda")
    check_output_size(model, val_loader, bundle.num_classes, device)
    summary.update(num_classes=bundle.num_classes, train_samples=len(bundle.train), val_samples=len(bundle.val))

    if cfg.mode == Mode.eval:
        val_loss, val_acc = evaluate(model, val_loader, device, autocast_context(cfg.trainer.precision, device),
                                     cfg.trainer.limit_val_batches)
        summary.update(status="evaluated", val_loss=val_loss, val_acc=val_acc)
        log.info("val_loss %.4f  val_acc %.4f", val_loss, val_acc)
        return

    # train
    history: list[dict[str, Any]] = []
    schedule = build_schedule(groups, freeze.trainable, freeze.events, cfg.optim.scheduler, cfg.trainer.epochs,
                              steps_per_epoch(train_loader, cfg.trainer.limit_train_batches))

    def on_event(evs) -> None:
        log.info("%s\n%s", "\n".join(ev.describe() for ev in evs),
                 format_groups(model, groups, optimizer, freeze.bn_modes))

    def on_epoch(row: dict[str, Any]) -> None:
        history.append(row)
        outputs.write_csv(run_dir / "metrics.csv", history)
        if cfg.trainer.save_checkpoints:
            outputs.save_weights(run_dir / "checkpoints" / "last.safetensors", model.state_dict(),
                                 {"epoch": str(row["epoch"])})
        if cfg.trainer.keep_epoch_checkpoints:
            outputs.save_weights(run_dir / "checkpoints" / f"epoch_{row['epoch']}.safetensors", model.state_dict(),
                                 {"epoch": str(row["epoch"])})
        log.info("epoch %d/%d  train_loss %.4f  train_acc %.3f  val_loss %.4f  val_acc %.3f  trainable %s  %.0f samples/s",
                 row["epoch"], cfg.trainer.epochs - 1, row["train_loss"], row["train_acc"], row["val_loss"],
                 row["val_acc"], f"{row['trainable_params']:,}", row["samples_per_s"])

    state = train(model, optimizer, train_loader, val_loader, epochs=cfg.trainer.epochs, events=freeze.events,
                  bn_policy=freeze.bn_modes, device=device, precision=cfg.trainer.precision,
                  grad_clip=cfg.trainer.grad_clip, limit_train_batches=cfg.trainer.limit_train_batches,
                  limit_val_batches=cfg.trainer.limit_val_batches, schedule=schedule, on_event=on_event,
                  on_epoch=on_epoch)
    outputs.save_weights(run_dir / "model.safetensors", model.state_dict(), {"source": str(summary["source"])})
    last = state.history[-1]
    summary.update(status="completed", epochs=cfg.trainer.epochs, val_acc=last["val_acc"], val_loss=last["val_loss"],
                   train_samples_per_s=state.samples / state.seconds if state.seconds else None,
                   final_trainable_params=last["trainable_params"])
    log.info("Done: val_acc %.4f, weights in %s", last["val_acc"], run_dir / "model.safetensors")
