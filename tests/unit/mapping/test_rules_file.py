"""mapping.rules_file is a person's YAML: read with limits (a FIFO, a huge file, aliases, bad bytes)."""

from __future__ import annotations

import os
import time

import pytest

from transfer_pipeline.errors import UserError
from transfer_pipeline.mapping.suggest import read_rules_file

LAUGHS = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{c}: &{c} [{', '.join([f'*{p}'] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi"))


def test_a_fifo_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "rules.yaml"
    os.mkfifo(fifo)
    with pytest.raises(UserError, match=r"mapping.rules_file: .* is a FIFO"):
        read_rules_file(fifo)


def test_billion_laughs_is_refused_at_once(tmp_path):
    path = tmp_path / "rules.yaml"
    path.write_text(LAUGHS)
    t0 = time.perf_counter()
    with pytest.raises(UserError, match="uses YAML aliases"):
        read_rules_file(path)
    assert time.perf_counter() - t0 < 5


@pytest.mark.parametrize(("content", "message"), [(b"rules: [\n", "is not valid YAML at line 2"),
                                                  (b"rules:\x00\n", "NUL bytes"), (b"\xff\xfe", "not UTF-8"),
                                                  (b"", "holds no list of rules")])
def test_bad_files_name_the_key_and_the_problem(tmp_path, content, message):
    path = tmp_path / "rules.yaml"
    path.write_bytes(content)
    with pytest.raises(UserError, match=f"mapping.rules_file: .*{message}"):
        read_rules_file(path)


def test_a_huge_file_is_refused_before_it_is_read(tmp_path):
    path = tmp_path / "rules.yaml"
    with open(path, "wb") as f:
        f.truncate(64 << 20)  # sparse: costs no disk
    with pytest.raises(UserError, match="over the"):
        read_rules_file(path)


def test_a_suggested_rules_file_still_reads(tmp_path):
    path = tmp_path / "rules.yaml"
    path.write_text("mapping:\n  rules:\n  - from: 'features\\.(\\d+)\\.(.*)'\n    to: 'stem.\\1.\\2'\n")
    assert read_rules_file(path) == [{"from": "features\\.(\\d+)\\.(.*)", "to": "stem.\\1.\\2"}]
