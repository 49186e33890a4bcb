"""Errors the user can fix.

A :class:`UserError` carries a message that says what was wrong and what to do. The command line prints
it without a traceback and exits with status 2; library callers can catch it like any exception.
"""


class UserError(Exception):
    """A problem with the user's input (data, configuration, files), not a bug in nocollapse."""
