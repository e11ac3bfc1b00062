"""Provenance of a run: the hashes of the files it read, the git state of the code, the package versions.

Hashes of big files are cached by path, size, times and inode, so a re-run does not read a
multi-GB checkpoint again just to say which one it was.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..files import atomic_write_bytes


def sha256_files(paths: Sequence[Path], each: Callable[[Path, str], None] | None = None) -> str:
    """One file: its SHA-256. Several (a shard index and its shards): the SHA-256 of their names and hashes.
    `each(path, sha256)` is told every file's own hash as it is known."""
    hashes = []
    for p in paths:
        hashes.append(sha256_file(p))
        if each is not None:
            each(p, hashes[-1])
    if len(paths) == 1:
        return hashes[0]
    lines = "".join(f"{h}  {p.name}\n" for h, p in zip(hashes, paths))
    return hashlib.sha256(lines.encode()).hexdigest()


class BackgroundHash:
    """`sha256_files` in a thread of its own: hashing a multi-GB checkpoint (hashlib lets go of the GIL)
    overlaps with loading, checking and writing it instead of adding to them.

    `hub`: a hub source's record (sources/hub.py, summary.json's `hub_source`): each of its `files`
    ({name in the repo: None}) gets its SHA-256 as that file is hashed (only values change, never the keys,
    so the summary can be written meanwhile)."""

    def __init__(self, paths: Sequence[Path], hub: dict[str, Any] | None = None) -> None:
        import threading

        self.paths = [Path(p) for p in paths]
        self._value: str | None = None
        self._error: BaseException | None = None
        self._hub = hub
        self._thread = threading.Thread(target=self._run, args=(list(paths),), name="sha256", daemon=True)
        self._thread.start()

    def _run(self, paths: list[Path]) -> None:
        try:
            self._value = sha256_files(paths, self._fill_hub if self._hub else None)
        except BaseException as e:  # handed to whoever asks for the result
            self._error = e

    def _fill_hub(self, path: Path, digest: str) -> None:
        assert self._hub is not None
        files, snapshot = self._hub.get("files"), Path(self._hub.get("snapshot", ""))
        real = Path(path).resolve()
        for name in files or {}:
            if (snapshot / name).resolve() == real:
                files[name] = digest

    def done(self) -> bool:
        return not self._thread.is_alive()

    @property
    def failed(self) -> bool:
        return self._error is not None

    def result(self) -> str:
        self._thread.join()
        if self._error is not None:
            raise self._error
        assert self._value is not None
        return self._value


def early_hash(path: str | None) -> BackgroundHash | None:
    """The hash of `source.path` started before torch is imported (a new checkpoint's SHA-256 then overlaps the
    imports; the plan keeps it if the source it reads is this one file): a plain local file only, else None."""
    if not path or "://" in path:  # pkg:// (imports a package), hf:// and timm:// (resolved by the plan)
        return None
    p = Path(path).expanduser()
    p = p if p.is_absolute() else Path.cwd() / p
    try:
        if not p.is_file() or p.stat().st_size < CACHED_FROM:
            return None  # missing (the plan says so), a folder of shards, or small enough to hash in a moment
    except OSError:
        return None
    return BackgroundHash([p])


CACHED_FROM = 16 << 20  # smaller files hash faster than the cache is read


def hash_cache_path() -> Path:
    """`$XDG_CACHE_HOME/transfer_pipeline/sha256.json` (default ~/.cache/...)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "transfer_pipeline" / "sha256.json"


def _file_key(path: Path) -> tuple[str, str]:
    """Where the file is, and what says it is unchanged: size, mtime and ctime (which no tool sets back), inode."""
    st = path.stat()
    return str(path.resolve()), f"{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}:{st.st_dev}:{st.st_ino}"


def _read_cache() -> dict[str, Any]:
    try:
        data = json.loads(hash_cache_path().read_text())
    except (OSError, ValueError):
        return {}  # none yet, unreadable or corrupt: a cache, never an error
    return data if isinstance(data, dict) else {}


def sha256_file(path: Path) -> str:
    """The file's SHA-256; for a big file, cached by path, size, times and inode (a re-run skips the read)."""
    path = Path(path)
    cacheable = path.stat().st_size >= CACHED_FROM
    if cacheable:
        where, stamp = _file_key(path)
        cache = _read_cache()
        hit = cache.get(where)
        if isinstance(hit, dict) and hit.get("stamp") == stamp and isinstance(hit.get("sha256"), str):
            return hit["sha256"]
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            h.update(chunk)
    digest = h.hexdigest()
    if cacheable:
        cache[where] = {"stamp": stamp, "sha256": digest}  # the cache as read before the (long) hash
        try:
            atomic_write_bytes(hash_cache_path(), json.dumps(cache, indent=1).encode())
        except OSError:
            pass  # a read-only home: the hash is still right, the next run reads the file again
    return digest


def git_commit(cwd: Path | None = None) -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def git_state(folder: Path) -> dict[str, Any] | None:
    """The git commit of the repository holding `folder`, and whether its tracked files differ from it
    (None where `folder` is in no repository, or git is missing)."""
    def git(*args: str) -> subprocess.CompletedProcess | None:
        try:
            return subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True, timeout=5)
        except (OSError, subprocess.SubprocessError):
            return None

    head = git("rev-parse", "HEAD")
    if head is None or head.returncode != 0 or not head.stdout.strip():
        return None
    status = git("status", "--porcelain", "--untracked-files=no")
    dirty = None if status is None or status.returncode != 0 else bool(status.stdout.strip())
    return {"path": str(folder), "commit": head.stdout.strip(), "dirty": dirty}


def versions() -> dict[str, str]:
    """Installed versions (package metadata: no heavy imports)."""
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": platform.python_version()}
    for name in ("transfer_pipeline", "torch", "torchvision", "safetensors", "hydra-core", "omegaconf"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            pass
    return found
