"""Pick a kernel's launch configuration by timing candidates on the call's own inputs, once per key.

Triton's ``@triton.autotune`` does this too, but it fails in the interpreter when given several configs and
keeps no record of what it measured. :class:`ConfigTuner` keeps every timing (and every candidate that failed
to compile or launch), so a benchmark can report what was picked and by how much.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class TuneRecord:
    """One key's measurements: the candidates in the order given, seconds per launch (best of the repeats) per
    config, errors, the pick."""

    key: dict[str, Any]
    candidates: list = field(default_factory=list)
    seconds: dict[Any, float] = field(default_factory=dict)
    errors: dict[Any, str] = field(default_factory=dict)
    picked: Any | None = None


def time_launch(launch: Callable[[], None], device: torch.device, repeats: int) -> float:
    """Seconds of one ``launch()``: best of ``repeats`` after one untimed call (compile, caches).
    CUDA: events on the current stream; elsewhere wall time."""
    launch()
    if device.type != "cuda":
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            launch()
            best = min(best, time.perf_counter() - t0)
        return best
    torch.cuda.synchronize(device)
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(repeats)]
    for start, end in events:
        start.record()
        launch()
        end.record()
    torch.cuda.synchronize(device)
    return min(start.elapsed_time(end) for start, end in events) / 1000.0


class ConfigTuner:
    """Times each candidate config once per key and remembers the fastest.

    Args:
        repeats: timed launches per candidate (after one untimed launch).
        timer: ``timer(launch, device, repeats) -> seconds``; default :func:`time_launch`.
    """

    def __init__(self, repeats: int = 3, timer: Callable[[Callable[[], None], torch.device, int], float] | None = None):
        self.repeats = repeats
        self.timer = timer or time_launch
        self.records: dict[tuple, TuneRecord] = {}

    def cached(self, key: dict[str, Hashable]) -> Any | None:
        """The config picked for ``key`` earlier, or None."""
        rec = self.records.get(tuple(sorted(key.items())))
        return None if rec is None else rec.picked

    def pick(self, key: dict[str, Hashable], candidates: Sequence[Any], launch: Callable[[Any], None],
             device: torch.device) -> Any | None:
        """The fastest of ``candidates`` for ``key`` (named hashable values), timing ``launch(config)`` on first use.

        ``launch`` must only write outputs (it runs several times). A candidate that raises (does not compile,
        out of resources) is recorded and skipped. Returns None when every candidate raised.
        """
        frozen = tuple(sorted(key.items()))
        rec = self.records.get(frozen)
        if rec is not None:
            return rec.picked
        rec = TuneRecord(dict(key), list(dict.fromkeys(candidates)))  # unique, in order
        for c in rec.candidates:
            try:
                rec.seconds[c] = self.timer(lambda c=c: launch(c), device, self.repeats)
            except Exception as e:  # noqa: BLE001 - any failure rules the candidate out
                rec.errors[c] = f"{type(e).__name__}: {str(e)[:200]}"
        if rec.seconds:
            rec.picked = min(rec.seconds, key=rec.seconds.__getitem__)
        self.records[frozen] = rec
        return rec.picked

    def report(self) -> list[dict]:
        """Every key's measurements as JSON-ready dicts (configs as their ``repr``), fastest first."""
        out = []
        for rec in self.records.values():
            ranked = sorted(rec.seconds.items(), key=lambda kv: kv[1])
            out.append({
                "key": {k: v if isinstance(v, (bool, int, float, str)) else str(v) for k, v in rec.key.items()},
                "candidates": [repr(c) for c in rec.candidates],
                "picked": repr(rec.picked),
                "seconds": {repr(c): s for c, s in ranked},
                "errors": {repr(c): e for c, e in rec.errors.items()},
            })
        return out

    def clear(self) -> None:
        """Forget every pick (the next call per key measures again)."""
        self.records.clear()
