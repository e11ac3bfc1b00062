"""Run-folder files, written atomically (temporary name, then rename) so nothing is half-written."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import platform
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


FILE_MODE = 0o666 & ~_umask()  # what open() would give: mkstemp's files are 0600


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to `.name.XXXX.tmp` beside `path`, then rename: a reader sees the old file or the new, never half.

    A write killed half-way leaves only the temporary file, which the next run in the folder removes.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), FILE_MODE)
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, default=str) + "\n").encode())


def write_csv(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    """All rows, with the union of their columns (a column first seen later is added at the end)."""
    columns: dict[str, None] = {}
    for row in rows:
        columns.update(dict.fromkeys(row))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_bytes(path, buf.getvalue().encode())


def save_weights(path: Path, state_dict: Mapping[str, Any], metadata: Mapping[str, str] | None = None) -> None:
    """A state dict (target names) as safetensors, streamed to a temporary file and renamed.

    Tensors are written from where they are (no copy of the whole model in memory, which a
    memory-mapped source would turn into a second full read); only a tensor whose memory another
    name already uses (tied weights) or that is not contiguous on the CPU is copied, since the
    format stores each name on its own.
    """
    from safetensors.torch import save_file

    seen: set[tuple[int, int]] = set()
    tensors = {}
    for name, value in state_dict.items():
        t = value.detach()
        if t.device.type != "cpu" or not t.is_contiguous():
            t = t.to("cpu").contiguous()
        key = (t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())
        if key in seen and t.numel():
            t = t.clone()
        seen.add((t.untyped_storage().data_ptr(), t.untyped_storage().nbytes()))
        tensors[name] = t
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=dict(metadata or {}))
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def sha256_files(paths: Sequence[Path]) -> str:
    """One file: its SHA-256. Several (a shard index and its shards): the SHA-256 of their names and hashes."""
    if len(paths) == 1:
        return sha256_file(paths[0])
    lines = "".join(f"{sha256_file(p)}  {p.name}\n" for p in paths)
    return hashlib.sha256(lines.encode()).hexdigest()


class BackgroundHash:
    """`sha256_files` in a thread of its own: hashing a multi-GB checkpoint (hashlib lets go of the GIL)
    overlaps with loading, checking and writing it instead of adding to them."""

    def __init__(self, paths: Sequence[Path]) -> None:
        import threading

        self._value: str | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(list(paths),), name="sha256", daemon=True)
        self._thread.start()

    def _run(self, paths: list[Path]) -> None:
        try:
            self._value = sha256_files(paths)
        except BaseException as e:  # handed to whoever asks for the result
            self._error = e

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
