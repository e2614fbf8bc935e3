"""The contract every pipeline stage follows, and the result a unit carries from stage to stage.

A stage declares what one of its workers needs (:attr:`Stage.resources`: CPUs, GPUs, memory), the model
files it will load (:meth:`Stage.model_files`), how many units it takes per call (:attr:`Stage.batch_size`)
and the most workers it may have (:attr:`Stage.workers`);
``pipelines.executor.map_stage`` turns exactly that into the Ray stage, and ``pipelines.preflight`` checks it
against the cluster before any actor starts. The concrete stages are in ``pipelines.stages``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import pyarrow as pa

from facefoundry.config import RunConfig
from facefoundry.dataset.manifest import Unit
from facefoundry.resources import ModelFiles, Resources

# Auto units_per_task: enough units per task for this many images, so Ray's own cost per task (a few ms of the
# driver's streaming executor per task and stage, the limit of a run of small units) stays small beside the work.
IMAGES_PER_TASK = 256
MAX_UNITS_PER_TASK = 32
# Never so few tasks that the stages cannot overlap: the first task's generation and the last task's filter and write
# run alone. (At 4, bench/pipeline.py's 32 units went in 4 tasks of 8: first units after 70 s instead of 18 s.)
TASKS_PER_ACTOR = 32


def units_per_task(cfg: RunConfig, pending: int) -> int:
    """Work units per Ray task (one actor call) for a run of ``pending`` units: ``ray.units_per_task`` if set,
    else the fewest units holding :data:`IMAGES_PER_TASK` images, capped at :data:`MAX_UNITS_PER_TASK` and at
    ``pending / (TASKS_PER_ACTOR x the largest actor pool)``. A unit is never split; a killed task loses at most
    its units' uncommitted work (each unit still commits on its own)."""
    if cfg.ray.units_per_task:
        return cfg.ray.units_per_task
    images = cfg.output.identities_per_unit * cfg.images.per_identity
    actors = max(cfg.ray.generator_actors, cfg.ray.filter_actors, cfg.ray.writer_actors)
    return max(1, min(math.ceil(IMAGES_PER_TASK / images), MAX_UNITS_PER_TASK, pending // (TASKS_PER_ACTOR * actors)))


@dataclass
class UnitResult:
    """A unit's rows on their way to the writer, with what the filter removed."""

    unit: Unit
    table: pa.Table
    generated: int
    drops: dict[str, int] = field(default_factory=dict)
    error: str | None = None  # set when a stage failed this unit after its retries: nothing is written

    @classmethod
    def failed(cls, unit: Unit, error: str) -> UnitResult:
        return cls(unit, pa.table({}), 0, {}, error)


class Stage:
    """What every stage declares and does; ``pipelines.executor`` wraps any stage the same way.

    ``__call__`` takes a :class:`Unit` (first stage) or a :class:`UnitResult` and returns a
    :class:`UnitResult` (or, for the last stage, a manifest dict); :meth:`failed` is what it returns for a
    unit that failed here or earlier."""

    name: ClassVar[str] = "stage"

    def __init__(self, cfg: RunConfig, batch_size: int = 1):
        self.cfg = cfg
        self.batch_size = batch_size  # units per call (:func:`units_per_task`); a unit is never split

    @property
    def resources(self) -> Resources:
        """What one worker of this stage asks the scheduler for."""
        return Resources()

    @property
    def workers(self) -> int:
        """The most workers (actors) of this stage; the pool starts with one."""
        return 1

    def model_files(self) -> list[ModelFiles]:
        """The model files :meth:`setup` will load (checked in the driver before any worker starts)."""
        return []

    def setup_worker(self, node_cpus: int | None) -> None:
        """Process-wide settings of a worker, before :meth:`setup` (thread counts)."""

    def setup(self) -> None:
        """Load models once per worker (idempotent)."""

    def failed(self, unit: Unit, error: str) -> Any:
        """The result a unit that failed (here or in an earlier stage) travels on as."""
        return UnitResult.failed(unit, error)
