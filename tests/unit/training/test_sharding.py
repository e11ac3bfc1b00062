"""trainer.strategy=fsdp: the pure unit planner (training/sharding.py) and what is refused before anything runs.
The runs under torchrun (2 gloo processes) are in tests/e2e/test_fsdp_runs.py."""

from __future__ import annotations

import pytest

from helpers import compose_config, read_json
from transfer_pipeline.errors import UserError
from transfer_pipeline.training.sharding import check_config, choose_units, plan_units

TORCHRUN = (0, 2, 0)  # what distributed.launched() says in a torchrun worker

# a digits-CNN-like model: stem, block1, block2 (conv + bn), head
MODULES = ["", "stem", "stem.0", "stem.1", "block1", "block1.0", "block1.1", "block2", "block2.0", "block2.1", "head"]
PARAMS = {"stem.0.weight": 144, "stem.1.weight": 16, "stem.1.bias": 16, "block1.0.weight": 4608,
          "block1.1.weight": 32, "block1.1.bias": 32, "block2.0.weight": 18432, "block2.1.weight": 64,
          "block2.1.bias": 64, "head.weight": 320, "head.bias": 5}
HEAD = {"head.weight", "head.bias"}


def units(plan):
    return [(u.name, u.trainable, u.params) for u in plan.units]


def test_uniform_blocks_are_units_and_the_root_takes_the_rest():
    plan = plan_units(MODULES, PARAMS, HEAD | {"block2.0.weight", "block2.1.weight", "block2.1.bias"},
                      ["stem", "block1", "block2"], min_params=0)
    assert units(plan) == [("stem", False, 176), ("block1", False, 4672), ("block2", True, 18560), ("", True, 325)]
    assert plan.split == [] and plan.warnings == []


def test_a_block_mixing_trainable_and_frozen_is_split_into_its_children():
    # block2's conv unfreezes later, its BatchNorm stays frozen (freeze.bn=frozen): block2 is split
    plan = plan_units(MODULES, PARAMS, HEAD | {"block2.0.weight"}, ["stem", "block1", "block2"], min_params=0)
    assert units(plan) == [("block2.0", True, 18432), ("block2.1", False, 128), ("stem", False, 176),
                           ("block1", False, 4672), ("", True, 325)]
    assert plan.split == ["block2"]
    assert all(u.name != "block2" for u in plan.units)  # it has no parameters of its own left


def test_a_root_mixing_them_is_split_too_and_units_nest_deepest_first():
    modules = ["", "enc", "enc.a", "enc.b", "enc.norm", "head"]
    params = {"enc.a.w": 10, "enc.b.w": 10, "enc.norm.w": 2, "head.w": 3}
    # only enc.a is asked for; the root would hold frozen enc.b / enc.norm and the trainable head
    plan = plan_units(modules, params, {"head.w", "enc.norm.w"}, ["enc.a"], min_params=0)
    # the root is split into enc and head; enc is split again (enc.a is a unit already); enc and the root keep
    # no parameters of their own (the root is still sharded, last: it owns the forward)
    assert units(plan) == [("enc.a", False, 10), ("enc.b", False, 10), ("enc.norm", True, 2), ("head", True, 3),
                           ("", False, 0)]
    assert plan.split == ["(root)", "enc"]


def test_a_module_holding_trainable_and_frozen_tensors_itself_is_an_error():
    with pytest.raises(UserError, match=r"module 'enc'.*enc.w.*enc.v.*cannot mix"):
        plan_units(["", "enc"], {"enc.w": 4, "enc.v": 4}, {"enc.w"}, ["enc"], min_params=0)


def test_a_tiny_model_and_a_single_unit_are_warned_about():
    plan = plan_units(MODULES, PARAMS, HEAD, ["stem"], min_params=1_000_000)
    assert any("23,733 parameters" in w and "trainer.strategy=ddp" in w for w in plan.warnings)
    alone = plan_units(["", "fc"], {"fc.w": 10}, {"fc.w"}, [], min_params=0)
    assert [u.name for u in alone.units] == [""] and any("one unit only" in w for w in alone.warnings)


def test_unit_selectors_name_modules_outermost_first_and_a_miss_names_close_ones():
    assert choose_units(["block*"], MODULES) == ["block1", "block2"]  # block1.0 etc. are inside them
    assert choose_units(["re:block\\d\\.0", "stem"], MODULES) == ["block1.0", "block2.0", "stem"]
    with pytest.raises(UserError, match=r"trainer.fsdp.units\[0\]: selector 'blok2' matches no module.*block2"):
        choose_units(["blok2"], MODULES)


def test_fsdp_units_empty_list_is_refused():
    with pytest.raises(UserError, match=r"trainer.fsdp.units=\[\]"):
        compose_config("trainer.strategy=fsdp", "trainer.fsdp.units=[]")
    with pytest.raises(UserError, match=r"trainer.fsdp.units is set but trainer.strategy=auto"):
        compose_config("trainer.fsdp.units=[block1]")


def test_fsdp_outside_torchrun_is_one_error_naming_the_key_and_torchrun(run_pipeline, tmp_path):
    with pytest.raises(UserError, match=r"trainer.strategy=fsdp.*torchrun --nproc_per_node=2 run.py"):
        check_config(compose_config("trainer.strategy=fsdp"), None)
    with pytest.raises(UserError, match="trainer.strategy=fsdp"):
        run_pipeline("trainer.strategy=fsdp", "trainer.epochs=1", "freeze.schedule=[]", run_dir=tmp_path / "run")
    summary = read_json(tmp_path / "run" / "summary.json")
    assert summary["status"] == "failed" and "torchrun" in summary["error"]


def test_mode_plan_shows_the_units_in_one_process(run_pipeline, tmp_path):
    summary, _ = run_pipeline("trainer.strategy=fsdp", "mode=plan", run_dir=tmp_path / "plan")
    assert summary["status"] == "planned"
    assert [(u["module"], u["trainable"]) for u in summary["fsdp"]["units"]] == [
        ("stem", False), ("block1", False), ("block2", True), ("(root)", True)]  # block2 unfreezes at epoch 3


def test_ddp_outside_torchrun_is_one_process(run_pipeline):
    summary, _ = run_pipeline("trainer.strategy=ddp", "trainer.epochs=1", "freeze.schedule=[]",
                              "trainer.limit_train_batches=2")
    assert summary["status"] == "completed" and "processes" not in summary and "fsdp" not in summary


@pytest.mark.parametrize("override, key", [
    ("trainer.ema.decay=0.99", "trainer.ema"),
    ("trainer.cache_features=true", "trainer.cache_features"),
    ("trainer.compile=true", "trainer.compile"),
    ("trainer.sync_batchnorm=true", "trainer.sync_batchnorm"),
    ("trainer.precision=16", "trainer.precision=16"),
    ("adapters=dora", "adapters.method=dora"),
    ("optim.regularize=l2_sp", "optim.regularize=l2_sp"),
    ("trainer.channels_last=true", "trainer.channels_last"),
    ("mode=eval", "mode=eval"),
    ("mode=export", "mode=export"),
])
def test_what_fsdp_does_not_do_yet_is_refused_naming_the_key(override, key):
    cfg = compose_config("trainer.strategy=fsdp", override)
    with pytest.raises(UserError) as e:
        check_config(cfg, TORCHRUN)
    assert str(e.value).startswith(f"{key} with trainer.strategy=fsdp is not supported yet")
    check_config(compose_config("trainer.strategy=fsdp"), TORCHRUN)  # the default transfer is fine
    check_config(compose_config("trainer.strategy=fsdp", "adapters=lora"), TORCHRUN)  # LoRA's family is sharded
    # resume and step checkpoints write and read checkpoints/last.dcp (training/sharded_checkpoint.py)
    check_config(compose_config("trainer.strategy=fsdp", "trainer.resume=auto", "trainer.checkpoint_every_steps=5"),
                 TORCHRUN)


def test_plan_model_on_the_digits_cnn_takes_blocks_or_unit_selectors():
    from transfer_pipeline.model_parts import model_parts
    from transfer_pipeline.models import DigitsCNN
    from transfer_pipeline.training.sharding import plan_model

    model = DigitsCNN()
    parts = model_parts(model)
    ever = {n for n, _ in model.named_parameters() if n.startswith(("head.", "block2."))}
    assert [u.name for u in plan_model(model, None, parts, ever).units] == ["stem", "block1", "block2", ""]
    # the root would hold frozen stem, trainable block2.1 and head: split (block2 keeps block2.1 as its own)
    plan = plan_model(model, ["@blocks.1", "block2.0"], parts, ever)
    assert units(plan) == [("block2.0", True, 18432), ("block1", False, 4672), ("stem", False, 176),
                           ("block2", True, 128), ("head", True, 325), ("", False, 0)]
    assert plan.split == ["(root)"] and "(root)                                   -" in plan.describe()
    with pytest.raises(UserError, match=r"trainer.fsdp.units\[0\]: selector 'bloc3' .*block1"):
        plan_model(model, ["bloc3"], parts, ever)


# peft's LoRA layer: the frozen base_layer and the trained A and B, held in ModuleDicts (no forward of their own)
LORA = ["", "conv", "conv.base_layer", "conv.lora_A", "conv.lora_A.default", "conv.lora_B", "conv.lora_B.default",
        "conv.lora_dropout", "conv.lora_dropout.default", "head", "head.original_module", "head.modules_to_save",
        "head.modules_to_save.default"]
LORA_PARAMS = {"conv.base_layer.weight": 144, "conv.lora_A.default.weight": 72, "conv.lora_B.default.weight": 128,
               "head.original_module.weight": 20, "head.modules_to_save.default.weight": 20}
LORA_TRAINED = {"conv.lora_A.default.weight", "conv.lora_B.default.weight", "head.modules_to_save.default.weight"}
DICTS = {"conv.lora_A", "conv.lora_B", "conv.lora_dropout", "head.modules_to_save"}


def test_containers_are_never_units_their_children_are():
    # fully_shard refuses a ModuleDict, and FSDP gathers a unit's parameters in its forward, which a container has not
    plan = plan_units(LORA, LORA_PARAMS, LORA_TRAINED, ["conv", "head"], min_params=0, containers=DICTS)
    assert units(plan) == [("conv.lora_A.default", True, 72), ("conv.lora_B.default", True, 128),
                           ("head.modules_to_save.default", True, 20), ("conv.base_layer", False, 144),
                           ("head.original_module", False, 20), ("", False, 0)]
    assert not {u.name for u in plan.units} & DICTS
    # without the containers named, the ModuleDicts themselves would be units (what fully_shard refused)
    assert "conv.lora_A" in {u.name for u in plan_units(LORA, LORA_PARAMS, LORA_TRAINED, ["conv"], min_params=0).units}


def test_a_containers_own_parameters_stay_with_the_unit_above_and_a_chosen_container_gives_its_children():
    # peft's LoRA on an Embedding keeps A and B in ParameterDicts: they stay with the layer, whose forward uses them
    modules = ["", "emb", "emb.base_layer", "emb.lora_embedding_A", "emb.lora_embedding_B", "layers", "layers.0",
               "layers.1"]
    params = {"emb.base_layer.weight": 100, "emb.lora_embedding_A.default": 8, "emb.lora_embedding_B.default": 8,
              "layers.0.w": 50, "layers.1.w": 50}
    trained = {"emb.lora_embedding_A.default", "emb.lora_embedding_B.default"}
    plan = plan_units(modules, params, trained, ["emb", "layers"], min_params=0,
                      containers={"emb.lora_embedding_A", "emb.lora_embedding_B", "layers"})
    assert units(plan) == [("emb.base_layer", False, 100), ("layers.0", False, 50), ("layers.1", False, 50),
                           ("emb", True, 16), ("", False, 0)]
    with pytest.raises(UserError, match="module 'emb' holds trainable"):  # its own tensors mix: cannot be split
        plan_units(modules, params, {"emb.lora_embedding_A.default"}, ["emb"], min_params=0,
                   containers={"emb.lora_embedding_A", "emb.lora_embedding_B"})


def test_plan_model_on_a_lora_adapted_model_names_no_container():
    from transfer_pipeline.model_parts import model_parts
    from transfer_pipeline.models import DigitsCNN
    from transfer_pipeline.training.sharding import containers, plan_model
    from peft import LoraConfig, get_peft_model

    model = DigitsCNN()
    parts = model_parts(model)
    get_peft_model(model, LoraConfig(r=4, target_modules=["block1.0"], modules_to_save=["head"]))
    ever = {n for n, p in model.named_parameters() if p.requires_grad}
    plan = plan_model(model, None, parts, ever)
    names = [u.name for u in plan.units]
    assert "block1.0.lora_A.default" in names and "block1.0.base_layer" in names
    assert not set(names) & containers(model)
    own = {u.name: u.trainable for u in plan.units}
    assert own["head.modules_to_save.default"] and not own["head.original_module"] and not own["block1.0.base_layer"]
