"""The one exception type that means "the user gave us something we cannot use".

The CLI prints it as a single line on stderr and exits with code 2 (no traceback unless
`--debug`). Library callers can catch it like any other exception.
"""


class UserError(Exception):
    """A problem with the user's input (path, file contents, settings), not a bug in gptforge."""
