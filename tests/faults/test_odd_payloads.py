"""Property-based fault tests: odd Slack payloads and odd texts through the bot's real message path.

1. incoming() + Dispatcher.on_message over a real Store and a real JobQueue (in an anyio loop): never raise,
   every accepted job reaches the handler exactly once and in thread order, no thread stays busy, the queue
   drains, and every message with a usable (channel, ts) is stored with the text it came with.
2. ContextBuilder over those stored messages: never raises, the prompt stays within max_chars (plus the
   request and the fixed framing); clean() leaves no mention of the bot in Slack-shaped text.
3. renderer.split_markdown: parts within the limit, code fences balanced in every part, and no text lost.
"""

from __future__ import annotations

import re
import sqlite3
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import hypothesis
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from bot.core.context_builder import Context, ContextBuilder
from bot.core.dispatcher import IGNORED_SUBTYPES, Dispatcher, Job, JobQueue
from bot.core.events import IncomingMessage
from bot.core.renderer import CHUNK_CHARS, split_markdown
from bot.core.store import Store, StoredMessage
from bot.slack.events_in import click, edit, incoming, reaction

BOT = "UBOT"
BOT_ID = "BSELF"
ALLOWED = {"U1", "U2"}
NAMES = {"U1": "alice", "U2": "bob", "U123": "carol"}
LABEL = "#general"
DENIED_CHANNEL = "G7"  # a channel the bot may not work in (mentions there are refused)

PROPERTY = settings(
    max_examples=200,
    deadline=None,
    database=None,  # no .hypothesis/ folder in the checkout; regressions are pinned with @example
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
)

MISSING: Any = object()  # the key is absent from the event

# --- texts ---------------------------------------------------------------------------------------------------

# JSON can carry these where Slack sends a string (lone surrogates cannot appear in JSON from Slack)
JSON_JUNK = st.one_of(
    st.booleans(),
    st.integers(-(2**53), 2**53),
    st.floats(allow_nan=False, allow_infinity=False),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)

FRAGMENTS = [
    "<@U123>", "<@U123|carol>", f"<@{BOT}>", f"<@{BOT}|slackbus>", "<!channel>", "<!here>", "<!everyone>",
    "<!subteam^S1|@team>", "<!subteam^S1>", "<http://x|y>", "<https://example.com/a?b=1&amp;c=2>", "<#C1|general>",
    "&lt;&gt;&amp;", "&lt;@UBOT&gt;", "<@UBOT", "<@", "<!", "<", ">", "|", "```", "```python\n", "\n```\n", "~~~",
    "`x`", "*bold*", "_it_", "~strike~", "> quote\n", "\n", "\n\n", " ", "\t", "\r\n", "😀", "👩‍👩‍👧‍👦",
    "שלום", "\u202e", "e\u0301", "\u200b", "\ufeff", "\uffff", "\x00", "\x1b[31m", "\x07",
]
UNICODE = st.text(st.characters(exclude_categories=["Cs"]), max_size=200)
WHITESPACE = st.text(" \t\n\r\u00a0\u2003\u3000", max_size=20)
MARKUP = st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.text(max_size=8)), max_size=30).map("".join)
LONG = st.builds(
    lambda unit, extra: (unit * (45_000 // len(unit) + 1))[: 40_000 + extra],
    st.one_of(st.sampled_from(["a", "é", "😀", "\u202e", "x y ", "```\n", "<@UBOT> "]),
              st.text(min_size=1, max_size=12)),
    st.integers(0, 2_000),
)
TEXTS = st.one_of(st.just(""), WHITESPACE, UNICODE, MARKUP, LONG)

# --- events --------------------------------------------------------------------------------------------------

REAL_SUBTYPES = sorted(
    IGNORED_SUBTYPES
    | {
        "bot_message", "me_message", "message_changed", "message_deleted", "message_replied", "thread_broadcast",
        "file_share", "channel_convert_to_private", "channel_posting_permissions", "sh_room_created",
        "slackbot_response", "joiner_notification",
    }
)
ODD_TS = ["", " ", "abc", "None", "0", "-1", "1e20", "1e400", "-1e20", "inf", "nan", "9" * 40, "1700000000", "١٢٣"]
FILE_ENTRIES = st.one_of(
    st.fixed_dictionaries({"name": st.one_of(st.none(), st.text(max_size=10), JSON_JUNK)}),
    st.fixed_dictionaries({"title": st.one_of(st.none(), st.text(max_size=10))}),
    st.just({}),
    st.none(),
    st.text(max_size=5),
    st.integers(),
    st.lists(st.integers(), max_size=2),
)


def ts_of(n: int) -> str:
    return f"1700000{n:03d}.000100"


def pick(draw: st.DrawFn, usual: list[Any], odd: st.SearchStrategy[Any]) -> Any:
    """Mostly a value Slack sends (so that messages become jobs), about one time in five an odd one."""
    return draw(odd) if draw(st.integers(0, 4)) == 0 else draw(st.sampled_from(usual))


@st.composite
def slack_events(draw: st.DrawFn) -> list[tuple[dict[str, Any], dict[str, Any], bool]]:
    """(event, body, came as app_mention) triples: ts, thread_ts and event ids refer to each other."""
    out: list[tuple[dict[str, Any], dict[str, Any], bool]] = []
    seen_ts: list[Any] = []
    event_ids: list[str] = []
    for i in range(draw(st.integers(1, 12))):
        event: dict[str, Any] = {"type": "message"}
        ts = pick(draw, [ts_of(i)], st.one_of(st.sampled_from([MISSING, *ODD_TS, *seen_ts]), JSON_JUNK))
        threads = [MISSING, MISSING, ts, *seen_ts[:1] * 3, *seen_ts[-3:]]  # top level, a parent, a reply
        fields = {
            "ts": ts,
            "thread_ts": pick(draw, threads, st.one_of(st.sampled_from([None, "1600000000.000001", *ODD_TS]),
                                                       JSON_JUNK)),
            "channel": pick(draw, ["C1", "C1", "C1", "D042"],
                            st.one_of(st.sampled_from([DENIED_CHANNEL, "C0ABC", "", MISSING]), JSON_JUNK)),
            "channel_type": pick(draw, [MISSING, "channel"], st.one_of(st.sampled_from(["im", "mpim", None]),
                                                                       JSON_JUNK)),
            "user": pick(draw, ["U1", "U1", "U2", "U9"],
                         st.one_of(st.sampled_from([BOT, "", "W123", None, MISSING]), JSON_JUNK)),
            "subtype": pick(draw, [MISSING, MISSING, MISSING, "thread_broadcast", "file_share"],
                            st.one_of(st.sampled_from([None, *REAL_SUBTYPES]), st.text(max_size=12), JSON_JUNK)),
            "bot_id": pick(draw, [MISSING], st.one_of(st.sampled_from([None, "B999", BOT_ID]), JSON_JUNK)),
            "files": pick(draw, [MISSING], st.one_of(st.sampled_from([None, []]),
                                                     st.lists(FILE_ENTRIES, min_size=1, max_size=3), JSON_JUNK)),
            "text": draw(st.one_of(TEXTS, TEXTS.map(lambda t: f"<@{BOT}> {t}"), st.sampled_from([MISSING, None]),
                                   JSON_JUNK)),
        }
        event.update({key: value for key, value in fields.items() if value is not MISSING})
        if isinstance(ts, str) and ts not in seen_ts:
            # only plain strings go back into sampled_from: junk objects (lists, dicts, -0.0) in a drawn list made
            # Hypothesis's replays diverge (FlakyStrategyDefinition); junk ts values are still drawn directly above
            seen_ts.append(ts)

        body: dict[str, Any] = {"type": "event_callback"}
        kind = draw(st.sampled_from(["fresh", "fresh", "again", "missing", "junk"]))
        if kind == "fresh" or (kind == "again" and not event_ids):
            event_ids.append(f"Ev{i}")
            body["event_id"] = event_ids[-1]
        elif kind == "again":
            body["event_id"] = draw(st.sampled_from(event_ids))
        elif kind == "junk":
            body["event_id"] = draw(JSON_JUNK)
        out.append((event, body, draw(st.booleans())))
    return out


# a mention with files that are not a list (Slack sends a list; a bare count or dict must not crash the bot)
ODD_FILES: list[tuple[dict[str, Any], dict[str, Any], bool]] = [
    ({"type": "message", "channel": "C1", "ts": ts_of(1), "user": "U1", "text": "<@UBOT> see", "files": 3}, {}, False),
    ({"type": "message", "channel": "C1", "ts": ts_of(2), "user": "U1", "text": "x", "files": {"name": "a"}}, {}, True),
]
# wrong-typed scalar fields (a list subtype is unhashable; a dict user cannot be stored)
ODD_TYPES: list[tuple[dict[str, Any], dict[str, Any], bool]] = [
    ({"type": "message", "channel": "C1", "ts": ts_of(1), "user": "U1", "text": "<@UBOT> a", "subtype": []}, {}, True),
    ({"type": "message", "channel": "C1", "ts": ts_of(2), "user": {}, "text": "<@UBOT> b"}, {}, True),
    ({"type": "message", "channel": "C1", "ts": ts_of(3), "user": "U1", "thread_ts": [1], "text": "c"}, {}, True),
]
# a ts that parses as a float out of datetime's range, then a mention whose context includes it
ODD_CLOCK: list[tuple[dict[str, Any], dict[str, Any], bool]] = [
    ({"type": "message", "channel": "C1", "ts": "1e20", "user": "U9", "text": "hi"}, {}, False),
    ({"type": "message", "channel": "C1", "ts": "inf", "user": "U9", "text": "hi"}, {}, False),
    ({"type": "message", "channel": "C1", "ts": "1e400", "user": "U1", "text": "<@UBOT> go"}, {}, False),
]


# --- the harness ---------------------------------------------------------------------------------------------


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    """One store per test function, emptied before each example (opening one costs ~30 ms)."""
    s = Store.open(tmp_path / "odd.db")
    yield s
    s.close()


def wipe(store: Store) -> None:
    with sqlite3.connect(store.path, isolation_level=None) as db:
        for table in ("messages", "threads", "requests", "events_seen"):
            db.execute(f"DELETE FROM {table}")
    db.close()


@dataclass
class Recorder:
    """The queue's handler: records each batch, yields to the loop `steps` times, notes overlapping runs."""

    steps: int
    batches: list[list[Job]] = field(default_factory=list)
    running: set[tuple[str, str]] = field(default_factory=set)
    overlap: bool = False

    async def __call__(self, jobs: list[Job]) -> None:
        key = jobs[0].key
        self.overlap |= key in self.running
        self.running.add(key)
        self.batches.append(list(jobs))
        try:
            for _ in range(self.steps):
                await anyio.lowlevel.checkpoint()
        finally:
            self.running.discard(key)


@dataclass
class Run:
    messages: list[IncomingMessage]
    accepted: list[Job]
    refused: list[IncomingMessage]
    queue: JobQueue


def dispatcher(store: Store, queue: JobQueue, accepted: list[Job], refused: list[IncomingMessage]) -> Dispatcher:
    return Dispatcher(
        store,
        queue,
        bot_user_id=BOT,
        is_allowed=lambda user: user in ALLOWED,
        on_accepted=lambda job, _position: accepted.append(job),
        on_refused=lambda msg, _why: refused.append(msg),
        workdir_for=lambda _channel: "/work/dir",
        is_channel_allowed=lambda channel: channel != DENIED_CHANNEL,
    )


def to_message(event: dict[str, Any], body: dict[str, Any], mention_event: bool) -> IncomingMessage:
    return incoming(event, body, bot_user_id=BOT, received=time.monotonic(), mention_event=mention_event)


def run_events(
    store: Store,
    events: list[tuple[dict[str, Any], dict[str, Any], bool]],
    recorder: Recorder,
    *,
    max_concurrent: int,
    pauses: list[int],
) -> Run:
    messages: list[IncomingMessage] = []
    accepted: list[Job] = []
    refused: list[IncomingMessage] = []
    queue = JobQueue(recorder, max_concurrent=max_concurrent)
    d = dispatcher(store, queue, accepted, refused)

    async def drive() -> None:
        async with anyio.create_task_group() as tg:
            queue.attach(tg)
            for (event, body, mention_event), pause in zip(events, pauses + [0] * len(events), strict=False):
                msg = to_message(event, body, mention_event)
                messages.append(msg)
                d.on_message(msg)
                for _ in range(pause):  # let runs start and finish between messages, or not
                    await anyio.lowlevel.checkpoint()
            with anyio.fail_after(5):
                await queue.wait_idle()

    anyio.run(drive)
    return Run(messages, accepted, refused, queue)


def expected_texts(
    events: list[tuple[dict[str, Any], dict[str, Any], bool]], messages: list[IncomingMessage]
) -> dict[tuple[str, str], str]:
    """What the store must hold for each message with a string channel and ts: the last recorded text."""
    expected: dict[tuple[str, str], str] = {}
    for (event, _body, _mention), msg in zip(events, messages, strict=True):
        text, files = event.get("text"), event.get("files")
        if isinstance(text, str):  # the text given survives, with the attachments' names after it
            if isinstance(files, list) and files:
                assert msg.text.startswith(text.lstrip()), (text, msg.text)
            else:
                assert msg.text == text
        if not (isinstance(event.get("channel"), str) and isinstance(event.get("ts"), str)):
            continue
        assert (msg.channel, msg.ts) == (event["channel"], event["ts"])
        if msg.subtype not in IGNORED_SUBTYPES:
            expected[(msg.channel, msg.ts)] = msg.text
    return expected


# --- 1. odd payloads through incoming() and the dispatcher -------------------------------------------------


@PROPERTY
@given(
    events=slack_events(),
    max_concurrent=st.integers(1, 3),
    steps=st.integers(0, 3),
    pauses=st.lists(st.integers(0, 2), max_size=12),
)
@example(events=ODD_FILES, max_concurrent=1, steps=0, pauses=[])
@example(events=ODD_TYPES, max_concurrent=1, steps=0, pauses=[])
def test_odd_payloads_never_raise_and_never_leave_a_thread_stuck(store, events, max_concurrent, steps, pauses):
    wipe(store)
    recorder = Recorder(steps)
    run = run_events(store, events, recorder, max_concurrent=max_concurrent, pauses=pauses)

    handed = [job for batch in recorder.batches for job in batch]
    hypothesis.event(f"accepted jobs: {min(len(run.accepted), 3)}{'+' if len(run.accepted) > 3 else ''}")
    hypothesis.event(f"batched follow-ups: {any(len(batch) > 1 for batch in recorder.batches)}")
    hypothesis.event(f"refused: {bool(run.refused)}")
    assert Counter(handed) == Counter(run.accepted)  # every accepted job handed over...
    assert len(set(handed)) == len(handed)  # ...exactly once
    for batch in recorder.batches:
        assert {job.key for job in batch} == {batch[0].key}  # a batch is one thread's
    assert not recorder.overlap  # one run per thread at a time
    for key in {job.key for job in run.accepted}:  # each thread's jobs in the order they were accepted
        assert [j.trigger_ts for j in handed if j.key == key] == [j.trigger_ts for j in run.accepted if j.key == key]
        assert not run.queue.thread_busy(key)
        assert store.get_thread(*key) is not None
    assert run.queue.pending == 0
    assert run.queue.running == 0
    assert run.queue.waiting() == []

    for job in run.accepted:
        assert job.user in ALLOWED
        assert store.get_message(job.channel, job.trigger_ts) is not None
    for (channel, ts), text in expected_texts(events, run.messages).items():
        stored = store.get_message(channel, ts)
        assert stored is not None, (channel, ts)
        assert stored.text == text


# --- 2. the context builder over the stored odd messages ---------------------------------------------------

FRAMING = 2 * (200 + len(LABEL))  # the <slack_context id=...> open and close lines of both parts, and separators


def builder(store: Store, *, max_messages: int, max_chars: int) -> ContextBuilder:
    return ContextBuilder(
        store,
        bot_user_id=BOT,
        max_messages=max_messages,
        max_chars=max_chars,
        name_of=lambda user: NAMES.get(user, user),
        is_allowed=lambda user: user in ALLOWED,
    )


def assert_framing_intact(ctx: Context) -> None:
    """Whatever the messages held: every line that is not indented is a message's first line ("[time] …"), a
    tag with this prompt's id, or the one request header, which comes last."""
    top = [line for line in ctx.prompt.split("\n") if line and not line.startswith(" ")]
    tags = [line for line in top if line.startswith("<")]
    assert all(re.fullmatch(rf'</?slack_context id="{ctx.nonce}"[^<>]*>', line) for line in tags), tags
    assert ctx.prompt.count("</slack_context") == len(tags) // 2
    headers = [line for line in top if not line.startswith(("<", "["))]
    assert len(headers) == 1 and headers[0] == top[-1], top
    assert re.fullmatch(rf"(Request|Follow-up) \(id {ctx.nonce}\) in .* from .*:", headers[0]), headers[0]


def request_size(contexts: ContextBuilder, m: StoredMessage) -> int:
    """An upper bound on the request: 'Follow-up (id <nonce>) in the thread from <name> (<user>):\n<body>'."""
    return len(contexts.body(m.text)) + len(LABEL) + 2 * len(str(m.user)) + 96


@PROPERTY
@given(
    events=slack_events(),
    max_messages=st.sampled_from([0, 1, 5, 40]),
    max_chars=st.sampled_from([0, 1, 50, 500, 4_000, 12_000]),
)
@example(events=ODD_CLOCK, max_messages=40, max_chars=12_000)
def test_the_context_builder_takes_odd_messages_within_its_budget(store, events, max_messages, max_chars):
    wipe(store)
    accepted: list[Job] = []
    d = dispatcher(store, JobQueue(Recorder(0), max_concurrent=1), accepted, [])  # not attached: jobs only queue
    for event, body, mention_event in events:
        d.on_message(to_message(event, body, mention_event))
    contexts = builder(store, max_messages=max_messages, max_chars=max_chars)
    hypothesis.event(f"accepted jobs: {min(len(accepted), 3)}{'+' if len(accepted) > 3 else ''}")

    for job in accepted:
        # a new session, as the pipeline builds it
        trigger = store.get_message(job.channel, job.trigger_ts) or StoredMessage(
            job.channel, job.trigger_ts, job.thread_ts, job.user, None, ""
        )
        ctx = contexts.for_new_session(job.channel, job.thread_ts, trigger, LABEL)
        assert ctx.prompt.endswith(contexts.body(trigger.text))  # the request comes last, whole
        assert_framing_intact(ctx)
        assert len(ctx.prompt) <= max_chars + request_size(contexts, trigger) + FRAMING
        assert ctx.last_ts == trigger.ts

        # a follow-up, from the thread's start and from its newest message
        row = store.get_thread(job.channel, job.thread_ts)
        assert row is not None
        for last_ts in ("0", job.thread_ts, job.trigger_ts):
            ctx = contexts.for_follow_up(replace(row, last_ts=last_ts), job.trigger_ts, LABEL)
            if ctx.prompt == "(no new messages)":
                continue
            last = store.get_message(job.channel, ctx.last_ts)
            assert last is not None
            assert ctx.prompt.endswith(contexts.body(last.text))
            assert_framing_intact(ctx)
            assert len(ctx.prompt) <= max_chars + request_size(contexts, last) + FRAMING


# Slack escapes what people type (& < > become &amp; &lt; &gt;), so a raw "<" only ever opens Slack's markup.
SLACK_MARKUP = [
    f"<@{BOT}>", f"<@{BOT}|slackbus>", "<@U123>", "<@U1|alice-old>", "<@W42>", "<!channel>", "<!here>", "<!here|here>",
    "<!everyone>", "<!subteam^S1|@team>", "<!subteam^S1>", "<http://x|y>", "<https://example.com/a?b=1&amp;c=2>",
    "<https://example.org/x>", "<#C1|general>", "<#C2>", "<mailto:a@b.c|a@b.c>",
]
PLAIN = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="@"), max_size=12)


def escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def squash(text: str) -> str:
    return re.sub(r"\s+", "", text)


@PROPERTY
@given(st.lists(st.one_of(st.sampled_from(SLACK_MARKUP), PLAIN.map(escape)), max_size=30))
@example([f"<@{BOT}>", "\n", "```", f"<@{BOT}|x>"])
def test_clean_removes_every_mention_of_the_bot(store, tokens):
    contexts = builder(store, max_messages=0, max_chars=0)
    text = "".join(tokens)
    cleaned = contexts.clean(text)
    assert f"@{BOT}" not in cleaned  # people cannot type "@" here, so any "@UBOT" would be a mention left over
    # removing the bot's mentions is all clean() does with them (it also eats the whitespace after each)
    others = "".join(t for t in tokens if not t.startswith(f"<@{BOT}"))
    assert squash(cleaned) == squash(contexts.clean(others))


@PROPERTY
@given(TEXTS)
def test_clean_never_raises_on_raw_odd_text(store, text):
    contexts = builder(store, max_messages=0, max_chars=0)
    assert isinstance(contexts.clean(text), str)


# --- 3. split_markdown on odd texts --------------------------------------------------------------------------

FENCE = re.compile(r"^\s*(`{3,}|~{3,})(.*)$")  # what the renderer counts as a fence line

FENCE_LINES = st.one_of(
    st.sampled_from(["```", "```python", "~~~", "~~~sh", "````", "````markdown", "   ```", "``````", "```json x"]),
    st.builds(
        lambda indent, marker, info: indent + marker + info,
        st.sampled_from(["", " ", "  "]),
        st.sampled_from(["```", "~~~", "````", "~~~~~"]),
        st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\n"), max_size=40),
    ),
)
LINES = st.one_of(
    FENCE_LINES,
    FENCE_LINES,
    st.just(""),
    st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\n"), max_size=80),
    st.sampled_from(["# Title", "- item", "1. step", "> quote", "| a | b |", "**bold** and `code`", "    indented"]),
    st.builds(  # a long line without spaces (minified JSON, a base64 blob, a URL)
        lambda unit, n: unit * n, st.text("ab`~{}\":,", min_size=1, max_size=8), st.integers(50, 3_000)
    ),
)
MARKDOWN = st.one_of(
    st.lists(LINES, max_size=60).map("\n".join),
    st.builds(lambda block, n: "\n".join([block] * n)[:40_000], st.lists(LINES, min_size=1, max_size=20).map("\n".join),
              st.integers(1, 400)),
    LONG,
    UNICODE,
)


def fence_lines(text: str) -> list[str]:
    return [line.strip() for line in text.split("\n") if FENCE.match(line)]


def without_fences(text: str) -> str:
    return "\n".join(line for line in text.split("\n") if not FENCE.match(line))


def is_subsequence(needle: list[str], haystack: list[str]) -> bool:
    rest = iter(haystack)
    return all(any(x == y for y in rest) for x in needle)


def open_fence(text: str) -> str | None:
    """The fence still open at the end of `text` (CommonMark: closed by the same char, as long or longer)."""
    opened: str | None = None
    for line in text.split("\n"):
        match = FENCE.match(line)
        if not match:
            continue
        marker, info = match.group(1), match.group(2).strip()
        if opened is None:
            opened = marker
        elif marker[0] == opened[0] and len(marker) >= len(opened) and not info:
            opened = None
    return opened


# Past this, a cut inside a line can only fall in a run of spaces and fence characters, and a piece may then
# read as a fence (or a fence be longer than the room kept for it): fences may be unbalanced, but nothing is lost,
# order is kept, no part is blank, and parts stay within the limit unless a line of the text is longer than it.
ODD_RUN = re.compile(r"(?:[`~]|[^\S\n]){40,}")


@PROPERTY
@given(text=MARKDOWN, limit=st.sampled_from([200, 500, 2_500, CHUNK_CHARS]))
# a cut in a long line made a piece start with ``` (text read as a fence, parts unbalanced and over the limit)
@example(text="```\n" + "::::```" * 202, limit=500)
@example(text="::::```" * 202 + "\n```", limit=500)
# a long info string was repeated in full when the block was reopened, pushing the part past the limit
@example(text='```python title="' + "x" * 30 + '"\n' + "y" * 600 + "\n```\nafter", limit=500)
@example(text="\n" + "`" * 200, limit=200)  # a fence longer than the room for it
@example(text="```::" * 60, limit=200)  # a fence line (its info string) longer than a part: cut, the rest is text
def test_split_markdown_keeps_parts_within_the_limit_balanced_and_complete(text, limit):
    parts = split_markdown(text, limit)
    if len(text) <= limit:
        assert parts == [text]
        return
    joined = "\n".join(parts)
    assert is_subsequence(list(squash(text)), list(squash(joined)))  # nothing but whitespace dropped, order kept
    assert all(part.strip() for part in parts), parts  # no blank message
    assert parts or not text.strip()  # nothing to post only when there is nothing but whitespace
    if ODD_RUN.search(text):
        if max(len(line) for line in text.split("\n")) <= limit:
            assert [len(p) for p in parts if len(p) > limit] == []
        return
    for part in parts:
        assert len(part) <= limit
    for part in parts[:-1]:  # a code block cut in two is closed at the end of the part...
        assert open_fence(part) is None, part
    if parts:  # ...and the last part is left as the text itself ends
        assert (open_fence(parts[-1]) is None) == (open_fence(text) is None)
    if any(FENCE.match(line) and len(line) > limit for line in text.split("\n")):
        return  # a fence line longer than a whole part has to be cut: the rest of it is text in the next part
    # only fence lines were added: all other text is kept, in order
    assert squash(without_fences(joined)) == squash(without_fences(text))
    assert is_subsequence(fence_lines(text), fence_lines(joined))  # the text's own fences are all kept


# --- 4. odd reactions, clicks and edits through the real bot --------------------------------------------------


@PROPERTY
@given(st.one_of(JSON_JUNK, st.none(), st.dictionaries(
    st.sampled_from(["user", "reaction", "item", "actions", "channel", "container", "message", "ts", "text",
                     "bot_id"]),
    st.one_of(JSON_JUNK, st.none(), st.text(max_size=5),
              st.lists(st.one_of(JSON_JUNK, st.dictionaries(st.sampled_from(["action_id", "value", "id"]),
                                                            st.one_of(JSON_JUNK, st.text(max_size=5)))),
                       max_size=2),
              st.dictionaries(st.sampled_from(["id", "channel", "ts", "channel_id", "thread_ts"]),
                              st.one_of(JSON_JUNK, st.none(), st.text(max_size=5)))),
    max_size=6)))
def test_reactions_clicks_and_edits_are_read_without_raising(payload):
    reacted = reaction(payload)
    clicked = click(payload)
    assert all(isinstance(v, str) for v in (reacted.user, reacted.name, reacted.channel, reacted.ts))
    assert all(isinstance(v, str) for v in (clicked.user, clicked.channel, clicked.action_id, clicked.value))
    assert clicked.thread_ts is None or isinstance(clicked.thread_ts, str)
    if isinstance(payload, dict):
        edited = edit(payload)
        assert edited is None or all(isinstance(v, str) and v for v in edited[:2])


def click_payload(**fields: Any) -> dict[str, Any]:
    """A block_actions body as Slack sends it, with some fields replaced by what Slack never sends."""
    body: dict[str, Any] = {
        "type": "block_actions", "user": {"id": "U1"}, "api_app_id": "A1", "token": "t", "team": {"id": "T1"},
        "container": {"type": "message", "message_ts": "1700000000.000100", "channel_id": "C1"},
        "channel": {"id": "C1"}, "message": {"ts": "1700000000.000100", "thread_ts": "1700000000.000100"},
        "trigger_id": "1.2", "response_url": "https://example.invalid/r",
    }
    return body | fields


ODD_EVENTS = [  # most made a listener raise (Bolt logged "Failed to run listener function"), the rest kept junk
    {"type": "message", "subtype": "message_changed", "channel": "C1", "message": "now this text"},
    {"type": "message", "subtype": "message_changed", "channel": "C1", "message": ["x"]},
    {"type": "message", "subtype": "message_changed", "channel": "C1", "message": {"ts": ["1"], "text": {}}},
    {"type": "message", "subtype": "message_deleted", "channel": "C1", "deleted_ts": {"ts": "1"}},
    {"type": "reaction_added", "user": "U1", "reaction": "octagonal_sign", "item": "C1"},
    {"type": "reaction_added", "user": {}, "reaction": "octagonal_sign", "item": ["C1", "1700000000.000100"]},
]
ODD_CLICKS = [
    click_payload(user="U1", actions=[{"action_id": "slackbus_stop", "value": "C1|1700000000.000100"}]),
    click_payload(user=["U1"], actions=[{"action_id": "slackbus_attach", "value": {"C1": 1}}]),
    click_payload(channel="C1", actions=[{"action_id": "slackbus_approve_once", "value": 7}], message="x"),
    click_payload(container=[], channel=None, actions=[{"action_id": "slackbus_deny"}], user={"id": 5}),
    click_payload(actions=[{"action_id": "slackbus_stop", "value": ["C1", "1"]}]),
]


@pytest.mark.e2e
def test_odd_events_and_clicks_never_make_a_listener_raise(start_bot, fake_slack, fake_model):
    bot = start_bot()
    envelopes = [fake_slack.send_event(event) for event in ODD_EVENTS]
    envelopes += [fake_slack.send_envelope("interactive", body) for body in ODD_CLICKS]
    for envelope in envelopes:
        fake_slack.wait_ack(envelope)
    # the bot goes on: a mention sent after them is answered (their handlers, short, ran before its run ended)
    ts = fake_slack.user_says("C1", "U1", "still there? [[id:odd]]", mention=True)
    fake_slack.wait_for(lambda: any("answer for odd" in m["text"] for m in fake_slack.bot_messages("C1", ts)),
                        what="the answer")
    failures = [line for line in bot.lines() if "Failed to run listener" in line or "Traceback" in line
                or line.startswith("ERROR")]
    assert failures == [], "\n".join(bot.lines())
