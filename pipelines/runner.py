"""``facefoundry run``: prepare the run folder, sample identities, stream the pending units."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from facefoundry import __version__
from facefoundry.config import RunConfig
from facefoundry.dataset.manifest import (
    DATA_DIR,
    MANIFEST_DIR,
    Unit,
    UnitFiles,
    finished_manifests,
    list_unit_files,
    plan_units,
)
from facefoundry.dataset.storage import LocalStore, RemoteStore, RunStore, open_store
from facefoundry.filters.tiny_attributes import resolve_attributes
from facefoundry.generators.registry import spec_of
from facefoundry.generators.spec import ModelPaths
from facefoundry.identities.store import write_identities
from facefoundry.layout import HUB_MAX_FILES_PER_FOLDER, MODELS_DIR, RUN_ENTRIES
from facefoundry.local_ray import ray_session
from facefoundry.pipelines import tinycache
from facefoundry.pipelines.progress import Progress, StartupTicker
from facefoundry.runfolder.removal import finish_pending
from facefoundry.runfolder.repair import set_aside_bad_identities, set_aside_corrupt, set_aside_orphans
from facefoundry.runfolder.runinfo import RunFolderError, prepare_run_folder, run_id
from facefoundry.runfolder.runlock import run_lock
from facefoundry.runfolder.runlog import LOG_DIR, new_log_path, run_log


@dataclass
class RunSummary:
    run_id: str
    units_total: int
    units_skipped: int
    units_written: int
    images_generated: int
    images_accepted: int  # passed every filter (dataset.manifest.accepted_images)
    rows_written: int  # stored rows: the accepted ones, plus the rejected ones in annotate mode
    seconds: float
    failed: list[tuple[str, str]] = field(default_factory=list)  # (unit, reason): rerun to redo them

    def line(self) -> str:
        """The one-line outcome (printed by the CLI, recorded in the run log)."""
        return (
            f"{'incomplete' if self.failed else 'done'}: {self.run_id}: {self.units_written} units written, "
            f"{self.units_skipped} skipped, {len(self.failed)} failed, "
            f"{self.images_accepted}/{self.images_generated} images accepted, {self.rows_written} rows written, "
            f"{self.seconds:.1f}s"
        )


def work_dir(cfg: RunConfig, store: RunStore) -> Path:
    """A local folder for what is not part of the dataset: tiny model builds and the log being written.

    The run folder itself when it is local; with remote output, a cache folder per run id (logs are
    uploaded to ``<out>/logs`` when the invocation ends)."""
    if isinstance(store, LocalStore):
        return store.root
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "facefoundry" / "runs" / run_id(cfg)


def folder_limit_warning(cfg: RunConfig, units: int) -> str:
    """The line a run prints when its shards will not fit one Hub folder, with the setting that makes them fit."""
    per_unit = -(-cfg.identities.count // HUB_MAX_FILES_PER_FOLDER)
    return (f"warning: {units:,} work units make {units:,} files in {DATA_DIR}/ and in {MANIFEST_DIR}/; the Hugging "
            f"Face Hub recommends at most {HUB_MAX_FILES_PER_FOLDER:,} files per folder. The run goes on, but to "
            f"publish it set output.identities_per_unit={per_unit} (or more) in a new run")


def resolve_model_paths(cfg: RunConfig, out: Path) -> ModelPaths:
    """Hub ids / folders from the config, or a tiny random-weight build in the official layout
    (under ``out/models``, ``out`` being a local folder; copied from :mod:`~facefoundry.pipelines.tinycache`
    when that is set); with them the attributes section the annotator loads (``attributes.tiny``: its tiny
    build, :mod:`~facefoundry.filters.tiny_attributes`)."""
    paths = tinycache.model_paths(cfg.generator, out / MODELS_DIR, cfg.run.seed, cfg.identities.count)
    return dataclasses.replace(paths, attributes=resolve_attributes(cfg.attributes, out / MODELS_DIR, cfg.run.seed))


def builds_tiny(cfg: RunConfig) -> bool:
    """Whether the run builds tiny random-weight models in its folder (generator or attribute models)."""
    return cfg.generator.tiny or (cfg.attributes is not None and cfg.attributes.tiny)


def file_metadata(cfg: RunConfig) -> dict:
    """What every shard records once (not per row): models, thresholds, run identity."""
    gen = cfg.generator
    return {
        "run_id": run_id(cfg),
        "config_hash": cfg.config_hash(),
        "facefoundry_version": __version__,
        "generator": {"kind": gen.kind, **spec_of(gen).shard_metadata(gen), "revision": gen.revision},
        "filter": cfg.filter.model_dump(mode="json"),
        # the identity filter's thresholds, with its model files by name only (no local paths)
        "id_filter": None if cfg.id_filter is None else cfg.id_filter.model_dump(mode="json")
        | {k: Path(getattr(cfg.id_filter, k)).name for k in ("detector_model", "encoder_model")},
        "synthetic": True,
    }


def run(cfg: RunConfig, out: str | Path, fresh: bool = False, log: TextIO | None = None,
        repair: bool = False, fresh_eval: bool = False) -> RunSummary:
    """Run (or resume) ``cfg`` into ``out`` (a folder or a remote URI such as ``s3://bucket/prefix``).

    Units with a valid manifest are skipped untouched; with ``repair`` a unit is valid only if its
    shard's sha256 matches the manifest. The folder is locked for the whole call (one writer at a
    time, see :mod:`facefoundry.runfolder.runlock`); a second writer gets :class:`RunLockedError`.
    ``fresh`` deletes a previous run first, naming what it deletes (``eval/`` only with ``fresh_eval``)."""
    started = time.monotonic()
    store = open_store(out)
    terminal = log or sys.stderr
    with run_lock(store, "run", notify=lambda text: terminal.write(text + "\n")):
        if fresh:
            _check_before_discarding(cfg, store)
        resuming = prepare_run_folder(store, cfg, fresh=fresh, fresh_eval=fresh_eval,
                                      notify=lambda text: terminal.write(text + "\n"))
        try:
            return _run_logged(cfg, store, resuming, terminal, started, repair)
        except BaseException:
            # A new run that fails before its first unit (preflight, a bad identities file, a model that does
            # not load) leaves the folder unbound, so the fixed config can start there: not a run to resume.
            with contextlib.suppress(Exception):  # an unreachable store must not hide the failure itself
                if not resuming and not list_unit_files(store)[MANIFEST_DIR]:
                    _unbind_new_run(store)
            raise


def _run_logged(cfg: RunConfig, store: RunStore, resuming: bool, terminal: TextIO, started: float,
                repair: bool) -> RunSummary:
    """:func:`_run` with this invocation's log (uploaded to a remote run folder whatever the outcome)."""
    local = work_dir(cfg, store)
    log_path = new_log_path(local)
    try:
        with run_log(log_path, terminal) as stream:
            summary = _run(cfg, store, local, resuming, stream, started, repair)
            stream.record(summary.line())
    finally:
        if not isinstance(store, LocalStore):  # the log joins the run folder whatever the outcome
            with contextlib.suppress(OSError):
                store.put_bytes(f"{LOG_DIR}/{log_path.name}", log_path.read_bytes())
    return summary


def _check_before_discarding(cfg: RunConfig, store: RunStore) -> None:
    """``--fresh`` deletes the previous run only once the new config passes the preflight: a bad identities
    file, a missing model or GPU must not cost the run that was there. A tiny build is made in the emptied
    folder, so a tiny config's models are checked after the deletion, as every new run's are."""
    from facefoundry.identities.sampling import check_input_files

    check_input_files(cfg.identities)
    if builds_tiny(cfg):
        return
    from facefoundry.pipelines.preflight import check_before_start

    check_before_start(cfg, resolve_model_paths(cfg, work_dir(cfg, store)))


def _unbind_new_run(store: RunStore) -> None:
    """After a new run failed before its first unit: remove what this invocation wrote (run.json, its log, tiny model
    builds), so the folder is as before. A new run starts in a folder without run entries (any other is refused,
    or emptied by ``--fresh``), so every run entry there now is this invocation's."""
    entries = store.entries()
    for name in RUN_ENTRIES:
        if name in entries:
            store.delete(name)


def _tidy(cfg: RunConfig, store: RunStore, units: list[Unit], repair: bool, log: TextIO) -> UnitFiles:
    """Before deciding what is done: drop temporaries, set orphans aside, and with ``repair`` set aside
    every shard (and identities file) that ``verify`` would reject, so it is written again.

    Returns the run's unit files as they are now: listed once, and again only if a file was moved."""
    for folder in (DATA_DIR, MANIFEST_DIR):  # what a killed run left behind: never read as done
        store.remove_temporaries(folder)
    finish_pending(store, lambda text: log.write(f"{text}\n"))  # a removal a kill interrupted: cheap, before any check
    files = list_unit_files(store)
    lines = set_aside_orphans(store, units, files)
    if repair:
        lines += set_aside_bad_identities(store, cfg.config_hash(), cfg.identities.count)
        lines += set_aside_corrupt(store, units, cfg.config_hash())
        lines.append(f"repair: {len(units)} units checked against their manifests' sha256")
    for line in lines:
        log.write(f"{line}\n")
    return list_unit_files(store) if lines else files


def _run(cfg: RunConfig, store: RunStore, local: Path, resuming: bool, log: TextIO, started: float,
         repair: bool = False) -> RunSummary:
    units = plan_units(cfg.identities.count, cfg.output.identities_per_unit)
    if len(units) > HUB_MAX_FILES_PER_FOLDER:
        log.write(folder_limit_warning(cfg, len(units)) + "\n")
    files = _tidy(cfg, store, units, repair, log) if resuming else None
    done = {m["unit"] for m in finished_manifests(store, cfg.config_hash(), files)} if resuming else set()
    pending = [u for u in units if u.name not in done]
    skipped = len(units) - len(pending)
    if pending and not spec_of(cfg.generator).renders:
        raise RunFolderError(f"{len(pending)} units of {run_id(cfg)} are missing or corrupt, and a merged dataset is "
                             "not generated: run `facefoundry merge` again with its source runs (run.json: "
                             "generator.sources, in order) and the same --out to finish or repair it")
    from facefoundry.identities.sampling import check_input_files

    check_input_files(cfg.identities)  # a bad vector file fails now, not after the tiny build and Ray's start
    paths = resolve_model_paths(cfg, local)

    def announce() -> None:  # after the identities are there: the line names their separation
        selector = None
        if cfg.balance is not None:
            from facefoundry.pipelines.balance import BalanceSelector

            selector = BalanceSelector(cfg, store, paths, log)
        meta = write_identities(store, cfg, progress=log, selector=selector)
        log.write(
            f"run {run_id(cfg)}: {cfg.identities.count} identities (nearest-neighbour cosine max "
            f"{meta['nn_cosine']['max']:.3f}), {len(units)} units"
            + (f", {skipped} already done (resuming)" if resuming else "")
            + "\n"
        )

    if not pending:
        announce()
        log.write("nothing to do: every unit is already written\n")
        return RunSummary(run_id(cfg), len(units), skipped, 0, 0, 0, 0, time.monotonic() - started)
    from facefoundry.pipelines.preflight import check_before_start

    check_before_start(cfg, paths)  # a missing model file or GPU fails here, in one line, before Ray starts
    # e.g. ID-Booth's fine-tuning; its inputs (people, consent records) are read here, before Ray starts
    phases = spec_of(cfg.generator).preparation(cfg.generator, paths, cfg.run.seed, cfg.identities.count)
    with ray_session(cfg.ray, background=True) as ray_ready:  # Ray starts in a thread while this one samples
        announce()
        if any(phases):
            from facefoundry.pipelines.prepare import run_preparation

            ray_ready()
            run_preparation(cfg, phases, log)
        rows, failed = 0, []
        from facefoundry.pipelines.executor import stream_units

        progress = Progress(len(units), (cfg.identities.count / len(units)) * cfg.images.per_identity, log,
                            done_units=skipped)
        log.write(f"starting the pipeline for {len(pending)} units: Ray, its workers and the models load before "
                  "the first unit lands (seconds to minutes: the start-up ticker below counts them)\n")
        log.flush()
        with StartupTicker(log, started=started) as ticker:
            ray_ready()
            log.write(f"Ray ready after {time.monotonic() - started:.1f}s; starting the stage workers\n")
            log.flush()
            for manifest in stream_units(cfg, store.uri if isinstance(store, RemoteStore) else str(store), pending,
                                         paths, file_metadata(cfg)):
                ticker.stop()
                if "error" in manifest:
                    failed.append((manifest["unit"], manifest["error"]))
                    log.write(f"unit {manifest['unit']} FAILED after {cfg.ray.unit_retries} retries: "
                              f"{manifest['error']}\n")
                    progress.update({"generated": 0, "rows": 0})
                    continue
                progress.update(manifest)
                rows += manifest["rows"]
    return RunSummary(run_id(cfg), len(units), skipped, len(pending) - len(failed), progress.generated,
                      progress.accepted, rows, time.monotonic() - started, failed)
