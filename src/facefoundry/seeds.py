"""Seed derivation. Every random draw in a run derives from (run seed, purpose, indices) by hashing,
never from batch position or worker order, so any subset of a run can be regenerated exactly."""

from __future__ import annotations

import hashlib

import numpy as np

_MASK63 = (1 << 63) - 1


def derive_seed(run_seed: int, purpose: str, *indices: int) -> int:
    """A 63-bit seed for ``purpose`` at ``indices`` (stable across Python versions and machines)."""
    key = ":".join([str(int(run_seed)), purpose, *(str(int(i)) for i in indices)]).encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") & _MASK63


def image_seed(run_seed: int, identity: int, image_index: int) -> int:
    """The seed of image ``image_index`` of identity ``identity``."""
    return derive_seed(run_seed, "image", identity, image_index)


def image_seeds(run_seed: int, identities: np.ndarray, image_indices: np.ndarray) -> np.ndarray:
    return np.array(
        [image_seed(run_seed, int(i), int(j)) for i, j in zip(identities, image_indices, strict=True)],
        dtype=np.int64,
    )
