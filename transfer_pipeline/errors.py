"""The one exception type for a person's mistake (bad config, bad file, bad shape).

`run.py` prints its message without a traceback and exits non-zero; anything else is a bug
in the program and keeps its traceback.
"""

from __future__ import annotations

import difflib
import re
import signal
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path


class UserError(Exception):
    """A mistake in the config or inputs: the message says what, where and how to fix it."""


def close_names(word: str, choices: Iterable[str], n: int = 5) -> list[str]:
    """The names in `choices` closest to `word`, best first (for 'did you mean' hints)."""
    choices = list(dict.fromkeys(choices))
    close = difflib.get_close_matches(word, choices, n=n, cutoff=0.5)
    if len(close) < n:
        # substring hits catch 'layer4' vs 'model.layer4.0.conv1.weight' that ratio-based matching misses
        close += [c for c in choices if word.strip("*.") and word.strip("*.") in c and c not in close]
    return close[:n]


def did_you_mean(word: str, choices: Iterable[str], n: int = 5) -> str:
    close = close_names(word, choices, n)
    return f" Closest names: {', '.join(close)}." if close else ""


def _listing(names: list[str], most: int = 12) -> str:
    return ", ".join(names[:most]) + (f" (+{len(names) - most} more)" if len(names) > most else "")


def not_a_key(key: str, known: Iterable[str], why: str = "", value: str | None = None) -> str:
    """The one wording for a config key its node does not have: a typo on the command line (Hydra's
    "Could not override", run.py) and a `+key=` added to a typed node (schema) read alike.
    `value`: the value the person gave, for the corrected override (`did you mean trainer.epochs=3?`)."""
    parent, _, name = key.rpartition(".")
    known = list(dict.fromkeys(known))
    close = close_names(name, known)
    text = f"{key}: not a key of {parent or 'the config'}{why}."
    if not close:
        return text + f" Its keys: {_listing(known)}."
    fix = f"{parent + '.' if parent else ''}{close[0]}" + (f"={value}" if value is not None else "")
    return text + f" Closest names: {', '.join(close)}; did you mean {fix}?"


def not_an_option(group: str, choice: str, options: Iterable[str], where: str = "") -> str:
    """A config group choice that has no file (`model=resnet`): the group's options, close ones first."""
    options = list(options)
    close = close_names(choice, options)
    text = f"{group}={choice}: the config group {group} has no option {choice!r}{where}."
    if close:
        text += f" Closest names: {', '.join(close)}; did you mean {group}={close[0]}?"
    return text + (f" Options: {_listing(options, 20)}." if options else "")


# Config groups whose shipped choice in conf/config.yaml assumes a model with a head and blocks that
# model_parts.py finds (`@head`, `@blocks.-1`), and the choice that names no layer at all.
GENERIC_CHOICES = {"mapping": "default", "freeze": "none"}
_KEY = re.compile(r"[a-z_]+(?:\.[a-z_]+|\[\d+\])*")
_REFUSED = re.compile(r"model: \S+ does not take these arguments \(got an unexpected keyword argument '(\w+)'")


@dataclass(frozen=True)
class ConfigOrigins:
    """Where config values came from, as plain data (run.py reads it from Hydra): for error hints."""

    choices: Mapping[str, str | None] = field(default_factory=dict)  # config group -> chosen file ('mapping': 'new_head')
    overrides: tuple[str, ...] = ()  # the command-line overrides as typed ('mapping.exclude=[fc]', '+model.x=1')
    config_dirs: tuple[str, ...] = ()  # the folders the config files were read from (conf/, a --config-dir)
    code_dirs: tuple[str, ...] = ()  # the folders a `_target_` of the person's own was looked for in (sys.path)

    @property
    def rerun_of(self) -> str | None:
        """The run folder whose own config this is (`--rerun`, or --config-path <folder>/.hydra), if any."""
        return next((str(Path(d).parent) for d in self.config_dirs if Path(d).name == ".hydra"), None)

    @property
    def overridden(self) -> tuple[str, ...]:
        """The keys the command line set ('mapping.exclude', 'freeze')."""
        return tuple(o.lstrip("+~").split("=", 1)[0] for o in self.overrides)

    def hint(self, message: str) -> str:
        """For an error about a key that a shipped group file set (`@head` not found ...): which file, and the switch.
        For a model that refuses an argument its group file gave: which file, and how to drop it."""
        refused = _REFUSED.match(message)
        if refused is not None:
            return self._model_argument_hint(refused.group(1))
        m = _KEY.match(message)
        if m is None:
            return ""
        key = m.group(0)
        group = key.split(".")[0].split("[")[0]
        choice = self.choices.get(group)
        if group not in GENERIC_CHOICES or choice in (None, GENERIC_CHOICES[group]):
            return ""
        if any(key == o or key.startswith((o + ".", o + "[")) for o in self.overridden):
            return ""  # the person set it: the message itself is the help
        switch = " ".join(f"{g}={c}" for g, c in GENERIC_CHOICES.items() if self.choices.get(g) not in (None, c))
        return (f"\n{key} comes from the config group {group}={choice} (conf/{group}/{choice}.yaml), which names the "
                f"model's @head and @blocks. Set {key} for your model (with the layer names the plan prints), or use "
                f"the groups that name no layer (load what matches, train everything): python run.py model=... "
                f"source.path=... {switch}")


    def _model_argument_hint(self, arg: str) -> str:
        choice = self.choices.get("model")
        if choice is None or any(o == f"model.{arg}" for o in self.overridden):
            return ""  # the person gave it on the command line: the message itself is the help
        return (f"\nmodel.{arg} comes from the config group model={choice} (conf/model/{choice}.yaml), which stays when "
                f"model._target_ changes: drop it with '~model.{arg}', or give your model a group file of its own "
                "(python run.py --config-dir my_conf model=mine).")


class Interrupted(BaseException):
    """SIGTERM (or SIGINT) during a run: recorded as `interrupted`, then the process exits non-zero."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
