"""Per-group (fairness) verification: a model's accuracy on each demographic group, and how far apart they are.

Two sources of groups in a ``--benchmarks`` folder:

- **cells**: a ``.bin`` with the sidecar export-pairs writes beside it (``X.bin.pairs.json``, every pair's cell
  in file order). The set runs the standard 10-fold protocol once over all its pairs; each pair is judged with
  the threshold of its own fold (chosen on the other nine folds, over every cell); a cell's accuracy is the
  fraction of its pairs judged correctly.
- **folder**: a subfolder holding one ``.bin`` per group (RFW's layout: ``rfw/African.bin``, ``rfw/Asian.bin``,
  ...). Each group runs the standard 10-fold protocol on its own, as RFW reports it; its accuracy is that mean
  over folds. A group file that fails fails the whole folder: a gap over some of the groups would mislead.

Over the groups of a set (two or more): ``mean`` (unweighted, each group counts once), ``std`` (the
*population* standard deviation of the group accuracies, ``numpy.std`` with ``ddof=0``; the sample std is
``std * sqrt(k / (k - 1))`` for ``k`` groups) and ``gap`` (highest minus lowest accuracy). Accuracies are
fractions (0..1).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from facefoundry.evaluate.benchmarks import BenchmarkError, sidecar_path

STD_CONVENTION = "population (ddof=0) over the groups' accuracies"


def accuracy_by_group(correct: np.ndarray, issame: np.ndarray, labels: Sequence[str]) -> dict[str, dict]:
    """Per label (sorted): the fraction of its pairs judged ``correct``, and its pair counts by kind."""
    correct, issame = np.asarray(correct, dtype=bool), np.asarray(issame, dtype=bool)
    labels = np.asarray(labels, dtype=object)
    if not correct.shape == issame.shape == labels.shape:
        raise ValueError(f"{correct.size} judgements, {issame.size} issame flags and {labels.size} group labels")
    groups = {}
    for label in sorted(set(labels.tolist())):
        mine = labels == label
        groups[label] = {"accuracy": float(correct[mine].mean()), "pairs": int(mine.sum()),
                         "genuine_pairs": int(issame[mine].sum()), "impostor_pairs": int((~issame[mine]).sum())}
    return groups


def summarise_groups(groups: dict[str, dict]) -> dict[str, object]:
    """Mean, population std and gap (max - min) of the groups' ``accuracy``, with the lowest and highest group."""
    if len(groups) < 2:
        raise ValueError(f"{len(groups)} group(s): a per-group comparison needs two or more")
    names = list(groups)
    accuracies = np.array([float(groups[n]["accuracy"]) for n in names])
    return {"groups": groups, "order": names, "mean": float(accuracies.mean()), "std": float(accuracies.std()),
            "std_convention": STD_CONVENTION, "gap": float(accuracies.max() - accuracies.min()),
            "lowest": names[int(np.argmin(accuracies))], "highest": names[int(np.argmax(accuracies))],
            "summary": f"{100 * accuracies.mean():.2f} ± {100 * accuracies.std():.2f}"}


def read_pair_cells(bin_path: str | Path, issame: np.ndarray) -> list[str] | None:
    """Every pair's cell from the export-pairs sidecar of ``bin_path``, in file order; None without a sidecar.

    Raises :class:`BenchmarkError` when the sidecar is unreadable or does not describe the ``.bin``'s pairs
    (another count, or another ``issame`` flag anywhere)."""
    path = sidecar_path(bin_path)
    if not path.is_file():
        return None
    try:
        listing = json.loads(path.read_text())["pair_list"]
        cells = [str(p["cell"]) for p in listing]
        flags = [bool(p["issame"]) for p in listing]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BenchmarkError(f"{path}: not a readable pairs sidecar ({type(exc).__name__}: {exc})") from None
    issame = np.asarray(issame, dtype=bool)
    if len(cells) != issame.size or not np.array_equal(flags, issame):
        raise BenchmarkError(f"{path}: lists {len(cells)} pairs that do not match the {issame.size} pairs of "
                             f"{Path(bin_path).name} (a sidecar of another export?)")
    return cells
