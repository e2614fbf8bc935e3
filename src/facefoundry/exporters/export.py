"""``facefoundry export RUN``: a finished run as face-recognition trainers read it.

Formats (the label of an image is its ``identity``, unchanged, so it points back into
``identities.parquet``; identities without exported images leave unused labels):

- ``imagefolder``: ``<out>/<identity:07d>/<image_index:04d>.jpg``. Zero-padded names sort in label
  order, so ``torchvision.datasets.ImageFolder`` assigns class i to the i-th identity present.
- ``rec``: ``train.rec`` + ``train.idx`` + ``property`` in InsightFace's MXNet RecordIO layout
  (header records by default; see :mod:`facefoundry.exporters.recordio`).
- ``lmdb``: ``train.lmdb`` laid out as Vec2Face's HSFace LMDB files
  (see :mod:`facefoundry.exporters.lmdb_dataset`).

Images are JPEG in every format: stored JPEG bytes are kept as they are, other images (PNG) are
encoded as RGB JPEG at ``jpeg_quality``. Rows that a filter rejected in ``annotate`` mode
(``filter_reason`` or ``id_filter_reason`` set) are left out unless ``include_rejected``.

Shards are read one row group at a time in identity order, so memory stays bounded whatever the
dataset size. The output folder must be new or empty; files are written under temporary names and
``export.json`` (the summary) is written last: a folder without it is incomplete. On any failure
everything written is removed again.
"""

from __future__ import annotations

import errno
import io
import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Literal, Protocol

import lmdb
import pyarrow.parquet as pq
from PIL import Image

from facefoundry import __version__
from facefoundry.dataset.atomic import atomic_write_bytes
from facefoundry.dataset.manifest import is_done, plan_units, shard_path
from facefoundry.exporters.lmdb_dataset import LmdbDatasetWriter
from facefoundry.exporters.recordio import IDX_FILE, REC_FILE, InsightFaceRecWriter, RecordIOError, write_property
from facefoundry.runfolder.rows import iter_row_groups, kept_mask
from facefoundry.runfolder.runinfo import RunFolderError, read_run, run_id

ExportFormat = Literal["imagefolder", "rec", "lmdb"]
FORMATS: tuple[str, ...] = ("imagefolder", "rec", "lmdb")
MARKER = "export.json"
LMDB_FILE = "train.lmdb"
JPEG_MAGIC = b"\xff\xd8\xff"
Progress = Callable[[int, int], None]


class ExportError(RuntimeError):
    """The run cannot be exported as asked."""


def to_jpeg(data: bytes, quality: int) -> tuple[bytes, bool]:
    """``(jpeg bytes, converted)``: JPEG input is returned unchanged, anything else is re-encoded."""
    if data[:3] == JPEG_MAGIC:
        return data, False
    with Image.open(io.BytesIO(data)) as im:
        buf = io.BytesIO()
        im.convert("RGB").save(buf, format="JPEG", quality=quality)
    return buf.getvalue(), True


class _Sink(Protocol):
    outputs: list[str]

    def add(self, identity: int, image_index: int, jpeg: bytes) -> None: ...
    def commit(self) -> None: ...
    def abort(self) -> None: ...


class _ImageFolderSink:
    outputs = ["<identity:07d>/<image_index:04d>.jpg"]

    def __init__(self, out: Path):
        self.out, self._folder, self.bytes = out, None, 0

    def add(self, identity: int, image_index: int, jpeg: bytes) -> None:
        folder = self.out / f"{identity:07d}"
        if folder != self._folder:
            folder.mkdir()
            self._folder = folder
        with open(folder / f"{image_index:04d}.jpg", "xb") as fh:
            fh.write(jpeg)
        self.bytes += len(jpeg)

    def commit(self) -> None:
        pass

    def abort(self) -> None:
        pass  # export_run clears the folder


class _RecSink:
    outputs = [REC_FILE, IDX_FILE, "property"]

    def __init__(self, out: Path, header: bool):
        self.out, self._writer, self._size, self._max = out, InsightFaceRecWriter(out, header=header), None, -1

    def add(self, identity: int, image_index: int, jpeg: bytes) -> None:
        if self._size is None:
            with Image.open(io.BytesIO(jpeg)) as im:
                self._size = im.size
        self._writer.add(identity, jpeg)
        self._max = max(self._max, identity)

    def commit(self) -> None:
        self._writer.commit()
        width, height = self._size or (0, 0)
        write_property(self.out, self._max + 1, height, width)

    def abort(self) -> None:
        self._writer.abort()


class _LmdbSink:
    outputs = [LMDB_FILE]

    def __init__(self, out: Path, map_size: int):
        self._writer = LmdbDatasetWriter(out / LMDB_FILE, map_size=map_size)

    def add(self, identity: int, image_index: int, jpeg: bytes) -> None:
        self._writer.add(identity, jpeg)

    def commit(self) -> None:
        self._writer.commit()

    def abort(self) -> None:
        self._writer.abort()


def _shards(run_dir: Path, allow_partial: bool) -> tuple[list[Path], dict]:
    """The run's finished shards in identity order, and the run's record."""
    try:
        cfg = read_run(run_dir)
    except (RunFolderError, ValueError) as exc:
        raise ExportError(f"{run_dir} is not a run folder: {exc}") from None
    units = plan_units(cfg.identities.count, cfg.output.identities_per_unit)
    done = [u for u in units if is_done(run_dir, u, cfg.config_hash())]
    if not done:
        raise ExportError(f"{run_dir} has no finished shards in data/ (0 of {len(units)} units done)")
    if len(done) < len(units) and not allow_partial:
        finished = set(done)
        first = next(u for u in units if u not in finished)
        raise ExportError(
            f"{run_dir} is incomplete: {len(units) - len(done)} of {len(units)} units are not done "
            f"(first: {first.shard_name}); finish the run, or export what is done with --allow-partial"
        )
    info = {"run_id": run_id(cfg), "config_hash": cfg.config_hash(), "units": len(units), "units_exported": len(done)}
    return [shard_path(run_dir, u) for u in done], info


def _rows(shards: list[Path], include_rejected: bool, counts: dict, progress: Progress | None) -> Iterator[tuple]:
    """``(identity, image_index, image bytes)`` of every row to export, one row group in memory."""
    total, done, last = sum(pq.read_metadata(p).num_rows for p in shards), 0, (-1, -1)
    for path in shards:  # one file open at a time: a big run has tens of thousands of shards
        for table in iter_row_groups(path, ["image", "identity", "image_index"]):
            images = table.column("image").combine_chunks().field("bytes").to_pylist()
            ids = table.column("identity").to_pylist()
            idx = table.column("image_index").to_pylist()
            kept = kept_mask(table)
            for data, identity, index, ok in zip(images, ids, idx, kept, strict=True):
                if (identity, index) <= last:
                    raise ExportError(f"{path}: row ({identity}, {index}) is out of (identity, image_index) order")
                last = (identity, index)
                if not ok and not include_rejected:
                    counts["rejected"] += 1
                elif not data:
                    counts["no_image"] += 1
                else:
                    yield identity, index, data
            done += table.num_rows
            if progress is not None:
                progress(done, total)


def _prepare_out(out: Path) -> bool:
    """Create ``out`` (or accept it empty); return whether it already existed."""
    if out.exists():
        if not out.is_dir():
            raise ExportError(f"{out} exists and is not a folder")
        if any(out.iterdir()):
            raise ExportError(f"{out} is not empty; export into a new or empty folder")
        return True
    out.mkdir(parents=True)
    return False


def _clear(out: Path, existed: bool) -> None:
    if not existed:
        shutil.rmtree(out, ignore_errors=True)
        return
    for child in out.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)


def _output_bytes(out: Path) -> int:
    return sum(p.stat().st_size for p in out.iterdir() if p.is_file())


def export_run(
    run_dir: str | Path,
    out_dir: str | Path,
    fmt: ExportFormat,
    jpeg_quality: int = 95,
    progress: Progress | None = None,
    *,
    include_rejected: bool = False,
    allow_partial: bool = False,
    rec_header: bool = True,
) -> dict:
    """Export the run in ``run_dir`` to ``out_dir`` as ``fmt``; return the summary (also ``export.json``).

    ``progress(rows_read, rows_total)`` is called after each row group. ``allow_partial`` exports the
    finished units of an unfinished run; ``rec_header=False`` writes the plain ``im2rec`` RecordIO
    layout (no header records) that DALI's reader needs.
    """
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if not 1 <= jpeg_quality <= 100:
        raise ExportError(f"jpeg_quality must be in 1..100, got {jpeg_quality}")
    run_dir, out = Path(run_dir), Path(out_dir)
    shards, info = _shards(run_dir, allow_partial)
    existed = _prepare_out(out)
    counts = {"rejected": 0, "no_image": 0}
    images = converted = 0
    identities: set[int] = set()
    sink: _Sink | None = None
    try:
        if fmt == "imagefolder":
            sink = _ImageFolderSink(out)
        elif fmt == "rec":
            sink = _RecSink(out, rec_header)
        else:
            sink = _LmdbSink(out, map_size=max(1 << 26, 2 * sum(p.stat().st_size for p in shards)))
        for identity, index, data in _rows(shards, include_rejected, counts, progress):
            try:
                jpeg, was_converted = to_jpeg(data, jpeg_quality)
            except OSError as exc:  # PIL's UnidentifiedImageError is an OSError
                if exc.errno is not None:
                    raise
                counts["undecodable"] = counts.get("undecodable", 0) + 1
                continue
            sink.add(identity, index, jpeg)
            images += 1
            converted += was_converted
            identities.add(identity)
        if not images:
            hint = "; rejected rows are left out: add --include-rejected to export them too" \
                if counts and not include_rejected else ""
            raise ExportError(f"{run_dir} has no images to export (skipped: {counts}){hint}")
        sink.commit()
        summary = {
            "format": fmt,
            "outputs": sink.outputs,
            "images": images,
            "identities": len(identities),
            "num_classes": max(identities) + 1 if identities else 0,
            "converted_to_jpeg": converted,
            "kept_jpeg": images - converted,
            "jpeg_quality": jpeg_quality,
            "skipped": {k: v for k, v in sorted(counts.items()) if v},
            "shards": len(shards),
            **info,
            "source": str(run_dir),
            "facefoundry_version": __version__,
        }
        if fmt == "rec":
            summary["rec_header"] = rec_header
        summary["bytes"] = sink.bytes if isinstance(sink, _ImageFolderSink) else _output_bytes(out)
        atomic_write_bytes(out / MARKER, (json.dumps(summary, indent=2, sort_keys=True) + "\n").encode())
        return summary
    except BaseException as exc:
        if sink is not None:
            try:
                sink.abort()
            except (OSError, lmdb.Error):
                pass
        _clear(out, existed)
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise ExportError(f"no space left on the device writing {out}; nothing was kept there") from exc
        if isinstance(exc, lmdb.DiskError):
            raise ExportError(f"no space left on the device writing {out / LMDB_FILE}; nothing was kept there") from exc
        if isinstance(exc, RecordIOError):
            raise ExportError(f"cannot write {out / REC_FILE}: {exc}") from exc
        raise
