"""Crash safety: SIGKILL of the whole process tree mid-run, then the same command again, gives the
same dataset byte for byte as an uninterrupted run."""

import contextlib
import hashlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from runfolder import write_in_process
from s3server import bucket_uri
from typer.testing import CliRunner

from facefoundry.cli import app
from facefoundry.config import load_config
from facefoundry.dataset.storage import open_store
from facefoundry.runfolder.verify import verify_run

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "smoke.yaml"
# 6 identities x 2 images, one identity per unit: several units, so the kill lands mid-run.
SLOW_COMMITS = Path(__file__).resolve().parents[1] / "helpers" / "slowcommits"
ARGS = ["--set", "identities.count=6", "--set", "images.per_identity=2", "--set", "output.identities_per_unit=1"]


def shard_digests(out) -> dict[str, str]:
    store = open_store(out)
    return {name: hashlib.sha256(store.read_bytes(f"data/{name}")).hexdigest()
            for name in sorted(store.sizes("data")) if name.startswith("train-")}


def slowed_env(delay: float = 1.0, hold_after: int = 0) -> dict[str, str]:
    """The environment for a run that commits one unit every ``delay`` seconds or slower, and with ``hold_after``
    stops after that many units, so that a kill lands between two units (tests/helpers/slowcommits)."""
    env = dict(os.environ, FACEFOUNDRY_TEST_COMMIT_DELAY=str(delay), FACEFOUNDRY_TEST_HOLD_AFTER=str(hold_after))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SLOW_COMMITS), env.get("PYTHONPATH")]))
    return env


def manifest_count(out) -> int:
    return sum(name.endswith(".json") and not name.startswith(".") for name in open_store(out).sizes("manifests"))


def settled_manifest_count(out) -> int:
    """The manifest count once it stops changing. After the writer is killed, the loopback S3 server (in this
    process) may still be storing a manifest whose upload it had received whole: that unit is done too."""
    count = manifest_count(out)
    while True:
        time.sleep(1.0)
        now = manifest_count(out)
        if now == count:
            return count
        count = now


@pytest.mark.spawn
def test_sigterm_mid_run_ends_in_one_line_and_the_log_says_so(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-c", "from facefoundry.cli import app; app()", "run", str(CONFIG), "--out", str(out), *ARGS]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=slowed_env())
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None and manifest_count(out) < 1:
        time.sleep(0.2)
    proc.terminate()  # SIGTERM to the driver only, as `kill PID` or a scheduler's stop does; Ray is running
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert "error: terminated (SIGTERM); rerun the same command to resume" in err
    assert "SIGTERM received" not in err and "Traceback" not in err, err  # no native stack dump from Ray
    log = sorted((out / "logs").glob("run-*.log"))[-1].read_text().splitlines()
    assert log[-1].endswith("run stopped: Terminated: SIGTERM"), log[-3:]
    assert not (out / "run.lock").exists()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run of ARGS, shared by the kill tests (it does not depend on where they write): the
    stages in this process, without Ray's start-up (a run through Ray writes the same bytes)."""
    out = tmp_path_factory.mktemp("reference") / "run"
    write_in_process(load_config(CONFIG, [a for a in ARGS if a != "--set"]), out)
    return out


@pytest.mark.parametrize("where", ["folder", "s3"])
def test_sigkill_mid_run_then_resume_is_byte_identical(tmp_path, where, reference, s3_endpoint, shared_ray):
    """The killed run is a subprocess with its own embedded Ray; the resume runs here, on the module's Ray
    (started after the session's loopback S3 server, so its workers have the server's credentials)."""
    if where == "s3":  # a loopback S3 server living in this process
        out = bucket_uri(s3_endpoint, "killed", "run")
    else:
        out = str(tmp_path / "killed")
    cmd = [sys.executable, "-c", "from facefoundry.cli import app; app()", "run", str(CONFIG), "--out", out, *ARGS]
    with open(tmp_path / "killed.err", "w") as err:
        proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=err,
                                env=slowed_env(hold_after=2))
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if manifest_count(out) >= 2:  # mid-run: some units done, others not
                break
            time.sleep(0.2)
    finally:
        with contextlib.suppress(ProcessLookupError):  # the run may have ended by itself: said below
            os.killpg(proc.pid, signal.SIGKILL)  # the driver, its embedded Ray and every worker
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, f"the run ended before the kill: {(tmp_path / 'killed.err').read_text()}"
    done_before = settled_manifest_count(out)
    assert 2 <= done_before < 6, f"the kill did not land mid-run ({done_before} units done)"

    result = CliRunner().invoke(app, ["run", str(CONFIG), "--out", out, *ARGS])
    assert result.exit_code == 0, result.output
    # What the resume finds done can exceed the count above: on a loaded machine a killed run's last upload (the
    # S3 server lives in this process) can land later than a second. It redoes exactly the rest.
    found = re.search(r"(\d+) already done \(resuming\)", result.output)
    assert found and done_before <= int(found.group(1)) < 6, (done_before, result.output)
    assert f"{6 - int(found.group(1))} units written" in result.output, result.output
    assert shard_digests(out) == shard_digests(reference) and len(shard_digests(out)) == 6
    assert verify_run(out) == []
