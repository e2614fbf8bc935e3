"""The driver's checks before any actor starts: cluster resources against the stages' declarations, and
model files against local folders and the HF cache. Each failure is one line naming what is missing and the fix."""

import io
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from facefoundry.cli import app
from facefoundry.config import load_config
from facefoundry.layout import RUN_ENTRIES
from facefoundry.pipelines.preflight import (
    PreflightError,
    check_before_start,
    check_cluster,
    check_model_files,
    check_resources,
    missing_model_files,
)
from facefoundry.pipelines.stages import ModelPaths, generator_model_files
from facefoundry.resources import ModelFiles, Resources

REPO = Path(__file__).resolve().parents[2]
GPU_GEN = ("generate", Resources(1.0, 1.0, settings={"num_gpus": "ray.generator_gpus"}))
CPU_STAGES = [("filter", Resources(0.5)), ("write", Resources(0.25))]
CPU_NODE = {"CPU": 2.0, "memory": 8e9}
GPU_NODE = {"CPU": 16.0, "GPU": 1.0, "memory": 64e9}


def test_gpu_stage_on_a_cpu_only_cluster_fails_naming_the_gpu_and_the_cpu_setting():
    verdict = check_resources([GPU_GEN, *CPU_STAGES], [CPU_NODE])
    assert not verdict.waiting
    assert verdict.problem.startswith("the generate stage asks for 1 GPU per actor but no node of this Ray cluster")
    assert "most on one node: 0 GPUs" in verdict.problem and "--set ray.generator_gpus=0" in verdict.problem
    assert "\n" not in verdict.problem


def test_fitting_requests_pass_on_one_or_several_nodes():
    assert check_resources([GPU_GEN, *CPU_STAGES], [GPU_NODE]).problem is None
    # the GPU on one node, the CPU stages wherever there is room
    assert check_resources([GPU_GEN, *CPU_STAGES], [{"CPU": 1.0, "GPU": 1.0}, {"CPU": 1.0}]).problem is None
    cpu_gen = ("generate", GPU_GEN[1].override(num_gpus=0.0))
    assert check_resources([cpu_gen, *CPU_STAGES], [CPU_NODE]).problem is None


def test_every_stage_must_fit_at_once():
    """1 + 0.5 + 0.25 CPUs do not fit on a 1-CPU Ray though each stage alone does: the pools would wait."""
    cpu_gen = ("generate", Resources(1.0))
    verdict = check_resources([cpu_gen, *CPU_STAGES], [{"CPU": 1.0}])
    assert "one actor of every stage must run at once" in verdict.problem
    assert "1.75 CPUs" in verdict.problem and "raise ray.num_cpus" in verdict.problem
    assert check_resources([cpu_gen, *CPU_STAGES], [{"CPU": 1.75}]).problem is None


def test_memory_requests_are_compared_too():
    big = ("generate", Resources(1.0, memory=16 * 2**30))
    verdict = check_resources([big], [CPU_NODE])
    assert "16.0 GiB of memory" in verdict.problem


def test_an_autoscaler_that_can_add_the_gpu_means_waiting_not_failing():
    verdict = check_resources([GPU_GEN, *CPU_STAGES], [CPU_NODE], node_types=[{"CPU": 8.0, "GPU": 1.0}],
                              embedded=False)
    assert verdict.waiting and verdict.problem.startswith("waiting for the autoscaler to add a node with 1 GPU")
    # node types without a GPU cannot help: that is a failure
    verdict = check_resources([GPU_GEN], [CPU_NODE], node_types=[{"CPU": 64.0}], embedded=False)
    assert not verdict.waiting and "or its autoscaler's node types" in verdict.problem


def test_gpu_config_on_a_cpu_only_machine_fails_before_ray_starts(tmp_path, monkeypatch):
    """Real config, real machine (no GPU): the smoke preset asking for a GPU per generator actor fails in one
    line, well within a minute, without starting Ray (the embedded Ray's resources are known beforehand)."""
    import ray

    monkeypatch.setattr(ray, "init", lambda *a, **k: pytest.fail("Ray must not start"))
    started = time.monotonic()
    result = CliRunner().invoke(app, ["run", str(REPO / "configs" / "smoke.yaml"), "--out", str(tmp_path / "r"),
                                      "--set", "identities.count=2", "--set", "ray.generator_gpus=1"])
    seconds = time.monotonic() - started
    assert result.exit_code == 1, result.output
    error = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "the generate stage asks for 1 GPU per actor" in error[0], result.output
    assert "--set ray.generator_gpus=0" in error[0] and "Traceback" not in result.output
    assert seconds < 60, seconds


@pytest.mark.ray
def test_a_real_cpu_only_ray_fails_the_gpu_stage(tmp_path):
    """The check against a running Ray (what a cluster run gets once connected): ``ray.nodes()`` of a real
    embedded Ray with 2 CPUs and no GPU."""
    from facefoundry.local_ray import ray_session
    from facefoundry.pipelines.stages import FilterStage, GenerateStage, WriteStage
    from facefoundry.sections import RayConfig

    cfg = load_config(REPO / "configs" / "smoke.yaml", ["ray.generator_gpus=1"])
    stages = [GenerateStage(cfg, "", ModelPaths("m")), FilterStage(cfg, ""), WriteStage(cfg, "", {})]
    with ray_session(RayConfig(num_cpus=2, num_gpus=0)):
        with pytest.raises(PreflightError, match=r"the generate stage asks for 1 GPU per actor .* 1 node: 2 CPUs, "
                                                 r"0 GPUs\); to run on the CPU: --set ray.generator_gpus=0"):
            check_cluster(stages)
        check_cluster(stages[1:])  # the CPU stages fit


# ------------------------------------------------------------------------------------------- model files
@pytest.fixture
def empty_cache(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    return tmp_path / "hub"


def test_offline_arc2face_names_both_models_and_one_fetch_command(empty_cache):
    cfg = load_config(REPO / "configs" / "arc2face.yaml", [])
    needs = generator_model_files(cfg, ModelPaths(cfg.generator.model, cfg.generator.base_model))
    missing = missing_model_files(needs, offline=True)
    assert [m.need.name for m in missing] == ["arc2face", "sd15"]
    assert missing[0].files == ["arc2face/config.json", "arc2face/diffusion_pytorch_model.safetensors",
                                "encoder/config.json", "encoder/pytorch_model.bin"]
    with pytest.raises(PreflightError) as err:
        check_model_files(needs)
    text = str(err.value)
    assert "HF_HUB_OFFLINE=1" in text and str(empty_cache) in text and "\n" not in text
    assert "run `facefoundry models fetch arc2face sd15`" in text
    assert "stable-diffusion-v1-5/stable-diffusion-v1-5: tokenizer/vocab.json" in text


def test_cached_files_pass_offline(empty_cache):
    """A file in the HF cache layout (snapshots/<commit>/<file> + refs/main) is found."""
    repo = empty_cache / "models--BooBooWu--Vec2Face"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    (repo / "snapshots" / "abc123" / "weights").mkdir(parents=True)
    (repo / "snapshots" / "abc123" / "weights" / "vec2face_generator.pth").write_bytes(b"x")
    cfg = load_config(REPO / "configs" / "vec2face.yaml", [])
    needs = generator_model_files(cfg, ModelPaths(cfg.generator.checkpoint))
    assert missing_model_files(needs, offline=True) == []
    attrop = load_config(REPO / "configs" / "vec2face.yaml", ["generator.attrop.enabled=true"])
    missing = missing_model_files(generator_model_files(attrop, ModelPaths(cfg.generator.checkpoint)), True)
    assert [(m.need.name, m.files) for m in missing] == [
        ("vec2face-face-models", ["weights/arcface-r100-glint360k.pth", "weights/magface-r100-glint360k.pth"])]


def test_local_folders_name_the_missing_files(tmp_path):
    (tmp_path / "arc2face").mkdir()
    (tmp_path / "arc2face" / "config.json").write_text("{}")
    needs = [ModelFiles(str(tmp_path), (("arc2face/config.json",), ("arc2face/a.safetensors", "arc2face/a.bin")),
                        "arc2face", role="generator.model"),
             ModelFiles(str(tmp_path / "nowhere"), (), None, role="id_filter.detector_model", hub=False)]
    with pytest.raises(PreflightError) as err:
        check_model_files(needs)
    text = str(err.value)
    assert f"generator.model folder {tmp_path} lacks arc2face/a.safetensors" in text
    assert f"id_filter.detector_model folder {tmp_path / 'nowhere'} does not exist" in text


def test_real_arc2face_config_offline_fails_in_the_driver_without_ray(tmp_path, empty_cache, monkeypatch):
    import ray

    def no_ray(*args, **kwargs):
        raise AssertionError("Ray must not start when a model is missing")

    monkeypatch.setattr(ray, "init", no_ray)
    result = CliRunner().invoke(app, ["run", str(REPO / "configs" / "arc2face.yaml"), "--out", str(tmp_path / "r"),
                                      "--set", "identities.count=16"])
    assert result.exit_code == 1, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in result.output, result.output
    assert "arc2face (FoivosPar/Arc2Face" in errors[0] and "sd15 (stable-diffusion-v1-5" in errors[0]
    assert "`facefoundry models fetch arc2face sd15`" in errors[0]
    assert not ray.is_initialized()


def test_attribute_models_are_checked_unless_tiny(tmp_path):
    """attributes.tiny off: the files the section names are checked; on: the tiny build the run resolves passes."""
    from facefoundry.pipelines.runner import resolve_model_paths
    from facefoundry.pipelines.stages import FilterStage

    missing = tmp_path / "nowhere" / "genderage.onnx"
    real = load_config(REPO / "configs" / "smoke-evalset.yaml", ["attributes.tiny=false", f"attributes.model={missing}",
                                                                 "attributes.detector_model=null"])
    with pytest.raises(PreflightError) as err:
        check_model_files(FilterStage(real, "").model_files())
    line = str(err.value)
    assert "\n" not in line and f"attributes.model folder {missing.parent} does not exist" in line, line
    tiny = load_config(REPO / "configs" / "smoke-evalset.yaml", ["generator.tiny=false"])  # no generator build
    with pytest.raises(ValueError, match="attributes.tiny"):  # a tiny section names no files until resolved
        FilterStage(tiny, "")
    check_model_files(FilterStage(tiny, "", paths=resolve_model_paths(tiny, tmp_path / "run")).model_files())


@pytest.mark.slow
def test_the_evalset_smoke_preset_without_tiny_attributes_needs_the_real_estimator(tmp_path, monkeypatch):
    """attributes.tiny off: the estimator the config names must be there; a missing file fails in one line before
    Ray starts, through the CLI (with tiny on, the same preset builds its own: tests/pipelines/test_evalset_run.py)."""
    import ray

    monkeypatch.setattr(ray, "init", lambda *a, **k: pytest.fail("Ray must not start"))
    missing = tmp_path / "nowhere" / "genderage.onnx"
    result = CliRunner().invoke(app, ["run", str(REPO / "configs" / "smoke-evalset.yaml"), "--out", str(tmp_path / "r"),
                                      "--set", "attributes.tiny=false", "--set", f"attributes.model={missing}",
                                      "--set", "attributes.detector_model=null"])
    assert result.exit_code == 1, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in result.output, result.output
    assert f"attributes.model folder {missing.parent} does not exist" in errors[0], errors[0]


def test_fresh_keeps_the_previous_run_when_the_new_config_fails_its_preflight(tmp_path, empty_cache):
    out = tmp_path / "r"
    assert CliRunner().invoke(app, ["sample", str(REPO / "configs" / "smoke.yaml"), "--out", str(out)]).exit_code == 0
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    result = CliRunner().invoke(app, ["run", str(REPO / "configs" / "arc2face.yaml"), "--out", str(out), "--fresh",
                                      "--set", "identities.count=16"])
    assert result.exit_code == 1 and "`facefoundry models fetch arc2face sd15`" in result.output, result.output
    assert "--fresh: deleting" not in result.output, result.output
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before  # run.json, identities


@pytest.mark.parametrize("command", ["run", "sample"])
@pytest.mark.parametrize("config", ["smoke.yaml", "arc2face.yaml"])  # a tiny build and a real one
def test_fresh_keeps_the_previous_run_when_the_identities_file_is_bad(tmp_path, command, config):
    out = tmp_path / "r"
    assert CliRunner().invoke(app, ["sample", str(REPO / "configs" / "smoke.yaml"), "--out", str(out)]).exit_code == 0
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    bad = tmp_path / "ids.npy"
    np.save(bad, np.full((8, 512), np.nan, np.float32))
    result = CliRunner().invoke(app, [command, str(REPO / "configs" / config), "--out", str(out), "--fresh",
                                      "--set", "identities.sampler=from_file", "--set", f"identities.file={bad}",
                                      "--set", "identities.count=8"])
    assert result.exit_code == 1 and "8 identity vectors contain NaN" in result.output, result.output
    assert "--fresh: deleting" not in result.output, result.output
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before  # run.json, identities


def test_a_new_run_that_fails_before_its_first_unit_leaves_the_folder_unbound(tmp_path):
    """The identities file is found bad after run.json was written (before the tiny build and Ray): the folder is
    left as it was, so the fixed config can start there (it is not a run to resume)."""
    out = tmp_path / "r"
    bad = tmp_path / "ids.npy"
    np.save(bad, np.zeros((1, 512), np.float32))  # a vector of zeros: no direction
    result = CliRunner().invoke(app, ["run", str(REPO / "configs" / "smoke.yaml"), "--out", str(out),
                                      "--set", "identities.sampler=from_file", "--set", f"identities.file={bad}",
                                      "--set", "identities.count=1"])
    assert result.exit_code == 1, result.output
    assert not out.exists() or not [p.name for p in out.iterdir() if p.name in RUN_ENTRIES], list(out.iterdir())


def test_cluster_runs_skip_the_driver_cache_check(empty_cache):
    cfg = load_config(REPO / "configs" / "arc2face.yaml", ["ray.address=ray://head:10001"])
    check_before_start(cfg, ModelPaths(cfg.generator.model, cfg.generator.base_model))  # nodes: their own caches


@pytest.mark.spawn
def test_online_but_unreachable_hub_says_so(tmp_path):
    """Not offline, nothing cached, the Hub endpoint refusing connections: the Hub could not be reached."""
    env = {**os.environ, "HF_HUB_OFFLINE": "0", "HF_HOME": str(tmp_path), "HF_ENDPOINT": "http://127.0.0.1:9"}
    env.pop("HF_HUB_CACHE", None)
    code = ("from facefoundry.resources import ModelFiles\n"
            "from facefoundry.pipelines.preflight import check_model_files\n"
            "check_model_files([ModelFiles('FoivosPar/Arc2Face', (('arc2face/config.json',),), 'arc2face')])\n")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    last = done.stderr.strip().splitlines()[-1]
    assert done.returncode == 1 and "PreflightError: model files missing: the Hub could not be reached" in last
    assert "arc2face (FoivosPar/Arc2Face: arc2face/config.json)" in last
    assert "run `facefoundry models fetch arc2face` where the Hub is reachable" in last


@pytest.mark.slow
def test_a_failed_preflight_leaves_the_folder_as_before(tmp_path, empty_cache, monkeypatch):
    """A model missing (offline, empty cache): the run fails before Ray starts and the folder is as before, with no
    run.json binding it to a config that never ran; an existing run's run.json is untouched."""
    import ray

    from facefoundry.pipelines.runner import run
    from facefoundry.runfolder.runinfo import prepare_run_folder

    monkeypatch.setattr(ray, "init", lambda *a, **k: pytest.fail("Ray must not start"))
    cfg = load_config(REPO / "configs" / "arc2face.yaml", ["identities.count=16"])
    new = tmp_path / "new"
    with pytest.raises(PreflightError, match="model files missing"):
        run(cfg, new, log=io.StringIO())
    assert not new.exists() or not list(new.iterdir()), list(new.iterdir())
    existing = tmp_path / "existing"
    prepare_run_folder(existing, cfg)
    (existing / "eval").mkdir()
    before = (existing / "run.json").read_bytes()
    with pytest.raises(PreflightError, match="model files missing"):
        run(cfg, existing, log=io.StringIO())
    assert (existing / "run.json").read_bytes() == before and (existing / "eval").is_dir()


def test_dcface_inputs_are_named_with_how_to_make_them(tmp_path):
    """The ID set and style bank are not registry models: the advice is `facefoundry dcface-ids` and the style-bank
    docs, never a `facefoundry models fetch` of a name that does not exist."""
    cfg = load_config(REPO / "configs" / "dcface.yaml", [f"generator.checkpoint={tmp_path / 'dcface_3x3.ckpt'}",
                                                         f"generator.id_set={tmp_path / 'ids.parquet'}",
                                                         f"identities.file={tmp_path / 'ids.parquet'}",
                                                         f"generator.style_bank={tmp_path / 'styles'}"])
    paths = ModelPaths(cfg.generator.checkpoint, cfg.generator.id_set, style_bank=cfg.generator.style_bank)
    with pytest.raises(PreflightError) as err:
        check_before_start(cfg, paths)
    text = str(err.value)
    assert "`facefoundry dcface-ids`" in text and "aligned 112x112 face images" in text
    assert "models fetch dcface-id-set" not in text and "models fetch dcface-style-bank" not in text
    assert "the files of `facefoundry models fetch dcface`" in text  # the checkpoint's registry entry is real


CHECKED = (".safetensors", ".pth", ".pt", ".ckpt", ".bin", ".yaml", ".yml", ".json", ".onnx", ".parquet")
BINARY = (".safetensors", ".pth", ".pt", ".ckpt", ".bin", ".onnx", ".parquet")  # a cut-short copy fails to parse


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["arc2face", "vec2face", "idiff_face", "dcface"])
@pytest.mark.parametrize("damage", ["empty", "text", "truncated"])
def test_a_broken_model_file_fails_in_one_line_before_ray(kind, damage, tmp_path):
    """An empty, wrong-format or truncated (a download cut short) file where a model file should be (every checked
    kind of each generator's tiny build, one at a time; truncated: the binary kinds, as a text file cut short may
    still parse) is named with what is wrong, in the driver: not hundreds of lines of actor tracebacks."""
    from facefoundry.generators.registry import SPECS
    from facefoundry.pipelines.modelcheck import present_files

    spec = SPECS[kind]
    gen = spec.config(tiny=True)
    paths = spec.model_paths(gen, tmp_path / "models", seed=0, identities=2)
    cfg = load_config(REPO / "configs" / "smoke.yaml", ["identities.count=2"]).model_copy(update={"generator": gen})
    needs = generator_model_files(cfg, paths)
    check_model_files(needs)  # the build as written passes
    files = [p for p in present_files(needs) if p.suffix in CHECKED]
    assert files, f"{kind}: nothing to check"
    if damage == "truncated":
        files = [p for p in files if p.suffix in BINARY]
    for path in files:
        original = path.read_bytes()
        path.write_bytes({"empty": b"", "text": b"<html>404 Not Found</html>\n\x00\xff",
                          "truncated": original[: len(original) * 9 // 10]}[damage])
        with pytest.raises(PreflightError) as err:
            check_model_files(needs)
        text = str(err.value)
        assert "\n" not in text and f"model file {path} " in text, text
        expected = {"empty": ("is empty",), "text": ("is not",), "truncated": ("is truncated", "is not")}[damage]
        assert any(phrase in text for phrase in expected), text
        path.write_bytes(original)
