"""Error rates from similarity scores: ROC points, EER and TAR at a fixed FAR.

Scores are similarities (higher = more alike). Genuine scores come from same-identity pairs,
impostor scores from different-identity pairs. A pair is accepted when ``score >= threshold``.
"""

from __future__ import annotations

import numpy as np


def _check(genuine: np.ndarray, impostor: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    genuine = np.asarray(genuine, dtype=np.float64).ravel()
    impostor = np.asarray(impostor, dtype=np.float64).ravel()
    if genuine.size == 0 or impostor.size == 0:
        raise ValueError(f"need genuine and impostor scores (got {genuine.size} and {impostor.size})")
    if not (np.isfinite(genuine).all() and np.isfinite(impostor).all()):
        raise ValueError("scores contain NaN or infinity")
    return genuine, impostor


def roc(genuine: np.ndarray, impostor: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(thresholds, far, tar)`` at every distinct score, thresholds descending.

    ``far[i]`` is the fraction of impostor scores ``>= thresholds[i]``, ``tar[i]`` that of genuine scores.
    """
    genuine, impostor = _check(genuine, impostor)
    thresholds = np.unique(np.concatenate([genuine, impostor]))[::-1]
    g = np.sort(genuine)
    i = np.sort(impostor)
    tar = (g.size - np.searchsorted(g, thresholds, side="left")) / g.size
    far = (i.size - np.searchsorted(i, thresholds, side="left")) / i.size
    return thresholds, far, tar


def tar_at_far(genuine: np.ndarray, impostor: np.ndarray, far: float) -> dict[str, float | bool]:
    """TAR at the lowest threshold whose FAR does not exceed ``far``.

    Returns ``tar``, the ``threshold`` used, the ``far`` achieved, and ``resolvable``: False when there
    are fewer than ``1 / far`` impostor scores, so the figure rests on too few impostors to mean ``far``.
    """
    if not 0 < far < 1:
        raise ValueError(f"far must be in (0, 1), got {far}")
    thresholds, fars, tars = roc(genuine, impostor)
    ok = np.flatnonzero(fars <= far)
    if ok.size == 0:  # the top score is an impostor's and already exceeds ``far``: accept nothing
        return {"tar": 0.0, "threshold": float("inf"), "far": 0.0, "resolvable": False}
    k = ok[-1]  # thresholds descend: the last admissible one accepts the most genuine pairs
    return {"tar": float(tars[k]), "threshold": float(thresholds[k]), "far": float(fars[k]),
            "resolvable": bool(np.asarray(impostor).size * far >= 1)}


def eer(genuine: np.ndarray, impostor: np.ndarray) -> dict[str, float]:
    """Equal error rate: where FAR equals FRR (1 - TAR), interpolated between ROC points."""
    thresholds, far, tar = roc(genuine, impostor)
    frr = 1.0 - tar
    # Prepend the point "accept nothing" (FAR 0, FRR 1); far rises and frr falls as thresholds descend.
    far = np.concatenate([[0.0], far])
    frr = np.concatenate([[1.0], frr])
    thresholds = np.concatenate([[np.inf], thresholds])
    diff = far - frr
    k = int(np.flatnonzero(diff >= 0)[0])  # first point where FAR has caught up with FRR
    if k == 0 or diff[k] == 0:
        return {"eer": float(far[k]), "threshold": float(thresholds[k])}
    a, b = diff[k - 1], diff[k]  # a < 0 <= b: interpolate the crossing
    t = a / (a - b)
    rate = far[k - 1] + t * (far[k] - far[k - 1])
    return {"eer": float(rate), "threshold": float(thresholds[k])}
