"""Paths in configs: plain filesystem paths, or `pkg://package/relative/path` for files shipped in a package."""

from __future__ import annotations

from pathlib import Path

from .errors import UserError


def resolve_path(path: str, where: str = "source.path") -> Path:
    """A filesystem path (`~` expanded), or the file `pkg://package/rel` names inside an installed package."""
    if path.startswith("pkg://"):
        from importlib import resources

        package, _, rel = path[len("pkg://"):].partition("/")
        try:
            return Path(str(resources.files(package).joinpath(rel)))
        except ModuleNotFoundError:
            raise UserError(f"{where}: {path!r} names package {package!r}, which is not installed.") from None
    return Path(path).expanduser()
