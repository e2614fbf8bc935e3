"""One progress line for a run: units done, images, acceptance, images/s and ETA."""

from __future__ import annotations

import sys
import threading
import time
from typing import TextIO

from facefoundry.dataset.manifest import accepted_images

LOG_EVERY_S = 5.0  # seconds between progress lines when the output is not a terminal


def _clock(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class Progress:
    """Counts committed units of the whole run; redraws in place on a terminal, writes lines otherwise.

    A line is written for the first and the last unit, and in between at most once per ``every`` seconds
    (default: 0.1 on a terminal, :data:`LOG_EVERY_S` in a log, so 10^5 small units do not write 10^5 lines).
    ``done_units`` are the units a resumed run found already written: they count toward ``units n/total``
    (a resume after 7 of 12 shows ``8/12`` when its first unit lands), while images, acceptance, rate and
    ETA cover this invocation's units only."""

    def __init__(self, total_units: int, images_per_unit: float, stream: TextIO | None = None, done_units: int = 0,
                 every: float | None = None):
        self.total_units = total_units
        self.images_per_unit = images_per_unit
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.every = every if every is not None else (0.1 if self.tty else LOG_EVERY_S)
        self.units = done_units
        self.generated = self.accepted = 0
        self.started = time.monotonic()
        self.shown: float | None = None  # when the last line was written

    def update(self, manifest: dict) -> None:
        self.units += 1
        self.generated += manifest["generated"]
        self.accepted += accepted_images(manifest)
        now, last = time.monotonic(), self.units == self.total_units
        if self.shown is not None and now - self.shown < self.every and not last:
            return
        self.shown = now
        self.stream.write(("\r" if self.tty else "") + self.line())
        if not self.tty or last:
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


class StartupTicker:
    """Until the first unit lands, a line every ``every`` seconds with the time start-up has taken, so the
    wait for Ray's workers and the models (or for a cluster to scale up) is not silence.

    Use as a context manager and call :meth:`stop` when the first unit arrives, before writing progress:
    the ticker writes from its own thread, and ``stop`` returns only once it has written its last line."""

    def __init__(self, stream: TextIO, every: float = 10.0, started: float | None = None):
        self.stream, self.every = stream, every
        self.started = time.monotonic() if started is None else started
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._tick, name="startup-ticker", daemon=True)

    def _tick(self) -> None:
        while not self._stopped.wait(self.every):
            self.stream.write(f"still starting after {time.monotonic() - self.started:.0f}s: waiting for the "
                              "first unit (the stage workers load the models)\n")
            self.stream.flush()

    def stop(self) -> None:
        self._stopped.set()
        if self._thread.is_alive():
            self._thread.join()

    def __enter__(self) -> StartupTicker:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
