"""HyperFace packing: it separates points, deterministically, and stops and fails where it should."""

from __future__ import annotations

import numpy as np
import pytest

import facefoundry.identities.hyperface as hyperface
from facefoundry.identities.hyperface import HyperFaceResult, hyperface_pack
from facefoundry.sections import HyperFaceConfig

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _gaussian(n: int, d: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)


def _unit64(a: np.ndarray) -> np.ndarray:
    a = a.astype(np.float64)
    return a / np.linalg.norm(a, axis=1, keepdims=True)


def _max_nn_bruteforce(a: np.ndarray) -> float:
    u = _unit64(a)
    sims = u @ u.T
    np.fill_diagonal(sims, -np.inf)
    return float(sims.max())


def _mean_nearest_gallery(a: np.ndarray, gallery: np.ndarray) -> float:
    return float((_unit64(a) @ _unit64(gallery).T).max(axis=1).mean())


def test_packing_reduces_max_nn_cosine():
    start = _gaussian(500, 16)
    cfg = HyperFaceConfig(iterations=100, learning_rate=0.05)
    res = hyperface_pack(start, cfg)
    assert isinstance(res, HyperFaceResult)
    before, after = _max_nn_bruteforce(start), _max_nn_bruteforce(res.vectors)
    assert res.max_nn_before == pytest.approx(before, abs=1e-5)
    assert res.max_nn_after == pytest.approx(after, abs=1e-5)
    assert after < 0.75 * before  # 500 points in 16-d: about 0.86 -> 0.44
    assert res.vectors.dtype == np.float32 and res.vectors.shape == start.shape
    np.testing.assert_allclose(np.linalg.norm(res.vectors, axis=1), 1.0, atol=1e-5)
    assert res.stop_reason == "iterations" and res.iterations == 100
    assert res.history[0] == (0, res.max_nn_before) and res.history[-1] == (100, res.max_nn_after)
    assert res.seconds > 0


def test_same_seed_same_vectors():
    start = _gaussian(300, 16, seed=1)
    for cfg in (
        HyperFaceConfig(iterations=30, learning_rate=0.05),
        HyperFaceConfig(iterations=30, learning_rate=0.05, batch_size=64),
    ):
        a = hyperface_pack(start, cfg, seed=7)
        b = hyperface_pack(start, cfg, seed=7)
        np.testing.assert_array_equal(a.vectors, b.vectors)
        assert a.history == b.history
    # the stochastic variant draws its mini-batches from the seed
    c = hyperface_pack(start, cfg, seed=8)
    assert not np.array_equal(a.vectors, c.vectors)


def test_scale_of_the_input_does_not_matter():
    start = _gaussian(200, 16, seed=2)
    cfg = HyperFaceConfig(iterations=20, learning_rate=0.05)
    a = hyperface_pack(start, cfg)
    b = hyperface_pack(start * 22.0, cfg)
    np.testing.assert_allclose(a.vectors, b.vectors, atol=1e-5)


def test_stochastic_variant_improves():
    start = _gaussian(500, 16, seed=3)
    cfg = HyperFaceConfig(iterations=100, learning_rate=0.05, batch_size=100)
    res = hyperface_pack(start, cfg)
    after = _max_nn_bruteforce(res.vectors)
    assert res.max_nn_after == pytest.approx(after, abs=1e-5)
    assert after < 0.85 * _max_nn_bruteforce(start)
    np.testing.assert_allclose(np.linalg.norm(res.vectors, axis=1), 1.0, atol=1e-5)
    # one exact check per epoch (500 / 100 = 5 steps) and one at the end
    assert [t for t, _ in res.history] == list(range(0, 100, 5)) + [100]


def test_candidate_refresh_path_improves(monkeypatch):
    # Large-N path (cached candidate lists, exact refresh every few iterations) on a small problem.
    monkeypatch.setattr(hyperface, "_EXACT_EVERY_STEP", 0)
    monkeypatch.setattr(hyperface, "_REFRESH", 5)
    start = _gaussian(400, 16, seed=4)
    res = hyperface_pack(start, HyperFaceConfig(iterations=60, learning_rate=0.05))
    assert [t for t, _ in res.history] == list(range(0, 60, 5)) + [60]
    after = _max_nn_bruteforce(res.vectors)
    assert res.max_nn_after == pytest.approx(after, abs=1e-5)
    assert after < 0.8 * _max_nn_bruteforce(start)


def test_several_neighbours_smooth_max_improves():
    start = _gaussian(300, 16, seed=5)
    res = hyperface_pack(start, HyperFaceConfig(iterations=60, learning_rate=0.05, neighbours=4, temperature=0.02))
    assert _max_nn_bruteforce(res.vectors) < 0.8 * _max_nn_bruteforce(start)


def test_target_stops_early():
    start = _gaussian(500, 16, seed=6)
    before = _max_nn_bruteforce(start)
    target = 0.85 * before
    seen: list[tuple[int, float]] = []
    cfg = HyperFaceConfig(iterations=300, learning_rate=0.05, target_max_cosine=target)
    res = hyperface_pack(start, cfg, progress=lambda t, v: seen.append((t, v)))
    assert res.stop_reason == "target"
    assert 0 < res.iterations < 300
    assert res.max_nn_after <= target
    assert _max_nn_bruteforce(res.vectors) <= target + 1e-5
    assert seen == res.history


def test_target_already_met_returns_the_start():
    start = _gaussian(100, 16, seed=7)
    res = hyperface_pack(start, HyperFaceConfig(iterations=50, target_max_cosine=0.99))
    assert res.stop_reason == "target" and res.iterations == 0
    np.testing.assert_allclose(res.vectors, _unit64(start), atol=1e-6)


@pytest.mark.parametrize("batch_size", [None, 50])
def test_gallery_regulariser_pulls_toward_gallery(batch_size):
    start = _gaussian(200, 16, seed=8)
    gallery = _gaussian(20, 16, seed=9) * 22.0  # raw (unnormalised) space
    free = hyperface_pack(start, HyperFaceConfig(iterations=40, learning_rate=0.05, batch_size=batch_size), gallery)
    cfg = HyperFaceConfig(iterations=40, learning_rate=0.05, alpha=5.0, batch_size=batch_size)
    pulled = hyperface_pack(start, cfg, gallery)
    assert _mean_nearest_gallery(pulled.vectors, gallery) > _mean_nearest_gallery(free.vectors, gallery) + 0.1
    # alpha = 0 ignores the gallery entirely
    no_gallery = hyperface_pack(start, HyperFaceConfig(iterations=40, learning_rate=0.05, batch_size=batch_size))
    np.testing.assert_array_equal(free.vectors, no_gallery.vectors)


def test_tiny_inputs():
    one = hyperface_pack(np.ones((1, 8)), HyperFaceConfig())
    assert one.iterations == 0 and np.isnan(one.max_nn_after)
    two = hyperface_pack(_gaussian(2, 8), HyperFaceConfig(iterations=50, learning_rate=0.1, neighbours=3))
    assert two.max_nn_after < -0.9  # two points end up (nearly) antipodal


@pytest.mark.parametrize(
    ("initial", "gallery", "message"),
    [
        (np.full((10, 4), np.nan), None, "NaN or infinite"),
        (np.array([[1.0, np.inf], [0.0, 1.0]]), None, "NaN or infinite"),
        (np.ones(8), None, "2-D"),
        (np.ones((2, 3, 4)), None, "2-D"),
        (np.zeros((0, 4)), None, "empty"),
        (np.vstack([np.ones((3, 4)), np.zeros((1, 4))]), None, "zero vectors"),
        (np.array([["a", "b"], ["c", "d"]]), None, "numeric"),
        (np.ones((5, 4)) + np.eye(5, 4), np.ones((3, 5)), "dimension 5"),
        (np.ones((5, 4)) + np.eye(5, 4), np.full((3, 4), np.nan), "gallery contains NaN"),
        (np.ones((5, 4)) + np.eye(5, 4), np.zeros((3, 4)), "gallery contains 3 zero vectors"),
    ],
)
def test_bad_inputs_raise_value_error(initial, gallery, message):
    with pytest.raises(ValueError, match=message):
        hyperface_pack(initial, HyperFaceConfig(iterations=2), gallery)
