"""Per-person images cut from the real group photo (insightface's t1.jpg) and units built from them, for the
dlib filter's tests. Boxes are dlib HOG detections (upsample 0) of three of the six people."""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
from PIL import Image, ImageFilter

IMAGE_TYPE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
PERSON_A = (65, 284, 169, 388)
PERSON_B = (734, 365, 837, 469)
PERSON_C = (1114, 284, 1217, 388)


def encode(image: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kw)
    return buf.getvalue()


def crop(photo: Image.Image, box, margin: float = 0.8, shift: float = 0.0) -> Image.Image:
    """``box`` widened by ``margin`` of its size on every side and moved right by ``shift`` of its width."""
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    dx = shift * w
    return photo.crop(
        (int(x0 - margin * w + dx), int(y0 - margin * h), int(x1 + margin * w + dx), int(y1 + margin * h))
    )


def views(photo: Image.Image, box) -> list[bytes]:
    """Several views of one person: two crops, a flip, a blur and a JPEG re-encode."""
    base = crop(photo, box)
    return [
        encode(base),
        encode(crop(photo, box, margin=1.1, shift=0.15)),
        encode(base.transpose(Image.Transpose.FLIP_LEFT_RIGHT)),
        encode(base.filter(ImageFilter.GaussianBlur(1.2))),
        encode(base, "JPEG", quality=50),
    ]


def more_views(photo: Image.Image, box) -> list[bytes]:
    """Three further views of the same person (other crops, a sharpen), for identities of eight images."""
    return [
        encode(crop(photo, box, margin=0.9, shift=-0.1)),
        encode(crop(photo, box, margin=1.0).filter(ImageFilter.SHARPEN)),
        encode(crop(photo, box, margin=0.7, shift=0.05), "JPEG", quality=80),
    ]


def unit(images: list[bytes | None], identities: list[int | None]) -> pa.Table:
    """A work unit's input table: HF image structs, ``identity`` (nulls allowed), ``image_index`` and ``seed``."""
    n = len(images)
    return pa.table(
        {
            "image": pa.array([{"bytes": b, "path": f"{i}.png"} for i, b in enumerate(images)], IMAGE_TYPE),
            "identity": pa.array(identities, pa.int64()),
            "image_index": pa.array(range(n), pa.int32()),
            "seed": pa.array(range(100, 100 + n), pa.int64()),
        }
    )


def noise(seed: int, size: int = 160) -> bytes:
    rng = np.random.default_rng(seed)
    return encode(Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)))
