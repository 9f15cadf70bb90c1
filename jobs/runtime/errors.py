"""Errors an operator can act on: they print as one line, without a traceback, and exit with
code 2 (bad input) or 1 (the input may be fine, the run is not: a stage or a destination failed)."""


class LakehouseError(Exception):
    """A problem with the operator's input (config, paths, arguments), not a bug.

    The CLI prints ``error: <message>`` on one line and exits with :attr:`exit_code`,
    without a traceback.
    """

    exit_code = 2

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


class ConfigError(LakehouseError):
    """A settings or source file is missing, malformed, or holds a wrong key or value."""


class InputError(LakehouseError):
    """A landing path or another input named by the settings does not exist or cannot be used."""
