"""The one exception type for bad input: the CLI prints its message on one line and exits with code 2."""


class GhoulError(Exception):
    """Something the user gave us is wrong; the message says what and what to do instead."""
