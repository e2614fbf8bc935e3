"""The real-face test photo: insightface's sample group photo (t1.jpg, 6 people), read from the
installed package; no face image is committed to this repository."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from PIL import Image


def group_photo_path() -> Path | None:
    spec = importlib.util.find_spec("insightface")  # locates the package without importing it
    for location in (spec.submodule_search_locations or []) if spec else []:
        path = Path(location) / "data" / "images" / "t1.jpg"
        if path.is_file():
            return path
    return None


GROUP_PHOTO = group_photo_path()
needs_photo = pytest.mark.skipif(
    GROUP_PHOTO is None, reason="insightface is not installed (its t1.jpg is the real-face test photo)"
)


def open_group_photo() -> Image.Image:
    """The group photo as an RGB PIL image."""
    return Image.open(GROUP_PHOTO).convert("RGB")
