"""The README's generated sections: targets marked met or not, sections replaced in place, fault claims listed."""

from __future__ import annotations

import re

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
    names = {name for _module, name, _claim in checks}
    assert len(checks) >= 15, checks  # tests/faults and the restart and safety tests of tests/e2e
    assert "test_a_full_disk_mid_run_is_a_logged_error_not_a_dead_bot_nor_a_corrupt_record" in names
    assert "test_the_socket_dropped_mid_run_reconnects_and_every_answer_arrives_once" in names
    assert "test_a_run_killed_with_the_bot_is_reported_after_restart_and_a_reply_resumes" in names
    failed = checks[0][1]
    text = readme.reliability({failed: "failed"})
    for module, name, _claim in checks:
        assert f"`{module}::{name}`" in text
    assert text.count("- ❌ ") == 1 and f"`{checks[0][0]}::{failed}`" in text


def test_a_test_that_runs_no_bot_code_is_not_listed_as_a_fault_injected() -> None:
    names = {name for _module, name, _claim in readme.fault_checks()}
    # SAYS == FAULTS: a check of the test's own tables
    assert "test_every_fault_has_an_expected_message" not in names
    # the same module's real fault test (fixtures), and pure-function fault tests that call the bot's code
    assert "test_a_misbehaving_cli_fails_one_run_clearly_and_the_bot_keeps_working" in names
    assert "test_split_markdown_keeps_parts_within_the_limit_balanced_and_complete" in names
    assert "test_clean_never_raises_on_raw_odd_text" in names


def test_every_test_the_readme_lists_as_a_fault_exists() -> None:
    section = readme.README.read_text().split("<!-- reliability:start -->")[1].split("<!-- reliability:end -->")[0]
    listed = re.findall(r"\(`(test_\w+)::(test_\w+)`\)$", section, flags=re.M)
    assert len(listed) >= 15, section
    files = {p.stem: p for p in [*readme.FAULTS.glob("test_*.py"), *readme.MORE_FAULTS]}
    for module, name in listed:
        assert module in files, module
        assert re.search(rf"^(async )?def {name}\(", files[module].read_text(), flags=re.M), f"{module}::{name}"
