"""The one reader of a run's image rows, and the one definition of a kept row.

A row is **kept** when no filter rejected it: the reason column of every filter (each filter declares its own,
``reason_column``) is null or absent. In ``drop`` mode rejected rows are not stored; in ``annotate`` mode they are,
with their reason, and every reader leaves them out unless it is told to include them. The report, ``evaluate``
(training and ``--intrinsic``), ``export``, ``export-pairs`` and the card read shards through here.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from functools import cache
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


@cache
def reason_columns() -> tuple[str, ...]:
    """The reason column of every filter, in decision order (the first filter's first)."""
    from facefoundry.filters.face_filter import FaceFilter
    from facefoundry.filters.identity_filter import IdentityFilter

    return FaceFilter.reason_column, IdentityFilter.reason_column


def with_reasons(names: Iterable[str], columns: Iterable[str]) -> list[str]:
    """``columns`` that a shard with column ``names`` has, then its reason columns (each once)."""
    present = set(names)
    return list(dict.fromkeys([c for c in columns if c in present] + [c for c in reason_columns() if c in present]))


def rejection_reasons(table: pa.Table) -> np.ndarray:
    """Per row, the reason of the first filter that rejected it (an object array; None = kept)."""
    out = np.full(table.num_rows, None, dtype=object)
    for column in reversed([c for c in reason_columns() if c in table.column_names]):
        values = np.array(table.column(column).to_pylist(), dtype=object)
        set_here = np.array([v is not None for v in values], dtype=bool)
        out[set_here] = values[set_here]
    return out


def kept_mask(table: pa.Table) -> np.ndarray:
    """Rows no filter rejected (every row of a table without reason columns)."""
    kept = np.ones(table.num_rows, dtype=bool)
    for column in reason_columns():
        if column in table.column_names:
            kept &= table.column(column).is_null().to_numpy(zero_copy_only=False)
    return kept


class ShardSchemaError(ValueError):
    """A shard's column has a type the readers cannot use (one line naming the shard and the column)."""


def _checked(path: str | Path, schema: pa.Schema, columns: list[str]) -> list[str]:
    """``columns``, after checking that an ``identity`` among them holds integers (class labels)."""
    if "identity" in columns:
        kind = schema.field("identity").type
        if not pa.types.is_integer(kind):
            raise ShardSchemaError(f"{path}: column identity holds {kind}, not integers: identities are class "
                                   f"labels 0..N-1 (rewrite the shard with integer identities, or rerun the run)")
    return columns


def read_shard(path: str | Path, columns: Iterable[str]) -> pa.Table:
    """The ``columns`` a shard has, with its reason columns, in one read (one file open)."""
    with pq.ParquetFile(path) as shard:
        return shard.read(columns=_checked(path, shard.schema_arrow,
                                           with_reasons(shard.schema_arrow.names, columns)))


def iter_row_groups(path: str | Path, columns: Iterable[str]) -> Iterator[pa.Table]:
    """A shard one row group at a time (a row group in memory), with the ``columns`` it has and its reasons."""
    with pq.ParquetFile(path) as shard:
        wanted = _checked(path, shard.schema_arrow, with_reasons(shard.schema_arrow.names, columns))
        for group in range(shard.num_row_groups):
            yield shard.read_row_group(group, columns=wanted)
