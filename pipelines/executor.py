"""Ray Data wiring: units stream through generator actors -> filter actors -> writer actors.

Every row of the Ray dataset is one whole work unit; its image rows travel as one Arrow IPC
payload, so identity-level decisions and the shard write see the complete unit and Ray never
splits a unit across blocks.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pyarrow as pa

from facefoundry.config import RunConfig
from facefoundry.dataset.manifest import Unit
from facefoundry.pipelines.stages import FilterStage, GenerateStage, ModelPaths, UnitResult, WriteStage

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


def run_stage(stage: Callable[[Any], UnitResult], item: Unit | UnitResult, unit: Unit, retries: int) -> UnitResult:
    """One stage on one unit with retries. A unit that still fails travels on marked failed (with its
    reason), so one bad unit never stops the others; a failed input passes through untouched."""
    if isinstance(item, UnitResult) and item.error:
        return item
    result, error = retry(stage, item, unit, retries)
    return result if error is None else UnitResult.failed(unit, error)


def generator_threads(cfg: RunConfig, node_cpus: int | None) -> int:
    """torch threads for one generator actor: ``ray.generator_threads``, else the node's CPUs shared
    among the generator actors (Ray alone would pin an actor reserving 1 CPU to 1 thread)."""
    if cfg.ray.generator_threads:
        return cfg.ray.generator_threads
    return max(1, (node_cpus or 1) // cfg.ray.generator_actors)


class GenerateActor:
    def __init__(self, cfg: RunConfig, out: str, paths: ModelPaths):
        import os

        import torch

        torch.set_num_threads(generator_threads(cfg, len(os.sched_getaffinity(0))))
        self.stage = GenerateStage(cfg, out, paths)
        self.stage.setup()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        units = [Unit(int(a), int(b)) for a, b in zip(batch["start"], batch["stop"], strict=True)]
        return _pack([run_stage(self.stage, u, u, self.stage.cfg.ray.unit_retries) for u in units])


class FilterActor:
    def __init__(self, cfg: RunConfig, out: str):
        self.stage = FilterStage(cfg, out)
        self.stage.setup()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        retries = self.stage.cfg.ray.unit_retries
        return _pack([run_stage(self.stage, r, r.unit, retries) for r in _unpack(batch)])


class WriteActor:
    """An actor rather than a task: its process starts with the pipeline, not when the first unit
    arrives, so a fresh worker's start-up and imports stay off every unit's path."""

    def __init__(self, cfg: RunConfig, out: str, meta: dict):
        self.stage, self.retries = WriteStage(cfg, out, meta), cfg.ray.unit_retries

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        manifests = []
        for result in _unpack(batch):
            manifest, error = (None, result.error) if result.error else retry(self.stage, result, result.unit,
                                                                                self.retries)
            manifests.append(manifest if error is None else {"unit": result.unit.name, "error": error})
        return {"manifest": np.array([json.dumps(m) for m in manifests], dtype=object)}


def stream_units(
    cfg: RunConfig, out: str, units: list[Unit], paths: ModelPaths, file_metadata: dict
) -> Iterator[dict]:
    """Run ``units`` through the stages on the current Ray; yield each manifest as its unit commits."""
    import ray.data
    from ray.data import ActorPoolStrategy, DataContext

    for name in ("ray.data", "ray.data._internal.execution.streaming_executor"):
        logging.getLogger(name).setLevel(logging.ERROR)
    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    ds = ray.data.from_items(
        [{"start": u.start, "stop": u.stop} for u in units], override_num_blocks=len(units)
    )
    ds = ds.map_batches(
        GenerateActor,
        fn_constructor_args=(cfg, out, paths),
        batch_size=1,
        batch_format="numpy",
        compute=ActorPoolStrategy(min_size=1, max_size=cfg.ray.generator_actors),
        num_gpus=cfg.ray.generator_gpus,
        num_cpus=1,
    )
    ds = ds.map_batches(
        FilterActor,
        fn_constructor_args=(cfg, out),
        batch_size=1,
        batch_format="numpy",
        compute=ActorPoolStrategy(min_size=1, max_size=cfg.ray.filter_actors),
        num_cpus=0.5,
    )
    ds = ds.map_batches(
        WriteActor,
        fn_constructor_args=(cfg, out, file_metadata),
        batch_size=1,
        batch_format="numpy",
        compute=ActorPoolStrategy(min_size=1, max_size=cfg.ray.writer_actors),
        num_cpus=0.25,
    )
    for batch in ds.iter_batches(batch_size=1, batch_format="numpy"):
        for text in batch["manifest"]:
            yield json.loads(text)
