"""The shipped fine-tuning recipes (conf/experiment/), end to end with a few short epochs: each does what its
comment says (what is frozen, which LR each group gets at each epoch), checked against the source weights."""

from __future__ import annotations

import csv
import math

import pytest
import torch
from safetensors.torch import load_file

from transfer_pipeline.tuning.lr_schedule import lr_at
from transfer_pipeline.models.digits import PRETRAINED_0TO4
from transfer_pipeline.schema import SchedulerConfig, SchedulerName

from helpers import read_json, run_cli

RECIPES = ["linear_probe", "finetune_last_block", "discriminative_lr", "gradual_unfreezing", "layer_decay", "lp_ft"]
SPE = 4  # trainer.limit_train_batches: steps per epoch in these runs


def metrics(run_dir) -> list[dict[str, float]]:
    with open(run_dir / "metrics.csv") as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def unchanged(source, final, prefixes) -> dict[str, bool]:
    return {n: torch.equal(source[n], final[n]) for n in source if n.startswith(prefixes)}


def short(*overrides: str, epochs: int = 2) -> tuple[str, ...]:
    return (f"trainer.epochs={epochs}", f"trainer.limit_train_batches={SPE}", "trainer.limit_val_batches=2", *overrides)


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_files_start_with_package_and_command(recipe):
    from helpers import CONF

    lines = (CONF / "experiment" / f"{recipe}.yaml").read_text().splitlines()
    assert lines[0] == "# @package _global_" and lines[1] == f"# python run.py experiment={recipe}"


def test_linear_probe_trains_the_head_and_nothing_else(run_pipeline):
    summary, run_dir = run_pipeline("experiment=linear_probe", *short())
    source, final = load_file(PRETRAINED_0TO4), load_file(run_dir / "model.safetensors")
    backbone = unchanged(source, final, ("stem.", "block1.", "block2."))
    assert backbone and all(backbone.values())  # weights, BN affine and BN statistics, bitwise
    rows = metrics(run_dir)
    assert [r["trainable_params"] for r in rows] == [325, 325] and {r["lr/default"] for r in rows} == {0.05}
    (group,) = summary["param_groups"]
    assert group["bn"] == {"frozen": 3} and group["trainable_tensors"] == 2


def cosine_warmup(step: int, total: int, warmup: int = 10, m: float = 0.01) -> float:
    return (m + (1 - m) * (1 + math.cos(math.pi * step / total)) / 2) * min(1.0, (step + 1) / warmup)


def test_finetune_last_block_freezes_up_to_block1_and_trains_block2_at_a_tenth(run_pipeline):
    _, run_dir = run_pipeline("experiment=finetune_last_block", *short())
    source, final = load_file(PRETRAINED_0TO4), load_file(run_dir / "model.safetensors")
    assert all(unchanged(source, final, ("stem.", "block1.")).values())  # incl. BN statistics (bn: eval)
    assert not any(unchanged(source, final, ("block2.",)).values())  # incl. running_mean/var
    for e, r in enumerate(metrics(run_dir)):
        step = (e + 1) * SPE - 1
        assert r["lr/default"] == pytest.approx(0.01 * cosine_warmup(step, 2 * SPE), rel=1e-9)
        assert r["lr/block2"] == pytest.approx(0.1 * r["lr/default"], rel=1e-9)
        assert r["trainable_params"] == 18885


def test_discriminative_lr_trains_everything_at_per_group_lrs(run_pipeline):
    summary, run_dir = run_pipeline("experiment=discriminative_lr", *short())
    source, final = load_file(PRETRAINED_0TO4), load_file(run_dir / "model.safetensors")
    assert not any(v for n, v in unchanged(source, final, ("stem.", "block1.", "block2.")).items()
                   if "num_batches" not in n)
    for e, r in enumerate(metrics(run_dir)):
        step = (e + 1) * SPE - 1
        assert r["lr/default"] == pytest.approx(0.01 * cosine_warmup(step, 2 * SPE, warmup=20), rel=1e-9)
        assert (r["lr/early"], r["lr/late"]) == pytest.approx((0.05 * r["lr/default"], 0.2 * r["lr/default"]), rel=1e-9)
    groups = {g["group"]: g for g in summary["param_groups"]}
    assert list(groups) == ["early", "late", "default"]
    assert groups["early"]["weight_decay"] == 0.01 and groups["early"]["no_decay_tensors"] == 4  # 2 BN layers


def test_gradual_unfreezing_one_block_per_epoch_with_decayed_one_cycle_lrs(run_pipeline):
    epochs = 4
    _, run_dir = run_pipeline("experiment=gradual_unfreezing", "trainer.keep_epoch_checkpoints=true",
                              *short(epochs=epochs))
    source = load_file(PRETRAINED_0TO4)
    ckpts = [load_file(run_dir / "checkpoints" / f"epoch_{e}.safetensors") for e in range(epochs)]
    for block, first in (("block2.", 1), ("block1.", 2), ("stem.", 3)):
        for e in range(epochs):
            kept = unchanged(source, ckpts[e], (block,))
            assert all(kept.values()) if e < first else not any(kept.values()), (block, e)
    rows = metrics(run_dir)
    assert [r["trainable_params"] for r in rows] == [325, 18885, 23557, 23733]
    cfg = SchedulerConfig(name=SchedulerName.onecycle, pct_start=0.25)
    for e, r in enumerate(rows):
        step = (e + 1) * SPE - 1
        for block, k, start in (("head", 0, 0), ("block2", 1, SPE), ("block1", 2, 2 * SPE), ("stem", 3, 3 * SPE)):
            want = lr_at(step, peak=0.01 * 0.385 ** k, total_steps=epochs * SPE, start=start,
                         warmup_steps=5 if block != "head" else 0, scheduler=cfg)
            assert r[f"lr/{block}"] == pytest.approx(want, rel=1e-9, abs=1e-15), (block, e)


def test_layer_decay_lrs_shrink_by_075_per_block_below_the_head(run_pipeline):
    _, run_dir = run_pipeline("experiment=layer_decay", *short())
    source, final = load_file(PRETRAINED_0TO4), load_file(run_dir / "model.safetensors")
    assert not any(v for n, v in unchanged(source, final, ("stem.", "block1.", "block2.")).items()
                   if "num_batches" not in n)
    for r in metrics(run_dir):
        assert [r[f"lr/{b}"] / r["lr/head"] for b in ("block2", "block1", "stem")] == pytest.approx(
            [0.75, 0.75 ** 2, 0.75 ** 3], rel=1e-12)


@pytest.mark.slow
def test_recipe_from_the_command_line_prints_the_group_table_at_each_event(tmp_path):
    out = run_cli("experiment=gradual_unfreezing", "trainer.epochs=4", f"trainer.limit_train_batches={SPE}",
                  f"hydra.run.dir={tmp_path}")
    assert out.returncode == 0, out.stdout + out.stderr
    text = out.stdout
    assert "Parameter groups (before epoch 0):" in text
    assert "BatchNorm (freeze.bn=auto: statistics fixed while all of a layer's parameters are frozen)" in text
    for epoch, block in ((1, "block2"), (2, "block1"), (3, "stem")):
        assert f"Before epoch {epoch + 1} (epoch: {epoch}): unfroze {block} (3 tensors)" in text
    tables = [t for t in text.split("group   selectors")[1:]]
    assert len(tables) == 4  # before training and at each of the 3 events
    assert read_json(tmp_path / "summary.json")["status"] == "completed"


def test_lp_ft_probes_then_fine_tunes_everything_on_a_restarted_cosine(run_pipeline):
    # 4 epochs of 4 steps: the probe in epochs 0-2 (steps 0-11), the fine-tune from step 12 on a cosine over the
    # 4 steps left, every group warming up over the event's 10 steps (cosine_warmup's m: adamw_cosine's 0.01)
    summary, run_dir = run_pipeline("experiment=lp_ft", *short(epochs=4))
    source, final = load_file(PRETRAINED_0TO4), load_file(run_dir / "model.safetensors")
    rows = metrics(run_dir)
    assert [r["trainable_params"] for r in rows][:3] == [325] * 3 and rows[3]["trainable_params"] > 20_000
    total = 4 * SPE
    for epoch, row in enumerate(rows):
        last = (epoch + 1) * SPE - 1  # metrics.csv: the LR of the epoch's last step
        if epoch < 3:
            assert row["lr/default"] == pytest.approx(0.01 * cosine_warmup(last, total))
            assert row["lr/finetune"] == 0.0  # warming up from its start at step 12: 0 before
        else:
            again = cosine_warmup(last - 12, total - 12)  # the restarted curve, warmup counted from step 12
            assert row["lr/default"] == pytest.approx(0.01 * again)
            assert row["lr/finetune"] == pytest.approx(0.001 * again)
    moved = unchanged(source, final, ("stem.", "block1.", "block2."))
    assert moved and not any(moved.values())  # every backbone tensor trained in the fine-tune phase
