"""Intrinsic judge metrics of a synthetic set, from judge embeddings and identity labels (numpy only).

The judge has a *native score*: ``euclidean`` distance (dlib; lower = more alike, same person below 0.6)
or ``cosine`` similarity (ArcFace-family; higher = more alike). Error rates are computed on similarities
(the negated distance for ``euclidean``) and thresholds are reported back in native units.

Cost is bounded whatever the number of identities N and images n:

- genuine pairs: every pair within an identity (``sum k_i^2 / 2``, bounded by the per-identity cap);
- impostor pairs: all of them when there are at most ``max_impostor_pairs``, else that many pairs drawn
  uniformly (with replacement) among different-identity pairs by a seeded generator;
- identity centroids: all ``N (N - 1) / 2`` pairs, in blocks of ``block`` rows; the maximum cosine is exact,
  the 99th percentile comes from a histogram of ``QUANTILE_BINS`` bins over [-1, 1], interpolated within a
  1e-4 bin (it lies between the order statistics next to the percentile, give or take one bin); the
  histogram of centroid distances (``euclidean`` judges) is kept up to 5 million pairs (about 3,000 identities).
"""

from __future__ import annotations

import numpy as np

from facefoundry.evaluate.embedding_stats import (
    PLOT_BINS,
    Metric,
    cross_scores,
    describe,
    groups,
    histogram,
    normalize,
    pair_scores,
    plot_edges,
    same_person,
    similarity,
)
from facefoundry.evaluate.scores import eer, tar_at_far

# Raised when a metric is added or its computation changes: a stored result of another revision is recomputed
# rather than reused (2: the Vendi scores of ``diversity``).
METRICS_REVISION = 2
FARS = (1e-3, 1e-4)
QUANTILE_BINS = 20_000


def genuine_scores(emb: np.ndarray, labels: np.ndarray, metric: Metric) -> np.ndarray:
    """Native scores of every same-identity pair ``i < j``."""
    out = []
    for rows in groups(labels)[1]:
        if rows.size > 1:
            iu = np.triu_indices(rows.size, 1)
            out.append(cross_scores(emb[rows], emb[rows], metric)[iu])
    return np.concatenate(out) if out else np.zeros(0)


def impostor_scores(emb: np.ndarray, labels: np.ndarray, metric: Metric, max_pairs: int,
                    seed: int) -> tuple[np.ndarray, dict]:
    """Native scores of different-identity pairs: all, or ``max_pairs`` drawn with a seeded generator."""
    labels = np.asarray(labels)
    n = labels.size
    same = sum(int(r.size) ** 2 for r in groups(labels)[1]) if n else 0
    total = (n * n - same) // 2
    if total <= max_pairs:
        parts = []
        for start in range(0, n, 1024):
            block = cross_scores(emb[start:start + 1024], emb, metric)
            keep = (labels[start:start + 1024, None] != labels[None, :]) & (
                np.arange(start, min(start + 1024, n))[:, None] < np.arange(n)[None, :])
            parts.append(block[keep])
        scores = np.concatenate(parts) if parts else np.zeros(0)
        return scores, {"method": "all pairs", "pairs": int(scores.size), "total_pairs": int(total)}
    rng = np.random.default_rng(seed)
    i_parts, j_parts, have = [], [], 0
    while have < max_pairs:
        i, j = rng.integers(0, n, 2 * max_pairs), rng.integers(0, n, 2 * max_pairs)
        ok = labels[i] != labels[j]
        i_parts.append(i[ok])
        j_parts.append(j[ok])
        have += int(ok.sum())
    i, j = np.concatenate(i_parts)[:max_pairs], np.concatenate(j_parts)[:max_pairs]
    scores = np.concatenate([pair_scores(emb[i[s:s + 65536]], emb[j[s:s + 65536]], metric)
                             for s in range(0, max_pairs, 65536)])
    return scores, {"method": f"{max_pairs} pairs drawn uniformly with replacement (seed {seed})",
                    "pairs": int(scores.size), "total_pairs": int(total)}


def verification(genuine: np.ndarray, impostor: np.ndarray, metric: Metric, threshold: float) -> dict:
    """Genuine/impostor statistics and histogram, EER and TAR@FAR (thresholds in native units)."""
    if not genuine.size or not impostor.size:
        return {"genuine": describe(genuine), "impostor": describe(impostor),
                "note": "needs at least one genuine and one impostor pair"}
    g, i = similarity(genuine, metric), similarity(impostor, metric)
    native = (lambda t: -t) if metric == "euclidean" else (lambda t: t)  # noqa: E731
    rate = eer(g, i)
    tars = {}
    for far in FARS:
        got = tar_at_far(g, i, far)
        tars[f"{far:g}"] = {**got, "threshold": native(got["threshold"])}
    return {
        "genuine": describe(genuine),
        "impostor": describe(impostor),
        "eer": rate["eer"],
        "eer_threshold": native(rate["threshold"]),
        "tar_at_far": tars,
        "same_person_rule": {"threshold": threshold,
                             "genuine_accepted": float(same_person(genuine, metric, threshold).mean()),
                             "impostor_accepted": float(same_person(impostor, metric, threshold).mean())},
        "histogram": histogram(plot_edges(genuine, impostor, extra=(threshold,)), genuine=genuine, impostor=impostor),
    }


def centroids(emb: np.ndarray, labels: np.ndarray, metric: Metric) -> tuple[np.ndarray, np.ndarray]:
    """Distinct labels and their centroids: the mean descriptor (euclidean), the normalised mean of unit vectors
    (cosine)."""
    ids, rows = groups(labels)
    base = emb if metric == "euclidean" else normalize(emb)
    c = np.stack([base[r].mean(axis=0) for r in rows]) if rows else np.zeros((0, emb.shape[1]))
    return ids, (c if metric == "euclidean" else normalize(c))


def uniqueness(cents: np.ndarray, metric: Metric, threshold: float,
               block: int = 2048) -> tuple[dict, np.ndarray, np.ndarray]:
    """Pairwise centroid statistics (blocked): max / p99 cosine, fraction of pairs the judge calls the same
    person; and per identity the nearest other centroid's cosine and native score (NaN when alone)."""
    n = len(cents)
    nearest_cos, nearest_native = np.full(n, np.nan), np.full(n, np.nan)
    fine = np.zeros(QUANTILE_BINS, np.int64)
    native_values, same, pairs = [], 0, n * (n - 1) // 2
    unit = normalize(cents)
    for start in range(0, n, block):
        stop = min(start + block, n)
        cos = unit[start:stop] @ unit.T
        nat = cos if metric == "cosine" else cross_scores(cents[start:stop], cents, metric)
        rows = np.arange(start, stop)[:, None]
        upper, other = rows < np.arange(n)[None, :], rows != np.arange(n)[None, :]
        nearest_cos[start:stop] = np.where(other, cos, -np.inf).max(axis=1) if n > 1 else np.nan
        pick = np.where(other, nat, np.inf if metric == "euclidean" else -np.inf)
        nearest_native[start:stop] = (pick.min(axis=1) if metric == "euclidean" else pick.max(axis=1)) if n > 1 \
            else np.nan
        fine += np.histogram(np.clip(cos[upper], -1, 1), bins=QUANTILE_BINS, range=(-1.0, 1.0))[0]
        same += int(same_person(nat[upper], metric, threshold).sum())
        if pairs <= 5_000_000:
            native_values.append(nat[upper])
    if not pairs:
        return {"identities": n, "pairs": 0, "note": "needs at least two identities"}, nearest_cos, nearest_native
    cdf = np.cumsum(fine) / pairs
    width = 2.0 / QUANTILE_BINS
    k = int(np.searchsorted(cdf, 0.99))
    before = cdf[k - 1] if k else 0.0
    p99 = -1.0 + width * (k + (0.99 - before) / max(cdf[k] - before, 1e-300))
    coarse = fine.reshape(PLOT_BINS * 4, -1).sum(axis=1)
    out = {
        "identities": n, "pairs": pairs,
        "max_cosine": float(np.nanmax(nearest_cos)),
        "p99_cosine": float(p99), "p99_resolution": width,
        "indistinguishable_pairs": same, "indistinguishable_fraction": same / pairs,
        "cosine_histogram": {"edges": np.linspace(-1, 1, coarse.size + 1).round(6).tolist(), "pairs": coarse.tolist()},
    }
    if native_values and metric == "euclidean":
        values = np.concatenate(native_values)
        out["distance_histogram"] = histogram(plot_edges(values, extra=(threshold,)), pairs=values)
    return out, nearest_cos, nearest_native


def intra_class(emb: np.ndarray, labels: np.ndarray, metric: Metric) -> dict:
    """Per identity the mean pairwise judge distance (Euclidean, or 1 - cosine); its spread over identities."""
    means = []
    for rows in groups(labels)[1]:
        if rows.size > 1:
            scores = cross_scores(emb[rows], emb[rows], metric)[np.triu_indices(rows.size, 1)]
            means.append(scores.mean() if metric == "euclidean" else 1.0 - scores.mean())
    means = np.asarray(means)
    return {"distance": "euclidean" if metric == "euclidean" else "1 - cosine",
            "identities": int(means.size), "per_identity_mean": describe(means),
            "histogram": _per_identity_histogram(means)}


def _per_identity_histogram(values: np.ndarray) -> dict:
    """A histogram of one value per identity, about 4 identities a bin (5 to PLOT_BINS bins)."""
    return histogram(plot_edges(values, bins=min(PLOT_BINS, max(5, values.size // 4))), identities=values)


def spread(columns: dict[str, np.ndarray], labels: np.ndarray) -> dict:
    """Per column: overall statistics and the per-identity standard deviation (mean over identities with >= 2)."""
    rows = [r for r in groups(labels)[1] if r.size > 1]
    out = {}
    for name, values in columns.items():
        values = np.asarray(values, dtype=np.float64)
        if not np.isfinite(values).any():
            continue
        stds = np.array([np.nanstd(values[r]) if np.isfinite(values[r]).sum() > 1 else np.nan for r in rows])
        out[name] = {"overall": describe(values), "within_identity_std": describe(stds)}
    return out


def vendi_score(vectors: np.ndarray) -> float:
    """The Vendi score of ``vectors`` (n, d) under the cosine kernel: ``exp(-sum(l * ln l))`` over the eigenvalues
    ``l`` of ``K / n``, ``K[i, j]`` the cosine of rows i and j (0 ln 0 = 0). It is the effective number of distinct
    rows: 1 when all point the same way, n when they are orthogonal. ``K / n = U U^T / n`` has the non-zero
    eigenvalues of ``U^T U / n`` (d x d, ``U`` the unit rows), which is what is decomposed: O(n d^2), d x d memory."""
    unit = normalize(vectors)
    if not len(unit):
        return float("nan")
    eig = np.clip(np.linalg.eigvalsh(unit.T @ unit / len(unit)), 0.0, None)  # tiny negative rounding -> 0
    eig = eig[eig > 0]
    return float(np.exp(-np.sum(eig * np.log(eig))))


def diversity(emb: np.ndarray, labels: np.ndarray, cents: np.ndarray) -> dict:
    """Vendi scores (:func:`vendi_score`) of each identity's images (identities with >= 2) and of the identity
    centroids, whatever the judge's native score (its embeddings under the cosine kernel)."""
    within = np.array([vendi_score(emb[rows]) for rows in groups(labels)[1] if rows.size > 1])
    n = len(cents)
    across = vendi_score(cents) if n else None
    return {"kernel": "cosine", "within_identity": describe(within),
            "within_identity_histogram": _per_identity_histogram(within),
            "centroids": {"identities": n, "vendi": across, "vendi_per_identity": across / n if n else None}}


def _ranks(x: np.ndarray) -> np.ndarray:
    return np.argsort(np.argsort(x, kind="stable"), kind="stable").astype(np.float64)


def separation_comparison(sampled_nn: np.ndarray, judge_nn: np.ndarray) -> dict:
    """The sampler's nearest-neighbour cosine next to the judge's nearest-other-centroid cosine, per identity
    (both among the same identities; the per-identity pairs are kept for the scatter plot)."""
    ok = np.isfinite(sampled_nn) & np.isfinite(judge_nn)
    out = {"sampled_nn_cosine": describe(sampled_nn), "judge_nn_cosine": describe(judge_nn),
           "identities": int(ok.sum()), "per_identity": {"sampled": np.round(sampled_nn[ok], 5).tolist(),
                                                         "judge": np.round(judge_nn[ok], 5).tolist()}}
    if ok.sum() > 2 and np.std(sampled_nn[ok]) > 0 and np.std(judge_nn[ok]) > 0:
        out["pearson"] = float(np.corrcoef(sampled_nn[ok], judge_nn[ok])[0, 1])
        out["spearman"] = float(np.corrcoef(_ranks(sampled_nn[ok]), _ranks(judge_nn[ok]))[0, 1])
    out["histogram"] = histogram(plot_edges(sampled_nn, judge_nn), sampled=sampled_nn, judge=judge_nn)
    return out


def nearest_cosine(vectors: np.ndarray) -> np.ndarray:
    """Cosine of each row to its nearest other row (NaN for a single row); blocked, O(n) memory per block."""
    unit = normalize(vectors)
    n = len(unit)
    out = np.full(n, np.nan)
    for start in range(0, n if n > 1 else 0, 2048):
        cos = unit[start:start + 2048] @ unit.T
        cos[np.arange(cos.shape[0]), np.arange(start, start + cos.shape[0])] = -np.inf
        out[start:start + 2048] = cos.max(axis=1)
    return out


def intrinsic_metrics(emb: np.ndarray, labels: np.ndarray, metric: Metric, threshold: float, *,
                      max_impostor_pairs: int = 1_000_000, seed: int = 0, sampled_vectors: np.ndarray | None = None,
                      columns: dict[str, np.ndarray] | None = None) -> dict:
    """Every intrinsic metric of judge embeddings ``emb`` (n, d) with identity ``labels`` (n,).

    ``sampled_vectors``: the generator-space identity vectors of the distinct labels in sorted order (from
    ``identities.parquet``), for the sampled-vs-judge separation; ``columns``: per-row values (pose, quality)
    whose spread is reported.
    """
    emb, labels = np.asarray(emb, np.float64), np.asarray(labels)
    if emb.ndim != 2 or len(emb) != len(labels):
        raise ValueError(f"need (n, d) embeddings and n labels, got {emb.shape} and {labels.shape}")
    if metric not in ("euclidean", "cosine"):
        raise ValueError(f"metric must be 'euclidean' or 'cosine', got {metric!r}")
    genuine = genuine_scores(emb, labels, metric)
    impostor, pairs_info = impostor_scores(emb, labels, metric, max_impostor_pairs, seed)
    ids, cents = centroids(emb, labels, metric)
    unique, judge_nn, judge_nn_native = uniqueness(cents, metric, threshold)
    out = {
        "metric": metric, "same_person_threshold": threshold,
        "images": int(len(labels)), "identities": int(ids.size),
        "pairs": {"genuine": {"method": "all same-identity pairs", "pairs": int(genuine.size)},
                  "impostor": pairs_info},
        "verification": verification(genuine, impostor, metric, threshold),
        "uniqueness": unique,
        "intra_class": intra_class(emb, labels, metric),
        "spread": spread(columns or {}, labels),
        "diversity": diversity(emb, labels, cents),
    }
    out["uniqueness"]["nearest_other_native"] = describe(judge_nn_native)
    if sampled_vectors is not None:
        if len(sampled_vectors) != ids.size:
            raise ValueError(f"sampled_vectors has {len(sampled_vectors)} rows for {ids.size} identities")
        out["separation"] = separation_comparison(nearest_cosine(sampled_vectors), judge_nn)
    else:
        out["separation"] = {"judge_nn_cosine": describe(judge_nn), "note": "no identity vectors given"}
    return out


def _fmt(value: object, digits: int = 3) -> str:
    return f"{value:.{digits}f}" if isinstance(value, int | float) and not isinstance(value, bool) else "n/a"


def intrinsic_table_markdown(result: dict) -> str:
    """The short card table of an ``intrinsic.json`` result (Markdown, one metric per row)."""
    m = result.get("metrics", result)
    judge = (result.get("judge") or {}).get("name", "judge")
    ver, uni = m.get("verification", {}), m.get("uniqueness", {})
    intra, sep = m.get("intra_class", {}).get("per_identity_mean", {}), m.get("separation", {})
    unit = "distance" if m.get("metric") == "euclidean" else "cosine"
    div = m.get("diversity", {})
    tars = ver.get("tar_at_far", {})
    tar = " / ".join(_fmt(tars.get(k, {}).get("tar")) + ("" if tars.get(k, {}).get("resolvable") else " (few pairs)")
                     for k in ("0.001", "0.0001"))
    rows = [
        ("images / identities judged", f"{m.get('images', 'n/a')} / {m.get('identities', 'n/a')}"),
        (f"genuine / impostor mean {unit}",
         f"{_fmt(ver.get('genuine', {}).get('mean'))} / {_fmt(ver.get('impostor', {}).get('mean'))}"),
        ("EER", _fmt(ver.get("eer"), 4)),
        ("TAR @ FAR 1e-3 / 1e-4", tar),
        ("max / p99 centroid cosine", f"{_fmt(uni.get('max_cosine'))} / {_fmt(uni.get('p99_cosine'))}"),
        ("identity pairs the judge cannot tell apart", _fmt(uni.get("indistinguishable_fraction"), 4)),
        (f"intra-class mean pairwise {unit} distance" if unit == "cosine" else "intra-class mean pairwise distance",
         f"{_fmt(intra.get('mean'))} ± {_fmt(intra.get('std'))}"),
        ("Vendi score within an identity (mean) / of the centroids",
         f"{_fmt(div.get('within_identity', {}).get('mean'), 2)} / {_fmt(div.get('centroids', {}).get('vendi'), 1)}"),
        ("nearest-identity cosine: sampled / judge", f"{_fmt(sep.get('sampled_nn_cosine', {}).get('p50'))} / "
                                                     f"{_fmt(sep.get('judge_nn_cosine', {}).get('p50'))} (median)"),
    ]
    lines = [f"| metric ({judge}) | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows]
    return "\n".join(lines) + "\n"
