"""The package's layers, read from the source: what each folder may import, and no import circles.

    top        bot.app, bot.cli, bot.console, bot.doctor, bot.__main__   may import anything
    edges      bot.slack, bot.local, bot.bridge, bot.cluster             core and the foundation (and their own)
    core       bot.core                                                  the foundation and itself; no transport,
                                                                         no slack_bolt / slack_sdk / aiohttp
    foundation bot (the package), bot.errors, bot.redact, bot.envfile,  only itself
               bot.log, bot.config, bot.request_options, bot.hardening,
               bot.cron

bot.cluster (several hosts on NATS JetStream) knows no Slack library; Slack's side of it (bot.slack.cluster_intake)
may import it. Core and the foundation import neither NATS nor a Slack library.
One sideways arrow is allowed: bot.bridge reads and writes local channels (bot.local.channel) when a hook runs on
a host with no bot. Every import counts, also one inside a function or under TYPE_CHECKING.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

BOT = Path(__file__).resolve().parents[2] / "bot"
TOP = {"bot.app", "bot.cli", "bot.console", "bot.doctor", "bot.__main__"}
FOUNDATION = {"bot", "bot.errors", "bot.redact", "bot.envfile", "bot.log", "bot.config", "bot.request_options",
              "bot.hardening", "bot.cron"}
EDGES = ("bot.slack", "bot.local", "bot.bridge", "bot.cluster")
SIDEWAYS = {("bot.bridge", "bot.local.channel")}
SLACK_LIBRARIES = ("slack_bolt", "slack_sdk", "aiohttp")


def module_name(path: Path) -> str:
    parts = path.relative_to(BOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(BOT.rglob("*.py"))}


def imports(path: Path, *, top_level_only: bool = False) -> set[str]:
    """Every module `path` imports (bot modules resolved to the module, `from bot import x` to bot.x)."""
    tree = ast.parse(path.read_text())
    known = modules()
    found: set[str] = set()

    def visit(node: ast.AST, nested: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = nested or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef) or (
                isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test))
            if isinstance(child, ast.Import) and not (top_level_only and nested):
                found.update(a.name for a in child.names)
            elif isinstance(child, ast.ImportFrom) and child.module and child.level == 0 and not (
                    top_level_only and nested):
                found.add(child.module)
                for a in child.names:
                    if f"{child.module}.{a.name}" in known:
                        found.add(f"{child.module}.{a.name}")
            visit(child, inner)

    visit(tree, False)
    return found


def layer(name: str) -> str:
    if name in TOP:
        return "top"
    if name in FOUNDATION:
        return "foundation"
    if name.startswith("bot.core"):
        return "core"
    for edge in EDGES:
        if name == edge or name.startswith(edge + "."):
            return edge
    return "unknown"


ALLOWED = {
    "foundation": {"foundation"},
    "core": {"foundation", "core"},
    "bot.slack": {"foundation", "core", "bot.slack", "bot.cluster"},
    "bot.local": {"foundation", "core", "bot.local"},
    "bot.bridge": {"foundation", "core", "bot.bridge"},
    "bot.cluster": {"foundation", "core", "bot.cluster"},
    "top": {"top", "foundation", "core", "bot.slack", "bot.local", "bot.bridge", "bot.cluster"},
}


@pytest.mark.parametrize("name", sorted(modules()))
def test_each_module_imports_only_what_its_layer_may(name: str) -> None:
    own = layer(name)
    assert own != "unknown", f"{name} belongs to no layer: add it to this test's map"
    wrong = []
    for target in imports(modules()[name]):
        if target.split(".")[0] in SLACK_LIBRARIES and own in {"core", "foundation", "bot.cluster"}:
            wrong.append(target)
        if target.split(".")[0] == "nats" and own in {"core", "foundation"}:
            wrong.append(target)
        if not target.startswith("bot"):
            continue
        if target not in modules() and target.rsplit(".", 1)[0] in modules():
            continue  # `from bot.x import name`: the module bot.x was counted
        kind = layer(target)
        if kind not in ALLOWED[own] and (own, target) not in SIDEWAYS:
            wrong.append(target)
    assert not wrong, f"{name} ({own}) imports {wrong}"


def test_no_import_circles_between_modules() -> None:
    graph = {name: {t for t in imports(path, top_level_only=True) if t in modules() and t != name}
             for name, path in modules().items()}
    graph = {name: {t for t in targets if t != "bot"} for name, targets in graph.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                raise AssertionError("import circle: " + " → ".join([*stack[stack.index(nxt):], nxt]))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name)


def test_the_rules_catch_a_core_module_that_imports_a_transport(tmp_path: Path) -> None:
    """The checker itself: an import of slack_bolt or of a transport from core is reported."""
    assert layer("bot.core.pipeline") == "core" and "bot.slack" not in ALLOWED["core"]
    probe = tmp_path / "probe.py"
    probe.write_text("from slack_bolt.async_app import AsyncApp\n\ndef f():\n    from bot.slack import poster\n")
    found = imports(probe)
    assert "slack_bolt.async_app" in found and "bot.slack" in found
    probe.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import bot.app\n")
    assert imports(probe) == {"typing", "bot.app"} and imports(probe, top_level_only=True) == {"typing"}


def test_every_folder_says_its_job_and_what_it_may_import() -> None:
    for folder in ("core", "slack", "local", "bridge", "cluster"):
        doc = ast.get_docstring(ast.parse((BOT / folder / "__init__.py").read_text()))
        assert doc and "import" in doc, f"bot/{folder}/__init__.py needs a docstring: its job, what it may import"
