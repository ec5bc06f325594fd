"""A tqdm bar on stderr when tqdm is installed, with status lines printed above it (or alone without tqdm).

Shared by ``babilong-fast data``, ``babilong-fast eval`` and the training log; streamed prefills have their own
token-rate display (:mod:`babilong_fast.engine.progress`).
"""
from __future__ import annotations

import sys


class StderrBar:
    """Counts work items on stderr.

    Args:
        total: expected items.
        enabled: False makes every call a no-op (no bar, no lines).
        show_bar: show the tqdm bar (lines are printed either way).
        unit, desc, initial: the bar's unit, label and starting count.
    """

    def __init__(
        self, total: int, *, enabled: bool = True, show_bar: bool = True, unit: str = "it", desc: str | None = None,
        initial: int = 0,
    ) -> None:
        self.enabled, self.bar = enabled, None
        if enabled and show_bar:
            try:
                from tqdm import tqdm
            except ImportError:  # tqdm is optional
                pass
            else:
                self.bar = tqdm(total=total, initial=initial, unit=unit, desc=desc, file=sys.stderr)

    def step(self, n: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def postfix(self, text: str) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(text, refresh=False)

    def line(self, text: str) -> None:
        """``text`` on stderr, above the bar when one is showing."""
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(text, file=sys.stderr)
        else:
            print(text, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
