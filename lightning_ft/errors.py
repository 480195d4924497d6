"""The one exception type for user mistakes; the command line prints it as a single `error: ...` line."""

from __future__ import annotations

from typing import ClassVar


class UserError(Exception):
    """A bad path, field, flag or combination in the user's input (not a bug in lightning_ft)."""

    #: The message of the last one raised. jsonargparse runs our settings' checks (a dataclass's __post_init__) while
    #: it parses, and reports what they raise inside a tree of its own; the command line finds the message there.
    latest: ClassVar[str | None] = None

    def __init__(self, message: object) -> None:
        super().__init__(message)
        UserError.latest = " ".join(str(message).split())
