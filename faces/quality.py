"""Pure quality helpers of the identity filter: blur, head pose from 5 landmarks, near-duplicates.

**Blur** is the variance of the Laplacian (Pech-Pacheco et al., "Diatom autofocusing in brightfield
microscopy", ICPR 2000; the usual sharpness measure): ``cv2.Laplacian`` (3x3 aperture ``[0 1 0; 1 -4 1;
0 1 0]``) of the grey-level image, variance over all pixels. Measured on the *aligned 112x112 crop*, so the
value does not depend on the stored resolution, and small faces upsampled by the alignment count as blurry.

**Pose** is estimated from the 5 ArcFace-ordered landmarks (left eye, right eye, nose tip, left and right
mouth corner, image coordinates) by fitting a weak-perspective (scaled orthographic) camera to a generic 3D
face: the ArcFace template's points in a plane, with the nose tip standing in front of it by ``NOSE_DEPTH``
times half the inter-ocular distance (about 22 mm for about 63 mm between the pupils: generic adult face
geometry, no fitted model). The 2x3 affine projection is solved by least squares (5 points, 8 unknowns), its
rows are turned into the nearest rotation (SVD) and decomposed as ``R = Rz(roll) Rx(pitch) Ry(yaw)``:

- ``yaw`` > 0: the face turns so that the nose moves to the image's right;
- ``pitch`` > 0: the nose moves down (head tilted down);
- ``roll`` > 0: clockwise in image coordinates (the image-right eye lower).

The template landmarks give (0, 0, 0); rotations of the model face are recovered exactly (tested). For real
faces it is approximate: faces differ from the model, perspective is ignored, and 5-point detectors are least
reliable at large angles. Use it to reject extreme poses, not to measure pose. Degenerate landmarks (all
points on a line or coinciding) give NaN.
"""

from __future__ import annotations

import cv2
import numpy as np

from facefoundry.faces.alignment import ARCFACE_TEMPLATE

NOSE_DEPTH = 0.7  # nose-tip depth in front of the eye/mouth plane / half the inter-ocular distance (approximate)


def laplacian_variance(image: np.ndarray) -> float:
    """Variance of the Laplacian of an RGB (``H x W x 3``) or grey (``H x W``) uint8 image."""
    image = np.ascontiguousarray(image)
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY) if image.ndim == 3 else image
    return float(cv2.Laplacian(grey, cv2.CV_64F).var())


def _model() -> np.ndarray:
    """``(5, 3)`` generic face: the template in the z = 0 plane, the nose tip ``NOSE_DEPTH`` half eye-widths out."""
    points = ARCFACE_TEMPLATE.astype(np.float64)
    half_eye = float(np.hypot(*(points[1] - points[0]))) / 2
    return np.column_stack([points, [0.0, 0.0, NOSE_DEPTH * half_eye, 0.0, 0.0]])


FACE_MODEL = _model()


def pose_from_landmarks(kps: np.ndarray) -> tuple[float, float, float]:
    """Approximate ``(yaw, pitch, roll)`` in degrees from ``(5, 2)`` ArcFace-ordered landmarks (see module)."""
    points = np.asarray(kps, dtype=np.float64).reshape(5, 2)
    nan = (float("nan"),) * 3
    if not np.isfinite(points).all():
        return nan
    model = FACE_MODEL - FACE_MODEL.mean(axis=0)
    affine = np.linalg.lstsq(model, points - points.mean(axis=0), rcond=None)[0].T  # (2, 3): points ~ model @ A.T
    norms = np.linalg.norm(affine, axis=1)
    if norms.min() <= 1e-9 * max(norms.max(), 1.0):
        return nan
    r1, r2 = affine / norms[:, None]
    u, _, vt = np.linalg.svd(np.stack([r1, r2, np.cross(r1, r2)]))
    rot = u @ np.diag([1.0, 1.0, np.sign(np.linalg.det(u @ vt))]) @ vt  # nearest rotation
    pitch = np.degrees(np.arcsin(np.clip(-rot[2, 1], -1.0, 1.0)))
    yaw = np.degrees(np.arctan2(-rot[2, 0], rot[2, 2]))
    roll = np.degrees(np.arctan2(-rot[0, 1], rot[1, 1]))
    return float(yaw), float(pitch), float(roll)


def near_duplicates(embeddings: np.ndarray, order: np.ndarray, threshold: float) -> np.ndarray:
    """Boolean mask of rows that duplicate an earlier kept row (cosine ``> threshold``).

    Rows are visited in ``order`` (e.g. by image_index); a row is kept unless its cosine to an already *kept*
    row exceeds ``threshold``, so the first of each group of near-duplicates is kept.
    """
    emb = np.asarray(embeddings, dtype=np.float32)
    emb = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    duplicate = np.zeros(len(emb), dtype=bool)
    kept: list[int] = []
    for i in np.asarray(order, dtype=np.int64):
        if kept and float((emb[kept] @ emb[i]).max()) > threshold:
            duplicate[i] = True
        else:
            kept.append(int(i))
    return duplicate


def pose_proxies(landmarks: np.ndarray) -> dict[str, np.ndarray]:
    """Yaw/pitch proxies and roll (degrees) from (n, 10) dlib 5-point landmarks; NaN where undefined."""
    lm = landmarks.reshape(-1, 5, 2)
    right, left, nose = lm[:, 0:2].mean(axis=1), lm[:, 2:4].mean(axis=1), lm[:, 4]
    axis = right - left
    dist = np.linalg.norm(axis, axis=1)
    dist = np.where(dist > 0, dist, np.nan)
    unit = axis / dist[:, None]
    rel = nose - (right + left) / 2
    return {
        "yaw_proxy": (rel * unit).sum(axis=1) / dist,
        "pitch_proxy": (rel[:, 1] * unit[:, 0] - rel[:, 0] * unit[:, 1]) / dist,
        "roll_deg": np.degrees(np.arctan2(axis[:, 1], axis[:, 0])),
    }
