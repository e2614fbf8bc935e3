"""`facefoundry evaluate`: train on a run, verify on a folder of .bin files (one of them corrupt), resume."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from trainsets import held_out_pairs, write_trainset

from facefoundry.config import validate_config
from facefoundry.evaluate.benchmarks import BenchmarkError, encode_image, write_bin
from facefoundry.evaluate.config import load_evaluate_config
from facefoundry.evaluate.train_verify import read_results, results_table_markdown, train_and_verify
from facefoundry.identities.store import write_identities
from facefoundry.runfolder.runinfo import prepare_run_folder

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "configs" / "evaluate-tiny.yaml"
SHORT = ("--set", "evaluate.epochs=1", "--set", "evaluate.schedule.milestones=[]")
CLI = [sys.executable, "-c", "from facefoundry.cli import main; main()"]


def evaluate(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled"}
    return subprocess.run([*CLI, "evaluate", *map(str, args)], capture_output=True, text=True, env=env, timeout=600)


@pytest.fixture(scope="module")
def run_and_benchmarks(tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    cfg = validate_config({"run": {"name": "evalcli"}, "identities": {"count": 8}, "images": {"per_identity": 12},
                           "output": {"identities_per_unit": 4}})
    prepare_run_folder(run, cfg)
    write_identities(run, cfg)
    write_trainset(run, identities=8, per_identity=12, per_unit=4)
    bench = tmp_path_factory.mktemp("bench")
    images, issame = held_out_pairs(100)
    write_bin(bench / "lfw.bin", [encode_image(im) for im in images], issame)
    (bench / "cfp_fp.bin").write_bytes(b"not a pickle at all")
    return run, bench


@pytest.mark.spawn
@pytest.mark.train
def test_train_then_verify_writes_results_and_reruns_from_them(run_and_benchmarks, monkeypatch):
    run, bench = run_and_benchmarks
    # One epoch: this test is the command's plumbing; that training learns is tests/evaluate/test_train.py's.
    first = evaluate(run, "--train", TINY, "--benchmarks", bench, *SHORT)
    assert first.returncode == 0, first.stderr[-3000:]
    result = json.loads((run / "eval" / "tiny.json").read_text())
    assert [e["epoch"] for e in result["training"]["history"]] == [1], result["training"]
    lfw = result["benchmarks"]["sets"]["lfw"]
    assert 0.0 <= lfw["accuracy"] <= 1.0 and len(lfw["fold_accuracies"]) == 10, lfw["summary"]
    assert "not a readable benchmark pickle" in result["benchmarks"]["errors"]["cfp_fp"]
    assert result["benchmarks"]["standard_average"] is None  # only 1 of the 5 standard sets ran
    assert "cfp_fp skipped" in first.stdout and "| LFW | CFP-FP |" in first.stdout

    # Again (in this process): the finished training is verified again without starting Ray.
    from facefoundry import local_ray

    monkeypatch.setattr(local_ray, "ray_session", lambda *a, **k: pytest.fail("a finished training started Ray"))
    lines: list[str] = []
    train_and_verify(run, load_evaluate_config(TINY, [s for s in SHORT if s != "--set"]), bench, progress=lines.append)
    assert any("training tiny already finished" in line for line in lines), lines  # not trained again
    rerun = json.loads((run / "eval" / "tiny.json").read_text())
    assert rerun["benchmarks"]["sets"]["lfw"]["accuracy"] == lfw["accuracy"]
    [stored] = read_results(run)
    table = results_table_markdown([stored])
    assert table.splitlines()[0] == "| model | LFW | CFP-FP | CPLFW | AgeDB-30 | CALFW | avg (5 sets) |"
    assert f"| {100 * lfw['accuracy']:.2f} | – |" in table


@pytest.mark.spawn
def test_bad_invocations_fail_in_one_line(run_and_benchmarks, tmp_path):
    run, bench = run_and_benchmarks
    cases = [
        ((run,), "nothing to evaluate"),
        ((run, "--benchmarks", bench), "give --train CONFIG too"),
        ((run, "--train", TINY, "--benchmarks", tmp_path / "nope"), "not a folder"),
        ((tmp_path, "--intrinsic"), "run.json"),
        ((run, "--train", TINY, "--set", "evaluate.epochs=0"), "epochs"),
    ]
    for args, message in cases:
        proc = evaluate(*args)
        assert proc.returncode != 0 and message in proc.stderr, (args, proc.stderr)
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_benchmarks_are_checked_before_training(run_and_benchmarks, tmp_path, monkeypatch):
    """An empty folder, or one whose .bin files cannot be read, fails before the training (hours on a GPU), not
    after it with a table of dashes and exit 0."""
    from facefoundry.evaluate import train as train_module

    monkeypatch.setattr(train_module, "finished_training", lambda *a, **k: None)
    monkeypatch.setattr(train_module, "train_on_run", lambda *a, **k: pytest.fail("trained before checking"))
    run, _ = run_and_benchmarks
    empty, unreadable = tmp_path / "empty", tmp_path / "unreadable"
    empty.mkdir()
    unreadable.mkdir()
    (unreadable / "lfw.bin").write_bytes(b"not a pickle")
    for folder, why in ((empty, "no .bin benchmark files"), (unreadable, "lfw: ")):
        with pytest.raises(BenchmarkError, match="no benchmark can be verified") as err:
            train_and_verify(run, load_evaluate_config(TINY), folder, progress=lambda _: None)
        assert why in str(err.value)
