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


# Config groups whose shipped choice in conf/config.yaml is written for the default experiment's
# digits CNN (selectors like `head`, `block2`), and the generic choice that fits any model.
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
        """For an error about a key that a digits-specific group file set: which file, and the generic switch.
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
        return (f"\n{key} comes from the config group {group}={choice} (conf/{group}/{choice}.yaml), written for the "
                f"default experiment's DigitsCNN. For another model switch to the generic groups, e.g. "
                f"python run.py model=... source.path=... {switch}, or set {key} for your model.")


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
