"""Declarative transfer learning: config -> partial load -> freeze -> per-group LRs -> train.

The Python API (see api.py and docs/python-api.md): `plan_weights`, `load_weights`, `freeze`,
`param_groups`, and `UserError`. They are imported on first use, so `import transfer_pipeline`
(and the schema, which every `python run.py` imports) stays free of torch.

The tree follows a run: schema/ (config) -> sources/ -> mapping/ (plan, load) -> tuning/ -> data/
-> training/ -> run/ (a run's life and its folder), with hydra_edge/ at the edge and models/ and
assets/ shipped alongside. The modules directly here are shared by several stages: api, build
(instantiate a `_target_`), errors, files (paths in, atomic writes out), model_io (a model's
inputs and outputs), names, patterns and selectors (the selector language), tables,
tensor_meta, inspect (`python -m transfer_pipeline.inspect`). Each folder's __init__ says what
lives there and what it may import; tests/unit/test_layering.py holds every import to that.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["plan_weights", "load_weights", "freeze", "param_groups", "LoadReport", "UserError"]


def __getattr__(name: str) -> Any:
    if name == "UserError":
        from .errors import UserError

        return UserError
    if name == "LoadReport":
        from .mapping.report import LoadReport

        return LoadReport
    if name in __all__:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'transfer_pipeline' has no attribute {name!r}")
