"""How sessions and hooks run this slackbus: the console script beside this Python (else `python -m bot`), and
the shim SLACKBUS_HOME/bin/slackbus that the sessions the bot spawns find first on their PATH."""

from __future__ import annotations

import os
import sys
from pathlib import Path


def slackbus_argv() -> list[str]:
    """How to run this slackbus from a hook: the console script beside this Python, else `python -m bot`."""
    script = Path(sys.executable).parent / "slackbus"
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-m", "bot"]


def install_shim(bin_dir: Path) -> None:
    """SLACKBUS_HOME/bin/slackbus, first on the PATH of the sessions the bot spawns, so their Bash tool and
    hooks find this slackbus without the bot's virtualenv (and its `python`) on their PATH."""
    argv = slackbus_argv()
    target = bin_dir / "slackbus"
    try:
        bin_dir.mkdir(parents=True, exist_ok=True)
        body = "#!/bin/sh\nexec " + " ".join(f"'{a}'" for a in argv) + ' "$@"\n'
        if not target.is_file() or target.read_text() != body:
            tmp = bin_dir / f".slackbus.{os.getpid()}"
            tmp.write_text(body)
            tmp.chmod(0o755)
            os.replace(tmp, target)
    except OSError as exc:
        from bot.log import get_logger  # here: hooks call slackbus_argv and need not load logging

        get_logger("slackbus.shim").warning("bot.shim_failed", path=str(target), error=str(exc), python=sys.executable)
