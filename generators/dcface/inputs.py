"""DCFace's image inputs: the ID set (one aligned ID image and its embedding per identity) and the style bank.

Both are aligned 112x112 RGB faces (the ArcFace 5-point template), as DCFace's mixing model was trained on.

* An **image bank** is a folder of image files (read in natural name order, subfolders included) or Parquet
  (a file, or a folder of files) with an ``image`` column of ``{bytes, path}`` structs: a facefoundry run's
  ``data/``, or a Hugging Face image dataset. Images are decoded when used, so a large bank costs its
  encoded size in memory (Parquet) or nothing (a folder).
* An **ID set** is a Parquet file with ``image``, ``vector`` (the L2-normalised embedding of the image by the
  encoder named in the file's metadata) and ``source`` columns. ``facefoundry dcface-ids`` writes one; a run
  takes its identity vectors from it (``identities.sampler: from_file``) and the generator finds each
  identity's ID image by its vector.
"""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from facefoundry.dataset.schema import image_struct

ALIGNED_SIZE = 112
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
ID_SET_METADATA = b"facefoundry_id_set"
MATCH_COSINE = 0.9999  # an identity vector and its ID-set row: the same unit vector up to float rounding


class InputError(ValueError):
    """An ID set or style bank that cannot be used; the message names the source and the fix."""


def natural_key(name: str) -> list:
    """``img2`` before ``img10`` (the order DCFace's synthesis script reads style folders in)."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def _parquet_files(path: Path) -> list[Path]:
    if path.is_file() and path.suffix == ".parquet":
        return [path]
    return sorted(path.rglob("*.parquet"), key=lambda p: natural_key(str(p.relative_to(path)))) if path.is_dir() else []


class ImageBank:
    """Aligned faces from a folder or Parquet, by index: ``len``, :meth:`name`, :meth:`array`."""

    def __init__(self, source: str | Path, what: str = "style bank"):
        self.source, self.what = str(source), what
        path = Path(source).expanduser()
        if not path.exists():
            raise InputError(f"{what} {path} does not exist")
        self._bytes: list[bytes] | None = None
        parquet = _parquet_files(path)
        if parquet:
            self._read_parquet(parquet)
        else:
            files = [p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
            self._files = sorted(files, key=lambda p: natural_key(str(p.relative_to(path))))
            self._names = [str(p.relative_to(path)) for p in self._files]
        if not len(self):
            raise InputError(f"{what} {path} holds no images ({', '.join(IMAGE_SUFFIXES)} files or Parquet with an "
                             "`image` column)")

    def _read_parquet(self, files: list[Path]) -> None:
        self._bytes, self._names, self._tables = [], [], []
        for f in files:
            try:
                table = pq.read_table(f)
            except (OSError, pa.ArrowException) as exc:
                raise InputError(f"{self.what} {f}: cannot read Parquet: {exc}") from exc
            if "image" not in table.column_names:
                raise InputError(f"{self.what} {f}: no `image` column (found {table.column_names})")
            images = table.column("image").combine_chunks()
            if not pa.types.is_struct(images.type) or images.type.get_field_index("bytes") < 0:
                raise InputError(f"{self.what} {f}: `image` must be a struct of {{bytes, path}}, got {images.type}")
            data = images.field("bytes").to_pylist()
            paths = (images.field("path").to_pylist() if images.type.get_field_index("path") >= 0
                     else [None] * len(data))
            for row, (blob, name) in enumerate(zip(data, paths, strict=True)):
                if blob is None:
                    raise InputError(f"{self.what} {f}: row {row} has no image bytes")
                self._bytes.append(blob)
                self._names.append(f"{f.name}:{row}" if not name else f"{f.name}:{row}:{name}")
            self._tables.append(table.drop_columns(["image"]))

    def __len__(self) -> int:
        return len(self._names)

    def name(self, i: int) -> str:
        """Where image ``i`` comes from: its path in the folder, or ``<file>:<row>[:<path>]``."""
        return self._names[i]

    def array(self, i: int) -> np.ndarray:
        """Image ``i`` as a 112x112x3 uint8 RGB array."""
        try:
            data = self._bytes[i] if self._bytes is not None else self._files[i].read_bytes()
            with Image.open(io.BytesIO(data)) as im:
                arr = np.asarray(im.convert("RGB"))
        except OSError as exc:
            raise InputError(f"{self.what} {self.source}: cannot decode {self.name(i)}: {exc}") from exc
        if arr.shape[:2] != (ALIGNED_SIZE, ALIGNED_SIZE):
            raise InputError(f"{self.what} {self.source}: {self.name(i)} is {arr.shape[1]}x{arr.shape[0]}; DCFace "
                             f"takes faces aligned to {ALIGNED_SIZE}x{ALIGNED_SIZE} (ArcFace 5-point template)")
        return arr


class IdSet(ImageBank):
    """An ID set file: ID images with their unit embeddings; :meth:`rows_for` finds an identity's row."""

    def __init__(self, source: str | Path):
        path = Path(source).expanduser()
        if not (path.is_file() and path.suffix == ".parquet"):
            raise InputError(f"ID set {path} must be a Parquet file written by `facefoundry dcface-ids`")
        super().__init__(path, "ID set")
        table = self._tables[0]
        if "vector" not in table.column_names:
            raise InputError(f"ID set {path}: no `vector` column; build it with `facefoundry dcface-ids`")
        vectors = np.asarray(table.column("vector").to_pylist(), dtype=np.float32)
        if vectors.ndim != 2 or not np.isfinite(vectors).all():
            raise InputError(f"ID set {path}: `vector` must hold one finite list of floats per row")
        self.vectors = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
        self.sources = (table.column("source").to_pylist() if "source" in table.column_names
                        else [self.name(i) for i in range(len(self))])
        raw = (pq.read_schema(path).metadata or {}).get(ID_SET_METADATA)
        self.metadata = json.loads(raw) if raw else {}

    def rows_for(self, vectors: np.ndarray) -> np.ndarray:
        """The row of each identity vector (the ID image it was embedded from); refuses vectors not in the set."""
        unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
        cosine = unit @ self.vectors.T
        rows = cosine.argmax(axis=1)
        best = cosine[np.arange(len(rows)), rows]
        if (best < MATCH_COSINE).any():
            bad = int(np.flatnonzero(best < MATCH_COSINE)[0])
            raise InputError(f"identity vector {bad} is not in the ID set {self.source} (best cosine {best[bad]:.3f}): "
                             "DCFace identities must come from it; set identities.sampler: from_file and "
                             "identities.file to generator.id_set")
        return rows


def write_id_set(path: str | Path, images: list[np.ndarray], vectors: np.ndarray, sources: list[str],
                 metadata: dict) -> Path:
    """Write an ID set (PNG-encoded images, unit vectors, sources; ``metadata`` in the file's schema)."""
    path = Path(path)
    if not (len(images) == len(vectors) == len(sources)):
        raise ValueError(f"got {len(images)} images, {len(vectors)} vectors and {len(sources)} sources")
    data = []
    for im in images:
        buf = io.BytesIO()
        Image.fromarray(im).save(buf, format="PNG")
        data.append(buf.getvalue())
    unit = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
    table = pa.table({
        "image": image_struct(data, [f"{i:07d}.png" for i in range(len(images))]),
        "vector": pa.array(list(unit), pa.list_(pa.float32())),
        "source": pa.array(sources, pa.string()),
    })
    table = table.replace_schema_metadata({ID_SET_METADATA: json.dumps(metadata, sort_keys=True).encode()})
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(table, tmp)
    tmp.replace(path)
    return path
