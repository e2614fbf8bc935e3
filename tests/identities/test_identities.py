import numpy as np
import pyarrow.parquet as pq
import pytest

from facefoundry.config import validate_config
from facefoundry.identities.sampling import SamplingError, sample_identities
from facefoundry.identities.separation import nearest_neighbours
from facefoundry.identities.store import read_metadata, read_vectors, write_identities
from facefoundry.sections import IdentitiesConfig


def brute_force_max_cosine(vectors: np.ndarray) -> float:
    unit = vectors.astype(np.float64) / np.linalg.norm(vectors.astype(np.float64), axis=1, keepdims=True)
    sims = unit @ unit.T
    np.fill_diagonal(sims, -np.inf)
    return float(sims.max())


def test_gaussian_rejection_deterministic_and_separated():
    cfg = IdentitiesConfig(count=300, dim=32, max_cosine=0.5)
    a = sample_identities(cfg, run_seed=7)
    b = sample_identities(cfg, run_seed=7)
    c = sample_identities(cfg, run_seed=8)
    assert np.array_equal(a.vectors, b.vectors)
    assert not np.array_equal(a.vectors, c.vectors)
    assert a.vectors.shape == (300, 32) and a.vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(a.vectors, axis=1), 1.0, atol=1e-5)
    assert brute_force_max_cosine(a.vectors) <= 0.5
    # The constraint binds: in 32 dimensions many candidates are rejected.
    assert a.candidates > 300


def test_rejection_matches_sequential_reference():
    """The blocked, mixed-precision implementation keeps exactly what a naive loop keeps."""
    cfg = IdentitiesConfig(count=150, dim=16, max_cosine=0.6, max_candidates=5000)
    got = sample_identities(cfg, run_seed=3).vectors
    rng_vectors = []
    from facefoundry.identities import rejection as sampling
    from facefoundry.seeds import derive_seed

    rng = np.random.default_rng(derive_seed(3, "identities"))
    while len(rng_vectors) < 150:
        block = rng.standard_normal((sampling.BLOCK, 16)).astype(np.float32)
        block = block / np.linalg.norm(block, axis=1, keepdims=True)
        for row in block:
            if all(float(row.astype(np.float64) @ k.astype(np.float64)) <= 0.6 for k in rng_vectors):
                rng_vectors.append(row)
            if len(rng_vectors) == 150:
                break
    assert np.array_equal(got, np.stack(rng_vectors))


def test_raw_space_scales_norm():
    cfg = IdentitiesConfig(count=5, dim=512, space="raw", norm=22.0)
    vectors = sample_identities(cfg, run_seed=0).vectors
    assert np.allclose(np.linalg.norm(vectors, axis=1), 22.0, rtol=1e-5)


def test_impossible_threshold_stops_with_count():
    # within the up-front estimate (about 3,000 candidates), yet the real sampling needs more (about 9,000)
    cfg = IdentitiesConfig(count=200, dim=16, max_cosine=0.5, max_candidates=4000)
    with pytest.raises(SamplingError, match=r"kept only \d+ of 200 identities after 4000 candidates"):
        sample_identities(cfg, run_seed=0)


def test_nearest_neighbours_blockwise_matches_brute_force():
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((257, 8)).astype(np.float32) * 3
    cos, idx = nearest_neighbours(vectors, block=16)
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    sims = unit.astype(np.float64) @ unit.T.astype(np.float64)
    np.fill_diagonal(sims, -np.inf)
    assert np.array_equal(idx, sims.argmax(axis=1))
    assert np.allclose(cos, sims.max(axis=1))
    assert np.isclose(cos.max(), brute_force_max_cosine(vectors))


def test_identities_file_written_once(tmp_path):
    cfg = validate_config({"identities": {"count": 20}, "images": {"per_identity": 1}})
    meta = write_identities(tmp_path, cfg)
    path = tmp_path / "identities.parquet"
    before = path.read_bytes()
    assert write_identities(tmp_path, cfg) == meta and path.read_bytes() == before
    # A rerun elsewhere writes the same bytes (no timings in the metadata).
    assert write_identities(tmp_path / "again", cfg) == meta and (tmp_path / "again" / path.name).read_bytes() == before
    table = pq.read_table(path)
    assert table.column("identity").to_pylist() == list(range(20))
    assert meta["nn_cosine"]["max"] <= 0.3 and read_metadata(path)["count"] == 20
    assert np.allclose(table.column("nn_cosine").to_numpy(), nearest_neighbours(read_vectors(path))[0])
    assert read_vectors(path, 5, 7).shape == (2, 512)
    other = validate_config({"identities": {"count": 21}, "images": {"per_identity": 1}})
    with pytest.raises(RuntimeError, match="belongs to another config"):
        write_identities(tmp_path, other)


@pytest.mark.parametrize("where", ["local", "s3"])
def test_identity_vectors_read_only_the_row_groups_asked_for(where, tmp_path, monkeypatch, request):
    """A generator worker's view of identities.parquet: exact rows, read a row group at a time, holding only
    the groups of the last request (here 8 rows per group: 30 identities make groups 0-7, 8-15, 16-23, 24-29)."""
    from facefoundry.identities import store

    monkeypatch.setattr(store, "IDENTITY_ROW_GROUP", 8)
    if where == "local":
        out = tmp_path
    else:
        from s3server import bucket_uri

        out = bucket_uri(request.getfixturevalue("s3").endpoint, "identity-vectors", "run")
    cfg = validate_config({"identities": {"count": 30}, "images": {"per_identity": 1}})
    write_identities(out, cfg)
    whole = store.read_run_vectors(out)
    reads: list[list[int]] = []
    real = pq.ParquetFile.read_row_groups
    monkeypatch.setattr(pq.ParquetFile, "read_row_groups",
                        lambda self, groups, **kw: reads.append(list(groups)) or real(self, groups, **kw))
    vectors = store.IdentityVectors(out)
    assert len(vectors) == 30
    for (start, stop), groups_read in [((0, 3), [0]), ((5, 8), []), ((7, 9), [1]), ((8, 16), []),
                                       ((29, 30), [3]), ((0, 30), [0, 1, 2])]:
        reads.clear()
        assert np.array_equal(vectors.rows(start, stop), whole[start:stop]), (start, stop)
        assert reads == ([groups_read] if groups_read else []), (start, stop, reads)
    vectors.rows(12, 14)
    assert set(vectors._held) == {1}  # only what the last call needed stays in memory
    with pytest.raises(IndexError, match=r"identities 25\.\.31 are outside this run's 0\.\.30"):
        vectors.rows(25, 31)
    empty = tmp_path / "empty"
    with pytest.raises(FileNotFoundError, match="identities.parquet is missing: the run's identities were not written"):
        store.IdentityVectors(empty)
