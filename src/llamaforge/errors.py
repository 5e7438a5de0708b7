"""User-facing errors: the CLI prints them as one line `error: ...` with no traceback."""


class UserError(Exception):
    """A mistake in the user's input (a file, a field, a flag): the message names it and what was expected."""


def where(path, field: str | None = None) -> str:
    """'PATH' or 'PATH: FIELD', the prefix every UserError message starts with."""
    return f"{path}: {field}" if field else f"{path}"
