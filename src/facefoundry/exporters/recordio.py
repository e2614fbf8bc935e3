"""MXNet RecordIO (``train.rec`` + ``train.idx``) as InsightFace packs face datasets, without mxnet.

Container (dmlc-core ``include/dmlc/recordio.h`` and ``src/recordio.cc``, which MXNet's
``MXRecordIO`` uses). Each record is stored as ``magic lrec data pad``, all little endian:

- ``magic``: uint32 ``0xCED7230A``;
- ``lrec``: uint32 ``cflag << 29 | length``, ``length < 2**29``;
- ``data``: ``length`` bytes, then zero bytes up to a multiple of 4.

Where the record's data holds the magic word at a 4-byte-aligned offset, the writer splits it
there and drops that word: parts get cflag 1 (first), 2 (middle), 3 (last); a whole record has
cflag 0. The reader joins the parts and puts the magic word back between them.

Index (``MXIndexedRecordIO``): a text file, one ``key<TAB>offset`` line per record, the offset
being the byte position of the record's first magic word in the ``.rec``.

Record payload (``mxnet.recordio.pack``): a 24-byte header, struct ``IfQQ``: flag (uint32),
label (float32), id (uint64), id2 (uint64). With flag 0 the label is that float; with flag > 0 the
label is an array of ``flag`` float32 values that follows the header (the header's own label field
is then 0). The encoded image comes last.

InsightFace layout (its published ``train.rec`` files, written by ``face2rec2.py``, and read by
``arcface_torch``'s ``MXFaceDataset`` and the MXNet ``FaceImageIter``), with N images of C
identities, the images of one identity contiguous:

- key 0: flag 2, label ``[N + 1, N + 1 + C]``, no image. Readers that find flag > 0 here take
  keys ``1 .. label[0] - 1`` as the images;
- keys 1..N: one image each, flag 0, label = its class (float32), id = its key;
- keys N+1..N+C: one record per identity in label order, flag 2, label ``[first key, last key + 1]``
  of its images, no image.

This writer stores record 0 first (its size does not depend on N and C, so it is written as a
placeholder and filled in at the end), so the ``.idx`` lists keys in ascending order. With
``header=False`` the plain ``im2rec`` layout is written instead: keys 0..N-1 are the images and there
are no header records (readers then take every key; NVIDIA DALI's ``readers.mxnet``, which
``arcface_torch`` uses with ``dali=True``, expects an image in every record, so it needs this).

Labels and header keys travel as float32 and are exact only below 2**24 (16,777,216).
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import BinaryIO, NamedTuple

MAGIC = 0xCED7230A
_MAGIC_BYTES = struct.pack("<I", MAGIC)
_WORD = struct.Struct("<II")  # magic, lrec
_IR = struct.Struct("<IfQQ")  # flag, label, id, id2
MAX_RECORD = (1 << 29) - 1
FLOAT_EXACT = 1 << 24
REC_FILE, IDX_FILE, PROPERTY_FILE = "train.rec", "train.idx", "property"


class RecordIOError(ValueError):
    """A record that cannot be written in, or read from, the RecordIO format."""


class IRHeader(NamedTuple):
    flag: int
    label: float | tuple[float, ...]
    id: int
    id2: int = 0


def pack(label: float | Sequence[float], payload: bytes, key: int, id2: int = 0) -> bytes:
    """A record's data: the ``IfQQ`` header (plus the label array when ``label`` is a sequence)."""
    if isinstance(label, int | float):
        return _IR.pack(0, float(label), key, id2) + payload
    values = [float(v) for v in label]
    return _IR.pack(len(values), 0.0, key, id2) + struct.pack(f"<{len(values)}f", *values) + payload


def unpack(data: bytes) -> tuple[IRHeader, bytes]:
    """The header and the remaining bytes (the image) of a record's data."""
    if len(data) < _IR.size:
        raise RecordIOError(f"record of {len(data)} bytes is shorter than its {_IR.size}-byte header")
    flag, label, key, id2 = _IR.unpack_from(data)
    start = _IR.size
    if flag > 0:
        if len(data) < start + 4 * flag:
            raise RecordIOError(f"record announces {flag} float labels but holds {len(data) - start} bytes")
        label = struct.unpack_from(f"<{flag}f", data, start)
        start += 4 * flag
    return IRHeader(flag, label, key, id2), data[start:]


def _lrec(cflag: int, length: int) -> bytes:
    return struct.pack("<I", (cflag << 29) | length)


def frame(data: bytes) -> bytes:
    """The bytes the ``.rec`` holds for one record (split at aligned magic words, padded to 4)."""
    if len(data) > MAX_RECORD:
        raise RecordIOError(f"record of {len(data)} bytes exceeds the RecordIO limit of {MAX_RECORD}")
    parts, start = [], 0
    pos = data.find(_MAGIC_BYTES)
    while pos != -1:
        if pos % 4 == 0:
            parts.append(data[start:pos])
            start = pos + 4
            pos = data.find(_MAGIC_BYTES, start)
        else:
            pos = data.find(_MAGIC_BYTES, pos + 1)
    last = data[start:]
    out = []
    for i, part in enumerate(parts):  # aligned, so no padding
        out += [_MAGIC_BYTES, _lrec(1 if i == 0 else 2, len(part)), part]
    out += [_MAGIC_BYTES, _lrec(3 if parts else 0, len(last)), last, b"\0" * (-len(last) % 4)]
    return b"".join(out)


def read_framed(fh: BinaryIO) -> bytes | None:
    """Read the record at the file position; None at the end of the file."""
    data = []
    while True:
        word = fh.read(_WORD.size)
        if not word and not data:
            return None
        if len(word) != _WORD.size:
            raise RecordIOError(f"truncated record header at byte {fh.tell() - len(word)}")
        magic, lrec = _WORD.unpack(word)
        if magic != MAGIC:
            raise RecordIOError(f"bad magic {magic:#010x} at byte {fh.tell() - _WORD.size}")
        cflag, length = lrec >> 29, lrec & MAX_RECORD
        padded = fh.read(length + (-length % 4))
        if len(padded) < length:
            raise RecordIOError(f"truncated record data at byte {fh.tell() - len(padded)}")
        data.append(padded[:length])
        if cflag in (0, 3):
            return _MAGIC_BYTES.join(data)


class IndexedRecordWriter:
    """Writes ``.rec`` and ``.idx`` under temporary names; ``commit`` renames them into place."""

    def __init__(self, rec_path: Path, idx_path: Path):
        self.rec_path, self.idx_path = Path(rec_path), Path(idx_path)
        self._tmp = [p.with_name(f".tmp-{os.getpid()}-{p.name}") for p in (self.rec_path, self.idx_path)]
        self._rec = open(self._tmp[0], "wb", buffering=1 << 20)  # noqa: SIM115 - closed in commit/abort
        self._idx = open(self._tmp[1], "w", buffering=1 << 16)  # noqa: SIM115
        self.offset = 0

    def write(self, key: int, data: bytes) -> int:
        """Append a record under ``key``; return its offset."""
        framed = frame(data)
        offset = self.offset
        self._rec.write(framed)
        self._idx.write(f"{key}\t{offset}\n")
        self.offset += len(framed)
        return offset

    def overwrite(self, offset: int, data: bytes, size: int) -> None:
        """Replace the record of framed ``size`` bytes at ``offset`` with one of the same size."""
        framed = frame(data)
        if len(framed) != size:
            raise RecordIOError(f"replacement record is {len(framed)} bytes, the one at {offset} is {size}")
        self._rec.seek(offset)
        self._rec.write(framed)
        self._rec.seek(self.offset)

    def commit(self) -> None:
        for fh in (self._rec, self._idx):
            fh.flush()
            os.fsync(fh.fileno())
            fh.close()
        for tmp, path in zip(self._tmp, (self.rec_path, self.idx_path), strict=True):
            os.replace(tmp, path)

    def abort(self) -> None:
        for fh in (self._rec, self._idx):
            try:
                fh.close()
            except OSError:
                pass  # a full disk can fail the final flush; the file goes anyway
        for tmp in self._tmp:
            tmp.unlink(missing_ok=True)


class InsightFaceRecWriter:
    """Writes images of contiguous identities in the InsightFace layout (see the module docstring)."""

    def __init__(self, directory: Path, header: bool = True):
        self.directory = Path(directory)
        self.header = header
        self._writer = IndexedRecordWriter(self.directory / REC_FILE, self.directory / IDX_FILE)
        self.images = 0
        self.ranges: list[tuple[int, int, int]] = []  # (label, first key, last key + 1)
        if header:  # placeholder: same framed size as the final record 0 (two floats, no image)
            self._writer.write(0, pack([0.0, 0.0], b"", 0))
            self._header_size = self._writer.offset

    def add(self, label: int, image: bytes) -> None:
        key = self.images + 1 if self.header else self.images
        if not 0 <= label < FLOAT_EXACT:
            raise RecordIOError(f"label {label} is not exact as float32 (RecordIO labels must be in [0, 2**24))")
        if self.header and key >= FLOAT_EXACT:
            raise RecordIOError(f"more than {FLOAT_EXACT - 2} images: header keys would not be exact as float32")
        if self.ranges and self.ranges[-1][0] == label:
            self.ranges[-1] = (label, self.ranges[-1][1], key + 1)
        elif self.ranges and self.ranges[-1][0] > label:
            raise RecordIOError(f"identity {label} comes after {self.ranges[-1][0]}: images must be grouped by label")
        else:
            self.ranges.append((label, key, key + 1))
        self._writer.write(key, pack(label, image, key))
        self.images += 1

    def commit(self) -> None:
        if self.header:
            first_identity_key = self.images + 1
            end = first_identity_key + len(self.ranges)
            if end > FLOAT_EXACT:
                raise RecordIOError(f"{end} records: header keys would not be exact as float32")
            for i, (_, lo, hi) in enumerate(self.ranges):
                key = first_identity_key + i
                self._writer.write(key, pack([float(lo), float(hi)], b"", key))
            self._writer.overwrite(0, pack([float(first_identity_key), float(end)], b"", 0), self._header_size)
        self._writer.commit()

    def abort(self) -> None:
        self._writer.abort()


def write_property(directory: Path, num_classes: int, height: int, width: int) -> None:
    """InsightFace's ``property`` file: ``num_classes,height,width``."""
    (Path(directory) / PROPERTY_FILE).write_text(f"{num_classes},{height},{width}\n")


class IndexedRecordReader:
    """Random access to a ``.rec`` through its ``.idx`` (keys in file order in ``keys``)."""

    def __init__(self, rec_path: Path, idx_path: Path):
        self.offsets: dict[int, int] = {}
        self.keys: list[int] = []
        with open(idx_path) as fh:
            for n, line in enumerate(fh, 1):
                fields = line.rstrip("\n").split("\t")
                if len(fields) != 2:
                    raise RecordIOError(f"{idx_path}:{n}: expected 'key<TAB>offset', got {line!r}")
                key = int(fields[0])
                self.offsets[key] = int(fields[1])
                self.keys.append(key)
        self._fh = open(rec_path, "rb")  # noqa: SIM115 - closed in close()

    def read_idx(self, key: int) -> bytes:
        self._fh.seek(self.offsets[key])
        record = read_framed(self._fh)
        if record is None:
            raise RecordIOError(f"key {key}: offset {self.offsets[key]} is past the end of the file")
        return record

    def __iter__(self) -> Iterator[bytes]:
        """Every record in file order, without the index."""
        self._fh.seek(0)
        while (record := read_framed(self._fh)) is not None:
            yield record

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> IndexedRecordReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class InsightFaceRec:
    """Reads a ``train.rec``/``train.idx`` folder as InsightFace's trainers do.

    ``header0`` is ``(N + 1, N + 1 + C)`` when record 0 is a header record, else None; ``image_keys``
    are the image records; ``identity_ranges`` the ``[first, last + 1)`` key range of each identity
    (header layout only). ``self[i]`` is ``(label, image bytes)`` of the i-th image.
    """

    def __init__(self, directory: Path):
        directory = Path(directory)
        self.reader = IndexedRecordReader(directory / REC_FILE, directory / IDX_FILE)
        head, _ = unpack(self.reader.read_idx(0))
        self.header0: tuple[int, int] | None = None
        self.identity_ranges: list[tuple[int, int]] = []
        if head.flag > 0:
            self.header0 = (int(head.label[0]), int(head.label[1]))
            self.image_keys = list(range(1, self.header0[0]))
            for key in range(*self.header0):
                ident, _ = unpack(self.reader.read_idx(key))
                self.identity_ranges.append((int(ident.label[0]), int(ident.label[1])))
        else:
            self.image_keys = list(self.reader.keys)

    def __len__(self) -> int:
        return len(self.image_keys)

    def __getitem__(self, i: int) -> tuple[int, bytes]:
        head, image = unpack(self.reader.read_idx(self.image_keys[i]))
        label = head.label if head.flag == 0 else head.label[0]
        return int(label), image

    def close(self) -> None:
        self.reader.close()
