"""Config nodes from keyword arguments (the Python API): the YAML's values, defaults and checks.

`plan_weights(model, src, on_mismatch="skip", expect={...})` is `mapping.on_mismatch: skip`:
`build_node` turns plain values into the schema's dataclasses ('skip' into the enum, a dict into
a nested node), so the same `__post_init__` checks run and an unknown key names the close ones.
"""

from __future__ import annotations

from enum import Enum
from typing import Any, Dict, List

from ..errors import UserError
from . import MappingConfig, SourceConfig


def build_node(cls: type, values: Dict[str, Any], where: str) -> Any:
    """A config dataclass from plain values, as the YAML would give them ('skip' for an enum, a dict
    for a nested node), with the same checks and an error naming an unknown key and the close ones."""
    import dataclasses
    import typing

    from ..errors import did_you_mean

    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in values.items():
        if key not in names:
            raise UserError(f"{where}{key}: unknown key; valid keys: {', '.join(names)}.{did_you_mean(key, names)}")
        kwargs[key] = _coerce(hints[key], value, f"{where}{key}")
    return cls(**kwargs)


def _coerce(hint: Any, value: Any, where: str) -> Any:
    import dataclasses
    import typing

    if value is None:
        return None
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    origin = typing.get_origin(hint)
    if origin is typing.Union and len(args) == 1:
        return _coerce(args[0], value, where)
    if isinstance(hint, type) and issubclass(hint, Enum):
        if isinstance(value, hint):
            return value
        try:
            return hint(getattr(value, "value", value))
        except ValueError:
            raise UserError(f"{where}={value!r}: choose one of {', '.join(m.value for m in hint)}.") from None
    if dataclasses.is_dataclass(hint) and isinstance(value, dict):
        return build_node(hint, value, f"{where}.")
    if origin in (list, List) and args and dataclasses.is_dataclass(args[0]):
        return [build_node(args[0], v, f"{where}[{i}].") if isinstance(v, dict) else v for i, v in enumerate(value)]
    return list(value) if origin in (list, List) and isinstance(value, (tuple, list)) else value


# The keyword arguments of plan_weights / load_weights: these mapping.* and source.* keys.
MAPPING_OPTIONS = ("rules", "on_mismatch", "exclude", "expect", "auto")
SOURCE_OPTIONS = ("key", "strip_prefixes", "add_prefix", "trust_pickle", "allow_nonfinite", "allow_lossy_cast")


def load_options(**options: Any) -> tuple[MappingConfig, SourceConfig]:
    """`mapping.*` and `source.*` keys given as keyword arguments -> the two config nodes (checked)."""
    from ..errors import did_you_mean

    valid = MAPPING_OPTIONS + SOURCE_OPTIONS
    unknown = [k for k in options if k not in valid]
    if unknown:
        raise UserError(f"{unknown[0]}: not an option of the loader; valid: {', '.join(valid)}."
                        f"{did_you_mean(unknown[0], valid)}")
    mapping = build_node(MappingConfig, {k: v for k, v in options.items() if k in MAPPING_OPTIONS}, "mapping.")
    source = build_node(SourceConfig, {k: v for k, v in options.items() if k in SOURCE_OPTIONS}, "source.")
    return mapping, source
