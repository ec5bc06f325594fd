"""Per-step training log: ``log.csv`` (always), TensorBoard (when installed) and a tqdm bar (when installed).

Only the main process writes. On resume the CSV keeps the rows up to the resumed step, so it never holds
steps twice.
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from babilong_fast.progress_bar import StderrBar

FIELDS = ("global_step", "stage", "step", "loss", "lr", "grad_norm", "samples", "seconds", "valid_accuracy")


class Logbook:
    """Args: out: run folder; enabled: this process writes; resume_step: keep CSV rows up to this step;
    total: steps for the progress bar; progress: show it; log_every: show the loss on the bar every this many
    steps (and at every validation)."""

    def __init__(
        self, out: Path, enabled: bool, resume_step: int = 0, total: int = 0, progress: bool = True, log_every: int = 1
    ) -> None:
        self.enabled, self.log_every = enabled, log_every
        self.path = out / "log.csv"
        self.bar = self.tb = None
        self._f = None
        if not enabled:
            return
        kept: list[dict[str, str]] = []
        if resume_step and self.path.is_file():
            with open(self.path, newline="", encoding="utf-8") as f:
                kept = [r for r in csv.DictReader(f) if int(r["global_step"]) <= resume_step]
        self._f = open(self.path, "w", newline="", encoding="utf-8")
        self._w = csv.DictWriter(self._f, fieldnames=FIELDS)
        self._w.writeheader()
        self._w.writerows(kept)
        self._f.flush()
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(out / "tensorboard"))
        except ImportError:
            self.tb = None
        self.bar = StderrBar(total, show_bar=progress, unit="step", desc="train", initial=resume_step)

    def step(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self._w.writerow({k: row.get(k, "") for k in FIELDS})
        self._f.flush()
        if self.tb is not None:
            for k in ("loss", "lr", "grad_norm", "valid_accuracy"):
                if row.get(k) not in (None, ""):
                    self.tb.add_scalar(f"train/{k}", float(row[k]), row["global_step"])
        self.bar.step()
        validated = row.get("valid_accuracy") not in (None, "")
        if validated or row["global_step"] % self.log_every == 0:
            post = f"stage {row['stage']} loss {row['loss']:.4f}"
            self.bar.postfix(post + (f" valid {row['valid_accuracy']:.1f}%" if validated else ""))

    def line(self, text: str) -> None:
        if self.enabled:
            self.bar.line(text)

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
        if self.tb is not None:
            self.tb.close()
        if self.bar is not None:
            self.bar.close()
