"""The body-wide Unicode check: where it finds a lone surrogate, at any depth."""

from __future__ import annotations

from server.schemas.body import first_non_unicode

LONE = "\ud83c"  # half of a surrogate pair, as JSON's "\ud83c" decodes


def test_a_clean_body_has_nothing_to_report() -> None:
    assert first_non_unicode({"a": ["é", {"ü": "日本"}], "n": 3}) is None


def test_the_path_leads_to_the_bad_string() -> None:
    assert first_non_unicode({"a": [{"b": "ok"}, {"b": LONE}]}) == ("a", 1, "b")


def test_a_bad_key_is_reported_at_the_object_holding_it() -> None:
    assert first_non_unicode({"a": {LONE: 1}}) == ("a",)


def test_a_deeply_nested_body_does_not_exhaust_the_recursion_limit() -> None:
    body: object = LONE
    for _ in range(10_000):
        body = [body]
    assert first_non_unicode(body) == (0,) * 10_000
