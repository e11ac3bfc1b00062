"""The runnable commands of the docs: fenced code blocks whose info string is exactly `bash run`.

A page marks a block runnable by opening it with ```` ```bash run ````; tests/e2e/test_docs_commands.py
runs those blocks, so a documented command that breaks fails the tests. Other fences (```` ```bash ````,
```` ```yaml ````, ...) are shown, not run. An unterminated fence is an error rather than "the rest of
the page is code", which would hide every block after it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

RUNNABLE = "bash run"
FENCE = re.compile(r"^(?P<indent> *)(?P<fence>`{3,}|~{3,})(?P<info>.*)$")


@dataclass(frozen=True)
class Block:
    page: str  # the page's name as the tests show it (e.g. README.md, docs/training.md)
    line: int  # 1-based line of the opening fence
    text: str  # the code between the fences, without the fences' indentation


def fenced_blocks(markdown: str, page: str = "<page>") -> list[tuple[str, Block]]:
    """Every fenced code block with its info string, in page order (CommonMark fences: ``` or ~~~, 3 or more)."""
    lines = markdown.splitlines()
    blocks, i = [], 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if opening is None or (opening["fence"][0] == "`" and "`" in opening["info"]):
            i += 1
            continue
        fence, indent = opening["fence"], len(opening["indent"])
        closing = re.compile(rf"^ *{re.escape(fence[0])}{{{len(fence)},}} *$")
        end = next((j for j in range(i + 1, len(lines)) if closing.match(lines[j])), None)
        if end is None:
            raise ValueError(f"{page}:{i + 1}: the fence {fence}{opening['info']} is never closed (no {fence} line "
                             "after it); close it so the blocks after it are read as they are shown.")
        body = [line[min(indent, len(line) - len(line.lstrip(' '))):] for line in lines[i + 1:end]]
        blocks.append((opening["info"].strip(), Block(page, i + 1, "\n".join(body) + "\n" if body else "")))
        i = end + 1
    return blocks


def runnable_blocks(markdown: str, page: str = "<page>") -> list[Block]:
    """The blocks opened by exactly ```` ```bash run ````, in page order."""
    return [block for info, block in fenced_blocks(markdown, page) if info == RUNNABLE]


def page_blocks(path: Path, root: Path) -> list[Block]:
    return runnable_blocks(path.read_text(encoding="utf-8"), path.relative_to(root).as_posix())
