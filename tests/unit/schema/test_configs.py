"""Every shipped config composes and passes the schema's checks, so none rots unnoticed."""

from __future__ import annotations

import re

import pytest
from hydra import compose as hydra_compose
from hydra import initialize_config_dir

from helpers import CONF, compose_config
from transfer_pipeline.errors import UserError
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
    extra += tuple(NAMED.get(choice, ())) if group == "model" else ()
    assert isinstance(compose_config(f"{group}={choice}", *extra), RunConfig)


# The model families by name leave the name to the person ('???'): composing without it names the key.
NAMED = {"torchvision": ["model.name=resnet18"], "timm": ["model.name=resnet18"], "hf": ["model.name=org/name"],
         "custom": ["model._target_=torch.nn.Flatten"]}


@pytest.mark.parametrize("family", sorted(NAMED))
def test_a_model_family_without_its_name_says_which_key(family):
    key = NAMED[family][0].split("=")[0]
    with pytest.raises(UserError, match=rf"^{re.escape(key)}: has no value.*python run.py {re.escape(key)}="):
        compose_config(f"model={family}")


@pytest.mark.parametrize("group, choice", HYDRA, ids=[f"{g}={c}" for g, c in HYDRA])
def test_every_hydra_config_composes(group, choice):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = hydra_compose("config", overrides=[f"{group}={choice}"], return_hydra_config=True)
    node = cfg.hydra[group.split("/")[1]]
    assert node is not None and len(node) > 0
