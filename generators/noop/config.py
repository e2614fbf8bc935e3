"""The no-op generator's config section (``generator.kind: noop``)."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from facefoundry.sections import StrictModel


class NoopConfig(StrictModel):
    """A testing and benchmark tool, never a dataset: tiny deterministic noise images made instantly, so a run
    measures the pipeline's orchestration alone (``bench/scale.py``). Only ``generator.kind: noop`` selects it."""

    kind: Literal["noop"] = "noop"
    size: int = Field(16, ge=1, le=512, description="Square size of the noise images, pixels.")

    # What the rest of the pipeline asks of every generator section. The card treats a noop run like a tiny
    # random-weight build (noise images, no published weights: a run that tests tooling only).
    tiny: ClassVar[bool] = True
    revision: ClassVar[str | None] = None

    @property
    def output_size(self) -> int:
        return self.size
