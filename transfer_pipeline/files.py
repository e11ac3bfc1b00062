"""Files in and out: paths in configs, checked before they are read, and writes that are never half-done.

Paths in configs are plain filesystem paths, or `pkg://package/relative/path` for files shipped in a package.

A relative path is read from the current working directory, the folder `python run.py` was
started in (Hydra does not change directory here: `hydra.job.chdir=false`); messages show the
absolute path and say so. `check_path` lets through regular files and folders only: a FIFO or
a device would block a read forever, and a symlink loop or a name the filesystem refuses gets
its own message rather than "no such file".

Every file the tool writes goes to a temporary name beside its destination (`.name.XXXX.tmp`)
and is renamed into place: a reader sees the old file or the new, never half of one.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import io
import json
import os
import secrets
import stat
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from .errors import UserError, did_you_mean

KINDS = {stat.S_IFIFO: "a FIFO (named pipe)", stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device",
         stat.S_IFSOCK: "a socket"}


def resolve_path(path: str, where: str = "source.path") -> Path:
    """An absolute path: `~` expanded, relative to the working directory, or the file `pkg://package/rel` names."""
    if path.startswith("pkg://"):
        from importlib import resources

        package, _, rel = path[len("pkg://"):].partition("/")
        try:
            return Path(str(resources.files(package).joinpath(rel)))
        except ModuleNotFoundError as e:
            if e.name == package or not e.name:
                raise UserError(f"{where}: {path!r} names package {package!r}, which is not installed.") from None
            raise UserError(f"{where}: {path!r} names package {package!r}, which is installed but fails to import: "
                            f"{e}. Install what it needs (pip install {e.name.split('.')[0]}).") from None
        except Exception as e:  # noqa: BLE001 - the package's own import error, told as such
            raise UserError(f"{where}: {path!r} names package {package!r}, which is installed but fails to import "
                            f"({type(e).__name__}: {str(e)[:200]}).") from None
    p = Path(path).expanduser()
    return p if p.is_absolute() else Path.cwd() / p


def base_note(given: str | Path) -> str:
    """' (relative paths are read from CWD)' for a relative path as written, else ''."""
    s = str(given)
    return "" if s.startswith(("/", "~", "pkg://")) else f" (relative paths are read from {Path.cwd()})"


def check_path(path: Path, where: str, want: str = "file", given: str | Path | None = None) -> str:
    """'file' or 'dir' for a regular file or a folder that exists; else a UserError naming `where`.

    `want`: 'file', 'dir' or 'any' (either). `given`: the path as the person wrote it (for the base note).
    """
    note = base_note(given if given is not None else path)
    try:
        st = os.stat(path)  # follows symlinks
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise UserError(f"{where}: {path} is a symbolic link that loops (or goes through too many links); "
                            "point it at a real file.") from None
        if e.errno == errno.ENAMETOOLONG:
            longest = max((len(part) for part in Path(path).parts), default=0)
            raise UserError(f"{where}: the path is too long for the filesystem ({len(str(path))} characters, a "
                            f"component of {longest}; most filesystems allow 255 per component).") from None
        if e.errno in (errno.ENOENT, errno.ENOTDIR):
            parent = Path(path).parent
            near = [p.name for p in parent.iterdir()] if parent.is_dir() else []
            raise UserError(f"{where}: no such file: {path}{note}.{did_you_mean(Path(path).name, near)}") from None
        raise UserError(f"{where}: cannot read {path} ({e.strerror or e}){note}.") from None
    fmt = stat.S_IFMT(st.st_mode)
    kind = "file" if fmt == stat.S_IFREG else "dir" if fmt == stat.S_IFDIR else None
    if kind is None:
        raise UserError(f"{where}: {path} is {KINDS.get(fmt, 'not a regular file')}, not a file or folder; reading it "
                        "could block forever, so it is refused. Point it at a regular file.")
    if want != "any" and kind != want:
        raise UserError(f"{where}: {path} is a {'folder' if kind == 'dir' else 'file'}, not a "
                        f"{'folder' if want == 'dir' else 'file'}{note}.")
    return kind


YAML_MAX_BYTES = 4 << 20  # a config or a rules file of 100,000 rules is well under this


def read_yaml(path: Path, where: str, max_bytes: int = YAML_MAX_BYTES) -> Any:
    """A YAML file a person gives (a rules file, a run's `.hydra/config.yaml`), read with limits.

    Refused with a message naming `where`: anything but a regular file (a FIFO would block), a file
    over `max_bytes`, bytes that are not UTF-8 text (a NUL), a YAML error, and anchors/aliases (`&a`,
    `*a`): no config this tool writes has them, and nested aliases expand exponentially (a few hundred
    bytes can ask for gigabytes: "billion laughs").
    """
    import yaml

    check_path(path, where, "file")
    size = os.stat(path).st_size
    if size > max_bytes:
        raise UserError(f"{where}: {path} is {size:,} bytes, over the {max_bytes:,} a YAML file here may have; "
                        "is it the right file?")
    with open(path, "rb") as f:
        data = f.read(max_bytes + 1)  # a file that grew since stat() is still bounded
    if len(data) > max_bytes or b"\0" in data:
        raise UserError(f"{where}: {path} is not a YAML text file ({'too large' if len(data) > max_bytes else 'it holds NUL bytes'}).")
    try:
        text = data.decode("utf-8")
        if any(isinstance(e, yaml.AliasEvent) for e in yaml.parse(text, Loader=yaml.SafeLoader)):
            raise UserError(f"{where}: {path} uses YAML aliases (*name); write the values out instead (configs this "
                            "tool writes never use them, and nested ones can expand without bound).")
        return yaml.safe_load(text)
    except UnicodeDecodeError as e:
        raise UserError(f"{where}: {path} is not UTF-8 text (byte {e.start}).") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise UserError(f"{where}: {path} is not valid YAML{at}: {getattr(e, 'problem', None) or e}.") from None


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


FILE_MODE = 0o666 & ~_umask()  # what open() gives a new file (said again: a writer may have opened it 0600)


TEMP_NAME_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789_"  # as mkstemp's: run/folder.py's TEMP knows the form


def fresh_temp_name(path: Path) -> Path:
    """`.name.XXXXXXXX.tmp` beside `path`, a name nothing has yet. Not created: the writer creates it.

    Why not mkstemp: a file that exists (empty) when the writer opens it is truncated by that open, and
    ext4 and XFS answer a truncate-then-write with a flush of the whole file when it is closed (their
    guard for programs that replace a file in place): a 1 GiB model.safetensors took 0.9-1.5 s to
    write instead of 0.57 s. The 8 random characters (41 bits) are not guessable in advance.
    """
    for _ in range(100):
        tmp = path.parent / f".{path.name}.{''.join(secrets.choice(TEMP_NAME_CHARS) for _ in range(8))}.tmp"
        if not os.path.lexists(tmp):
            return tmp
    raise FileExistsError(f"no free temporary name beside {path}")


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary name `.name.XXXXXXXX.tmp` beside `path` to write to (see `fresh_temp_name`); renamed onto
    `path` when the block ends well, removed when it raises. The one place a file of a run is written.

    A write killed half-way leaves only the temporary file, which the next run in the folder removes.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = fresh_temp_name(path)
    try:
        yield tmp
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """`data` into `path`, whole or not at all (see `atomic_path`)."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


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
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=dict(metadata or {}))
