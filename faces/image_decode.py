"""Decode an image cell to 8-bit RGB, scaling 16-bit and float pixels instead of clipping them.

``PIL.Image.convert("RGB")`` clips the values of 16-bit (``I;16*``), 32-bit integer (``I``) and float
(``F``) images to 0..255, so a 16-bit photo turns almost white and a float photo in [0, 1] black: a face
filter then reports such rows as ``no_face``. Here those modes are scaled to 8 bits:

- ``I;16``, ``I;16L``, ``I;16B``, ``I;16N`` (e.g. 16-bit greyscale PNG): ``round(v * 255 / 65535)``;
- ``I`` (32-bit integer, e.g. TIFF): read as 8-bit when every value is in 0..255, as 16-bit when every
  value is in 0..65535; other ranges have no defined 8-bit scale and are refused;
- ``F`` (32-bit float, e.g. TIFF): ``v * 255`` when every value is in [0, 1] (the float-image convention),
  as 8-bit when in [0, 255]; non-finite or other ranges are refused.

Greyscale results are repeated into three channels. Every other mode goes through ``convert("RGB")``
(16-bit RGB/RGBA PNGs already decode to 8 bits per channel in Pillow; alpha is dropped). A refused image
is reported with its mode and value range (:func:`decode_with_reason`), never as a blank picture.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
WIDE_MODES = (*SIXTEEN_BIT_MODES, "I", "F")  # modes whose values convert("RGB") would clip


class UndecodableImage(ValueError):
    """The cell holds no image, its bytes do not decode, or its pixel values have no 8-bit meaning."""


def _eight_bit_scale(mode: str, values: np.ndarray) -> float:
    """Factor that maps ``values`` of a wide ``mode`` onto 0..255; :class:`UndecodableImage` if none fits."""
    if mode in SIXTEEN_BIT_MODES:
        return 255.0 / 65535.0
    if not np.isfinite(values).all():
        raise UndecodableImage(f"mode {mode} image has NaN or infinite pixel values")
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if mode == "I" and low >= 0 and high <= 65535:
        return 1.0 if high <= 255 else 255.0 / 65535.0
    if mode == "F" and low >= 0 and high <= 255:
        return 255.0 if high <= 1.0 else 1.0
    expected = "0..255 (8-bit) or 0..65535 (16-bit)" if mode == "I" else "[0, 1] or [0, 255]"
    raise UndecodableImage(
        f"mode {mode} image has pixel values in [{low:g}, {high:g}], outside {expected}; store 8- or 16-bit images"
    )


def to_rgb8(image: Image.Image) -> np.ndarray:
    """``H x W x 3`` uint8 RGB pixels of an open PIL image, wide modes scaled (see the module docstring)."""
    if image.mode not in WIDE_MODES:
        return np.ascontiguousarray(np.asarray(image.convert("RGB"), dtype=np.uint8))
    values = np.asarray(image).astype(np.float64)
    if values.ndim != 2:
        raise UndecodableImage(f"mode {image.mode} image has shape {values.shape}, expected H x W")
    grey = np.clip(np.rint(values * _eight_bit_scale(image.mode, values)), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(np.repeat(grey[:, :, None], 3, axis=2))


def _from_array(array: np.ndarray) -> np.ndarray:
    """RGB uint8 pixels of an already decoded image: ``H x W x 3`` (or ``x 4``, alpha dropped) uint8, or an
    ``H x W`` grey image (8-bit, 16-bit or float, scaled like a decoded file's)."""
    if array.ndim == 3 and array.shape[2] in (3, 4) and array.dtype == np.uint8:
        return np.ascontiguousarray(array[:, :, :3])
    if array.ndim == 2 and array.dtype in (np.uint8, np.uint16, np.int32, np.float32):
        return to_rgb8(Image.fromarray(array))
    raise UndecodableImage(f"array of shape {array.shape} and dtype {array.dtype}; expected H x W x 3 uint8 RGB "
                           "(or H x W grey)")


def decode_with_reason(value: object) -> tuple[np.ndarray | None, str | None]:
    """``(RGB uint8 array, None)`` for an image cell (HF Image struct ``{bytes, path}``, raw bytes, or a numpy
    array of pixels), or ``(None, why)`` when it cannot be decoded; never raises for bad data."""
    if isinstance(value, np.ndarray):
        try:
            return _from_array(value), None
        except UndecodableImage as exc:
            return None, str(exc)
    data, path = (value.get("bytes"), value.get("path")) if isinstance(value, dict) else (value, None)
    try:
        if data is not None:
            image = Image.open(io.BytesIO(data))
        elif path and Path(path).is_file():
            image = Image.open(path)
        else:
            return None, "no image bytes and no readable file at its path"
        with image:
            return to_rgb8(image), None
    except UndecodableImage as exc:
        return None, str(exc)
    except Exception as exc:  # any decoder failure is a per-row reason, never a failed unit
        return None, f"{type(exc).__name__}: {exc}"


def decode_image(value: object) -> np.ndarray | None:
    """RGB uint8 array of an image cell (HF Image struct ``{bytes, path}``, raw bytes or a numpy array of
    pixels); None if it cannot be decoded (:func:`decode_with_reason` says why)."""
    return decode_with_reason(value)[0]
