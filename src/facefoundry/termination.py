"""SIGTERM stops a command the way Ctrl-C does: an exception, so the run log gets its ending line, Ray is
shut down by its context manager, and the user reads one line (no native stack dump).

Ray's core worker installs a native SIGTERM handler when it starts (it prints a C++ stack, then exits);
:func:`facefoundry.local_ray.ray_session` puts back the handler that was there before.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator


class Terminated(KeyboardInterrupt):
    """The process received SIGTERM (a ``KeyboardInterrupt``, so every Ctrl-C path handles it too)."""

    exit_code = 128 + signal.SIGTERM


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated("SIGTERM")


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextlib.contextmanager
def sigterm_raises() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`Terminated` in the main thread (a no-op in other threads)."""
    if not _main_thread():
        yield
        return
    before = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)


@contextlib.contextmanager
def keep_sigterm_handler() -> Iterator[None]:
    """Whatever the block installs natively for SIGTERM (Ray's core worker), the handler from before
    the block is put back when it ends."""
    if not _main_thread():
        yield
        return
    before = signal.getsignal(signal.SIGTERM)
    try:
        yield
    finally:
        if before is not None:  # None: not installed from Python; nothing to put back
            signal.signal(signal.SIGTERM, before)
