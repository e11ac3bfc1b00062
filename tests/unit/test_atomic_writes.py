"""files.atomic_path: the temporary name it gives, what is left after a write that ends well or raises."""

import itertools
import stat

import pytest

from transfer_pipeline import files
from transfer_pipeline.run.folder import remove_temp_files


def test_the_temporary_file_is_left_to_the_writer_to_create_and_the_clean_up_knows_its_name(tmp_path):
    # created empty beforehand, a file is truncated by the writer's open, and ext4 / XFS then flush all of it
    # at close: a 1 GiB model.safetensors took twice as long (benchmarks/bench_export.py)
    target = tmp_path / "model.safetensors"
    with files.atomic_path(target) as tmp:
        assert not tmp.exists() and tmp.parent == tmp_path
        tmp.write_bytes(b"weights")
        assert remove_temp_files(tmp_path) == 1  # what a killed write leaves is found by the next run's clean-up
        tmp.write_bytes(b"weights")
    assert target.read_bytes() == b"weights"
    assert stat.S_IMODE(target.stat().st_mode) == files.FILE_MODE
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]


def test_a_write_that_raises_leaves_the_old_file_and_no_temporary_one(tmp_path):
    target = tmp_path / "summary.json"
    target.write_text("before")
    with pytest.raises(KeyboardInterrupt):
        with files.atomic_path(target) as tmp:
            tmp.write_text("half")
            raise KeyboardInterrupt
    assert target.read_text() == "before"
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_a_name_already_taken_even_by_a_dangling_link_is_never_given(tmp_path, monkeypatch):
    letters = itertools.cycle("aaaaaaaa" "bbbbbbbb" "cccccccc")
    monkeypatch.setattr(files.secrets, "choice", lambda chars: next(letters))
    target = tmp_path / "metrics.csv"
    (tmp_path / ".metrics.csv.aaaaaaaa.tmp").write_text("another write's")
    (tmp_path / ".metrics.csv.bbbbbbbb.tmp").symlink_to(tmp_path / "nowhere")
    assert files.fresh_temp_name(target) == tmp_path / ".metrics.csv.cccccccc.tmp"
    assert (tmp_path / ".metrics.csv.aaaaaaaa.tmp").read_text() == "another write's"


def test_no_free_name_is_an_error_not_an_endless_loop(tmp_path, monkeypatch):
    monkeypatch.setattr(files.secrets, "choice", lambda chars: "a")
    (tmp_path / ".x.aaaaaaaa.tmp").write_text("taken")
    with pytest.raises(FileExistsError, match="no free temporary name"):
        files.fresh_temp_name(tmp_path / "x")
