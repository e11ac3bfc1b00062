"""The load table names unused source tensors as mapping.rules see them, after the prefix step (issue 24).

A checkpoint whose names carry a prefix the plan strips (`albert.`, `module.`): the table used to print the
unused names with the prefix on, a rule copied from there matched no source tensor, and the error offered the
stored name itself as the closest. Now the table prints the names a rule is written against (and says once
which prefix was stripped), and a rule that matches only a stored name says that the prefix step runs first.
"""

from __future__ import annotations

import re

import pytest
from helpers import make_plan

from transfer_pipeline.errors import UserError
from transfer_pipeline.mapping.report import format_plan, report_dict
from transfer_pipeline.tensor_meta import TensorMeta


def M(*shape: int) -> TensorMeta:
    return TensorMeta(tuple(shape))


TARGET = {"embeddings.word_emb.weight": M(10, 4), "encoder.l0.weight": M(4, 4), "encoder.l1.weight": M(4, 4)}


def albert() -> dict[str, TensorMeta]:
    """A checkpoint saved from a wrapper: every name but the MLM head's under `albert.`."""
    return {"albert.embeddings.word.weight": M(10, 4), "albert.encoder.l0.weight": M(4, 4),
            "albert.encoder.l1.weight": M(4, 4), "predictions.bias": M(10)}


def unused_line(text: str) -> str:
    (line,) = [ln for ln in text.splitlines() if ln.strip().startswith("unused source tensors")]
    return line


def test_unused_names_are_printed_as_rules_see_them_and_the_prefix_is_said_once():
    plan = make_plan(albert(), TARGET, on_mismatch="skip")
    assert plan.stripped_prefix == "albert."
    line = unused_line(format_plan(plan, TARGET, "file albert.bin"))
    assert line.endswith(": embeddings.word.weight, predictions.bias")
    assert line.count("albert.") == 1 and "without the stripped prefix 'albert.'" in line
    assert "as mapping.rules see them" in line


def test_load_report_json_keeps_the_stored_names_beside_the_stripped_prefix():
    d = report_dict(make_plan(albert(), TARGET), "file albert.bin", "Net")
    assert d["unexpected"] == ["albert.embeddings.word.weight", "predictions.bias"]  # as `renamed` keys: stored
    assert d["stripped_prefix"] == "albert."


def test_a_name_copied_from_the_table_into_a_rule_matches():
    line = unused_line(format_plan(make_plan(albert(), TARGET), TARGET, "file albert.bin"))
    copied = line.rsplit(": ", 1)[1].split(", ")[0]
    plan = make_plan(albert(), TARGET, [{"from": re.escape(copied), "to": "embeddings.word_emb.weight"}])
    assert plan.missing == [] and plan.rule_hits == [1] and plan.unexpected == ["predictions.bias"]
    assert unused_line(format_plan(plan, TARGET, "file albert.bin")).endswith("tensors 1: predictions.bias")


def test_without_a_prefix_step_the_line_is_as_before():
    source = {k.removeprefix("albert."): v for k, v in albert().items()}
    line = unused_line(format_plan(make_plan(source, TARGET), TARGET, "file f"))
    assert line == "  unused source tensors 2: embeddings.word.weight, predictions.bias"


def test_a_prefix_swap_prints_the_names_with_the_added_prefix():
    target = {"backbone.0.weight": M(4, 4), "backbone.1.weight": M(4, 4), "backbone.2.weight": M(4, 4)}
    source = {"encoder.0.weight": M(4, 4), "encoder.1.weight": M(4, 4), "encoder.2.weight": M(4, 4),
              "encoder.3.weight": M(3, 3)}
    plan = make_plan(source, target)
    assert (plan.stripped_prefix, plan.added_prefix) == ("encoder.", "backbone.")
    line = unused_line(format_plan(plan, target, "file f"))
    assert line.endswith(": backbone.3.weight") and "after the prefix swap 'encoder.' -> 'backbone.'" in line


def test_an_explicit_strip_prefixes_reads_alike():
    plan = make_plan(albert(), TARGET, strip_prefixes=["albert."])
    assert unused_line(format_plan(plan, TARGET, "f")).endswith(": embeddings.word.weight, predictions.bias")


@pytest.mark.parametrize("pattern, fixed", [
    (r"albert\.embeddings\.word\.weight", r"embeddings\.word\.weight"),  # the stored name, escaped
    (r"albert.embeddings.word.weight", r"embeddings.word.weight"),  # ... or as printed
    (r"albert\.embeddings\.word\.(.*)", r"embeddings\.word\.(.*)"),
])
def test_a_rule_written_with_the_stripped_prefix_says_the_prefix_step_runs_first(pattern, fixed):
    with pytest.raises(UserError) as e:
        make_plan(albert(), TARGET, [{"from": pattern, "to": "embeddings.word_emb.weight"}])
    msg = str(e.value)
    assert "matches no source tensor" in msg and "The prefix step runs before the rules (stripped prefix 'albert.')" in msg
    assert f"write from: '{fixed}'" in msg
    # the closest names are the names the rule was matched against, never the stored name it already spells
    assert "Closest source names: embeddings.word.weight." in msg
    to = r"embeddings.word_emb.\1" if "(" in fixed else "embeddings.word_emb.weight"
    plan = make_plan(albert(), TARGET, [{"from": fixed, "to": to}])  # the fix it gives works
    assert plan.missing == [] and plan.rule_hits == [1]


def test_a_rule_that_matches_nothing_for_another_reason_gets_no_prefix_hint():
    with pytest.raises(UserError) as e:
        make_plan(albert(), TARGET, [{"from": r"embedings\.word\.weight", "to": "embeddings.word_emb.weight"}])
    assert "prefix step runs before" not in str(e.value) and "Closest source names: embeddings.word.weight" in str(e.value)


def test_the_hint_for_a_prefix_swap_puts_the_added_prefix_in_the_rule():
    target = {"backbone.0.weight": M(4, 4), "backbone.1.weight": M(4, 4), "backbone.2.weight": M(4, 4),
              "head.weight": M(3, 3)}
    source = {"encoder.0.weight": M(4, 4), "encoder.1.weight": M(4, 4), "encoder.2.weight": M(4, 4),
              "encoder.3.weight": M(3, 3)}
    with pytest.raises(UserError, match=r"prefix swap 'encoder\.' -> 'backbone\.'.*write from: 'backbone\\\.3\\\.weight'"):
        make_plan(source, target, [{"from": r"encoder\.3\.weight", "to": "head.weight"}])
    plan = make_plan(source, target, [{"from": r"backbone\.3\.weight", "to": "head.weight"}])
    assert plan.missing == []
