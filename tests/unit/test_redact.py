"""redact.Redactor: configured values and token shapes are masked; ordinary text is left alone."""

from __future__ import annotations

import pytest

from bot.redact import REDACTED, Redactor


@pytest.mark.parametrize(
    "secret",
    [
        "xoxb-1234567890-0987654321-AbCdEfGhIjKlMnOp",
        "xoxp-1234567890-abcdef",
        "xoxa-2-abcdefgh",
        "xapp-1-A0123456789-1234567890123-abcdef0123456789",
        "sk-ant-api03-AbCd_EfGh-IjKlMnOpQrStUvWxYz0123456789",
        "sk-proj-abcdefghijklmnopqrstuvwxyz0123",
        "https://hooks.slack.com/services/T00000000/B00000000/XXXXXXXXXXXXXXXXXXXXXXXX",
    ],
)
def test_token_shapes_are_masked(secret):
    r = Redactor()
    out = r(f"before {secret} after")
    assert out == f"before {REDACTED} after"


@pytest.mark.parametrize("header", ["Bearer", "bearer", "BEARER"])
def test_bearer_values_are_masked(header):
    out = Redactor()(f"Authorization: {header} eyJhbGciOiJIUzI1NiJ9.payload.sig== trailing")
    assert out == f"Authorization: {REDACTED} trailing"


def test_several_tokens_in_one_text():
    text = "bot=xoxb-aaaaaaaa-bbbb app=xapp-1-cccccccc key=sk-ant-dddddddd\nurl https://hooks.slack.com/services/T1/B"
    out = Redactor()(text)
    assert out == f"bot={REDACTED} app={REDACTED} key={REDACTED}\nurl {REDACTED}"


def test_exact_configured_values_are_masked():
    r = Redactor(["correct-horse-battery-staple"])
    r.add("another-secret-value", "p4ssw0rd!!")
    out = r("a correct-horse-battery-staple b another-secret-value c p4ssw0rd!! d")
    assert out == f"a {REDACTED} b {REDACTED} c {REDACTED} d"


def test_the_longest_configured_value_wins():
    r = Redactor(["abcdefgh", "abcdefgh-and-more"])
    assert r("x abcdefgh-and-more y abcdefgh z") == f"x {REDACTED} y {REDACTED} z"


def test_values_with_regex_characters_are_matched_literally():
    r = Redactor(["a.b*c+d?(e)"])
    assert r("see a.b*c+d?(e) here") == f"see {REDACTED} here"
    assert r("see aXbbbcdde here") == "see aXbbbcdde here"


def test_short_and_empty_values_are_ignored():
    r = Redactor(["", "abc", "1234567"])
    text = "abc 1234567 is fine"
    assert r(text) == text


def test_empty_text():
    assert Redactor(["a-secret-value"])("") == ""


@pytest.mark.parametrize(
    "text",
    [
        "The tests pass. Run `pytest -q` to check.",
        "xoxb is the prefix of a bot token; sk-ant is Anthropic's.",
        "Use sk-learn or scikit-learn for that.",
        "Open https://slack.com/api/chat.postMessage and https://example.com/hooks/services",
        "def bearer(): return token_count  # 42",
        "see the diff in src/task_runner.py lines 10-20",
    ],
)
def test_ordinary_text_is_left_alone(text):
    assert Redactor(["configured-secret-value"])(text) == text


@pytest.mark.parametrize(
    "text",
    [
        "kubectl rollout restart deployment/task-scheduler-worker-pool",
        "the disk-usage-monitoring-service-v2 alert fired",
    ],
)
def test_hyphenated_words_containing_sk_are_left_alone(text):
    assert Redactor()(text) == text


def test_the_word_bearer_in_prose_is_left_alone():
    text = "Use bearer authentication for the internal API."
    assert Redactor()(text) == text
