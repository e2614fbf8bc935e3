"""One progress line for a run: units done, images, acceptance, images/s and ETA."""

from __future__ import annotations

import sys
import time
from typing import TextIO

from facefoundry.dataset.manifest import accepted_images


def _clock(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class Progress:
    """Counts committed units of the whole run; redraws in place on a terminal, one line per unit otherwise.

    ``done_units`` are the units a resumed run found already written: they count toward ``units n/total``
    (a resume after 7 of 12 shows ``8/12`` when its first unit lands), while images, acceptance, rate and
    ETA cover this invocation's units only."""

    def __init__(self, total_units: int, images_per_unit: float, stream: TextIO | None = None, done_units: int = 0):
        self.total_units = total_units
        self.images_per_unit = images_per_unit
        self.stream = stream or sys.stderr
        self.units = done_units
        self.generated = self.accepted = 0
        self.started = time.monotonic()

    def update(self, manifest: dict) -> None:
        self.units += 1
        self.generated += manifest["generated"]
        self.accepted += accepted_images(manifest)
        self.stream.write(("\r" if self.stream.isatty() else "") + self.line())
        if not self.stream.isatty() or self.units == self.total_units:
            self.stream.write("\n")
        self.stream.flush()

    def line(self) -> str:
        elapsed = time.monotonic() - self.started
        rate = self.generated / elapsed if elapsed > 0 else 0.0
        left = (self.total_units - self.units) * self.images_per_unit
        eta = _clock(left / rate) if rate > 0 else "?"
        accepted = 100.0 * self.accepted / self.generated if self.generated else 0.0
        return (
            f"units {self.units}/{self.total_units} | images {self.generated} "
            f"(accepted {accepted:.1f}%) | {rate:.2f} img/s | ETA {eta}"
        )
