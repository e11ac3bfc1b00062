"""A disk that fills up during a run: the run ends `failed` with "disk full" (not a traceback, not a
summary.json stuck at `running`), thanks to the room reserved for the last record at the start."""

from __future__ import annotations

import errno
from contextlib import contextmanager

import pytest
from helpers import read_json

from transfer_pipeline import files
from transfer_pipeline.errors import UserError
from transfer_pipeline.run.folder import RESERVE


@pytest.fixture
def full_disk(monkeypatch):
    """After `after` writes, the disk is full: every write fails with ENOSPC until the run gives back
    the room it reserved (deleting the reserve file frees it, as on a real disk)."""
    real = files.atomic_path
    state = {"writes": 0, "after": 10**9, "run_dir": None}

    @contextmanager
    def atomic_path(path):
        state["writes"] += 1
        run_dir = state["run_dir"]
        if state["writes"] > state["after"] and run_dir is not None and (run_dir / RESERVE).exists():
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        with real(path) as tmp:
            yield tmp

    monkeypatch.setattr(files, "atomic_path", atomic_path)

    def arm(run_dir, after):
        state.update(run_dir=run_dir, after=after)

    return arm


def test_a_disk_that_fills_during_training_ends_failed_with_disk_full(run_pipeline, tmp_path, full_disk):
    run_dir = tmp_path / "run"
    full_disk(run_dir, after=4)  # summary, load report, a few epochs' files: then full
    with pytest.raises(UserError, match="disk full: No space left on device while writing .*Free space on the disk"):
        run_pipeline("trainer.epochs=6", run_dir=run_dir)
    summary = read_json(run_dir / "summary.json")
    assert summary["status"] == "failed" and summary["error_type"] == "DiskFull" and summary["ended_at"]
    assert not (run_dir / RESERVE).exists()


def test_the_reserve_is_given_back_after_a_run(run_pipeline, tmp_path):
    summary, run_dir = run_pipeline("mode=plan")
    assert summary["status"] == "planned" and not (run_dir / RESERVE).exists()
