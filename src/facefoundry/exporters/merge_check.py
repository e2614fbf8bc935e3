"""Which identities of different runs are one identity: the cross-run separation check of ``facefoundry merge``.

Within a run, identities are kept apart by its separation rule (``identities.max_cosine`` on the identity vectors).
Across runs the same rule is checked, exactly, wherever two runs share an identity space (the same conditioning
encoders and dimension): every pair of identities of the two runs whose vectors have a cosine above the stricter of
the two runs' rules is reported (pairs of runs with no rule are not checked by vectors).

Runs in different identity spaces (Arc2Face's ArcFace vs Vec2Face's ArcFace-R100, say) cannot compare vectors; there
an independent judge does (:class:`~facefoundry.evaluate.judge.FaceJudge`): each identity's centroid is the mean of
the judge's embeddings of its first ``judge_images`` kept images (by ``image_index``): dlib's raw descriptors (its
rule is a distance between them, as the face filter's centroids), an ArcFace judge's L2-normalised embeddings,
normalised again; two identities are one when their centroids meet the judge's same-person rule (dlib: Euclidean
distance below 0.6; an ArcFace judge: cosine above its threshold). An identity none of whose images shows a face to the
judge has no centroid and is counted as unjudged.

A duplicate is then dropped or kept (``duplicates``): *drop* removes the side with fewer kept images (the later
source's on a tie), as the confusion filter drops the less-supported identity; pairs are handled most similar
first, and a pair one of whose sides is already dropped needs nothing more.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from facefoundry.evaluate.embedding_stats import Metric, cross_scores, normalize, same_person, similarity

BLOCK = 4096  # identities compared at a time (a BLOCK x BLOCK float64 block is 128 MB)


@dataclass
class MergeSide:
    """What the check needs of one source run: its kept identities, their vectors and kept image counts."""

    name: str  # the run id
    space: tuple  # identity space key: (conditioning encoder names, dimension)
    rule: float | None  # identities.max_cosine
    identities: np.ndarray  # kept identity labels, ascending
    vectors: np.ndarray  # their identity vectors, one row each
    kept_images: np.ndarray  # their kept image counts
    centroids: np.ndarray | None = None  # judge centroids (NaN rows: unjudged), set by judge_centroids


@dataclass
class Duplicate:
    """Two identities of different runs found to be one."""

    first: tuple[int, int]  # (source index, identity)
    second: tuple[int, int]
    by: str  # "identity vectors" or "judge centroids"
    score: float  # cosine (vectors, ArcFace judge) or Euclidean distance (dlib judge)
    dropped: tuple[int, int] | None = None

    def record(self, names: list[str]) -> dict:
        """As the merged run's identities metadata and the card report it."""
        side = lambda s: {"run_id": names[s[0]], "identity": int(s[1])}  # noqa: E731
        return {"first": side(self.first), "second": side(self.second), "by": self.by, "score": round(self.score, 6),
                "dropped": side(self.dropped) if self.dropped else None}


def close_pairs(a: np.ndarray, b: np.ndarray, metric: Metric, threshold: float) -> list[tuple[int, int, float]]:
    """Every ``(i, j, score)`` whose native score (cosine, or Euclidean distance) of rows ``a[i]`` and ``b[j]`` meets
    the same-person rule at ``threshold`` (cosine above, distance below), computed blockwise; rows with NaN (an
    identity without a judge centroid) never match."""
    ia, ib = np.flatnonzero(np.isfinite(a).all(axis=1)), np.flatnonzero(np.isfinite(b).all(axis=1))
    found = []
    for start in range(0, len(ia), BLOCK):
        rows = ia[start:start + BLOCK]
        scores = cross_scores(a[rows], b[ib], metric)
        for i, j in zip(*np.nonzero(same_person(scores, metric, threshold)), strict=True):
            found.append((int(rows[i]), int(ib[j]), float(scores[i, j])))
    return found


def find_duplicates(sides: list[MergeSide], judge_metric: Metric | None = None,
                    judge_threshold: float | None = None) -> list[Duplicate]:
    """Every pair of identities of two different sources that is one identity, most similar first (vector pairs
    before judge pairs; ties by source and label). Judge pairs need the sides' :attr:`MergeSide.centroids`."""
    found: list[Duplicate] = []
    for s, left in enumerate(sides):
        for t in range(s + 1, len(sides)):
            right = sides[t]
            if left.space == right.space:
                rules = [r for r in (left.rule, right.rule) if r is not None]
                if rules:
                    found += [Duplicate((s, int(left.identities[i])), (t, int(right.identities[j])),
                                        "identity vectors", c)
                              for i, j, c in close_pairs(left.vectors, right.vectors, "cosine", min(rules))]
            elif left.centroids is not None and right.centroids is not None and judge_metric:
                found += [Duplicate((s, int(left.identities[i])), (t, int(right.identities[j])), "judge centroids", d)
                          for i, j, d in close_pairs(left.centroids, right.centroids, judge_metric,
                                                     judge_threshold)]
    def closest_first(d: Duplicate) -> tuple:
        metric = judge_metric if d.by == "judge centroids" else "cosine"
        return d.by != "identity vectors", -float(similarity(d.score, metric)), d.first, d.second

    return sorted(found, key=closest_first)


def unchecked_pairs(sides: list[MergeSide], judged: bool) -> list[str]:
    """The pairs of runs whose identities were not compared, each with why."""
    out = []
    for s, left in enumerate(sides):
        for right in sides[s + 1:]:
            if left.space == right.space and left.rule is None and right.rule is None:
                out.append(f"{left.name} and {right.name}: neither has a separation rule (identities.max_cosine)")
            elif left.space != right.space and not judged:
                out.append(f"{left.name} and {right.name}: different identity spaces and no judge (--judge)")
    return out


def resolve(duplicates: list[Duplicate], sides: list[MergeSide], mode: str) -> set[tuple[int, int]]:
    """With ``mode`` drop: the identities to leave out (the less-supported side of each pair); keep: none."""
    if mode == "keep":
        return set()
    support = {(s, int(i)): int(n) for s, side in enumerate(sides)
               for i, n in zip(side.identities, side.kept_images, strict=True)}
    dropped: set[tuple[int, int]] = set()
    for dup in duplicates:
        if dup.first in dropped or dup.second in dropped:
            continue
        # the side with fewer kept images goes; on a tie the later source's (second: t > s)
        dup.dropped = dup.first if support[dup.first] < support[dup.second] else dup.second
        dropped.add(dup.dropped)
    return dropped


def judge_centroids(images: Iterable[tuple[int, list]], count: int, judge) -> np.ndarray:
    """The judge centroid of each of ``count`` identities (NaN rows: unjudged) from ``images``: pairs of (the
    identity's position, its images: decoded RGB arrays or None)."""
    centroids = np.full((count, judge.dim), np.nan)
    for k, batch in images:
        if not batch:
            continue
        emb = judge(batch).embeddings
        emb = emb[np.isfinite(emb).all(axis=1)]
        if len(emb) and judge.metric == "euclidean":  # dlib: its rule is a distance between raw descriptors
            centroids[k] = emb.mean(axis=0)
        elif len(emb):
            centroids[k] = normalize(normalize(emb).mean(axis=0))
    return centroids
