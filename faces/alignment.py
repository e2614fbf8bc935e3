"""Five-point face alignment to the ArcFace template (our own implementation of InsightFace's ``norm_crop``).

Landmark order is ArcFace's (the order SCRFD emits its 5 keypoints), in image coordinates:
``0`` left eye (smaller x in a frontal face), ``1`` right eye, ``2`` nose tip, ``3`` left mouth corner,
``4`` right mouth corner. :data:`ARCFACE_TEMPLATE` holds their positions in a 112x112 crop.

The transform is the least-squares similarity (rotation, uniform scale, translation; no reflection) that maps
the landmarks onto the template, estimated in closed form (Umeyama 1991); the crop is sampled with
``cv2.warpAffine`` (bilinear, constant black border), as ``insightface.utils.face_align.norm_crop`` does. Other
crop sizes scale the template as InsightFace does: a multiple of 112 scales it by ``size / 112``; otherwise a
multiple of 128 scales it by ``size / 128`` and shifts x by ``8 * size / 128`` (the "128" variant).

dlib's 5-point predictor (:mod:`facefoundry.faces.dlib_models`) finds eye corners and the base of the nose,
not eye centres, nose tip and mouth corners, so it cannot reproduce the ArcFace template exactly.
:data:`DLIB_TEMPLATE` holds where dlib's five points sit, on average, in a 112x112 crop aligned on the ArcFace
points of the same face; :func:`dlib_to_arcface` maps a face's dlib points onto it (a similarity) and returns the
ArcFace template carried back into the image, and :func:`align_dlib` is ``align(image, dlib_to_arcface(points))``.
The reference ArcFace points are derived from dlib's 68-point model (:func:`arcface_from_dlib68`: eye centres =
means of the six eye-contour points, nose tip = point 30, mouth corners = points 48 and 54), fitted with
:func:`fit_dlib_template` on the real faces insightface and scikit-image ship (8 people, each also mirrored).
Held out one person at a time, the reference mouth corners land 4.9 px (max 14.9) from where a crop aligned on
the reference points puts them, the eyes 2.4 px (max 5.0), the nose 3.0 px (max 8.1), in a 112 crop; the earlier
eyes-and-nose mapping gave 8.4 (max 12.9), 4.1 and 5.5 px. The rest is the face's own shape: mouth width and height
are not observable from eye corners and nose base. Figures and method: ``docs/filters.md``; the tests re-measure
them.
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
# Mean position of dlib's 5 points (dlib_models.LANDMARK_ORDER) in 112x112 crops aligned on the ArcFace points of
# the same faces (derived from dlib's 68 points): fit_dlib_template on 16 real faces (see the module docstring).
DLIB_TEMPLATE = np.array(
    [
        [79.13, 52.74],  # outer corner of the image-right eye
        [66.02, 53.39],  # inner corner of the image-right eye
        [32.73, 52.88],  # outer corner of the image-left eye
        [45.82, 53.51],  # inner corner of the image-left eye
        [56.09, 81.73],  # base of the nose
    ]
)


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


def _apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    return points @ matrix[:2, :2].T + matrix[:2, 2]


def dlib_to_arcface(points: np.ndarray, template: np.ndarray = DLIB_TEMPLATE) -> np.ndarray:
    """ArcFace-ordered ``(5, 2)`` keypoints predicted from dlib's 5 points (``dlib_models.LANDMARK_ORDER``).

    The similarity that maps ``points`` onto ``template`` (dlib's points in a 112 crop, :data:`DLIB_TEMPLATE`)
    is inverted and applied to :data:`ARCFACE_TEMPLATE`. The five results are an exact similarity image of the
    template, so :func:`align` on them gives the crop that puts dlib's points on ``template``. Measured error:
    module docstring.
    """
    pts = _check_points(points, 5, "dlib points")
    to_crop = umeyama(pts, _check_points(template, 5, "dlib template"))
    return _apply(np.linalg.inv(to_crop), ARCFACE_TEMPLATE.astype(np.float64)).astype(np.float32)


def align_dlib(image: np.ndarray, points: np.ndarray, size: int = 112) -> np.ndarray:
    """ArcFace-style crop from dlib's 5 points: ``align(image, dlib_to_arcface(points), size)``."""
    return align(image, dlib_to_arcface(points), size)


def arcface_from_dlib68(points: np.ndarray) -> np.ndarray:
    """ArcFace-ordered ``(5, 2)`` keypoints from dlib's 68 iBUG landmarks: eye centres (means of points 36-41 and
    42-47), nose tip (30), mouth corners (48, 54). The reference :data:`DLIB_TEMPLATE` is fitted and measured
    against; the 68-point model is trained on iBUG 300-W, whose licence excludes commercial use, so the pipeline
    does not load it."""
    pts = _check_points(points, 68, "dlib 68 points")
    return np.stack([pts[36:42].mean(axis=0), pts[42:48].mean(axis=0), pts[30], pts[48], pts[54]])


def fit_dlib_template(dlib_points: np.ndarray, arcface_points: np.ndarray) -> np.ndarray:
    """``(5, 2)`` mean position of dlib's points ``(N, 5, 2)`` in 112 crops aligned on the same faces' ArcFace
    points ``(N, 5, 2)``: the :data:`DLIB_TEMPLATE` that makes dlib-aligned crops match them best on average."""
    dlib_points = np.asarray(dlib_points, dtype=np.float64)
    arcface_points = np.asarray(arcface_points, dtype=np.float64)
    if dlib_points.ndim != 3 or dlib_points.shape != arcface_points.shape or len(dlib_points) == 0:
        raise AlignmentError(f"need (N, 5, 2) point sets of equal shape, got {dlib_points.shape} and "
                             f"{arcface_points.shape}")
    crops = [_apply(estimate_transform(ref), pts) for pts, ref in zip(dlib_points, arcface_points, strict=True)]
    return np.mean(crops, axis=0)
