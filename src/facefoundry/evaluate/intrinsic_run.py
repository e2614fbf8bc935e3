"""``facefoundry evaluate RUN --intrinsic``: judge a bounded, deterministic sample of a run's kept images.

Sample: the done units' ``identity`` / ``image_index`` columns and the filters' reason columns are read (no image
bytes); kept rows are those no filter rejected (:mod:`facefoundry.runfolder.rows`). Of the identities with
kept rows, ``max_identities`` are drawn by a generator seeded with ``seed``; of each, ``max_images_per_identity``
kept images are drawn by a generator seeded with ``(seed, identity)``, so the subset does not depend on shard
order or on the other identities. Only the row groups holding the chosen identities are decoded.

Defaults (256 identities x 8 images, 10^6 impostor pairs) judge about 2,000 images: a few minutes with dlib on
one CPU core, whatever the size of the run. The result, with what was sampled and the judge's files, goes to
``RUN/eval/intrinsic.json`` (written atomically); a rerun with the same run state, judge and sampling reuses it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from facefoundry import __version__
from facefoundry.dataset.atomic import atomic_write_bytes
from facefoundry.dataset.manifest import finished_manifests
from facefoundry.evaluate.intrinsic import METRICS_REVISION, describe, intrinsic_metrics
from facefoundry.evaluate.judge import (
    DLIB,
    STATUSES,
    FaceJudge,
    check_independent,
    default_threshold,
    file_info,
    judge_files,
)
from facefoundry.faces.quality import pose_proxies  # the report's landmark pose proxies, on the judge's points
from facefoundry.filters.face_filter import decode_image
from facefoundry.jsonsafe import json_safe
from facefoundry.layout import EVAL_DIR, IDENTITIES_FILE
from facefoundry.runfolder.rows import kept_mask, read_shard
from facefoundry.runfolder.runinfo import read_record

INTRINSIC_FILE = "intrinsic.json"
MAX_IDENTITIES, MAX_IMAGES_PER_IDENTITY, MAX_IMPOSTOR_PAIRS = 256, 8, 1_000_000
# Per-image columns whose spread is reported when a shard has them (docs/schema.md).
SPREAD_COLUMNS = ("face_score", "attrop_yaw", "attrop_quality", "attrop_id_similarity", "yaw", "pitch", "roll",
                  "feature_norm", "blur", "id_similarity", "perturbation_sigma")


class IntrinsicError(RuntimeError):
    """The folder is not a finished run, or has no kept image to judge."""


def select_sample(run_dir: Path, manifests: list[dict], max_identities: int | None,
                  max_images_per_identity: int | None, seed: int) -> tuple[dict[str, dict[int, list[int]]], dict]:
    """Per shard, the chosen identities and their chosen ``image_index`` values; and what was sampled."""
    kept: dict[str, dict[int, list[int]]] = {}
    for manifest in manifests:
        path = run_dir / str(manifest.get("shard", ""))
        table = read_shard(path, ("identity", "image_index"))  # one open per shard: every done shard is read here
        names = set(table.column_names)
        ids = table.column("identity").to_numpy(zero_copy_only=False)
        index = (table.column("image_index").to_numpy(zero_copy_only=False) if "image_index" in names
                 else np.arange(table.num_rows))
        ok = kept_mask(table)
        rows = kept.setdefault(str(manifest["shard"]), {})
        for i, j in zip(ids[ok].tolist(), index[ok].tolist(), strict=True):
            rows.setdefault(int(i), []).append(int(j))
    everyone = sorted(i for rows in kept.values() for i in rows)
    chosen = everyone
    if max_identities is not None and len(everyone) > max_identities:
        chosen = sorted(np.random.default_rng(seed).choice(everyone, max_identities, replace=False).tolist())
    chosen_set, selection, images = set(chosen), {}, 0
    for shard, rows in kept.items():
        for identity in sorted(chosen_set.intersection(rows)):
            indices = sorted(rows[identity])
            if max_images_per_identity is not None and len(indices) > max_images_per_identity:
                rng = np.random.default_rng([seed, identity])
                indices = sorted(rng.choice(indices, max_images_per_identity, replace=False).tolist())
            selection.setdefault(shard, {})[identity] = indices
            images += len(indices)
    info = {"max_identities": max_identities, "max_images_per_identity": max_images_per_identity, "seed": seed,
            "units_done": len(manifests), "identities_with_kept_images": len(everyone),
            "kept_images": sum(len(v) for rows in kept.values() for v in rows.values()),
            "identities_sampled": len(chosen), "images_sampled": images, "identities": [int(i) for i in chosen],
            "method": "identities drawn with default_rng(seed), images of each with default_rng([seed, identity]); "
                      "kept = no filter's reason column set"}
    return selection, info


def read_sample(run_dir: Path, selection: dict[str, dict[int, list[int]]]):
    """Yield ``(identity, image_index, image or None, {column: value})`` for every selected row, shard by shard."""
    for shard, rows in sorted(selection.items()):
        path = run_dir / shard
        names = set(pq.read_schema(path).names)
        cols = ["image", "identity"] + [c for c in ("image_index", *SPREAD_COLUMNS) if c in names]
        # Row groups of other identities are skipped; without image_index rows are known by position: read all.
        where = [("identity", "in", sorted(rows))] if "image_index" in names else None
        table = pq.read_table(path, columns=cols, filters=where).to_pydict()
        index = table.get("image_index", list(range(len(table["identity"]))))
        for r, (identity, j) in enumerate(zip(table["identity"], index, strict=True)):
            if j in rows.get(identity, ()):
                yield identity, j, table["image"][r], {c: table[c][r] for c in SPREAD_COLUMNS if c in table}


def _identity_vectors(run_dir: Path, ids: np.ndarray) -> tuple[np.ndarray | None, np.ndarray | None]:
    path = run_dir / IDENTITIES_FILE
    if not path.is_file() or not ids.size:
        return None, None
    table = pq.read_table(path, columns=["identity", "vector", "nn_cosine"])
    row = {int(i): r for r, i in enumerate(table.column("identity").to_pylist())}
    if any(int(i) not in row for i in ids):
        return None, None
    take = [row[int(i)] for i in ids]
    vectors = np.asarray(table.column("vector").combine_chunks().flatten().to_numpy(), np.float64)
    vectors = vectors.reshape(table.num_rows, -1)[take]
    return vectors, table.column("nn_cosine").to_numpy(zero_copy_only=False)[take].astype(np.float64)


def evaluate_intrinsic(run_dir: str | Path, judge: str | Path | FaceJudge = DLIB, *, threshold: float | None = None,
                       max_identities: int | None = MAX_IDENTITIES,
                       max_images_per_identity: int | None = MAX_IMAGES_PER_IDENTITY,
                       max_impostor_pairs: int = MAX_IMPOSTOR_PAIRS, seed: int = 0, plots_dir: str | Path | None = None,
                       reuse: bool = True, device: str = "auto", workers: int = 1) -> dict:
    """Judge a sample of the run's kept images; write and return ``RUN/eval/intrinsic.json``.

    ``judge``: ``"dlib"`` or an ArcFace ``.onnx`` / ``.pth`` path (or a loaded :class:`FaceJudge`);
    ``threshold``: the same-person rule (default 0.6 distance for dlib, 0.3 cosine for ArcFace);
    ``max_identities`` / ``max_images_per_identity``: the sample caps (None = all); ``max_impostor_pairs``:
    above this many different-identity pairs, this many are drawn (seeded); ``plots_dir``: where to draw the
    figures (``intrinsic_plots``), none when None; ``reuse``: return the stored result when nothing changed;
    ``workers``: processes judging shards in parallel (each loads the judge; the result does not change).
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    run_dir = Path(run_dir)
    record = read_record(run_dir)
    cfg = record.get("config") or {}
    manifests = finished_manifests(run_dir, record.get("config_hash"))
    if not manifests:
        raise IntrinsicError(f"{run_dir} has no finished unit yet: run `facefoundry run` first")
    files = judge.files if isinstance(judge, FaceJudge) else judge_files(judge)
    if files is None:  # a pack folder: which file it holds is known once loaded
        judge = FaceJudge(judge, threshold=threshold, device=device)
        files = judge.files
    check_independent(files[-1], cfg.get("generator") or {}, (cfg.get("id_filter") or {}).get("encoder_model"))
    key = {"config_hash": record.get("config_hash"), "units": sorted((m["unit"], m.get("sha256")) for m in manifests),
           "judge_files": [file_info(f)["sha256"] for f in files],
           "threshold": judge.threshold if isinstance(judge, FaceJudge) else
           (default_threshold(judge) if threshold is None else float(threshold)),
           "seed": seed, "max_identities": max_identities, "max_images_per_identity": max_images_per_identity,
           "max_impostor_pairs": max_impostor_pairs, "metrics_revision": METRICS_REVISION}
    key = json.loads(json.dumps(key))  # as it reads back from the file (tuples become lists)
    out_path = run_dir / EVAL_DIR / INTRINSIC_FILE
    previous = _load(out_path) if reuse else None
    if previous is not None and previous.get("key") == key:
        if not (previous.get("sample") or {}).get("kept_images", 1):
            raise _nothing_kept(run_dir, manifests)
        result = previous
    else:
        selection, sample = select_sample(run_dir, manifests, max_identities, max_images_per_identity, seed)
        if not sample["kept_images"]:  # before the judge loads: there is nothing for it to judge
            raise _nothing_kept(run_dir, manifests)
        if not isinstance(judge, FaceJudge):
            judge = FaceJudge(judge, threshold=threshold, device=device)
        result = _evaluate(run_dir, record, selection, sample, judge, judge.info(), key, workers)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(out_path, (json.dumps(result, indent=1, allow_nan=False) + "\n").encode())
    if plots_dir is not None:
        from facefoundry.evaluate.intrinsic_plots import plot_intrinsic

        result = {**result, "plots": plot_intrinsic(result, Path(plots_dir))}
    return result


def _nothing_kept(run_dir: Path, manifests: list[dict]) -> IntrinsicError:
    """The error for a run whose finished units keep no row: rejected rows are never judged."""
    stored = sum(int(m.get("rows") or 0) for m in manifests)
    why = (f"the filters rejected all {stored} stored row(s) (annotate mode) and rejected rows are not judged"
           if stored else "the filters dropped every generated image")
    return IntrinsicError(f"{run_dir}: no row is kept in its {len(manifests)} finished unit(s): {why}; "
                          f"nothing to evaluate (loosen the filters and run again)")


def _load(path: Path) -> dict | None:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _evaluate(run_dir: Path, record: dict, selection: dict[str, dict[int, list[int]]], sample: dict,
              judge: FaceJudge, info: dict, key: dict, workers: int) -> dict:
    labels, status, emb, extra = [], [], [], {c: [] for c in SPREAD_COLUMNS}
    marks, scores, counts = [], [], []
    for part, judged in _judge_shards(run_dir, selection, judge, workers):
        labels += [identity for identity, _, _ in part]
        status.append(judged.status)
        emb.append(judged.embeddings)
        marks.append(judged.landmarks)
        scores.append(judged.face_score)
        counts.append(judged.face_count)
        for c in SPREAD_COLUMNS:
            extra[c] += [np.nan if row.get(c) is None else float(row[c]) for _, _, row in part]
    labels = np.asarray(labels, np.int64)
    status = np.concatenate(status) if status else np.zeros(0, object)
    ok = status == "ok"
    sample["status"] = {s: int((status == s).sum()) for s in STATUSES}
    sample["multiple_faces"] = int((np.concatenate(counts) > 1).sum()) if counts else 0
    sample["identities_without_face"] = int(len(set(labels.tolist()) - set(labels[ok].tolist())))
    result = {"run_id": record.get("run_id"), "config_hash": record.get("config_hash"),
              "facefoundry_version": __version__, "judge": info, "sample": sample, "key": key}
    if not ok.any():
        result["metrics"] = {"images": 0, "identities": 0, "note": "the judge found no face in the sampled images"}
        return json_safe(result)
    columns = {f"judge_{k}": v[ok] for k, v in pose_proxies(np.concatenate(marks)).items()}
    columns["judge_face_score"] = np.concatenate(scores)[ok]
    columns |= {c: np.asarray(v)[ok] for c, v in extra.items() if np.isfinite(np.asarray(v, np.float64)).any()}
    ids = np.unique(labels[ok])
    vectors, stored_nn = _identity_vectors(run_dir, ids)
    metrics = intrinsic_metrics(np.concatenate(emb)[ok], labels[ok], judge.metric, judge.threshold,
                                max_impostor_pairs=key["max_impostor_pairs"], seed=key["seed"],
                                sampled_vectors=vectors, columns=columns)
    if stored_nn is not None:
        metrics["separation"]["sampled_nn_cosine_all_identities"] = describe(stored_nn)
        metrics["separation"]["note"] = ("sampled_nn_cosine and judge_nn_cosine: nearest other identity among the "
                                         "judged identities; *_all_identities: among all identities of the run")
    result["metrics"] = metrics
    return json_safe(result)


_WORKER_JUDGE: FaceJudge | None = None


def _init_worker(model: str, threshold: float, device: str, batch_size: int) -> None:
    global _WORKER_JUDGE
    _WORKER_JUDGE = FaceJudge(model, threshold=threshold, device=device, batch_size=batch_size)


def _judge_one_shard(run_dir: Path, shard: str, rows: dict[int, list[int]], judge: FaceJudge | None = None):
    """Read, decode and judge one shard's selected rows; images are dropped once judged."""
    part = list(read_sample(run_dir, {shard: rows}))
    judged = (judge or _WORKER_JUDGE)([decode_image(image) for _, _, image, _ in part])
    return [(identity, j, row) for identity, j, _, row in part], judged


def _judge_shards(run_dir: Path, selection: dict, judge: FaceJudge, workers: int):
    """``(rows, JudgedImages)`` per shard in shard order, judged here or by ``workers`` processes (each loads its
    own judge); the order, hence the result, does not depend on ``workers``."""
    shards = sorted(selection)
    if workers <= 1 or len(shards) <= 1:
        for shard in shards:  # one shard's images in memory at a time
            yield _judge_one_shard(run_dir, shard, selection[shard], judge)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(min(workers, len(shards)), mp_context=multiprocessing.get_context("spawn"),
                             initializer=_init_worker,
                             initargs=(judge.model, judge.threshold, judge.device, judge.batch_size)) as pool:
        yield from pool.map(_judge_one_shard, [run_dir] * len(shards), shards, [selection[s] for s in shards])



def report_intrinsic(run_dir: Path, out_dir: Path) -> dict:
    """For ``build_report``: run (or reuse) the default evaluation with plots into ``out_dir``; a short summary,
    or ``{"error": ...}`` when it cannot run (the rest of the report never fails because of it)."""
    from facefoundry.evaluate.intrinsic import intrinsic_table_markdown

    try:
        result = evaluate_intrinsic(run_dir, plots_dir=out_dir)
    except Exception as exc:  # noqa: BLE001 - a missing judge model must not cost the user the whole report
        return {"error": f"{type(exc).__name__}: {exc}"}
    return {"file": f"{EVAL_DIR}/{INTRINSIC_FILE}", "judge": result["judge"]["name"], "sample": result["sample"],
            "plots": result.get("plots", []), "table": intrinsic_table_markdown(result)}
