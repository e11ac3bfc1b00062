"""A pickled nn.Module (`source.trust_pickle=true`) whose class lives in a person's module named like a config
group (`model.py`), with a --config-dir that has a `model/` group folder (issue 24).

run.py puts a --config-dir on sys.path (code beside the configs), so `my_conf/model/` imports as an empty
namespace package named `model` wherever the person's own `model.py` is not on the path. Unpickling then
failed with "Can't get attribute 'Net' on <module 'model' (namespace)>", pointing nowhere; and under
`hydra.job.chdir=true` the folder the run started in was not on the path at all (run.py added the run
folder it had moved to). A folder without code never satisfies a pickled class's module now.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from helpers import read_json, run_cli

pytestmark = pytest.mark.slow

MODEL_PY = textwrap.dedent("""\
    from torch import nn


    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
            self.head = nn.Linear(8, 5)

        def forward(self, x):
            return self.head(self.stem(x))
""")


def project(root: Path, code: Path) -> None:
    """`code/model.py` with class Net, `code/net.pt` = torch.save(Net()) made from there, and `root/my_conf` with a
    `model/` group folder whose file builds model.Net."""
    code.mkdir(parents=True, exist_ok=True)
    (code / "model.py").write_text(MODEL_PY)
    subprocess.run([sys.executable, "-c", "import torch; from model import Net; torch.save(Net(), 'net.pt')"],
                   cwd=code, check=True)
    (root / "my_conf" / "model").mkdir(parents=True)
    (root / "my_conf" / "model" / "net.yaml").write_text("_target_: model.Net\n")


GENERIC = ("source.trust_pickle=true", "mapping=default", "freeze=none", "mode=plan")


def test_the_persons_model_module_is_found_beside_a_config_group_named_model(tmp_path):
    project(tmp_path, tmp_path)
    out = run_cli("--config-dir", "my_conf", "model=net", "source.path=net.pt", *GENERIC,
                  f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    report = read_json(tmp_path / "run" / "load_report.json")
    assert report["missing"] == [] and len(report["loaded"]) == 4


def test_the_folder_the_run_starts_in_stays_on_the_path_under_hydra_job_chdir(tmp_path):
    project(tmp_path, tmp_path)
    out = run_cli("--config-dir", "my_conf", "model=net", f"source.path={tmp_path / 'net.pt'}", *GENERIC,
                  "hydra.job.chdir=true", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    assert read_json(tmp_path / "run" / "load_report.json")["missing"] == []


def test_a_config_group_folder_never_stands_in_for_the_persons_module(tmp_path):
    project(tmp_path, tmp_path / "code")  # model.py not on the path: only my_conf/model/ is named `model`
    out = run_cli("--config-dir", "my_conf", f"source.path={tmp_path / 'code' / 'net.pt'}", *GENERIC,
                  f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert out.returncode == 2, out.stdout + out.stderr
    assert "Traceback" not in out.stdout + out.stderr and "NamespaceLoader" not in out.stdout
    assert "no module 'model' is on Python's path" in out.stdout and str(tmp_path / "my_conf" / "model") in out.stdout
    assert "PYTHONPATH" in out.stdout
    # the fix the message gives
    out = run_cli("--config-dir", "my_conf", "model=net", f"source.path={tmp_path / 'code' / 'net.pt'}", *GENERIC,
                  f"hydra.run.dir={tmp_path / 'run2'}", cwd=tmp_path, env={"PYTHONPATH": str(tmp_path / "code")})
    assert out.returncode == 0, out.stdout + out.stderr


def test_trusted_unpickling_refuses_a_namespace_folder_as_a_classes_module(tmp_path, monkeypatch):
    import torch

    from transfer_pipeline.errors import UserError
    from transfer_pipeline.sources.safe_load import torch_load

    project(tmp_path, tmp_path / "code")
    monkeypatch.syspath_prepend(str(tmp_path / "my_conf"))
    assert "model" not in sys.modules
    try:
        with pytest.raises(UserError, match=r"class model\.Net, and no module 'model' is on Python's path"):
            torch_load(tmp_path / "code" / "net.pt", trust_pickle=True)
        import model  # noqa: F401 - now a namespace package in sys.modules: refused all the same

        with pytest.raises(UserError, match=r"'model' is only the folder .*my_conf.model, which holds no Python code"):
            torch_load(tmp_path / "code" / "net.pt", trust_pickle=True)
        sys.modules.pop("model")
        monkeypatch.syspath_prepend(str(tmp_path / "code"))
        obj, _ = torch_load(tmp_path / "code" / "net.pt", trust_pickle=True)
        assert type(obj).__name__ == "Net" and isinstance(obj, torch.nn.Module)
    finally:
        sys.modules.pop("model", None)
