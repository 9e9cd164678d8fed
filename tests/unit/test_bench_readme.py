"""The README's generated sections: targets marked met or not, sections replaced in place, fault claims listed."""

from __future__ import annotations

from bench import readme


def test_targets_are_marked_met_or_missed_and_unmeasured_ones_say_so() -> None:
    results = {
        "machine": {"cpus": 2, "python": "3.11.7", "platform": "Linux"},
        "reactive": {"first_sign_ms": {"p50": 8.5, "p95": 60.0, "max": 70.0}, "history_calls_after_first_contact": 0},
        "sessions": {"follow_up_warm_ms": {"p50": 80.0, "p95": 120.0, "max": 150.0}},
    }
    table = readme.performance(results)
    rows = {line.split(" | ")[0].strip("| "): line for line in table.splitlines() if line.startswith("| ")}
    assert rows["mention → first visible sign (👀)"].endswith("| ❌ |")  # p95 60 > 50
    assert "8.5 / 60.0 / 70.0 ms" in rows["mention → first visible sign (👀)"]
    assert rows["follow-up in a warm thread → answer"].endswith("| ✅ |")
    assert rows["`conversations.history` calls after first contact"].endswith("| ✅ |")
    assert "| not measured |" in rows["bot RSS with ~200 tasks queued"]
    assert "2 CPUs, Python 3.11.7, Linux" in table


def test_a_section_is_replaced_between_its_marks_and_appended_when_missing() -> None:
    text = "# x\n\n<!-- performance:start -->\nold\n<!-- performance:end -->\n\nafter\n"
    out = readme.replace_section(text, "performance", "new $1 \\g<0>")
    assert out == "# x\n\n<!-- performance:start -->\nnew $1 \\g<0>\n<!-- performance:end -->\n\nafter\n"
    assert readme.replace_section("# x\n", "reliability", "r").endswith(
        "<!-- reliability:start -->\nr\n<!-- reliability:end -->\n")


def test_the_reliability_list_names_every_fault_test_with_its_outcome() -> None:
    checks = readme.fault_checks()
    text = readme.reliability({checks[0][1]: "failed"} if checks else {})
    for module, name, _claim in checks:
        assert f"`{module}::{name}`" in text
    if checks:
        assert "- ❌ " in text
