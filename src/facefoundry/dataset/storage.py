"""Where a run's files live: a local folder, or a prefix in an object store (``s3://``, ``gs://``, ...).

Both give the same commit guarantee, which resume and ``verify`` rely on: a file is either absent or
complete under its final name.

- A local folder writes to ``.tmp-*`` beside the target, fsyncs, then renames.
- An object store writes each file as one object under its final key. An upload that dies never
  completes, so nothing appears under that key. Readers still never trust a shard on its own: a unit
  is done only once its manifest, written last, exists and records the shard's exact size.

Remote URIs are opened with pyarrow's own filesystems (S3, GCS; options ride in the query string,
e.g. ``s3://bucket/run?endpoint_override=host:9000&scheme=http``), else through fsspec (``hf://``,
``az://`` and whatever other fsspec implementations are installed).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs

READ_THREADS = 32  # object-store reads in flight at once (RemoteStore.read_many)


class StorageError(RuntimeError):
    """The output location cannot be opened or used."""


def arrow_reader(data: bytes) -> pa.BufferReader:
    """A reader over a copy of ``data`` in Arrow-owned memory, for Parquet files read into bytes.

    Not ``pa.BufferReader(data)``: that keeps the Python object alive inside Arrow, and when one of Arrow's
    pool threads drops the last reference while the interpreter exits, the thread cannot take the GIL and
    the process aborts ("terminate called without an active exception") after the command has succeeded."""
    buffer = pa.allocate_buffer(len(data))
    with pa.FixedSizeBufferWriter(buffer) as writer:
        writer.write(data)
    return pa.BufferReader(buffer)


def is_remote(out: str | Path) -> bool:
    """True for a URI of a non-local filesystem (``file://`` counts as local)."""
    text = str(out)
    return "://" in text and not text.startswith("file://")


class LocalStore:
    """A run folder on a local (or network-mounted) filesystem."""

    def __init__(self, root: str | Path):
        text = str(root)
        self.root = Path(text[len("file://"):] if text.startswith("file://") else text)

    def __str__(self) -> str:
        return str(self.root)

    def name(self, rel: str) -> str:
        """How to show ``rel`` to a user."""
        return str(self.root / rel)

    def read_bytes(self, rel: str) -> bytes | None:
        try:
            return (self.root / rel).read_bytes()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return None

    def read_many(self, rels: list[str]) -> list[bytes | None]:
        """:meth:`read_bytes` of each of ``rels``, in order."""
        return [self.read_bytes(rel) for rel in rels]

    def open_input(self, rel: str) -> pa.NativeFile:
        """The file ``rel`` opened for random access (close it after use); FileNotFoundError if absent."""
        path = self.root / rel
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing")
        return pa.OSFile(str(path), "rb")

    def size(self, rel: str) -> int | None:
        """Size of the file ``rel``; None if it is not a file."""
        path = self.root / rel
        return path.stat().st_size if path.is_file() else None

    def sizes(self, folder: str = "") -> dict[str, int]:
        """Name -> size of every file directly in ``folder`` (empty if it does not exist)."""
        path = self.root / folder
        if not path.is_dir():
            return {}
        return {p.name: p.stat().st_size for p in path.iterdir() if p.is_file()}

    def entries(self) -> set[str]:
        """Names (files and folders) directly in the root."""
        return {p.name for p in self.root.iterdir()} if self.root.is_dir() else set()

    @contextlib.contextmanager
    def commit(self, rel: str) -> Iterator[Path]:
        """Yield a temporary path; when the block succeeds it is fsynced and renamed onto ``rel``.

        A crash leaves at most a ``.tmp-*`` file, which no reader treats as done."""
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
        try:
            yield tmp
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    def put_bytes(self, rel: str, data: bytes) -> None:
        with self.commit(rel) as tmp:
            tmp.write_bytes(data)

    def delete(self, rel: str) -> None:
        """Remove the file or folder ``rel`` if present."""
        path = self.root / rel
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)

    def move(self, rel: str, dest: str) -> None:
        """Rename the file ``rel`` to ``dest`` (parent folders are created)."""
        target = self.root / dest
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(self.root / rel, target)

    def remove_temporaries(self, folder: str) -> None:
        """Delete ``.tmp-*`` files a killed writer left in ``folder`` (one run per folder at a time)."""
        for path in (self.root / folder).glob(".tmp-*"):
            path.unlink(missing_ok=True)


class RemoteStore:
    """A run folder under a prefix of an object store (or any filesystem pyarrow or fsspec can open)."""

    def __init__(self, uri: str):
        self.uri = uri
        try:
            self.fs, self.base = pafs.FileSystem.from_uri(uri)
        except (ValueError, OSError) as exc:  # ArrowInvalid (a ValueError): a scheme pyarrow lacks
            self.fs, self.base = self._fsspec(uri, exc)
        self.base = self.base.rstrip("/")

    @staticmethod
    def _fsspec(uri: str, arrow_error: Exception) -> tuple[pafs.FileSystem, str]:
        try:
            from fsspec.core import url_to_fs

            fs, base = url_to_fs(uri)
        except (ImportError, ValueError) as exc:
            raise StorageError(f"--out {uri}: neither pyarrow ({arrow_error}) nor fsspec ({exc}) can open it; "
                               f"install the fsspec package for this scheme or use a local folder") from None
        return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), base

    def __str__(self) -> str:
        return self.uri.split("?", 1)[0]

    def _path(self, rel: str) -> str:
        return f"{self.base}/{rel}".rstrip("/") if rel else self.base

    def name(self, rel: str) -> str:
        return f"{str(self).rstrip('/')}/{rel}"

    def read_bytes(self, rel: str) -> bytes | None:
        try:
            with self.fs.open_input_stream(self._path(rel)) as fh:
                return fh.read()
        except FileNotFoundError:
            return None
        except OSError as exc:
            if "not found" in str(exc).lower() or "NoSuchKey" in str(exc):
                return None
            raise

    def read_many(self, rels: list[str]) -> list[bytes | None]:
        """:meth:`read_bytes` of each of ``rels``, in order, with up to :data:`READ_THREADS` requests in flight
        (an object store answers each in milliseconds: 10^5 manifests one by one would take minutes)."""
        if len(rels) < 2:
            return [self.read_bytes(rel) for rel in rels]
        with concurrent.futures.ThreadPoolExecutor(min(READ_THREADS, len(rels))) as pool:
            return list(pool.map(self.read_bytes, rels))

    def open_input(self, rel: str) -> pa.NativeFile:
        """The object ``rel`` opened for ranged reads (close it after use); FileNotFoundError if absent."""
        if self.size(rel) is None:
            raise FileNotFoundError(f"{self.name(rel)} is missing")
        return self.fs.open_input_file(self._path(rel))

    def _infos(self, folder: str) -> list[pafs.FileInfo]:
        try:
            return self.fs.get_file_info(pafs.FileSelector(self._path(folder), allow_not_found=True))
        except FileNotFoundError:
            return []

    def size(self, rel: str) -> int | None:
        info = self.fs.get_file_info(self._path(rel))
        return info.size if info.type == pafs.FileType.File else None

    def sizes(self, folder: str = "") -> dict[str, int]:
        return {i.base_name: i.size for i in self._infos(folder) if i.type == pafs.FileType.File}

    def entries(self) -> set[str]:
        return {i.base_name for i in self._infos("")}

    @contextlib.contextmanager
    def commit(self, rel: str) -> Iterator[Path]:
        """Yield a local temporary path; when the block succeeds its bytes are uploaded as ``rel``."""
        scratch = Path(tempfile.mkdtemp(prefix="ff-upload-"))
        try:
            tmp = scratch / Path(rel).name
            yield tmp
            pafs.copy_files(str(tmp), self._path(rel), source_filesystem=pafs.LocalFileSystem(),
                            destination_filesystem=self.fs)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    def put_bytes(self, rel: str, data: bytes) -> None:
        with self.fs.open_output_stream(self._path(rel)) as fh:
            fh.write(data)  # one write: the object is created whole when the stream closes

    def delete(self, rel: str) -> None:
        info = self.fs.get_file_info(self._path(rel))
        if info.type == pafs.FileType.Directory:
            self.fs.delete_dir(self._path(rel))
        elif info.type == pafs.FileType.File:
            self.fs.delete_file(self._path(rel))

    def move(self, rel: str, dest: str) -> None:
        """Copy the object ``rel`` to ``dest``, then delete ``rel`` (object stores have no rename)."""
        self.fs.copy_file(self._path(rel), self._path(dest))
        self.fs.delete_file(self._path(rel))

    def remove_temporaries(self, folder: str) -> None:
        """Nothing to do: an interrupted upload never becomes an object."""


RunStore = LocalStore | RemoteStore


def open_store(out: str | Path | RunStore) -> RunStore:
    """The store for ``out``: a local path, a ``file://`` URI, or a remote URI."""
    if isinstance(out, LocalStore | RemoteStore):
        return out
    return RemoteStore(str(out)) if is_remote(out) else LocalStore(out)
