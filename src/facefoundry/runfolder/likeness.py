"""``facefoundry remove RUN --like FILE --threshold T``: which identities of a run look like a given face.

``FILE`` is an embedding (``.npy``: one vector in the run's identity space, the generator's conditioning space) or
a face image. An image is put in that space as the run's identity filter sees its own images: SCRFD finds the
largest face, it is aligned on its 5 landmarks and embedded by ``id_filter.encoder_model`` (the generator's
conditioning encoder); a run without an identity filter has no such encoder configured, so it needs the ``.npy``.

A match is an identity whose vector has cosine similarity ``>= T`` with the query (both L2-normalised, so raw-norm
spaces such as Vec2Face's compare by direction). The vectors are read one block at a time, so a run of 10^6
identities is matched without holding its identities file in memory. Only the labels and their cosines are
returned: the query itself is never stored.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from facefoundry.config import RunConfig
from facefoundry.dataset.storage import RunStore
from facefoundry.identities.store import IdentityVectors
from facefoundry.runfolder.removal import RemovalError

BLOCK = 65_536  # identity vectors compared at a time


def _unit(vector: np.ndarray, what: str) -> np.ndarray:
    vector = np.asarray(vector, np.float64).ravel()
    if not np.isfinite(vector).all():
        raise RemovalError(f"{what} holds NaN or inf")
    norm = float(np.linalg.norm(vector))
    if norm == 0.0:
        raise RemovalError(f"{what} is the zero vector: it has no direction to compare")
    return vector / norm


def load_embedding(path: Path, dim: int) -> np.ndarray:
    """The ``.npy`` embedding at ``path``, checked to be one finite, non-zero ``dim``-d vector; L2-normalised."""
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise RemovalError(f"{path}: not a readable .npy array ({exc})") from None
    if array.size != dim or array.squeeze().ndim > 1:
        raise RemovalError(f"{path}: holds shape {array.shape}, the run's identity vectors are {dim}-d (one vector "
                           "made by the generator's conditioning encoder)")
    return _unit(array, str(path))


def embed_face_image(path: Path, cfg: RunConfig, dim: int) -> np.ndarray:
    """The largest face of the image at ``path``, embedded by the run's identity-filter encoder; L2-normalised."""
    if cfg.id_filter is None:
        raise RemovalError(f"{path}: this run has no identity filter, so no encoder of its identity space is "
                           "configured; give the face's embedding by the generator's conditioning encoder as a .npy "
                           "file instead")
    from facefoundry.faces.alignment import AlignmentError, align
    from facefoundry.faces.image_decode import decode_with_reason
    from facefoundry.filters.identity_filter import IdentityFilter

    image, why = decode_with_reason(path.read_bytes())
    if image is None:
        raise RemovalError(f"{path}: not an image this tool can decode ({why})")
    faces = IdentityFilter(cfg.id_filter, np.ones((1, dim), np.float32))  # vectors: only their size is used here
    faces.setup()
    boxes, points = faces.detector.detect_batch([image])[0]
    if len(boxes) == 0:
        raise RemovalError(f"{path}: no face found (SCRFD at id_filter.det_thresh {cfg.id_filter.det_thresh}); give "
                           "a photo where the face is clearly visible, or its embedding as a .npy file")
    largest = int(np.argmax((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])))
    try:
        crop = align(image, points[largest])
    except AlignmentError as exc:
        raise RemovalError(f"{path}: the face cannot be aligned ({exc})") from None
    return _unit(faces.embedder.embed(crop[None])[0], f"the embedding of {path}")


def query_vector(path: Path, cfg: RunConfig, dim: int) -> tuple[np.ndarray, str]:
    """The L2-normalised query of ``--like path``, and what it was (``embedding`` or ``image``)."""
    if not path.is_file():
        raise RemovalError(f"--like {path}: no such file (give a face image or a .npy embedding)")
    if path.suffix.lower() == ".npy":
        return load_embedding(path, dim), "embedding"
    return embed_face_image(path, cfg, dim), "image"


def match_identities(store: RunStore, query: np.ndarray, threshold: float) -> list[tuple[int, float]]:
    """``(label, cosine)`` of every identity whose vector has cosine ``>= threshold`` with the unit ``query``,
    most similar first."""
    vectors = IdentityVectors(store)
    found: list[tuple[int, float]] = []
    for start in range(0, len(vectors), BLOCK):
        block = vectors.rows(start, min(start + BLOCK, len(vectors))).astype(np.float64)
        cosines = block @ query / np.maximum(np.linalg.norm(block, axis=1), 1e-12)
        found += [(start + int(i), float(cosines[i])) for i in np.flatnonzero(cosines >= threshold)]
    return sorted(found, key=lambda m: (-m[1], m[0]))


def identity_dim(store: RunStore) -> int:
    """The size of the run's identity vectors."""
    vectors = IdentityVectors(store)
    return int(vectors.rows(0, 1).shape[1])
