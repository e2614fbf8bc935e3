"""``attributes.tiny``: the attribute models as tiny random-weight builds, so that attribute balance and an
evaluation set run offline (``configs/smoke-evalset.yaml``), as ``generator.tiny`` does for the generator.

:func:`resolve_attributes` is the one place that decides what the annotator loads: the ``attributes`` section as
written, or, with ``tiny`` on, a copy of it whose ``model`` and ``pose_model`` are a tiny ``genderage.onnx`` and
6DRepNet written under ``<models_dir>/attributes`` (seeded by the run seed, so every run of a config writes the
same bytes) and whose ``detector_model`` is null (the whole image is the face box). ``pipelines.runner``'s
``resolve_model_paths`` calls it once per run and hands the result to every stage in ``ModelPaths.attributes``.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from facefoundry.sections import AttributesConfig

TINY_FOLDER = "attributes"  # under the run's models folder (layout.MODELS_DIR)
POSE_SEED_OFFSET = 2  # the 6DRepNet's seed after the estimator's (write_tiny_face_models' order)


def tiny_files(models_dir: Path) -> tuple[Path, Path]:
    """Where a tiny build keeps its estimator and its 6DRepNet, under the official file names."""
    from facefoundry.faces.genderage import GENDERAGE_FILE
    from facefoundry.faces.sixdrepnet import SIXDREPNET_FILE

    folder = Path(models_dir) / TINY_FOLDER
    return folder / GENDERAGE_FILE, folder / SIXDREPNET_FILE


def resolve_attributes(cfg: AttributesConfig | None, models_dir: Path, seed: int) -> AttributesConfig | None:
    """``cfg`` as written, or with ``tiny`` on its tiny build's files (written unless there from an earlier
    invocation of the run: the folder appears whole, by one rename)."""
    if cfg is None or not cfg.tiny:
        return cfg
    estimator, pose = tiny_files(models_dir)
    folder = estimator.parent
    if not folder.is_dir():
        from facefoundry.faces.tiny_face_models import write_tiny_genderage, write_tiny_sixdrepnet

        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{TINY_FOLDER}-", dir=folder.parent))
        write_tiny_genderage(staging / estimator.name, seed=seed)
        write_tiny_sixdrepnet(staging / pose.name, seed=seed + POSE_SEED_OFFSET)
        staging.rename(folder)
    return cfg.model_copy(update={"model": str(estimator), "detector_model": None, "pose_model": str(pose)})
