"""Vec2Face AttrOP: the capped per-image optimisation, on the tiny Vec2Face and tiny face models in the
official file layout (loaded through the real loaders), plus small hand-made scorers for exact control."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from facefoundry.faces.tiny_face_models import write_tiny_face_models
from facefoundry.generators.vec2face.attrop import AttrOp, Scorers
from facefoundry.generators.vec2face.config import Vec2FaceConfig
from facefoundry.generators.vec2face.generator import Vec2FaceGenerator
from facefoundry.generators.vec2face.tiny import build_tiny_vec2face


def config(**attrop) -> Vec2FaceConfig:
    return Vec2FaceConfig(tiny=True, device="cpu", batch_size=4, attrop={"enabled": True, **attrop})


def vectors(n: int, seed: int = 0) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((n, 512)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True) * 22.0


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("attrop")
    write_tiny_face_models(root / "face-models")
    return build_tiny_vec2face(root, seed=0), root / "face-models"


def generator(files, **attrop) -> Vec2FaceGenerator:
    ckpt, models = files
    gen = Vec2FaceGenerator(config(**attrop), ckpt, face_models=models)
    gen.setup(device="cpu")
    return gen


def first_cosine(gen: Vec2FaceGenerator, v: np.ndarray, seeds: np.ndarray, target: np.ndarray) -> np.ndarray:
    """cos(ArcFace(image of v), target) without any optimisation."""
    _, codes = gen.token_masks(seeds)
    with torch.no_grad():
        img = gen.model(torch.from_numpy(v), torch.from_numpy(codes)).clamp(-1, 1)
        feats = gen.attrop.scorers.identity(img)
    return torch.nn.functional.cosine_similarity(feats, torch.from_numpy(target), dim=1).numpy()


def test_unreachable_target_stops_at_the_cap_and_moves_the_vector(files):
    gen = generator(files, max_iterations=3, min_id_similarity=0.999, target_quality=None)
    v, seeds = vectors(2), np.array([11, 12])
    images, info = gen.generate_with_info(v, seeds)
    assert [i["attrop_iterations"] for i in info] == [3, 3] and not any(i["attrop_converged"] for i in info)
    before = first_cosine(gen, v, seeds, v)
    after = np.array([i["attrop_id_similarity"] for i in info])
    assert np.all(after > before)  # the gradient steps really raise the similarity
    plain = Vec2FaceGenerator(Vec2FaceConfig(tiny=True, device="cpu"), files[0])
    plain.setup(device="cpu")
    assert any(not np.array_equal(a, b) for a, b in zip(images, plain.generate(v, seeds), strict=True))


def test_a_met_target_takes_no_step_and_the_image_is_the_plain_one(files):
    gen = generator(files, max_iterations=5, min_id_similarity=-1.0, target_quality=None)
    v, seeds = vectors(2, seed=3), np.array([5, 6])
    images, info = gen.generate_with_info(v, seeds)
    assert [(i["attrop_iterations"], i["attrop_converged"]) for i in info] == [(0, True), (0, True)]
    plain = Vec2FaceGenerator(Vec2FaceConfig(tiny=True, device="cpu"), files[0])
    plain.setup(device="cpu")
    assert all(np.array_equal(a, b) for a, b in zip(images, plain.generate(v, seeds), strict=True))


@pytest.mark.slow
def test_an_image_does_not_depend_on_its_batch(files):
    gen = generator(files, max_iterations=4, min_id_similarity=0.999, target_yaw=20.0, target_quality=30.0)
    v, seeds = vectors(3, seed=7), np.array([1, 2, 3])
    together, info = gen.generate_with_info(v, seeds)
    alone, info_alone = gen.generate_with_info(v[1:2], seeds[1:2])
    # the optimisation is exactly batch-independent; the final batched forward rounds like the plain generator's
    assert np.abs(together[1].astype(int) - alone[0].astype(int)).max() <= 1
    assert info[1]["attrop_iterations"] == info_alone[0]["attrop_iterations"] == 4
    assert info[1]["attrop_id_similarity"] == info_alone[0]["attrop_id_similarity"]
    assert info[1]["attrop_yaw"] is not None and info[1]["attrop_quality"] is not None


class Toy(torch.nn.Module):
    """A fixed linear 'renderer' and 'ArcFace', so convergence is quick and exactly checkable."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.render = torch.randn(8, 3 * 4 * 4, generator=g) * 0.1
        self.embed = torch.randn(3 * 4 * 4, 8, generator=g)

    def image(self, x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        return (x @ self.render).tanh().reshape(-1, 3, 4, 4)

    def identity(self, img: torch.Tensor) -> torch.Tensor:
        return img.reshape(len(img), -1) @ self.embed


def test_easy_targets_converge_early_and_freeze_while_others_continue():
    toy = Toy()
    cfg = config(max_iterations=200, min_id_similarity=0.9, lr=0.05, target_quality=None).attrop
    x = torch.randn(3, 8, generator=torch.Generator().manual_seed(1))
    targets = toy.identity(toy.image(x, None)).detach()
    elsewhere = torch.randn(2, 8, generator=torch.Generator().manual_seed(2))
    targets[1:] = toy.identity(toy.image(elsewhere, None)).detach()  # reachable; image 0 is already there
    moved, outcomes = AttrOp(cfg, Scorers(identity=toy.identity)).optimise(toy.image, x, targets)
    assert outcomes[0].iterations == 0 and outcomes[0].converged and torch.equal(moved[0], x[0])
    for k in (1, 2):
        assert outcomes[k].converged and 0 < outcomes[k].iterations < 200 and outcomes[k].id_similarity >= 0.9
        final = torch.nn.functional.cosine_similarity(toy.identity(toy.image(moved[k:k + 1], None)), targets[k:k + 1])
        assert float(final) == pytest.approx(outcomes[k].id_similarity, abs=1e-5)


def test_config_and_missing_models_are_clear(tmp_path, files):
    with pytest.raises(ValidationError, match="max_iterations"):
        config(max_iterations=-1)
    with pytest.raises(ValidationError, match="target_yaw"):
        config(target_yaw=120)
    with pytest.raises(ValueError, match="no pose model"):
        AttrOp(config(target_yaw=10.0, target_quality=None).attrop, Scorers(identity=lambda img: img))
    with pytest.raises(ValueError, match="no quality model"):
        AttrOp(config().attrop, Scorers(identity=lambda img: img))  # the official quality target 27 is on
    ckpt, _ = files
    gen = Vec2FaceGenerator(config(), ckpt, face_models=tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="arcface-r100-glint360k.pth"):
        gen.setup(device="cpu")
