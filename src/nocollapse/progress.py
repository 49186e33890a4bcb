"""A one-line progress bar on stderr, without dependencies.

On a terminal it redraws one line; in a log file (CI, nohup) it prints a line every ``every`` percent
so that the log stays short.
"""

from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, total: int, description: str, *, enabled: bool = True, start: int = 0, every_percent: int = 10) -> None:
        self.total, self.count, self.description = max(1, total), start, description
        self.enabled = enabled
        self.interactive = sys.stderr.isatty()
        self.started = time.perf_counter()
        self.start_count = start
        self.every = max(1, self.total * every_percent // 100)
        self.last_printed = start
        self.postfix = ""

    def update(self, steps: int = 1, **values: float | str) -> None:
        self.count = min(self.total, self.count + steps)
        if values:
            self.postfix = "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in values.items())
        if not self.enabled:
            return
        if self.interactive or self.count - self.last_printed >= self.every or self.count == self.total:
            self.last_printed = self.count
            self._draw()

    def _draw(self) -> None:
        elapsed = time.perf_counter() - self.started
        done = self.count - self.start_count
        rate = done / elapsed if elapsed > 0 else 0.0
        remaining = (self.total - self.count) / rate if rate > 0 else 0.0
        width = 24
        filled = int(width * self.count / self.total)
        bar = "█" * filled + "·" * (width - filled)
        line = f"{self.description} {bar} {self.count}/{self.total} [{_clock(elapsed)}<{_clock(remaining)}] {self.postfix}"
        if self.interactive:
            sys.stderr.write("\r\033[K" + line)
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled and self.interactive:
            sys.stderr.write("\n")
            sys.stderr.flush()


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"
