"""Paths in configs: plain filesystem paths, or `pkg://package/relative/path` for files shipped in a package.

A relative path is read from the current working directory, the folder `python run.py` was
started in (Hydra does not change directory here: `hydra.job.chdir=false`); messages show the
absolute path and say so. `check_path` lets through regular files and folders only: a FIFO or
a device would block a read forever, and a symlink loop or a name the filesystem refuses gets
its own message rather than "no such file".
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

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
        except ModuleNotFoundError:
            raise UserError(f"{where}: {path!r} names package {package!r}, which is not installed.") from None
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
