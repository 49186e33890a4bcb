"""Errors the user can fix.

A :class:`UserError` carries a message that says what was wrong and what to do. The command line prints
it without a traceback and exits with status 2; library callers can catch it like any exception.
"""


class UserError(Exception):
    """A problem with the user's input (data, configuration, files), not a bug in nocollapse."""


class CollapseError(RuntimeError):
    """Training reached a numerical state that signals collapse (e.g. a covariance that is no longer
    positive definite). The training loop reports it with the step and keeps the last good checkpoint."""


class NonFiniteStep(RuntimeError):
    """A training step whose loss terms or gradient norm are not finite, caught before the update.

    ``broken`` holds the non-finite values by name, ``finite`` the other terms of the same step.
    """

    def __init__(self, broken: dict[str, float], finite: dict[str, float]) -> None:
        shown = ", ".join(f"{name} {value:.4g}" for name, value in finite.items())
        super().__init__(f"non-finite {', '.join(f'{name} ({value})' for name, value in broken.items())}" + (f"; finite: {shown}" if shown else ""))
        self.broken, self.finite = broken, finite


class TrainingStopped(Exception):
    """Training stopped on request (SIGTERM, Ctrl-C) at a step boundary, after saving a checkpoint there."""

    def __init__(self, signal_name: str, step: int | None, run_dir: object) -> None:
        super().__init__(f"{signal_name} received: stopped after step {step} and saved a checkpoint in {run_dir}; "
                         "continue with `nocollapse train --resume` and the same run.name")
        self.signal_name, self.step = signal_name, step


class RunsStopped(TrainingStopped):
    """A command that trains several runs (sweep, tune, claims) stopped on request; its running trainings saved checkpoints."""

    def __init__(self, signal_name: str, again: str) -> None:
        Exception.__init__(self, f"{signal_name} received: the running trainings stopped at a step boundary; {again}")
        self.signal_name, self.step = signal_name, None
