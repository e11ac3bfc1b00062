"""Image folders (`data: image_folder`): listing the files, checking them, reading them.

`root/<class>/**/*.jpg`, as torchvision's ImageFolder, but safe on real folders:

- symlinked folders are followed once: a link back up the tree is not walked again (ImageFolder
  loops or repeats the images under it), and a file reachable twice counts once, so one image can
  never land in both the train and the validation split;
- only regular files are read (a FIFO named `x.jpg` would block forever);
- every image is opened and decoded once up front, so a corrupt, empty or truncated file is
  reported by its path before training starts; `data.skip_bad_images` chooses between that error
  and leaving them out with a count.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from ..errors import UserError

log = logging.getLogger(__name__)

EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def list_images(root: Path) -> tuple[list[str], list[tuple[Path, int]]]:
    """(class names, [(image path, class index)]) under `root`, each real file once, in a stable order."""
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise UserError(f"data.root: {root} has no class folders (expected {root}/<class>/<image files>).")
    samples: list[tuple[Path, int]] = []
    owner: dict[str, str] = {}  # real path -> class folder it was first found in
    for index, name in enumerate(classes):
        found = 0
        for path in _walk(root / name):
            real = os.path.realpath(path)
            if real in owner:
                if owner[real] != name:
                    raise UserError(f"data.root: {path} and a file in class {owner[real]!r} are the same image "
                                    f"({real}); an image can belong to one class only.")
                continue  # the same file twice in one class (a link): once is enough
            owner[real] = name
            samples.append((path, index))
            found += 1
        if not found:
            raise UserError(f"data.root: class folder {root / name} has no image files ({', '.join(EXTENSIONS)}).")
    return classes, samples


def _walk(folder: Path):
    """Image files below `folder`, following symlinked folders but never into one already visited."""
    seen: set[tuple[int, int]] = set()
    stack = [folder]
    while stack:
        current = stack.pop()
        try:
            st = os.stat(current)
        except OSError:
            continue  # a dangling or looping link
        if (st.st_dev, st.st_ino) in seen:
            continue
        seen.add((st.st_dev, st.st_ino))
        try:
            entries = sorted(os.scandir(current), key=lambda e: e.name)
        except OSError as e:
            raise UserError(f"data.root: cannot list {current} ({e.strerror or e}).") from None
        folders = []
        for entry in entries:
            try:
                mode = os.stat(entry.path).st_mode
            except OSError:
                continue
            if stat.S_ISDIR(mode):
                folders.append(Path(entry.path))
            elif stat.S_ISREG(mode) and entry.name.lower().endswith(EXTENSIONS):
                yield Path(entry.path)
        stack.extend(reversed(folders))


def _problem(path: Path) -> str | None:
    """Why the image cannot be used ('empty', 'truncated ...'), or None."""
    from PIL import Image

    try:
        if os.stat(path).st_size == 0:
            return "empty file (0 bytes)"
        with Image.open(path) as im:
            im.draft("RGB", (64, 64))  # JPEG: decode at a fraction of the size, still to the end of the data
            im.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        return f"{type(e).__name__}: {str(e)[:120]}"
    return None


def check_images(samples: Sequence[tuple[Path, int]], skip_bad: bool, where: str) -> list[tuple[Path, int]]:
    """The samples whose image decodes; bad ones are an error naming them, or left out when `skip_bad`."""
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        problems = list(pool.map(lambda s: _problem(s[0]), samples))
    bad = [(s[0], p) for s, p in zip(samples, problems) if p is not None]
    if bad and not skip_bad:
        lines = "\n".join(f"  {path}: {why}" for path, why in bad[:10])
        more = f"\n  (+{len(bad) - 10} more)" if len(bad) > 10 else ""
        raise UserError(f"{where}: {len(bad)} of {len(samples)} image file(s) cannot be read:\n{lines}{more}\n"
                        "Fix or remove them, or set data.skip_bad_images=true to train without them.")
    if bad:
        log.warning("data.skip_bad_images: left out %d of %d image file(s) that cannot be read (e.g. %s: %s)",
                    len(bad), len(samples), bad[0][0], bad[0][1])
    return [s for s, p in zip(samples, problems) if p is None]


class ImageFiles(Dataset):
    """(image, class index) pairs from checked files, through `transform`."""

    def __init__(self, samples: Sequence[tuple[Path, int]], classes: Sequence[str], transform: Callable,
                 mode: str = "RGB", augmented: bool = False) -> None:
        self.samples, self.classes, self.transform, self.mode = list(samples), list(classes), transform, mode
        self.augmented = augmented  # random transforms: an image differs from epoch to epoch (feature_cache.py)
        self.targets = [c for _, c in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        from PIL import Image

        path, target = self.samples[i]
        try:
            with Image.open(path) as im:
                image = im.convert(self.mode)
        except (OSError, SyntaxError, ValueError) as e:  # changed on disk since it was checked
            raise UserError(f"data.root: cannot read image {path} ({type(e).__name__}: {str(e)[:120]}).") from None
        return self.transform(image), target
