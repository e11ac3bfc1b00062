"""Values that would train wrongly are refused by the schema before anything runs: the key, the
value and the valid range in one message, through the real composed config. (Values only a run can
judge, and valid ones that must still train: tests/e2e/test_schema_runs.py.)"""

from __future__ import annotations

import pytest

from transfer_pipeline.errors import UserError


@pytest.mark.parametrize(("override", "match"), [
    ("trainer.grad_clip=-1.0", r"trainer\.grad_clip=-1\.0: must be a finite max gradient norm > 0"),
    ("trainer.grad_clip=0", r"trainer\.grad_clip=0"),
    ("trainer.grad_clip=nan", r"trainer\.grad_clip=nan"),
    ("trainer.limit_train_batches=0", r"trainer\.limit_train_batches=0: must be a whole number of batches >= 1"),
    ("trainer.limit_val_batches=-3", r"trainer\.limit_val_batches=-3"),
    ("trainer.batch_size=0", r"trainer\.batch_size=0: must be a whole number >= 1"),
    ("trainer.epochs=-1", r"trainer\.epochs=-1: must be a whole number >= 0"),
    ("trainer.epochs=0", r"trainer\.epochs=0: train at least one epoch"),
    ("optim.lr=nan", r"optim\.lr=nan: must be a finite number >= 0"),
    ("optim.lr=inf", r"optim\.lr=inf"),
    ("optim.lr=-0.1", r"optim\.lr=-0\.1"),
    ("optim.weight_decay=-1", r"optim\.weight_decay=-1"),
    ("optim.momentum=1.5", r"optim\.momentum=1\.5: must be a finite number >= 0 and < 1"),
    ("optim.layer_decay=nan", r"optim\.layer_decay=nan"),
    ("optim.scheduler.gamma=nan", r"optim\.scheduler\.gamma=nan"),
    ("+optim.groups=[{params: [head], lr: nan}]", r"optim\.groups\[0\]\.lr=nan: must be a finite number >= 0"),
    ("freeze.schedule.0.lr=-1", r"freeze\.schedule\[0\]\.lr=-1"),
    ("freeze.schedule.0.epoch=-1", r"freeze\.schedule\[0\]\.epoch=-1: epochs count from 0"),
    ("freeze.schedule.0.epoch=6", r"freeze\.schedule\[0\]\.epoch=6: the run trains epochs 0\.\.5"),
    ("data.val_fraction=0", r"data\.val_fraction=0(\.0)?: must be a fraction between 0 and 1"),
    ("data.val_fraction=1.0", r"data\.val_fraction=1\.0"),
    ("data.num_workers=-1", r"data\.num_workers=-1"),
    ("data.image_size=0", r"data\.image_size=0: must be a whole number of pixels from 1 to 4096"),
    ("data.image_size=100000", r"data\.image_size=100000"),
    ("data.channels=2", r"data\.channels=2: choose 1 \(grey\) or 3 \(RGB\)"),
    ("data.std=[0]", r"data\.std\[0\]=0(\.0)?: must be a finite number > 0 \(a std of 0 divides by zero\)"),
    ("data.std=[nan]", r"data\.std\[0\]=nan"),
    ("data.mean=[0.1,0.2]", r"data\.mean=\[0\.1, 0\.2\]: give 1 value or one per channel"),
    ("data.classes=[5,5]", r"data\.classes=\[5, 5\]: digits are 0-9, each at most once"),
    ("data.classes=[]", r"data\.classes=\[\]"),
    ("seed=-1", r"seed=-1: must be a whole number >= 0 and <= 4294967295"),
    ("seed=4294967296", r"seed=4294967296"),
    ("device=gpu", r"device='gpu': choose auto, cpu, cuda or cuda:N"),
    ("mapping.expect.min_loaded=1.5", r"mapping\.expect\.min_loaded=1\.5"),
    ("trainer.precision=64", r"trainer\.precision='64': choose one of 32, bf16, 16"),
])
def test_bad_values_are_refused_before_anything_runs(compose, override, match):
    with pytest.raises(UserError, match=match) as e:
        compose(override)
    assert "Lower the epoch" not in str(e.value) or "epoch=6" in override


def test_a_negative_epoch_is_not_told_to_be_lowered(compose):
    with pytest.raises(UserError) as e:
        compose("freeze.schedule.0.epoch=-2")
    assert "Lower" not in str(e.value)


@pytest.mark.parametrize(("override", "message"), [
    ("+trainer.epoch=3", r"trainer.epoch: not a key of trainer .*Closest names: epochs"),
    ("+optim.lrr=0.1", r"optim.lrr: not a key of optim .*Closest names: lr"),
    ("+freeze.schedule.0.epochs=3", r"freeze.schedule\[0\].epochs: not a key of freeze.schedule\[0\] .*epoch"),
])
def test_a_key_added_with_plus_to_a_typed_node_is_refused(override, message):
    """`+` lets Hydra add any key; converting to the dataclasses would drop it without a word."""
    from helpers import compose_config

    with pytest.raises(UserError, match=message):
        compose_config(override)


def test_plus_still_adds_a_models_own_argument():
    from helpers import compose_config

    assert compose_config("+model.neck=true").model["neck"] is True
