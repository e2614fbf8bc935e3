"""The report's plots: one PNG each (see :mod:`facefoundry.publishing.report` for what they show and where the data
comes from). Pose is a *proxy* from the 5 dlib landmarks: :func:`facefoundry.faces.quality.pose_proxies`."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, StrMethodFormatter
from PIL import Image

from facefoundry.config import RunConfig
from facefoundry.faces.quality import pose_proxies
from facefoundry.runfolder.rows import rejection_reasons, with_reasons

SIMILARITY_COLUMNS = ("judge_similarity", "judge_distance", "id_similarity")
GRID_IDENTITIES, GRID_IMAGES, GRID_SHARDS, THUMB = 8, 8, 64, 112
KEPT, REJECTED = "#2a9d55", "#d1495b"


def describe(values: np.ndarray) -> dict:
    """Count, mean and quantiles (min, p05, p50, p95, max) of the finite values."""
    values = values[np.isfinite(values)]
    if not values.size:
        return {"count": 0}
    q = np.quantile(values, [0.0, 0.05, 0.5, 0.95, 1.0])
    return {"count": int(values.size), "mean": float(values.mean()), "min": float(q[0]), "p05": float(q[1]),
            "p50": float(q[2]), "p95": float(q[3]), "max": float(q[4])}


def sample_note(info: dict, mode: str) -> str:
    note = (f"sample: {info['rows']:,} rows from {info['shards_read']}/{info['shards_total']} shards "
            f"(bound {info['max_rows']:,} rows or {info['max_shards']:,} shards, seed {info['seed']})")
    if mode == "drop":
        return note + "\ndrop mode: rejected images are not stored, only accepted images are shown"
    return note + "\nannotate mode: rejected images are stored with their filter_reason"


def _figure(ncols: int, title: str, width: float = 4.6, height: float = 3.8) -> tuple[Figure, list]:
    fig = Figure(figsize=(width * ncols, height), layout="constrained")
    fig.suptitle(title, fontsize=9)
    return fig, list(fig.subplots(1, ncols, squeeze=False)[0])


def _save(fig: Figure, path: Path) -> None:
    fig.savefig(path, dpi=100, metadata={"Software": None})


def _no_data(ax, title: str, note: str) -> None:
    ax.set_title(title, fontsize=10)
    ax.text(0.5, 0.5, f"no data\n{note}", ha="center", va="center", transform=ax.transAxes, color="gray", wrap=True)
    ax.set_xticks([])
    ax.set_yticks([])


def _hist_split(ax, values: np.ndarray, kept: np.ndarray, title: str, xlabel: str, note: str,
                threshold: float | None = None, threshold_label: str = "threshold") -> dict:
    """Histogram of accepted vs rejected images (finite values only); 'no data' when there are none."""
    finite = np.isfinite(values)
    good, bad = values[finite & kept], values[finite & ~kept]
    if not good.size and not bad.size:
        _no_data(ax, title, note)
        return {"accepted": {"count": 0}, "rejected": {"count": 0}}
    both = np.concatenate([good, bad])
    lo, hi = float(both.min()), float(both.max())
    if threshold is not None:
        lo, hi = min(lo, threshold), max(hi, threshold)
    if hi - lo < 1e-9:
        lo, hi = lo - 0.5, hi + 0.5
    bins = np.linspace(lo, hi, 41)
    for v, color, label in ((good, KEPT, "accepted"), (bad, REJECTED, "rejected")):
        if v.size:
            ax.hist(v, bins=bins, histtype="stepfilled", color=color, alpha=0.55, label=f"{label} (n={v.size:,})")
    if threshold is not None:
        ax.axvline(threshold, color="k", ls="--", lw=1, label=f"{threshold_label} {threshold:g}")
    if good.size and bad.size and max(good.size, bad.size) > 20 * min(good.size, bad.size):
        ax.set_yscale("log")  # keep the rarer group visible
    else:
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("images")
    ax.legend(fontsize=8)
    return {"accepted": describe(good), "rejected": describe(bad)}


def plot_separation(path: Path, nn: np.ndarray, top1: np.ndarray, meta: dict, cfg: RunConfig, run_id: str) -> None:
    fig, (left, right) = _figure(2, f"{run_id} — identity separation and leakage (identities.parquet, all rows)")
    title = "nearest-neighbour cosine between identities"
    values = nn[np.isfinite(nn)]
    if values.size:
        left.hist(values, bins=50, histtype="stepfilled", color="#3d6fb6")
        rule = meta.get("max_cosine", cfg.identities.max_cosine)
        if rule is not None:
            left.axvline(rule, color="k", ls="--", lw=1, label=f"max_cosine rule {rule:g}")
            left.legend(fontsize=8)
        s = describe(values)
        left.text(0.02, 0.97, f"n={s['count']:,}\nmin {s['min']:.4f}\np50 {s['p50']:.4f}\nmax {s['max']:.4f}",
                  transform=left.transAxes, va="top", fontsize=8, family="monospace")
        left.set_title(title, fontsize=10)
        left.set_xlabel("cosine to the nearest other identity")
        left.set_ylabel("identities")
        left.yaxis.set_major_locator(MaxNLocator(integer=True))
    else:
        _no_data(left, title, "fewer than 2 identities or no identities.parquet")
    title = "top-1 cosine to real-face galleries (leakage)"
    values = top1[np.isfinite(top1)]
    if values.size:
        right.hist(values, bins=50, histtype="stepfilled", color="#8a5cb8")
        leak = meta.get("leakage") or {}
        for key, style, label in (("max_cosine", "--", "reject above"), ("morph_cosine", ":", "morph flag at")):
            if leak.get(key) is not None:
                right.axvline(leak[key], color="k", ls=style, lw=1, label=f"{label} {leak[key]:g}")
        right.legend(fontsize=8)
        right.set_title(title, fontsize=10)
        right.set_xlabel("cosine to the closest gallery vector")
        right.set_ylabel("identities")
        right.yaxis.set_major_locator(MaxNLocator(integer=True))
    else:
        _no_data(right, title, "not screened (no identities.leakage.galleries)")
    _save(fig, path)


def plot_consistency(path: Path, sample: dict, cfg: RunConfig, title: str) -> dict:
    present = [c for c in SIMILARITY_COLUMNS if c != "id_similarity" or np.isfinite(sample[c]).any()]
    fig, axes = _figure(len(present), "consistency: similarity of each image to its identity\n" + title)
    max_dist = cfg.filter.max_judge_distance
    labels = {
        "judge_similarity": ("judge cosine to identity centroid", "cosine of the dlib descriptor to its identity's "
                             "leave-one-out centroid"),
        "judge_distance": ("judge distance to identity centroid", "Euclidean distance (dlib; same person < 0.6)"),
        "id_similarity": ("cosine to the conditioning vector", "cosine (conditioning encoder)"),
    }
    out = {}
    for ax, col in zip(axes, present, strict=True):
        name, xlabel = labels[col]
        out[col] = _hist_split(ax, sample[col], sample["kept"], name, xlabel,
                               "no image has a score (no faces, or < 2 faces per identity)",
                               threshold=max_dist if col == "judge_distance" else None,
                               threshold_label="max_judge_distance")
    _save(fig, path)
    return out


def plot_funnel(path: Path, summary: dict, title: str) -> None:
    fig, (left, right) = _figure(2, title, width=5.4)
    images, drops = summary["images"], summary["drops"]
    generated = images["generated"]
    name = "acceptance funnel (all manifests)"
    if generated:
        labels, values, remaining = [f"generated ({generated:,})"], [generated], generated
        for reason, n in drops.items():
            remaining -= n
            labels.append(f"− {reason} ({n:,})")
            values.append(remaining)
        labels.append(f"accepted ({images['accepted']:,})")
        values.append(images["accepted"])
        colors = ["#3d6fb6"] + [REJECTED if n else "#c9c9c9" for n in drops.values()] + [KEPT]
        bars = left.barh(range(len(values)), values, color=colors)
        left.bar_label(bars, labels=[f"{v:,} ({100 * v / generated:.1f}%)" for v in values], fontsize=8, padding=2)
        left.set_yticks(range(len(values)), labels, fontsize=8)
        left.invert_yaxis()
        left.set_xlim(0, generated * 1.35)
        left.xaxis.set_major_locator(MaxNLocator(4, integer=True))
        left.xaxis.set_major_formatter(StrMethodFormatter("{x:,.0f}"))
        left.set_xlabel("images remaining after each rejection reason (decision order)")
        left.set_title(f"{name}: {images['acceptance_pct']:.1f}% accepted", fontsize=10)
    else:
        _no_data(left, name, "no image generated")
    per = summary["images_per_identity"]
    name = "accepted images per identity"
    hist = per["sample"]["histogram"]
    if hist:
        keys = [int(k) for k in hist]
        xs = np.arange(0, max(keys) + 1)
        counts = np.bincount(keys, weights=[hist[str(k)] for k in keys], minlength=xs.size)
        right.bar(xs, counts, color=KEPT)
        if per.get("target"):
            right.axvline(per["target"], color="k", ls=":", lw=1, label=f"generated per identity {per['target']}")
            right.legend(fontsize=8)
        right.set_title(f"{name}\n({per['sample']['identities']:,} identities of whole sampled shards)", fontsize=10)
        right.set_xlabel("accepted images")
        right.yaxis.set_major_locator(MaxNLocator(integer=True))
        right.set_ylabel("identities")
    else:
        _no_data(right, name, "no whole shard in the sample")
    _save(fig, path)


def plot_quality(path: Path, sample: dict, title: str) -> None:
    fig, (score, size, count) = _figure(3, "quality\n" + title)
    kept = sample["kept"]
    _hist_split(score, sample["face_score"], kept, "detector score of the chosen face", "dlib detector score",
                "no face detected in the sample")
    box = sample["face_box"]
    side = np.sqrt(np.clip(box[:, 2] - box[:, 0], 0, None) * np.clip(box[:, 3] - box[:, 1], 0, None))
    _hist_split(size, side, kept, "face size", "sqrt(box area) in pixels", "no face detected in the sample")
    faces = sample["face_count"]
    name = "faces detected per image"
    if faces.size:
        labels = ["0", "1", "2", "3+", "n/a"]
        finite = np.isfinite(faces)
        values = [int((faces == k).sum()) for k in (0, 1, 2)] + [int((faces >= 3).sum()), int((~finite).sum())]
        bars = count.bar(labels, values, color=["#c9c9c9", KEPT, REJECTED, REJECTED, "#888888"])
        count.bar_label(bars, fmt="{:,.0f}", fontsize=8)
        count.set_title(name, fontsize=10)
        count.set_xlabel("faces >= min_face_score (n/a: undecodable)")
        count.set_ylabel("images")
    else:
        _no_data(count, name, "empty sample")
    _save(fig, path)


def plot_pose(path: Path, sample: dict, title: str) -> dict:
    fig, axes = _figure(3, "pose from the 5 dlib landmarks (proxies, not angles, except roll)\n" + title)
    proxies = pose_proxies(sample["landmarks"])
    labels = {
        "yaw_proxy": ("yaw proxy", "nose offset along the eye line / eye distance (0 = frontal)"),
        "pitch_proxy": ("pitch proxy", "nose drop below the eye line / eye distance"),
        "roll_deg": ("roll", "angle of the eye line (degrees)"),
    }
    out = {}
    for ax, (key, (name, xlabel)) in zip(axes, labels.items(), strict=True):
        _hist_split(ax, proxies[key], sample["kept"], name, xlabel, "no landmarks in the sample (no face detected)")
        out[key] = describe(proxies[key])
    _save(fig, path)
    return {"definition": "see facefoundry.publishing.report docstring: landmark-asymmetry proxies, roll in degrees",
            **out}


def _grid_rows(run_dir: Path, manifests: list[dict]) -> list[tuple[int, list[tuple[int, str | None, bytes | None]]]]:
    """Up to GRID_IDENTITIES identities x GRID_IMAGES images from the first shards (only their row groups read)."""
    picked: list[tuple[int, list]] = []
    for manifest in manifests[:GRID_SHARDS]:
        if len(picked) >= GRID_IDENTITIES:
            break
        path = run_dir / str(manifest.get("shard", ""))
        if not path.is_file() or not manifest.get("rows"):
            continue
        pf = pq.ParquetFile(path)
        names = set(pf.schema_arrow.names)
        if not {"image", "identity"} <= names:
            continue
        table = pf.read(columns=with_reasons(names, ("identity", "image_index")))
        meta = table.to_pydict() | {"reason": rejection_reasons(table).tolist()}
        chosen: dict[int, list[int]] = {}
        for row, identity in enumerate(meta["identity"]):
            rows = chosen.get(identity)
            if rows is None:
                if len(picked) + len(chosen) >= GRID_IDENTITIES:
                    continue
                rows = chosen[identity] = []
            if len(rows) < GRID_IMAGES:
                rows.append(row)
        wanted = sorted(r for rows in chosen.values() for r in rows)
        starts = np.cumsum([0] + [pf.metadata.row_group(g).num_rows for g in range(pf.num_row_groups)])
        groups = sorted({int(np.searchsorted(starts, r, side="right") - 1) for r in wanted})
        images = pf.read_row_groups(groups, columns=["image"]).column("image").to_pylist()
        base = {g: sum(int(starts[h + 1] - starts[h]) for h in groups if h < g) for g in groups}

        def data(row: int, base=base, starts=starts, images=images) -> bytes | None:
            g = int(np.searchsorted(starts, row, side="right") - 1)
            cell = images[base[g] + row - int(starts[g])]
            return cell.get("bytes") if isinstance(cell, dict) else None

        for identity, rows in chosen.items():
            picked.append((identity, [(meta["image_index"][r] if "image_index" in meta else r,
                                       meta["reason"][r], data(r))
                                      for r in rows]))
    return picked


def _thumbnail(data: bytes | None) -> np.ndarray | None:
    try:
        with Image.open(io.BytesIO(data)) as image:
            image = image.convert("RGB")
            image.thumbnail((THUMB, THUMB))
            return np.asarray(image)
    except Exception:  # an undecodable image is shown as such, never a failed report
        return None


def plot_grid(path: Path, run_dir: Path, manifests: list[dict], run_id: str) -> dict:
    picked = _grid_rows(run_dir, manifests)
    title = (f"{run_id}\nimages of the first {len(picked)} identities (first shards, up to {GRID_IMAGES} each)\n"
             "green: accepted, red: rejected (reason)")
    if not picked:
        fig, (ax,) = _figure(1, title, width=8.0, height=3.0)
        _no_data(ax, "image grid", "no stored image in the first shards")
        _save(fig, path)
        return {"identities": 0, "images": 0}
    ncols = max(len(rows) for _, rows in picked)
    width, height = max(1.5 * ncols + 0.6, 7.0), 1.6 * len(picked) + 0.8
    fig = Figure(figsize=(width, height))  # fixed margins: constrained layout is slow on many axes
    fig.suptitle(title, fontsize=9, y=1 - 0.08 / height, va="top")
    axes = fig.subplots(len(picked), ncols, squeeze=False)
    fig.subplots_adjust(left=0.45 / width, right=1 - 0.1 / width, top=1 - 0.75 / height, bottom=0.05 / height,
                        wspace=0.08, hspace=0.3)
    for r, (identity, rows) in enumerate(picked):
        for c in range(ncols):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(f"identity {identity}", fontsize=8)
            if c >= len(rows):
                ax.set_frame_on(False)
                continue
            index, reason, data = rows[c]
            thumb = _thumbnail(data)
            if thumb is None:
                ax.text(0.5, 0.5, "undecodable", ha="center", va="center", fontsize=7, transform=ax.transAxes)
            else:
                ax.imshow(thumb)
            color = KEPT if reason is None else REJECTED
            ax.set_title(f"#{index} " + ("ok" if reason is None else reason), fontsize=7, color=color)
            for spine in ax.spines.values():
                spine.set_color(color)
                spine.set_linewidth(2)
    _save(fig, path)
    return {"identities": len(picked), "images": sum(len(rows) for _, rows in picked)}


def plot_attributes(path: Path, label_counts: dict[str, dict[str, int]], balance: dict | None, title: str) -> None:
    """Estimated attributes: the images' shares per value (from the manifests) and, for a balanced run, each
    cell's target against what the kept identities' probes achieved."""
    fig, (left, right) = _figure(2, title, width=5.4)
    name = "estimated attributes of the images (estimates, not ground truth)"
    if label_counts:
        labels, shares, starts = [], [], []
        for column, values in label_counts.items():
            total = sum(values.values())
            starts.append(len(labels))
            labels += [f"{column}: {v}" for v in values]
            shares += [n / total for n in values.values()]
        left.barh(range(len(labels)), shares, color="#3d6fb6")
        left.set_yticks(range(len(labels)), labels, fontsize=8)
        left.invert_yaxis()
        left.set_xlim(0, 1)
        left.set_xlabel("share of the images with a measured face")
        left.set_title(name, fontsize=10)
    else:
        _no_data(left, name, "no attributes section, or no measurable face")
    name = "balance: target vs achieved per cell (identities' probes)"
    if balance:
        cells = list(balance["target_cells"])
        ys = np.arange(len(cells))
        right.barh(ys - 0.2, [balance["target_cells"][c] for c in cells], height=0.4, color="#c9c9c9", label="target")
        right.barh(ys + 0.2, [balance["achieved_cells"].get(c, 0.0) for c in cells], height=0.4, color=KEPT,
                   label="achieved")
        right.set_yticks(ys, cells, fontsize=8)
        right.invert_yaxis()
        right.set_xlabel(f"share of the identities (tolerance {balance['tolerance']})")
        right.legend(fontsize=8)
        right.set_title(name, fontsize=10)
    else:
        _no_data(right, name, "the run was not balanced (no balance section)")
    _save(fig, path)


def plot_groups(path: Path, panels: list[tuple[str, dict]], title: str) -> None:
    """Per-group verification: one panel per (recipe, set of groups), each group's accuracy as a bar (the lowest in
    red) with the mean over the groups as a dashed line. ``panels``: (heading, a set's result as
    :mod:`facefoundry.evaluate.groups` describes it)."""
    most = max(len(g["order"]) for _, g in panels)
    fig, axes = _figure(len(panels), title, width=5.4, height=max(3.0, 1.2 + 0.35 * most))
    for ax, (heading, g) in zip(axes, panels, strict=True):
        labels = list(g["order"])
        accuracies = [100 * g["groups"][label]["accuracy"] for label in labels]
        ys = np.arange(len(labels))
        ax.barh(ys, accuracies, color=["#d1495b" if label == g["lowest"] else "#3d6fb6" for label in labels])
        ax.axvline(100 * g["mean"], color="black", linestyle="--", linewidth=1)
        for y, accuracy in zip(ys, accuracies, strict=True):
            ax.text(accuracy, y, f" {accuracy:.2f}", va="center", fontsize=8)
        ax.set_yticks(ys, labels, fontsize=8)
        ax.invert_yaxis()
        low = min(accuracies)
        ax.set_xlim(max(0.0, low - max(5.0, 100 * g["gap"])), 100.5)
        ax.set_xlabel("verification accuracy (%)")
        ax.set_title(f"{heading}\nmean ± std {g['summary']} (dashed), gap {100 * g['gap']:.2f}", fontsize=10)
    _save(fig, path)
