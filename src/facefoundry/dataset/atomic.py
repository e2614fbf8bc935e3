"""Atomic local file commits (the ``LocalStore`` rule): temporary name beside the target, fsync, rename."""

from __future__ import annotations

from pathlib import Path

from facefoundry.dataset.storage import LocalStore


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically: a crash leaves at most a ``.tmp-*`` file beside it."""
    LocalStore(path.parent).put_bytes(path.name, data)
