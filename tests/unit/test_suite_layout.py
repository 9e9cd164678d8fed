"""The suite itself: pytest collects tests/ without packages (rootdir-relative module names), so two test modules
with one basename in different folders stop the whole run at collection."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def test_no_two_test_modules_share_a_basename() -> None:
    names = Counter(p.name for p in TESTS.rglob("test_*.py"))
    assert [n for n, count in names.items() if count > 1] == []
    assert names["test_suite_layout.py"] == 1  # the check looks where the tests are
