"""The standard 10-fold face-verification protocol on benchmark pairs (LFW, CFP-FP, CPLFW, AgeDB-30, CALFW).

Each image is embedded with its horizontal flip; the two embeddings are summed and L2-normalised. A pair's score
is the squared Euclidean distance of its two embeddings (0 to 4; a pair is "same" when it is below a threshold).
The pairs, in file order, are cut into 10 contiguous folds (as ``sklearn.model_selection.KFold(10)`` without
shuffling); for each fold the threshold on a fixed grid (0 to 4, step 0.01) with the best accuracy on the other
nine folds (the lowest on ties) is applied to the held-out fold. Reported: mean and (population) standard deviation
of the ten held-out accuracies, the chosen thresholds, and TAR at FAR 1e-3 / 1e-4 over all pairs with the cosine
similarity ``1 - distance / 2`` as score. Per-group accuracy (fairness) on the same protocol:
:mod:`facefoundry.evaluate.groups`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np

from facefoundry.evaluate.benchmarks import (
    STANDARD_SETS,
    Benchmark,
    BenchmarkError,
    find_benchmarks,
    find_group_folders,
    load_benchmarks,
    paper_order,
)
from facefoundry.evaluate.groups import accuracy_by_group, read_pair_cells, summarise_groups
from facefoundry.evaluate.scores import eer, tar_at_far

THRESHOLDS = np.arange(0, 4, 0.01)  # the grid of the reference evaluation code: 400 thresholds, 0.00 .. 3.99
FARS = (1e-3, 1e-4)
Embed = Callable[[np.ndarray], np.ndarray]  # RGB uint8 images (n, h, w, 3) -> embeddings (n, dim)
Progress = Callable[[str, int, int], None]  # (set name, images embedded, images in the set)


def _json_float(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def ten_fold_accuracy(distances: np.ndarray, issame: np.ndarray, folds: int = 10,
                      thresholds: np.ndarray = THRESHOLDS) -> dict[str, object]:
    """Accuracy of ``distance < threshold`` as "same", threshold picked on the other folds; see module doc.

    Returns ``accuracy`` (mean over folds), ``accuracy_std``, ``fold_accuracies`` and ``thresholds`` (per fold).
    """
    distances = np.asarray(distances, dtype=np.float64).ravel()
    issame = np.asarray(issame, dtype=bool).ravel()
    thresholds = np.asarray(thresholds, dtype=np.float64).ravel()
    if distances.shape != issame.shape:
        raise ValueError(f"{distances.size} distances for {issame.size} issame flags")
    if folds < 2 or distances.size < folds:
        raise ValueError(f"{folds} folds over {distances.size} pairs: need 2 <= folds <= pairs")
    if not np.isfinite(distances).all():
        raise ValueError("distances contain NaN or infinity")
    correct = (distances[None, :] < thresholds[:, None]) == issame[None, :]  # (thresholds, pairs)
    cumulative = np.zeros((thresholds.size, distances.size + 1), dtype=np.int64)
    np.cumsum(correct, axis=1, out=cumulative[:, 1:])
    starts, ends = fold_bounds(distances.size, folds)
    sizes = ends - starts
    in_fold = cumulative[:, ends] - cumulative[:, starts]  # (thresholds, folds): correct pairs per fold
    train = (cumulative[:, -1:] - in_fold) / (distances.size - sizes)
    best = np.argmax(train, axis=0)  # first maximum: the lowest threshold on ties
    accuracies = in_fold[best, np.arange(folds)] / sizes
    return {"accuracy": float(accuracies.mean()), "accuracy_std": float(accuracies.std()),
            "fold_accuracies": [float(a) for a in accuracies], "thresholds": [float(thresholds[b]) for b in best]}


def fold_bounds(pairs: int, folds: int) -> tuple[np.ndarray, np.ndarray]:
    """Start and end (exclusive) of each fold: ``pairs`` cut in file order into ``folds`` contiguous folds, the
    first ``pairs % folds`` one pair longer (``numpy.array_split``, ``KFold`` without shuffling)."""
    sizes = np.full(folds, pairs // folds)
    sizes[:pairs % folds] += 1
    ends = np.cumsum(sizes)
    return ends - sizes, ends


def judged_correct(distances: np.ndarray, issame: np.ndarray, fold_thresholds: Sequence[float]) -> np.ndarray:
    """Whether each pair is judged right (``distance < threshold`` is "same") by the threshold of its own fold."""
    distances = np.asarray(distances, dtype=np.float64).ravel()
    per_pair = np.empty_like(distances)
    for start, end, threshold in zip(*fold_bounds(distances.size, len(fold_thresholds)), fold_thresholds,
                                     strict=True):
        per_pair[start:end] = threshold
    return (distances < per_pair) == np.asarray(issame, dtype=bool).ravel()


def pair_distances(embeddings: np.ndarray) -> np.ndarray:
    """Squared Euclidean distance of L2-normalised rows ``2*i`` and ``2*i + 1`` for every pair ``i``."""
    emb = np.asarray(embeddings, dtype=np.float64)
    if emb.ndim != 2 or emb.shape[0] % 2:
        raise ValueError(f"embeddings of shape {emb.shape}: need (2 * pairs, dim)")
    emb = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    return np.sum((emb[0::2] - emb[1::2]) ** 2, axis=1)


def verify_embeddings(embeddings: np.ndarray, issame: np.ndarray, folds: int = 10) -> dict[str, object]:
    """The protocol on ready embeddings (flip-summed, two rows per pair): 10-fold accuracy, TAR@FAR, EER."""
    distances = pair_distances(embeddings)
    issame = np.asarray(issame, dtype=bool).ravel()
    result = ten_fold_accuracy(distances, issame, folds)
    cosine = 1.0 - distances / 2.0  # exact for unit vectors, and monotone in the distance
    genuine, impostor = cosine[issame], cosine[~issame]
    tars: dict[str, dict[str, object] | None] = {}
    for far in FARS:
        at = tar_at_far(genuine, impostor, far) if genuine.size and impostor.size else None
        tars[f"{far:.0e}"] = None if at is None else {**at, "threshold": _json_float(at["threshold"])}
    rate = eer(genuine, impostor)["eer"] if genuine.size and impostor.size else None
    mean, std = result["accuracy"], result["accuracy_std"]
    return {**result, "summary": f"{100 * mean:.2f} ± {100 * std:.2f}", "pairs": int(issame.size),
            "genuine_pairs": int(genuine.size), "impostor_pairs": int(impostor.size), "folds": folds,
            "threshold_grid": [float(THRESHOLDS[0]), float(THRESHOLDS[-1]), 0.01], "similarity": "cosine",
            "tar_at_far": tars, "eer": rate}


def embed_benchmark(embed: Embed, benchmark: Benchmark, batch_size: int = 128,
                    progress: Progress | None = None) -> np.ndarray:
    """Embed every image and its horizontal flip in batches; returns the L2-normalised sums ``(2 * pairs, dim)``."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    total = len(benchmark.encoded)
    parts: list[np.ndarray] = []
    for start in range(0, total, batch_size):
        images = benchmark.images(start, start + batch_size)
        summed = _checked(embed(images), len(images)) + _checked(embed(np.ascontiguousarray(images[:, :, ::-1])),
                                                                 len(images))
        if parts and summed.shape[1] != parts[0].shape[1]:
            raise ValueError(f"embed returned dim {summed.shape[1]} after dim {parts[0].shape[1]}")
        parts.append(summed)
        if progress is not None:
            progress(benchmark.name, min(start + batch_size, total), total)
    emb = np.concatenate(parts)
    return emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)


def _checked(out: np.ndarray, rows: int) -> np.ndarray:
    out = np.asarray(out, dtype=np.float64)
    if out.ndim != 2 or out.shape[0] != rows:
        raise ValueError(f"embed returned shape {out.shape} for {rows} images; expected ({rows}, dim)")
    if not np.isfinite(out).all():
        raise ValueError("embed returned NaN or infinite values")
    return out


def _verify(embed: Embed, benchmark: Benchmark, batch_size: int, progress: Progress | None,
            folds: int) -> tuple[dict[str, object], np.ndarray]:
    """:func:`verify`, returning the pair distances too (per-group accuracy judges each pair again)."""
    if benchmark.num_pairs < folds:
        raise BenchmarkError(f"{benchmark.path}: {benchmark.num_pairs} pairs, fewer than the {folds} folds")
    t0 = time.perf_counter()
    emb = embed_benchmark(embed, benchmark, batch_size, progress)
    t1 = time.perf_counter()
    result = verify_embeddings(emb, benchmark.issame, folds)
    t2 = time.perf_counter()
    return ({"name": benchmark.name, "display_name": benchmark.display_name, "path": str(benchmark.path), **result,
             "embedding_dim": int(emb.shape[1]), "embed_seconds": t1 - t0, "protocol_seconds": t2 - t1},
            pair_distances(emb))


def verify(embed: Embed, benchmark: Benchmark, batch_size: int = 128, progress: Progress | None = None,
           folds: int = 10) -> dict[str, object]:
    """Run the full protocol on one benchmark: embed (with flips), then :func:`verify_embeddings`."""
    return _verify(embed, benchmark, batch_size, progress, folds)[0]


def cell_groups(distances: np.ndarray, issame: np.ndarray, cells: Sequence[str],
                fold_thresholds: Sequence[float]) -> dict[str, object]:
    """Per-cell accuracy of one set whose pairs carry cells (:mod:`~facefoundry.evaluate.groups`, "cells"): each
    pair judged with its fold's threshold, chosen on all the set's pairs; then the groups' mean, std and gap."""
    correct = judged_correct(distances, issame, fold_thresholds)
    return {"source": "cells", **summarise_groups(accuracy_by_group(correct, issame, cells)),
            "folds": len(fold_thresholds), "thresholds": [float(t) for t in fold_thresholds]}


def verify_group_folder(embed: Embed, folder: str | Path, batch_size: int = 128, progress: Progress | None = None,
                        folds: int = 10) -> dict[str, object]:
    """Per-group accuracy of an RFW-style folder (one ``.bin`` per group, each verified on its own with the
    10-fold protocol; :mod:`~facefoundry.evaluate.groups`, "folder"); raises :class:`BenchmarkError` unless every
    group file verifies and there are two or more."""
    folder = Path(folder)
    benchmarks, errors = load_benchmarks(find_benchmarks(folder))
    if errors:
        raise BenchmarkError(f"{folder}: a group cannot be verified, so neither can the gap between groups ("
                             + "; ".join(f"{name}: {why}" for name, why in errors.items()) + ")")
    if len(benchmarks) < 2:
        raise BenchmarkError(f"{folder}: {len(benchmarks)} .bin file; a group folder needs one per group, two or more")
    named = None if progress is None else (lambda name, done, total: progress(f"{folder.name}/{name}", done, total))
    groups = {}
    for benchmark in benchmarks:
        r = verify(embed, benchmark, batch_size, named, folds)
        groups[benchmark.name] = {key: r[key] for key in ("accuracy", "pairs", "genuine_pairs", "impostor_pairs",
                                                          "accuracy_std", "summary", "thresholds")}
    return {"source": "folder", "path": str(folder), **summarise_groups(groups), "folds": folds}


def evaluate_benchmarks(embed: Embed, sources: str | Path | Iterable[str | Path], batch_size: int = 128,
                        progress: Progress | None = None, folds: int = 10) -> dict[str, object]:
    """Verify on every ``*.bin`` of a folder (or the listed files); a bad set is reported, the others still run.

    Returns ``sets`` (name -> :func:`verify` result, papers' order), ``errors`` (name -> one-line reason),
    ``order`` (every name, papers' order), ``average_accuracy`` over the sets that ran (``averaged_sets``), and
    ``standard_average``: the mean over LFW, CFP-FP, CPLFW, AgeDB-30 and CALFW when all five ran, else None.
    Only when the folder holds groups (a set with an export-pairs sidecar of two cells or more, or a subfolder of
    ``.bin`` files; :mod:`~facefoundry.evaluate.groups`): ``groups`` with ``sets`` (name -> :func:`cell_groups` or
    :func:`verify_group_folder` result: the set's stem or the subfolder's name) and ``errors`` (name -> reason).
    """
    benchmarks, errors = load_benchmarks(sources)
    folders = find_group_folders(sources) if isinstance(sources, str | Path) else []
    if not benchmarks and not errors and not folders:
        raise BenchmarkError(f"{sources}: no .bin benchmark files found")
    sets: dict[str, dict[str, object]] = {}
    group_sets: dict[str, dict[str, object]] = {}
    group_errors: dict[str, str] = {}
    for benchmark in benchmarks:
        try:
            sets[benchmark.name], distances = _verify(embed, benchmark, batch_size, progress, folds)
        except BenchmarkError as exc:  # an undecodable image or too few pairs: this set only
            errors[benchmark.name] = str(exc)
            continue
        try:
            cells = read_pair_cells(benchmark.path, benchmark.issame)
        except BenchmarkError as exc:  # a sidecar that does not fit: the set stands, its groups do not
            group_errors[benchmark.name] = str(exc)
            continue
        if cells is not None and len(set(cells)) > 1:  # one cell (export-pairs without --cells) is no comparison
            group_sets[benchmark.name] = cell_groups(distances, benchmark.issame, cells,
                                                     sets[benchmark.name]["thresholds"])  # type: ignore[arg-type]
    for folder in folders:
        try:
            if folder.name in group_sets or folder.name in group_errors:
                raise BenchmarkError(f"{folder}: a set of groups named {folder.name} exists already (its .bin's cells)")
            group_sets[folder.name] = verify_group_folder(embed, folder, batch_size, progress, folds)
        except BenchmarkError as exc:
            group_errors[folder.name] = str(exc)
    accuracies = [float(r["accuracy"]) for r in sets.values()]  # type: ignore[arg-type]
    standard = [float(sets[n]["accuracy"]) for n in STANDARD_SETS if n in sets]  # type: ignore[arg-type]
    order = sorted({*sets, *errors}, key=paper_order)
    out: dict[str, object] = {
        "sets": {n: sets[n] for n in order if n in sets}, "errors": {n: errors[n] for n in order if n in errors},
        "order": order, "average_accuracy": float(np.mean(accuracies)) if accuracies else None,
        "averaged_sets": [n for n in order if n in sets],
        "standard_average": float(np.mean(standard)) if len(standard) == len(STANDARD_SETS) else None}
    if group_sets or group_errors:
        out["groups"] = {"sets": dict(sorted(group_sets.items())), "errors": dict(sorted(group_errors.items()))}
    return out
