"""`facefoundry models` against a read-only Hub on loopback: olah serving git repos built here.

The repos carry the official file names (tiny Vec2Face checkpoint and face models in the published
formats) plus files that must not be downloaded; every CLI call runs in a subprocess with its own
HF_HOME / HF_ENDPOINT / HF_HUB_OFFLINE, as a user's shell would set them.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from facefoundry import models
from facefoundry.faces.iresnet import ARCFACE_FILE, MAGFACE_FILE
from facefoundry.faces.sixdrepnet import SIXDREPNET_FILE
from facefoundry.faces.tiny_face_models import write_tiny_face_models
from facefoundry.generators.arc2face import generator as arc2face
from facefoundry.generators.vec2face.config import Vec2FaceConfig
from facefoundry.generators.vec2face.tiny import build_tiny_vec2face

BIN = Path(sys.executable).parent
VEC2FACE_FILES = {"weights/vec2face_generator.pth", f"weights/{ARCFACE_FILE}", f"weights/{MAGFACE_FILE}",
                  f"weights/{SIXDREPNET_FILE}"}


def _git_repo(path: Path, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_bytes(data)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@localhost", "-c", "commit.gpgsign=false"]
    subprocess.run(["git", "init", "-q", "-b", "main", str(path)], check=True)
    subprocess.run([*git, "-C", str(path), "add", "-A"], check=True)
    subprocess.run([*git, "-C", str(path), "commit", "-qm", "upload"], check=True)


def _build_mirrors(root: Path) -> None:
    vec = root / "models" / "BooBooWu" / "Vec2Face"
    build_tiny_vec2face(vec)
    write_tiny_face_models(vec)
    _git_repo(vec, {"README.md": b"---\nlicense: mit\n---\nVec2Face\n", "center_feature_examples.npy": b"x" * 64,
                    "weights/not_needed.pth": b"y" * 4096})
    arc = root / "models" / "FoivosPar" / "Arc2Face"  # encoder saved as safetensors: the registry wants .bin
    _git_repo(arc, {"arc2face/config.json": b"{}", "arc2face/diffusion_pytorch_model.safetensors": b"u" * 128,
                    "encoder/config.json": b"{}", "encoder/model.safetensors": b"e" * 128,
                    "arcface.onnx": b"o" * 128})
    lcm = root / "models" / "latent-consistency" / "lcm-lora-sdv1-5"
    lcm.mkdir(parents=True)
    save_file({"lora.down.weight": torch.zeros(4, 8)}, str(lcm / "pytorch_lora_weights.safetensors"))
    _git_repo(lcm, {"image.png": b"p" * 256})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory):
    """Base URL of an olah server on 127.0.0.1 serving the mirrors offline (it never contacts the Hub)."""
    root = tmp_path_factory.mktemp("hub")
    _build_mirrors(root / "mirrors")
    port = _free_port()
    (root / "olah.toml").write_text(
        f'[basic]\nhost = "127.0.0.1"\nport = {port}\nrepos-path = "{root / "cache"}"\n'
        f'mirrors-path = ["{root / "mirrors"}"]\n[accessibility]\noffline = true\n')
    proc = subprocess.Popen([str(BIN / "olah-cli"), "-c", str(root / "olah.toml"), "--log-path", str(root / "logs")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(150):
            try:
                with urllib.request.urlopen(f"{url}/api/models/BooBooWu/Vec2Face/revision/main", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert proc.poll() is None, "olah exited"
            time.sleep(0.2)
        else:
            pytest.fail("olah did not start")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()


def _env(home: Path, hub: str, offline: bool = False) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_")) and "proxy" not in
           k.lower()}
    env.update(HF_HOME=str(home), HF_ENDPOINT=hub, HF_HUB_DISABLE_TELEMETRY="1", NO_PROXY="127.0.0.1")
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    return env


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "facefoundry"), "models", *args], env=env, capture_output=True, text=True,
                          timeout=120)


def _snapshot_files(home: Path, repo_folder: str) -> set[str]:
    snaps = list((home / "hub" / repo_folder / "snapshots").iterdir())
    assert len(snaps) == 1
    return {p.relative_to(snaps[0]).as_posix() for p in snaps[0].rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def warm(hub: str, tmp_path_factory: pytest.TempPathFactory):
    """An HF_HOME after `models fetch vec2face vec2face-face-models`, the command's result and blob mtimes."""
    home = tmp_path_factory.mktemp("hf-home")
    res = _cli(_env(home, hub), "fetch", "vec2face", "vec2face-face-models")
    blobs = {p.name: p.stat().st_mtime_ns for p in (home / "hub" / "models--BooBooWu--Vec2Face" / "blobs").iterdir()}
    return home, res, blobs


@pytest.mark.spawn
def test_fetch_downloads_only_the_listed_files(warm) -> None:
    home, res, blobs = warm
    assert res.returncode == 0, res.stderr
    assert "vec2face: BooBooWu/Vec2Face@" in res.stdout and "downloaded 1 file(s)" in res.stdout
    assert "vec2face-face-models: BooBooWu/Vec2Face@" in res.stdout and "downloaded 3 file(s)" in res.stdout
    assert _snapshot_files(home, "models--BooBooWu--Vec2Face") == VEC2FACE_FILES  # no README, .npy, extra .pth
    assert len(blobs) == 4


@pytest.mark.spawn
def test_second_fetch_is_a_noop(warm, hub: str) -> None:
    home, _, blobs = warm
    res = _cli(_env(home, hub), "fetch", "vec2face")
    assert res.returncode == 0, res.stderr
    assert "already cached" in res.stdout and "downloaded" not in res.stdout
    after = {p.name: p.stat().st_mtime_ns for p in (home / "hub" / "models--BooBooWu--Vec2Face" / "blobs").iterdir()}
    assert after == blobs


@pytest.mark.spawn
def test_list_shows_cache_state(warm, hub: str) -> None:
    home, _, _ = warm
    res = _cli(_env(home, hub, offline=True), "list")
    assert res.returncode == 0, res.stderr
    rows = {line.split()[0]: line for line in res.stdout.splitlines()[1:] if line.strip()}
    assert set(models.REGISTRY) <= set(rows)
    assert rows["vec2face"].split()[4] == "yes" and rows["vec2face-face-models"].split()[4] == "yes"
    assert rows["vec2face"].split()[-1] in ("kB", "MB")  # a size, not "-"
    assert rows["arc2face"].split()[4] == "no" and rows["arc2face"].rstrip().endswith("-")
    assert "BooBooWu/Vec2Face" in rows["vec2face"] and "mit" in rows["vec2face"]
    assert rows["antelopev2"].split()[-2] == "manual"
    assert f"cache: {home / 'hub'}" in res.stdout


@pytest.mark.spawn
def test_offline_warm_cache_fetch_and_generator_load(warm, hub: str) -> None:
    home, _, _ = warm
    env = _env(home, "http://127.0.0.1:9", offline=True)  # a dead endpoint: nothing may be contacted
    res = _cli(env, "fetch", "vec2face-face-models")
    assert res.returncode == 0, res.stderr
    assert "already cached" in res.stdout
    code = ("from facefoundry.generators.vec2face.generator import Vec2FaceGenerator, Vec2FaceSettings\n"
            "g = Vec2FaceGenerator(Vec2FaceSettings(checkpoint='BooBooWu/Vec2Face', tiny=True))\n"
            "print(g.resolve_checkpoint()); g.setup('cpu'); print('loaded', g.image_size)\n")
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert str(home / "hub" / "models--BooBooWu--Vec2Face" / "snapshots") in run.stdout
    assert "loaded" in run.stdout


@pytest.mark.spawn
def test_offline_cold_cache_names_file_repo_and_command(hub: str, tmp_path: Path) -> None:
    env = _env(tmp_path / "hf", hub, offline=True)
    res = _cli(env, "fetch", "vec2face")
    assert res.returncode == 1 and res.stdout == ""
    line = res.stderr.strip()
    assert "\n" not in line
    assert line.startswith("error: weights/vec2face_generator.pth not found in Hub repo BooBooWu/Vec2Face")
    # fetch does not advise running itself again: it says what stops it and how to use a local copy
    assert "HF_HUB_OFFLINE=1 forbids downloading" in line and "`facefoundry models fetch" not in line
    assert "into a folder elsewhere and point the config at it (generator.kind=vec2face" in line
    assert not (tmp_path / "hf" / "hub" / "models--BooBooWu--Vec2Face").exists()
    code = ("from facefoundry.generators.vec2face.generator import Vec2FaceGenerator, Vec2FaceSettings\n"
            "Vec2FaceGenerator(Vec2FaceSettings(tiny=True)).setup('cpu')\n")
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith("facefoundry.generators.vec2face.generator.CheckpointNotFoundError: "
                           "weights/vec2face_generator.pth "
                           "not found in Hub repo BooBooWu/Vec2Face"), last
    assert "facefoundry models fetch vec2face" in last


@pytest.mark.spawn
def test_arc2face_offline_cold_cache_names_the_fetch(tmp_path: Path) -> None:
    code = ("from facefoundry.generators.arc2face.config import Arc2FaceConfig\n"
            "from facefoundry.generators.arc2face.generator import Arc2FaceGenerator\n"
            "Arc2FaceGenerator(Arc2FaceConfig()).setup('cpu')\n")
    run = subprocess.run([sys.executable, "-c", code], env=_env(tmp_path / "hf", "http://127.0.0.1:9", offline=True),
                         capture_output=True, text=True, timeout=120)
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith("facefoundry.generators.arc2face.generator.ModelFilesError: "
                           "arc2face/config.json not found in Hub "
                           "repo FoivosPar/Arc2Face"), last
    assert "`facefoundry models fetch arc2face`" in last


@pytest.mark.spawn
def test_file_missing_from_the_repo_is_named(hub: str, tmp_path: Path) -> None:
    res = _cli(_env(tmp_path / "hf", hub), "fetch", "arc2face")
    last = res.stderr.strip().splitlines()[-1]  # after the download progress bars
    assert res.returncode == 1
    assert last.startswith("error: encoder/pytorch_model.bin not found in Hub repo FoivosPar/Arc2Face"), last
    assert "no such file at revision main" in last and "--revision" in last
    files = _snapshot_files(tmp_path / "hf", "models--FoivosPar--Arc2Face")
    assert "encoder/model.safetensors" not in files and "arcface.onnx" in files


@pytest.mark.spawn
def test_fetch_revision_pins_a_commit(hub: str, tmp_path: Path) -> None:
    with urllib.request.urlopen(f"{hub}/api/models/latent-consistency/lcm-lora-sdv1-5/revision/main") as r:
        sha = json.load(r)["sha"]
    env = _env(tmp_path / "hf", hub)
    res = _cli(env, "fetch", "lcm-lora", "--revision", sha)
    assert res.returncode == 0, res.stderr
    assert f"latent-consistency/lcm-lora-sdv1-5@{sha} downloaded 1 file(s)" in res.stdout
    assert _snapshot_files(tmp_path / "hf", "models--latent-consistency--lcm-lora-sdv1-5") == {
        "pytorch_lora_weights.safetensors"}
    res = _cli(env, "fetch", "lcm-lora", "--revision", "no-such-branch")
    assert res.returncode == 1  # olah answers an unknown revision as an unknown repo (the Hub: RevisionNotFound)
    assert "lcm-lora-sdv1-5" in res.stderr and "revision no-such-branch" in res.stderr


@pytest.mark.spawn
def test_unknown_and_manual_names(tmp_path: Path) -> None:
    env = _env(tmp_path / "hf", "http://127.0.0.1:9")
    res = _cli(env, "fetch", "vec2face", "arc2fcae")
    assert res.returncode == 2 and res.stdout == ""
    assert res.stderr.strip() == f"error: unknown model 'arc2fcae'; known: {', '.join(models.REGISTRY)}"
    res = _cli(env, "fetch", "antelopev2")
    assert res.returncode == 1 and "antelopev2 is not on the Hugging Face Hub: download antelopev2.zip" in res.stderr


def test_require_file_local_folder(tmp_path: Path) -> None:
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / ARCFACE_FILE).write_bytes(b"x")
    assert models.require_file(tmp_path, f"weights/{ARCFACE_FILE}") == tmp_path / "weights" / ARCFACE_FILE
    with pytest.raises(models.ModelFileMissing) as err:
        models.require_file(tmp_path, f"weights/{MAGFACE_FILE}", name="vec2face-face-models")
    msg = str(err.value)
    assert msg.startswith(f"weights/{MAGFACE_FILE} not found in local folder {tmp_path};")
    assert "BooBooWu/Vec2Face" in msg and "`facefoundry models fetch vec2face-face-models`" in msg
    with pytest.raises(models.ModelFileMissing, match="does not exist"):
        models.require_file(tmp_path / "nowhere", "weights/vec2face_generator.pth", name="vec2face")


def test_registry_covers_what_the_loaders_read() -> None:
    vec = models.REGISTRY["vec2face"]
    assert (vec.repo_id, vec.files) == (Vec2FaceConfig().checkpoint, (Vec2FaceConfig().filename,))
    assert set(models.REGISTRY["vec2face-face-models"].files) == VEC2FACE_FILES - {Vec2FaceConfig().filename}
    for role, sub, groups in arc2face._REQUIRED.values():
        spec = models.REGISTRY["arc2face" if role == "model" else "sd15"]
        for names in groups:  # every file group the Arc2Face loader checks is fetched
            assert any(f"{sub}/{n}" in spec.files for n in names), (spec.name, sub, names)
    for spec in models.REGISTRY.values():
        assert spec.licence and spec.licence_note and spec.used_by
        assert spec.repo_id or spec.manual
