"""What a stage needs to run: scheduler resources per worker, and the model files it loads.

Generators and filters declare these on their classes; ``pipelines.stages`` combines them into each
stage's declaration, ``pipelines.executor`` turns that into the Ray stage in one place, and
``pipelines.preflight`` compares it with the cluster and the model caches before any actor starts.
Torch-free on purpose: filter and writer workers import it and never import torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any


@dataclass(frozen=True)
class Resources:
    """What one worker (actor) of a stage asks the scheduler for.

    ``settings`` names, per resource (``num_cpus``, ``num_gpus``, ``memory``), the config key that sets
    it, so an error about a missing resource can say which ``--set`` changes the request.
    """

    num_cpus: float = 1.0
    num_gpus: float = 0.0
    memory: int | None = None  # bytes of RAM reserved per worker; None = no reservation
    settings: dict[str, str] = field(default_factory=dict, compare=False)

    def override(self, setting: str | None = None, **values: Any) -> Resources:
        """A copy with ``values`` replaced (None values are ignored), recording ``setting`` as their source."""
        values = {k: v for k, v in values.items() if v is not None}
        if not values:
            return self
        sources = {**self.settings, **dict.fromkeys(values, setting)} if setting else dict(self.settings)
        return replace(self, **values, settings=sources)

    def merge(self, other: Resources) -> Resources:
        """Two components sharing one worker, run one after the other: the larger CPU and GPU request,
        the sum of the memory reservations."""
        memory = None if self.memory is None and other.memory is None else (self.memory or 0) + (other.memory or 0)
        return Resources(max(self.num_cpus, other.num_cpus), max(self.num_gpus, other.num_gpus), memory,
                         {**other.settings, **self.settings})

    def ray_options(self) -> dict[str, float | int]:
        """The ``num_cpus`` / ``num_gpus`` (/ ``memory``) keywords of a Ray actor or ``map_batches`` call."""
        options: dict[str, float | int] = {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus}
        if self.memory is not None:
            options["memory"] = self.memory
        return options

    def as_cluster_keys(self) -> dict[str, float]:
        """The request in the keys of ``ray.cluster_resources()`` (``CPU``, ``GPU``, ``memory``), zeros left out."""
        keys = {"CPU": self.num_cpus, "GPU": self.num_gpus, "memory": float(self.memory or 0)}
        return {k: v for k, v in keys.items() if v}


@dataclass(frozen=True)
class ModelFiles:
    """Files a component loads from one source: a Hub repo id or a local folder.

    ``groups`` lists alternatives: one file of each group must exist (e.g. ``.safetensors`` or ``.bin``);
    no groups: the folder itself must exist.
    ``name`` is the :data:`facefoundry.models.REGISTRY` entry that ``facefoundry models fetch`` takes.
    """

    source: str
    groups: tuple[tuple[str, ...], ...]
    name: str | None = None
    revision: str | None = None
    role: str = "model"  # what the files are for, in messages: "generator.model", "generator.base_model", ...
    hub: bool = True  # False: always a local path, never read as a Hub repo id
    how: str | None = None  # how to make the files when no `facefoundry models fetch` provides them
