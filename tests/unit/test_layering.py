"""The package's rooms and which may import which: a stage never imports one after it.

Read from the source (every import, lazy ones inside functions too), so an upward import fails
here before it becomes a circle or drags torch into `python run.py`'s start.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "transfer_pipeline"
SHARED = {"errors", "names", "tables", "tensor_meta", "patterns", "selectors", "files", "model_io"}

# room -> the rooms it may import (besides itself). A room is a folder, or a module directly in the package.
ALLOWED = {
    "errors": set(), "names": set(), "tables": set(), "tensor_meta": set(),
    "patterns": {"errors", "names"},
    "selectors": {"errors", "names", "patterns"},
    "files": {"errors"},
    "model_io": {"errors"},
    "schema": {"errors", "files"},  # files: the config reference page is written atomically
    "build": SHARED | {"schema"},
    "model_parts": {"errors", "names", "patterns", "selectors", "schema"},  # @head / @blocks: structure only
    "models": {"errors", "sources"},  # sources.hub: a hub id's config.json for model=hf
    "sources": SHARED | {"schema", "build"},
    "inspect": {"sources"},
    "mapping": SHARED | {"schema", "build", "sources"},
    "tuning": SHARED | {"schema", "mapping"},  # mapping.verify's per-module recording checks the adapters' merge
    "data": SHARED | {"schema", "build", "sources"},
    "training": SHARED | {"schema", "build", "sources", "tuning", "data"},
    "api": SHARED | {"schema", "build", "sources", "mapping", "tuning", "model_parts"},
    "run": SHARED | {"schema", "build", "sources", "mapping", "tuning", "data", "training", "api", "models",
                     "model_parts"},
    "hydra_edge": SHARED | {"schema", "run", "training"},  # training.curves draws the sweep plot
    "__init__": {"errors", "api", "mapping"},
}
HYDRA_ROOMS = {"schema", "hydra_edge"}  # Hydra stays at the edge: run.py, the schema and its callbacks


def room_of(module: str) -> str:
    parts = module.split(".")
    return "__init__" if len(parts) == 1 else parts[1]


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module) of every import in the file, relative ones resolved."""
    rel = path.relative_to(PACKAGE.parent).with_suffix("").parts
    package = rel if rel[-1] == "__init__" else rel[:-1]
    package = package[:-1] if package[-1] == "__init__" else package
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1])
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            if module == "transfer_pipeline":  # from . import api: the names are modules
                found += [(node.lineno, f"transfer_pipeline.{a.name}") for a in node.names]
            else:
                found.append((node.lineno, module))
    return found


def package_files() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_every_room_is_known():
    rooms = {p.name if p.is_dir() else p.stem for p in PACKAGE.iterdir()
             if (p.is_dir() and (p / "__init__.py").exists()) or p.suffix == ".py"}
    assert rooms <= set(ALLOWED), f"add the new room(s) to ALLOWED: {sorted(rooms - set(ALLOWED))}"


def test_the_shared_modules_are_few():
    top = [p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__"]
    assert len(top) <= 12, f"{len(top)} modules directly in transfer_pipeline/: give the new ones a folder ({top})"


@pytest.mark.parametrize("path", package_files(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_go_down_only(path):
    rel = path.relative_to(PACKAGE)
    here = "__init__" if rel == Path("__init__.py") else (rel.parts[0] if len(rel.parts) > 1 else rel.stem)
    wrong = []
    for line, module in imports(path):
        if module.startswith("transfer_pipeline."):
            there = room_of(module)
            if there != here and there not in ALLOWED[here]:
                wrong.append(f"line {line}: {module} ({here} may import {sorted(ALLOWED[here])})")
        elif module.split(".")[0] == "hydra" and here not in HYDRA_ROOMS:
            wrong.append(f"line {line}: {module} (Hydra only in {sorted(HYDRA_ROOMS)} and run.py)")
    assert not wrong, f"{rel} imports upward:\n" + "\n".join(wrong)


def test_the_checker_sees_relative_and_lazy_imports(tmp_path):
    """The resolver itself: a relative import two levels up, inside a function, is found."""
    module = PACKAGE / "mapping" / "verify.py"
    found = dict((m, line) for line, m in imports(module))
    assert "transfer_pipeline.model_io" in found and "transfer_pipeline.build" in found


def test_every_folder_says_what_lives_there():
    for init in PACKAGE.glob("*/__init__.py"):
        doc = ast.get_docstring(ast.parse(init.read_text()))
        assert doc and len(doc) > 40, f"{init.parent.name}/__init__.py needs a docstring: what lives there, what it may import"
