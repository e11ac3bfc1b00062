"""docs/config-reference.md is generated from the schema, and the committed page is the current one."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

import pytest
from omegaconf import DictConfig, ListConfig, OmegaConf

from transfer_pipeline.schema import DataConfig, RunConfig
from transfer_pipeline.schema.reference import COMMAND, PAGE, Section, documented, render, walk

ROW = re.compile(r"^\| `(?P<key>[^`]+)` \| (?P<type>.*?) \| `(?P<default>.*?)` \| (?P<meaning>.*) \|$")


def leaf_keys(node, prefix: str = "") -> list[str]:
    """Every leaf key under an OmegaConf node (walked by OmegaConf, not by the generator); a list of
    dataclass entries contributes `key` and `key[].field` for each field of its entries."""
    keys = []
    for name in node.keys():
        key, child = f"{prefix}{name}", node._get_node(name)
        if isinstance(child, DictConfig) and OmegaConf.get_type(child) not in (dict, None):
            keys += leaf_keys(child, f"{key}.")
            continue
        keys.append(key)
        entry = child._metadata.element_type if isinstance(child, ListConfig) else None
        if dataclasses.is_dataclass(entry):
            keys += leaf_keys(OmegaConf.structured(entry), f"{key}[].")
    return keys


def rows(page: str) -> dict[str, dict[str, str]]:
    return {m["key"]: m.groupdict() for m in map(ROW.match, page.splitlines()) if m}


def test_the_committed_page_is_what_the_schema_generates():
    assert PAGE.is_file(), f"{PAGE} is missing; make it with: {COMMAND}"
    assert PAGE.read_text() == render(), f"{PAGE} is out of date with transfer_pipeline/schema/; update it with: {COMMAND}"


def test_every_leaf_key_has_a_row():
    config = OmegaConf.structured(RunConfig)
    keys = [k for k in leaf_keys(config) if k != "data"] + leaf_keys(OmegaConf.structured(DataConfig), "data.")
    assert len(keys) > 100 and "trainer.precision" in keys and "freeze.schedule[].epoch" in keys
    listed = rows(render())
    missing = [k for k in keys if k not in listed]
    assert not missing, f"keys missing from the config reference: {missing}"


def test_every_row_says_what_the_key_means():
    listed = rows(render())
    empty = [k for k, r in listed.items() if not r["meaning"].strip() or not r["type"].strip()]
    assert not empty, f"rows without a type or a meaning: {empty} (write a comment beside the field in schema/)"
    assert listed["trainer.precision"]["default"] == "32" and "bf16" in listed["trainer.precision"]["meaning"]
    assert listed["mode"]["type"].startswith("train \\| plan")  # an enum shows its choices


def test_free_form_nodes_say_they_take_a_target():
    page = render()
    for key in ("model", "source.model", "data._target_", "loss"):
        assert re.search(rf"^`{re.escape(key)}` .*`_target_`", page, re.M), key


def test_the_generator_imports_no_torch():
    import subprocess
    import sys

    code = "import sys, transfer_pipeline.schema.reference as r; r.render(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


@dataclass
class Commented:
    trailing: int = 0  # the first part;
    # continued here

    # a comment above its field
    above: int = 1
    docstring: int = 2
    """a field docstring"""
    bare: int = 3


def test_meanings_come_from_the_comments_beside_each_field():
    assert documented(Commented) == {"trailing": "the first part; continued here", "above": "a comment above its field",
                                     "docstring": "a field docstring", "bare": ""}
    with pytest.raises(ValueError, match=r"^bare: Commented.bare has no comment .* write one beside the field"):
        walk(Commented, "", Section("", [], []))
