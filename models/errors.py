"""The user-facing error class. It lives in the lowest layer (models/) so that the model imports nothing
from ``stylecap``; ``stylecap.utils`` re-exports it, and entry points print it as one line (exit 2)."""


class UserError(Exception):
    """Bad input from the user: the message names the problem and the fix."""
