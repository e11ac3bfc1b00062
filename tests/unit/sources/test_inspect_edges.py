"""`python -m transfer_pipeline.inspect` as people pipe it, and pkg:// paths whose package fails to import."""

from __future__ import annotations

import subprocess
import sys

import pytest

from transfer_pipeline.errors import UserError
from transfer_pipeline.files import resolve_path


def test_inspect_into_a_pipe_closed_early_is_quiet(tmp_path):
    import torch
    from safetensors.torch import save_file

    many = tmp_path / "many.safetensors"  # a listing far larger than a pipe's buffer
    save_file({f"encoder.layer_{i}.block_{j}.weight": torch.zeros(1) for i in range(100) for j in range(40)}, many)
    cmd = f"'{sys.executable}' -m transfer_pipeline.inspect '{many}' --depth 3 --max-rows 100000 | head -1"
    out = subprocess.run(["bash", "-c", f"set -o pipefail; {cmd}"], capture_output=True, text=True, timeout=120)
    assert out.stdout.startswith("Checkpoint:") and out.stderr == "", out.stderr
    assert out.returncode == 0


def test_a_pkg_path_whose_package_fails_to_import_says_why(tmp_path, monkeypatch):
    (tmp_path / "brokenpkg").mkdir()
    (tmp_path / "brokenpkg" / "__init__.py").write_text("import not_a_module_xyz\n")
    (tmp_path / "raisingpkg").mkdir()
    (tmp_path / "raisingpkg" / "__init__.py").write_text("raise RuntimeError('no GPU driver')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(UserError, match="installed but fails to import: No module named 'not_a_module_xyz'"):
        resolve_path("pkg://brokenpkg/w.pt")
    with pytest.raises(UserError, match=r"fails to import \(RuntimeError: no GPU driver\)"):
        resolve_path("pkg://raisingpkg/w.pt")
    with pytest.raises(UserError, match="'nopkg_abc', which is not installed"):
        resolve_path("pkg://nopkg_abc/w.pt")
