"""Samplers other than plain gaussian_rejection, leakage screening, perturbation and input errors."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from facefoundry.identities.leakage import screen
from facefoundry.identities.sampling import SamplingError, sample_identities
from facefoundry.identities.variation import perturb, sigma_schedule
from facefoundry.identities.vectors_io import VectorFileError, load_vectors
from facefoundry.sections import IdentitiesConfig, LeakageConfig, PerturbationConfig
from facefoundry.seeds import image_seeds


def unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def max_offdiag_cosine(v):
    u = unit(v.astype(np.float64))
    s = u @ u.T
    np.fill_diagonal(s, -np.inf)
    return s.max()


def test_uniform_sphere_deterministic_unconstrained():
    cfg = IdentitiesConfig(sampler="uniform_sphere", count=400, dim=8, max_cosine=None)
    a, b = sample_identities(cfg, 1).vectors, sample_identities(cfg, 1).vectors
    assert np.array_equal(a, b) and np.allclose(np.linalg.norm(a, axis=1), 1, atol=1e-5)
    assert max_offdiag_cosine(a) > 0.9  # no rule: 400 points in 8-d crowd together


def test_pca_gaussian_follows_gallery_and_separates(tmp_path):
    rng = np.random.default_rng(0)
    # A gallery concentrated in a cone around one direction: samples must follow it.
    centre = unit(rng.standard_normal((1, 32)))[0]
    gallery = centre * 3 + rng.standard_normal((2000, 32)) * 0.5
    np.save(tmp_path / "g.npy", gallery.astype(np.float32))
    cfg = IdentitiesConfig(sampler="pca_gaussian", count=60, dim=32, max_cosine=0.9, gallery=str(tmp_path / "g.npy"))
    a = sample_identities(cfg, 5).vectors
    assert np.array_equal(a, sample_identities(cfg, 5).vectors)
    assert max_offdiag_cosine(a) <= 0.9
    assert (unit(a) @ centre).mean() > 0.6  # like the gallery (0.73); Gaussian samples would average ~0
    cfg_k = cfg.model_copy(update={"pca_components": 8})
    assert not np.array_equal(sample_identities(cfg_k, 5).vectors, a)


def test_from_file_npy_and_parquet(tmp_path):
    rng = np.random.default_rng(1)
    vectors = rng.standard_normal((10, 16)).astype(np.float32) * 22
    np.save(tmp_path / "v.npy", vectors)
    col = pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), 16)
    pq.write_table(pa.table({"vector": col}), tmp_path / "v.parquet")
    for name in ("v.npy", "v.parquet"):
        raw = IdentitiesConfig(sampler="from_file", count=6, dim=16, space="raw", max_cosine=0.99,
                               file=str(tmp_path / name))
        assert np.allclose(sample_identities(raw, 0).vectors, vectors[:6])
        unit_cfg = raw.model_copy(update={"space": "unit"})
        assert np.allclose(sample_identities(unit_cfg, 0).vectors, unit(vectors[:6]), atol=1e-6)
    too_many = IdentitiesConfig(sampler="from_file", count=11, dim=16, file=str(tmp_path / "v.npy"))
    with pytest.raises(SamplingError, match="holds 10 vectors"):
        sample_identities(too_many, 0)


@pytest.mark.parametrize(
    "content, needle",
    [
        (np.full((3, 4), np.nan, np.float32), "NaN or inf"),
        (np.ones((3, 5), np.float32), r"shape \(N, 4\), got \(3, 5\)"),
        (np.zeros((0, 4), np.float32), "empty"),
        (np.array([[1, 0, 0, 0], [0, 0, 0, 0]], np.float32), "all zeros"),
    ],
)
def test_bad_vector_files(tmp_path, content, needle):
    np.save(tmp_path / "x.npy", content)
    with pytest.raises(VectorFileError, match=needle):
        load_vectors(tmp_path / "x.npy", 4)


@pytest.mark.parametrize("raw", [b"", b"1,2,3\n", b"\x93NUMPY\x01\x00v\x00{'descr': '<f4', 'fortran_order': "])
def test_files_that_are_not_npy_arrays_are_named_without_unpickling_advice(tmp_path, raw):
    """Empty, text, or cut short: one clear error naming the file (numpy alone says EOFError, or advises
    allow_pickle for text)."""
    (tmp_path / "x.npy").write_bytes(raw)
    with pytest.raises(VectorFileError, match=r"x\.npy: (not a NumPy \.npy array file|cannot read)") as err:
        load_vectors(tmp_path / "x.npy", 4)
    assert "allow_pickle" not in str(err.value) and "pickled" not in str(err.value)


def test_missing_and_unknown_files(tmp_path):
    with pytest.raises(VectorFileError, match="not found"):
        load_vectors(tmp_path / "nope.npy", 4)
    (tmp_path / "x.csv").write_text("1,2")
    with pytest.raises(VectorFileError, match="use .npy or .parquet"):
        load_vectors(tmp_path / "x.csv", 4)
    pq.write_table(pa.table({"other": [1, 2]}), tmp_path / "x.parquet")
    with pytest.raises(VectorFileError, match="no column named vector"):
        load_vectors(tmp_path / "x.parquet", 4)


def planted_gallery(tmp_path, dim=64, n=3000):
    rng = np.random.default_rng(2)
    gallery = unit(rng.standard_normal((n, dim))).astype(np.float32) * 22  # raw-norm real embeddings
    np.save(tmp_path / "gallery.npy", gallery)
    return gallery


def test_screen_matches_brute_force_and_detects_planted_copies_and_morphs(tmp_path):
    gallery = planted_gallery(tmp_path)
    rng = np.random.default_rng(3)
    fresh = unit(rng.standard_normal((20, 64)))
    near_copy = unit(gallery[:3] + rng.standard_normal((3, 64)) * 0.5)  # cosine ~0.99 to gallery 0..2
    g = unit(gallery[:50].astype(np.float64))
    pair_cos = np.abs(g @ g.T) + np.eye(50)
    a, b = np.unravel_index(pair_cos.argmin(), pair_cos.shape)  # two nearly orthogonal real people
    morph = unit(g[[a, b]].sum(axis=0, keepdims=True))  # their midpoint: cosine ~0.71 to both
    queries = np.concatenate([fresh, near_copy, morph]).astype(np.float32)
    cfg = LeakageConfig(galleries=[str(tmp_path / "gallery.npy")], max_cosine=0.8, morph_cosine=0.6, block_size=500)
    result = screen(queries, cfg)
    sims = unit(queries.astype(np.float64)) @ unit(gallery.astype(np.float64)).T
    best = -np.sort(-sims, axis=1)
    assert np.allclose(result.top1, best[:, 0], atol=1e-6) and np.allclose(result.top2, best[:, 1], atol=1e-6)
    assert result.leaked.tolist() == [False] * 20 + [True] * 3 + [False]
    assert result.morph.tolist() == [False] * 23 + [True]
    assert result.gallery_size == 3000


def test_screen_decision_at_threshold_is_exact(tmp_path):
    gallery = unit(np.random.default_rng(4).standard_normal((50, 16)))
    np.save(tmp_path / "g.npy", gallery.astype(np.float32))
    q = unit(gallery[:1] + 0.8 * gallery[1:2]).astype(np.float32)
    stored = np.load(tmp_path / "g.npy").astype(np.float64)
    exact = (unit(q.astype(np.float64)) @ unit(stored).T).max()
    base = dict(galleries=[str(tmp_path / "g.npy")], morph_cosine=1.0)
    assert screen(q, LeakageConfig(max_cosine=exact - 1e-9, **base)).leaked[0]
    assert not screen(q, LeakageConfig(max_cosine=min(exact + 1e-9, 1.0), **base)).leaked[0]


def test_sampling_replaces_leaked_identities(tmp_path):
    planted_gallery(tmp_path)
    base = IdentitiesConfig(count=50, dim=64, max_cosine=0.6)
    screened = base.model_copy(update={"leakage": LeakageConfig(galleries=[str(tmp_path / "gallery.npy")],
                                                                max_cosine=0.45, morph_cosine=0.99)})
    plain = sample_identities(base, 0).vectors
    result = sample_identities(screened, 0)
    assert len(result.vectors) == 50 and result.details["leakage_rejected"] > 0
    assert (result.leakage.top1 <= 0.45).all()
    # Survivors keep their order: they are the plain sampler's vectors minus the rejected ones.
    plain_more = sample_identities(base.model_copy(update={"count": 50 + result.details["leakage_rejected"]}), 0)
    kept = [i for i, v in enumerate(plain_more.vectors) if any(np.array_equal(v, r) for r in result.vectors)]
    assert np.array_equal(plain_more.vectors[kept], result.vectors)
    assert np.array_equal(plain, plain_more.vectors[:50])


def test_empty_gallery_is_an_error(tmp_path):
    np.save(tmp_path / "empty.npy", np.zeros((0, 8), np.float32))
    with pytest.raises(VectorFileError, match="no vectors"):
        screen(np.ones((2, 8), np.float32), LeakageConfig(galleries=[str(tmp_path / "empty.npy")]))


def test_faiss_backend_reports_recall(tmp_path):
    pytest.importorskip("faiss")
    planted_gallery(tmp_path, n=5000)
    queries = unit(np.random.default_rng(5).standard_normal((300, 64))).astype(np.float32)
    cfg = LeakageConfig(galleries=[str(tmp_path / "gallery.npy")], backend="faiss", nprobe=64)
    exact = screen(queries, cfg.model_copy(update={"backend": "exact"}))
    approx = screen(queries, cfg)
    assert approx.recall == pytest.approx(np.mean(np.abs(approx.top1 - exact.top1) < 1e-5), abs=0.05)
    assert approx.recall >= 0.9


def expected_mixture_cosine(cfg: PerturbationConfig, dim: int) -> float:
    """E[cos(v, perturbed v)] of the sigma mixture for isotropic noise in high dimension: per sigma,
    R / sqrt(R^2 + sigma^2 (d - 1)), weighted."""
    r = cfg.reference_norm
    return float(sum(w * r / np.sqrt(r**2 + s**2 * (dim - 1)) for s, w in zip(cfg.sigmas, cfg.weights, strict=True)))


def test_perturbation_schedule_and_expected_cosine():
    cfg = PerturbationConfig()
    schedule = sigma_schedule(cfg, 50)
    assert [int((schedule == s).sum()) for s in (0.3, 0.5, 0.7)] == [20, 20, 10]
    assert len(sigma_schedule(cfg, 7)) == 7
    rng = np.random.default_rng(0)
    for space_norm in (1.0, 22.0):
        centre = unit(rng.standard_normal((1, 512))).astype(np.float32) * space_norm
        per = 400
        seeds = image_seeds(0, np.zeros(per, int), np.arange(per))
        sigmas = np.resize(sigma_schedule(cfg, 50), per)
        moved = perturb(np.repeat(centre, per, axis=0), sigmas, seeds, cfg)
        assert np.allclose(np.linalg.norm(moved, axis=1), space_norm, rtol=1e-5)  # rescaled to the norm
        cos = unit(moved.astype(np.float64)) @ unit(centre.astype(np.float64))[0]
        assert cos.mean() == pytest.approx(expected_mixture_cosine(cfg, 512), abs=0.003)
        again = perturb(np.repeat(centre, 3, axis=0), sigmas[:3], seeds[:3], cfg)
        assert np.array_equal(again, moved[:3])  # an image's noise depends only on its seed
