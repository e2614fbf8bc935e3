"""Quota selection of balanced runs (facefoundry.identities.quotas) with a fake attribute model of known output."""

from __future__ import annotations

import numpy as np
import pytest

from facefoundry.identities.quotas import (
    QuotaError,
    QuotaFill,
    allocate,
    cell_targets,
    marginals_of,
    max_deviation,
)

ATTRS = ("gender", "age_group")
MARGINALS = {"gender": {"female": 0.5, "male": 0.5}, "age_group": {"0-29": 0.3, "30-59": 0.5, "60+": 0.2}}


def fake_attributes(n: int, seed: int = 0, p_female: float = 0.8, p_face: float = 0.9) -> list[tuple | None]:
    """A skewed population (80 % female, few old people, 10 % without a face), known in advance."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        if rng.random() > p_face:
            out.append(None)
            continue
        gender = "female" if rng.random() < p_female else "male"
        age = rng.choice(["0-29", "30-59", "60+"], p=[0.6, 0.35, 0.05])
        out.append((gender, str(age)))
    return out


def test_cell_targets_and_allocation():
    targets = cell_targets(ATTRS, MARGINALS)
    assert len(targets) == 6 and targets[("female", "30-59")] == pytest.approx(0.25)
    quotas = allocate(100, targets)
    assert sum(quotas.values()) == 100
    assert quotas == {("female", "0-29"): 15, ("female", "30-59"): 25, ("female", "60+"): 10,
                      ("male", "0-29"): 15, ("male", "30-59"): 25, ("male", "60+"): 10}
    odd = allocate(7, targets)  # 7 * shares = 1.05, 1.75, 0.7 (twice): largest remainders get the 3 left over
    assert sum(odd.values()) == 7 and odd[("female", "30-59")] == 2 and odd[("female", "60+")] == 1
    for cell, q in odd.items():
        assert abs(q - 7 * targets[cell]) < 1
    joint = cell_targets(ATTRS, {}, {"female|0-29": 0.5, "male|60+": 0.5})
    assert allocate(3, joint) == {("female", "0-29"): 2, ("male", "60+"): 1}


@pytest.mark.parametrize("bad", [
    {"gender": {"female": 0.6, "male": 0.6}, "age_group": MARGINALS["age_group"]},
    {"gender": {"female": -0.5, "male": 1.5}, "age_group": MARGINALS["age_group"]},
    {"gender": MARGINALS["gender"]},
])
def test_malformed_targets_are_named(bad):
    with pytest.raises(QuotaError, match="attribute|sum to 1"):
        cell_targets(ATTRS, bad)
    with pytest.raises(QuotaError, match="one per attribute"):
        cell_targets(ATTRS, {}, {"female": 1.0})


def test_skewed_population_is_balanced_within_tolerance():
    count = 60
    targets = cell_targets(ATTRS, MARGINALS)
    fill = QuotaFill(allocate(count, targets))
    population = fake_attributes(2000)
    for index, cell in enumerate(population):
        fill.offer(index, cell)
        if fill.complete:
            break
    assert fill.complete
    kept, cells = fill.finish(targets, tolerance=0.02)
    assert len(kept) == count and kept == sorted(kept)
    assert all(population[i] == c for i, c in zip(kept, cells, strict=True))
    achieved = marginals_of(cells, ATTRS)
    for attr in ATTRS:
        for value, share in MARGINALS[attr].items():
            assert abs(achieved[attr][value] - share) <= 1 / count
    counts = {c: cells.count(c) for c in set(cells)}
    assert max_deviation(counts, targets) < 1 / count
    # the population itself was far from the targets: the quotas did the work
    raw = marginals_of([c for c in population[: kept[-1] + 1] if c is not None], ATTRS)
    assert raw["gender"]["female"] > 0.7 and raw["age_group"].get("60+", 0) < 0.1


def test_decisions_depend_only_on_the_ordered_probes():
    """A run killed after any number of probes and resumed (a new QuotaFill fed the recorded probes, then the
    rest) keeps the same identities; offering out of order is refused."""
    targets = cell_targets(ATTRS, MARGINALS)
    population = fake_attributes(1500, seed=3)

    def run(stop_after: int | None) -> list[int]:
        fill = QuotaFill(allocate(40, targets))
        recorded = population if stop_after is None else population[:stop_after]
        for index, cell in enumerate(recorded):  # before the kill (or the whole run)
            fill.offer(index, cell)
        resumed = QuotaFill(allocate(40, targets))
        for index, cell in enumerate(population):  # after the restart: recorded probes first, then new ones
            resumed.offer(index, cell)
            if resumed.complete:
                break
        return resumed.finish(targets, 0.05)[0]

    whole = run(None)
    assert all(run(k) == whole for k in (0, 7, 300))
    fill = QuotaFill(allocate(4, targets))
    fill.offer(5, ("female", "0-29"))
    with pytest.raises(ValueError, match="increasing order"):
        fill.offer(5, ("male", "0-29"))


def test_exhausted_candidates_fill_within_tolerance_or_fail():
    targets = cell_targets(("gender",), {"gender": {"female": 0.5, "male": 0.5}})
    probes = [("female",)] * 12 + [("male",)] * 9 + [None] * 3
    fill = QuotaFill(allocate(20, targets))
    for index, cell in enumerate(probes):
        fill.offer(index, cell)
    assert not fill.complete and fill.unknown == 3
    kept, cells = fill.finish(targets, tolerance=0.05)  # 11 female / 9 male: 0.05 off
    assert len(kept) == 20 and cells.count(("male",)) == 9
    fill2 = QuotaFill(allocate(20, targets))
    for index, cell in enumerate(probes):
        fill2.offer(index, cell)
    with pytest.raises(QuotaError, match=r"male.*1.*oversample"):
        fill2.finish(targets, tolerance=0.01)
    fill3 = QuotaFill(allocate(20, targets))
    for index, cell in enumerate(probes[:15]):
        fill3.offer(index, cell)
    with pytest.raises(QuotaError, match="usable identities"):
        fill3.finish(targets, tolerance=1.0)


@pytest.mark.parametrize(("count", "attributes", "marginals", "joint"), [
    (10**7, ("gender",), {"gender": {"female": 0.5000004, "male": 0.5000004}}, None),
    (2 * 10**6, ("gender",), {"gender": {"a": 0.5000009, "b": 0.25, "c": 0.25}}, None),
    (10**7, ATTRS, {"gender": {"female": 0.5000004, "male": 0.5000004},
                    "age_group": {"0-29": 0.3000003, "30-59": 0.5, "60+": 0.2}}, None),
    (10**7, ("gender",), {}, {"female": 0.5000004, "male": 0.5000004}),
    (2 * 10**6, ATTRS, {}, {"female|0-29": 0.5000009, "male|0-29": 0.25, "male|60+": 0.25}),
    (10**7 + 3, ATTRS, {}, {"female|0-29": 0.4999996, "male|0-29": 0.2500001, "male|60+": 0.25}),
])
def test_quotas_sum_exactly_to_the_count_when_targets_sum_to_1_within_tolerance(count, attributes, marginals,
                                                                                 joint):
    """Targets accepted as summing to 1 (within 1e-6) are normalised: the quotas add up to the identity count at
    any size, and each cell misses its normalised share by less than one identity."""
    targets = cell_targets(attributes, marginals, joint)
    quotas = allocate(count, targets)
    assert sum(quotas.values()) == count
    total = sum(targets.values())
    assert all(abs(q - count * targets[cell] / total) < 1 for cell, q in quotas.items())
