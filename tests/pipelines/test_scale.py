"""The scale rehearsal's rules at test size: the no-op generator, resume after lost manifests, one listing per
folder of an object store, bounded progress output. The 10^3..10^5-unit sizes are bench/scale.py's."""

from __future__ import annotations

import io
import random

import numpy as np
import pytest
from runfolder import write_in_process
from s3server import bucket_uri

from facefoundry.config import validate_config
from facefoundry.dataset.manifest import plan_units
from facefoundry.dataset.storage import open_store
from facefoundry.generators.noop.config import NoopConfig
from facefoundry.generators.noop.generator import NoopGenerator, rehearsal_config
from facefoundry.layout import DATA_DIR, MANIFEST_DIR
from facefoundry.pipelines import runner
from facefoundry.pipelines.progress import Progress
from facefoundry.pipelines.runner import run
from facefoundry.publishing.card.build import write_card
from facefoundry.publishing.hub import PublishError, publish
from facefoundry.runfolder.verify import verify_run
from facefoundry.sections import ConfigError


def test_noop_images_depend_on_their_seed_only():
    gen = NoopGenerator(NoopConfig(size=8))
    vectors = np.random.default_rng(0).normal(size=(4, 512)).astype(np.float32)
    seeds = np.array([11, 12, 13, 14])
    images = gen.generate(vectors, seeds)
    assert all(im.shape == (8, 8, 3) and im.dtype == np.uint8 for im in images)
    reversed_batch = gen.generate(vectors[::-1], seeds[::-1])[::-1]
    alone = [gen.generate(vectors[i:i + 1], seeds[i:i + 1])[0] for i in range(4)]
    for a, b, c in zip(images, reversed_batch, alone, strict=True):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)
    assert not np.array_equal(images[0], images[1]), "different seeds, different images"
    assert gen.generate_output(vectors, seeds).columns == {} and gen.extra_fields() == []
    with pytest.raises(ValueError, match="NaN"):
        gen.generate(np.full((1, 512), np.nan, np.float32), seeds[:1])
    with pytest.raises(ValueError, match="seeds"):
        gen.generate(vectors, seeds[:2])


def test_noop_is_selected_only_by_name():
    cfg = validate_config(rehearsal_config(4))
    assert cfg.generator.kind == "noop" and cfg.generator.tiny, "the card treats it as a tooling-only run"
    with pytest.raises(ConfigError, match="generator.size"):  # noop's own key, without its kind: not noop
        validate_config({**rehearsal_config(4), "generator": {"size": 8}})
    unnamed = validate_config({k: v for k, v in rehearsal_config(4).items() if k != "generator"})
    assert unnamed.generator.kind == "arc2face", "the default generator is a real one"


def test_progress_lines_are_bounded_in_a_log():
    stream = io.StringIO()
    progress = Progress(1000, 2.0, stream, every=3600.0)
    for _ in range(1000):
        progress.update({"generated": 2, "drops": {}})
    lines = stream.getvalue().splitlines()
    assert [line.split(" |")[0] for line in lines] == ["units 1/1000", "units 1000/1000"]
    every = Progress(3, 2.0, io.StringIO(), every=0.0)
    for _ in range(3):
        every.update({"generated": 2, "drops": {}})
    assert len(every.stream.getvalue().splitlines()) == 3


@pytest.mark.ray
def test_resume_on_s3_lists_each_folder_once_and_redoes_exactly_the_lost_units(s3, monkeypatch):
    """The finished run is written by the stages in this process; the reruns are real runs (Ray for the redo),
    whose shards must match those byte for byte."""
    units = plan_units(200, 1)
    cfg = validate_config(rehearsal_config(len(units)) | {"ray": {"num_cpus": 2}})
    uri = bucket_uri(s3.endpoint, "scale", "run")
    assert len(write_in_process(cfg, uri)) == len(units)
    store = open_store(uri)
    shards = {name: store.read_bytes(f"{DATA_DIR}/{name}") for name in store.sizes(DATA_DIR)}
    assert len(shards) == len(units)

    # A finished run: planning and the done-scan list data/ and manifests/ once each and read nothing twice.
    mark = len(s3.requests)
    monkeypatch.setattr(runner, "HUB_MAX_FILES_PER_FOLDER", 150)  # and 200 shards would not fit one Hub folder
    log = io.StringIO()
    again = run(cfg, uri, log=log)
    assert (again.units_written, again.units_skipped) == (0, len(units))
    assert "200 work units make 200 files in data/" in log.getvalue()
    assert "set output.identities_per_unit=2 (or more)" in log.getvalue()
    listed = [p for p in s3.listings(mark) if p.endswith((f"{DATA_DIR}/", f"{MANIFEST_DIR}/"))]
    assert sorted(listed) == [f"run/{DATA_DIR}/", f"run/{MANIFEST_DIR}/"], s3.listings(mark)
    reads = [path for method, path, _ in s3.requests[mark:] if method == "GET" and f"/{MANIFEST_DIR}/" in path]
    assert len(reads) == len(set(reads)) == len(units), "each manifest is read once"

    # 1 % of the manifests are lost: the rerun writes exactly those units again, byte for byte.
    lost = random.Random(17).sample(units, len(units) // 100)
    for unit in lost:
        store.delete(f"{MANIFEST_DIR}/{unit.name}.json")
    mark = len(s3.requests)
    redo = run(cfg, uri, log=io.StringIO())
    assert (redo.units_written, redo.units_skipped, redo.failed) == (len(lost), len(units) - len(lost), [])
    written = sorted(path.rsplit("/", 1)[1] for method, path, _ in s3.requests[mark:]
                     if method == "PUT" and f"/{DATA_DIR}/" in path)
    assert written == sorted(unit.shard_name for unit in lost)
    assert {name: store.read_bytes(f"{DATA_DIR}/{name}") for name in store.sizes(DATA_DIR)} == shards
    assert len(store.sizes(MANIFEST_DIR)) == len(units)


def test_a_noop_run_is_a_tooling_test_never_a_dataset(tmp_path):
    """A rehearsal run made by the stages themselves (no Ray): its card says what it is and publish refuses it."""
    cfg = validate_config(rehearsal_config(4, per_identity=2))
    out = tmp_path / "rehearsal"
    manifests = write_in_process(cfg, out)
    assert [(m["rows"], m["generated"]) for m in manifests] == [(2, 2)] * 4
    assert verify_run(out) == []
    card = write_card(out).read_text()
    assert "no-op generator" in card and "nothing in this run is a face" in card and "tiny" not in card.lower()
    with pytest.raises(PublishError, match="no-op generator"):
        publish(out, "org/rehearsal", dry_run=True)
