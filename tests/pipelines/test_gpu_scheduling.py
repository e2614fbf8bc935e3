"""GPU-stage scheduling: generator actors ask Ray for ``ray.generator_gpus``, and a run whose generator stage
declares GPUs is scheduled on logical GPUs on a CPU machine (its own embedded Ray, started with them)."""

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from facefoundry.cli import app

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "smoke.yaml"


@pytest.mark.ray
def test_generator_stage_scheduled_on_logical_gpus(tmp_path):
    """``num_gpus`` declared for generator actors on a CPU machine: Ray schedules them on logical GPUs."""
    out = tmp_path / "gpu"
    result = CliRunner().invoke(app, ["run", str(CONFIG), "--out", str(out), "--set", "identities.count=2",
                                      "--set", "images.per_identity=1", "--set", "ray.num_gpus=1",
                                      "--set", "ray.generator_gpus=1"])
    assert result.exit_code == 0, result.output
    # One vocabulary: the run's line and the report count the same accepted images (annotate mode stores
    # rejected rows too, so rows written is not the accepted count).
    accepted = re.search(r"(\d+)/2 images accepted, 2 rows written", result.output)
    assert accepted, result.output
    report = CliRunner().invoke(app, ["report", str(out)])
    assert report.exit_code == 0 and f"{accepted.group(1)}/2 images accepted" in report.output, report.output


def test_generator_actors_request_the_configured_gpus(monkeypatch):
    """The wiring the logical-GPU run relies on: generator actors ask Ray for ``ray.generator_gpus``."""
    import ray.data

    from facefoundry.config import load_config
    from facefoundry.dataset.manifest import Unit
    from facefoundry.pipelines import executor
    from facefoundry.pipelines.stages import ModelPaths

    calls = []

    class FakeDataset:
        def map_batches(self, fn, **kwargs):
            calls.append((fn, kwargs))
            return self

        def iter_batches(self, **kwargs):
            return iter([])

    monkeypatch.setattr(ray.data, "from_items", lambda items, **kw: FakeDataset())
    cfg = load_config(CONFIG, ["ray.generator_gpus=0.5", "ray.generator_actors=3"])
    list(executor.stream_units(cfg, "/tmp/x", [Unit(0, 1)], ModelPaths("m", "b"), {}))
    generate = dict(calls)[executor.GenerateActor]
    assert generate["num_gpus"] == 0.5 and generate["compute"].max_size == 3
    assert [fn for fn, _ in calls] == [executor.GenerateActor, executor.FilterActor, executor.WriteActor]
    assert all(kw["compute"].min_size == 1 for _, kw in calls)  # every stage's process starts with the pipeline


def test_generator_threads_default_to_the_node_cpus_shared_among_generator_actors():
    from facefoundry.config import load_config
    from facefoundry.pipelines.executor import generator_threads

    assert generator_threads(load_config(CONFIG, []), 16) == 16
    assert generator_threads(load_config(CONFIG, ["ray.generator_actors=3"]), 16) == 5
    assert generator_threads(load_config(CONFIG, ["ray.generator_actors=32"]), 16) == 1
    assert generator_threads(load_config(CONFIG, ["ray.generator_threads=2"]), 16) == 2
