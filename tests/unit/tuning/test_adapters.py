"""adapters=lora | dora (tuning/adapters.py, adapter_export.py, schema/adapters.py): the config's checks and
refusals, target resolution, peft injection with our names, the merge and its check, peft's adapter format."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch import nn

from helpers import ROOT
from transfer_pipeline.errors import UserError
from transfer_pipeline.models import DigitsCNN
from transfer_pipeline.schema import AdapterMethod, AdaptersConfig, BatchNormPolicy, FreezeConfig, OptimConfig
from transfer_pipeline.tuning.adapter_export import check_merge, merged_model, write_adapter
from transfer_pipeline.tuning.adapter_tuning import adapter_freeze_plan, adapter_groups
from transfer_pipeline.tuning.adapters import inject, plan_adapters, resolve_targets

LORA = AdaptersConfig(method=AdapterMethod.lora)


def loaded_cnn(seed: int = 0) -> DigitsCNN:
    """The default transfer's target as the load leaves it: the shipped weights, a fresh 5-class head."""
    from safetensors.torch import load_file

    from transfer_pipeline.models.digits import PRETRAINED_0TO4

    torch.manual_seed(seed)
    model = DigitsCNN(num_classes=5)
    model.load_state_dict({k: v for k, v in load_file(PRETRAINED_0TO4).items() if not k.startswith("head.")},
                          strict=False)
    return model


def adapted(model: nn.Module, cfg: AdaptersConfig = LORA, targets=None, freeze: FreezeConfig | None = None):
    plan = plan_adapters(model, cfg, targets, freeze or FreezeConfig(trainable=["head"]), ["head"])
    return plan, inject(model, plan)


# --- the config ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("override, message", [
    ("adapters.rank=0", r"adapters\.rank=0: must be a whole number >= 1"),
    ("adapters.rank=-2", r"adapters\.rank=-2: must be a whole number >= 1"),
    ("adapters.alpha=0", r"adapters\.alpha=0\.0: must be a finite number > 0"),
    ("adapters.dropout=1", r"adapters\.dropout=1\.0: must be a finite number >= 0 and < 1"),
    ("adapters.dropout=-0.1", r"adapters\.dropout=-0\.1"),
    ("adapters.lr=0", r"adapters\.lr=0\.0: must be a finite number > 0"),
    ("adapters.targets=[]", r"adapters\.targets=\[\]: a non-empty list of selectors"),
])
def test_bad_values_fail_at_composition(compose, override, message):
    with pytest.raises(UserError, match=message):
        compose("adapters=lora", override)


def test_a_misspelt_key_fails_at_once(compose):
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException, match="adapters.rnak"):
        compose("adapters=lora", "adapters.rnak=4")


def test_a_value_set_with_adapters_off_is_an_error(compose):
    with pytest.raises(UserError, match=r"adapters\.rank is set but adapters are off \(adapters=none\)"):
        compose("adapters.rank=4")


def test_defaults_off_and_lora_selects_the_adapters_freeze(compose):
    assert not compose().adapters.enabled and compose().freeze.schedule  # the default run is unchanged
    cfg = compose("adapters=lora")
    assert cfg.adapters.method.value == "lora" and cfg.adapters.rank == 8 and cfg.adapters.targets is None
    assert cfg.freeze.trainable == ["@head"] and cfg.freeze.schedule == []
    assert compose("adapters=dora").adapters.method.value == "dora"
    assert compose("adapters=lora", "freeze=linear_probe").freeze.bn.value == "frozen"  # a freeze=... wins


@pytest.mark.parametrize("override, key", [
    ("trainer.cache_features=true", "trainer.cache_features"),
    ("freeze=none", "freeze.bn=train"),
])
def test_unsupported_combinations_are_refused_by_name(compose, override, key):
    with pytest.raises(UserError, match=rf"^{key.replace('.', '[.]')}.* with adapters \(adapters\.method=lora\) is "
                                        "not supported yet"):
        compose("adapters=lora", override)


@pytest.mark.parametrize("mode", ["eval", "export", "predict"])
def test_modes_without_training_need_the_trained_adapter(compose, mode):
    with pytest.raises(UserError, match=rf"^mode={mode} with adapters \(adapters\.method=lora\) needs the trained "
                                        r"adapter: source\.adapter=<run>/adapter"):
        compose("adapters=lora", f"mode={mode}")
    assert compose("adapters=lora", f"mode={mode}", "source.adapter=somewhere").source.adapter == "somewhere"
    assert compose(f"mode={mode}", "source.adapter=somewhere", "mapping.verify.enabled=true").mapping.verify.enabled


def test_resume_and_ema_work_with_adapters(compose):
    cfg = compose("adapters=lora", "trainer.resume=auto", "trainer.ema.decay=0.9")
    assert cfg.trainer.resume == "auto" and cfg.trainer.ema.decay == 0.9


# --- targets ---------------------------------------------------------------------------------------------

def test_default_targets_are_every_conv_and_linear_but_the_head():
    assert resolve_targets(DigitsCNN(), None, ["head"]) == ["stem.0", "block1.0", "block2.0"]
    assert resolve_targets(DigitsCNN(neck=True), None, ["head"]) == ["stem.0", "block1.0", "block2.0", "neck.0"]


def test_a_block_selects_its_layers_and_parts_of_other_kinds_are_left():
    assert resolve_targets(DigitsCNN(), ["block2"], ["head"]) == ["block2.0"]
    assert resolve_targets(DigitsCNN(), ["re:block\\d\\.0"], ["head"]) == ["block1.0", "block2.0"]


@pytest.mark.parametrize("selectors, message", [
    (["blok2"], r"adapters\.targets\[0\]: selector 'blok2' matches no layer with parameters\. Closest names: block2"),
    (["block2.1"], r"adapters\.targets\[0\]: 'block2\.1' selects 'block2\.1', a BatchNorm2d; adapters go on Linear"),
    (["*.1"], r"adapters\.targets\[0\]: '\*\.1' selects 'stem\.1', a BatchNorm2d"),
    (["block2", "re:("], r"adapters\.targets\[1\]: selector 're:\(' is not a valid regex"),
])
def test_wrong_targets_are_errors_naming_the_selector(selectors, message):
    with pytest.raises(UserError, match=message):
        resolve_targets(DigitsCNN(), selectors, ["head"])


def test_out_proj_is_refused_and_encoder_layers_get_adapters_that_evaluation_sees():
    """nn.MultiheadAttention reads out_proj.weight itself (refused); nn.TransformerEncoderLayer's fused eval path
    would read linear1/linear2 by weight and skip their adapters, so it is kept off (tuning/fused_layers.py)."""
    import torch
    from transfer_pipeline.models import TextTransformer
    from transfer_pipeline.tuning.adapter_export import merged_model

    torch.manual_seed(0)
    model = TextTransformer(vocab_size=50, max_len=8).eval()
    out_proj = next(n for n, m in model.named_modules() if n.endswith("self_attn.out_proj"))
    ffn = [f"encoder.layers.{i}.linear{j}" for i in range(2) for j in (1, 2)]
    assert resolve_targets(model, None, ["classifier"]) == ffn + ["pooler.dense"]
    with pytest.raises(UserError, match="reads its weight directly"):
        resolve_targets(model, [out_proj], ["classifier"])
    base_keys = list(model.state_dict())
    plan = plan_adapters(model, LORA, ["encoder"], FreezeConfig(trainable=["classifier"]), ["classifier"])
    assert plan.targets == ffn
    peft_model = inject(model, plan)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_()
    ids = torch.randint(1, 50, (4, 8))
    ids[:, -2:] = 0  # padding: the fused path would also pack these into nested tensors
    with torch.no_grad():
        training_path = model.train()(ids).logits  # training mode never takes the fused path (dropout is 0)
        evaluated = model.eval()(ids).logits
        merged = merged_model(peft_model, base_keys)
        for layer in merged.encoder.layers:
            layer._forward_pre_hooks.clear()
        fused = merged(ids).logits  # the merged weights through torch's fused path
    assert torch.allclose(evaluated, training_path, atol=1e-5) and torch.allclose(fused, evaluated, atol=1e-5)
    assert (evaluated - TextTransformer(vocab_size=50, max_len=8).eval()(ids).logits).abs().max() > 1e-3


def test_overlaps_with_freezing_are_errors():
    model = DigitsCNN()
    with pytest.raises(UserError, match=r"'block2\.0' is also selected by freeze\.frozen\[0\]='block2'"):
        plan_adapters(model, LORA, ["block2"], FreezeConfig(trainable=["head"], frozen=["block2"]), ["head"])
    with pytest.raises(UserError, match=r"'head' is in the head .* trains in full"):
        plan_adapters(model, LORA, ["head"], FreezeConfig(trainable=["head"]), ["head"])
    with pytest.raises(UserError, match=r"'block2\.0' gets an adapter, and freeze\.trainable trains 'block2\.0\.weight' "
                                        r"in full; .* Drop 'block2\.0' from adapters\.targets"):
        plan_adapters(model, LORA, ["block2"], FreezeConfig(trainable=["head", "block2"]), ["head"])
    plan = plan_adapters(model, LORA, None, FreezeConfig(trainable=["head", "block2"]), ["head"])
    assert plan.targets == ["stem.0", "block1.0"] and plan.head == ["block2.0", "block2.1", "head"]  # trained in full
    plan = plan_adapters(model, LORA, None, FreezeConfig(trainable=["head"], frozen=["block2"]), ["head"])
    assert plan.targets == ["stem.0", "block1.0"]  # targets=null leaves freeze.frozen's layers out


# --- injection, freezing and groups ----------------------------------------------------------------------------

def test_injection_keeps_our_names_and_trains_only_adapters_and_head():
    model = loaded_cnn()
    plan, peft_model = adapted(model, targets=["block1", "block2"])
    assert peft_model.base_model.model is model
    names = [n for n, _ in model.named_parameters()]
    assert "block2.0.base_layer.weight" in names and "block2.0.lora_A.default.weight" in names
    freeze = adapter_freeze_plan(model, FreezeConfig(trainable=["head"]), plan)
    assert freeze.trainable == {"block1.0.lora_A.default.weight", "block1.0.lora_B.default.weight",
                                "block2.0.lora_A.default.weight", "block2.0.lora_B.default.weight",
                                "head.modules_to_save.default.weight", "head.modules_to_save.default.bias"}
    assert plan.adapter_params == sum(p.numel() for n, p in model.named_parameters() if ".lora_" in n)
    assert plan.head_params == 64 * 5 + 5
    assert plan.trainable_fraction == pytest.approx(plan.trainable_params / (plan.base_params + plan.adapter_params))
    groups = adapter_groups(model, plan, OptimConfig(lr=0.01), set())
    assert [(g.name, g.lr) for g in groups] == [("adapters", 0.01), ("default", 0.01)]
    assert set(groups[0].names) == set(plan.adapter_names)
    lr_plan, _ = adapted(loaded_cnn(), AdaptersConfig(method=AdapterMethod.lora, lr=0.5))
    assert lr_plan.lr == 0.5


def test_batchnorm_that_would_move_is_refused():
    model = loaded_cnn()
    plan, _ = adapted(model)
    with pytest.raises(UserError, match=r"BatchNorm layer 'stem\.1' of the base would update its statistics"):
        adapter_freeze_plan(model, FreezeConfig(trainable=["head"], bn=BatchNormPolicy.train), plan)


# --- merge, its check, and the files ------------------------------------------------------------------------

def trained(model: nn.Module) -> None:
    """Stand-in for training: every adapter and the head away from their start."""
    torch.manual_seed(1)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))


@pytest.mark.parametrize("method", ["lora", "dora", "rslora", "loha", "lokr"])
def test_merged_weights_have_the_targets_names_and_the_adapted_outputs(tmp_path, method):
    model = loaded_cnn()
    base_keys = list(model.state_dict())
    plan, peft_model = adapted(model, AdaptersConfig(method=AdapterMethod(method), rank=4))
    trained(model)
    x = torch.randn(16, 1, 8, 8)
    merged = merged_model(peft_model, plan.base_keys)
    assert list(merged.state_dict()) == base_keys
    assert check_merge(model, merged, x, None) <= 1e-4
    plain = DigitsCNN(num_classes=5)
    plain.load_state_dict(merged.state_dict())
    model.eval()
    plain.eval()
    with torch.no_grad():
        assert torch.allclose(plain(x), model(x), atol=1e-5)
        assert not torch.allclose(plain.stem[0].weight, loaded_cnn().stem[0].weight)  # the update is in the weight


def test_the_adapter_folder_is_peft_format_and_loads_onto_the_same_base(tmp_path):
    from peft import PeftModel

    model = loaded_cnn()
    _, peft_model = adapted(model, AdaptersConfig(method=AdapterMethod.lora, rank=4))
    trained(model)
    size = write_adapter(peft_model, tmp_path / "adapter")
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in (tmp_path / "adapter").iterdir()}
    assert size == (tmp_path / "adapter" / "adapter_model.safetensors").stat().st_size
    assert not list(tmp_path.glob(".adapter.*"))  # written beside it and renamed
    loaded = PeftModel.from_pretrained(loaded_cnn(seed=7), str(tmp_path / "adapter"))  # another random head
    x = torch.randn(16, 1, 8, 8)
    model.eval()
    loaded.eval()
    with torch.no_grad():
        assert torch.allclose(loaded(x), model(x), atol=1e-6)


def test_a_merge_that_disagrees_fails_the_run():
    model = loaded_cnn()
    plan, peft_model = adapted(model)
    trained(model)
    merged = merged_model(peft_model, plan.base_keys)
    with torch.no_grad():
        merged.block2[0].weight.add_(0.1)
    with pytest.raises(UserError, match=r"the merged model and the adapted model disagree .* allowed 0\.0001"):
        check_merge(model, merged, torch.randn(8, 1, 8, 8), None)


def test_peft_is_imported_only_with_adapters():
    code = ("import sys, transfer_pipeline.run.recipe, transfer_pipeline.schema, transfer_pipeline.tuning.freezing; "
            "print('peft' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# --- source.adapter: a saved adapter back onto its base (tuning/adapter_reuse.py) ----------------------------

def saved_folder(tmp_path, model: nn.Module | None = None, rank: int = 4, method: str = "lora", targets=None):
    """A trained adapter written as a run writes it (adapter/), and the adapted model it came from."""
    model = model if model is not None else loaded_cnn()
    _, peft_model = adapted(model, AdaptersConfig(method=AdapterMethod(method), rank=rank), targets=targets)
    trained(model)
    write_adapter(peft_model, tmp_path / "adapter")
    return tmp_path / "adapter", model.eval()


def put_on(folder, model: nn.Module, load: bool = True):
    from transfer_pipeline.sources.saved_adapter import read_saved
    from transfer_pipeline.tuning.adapter_reuse import check_fits, check_modules, load_saved, saved_plan

    saved = read_saved(str(folder))
    plan = saved_plan(model, saved, check_modules(model, saved), saved.dropout, None)
    peft_model = inject(model, plan)
    check_fits(peft_model, saved)
    if load:
        load_saved(peft_model, saved)
    return saved, plan, peft_model


@pytest.mark.parametrize("method", ["lora", "dora"])
def test_a_saved_adapter_on_a_fresh_base_gives_the_trained_outputs(tmp_path, method):
    import hashlib

    folder, trained_model = saved_folder(tmp_path, method=method)
    fresh = loaded_cnn(seed=7)  # another random head: the adapter's head replaces it
    saved, plan, _ = put_on(folder, fresh)
    assert (saved.method, saved.rank, saved.alpha, saved.head) == (method, 4, 16.0, ["head"])
    assert plan.targets == ["stem.0", "block1.0", "block2.0"] and sorted(saved.targets) == sorted(plan.targets)
    data = (folder / "adapter_model.safetensors").read_bytes()
    assert saved.sha256 == hashlib.sha256(data).hexdigest() and saved.bytes == len(data)
    x = torch.randn(16, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(fresh.eval()(x), trained_model(x))
        assert not torch.allclose(loaded_cnn(seed=7).eval()(x), trained_model(x))  # the adapter is what made it so


def test_a_plan_checks_names_and_shapes_without_reading_tensors(tmp_path):
    folder, _ = saved_folder(tmp_path)
    with torch.device("meta"):
        meta = DigitsCNN(num_classes=5)
    _, plan, _ = put_on(folder, meta, load=False)
    assert plan.targets == ["stem.0", "block1.0", "block2.0"]


def test_wrong_folders_are_refused_with_one_message(tmp_path):
    from transfer_pipeline.sources.saved_adapter import read_saved

    folder, _ = saved_folder(tmp_path)
    with pytest.raises(UserError, match=r"^source\.adapter: no such file: .*nowhere"):
        read_saved(str(tmp_path / "nowhere"))
    with pytest.raises(UserError, match=r"^source\.adapter: .* is a file, not a folder"):
        read_saved(str(folder / "adapter_config.json"))
    with pytest.raises(UserError, match=r"has no adapter_config\.json; a saved adapter is a folder with .* "
                                        rf"{tmp_path / 'adapter'} has one: source\.adapter="):
        read_saved(str(tmp_path))  # the run folder, not its adapter/
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match=r"empty has no adapter_config\.json"):
        read_saved(str(tmp_path / "empty"))


def corrupt(folder, name: str, change) -> None:
    path = folder / name
    path.chmod(0o644)
    data = path.read_bytes()
    path.write_bytes(change(data))


@pytest.mark.parametrize("name, change, message", [
    ("adapter_model.safetensors", lambda b: b[:len(b) // 2], r"adapter_model\.safetensors is truncated"),
    ("adapter_model.safetensors", lambda b: b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}" + b[24:],
     r"corrupt safetensors header: the header is not JSON"),
    ("adapter_model.safetensors", lambda b: b"", r"truncated or not safetensors"),
    ("adapter_config.json", lambda b: b"{r: 4", r"adapter_config\.json is not JSON"),
    ("adapter_config.json", lambda b: b.replace(b'"LORA"', b'"IA3"'), r"is a 'IA3' adapter \(peft_type\); the adapters put on are LoRA, DoRA and rsLoRA"),
    ("adapter_config.json", lambda b: b.replace(b'"rank_pattern": {}', b'"rank_pattern": {"stem.0": 2}'),
     r"sets rank_pattern=\{'stem\.0': 2\}, which this pipeline's adapters do not put on"),
    ("adapter_config.json", lambda b: b.replace(b'"r": 4', b'"r": 0'), r"has r=0; the rank is a whole number >= 1"),
])
def test_corrupt_files_are_refused_naming_the_file(tmp_path, name, change, message):
    from transfer_pipeline.sources.saved_adapter import read_saved

    folder, _ = saved_folder(tmp_path)
    corrupt(folder, name, change)
    with pytest.raises(UserError, match=rf"^source\.adapter: .*{message}"):
        read_saved(str(folder))


def test_a_fifo_in_place_of_the_file_is_refused_as_source_path_is(tmp_path):
    import os

    from transfer_pipeline.sources.saved_adapter import read_saved

    folder, _ = saved_folder(tmp_path)
    (folder / "adapter_model.safetensors").unlink()
    os.mkfifo(folder / "adapter_model.safetensors")
    with pytest.raises(UserError, match=r"^source\.adapter: .* is a FIFO \(named pipe\), not a file or folder"):
        read_saved(str(folder))


def test_an_adapter_for_other_layers_names_them(tmp_path):
    from transfer_pipeline.sources.saved_adapter import read_saved
    from transfer_pipeline.tuning.adapter_reuse import check_modules

    torch.manual_seed(0)
    folder, _ = saved_folder(tmp_path, DigitsCNN(neck=True), targets=["neck.0", "block2"])
    saved = read_saved(str(folder))
    with pytest.raises(UserError, match=r"^source\.adapter: the adapter in .* is on module\(s\) DigitsCNN does not "
                                        r"have: neck\.0\..*another model"):
        check_modules(DigitsCNN(), saved)


@pytest.mark.parametrize("model, change, message", [
    (lambda: DigitsCNN(widths=(16, 48, 64)), None,
     r"block1\.0\.lora_B\.weight is \(32, 4, 1, 1\) in the adapter and \(48, 4, 1, 1\) here \(rank 4 on 'block1\.0', "
     r"here Conv2d\(16, 48"),
    (lambda: DigitsCNN(num_classes=10), None, r"head\.weight is \(5, 64\) in the adapter and \(10, 64\) here"),
    (lambda: DigitsCNN(), lambda b: b.replace(b'"r": 4', b'"r": 8'),
     r"stem\.0\.lora_A\.weight is \(4, 1, 3, 3\) in the adapter and \(8, 1, 3, 3\) here \(rank 8"),
])
def test_shapes_that_do_not_fit_are_refused_naming_the_tensor(tmp_path, model, change, message):
    folder, _ = saved_folder(tmp_path)
    if change is not None:
        corrupt(folder, "adapter_config.json", change)
    with pytest.raises(UserError, match=rf"^source\.adapter: {message}"):
        put_on(folder, model())


def test_nonfinite_adapter_tensors_are_refused(tmp_path):
    from safetensors.torch import load_file, save_file

    folder, _ = saved_folder(tmp_path)
    path = folder / "adapter_model.safetensors"
    tensors = load_file(path)
    tensors["base_model.model.block2.0.lora_B.weight"][0] = float("nan")
    path.chmod(0o644)
    save_file(tensors, path)
    with pytest.raises(UserError, match=r"holds NaN or inf in base_model\.model\.block2\.0\.lora_B\.weight"):
        put_on(folder, loaded_cnn())


def test_a_config_that_asks_for_other_adapters_names_both(tmp_path):
    from transfer_pipeline.sources.saved_adapter import read_saved
    from transfer_pipeline.tuning.adapter_reuse import check_same

    folder, _ = saved_folder(tmp_path)
    saved = read_saved(str(folder))
    plan = plan_adapters(loaded_cnn(), AdaptersConfig(method=AdapterMethod.dora), ["block2"],
                         FreezeConfig(trainable=["head"]), ["head"])
    with pytest.raises(UserError, match=r"not the one adapters=dora asks for:\n  method: lora in the adapter, dora in "
                                        r"the config\n  rank: 4 in the adapter, 8 in the config\n  targets: .*"
                                        r"\['block2\.0'\] in the config\n.*adapters=lora adapters\.rank=4"):
        check_same(saved, plan, "adapters=dora")
