"""``facefoundry report RUN``: statistics and plots of a finished (or partial) run.

Everything exact comes from the manifests and ``identities.parquet``; distributions that manifests
cannot hold (histograms of scores, pose, images per identity) come from a bounded, deterministic
sample: whole shards in a seeded random order until ``max_rows`` rows or ``MAX_SAMPLE_SHARDS`` shards,
reading only the score columns (Parquet column projection: no image bytes). The image grid decodes at most
``GRID_IDENTITIES x GRID_IMAGES`` images from the first shards, reading only the row groups that
hold them. Cost is therefore bounded whatever the size of the run.

The exact numbers are the run facts (:mod:`facefoundry.runfolder.runfacts`), which the dataset card reads too:
only done units count, so a partial run can be reported; ``summary.json`` says how many units are done
of those planned. "Accepted" means passed every filter: ``generated - sum(drops)`` (in ``annotate``
mode rejected rows are stored too, so manifest ``stats`` and the sample include them, split by
``filter_reason`` in the plots).

Output (``<run>/report/`` by default): ``separation.png``, ``consistency.png``, ``funnel.png``,
``quality.png``, ``pose.png``, ``grid.png`` and ``summary.json``; with per-group verification results
(:mod:`facefoundry.evaluate.groups`), ``verification_groups.png``.

Pose is a *proxy* from the 5 dlib landmarks (no 3-D model): with eye centres ``R`` (image-right)
and ``L`` and the nose base ``N``, ``d = |R - L|`` and ``u = (R - L) / d``:
``yaw_proxy = (N - (R + L) / 2) . u / d`` (0 for a frontal face, > 0 when the nose is toward the
image-right eye), ``pitch_proxy`` = distance of ``N`` below the eye line / ``d`` (depends on pitch
and face shape), ``roll`` = angle of the eye line in degrees (a real in-plane angle).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from facefoundry.evaluate.intrinsic_run import report_intrinsic
from facefoundry.evaluate.train_verify import groups_table_markdown, read_results, results_table_markdown
from facefoundry.jsonsafe import json_safe
from facefoundry.layout import IDENTITIES_FILE, PLOTS, REPORT_DIR, SUMMARY_FILE
from facefoundry.publishing.report_plots import (
    SIMILARITY_COLUMNS,
    describe,
    plot_attributes,
    plot_consistency,
    plot_funnel,
    plot_grid,
    plot_groups,
    plot_pose,
    plot_quality,
    plot_separation,
    sample_note,
)
from facefoundry.runfolder.rows import read_shard, reason_columns, rejection_reasons
from facefoundry.runfolder.runfacts import RunFacts, RunFactsError, read_run_facts

__all__ = ["PLOTS", "ReportError", "build_report"]

SCORE_COLUMNS = ("identity", "face_count", "face_score", "face_box", "landmarks",
                 "judge_similarity", "judge_distance", "id_similarity")


MAX_SAMPLE_SHARDS = 2_000  # the sample's other bound (see _sample)
GROUPS_PLOT = "verification_groups.png"  # per-group verification accuracy, only when a result has groups

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
    title = f"{run_id} — " + sample_note(summary["sample"], cfg.filter.mode)
    plot_separation(out_dir / "separation.png", nn, top1, facts.identities, cfg, run_id)
    summary["consistency"] = plot_consistency(out_dir / "consistency.png", sample, cfg, title)
    plot_funnel(out_dir / "funnel.png", summary, title)
    plot_quality(out_dir / "quality.png", sample, title)
    summary["pose"] = plot_pose(out_dir / "pose.png", sample, title)
    plot_attributes(out_dir / "attributes.png", summary["attributes"]["images"], summary["attributes"]["balance"],
                    run_id)
    summary["grid"] = plot_grid(out_dir / "grid.png", run_dir, manifests, run_id)
    summary["intrinsic"] = report_intrinsic(run_dir, out_dir)  # independent-judge metrics, eval/intrinsic.json
    summary["train_verify"] = _train_verify(run_dir, out_dir, run_id)
    summary["plots"] = list(PLOTS)
    summary = json_safe(summary)
    (out_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2, allow_nan=False) + "\n")
    return summary


def _train_verify(run_dir: Path, out_dir: Path | None = None, run_id: str = "") -> dict:
    """Train-then-verify accuracies per recipe (``eval/<name>.json``) and their table in the papers' order; where
    a result has sets of groups, their mean, std and gap, their table and (with ``out_dir``) ``GROUPS_PLOT``."""
    results = read_results(run_dir)
    per_recipe = {r["name"]: {name: s["accuracy"] for name, s in (r.get("benchmarks") or {}).get("sets", {}).items()}
                  | {"standard_average": (r.get("benchmarks") or {}).get("standard_average")} for r in results}
    out = {"results": per_recipe, "table": results_table_markdown(results)}
    panels = [(f"{r['name']}: {name}", g) for r in results
              for name, g in ((r.get("benchmarks") or {}).get("groups") or {}).get("sets", {}).items()]
    if panels:
        out["groups"] = {heading: {k: g[k] for k in ("mean", "std", "gap", "lowest", "highest")}
                         | {"accuracy": {label: g["groups"][label]["accuracy"] for label in g["order"]}}
                         for heading, g in panels}
        out["groups_table"] = groups_table_markdown(results)
    if out_dir is not None:
        (out_dir / GROUPS_PLOT).unlink(missing_ok=True)  # never a plot of results that are gone
        if panels:
            plot_groups(out_dir / GROUPS_PLOT, panels, f"{run_id} — per-group verification accuracy")
            out["plots"] = [GROUPS_PLOT]
    return out


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
    """Score columns of whole shards in a seeded order until ``max_rows`` rows (the last shard cut) or
    :data:`MAX_SAMPLE_SHARDS` shards (each shard costs a file open: 10^5 one-image units would be 10^5 opens)."""
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("identity", "kept", "reason", "face_count", "face_score",
                                                          "face_box", "landmarks", *SIMILARITY_COLUMNS)}
    per_identity, rows, shards, cut = [], 0, 0, False
    for i in np.random.default_rng(seed).permutation(len(manifests)):
        if rows >= max_rows or shards >= MAX_SAMPLE_SHARDS:
            break
        manifest = manifests[i]
        path = run_dir / str(manifest.get("shard", ""))
        if not path.is_file():  # removed since the manifests were read
            continue
        table = read_shard(path, SCORE_COLUMNS)
        names = set(table.column_names)
        if rows + table.num_rows > max_rows:
            table, cut = table.slice(0, max_rows - rows), True
        n, rows, shards = table.num_rows, rows + table.num_rows, shards + 1
        ids = table.column("identity").to_numpy(zero_copy_only=False).astype(np.int64)
        reason = rejection_reasons(table)  # the first filter's reason; None = kept (runfolder.rows)
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
                      "columns": [*SCORE_COLUMNS, *reason_columns()],
                      "max_shards": MAX_SAMPLE_SHARDS,
                      "method": "whole shards in seeded random order until max_rows rows or max_shards shards; "
                                "score columns only "
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
        "attributes": {"estimator": cfg.attributes.estimator if cfg.attributes else None,
                       "images": facts.label_counts(), "balance": ident_meta.get("balance")},
        "images_per_identity": {
            "target": cfg.images.per_identity,
            "mean_accepted": accepted / in_units if in_units else None,  # exact, from manifests
            "sample": {
                "identities": int(per.size),
                **(describe(per.astype(np.float64)) if per.size else {}),
                "histogram": {str(k): int(v) for k, v in enumerate(np.bincount(per)) if v} if per.size else {},
            },
        },
        "sample": sample["info"],
    }

