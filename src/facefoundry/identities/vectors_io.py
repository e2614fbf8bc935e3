"""Reading user-supplied embedding files (.npy or .parquet), validated with clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

_PARQUET_COLUMNS = ("vector", "embedding")


class VectorFileError(ValueError):
    """An embedding file that cannot be used; the message names the file and the fix."""


def _from_parquet(path: Path) -> np.ndarray:
    schema = pq.read_schema(path)
    column = next((c for c in _PARQUET_COLUMNS if c in schema.names), None)
    if column is None:
        raise VectorFileError(
            f"{path}: no column named {' or '.join(_PARQUET_COLUMNS)} (found {schema.names}); "
            f"store one list<float> column per row"
        )
    col = pq.read_table(path, columns=[column]).column(column).combine_chunks()
    if not (pa.types.is_list(col.type) or pa.types.is_fixed_size_list(col.type) or pa.types.is_large_list(col.type)):
        raise VectorFileError(f"{path}: column {column!r} has type {col.type}, expected a list of floats")
    if col.null_count:
        raise VectorFileError(f"{path}: column {column!r} has {col.null_count} null rows")
    lengths = set(pa.compute.list_value_length(col).to_pylist()) if len(col) else set()
    if len(lengths) > 1:
        raise VectorFileError(f"{path}: rows of {column!r} have different lengths {sorted(lengths)[:5]}")
    dim = lengths.pop() if lengths else 0
    return col.flatten().to_numpy(zero_copy_only=False).astype(np.float32).reshape(len(col), dim)


NPY_MAGIC = b"\x93NUMPY"  # the first bytes of every .npy file (numpy.lib.format)


def load_vectors(path: str | Path, dim: int, what: str = "vectors") -> np.ndarray:
    """Load an (N, dim) float32 array; reject missing files, other shapes, NaN/inf and zero rows."""
    path = Path(path)
    if not path.exists():
        raise VectorFileError(f"{what} file not found: {path}")
    try:
        if path.suffix == ".npy":
            with open(path, "rb") as fh:
                if fh.read(len(NPY_MAGIC)) != NPY_MAGIC:  # numpy would call it pickled data and advise unpickling
                    raise VectorFileError(f"{path}: not a NumPy .npy array file (empty, or no .npy header); "
                                          "write it with numpy.save")
            arr = np.load(path, allow_pickle=False)
        elif path.suffix == ".parquet":
            arr = _from_parquet(path)
        else:
            raise VectorFileError(f"{path}: unsupported {what} file type {path.suffix!r}; use .npy or .parquet")
    except (OSError, ValueError, EOFError, pa.ArrowException) as exc:  # EOFError: a .npy file cut short
        if isinstance(exc, VectorFileError):
            raise
        raise VectorFileError(f"{path}: cannot read {what}: {exc}") from None
    if arr.ndim != 2 or arr.shape[1] != dim:
        raise VectorFileError(f"{path}: {what} must have shape (N, {dim}), got {tuple(arr.shape)}")
    if len(arr) == 0:
        raise VectorFileError(f"{path}: {what} file is empty (0 vectors)")
    if not np.issubdtype(arr.dtype, np.number):
        raise VectorFileError(f"{path}: {what} must be numeric, got dtype {arr.dtype}")
    arr = arr.astype(np.float32)
    bad = np.where(~np.isfinite(arr).all(axis=1))[0]
    if len(bad):
        raise VectorFileError(f"{path}: {len(bad)} {what} contain NaN or inf (first rows {bad[:5].tolist()})")
    zero = np.where(np.linalg.norm(arr, axis=1) == 0)[0]
    if len(zero):
        raise VectorFileError(f"{path}: {len(zero)} {what} are all zeros (first rows {zero[:5].tolist()})")
    return arr
