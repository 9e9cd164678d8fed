"""The README's generated sections: targets marked met or not, sections replaced in place, fault claims listed."""

from __future__ import annotations

import re
from typing import Any

from bench import readme


def test_targets_are_marked_met_or_missed_and_unmeasured_ones_say_so() -> None:
    results = {
        "machine": {"cpus": 2, "python": "3.11.7", "platform": "Linux"},
        "reactive": {"first_sign_ms": {"p50": 8.5, "p95": 60.0, "max": 70.0}, "history_calls_after_first_contact": 0},
        "sessions": {"follow_up_warm_ms": {"p50": 80.0, "p95": 120.0, "max": 150.0}},
    }
    table = readme.performance(results)
    rows = {line.split(" | ")[0].strip("| "): line for line in table.splitlines() if line.startswith("| ")}
    assert rows["mention → first visible sign (👀)"].endswith("| ❌ | unknown |")  # p95 60 > 50; no time recorded
    assert "8.5 / 60.0 / 70.0 ms" in rows["mention → first visible sign (👀)"]
    assert rows["follow-up in a warm thread → answer"].endswith("| ✅ | unknown |")
    assert rows["`conversations.history` calls after first contact"].endswith("| ✅ | unknown |")
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


def test_rows_from_one_sitting_say_so_and_mixed_rows_carry_their_own_time() -> None:
    def results(reactive_at: str) -> dict[str, object]:
        return {
            "reactive": {"first_sign_ms": {"p50": 8.5, "p95": 9.0, "max": 9.5},
                         "measured_at": {"first_sign_ms": reactive_at}},
            "sessions": {"follow_up_warm_ms": {"p50": 80.0, "p95": 120.0, "max": 150.0},
                         "measured_at": {"follow_up_warm_ms": "2026-12-02T10:00+00:00"}},
        }

    together = readme.performance(results("2026-12-02T10:30+00:00"))
    assert "All rows come from one sitting, 2026-12-02 10:00+00:00 to 10:30+00:00 UTC." in together
    assert "Not all rows come from one sitting" in readme.performance(results("2026-12-02T11:00+00:00"))
    assert "measured (UTC)" not in together
    apart = readme.performance(results("2026-11-20T09:00+00:00"))
    assert "Not all rows come from one sitting" in apart
    rows = {line.split(" | ")[0].strip("| "): line for line in apart.splitlines() if line.startswith("| ")}
    assert rows["mention → first visible sign (👀)"].endswith("| ✅ | 2026-11-20 09:00+00:00 |")
    assert rows["follow-up in a warm thread → answer"].endswith("| 2026-12-02 10:00+00:00 |")


def test_a_partial_bench_run_keeps_the_time_of_the_parts_it_did_not_measure(tmp_path, monkeypatch) -> None:
    import json

    from bench import common

    monkeypatch.setattr(common, "RESULTS", tmp_path / "results.json")
    common.write_results("burst", {"burst": {"drained_s": 1}, "eight_in_a_second": {"n": 1}})
    first = json.loads(common.RESULTS.read_text())["burst"]["measured_at"]
    assert set(first) == {"burst", "eight_in_a_second"}
    stamps = {"burst": "2020-01-01T00:00+00:00", "eight_in_a_second": "2020-01-01T00:00+00:00"}
    common.RESULTS.write_text(json.dumps({"burst": {"burst": {"drained_s": 1}, "measured_at": stamps}}))
    common.write_results("burst", {"burst": {"drained_s": 1}, "eight_in_a_second": {"n": 2}},
                         measured=["eight_in_a_second"])
    after = json.loads(common.RESULTS.read_text())["burst"]
    assert after["measured_at"]["burst"] == "2020-01-01T00:00+00:00"
    assert after["measured_at"]["eight_in_a_second"] > "2026"
    assert after["eight_in_a_second"] == {"n": 2}


def test_the_prose_around_the_table_has_no_figure_of_its_own() -> None:
    bare = readme.notes({"machine": {"cpus": 2}})
    # with nothing measured, the only numbers left are the scenario's own definition (8 mentions) and the CPUs
    assert set(re.findall(r"(?<![\w.])\d+(?:[.,]\d+)*", bare)) <= {"8", "2"}, bare  # p50, p95 are labels
    assert bare.count("(not measured)") >= 8
    results = {
        "machine": {"cpus": 2},
        "sessions": {"cli_start": {"cpu_ms": {"p50": 600.0}, "wall_ms": {"p50": 550.0}},
                     "follow_up_evicted": {"answer_ms": {"p50": 701.0}, "bot_share_ms": {"p50": 55.0}},
                     "follow_up_after_restart": {"answer_ms": {"p50": 688.0}, "bot_share_ms": {"p50": 12.0}}},
        "burst": {"eight_in_a_second": {"all_answered_s": {"p50": 3.61}}},
        "reactive": {"bot_overhead_ms": {"p50": 21.4, "p95": 33.9}, "answer_ms": {"p50": 700, "p95": 900}},
    }
    text = readme.notes(results)
    for shown in ("costs 600 ms of CPU (550 ms wall", "8 starts are 4.8 s of CPU, at least 2.4 s on 2 CPUs",
                  "3.6 s p50", "701 ms p50 after an eviction, 688 ms after a restart", "55 and 12 ms p50",
                  "21.4 ms p50, 33.9 ms p95"):
        assert shown in text, shown
    assert "(not measured)" not in text
    assert "that row's p95 misses its target" in text  # 900 > 800, and only then
    results["reactive"]["answer_ms"] = {"p50": 700, "p95": 790}  # type: ignore[index]
    assert "misses" not in readme.notes(results)
    assert "chicane" in readme.intro({"tool": "chicane", "source": "here", "new_thread_ms_p50": 1862,
                                      "follow_up_ms_p50": 543, "eight_in_a_second_s": 26,
                                      "warm_children_cap": "none"})


def test_an_answer_time_is_the_call_that_carried_that_answer_not_one_whose_marker_starts_the_same() -> None:
    from types import SimpleNamespace

    from bench.common import answered_at

    calls = [SimpleNamespace(method="chat.postMessage", t=1.0, params={"channel": "C1", "text": "answer for f10"}),
             SimpleNamespace(method="chat.postMessage", t=2.0, params={"channel": "C2", "text": "answer for f1"}),
             SimpleNamespace(method="chat.update", t=3.0, params={"channel": "C1", "text": "answer for f1\nfooter"})]
    slack = SimpleNamespace(calls=calls, wait_for=lambda predicate, timeout: predicate() or None,
                            bot_messages=lambda channel, ts: [{"text": "answer for f1"}])
    assert answered_at(slack, "C1", "1.000001", "answer for f1") == 3.0


def test_the_cluster_rows_show_what_three_nodes_add_and_meet_the_target_only_within_10_ms_p50() -> None:
    from bench.cluster import added, nest

    assert nest({"cluster": {"new.sent_to_dispatched_ms": 3.3}}) == {"cluster": {"new": {"sent_to_dispatched_ms": 3.3}}}

    fast = added([10.0, 12.0, 14.0], [15.0, 19.0, 30.0])  # p50 12 → 19, p95 14 → 30
    assert fast["added_p50_ms"] == 7.0 and fast["added_p95_ms"] == 16.0
    slow = added([100.0] * 3, [111.0] * 3)
    assert added([], [1.0]).keys() == {"single_host_ms", "cluster_ms"}  # one side unmeasured: no difference
    burst: dict[str, Any] = {"tasks": 30, "nodes_1": {"tasks_per_min": 90.5, "s": 19.9},
                             "nodes_3": {"tasks_per_min": 99.0, "s": 18.2},
                             "single_host": {"tasks_per_min": 95.0, "s": 18.9}}
    results = {"cluster": {"latency": {"first_sign": fast, "answer_bot_share": slow}, "burst": burst}}
    rows = {line.split(" | ")[0].strip("| "): line for line in readme.performance(results).splitlines()
            if line.startswith("| several hosts")}
    first, answer, follow = (next(line for what, line in rows.items() if what.startswith(f"several hosts: {w}"))
                             for w in ("mention → first", "mention → answer", "follow-up"))
    assert "+7.0 ms p50, +16.0 ms p95 (3 nodes 19.0 / 30.0 ms, one host 12.0 / 14.0 ms; n = 3 each)" in first
    assert first.endswith("| ✅ | unknown |") and answer.endswith("| ❌ | unknown |")
    assert "| not measured |" in follow
    per_minute = next(line for what, line in rows.items() if "per minute" in what)
    assert "1 node: 90.5/min (19.9 s); 3 nodes: 99/min (18.2 s); one host without NATS: 95/min (18.9 s)" in per_minute
    burst["nodes_3"] |= {"cpu_s_per_task": 0.61, "cpu_s_nats": 0.4}
    note = readme.notes({"machine": {"cpus": 2}, **results})
    assert "Several hosts" in note and "0.61 s of CPU with three nodes" in note
    assert "nats-server used 0.4 s" in note and "much more than 197 such tasks per minute" in note


def _block(text: str, name: str) -> str:
    return text.split(f"<!-- {name}:start -->\n")[1].split(f"\n<!-- {name}:end -->")[0]


def _numbers(text: str) -> set[str]:
    return set(re.findall(r"(?<![\w.])\d+(?:[.,]\d+)*", text))


def test_the_worked_example_is_regenerated_from_the_results_file(tmp_path, monkeypatch) -> None:
    import copy
    import json
    import sys

    results = json.loads(readme.RESULTS.read_text())
    monkeypatch.setattr(readme, "RESULTS", tmp_path / "results.json")
    monkeypatch.setattr(readme, "README", tmp_path / "README.md")
    monkeypatch.setattr(sys, "argv", ["bench.readme"])
    readme.README.write_text(readme.ROOT.joinpath("README.md").read_text())

    readme.RESULTS.write_text(json.dumps(results))
    readme.main()
    before = _block(readme.README.read_text(), "worked-example")
    assert before == readme.worked_example(results)

    changed = copy.deepcopy(results)
    changed["sessions"]["cli_start"]["cpu_ms"]["p50"] = 1200.0
    changed["sessions"]["memory"]["claude_rss_mb_each"] = 201.3
    changed["sessions"]["follow_up_evicted"]["answer_ms"]["p50"] = 777.0
    readme.RESULTS.write_text(json.dumps(changed))
    readme.main()
    after = _block(readme.README.read_text(), "worked-example")
    assert after != before
    for shown in ("takes 201.3 MB RSS", "1,200 ms of CPU p50", "its answer in 777 ms p50",
                  "4 CPUs ÷ 1.20 s ≈ 3 starts a second per node, ~10 for the cluster",
                  "60 × 1.20 s ≈ 72 s of CPU, at least 6.0 s on the cluster's 12 CPUs"):
        assert shown in after, shown
    assert "(not measured)" not in after


def _settled() -> set[str]:
    """The worked example's figures that no measurement moves: its assumptions, the bot's constants and settings,
    and what follows from them alone."""
    from bot.cluster.jetstream import EVENTS_PER_CHANNEL
    from bot.config import MAX_PROCESSES_CEILING, MEMORY_SHARE, PROCESS_MB

    per_node = int(readme.AVAILABLE_GB * 1024 * MEMORY_SHARE // PROCESS_MB)
    concurrent = readme.setting_default("SLACKBUS_MAX_CONCURRENT")
    channel_mb = EVENTS_PER_CHANNEL * readme.EVENT_KB // 1000
    settled = [readme.NODES, readme.NODE_CPUS, readme.NODE_GB, readme.AVAILABLE_GB, round(MEMORY_SHARE * 100),
               PROCESS_MB, per_node, per_node * readme.NODES, per_node * PROCESS_MB, concurrent,
               concurrent * readme.NODES, 2, MAX_PROCESSES_CEILING, readme.BURST_THREADS,
               readme.NODES * readme.NODE_CPUS, EVENTS_PER_CHANNEL, readme.EVENT_KB, channel_mb, readme.BUSY_CHANNELS,
               round(readme.BUSY_CHANNELS * channel_mb / 1000), readme.SLACK_CONNECTIONS,
               round(MAX_PROCESSES_CEILING * PROCESS_MB / MEMORY_SHARE),
               readme.SLACK_CONNECTIONS * MAX_PROCESSES_CEILING]
    return {f"{n:,}" for n in settled} | {"1024"}  # MB in a GB, written plainly


def test_the_worked_example_has_no_measured_figure_of_its_own() -> None:
    bare = readme.worked_example({})
    assert bare.count("(not measured)") == 4, bare  # the RSS, a start's CPU, a cold resume, the starts a second
    assert _numbers(bare) <= _settled(), _numbers(bare) - _settled()
    assert readme.setting_default("SLACKBUS_WARM_POOL") >= 0


def test_the_several_hosts_section_has_no_measured_figure_outside_its_generated_block() -> None:
    import json

    section = readme.README.read_text().split("\n## Several hosts\n")[1].split("\n## ")[0]
    block = _block(section, "worked-example")
    outside = section.replace(block, "")
    prose = re.sub(r"`[^`\n]*`", "", re.sub(r"```.*?```", "", outside, flags=re.S))  # code: addresses, ports, ids
    # settings and Slack's limits, not measurements: 3 servers and copies, 2 minutes (Slack's retries), a heartbeat
    # dead after 5 s, 10 connections per app, 60 answers at Slack's one a second, 20,000 events (EVENTS_PER_CHANNEL)
    assert _numbers(prose) <= {"3", "2", "5", "10", "60", "20,000", "4222"}, _numbers(prose)
    # and none of the figures the block takes from the measurements
    measured = _numbers(readme.worked_example(json.loads(readme.RESULTS.read_text()))) - _settled()
    assert measured and not measured & _numbers(prose), measured & _numbers(prose)
