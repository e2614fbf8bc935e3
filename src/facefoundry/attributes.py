"""Estimated attributes of faces: the estimators' names, their labels and the age groups (one place for each).

Every value here is an *estimate* of a model (never ground truth): the card and the report say so and name the
model. ``genderage`` is InsightFace's ``genderage.onnx`` (age in years, two genders); ``fairface`` is the FairFace
ResNet-34 (seven race groups, two genders, nine age bins).
"""

from __future__ import annotations

from collections.abc import Sequence

GENDERS = ("female", "male")
# FairFace's label lists, in the order of its 18 outputs (joojs/fairface predict.py).
FAIRFACE_RACES = ("White", "Black", "Latino_Hispanic", "East Asian", "Southeast Asian", "Indian", "Middle Eastern")
FAIRFACE_GENDERS = ("Male", "Female")
FAIRFACE_AGES = ("0-2", "3-9", "10-19", "20-29", "30-39", "40-49", "50-59", "60-69", "70+")

# estimator -> the attributes it gives (the names of the row columns and of balance.targets' keys)
ESTIMATOR_ATTRIBUTES = {"genderage": ("gender", "age_group"), "fairface": ("gender", "age_group", "race")}
DEFAULT_AGE_EDGES = (20, 40, 60)
# Row columns holding attribute labels: manifests count their values, so the card and the report show the
# distribution without rescanning shards.
LABEL_COLUMNS = ("gender", "age_group", "race")


def age_group_labels(edges: Sequence[int]) -> tuple[str, ...]:
    """Labels of the age groups cut at ``edges`` (years, increasing): (20, 40, 60) -> 0-19, 20-39, 40-59, 60+."""
    bounds = [0, *edges]
    return tuple(f"{lo}-{hi - 1}" for lo, hi in zip(bounds, bounds[1:], strict=False)) + (f"{bounds[-1]}+",)


def age_group(age: float, edges: Sequence[int]) -> str:
    """The group of an age in years (an age on an edge belongs to the group that starts there)."""
    labels = age_group_labels(edges)
    return labels[sum(age >= e for e in edges)]


def fairface_age_lower(label: str) -> int:
    """The first year of a FairFace age bin ("20-29" -> 20, "70+" -> 70)."""
    return int(label.split("-")[0].rstrip("+"))


def labels_of(estimator: str, attribute: str, edges: Sequence[int]) -> tuple[str, ...]:
    """The values ``attribute`` takes under ``estimator`` (what balance targets may name)."""
    if attribute == "gender":
        return GENDERS
    if attribute == "age_group":
        return age_group_labels(edges)
    if attribute == "race" and estimator == "fairface":
        return FAIRFACE_RACES
    raise ValueError(f"the {estimator} estimator gives no attribute {attribute!r}; it gives "
                     f"{', '.join(ESTIMATOR_ATTRIBUTES[estimator])}")
