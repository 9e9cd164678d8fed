"""The errors slackbus raises, in one place.

    SlackbusError                 base; str(err) is a sentence a user can act on
    ├── ConfigError               a setting is missing or wrong (start-up refuses, exit 2)
    ├── StoreError                the SQLite state cannot be read or written
    ├── WorktreeError             a thread's git worktree cannot be made, compared, pushed or removed
    ├── OptionsError              a request's options ([repo=… branch=… model=…], --repo …) cannot be used
    ├── PostRefusedError          the transport refused a post (Slack: not_in_channel, …); `reason` is its word
    └── RunError                  a Claude run did not produce an answer
        ├── CLINotFoundError      the `claude` executable cannot be started
        ├── CLIProcessError       the CLI exited or crashed without a result (exit_code, stderr_tail)
        ├── CLIOutputError        the CLI wrote a line that is not JSON, or one over the size limit (too_large)
        ├── RunTimeoutError       the run exceeded SLACKBUS_RUN_TIMEOUT
        ├── RunStalledError       the CLI was silent for SLACKBUS_STALL_SECONDS
        ├── RunCancelledError     somebody (or shutdown) cancelled the run
        ├── SessionNotFoundError  `--resume` found no conversation (other HOME/cwd, or never saved)
        └── WorkdirError          the folder no longer passes SLACKBUS_ROOTS (checked again at every spawn)
"""

from __future__ import annotations


class SlackbusError(Exception):
    """Base class; the message is meant for people."""


class ConfigError(SlackbusError):
    pass


class StoreError(SlackbusError):
    pass


class WorktreeError(SlackbusError):
    pass


class OptionsError(SlackbusError):
    """An unknown option, a repository, branch or model that is not allowed: one sentence saying what is."""


class PostRefusedError(SlackbusError):
    """A transport's poster would not take a post: `reason` is the transport's own word for why (Slack's error
    code, e.g. not_in_channel), for the sentence the core writes around it."""

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason


class RunError(SlackbusError):
    def __init__(self, message: str, *, session_id: str | None = None) -> None:
        super().__init__(message)
        self.session_id = session_id


class CLINotFoundError(RunError):
    pass


class CLIProcessError(RunError):
    def __init__(
        self,
        message: str,
        *,
        exit_code: int | None = None,
        stderr_tail: str = "",
        session_id: str | None = None,
    ) -> None:
        super().__init__(message, session_id=session_id)
        self.exit_code = exit_code
        self.stderr_tail = stderr_tail


class CLIOutputError(RunError):
    def __init__(self, message: str, *, too_large: bool = False, session_id: str | None = None) -> None:
        super().__init__(message, session_id=session_id)
        self.too_large = too_large


class RunTimeoutError(RunError):
    pass


class RunStalledError(RunError):
    pass


class RunCancelledError(RunError):
    def __init__(self, message: str, *, by: str | None = None, session_id: str | None = None) -> None:
        super().__init__(message, session_id=session_id)
        self.by = by


class SessionNotFoundError(RunError):
    pass


class WorkdirError(RunError):
    pass
