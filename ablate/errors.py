"""The one exception type the CLI turns into a one-line message instead of a traceback."""


class UserError(Exception):
    """A problem the user can fix (bad input, missing file, NaN loss...).

    The message is one line that names the problem and how to fix it.
    """
