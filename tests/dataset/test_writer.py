import io
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from facefoundry.dataset.manifest import Unit, is_done, plan_units, read_manifest, shard_path
from facefoundry.dataset.schema import image_struct
from facefoundry.dataset.shards import write_unit
from facefoundry.layout import manifest_file


def png(value: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def unit_table(order):
    ids = [i for i, _ in order]
    idx = [j for _, j in order]
    return pa.table({
        "image": image_struct([png(10 * i + j) for i, j in order], [f"{i}_{j}.png" for i, j in order]),
        "identity": pa.array(ids, pa.int64()),
        "image_index": pa.array(idx, pa.int32()),
        "seed": pa.array([100 * i + j for i, j in order], pa.int64()),
        "judge_similarity": pa.array([None if (i, j) == (2, 1) else i / 10 + j for i, j in order], pa.float32()),
    })


def write(tmp_path, order, name="x"):
    return write_unit(tmp_path, Unit(2, 4), unit_table(order), generated=5, drops={"no_face": 1},
                      config_hash="abc", file_metadata={"run_id": name})


def test_plan_units_covers_all_identities_once():
    units = plan_units(10, 4)
    assert [(u.start, u.stop) for u in units] == [(0, 4), (4, 8), (8, 10)]
    assert units[0].shard_name == "train-0000000-0000004.parquet"


def test_shard_schema_manifest_and_hf_decoding(tmp_path):
    manifest = write(tmp_path, [(3, 1), (2, 0), (3, 0), (2, 1)])
    shard = shard_path(tmp_path, Unit(2, 4))
    assert shard.exists() and not list(shard.parent.glob(".tmp-*"))
    table = pq.read_table(shard)
    # Rows are sorted, whatever order the workers produced them in.
    assert list(zip(table["identity"].to_pylist(), table["image_index"].to_pylist(), strict=True)) == [
        (2, 0), (2, 1), (3, 0), (3, 1)]
    meta = table.schema.metadata
    features = json.loads(meta[b"huggingface"])["info"]["features"]
    assert features["image"] == {"_type": "Image"}
    assert json.loads(meta[b"facefoundry"]) == {"run_id": "x"}
    assert manifest == read_manifest(tmp_path, Unit(2, 4))
    assert manifest["rows"] == 4 and manifest["generated"] == 5 and manifest["drops"] == {"no_face": 1}
    assert manifest["bytes"] == shard.stat().st_size and len(manifest["sha256"]) == 64
    assert manifest["stats"]["judge_similarity"] == pytest.approx(
        {"count": 3, "mean": (0.2 + 0.3 + 1.3) / 3, "min": 0.2, "max": 1.3})

    import datasets

    ds = datasets.load_dataset("parquet", data_dir=str(tmp_path / "data"), split="train")
    row = ds[0]
    assert row["image"].size == (8, 8) and row["identity"] == 2 and row["seed"] == 200
    assert set(ds.column_names) == {"image", "identity", "image_index", "seed", "judge_similarity"}


def test_bytes_do_not_depend_on_row_order(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    write(a, [(3, 1), (2, 0), (3, 0), (2, 1)])
    write(b, [(2, 0), (2, 1), (3, 0), (3, 1)])
    assert shard_path(a, Unit(2, 4)).read_bytes() == shard_path(b, Unit(2, 4)).read_bytes()


@pytest.mark.parametrize("damage", ["no_manifest", "corrupt_manifest", "truncated_shard", "no_shard", "other_run"])
def test_unit_done_only_when_manifest_and_shard_agree(tmp_path, damage):
    unit = Unit(2, 4)
    write(tmp_path, [(2, 0), (3, 0)])
    assert is_done(tmp_path, unit, "abc")
    shard, manifest = shard_path(tmp_path, unit), tmp_path / manifest_file(unit.name)
    if damage == "no_manifest":
        manifest.unlink()
    elif damage == "corrupt_manifest":
        manifest.write_text("{half")
    elif damage == "truncated_shard":
        shard.write_bytes(shard.read_bytes()[:-10])
    elif damage == "no_shard":
        shard.unlink()
    assert not is_done(tmp_path, unit, "other" if damage == "other_run" else "abc")
