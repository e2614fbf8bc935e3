"""``facefoundry export-pairs RUN``: verification pairs from a finished run, as an InsightFace ``.bin`` set.

The output has the layout of ``lfw.bin`` / ``agedb_30.bin`` (see :mod:`facefoundry.evaluate.benchmarks`), so
other people's face-recognition models can be evaluated on it with their usual 10-fold code.

- Rows a filter rejected (``filter_reason``, or ``id_filter_reason`` where that column exists, set) and rows
  without image bytes are left out, as ``export`` leaves them out (``include_rejected`` keeps the rejected rows,
  as ``export --include-rejected`` does).
- ``cells`` are columns (``gender``, ``age_group``, ...). An identity's cell is the tuple of their values on
  its first accepted image (lowest ``image_index``); a null value is the value ``"unknown"`` (a literal
  ``"unknown"`` is the same cell). No columns: one cell, ``all``.
- Per cell, ``pairs_per_cell`` genuine pairs (two images of one identity, spread round-robin over the cell's
  identities in a seeded order) and as many impostor pairs (two identities of the cell), all distinct. The
  random stream of a cell is ``numpy.random.default_rng([seed, sha256(cell label)])``: it does not depend
  on the other cells or on Python's ``hash()``.
- Order: the 10-fold protocol cuts the pairs, in file order, into contiguous folds, so the pairs are
  interleaved, not grouped: each cell's pairs are spread evenly through the pairs of their kind (with
  ``pairs_per_cell`` of each, the cells take turns, in a random order every turn), genuine and impostor
  pairs are spread evenly through the file (alternating when there are as many of each), then the pairs
  in each slot 2k, 2k+1 are swapped at random. Every fold thus holds both kinds (about half each, once a
  kind has 10 pairs or more) and a mix of cells: with ``pairs_per_cell`` of each kind in every cell, a fold
  holds about ``pairs_per_cell / 10`` of each cell's genuine pairs and as many of its impostor pairs (5 +- 1
  of 50). The order is seeded like the choice.
- Images must be 112x112 (the aligned faces these sets hold); another size is an error unless ``resize``
  (then resized with ``cv2.INTER_AREA``). Stored JPEG/PNG bytes of the right size are written unchanged;
  resized images are encoded as PNG by :func:`~facefoundry.evaluate.benchmarks.encode_image`.

The ``.bin`` is written under a temporary name and renamed; then ``<out>.pairs.json`` (the summary and every
pair in file order, to audit) the same way. A ``.bin`` without its sidecar is incomplete.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from math import comb
from pathlib import Path

import cv2
import numpy as np
import pyarrow.parquet as pq

from facefoundry import __version__
from facefoundry.dataset.atomic import atomic_write_bytes
from facefoundry.dataset.storage import LocalStore
from facefoundry.evaluate.benchmarks import IMAGE_SIZE, encode_image, sidecar_path, write_bin
from facefoundry.exporters.export import ExportError, _shards
from facefoundry.runfolder.rows import iter_row_groups, kept_mask

UNKNOWN = "unknown"
PNG_MAGIC, JPEG_MAGIC = b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff"
Image = tuple[int, int]  # (identity, image_index)
Pair = tuple[Image, Image, bool]


class PairsError(ExportError):
    """The pairs cannot be exported as asked."""


def _digest(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")


def _label(cells: Sequence[str], values: tuple[str, ...]) -> str:
    return ",".join(f"{c}={v}" for c, v in zip(cells, values, strict=True)) or "all"


def _scan(shards: list[Path], cells: Sequence[str],
          include_rejected: bool) -> tuple[dict[int, dict[int, tuple]], dict[int, tuple], dict]:
    """Accepted images (every image with ``include_rejected``) ``{identity: {image_index: (shard, row group)}}``,
    each identity's cell values, skips."""
    images: dict[int, dict[int, tuple]] = {}
    first: dict[int, tuple[int, tuple]] = {}
    skipped = {"rejected": 0, "no_image": 0}
    for s, path in enumerate(shards):
        names = pq.read_schema(path).names
        missing = [c for c in cells if c not in names]
        if missing:
            raise PairsError(f"{path.name} has no column {', '.join(map(repr, missing))}; "
                             f"available: {', '.join(n for n in names if n != 'image')}")
        for g, table in enumerate(iter_row_groups(path, ["image", "identity", "image_index", *cells])):
            data = table.column("image").combine_chunks().field("bytes").to_pylist()
            kept = kept_mask(table) | include_rejected
            columns = [table.column(c).to_pylist() for c in ("identity", "image_index", *cells)]
            for row, (identity, index, *values) in enumerate(zip(*columns, strict=True)):
                if not kept[row]:
                    skipped["rejected"] += 1
                elif not data[row]:
                    skipped["no_image"] += 1
                else:
                    images.setdefault(identity, {}).setdefault(index, (s, g))
                    if identity not in first or index < first[identity][0]:
                        first[identity] = (index, tuple(UNKNOWN if v is None else str(v) for v in values))
    return images, {i: v for i, (_, v) in first.items()}, skipped


def genuine_room(images: dict[int, list[int]]) -> int:
    """How many distinct same-identity pairs ``{identity: [image_index, ...]}`` holds."""
    return sum(comb(len(v), 2) for v in images.values())


def impostor_room(images: dict[int, list[int]]) -> int:
    """How many distinct pairs of images of two different identities ``{identity: [image_index, ...]}`` holds."""
    total = sum(map(len, images.values()))
    return (total ** 2 - sum(len(v) ** 2 for v in images.values())) // 2


def _genuine(rng: np.random.Generator, images: dict[int, list[int]], want: int) -> list[Pair]:
    """Up to ``want`` distinct same-identity pairs, one identity after another in a shuffled order."""
    ids = [i for i in sorted(images) if len(images[i]) >= 2]
    order = [ids[k] for k in rng.permutation(len(ids))]
    quota, room = dict.fromkeys(order, 0), {i: comb(len(images[i]), 2) for i in order}
    left = want
    while left and any(quota[i] < room[i] for i in order):
        for i in order:
            if left and quota[i] < room[i]:
                quota[i], left = quota[i] + 1, left - 1
    pairs: list[Pair] = []
    for i in order:
        if quota[i]:
            first, second = np.triu_indices(len(images[i]), 1)
            for k in rng.choice(room[i], quota[i], replace=False):
                pairs.append(((i, images[i][first[k]]), (i, images[i][second[k]]), True))
    return pairs


def _impostor(rng: np.random.Generator, images: dict[int, list[int]], want: int) -> list[Pair]:
    """Up to ``want`` distinct pairs of images of two different identities (lower identity first)."""
    flat = [(i, j) for i in sorted(images) for j in images[i]]
    room = impostor_room(images)
    if 2 * want >= room:  # few enough to list them all, and drawing would mostly hit used pairs
        every = [(a, b, False) for n, a in enumerate(flat) for b in flat[n + 1:] if a[0] != b[0]]
        return [every[k] for k in sorted(rng.choice(len(every), min(want, room), replace=False))]
    seen: set[tuple[Image, Image]] = set()
    pairs: list[Pair] = []
    while len(pairs) < want:  # uniform over impostor pairs; at most half are taken, so few draws are wasted
        a, b = (flat[k] for k in rng.integers(len(flat), size=2))
        key = (min(a, b), max(a, b))
        if a[0] != b[0] and key not in seen:
            seen.add(key)
            pairs.append((*key, False))
    return pairs


def _interleave(rng: np.random.Generator, groups: list[list]) -> list:
    """Interleave ``groups`` evenly, each in its own order: item j of a group of m sits at (j + offset) / m.

    One offset for all groups: groups of one size then take turns, in a random order in every turn."""
    keyed, offset = [], rng.random()
    for group in groups:
        for j, item in enumerate(group):
            keyed.append(((j + offset) / len(group), rng.random(), item))
    return [item for *_, item in sorted(keyed, key=lambda t: t[:2])]


def _spread(rng: np.random.Generator, groups: list[list]) -> list:
    """Each group shuffled, then the groups interleaved evenly (:func:`_interleave`)."""
    return _interleave(rng, [[group[k] for k in rng.permutation(len(group))] for group in groups])


def _encode(data: bytes, image: Image, resize: bool) -> bytes:
    """The image as the ``.bin`` stores it: 112x112 JPEG/PNG bytes (kept) or PNG (resized or re-encoded)."""
    decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    if decoded is None:
        raise PairsError(f"image {image[1]} of identity {image[0]} cannot be decoded")
    if decoded.shape[:2] == (IMAGE_SIZE, IMAGE_SIZE) and (data[:3] == JPEG_MAGIC or data[:8] == PNG_MAGIC):
        return data
    if decoded.shape[:2] != (IMAGE_SIZE, IMAGE_SIZE):
        if not resize:
            raise PairsError(f"image {image[1]} of identity {image[0]} is {decoded.shape[1]}x{decoded.shape[0]}; "
                             f"verification sets hold {IMAGE_SIZE}x{IMAGE_SIZE} aligned faces (add --resize)")
        decoded = cv2.resize(decoded, (IMAGE_SIZE, IMAGE_SIZE), interpolation=cv2.INTER_AREA)
    return encode_image(cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB))


def _read_images(shards: list[Path], where: dict[Image, tuple], resize: bool) -> dict[Image, bytes]:
    """The encoded ``.bin`` bytes of the images at ``where``, reading only the row groups that hold them."""
    groups: dict[tuple, set[Image]] = {}
    for image, location in where.items():
        groups.setdefault(location, set()).add(image)
    out: dict[Image, bytes] = {}
    for (s, g), wanted in sorted(groups.items()):
        with pq.ParquetFile(shards[s]) as parquet:
            table = parquet.read_row_group(g, columns=["image", "identity", "image_index"])
        data = table.column("image").combine_chunks().field("bytes").to_pylist()
        keys = zip(table.column("identity").to_pylist(), table.column("image_index").to_pylist(), strict=True)
        for row, key in enumerate(keys):
            if key in wanted and key not in out:
                out[key] = _encode(data[row], key, resize)
    return out


def _check_both_kinds(run_dir: Path, genuine: int, impostor: int) -> None:
    """A verification set needs genuine and impostor pairs (``allow_short`` may leave a kind with none)."""
    if genuine and impostor:
        return
    need = ("impostor pairs need two identities in a cell" if genuine
            else "genuine pairs need an identity with two images")
    raise PairsError(f"{run_dir}: {genuine} genuine and {impostor} impostor pairs: a verification set needs both "
                     f"kinds; {need} (fewer --cells make larger cells)")


def export_pairs(run_dir: str | Path, out_path: str | Path, cells: Sequence[str], pairs_per_cell: int,
                 seed: int = 0, *, allow_short: bool = False, overwrite: bool = False,
                 resize: bool = False, include_rejected: bool = False) -> dict:
    """Write balanced verification pairs of the finished run ``run_dir`` to ``out_path`` (see module doc).

    Returns the summary, which ``<out_path>.pairs.json`` holds too, with every pair in file order.
    ``allow_short`` takes what a cell has when it cannot give ``pairs_per_cell`` of a kind (else an error), but
    a set with no pair of one kind is always an error;
    ``overwrite`` replaces an existing output; ``resize`` resizes images that are not 112x112;
    ``include_rejected`` pairs rows a filter rejected too.
    """
    run_dir, out, cells = Path(run_dir), Path(out_path), list(cells)
    sidecar = sidecar_path(out)
    if pairs_per_cell < 1 or seed < 0:
        raise PairsError(f"pairs_per_cell must be >= 1 and seed >= 0 (got {pairs_per_cell}, {seed})")
    if len(set(cells)) != len(cells):
        raise PairsError(f"cells name a column twice: {cells}")
    for path in (out, sidecar):
        if path.exists() and (not overwrite or path.is_dir()):
            raise PairsError(f"{path} exists; add --overwrite to replace it" if not path.is_dir()
                             else f"{path} is a folder")
    shards, info = _shards(run_dir, allow_partial=False)
    images, cell_of, skipped = _scan(shards, cells, include_rejected)
    members: dict[tuple[str, ...], dict[int, list[int]]] = {}
    for identity in sorted(cell_of):
        members.setdefault(cell_of[identity], {})[identity] = sorted(images[identity])
    if not members:
        hint = "; rejected rows are left out: add --include-rejected to pair them too" if skipped["rejected"] else ""
        raise PairsError(f"{run_dir} has no accepted images (skipped: {skipped}){hint}")
    per_cell, genuine, impostor = {}, [], []
    for values in sorted(members):
        label, cell = _label(cells, values), members[values]
        rng = np.random.default_rng([seed, _digest(label)])
        same, other = _genuine(rng, cell, pairs_per_cell), _impostor(rng, cell, pairs_per_cell)
        count = {"identities": len(cell), "images": sum(map(len, cell.values()))}
        short = {"genuine": pairs_per_cell - len(same), "impostor": pairs_per_cell - len(other)}
        if any(short.values()) and not allow_short:
            raise PairsError(f"cell {label} has {count['identities']} identities with {count['images']} images: "
                             f"{genuine_room(cell)} genuine and {impostor_room(cell)} impostor pairs possible, "
                             f"{pairs_per_cell} of each asked (--allow-short takes what there is)")
        per_cell[label] = {"values": dict(zip(cells, values, strict=True)), **count, "genuine": len(same),
                           "impostor": len(other), "shortfall": short}
        genuine.append([(*p, label) for p in same])
        impostor.append([(*p, label) for p in other])
    if not any(genuine + impostor):
        raise PairsError(f"{run_dir}: no cell has two images to pair ({len(per_cell)} cells)")
    _check_both_kinds(run_dir, sum(map(len, genuine)), sum(map(len, impostor)))
    order = np.random.default_rng([seed, _digest("pair order")])
    # the kinds interleaved in their own order: an outer shuffle would undo the cells' turns
    pairs = _interleave(order, [g for g in (_spread(order, genuine), _spread(order, impostor)) if g])
    for k in np.flatnonzero(order.random(len(pairs) // 2) < 0.5):  # no strict genuine/impostor alternation
        pairs[2 * k], pairs[2 * k + 1] = pairs[2 * k + 1], pairs[2 * k]
    where = {image: images[image[0]][image[1]] for a, b, *_ in pairs for image in (a, b)}
    encoded = _read_images(shards, where, resize)
    sidecar.unlink(missing_ok=True)  # never a new .bin beside an old sidecar
    with LocalStore(out.parent).commit(out.name) as tmp:
        write_bin(tmp, [encoded[image] for a, b, *_ in pairs for image in (a, b)], [p[2] for p in pairs])
    summary = {
        "output": str(out), "pairs": len(pairs), "genuine": sum(p[2] for p in pairs),
        "impostor": sum(not p[2] for p in pairs), "bytes": out.stat().st_size, "seed": seed, "cells": cells,
        "pairs_per_cell": pairs_per_cell, "allow_short": allow_short, "resize": resize,
        "include_rejected": include_rejected, "per_cell": per_cell,
        "null_value": UNKNOWN, "unknown_identities": {c: sum(v[n] == UNKNOWN for v in cell_of.values())
                                                      for n, c in enumerate(cells)},
        "skipped": {k: v for k, v in skipped.items() if v}, "shards": len(shards), **info,
        "source": str(run_dir), "facefoundry_version": __version__,
    }
    listing = [{"first": list(a), "second": list(b), "issame": same, "cell": label} for a, b, same, label in pairs]
    text = json.dumps({**summary, "pair_list": listing}, indent=1, sort_keys=True) + "\n"
    atomic_write_bytes(sidecar, text.encode())
    return summary
