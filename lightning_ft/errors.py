"""The one exception type for user mistakes; the CLI prints it as a single `error: ...` line."""


class UserError(Exception):
    """A bad path, field, flag or combination in the user's input (not a bug in lightning_ft)."""
