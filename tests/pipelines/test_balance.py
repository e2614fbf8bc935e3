"""Balanced identity selection (pipelines.balance) with a fake attribute prober of known output: quotas met within
tolerance, probe records, resume after a kill with the same identities, and identities.parquet of a balanced run."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

from facefoundry.config import validate_config
from facefoundry.dataset.storage import open_store
from facefoundry.filters.attribute_annotator import COLUMNS as ANNOTATOR_COLUMNS
from facefoundry.filters.attribute_annotator import AttributeAnnotator
from facefoundry.identities.quotas import QuotaError
from facefoundry.identities.store import read_metadata, write_identities
from facefoundry.layout import BALANCE_DIR, IDENTITIES_FILE
from facefoundry.pipelines.balance import PROBE_CHUNK, candidate_count, probe_seed, select_balanced

TARGETS = {"gender": {"female": 0.5, "male": 0.5}, "age_group": {"0-19": 0.2, "20-39": 0.4, "40-59": 0.3, "60+": 0.1}}


def config(count: int = 24, oversample: float = 8.0, tolerance: float = 0.02):
    return validate_config({
        "run": {"seed": 3},
        "identities": {"count": count, "dim": 16, "max_cosine": 0.9},
        "images": {"per_identity": 2},
        "attributes": {"detector_model": None},
        "balance": {"attributes": ["gender", "age_group"], "targets": TARGETS, "tolerance": tolerance,
                    "oversample": oversample},
    })


class FakeProber:
    """Known estimates: candidate c is male when c % 5 == 0 (a skewed population, 20 % male), its age is
    (7 * c) % 80 years, and every 9th candidate shows no face. Can be told to die on its n-th call (a kill)."""

    schema = AttributeAnnotator.output_schema()

    def __init__(self, die_on_call: int | None = None):
        self.calls: list[list[int]] = []
        self.die_on_call = die_on_call

    @staticmethod
    def estimate(c: int) -> dict | None:
        if c % 9 == 4:
            return None
        age = float((7 * c) % 80)
        group = "0-19" if age < 20 else "20-39" if age < 40 else "40-59" if age < 60 else "60+"
        return dict.fromkeys(ANNOTATOR_COLUMNS) | {"age": age, "age_group": group,
                                                   "gender": "male" if c % 5 == 0 else "female", "gender_score": 0.9}

    def __call__(self, vectors: np.ndarray, candidates: list[int]) -> list[dict | None]:
        if self.die_on_call is not None and len(self.calls) + 1 == self.die_on_call:
            raise KeyboardInterrupt("killed")
        assert len(vectors) == len(candidates)
        self.calls.append(candidates)
        return [self.estimate(c) for c in candidates]


def test_quotas_met_from_a_skewed_population(tmp_path):
    cfg = config()
    store = open_store(tmp_path)
    vectors = np.random.default_rng(0).standard_normal((candidate_count(cfg), 16)).astype(np.float32)
    prober = FakeProber()
    selection = select_balanced(cfg, store, vectors, prober)
    kept = selection.kept.tolist()
    assert len(kept) == 24 and kept == sorted(kept)
    assert selection.columns["gender"].to_pylist() == [FakeProber.estimate(c)["gender"] for c in kept]
    achieved = selection.summary["achieved"]
    for attr, shares in TARGETS.items():
        for value, share in shares.items():
            assert abs(achieved[attr][value] - share) <= 1 / 24 + 1e-9, (attr, value)
    assert selection.summary["probes_without_face"] > 0
    # probing stopped when the quotas were met: not every candidate was probed
    probed = [c for call in prober.calls for c in call]
    assert probed == list(range(len(probed))) and len(probed) < len(vectors)
    assert selection.summary["candidates_probed"] <= len(probed)
    records = sorted(p.name for p in (tmp_path / BALANCE_DIR).iterdir())
    assert records == [f"probes-{s:08d}.parquet" for s in range(0, len(probed), PROBE_CHUNK)]


def test_resume_after_a_kill_keeps_the_same_identities(tmp_path):
    cfg = config()
    vectors = np.random.default_rng(1).standard_normal((candidate_count(cfg), 16)).astype(np.float32)
    whole = select_balanced(cfg, open_store(tmp_path / "whole"), vectors, FakeProber())
    killed = FakeProber(die_on_call=3)
    with pytest.raises(KeyboardInterrupt):
        select_balanced(cfg, open_store(tmp_path / "killed"), vectors, killed)
    assert len(list((tmp_path / "killed" / BALANCE_DIR).glob("probes-*.parquet"))) == 2
    again = FakeProber()
    resumed = select_balanced(cfg, open_store(tmp_path / "killed"), vectors, again)
    assert again.calls[0][0] == 2 * PROBE_CHUNK  # the recorded chunks were not probed again
    assert resumed.kept.tolist() == whole.kept.tolist()
    assert resumed.summary == whole.summary
    other = config(count=20)  # a record of another config is refused, not reused
    with pytest.raises(RuntimeError, match="another config"):
        select_balanced(other, open_store(tmp_path / "killed"), vectors, FakeProber())


def test_too_few_candidates_fail_naming_the_short_cells(tmp_path):
    cfg = config(oversample=1.2)
    vectors = np.zeros((candidate_count(cfg), 16), np.float32)
    with pytest.raises(QuotaError, match="male.*oversample"):
        select_balanced(cfg, open_store(tmp_path), vectors, FakeProber())


class FakeSelector:
    def __init__(self, cfg, store):
        self.cfg, self.store, self.candidates = cfg, store, candidate_count(cfg)
        self.seen = None

    def __call__(self, vectors):
        self.seen = vectors.copy()
        return select_balanced(self.cfg, self.store, vectors, FakeProber())


def test_identities_file_of_a_balanced_run(tmp_path):
    cfg = config()
    store = open_store(tmp_path)
    selector = FakeSelector(cfg, store)
    meta = write_identities(store, cfg, selector=selector)
    table = pq.read_table(tmp_path / IDENTITIES_FILE)
    assert table.num_rows == 24 and meta["count"] == 24
    kept = table.column("candidate").to_pylist()
    vectors = np.stack(table.column("vector").to_numpy(zero_copy_only=False))
    assert len(selector.seen) == candidate_count(cfg)
    np.testing.assert_array_equal(vectors, selector.seen[kept])  # identity i is the i-th kept candidate
    assert table.column("identity").to_pylist() == list(range(24))
    assert table.column("age_group").to_pylist() == [FakeProber.estimate(c)["age_group"] for c in kept]
    stored = read_metadata(tmp_path / IDENTITIES_FILE)
    assert stored["balance"]["target"] == TARGETS and stored["balance"]["estimator"] == "genderage"
    assert max(stored["balance"]["achieved_cells"][c] - p for c, p in stored["balance"]["target_cells"].items()) < 0.05
    # a rerun finds the file and probes nothing
    assert write_identities(store, cfg, selector=None)["balance"] == stored["balance"]


def test_probe_seeds_are_not_image_seeds():
    from facefoundry.seeds import image_seed

    assert probe_seed(3, 5) == probe_seed(3, 5) != probe_seed(3, 6)
    assert probe_seed(3, 5) not in {image_seed(3, 5, j) for j in range(100)}
