"""The generate stage without Ray, for both generators: seeds, perturbation, recorded masks, generator columns."""

import io

import numpy as np
import pytest
from PIL import Image

from facefoundry.config import validate_config
from facefoundry.dataset.manifest import Unit
from facefoundry.identities.store import write_identities
from facefoundry.pipelines.runner import resolve_model_paths
from facefoundry.pipelines.stages import GenerateStage
from facefoundry.seeds import image_seed

BASE = {"identities": {"count": 3}, "images": {"per_identity": 2}, "run": {"seed": 5}}
VEC2FACE = {
    **BASE,
    "identities": {"count": 3, "space": "raw", "norm": 22.0},
    "images": {"per_identity": 2, "perturbation": {}},
    "generator": {"kind": "vec2face", "tiny": True, "device": "cpu"},
}
ARC2FACE = {**BASE, "generator": {"kind": "arc2face", "tiny": True, "steps": 2, "device": "cpu", "output_size": 32}}


def stage_for(tmp_path, data):
    cfg = validate_config(data)
    write_identities(tmp_path, cfg)
    return GenerateStage(cfg, str(tmp_path), resolve_model_paths(cfg, tmp_path)), cfg


@pytest.mark.parametrize("data", [ARC2FACE, VEC2FACE], ids=["arc2face", "vec2face"])
def test_unit_rows_and_seeds(tmp_path, data):
    stage, cfg = stage_for(tmp_path, data)
    result = stage(Unit(1, 3))
    table = result.table
    assert result.generated == table.num_rows == 4
    assert table.column("identity").to_pylist() == [1, 1, 2, 2]
    assert table.column("seed").to_pylist() == [image_seed(5, i, j) for i, j in [(1, 0), (1, 1), (2, 0), (2, 1)]]
    size = Image.open(io.BytesIO(table.column("image")[0]["bytes"].as_py())).size
    assert size == ((32, 32) if cfg.generator.kind == "arc2face" else (112, 112))
    # The same unit again gives the same bytes: nothing depends on worker state.
    assert stage(Unit(1, 3)).table.equals(table)


def test_vec2face_records_masks_and_perturbation(tmp_path):
    stage, cfg = stage_for(tmp_path, VEC2FACE)
    table = stage(Unit(0, 3)).table
    masks = table.column("token_mask").to_pylist()
    assert all(len(m) == 49 and set(m) <= set("012") for m in masks) and len(set(masks)) == 6
    assert table.column("perturbation_sigma").to_pylist()[:2] == pytest.approx([0.3, 0.5])  # 40/40/20 of 2 images
    cos = np.array(table.column("vector_cosine").to_pylist())
    assert ((cos > 0.8) & (cos < 1.0)).all()
    # An image regenerates alone from its recorded mask and its perturbed vector.
    gen = stage.generator
    row = table.slice(3, 1).to_pylist()[0]
    from facefoundry.identities.variation import perturb

    identity = row["identity"]
    vector = perturb(stage.vectors.rows(identity, identity + 1), np.array([row["perturbation_sigma"]]),
                     np.array([row["seed"]]), cfg.images.perturbation)
    again = gen.generate(vector, np.array([row["seed"]]), [{"token_mask": row["token_mask"]}])[0]
    stored = np.asarray(Image.open(io.BytesIO(row["image"]["bytes"])))
    assert np.abs(again.astype(int) - stored.astype(int)).max() <= 1


def test_generator_columns_come_from_its_declared_fields(tmp_path):
    """The stage appends whatever the generator declares, typed as declared: Vec2Face's mask and AttrOP's
    outcome after perturbation's columns; Arc2Face declares none."""
    attrop = {**VEC2FACE["generator"], "attrop": {"enabled": True, "max_iterations": 1}}
    stage, _ = stage_for(tmp_path, {**VEC2FACE, "generator": attrop})
    table = stage(Unit(0, 1)).table
    declared = stage.generator.extra_fields()
    assert [f.name for f in declared] == ["mask_ratio", "token_mask", "attrop_iterations", "attrop_converged",
                                          "attrop_id_similarity", "attrop_quality", "attrop_yaw", "attrop_pitch",
                                          "attrop_target_yaw", "attrop_target_pitch"]
    assert list(table.schema)[6:] == declared and table.column_names[4:6] == ["perturbation_sigma", "vector_cosine"]
    assert set(table.column("attrop_iterations").to_pylist()) <= {0, 1}
    arc_stage, _ = stage_for(tmp_path / "arc", ARC2FACE)
    assert arc_stage(Unit(0, 1)).table.column_names == ["image", "identity", "image_index", "seed"]
    assert arc_stage.generator.extra_fields() == []
