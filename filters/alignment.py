"""Five-point face alignment to the ArcFace template (our own implementation of InsightFace's ``norm_crop``).

Landmark order is ArcFace's (the order SCRFD emits its 5 keypoints), in image coordinates:
``0`` left eye (smaller x in a frontal face), ``1`` right eye, ``2`` nose tip, ``3`` left mouth corner,
``4`` right mouth corner. :data:`ARCFACE_TEMPLATE` holds their positions in a 112x112 crop.

The transform is the least-squares similarity (rotation, uniform scale, translation; no reflection) that maps
the landmarks onto the template, estimated in closed form (Umeyama 1991); the crop is sampled with
``cv2.warpAffine`` (bilinear, constant black border), as ``insightface.utils.face_align.norm_crop`` does. Other
crop sizes scale the template as InsightFace does: a multiple of 112 scales it by ``size / 112``; otherwise a
multiple of 128 scales it by ``size / 128`` and shifts x by ``8 * size / 128`` (the "128" variant).

dlib's 5-point predictor (:mod:`facefoundry.filters.dlib_models`) finds eye corners and the base of the nose,
not eye centres, nose tip and mouth corners, so it cannot reproduce the ArcFace template exactly.
:func:`dlib_to_arcface` gives an *approximate* substitute: eye centres are the means of each eye's two
corners, the nose base stands in for the nose tip, and the two mouth corners are predicted from the template
by the similarity fitted on those three points. Crops aligned from SCRFD's keypoints are the reference; crops
aligned from dlib's points sit a few pixels off (the nose base lies below the tip) and should only feed models
that tolerate it, or be compared with each other.
"""

from __future__ import annotations

import cv2
import numpy as np

# InsightFace's arcface_dst: 5 points in a 112x112 crop (float32 there; kept identical here).
ARCFACE_TEMPLATE = np.array(
    [
        [38.2946, 51.6963],  # left eye
        [73.5318, 51.5014],  # right eye
        [56.0252, 71.7366],  # nose tip
        [41.5493, 92.3655],  # left mouth corner
        [70.7299, 92.2041],  # right mouth corner
    ],
    dtype=np.float32,
)
KEYPOINT_ORDER = ("left_eye", "right_eye", "nose_tip", "left_mouth", "right_mouth")
DLIB_ARCFACE_ROWS = (0, 1, 2)  # template rows dlib's points can stand for: eye centres and (approximately) nose


class AlignmentError(ValueError):
    """Landmarks that cannot define a similarity transform (wrong shape, non-finite or degenerate)."""


def arcface_template(size: int = 112) -> np.ndarray:
    """``(5, 2)`` float64 template for a ``size`` x ``size`` crop, scaled as InsightFace's ``estimate_norm``."""
    if size > 0 and size % 112 == 0:
        ratio, shift_x = size / 112.0, 0.0
    elif size > 0 and size % 128 == 0:
        ratio = size / 128.0
        shift_x = 8.0 * ratio
    else:
        raise ValueError(f"crop size must be a positive multiple of 112 or 128, got {size}")
    # Scale in float32 as InsightFace does, so that both give the same template to the last bit.
    template = ARCFACE_TEMPLATE * np.float32(ratio)
    template[:, 0] += np.float32(shift_x)
    return template.astype(np.float64)


def umeyama(src: np.ndarray, dst: np.ndarray, estimate_scale: bool = True) -> np.ndarray:
    """Least-squares similarity ``T`` (``(d+1, d+1)`` homogeneous, float64) with ``dst ~ T @ src``.

    Umeyama, "Least-squares estimation of transformation parameters between two point patterns", PAMI 1991:
    rotation from the SVD of the cross-covariance with the sign fix that excludes reflections (eq. 39-43),
    scale ``trace(D S) / var(src)`` (eq. 42), translation from the means (eq. 41).
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    if src.ndim != 2 or src.shape != dst.shape or src.shape[0] < 2:
        raise AlignmentError(f"need two (N, d) point sets of equal shape, N >= 2; got {src.shape} and {dst.shape}")
    if not (np.isfinite(src).all() and np.isfinite(dst).all()):
        raise AlignmentError("landmarks contain NaN or infinite values")
    n, dim = src.shape
    src_mean, dst_mean = src.mean(axis=0), dst.mean(axis=0)
    src_c, dst_c = src - src_mean, dst - dst_mean
    src_var = (src_c**2).sum() / n
    cov = dst_c.T @ src_c / n
    u, s, vt = np.linalg.svd(cov)
    if src_var <= 1e-12 or s.max() <= 1e-12 * max(1.0, src_var):
        raise AlignmentError("degenerate landmarks: all points coincide")
    sign = np.ones(dim)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:  # the best orthogonal fit is a reflection: flip the weakest axis
        sign[-1] = -1.0
    rotation = u @ np.diag(sign) @ vt
    scale = float((s * sign).sum() / src_var) if estimate_scale else 1.0
    out = np.eye(dim + 1)
    out[:dim, :dim] = scale * rotation
    out[:dim, dim] = dst_mean - scale * rotation @ src_mean
    return out


def _check_points(points: np.ndarray, count: int, what: str) -> np.ndarray:
    pts = np.asarray(points, dtype=np.float64)
    if pts.shape != (count, 2):
        raise AlignmentError(f"{what} must have shape ({count}, 2), got {pts.shape}")
    return pts


def estimate_transform(kps: np.ndarray, size: int = 112) -> np.ndarray:
    """``(2, 3)`` float64 affine matrix mapping image coordinates of ArcFace-ordered ``kps`` into the crop."""
    return umeyama(_check_points(kps, 5, "kps"), arcface_template(size))[:2]


def warp(image: np.ndarray, matrix: np.ndarray, size: int) -> np.ndarray:
    """``size`` x ``size`` crop of ``image`` under the ``(2, 3)`` ``matrix`` (bilinear, black border)."""
    image = np.ascontiguousarray(image)  # cv2 rejects views with negative strides (e.g. BGR<->RGB flips)
    if image.ndim not in (2, 3) or image.size == 0:
        raise ValueError(f"image must be a non-empty H x W or H x W x C array, got shape {image.shape}")
    return cv2.warpAffine(
        image, np.asarray(matrix, dtype=np.float64), (size, size),
        flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0.0,
    )  # fmt: skip


def align(image: np.ndarray, kps: np.ndarray, size: int = 112) -> np.ndarray:
    """Aligned ``(size, size, C)`` crop (dtype of ``image``) for ArcFace-ordered ``kps`` ``(5, 2)``.

    Channel order is kept: pass RGB, get RGB. Equal to ``norm_crop(image, kps, size)`` within 1 grey level
    (InsightFace estimates the transform partly in float32, we in float64).
    """
    return warp(image, estimate_transform(kps, size), size)


def align_many(image: np.ndarray, kps: np.ndarray, size: int = 112) -> np.ndarray:
    """``(N, size, size, C)`` crops of the ``N`` faces with keypoints ``kps`` ``(N, 5, 2)`` in one image."""
    kps = np.asarray(kps, dtype=np.float64)
    if kps.ndim != 3 or kps.shape[1:] != (5, 2):
        raise AlignmentError(f"kps must have shape (N, 5, 2), got {kps.shape}")
    channels = () if np.ndim(image) == 2 else (np.shape(image)[2],)
    out = np.zeros((len(kps), size, size, *channels), dtype=np.asarray(image).dtype)
    for i, face in enumerate(kps):
        out[i] = align(image, face, size)
    return out


def dlib_to_arcface(points: np.ndarray) -> np.ndarray:
    """Approximate ArcFace-ordered ``(5, 2)`` keypoints from dlib's 5 points (``dlib_models.LANDMARK_ORDER``).

    Eyes: midpoints of each eye's outer and inner corner (dlib's points 2, 3 are the image-left eye = ArcFace's
    left eye). Nose: dlib's nose base, standing in for the nose tip. Mouth corners: not observed by dlib; they are
    the template's mouth corners mapped back through the similarity fitted on the three points above. Approximate
    by construction (see the module docstring).
    """
    pts = _check_points(points, 5, "dlib points")
    three = np.stack([(pts[2] + pts[3]) / 2, (pts[0] + pts[1]) / 2, pts[4]])
    template = ARCFACE_TEMPLATE.astype(np.float64)
    to_image = umeyama(template[list(DLIB_ARCFACE_ROWS)], three)
    mouth = template[3:] @ to_image[:2, :2].T + to_image[:2, 2]
    return np.concatenate([three, mouth]).astype(np.float32)


def align_dlib(image: np.ndarray, points: np.ndarray, size: int = 112) -> np.ndarray:
    """Approximate ArcFace crop from dlib's 5 points: similarity fitted on eye centres + nose (3 points)."""
    pts = _check_points(points, 5, "dlib points")
    three = np.stack([(pts[2] + pts[3]) / 2, (pts[0] + pts[1]) / 2, pts[4]])
    matrix = umeyama(three, arcface_template(size)[list(DLIB_ARCFACE_ROWS)])[:2]
    return warp(image, matrix, size)
