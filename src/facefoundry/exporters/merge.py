"""``facefoundry merge RUN... --out DIR``: one dataset from several finished runs, as a normal run folder.

- **Sources** must verify, and are only read. Runs of real people (ID-Booth), rehearsals and merged runs are refused.
- **Identities**: the kept identities (at least one image no filter rejected) of each source in order, by label,
  less the duplicates dropped (:mod:`facefoundry.exporters.merge_check`), are relabelled ``0..N-1``: the first
  source's first, and so on. ``identities.parquet`` holds their vectors (each in its own run's space) with
  ``source_run`` and ``source_identity``; its metadata holds the merge's report (sources, duplicates, what was not
  checked), which the card shows.
- **Rows**: every kept row of a taken identity, with ``identity`` relabelled and three provenance columns:
  ``source_run``, ``source_identity`` (the original label) and ``source_generator``. All shards share one schema:
  the union of the sources' columns (a column a source lacks is null in its rows; one column of two types is an
  error).
- **Run folder**: ``run.json`` holds a config whose ``generator`` section (``kind: merged``) lists the sources with
  their configs, so ``verify``, ``report``, ``card``, ``export``, ``publish`` and ``remove`` work on it and the
  licence chain is the union of the sources'. Units are written as a run writes them (shard, then manifest), so a
  killed merge is finished by running the same command again: done units are skipped, and one whose shard differs
  from its manifest is set aside (``orphans/``) and written again, as ``run --repair`` does. The same sources and
  options give the same bytes. ``facefoundry run`` on a merged folder refuses to generate missing units.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from facefoundry import __version__
from facefoundry.config import RunConfig, validate_config
from facefoundry.dataset.atomic import atomic_write_bytes
from facefoundry.dataset.manifest import finished_manifests, is_done, plan_units
from facefoundry.dataset.shards import write_unit
from facefoundry.dataset.storage import arrow_reader, open_store
from facefoundry.exporters.merge_check import (
    Duplicate,
    MergeSide,
    find_duplicates,
    judge_centroids,
    resolve,
    unchecked_pairs,
)
from facefoundry.faces.image_decode import decode_image
from facefoundry.generators.registry import spec_of
from facefoundry.identities.separation import nearest_neighbours, separation_summary
from facefoundry.identities.store import IDENTITIES_FILE, commit_identities, read_metadata, read_run_vectors
from facefoundry.layout import DATA_DIR, MANIFEST_DIR, MERGE_DIR, RUN_ENTRIES, RUN_FILE
from facefoundry.runfolder.repair import set_aside_corrupt, set_aside_orphans
from facefoundry.runfolder.rows import kept_mask, read_shard, rejection_reasons
from facefoundry.runfolder.runinfo import RunFolderError, read_record, read_run, run_id, run_record
from facefoundry.runfolder.verify import verify_run

# The provenance columns every merged row gets, after the sources' own.
PROVENANCE = [pa.field("source_run", pa.string()), pa.field("source_identity", pa.int64()),
              pa.field("source_generator", pa.string())]


class MergeError(RunFolderError):
    """Runs that cannot be merged, or an output folder that cannot take the merge (one line, with the fix)."""


@dataclass
class SourceRun:
    """A finished source run, read once: its record, config, done units and kept images per identity."""

    path: Path
    record: dict
    cfg: RunConfig
    manifests: list[dict]
    kept: dict[int, int] = field(default_factory=dict)  # identity -> kept rows (identities with stored rows)
    shard_of: dict[int, str] = field(default_factory=dict)  # identity -> its shard (relative path)
    include_rejected: bool = False  # identities without a kept row are taken too, rejected rows with their reasons

    def taken(self) -> list[int]:
        """The identities this source offers, ascending: with a kept row (or any stored row, with rejected)."""
        return sorted(i for i, n in self.kept.items() if n or self.include_rejected)

    def rows(self, table: pa.Table) -> np.ndarray:
        """The rows of a shard table the merge copies: the kept ones (all stored ones, with rejected)."""
        return np.ones(table.num_rows, bool) if self.include_rejected else kept_mask(table)

    @property
    def run_id(self) -> str:
        return str(self.record["run_id"])

    @property
    def kind(self) -> str:
        return str(self.record["config"]["generator"]["kind"])

    @property
    def space(self) -> tuple:
        """Two runs whose vectors can be compared: the same conditioning encoders and dimension."""
        gen = self.cfg.generator
        return tuple(sorted(spec_of(gen).conditioning_names(gen))), self.cfg.identities.dim


def read_source(path: str | Path, include_rejected: bool = False) -> SourceRun:
    """A source run, checked: it verifies and is a synthetic, generated dataset."""
    path = Path(path)
    problems = verify_run(path)
    if problems:
        raise MergeError(f"{path} does not verify ({problems[0]}{'; ...' if len(problems) > 1 else ''}): finish or "
                         f"repair it first (`facefoundry verify {path}`)")
    record = read_record(path)
    cfg = validate_config(record.get("config"), str(path / RUN_FILE))
    spec = spec_of(cfg.generator)
    if spec.rehearsal or not spec.renders or spec.real_people:
        what = ("a pipeline rehearsal (noise, not a dataset)" if spec.rehearsal else
                "a merged run: merge its source runs instead" if not spec.renders else
                "a dataset of real people (ID-Booth): their consent covers that dataset, not a merge")
        raise MergeError(f"{path} is {what}")
    source = SourceRun(path, record, cfg, finished_manifests(path, cfg.config_hash()),
                       include_rejected=include_rejected)
    for manifest in source.manifests:
        table = read_shard(path / manifest["shard"], ["identity"])
        ids, kept = table.column("identity").to_numpy(zero_copy_only=False), kept_mask(table)
        for identity in np.unique(ids):
            source.kept[int(identity)] = int(kept[ids == identity].sum())
            source.shard_of[int(identity)] = str(manifest["shard"])
    return source


def _sides(sources: list[SourceRun]) -> list[MergeSide]:
    sides = []
    for source in sources:
        ids = np.array(source.taken(), np.int64)
        vectors = read_run_vectors(source.path)
        sides.append(MergeSide(source.run_id, source.space, source.cfg.identities.max_cosine, ids, vectors[ids],
                               np.array([source.kept[int(i)] for i in ids], np.int64)))
    return sides


def _judged_images(source: SourceRun, side: MergeSide, per_identity: int) -> Iterator[tuple[int, list]]:
    """Per kept identity of ``side``: its position in ``side`` and its first ``per_identity`` kept images (by
    ``image_index``), decoded; one shard in memory at a time (an identity's rows are all in one shard)."""
    position = {int(i): k for k, i in enumerate(side.identities)}
    for manifest in source.manifests:
        table = read_shard(source.path / manifest["shard"], ["identity", "image_index", "image"])
        table = table.filter(pa.array(source.rows(table))).sort_by([("identity", "ascending"),
                                                                   ("image_index", "ascending")])
        ids, images = table.column("identity").to_numpy(zero_copy_only=False), table.column("image")
        for identity in np.unique(ids):
            if int(identity) not in position:
                continue
            rows = np.flatnonzero(ids == identity)[:per_identity]
            yield position[int(identity)], [decode_image(images[int(r)].as_py()) for r in rows]


@dataclass
class MergePlan:
    """What the merge writes: the identities taken (source index, label) in merged order, and its report."""

    taken: list[tuple[int, int]]
    vectors: np.ndarray  # the taken identities' vectors, one row each, as their identities files hold them
    duplicates: list[Duplicate]
    unchecked: list[str]
    unjudged: dict[int, int]
    judge: dict | None


def _centroids(source: SourceRun, side: MergeSide, judge, per_identity: int, cache_dir: Path | None) -> np.ndarray:
    """The judge centroids of ``side``, read from ``cache_dir`` when an earlier (killed) merge judged this source with
    this judge, else computed and saved there (judging is the long part of a large merge)."""
    key = hashlib.sha256(json.dumps([source.cfg.config_hash(), source.include_rejected, per_identity,
                                     [f["sha256"] for f in judge.info()["files"]], judge.threshold]).encode())
    path = None if cache_dir is None else cache_dir / f"centroids-{source.run_id}-{key.hexdigest()[:16]}.npy"
    if path is not None and path.is_file():
        cached = np.load(path, allow_pickle=False)
        if cached.shape == (len(side.identities), judge.dim):
            return cached
    centroids = judge_centroids(_judged_images(source, side, per_identity), len(side.identities), judge)
    if path is not None:
        buffer = io.BytesIO()
        np.save(buffer, centroids, allow_pickle=False)
        cache_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, buffer.getvalue())
    return centroids


def plan_merge(sources: list[SourceRun], duplicates: str = "drop", judge: str | None = "dlib",
               judge_images: int = 4, notify: Callable[[str], None] = lambda _: None,
               cache_dir: Path | None = None) -> MergePlan:
    """Check the sources against each other and choose the identities of the merged run (judge centroids are kept
    in ``cache_dir``, when given, for a rerun)."""
    names = [s.run_id for s in sources]
    if len(set(names)) != len(names):
        raise MergeError(f"a run is given twice ({', '.join(n for n in names if names.count(n) > 1)})")
    sides = _sides(sources)
    dims = {side.vectors.shape[1] for side in sides}
    if len(dims) > 1:
        raise MergeError(f"the runs' identity vectors have different sizes {sorted(dims)}: they cannot share one "
                         f"{IDENTITIES_FILE}")
    needs_judge = len({side.space for side in sides}) > 1 and judge is not None
    face_judge, unjudged, info = None, {}, None
    if needs_judge:
        from facefoundry.evaluate.judge import FaceJudge

        face_judge = FaceJudge(judge)
        for source in sources:
            face_judge.check_independent(source.record["config"]["generator"])
        for s, (source, side) in enumerate(zip(sources, sides, strict=True)):
            side.centroids = _centroids(source, side, face_judge, judge_images, cache_dir)
            unjudged[s] = int((~np.isfinite(side.centroids).all(axis=1)).sum())
            notify(f"merge: judged {len(side.identities) - unjudged[s]} of {len(side.identities)} identities of "
                   f"{side.name} ({unjudged[s]} without a face)")
        info = {"name": face_judge.name, "metric": face_judge.metric, "same_person_threshold": face_judge.threshold,
                "images_per_identity": judge_images}
    found = find_duplicates(sides, face_judge.metric if face_judge else None,
                            face_judge.threshold if face_judge else None)
    dropped = resolve(found, sides, duplicates)
    chosen = [(s, k) for s, side in enumerate(sides) for k, i in enumerate(side.identities)
              if (s, int(i)) not in dropped]  # (source, position in its side)
    taken = [(s, int(sides[s].identities[k])) for s, k in chosen]
    vectors = np.array([sides[s].vectors[k] for s, k in chosen], np.float32).reshape(len(chosen), dims.pop())
    notify(f"merge: {len(found)} cross-run duplicate(s) found, {len(dropped)} identities dropped; "
           f"{len(taken)} identities taken")
    return MergePlan(taken, vectors, found, unchecked_pairs(sides, needs_judge), unjudged, info)


def merged_config(sources: list[SourceRun], plan: MergePlan, name: str, duplicates: str, judge: str | None,
                  judge_images: int, identities_per_unit: int | None, include_rejected: bool = False) -> RunConfig:
    """The merged run's config: its sources (with their configs) as the generator section; the first source's
    sampling, image and output sections with the merged count (a merged run's own keys: docs/config.md)."""
    first = sources[0].record["config"]
    counts = [sum(1 for s, _ in plan.taken if s == k) for k in range(len(sources))]
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(int).tolist()
    section = {"kind": "merged", "duplicates": duplicates, "judge": None if judge is None else Path(judge).name,
               "judge_images": judge_images, "include_rejected": include_rejected,
               "sources": [{"run_id": s.run_id, "config_hash": s.cfg.config_hash(), "config": s.record["config"],
                            "identities": n, "first_label": start}
                           for s, n, start in zip(sources, counts, starts, strict=True)]}
    output = {**first["output"]}
    if identities_per_unit is not None:
        output["identities_per_unit"] = identities_per_unit
    # The filters as the rows carry them: the sources' decisions, stored (annotate) only with include_rejected.
    mode = "annotate" if include_rejected else "drop"
    id_filter = next((c["id_filter"] for c in (s.record["config"] for s in sources) if c.get("id_filter")), None)
    data = {"run": {"name": name}, "identities": {**first["identities"], "count": max(len(plan.taken), 1)},
            "images": {**first["images"], "per_identity": max(s.cfg.images.per_identity for s in sources)},
            "generator": section, "output": output, "filter": {**first["filter"], "mode": mode},
            "id_filter": None if id_filter is None else {**id_filter, "mode": mode}}
    return validate_config(data, "the merged config")


def _identities_table(sources: list[SourceRun], plan: MergePlan) -> tuple[pa.Table, dict]:
    vectors = plan.vectors
    nn_cos, nn_idx = np.full(len(vectors), -np.inf), np.full(len(vectors), -1, np.int64)
    for space in dict.fromkeys(sources[s].space for s, _ in plan.taken):  # nearest neighbours within a space only
        rows = np.array([k for k, (s, _) in enumerate(plan.taken) if sources[s].space == space])
        cos, idx = nearest_neighbours(vectors[rows])
        nn_cos[rows], nn_idx[rows] = cos, np.where(idx >= 0, rows[np.maximum(idx, 0)], -1)
    n, dim = vectors.shape
    table = pa.table({
        "identity": pa.array(np.arange(n), pa.int64()),
        "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1), pa.float32()), dim),
        "norm": pa.array(np.linalg.norm(vectors, axis=1), pa.float32()),
        "nn_cosine": pa.array(nn_cos, pa.float64()),
        "nn_identity": pa.array(nn_idx, pa.int64()),
        "sampler": pa.array([sources[s].cfg.identities.sampler for s, _ in plan.taken], pa.string()),
        "gallery_top1": pa.nulls(n, pa.float64()),
        "gallery_top2": pa.nulls(n, pa.float64()),
        "possible_morph": pa.nulls(n, pa.bool_()),
        "source_run": pa.array([sources[s].run_id for s, _ in plan.taken], pa.string()),
        "source_identity": pa.array([i for _, i in plan.taken], pa.int64()),
    })
    return table, {"nn_cosine": separation_summary(nn_cos), "dim": int(dim)}


def merge_report(sources: list[SourceRun], plan: MergePlan) -> dict:
    """What the merge did, for ``identities.parquet``'s metadata, the card and the command's output."""
    names = [s.run_id for s in sources]
    return {
        "sources": [{"run_id": s.run_id, "generator": s.kind, "config_hash": s.cfg.config_hash(),
                     "identities_offered": len(s.taken()), "identities_taken": sum(1 for k, _ in plan.taken if k == n),
                     "kept_images_taken": sum(s.kept[i] for k, i in plan.taken if k == n),
                     "max_cosine": s.cfg.identities.max_cosine}
                    for n, s in enumerate(sources)],
        "duplicates": [d.record(names) for d in plan.duplicates],
        "dropped": sum(d.dropped is not None for d in plan.duplicates),
        "unchecked": plan.unchecked,
        "judge": plan.judge,
        "unjudged": {names[s]: n for s, n in sorted(plan.unjudged.items())},
    }


def _unified_schema(sources: list[SourceRun]) -> pa.Schema:
    """The union of the sources' shard columns in first-seen order, then :data:`PROVENANCE`."""
    fields: dict[str, tuple[pa.Field, str]] = {}
    for source in sources:
        for manifest in source.manifests:
            for f in pq.read_schema(source.path / manifest["shard"]).remove_metadata():
                seen = fields.get(f.name)
                if seen is not None and seen[0].type != f.type:
                    raise MergeError(f"column {f.name} holds {seen[0].type} in {seen[1]} but {f.type} in "
                                     f"{source.run_id}: the runs' rows cannot share one schema")
                fields.setdefault(f.name, (f, source.run_id))
    clash = [f.name for f in PROVENANCE if f.name in fields]
    if clash:
        raise MergeError(f"a source already has the provenance column(s) {clash}")
    return pa.schema([f for f, _ in fields.values()] + PROVENANCE)


def _unit_rows(sources: list[SourceRun], taken: list[tuple[int, int]], start: int, schema: pa.Schema,
               cache: dict) -> pa.Table:
    """The rows of merged labels ``start, start + 1, ...`` (``taken``), relabelled, in ``schema``."""
    wanted: dict[tuple[int, str], dict[int, int]] = {}
    for offset, (s, identity) in enumerate(taken):
        wanted.setdefault((s, sources[s].shard_of[identity]), {})[identity] = start + offset
    parts = []
    for (s, shard), labels in wanted.items():
        source = sources[s]
        if (s, shard) not in cache:
            cache.clear()  # one source shard in memory: units take consecutive labels, so mostly from one shard
            cache[(s, shard)] = read_shard(source.path / shard, pq.read_schema(source.path / shard).names)
        table = cache[(s, shard)]
        ids = table.column("identity").to_numpy(zero_copy_only=False)
        rows = np.flatnonzero(source.rows(table) & np.isin(ids, list(labels)))
        part = table.take(pa.array(rows, pa.int64()))
        n = part.num_rows
        columns = {"identity": pa.array([labels[int(i)] for i in ids[rows]], pa.int64()),
                   "source_run": pa.array([source.run_id] * n, pa.string()),
                   "source_identity": pa.array(ids[rows], pa.int64()),
                   "source_generator": pa.array([source.kind] * n, pa.string())}
        arrays = [columns[f.name] if f.name in columns else part.column(f.name) if f.name in part.column_names
                  else pa.nulls(n, f.type) for f in schema]
        parts.append(pa.Table.from_arrays(arrays, schema=schema))
    return pa.concat_tables(parts) if parts else schema.empty_table()


def _prepare_output(out: Path, cfg: RunConfig) -> bool:
    """Bind ``out`` to the merged config; True when resuming a merge of the same config."""
    store = open_store(out)
    if store.read_bytes(RUN_FILE) is not None:
        stored = read_record(store)
        if stored.get("config_hash") != cfg.config_hash():
            raise MergeError(f"{out} holds run {stored.get('run_id')}, not this merge (other runs or options); use "
                             "another --out")
        return True
    if store.entries() & (set(RUN_ENTRIES) - {MERGE_DIR}):  # merge/: this merge's judge caches, written first
        raise MergeError(f"{out} holds run files but no {RUN_FILE}; use another --out")
    store.put_bytes(RUN_FILE, (json.dumps(run_record(cfg), indent=2, sort_keys=True) + "\n").encode())
    return False


def _file_metadata(cfg: RunConfig) -> dict:
    gen = cfg.generator
    return {"run_id": run_id(cfg), "config_hash": cfg.config_hash(), "facefoundry_version": __version__,
            "generator": {"kind": "merged", **spec_of(gen).shard_metadata(gen)}, "synthetic": True}


def write_merge(sources: list[SourceRun], plan: MergePlan, cfg: RunConfig, out: Path,
                notify: Callable[[str], None] = lambda _: None) -> dict:
    """Write (or finish) the merged run folder; the caller holds ``out``'s run lock. Returns the merge report with
    the units written and skipped."""
    resuming = _prepare_output(out, cfg)
    store = open_store(out)
    for folder in (DATA_DIR, MANIFEST_DIR):
        store.remove_temporaries(folder)
    units = plan_units(cfg.identities.count, cfg.output.identities_per_unit)
    if resuming:  # what `run --repair` does for a run: a unit whose shard differs from its manifest is written again
        for line in set_aside_orphans(store, units) + set_aside_corrupt(store, units, cfg.config_hash()):
            notify(f"merge: {line}")
    report = merge_report(sources, plan)
    raw = store.read_bytes(IDENTITIES_FILE)
    if raw is None or read_metadata(arrow_reader(raw), IDENTITIES_FILE).get("config_hash") != cfg.config_hash():
        table, facts = _identities_table(sources, plan)
        commit_identities(store, table, {"config_hash": cfg.config_hash(), "sampler": "merged",
                                         "count": table.num_rows, "max_cosine": None, "space": "per source",
                                         **facts, "merge": report})
    schema = _unified_schema(sources)
    metadata = _file_metadata(cfg)
    written, cache = 0, {}
    for n, unit in enumerate(units, 1):
        if resuming and is_done(store, unit, cfg.config_hash()):
            continue
        table = _unit_rows(sources, plan.taken[unit.start:unit.stop], unit.start, schema, cache)
        reasons = Counter(r for r in rejection_reasons(table) if r is not None)  # rejected rows, with include_rejected
        write_unit(store, unit, table, generated=table.num_rows, drops=dict(reasons), config_hash=cfg.config_hash(),
                   file_metadata=metadata, row_group_size=cfg.output.row_group_size,
                   compression=cfg.output.compression)
        written += 1
        notify(f"merge: unit {unit.name} written ({n}/{len(units)})")
    return report | {"units": {"written": written, "skipped": len(units) - written}, "run_id": run_id(cfg)}


def merge_runs(runs: list[str | Path], out: str | Path, *, name: str = "merged", duplicates: str = "drop",
               judge: str | None = "dlib", judge_images: int = 4, identities_per_unit: int | None = None,
               include_rejected: bool = False, notify: Callable[[str], None] = lambda _: None) -> dict:
    """Merge the finished ``runs`` into the run folder ``out`` (resumed when it holds this merge); return the report.

    ``judge`` (dlib or an ArcFace model file) compares identities of runs in different identity spaces; None skips
    that check (it is listed as not done). See the module doc for what is written."""
    from facefoundry.runfolder.runlock import run_lock

    if len(runs) < 2:
        raise MergeError("give two or more runs to merge")
    out = Path(out)
    sources = [read_source(run, include_rejected) for run in runs]
    if any(s.path.resolve() == out.resolve() for s in sources):
        raise MergeError(f"--out {out} is one of the runs: sources are never modified; use another --out")
    if (out / RUN_FILE).is_file() and spec_of(read_run(out).generator).renders:  # before the judge caches go there
        raise MergeError(f"{out} holds a generated run, not a merge; use another --out")
    for source in sources:
        notify(f"merge: {source.run_id}: {len(source.taken())} identities offered")
    plan = plan_merge(sources, duplicates, judge, judge_images, notify, out / MERGE_DIR)
    if not plan.taken:
        raise MergeError("no identity with a kept image in any of the runs: nothing to merge (runs filtered in "
                         "annotate mode: --include-rejected takes their rejected rows too)")
    cfg = merged_config(sources, plan, name, duplicates, judge, judge_images, identities_per_unit, include_rejected)
    out.mkdir(parents=True, exist_ok=True)
    with run_lock(out, "merge", notify=notify):
        return write_merge(sources, plan, cfg, out, notify)
