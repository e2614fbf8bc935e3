"""One writer per run folder: ``<out>/run.lock`` names who holds it (user, host, pid, command, since when).

``run`` and ``sample`` take the lock before they touch the folder and release it when they end, by
any path: normal return, an exception, Ctrl-C, or SIGTERM (turned into
:class:`facefoundry.termination.Terminated` while the lock is held). A lock left by a process that
died without releasing it (SIGKILL, a power cut) is *stale* when it names this host and its pid no
longer runs (or runs a different process, told apart by the process start time): the next writer
takes it over and says so. A lock naming another host cannot be checked from here; the message says
whom to ask, and ``rm <out>/run.lock`` clears it.

- Local folder: the lock file is created with ``O_CREAT | O_EXCL``, which the filesystem decides
  atomically, so of two writers started together exactly one gets it. A stale lock is removed only under
  a takeover mutex (``.run.lock.takeover``, also O_EXCL) and only if it still holds the bytes judged stale,
  so a lock taken meanwhile by a live writer is never discarded, not even for an instant.
- Object store (``s3://``, ``gs://``, ...): pyarrow's filesystems have no create-if-absent, so the
  rule is *single writer, enforced at start*: a writer refuses a lock object held by another token;
  otherwise it writes its own, waits ``REMOTE_SETTLE_S`` (long beside one PUT), and re-reads it. Of
  writers that raced, only the one whose token is still there goes on; the others refuse. Object
  stores with read-after-write consistency (S3, GCS) make this sound unless two writers' checks and
  writes interleave within the settle time of each other, which the wait makes vanishingly unlikely.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from facefoundry.dataset.storage import LocalStore, RunStore, open_store
from facefoundry.runfolder.runinfo import RunFolderError
from facefoundry.termination import sigterm_raises

LOCK_FILE = "run.lock"
REMOTE_SETTLE_S = float(os.environ.get("FACEFOUNDRY_LOCK_SETTLE_S", "1.0"))


class RunLockedError(RunFolderError):
    """Another writer holds the run folder."""


def _process_start(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (Linux ``/proc``), to tell a reused pid from the lock's owner."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22, counted after the command name


def _owner(command: str) -> dict:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return {
        "token": uuid.uuid4().hex,
        "user": user,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "pid_start": _process_start(os.getpid()),
        "command": command,
        "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _parse(raw: bytes | None) -> dict | None:
    if raw is None:
        return None
    try:
        holder = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return {}  # unreadable: someone is mid-write, or it is damaged; treat as held by an unknown writer
    return holder if isinstance(holder, dict) else {}


def is_stale(holder: dict) -> bool:
    """True if ``holder`` ran on this host and its process is gone (or the pid now belongs to another)."""
    if holder.get("host") != socket.gethostname() or not isinstance(holder.get("pid"), int):
        return False
    pid = holder["pid"]
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # alive, another user's process
    start = _process_start(pid)
    return bool(holder.get("pid_start") and start and start != holder["pid_start"])


def describe(holder: dict) -> str:
    """``facefoundry run (pid 12, user u on host h, since 2026-...)``, for messages."""
    if not holder:
        return "an unknown writer (unreadable lock)"
    return (f"facefoundry {holder.get('command', '?')} (pid {holder.get('pid', '?')}, user {holder.get('user', '?')} "
            f"on host {holder.get('host', '?')}, since {holder.get('since', '?')})")


def _refusal(store: RunStore, holder: dict) -> RunLockedError:
    hint = ("wait for it to end or use another --out" if holder.get("host") == socket.gethostname() else
            f"wait for it to end, or if it is gone remove {store.name(LOCK_FILE)}")
    return RunLockedError(f"{store} is in use by {describe(holder)}; {hint}")


def _read_local(path: Path) -> tuple[bytes | None, dict | None]:
    """The lock file's bytes and parsed holder; waits out a writer between its create and its write."""
    for _ in range(20):
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return None, None
        if raw:
            return raw, _parse(raw)
        time.sleep(0.05)
    return raw, {}


TAKEOVER_ABANDONED_S = 30.0  # a takeover mutex this old belongs to a taker that died inside the takeover


def _remove_stale(path: Path, raw: bytes) -> bool:
    """Remove the lock file ``path`` if it still holds the stale bytes ``raw``; True if this call removed it.

    Only one taker at a time may remove a lock: the holder of ``.run.lock.takeover`` (created with O_EXCL).
    Under it the lock is re-read and removed only if unchanged, so a lock that a live writer created after the
    stale one went is never touched (only a takeover removes a lock nobody releases, and takeovers are
    serialised). A live lock is never renamed or removed, even for an instant."""
    mutex = path.with_name(f".{LOCK_FILE}.takeover")
    try:
        fd = os.open(mutex, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        with contextlib.suppress(FileNotFoundError):
            if time.time() - mutex.stat().st_mtime > TAKEOVER_ABANDONED_S:
                mutex.unlink()
        time.sleep(0.01)
        return False  # another writer is taking over: look again
    os.close(fd)
    try:
        try:
            if path.read_bytes() != raw:
                return False  # released or taken over meanwhile
        except FileNotFoundError:
            return False
        path.unlink()
        return True
    finally:
        mutex.unlink()


def _take_local(store: LocalStore, owner: dict, notices: list[str]) -> None:
    path = store.root / LOCK_FILE
    data = (json.dumps(owner, indent=2) + "\n").encode()
    for _ in range(50):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            raw, holder = _read_local(path)
            if holder is None:
                continue  # released meanwhile: try again
            if not is_stale(holder):
                raise _refusal(store, holder) from None
            if _remove_stale(path, raw):
                notices.append(f"took over a stale lock of {describe(holder)}: that process is gone")
            continue
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        return
    raise RunLockedError(f"{store}: could not take {LOCK_FILE} (it keeps changing); another writer is starting")


def _take_remote(store: RunStore, owner: dict, notices: list[str]) -> None:
    holder = _parse(store.read_bytes(LOCK_FILE))
    if holder is not None:
        if not is_stale(holder):
            raise _refusal(store, holder)
        notices.append(f"took over a stale lock of {describe(holder)}: that process is gone")
    store.put_bytes(LOCK_FILE, (json.dumps(owner, indent=2) + "\n").encode())
    time.sleep(REMOTE_SETTLE_S)
    now = _parse(store.read_bytes(LOCK_FILE))
    if not now or now.get("token") != owner["token"]:
        raise _refusal(store, now or {})


def _release(store: RunStore, owner: dict) -> None:
    with contextlib.suppress(OSError):
        if (_parse(store.read_bytes(LOCK_FILE)) or {}).get("token") == owner["token"]:
            store.delete(LOCK_FILE)


def check_output_folder(store: RunStore) -> None:
    """Refuse a local ``--out`` that exists but is not a folder, in words (not ``[Errno 17]``)."""
    if isinstance(store, LocalStore) and store.root.exists() and not store.root.is_dir():
        raise RunFolderError(f"--out {store.root}: a file, not a folder; give a folder path (created if absent)")


@contextlib.contextmanager
def run_lock(out: str | Path | RunStore, command: str = "run", notify=None) -> Iterator[dict]:
    """Hold the exclusive lock of the run folder ``out`` for the ``with`` block; yield the lock record.

    Raises :class:`RunLockedError` (one line naming the holder) if another live writer has it.
    ``notify(text)`` receives notices such as a stale lock taken over (default: stderr)."""
    store = open_store(out)
    check_output_folder(store)
    created = isinstance(store, LocalStore) and not store.root.exists()
    if isinstance(store, LocalStore):
        store.root.mkdir(parents=True, exist_ok=True)
    owner = _owner(command)
    notices: list[str] = []
    (_take_local if isinstance(store, LocalStore) else _take_remote)(store, owner, notices)
    for text in notices:
        (notify or _stderr)(f"{store}: {text}")
    try:
        with sigterm_raises():  # SIGTERM unwinds through the finally below
            yield owner
    finally:
        _release(store, owner)
        if created:  # a refused new run leaves no empty folder behind
            with contextlib.suppress(OSError):
                store.root.rmdir()


def _stderr(text: str) -> None:
    import sys

    print(text, file=sys.stderr, flush=True)
