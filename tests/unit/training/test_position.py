"""checkpoint.structure_problem knows the loop's Position: a field added there must be known to the check."""

from __future__ import annotations

import dataclasses

from transfer_pipeline.training.checkpoint import POSITION_KEYS, structure_problem
from transfer_pipeline.training.position import Position


def test_the_resume_check_knows_every_field_of_position():
    assert {f.name for f in dataclasses.fields(Position)} == POSITION_KEYS


def test_a_fresh_position_passes_the_check():
    state = {"format": 1, "model": {}, "optimizer": {}, "history": [], "best": {}, "config": {}, "fired": [],
             "samples": 0, "seconds": 0.0, "position": dataclasses.asdict(Position())}
    assert structure_problem(state) is None
    state["position"]["epoch"] = True  # a bool is not a count
    assert "position.epoch is True" in structure_problem(state)
