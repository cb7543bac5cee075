"""A one-line progress bar on stderr, with no dependencies; silent when stderr is not a tty."""

from __future__ import annotations

import sys
import time
from typing import TextIO

from router.bench.client import RequestResult

_WIDTH = 30
_REDRAW_S = 0.1  # at most ten redraws a second: a fast run must not be slowed by its bar


class Progress:
    """Counts finished requests of one run and redraws `label [####....] done/total`."""

    def __init__(
        self, label: str, total: int, *, enabled: bool = True, stream: TextIO | None = None
    ) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled and total > 0
        self.label = label
        self.total = total
        self.done = 0
        self.errors = 0
        self._started = time.perf_counter()
        self._drawn = 0.0

    @classmethod
    def for_tty(cls, label: str, total: int, *, wanted: bool) -> Progress:
        """A bar shown only when wanted and stderr is a terminal (not in logs or CI output)."""
        return cls(label, total, enabled=wanted and sys.stderr.isatty())

    def update(self, result: RequestResult) -> None:
        self.done += 1
        self.errors += not result.ok
        now = time.perf_counter()
        if self.enabled and (now - self._drawn >= _REDRAW_S or self.done == self.total):
            self._drawn = now
            self._draw(now)

    def close(self) -> None:
        """End the bar's line, so what is printed next starts on a fresh one."""
        if self.enabled and self._drawn:
            self.stream.write("\n")
            self.stream.flush()

    def _draw(self, now: float) -> None:
        filled = _WIDTH * self.done // self.total
        bar = "#" * filled + "." * (_WIDTH - filled)
        errors = f" errors {self.errors}" if self.errors else ""
        self.stream.write(
            f"\r{self.label} [{bar}] {self.done}/{self.total}{errors} {now - self._started:5.1f}s"
        )
        self.stream.flush()
