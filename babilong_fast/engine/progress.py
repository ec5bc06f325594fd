"""Progress of a streamed prefill: a ``tqdm`` bar when tqdm is installed, else a periodic line on stderr."""

from __future__ import annotations

import sys
import time
from typing import TextIO

try:
    from tqdm import tqdm
except ImportError:  # tqdm is optional
    tqdm = None

LOG_EVERY_S = 10.0
POSTFIX_EVERY_S = 0.5


class Progress:
    """Counts tokens and segments; shows tokens/s.

    Args:
        enabled: False makes every call a no-op.
        total: expected tokens, if known (a :class:`~babilong_fast.data.BabilongSample`'s ``num_tokens``).
        desc: label of the bar or line.
        log_every_s: seconds between lines when tqdm is missing (default ``LOG_EVERY_S``).
        file: where to write (default stderr).
        initial, initial_segments: tokens and segments already run (a continued stream): the counts start there.
    """

    def __init__(
        self,
        enabled: bool = True,
        total: int | None = None,
        desc: str = "prefill",
        log_every_s: float | None = None,
        file: TextIO | None = None,
        initial: int = 0,
        initial_segments: int = 0,
    ) -> None:
        self.enabled, self.total, self.desc = enabled, total, desc
        self.log_every_s = LOG_EVERY_S if log_every_s is None else log_every_s
        self.file = sys.stderr if file is None else file
        self.initial, self.initial_segments = initial, initial_segments
        self.tokens = self.segments = 0
        self._start = self._last = time.perf_counter()
        self._bar = None
        if enabled and tqdm is not None:
            self._bar = tqdm(total=total, initial=initial, desc=desc, unit="tok", unit_scale=True, file=self.file,
                             leave=False)

    def all_segments(self) -> int:
        """Segments run, with ``initial_segments``."""
        return self.initial_segments + self.segments

    def rate(self) -> float:
        """Tokens per second since the start (this call's tokens, not ``initial``)."""
        return self.tokens / max(time.perf_counter() - self._start, 1e-9)

    def update(self, tokens: int, segments: int = 0) -> None:
        if not self.enabled:
            return
        self.tokens += tokens
        self.segments += segments
        now = time.perf_counter()
        if self._bar is not None:
            self._bar.update(tokens)
            if now - self._last >= POSTFIX_EVERY_S:
                self._last = now
                self._bar.set_postfix({"tok/s": f"{self.rate():.0f}", "seg": self.all_segments()}, refresh=False)
        elif now - self._last >= self.log_every_s:
            self._last = now
            self._line()

    def _line(self) -> None:
        of = f"/{self.total}" if self.total else ""
        done = self.initial + self.tokens
        print(
            f"babilong_fast: {self.desc} {done}{of} tokens, {self.all_segments()} segments, {self.rate():.0f} tok/s",
            file=self.file,
            flush=True,
        )

    def close(self) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.set_postfix({"tok/s": f"{self.rate():.0f}", "seg": self.all_segments()}, refresh=False)
            self._bar.close()
            self._bar = None
        else:
            self._line()
