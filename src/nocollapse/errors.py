"""Errors the user can fix.

A :class:`UserError` carries a message that says what was wrong and what to do. The command line prints
it without a traceback and exits with status 2; library callers can catch it like any exception.
"""


class UserError(Exception):
    """A problem with the user's input (data, configuration, files), not a bug in nocollapse."""


class CollapseError(RuntimeError):
    """Training reached a numerical state that signals collapse (e.g. a covariance that is no longer
    positive definite). The training loop reports it with the step and keeps the last good checkpoint."""
