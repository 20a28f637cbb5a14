"""The one exception type that means "the user gave us something we cannot use".

The CLI prints it as a single line on stderr and exits with code 2 (no traceback unless
`--debug`). It subclasses ``ValueError``, so library callers can catch either; code below the CLI
raises plain ``ValueError`` for broken invariants (a bug or a misuse of the Python API) and
``UserError`` only for input a person supplied (a path, a file's contents, a setting).
"""


class UserError(ValueError):
    """A problem with the user's input (path, file contents, settings), not a bug in gptforge."""
