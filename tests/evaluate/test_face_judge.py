"""The dlib filter's judge and decoder on real faces cut from insightface's group photo: one person filed under
two identities (any split), rows without an identity, and 16-bit / float images."""

from __future__ import annotations

import io
import logging
import warnings

import cv2
import numpy as np
import pytest
from facecrops import PERSON_A, PERSON_B, PERSON_C, crop, encode, more_views, unit, views
from PIL import Image, ImageFilter
from realfaces import needs_photo, open_group_photo

from facefoundry.faces.dlib_models import DlibFaceModel
from facefoundry.faces.image_decode import decode_image, decode_with_reason
from facefoundry.filters import face_filter
from facefoundry.filters.face_filter import (
    IDENTITY_CONFUSION,
    NO_IDENTITY,
    REASON_DOCS,
    REASONS,
    UNDECODABLE,
    FaceFilter,
)
from facefoundry.sections import DlibFilterConfig

pytestmark = needs_photo


@pytest.fixture(scope="module")
def model() -> DlibFaceModel:
    return DlibFaceModel("hog")


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    return open_group_photo()


@pytest.fixture(scope="module")
def person_a(photo) -> list[bytes]:
    """Nine different images of one real person."""
    extra = crop(photo, PERSON_A, margin=1.2, shift=0.1).transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return views(photo, PERSON_A) + more_views(photo, PERSON_A) + [encode(extra)]


def judge(model: DlibFaceModel, table, **kw) -> list[str | None]:
    filt = FaceFilter(DlibFilterConfig(mode="annotate", **kw))
    filt.model = model
    return filt.process(table).table.column("filter_reason").to_pylist()


def test_reasons_are_documented_in_decision_order():
    assert REASONS[0] == NO_IDENTITY and set(REASON_DOCS) == set(REASONS)
    doc = face_filter.__doc__
    positions = [doc.index(f"{k}. ``{r}``") for k, r in enumerate(REASONS, start=1)]  # numbered in this order
    assert positions == sorted(positions)


@pytest.mark.slow
@pytest.mark.parametrize("n0, n1", [(8, 1), (1, 8), (1, 1), (4, 4)])
def test_one_person_under_two_identities_keeps_the_better_supported(model, photo, person_a, n0, n1):
    """Identities 0 and 1 hold the same real person (split n0/n1), identity 2 someone else: the identity with
    fewer faces (on a tie identity 1, the higher index) loses all its faces; the other two keep all theirs."""
    other = views(photo, PERSON_C)
    images = person_a[:n0] + person_a[n0 : n0 + n1] + other
    reasons = judge(model, unit(images, [0] * n0 + [1] * n1 + [2] * len(other)))
    loser = 1 if n0 >= n1 else 0
    expected = [IDENTITY_CONFUSION if loser == 0 else None] * n0 + [IDENTITY_CONFUSION if loser == 1 else None] * n1
    assert reasons == expected + [None] * len(other)


@pytest.mark.slow
def test_a_row_without_identity_is_rejected_and_the_rest_judged(model, photo):
    """A null identity once turned every centroid into NaN and switched the confusion rule off for the unit."""
    a, c = views(photo, PERSON_A), views(photo, PERSON_C)
    images = a[:3] + [c[0]] + c[1:] + [encode(crop(photo, PERSON_B))]
    table = unit(images, [0] * 4 + [1] * (len(c) - 1) + [None])
    filt = FaceFilter(DlibFilterConfig(mode="drop"))
    filt.model = model
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "Mean of empty slice" or NaN comparisons
        out = filt.process(table)
    assert out.drops == {NO_IDENTITY: 1, IDENTITY_CONFUSION: 1}
    assert out.table.column("image_index").to_pylist() == [0, 1, 2, 4, 5, 6, 7]
    annotated = judge(model, table)
    assert annotated == [None] * 3 + [IDENTITY_CONFUSION] + [None] * (len(c) - 1) + [NO_IDENTITY]


def wide_encodings(face: Image.Image) -> dict[str, bytes]:
    """One real face stored as 16-bit greyscale PNG (I;16), 32-bit integer TIFF (I, 16-bit values), float TIFF
    (F, values in [0, 1]) and 48-bit RGB PNG."""
    grey = np.asarray(face.convert("L")).astype(np.uint16)
    rgb16 = np.asarray(face).astype(np.uint16) * 257
    ok, png48 = cv2.imencode(".png", np.ascontiguousarray(rgb16[:, :, ::-1]))
    assert ok
    return {
        "I;16": encode(Image.fromarray(grey * 257)),
        "I": encode(Image.fromarray((grey * 257).astype(np.int32)), "TIFF"),
        "F": encode(Image.fromarray((grey / 255.0).astype(np.float32)), "TIFF"),
        "RGB;16": png48.tobytes(),
    }


def test_sixteen_bit_and_float_faces_decode_to_their_eight_bit_pixels(photo):
    face = crop(photo, PERSON_A)
    grey = np.asarray(face.convert("L"))
    for mode, data in wide_encodings(face).items():
        opened = Image.open(io.BytesIO(data))
        assert opened.mode == (mode if mode != "RGB;16" else "RGB")
        pixels = decode_image({"bytes": data, "path": None})
        assert pixels is not None and pixels.dtype == np.uint8 and pixels.shape == (*grey.shape, 3), mode
        reference = np.asarray(face) if mode == "RGB;16" else np.repeat(grey[:, :, None], 3, axis=2)
        assert np.abs(pixels.astype(int) - reference).max() <= 1, mode
    eight_bit_ints = encode(Image.fromarray(grey.astype(np.int32)), "TIFF")  # mode I holding 0..255
    np.testing.assert_array_equal(decode_image(eight_bit_ints)[:, :, 0], grey)


def test_sixteen_bit_and_float_faces_are_judged_not_reported_as_no_face(model, photo):
    faces = [crop(photo, PERSON_A, margin=m) for m in (0.8, 1.0)]
    images = [data for face in faces for data in wide_encodings(face).values()]
    images.append(encode(faces[0].filter(ImageFilter.GaussianBlur(1.0)).convert("L")))  # an 8-bit control
    filt = FaceFilter(DlibFilterConfig(mode="annotate"))
    filt.model = model
    rows = filt.process(unit(images, [0] * len(images))).table.to_pylist()
    assert [r["filter_reason"] for r in rows] == [None] * len(images)
    assert all(r["face_count"] == 1 and r["judge_distance"] < 0.6 for r in rows)


def test_float_and_integer_images_without_an_eight_bit_meaning_are_undecodable(model, caplog):
    ramp = np.linspace(-1.0, 3.0, 64 * 64, dtype=np.float32).reshape(64, 64)
    floats = encode(Image.fromarray(ramp), "TIFF")
    huge = encode(Image.fromarray((ramp * 1e6).astype(np.int32)), "TIFF")
    nan = encode(Image.fromarray(np.full((64, 64), np.nan, np.float32)), "TIFF")
    assert "mode F" in decode_with_reason(floats)[1] and "[-1, 3]" in decode_with_reason(floats)[1]
    assert "mode I" in decode_with_reason(huge)[1] and "0..65535" in decode_with_reason(huge)[1]
    assert "NaN" in decode_with_reason(nan)[1]
    filt = FaceFilter(DlibFilterConfig(mode="annotate"))
    filt.model = model
    with caplog.at_level(logging.WARNING, logger="facefoundry.filters.face_filter"):
        out = filt.process(unit([floats, huge, nan], [0, 0, 1]))
    assert out.drops == {UNDECODABLE: 3}
    assert "3 undecodable image(s)" in caplog.text and "mode F image has pixel values in [-1, 3]" in caplog.text
