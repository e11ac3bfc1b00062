"""adapters.method beyond LoRA / DoRA (tuning/adapter_methods.py, sources/saved_adapter.py): rslora, loha and lokr
go in by the same injection, train only their adapters and the head, merge into the target's names and
save in peft's format that PeftModel.from_pretrained and source.adapter read back."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from transfer_pipeline.errors import UserError
from transfer_pipeline.models import DigitsCNN
from transfer_pipeline.schema import AdapterMethod, AdaptersConfig, FreezeConfig
from transfer_pipeline.tuning.adapter_export import check_merge, merged_model, write_adapter
from transfer_pipeline.tuning.adapters import inject, plan_adapters

from test_adapters import loaded_cnn, put_on, trained

METHODS = ["rslora", "loha", "lokr"]
# the adapter tensors each method adds to a wrapped layer (peft's names, adapter `default`)
TENSORS = {"rslora": ("lora_A", "lora_B"), "loha": ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"),
           "lokr": ("lokr_w1", "lokr_w2")}
PEFT_TYPE = {"rslora": "LORA", "loha": "LOHA", "lokr": "LOKR"}


def adapted(model: nn.Module, method: str, rank: int = 4, targets=None):
    cfg = AdaptersConfig(method=AdapterMethod(method), rank=rank, alpha=8.0)
    plan = plan_adapters(model, cfg, targets, FreezeConfig(trainable=["head"]), ["head"])
    return plan, inject(model, plan)


def outputs(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(x)


@pytest.mark.parametrize("method", METHODS)
def test_inject_trains_only_the_adapters_and_the_head(method):
    x = torch.randn(16, 1, 8, 8)
    base_out = outputs(loaded_cnn(), x)
    model = loaded_cnn()
    plan, _ = adapted(model, method)
    assert plan.targets == ["stem.0", "block1.0", "block2.0"]
    names = {n for n, _ in model.named_parameters()}
    assert "block2.0.base_layer.weight" in names and "head.modules_to_save.default.weight" in names
    assert all(any(f".{t}." in f".{n}" for t in TENSORS[method]) for n in plan.adapter_names)
    assert torch.equal(outputs(model, x), base_out)  # fresh adapters start as a zero update
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.eval()  # BatchNorm statistics stay as loaded (the pipeline's freeze.bn=auto)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    for _ in range(2):  # the second step moves the factors the first left at zero gradient
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), torch.arange(16) % 5).backward()
        opt.step()
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    allowed = set(plan.adapter_names) | {n for n in names if n.startswith("head.modules_to_save.")}
    assert changed and changed <= allowed, sorted(changed - allowed)
    assert changed & set(plan.adapter_names)


@pytest.mark.parametrize("method, rank", [("rslora", 4), ("loha", 4), ("lokr", 4), ("lokr", 2)])
def test_saved_adapter_reloads_with_peft_and_through_source_adapter(tmp_path, method, rank):
    from peft import PeftModel

    model = loaded_cnn()
    _, peft_model = adapted(model, method, rank)
    trained(model)
    write_adapter(peft_model, tmp_path / "adapter")
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["peft_type"] == PEFT_TYPE[method] and config.get("use_rslora", False) == (method == "rslora")
    x = torch.randn(16, 1, 8, 8)
    want = outputs(model, x)
    assert torch.allclose(outputs(PeftModel.from_pretrained(loaded_cnn(seed=7), str(tmp_path / "adapter")), x), want,
                          atol=1e-6)
    fresh = loaded_cnn(seed=7)  # another random head: the adapter's head replaces it
    saved, plan, _ = put_on(tmp_path / "adapter", fresh)
    assert (saved.method, saved.rank, saved.alpha, saved.head) == (method, rank, 8.0, ["head"])
    if rank == 2:  # LoKr splits W2 where the rank is below half its size: block2's lokr_w2_a @ lokr_w2_b
        assert "base_model.model.block2.0.lokr_w2_a" in saved.shapes
    assert sorted(saved.targets) == sorted(plan.targets) == ["block1.0", "block2.0", "stem.0"]
    assert torch.equal(outputs(fresh, x), want)


def test_rslora_scales_by_alpha_over_the_root_of_the_rank():
    model = loaded_cnn()
    adapted(model, "rslora", rank=4)
    assert model.block2[0].scaling["default"] == pytest.approx(8.0 / math.sqrt(4))
    lora = loaded_cnn()
    plan = plan_adapters(lora, AdaptersConfig(method=AdapterMethod.lora, rank=4, alpha=8.0), None,
                         FreezeConfig(trainable=["head"]), ["head"])
    inject(lora, plan)
    assert lora.block2[0].scaling["default"] == pytest.approx(8.0 / 4)


@pytest.mark.parametrize("method", ["loha", "lokr"])
def test_an_embedding_target_is_refused_for_methods_without_one(method):
    from transfer_pipeline.models import TextTransformer

    model = TextTransformer(vocab_size=50, max_len=8)
    emb = next(n for n, m in model.named_modules() if isinstance(m, nn.Embedding))
    plan = plan_adapters(model, AdaptersConfig(method=AdapterMethod(method)), [emb], FreezeConfig(trainable=[]),
                         ["classifier"])
    with pytest.raises(UserError, match=rf"adapters\.targets: '{emb}' is a Embedding, and adapters\.method={method} "
                                        r"goes on Linear, Conv1d, Conv2d layers only"):
        inject(model, plan)


def test_compose_selects_each_method(compose):
    for method in ["rslora", "loha", "lokr"]:
        cfg = compose(f"adapters={method}")
        assert cfg.adapters.method.value == method and cfg.freeze.trainable == ["@head"]


def saved_config(tmp_path, method: str, change) -> None:
    model = loaded_cnn()
    _, peft_model = adapted(model, method)
    write_adapter(peft_model, tmp_path / "adapter")
    path = tmp_path / "adapter" / "adapter_config.json"
    config = json.loads(path.read_text())
    change(config)
    path.chmod(0o644)
    path.write_text(json.dumps(config))


@pytest.mark.parametrize("method, change, message", [
    ("rslora", lambda c: c.update(use_dora=True), r"sets both use_dora and use_rslora"),
    ("loha", lambda c: c.update(use_effective_conv2d=True), r"sets use_effective_conv2d=True, which this pipeline"),
    ("lokr", lambda c: c.update(decompose_both=True), r"sets decompose_both=True, which this pipeline"),
    ("lokr", lambda c: c.update(peft_type="OFT"),
     r"is a 'OFT' adapter \(peft_type\); the adapters put on are LoRA, DoRA and rsLoRA \(peft_type LORA\), LoHa "
     r"\(LOHA\) and LoKr \(LOKR\)"),
    ("loha", lambda c: c.update(alpha=0), r"has alpha=0, not a number > 0"),
])
def test_saved_settings_the_injection_would_not_reproduce_are_refused(tmp_path, method, change, message):
    from transfer_pipeline.sources.saved_adapter import read_saved

    saved_config(tmp_path, method, change)
    with pytest.raises(UserError, match=rf"^source\.adapter: .*{message}"):
        read_saved(str(tmp_path / "adapter"))


# --- the merge check, module by module (mapping.verify's recording) -------------------------------------------

@pytest.mark.parametrize("method", ["lora", "loha"])
def test_a_corrupted_merge_names_the_first_module_that_differs(method):
    model = loaded_cnn()
    plan, peft_model = adapted(model, method)
    trained(model)
    x = torch.randn(8, 1, 8, 8)
    merged = merged_model(peft_model, plan.base_keys)
    good = check_merge(model, merged, x, None)
    assert good.modules >= 10 and good.worst <= 1e-4 and good.worst_module is not None
    assert good.to_dict()["merge_modules_compared"] == good.modules
    with torch.no_grad():
        merged.block1[0].weight.add_(0.1)  # after the merge: block1.0 is where the outputs part
    with pytest.raises(UserError, match=r"disagree on a validation batch \(largest difference .* allowed 0\.0001; "
                                        r"first difference at module `block1\.0` \(Conv2d vs merged Conv2d: .* x its "
                                        r"output scale\), \d+ of \d+ modules differ\)"):
        check_merge(model, merged, x, None)


def test_a_head_that_differs_after_the_merge_is_named():
    model = loaded_cnn()
    plan, peft_model = adapted(model, "rslora")
    trained(model)
    merged = merged_model(peft_model, plan.base_keys)
    with torch.no_grad():
        merged.head.bias.add_(1.0)
    with pytest.raises(UserError, match=r"first difference at module `head` \(ModulesToSaveWrapper vs merged Linear"):
        check_merge(model, merged, torch.randn(8, 1, 8, 8), None)


def test_the_base_view_of_an_adapted_model_has_the_loads_names():
    from transfer_pipeline.tuning.adapter_export import plain_modules, plain_state

    model = loaded_cnn()
    want = {k: v.clone() for k, v in model.state_dict().items()}
    plan, _ = adapted(model, "lokr")
    trained(model)
    state = plain_state(model)
    assert list(state) == list(want) and all(torch.equal(state[k], want[k]) for k in want)  # the loaded head too
    base, mine = plain_modules(model, adapted=False), plain_modules(model, adapted=True)
    assert set(base) == set(mine) == {n for n, _ in DigitsCNN().named_modules()}
    assert type(base["block2.0"]) is nn.Conv2d and type(mine["block2.0"]).__name__ == "Conv2d"
    assert mine["block2.0"] is model.block2[0] and base["head"] is model.head.original_module
