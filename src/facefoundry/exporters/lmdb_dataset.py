"""Face datasets in LMDB, laid out as Vec2Face publishes HSFace (``hsface10k.lmdb``, ...).

Layout (the writer ``utils/imagelist2lmdb.py``, the trainer's reader ``data/data_loader_train_lmdb.py``
and the converter ``utils/lmdb2dataset.py`` of HaiyuWu/SOTA-Face-Recognition-Train-and-Test, the
training code Vec2Face's README points to for HSFace):

- one database file ``<name>.lmdb`` (LMDB ``subdir=False``: readers pass
  ``subdir=os.path.isdir(path)``); the trainer requires the ``.lmdb`` suffix;
- key ``str(i).encode("ascii")`` for i = 0..N-1 holds ``msgpack.dumps((image_bytes, int(label)))``:
  a two-element msgpack array of the encoded image (bin) and the class label (int);
- ``b"__keys__"``: msgpack list of the N image keys (bytes) in order; ``b"__len__"``: msgpack int N;
  ``b"__classnum__"``: msgpack int, the number of classes (max label + 1).

Readers open it ``readonly=True, lock=False``, so no lock file is written beside it. The map grows
as needed: a transaction that fills the map is retried after doubling it.
"""

from __future__ import annotations

import os
from pathlib import Path

import lmdb
import msgpack

LEN_KEY, KEYS_KEY, CLASSNUM_KEY = b"__len__", b"__keys__", b"__classnum__"
TXN_BYTES = 64 << 20  # payload bytes per write transaction
TXN_RECORDS = 5000


def image_key(i: int) -> bytes:
    return str(i).encode("ascii")


class LmdbDatasetWriter:
    """Writes the database under a temporary name; ``commit`` adds the index keys and renames it."""

    def __init__(self, path: Path, map_size: int = 1 << 30):
        self.path = Path(path)
        self._tmp = self.path.with_name(f".tmp-{os.getpid()}-{self.path.name}")
        self._env = lmdb.open(str(self._tmp), subdir=False, map_size=map_size, lock=False, meminit=False)
        self._batch: list[tuple[bytes, bytes]] = []
        self._batch_bytes = 0
        self.count = 0
        self.max_label = -1
        self.resizes = 0

    def add(self, label: int, image: bytes) -> None:
        value = msgpack.dumps((image, int(label)))
        self._batch.append((image_key(self.count), value))
        self._batch_bytes += len(value)
        self.count += 1
        self.max_label = max(self.max_label, int(label))
        if self._batch_bytes >= TXN_BYTES or len(self._batch) >= TXN_RECORDS:
            self._flush()

    def _put(self, items: list[tuple[bytes, bytes]]) -> None:
        while True:
            try:
                with self._env.begin(write=True) as txn:
                    for key, value in items:
                        txn.put(key, value)
                return
            except lmdb.MapFullError:  # the aborted transaction is redone in a map twice the size
                self._env.set_mapsize(self._env.info()["map_size"] * 2)
                self.resizes += 1

    def _flush(self) -> None:
        if self._batch:
            self._put(self._batch)
        self._batch, self._batch_bytes = [], 0

    def _keys_blob(self) -> bytes:
        """``msgpack.dumps([b"0", b"1", ...])`` built key by key (a list of 15M bytes objects is ~1 GB)."""
        packer = msgpack.Packer()
        blob = bytearray(packer.pack_array_header(self.count))
        for i in range(self.count):
            blob += packer.pack(image_key(i))
        return bytes(blob)

    def commit(self) -> None:
        self._flush()
        self._put([
            (KEYS_KEY, self._keys_blob()),
            (LEN_KEY, msgpack.dumps(self.count)),
            (CLASSNUM_KEY, msgpack.dumps(self.max_label + 1)),
        ])
        self._env.sync(True)
        self._env.close()
        os.replace(self._tmp, self.path)

    def abort(self) -> None:
        try:
            self._env.close()
        finally:
            self._tmp.unlink(missing_ok=True)


class LmdbDataset:
    """Reads such a database as the HSFace trainer does: ``len``, ``classnum``, ``self[i] -> (label, image)``."""

    def __init__(self, path: Path):
        path = Path(path)
        self.env = lmdb.open(str(path), subdir=path.is_dir(), readonly=True, lock=False, readahead=False,
                             meminit=False)
        with self.env.begin() as txn:
            self.length = msgpack.loads(txn.get(LEN_KEY))
            self.keys = msgpack.loads(txn.get(KEYS_KEY))
            self.classnum = msgpack.loads(txn.get(CLASSNUM_KEY))

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> tuple[int, bytes]:
        with self.env.begin() as txn:
            image, label = msgpack.loads(txn.get(self.keys[i]))
        return label, image

    def close(self) -> None:
        self.env.close()
