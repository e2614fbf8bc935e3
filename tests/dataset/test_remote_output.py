"""Remote output (``--out s3://...``) against a real S3-compatible server on 127.0.0.1 (moto in server mode):
the same commit rule as a local folder, the same bytes, and resume from what the bucket holds."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pyarrow as pa
import pytest
from runfolder import make_run, write_in_process
from s3server import bucket_uri
from typer.testing import CliRunner

from facefoundry.cli import app
from facefoundry.config import load_config
from facefoundry.dataset.manifest import DATA_DIR, MANIFEST_DIR, Unit, finished_manifests, is_done
from facefoundry.dataset.shards import write_unit
from facefoundry.dataset.storage import LocalStore, RemoteStore, StorageError, open_store
from facefoundry.runfolder.verify import verify_run

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "smoke.yaml"


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    if request.param == "local":
        return open_store(tmp_path / "run")
    return open_store(bucket_uri(request.getfixturevalue("s3_endpoint"), "contract", "store"))


def test_store_contract(store):
    assert store.read_bytes("run.json") is None and store.size("run.json") is None and store.sizes("data") == {}
    store.put_bytes("run.json", b"{}")
    with store.commit("data/a.parquet") as tmp:
        tmp.write_bytes(b"x" * 10)
    assert store.read_bytes("run.json") == b"{}" and store.size("data/a.parquet") == 10
    assert store.sizes("data") == {"a.parquet": 10} and store.entries() == {"run.json", "data"}

    with pytest.raises(RuntimeError, match="boom"), store.commit("data/b.parquet") as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("boom")
    assert store.sizes("data") == {"a.parquet": 10}, "a failed commit must leave nothing under the final name"

    store.delete("data")
    store.delete("missing")
    assert store.entries() == {"run.json"}


def test_open_store_picks_by_scheme(tmp_path):
    assert isinstance(open_store(tmp_path), LocalStore)
    assert isinstance(open_store(f"file://{tmp_path}"), LocalStore)
    assert open_store(f"file://{tmp_path}").root == tmp_path
    assert isinstance(open_store("s3://bucket/x?endpoint_override=127.0.0.1:1&scheme=http"), RemoteStore)
    with pytest.raises(StorageError, match="nosuchscheme://b/x"):
        open_store("nosuchscheme://b/x")


def _table(start: int, stop: int) -> pa.Table:
    ids = [i for i in range(start, stop) for _ in range(2)]
    return pa.table({"identity": pa.array(ids, pa.int64()), "image_index": pa.array([0, 1] * (stop - start),
                                                                                    pa.int32())})


def test_unit_on_s3_is_byte_identical_and_done_only_with_its_manifest(s3_endpoint, tmp_path):
    uri = bucket_uri(s3_endpoint, "units", "run")
    remote, local, unit = open_store(uri), tmp_path, Unit(0, 2)
    args = {"generated": 4, "drops": {}, "config_hash": "abc", "file_metadata": {"run_id": "r"}}
    assert write_unit(remote, unit, _table(0, 2), **args) == write_unit(local, unit, _table(0, 2), **args)
    shard = f"{DATA_DIR}/{unit.shard_name}"
    assert remote.read_bytes(shard) == (local / shard).read_bytes()
    assert is_done(remote, unit, "abc") and not is_done(remote, unit, "other")
    assert [m["unit"] for m in finished_manifests(uri, "abc")] == [unit.name]

    # A shard whose manifest never landed (the writer died between the two) is not done.
    other = Unit(2, 4)
    remote.put_bytes(f"{DATA_DIR}/{other.shard_name}", b"partial")
    assert not is_done(remote, other, "abc")
    # A shard replaced by other bytes no longer agrees with its manifest.
    remote.put_bytes(shard, remote.read_bytes(shard)[:-1])
    assert not is_done(remote, unit, "abc") and finished_manifests(uri, "abc") == []


def test_verify_reads_a_remote_run(s3_endpoint):
    uri = bucket_uri(s3_endpoint, "verify", "run")
    make_run(uri)
    assert verify_run(uri) == []
    store = open_store(uri)
    store.put_bytes(f"{MANIFEST_DIR}/stray.json", b"{}")
    name = f"{DATA_DIR}/{Unit(0, 2).shard_name}"
    data = store.read_bytes(name)
    store.put_bytes(name, data[:10] + bytes([data[10] ^ 1]) + data[11:])
    problems = verify_run(uri)
    assert any("sha256 differs" in p for p in problems) and any("stray.json: orphan" in p for p in problems)


def _digests(store) -> dict[str, str]:
    return {name: hashlib.sha256(store.read_bytes(f"{DATA_DIR}/{name}")).hexdigest()
            for name in sorted(store.sizes(DATA_DIR))}


@pytest.mark.usefixtures("shared_ray")  # after s3_endpoint (session scope first): its workers have the credentials
def test_run_to_s3_matches_a_local_run_and_resumes(s3_endpoint, tmp_path):
    args = ["--set", "identities.count=3", "--set", "images.per_identity=2", "--set", "output.identities_per_unit=1"]
    local = tmp_path / "local"  # the reference: the same stages in this process (a Ray run writes the same bytes)
    write_in_process(load_config(CONFIG, [a for a in args if a != "--set"]), local)
    uri = bucket_uri(s3_endpoint, "runs", "smoke")
    result = CliRunner().invoke(app, ["run", str(CONFIG), "--out", uri, *args])
    assert result.exit_code == 0, result.output
    assert "endpoint_override" not in result.output.splitlines()[-1], "the URI's query is not printed"
    remote = open_store(uri)
    assert _digests(remote) == _digests(open_store(local)) and len(_digests(remote)) == 3
    assert remote.read_bytes("identities.parquet") == (local / "identities.parquet").read_bytes()
    assert verify_run(uri) == []
    assert [n for n in remote.sizes("logs") if n.endswith(".log")], "the run log is uploaded"

    # The writer died after a shard but before its manifest, and another unit's shard is damaged:
    # the rerun redoes exactly those two units and ends with the same bytes.
    units = [Unit(0, 1), Unit(1, 2)]
    remote.delete(f"{MANIFEST_DIR}/{units[0].name}.json")
    remote.put_bytes(f"{DATA_DIR}/{units[1].shard_name}", b"not parquet")
    result = CliRunner().invoke(app, ["run", str(CONFIG), "--out", uri, *args])
    assert result.exit_code == 0, result.output
    assert "1 already done (resuming)" in result.output and "2 units written" in result.output
    assert _digests(remote) == _digests(open_store(local)) and verify_run(uri) == []

    # Another config into the same prefix is refused, exactly as for a folder.
    refused = CliRunner().invoke(app, ["run", str(CONFIG), "--out", uri, *args, "--set", "run.seed=7"])
    assert refused.exit_code != 0 and "different config" in refused.output
