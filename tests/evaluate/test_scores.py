import numpy as np
import pytest
from scipy.stats import norm

from facefoundry.evaluate.scores import eer, roc, tar_at_far


def test_gaussian_scores_match_closed_form():
    rng = np.random.default_rng(0)
    genuine, impostor = rng.normal(1.0, 0.5, 20_000), rng.normal(0.0, 0.5, 200_000)
    assert eer(genuine, impostor)["eer"] == pytest.approx(norm.cdf(-1.0), abs=0.005)
    threshold = norm.ppf(1 - 1e-3, scale=0.5)
    expected = 1 - norm.cdf(threshold, loc=1.0, scale=0.5)
    got = tar_at_far(genuine, impostor, 1e-3)
    assert got["tar"] == pytest.approx(expected, abs=0.01) and got["far"] <= 1e-3 and got["resolvable"]


def test_roc_matches_brute_force():
    rng = np.random.default_rng(1)
    genuine, impostor = rng.integers(0, 20, 50) / 10, rng.integers(0, 20, 70) / 10  # many ties
    thresholds, far, tar = roc(genuine, impostor)
    for t, f, a in zip(thresholds, far, tar, strict=True):
        assert f == np.mean(impostor >= t) and a == np.mean(genuine >= t)


def test_separable_and_degenerate_cases():
    assert eer([0.9, 0.8], [0.1, 0.2])["eer"] == 0.0
    assert tar_at_far([0.9, 0.8], [0.1, 0.2], 1e-3) == {"tar": 1.0, "threshold": 0.8, "far": 0.0, "resolvable": False}
    assert eer([0.1, 0.2], [0.9, 0.8])["eer"] == 1.0
    assert tar_at_far([0.5], [0.9], 0.1)["tar"] == 0.0
    with pytest.raises(ValueError, match="NaN"):
        eer([np.nan], [0.0])
    with pytest.raises(ValueError, match="genuine and impostor"):
        eer([], [0.0])
