"""The error for a value the user gave that cannot be used."""


class UserError(ValueError):
    """A setting, cursor, path or size the user chose that cannot be used; the message is
    one line for them (the CLI prints it without a traceback, the TUI as a notification).
    A ValueError, so that code validating values catches it as one; any other ValueError
    is a bug and keeps its traceback."""
