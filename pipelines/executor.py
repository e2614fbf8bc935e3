"""Ray Data wiring: units stream through generator actors -> filter actors -> writer actors.

The one backend adapter: :func:`map_stage` builds each Ray stage from the stage's own declaration
(``resources``, ``batch_size``, ``workers``; see ``pipelines.stage``) and :class:`StageActor` runs any stage.

Every row of the Ray dataset is one whole work unit; its image rows travel as one Arrow IPC
payload, so identity-level decisions and the shard write see the complete unit and Ray never
splits a unit across blocks.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pyarrow as pa

from facefoundry.config import RunConfig
from facefoundry.dataset.manifest import Unit
from facefoundry.generators.spec import ModelPaths
from facefoundry.pipelines.stage import Stage, UnitResult, units_per_task
from facefoundry.pipelines.stages import FilterStage, GenerateStage, WriteStage, generator_threads, pipeline

__all__ = ["StageActor", "generator_threads", "map_stage", "pipeline", "run_stage", "stream_units"]

log = logging.getLogger(__name__)


def _pack(results: list[UnitResult]) -> dict[str, np.ndarray]:
    payloads = []
    for r in results:
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, r.table.schema) as writer:
            writer.write_table(r.table)
        payloads.append(sink.getvalue().to_pybytes())
    return {
        "start": np.array([r.unit.start for r in results], dtype=np.int64),
        "stop": np.array([r.unit.stop for r in results], dtype=np.int64),
        "generated": np.array([r.generated for r in results], dtype=np.int64),
        "drops": np.array([json.dumps(r.drops) for r in results], dtype=object),
        "error": np.array([r.error or "" for r in results], dtype=object),
        "payload": np.array(payloads, dtype=object),
    }


def _unpack(batch: dict[str, np.ndarray]) -> list[UnitResult]:
    return [
        UnitResult(
            Unit(int(start), int(stop)),
            pa.ipc.open_stream(pa.py_buffer(payload)).read_all(),
            int(generated),
            json.loads(drops),
            error or None,
        )
        for start, stop, generated, drops, error, payload in zip(
            batch["start"], batch["stop"], batch["generated"], batch["drops"], batch["error"], batch["payload"],
            strict=True,
        )
    ]


def retry(fn: Callable[[Any], Any], arg: Any, unit: Unit, retries: int) -> tuple[Any, str | None]:
    """``(fn(arg), None)``, trying up to ``retries + 1`` times; ``(None, reason)`` if every try failed."""
    error = ""
    for attempt in range(retries + 1):
        try:
            return fn(arg), None
        except Exception as exc:  # noqa: BLE001 - a unit's failure is recorded, never fatal to the run
            error = f"{type(exc).__name__}: {exc}".splitlines()[0][:500]
            log.warning("unit %s failed (attempt %d of %d): %s", unit.name, attempt + 1, retries + 1, error)
    return None, error


def run_stage(stage: Stage, item: Unit | UnitResult, retries: int) -> Any:
    """One stage on one unit with retries. A unit that still fails travels on as ``stage.failed`` (with its
    reason), so one bad unit never stops the others; a failed input passes through untouched."""
    unit = item if isinstance(item, Unit) else item.unit
    if isinstance(item, UnitResult) and item.error:
        return stage.failed(unit, item.error)
    result, error = retry(stage, item, unit, retries)
    return result if error is None else stage.failed(unit, error)


def _encode(outputs: list[Any]) -> dict[str, np.ndarray]:
    """A stage's outputs as a Ray batch: units travel packed, manifests (the last stage's) as JSON."""
    if all(isinstance(o, UnitResult) for o in outputs):
        return _pack(outputs)
    return {"manifest": np.array([json.dumps(o) for o in outputs], dtype=object)}


class StageActor:
    """The one Ray adapter: any :class:`~facefoundry.pipelines.stages.Stage` as an actor that sets itself
    up once when the pipeline starts (not when the first unit arrives, so start-up and imports stay off
    every unit's path) and then runs the stage on each batch of units."""

    def __init__(self, stage: Stage):
        import os

        stage.setup_worker(len(os.sched_getaffinity(0)))
        stage.setup()
        self.stage = stage

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        items = (_unpack(batch) if "payload" in batch
                 else [Unit(int(a), int(b)) for a, b in zip(batch["start"], batch["stop"], strict=True)])
        return _encode([run_stage(self.stage, item, self.stage.cfg.ray.unit_retries) for item in items])


# One named subclass per stage, only so that Ray's operator names and logs say which stage is which.
class GenerateActor(StageActor):
    """Actors of :class:`GenerateStage`."""


class FilterActor(StageActor):
    """Actors of :class:`FilterStage`."""


class WriteActor(StageActor):
    """Actors of :class:`WriteStage`."""


ACTORS: dict[type[Stage], type[StageActor]] = {GenerateStage: GenerateActor, FilterStage: FilterActor,
                                               WriteStage: WriteActor}


def map_stage(ds: Any, stage: Stage) -> Any:
    """``ds`` through ``stage``, built from the stage's declaration alone: an actor pool of one to
    ``stage.workers`` actors (every stage's process starts with the pipeline), each asking for
    ``stage.resources``, called with ``stage.batch_size`` units at a time."""
    from ray.data import ActorPoolStrategy

    return ds.map_batches(
        ACTORS.get(type(stage), StageActor),
        fn_constructor_args=(stage,),
        batch_size=stage.batch_size,
        batch_format="numpy",
        compute=ActorPoolStrategy(min_size=1, max_size=stage.workers),
        **stage.resources.ray_options(),
    )


def stream_units(
    cfg: RunConfig, out: str, units: list[Unit], paths: ModelPaths, file_metadata: dict
) -> Iterator[dict]:
    """Run ``units`` through the stages on the current Ray; yield each manifest as its unit commits.

    Before any actor starts, the stages' declarations are checked against the cluster
    (:func:`~facefoundry.pipelines.preflight.check_cluster`): a request no node can meet fails in one line."""
    import ray.data
    from ray.data import DataContext

    from facefoundry.pipelines.preflight import check_cluster

    per_task = units_per_task(cfg, len(units))
    stages = pipeline(cfg, out, paths, file_metadata, per_task)
    check_cluster(stages, embedded=cfg.ray.address is None)
    for name in ("ray.data", "ray.data._internal.execution.streaming_executor"):
        logging.getLogger(name).setLevel(logging.ERROR)
    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    ds = ray.data.from_items(  # one block per task: its units stay together through every stage
        [{"start": u.start, "stop": u.stop} for u in units], override_num_blocks=math.ceil(len(units) / per_task)
    )
    for stage in stages:
        ds = map_stage(ds, stage)
    for batch in ds.iter_batches(batch_size=1, batch_format="numpy"):
        for text in batch["manifest"]:
            yield json.loads(text)
