"""User-facing errors: the CLI prints them as one line `error: ...` with no traceback."""


class UserError(Exception):
    """A mistake in the user's input (a file, a field, a flag): the message names it and what was expected."""


class UserNotice(UserWarning):
    """Something the user should know that does not stop the work (a lossy export, a fallback taken). Library code
    emits it with `warnings.warn(msg, UserNotice)` (callers can filter it as any warning); the CLI prints it as one
    line `warning: MSG`, with no source path or line number."""


def where(path, field: str | None = None) -> str:
    """'PATH' or 'PATH: FIELD', the prefix every UserError message starts with."""
    return f"{path}: {field}" if field else f"{path}"


def check_range(value, kind: type, low: float, high: float, where: str, bounds: str = "[]"):
    """`value` as a `kind` (int or float) inside the interval low..high, or a UserError naming `where`.

    `bounds` gives the interval's brackets: "[]" closed, "(]" open below, "[)" open above, "()" open. An int is
    accepted for a float field (and becomes a float); a bool, a string, NaN or infinity is never a number here."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if number and kind is int and isinstance(value, float):
        number = value.is_integer()
    if number and isinstance(value, float) and value != value or value in (float("inf"), float("-inf")):
        number = False
    if number:
        above = value > low if bounds[0] == "(" else value >= low
        below = value < high if bounds[1] == ")" else value <= high
        if above and below:
            return int(value) if kind is int else float(value)
    noun = "an integer" if kind is int else "a number"
    raise UserError(f"{where}: expected {noun} in {bounds[0]}{low}, {high}{bounds[1]}, got {value!r}")
