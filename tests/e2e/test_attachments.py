"""Files attached to a request reach Claude (issue 17): downloaded with the bot token, named in the prompt with their
path, small text inlined, images sent as images; every file left out says why in one sentence and the task runs."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from tests.e2e.test_reactive import answer_in
from tests.fakes.fake_model import FakeModel

pytestmark = pytest.mark.e2e

# a 1×1 PNG
PNG = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQ"
                       "AAAABJRU5ErkJggg==")


def image_blocks(body: dict[str, Any]) -> list[dict[str, Any]]:
    return [b for m in body.get("messages", []) if isinstance(m.get("content"), list)
            for b in m["content"] if isinstance(b, dict) and b.get("type") == "image"]


def request_for(fake_model: FakeModel, needle: str) -> dict[str, Any]:
    return next(body for i, body in enumerate(fake_model.requests) if needle in "\n".join(fake_model.user_texts(i)))


def test_a_screenshot_and_a_log_reach_the_model_and_a_follow_up_brings_another(start_bot, fake_slack, fake_model,
                                                                                  tmp_path):
    start_bot()
    png = fake_slack.add_file("screen.png", PNG, "image/png")
    crash = b"Traceback (most recent call last):\n  boom: disk full\n"
    log = fake_slack.add_file("crash.log", crash, "text/plain")
    ts = fake_slack.user_says("C1", "U1", "why does it crash? [[id:a1]]", mention=True, files=[png, log])
    answer_in(fake_slack, "C1", ts, "answer for a1")

    body = request_for(fake_model, "[[id:a1]]")
    images = image_blocks(body)
    assert [(i["source"]["media_type"], base64.b64decode(i["source"]["data"])) for i in images] == [
        ("image/png", PNG)]
    texts = "\n".join(fake_model.user_texts(fake_model.requests.index(body)))
    assert "boom: disk full" in texts  # the small log inlined
    folder = tmp_path / "state" / "attachments" / "C1" / ts
    assert f"crash.log (text/plain, {len(crash)} bytes): {folder}/" in texts and "screen.png (image/png" in texts
    assert sorted(p.name.split("-", 1)[1] for p in folder.iterdir()) == ["crash.log", "screen.png"]
    assert sorted(fake_slack.downloads) == sorted([(png["id"], True), (log["id"], True)])

    more = fake_slack.add_file("second.log", b"the second log: all quiet\n", "text/plain")
    fake_slack.user_says("C1", "U1", "and this one? [[id:a2]]", thread_ts=ts, files=[more])
    answer_in(fake_slack, "C1", ts, "answer for a2")
    follow = "\n".join(fake_model.user_texts(fake_model.requests.index(request_for(fake_model, "[[id:a2]]"))))
    assert "the second log: all quiet" in follow
    assert [d for d in fake_slack.downloads if d[0] == more["id"]] == [(more["id"], True)]


def test_each_file_left_out_gets_its_sentence_and_the_task_still_runs(start_bot, fake_slack, fake_model):
    start_bot(SLACKBUS_MAX_ATTACHMENT_MB="1")
    files = [
        fake_slack.add_file("huge.log", b"x" * (1024 * 1024 + 10), "text/plain"),
        fake_slack.add_file("setup.exe", b"MZ", "application/x-msdownload"),
        fake_slack.add_file("gone.png", PNG, "image/png", mode="tombstone"),
        fake_slack.add_file("budget.xlsx", b"", "application/pdf", mode="external"),
        fake_slack.add_file("fine.txt", b"this one arrives\n", "text/plain"),
    ]
    ts = fake_slack.user_says("C1", "U1", "look at these [[id:b1]]", mention=True, files=files)
    answer_in(fake_slack, "C1", ts, "answer for b1")
    notes = [m["text"] for m in fake_slack.bot_messages("C1", ts) if ":warning:" in m["text"]]
    assert len(notes) == 1, notes
    for sentence in ("huge.log was left out: it is 1.0 MB, over the limit of 1.0 MB",
                     "setup.exe was left out: files of type application/x-msdownload are not accepted",
                     "gone.png was left out: it was deleted in Slack",
                     "budget.xlsx was left out: it is a link to another service"):
        assert sentence in notes[0], sentence
    texts = "\n".join(fake_model.user_texts(fake_model.requests.index(request_for(fake_model, "[[id:b1]]"))))
    assert "this one arrives" in texts and "setup.exe: not available" in texts
    assert [d for d in fake_slack.downloads] == [(files[4]["id"], True)]  # nothing refused was downloaded


def test_without_files_read_slack_sends_its_sign_in_page_and_the_thread_is_told(start_bot, fake_slack, fake_model):
    fake_slack.scopes.remove("files:read")
    start_bot()
    log = fake_slack.add_file("crash.log", b"secret stack trace\n", "text/plain")
    ts = fake_slack.user_says("C1", "U1", "why? [[id:c1]]", mention=True, files=[log])
    answer_in(fake_slack, "C1", ts, "answer for c1")
    notes = [m["text"] for m in fake_slack.bot_messages("C1", ts) if ":warning:" in m["text"]]
    assert len(notes) == 1 and "Slack sent its sign-in page instead of the file" in notes[0]
    assert "files:read" in notes[0]
    texts = "\n".join(fake_model.user_texts(fake_model.requests.index(request_for(fake_model, "[[id:c1]]"))))
    assert "secret stack trace" not in texts and "Sign in to Slack" not in texts
    assert fake_slack.downloads == [(log["id"], False)]


class _Image(dict):
    """An image block a test can hold a weak reference to."""


def test_a_warm_process_keeps_neither_the_last_prompt_nor_its_images(fake_model, tmp_path):
    """A warm process waits for hours: its owner task must not hold the last turn (measured before the fix: the
    bot kept ~1.5 MB per warm thread whose last message had a 1 MB image)."""
    import gc
    import uuid
    import weakref

    import anyio

    from bot.core.claude_runner import ClaudeSession, SessionSpec
    from tests.conftest import claude_cli

    async def main() -> None:
        (tmp_path / "home").mkdir()
        spec = SessionSpec(cwd=tmp_path, session_id=str(uuid.uuid4()), resume=False, cli_path=claude_cli(),
                           env=fake_model.cli_env(tmp_path / "home"))
        session = ClaudeSession(spec)
        async with anyio.create_task_group() as tg:
            await tg.start(session.serve)
            image = _Image(type="image", source={"type": "base64", "media_type": "image/png",
                                                 "data": base64.b64encode(PNG).decode()})
            held = weakref.ref(image)
            await session.turn("look [[id:w1]]", lambda e: None, timeout=60, stall=60, images=[image])
            del image
            gc.collect()
            assert held() is None, gc.get_referrers(held())
            await session.close()

    anyio.run(main)
