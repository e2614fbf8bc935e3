"""Our 5-point alignment against InsightFace's ``norm_crop`` on the real group photo (insightface's t1.jpg)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from realfaces import GROUP_PHOTO

from facefoundry.filters import alignment
from facefoundry.filters.alignment import (
    ARCFACE_TEMPLATE,
    AlignmentError,
    align,
    align_dlib,
    align_many,
    arcface_template,
    dlib_to_arcface,
    estimate_transform,
    umeyama,
)

needs_insightface = pytest.mark.skipif(
    GROUP_PHOTO is None, reason="insightface is not installed (reference norm_crop and its t1.jpg photo)"
)
# skimage deprecates SimilarityTransform.estimate, which insightface's estimate_norm still calls.
quiet = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return np.asarray(Image.open(GROUP_PHOTO).convert("RGB"))


@pytest.fixture(scope="module")
def faces(photo) -> list[np.ndarray]:
    """ArcFace-ordered 5 points of the six people, from dlib's 5-point landmarks (approximate but plausible)."""
    from facefoundry.filters.dlib_models import DlibFaceModel

    model = DlibFaceModel("hog")
    dets = model.detect(photo, upsample=1)
    assert len(dets) == 6
    return [dlib_to_arcface(model.landmarks(photo, d)) for d in dets]


def test_template_and_scaled_variants():
    assert ARCFACE_TEMPLATE.dtype == np.float32 and ARCFACE_TEMPLATE.shape == (5, 2)
    np.testing.assert_array_equal(arcface_template(112), ARCFACE_TEMPLATE.astype(np.float64))
    np.testing.assert_allclose(arcface_template(224), ARCFACE_TEMPLATE * 2, rtol=1e-7)
    t128 = arcface_template(128)  # 128 variant: same scale, shifted 8 px right
    np.testing.assert_allclose(t128[:, 0], ARCFACE_TEMPLATE[:, 0] + 8, rtol=1e-7)
    np.testing.assert_allclose(t128[:, 1], ARCFACE_TEMPLATE[:, 1], rtol=1e-7)
    np.testing.assert_allclose(arcface_template(256), t128 * 2, rtol=1e-6)
    for bad in (0, 100, 150):
        with pytest.raises(ValueError, match="multiple of 112 or 128"):
            arcface_template(bad)


def test_umeyama_recovers_a_similarity_and_never_reflects():
    rng = np.random.default_rng(0)
    src = rng.uniform(0, 200, (5, 2))
    angle, scale, shift = 0.7, 1.8, np.array([12.0, -40.0])
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    dst = scale * src @ rot.T + shift
    np.testing.assert_allclose(umeyama(src, dst)[:2], np.hstack([scale * rot, shift[:, None]]), atol=1e-10)
    mirrored = umeyama(src, src * [-1, 1])  # the best proper similarity for a mirror image is no reflection
    assert np.linalg.det(mirrored[:2, :2]) > 0
    with pytest.raises(AlignmentError, match="coincide"):
        umeyama(np.ones((5, 2)), dst)
    with pytest.raises(AlignmentError, match="NaN"):
        umeyama(src * np.nan, dst)
    with pytest.raises(AlignmentError, match="shape"):
        estimate_transform(np.zeros((4, 2)))


def test_template_points_give_the_identity_crop():
    image = np.random.default_rng(1).integers(0, 256, (140, 150, 3), dtype=np.uint8)
    np.testing.assert_allclose(estimate_transform(ARCFACE_TEMPLATE), np.eye(3)[:2], atol=1e-9)
    np.testing.assert_array_equal(align(image, ARCFACE_TEMPLATE), image[:112, :112])
    np.testing.assert_array_equal(align(image[:, :, ::-1], ARCFACE_TEMPLATE), image[:112, :112, ::-1])  # a view
    grey = align(image[:, :, 0], ARCFACE_TEMPLATE, size=224)
    assert grey.shape == (224, 224) and grey.dtype == np.uint8


@needs_insightface
@quiet
@pytest.mark.parametrize("size", [112, 128, 224])
def test_align_equals_insightface_norm_crop(photo, faces, size):
    from insightface.utils.face_align import estimate_norm, norm_crop

    bgr = np.ascontiguousarray(photo[:, :, ::-1])
    for kps in faces:
        np.testing.assert_allclose(estimate_transform(kps, size), estimate_norm(kps, size), atol=2e-4)
        ours = align(photo, kps, size)
        theirs = norm_crop(bgr, kps, image_size=size)[:, :, ::-1]
        assert ours.shape == (size, size, 3) and ours.dtype == np.uint8
        diff = np.abs(ours.astype(int) - theirs.astype(int))
        assert diff.max() <= 1, f"max grey-level difference {diff.max()}"
        assert (diff > 0).mean() < 0.01
    crops = align_many(photo, np.stack(faces), size)
    assert crops.shape == (len(faces), size, size, 3)
    np.testing.assert_array_equal(crops[0], align(photo, faces[0], size))


@needs_insightface
def test_dlib_points_are_approximate_arcface_points(photo, faces):
    from facefoundry.filters.dlib_models import DlibFaceModel

    model = DlibFaceModel("hog")
    det = model.detect(photo, upsample=1)[0]
    points = model.landmarks(photo, det)
    kps = dlib_to_arcface(points)
    assert kps[0, 0] < kps[1, 0] and kps[3, 0] < kps[4, 0]  # image-left before image-right
    assert kps[2, 1] > kps[:2, 1].max() and kps[3:, 1].min() > kps[2, 1]  # eyes, then nose, then mouth
    crop3 = align_dlib(photo, points).astype(int)
    crop5 = align(photo, kps).astype(int)
    assert np.abs(crop3 - crop5).mean() < 8  # two approximations of the same crop
    moved = np.c_[kps, np.ones(5)] @ estimate_transform(kps).T
    np.testing.assert_allclose(moved[:3], ARCFACE_TEMPLATE[:3], atol=4.0)  # eyes and nose land on the template
    assert alignment.DLIB_ARCFACE_ROWS == (0, 1, 2)
