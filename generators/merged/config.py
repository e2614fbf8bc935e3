"""The generator section of a merged run (``generator.kind: merged``), written by ``facefoundry merge``.

It records where every identity came from instead of how to generate one: the source runs in order, each with its
run id, config hash, config and the labels its identities took in the merged run.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field

from facefoundry.sections import StrictModel


class MergedSource(StrictModel):
    """One source run of a merged dataset."""

    run_id: str = Field(..., description="The source run's id (`<name>-<config hash>`).")
    config_hash: str = Field(..., description="The source run's config hash.")
    config: dict[str, Any] = Field(..., description="The source run's config, as its run.json holds it.")
    identities: int = Field(..., ge=0, description="Identities taken from it (after duplicates were handled).")
    first_label: int = Field(..., ge=0, description="The merged label of its first identity taken.")


class MergedConfig(StrictModel):
    """Written by ``facefoundry merge`` (not by hand): the source runs, in the order their labels follow."""

    kind: Literal["merged"] = "merged"
    sources: list[MergedSource] = Field(..., min_length=2, description="The source runs, in label order.")
    duplicates: Literal["drop", "keep"] = Field(
        "drop", description="Identities of different runs found to be one: drop the less-supported side, or keep.")
    judge: str | None = Field(
        None, description="The judge of identities across different identity spaces (dlib, a model file name); "
        "null: not checked.")
    judge_images: int = Field(4, ge=1, description="Kept images per identity averaged into its judge centroid.")
    include_rejected: bool = Field(
        False, description="Rows a filter rejected (annotate mode) were taken too, with their reasons.")

    revision: ClassVar[str | None] = None
    output_size: ClassVar[int | None] = None

    @property
    def tiny(self) -> bool:
        """Every source was made by a tiny random-weight build (the images are noise)."""
        return all(bool(s.config["generator"].get("tiny")) for s in self.sources)
