"""bot.bridge.hooks_install on real files in tmp_path: merging our hook entries in and taking exactly them out again."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from bot.bridge.hooks_install import (
    DEFAULT_EVENTS,
    MARKER,
    SIDECAR_NAME,
    Result,
    hook_command,
    install,
    settings_path,
    uninstall,
)

BASE = ["/opt/slackbus/.venv/bin/slackbus"]
THEIRS = {"type": "command", "command": "notify-send 'done'", "timeout": 5}


def cmd(event: str, channel: str | None = None) -> str:
    return hook_command(BASE, event, channel=channel)


def ours(event: str, channel: str | None = None, timeout: int = 10) -> dict[str, Any]:
    return {"type": "command", "command": cmd(event, channel), "timeout": timeout}


def settings(tmp_path: Path) -> Path:
    return tmp_path / ".claude" / "settings.json"


def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode("utf-8") if isinstance(text, str) else text)
    return path


def load(path: Path) -> Any:
    return json.loads(path.read_bytes().decode("utf-8-sig"))


def our_commands(path: Path) -> dict[str, list[str]]:
    """event -> the commands of our handlers in it, in file order."""
    found: dict[str, list[str]] = {}
    for event, groups in load(path).get("hooks", {}).items():
        for group in groups:
            for handler in group["hooks"]:
                if handler["command"].endswith(f"# {MARKER}"):
                    found.setdefault(event, []).append(handler["command"])
    return found


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


# ------------------------------------------------------------------------------------------------ settings_path


def test_settings_path_user_uses_home(tmp_path: Path) -> None:
    assert settings_path(user=True, home=tmp_path) == tmp_path / ".claude" / "settings.json"


def test_settings_path_user_defaults_to_the_real_home() -> None:
    assert settings_path(user=True) == Path.home() / ".claude" / "settings.json"


def test_settings_path_project(tmp_path: Path) -> None:
    assert settings_path(project=tmp_path / "proj") == tmp_path / "proj" / ".claude" / "settings.json"


def test_settings_path_defaults_to_the_current_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert settings_path() == Path.cwd() / ".claude" / "settings.json"


def test_settings_path_refuses_user_and_project_together(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not both"):
        settings_path(project=tmp_path, user=True)


# ------------------------------------------------------------------------------------------------- hook_command


def test_hook_command_puts_env_file_before_hook_and_channel_after_the_event() -> None:
    got = hook_command(["/abs/.venv/bin/slackbus"], "Stop", channel="C123", env_file="/x/.env")
    assert got == "/abs/.venv/bin/slackbus --env-file /x/.env hook Stop --channel C123 # slackbus-hook"


def test_hook_command_without_options() -> None:
    assert hook_command(["/usr/bin/python3", "-m", "bot"], "SessionEnd") == (
        "/usr/bin/python3 -m bot hook SessionEnd # slackbus-hook"
    )


def test_hook_command_quotes_for_the_shell() -> None:
    got = hook_command(["/Users/Jo Doe/venv/bin/slackbus"], "Stop", env_file="/Users/Jo Doe/it's.env")
    assert got == (
        "'/Users/Jo Doe/venv/bin/slackbus' --env-file '/Users/Jo Doe/it'\"'\"'s.env' hook Stop # slackbus-hook"
    )


@pytest.mark.parametrize("event", ["stop", "Stop --evil", "", "Stop; rm -rf ~"])
def test_hook_command_refuses_what_is_not_an_event_name(event: str) -> None:
    with pytest.raises(ValueError, match="not a Claude Code hook event"):
        hook_command(BASE, event)


def test_hook_command_refuses_an_empty_base() -> None:
    with pytest.raises(ValueError, match="empty"):
        hook_command([], "Stop")


# ---------------------------------------------------------------------------------- install into a missing file


def test_install_creates_file_and_directory_in_claude_code_style(tmp_path: Path) -> None:
    path = settings(tmp_path)
    result = install(path, BASE, channel="C1")

    assert result == Result(path, True, list(DEFAULT_EVENTS), [])
    expected = {"hooks": {event: [{"hooks": [ours(event, "C1")]}] for event in DEFAULT_EVENTS}}
    assert path.read_text(encoding="utf-8") == json.dumps(expected, indent=2) + "\n"
    assert json.loads((path.parent / SIDECAR_NAME).read_text(encoding="utf-8")) == {
        "created_dir": True,
        "files": {"settings.json": {"created_file": True}},
    }
    assert leftovers(path.parent) == []


def test_uninstall_deletes_the_file_and_directory_install_created(tmp_path: Path) -> None:
    path = settings(tmp_path)
    install(path, BASE)

    result = uninstall(path)

    assert result == Result(path, True, [], list(DEFAULT_EVENTS))
    assert not path.parent.exists()
    assert sorted(os.listdir(tmp_path)) == []


def test_uninstall_keeps_an_existing_directory_but_deletes_the_file_it_created(tmp_path: Path) -> None:
    path = settings(tmp_path)
    path.parent.mkdir()
    (path.parent / "settings.local.json").write_text("{}\n", encoding="utf-8")
    install(path, BASE)
    assert json.loads((path.parent / SIDECAR_NAME).read_text(encoding="utf-8")) == {
        "files": {"settings.json": {"created_file": True}}
    }

    uninstall(path)

    assert sorted(os.listdir(path.parent)) == ["settings.local.json"]


def test_uninstall_keeps_a_created_file_that_gained_other_settings(tmp_path: Path) -> None:
    path = settings(tmp_path)
    install(path, BASE)
    data = load(path)
    data["model"] = "opus"
    write(path, json.dumps(data, indent=2) + "\n")

    assert uninstall(path).changed
    assert path.read_text(encoding="utf-8") == '{\n  "model": "opus"\n}\n'
    assert sorted(os.listdir(path.parent)) == ["settings.json"]  # the note is gone, the file stays


def test_uninstall_of_a_missing_file_tidies_the_note_and_directory(tmp_path: Path) -> None:
    path = settings(tmp_path)
    install(path, BASE)
    path.unlink()  # somebody deleted it by hand

    assert uninstall(path) == Result(path, False, [], [])
    assert not path.parent.exists()


def test_uninstall_of_a_missing_file_without_a_note_does_nothing(tmp_path: Path) -> None:
    path = settings(tmp_path)
    assert uninstall(path) == Result(path, False, [], [])
    assert not path.parent.exists()


def test_install_refuses_when_the_project_directory_does_not_exist(tmp_path: Path) -> None:
    path = tmp_path / "nope" / ".claude" / "settings.json"
    with pytest.raises(ValueError, match="does not exist"):
        install(path, BASE)
    assert not (tmp_path / "nope").exists()


# ------------------------------------------------------------------------------------------- byte-for-byte round trip

ORIGINAL: dict[str, Any] = {
    "$schema": "https://json.schemastore.org/claude-code-settings.json",
    "permissions": {"allow": ["Bash(git diff:*)"], "deny": []},
    "env": {"GREETING": "héllo — 日本語 ✓"},
    "hooks": {"Stop": [{"hooks": [THEIRS]}], "PreToolUse": [{"matcher": "Bash", "hooks": [THEIRS]}]},
    "model": "opus",
}
FLAT = {"model": "opus", "cleanupPeriodDays": 30, "includeCoAuthoredBy": False}

STYLES = {
    "indent2-newline": json.dumps(ORIGINAL, indent=2, ensure_ascii=False) + "\n",
    "indent2-no-newline": json.dumps(ORIGINAL, indent=2, ensure_ascii=False),
    "indent4": json.dumps(ORIGINAL, indent=4, ensure_ascii=False) + "\n",
    "tabs": json.dumps(ORIGINAL, indent="\t", ensure_ascii=False) + "\n",
    "compact-python": json.dumps(ORIGINAL, ensure_ascii=False),
    "compact-minified": json.dumps(ORIGINAL, separators=(",", ":"), ensure_ascii=False) + "\n",
    "ascii-escaped": json.dumps(ORIGINAL, indent=2) + "\n",
    "crlf": (json.dumps(ORIGINAL, indent=2, ensure_ascii=False) + "\n").replace("\n", "\r\n"),
    "bom": "\ufeff" + json.dumps(ORIGINAL, indent=2, ensure_ascii=False) + "\n",
    "two-newlines": json.dumps(ORIGINAL, indent=2, ensure_ascii=False) + "\n\n",
    "no-hooks": json.dumps(FLAT, indent=2) + "\n",
    "no-hooks-compact": json.dumps(FLAT, separators=(",", ":")),
    "empty-object": "{}\n",
    "empty-object-bare": "{}",
    "empty-hooks": json.dumps({"model": "opus", "hooks": {}}, indent=2) + "\n",
    "empty-event": json.dumps({"hooks": {"Stop": [], "Notification": []}}, indent=2) + "\n",
    "empty-group": json.dumps({"hooks": {"Stop": [{"hooks": []}]}}, indent=2) + "\n",
    "blank": "\n",
    "zero-bytes": "",
}


@pytest.mark.parametrize("name", list(STYLES))
def test_install_then_uninstall_restores_the_original_bytes(tmp_path: Path, name: str) -> None:
    original = STYLES[name].encode("utf-8")
    path = write(settings(tmp_path), original)

    installed = install(path, BASE, tools=["Bash", "Edit"], channel="C1", env_file="/x/.env")
    assert installed.changed
    assert path.read_bytes() != original
    assert set(our_commands(path)) == {*DEFAULT_EVENTS, "PostToolUse"}

    removed = uninstall(path)
    assert removed.changed
    assert sorted(removed.removed) == sorted({*DEFAULT_EVENTS, "PostToolUse"})
    assert path.read_bytes() == original
    assert sorted(os.listdir(path.parent)) == ["settings.json"]


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("indent4", lambda d: json.dumps(d, indent=4, ensure_ascii=False) + "\n"),
        ("tabs", lambda d: json.dumps(d, indent="\t", ensure_ascii=False) + "\n"),
        ("compact-minified", lambda d: json.dumps(d, separators=(",", ":"), ensure_ascii=False) + "\n"),
        ("compact-python", lambda d: json.dumps(d, ensure_ascii=False)),
        ("ascii-escaped", lambda d: json.dumps(d, indent=2) + "\n"),
        ("crlf", lambda d: (json.dumps(d, indent=2, ensure_ascii=False) + "\n").replace("\n", "\r\n")),
        ("empty-object", lambda d: json.dumps(d, indent=2) + "\n"),
    ],
)
def test_install_writes_in_the_originals_style(tmp_path: Path, name: str, expected: Any) -> None:
    path = write(settings(tmp_path), STYLES[name])
    install(path, BASE)
    assert path.read_bytes().decode("utf-8") == expected(load(path))


def test_unicode_stays_unescaped(tmp_path: Path) -> None:
    path = write(settings(tmp_path), STYLES["indent2-newline"])
    install(path, BASE, channel="C1")
    text = path.read_text(encoding="utf-8")
    assert "héllo — 日本語 ✓" in text
    assert "\\u" not in text


# ------------------------------------------------------------------------------------------------- idempotence


@pytest.mark.parametrize("name", ["indent2-newline", "compact-minified", "empty-hooks", "blank"])
def test_install_twice_is_one_copy_and_identical_bytes(tmp_path: Path, name: str) -> None:
    path = write(settings(tmp_path), STYLES[name])
    install(path, BASE, tools=["Bash"], channel="C1")
    first = path.read_bytes()
    sidecar = sorted(os.listdir(path.parent))
    mtime = path.stat().st_mtime_ns

    again = install(path, BASE, tools=["Bash"], channel="C1")

    assert again == Result(path, False, [], [])
    assert path.read_bytes() == first
    assert path.stat().st_mtime_ns == mtime
    assert sorted(os.listdir(path.parent)) == sidecar
    assert all(len(commands) == 1 for commands in our_commands(path).values())


def test_install_into_a_missing_file_twice_is_identical(tmp_path: Path) -> None:
    path = settings(tmp_path)
    install(path, BASE)
    first = path.read_bytes()
    assert not install(path, BASE).changed
    assert path.read_bytes() == first
    uninstall(path)
    assert not path.parent.exists()  # the second install did not forget that the first one created it all


def test_reinstall_with_another_channel_replaces_our_commands_in_place(tmp_path: Path) -> None:
    path = write(settings(tmp_path), STYLES["indent2-newline"])
    install(path, BASE, channel="C1")

    result = install(path, BASE, channel="C2")

    assert result.changed
    assert result.added == list(DEFAULT_EVENTS)
    assert result.removed == []
    assert our_commands(path) == {event: [cmd(event, "C2")] for event in DEFAULT_EVENTS}
    assert load(path)["hooks"]["Stop"] == [{"hooks": [THEIRS]}, {"hooks": [ours("Stop", "C2")]}]
    uninstall(path)
    assert path.read_bytes() == STYLES["indent2-newline"].encode("utf-8")


def test_reinstall_updates_the_timeout(tmp_path: Path) -> None:
    path = settings(tmp_path)
    install(path, BASE, events=["Stop"])
    install(path, BASE, events=["Stop"], timeout=30)
    assert load(path) == {"hooks": {"Stop": [{"hooks": [ours("Stop", timeout=30)]}]}}


def test_reinstall_drops_our_entries_from_events_no_longer_asked_for(tmp_path: Path) -> None:
    path = write(settings(tmp_path), STYLES["indent2-newline"])
    install(path, BASE, tools=["Bash"])

    result = install(path, BASE, events=["Stop"])

    assert result.removed == ["SessionStart", "SubagentStop", "Notification", "SessionEnd", "PostToolUse"]
    assert result.added == []
    assert our_commands(path) == {"Stop": [cmd("Stop")]}
    assert list(load(path)["hooks"]) == ["Stop", "PreToolUse"]  # theirs stay; the events we made are gone


def test_duplicated_entries_of_ours_collapse_to_one(tmp_path: Path) -> None:
    stale = {"type": "command", "command": "/old/slackbus hook Stop # slackbus-hook", "timeout": 10}
    path = write(settings(tmp_path), json.dumps({"hooks": {"Stop": [{"hooks": [stale]}, {"hooks": [stale]}]}}))

    result = install(path, BASE, events=["Stop"])

    assert result.added == ["Stop"]
    assert load(path) == {"hooks": {"Stop": [{"hooks": [ours("Stop")]}]}}


def test_empty_event_list_found_by_install_survives_a_reinstall_without_it(tmp_path: Path) -> None:
    original = STYLES["empty-event"]
    path = write(settings(tmp_path), original)
    install(path, BASE)
    install(path, BASE, events=["Stop"])  # Notification: ours removed, but the list was there before us
    assert load(path)["hooks"]["Notification"] == []
    uninstall(path)
    assert path.read_text(encoding="utf-8") == original


# ------------------------------------------------------------------------------------------------------- tools


def test_install_with_tools_adds_post_tool_use_with_a_matcher(tmp_path: Path) -> None:
    path = settings(tmp_path)
    install(path, BASE, events=["SessionStart"], tools=["Bash", "Edit", "Write"])
    assert load(path) == {
        "hooks": {
            "SessionStart": [{"hooks": [ours("SessionStart")]}],
            "PostToolUse": [{"matcher": "Bash|Edit|Write", "hooks": [ours("PostToolUse")]}],
        }
    }


def test_default_install_has_no_post_tool_use_and_no_matchers(tmp_path: Path) -> None:
    path = settings(tmp_path)
    install(path, BASE)
    hooks = load(path)["hooks"]
    assert list(hooks) == list(DEFAULT_EVENTS)
    assert all("matcher" not in group for groups in hooks.values() for group in groups)


def test_changing_tools_replaces_our_post_tool_use_group(tmp_path: Path) -> None:
    theirs = {"matcher": "Edit", "hooks": [THEIRS]}
    path = write(settings(tmp_path), json.dumps({"hooks": {"PostToolUse": [theirs]}}, indent=2) + "\n")
    install(path, BASE, events=["Stop"], tools=["Bash"])

    result = install(path, BASE, events=["Stop"], tools=["Bash", "Edit"])

    assert result.added == ["PostToolUse"]
    assert load(path)["hooks"]["PostToolUse"] == [theirs, {"matcher": "Bash|Edit", "hooks": [ours("PostToolUse")]}]


# ---------------------------------------------------------------------------------------- other people's hooks


def test_their_stop_hooks_survive_install_and_uninstall_untouched(tmp_path: Path) -> None:
    path = write(settings(tmp_path), STYLES["indent2-newline"])

    install(path, BASE, channel="C1")
    hooks = load(path)["hooks"]
    assert hooks["Stop"] == [{"hooks": [THEIRS]}, {"hooks": [ours("Stop", "C1")]}]  # ours after theirs
    assert hooks["PreToolUse"] == [{"matcher": "Bash", "hooks": [THEIRS]}]
    assert list(load(path)) == list(ORIGINAL)  # top-level key order kept

    uninstall(path)
    assert load(path) == ORIGINAL


def test_uninstall_takes_ours_out_of_a_shared_group_and_keeps_theirs(tmp_path: Path) -> None:
    data = {"hooks": {"Stop": [{"hooks": [THEIRS, ours("Stop"), {"type": "command", "command": "true"}]}]}}
    path = write(settings(tmp_path), json.dumps(data, indent=2) + "\n")

    assert uninstall(path).removed == ["Stop"]

    assert (
        path.read_text(encoding="utf-8")
        == json.dumps({"hooks": {"Stop": [{"hooks": [THEIRS, {"type": "command", "command": "true"}]}]}}, indent=2)
        + "\n"
    )


def test_a_command_merely_mentioning_the_marker_is_not_ours(tmp_path: Path) -> None:
    mention = {"type": "command", "command": "echo slackbus-hook # slackbus-hook-like > /tmp/x"}
    original = json.dumps({"hooks": {"Stop": [{"hooks": [mention]}]}}, indent=2) + "\n"
    path = write(settings(tmp_path), original)

    assert uninstall(path) == Result(path, False, [], [])
    install(path, BASE, events=["Stop"])
    assert load(path)["hooks"]["Stop"][0] == {"hooks": [mention]}
    uninstall(path)
    assert path.read_text(encoding="utf-8") == original


def test_uninstall_with_nothing_of_ours_leaves_the_file_untouched(tmp_path: Path) -> None:
    path = write(settings(tmp_path), STYLES["indent2-newline"])
    before = path.stat()

    assert uninstall(path) == Result(path, False, [], [])

    after = path.stat()
    assert path.read_bytes() == STYLES["indent2-newline"].encode("utf-8")
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert sorted(os.listdir(path.parent)) == ["settings.json"]


def test_malformed_groups_of_theirs_are_left_alone(tmp_path: Path) -> None:
    data = {"hooks": {"Stop": ["junk", {"matcher": "x"}, {"hooks": "nope"}]}}
    original = json.dumps(data, indent=2) + "\n"
    path = write(settings(tmp_path), original)
    install(path, BASE, events=["Stop"])
    assert load(path)["hooks"]["Stop"] == [*data["hooks"]["Stop"], {"hooks": [ours("Stop")]}]
    uninstall(path)
    assert path.read_text(encoding="utf-8") == original


# ----------------------------------------------------------------------------------------------- refusing files

BAD = {
    "not json": ('{"hooks": {', "is not valid JSON"),
    "trailing comma": ('{"model": "opus",}\n', "is not valid JSON"),
    "top-level list": ("[]\n", "must hold a JSON object at the top level, not a list"),
    "hooks is a list": ('{"hooks": []}\n', '"hooks" must be an object'),
    "hooks is null": ('{"hooks": null}\n', '"hooks" must be an object'),
    "event is an object": ('{"hooks": {"Stop": {}}}\n', '"hooks.Stop" must be a list'),
    "duplicate key": ('{"hooks": {}, "hooks": {}}\n', "twice"),
}


@pytest.mark.parametrize("name", list(BAD))
@pytest.mark.parametrize("operation", ["install", "uninstall"])
def test_a_file_that_cannot_be_understood_is_refused_and_left_alone(tmp_path: Path, name: str, operation: str) -> None:
    text, message = BAD[name]
    path = write(settings(tmp_path), text)

    with pytest.raises(ValueError, match=message) as caught:
        if operation == "install":
            install(path, BASE)
        else:
            uninstall(path)

    assert str(path) in str(caught.value)
    assert path.read_text(encoding="utf-8") == text
    assert sorted(os.listdir(path.parent)) == ["settings.json"]


def test_a_file_that_is_not_utf8_is_refused(tmp_path: Path) -> None:
    path = write(settings(tmp_path), b'{"model": "\xff"}')
    with pytest.raises(ValueError, match="not UTF-8"):
        install(path, BASE)
    assert path.read_bytes() == b'{"model": "\xff"}'


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"events": "Stop"}, "not a single string"),
        ({"events": ["stop"]}, "not a Claude Code hook event"),
        ({"events": [], "tools": []}, "Nothing to install"),
        ({"tools": [""]}, "not a tool name"),
        ({"timeout": 0}, "positive"),
        ({"timeout": True}, "positive"),
    ],
)
def test_install_refuses_bad_arguments_before_touching_anything(
    tmp_path: Path, kwargs: dict[str, Any], message: str
) -> None:
    path = settings(tmp_path)
    with pytest.raises(ValueError, match=message):
        install(path, BASE, **kwargs)
    assert not path.parent.exists()


# --------------------------------------------------------------------------------------------- how it is written


def test_the_file_mode_is_kept(tmp_path: Path) -> None:
    path = write(settings(tmp_path), STYLES["indent2-newline"])
    path.chmod(0o600)
    install(path, BASE)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    uninstall(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert leftovers(path.parent) == []


def test_a_symlinked_settings_file_stays_a_symlink(tmp_path: Path) -> None:
    real = write(tmp_path / "dotfiles" / "claude-settings.json", STYLES["indent4"])
    path = settings(tmp_path)
    path.parent.mkdir()
    path.symlink_to(real)

    install(path, BASE)
    assert path.is_symlink()
    assert set(our_commands(real)) == set(DEFAULT_EVENTS)

    uninstall(path)
    assert path.is_symlink()
    assert real.read_text(encoding="utf-8") == STYLES["indent4"]
    assert leftovers(real.parent) == []


def test_only_events_we_add_go_at_the_end_of_hooks(tmp_path: Path) -> None:
    data = {"hooks": {"Notification": [{"hooks": [THEIRS]}], "PreToolUse": [{"matcher": "Bash", "hooks": [THEIRS]}]}}
    path = write(settings(tmp_path), json.dumps(data, indent=2) + "\n")
    install(path, BASE)
    assert list(load(path)["hooks"]) == [
        "Notification",
        "PreToolUse",
        "SessionStart",
        "Stop",
        "SubagentStop",
        "SessionEnd",
    ]
