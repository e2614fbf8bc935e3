"""One definition of a kept row: no filter's reason column is set. Every reader of shards agrees on it, also for rows
that only the identity filter rejected in ``annotate`` mode (the report, training and the intrinsic judge counted
those as kept while exports left them out)."""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from facefoundry.dataset.schema import image_struct
from facefoundry.runfolder.rows import kept_mask, reason_columns, rejection_reasons

# identity 0: 3 kept, 1 rejected by the face filter; identity 1: 2 kept, 2 rejected by the identity filter only;
# identity 2: every row rejected by the identity filter only
FACE = [None, None, None, "no_face", None, None, None, None, None, None]
IDF = [None, None, None, None, None, "id_similarity", None, "confusion", "duplicate", "min_images"]
IDS = [0, 0, 0, 0, 1, 1, 1, 1, 2, 2]
KEPT = [f is None and i is None for f, i in zip(FACE, IDF, strict=True)]


def _png(value: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((112, 112, 3), value, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def shard(tmp_path):
    """A run folder's one shard, written as an ``annotate``-mode run writes it (both reason columns)."""
    index = [0, 1, 2, 3, 0, 1, 2, 3, 0, 1]
    table = pa.table({
        "image": image_struct([_png(10 * k) for k in range(len(IDS))],
                              [f"{i}_{j}.png" for i, j in zip(IDS, index, strict=True)]),
        "identity": pa.array(IDS, pa.int64()), "image_index": pa.array(index, pa.int32()),
        "face_score": pa.array(np.linspace(0.5, 1.0, len(IDS)), pa.float32()),
        "filter_reason": pa.array(FACE, pa.string()), "id_filter_reason": pa.array(IDF, pa.string()),
    })
    (tmp_path / "data").mkdir()
    path = tmp_path / "data" / "train-0000000-0000003.parquet"
    pq.write_table(table, path, row_group_size=4)
    manifest = {"unit": "0000000-0000003", "shard": "data/train-0000000-0000003.parquet", "rows": len(IDS),
                "identity_start": 0, "identity_stop": 3}
    return tmp_path, path, manifest


def test_the_definition(shard):
    _, path, _ = shard
    table = pq.read_table(path)
    assert reason_columns() == ("filter_reason", "id_filter_reason")  # each filter's own reason_column
    assert kept_mask(table).tolist() == KEPT
    assert rejection_reasons(table).tolist() == [f or i for f, i in zip(FACE, IDF, strict=True)]
    assert kept_mask(table.drop_columns(["filter_reason", "id_filter_reason"])).all()  # drop mode: all kept


def test_every_reader_keeps_the_same_rows(shard):
    from facefoundry.evaluate.data import decode_batch, scan_identities
    from facefoundry.evaluate.intrinsic_run import select_sample
    from facefoundry.exporters.export import _rows
    from facefoundry.exporters.pairs import _scan
    from facefoundry.publishing.report import _sample
    from facefoundry.publishing.report_plots import _grid_rows

    run, path, manifest = shard
    kept_rows = sum(KEPT)

    sample = _sample(run, [manifest], max_rows=100, seed=0)  # the report's funnel and plots
    assert sample["kept"].tolist() == KEPT
    assert sample["per_identity"].tolist() == [3, 2, 0]

    classes, rows = scan_identities([str(path)])  # evaluate --train: the classes and rows it trains on
    assert rows == kept_rows and classes.tolist() == [0, 1]
    batch = decode_batch(pq.read_table(path), classes)
    assert len(batch["label"]) == kept_rows

    _, info = select_sample(run, [manifest], None, None, seed=0)  # evaluate --intrinsic
    assert info["kept_images"] == kept_rows and info["identities_with_kept_images"] == 2

    counts = {"rejected": 0, "no_image": 0}  # export
    assert len(list(_rows([path], False, counts, None))) == kept_rows and counts["rejected"] == len(IDS) - kept_rows

    images, _, skipped = _scan([path], [], include_rejected=False)  # export-pairs
    assert sum(len(v) for v in images.values()) == kept_rows and skipped["rejected"] == len(IDS) - kept_rows

    grid = dict(_grid_rows(run, [manifest]))  # the report's image grid labels rejected images by their reason
    assert [reason for _, reason, _ in grid[1]] == [None, "id_similarity", None, "confusion"]
