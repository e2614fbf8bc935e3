"""The run log: everything a run prints, timestamped, in ``<out>/logs/run-<UTC start time>.log``.

One file per invocation, never overwritten, so a resumed run keeps the story of every attempt.
The terminal still gets the live progress line; the file gets each redraw as its own line.
Logs are outside the dataset: a rerun leaves data, manifests and ``run.json`` untouched, and
``publish`` never uploads ``*.log``.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

from facefoundry.layout import LOG_DIR


def _stamp() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class TeeStream:
    """A text stream writing to ``terminal`` as is and to ``file`` line by line with a UTC timestamp."""

    def __init__(self, terminal: TextIO, file: TextIO):
        self.terminal, self.file = terminal, file
        self._pending = ""

    def isatty(self) -> bool:
        return self.terminal.isatty()

    def write(self, text: str) -> int:
        self.terminal.write(text)
        # A progress redraw ("\r...") becomes a line of its own in the file.
        self._pending += text.replace("\r", "\n")
        *lines, self._pending = self._pending.split("\n")
        for line in lines:
            if line:
                self.file.write(f"{_stamp()} {line}\n")
        self.file.flush()
        return len(text)

    def flush(self) -> None:
        self.terminal.flush()
        self.file.flush()

    def record(self, text: str) -> None:
        """A line for the file only (e.g. the summary the CLI prints itself)."""
        self.close_line()
        self.file.write(f"{_stamp()} {text.rstrip()}\n")
        self.file.flush()

    def close_line(self) -> None:
        """Write out a last unterminated line, if any."""
        if self._pending:
            self.file.write(f"{_stamp()} {self._pending}\n")
            self._pending = ""
        self.file.flush()


def new_log_path(out: Path) -> Path:
    """A fresh log file name under ``out/logs``; names sort in start order (UTC, microseconds)."""
    folder = out / LOG_DIR
    folder.mkdir(parents=True, exist_ok=True)
    base = "run-" + datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    path, n = folder / f"{base}.log", 1
    while path.exists():
        path, n = folder / f"{base}-{n}.log", n + 1
    return path


@contextlib.contextmanager
def run_log(path: Path, terminal: TextIO) -> Iterator[TeeStream]:
    """Tee ``terminal`` into ``path``; warnings of facefoundry's loggers in this process go to the file too."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as file:
        stream = TeeStream(terminal, file)
        handler = logging.StreamHandler(file)
        handler.setLevel(logging.WARNING)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logger = logging.getLogger("facefoundry")
        logger.addHandler(handler)
        try:
            yield stream
        except BaseException as exc:
            stream.close_line()
            file.write(f"{_stamp()} run stopped: {type(exc).__name__}: {exc}\n")
            raise
        finally:
            stream.close_line()
            logger.removeHandler(handler)
