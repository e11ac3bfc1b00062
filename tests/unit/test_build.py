"""Unit tests for transfer_pipeline.build: our own instantiate/locate with messages a person can act on.

Built models in whole runs (YAML models, models that cannot take the data): tests/e2e/test_build_runs.py."""

from __future__ import annotations

import collections
import os.path

import pytest
import torch
from torch import nn

from transfer_pipeline.build import build_model, instantiate, locate
from transfer_pipeline.errors import UserError
from transfer_pipeline.models import BackboneNet, DigitsCNN


# --- locate ------------------------------------------------------------------------------------------

def test_locate_module_attribute():
    import torchvision.models

    assert locate("torchvision.models.resnet18", "model") is torchvision.models.resnet18
    assert locate("torch.nn.Linear", "model") is nn.Linear
    assert locate("transfer_pipeline.models.DigitsCNN", "model") is DigitsCNN


def test_locate_nested_attribute_and_plain_module():
    assert locate("collections.OrderedDict.fromkeys", "x") == collections.OrderedDict.fromkeys
    assert locate("os.path", "x") is os.path
    assert locate("os.path.join", "x") is os.path.join


def test_locate_misspelt_target_suggests_close_names():
    with pytest.raises(UserError, match=r"model\._target_: 'torchvision\.models' has no 'resnet81'\. "
                                        r"Closest names: resnet18\b"):
        locate("torchvision.models.resnet81", "model")


def test_locate_misspelt_submodule_suggests_it():
    with pytest.raises(UserError, match=r"source\.model\._target_: 'torchvision' has no 'modls'.*\bmodels\b"):
        locate("torchvision.modls.resnet18", "source.model")


def test_locate_misspelt_class_in_our_package():
    with pytest.raises(UserError, match=r"'transfer_pipeline\.models' has no 'DigitCNN'.*DigitsCNN"):
        locate("transfer_pipeline.models.DigitCNN", "model")


def test_locate_unknown_top_module():
    with pytest.raises(UserError, match=r"model\._target_: cannot import 'nosuchpkg_xyz\.models\.Net': "
                                        r"no module 'nosuchpkg_xyz'.*full dotted path"):
        locate("nosuchpkg_xyz.models.Net", "model")


def test_locate_bare_name_is_unknown_module():
    with pytest.raises(UserError, match=r"cannot import 'resnet18': no module 'resnet18'"):
        locate("resnet18", "model")


def test_locate_reports_import_errors_inside_a_real_module_as_that_error(tmp_path, monkeypatch):
    # a module that exists but whose own import is broken is that import error, not a typo to hint at
    pkg = tmp_path / "brokenpkg_for_test"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("import a_dependency_that_is_not_installed_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(UserError, match="No module named 'a_dependency_that_is_not_installed_xyz'") as e:
        locate("brokenpkg_for_test.Model", "model")
    assert "brokenpkg_for_test/__init__.py:1" in str(e.value) and "Closest" not in str(e.value)


def test_locate_empty_target_is_user_error():
    with pytest.raises(UserError, match=r"model\._target_"):
        locate("", "model")


# --- instantiate -------------------------------------------------------------------------------------

def test_instantiate_good_target_with_kwargs():
    lin = instantiate({"_target_": "torch.nn.Linear", "in_features": 3, "out_features": 2, "bias": False}, "model")
    assert isinstance(lin, nn.Linear)
    assert lin.weight.shape == (2, 3)
    assert lin.bias is None


def test_instantiate_our_model():
    m = instantiate({"_target_": "transfer_pipeline.models.DigitsCNN", "num_classes": 7, "widths": [8, 16]}, "model")
    assert isinstance(m, DigitsCNN)
    assert m.head.out_features == 7
    assert m.num_blocks == 1


def test_instantiate_builds_nested_targets_first():
    node = {"_target_": "torch.nn.ModuleDict",
            "modules": {"_target_": "builtins.dict", "a": {"_target_": "torch.nn.Linear", "in_features": 2,
                                                            "out_features": 3}}}
    out = instantiate(node, "model")
    assert isinstance(out, nn.ModuleDict)
    assert isinstance(out["a"], nn.Linear) and out["a"].out_features == 3


def test_instantiate_plain_dict_arguments_are_passed_through():
    out = instantiate({"_target_": "builtins.dict", "x": {"a": 1}}, "model")
    assert out == {"x": {"a": 1}}


def test_instantiate_without_target_is_error():
    with pytest.raises(UserError, match=r"model: needs a '_target_'"):
        instantiate({"num_classes": 5}, "model")
    with pytest.raises(UserError, match=r"source\.model: needs a '_target_'"):
        instantiate("torchvision.models.resnet18", "source.model")


def test_instantiate_bad_kwargs_lists_accepted_params():
    with pytest.raises(UserError, match=r"model: torch\.nn\.Linear does not take these arguments") as e:
        instantiate({"_target_": "torch.nn.Linear", "in_featurs": 3, "out_features": 2}, "model")
    assert "It takes: in_features, out_features, bias" in str(e.value)


def test_instantiate_unknown_kwarg_is_named():
    with pytest.raises(UserError, match=r"does not take these arguments \(.*'biass'.*\)\. "
                                        r"It takes: in_features, out_features, bias"):
        instantiate({"_target_": "torch.nn.Linear", "in_features": 3, "out_features": 2, "biass": False}, "model")


def test_instantiate_bad_kwargs_for_function_target():
    with pytest.raises(UserError, match=r"It takes: .*\bnum_classes\b") as e:
        instantiate({"_target_": "transfer_pipeline.models.DigitsCNN", "num_class": 3}, "model")
    assert "self" not in str(e.value).split("It takes:")[1]


def test_instantiate_missing_required_kwarg_is_error():
    with pytest.raises(UserError, match=r"does not take these arguments.*It takes: in_features, out_features"):
        instantiate({"_target_": "torch.nn.Linear", "in_features": 3}, "model")


def test_instantiate_nested_error_names_nested_key():
    with pytest.raises(UserError, match=r"model\.backbone\._target_: 'torch\.nn' has no 'Linaer'.*Linear"):
        instantiate({"_target_": "builtins.dict", "backbone": {"_target_": "torch.nn.Linaer"}}, "model")


def test_instantiate_non_callable_target_is_error():
    with pytest.raises(UserError, match=r"model\._target_: 'math\.pi' is not callable"):
        instantiate({"_target_": "math.pi"}, "model")


def test_instantiate_misspelt_torchvision_model():
    with pytest.raises(UserError, match=r"has no 'resnet81'.*resnet18"):
        instantiate({"_target_": "torchvision.models.resnet81", "num_classes": 5}, "model")


# --- build_model -------------------------------------------------------------------------------------

def test_build_model_returns_module():
    m = build_model({"_target_": "transfer_pipeline.models.BackboneNet", "num_classes": 3})
    assert isinstance(m, BackboneNet)
    assert m(torch.zeros(2, 1, 8, 8)).shape == (2, 3)


def test_build_model_torchvision_target():
    m = build_model({"_target_": "torchvision.models.resnet18", "num_classes": 4})
    assert m.fc.out_features == 4


def test_build_model_non_module_result_is_error():
    with pytest.raises(UserError, match=r"model\._target_: collections\.OrderedDict returned OrderedDict, "
                                        r"not an nn\.Module"):
        build_model({"_target_": "collections.OrderedDict"})


def test_build_model_where_is_used():
    with pytest.raises(UserError, match=r"source\.model\._target_: builtins\.dict returned dict"):
        build_model({"_target_": "builtins.dict", "a": 1}, "source.model")


# --- Hydra's instantiate semantics, our messages -----------------------------------------------------------------

def test_positional_args_and_nested_nodes_in_lists_build_a_sequential():
    node = {"_target_": "torch.nn.Sequential", "_args_": [
        {"_target_": "torch.nn.Flatten"},
        {"_target_": "torch.nn.Linear", "in_features": 64, "out_features": 8},
        {"_target_": "torch.nn.ReLU"},
        {"_target_": "torch.nn.Linear", "in_features": 8, "out_features": 5}]}
    model = build_model(node)
    assert isinstance(model, nn.Sequential) and [type(m).__name__ for m in model] == ["Flatten", "Linear", "ReLU", "Linear"]
    assert model[3].out_features == 5


def test_nested_nodes_inside_dicts_are_built_and_partial_returns_a_factory():
    out = instantiate({"_target_": "builtins.dict", "layers": {"a": {"_target_": "torch.nn.Identity"}, "b": [1, 2]}}, "x")
    assert isinstance(out["layers"]["a"], nn.Identity) and out["layers"]["b"] == [1, 2]
    factory = instantiate({"_target_": "torch.nn.Linear", "_partial_": True, "in_features": 3}, "x")
    assert factory(out_features=2).weight.shape == (2, 3)
    raw = instantiate({"_target_": "builtins.dict", "_recursive_": False, "inner": {"_target_": "torch.nn.Identity"}}, "x")
    assert raw["inner"] == {"_target_": "torch.nn.Identity"}


def test_bad_positional_args_name_the_key():
    with pytest.raises(UserError, match=r"model\._args_\[1\]\._target_: 'torch\.nn' has no 'Lineer'.*Linear"):
        build_model({"_target_": "torch.nn.Sequential", "_args_": [{"_target_": "torch.nn.Flatten"},
                                                                   {"_target_": "torch.nn.Lineer"}]})
    with pytest.raises(UserError, match=r"model\._args_: a list of positional arguments"):
        build_model({"_target_": "torch.nn.Sequential", "_args_": 3})


def test_a_package_that_fails_to_import_is_reported_as_that_error(tmp_path, monkeypatch):
    pkg = tmp_path / "brokenpkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("import math\nraise ValueError('half-configured install')\n")
    (tmp_path / "needsdep.py").write_text("import not_installed_dependency_xyz\nclass Net: pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(UserError, match=r"'brokenpkg\.models\.Net': importing it failed with ValueError: half-configured install"):
        locate("brokenpkg.models.Net", "model")
    with pytest.raises(UserError, match=r"'needsdep\.Net': importing it failed with ModuleNotFoundError: No module named "
                                        r"'not_installed_dependency_xyz'"):
        locate("needsdep.Net", "model")


def test_a_kwargs_builder_whose_class_refuses_an_argument_is_a_user_error():
    """torchvision.models.resnet18(**kwargs) passes them on: ResNet's own TypeError is told as the config's."""
    with pytest.raises(UserError, match=r"model: torchvision.models.resnet18 does not take these arguments \(got an "
                                        r"unexpected keyword argument 'in_channels', refused by ResNet.__init__\)"):
        instantiate({"_target_": "torchvision.models.resnet18", "num_classes": 3, "in_channels": 1}, "model")


def test_another_type_error_inside_a_constructor_keeps_its_traceback():
    with pytest.raises(TypeError, match="int\\(\\) argument must be"):  # not about the config's arguments
        instantiate({"_target_": "builtins.int", "_args_": [[1]]}, "x")


def test_the_hint_names_the_group_file_a_refused_argument_came_from():
    from transfer_pipeline.errors import ConfigOrigins

    message = ("model: torchvision.models.resnet18 does not take these arguments (got an unexpected keyword "
               "argument 'in_channels', refused by ResNet.__init__).")
    origins = ConfigOrigins({"model": "digits_cnn"}, ("model._target_=torchvision.models.resnet18",))
    hint = origins.hint(message)
    assert "model.in_channels comes from the config group model=digits_cnn (conf/model/digits_cnn.yaml)" in hint
    assert "'~model.in_channels'" in hint
    given = ConfigOrigins({"model": "digits_cnn"}, ("model.in_channels=3",))
    assert given.hint(message) == ""  # the person typed it: the message is the help
