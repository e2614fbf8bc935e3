"""Figures of an ``intrinsic.json`` result, drawn from the JSON alone (histograms are stored in it).

- ``intrinsic_scores.png``: genuine vs impostor judge scores, with the EER threshold and the same-person rule;
- ``intrinsic_uniqueness.png``: pairwise identity-centroid cosines (and, for dlib, centroid distances with the
  0.6 rule), and per identity the sampled vs the judged nearest-identity cosine;
- ``intrinsic_spread.png``: intra-class mean pairwise judge distance per identity, and for each pose/quality
  column the within-identity spread relative to the whole set's.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

PLOTS = ("intrinsic_scores.png", "intrinsic_uniqueness.png", "intrinsic_spread.png")
GENUINE, IMPOSTOR, SAMPLED, JUDGE = "#2a9d55", "#d1495b", "#3d6fb6", "#8a5cb8"


def _figure(ncols: int, title: str) -> tuple[Figure, list]:
    fig = Figure(figsize=(5.0 * ncols, 4.0), layout="constrained")
    fig.suptitle(title, fontsize=9)
    return fig, list(fig.subplots(1, ncols, squeeze=False)[0])


def _no_data(ax, title: str, note: str) -> None:
    ax.set_title(title, fontsize=10)
    ax.text(0.5, 0.5, f"no data\n{note}", ha="center", va="center", transform=ax.transAxes, color="gray")
    ax.set_xticks([])
    ax.set_yticks([])


def _steps(ax, hist: dict | None, key: str, color: str, label: str, density: bool = True) -> bool:
    """Draw one stored histogram series; False when it is empty."""
    if not hist or key not in hist:
        return False
    edges, counts = np.asarray(hist["edges"]), np.asarray(hist[key], np.float64)
    if not counts.sum():
        return False
    values = counts / (counts.sum() * np.diff(edges)) if density else counts
    ax.stairs(values, edges, fill=True, alpha=0.5, color=color, label=f"{label} (n={int(counts.sum()):,})")
    return True


def _zoom(ax, hist: dict, key: str, pad: int = 2) -> None:
    counts = np.asarray(hist[key])
    used = np.flatnonzero(counts)
    if used.size:
        edges = hist["edges"]
        ax.set_xlim(edges[max(used[0] - pad, 0)], edges[min(used[-1] + 1 + pad, len(edges) - 1)])


def _vline(ax, x: float | None, style: str, label: str) -> None:
    if x is not None and np.isfinite(x):
        ax.axvline(x, color="k", ls=style, lw=1, label=f"{label} {x:.3f}")


def plot_scores(result: dict, path: Path, title: str) -> None:
    m = result["metrics"]
    ver = m.get("verification", {})
    unit = "Euclidean distance (lower = same)" if m.get("metric") == "euclidean" else "cosine (higher = same)"
    fig, (ax,) = _figure(1, title)
    name = "genuine vs impostor pairs"
    if _steps(ax, ver.get("histogram"), "genuine", GENUINE, "genuine") | \
            _steps(ax, ver.get("histogram"), "impostor", IMPOSTOR, "impostor"):
        _vline(ax, ver.get("eer_threshold"), "--", f"EER {100 * ver.get('eer', float('nan')):.2f}% at")
        _vline(ax, m.get("same_person_threshold"), ":", "same-person rule")
        ax.set_title(name, fontsize=10)
        ax.set_xlabel(f"judge {unit}")
        ax.set_ylabel("density")
        ax.legend(fontsize=8)
    else:
        _no_data(ax, name, "needs genuine and impostor pairs")
    fig.savefig(path, dpi=100, metadata={"Software": None})


def plot_uniqueness(result: dict, path: Path, title: str) -> None:
    m = result["metrics"]
    uni, sep = m.get("uniqueness", {}), m.get("separation", {})
    dist = uni.get("distance_histogram")
    fig, axes = _figure(3 if dist else 2, title)
    name = "identity-centroid cosine, all pairs"
    if _steps(axes[0], uni.get("cosine_histogram"), "pairs", SAMPLED, "pairs", density=False):
        _zoom(axes[0], uni["cosine_histogram"], "pairs")
        _vline(axes[0], uni.get("p99_cosine"), ":", "p99")
        _vline(axes[0], uni.get("max_cosine"), "--", "max")
        if m.get("metric") == "cosine":
            _vline(axes[0], m.get("same_person_threshold"), "-", "same-person rule")
        axes[0].set_title(name, fontsize=10)
        axes[0].set_xlabel("cosine between identity centroids (judge)")
        axes[0].set_ylabel("identity pairs")
        axes[0].legend(fontsize=8)
    else:
        _no_data(axes[0], name, "needs two identities with faces")
    if dist:
        ax = axes[1]
        _steps(ax, dist, "pairs", SAMPLED, "pairs", density=False)
        _vline(ax, m.get("same_person_threshold"), "--", "same person below")
        frac = uni.get("indistinguishable_fraction")
        ax.set_title(f"centroid distance: {100 * (frac or 0):.3f}% of pairs indistinguishable", fontsize=10)
        ax.set_xlabel("Euclidean distance between identity centroids (judge)")
        ax.set_ylabel("identity pairs")
        ax.legend(fontsize=8)
    ax, name = axes[-1], "nearest other identity: sampled vs judged"
    pairs = sep.get("per_identity") or {}
    if pairs.get("sampled"):
        ax.scatter(pairs["sampled"], pairs["judge"], s=8, alpha=0.6, color=JUDGE)
        corr = sep.get("spearman")
        ax.set_title(name + (f" (Spearman {corr:.2f})" if corr is not None else ""), fontsize=10)
        ax.set_xlabel("sampled vectors: nearest-identity cosine")
        ax.set_ylabel("judge centroids: nearest-identity cosine")
    else:
        _no_data(ax, name, "no identities.parquet vectors, or one identity")
    fig.savefig(path, dpi=100, metadata={"Software": None})


def plot_spread(result: dict, path: Path, title: str) -> None:
    m = result["metrics"]
    intra, spread, div = m.get("intra_class", {}), m.get("spread", {}), m.get("diversity", {})
    fig, (left, middle, right) = _figure(3, title)
    name = "intra-class variation"
    if _steps(left, intra.get("histogram"), "identities", GENUINE, "identities", density=False):
        left.set_title(name, fontsize=10)
        left.set_xlabel(f"mean pairwise judge distance within an identity ({intra.get('distance')})")
        left.set_ylabel("identities")
        _vline(left, m.get("same_person_threshold") if m.get("metric") == "euclidean" else None, ":",
               "same-person rule")
        left.legend(fontsize=8)
    else:
        _no_data(left, name, "needs identities with two or more faces")
    name = "diversity within identities"
    if _steps(middle, div.get("within_identity_histogram"), "identities", SAMPLED, "identities", density=False):
        vendi = div.get("centroids", {}).get("vendi")
        middle.set_title(name + (f" (centroids' Vendi score {vendi:.1f})" if vendi is not None else ""), fontsize=10)
        middle.set_xlabel("Vendi score of an identity's images (cosine kernel; 1 = all alike)")
        middle.set_ylabel("identities")
    else:
        _no_data(middle, name, "needs identities with two or more faces")
    name = "pose / quality spread within identities"
    ratios = {}
    for column, s in spread.items():
        overall, within = s.get("overall", {}).get("std"), s.get("within_identity_std", {}).get("mean")
        if overall and within is not None:
            ratios[column] = within / overall
    if ratios:
        bars = right.barh(list(ratios), list(ratios.values()), color=SAMPLED)
        right.bar_label(bars, fmt="{:.2f}", fontsize=8, padding=2)
        right.axvline(1.0, color="k", ls=":", lw=1)
        right.invert_yaxis()
        right.set_title(name, fontsize=10)
        right.set_xlabel("mean within-identity std / std over all judged images")
        right.tick_params(axis="y", labelsize=8)
    else:
        _no_data(right, name, "no pose or quality values")
    fig.savefig(path, dpi=100, metadata={"Software": None})


def plot_intrinsic(result: dict, out_dir: Path) -> list[str]:
    """Draw the three figures of ``result`` into ``out_dir``; return their file names."""
    out_dir.mkdir(parents=True, exist_ok=True)
    s = result.get("sample", {})
    title = (f"{result.get('run_id')} - intrinsic, judge: {result.get('judge', {}).get('name')}\n"
             f"{s.get('status', {}).get('ok', 0):,} faces of {s.get('images_sampled', 0):,} images sampled from "
             f"{s.get('identities_sampled', 0):,} of {s.get('identities_with_kept_images', 0):,} identities "
             f"(seed {s.get('seed')})")
    plot_scores(result, out_dir / PLOTS[0], title)
    plot_uniqueness(result, out_dir / PLOTS[1], title)
    plot_spread(result, out_dir / PLOTS[2], title)
    return list(PLOTS)
