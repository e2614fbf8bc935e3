"""Vec2Face AttrOP pose schedules: per-image signed yaw/pitch targets by image index, on a toy scorer whose yaw and
pitch are known functions of the vector, and once through the tiny Vec2Face with the tiny face models."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from facefoundry.faces.tiny_face_models import write_tiny_face_models
from facefoundry.generators.base import IDENTITY_VECTOR, IMAGE_INDEX
from facefoundry.generators.vec2face.attrop import (
    OUTCOME_FIELDS,
    POSE_FILE,
    AttrOp,
    Scorers,
    needed_files,
    pose_targets,
)
from facefoundry.generators.vec2face.config import AttrOpConfig, Vec2FaceConfig
from facefoundry.generators.vec2face.generator import Vec2FaceGenerator
from facefoundry.generators.vec2face.tiny import build_tiny_vec2face

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SCHEDULE = [{"yaw": 0.0}, {"yaw": 30.0, "pitch": -10.0}, {"yaw": -30.0}]


def attrop(**kw) -> AttrOpConfig:
    return AttrOpConfig(**{"enabled": True, "target_quality": None, "min_id_similarity": -1.0, **kw})


class Toy:
    """The image is tanh(x) (3x4x4); yaw = 90 * mean of channel 0, pitch = 90 * mean of channel 1 (signed), and the
    identity is channel 2 (so the pose terms alone move the vector)."""

    @staticmethod
    def render(x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        return x.tanh().reshape(-1, 3, 4, 4)

    @staticmethod
    def identity(img: torch.Tensor) -> torch.Tensor:
        return img[:, 2].reshape(len(img), -1)

    @staticmethod
    def yaw(img: torch.Tensor) -> torch.Tensor:
        return 90.0 * img[:, 0].mean(dim=(1, 2))

    @staticmethod
    def pose(img: torch.Tensor) -> torch.Tensor:
        return torch.stack((Toy.yaw(img), 90.0 * img[:, 1].mean(dim=(1, 2))), dim=1)


def start(yaw: float, pitch: float, n: int = 1) -> torch.Tensor:
    """Vectors whose toy image has exactly this yaw and pitch."""
    x = torch.full((n, 3, 16), 0.5)
    x[:, 0], x[:, 1] = math.atanh(yaw / 90.0), math.atanh(pitch / 90.0)
    return x.reshape(n, 48)


def goal(x: torch.Tensor) -> torch.Tensor:
    """The identity targets: the toy identity of the starting images (pose-independent)."""
    return Toy.identity(Toy.render(x, None))


def test_the_schedule_is_applied_by_image_index_not_batch_position():
    cfg = attrop(pose_schedule=SCHEDULE)
    yaw, pitch = pose_targets(cfg, [4, 0, 5, 2, 1, 3])
    assert yaw.tolist() == [30.0, 0.0, -30.0, -30.0, 30.0, 0.0]
    assert [None if math.isnan(p) else p for p in pitch.tolist()] == [-10.0, None, None, None, -10.0, None]


def test_signed_targets_converge_to_their_own_side():
    cfg = attrop(pose_schedule=SCHEDULE, max_iterations=300, lr=0.05)
    x = start(0.0, 5.0, n=3)
    yaw, pitch = pose_targets(cfg, [1, 2, 0])  # +30 with pitch -10, -30, 0
    op = AttrOp(cfg, Scorers(identity=Toy.identity, pose=Toy.pose))
    moved, outcomes = op.optimise(Toy.render, x, goal(x), yaw, pitch)
    assert torch.isfinite(moved).all()  # the NaN "no pitch" targets leave no NaN gradient behind
    for out, want in zip(outcomes, (30.0, -30.0, 0.0), strict=True):
        assert out.converged and out.target_yaw == want and abs(out.yaw - want) <= 5.0
        achieved = Toy.pose(Toy.render(moved[outcomes.index(out)][None], None))[0]
        assert float(achieved[0]) == pytest.approx(out.yaw, abs=1e-4)  # the outcome is the returned vector's pose
    assert outcomes[0].target_pitch == -10.0 and abs(outcomes[0].pitch + 10.0) <= 5.0
    assert outcomes[1].target_pitch is None and outcomes[1].pitch == pytest.approx(5.0, abs=0.5)  # pitch left alone
    assert outcomes[0].iterations > 0 and outcomes[2].iterations == 0  # image 2 is already frontal


def test_the_signed_term_tells_sides_apart_where_the_official_one_does_not():
    x = start(20.0, 0.0)
    signed = attrop(pose_schedule=[{"yaw": -20.0}], max_iterations=0)
    _, (out,) = AttrOp(signed, Scorers(identity=Toy.identity, pose=Toy.pose)).optimise(
        Toy.render, x, goal(x), *pose_targets(signed, [0]))
    assert not out.converged and out.yaw == pytest.approx(20.0, abs=1e-4)
    official = attrop(target_yaw=20.0, max_iterations=0)  # |20 - |+20|| = 0: already met
    _, (out,) = AttrOp(official, Scorers(identity=Toy.identity, yaw=Toy.yaw)).optimise(Toy.render, x, goal(x))
    assert out.converged and out.iterations == 0


def test_the_official_yaw_term_is_unchanged_without_a_schedule():
    cfg = attrop(target_yaw=30.0, max_iterations=300, lr=0.05)
    x = torch.cat([start(-10.0, 0.0), start(10.0, 0.0)])
    moved, outcomes = AttrOp(cfg, Scorers(identity=Toy.identity, yaw=Toy.yaw)).optimise(Toy.render, x, goal(x))
    # |30 - |yaw||: each image goes to 30 degrees on the side it started on
    assert outcomes[0].converged and abs(outcomes[0].yaw + 30.0) <= 5.0
    assert outcomes[1].converged and abs(outcomes[1].yaw - 30.0) <= 5.0
    assert all(o.target_yaw == 30.0 and o.pitch is None and o.target_pitch is None for o in outcomes)
    # the same vectors step for step as the loss written out by hand (plain Adam on 100(1 - cos) + |30 - |yaw||)
    ref = x.clone().requires_grad_(True)
    opt = torch.optim.Adam([ref], lr=0.05)
    for _ in range(outcomes[0].iterations):
        img = Toy.render(ref, None)
        cos = torch.nn.functional.cosine_similarity(Toy.identity(img), Toy.identity(Toy.render(x, None)), dim=1)
        loss = (100 * (1 - cos) + (30.0 - Toy.yaw(img).abs()).abs())[0]
        opt.zero_grad()
        loss.backward()
        opt.step()
    # pose channels only: at cos = 1 the identity gradient is rounding noise, which Adam scales up to +-lr steps
    torch.testing.assert_close(moved[0, :32], ref.detach()[0, :32], rtol=1e-5, atol=1e-5)


def test_config_and_call_errors_are_clear():
    with pytest.raises(ValidationError, match="either target_yaw .* or pose_schedule"):
        attrop(target_yaw=10.0, pose_schedule=SCHEDULE)
    with pytest.raises(ValidationError, match="yaw"):
        attrop(pose_schedule=[{"yaw": 120.0}])
    with pytest.raises(ValidationError, match="pitch"):
        attrop(pose_schedule=[{"yaw": 0.0, "pitch": -91.0}])
    with pytest.raises(ValidationError, match="pose_schedule"):
        attrop(pose_schedule=[])
    with pytest.raises(ValidationError, match="roll"):
        attrop(pose_schedule=[{"yaw": 0.0, "roll": 5.0}])
    assert POSE_FILE in needed_files(attrop(pose_schedule=SCHEDULE)) and POSE_FILE not in needed_files(attrop())
    cfg = attrop(pose_schedule=SCHEDULE)
    with pytest.raises(ValueError, match="no pose model"):
        AttrOp(cfg, Scorers(identity=Toy.identity, yaw=Toy.yaw))
    op = AttrOp(cfg, Scorers(identity=Toy.identity, pose=Toy.pose))
    with pytest.raises(ValueError, match="pose_schedule"):
        op.optimise(Toy.render, start(0.0, 0.0), goal(start(0.0, 0.0)))  # the schedule's targets were not passed
    assert AttrOpConfig.model_validate(cfg.model_dump()) == cfg  # (hashes of older configs: test_config)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("attrop-pose")
    write_tiny_face_models(root / "face-models")
    return build_tiny_vec2face(root, seed=0), root / "face-models"


@pytest.mark.slow
def test_vec2face_records_each_images_scheduled_target_and_achieved_pose(files):
    ckpt, models = files
    cfg = Vec2FaceConfig(tiny=True, device="cpu", batch_size=4,
                         attrop={"enabled": True, "max_iterations": 2, "target_quality": None,
                                 "min_id_similarity": 0.999, "pose_schedule": SCHEDULE})
    gen = Vec2FaceGenerator(cfg, ckpt, face_models=models)
    gen.setup(device="cpu")
    order = [4, 0, 5, 2, 1, 3]  # images 0..5 of one identity, shuffled in the batch
    v = np.random.default_rng(0).standard_normal((1, 512)).astype(np.float32)
    v = np.repeat(v / np.linalg.norm(v) * 22.0, 6, axis=0)
    variations = [{IDENTITY_VECTOR: v[0], IMAGE_INDEX: k} for k in order]
    out = gen.generate_output(v, np.arange(6) + 100, variations)
    names = [f.name for f in gen.extra_fields()]
    assert names[-3:] == ["attrop_pitch", "attrop_target_yaw", "attrop_target_pitch"]
    assert [f.name for f in OUTCOME_FIELDS] == names[2:]
    cols = out.arrays(gen.extra_fields())  # the declared Arrow types (float32, nulls where no target)
    assert cols["attrop_target_yaw"].to_pylist() == [SCHEDULE[k % 3]["yaw"] for k in order]
    assert cols["attrop_target_pitch"].to_pylist() == [SCHEDULE[k % 3].get("pitch") for k in order]
    assert all(isinstance(y, float) and -90 <= y <= 90 for y in cols["attrop_yaw"].to_pylist())
    assert all(isinstance(p, float) for p in cols["attrop_pitch"].to_pylist())
    assert all(0 <= n <= 2 for n in cols["attrop_iterations"].to_pylist())
    with pytest.raises(ValueError, match="image_index"):
        gen.generate_output(v[:1], np.array([1]), [{IDENTITY_VECTOR: v[0]}])
