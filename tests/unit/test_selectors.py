"""Unit tests for transfer_pipeline.selectors: one selector language for every stage."""

from __future__ import annotations

import re

import pytest

from transfer_pipeline.errors import UserError
from transfer_pipeline.names import module_prefixes
from transfer_pipeline.selectors import check_selector, matches, parse_part, select, select_all

NAMES = [
    "stem.0.weight",
    "stem.1.weight",
    "stem.1.bias",
    "layer1.0.conv1.weight",
    "layer1.0.bn1.weight",
    "layer1.0.bn1.bias",
    "layer4.0.conv1.weight",
    "layer4.0.bn1.weight",
    "layer4.1.bn1.bias",
    "layer40.weight",
    "decode_head.weight",
    "decode_head.bias",
    "head.weight",
    "head.bias",
    "fc.weight",
    "fc.bias",
]


# --- glob selectors --------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ("fc.*", ["fc.weight", "fc.bias"]),
        ("*.bn1.*", ["layer1.0.bn1.weight", "layer1.0.bn1.bias", "layer4.0.bn1.weight", "layer4.1.bn1.bias"]),
        ("layer4.*", ["layer4.0.conv1.weight", "layer4.0.bn1.weight", "layer4.1.bn1.bias"]),
        ("*.bias", ["stem.1.bias", "layer1.0.bn1.bias", "layer4.1.bn1.bias", "decode_head.bias", "head.bias", "fc.bias"]),
        ("head.weight", ["head.weight"]),
        ("layer?.0.conv1.weight", ["layer1.0.conv1.weight", "layer4.0.conv1.weight"]),
    ],
)
def test_glob_selects_expected_names_in_order(selector, expected):
    assert select(selector, NAMES) == expected


def test_plain_module_name_selects_everything_below_it():
    assert select("layer4", NAMES) == ["layer4.0.conv1.weight", "layer4.0.bn1.weight", "layer4.1.bn1.bias"]
    assert select("layer4.0", NAMES) == ["layer4.0.conv1.weight", "layer4.0.bn1.weight"]
    assert select("stem", NAMES) == ["stem.0.weight", "stem.1.weight", "stem.1.bias"]


def test_plain_module_name_is_not_a_prefix_of_longer_module_names():
    # 'layer4' is a module; 'layer40' is another module and must not be selected by it
    assert "layer40.weight" not in select("layer4", NAMES)
    assert select("layer40", NAMES) == ["layer40.weight"]


def test_head_never_selects_decode_head():
    assert select("head", NAMES) == ["head.weight", "head.bias"]
    assert select("head.*", NAMES) == ["head.weight", "head.bias"]
    assert not matches("head", "decode_head.weight")
    assert not matches("head.*", "decode_head.weight")
    assert matches("decode_head", "decode_head.weight")


def test_exact_full_name_matches():
    assert matches("fc.weight", "fc.weight")
    assert not matches("fc.weight", "fc.bias")


def test_glob_is_case_sensitive():
    assert not matches("FC.*", "fc.weight")


# --- regex selectors -------------------------------------------------------------------------------

def test_regex_selector_is_full_match():
    assert select(r"re:layer[14]\.0\.bn1\..*", NAMES) == [
        "layer1.0.bn1.weight", "layer1.0.bn1.bias", "layer4.0.bn1.weight"]
    # full match: a pattern for a part of the name matches nothing
    assert select("re:bn1", NAMES) == []
    assert not matches("re:head", "head.weight")
    assert matches(r"re:head\..*", "head.weight")


def test_regex_selector_anchored_at_start():
    # the regex form does not do the 'module name selects everything below' expansion,
    # and is anchored at the start: 'head' patterns do not reach 'decode_head'
    assert select(r"re:head\.(weight|bias)", NAMES) == ["head.weight", "head.bias"]
    assert select(r"re:.*head\.weight", NAMES) == ["decode_head.weight", "head.weight"]


def test_regex_and_glob_differ_on_dot():
    # in a glob '.' is literal; in a regex it is any character
    assert not matches("fc.weigh?", "fcXweight")
    assert matches("re:fc.weight", "fcXweight")


# --- select_all ------------------------------------------------------------------------------------

def test_select_all_union_in_names_order_without_duplicates():
    got = select_all(["fc", "head", "fc.weight"], NAMES, "optim.groups[0].params")
    assert got == ["head.weight", "head.bias", "fc.weight", "fc.bias"]


def test_select_all_empty_selector_list_selects_nothing():
    assert select_all([], NAMES, "freeze.frozen") == []


def test_select_all_zero_matches_is_error_with_where_and_close_names():
    with pytest.raises(UserError, match=r"freeze\.frozen: selector 'layer5' matches no parameter") as e:
        select_all(["fc", "layer5"], NAMES, "freeze.frozen")
    # module paths are among the hints
    assert "layer4" in str(e.value)
    assert "Closest names" in str(e.value)


def test_select_all_zero_matches_glob_hint():
    with pytest.raises(UserError, match=r"'haed\.\*' matches no parameter.*Closest names:.*head"):
        select_all(["haed.*"], NAMES, "freeze.trainable")


def test_select_all_zero_matches_regex_error():
    sel = r"re:classifier\..*"
    with pytest.raises(UserError, match=re.escape(f"mapping.exclude: selector {sel!r} matches no parameter")):
        select_all([sel], NAMES, "mapping.exclude")


def test_select_all_bad_regex_is_user_error():
    with pytest.raises(UserError, match=r"optim\.groups\[1\]\.params: selector 're:layer\(4' is not a valid regex"):
        select_all(["fc", "re:layer(4"], NAMES, "optim.groups[1].params")


def test_check_selector_accepts_glob_and_good_regex():
    check_selector("layer[4.*", "x")  # globs are never compiled as regexes
    check_selector(r"re:layer\d+\..*", "x")
    with pytest.raises(UserError, match="not a valid regex"):
        check_selector("re:[unclosed", "where")


def test_module_prefixes_lists_every_module_path_once():
    assert module_prefixes(["a.b.c.weight", "a.b.d.bias", "e.weight", "top"]) == ["a", "a.b", "a.b.c", "a.b.d", "e"]


# --- model parts: @head, @blocks, @blocks.N (expanded by model_parts.py; parsed here) --------------------

@pytest.mark.parametrize(("selector", "parsed"), [
    ("@head", ("head", None)), ("@blocks", ("blocks", None)), ("@blocks.0", ("blocks", 0)),
    ("@blocks.-1", ("blocks", -1)), ("@blocks.12", ("blocks", 12)),
])
def test_parse_part(selector, parsed):
    assert parse_part(selector, "freeze.trainable") == parsed


@pytest.mark.parametrize(("selector", "match"), [
    ("@heads", r"freeze\.trainable: '@heads' is not a model part\. Did you mean @head\?"),
    ("@block.1", r"'@block\.1' is not a model part\. Did you mean @blocks\?"),
    ("@blocks.last", r"only @blocks takes an index, a whole number"),
    ("@head.0", r"only @blocks takes an index"),
    ("@blocks.1.0", r"only @blocks takes an index"),
])
def test_parse_part_errors(selector, match):
    with pytest.raises(UserError, match=match):
        parse_part(selector, "freeze.trainable")


def test_an_unexpanded_part_is_refused_where_names_are_matched():
    with pytest.raises(UserError, match=r"freeze\.trainable: '@head' names a part of the model"):
        select_all(["@head"], NAMES, "freeze.trainable")
    with pytest.raises(UserError, match="is not a model part"):  # a typo still gets its did-you-mean
        check_selector("@haed", "mapping.exclude")
