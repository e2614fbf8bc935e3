"""A finished run's shards as training data: Ray Data streaming, image decoding, labels and augmentation.

The ``data/*.parquet`` shards are read in place with ``ray.data.read_parquet`` (no copy to local disk, no
format conversion); a ``map_batches`` step keeps the rows no filter rejected (:mod:`facefoundry.runfolder.rows`),
decodes the HF image struct's PNG/JPEG bytes to ``uint8`` RGB ``(112, 112, 3)`` arrays and maps each
``identity`` to its class id (the sorted identities present, 0..C-1). Training workers take their share with
``ray.train.get_dataset_shard`` and turn batches into normalised ``NCHW`` tensors with :func:`to_input`
and :func:`augment`, whose random choices derive from (seed, epoch, identity, image_index) only.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from facefoundry.evaluate.benchmarks import decode_image  # one decoder for shards and benchmark files
from facefoundry.evaluate.config import AugmentConfig
from facefoundry.layout import DATA_PATTERN
from facefoundry.runfolder.rows import kept_mask, read_shard, reason_columns

READ_COLUMNS = ["image", "identity", "image_index"]


def shard_paths(run: str | Path) -> list[str]:
    """The run's shard files, sorted; a clear error if there are none."""
    paths = sorted(str(p) for p in Path(run).glob(DATA_PATTERN))
    if not paths:
        raise FileNotFoundError(f"{run}: no shards ({DATA_PATTERN}); train on a finished `facefoundry run` folder")
    return paths


def training_mask(table: pa.Table, kept_only: bool) -> np.ndarray:
    """Rows to train on: the kept ones (no filter rejected them), or all of them."""
    return kept_mask(table) if kept_only else np.ones(table.num_rows, dtype=bool)


def scan_identities(paths: list[str], kept_only: bool = True) -> tuple[np.ndarray, int]:
    """(sorted distinct identities of the kept rows, kept row count), reading only the small label columns."""
    identities, rows = [], 0
    for path in paths:
        table = read_shard(path, ["identity"])
        mask = training_mask(table, kept_only)
        identities.append(np.unique(table.column("identity").to_numpy()[mask]))
        rows += int(mask.sum())
    classes = np.unique(np.concatenate(identities)) if identities else np.zeros(0, np.int64)
    return classes.astype(np.int64), rows


def decode_batch(batch: pa.Table, classes: np.ndarray, kept_only: bool = True, size: int = 112) -> dict:
    """One Ray Data batch of shard rows -> ``image`` uint8 ``(n, size, size, 3)``, ``label``, ``identity``,
    ``image_index``; rejected rows are dropped and identities outside ``classes`` are an error."""
    mask = training_mask(batch, kept_only)
    table = batch.filter(pa.array(mask)) if not mask.all() else batch
    identity = table.column("identity").to_numpy().astype(np.int64)
    label = np.searchsorted(classes, identity)
    if len(identity) and (label.max() >= len(classes) or not np.array_equal(classes[label], identity)):
        raise ValueError("a shard holds an identity missing from the class list; the run changed after the scan")
    images = table.column("image").combine_chunks().field("bytes").to_pylist()
    decoded = np.stack([decode_image(b, size) for b in images]) if images else np.zeros((0, size, size, 3), np.uint8)
    return {"image": decoded, "label": label, "identity": identity,
            "image_index": table.column("image_index").to_numpy().astype(np.int64)}


def read_run(run: str | Path, classes: np.ndarray, kept_only: bool = True, size: int = 112,
             rows_per_batch: int = 64):
    """The run's shards as a lazy, streaming ``ray.data.Dataset`` of decoded, labelled training rows."""
    paths = shard_paths(run)
    reasons = {c for p in paths for c in pq.read_schema(p).names if c in reason_columns()} if kept_only else set()
    columns = READ_COLUMNS + [c for c in reason_columns() if c in reasons]
    ds = _read_parquet_v1(paths).select_columns(columns)  # projection pushed down into the read
    return ds.map_batches(decode_batch, batch_format="pyarrow", batch_size=rows_per_batch,
                          fn_kwargs={"classes": classes, "kept_only": kept_only, "size": size})


def _read_parquet_v1(paths: list[str]):
    """``ray.data.read_parquet`` through Ray Data's first parquet datasource, which reads the shards' footers
    once, here. The second (the default in Ray 2.60) lists them again each time the dataset runs, that is
    every epoch, on a new pool of 32 footer-reader actors, each a worker process to start."""
    import ray.data

    # Its two INFO lines (encoding ratio, batch size) are Ray's business, not the user's.
    logging.getLogger("ray.data._internal.datasource.parquet_datasource").setLevel(logging.WARNING)
    context = ray.data.DataContext.get_current()
    default, context.use_datasource_v2 = context.use_datasource_v2, False
    try:
        return ray.data.read_parquet(paths)
    finally:
        context.use_datasource_v2 = default


def to_input(images: torch.Tensor) -> torch.Tensor:
    """``uint8`` NHWC RGB -> float32 NCHW in [-1, 1] (``(x / 255 - 0.5) / 0.5``, ArcFace's normalisation)."""
    return images.permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0).contiguous()


def erase_box(rng: np.random.Generator, height: int, width: int, scale: tuple[float, float],
              ratio: tuple[float, float]) -> tuple[int, int, int, int] | None:
    """A RandomErasing rectangle (top, left, h, w) drawn as torchvision does (10 tries), or None."""
    area = height * width
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        h, w = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
        if h < height and w < width:
            return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
    return None


def augment(x: torch.Tensor, identity: np.ndarray, image_index: np.ndarray, epoch: int, seed: int,
            cfg: AugmentConfig) -> torch.Tensor:
    """Horizontal flip and RandomErasing on a normalised NCHW batch, in place; each row's choices come from
    ``numpy.random.default_rng([seed, epoch, identity, image_index])`` (independent of batching and workers)."""
    height, width = x.shape[2], x.shape[3]
    flips = []
    for row, (ident, index) in enumerate(zip(identity.tolist(), image_index.tolist(), strict=True)):
        rng = np.random.default_rng([seed, epoch, ident, index])
        if rng.random() < cfg.flip_p:
            flips.append(row)
        erasing = cfg.erasing
        if erasing is not None and rng.random() < erasing.p:
            box = erase_box(rng, height, width, erasing.scale, erasing.ratio)
            if box is not None:
                top, left, h, w = box
                x[row, :, top:top + h, left:left + w] = erasing.value
    if flips:
        rows = torch.tensor(flips, device=x.device)
        x[rows] = x[rows].flip(3)
    return x
