"""Atomic local file commits (the ``LocalStore`` rule): temporary name beside the target, fsync, rename."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from facefoundry.dataset.storage import LocalStore


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is fsynced and renamed onto ``path``.

    A crash leaves at most a ``.tmp-*`` file, which no reader treats as done.
    """
    with LocalStore(path.parent).commit(path.name) as tmp:
        yield tmp


def atomic_write_bytes(path: Path, data: bytes) -> None:
    LocalStore(path.parent).put_bytes(path.name, data)
