"""Tiny InsightFace-layout verification ``.bin`` files for tests, in the variants real files come in.

Images are flat colours whose RGB value spells an integer index, so a test ``embed`` can read the index back
from a pixel and look up a fixed embedding: the protocol then runs on embeddings the test chose. PNG keeps the
pixels exact. ``two_tone`` images differ left/right, so their horizontal flips have other indices.
"""

from __future__ import annotations

import os
import pickle
import struct
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from facefoundry.evaluate.benchmarks import encode_image

SIZE = 112


def colour(index: int) -> np.ndarray:
    return np.array([index & 255, (index >> 8) & 255, (index >> 16) & 255], dtype=np.uint8)


def flat(index: int, size: int = SIZE) -> np.ndarray:
    """A ``size`` x ``size`` RGB image of one colour spelling ``index``."""
    return np.broadcast_to(colour(index), (size, size, 3)).copy()


def two_tone(left: int, right: int, size: int = SIZE) -> np.ndarray:
    """Left half spells ``left``, right half ``right``: its horizontal flip reads as ``right``."""
    image = flat(left, size)
    image[:, size // 2:] = colour(right)
    return image


def index_of(images: np.ndarray) -> np.ndarray:
    """The index spelled by the top-left pixel of each image in a batch ``(n, h, w, 3)``."""
    px = images[:, 0, 0].astype(np.int64)
    return px[:, 0] | (px[:, 1] << 8) | (px[:, 2] << 16)


def table_embed(table: np.ndarray):
    """An ``embed`` callable: image -> ``table[index_of(image)]``; counts the images it saw in ``.seen``."""

    def embed(images: np.ndarray) -> np.ndarray:
        assert images.dtype == np.uint8 and images.shape[1:] == (SIZE, SIZE, 3)
        embed.seen += len(images)
        return table[index_of(images)]

    embed.seen = 0
    return embed


def encoded_flat(indices: Sequence[int]) -> list[bytes]:
    return [encode_image(flat(int(i))) for i in indices]


def pickle_plain(path: Path, bins: list, issame: list, protocol: int = 2) -> Path:
    """A ``.bin`` pickled the way third-party scripts do it: plain ``pickle.dump`` of the 2-tuple."""
    with open(path, "wb") as f:
        pickle.dump((bins, issame), f, protocol=protocol)
    return path


def python2_pickle(bins: Sequence[bytes], issame: Sequence[bool]) -> bytes:
    """The opcodes Python 2's ``cPickle.dump(..., protocol=2)`` writes for ``(list of str, list of bool)``.

    Python 2 ``str`` are byte strings (SHORT_BINSTRING / BINSTRING), which Python 3 reads as ``bytes`` only with
    ``encoding='bytes'``, as the original loader does.
    """
    out = bytearray(b"\x80\x02]q\x00(")  # PROTO 2, EMPTY_LIST, BINPUT 0, MARK
    for b in bins:
        out += (b"U" + bytes([len(b)]) if len(b) < 256 else b"T" + struct.pack("<i", len(b))) + b
    out += b"e]q\x01("  # APPENDS, EMPTY_LIST, BINPUT 1, MARK
    out += b"".join(b"\x88" if f else b"\x89" for f in issame)  # NEWTRUE / NEWFALSE
    out += b"e\x86q\x02."  # APPENDS, TUPLE2, BINPUT 2, STOP
    return bytes(out)


class RunsCommand:
    """Unpickling this runs ``touch <marker>``: the kind of payload a hostile ``.bin`` would carry."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))
