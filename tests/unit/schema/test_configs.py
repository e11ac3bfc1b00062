"""Every shipped config composes and passes the schema's checks, so none rots unnoticed."""

from __future__ import annotations

import pytest
from hydra import compose as hydra_compose
from hydra import initialize_config_dir

from helpers import CONF, compose_config
from transfer_pipeline.schema import RunConfig

GROUPS = sorted((p.parent.name, p.stem) for p in CONF.glob("*/*.yaml") if p.parent.name not in ("experiment", "hydra"))
EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))
HYDRA = sorted((f"hydra/{p.parent.name}", p.stem) for p in (CONF / "hydra").glob("*/*.yaml"))


def test_the_lists_are_not_empty():
    assert len(GROUPS) >= 10 and len(EXPERIMENTS) >= 10 and ("hydra/launcher", "slurm") in HYDRA


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes(experiment):
    assert isinstance(compose_config(f"experiment={experiment}"), RunConfig)


@pytest.mark.parametrize("group, choice", GROUPS, ids=[f"{g}={c}" for g, c in GROUPS])
def test_every_group_choice_composes(group, choice):
    # digits-specific group files need the digits model; the generic ones fit any model
    extra = ("model=digits_cnn",) if group != "model" else ("mapping=default", "freeze=none", "source=none")
    assert isinstance(compose_config(f"{group}={choice}", *extra), RunConfig)


@pytest.mark.parametrize("group, choice", HYDRA, ids=[f"{g}={c}" for g, c in HYDRA])
def test_every_hydra_config_composes(group, choice):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = hydra_compose("config", overrides=[f"{group}={choice}"], return_hydra_config=True)
    node = cfg.hydra[group.split("/")[1]]
    assert node is not None and len(node) > 0
