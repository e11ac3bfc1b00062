"""Shared fixtures: compose the real configs, run the pipeline in a temporary run folder.

Layout: tests/unit/<stage>/ mirrors the package; tests/e2e/ runs whole runs (CLI, experiments, resume,
sweeps, the run folder) and is marked `slow` here, so `pytest -m "not slow"` is the quick inner loop.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from helpers import compose_config


@pytest.fixture
def model():
    """A seeded DigitsCNN (stem, block1, block2 with BatchNorm, head): the unit tests' subject."""
    import torch

    from transfer_pipeline.models import DigitsCNN

    torch.manual_seed(0)
    return DigitsCNN(num_classes=5)


@pytest.fixture
def names(model) -> list[str]:
    return [n for n, _ in model.named_parameters()]


@pytest.fixture
def no_tensor_reads(monkeypatch):
    """Any read of source tensor data fails the test (what must work from names and shapes alone)."""
    import transfer_pipeline.sources.read as source_module

    real = source_module.read_source

    def spy(*args, **kwargs):
        weights = real(*args, **kwargs)
        weights.get = lambda name: pytest.fail(f"tensor {name} was read")
        return weights

    monkeypatch.setattr(source_module, "read_source", spy)


@pytest.fixture
def compose():
    return compose_config


@pytest.fixture
def run_pipeline(tmp_path):
    """run_pipeline(*overrides) -> (summary, run_dir): the whole pipeline in-process."""
    from transfer_pipeline.run.lifecycle import run

    def _run(*overrides: str, run_dir: Path | None = None):
        run_dir = run_dir or tmp_path / "run"
        return run(compose_config(*overrides), run_dir), run_dir

    return _run


@pytest.fixture(scope="session")
def torch_home_with_resnet18(tmp_path_factory):
    """A torch hub cache pre-filled with a resnet18 file, as torchvision would have downloaded it.

    The weights are random (nothing can be downloaded here); what is tested is the path:
    weights enum -> cache lookup -> state dict -> plan -> load.
    """
    import torch
    import torchvision

    home = tmp_path_factory.mktemp("torch_home")
    url = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url
    ckpt = home / "hub" / "checkpoints" / url.rsplit("/", 1)[-1]
    ckpt.parent.mkdir(parents=True)
    torch.manual_seed(123)
    torch.save(torchvision.models.resnet18().state_dict(), ckpt)
    old = os.environ.get("TORCH_HOME")
    os.environ["TORCH_HOME"] = str(home)
    yield home, ckpt
    if old is None:
        os.environ.pop("TORCH_HOME", None)
    else:
        os.environ["TORCH_HOME"] = old


def has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


E2E = Path(__file__).resolve().parent / "e2e"


def pytest_collection_modifyitems(config, items):
    for item in items:  # everything under tests/e2e/ is end-to-end: `pytest -m "not slow"` leaves it out
        if E2E in Path(item.fspath).resolve().parents:
            item.add_marker(pytest.mark.slow)
    if any("cuda" in item.keywords for item in items) and not has_cuda():
        skip = pytest.mark.skip(reason="needs a CUDA device; none here")
        for item in items:
            if "cuda" in item.keywords:
                item.add_marker(skip)
