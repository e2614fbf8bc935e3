"""``facefoundry report RUN``: statistics and plots of a finished (or partial) run.

Everything exact comes from the manifests and ``identities.parquet``; distributions that manifests
cannot hold (histograms of scores, pose, images per identity) come from a bounded, deterministic
sample: whole shards in a seeded random order until ``max_rows`` rows, reading only the score
columns (Parquet column projection: no image bytes). The image grid decodes at most
``GRID_IDENTITIES x GRID_IMAGES`` images from the first shards, reading only the row groups that
hold them. Cost is therefore bounded whatever the size of the run.

The exact numbers are the run facts (:mod:`facefoundry.runfacts`), which the dataset card reads too:
only done units count, so a partial run can be reported; ``summary.json`` says how many units are done
of those planned. "Accepted" means passed every filter: ``generated - sum(drops)`` (in ``annotate``
mode rejected rows are stored too, so manifest ``stats`` and the sample include them, split by
``filter_reason`` in the plots).

Output (``<run>/report/`` by default): ``separation.png``, ``consistency.png``, ``funnel.png``,
``quality.png``, ``pose.png``, ``grid.png`` and ``summary.json``.

Pose is a *proxy* from the 5 dlib landmarks (no 3-D model): with eye centres ``R`` (image-right)
and ``L`` and the nose base ``N``, ``d = |R - L|`` and ``u = (R - L) / d``:
``yaw_proxy = (N - (R + L) / 2) . u / d`` (0 for a frontal face, > 0 when the nose is toward the
image-right eye), ``pitch_proxy`` = distance of ``N`` below the eye line / ``d`` (depends on pitch
and face shape), ``roll`` = angle of the eye line in degrees (a real in-plane angle).
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, StrMethodFormatter
from PIL import Image

from facefoundry.config import RunConfig
from facefoundry.layout import IDENTITIES_FILE, PLOTS, REPORT_DIR, SUMMARY_FILE
from facefoundry.runfacts import RunFacts, RunFactsError, read_run_facts

SCORE_COLUMNS = ("identity", "filter_reason", "face_count", "face_score", "face_box", "landmarks",
                 "judge_similarity", "judge_distance", "id_similarity")
SIMILARITY_COLUMNS = ("judge_similarity", "judge_distance", "id_similarity")
GRID_IDENTITIES, GRID_IMAGES, GRID_SHARDS, THUMB = 8, 8, 64, 112
KEPT, REJECTED = "#2a9d55", "#d1495b"


class ReportError(RuntimeError):
    """The folder is not a run, or holds nothing to report yet."""


def build_report(run_dir: Path, out_dir: Path | None = None, max_rows: int = 200_000, seed: int = 0) -> dict:
    """Write the plots and ``summary.json`` of the run in ``run_dir``; return the summary."""
    run_dir = Path(run_dir)
    try:
        facts = read_run_facts(run_dir)
    except RunFactsError as exc:
        raise ReportError(str(exc)) from None
    cfg, manifests = facts.config, facts.manifests
    out_dir = Path(out_dir) if out_dir is not None else run_dir / REPORT_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    nn, top1 = _identities(run_dir)
    sample = _sample(run_dir, manifests, max_rows, seed)
    summary = _summary(facts, sample)
    run_id = facts.run_id or run_dir.name
    title = f"{run_id} — " + _sample_note(summary["sample"], cfg.filter.mode)
    _plot_separation(out_dir / "separation.png", nn, top1, facts.identities, cfg, run_id)
    summary["consistency"] = _plot_consistency(out_dir / "consistency.png", sample, cfg, title)
    _plot_funnel(out_dir / "funnel.png", summary, title)
    _plot_quality(out_dir / "quality.png", sample, title)
    summary["pose"] = _plot_pose(out_dir / "pose.png", sample, title)
    summary["grid"] = _plot_grid(out_dir / "grid.png", run_dir, manifests, run_id)
    summary["plots"] = list(PLOTS)
    summary = _clean(summary)
    (out_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2, allow_nan=False) + "\n")
    return summary


# ---------------------------------------------------------------- reading


def _identities(run_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """Nearest-neighbour and top-1 gallery cosines of every identity (NaN where absent)."""
    path = run_dir / IDENTITIES_FILE
    if not path.exists():
        return np.zeros(0), np.zeros(0)
    names = set(pq.read_schema(path).names)
    table = pq.read_table(path, columns=[c for c in ("nn_cosine", "gallery_top1") if c in names])
    values = [_floats(table.column(c)) if c in names else np.full(table.num_rows, np.nan)
              for c in ("nn_cosine", "gallery_top1")]
    return values[0], values[1]


def _floats(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """float64 values with nulls as NaN."""
    return column.to_numpy(zero_copy_only=False).astype(np.float64) if len(column) else np.zeros(0)


def _vectors(column: pa.ChunkedArray, width: int) -> np.ndarray:
    """(n, width) float64 array of a fixed-size-list column; null lists are NaN rows."""
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    out = np.full((len(arr), width), np.nan)
    valid = arr.is_valid().to_numpy(zero_copy_only=False)
    if valid.any():
        values = arr.filter(pa.array(valid)).flatten()
        out[valid] = values.to_numpy(zero_copy_only=False).astype(np.float64).reshape(-1, width)
    return out


def _sample(run_dir: Path, manifests: list[dict], max_rows: int, seed: int) -> dict:
    """Score columns of whole shards in a seeded order until ``max_rows`` rows (the last shard cut)."""
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("identity", "kept", "reason", "face_count", "face_score",
                                                          "face_box", "landmarks", *SIMILARITY_COLUMNS)}
    per_identity, rows, shards, cut = [], 0, 0, False
    for i in np.random.default_rng(seed).permutation(len(manifests)):
        if rows >= max_rows:
            break
        manifest = manifests[i]
        path = run_dir / str(manifest.get("shard", ""))
        if not path.is_file():  # removed since the manifests were read
            continue
        names = set(pq.read_schema(path).names)
        table = pq.read_table(path, columns=[c for c in SCORE_COLUMNS if c in names])
        if rows + table.num_rows > max_rows:
            table, cut = table.slice(0, max_rows - rows), True
        n, rows, shards = table.num_rows, rows + table.num_rows, shards + 1
        ids = table.column("identity").to_numpy(zero_copy_only=False).astype(np.int64)
        reason = np.array(table.column("filter_reason").to_pylist() if "filter_reason" in names else [None] * n,
                          dtype=object)
        kept = np.array([r is None for r in reason], dtype=bool)
        start, stop = manifest.get("identity_start"), manifest.get("identity_stop")
        if not cut and isinstance(start, int) and isinstance(stop, int) and stop > start:
            # whole unit: accepted images of each of its identities, 0 for one with none left
            per_identity.append(np.bincount(ids[kept] - start, minlength=stop - start)[: stop - start])
        parts["identity"].append(ids)
        parts["kept"].append(kept)
        parts["reason"].append(reason)
        for col in ("face_count", "face_score", *SIMILARITY_COLUMNS):
            parts[col].append(_floats(table.column(col)) if col in names else np.full(n, np.nan))
        for col, width in (("face_box", 4), ("landmarks", 10)):
            parts[col].append(_vectors(table.column(col), width) if col in names else np.full((n, width), np.nan))
    empty = {"face_box": np.zeros((0, 4)), "landmarks": np.zeros((0, 10)), "kept": np.zeros(0, bool),
             "reason": np.zeros(0, object)}
    sample = {k: np.concatenate(v) if v else empty.get(k, np.zeros(0)) for k, v in parts.items()}
    sample["per_identity"] = np.concatenate(per_identity) if per_identity else np.zeros(0, np.int64)
    sample["info"] = {"max_rows": max_rows, "seed": seed, "rows": rows, "shards_read": shards,
                      "shards_total": len(manifests), "last_shard_cut": cut,
                      "columns": list(SCORE_COLUMNS),
                      "method": "whole shards in seeded random order until max_rows rows; score columns only "
                                "(no image bytes); per-identity counts from whole shards only"}
    return sample


# ---------------------------------------------------------------- summary


def _summary(facts: RunFacts, sample: dict) -> dict:
    cfg, ident_meta = facts.config, facts.identities
    generated, accepted, in_units = facts.generated, facts.accepted, facts.identities_in_units
    per = sample["per_identity"]
    return {
        "run_id": facts.run_id,
        "config_hash": facts.config_hash,
        "filter_mode": cfg.filter.mode,
        "units": {"done": len(facts.manifests), "planned": facts.planned_units},
        "identities": {
            "count": ident_meta.get("count", cfg.identities.count),
            "in_finished_units": in_units,
            "with_rows": facts.identities_kept,
            "sampler": ident_meta.get("sampler"),
            "max_cosine_rule": ident_meta.get("max_cosine"),
            "nn_cosine": ident_meta.get("nn_cosine"),
            "leakage": ident_meta.get("leakage"),
        },
        "images": {
            "generated": generated,
            "stored": facts.rows,
            "accepted": accepted,
            "rejected": facts.rejected,
            "acceptance": accepted / generated if generated else None,
            "acceptance_pct": round(100.0 * accepted / generated, 3) if generated else None,
        },
        "drops": facts.drops(with_zeros=True),
        "columns": facts.column_stats(),
        "images_per_identity": {
            "target": cfg.images.per_identity,
            "mean_accepted": accepted / in_units if in_units else None,  # exact, from manifests
            "sample": {
                "identities": int(per.size),
                **(_describe(per.astype(np.float64)) if per.size else {}),
                "histogram": {str(k): int(v) for k, v in enumerate(np.bincount(per)) if v} if per.size else {},
            },
        },
        "sample": sample["info"],
    }


def _describe(values: np.ndarray) -> dict:
    values = values[np.isfinite(values)]
    if not values.size:
        return {"count": 0}
    q = np.quantile(values, [0.0, 0.05, 0.5, 0.95, 1.0])
    return {"count": int(values.size), "mean": float(values.mean()), "min": float(q[0]), "p05": float(q[1]),
            "p50": float(q[2]), "p95": float(q[3]), "max": float(q[4])}


def _clean(value: object) -> object:
    """JSON-safe copy: numpy scalars to Python, NaN/inf to None."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


# ---------------------------------------------------------------- plots


def _sample_note(info: dict, mode: str) -> str:
    note = (f"sample: {info['rows']:,} rows from {info['shards_read']}/{info['shards_total']} shards "
            f"(bound {info['max_rows']:,} rows, seed {info['seed']})")
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
    return {"accepted": _describe(good), "rejected": _describe(bad)}


def _plot_separation(path: Path, nn: np.ndarray, top1: np.ndarray, meta: dict, cfg: RunConfig, run_id: str) -> None:
    fig, (left, right) = _figure(2, f"{run_id} — identity separation and leakage (identities.parquet, all rows)")
    title = "nearest-neighbour cosine between identities"
    values = nn[np.isfinite(nn)]
    if values.size:
        left.hist(values, bins=50, histtype="stepfilled", color="#3d6fb6")
        rule = meta.get("max_cosine", cfg.identities.max_cosine)
        if rule is not None:
            left.axvline(rule, color="k", ls="--", lw=1, label=f"max_cosine rule {rule:g}")
            left.legend(fontsize=8)
        s = _describe(values)
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


def _plot_consistency(path: Path, sample: dict, cfg: RunConfig, title: str) -> dict:
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


def _plot_funnel(path: Path, summary: dict, title: str) -> None:
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


def _plot_quality(path: Path, sample: dict, title: str) -> None:
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


def _plot_pose(path: Path, sample: dict, title: str) -> dict:
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
        out[key] = _describe(proxies[key])
    _save(fig, path)
    return {"definition": "see facefoundry.report docstring: landmark-asymmetry proxies, roll in degrees", **out}


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
        cols = [c for c in ("identity", "image_index", "filter_reason") if c in names]
        meta = pf.read(columns=cols).to_pydict()
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
                                       meta["filter_reason"][r] if "filter_reason" in meta else None, data(r))
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


def _plot_grid(path: Path, run_dir: Path, manifests: list[dict], run_id: str) -> dict:
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
