"""The one exception type users see: a single line saying what went wrong and how to fix it."""


class SaesteerError(Exception):
    """A user-facing error. The CLI prints its message on one line and exits with code 2."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))
