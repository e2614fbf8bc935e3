"""DCFace's identity stage: G_id sampling as guided-diffusion, unique ID images, the ID set a run then uses."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from facefoundry.cli import app
from facefoundry.faces.tiny_face_models import write_tiny_arcface
from facefoundry.generators.dcface.ids import (
    GidSampler,
    IdStageError,
    IdStageSettings,
    gid_candidates,
    load_gid,
    respaced_schedule,
    select_unique,
)
from facefoundry.generators.dcface.inputs import IdSet
from facefoundry.generators.dcface.tiny import smooth_noise
from facefoundry.generators.dcface.unet import GID_ARCH, ADMArch, ADMUNet
from facefoundry.generators.tiny_weights import random_state_dict

TINY_GID = ADMArch(image_size=64, model_channels=32, channel_mult=(1, 1, 1, 1, 2, 2))


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def gid_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("gid") / "ffhq_10m.pt"
    torch.save(random_state_dict(ADMUNet(TINY_GID), seed=7), path)
    return path


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    return write_tiny_arcface(tmp_path_factory.mktemp("enc") / "arcface-r100-glint360k.pth", seed=3)


def test_respaced_schedule_is_guided_diffusions():
    s = respaced_schedule(100)
    assert len(s.timestep_map) == 100 and s.timestep_map[:4] == [0, 10, 20, 30] and s.timestep_map[-1] == 999
    assert s.timestep_map[50] == round(50 * 999 / 99)  # 505: steps evenly spaced over 0..999, rounded
    assert s.betas[0] == pytest.approx(1e-4)  # 1 - alpha_bar(0) / 1
    assert respaced_schedule(1000).timestep_map == list(range(1000))


def _official_p_sample_loop(unet, steps, seeds, size):
    """guided-diffusion's SpacedDiffusion.p_sample_loop (learned-range variance, x0 clipped), restated."""
    betas = np.linspace(1e-4, 0.02, 1000, dtype=np.float64)
    ac = np.cumprod(1.0 - betas)
    frac_stride = 999 / (steps - 1)
    use, cur = [], 0.0
    for _ in range(steps):
        use.append(round(cur))
        cur += frac_stride
    new_betas, last, tmap = [], 1.0, []
    for i, a in enumerate(ac):
        if i in set(use):
            new_betas.append(1 - a / last)
            last = a
            tmap.append(i)
    b = np.array(new_betas)
    acs = np.cumprod(1.0 - b)
    acs_prev = np.append(1.0, acs[:-1])
    post_var = b * (1.0 - acs_prev) / (1.0 - acs)
    post_log = np.log(np.append(post_var[1], post_var[1:]))
    c1, c2 = b * np.sqrt(acs_prev) / (1.0 - acs), (1.0 - acs_prev) * np.sqrt(1.0 - b) / (1.0 - acs)
    gens = [torch.Generator().manual_seed(int(s)) for s in seeds]
    x = torch.stack([torch.randn((3, size, size), generator=g) for g in gens])
    with torch.no_grad():
        for i in reversed(range(steps)):
            out = unet(x, torch.tensor([tmap[i]]))
            eps, v = out[:, :3], out[:, 3:]
            log_var = (v + 1) / 2 * float(np.log(b[i])) + (1 - (v + 1) / 2) * float(post_log[i])
            x0 = (float(np.sqrt(1 / acs[i])) * x - float(np.sqrt(1 / acs[i] - 1)) * eps).clamp(-1, 1)
            noise = torch.stack([torch.randn((3, size, size), generator=g) for g in gens])
            x = float(c1[i]) * x0 + float(c2[i]) * x + (i != 0) * torch.exp(0.5 * log_var) * noise
    return x


def test_gid_sampler_is_guided_diffusions_p_sample_loop(gid_file):
    unet = load_gid(gid_file, image_size=TINY_GID.image_size)
    assert unet.arch == TINY_GID  # width and multipliers read from the file's shapes
    sampler = GidSampler(unet, steps=4, device="cpu")
    images = sampler.sample(np.array([5, 6]))
    x = _official_p_sample_loop(unet, 4, [5, 6], 64)
    expected = ((x.clamp(-1, 1) + 1) / 2 * 255 + 0.5).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    assert images[0].shape == (64, 64, 3)
    assert max(int(np.abs(a.astype(int) - e.astype(int)).max()) for a, e in zip(images, expected, strict=True)) <= 1
    assert not np.array_equal(images[0], images[1])
    alone = sampler.sample(np.array([6]))[0]  # an image depends on its seed only
    assert int(np.abs(alone.astype(int) - images[1].astype(int)).max()) <= 1


def test_gid_checkpoint_is_loaded_strictly(gid_file, tmp_path):
    state = torch.load(gid_file, weights_only=True)
    state["out.2.bias_renamed"] = state.pop("out.2.bias")
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(IdStageError, match=r"missing keys \(e\.g\. out\.2\.bias\).*unexpected keys"):
        load_gid(tmp_path / "bad.pt", 64)
    with pytest.raises(IdStageError, match="nowhere.pt does not exist.*ffhq_10m.pt"):
        load_gid(tmp_path / "nowhere.pt")
    with torch.device("meta"):
        assert sum(p.numel() for p in ADMUNet(GID_ARCH).parameters()) > 90e6  # the FFHQ-256 ADM: 93.6M


def _faces_folder(folder, n, duplicate_of=None):
    folder.mkdir()
    rng = np.random.default_rng(0)
    images = [smooth_noise(rng) for _ in range(n)]
    if duplicate_of is not None:
        images[duplicate_of[1]] = images[duplicate_of[0]]
    for i, im in enumerate(images):
        Image.fromarray(im).save(folder / f"id{i}.png")
    return folder


def test_folder_ids_keep_unique_images_in_order(tmp_path, encoder):
    folder = _faces_folder(tmp_path / "ids", 6, duplicate_of=(0, 2))  # id2 is id0 again: cosine 1
    out = tmp_path / "set.parquet"
    result = CliRunner().invoke(app, ["dcface-ids", "--folder", str(folder), "--encoder", str(encoder), "--count", "5",
                                      "--max-cosine", "0.9999", "--out", str(out), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    ids = IdSet(out)
    assert ids.sources == ["folder:id0.png", "folder:id1.png", "folder:id3.png", "folder:id4.png", "folder:id5.png"]
    assert np.allclose(np.linalg.norm(ids.vectors, axis=1), 1.0, atol=1e-6)
    assert ids.metadata["source"] == "folder" and ids.metadata["candidates"] == 6
    assert np.array_equal(ids.array(2), np.asarray(Image.open(folder / "id3.png")))
    again = CliRunner().invoke(app, ["dcface-ids", "--folder", str(folder), "--encoder", str(encoder), "--count", "6",
                                     "--max-cosine", "0.9999", "--out", str(tmp_path / "x.parquet"), "--device", "cpu"])
    assert again.exit_code == 1 and "kept fewer than 6 unique ID images from 6 candidates" in again.output
    assert not (tmp_path / "x.parquet").exists()


class _OneFaceDetector:
    """Reports one frontal face (landmarks on the ArcFace template, scaled to the image) on even images only."""

    def __init__(self):
        self.calls = 0

    def detect_batch(self, images):
        from facefoundry.faces.alignment import arcface_template

        found = []
        for im in images:
            self.calls += 1
            if self.calls % 2:
                kps = arcface_template(112) * (im.shape[0] / 112)
                found.append((np.array([[0, 0, im.shape[1], im.shape[0], 0.9]], np.float32), kps[None]))
            else:
                found.append((np.zeros((0, 5), np.float32), np.zeros((0, 5, 2), np.float32)))
        return found


def test_gid_candidates_are_aligned_embedded_and_screened(gid_file, encoder):
    from facefoundry.faces.encoder import load_encoder

    settings = IdStageSettings(count=2, encoder=str(encoder), max_cosine=0.9999, gid_steps=2, batch_size=2,
                               device="cpu")
    embed = load_encoder(encoder, "cpu", 64, None, 512).embed
    sampler = GidSampler(load_gid(gid_file, 64), steps=2, device="cpu")
    take = gid_candidates(sampler, _OneFaceDetector(), embed, settings, None)
    vectors, crops, sources = take(0, 4)
    assert [c is None for c in crops] == [False, True, False, True]  # no face found: no candidate
    assert np.isfinite(vectors[[0, 2]]).all() and np.isnan(vectors[[1, 3]]).all()
    assert crops[0].shape == (112, 112, 3) and sources[0].startswith("G_id:seed=")
    kept, images, kept_sources, tried = select_unique(gid_candidates(sampler, _OneFaceDetector(), embed, settings,
                                                                     None), settings, 8)
    assert len(kept) == 2 and kept_sources == [sources[0], sources[2]] and tried == 8
    assert np.array_equal(images[0], crops[0])
