"""bot.request_options: options at the start of a request, and the choice they make against the settings."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from bot.config import Settings, load_settings
from bot.core.context_builder import ContextBuilder
from bot.errors import OptionsError, SlackbusError
from bot.request_options import RequestOptions, ThreadChoice, branch_problem, choose, split_options

NONE = RequestOptions()


def one_sentence(message: str) -> bool:
    """Ends with a full stop and holds no second sentence."""
    return message.endswith(".") and not re.search(r"[.!?] +[A-Z]", message)


def refusal(text: str) -> str:
    with pytest.raises(OptionsError) as info:
        split_options(text)
    message = str(info.value)
    assert one_sentence(message), message
    return message


# --- split_options: the two forms ------------------------------------------------------------------------------


def test_the_bracket_form_reads_every_option():
    options, task = split_options("[repo=api branch=release/1.2 model=opus] fix the flaky test")
    assert options == RequestOptions(repo="api", branch="release/1.2", model="opus")
    assert task == "fix the flaky test"


@pytest.mark.parametrize(
    "text",
    [
        "--repo api --branch release/1.2 --model opus fix the flaky test",
        "--repo=api --branch=release/1.2 --model=opus fix the flaky test",
        "--model opus --repo=api   --branch release/1.2\nfix the flaky test",
        "—repo api —branch release/1.2 –model opus fix the flaky test",  # Slack's smart dashes
    ],
)
def test_the_flag_form_reads_every_option(text):
    options, task = split_options(text)
    assert options == RequestOptions(repo="api", branch="release/1.2", model="opus")
    assert task == "fix the flaky test"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[repo="my repo" model=opus] go', RequestOptions(repo="my repo", model="opus")),
        ("[repo='my repo'] go", RequestOptions(repo="my repo")),
        ("[repo=“my repo”] go", RequestOptions(repo="my repo")),  # curly quotes from a Slack client
        ("[branch=‘a b’] go", RequestOptions(branch="a b")),
        ('--repo "my repo" go', RequestOptions(repo="my repo")),
        ('--repo="my repo" go', RequestOptions(repo="my repo")),
        ('[repo="a,b]c"] go', RequestOptions(repo="a,b]c")),  # separators inside quotes are the value's
    ],
)
def test_values_may_be_quoted(text, expected):
    assert split_options(text) == (expected, "go")


@pytest.mark.parametrize(
    "text",
    [
        "[repo=api,branch=main,model=opus] go",
        "[repo=api, branch=main , model=opus] go",
        "[ repo = api branch=main,model=opus ] go",
    ],
)
def test_items_are_separated_by_spaces_or_commas(text):
    assert split_options(text) == (RequestOptions(repo="api", branch="main", model="opus"), "go")


def test_keys_do_not_care_about_case_and_entities_in_values_are_decoded():
    options, _ = split_options("[Repo=api BRANCH=fix&amp;test] go")
    assert options == RequestOptions(repo="api", branch="fix&test")


@pytest.mark.parametrize(
    ("text", "task"),
    [
        ("<@U123> [repo=api] fix it", "<@U123> fix it"),
        ("  <@U123|slackbus>  --repo api fix it", "  <@U123|slackbus>  fix it"),
        ("<@U123>[repo=api]fix it", "<@U123> fix it"),
        ("<@W1> <@U2> [model=opus] fix it", "<@W1> <@U2> fix it"),
        ("   [repo=api] fix it", "   fix it"),
    ],
)
def test_a_mention_before_the_options_stays_where_it_was(text, task):
    options, rest = split_options(text)
    assert options != NONE
    assert rest == task
    plain = ContextBuilder(None, bot_user_id="U123", max_messages=1, max_chars=1, name_of=str).plain  # type: ignore[arg-type]
    assert plain(rest).endswith("fix it")
    assert "repo" not in plain(rest) and "model" not in plain(rest)


def test_options_alone_leave_no_task():
    assert split_options("<@U1> [repo=api]  ") == (RequestOptions(repo="api"), "<@U1>")
    assert split_options("--model opus") == (RequestOptions(model="opus"), "")


@pytest.mark.parametrize(
    "text",
    [
        "[WIP] fix it",
        "[1] a",
        "[see below] fix it",
        "[] fix it",
        "[ ] fix it",
        "[repo=api fix it",  # no closing bracket
        "[repo=api x] fix it",  # one item is not key=value
        "[=x] fix it",
        "fix it [repo=api]",  # not at the start
        "see --repo api",
        "--5 minutes left",
        "—anyway, fix it",
        "- item",
        "<@U1> [WIP] fix it",
        "",
        "   ",
    ],
)
def test_text_that_does_not_start_with_options_is_left_as_it_is(text):
    assert split_options(text) == (NONE, text)


def test_a_lone_double_dash_ends_the_options():
    assert split_options("--model opus -- --repo is a flag of our CLI") == (
        RequestOptions(model="opus"), "--repo is a flag of our CLI")
    assert split_options("-- --verbose is broken") == (NONE, "--verbose is broken")


# --- split_options: refusals ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "shown"), [("[foo=bar] x", "`foo=`"), ("--foo bar x", "`--foo`"),
                                             ("[repo=api, Colour=red] x", "`Colour=`")])
def test_an_unknown_key_names_the_keys_allowed(text, shown):
    message = refusal(text)
    assert shown in message
    for key in ("repo", "branch", "model"):
        assert key in message


def test_an_unknown_flag_says_how_to_start_a_task_with_dashes():
    assert "`--` alone" in refusal("--verbose fix it")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[repo=a repo=b] x", "given twice"),
        ("--model a --model b x", "given twice"),
        ("[repo=] x", "has no value"),
        ('[repo=""] x', "has no value"),
        ("--repo", "has no value"),
        ("--repo --model opus x", "has no value"),
        ('[repo="api] x', "never closed"),
        ('--repo "api x', "never closed"),
        ("[branch=" + "b" * 300 + "] x", "300 characters"),
    ],
)
def test_malformed_options_are_one_sentence(text, expected):
    assert expected in refusal(text)


# --- split_options: properties ----------------------------------------------------------------------------------

PROPERTY = settings(max_examples=300, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow])
LEAD = re.compile(r"(?:\s*<@[UW][A-Z0-9]+(?:\|[^>]*)?>)*\s*")
TOKENS = ["[", "]", "=", ",", " ", "\n", '"', "'", "“", "”", "--", "—", "-", "repo", "branch", "model", "Repo",
          "foo", "WIP", "1", "api", "<@U1>", "<@U1|b>", "&amp;", "/", ".", "x y"]
ODD_TEXT = st.one_of(st.text(max_size=80), st.lists(st.sampled_from(TOKENS), max_size=25).map("".join))


def kept(text: str, out: str) -> bool:
    """`out` is `text` with one stretch after its leading whitespace and mentions cut out (and a space put in its
    place when a mention would otherwise touch the task)."""
    lead = LEAD.match(text)
    head = text[: lead.end() if lead else 0]
    if out == text or out == head.rstrip():
        return True
    if not out.startswith(head):
        return False
    body = out[len(head) :]
    if body.startswith(" ") and head and not head[-1].isspace():
        body = body[1:]
    return body != "" and text.endswith(body) and len(body) < len(text) - len(head)


@PROPERTY
@given(ODD_TEXT)
@example("[repo=api] [repo=web] x")
@example("<@U1>[model=x]y")
@example('--repo "')
@example("[repo='a' b")
def test_split_options_never_raises_anything_but_options_error_and_keeps_the_task(text):
    try:
        options, out = split_options(text)
    except OptionsError as err:
        assert one_sentence(str(err)), str(err)
        return
    assert isinstance(options, RequestOptions)
    if options == NONE and not text[LEAD.match(text).end():].startswith("--"):  # type: ignore[union-attr]
        assert out == text
    assert kept(text, out), (text, out)


VALUE = st.from_regex(r"[A-Za-z0-9._/-]{1,12}( [A-Za-z0-9]{1,5})?", fullmatch=True).filter(
    lambda v: not v.startswith("-"))
TASK = st.text(min_size=1, max_size=40).filter(
    lambda t: t.strip() != "" and not t.lstrip().startswith(("-", "—", "–", '"', "'", "“", "‘", "«")))


@PROPERTY
@given(
    st.fixed_dictionaries({}, optional={"repo": VALUE, "branch": VALUE, "model": VALUE}).filter(bool),
    st.sampled_from(["brackets", "brackets,", "flags", "flags="]),
    st.sampled_from(["", "<@U123> ", "  <@U123|bot>\n"]),
    TASK,
)
def test_options_written_either_way_come_back_with_the_task(values, form, mention, task):
    def quoted(v: str) -> str:
        return f'"{v}"' if " " in v else v

    if form.startswith("brackets"):
        block = "[" + (", " if form.endswith(",") else " ").join(f"{k}={quoted(v)}" for k, v in values.items()) + "]"
    else:
        sep = "=" if form.endswith("=") else " "
        block = " ".join(f"--{k}{sep}{quoted(v)}" for k, v in values.items())
    options, out = split_options(f"{mention}{block} {task}")
    assert options == RequestOptions(**values)
    assert out == mention + task.lstrip()


# --- branch names: git's rules ------------------------------------------------------------------------------------

BRANCHES = ["main", "release/1.2", "feature/x-y_z", "é", "a]b", "a<b", "a;b", "v1.2.3", "user@host",
            "HEAD", "@", "-x", "a..b", "a/.b", ".a", "a.lock", "a/b.lock/c", "a/", "/a", "a//b", "x.", "a b",
            "a~1", "a^", "a:b", "a?", "a*", "a[b", "a\\b", "a@{1}", "a\tb", "a\x7fb", ""]


@pytest.mark.parametrize("name", BRANCHES)
def test_branch_names_follow_git_check_ref_format(name, tmp_path):
    git = shutil.which("git")
    if git is None:
        pytest.skip("git is not installed")
    if not name:
        assert branch_problem(name) == "it is empty"
        return
    result = subprocess.run([git, "check-ref-format", "--branch", name], cwd=tmp_path, capture_output=True,
                            check=False, timeout=10)
    git_accepts = result.returncode == 0
    if name == "@":  # git reads a lone @ as HEAD's branch; as a base branch name it is refused here too
        assert not git_accepts or branch_problem(name) is not None
        return
    assert (branch_problem(name) is None) == git_accepts, (name, branch_problem(name), result.stderr)


# --- choose() -----------------------------------------------------------------------------------------------------


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """srv/ (the root) with repositories api, web, team/tools, the channel folder general, and a link out."""
    srv = tmp_path / "srv"
    for name in ("api", "web", "team/tools", "general"):
        (srv / name).mkdir(parents=True)
    (tmp_path / "secret").mkdir()
    (srv / "escape").symlink_to(tmp_path / "secret")
    return tmp_path


def make_settings(tree: Path, **env: str) -> Settings:
    cli = tree / "claude"
    cli.write_text("#!/bin/sh\nexit 0\n")
    cli.chmod(0o755)
    config = tree / "slackbus.toml"
    config.write_text(
        '[channels.C2]\nrepo = "api"\nbranch = "release/1.2"\nmodel = "opus"\n'
        '[channels.C4]\nrepo = "team/tools"\n'
        '[channels.C5]\ndir = "' + str(tree / "srv" / "web") + '"\nbranch = "develop"\n'
    )
    base = {
        "CLAUDE_CLI_PATH": str(cli),
        "SLACKBUS_HOME": str(tree / "state"),
        "SLACKBUS_ROOTS": str(tree / "srv"),
        "SLACKBUS_WORKDIR": str(tree / "srv" / "general"),
        "SLACKBUS_REPOS": f"api={tree / 'srv' / 'api'},web=web",
        "SLACKBUS_MODELS": "opus,sonnet,claude-haiku-4-5",
        "SLACKBUS_MODEL": "sonnet",
        "SLACKBUS_CONFIG": str(config),
    }
    return load_settings(base | env, env_file=str(tree / "no.env"), transport="local")


@pytest.fixture
def conf(tree: Path) -> Settings:
    return make_settings(tree)


def pick(conf: Settings, options: RequestOptions, channel: str = "C9", folder: Path | None = None) -> ThreadChoice:
    return choose(options, conf, channel, folder or conf.workdir_for(channel))


def choose_refusal(conf: Settings, options: RequestOptions, channel: str = "C9") -> str:
    with pytest.raises(OptionsError) as info:
        pick(conf, options, channel)
    assert isinstance(info.value, SlackbusError)
    message = str(info.value)
    assert one_sentence(message), message
    return message


def test_no_options_and_no_channel_defaults_give_the_channel_folder_and_the_global_model(conf, tree):
    assert pick(conf, NONE) == ThreadChoice(tree / "srv" / "general", None, None, "sonnet")


def test_a_repo_named_in_slackbus_repos(conf, tree):
    assert pick(conf, RequestOptions(repo="api")) == ThreadChoice(tree / "srv" / "api", "api", None, "sonnet")
    assert pick(conf, RequestOptions(repo="web")).folder == tree / "srv" / "web"  # SLACKBUS_REPOS's relative path


@pytest.mark.parametrize("raw", ["team/tools", "{srv}/team/tools", "~/srv/team/tools", "team/../team/tools"])
def test_a_repo_given_as_a_folder_under_the_roots(conf, tree, monkeypatch, raw):
    monkeypatch.setenv("HOME", str(tree))
    choice = pick(conf, RequestOptions(repo=raw.format(srv=tree / "srv")))
    assert (choice.folder, choice.repo_name) == (tree / "srv" / "team" / "tools", "tools")


@pytest.mark.parametrize("text", ["[repo=&lt;!channel&gt;] x", "--repo <!here> x", "[branch=\"`a` <!here>\"] x"])
def test_a_refusal_repeats_no_slack_markup_and_no_backtick(conf, text):
    options, _ = split_options(text)
    message = choose_refusal(conf, options)
    assert "<" not in message and ">" not in message
    assert message.count("`") % 2 == 0


def test_an_unknown_repo_lists_the_names_allowed(conf, tree):
    message = choose_refusal(conf, RequestOptions(repo="nope"))
    assert "`nope`" in message and "`api`" in message and "`web`" in message and str(tree / "srv") in message


@pytest.mark.parametrize("raw", ["{tmp}/secret", "../secret", "{tmp}/does-not-exist", "/etc"])
def test_a_folder_outside_the_roots_is_refused_whether_or_not_it_exists(conf, tree, raw):
    message = choose_refusal(conf, RequestOptions(repo=raw.format(tmp=tree)))
    assert "outside the allowed roots" in message


def test_a_symlink_out_of_the_roots_is_refused(conf, tree):
    assert (tree / "srv" / "escape").is_dir()  # it exists, under the root by name
    assert "outside the allowed roots" in choose_refusal(conf, RequestOptions(repo="escape"))
    assert "outside the allowed roots" in choose_refusal(conf, RequestOptions(repo=str(tree / "srv" / "escape")))


def test_a_named_repo_that_is_gone_is_refused(conf, tree):
    (tree / "srv" / "api").rmdir()
    assert "no longer a folder" in choose_refusal(conf, RequestOptions(repo="api"))


def test_a_model_not_in_slackbus_models_lists_the_models_allowed(conf):
    message = choose_refusal(conf, RequestOptions(model="gpt-5"))
    assert "`gpt-5`" in message
    assert "`claude-haiku-4-5`, `opus` or `sonnet`" in message


def test_a_model_is_matched_whatever_its_case(conf):
    assert pick(conf, RequestOptions(model="OPUS")).model == "opus"


def test_without_slackbus_models_any_model_name_goes_but_not_junk(tree):
    conf = make_settings(tree, SLACKBUS_MODELS="", SLACKBUS_MODEL="")
    (tree / "slackbus.toml").write_text("")
    assert pick(conf, RequestOptions(model="claude-opus-4-1-20250805")).model == "claude-opus-4-1-20250805"
    assert pick(conf, NONE).model is None  # the CLI's default
    assert "does not look like a model name" in choose_refusal(conf, RequestOptions(model="--dangerously-skip"))


@pytest.mark.parametrize("branch", ["a b", "a..b", "-x", "a~1", "a:b", "a?", "a*", "a[b", "a\\b", "x.lock", "HEAD"])
def test_a_branch_git_refuses_is_one_sentence(conf, branch):
    message = choose_refusal(conf, RequestOptions(branch=branch))
    assert "not a name git accepts" in message


def test_a_branch_git_accepts_is_passed_on_unchecked_for_existence(conf):
    assert pick(conf, RequestOptions(branch="release/1.2")).branch == "release/1.2"


# --- choose(): precedence -------------------------------------------------------------------------------------------


def test_a_channel_default_repo_is_the_channel_folder(conf, tree):
    assert conf.workdir_for("C2") == tree / "srv" / "api"
    assert pick(conf, NONE, "C2") == ThreadChoice(tree / "srv" / "api", "api", "release/1.2", "opus")
    assert pick(conf, NONE, "C4") == ThreadChoice(tree / "srv" / "team" / "tools", "tools", None, "sonnet")


def test_the_request_wins_over_the_channel_defaults(conf, tree):
    choice = pick(conf, RequestOptions(branch="main", model="sonnet"), "C2")
    assert choice == ThreadChoice(tree / "srv" / "api", "api", "main", "sonnet")


def test_another_repo_starts_from_its_own_default_branch(conf, tree):
    choice = pick(conf, RequestOptions(repo="web"), "C2")
    assert choice == ThreadChoice(tree / "srv" / "web", "web", None, "opus")  # the channel's model still applies
    assert pick(conf, RequestOptions(repo="api"), "C2").branch == "release/1.2"  # its own repo: the default holds


def test_a_folder_set_with_cwd_keeps_the_model_but_not_the_channel_branch(conf, tree):
    choice = pick(conf, NONE, "C2", folder=tree / "srv" / "team" / "tools")
    assert choice == ThreadChoice(tree / "srv" / "team" / "tools", None, None, "opus")


def test_a_channel_folder_that_is_a_named_repo_carries_its_name(conf, tree):
    choice = pick(conf, NONE, "C5")
    assert choice == ThreadChoice(tree / "srv" / "web", "web", "develop", "sonnet")


def test_with_narrower_slackbus_models_the_channel_model_holds_and_others_are_refused(conf, tree):
    narrowed = make_settings(tree, SLACKBUS_MODELS="opus,sonnet")
    assert pick(narrowed, NONE, "C2").model == "opus"
    assert "not allowed here" in choose_refusal(narrowed, RequestOptions(model="claude-haiku-4-5"), "C2")
