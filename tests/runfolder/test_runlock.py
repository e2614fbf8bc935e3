"""One writer per run folder: a second one is refused in one line naming the holder; a lock left by a
dead process is taken over; object stores get the same rule through a token written and re-read."""

from __future__ import annotations

import json
import multiprocessing
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from typer.testing import CliRunner

from facefoundry.cli import app
from facefoundry.runfolder import runlock
from facefoundry.runfolder.runlock import LOCK_FILE, RunLockedError, run_lock
from facefoundry.runfolder.verify import verify_run

REPO = Path(__file__).resolve().parents[2]
SMOKE = REPO / "configs" / "smoke.yaml"
SMALL = ["--set", "identities.count=4", "--set", "images.per_identity=2"]


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def _lock_of(pid: int, host: str | None = None) -> str:
    return json.dumps({"token": "old", "user": "someone", "host": host or socket.gethostname(), "pid": pid,
                       "command": "run", "since": "2026-01-01T00:00:00Z"})


def test_second_writer_is_refused_naming_the_holder_and_the_lock_goes_at_exit(tmp_path):
    out = tmp_path / "run"
    with run_lock(out, "run") as owner:
        held = json.loads((out / LOCK_FILE).read_text())
        assert held["pid"] == os.getpid() and held["host"] == socket.gethostname() and held["since"]
        assert held["token"] == owner["token"] and held["command"] == "run"
        with pytest.raises(RunLockedError) as err, run_lock(out, "sample"):
            pass
        assert str(err.value) == (f"{out} is in use by facefoundry run (pid {os.getpid()}, user {held['user']} "
                                  f"on host {held['host']}, since {held['since']}); wait for it to end or use another "
                                  "--out")
    assert not (out / LOCK_FILE).exists()
    with pytest.raises(ValueError, match="boom"), run_lock(out):
        raise ValueError("boom")
    assert not (out / LOCK_FILE).exists(), "an error releases the lock"


@pytest.mark.spawn
def test_sigterm_releases_the_lock(tmp_path):
    out = tmp_path / "run"
    code = ("import time; from facefoundry.runfolder.runlock import run_lock\n"
            "from facefoundry.termination import Terminated\n"
            f"try:\n    with run_lock({str(out)!r}):\n        print('held', flush=True)\n        time.sleep(60)\n"
            f"except Terminated:\n    raise SystemExit(143)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held" and (out / LOCK_FILE).exists()
    proc.terminate()
    assert proc.wait(timeout=30) == 143
    assert not (out / LOCK_FILE).exists()


@pytest.mark.spawn
def test_stale_lock_of_a_dead_process_is_taken_over_with_a_message(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    pid = _dead_pid()
    (out / LOCK_FILE).write_text(_lock_of(pid))
    result = CliRunner().invoke(app, ["sample", str(SMOKE), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert f"took over a stale lock of facefoundry run (pid {pid}, user someone" in result.output
    assert (out / "identities.parquet").exists() and not (out / LOCK_FILE).exists()
    # a reused pid (alive, but started after the lock was written) is stale too
    (out / LOCK_FILE).write_text(json.dumps({**json.loads(_lock_of(os.getpid())), "pid_start": "1"}))
    with run_lock(out, notify=lambda text: None):
        pass
    # another host's lock cannot be checked from here: refused, with how to clear it
    (out / LOCK_FILE).write_text(_lock_of(1, host="elsewhere"))
    with pytest.raises(RunLockedError, match=f"if it is gone remove {out / LOCK_FILE}"), run_lock(out):
        pass


def _contend(out: str, barrier, results) -> None:
    barrier.wait()
    try:
        with run_lock(out, notify=lambda text: None):
            barrier.wait()  # everyone has tried while the winner still holds it
            results.put("won")
    except RunLockedError:
        barrier.wait()
        results.put("refused")


@pytest.mark.spawn
def test_writers_racing_for_a_stale_lock_get_exactly_one_winner(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / LOCK_FILE).write_text(_lock_of(_dead_pid()))
    ctx = multiprocessing.get_context("fork")
    barrier, results = ctx.Barrier(6), ctx.Queue()
    procs = [ctx.Process(target=_contend, args=(str(out), barrier, results)) for _ in range(6)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
    assert sorted(results.get(timeout=5) for _ in procs) == ["refused"] * 5 + ["won"]
    assert not (out / LOCK_FILE).exists() and not list(out.glob(".run.lock*")), "no lock or takeover mutex left"


def test_out_that_is_a_file_is_said_in_words(tmp_path):
    target = tmp_path / "afile"
    target.write_text("x")
    result = CliRunner().invoke(app, ["sample", str(SMOKE), "--out", str(target)])
    assert result.exit_code == 1
    expected = f"error: --out {target}: a file, not a folder; give a folder path (created if absent)"
    assert result.output.strip() == expected


def test_sample_has_the_fresh_it_suggests(tmp_path):
    """--fresh names what it deletes; it refuses to delete eval/ without --fresh-eval (orphans/ go, named)."""
    out = str(tmp_path / "run")
    assert CliRunner().invoke(app, ["sample", str(SMOKE), "--out", out]).exit_code == 0
    refused = CliRunner().invoke(app, ["sample", str(SMOKE), "--out", out, "--set", "run.seed=1"])
    assert refused.exit_code == 1 and "or --fresh to discard it" in refused.output
    for stale in ("eval/intrinsic.json", "orphans/data/train-9999999-extra.parquet"):  # the old run's, too
        (tmp_path / "run" / stale).parent.mkdir(parents=True)
        (tmp_path / "run" / stale).write_text("{}")
    args = ["sample", str(SMOKE), "--out", out, "--set", "run.seed=1", "--fresh"]
    kept = CliRunner().invoke(app, args)  # eval/ may hold hours of training: never deleted unasked
    assert kept.exit_code == 1 and (tmp_path / "run" / "eval" / "intrinsic.json").exists()
    errors = [line for line in kept.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"--fresh would delete {tmp_path / 'run' / 'eval'}" in errors[0], kept.output
    assert "move it out" in errors[0] and "--fresh-eval" in errors[0] and "deleting" not in kept.output
    assert json.loads((tmp_path / "run" / "run.json").read_text())["config"]["run"]["seed"] == 0
    fresh = CliRunner().invoke(app, [*args, "--fresh-eval"])
    assert fresh.exit_code == 0, fresh.output
    assert not (tmp_path / "run" / "eval").exists() and not (tmp_path / "run" / "orphans").exists()
    assert json.loads((tmp_path / "run" / "run.json").read_text())["config"]["run"]["seed"] == 1
    said = [line for line in fresh.output.splitlines() if line.startswith("--fresh: deleting")]
    assert said == [f"--fresh: deleting the previous run's run.json, identities.parquet, eval/, orphans/ "
                    f"in {tmp_path / 'run'}"], fresh.output
    again = CliRunner().invoke(app, [*args[:-1], "--set", "run.seed=2", "--fresh"])  # no eval/ now: no option
    assert again.exit_code == 0 and "deleting the previous run's run.json, identities.parquet" in again.output
    alone = CliRunner().invoke(app, [*args[:-1], "--fresh-eval"])
    assert alone.exit_code == 1 and "--fresh-eval only goes with --fresh" in alone.output
    help_text = CliRunner().invoke(app, ["run", "--help"], terminal_width=200).output
    fresh_line = next(line for line in help_text.splitlines() if "--fresh" in line)
    assert "<bool>" not in fresh_line, "a plain flag takes no value"


@pytest.mark.spawn
def test_remote_lock_single_writer_rule(s3_endpoint, monkeypatch):
    from s3server import bucket_uri

    monkeypatch.setattr(runlock, "REMOTE_SETTLE_S", 0.3)
    uri = bucket_uri(s3_endpoint, "locks", "run")
    outcomes: list[str] = []

    def writer() -> None:
        try:
            with run_lock(uri, notify=lambda text: None):
                outcomes.append("won")
        except RunLockedError as exc:
            outcomes.append(f"refused: {exc}")

    threads = [threading.Thread(target=writer) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(o[:7] for o in outcomes) == ["refused", "won"], outcomes
    assert "is in use by facefoundry run" in next(o for o in outcomes if o.startswith("refused"))
    from facefoundry.dataset.storage import open_store

    store = open_store(uri)
    assert store.read_bytes(LOCK_FILE) is None, "released"
    store.put_bytes(LOCK_FILE, _lock_of(_dead_pid()).encode())
    notes: list[str] = []
    with run_lock(uri, notify=notes.append):
        pass
    assert "took over a stale lock" in notes[0] and store.read_bytes(LOCK_FILE) is None


@pytest.mark.spawn
def test_two_runs_started_together_one_writes_the_other_is_refused(tmp_path):
    out = tmp_path / "run"
    exe = str(Path(sys.executable).parent / "facefoundry")
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled"}
    commands = [[exe, "run", str(SMOKE), "--out", str(out), *SMALL],
                [exe, "run", str(SMOKE), "--out", str(out), *SMALL, "--set", "run.seed=1"]]
    procs = [subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for c in commands]
    results = [(p.wait(timeout=240), *p.communicate()) for p in procs]
    codes = [code for code, _, _ in results]
    assert sorted(code == 0 for code in codes) == [False, True], results
    winner = codes.index(0)
    _, _, loser_err = results[1 - winner]
    lines = loser_err.strip().splitlines()
    assert len(lines) == 1 and "is in use by facefoundry run (pid " in lines[0], loser_err
    assert f"on host {socket.gethostname()}, since " in lines[0]
    assert verify_run(out) == []
    assert json.loads((out / "run.json").read_text())["config"]["run"]["seed"] == winner
    assert not (out / LOCK_FILE).exists()
