"""The one error type users see: a mistake in what they asked for or gave (a path, an option, a
damaged file). The CLI prints its message as one `Error: ...` line and exits with status 2; an
`Advice` warning as one `Warning: ...` line."""


class UserError(ValueError):
    """A model, file or setting fffconvert cannot use; the message says why and what would work."""


class Advice(UserWarning):
    """Something the user gave that fffconvert used, but not as given (rows left out, say)."""
