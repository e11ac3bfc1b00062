"""run/folder.py: which folders a run may use, and what its clean-up may remove (no run needed)."""

from __future__ import annotations

import json

import pytest

from transfer_pipeline.errors import UserError
from transfer_pipeline.run.folder import (MARKER, check_ours, check_source_outside, claim, release,
                                          remove_temp_files)


@pytest.fixture
def claimed():
    held = []

    def _claim(path, resume=False):
        claim(path, resume)
        held.append(path)

    yield _claim
    for path in held:
        release(path)


def test_a_new_folder_is_made_and_marked(tmp_path, claimed):
    claimed(tmp_path / "new" / "run")
    assert (tmp_path / "new" / "run" / MARKER).read_text().startswith("run ")


def test_an_empty_folder_is_taken(tmp_path, claimed):
    (tmp_path / "empty").mkdir()
    claimed(tmp_path / "empty")
    assert (tmp_path / "empty" / MARKER).is_file()


@pytest.mark.parametrize("content", [["notes.txt"], ["model.safetensors", "metrics.csv"], [".hidden"], ["sub/"]])
def test_a_folder_with_anything_of_someone_else_is_refused_untouched(tmp_path, content):
    folder = tmp_path / "theirs"
    folder.mkdir()
    for name in content:
        (folder / name.rstrip("/")).mkdir() if name.endswith("/") else (folder / name).write_text("theirs")
    listing = sorted(p.name for p in folder.iterdir())
    with pytest.raises(UserError, match=r"hydra.run.dir: .* is a folder this tool did not make \(it holds"):
        claim(folder)
    assert sorted(p.name for p in folder.iterdir()) == listing


def test_a_file_is_not_a_run_folder(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(UserError, match="exists and is not a folder"):
        claim(tmp_path / "f")
    assert (tmp_path / "f").read_text() == "x"


def test_the_listing_is_shortened_for_a_big_folder(tmp_path):
    for i in range(50):
        (tmp_path / f"f{i:02d}").write_text("x")
    with pytest.raises(UserError, match=r"and 44 more"):
        check_ours(tmp_path, "hydra.run.dir")


def test_a_run_folder_of_an_older_version_is_still_ours(tmp_path, claimed):
    (tmp_path / ".hydra").mkdir()
    (tmp_path / "summary.json").write_text(json.dumps({"status": "failed", "started_at": "x", "error": "e"}))
    (tmp_path / "run.log").write_text("")
    claimed(tmp_path)  # a failed run that trained nothing: replaced
    assert not (tmp_path / "summary.json").exists()


def test_a_summary_json_alone_does_not_make_a_folder_ours(tmp_path):
    (tmp_path / "summary.json").write_text(json.dumps({"status": "completed", "started_at": "x"}))
    with pytest.raises(UserError, match="did not make"):
        claim(tmp_path)


def test_a_sweep_job_folder_that_hydra_wrote_first_is_ours(tmp_path, claimed):
    (tmp_path / MARKER).write_text("sweep folder of transfer_pipeline\n")
    job = tmp_path / "0"
    (job / ".hydra").mkdir(parents=True)
    (job / "run.log").write_text("")
    claimed(job)
    outside = tmp_path.parent / (tmp_path.name + "_not_a_sweep") / "0"
    (outside / ".hydra").mkdir(parents=True)
    with pytest.raises(UserError, match="did not make"):
        claim(outside)


def test_run_and_sweep_folders_are_not_interchangeable(tmp_path):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / MARKER).write_text("run folder of transfer_pipeline\n")
    with pytest.raises(UserError, match="hydra.sweep.dir: .* is a run folder of this tool, not a sweep folder"):
        check_ours(tmp_path / "r", "hydra.sweep.dir", "sweep")
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / MARKER).write_text("sweep folder of transfer_pipeline\n")
    with pytest.raises(UserError, match="hydra.run.dir: .* is a sweep folder of this tool, not a run folder"):
        check_ours(tmp_path / "s", "hydra.run.dir", "run")


def test_clean_up_removes_only_this_tools_temp_files_and_never_deeper(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "data" / "deep").mkdir(parents=True)
    ours = [tmp_path / ".metrics.csv.a1b2c3d_.tmp", tmp_path / "checkpoints" / ".last.pt.zz99yy88.tmp",
            tmp_path / ".predictions.csv.31337.tmp"]
    theirs = [tmp_path / "data" / ".x.abcdefgh.tmp", tmp_path / "data" / "deep" / ".y.abcdefgh.tmp",
              tmp_path / ".editor-swap.tmp", tmp_path / "notes.tmp", tmp_path / ".a.ABCDEFGH.tmp"]
    for p in ours + theirs:
        p.write_text("x")
    link_target = tmp_path / "data" / ".z.abcdefgh.tmp"
    link_target.write_text("x")
    (tmp_path / ".link.abcdefgh.tmp").symlink_to(link_target)
    assert remove_temp_files(tmp_path) == len(ours)
    assert not any(p.exists() for p in ours)
    assert all(p.exists() for p in theirs) and link_target.exists()


def test_the_source_can_never_be_an_output(tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    with pytest.raises(UserError, match="source.path: .*best.safetensors is inside the run folder"):
        check_source_outside([run_dir / "checkpoints" / "best.safetensors"], run_dir)
    check_source_outside([tmp_path / "elsewhere.safetensors"], run_dir)  # beside it is fine
    (tmp_path / "alias").symlink_to(run_dir)
    with pytest.raises(UserError, match="inside the run folder"):
        check_source_outside([tmp_path / "alias" / "model.safetensors"], run_dir)
