"""Declarative transfer learning: config -> partial load -> freeze -> per-group LRs -> train.

The Python API (see api.py and README's "From Python"): `plan_weights`, `load_weights`, `freeze`,
`param_groups`, and `UserError`. They are imported on first use, so `import transfer_pipeline`
(and the schema, which every `python run.py` imports) stays free of torch.
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
