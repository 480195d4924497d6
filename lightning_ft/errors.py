"""The one exception type for user mistakes; the command line prints it as a single `error: ...` line."""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar


class UserError(Exception):
    """A bad path, field, flag or combination in the user's input (not a bug in lightning_ft)."""

    #: The message of the last one raised. jsonargparse runs our settings' checks (a dataclass's __post_init__) while
    #: it parses, and reports what they raise inside a tree of its own; the command line finds the message there.
    latest: ClassVar[str | None] = None

    def __init__(self, message: object) -> None:
        super().__init__(message)
        UserError.latest = " ".join(str(message).split())


def first_line(err: BaseException) -> str:
    """The first line of an error's message (libraries follow it with pages of detail), or its type's name when
    it has no message."""
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


def find_cause(err: BaseException | None, wanted: Callable[[BaseException], bool]) -> BaseException | None:
    """The first exception in `err`'s chain of causes (itself first) that is `wanted`: libraries re-raise ours, and
    turn an OSError into their own error, with the original as its cause."""
    seen = set()
    while err is not None and id(err) not in seen:
        if wanted(err):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None
