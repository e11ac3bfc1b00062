"""RuleMatcher answers exactly as trying every rule in order (match_rule) does, only faster."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from transfer_pipeline.mapping.rules import RuleMatcher, _literal_parts, match_rule, parse_rules


@pytest.mark.parametrize(("pattern", "parts"), [
    (r"encoder\.layer\.0\.w", ("encoder.layer.0.w", True)),
    (r"encoder\.(\d+)\.w", ("encoder.", False)),
    (r"ab?c", ("a", False)),  # b may be absent: not part of the prefix
    (r"ab*c", ("a", False)),
    (r"ab{0,2}c", ("a", False)),
    (r"ab+c", ("ab", False)),
    (r"a|b", ("", False)),
    (r"(?i)abc", ("", False)),
    (r"abc(?i)", ("", False)),
    (r"\d+", ("", False)),
    (r"a\\b", ("a\\b", True)),
    (r"", ("", True)),
])
def test_literal_parts(pattern, parts):
    assert _literal_parts(pattern) == parts


def first(rules, name):
    hit = match_rule(name, rules)
    return None if hit is None else (hit[0], hit[1], hit[2].group(0))


def fast(matcher, name):
    hit = matcher.match(name)
    return None if hit is None else (hit[0], hit[1], hit[2].group(0))


def test_the_first_rule_wins_whichever_index_finds_it():
    rules = parse_rules([{"from": r"enc\.(\d+)\.w", "to": r"a.\1"}, {"from": r"enc\.1\.w", "to": "b"},
                         {"from": r"enc\.2\.w", "to": "c"}, {"from": r"(enc|dec)\.2\.w", "to": "d"},
                         {"from": r"dec\.2\.w", "to": "e"}])
    m = RuleMatcher(rules)
    assert m.rename("enc.1.w") == "a.1"  # rule 0 (regex) before the literal rule 1
    assert m.rename("dec.2.w") == "d"  # the alternation (no prefix) before the literal rule 4
    assert m.rename("other") == "other" and m.match("other") is None
    assert m.rename("enc.1.w") == "a.1"  # answered again from its memory


names = st.lists(st.sampled_from(["enc", "dec", "enc.0", "enc.1.w", "enc.1.b", "dec.1.w", "x.y", "encoder.1.w",
                                  "enc.10.w", "abc", "ac", "abbc"]), max_size=6)
patterns = st.sampled_from([r"enc\.1\.w", r"enc\.(\d+)\.w", r"enc\..*", r"(enc|dec)\.1\.w", r"ab?c", r"ab+c",
                            r"dec\.1\.w", r".*\.w", r"enc", r"x\.y", r"encoder\.(\d)\.(w|b)", r"enc\.1\.[wb]"])


@settings(max_examples=200, deadline=None)
@given(st.lists(patterns, min_size=1, max_size=6), names)
def test_property_same_answer_as_trying_every_rule(froms, asked):
    rules = parse_rules([{"from": f, "to": f"t{i}"} for i, f in enumerate(froms)])
    matcher = RuleMatcher(rules)
    for name in asked + asked:  # twice: the remembered answers too
        assert fast(matcher, name) == first(rules, name), (froms, name)


def test_a_concat_rule_keeps_pattern_order():
    rules = parse_rules([{"from": [r"q\.(\d+)", r"k\.(\d+)", r"v\.(\d+)"], "to": r"qkv.\1", "op": "concat"}])
    m = RuleMatcher(rules)
    assert [fast(m, n)[:2] for n in ("q.0", "k.0", "v.3")] == [(0, 0), (0, 1), (0, 2)]


@pytest.mark.parametrize(("to", "message"), [(456, r"got 456 \(int\); quote it in YAML: to: '456'"),
                                             (None, r"\.to is empty"),
                                             (["a", "b"], "a list of templates is for op split")])
def test_a_to_that_is_not_a_template_says_what_it_is(to, message):
    from transfer_pipeline.errors import UserError

    with pytest.raises(UserError, match=message):
        parse_rules([{"from": "a", "to": to}])
