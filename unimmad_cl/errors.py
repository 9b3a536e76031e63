"""The one exception type the CLI turns into a one-line message and a non-zero exit."""


class UserError(Exception):
    """Bad input from the user (flag, file, data, registry state).

    The message must name the offending file/flag/value and say what was expected; the CLI
    prints it as a single line without a traceback.
    """
