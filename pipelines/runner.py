"""``facefoundry run``: prepare the run folder, sample identities, stream the pending units."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from facefoundry import __version__
from facefoundry.config import RunConfig
from facefoundry.dataset.manifest import DATA_DIR, MANIFEST_DIR, is_done, plan_units
from facefoundry.identities.store import write_identities
from facefoundry.pipelines.local_ray import ray_session
from facefoundry.pipelines.progress import Progress
from facefoundry.pipelines.runlog import new_log_path, run_log
from facefoundry.pipelines.stages import ModelPaths
from facefoundry.runinfo import prepare_run_folder, run_id


@dataclass
class RunSummary:
    run_id: str
    units_total: int
    units_skipped: int
    units_written: int
    images_generated: int
    rows_written: int
    seconds: float
    failed: list[tuple[str, str]] = field(default_factory=list)  # (unit, reason): rerun to redo them

    def line(self) -> str:
        """The one-line outcome (printed by the CLI, recorded in the run log)."""
        return (
            f"{'incomplete' if self.failed else 'done'}: {self.run_id}: {self.units_written} units written, "
            f"{self.units_skipped} skipped, {len(self.failed)} failed, "
            f"{self.rows_written}/{self.images_generated} images kept, {self.seconds:.1f}s"
        )


def remove_stale_temporaries(out: Path) -> None:
    """Delete ``.tmp-*`` files a killed run left behind (never read as done; one run per folder at a time)."""
    for folder in (DATA_DIR, MANIFEST_DIR):
        for path in (out / folder).glob(".tmp-*"):
            path.unlink(missing_ok=True)


def resolve_model_paths(cfg: RunConfig, out: Path) -> ModelPaths:
    """Hub ids / folders from the config, or a tiny random-weight build in the official layout."""
    gen = cfg.generator
    if gen.kind == "vec2face":
        if not gen.tiny:
            return ModelPaths(gen.checkpoint)
        from facefoundry.generators.tiny_vec2face import build_tiny_vec2face

        checkpoint = build_tiny_vec2face(out / "models", seed=cfg.run.seed)
        if not gen.attrop.enabled:
            return ModelPaths(str(checkpoint))
        from facefoundry.filters.tiny_face_models import write_tiny_face_models

        write_tiny_face_models(out / "models" / "vec2face-face-models", seed=cfg.run.seed)
        return ModelPaths(str(checkpoint), face_models=str(out / "models" / "vec2face-face-models"))
    if not gen.tiny:
        return ModelPaths(gen.model, gen.base_model)
    from facefoundry.generators.tiny_arc2face import build_tiny_arc2face, tiny_lcm_lora_path

    model, base = build_tiny_arc2face(out / "models", seed=cfg.run.seed)
    return ModelPaths(str(model), str(base), str(tiny_lcm_lora_path(out / "models")))


def file_metadata(cfg: RunConfig) -> dict:
    """What every shard records once (not per row): models, thresholds, run identity."""
    gen = cfg.generator
    tiny = "tiny-random (built in code)"
    models = (
        {"checkpoint": tiny if gen.tiny else gen.checkpoint, "filename": gen.filename}
        if gen.kind == "vec2face"
        else {"model": tiny if gen.tiny else gen.model, "base_model": tiny if gen.tiny else gen.base_model}
        | ({"lcm_lora": tiny if gen.tiny else gen.lcm_lora, "sampler": "lcm"} if gen.sampler == "lcm" else {})
    )
    return {
        "run_id": run_id(cfg),
        "config_hash": cfg.config_hash(),
        "facefoundry_version": __version__,
        # Hub ids, never local paths: a shard's bytes must not depend on where the run folder lives.
        "generator": {"kind": gen.kind, **models, "revision": gen.revision},
        "filter": cfg.filter.model_dump(mode="json"),
        "synthetic": True,
    }


def run(cfg: RunConfig, out: Path, fresh: bool = False, log: TextIO | None = None) -> RunSummary:
    """Run (or resume) ``cfg`` into ``out``. Units with a valid manifest are skipped untouched."""
    started = time.monotonic()
    resuming = prepare_run_folder(out, cfg, fresh=fresh)
    with run_log(new_log_path(out), log or sys.stderr) as stream:
        summary = _run(cfg, out, resuming, stream, started)
        stream.record(summary.line())
    return summary


def _run(cfg: RunConfig, out: Path, resuming: bool, log: TextIO, started: float) -> RunSummary:
    if resuming:
        remove_stale_temporaries(out)
    meta = write_identities(out, cfg)
    units = plan_units(cfg.identities.count, cfg.output.identities_per_unit)
    pending = [u for u in units if not is_done(out, u, cfg.config_hash())]
    skipped = len(units) - len(pending)
    log.write(
        f"run {run_id(cfg)}: {cfg.identities.count} identities (nearest-neighbour cosine max "
        f"{meta['nn_cosine']['max']:.3f}), {len(units)} units"
        + (f", {skipped} already done (resuming)" if resuming else "")
        + "\n"
    )
    generated = rows = 0
    failed: list[tuple[str, str]] = []
    if pending:
        paths = resolve_model_paths(cfg, out)
        from facefoundry.pipelines.executor import stream_units

        progress = Progress(len(pending), (cfg.identities.count / len(units)) * cfg.images.per_identity, log)
        with ray_session(cfg.ray):
            for manifest in stream_units(cfg, str(out), pending, paths, file_metadata(cfg)):
                if "error" in manifest:
                    failed.append((manifest["unit"], manifest["error"]))
                    log.write(f"unit {manifest['unit']} FAILED after {cfg.ray.unit_retries} retries: "
                              f"{manifest['error']}\n")
                    progress.update({"generated": 0, "rows": 0})
                    continue
                progress.update(manifest)
                generated += manifest["generated"]
                rows += manifest["rows"]
    else:
        log.write("nothing to do: every unit is already written\n")
    return RunSummary(run_id(cfg), len(units), skipped, len(pending) - len(failed), generated, rows,
                      time.monotonic() - started, failed)
