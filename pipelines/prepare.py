"""A generator's preparation jobs (:meth:`~facefoundry.generators.spec.GeneratorSpec.preparation`) on Ray, before
the stages start: phase by phase, the jobs of a phase in parallel, each a Ray task with the generator stage's
resources (one GPU worker per ID-Booth person); a job may return a short line for the log. A failed job does not
stop the others of its phase; after the phase the run stops with one line naming each failure. Jobs are
resumable, so a rerun finishes what is left."""

from __future__ import annotations

import importlib
import time
from typing import Any, TextIO

from facefoundry.config import RunConfig
from facefoundry.errors import error_line
from facefoundry.generators.spec import PrepJob
from facefoundry.pipelines.stages import generator_resources


class PreparationError(RuntimeError):
    """A preparation job failed; the message names it and its error."""


def run_job(cfg: RunConfig, job: PrepJob) -> Any:
    """One job in this process, with as many torch threads as CPUs it reserves (float results depend on the thread
    count: a job run here or in a Ray worker gives the same bytes; jobs of a phase run side by side)."""
    import torch

    torch.set_num_threads(max(1, int(generator_resources(cfg).num_cpus)))
    module, name = job.function.split(":")
    return getattr(importlib.import_module(module), name)(**job.kwargs)


def run_preparation(cfg: RunConfig, phases: list[list[PrepJob]], log: TextIO) -> None:
    """Run ``phases`` on the current Ray; :class:`PreparationError` when a job fails."""
    if not any(phases):
        return
    import ray

    task = ray.remote(run_job).options(max_retries=cfg.ray.unit_retries, retry_exceptions=False,
                                       **generator_resources(cfg).ray_options())
    for phase in phases:
        started = time.monotonic()
        pending = {task.remote(cfg, job): job for job in phase}
        log.write(f"preparing: {', '.join(job.name for job in phase)} ({len(phase)} job{'s' * (len(phase) > 1)})\n")
        log.flush()
        failed = []
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                job = pending.pop(ref)
                try:
                    said = ray.get(ref)
                except Exception as exc:  # noqa: BLE001 - every job's failure is reported, in one line each
                    # a RayTaskError carries the job's own exception as its cause
                    failed.append(f"{job.name}: {error_line(getattr(exc, 'cause', None) or exc)}")
                    continue
                said = f": {said}" if isinstance(said, str) and said else ""
                log.write(f"prepared: {job.name}{said} ({time.monotonic() - started:.1f}s)\n")
                log.flush()
        if failed:
            raise PreparationError(f"{len(failed)} preparation job(s) failed: " + "; ".join(failed)
                                   + " (finished work is kept: fix the cause and rerun to resume)")
