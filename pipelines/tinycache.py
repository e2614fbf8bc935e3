"""A machine-wide cache of tiny random-weight builds, kept where ``FACEFOUNDRY_TINY_CACHE`` points.

A run of a tiny preset builds its generator's weights under ``<out>/models``; on 2 cores that is about 10 s
of CPU (importing diffusers, drawing the weights) for a run that otherwise takes seconds. With the cache
set, the first run builds into the cache and every later run with the same generator section, seed and
identity count copies that build into its own ``<out>/models``. A build is deterministic in those inputs,
so the copy is byte for byte what the run would have built, and the run then finds it complete exactly as
on a resume. Unset (the default), every run builds its own. The test suite sets it for its session.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from facefoundry.generators.registry import spec_of
from facefoundry.generators.spec import ModelPaths

CACHE_ENV = "FACEFOUNDRY_TINY_CACHE"
DONE = ".complete"  # written in a cache entry once its build has returned


def cache_key(gen: Any, seed: int, identities: int) -> str:
    """What a tiny build depends on: the generator section (its kind included), the run seed, the count."""
    text = json.dumps([gen.model_dump(mode="json"), seed, identities], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """One builder per entry across processes (parallel test workers, a run and its resume)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def model_paths(gen: Any, models_dir: Path, seed: int, identities: int) -> ModelPaths:
    """The spec's :meth:`~facefoundry.generators.spec.GeneratorSpec.model_paths`, with ``models_dir`` first
    filled from the cache when one is set, the build is tiny and ``models_dir`` does not exist yet."""
    spec = spec_of(gen)
    cache = os.environ.get(CACHE_ENV)
    if cache and gen.tiny and not models_dir.exists():
        entry = Path(cache) / cache_key(gen, seed, identities)
        with _locked(entry.with_suffix(".lock")):
            if not (entry / DONE).is_file():
                shutil.rmtree(entry, ignore_errors=True)  # an interrupted build
                entry.mkdir(parents=True)
                spec.model_paths(gen, entry / "models", seed, identities)
                (entry / DONE).touch()
        if (entry / "models").is_dir():  # a generator that loads nothing builds nothing
            models_dir.parent.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=".models-", dir=models_dir.parent))
            shutil.copytree(entry / "models", staging, dirs_exist_ok=True)
            staging.rename(models_dir)
    return spec.model_paths(gen, models_dir, seed, identities)
