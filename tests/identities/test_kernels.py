"""The exact similarity kernels against brute-force float64, including pairs planted inside the margin."""

import numpy as np
import pytest
import torch

from facefoundry.identities import kernels
from facefoundry.identities.rejection import BLOCK, gaussian_proposal, rejection_sample

CPU = torch.device("cpu")


def unit64(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def brute(x: np.ndarray) -> np.ndarray:
    u = unit64(x)
    sims = u @ u.T
    np.fill_diagonal(sims, -np.inf)
    return sims


def planted(n: int, dim: int, tau: float, seed: int = 0) -> np.ndarray:
    """float64 vectors, norm 22, with pairs at tau +- 1e-7, tau +- 1e-3, exact duplicates and a close pair."""
    rng = np.random.default_rng(seed)
    x = unit64(rng.standard_normal((n, dim)) * np.linspace(0.2, 3.0, dim))  # anisotropic: a wider cosine spread
    for k, c in enumerate([tau + 1e-7, tau - 1e-7, tau + 1e-3, tau - 1e-3, 0.999]):
        a, b = 3 * k, 3 * k + 1
        z = x[b] - (x[b] @ x[a]) * x[a]
        x[b] = c * x[a] + np.sqrt(1 - c * c) * z / np.linalg.norm(z)
    x[n - 1] = x[n - 2] = x[n - 3]  # triplicate
    return 22.0 * x


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_margin_bounds_the_screen_error(dtype):
    assert 0.0078 < kernels.screen_margin(512, torch.bfloat16) < 0.0079  # a priori: 2u + gamma_d
    assert kernels.screen_margin(512, torch.float16) < 0.004  # flushed subnormals: 2 * 2^-14 * sqrt(d)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((600, 512))
    x[:100, :8] *= 1e4  # a few dominant coordinates: the rest become (float16) subnormals
    x[100:200] *= rng.random((100, 512)) < 0.02  # sparse rows
    x[100:200, 0] += 1.0
    x[200:210] = x[200]  # duplicates: cosine 1
    u = unit64(x)
    p = kernels.prepare(x, device=CPU, dtype=dtype)
    e = p.margin(p)
    assert e <= kernels.screen_margin(512, dtype)
    screened = (p.screen @ p.screen.T).double().numpy()
    # E bounds the float32 accumulator; rounding it to the screen format adds at most half a grid step.
    half_step = {torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11}[dtype] * np.abs(screened)
    assert np.all(np.abs(screened - u @ u.T) <= e + half_step)


def test_pairs_above_matches_brute_force_with_planted_pairs():
    tau = 0.3
    x = planted(700, 24, tau)
    sims = brute(x)
    top, pairs = kernels.pairs_above(x, tau, block=128, device=CPU)
    i, j = np.nonzero(np.triu(sims > tau, 1))
    assert np.array_equal(pairs["i"], i) and np.array_equal(pairs["j"], j)
    assert np.allclose(pairs["cos"], sims[i, j], rtol=0, atol=1e-12)
    assert top == pytest.approx(sims.max(), abs=1e-12)
    found = set(zip(pairs["i"].tolist(), pairs["j"].tolist(), strict=True))
    assert (0, 1) in found and (3, 4) not in found and (6, 7) in found and (9, 10) not in found  # tau +- 1e-7


def test_pairs_inside_the_margin_are_decided_by_the_exact_recheck(monkeypatch):
    tau = 0.3
    x = planted(300, 24, tau)
    checked: list[tuple[int, int]] = []
    original = kernels.exact_cosines

    def spy(a, ia, b, ib):
        checked.extend(zip(ia.tolist(), ib.tolist(), strict=True))
        return original(a, ia, b, ib)

    monkeypatch.setattr(kernels, "exact_cosines", spy)
    _, pairs = kernels.pairs_above(x, tau, device=CPU)
    assert {(0, 1), (3, 4)} <= set(checked)  # both sides of tau by 1e-7: the screen cannot tell them apart
    reported = set(zip(pairs["i"].tolist(), pairs["j"].tolist(), strict=True))
    assert (0, 1) in reported and (3, 4) not in reported
    # Far from tau, the screen decides: a random pair near cosine 0 is never re-checked.
    checked.clear()
    mask = exceeding(x[:1], x[200:201], tau)
    assert not mask[0] and checked == []


def exceeding(cands: np.ndarray, ref: np.ndarray, tau: float, block: int | None = None) -> np.ndarray:
    """For each row of ``cands``, whether its cosine to some row of ``ref`` exceeds ``tau`` (the sampler's test)."""
    a, b = kernels.prepare(cands, device=CPU), kernels.prepare(ref, device=CPU)
    return kernels.exceeding_rows(a, b, len(ref), tau, block).cpu().numpy()


def test_exceeding_rows_matches_brute_force():
    tau = 0.3
    x = planted(500, 24, tau, seed=2)
    cands, ref = x[1::3], x[0::3]  # planted partners: (0, 1), (3, 4), ... land on either side
    exact = unit64(cands) @ unit64(ref).T
    got = exceeding(cands, ref, tau, block=64)
    assert np.array_equal(got, (exact > tau).any(axis=1))
    assert got[0] and exact[0, 0] > tau and exact[1, 1] < tau  # planted: tau + 1e-7 and tau - 1e-7


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_nearest_neighbours_equal_float64_argmax(dtype):
    x = planted(900, 16, 0.5, seed=3)
    sims = brute(x)
    cos, idx = kernels.nearest_neighbours(x, block=96, device=CPU, dtype=dtype)
    assert np.allclose(cos, sims.max(axis=1), rtol=0, atol=1e-12)
    dup = [897, 898, 899]
    rest = np.setdiff1d(np.arange(900), dup)
    assert np.array_equal(idx[rest], sims[rest].argmax(axis=1))
    assert idx[897] in dup and idx[898] in dup and idx[899] in dup and np.all(cos[dup] > 1 - 1e-12)


def test_nearest_neighbours_float32_raw_norm_and_edge_sizes():
    rng = np.random.default_rng(4)
    x = (22 * unit64(rng.standard_normal((1500, 64)))).astype(np.float32)
    sims = brute(x)
    cos, idx = kernels.nearest_neighbours(x, block=256, device=CPU)
    assert np.array_equal(idx, sims.argmax(axis=1)) and np.allclose(cos, sims.max(axis=1), rtol=0, atol=1e-12)
    assert kernels.nearest_neighbours(x[:1])[1].tolist() == [-1]
    two_cos, two_idx = kernels.nearest_neighbours(x[:2])
    assert two_idx.tolist() == [1, 0] and two_cos[0] == two_cos[1]
    assert kernels.pairs_above(x[:1], 0.3)[0] == -np.inf
    with pytest.raises(ValueError, match="non-zero"):
        kernels.nearest_neighbours(np.zeros((3, 4), np.float32))


def naive_rejection(propose, count, dim, tau, max_candidates, seed):
    """The definition: candidates in draw order, kept iff float64 dot <= tau with every kept vector."""
    rng = np.random.default_rng(seed)
    kept = np.empty((count, 0), np.float64)
    out: list[np.ndarray] = []
    drawn = 0
    while len(out) < count and drawn < max_candidates:
        block = propose(rng, min(BLOCK, max_candidates - drawn))
        block = (block / np.linalg.norm(block, axis=1, keepdims=True)).astype(np.float32)
        drawn += len(block)
        if kept.shape[1] == 0:
            kept = np.empty((count, block.shape[1]), np.float64)
        for row in block:
            if not out or (kept[: len(out)] @ row.astype(np.float64)).max() <= tau:
                kept[len(out)] = row
                out.append(row)
            if len(out) == count:
                break
    return np.stack(out), drawn, rng.random()


def concentrated(dim: int):
    """A proposal bunched around one direction: many in-block conflicts (like a PCA fit of a gallery)."""
    mean = np.zeros(dim, np.float32)
    mean[0] = 2.0
    return lambda rng, n: mean + rng.standard_normal((n, dim)).astype(np.float32)


@pytest.mark.parametrize(
    ("propose", "count", "dim", "tau"),
    [
        (gaussian_proposal(8), 60, 8, 0.7),
        (gaussian_proposal(48), 2600, 48, 0.45),  # several blocks per batch, count mid-block
        (concentrated(12), 120, 12, 0.9),
    ],
)
def test_rejection_equals_the_naive_loop(propose, count, dim, tau):
    rng = np.random.default_rng(11)
    got, drawn = rejection_sample(propose, count, dim, tau, 200_000, rng)
    want, want_drawn, next_draw = naive_rejection(propose, count, dim, tau, 200_000, 11)
    assert drawn == want_drawn and np.array_equal(got, want)
    assert rng.random() == next_draw  # the random stream is consumed identically
