"""docs/config-reference.md, generated from the schema: every key, its type, its default and its meaning.

The page is the schema read aloud, so it cannot drift from the code: the meaning of a key is the
comment that trails its field (or the comment lines above it, or a docstring below it) in
schema/*.py, and tests/unit/schema/test_config_reference.py fails when the committed page differs
from what this prints. A field without a comment is an error here: write one next to the field.

    python -m transfer_pipeline.schema.reference          # print the page
    python -m transfer_pipeline.schema.reference --write  # rewrite docs/config-reference.md

No torch: it reads the dataclasses, their source and conf/'s file names.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import inspect
import io
import logging
import sys
import tokenize
import typing
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from omegaconf import MISSING

from . import DataConfig, RunConfig

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
PAGE = REPO / "docs" / "config-reference.md"
COMMAND = "python -m transfer_pipeline.schema.reference --write"

# fields typed Any whose built-in form is a dataclass (RunConfig.data: DataConfig or your own `_target_` node)
TYPED_AS = {"data": DataConfig}
# the free-form nodes: their keys are a callable's arguments, so the schema cannot list them
FREE_FORM = {
    "model": "takes a `_target_` (the dotted path of the model's class or function) and its arguments; "
             "`model.output` is ours: where the logits are in what the model returns (a tuple index or a "
             "dict key / attribute name; null when it returns a tensor, or `logits` in a dict or an object).",
    "source.model": "takes a `_target_` and its arguments: a source model built in memory, whose weights "
                    "are the source.",
    "mapping.verify.source_model": "takes a `_target_` and its arguments: the checkpoint's own architecture.",
    "data._target_": "makes `data` a free-form node for your own data: it takes a `_target_` (the dotted path of a "
                     "function or class returning {train, val, optional test, optional classes}) and its "
                     "arguments; `data.num_workers` and `data.target_key` stay ours.",
    "loss": "takes a `_target_` (e.g. torch.nn.CrossEntropyLoss) and its arguments; null = the task's own "
            "(cross-entropy, BCE with logits, MSE).",
}
INTRO = """\
# Config reference

Every key of the config, generated from `transfer_pipeline/schema/`: do not edit this page by hand,
run `{command}` (a test fails when the page and the schema disagree).

Set a key on the command line (`python run.py trainer.epochs=3`) or in a config file; a misspelt
key or choice fails before anything runs, naming the valid ones. *Default* is the schema's: the
files in `conf/<group>/` are presets that set several keys at once (`python run.py optim=sgd`),
`conf/config.yaml` picks those of a plain `python run.py`, and `python run.py --cfg job` prints
the config a command would run with. `???` means required; `null` means unset (the meaning says
what null does). `key[].field` is a field of each entry of the list `key`.
"""


@dataclass(frozen=True)
class Row:
    key: str  # dotted path; `[]` marks the fields of a list's entries
    type: str
    default: str
    meaning: str


@dataclass
class Section:
    key: str  # the config group: a top-level key ('' for the top-level scalars)
    rows: list[Row]
    choices: list[tuple[str, list[tuple[str, str]]]]  # (key, [(choice, meaning)]) for enums with comments


def comments(module: Any) -> dict[int, str]:
    """Line number -> comment text (without `#`) in a module's source."""
    tokens = tokenize.generate_tokens(io.StringIO(inspect.getsource(module)).readline)
    return {t.start[0]: t.string.lstrip("#").strip() for t in tokens if t.type == tokenize.COMMENT}


@functools.lru_cache(maxsize=None)
def documented(cls: type) -> dict[str, str]:
    """Name -> meaning for a dataclass's fields or an enum's members, from the comments beside them.

    A field's trailing comment is its meaning, continued by the comment-only lines right below it
    (up to a blank line); a field without one takes the comment-only lines right above it (those
    go to it, not to the field before), or else a string right below it (a field docstring).
    """
    module = sys.modules[cls.__module__]
    source = inspect.getsource(module)
    notes, lines = comments(module), source.splitlines()
    node = next(n for n in ast.walk(ast.parse(source)) if isinstance(n, ast.ClassDef) and n.name == cls.__name__)

    def comment_run(first: int, step: int) -> list[int]:
        """The comment-only lines from `first` on, going by `step` (1: down, -1: up), up to any other line."""
        run, n = [], first
        while 0 < n <= len(lines) and lines[n - 1].strip().startswith("#"):
            run.append(n)
            n += step
        return sorted(run)

    own: dict[str, str] = {}
    below: dict[str, list[int]] = {}
    taken: set[int] = set()
    for i, stmt in enumerate(node.body):
        target = stmt.target if isinstance(stmt, ast.AnnAssign) else (
            stmt.targets[0] if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 else None)
        if not isinstance(target, ast.Name):
            continue
        end = stmt.end_lineno or stmt.lineno
        text = [notes[n] for n in range(stmt.lineno, end + 1) if n in notes]
        if not text:
            taken.update(above := comment_run(stmt.lineno - 1, -1))
            text = [notes[n] for n in above]
        nxt = node.body[i + 1] if i + 1 < len(node.body) else None
        if not text and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant) \
                and isinstance(nxt.value.value, str):
            text = [inspect.cleandoc(nxt.value.value).replace("\n", " ")]
        own[target.id] = " ".join(text)
        below[target.id] = comment_run(end + 1, 1) if text else []
    for name, run in below.items():
        own[name] = " ".join([own[name], *(notes[n] for n in run if n not in taken)])
    return own


def type_name(hint: Any) -> str:
    """A type as a person writes the value: `int`, `float or null`, `list of str`, `a | b` for an enum."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Union:
        rest = [a for a in args if a is not type(None)]
        return " or ".join(type_name(a) for a in rest) + " or null"
    if origin in (list, typing.List):
        return f"list of {type_name(args[0])}" if args else "list"
    if origin in (dict, typing.Dict):
        return "mapping"
    if hint is Any:
        return "any"
    if isinstance(hint, type) and issubclass(hint, Enum):
        return " | ".join(m.value for m in hint)
    if dataclasses.is_dataclass(hint):
        return "entry (keys below)"
    return getattr(hint, "__name__", str(hint))


def value_text(value: Any) -> str:
    """A default as YAML would show it."""
    if value is MISSING:
        return "???"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Enum):
        return str(value.value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(value_text(v) for v in value) + "]"
    return str(value)


def default_of(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return MISSING


def entry_type(hint: Any) -> type | None:
    """The dataclass a list's entries are (`List[UnfreezeEvent]` -> UnfreezeEvent), else None."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (list, typing.List) and args and dataclasses.is_dataclass(args[0]):
        return args[0]
    return None


def walk(cls: type, prefix: str, section: Section) -> None:
    """A row per field of `cls` into `section` (nested dataclasses flattened into dotted keys)."""
    for f in dataclasses.fields(cls):
        add(section, cls, f, prefix)


def add(section: Section, cls: type, f: dataclasses.Field, prefix: str) -> None:
    """The row of one field of `cls` (or the rows of the dataclass it holds), its enum's choices, its entries'."""
    key, hint = f"{prefix}{f.name}", typing.get_type_hints(cls)[f.name]
    if dataclasses.is_dataclass(hint):
        walk(hint, f"{key}.", section)
        return
    meaning = documented(cls).get(f.name)
    if not meaning:
        path = Path(inspect.getsourcefile(cls) or cls.__module__).name
        raise ValueError(f"{key}: {cls.__name__}.{f.name} has no comment in schema/{path}; write one beside the "
                         f"field (its meaning on the config reference page), then run {COMMAND}.")
    shown = "`_target_` node" if key in FREE_FORM else type_name(hint)
    section.rows.append(Row(key, shown, value_text(default_of(f)), meaning))
    enum = next((t for t in (hint, *typing.get_args(hint)) if isinstance(t, type) and issubclass(t, Enum)), None)
    if enum is not None and any(documented(enum).values()):
        section.choices.append((key, [(m.value, documented(enum).get(m.name, "")) for m in enum]))
    if entry_type(hint) is not None:
        walk(entry_type(hint), f"{key}[].", section)


def sections() -> list[Section]:
    """One section per config group (a top-level key), in RunConfig's order; the top-level scalars first."""
    top = Section("", [], [])
    out = [top]
    for f in dataclasses.fields(RunConfig):
        hint = TYPED_AS.get(f.name, typing.get_type_hints(RunConfig)[f.name])
        if dataclasses.is_dataclass(hint):
            out.append(Section(f.name, [], []))
            walk(hint, f"{f.name}.", out[-1])
        elif f.name in FREE_FORM:
            out.append(Section(f.name, [], []))
            add(out[-1], RunConfig, f, "")
        else:
            add(top, RunConfig, f, "")
    return out


def presets(group: str) -> str:
    """The line naming conf/<group>/'s files and the one a plain `python run.py` uses; '' without such files."""
    folder = REPO / "conf" / group
    names = sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []
    if not names:
        return ""
    chosen = None
    config = REPO / "conf" / "config.yaml"
    if config.is_file():
        import yaml

        for item in yaml.safe_load(config.read_text()).get("defaults", []):
            if isinstance(item, dict):
                chosen = item.get(group, chosen)
    listed = ", ".join(f"`{n}`" + (" (the default run's)" if n == chosen else "") for n in names)
    return f"Presets in `conf/{group}/` (`{group}=<name>`): {listed}."


def cell(text: str) -> str:
    """Text safe inside a Markdown table cell."""
    return text.replace("|", "\\|")


def render() -> str:
    """The whole page."""
    out = [INTRO.format(command=COMMAND)]
    for section in sections():
        out.append(f"## {'Top level' if not section.key else f'`{section.key}`'}\n")
        notes = [f"`{k}` {text}" for k, text in FREE_FORM.items()
                 if k == section.key or k.startswith(f"{section.key}.")] if section.key else []
        out += [f"{n}\n" for n in notes]
        line = presets(section.key) if section.key else ""
        out += [f"{line}\n"] if line else []
        out.append("| Key | Type | Default | Meaning |\n|---|---|---|---|")
        out += [f"| `{r.key}` | {cell(r.type)} | `{cell(r.default)}` | {cell(r.meaning)} |" for r in section.rows]
        out.append("")
        if section.choices:
            out.append("Choices:\n")
            for key, members in section.choices:
                out.append(f"- `{key}`: " + "; ".join(f"`{v}`" + (f": {m}" if m else "") for v, m in members))
            out.append("")
    return "\n".join(out).rstrip("\n") + "\n"


def all_rows() -> list[Row]:
    return [r for s in sections() for r in s.rows]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m transfer_pipeline.schema.reference",
                                     description="Print (or --write) the config reference page, made from the schema.")
    parser.add_argument("--write", action="store_true", help=f"write {PAGE.relative_to(REPO)} instead of printing")
    args = parser.parse_args(argv)
    page = render()
    if not args.write:
        sys.stdout.write(page)  # the command's output (a page to read or pipe), not a log message
        return 0
    from ..files import atomic_write_bytes

    PAGE.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(PAGE, page.encode())
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    log.info("wrote %s (%d keys)", PAGE, len(all_rows()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
