"""Procedurally drawn synthetic identities for training tests, written through the project's shard writer.

An identity is a 4 x 4 grid of random colours with a random bright disc on it; each of its images shifts the
pattern by a few pixels, scales its brightness and adds noise, so images of one identity are alike and
identities are clearly distinct. Held-out identities (other ids) are drawn the same way.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow as pa
from PIL import Image

from facefoundry.dataset.manifest import plan_units
from facefoundry.dataset.schema import image_struct
from facefoundry.dataset.shards import write_unit

SIZE = 112


def identity_pattern(identity: int) -> np.ndarray:
    """The identity's clean ``(112, 112, 3)`` float pattern in [0, 255]."""
    rng = np.random.default_rng([7, identity])
    grid = rng.integers(0, 256, (4, 4, 3)).astype(np.float64)
    pattern = np.kron(grid, np.ones((SIZE // 4, SIZE // 4, 1)))
    yy, xx = np.mgrid[:SIZE, :SIZE]
    cy, cx, r = rng.uniform(30, 82), rng.uniform(30, 82), rng.uniform(12, 24)
    pattern[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = rng.integers(0, 256, 3)
    return pattern


def draw(identity: int, index: int) -> np.ndarray:
    """One ``uint8`` RGB image of ``identity``: shifted, brightness-jittered, noisy."""
    rng = np.random.default_rng([11, identity, index])
    img = np.roll(identity_pattern(identity), tuple(rng.integers(-5, 6, 2)), axis=(0, 1))
    img = img * rng.uniform(0.85, 1.15) + rng.normal(0.0, 8.0, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def write_trainset(out: Path, identities: int = 8, per_identity: int = 12, per_unit: int = 4,
                   rejected_identity: int | None = None) -> Path:
    """A run-like folder (``data/`` shards + ``manifests/``) of ``identities`` synthetic identities.

    Every identity also has one rejected row (``filter_reason='blur'``, pure noise); ``rejected_identity``,
    when given, has all of its rows rejected, so it must not become a class.
    """
    for unit in plan_units(identities, per_unit):
        images, paths, ids, idx, reasons = [], [], [], [], []
        for identity in range(unit.start, unit.stop):
            for index in range(per_identity + 1):
                noise = index == per_identity
                image = np.random.default_rng([13, identity]).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8) \
                    if noise else draw(identity, index)
                images.append(png(image))
                paths.append(f"{identity:07d}_{index:04d}.png")
                ids.append(identity)
                idx.append(index)
                reasons.append("blur" if noise or identity == rejected_identity else None)
        table = pa.table({
            "image": image_struct(images, paths),
            "identity": pa.array(ids, pa.int64()),
            "image_index": pa.array(idx, pa.int32()),
            "seed": pa.array(np.arange(len(ids)), pa.int64()),
            "filter_reason": pa.array(reasons, pa.string()),
        })
        write_unit(out, unit, table, generated=len(ids), drops={}, config_hash="trainset",
                   file_metadata={"run_id": "trainset"})
    return out


def held_out_pairs(first_identity: int, identities: int = 6, per_identity: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """(images ``(2 * pairs, 112, 112, 3)``, issame) for identities never trained on: every same pair of each
    identity and as many different pairs, interleaved two images per pair like the benchmark files."""
    ids = range(first_identity, first_identity + identities)
    imgs = {i: [draw(i, j) for j in range(per_identity)] for i in ids}
    rng = np.random.default_rng(first_identity)
    pairs, same = [], []
    for i in ids:
        for a in range(per_identity):
            for b in range(a + 1, per_identity):
                pairs.append((imgs[i][a], imgs[i][b]))
                same.append(True)
                j = int(rng.choice([k for k in ids if k != i]))
                pairs.append((imgs[i][a], imgs[j][int(rng.integers(per_identity))]))
                same.append(False)
    return np.stack([x for pair in pairs for x in pair]), np.array(same)
