"""Weights-only loading of torch files that tolerates hyper-parameters and refuses code.

`torch.load(weights_only=True)` refuses any pickled global it does not know, and checkpoints
commonly carry inert metadata next to the weights (OmegaConf configs, Lightning's AttributeDict,
argparse.Namespace, numpy scalars). This module registers an inert stand-in for each such
class, never importing the real one, so those checkpoints load without running their code;
anything else pickled (a whole nn.Module, custom classes) is refused unless
`source.trust_pickle=true`.
"""

from __future__ import annotations

import pickle
import warnings
import re
from collections import OrderedDict, defaultdict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import UserError


class Opaque:
    """Stand-in for a metadata object a checkpoint carries (OmegaConf configs, numpy scalars ...).

    Registered under the real class's name for `weights_only` loading, so the checkpoint reads
    without running any code of that class; it only keeps the arguments and state it was given.
    """

    qualname = "?"
    needs_trust = False  # a class only `inert` loading stands in for (a run refuses it without trust_pickle)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args, self.kwargs = args, kwargs

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __repr__(self) -> str:
        return f"<{self.qualname}: not loaded>"


class PlainDict:
    """Stand-in for dict subclasses (Lightning's AttributeDict): they unpickle as a plain dict."""

    def __new__(cls, *args: Any, **kwargs: Any) -> dict:  # type: ignore[misc]
        return dict(args[0]) if args and isinstance(args[0], Mapping) else {}


# plain builtins that are harmless to call; metadata classes replaced by a stand-in (never imported)
SAFE_REAL = {"builtins.dict": dict, "builtins.list": list, "builtins.tuple": tuple, "builtins.set": set,
             "builtins.frozenset": frozenset, "builtins.int": int, "builtins.float": float, "builtins.str": str,
             "builtins.bool": bool, "builtins.bytes": bytes, "builtins.complex": complex, "builtins.slice": slice,
             "collections.OrderedDict": OrderedDict, "collections.defaultdict": defaultdict}
SAFE_DICTS = ("lightning_fabric.utilities.data.AttributeDict", "lightning.fabric.utilities.data.AttributeDict",
              "pytorch_lightning.utilities.parsing.AttributeDict", "lightning.pytorch.utilities.parsing.AttributeDict")
SAFE_OPAQUE = ("omegaconf.", "typing.", "argparse.Namespace", "pathlib.", "numpy.", "datetime.")
_GLOBAL_RE = re.compile(r"GLOBAL ([\w.]+)")


def _safe_global(name: str, inert: bool = False) -> Any:
    """The object to register for a global the weights-only unpickler refused, or None if unsafe
    (`inert`: an inert stand-in that says it needs trust, for any other class)."""
    if name in SAFE_REAL:
        return SAFE_REAL[name]
    if name in SAFE_DICTS:
        return PlainDict
    if name.startswith(SAFE_OPAQUE) or inert:
        attrs = {"qualname": name, "needs_trust": not name.startswith(SAFE_OPAQUE)}
        return type(name.rsplit(".", 1)[-1], (Opaque,), attrs)
    return None


def _unreadable(path: Path, e: BaseException, zipped: bool) -> UserError:
    import zipfile

    if zipped and not zipfile.is_zipfile(path):
        return UserError(f"source.path: {path} is an incomplete zip archive (its end is missing): the file is "
                         "truncated. Re-download or re-save it.")
    # the unpickler's own text can quote the file's bytes ("invalid load key, '\x0e'"): never shown
    detail = "not a valid pickle" if isinstance(e, (pickle.UnpicklingError, UnicodeDecodeError)) else \
        (str(e).strip().splitlines()[0] if str(e).strip() else "no detail")
    return UserError(f"source.path: cannot read {path} as a PyTorch checkpoint ({type(e).__name__}: {detail}). "
                     "Is the file truncated or corrupt? Re-download or re-save it.")


def torch_load(path: Path, trust_pickle: bool, zipped: bool = True, inert: bool = False) -> tuple[Any, list[str]]:
    """`torch.load(weights_only=True, mmap=True)` plus inert stand-ins for known metadata classes.

    Returns the loaded object and notes for the plan. Anything pickled that is not a tensor,
    a plain container or known metadata is refused unless `trust_pickle`. `zipped`: the file
    starts with the zip signature (torch.save's zip format, `source.sniff` says 'torch').
    `inert` (inspect only, to show what a file holds): every other class gets an inert stand-in too
    (`Opaque` with `needs_trust`), so nothing of it runs and the rest of the file still reads.
    """
    import torch

    # a zip checkpoint lists its pickled globals without unpickling: register the safe ones up
    # front and load once; the loop below finds the rest (legacy files) one refusal at a time
    known = _checkpoint_globals(path, zipped)
    registered: list[tuple[Any, str]] = [(safe, n) for n in known if (safe := _safe_global(n, inert)) is not None]
    notes: list[str] = []
    if any(safe not in SAFE_REAL.values() for safe, _ in registered):
        notes.append("metadata objects (e.g. hyper-parameters) read as inert placeholders, not unpickled")
    mmap = zipped
    for _ in range(64):  # one more safe global per round; checkpoints carry a handful
        try:
            with torch.serialization.safe_globals(registered), warnings.catch_warnings():
                # torch notes pickle protocols above 2 on every load; a failure is reported here anyway
                warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
                return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap), notes
        except pickle.UnpicklingError as e:
            msg = str(e)
            if "weights_only" not in msg and "Weights only" not in msg and "GLOBAL" not in msg:
                raise _unreadable(path, e, zipped) from None
            m = _GLOBAL_RE.search(msg)
            name = m.group(1) if m else None
            if name is None and not known:  # refused, but for no class: the data is not a valid pickle
                raise _unreadable(path, e, zipped) from None
            if name is not None and "." not in name:
                name = f"builtins.{name}"  # torch prints builtins without their module
            safe = _safe_global(name, inert) if name else None
            if safe is None:
                break
            registered.append((safe, name))
            if safe not in SAFE_REAL.values() and not notes:
                notes.append("metadata objects (e.g. hyper-parameters) read as inert placeholders, not unpickled")
        except (RuntimeError, EOFError, OSError, ValueError, KeyError, IndexError) as e:
            raise _unreadable(path, e, zipped) from None
    else:
        raise UserError(f"source.path: {path} holds too many pickled objects to check; re-save it as a state dict.")
    # the model's own classes first: they say more than torch.nn's building blocks
    unsafe = sorted((n for n in known if _safe_global(n) is None), key=lambda n: (n.startswith("torch."), n))
    unsafe = unsafe or ([name] if name else [])
    if not trust_pickle:
        shown = ", ".join(unsafe[:5]) + (f" (+{len(unsafe) - 5} more)" if len(unsafe) > 5 else "")
        raise UserError(f"source.path: {path} holds pickled Python objects ({shown or 'unknown classes'}: "
                        "a full nn.Module or custom classes), which can run arbitrary code when loaded, so it was "
                        "refused (torch.load weights_only=True). If you trust this file, set "
                        "source.trust_pickle=true; better, re-save it as a state dict or safetensors.")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False, mmap=mmap, pickle_module=_code_only_pickle())
    except NotCode as e:
        raise UserError(f"source.path: {path} is a pickled object of class {e.module}.{e.name}, and no module "
                        f"{e.module!r} is on Python's path here: {e.module!r} is only the folder "
                        f"{', '.join(e.locations)}, which holds no Python code (a config group folder, when it lies "
                        f"beside your configs). {_WHERE_CODE}") from None
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as e:
        raise _unreadable(path, e, zipped) from None
    except (AttributeError, ModuleNotFoundError, ImportError) as e:
        raise UserError(f"source.path: {path} is a pickled object whose code is not importable here ({e}). "
                        f"{_WHERE_CODE}") from None
    return obj, notes + ["loaded with source.trust_pickle=true (full unpickling)"]


_WHERE_CODE = ("Install the package that defines it, or run from the folder that holds its module (the folder "
               "run.py starts in is on Python's path), or add that folder to PYTHONPATH; better, re-save the file "
               "as a state dict.")


class NotCode(ImportError):
    """A pickled class whose module is only a folder without code (a namespace package)."""

    def __init__(self, module: str, name: str, locations: list[str]) -> None:
        super().__init__(f"module {module!r} of {module}.{name} is only the folder {', '.join(locations)}")
        self.module, self.name, self.locations = module, name, locations


def _namespace_folders(module: str) -> list[str] | None:
    """The folders of `module` when Python would import it as a namespace package (no code), else None."""
    import importlib.util
    import sys

    loaded = sys.modules.get(module)
    try:
        spec = loaded.__spec__ if loaded is not None else importlib.util.find_spec(module)
    except (ImportError, ValueError, AttributeError):
        return None  # unpickling reports it as Python would
    if spec is None or spec.origin not in (None, "namespace") or spec.submodule_search_locations is None:
        return None
    return [str(p) for p in spec.submodule_search_locations]


def _code_only_pickle() -> Any:
    """`pickle` for trusted loading, with one refusal: a pickled class's module must be code. A folder without
    `__init__.py` on sys.path imports as an empty namespace package of its name, and run.py puts a --config-dir on
    sys.path (for code beside the configs), so its group folders `model/`, `data/` ... would stand in for a
    person's own `model` module wherever that one is not on the path, and the load would fail with "Can't get
    attribute 'Net' on <module 'model' (namespace)>". Such a folder never satisfies a pickled class here."""
    import types

    class Unpickler(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            folders = _namespace_folders(module)
            if folders is not None:
                raise NotCode(module, name, folders)
            return super().find_class(module, name)

    code_only = types.ModuleType("pickle")
    code_only.__dict__.update(vars(pickle))
    code_only.Unpickler = Unpickler
    return code_only


def _checkpoint_globals(path: Path, zipped: bool) -> list[str]:
    """The pickled globals a zip checkpoint refers to, read without unpickling ([] when unknown)."""
    import torch

    lister = getattr(torch.serialization, "get_unsafe_globals_in_checkpoint", None)  # torch >= 2.5
    if not zipped or lister is None:
        return []
    try:
        return list(lister(path))
    except Exception:  # noqa: BLE001 - only a shortcut: the load below finds them one by one otherwise
        return []
