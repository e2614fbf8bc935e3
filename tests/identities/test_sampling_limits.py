"""Sampling that cannot finish is refused up front with its numbers; long sampling shows progress; a
separation rule no identities can meet is a config error, blamed on the --set that gave it."""

from __future__ import annotations

import io
import math
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from facefoundry.cli import app
from facefoundry.config import load_config
from facefoundry.identities.budget import (
    InfeasibleSamplingError,
    SamplingProgress,
    check_feasible,
    exceed_probability,
    log_expected_candidates,
)
from facefoundry.identities.rejection import gaussian_proposal, rejection_sample
from facefoundry.identities.sampling import sample_identities
from facefoundry.sections import ConfigError, IdentitiesConfig

SMOKE = Path(__file__).resolve().parents[2] / "configs" / "smoke.yaml"


def test_exceed_probability_matches_closed_form_and_monte_carlo():
    assert exceed_probability(0.5, 3) == pytest.approx(0.25, abs=1e-12)  # d=3: the cosine is uniform on [-1, 1]
    assert exceed_probability(-0.5, 3) == pytest.approx(0.75, abs=1e-12)
    assert exceed_probability(0.0, 512) == pytest.approx(0.5, abs=1e-12)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((200_000, 16))
    cos = x[:, 0] / np.linalg.norm(x, axis=1)
    for t in (0.3, -0.1):
        assert exceed_probability(t, 16) == pytest.approx((cos > t).mean(), abs=0.003)


def test_expected_candidates_is_the_geometric_sum_without_overflow():
    p, n = 0.01, 300
    direct = sum((1 - p) ** -k for k in range(n))
    assert math.exp(log_expected_candidates(n, p)) == pytest.approx(direct, rel=1e-9)
    assert log_expected_candidates(10, 0.0) == pytest.approx(math.log(10))
    assert log_expected_candidates(1_000_000, 0.0118) == pytest.approx(0.0118 * 1e6, rel=0.01)  # about e^11,870


def test_the_issue_example_is_refused_with_its_numbers():
    with pytest.raises(InfeasibleSamplingError) as err:
        check_feasible(IdentitiesConfig(count=1_000_000, max_cosine=0.1))
    text = str(err.value)
    assert "1,000,000 identities at max_cosine=0.1 in 512 dimensions" in text
    assert "probability 0.0118" in text and "budget of 1,000,000,000" in text
    assert "raise identities.max_cosine or lower identities.count" in text
    check_feasible(IdentitiesConfig(count=8, max_cosine=0.3))  # the smoke preset
    check_feasible(IdentitiesConfig(count=100_000, max_cosine=0.2))  # big but fine in 512-d


@pytest.mark.spawn
def test_cli_refuses_before_writing_anything(tmp_path):
    out = tmp_path / "big"
    started = time.monotonic()
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "facefoundry"), "sample", str(SMOKE), "--out", str(out),
         "--set", "identities.count=1000000", "--set", "identities.max_cosine=0.1"],
        capture_output=True, text=True, timeout=90,
    )
    assert proc.returncode == 1, proc.stderr
    assert time.monotonic() - started < 60
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "need about 1e5136 candidates" in lines[0], proc.stderr
    assert not out.exists()


def test_progress_reports_candidates_accepted_and_eta():
    stream = io.StringIO()
    progress = SamplingProgress(160, 0.5, 16, stream, after_s=0.0, every_s=0.0)
    vectors, drawn = rejection_sample(gaussian_proposal(16), 160, 16, 0.5, 10**6, np.random.default_rng(1),
                                      progress)
    lines = stream.getvalue().strip().splitlines()
    assert len(lines) == math.ceil(drawn / 1024) >= 2  # one per screened batch
    assert lines[-1].startswith(f"identities: {drawn:,} candidates tried, 160/160 accepted (100.0%), ETA 0:00:00")
    assert "ETA 0:" in lines[0] and "/160 accepted" in lines[0]
    # small sampling stays silent: nothing is printed in the first seconds
    quiet = io.StringIO()
    sample_identities(IdentitiesConfig(count=8, max_cosine=0.3), run_seed=0, progress=quiet)
    assert quiet.getvalue() == ""


@pytest.mark.parametrize("value, words", [(-0.2, "is below 0"), (1.0, "allows every pair"), (1.5, "less than or")])
def test_impossible_max_cosine_is_a_config_error_blamed_on_the_set(value, words):
    override = f"identities.max_cosine={value}"
    with pytest.raises(ConfigError) as err:
        load_config(SMOKE, [override])
    assert str(err.value).startswith(f"--set {override!r}: ") and words in str(err.value)


def test_negative_max_cosine_writes_no_file(tmp_path):
    result = CliRunner().invoke(app, ["sample", str(SMOKE), "--out", str(tmp_path / "r"), "--set",
                                      "identities.max_cosine=-0.2"])
    assert result.exit_code == 2 and "at most 6 can" in result.output
    assert not (tmp_path / "r").exists()


def test_unknown_key_is_blamed_on_its_source(tmp_path):
    with pytest.raises(ConfigError, match=r"^--set 'identities.bogus=1': identities.bogus: unknown key"):
        load_config(SMOKE, ["identities.bogus=1"])
    with pytest.raises(ConfigError, match=r"^--set 'identitie.count=3': identitie: unknown key"):
        load_config(SMOKE, ["identitie.count=3"])
    bad = tmp_path / "bad.yaml"
    bad.write_text(SMOKE.read_text().replace("  dim: 512", "  dim: 512\n  bogus: 1"))
    with pytest.raises(ConfigError, match=rf"^{bad}: identities.bogus: unknown key"):
        load_config(bad, ["run.seed=1"])
