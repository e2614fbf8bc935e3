"""Stages declare what one worker needs; the executor builds every Ray stage from that declaration alone;
a generator brings its own columns, so a new generator is one new module."""

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from facefoundry.config import load_config, validate_config
from facefoundry.dataset.manifest import Unit
from facefoundry.generators.base import IDENTITY_INDEX, IDENTITY_VECTOR, IMAGE_INDEX, GenerationOutput
from facefoundry.generators.registry import SPECS
from facefoundry.identities.store import write_identities
from facefoundry.pipelines import executor, stages
from facefoundry.pipelines.stage import units_per_task
from facefoundry.pipelines.stages import FilterStage, GenerateStage, ModelPaths, Stage, UnitResult, WriteStage
from facefoundry.resources import ModelFiles, Resources

REPO = Path(__file__).resolve().parents[2]


class FakeDataset:
    def __init__(self):
        self.calls = []

    def map_batches(self, fn, **kwargs):
        self.calls.append((fn, kwargs))
        return self

    def iter_batches(self, **kwargs):
        return iter([])


def test_each_stage_declares_its_resources_and_pool_from_the_config():
    cfg = load_config(REPO / "configs" / "arc2face.yaml", ["ray.generator_actors=3", "ray.writer_actors=2"])
    generate, filters, write = GenerateStage(cfg, "", ModelPaths("m")), FilterStage(cfg, ""), WriteStage(cfg, "", {})
    assert generate.resources == Resources(num_cpus=1.0, num_gpus=1.0)
    assert generate.resources.settings == {"num_gpus": "ray.generator_gpus"}  # the error names this setting
    assert filters.resources == Resources(num_cpus=0.5) and write.resources == Resources(num_cpus=0.25)
    assert (generate.workers, filters.workers, write.workers) == (3, 2, 2)
    assert generate.batch_size == filters.batch_size == write.batch_size == 1
    cpu = load_config(REPO / "configs" / "arc2face.yaml", ["ray.generator_gpus=0"])
    assert GenerateStage(cpu, "", ModelPaths("m")).resources.num_gpus == 0


def test_filter_stage_merges_its_filters_declarations(monkeypatch):
    from facefoundry.filters.identity_filter import IdentityFilter

    monkeypatch.setattr(IdentityFilter, "resources", Resources(num_cpus=0.25, num_gpus=1.0, memory=2 * 2**30))
    cfg = load_config(REPO / "configs" / "smoke.yaml", ["id_filter.mode=annotate"])
    assert FilterStage(cfg, "").resources == Resources(num_cpus=0.5, num_gpus=1.0, memory=2 * 2**30)


def test_resources_override_merge_and_ray_options():
    base = Resources(num_cpus=1.0)
    gpu = base.override("ray.generator_gpus", num_gpus=0.5, memory=None)
    assert gpu == Resources(1.0, 0.5) and gpu.settings == {"num_gpus": "ray.generator_gpus"}
    assert base.override("x", num_gpus=None) is base
    merged = Resources(1.0, memory=2**30).merge(Resources(0.5, 1.0, memory=2**30))
    assert merged == Resources(1.0, 1.0, memory=2**31)
    assert merged.ray_options() == {"num_cpus": 1.0, "num_gpus": 1.0, "memory": 2**31}
    assert base.ray_options() == {"num_cpus": 1.0, "num_gpus": 0.0}  # no memory reservation unless declared
    assert gpu.as_cluster_keys() == {"CPU": 1.0, "GPU": 0.5}


class Doubler(Stage):
    """A stage the executor has never heard of: declares 2 CPUs, half a GPU, 1 GiB and up to 3 workers."""

    name = "double"

    @property
    def resources(self) -> Resources:
        return Resources(2.0, 0.5, memory=2**30)

    @property
    def workers(self) -> int:
        return 3

    def setup_worker(self, node_cpus):
        self.node_cpus = node_cpus

    def setup(self):
        self.ready = True

    def __call__(self, unit: Unit) -> UnitResult:
        if unit.start == 13:
            raise RuntimeError("unlucky unit")
        return UnitResult(unit, pa.table({"x": [2 * unit.start]}), 1)


def test_any_stage_is_built_from_its_declaration_in_one_place():
    cfg = load_config(REPO / "configs" / "smoke.yaml", [])
    ds = FakeDataset()
    stage = Doubler(cfg)
    executor.map_stage(ds, stage)
    (fn, kwargs), = ds.calls
    assert fn is executor.StageActor and kwargs["fn_constructor_args"] == (stage,)
    assert (kwargs["num_cpus"], kwargs["num_gpus"], kwargs["memory"]) == (2.0, 0.5, 2**30)
    assert (kwargs["compute"].min_size, kwargs["compute"].max_size, kwargs["batch_size"]) == (1, 3, 1)


def test_stream_units_uses_each_stages_declaration(monkeypatch):
    import ray.data

    ds = FakeDataset()
    monkeypatch.setattr(ray.data, "from_items", lambda items, **kw: ds)
    cfg = load_config(REPO / "configs" / "smoke.yaml", ["ray.generator_gpus=0.5", "ray.filter_actors=2"])
    list(executor.stream_units(cfg, "/tmp/x", [Unit(0, 1)], ModelPaths("m", "b"), {}))
    got = [(fn.__name__, kw["num_cpus"], kw["num_gpus"], kw["compute"].max_size) for fn, kw in ds.calls]
    assert got == [("GenerateActor", 1.0, 0.5, 1), ("FilterActor", 0.5, 0.0, 2), ("WriteActor", 0.25, 0.0, 1)]


def test_the_adapter_runs_any_stage_and_carries_failures_on(tmp_path):
    cfg = load_config(REPO / "configs" / "smoke.yaml", ["ray.unit_retries=1"])
    actor = executor.StageActor(Doubler(cfg))
    assert actor.stage.ready and actor.stage.node_cpus >= 1  # set up when the actor starts, not per unit
    out = executor._unpack(actor({"start": np.array([2, 13]), "stop": np.array([3, 14])}))
    assert out[0].table.column("x").to_pylist() == [4] and out[0].error is None
    assert out[1].error == "RuntimeError: unlucky unit" and out[1].unit == Unit(13, 14)
    # the writer's failure form is a manifest naming the unit and the reason from upstream
    writer = executor.StageActor(WriteStage(cfg, str(tmp_path), {}))
    manifests = writer(executor._pack(out[1:]))["manifest"]
    assert list(manifests) == ['{"unit": "0000013-0000014", "error": "RuntimeError: unlucky unit"}']


class EchoGenerator:
    """A third generator in one module: grey images whose level is the seed's parity, plus its own two columns."""

    name = "echo"
    resources = Resources(num_cpus=2.0)

    def __init__(self, cfg, model=None):
        self.cfg, self.model = cfg, model

    @classmethod
    def from_paths(cls, cfg, model=None, base_model=None, extra=None):
        return cls(cfg, model)

    @classmethod
    def model_files(cls, cfg, model=None, base_model=None, extra=None):
        return [ModelFiles(str(model), (), "echo", role="generator.model", hub=False)]

    def setup(self, device=None, dtype=None):
        pass

    def extra_fields(self):
        return [pa.field("echo_parity", pa.int8()), pa.field("echo_target_norm", pa.float32()),
                pa.field("echo_which", pa.string())]

    def generate_output(self, vectors, seeds, variations=None):
        images = [np.full((8, 8, 3), 100 * (s % 2), np.uint8) for s in seeds]
        norms = [float(np.linalg.norm(v[IDENTITY_VECTOR])) for v in variations]
        which = [f"{v[IDENTITY_INDEX]}/{v[IMAGE_INDEX]}" for v in variations]
        return GenerationOutput(images, {"echo_parity": [int(s % 2) for s in seeds], "echo_target_norm": norms,
                                         "echo_which": which})


def test_a_new_generator_brings_its_columns_and_resources(tmp_path, monkeypatch):
    monkeypatch.setattr(SPECS["arc2face"], "generator_class", f"{__name__}:EchoGenerator")  # its spec names it
    cfg = validate_config({"identities": {"count": 2}, "images": {"per_identity": 3}, "ray": {"generator_gpus": 1}})
    write_identities(tmp_path, cfg)
    stage = GenerateStage(cfg, str(tmp_path), ModelPaths(str(tmp_path)))
    assert stage.resources == Resources(num_cpus=2.0, num_gpus=1.0)
    table = stage(Unit(0, 2)).table
    assert table.column_names == ["image", "identity", "image_index", "seed", "echo_parity", "echo_target_norm",
                                  "echo_which"]
    assert table.column("echo_which").to_pylist() == ["0/0", "0/1", "0/2", "1/0", "1/1", "1/2"]
    assert table.schema.field("echo_parity").type == pa.int8()
    assert table.column("echo_parity").to_pylist() == [s % 2 for s in table.column("seed").to_pylist()]
    assert table.column("echo_target_norm").to_pylist() == pytest.approx([1.0] * 6, abs=1e-6)  # unit-sphere ids
    assert [m.name for m in stages.generator_model_files(cfg, ModelPaths(str(tmp_path)))] == ["echo"]


def test_generation_output_must_match_the_declared_fields():
    fields = [pa.field("a", pa.int32())]
    images = [np.zeros((2, 2, 3), np.uint8)] * 2
    assert GenerationOutput(images, {"a": [1, 2]}).arrays(fields)["a"].type == pa.int32()
    with pytest.raises(ValueError, match=r"returned columns \['b'\], declared \['a'\]"):
        GenerationOutput(images, {"b": [1, 2]}).arrays(fields)
    with pytest.raises(ValueError, match="column a has 1 values for 2 images"):
        GenerationOutput(images, {"a": [1]}).arrays(fields)


def test_units_per_task_amortises_rays_cost_without_starving_the_actors():
    def per_task(pending, **sets):
        cfg = load_config(REPO / "configs" / "smoke.yaml", [f"{k.replace('__', '.')}={v}" for k, v in sets.items()])
        return units_per_task(cfg, pending)

    # smoke: 2 identities x 4 images per unit = 8 images; 256 images' worth is 32 units, if there are enough
    assert per_task(10_000) == 32 and per_task(4) == 1 and per_task(64) == 2 and per_task(1024) == 32
    assert per_task(10_000, images__per_identity=50) == 3  # 100 images per unit
    assert per_task(10_000, output__identities_per_unit=64, images__per_identity=50) == 1
    assert per_task(10_000, ray__generator_actors=8) == 32 and per_task(2048, ray__generator_actors=8) == 8
    assert per_task(4, ray__units_per_task=5) == 5  # as configured


def test_every_stage_takes_a_tasks_units_in_one_call():
    cfg = load_config(REPO / "configs" / "smoke.yaml", ["ray.units_per_task=3"])
    stages = executor.pipeline(cfg, "", ModelPaths("m"), {}, 3)
    assert [s.batch_size for s in stages] == [3, 3, 3]
    ds = FakeDataset()
    executor.map_stage(ds, stages[-1])
    assert ds.calls[0][1]["batch_size"] == 3
