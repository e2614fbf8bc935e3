"""``facefoundry submit`` against a real ``ray start --head`` cluster on 127.0.0.1, started and stopped here."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from s3server import CREDENTIALS, bucket_uri

from facefoundry.config import load_config
from facefoundry.pipelines import submit as sub
from facefoundry.runfolder.runinfo import run_id
from facefoundry.sections import ConfigError

REPO = Path(__file__).resolve().parents[2]
SMOKE = REPO / "configs" / "smoke.yaml"
TINY = ["identities.count=2", "images.per_identity=1", "output.identities_per_unit=1"]


def _free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _wait_port(port: int, deadline: float) -> None:
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return
        time.sleep(0.5)
    raise TimeoutError(f"127.0.0.1:{port} did not open")


@contextlib.contextmanager
def head_node(log_path: Path, **env_extra: str):
    """A head node on loopback with every port chosen free (other Rays may run on this machine)."""
    gcs, dash, agent, agent_grpc, env_agent, metrics, client, nm, om = _free_ports(9)
    temp_dir = tempfile.mkdtemp(prefix="ffsub-", dir="/tmp")  # short: Unix socket paths are length-limited
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled",
           "RAY_USAGE_STATS_ENABLED": "0", "HF_HUB_OFFLINE": "1", **CREDENTIALS,  # for the loopback S3 server
           # the job's `python` is this interpreter (the cluster's Python has facefoundry's dependencies)
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}", **env_extra}
    env.pop("RAY_ADDRESS", None)
    cmd = [str(Path(sys.executable).parent / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1",
           f"--port={gcs}", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", "--include-dashboard=true",
           f"--dashboard-agent-listen-port={agent}", f"--dashboard-agent-grpc-port={agent_grpc}",
           f"--runtime-env-agent-port={env_agent}", f"--metrics-export-port={metrics}",
           f"--ray-client-server-port={client}", f"--node-manager-port={nm}", f"--object-manager-port={om}",
           f"--temp-dir={temp_dir}", "--num-cpus=2", "--disable-usage-stats"]
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.monotonic() + 90
            _wait_port(dash, deadline)
            _wait_port(agent, deadline)  # the Jobs API needs the node's dashboard agent
            yield f"http://127.0.0.1:{dash}"
        finally:
            # `ray start --block` stops an idle node on SIGTERM in about 3 s (the whole group hit at once took
            # 15 s and more); a node that ran jobs may drain for 30 s, so it gets 5. Then the group (this
            # cluster, never other Rays on the machine) is killed for what is left.
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=15)
            shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with head_node(tmp_path_factory.mktemp("ray") / "ray-start.log") as address:
        yield address


def _wait_terminal(address: str, rid: str, timeout: float = 60) -> sub.JobState:
    deadline = time.monotonic() + timeout
    while True:
        state = sub.status(address, rid)
        if state.status in sub.TERMINAL or time.monotonic() > deadline:
            return state
        time.sleep(0.5)


@pytest.mark.spawn
@pytest.mark.filterwarnings("ignore:ssl=None is deprecated:DeprecationWarning")
def test_submit_follow_attach_status(cluster, tmp_path):
    import io

    out = tmp_path / "out"
    logs = io.StringIO()
    result = sub.submit(SMOKE, out, cluster, TINY, follow=True, cache_dir=tmp_path / "wheels", log=logs)
    assert result.status == "SUCCEEDED", logs.getvalue()[-3000:]
    assert not result.attached and result.submission_id == result.run_id
    expected = run_id(load_config(SMOKE, TINY))  # the run id is the job submission id
    assert result.run_id == expected and result.run_id.startswith("smoke-")
    # The job imported the shipped code, not this checkout.
    line = next(ln for ln in logs.getvalue().splitlines() if ln.startswith("facefoundry 0.1.0 from "))
    assert str(REPO) not in line, line

    import datasets

    ds = datasets.load_dataset("parquet", data_dir=str(out / "data"), split="train",
                               cache_dir=str(tmp_path / "hfcache"))
    assert len(ds) == 2 and sorted(set(ds["identity"])) == [0, 1]
    assert (out / "run.json").exists()

    # A resubmit of the same run attaches: no second job.
    again = sub.submit(SMOKE, out, cluster, TINY, cache_dir=tmp_path / "wheels")
    assert again.attached and again.submission_id == result.run_id and again.status == "SUCCEEDED"
    jc = sub.client(cluster)
    assert [j.submission_id for j in jc.list_jobs() if j.submission_id.startswith(result.run_id)] == [result.run_id]
    state = sub.status(cluster, result.run_id)
    assert state.status == "SUCCEEDED" and state.out == str(out)

    # The same run into another folder is refused rather than silently attached.
    with pytest.raises(sub.SubmitError, match="already has job"):
        sub.submit(SMOKE, tmp_path / "elsewhere", cluster, TINY, cache_dir=tmp_path / "wheels")


@pytest.mark.spawn
def test_submit_to_s3(cluster, s3_endpoint, tmp_path):
    """The job's driver and actors write straight to a bucket (a loopback S3 server); the output loads."""
    import io

    import datasets
    import pyarrow.fs as pafs

    from facefoundry.dataset.storage import open_store
    from facefoundry.runfolder.verify import verify_run

    uri = bucket_uri(s3_endpoint, "cluster", "runs/tiny")
    logs = io.StringIO()
    overrides = [*TINY, "run.name=tos3"]
    result = sub.submit(SMOKE, uri, cluster, overrides, follow=True, cache_dir=tmp_path / "wheels", log=logs)
    assert result.status == "SUCCEEDED", logs.getvalue()[-3000:]
    assert verify_run(uri) == []
    store = open_store(uri)
    local = tmp_path / "copy"
    local.mkdir()
    pafs.copy_files(f"{store.base}/data", str(local), source_filesystem=store.fs)
    ds = datasets.load_dataset("parquet", data_dir=str(local), split="train", cache_dir=str(tmp_path / "hfcache"))
    assert len(ds) == 2 and sorted(set(ds["identity"])) == [0, 1]


@pytest.mark.spawn
def test_stop_then_resubmit_retries(cluster, tmp_path):
    overrides = [*TINY, "run.name=stopme"]
    out = tmp_path / "out"
    first = sub.submit(SMOKE, out, cluster, overrides, cache_dir=tmp_path / "wheels")
    assert not first.attached and first.submission_id == first.run_id
    state, sent = sub.stop(cluster, first.run_id)
    assert sent and state.submission_id == first.run_id
    assert _wait_terminal(cluster, first.run_id).status == "STOPPED"
    _, sent = sub.stop(cluster, first.run_id)
    assert not sent  # already stopped: nothing to do

    # After a stopped (or failed) job the same run goes again under <run_id>-retry1.
    retry = sub.submit(SMOKE, out, cluster, overrides, cache_dir=tmp_path / "wheels")
    assert not retry.attached and retry.submission_id == f"{first.run_id}-retry1"
    state = sub.status(cluster, first.run_id)
    assert state.submission_id == retry.submission_id and state.attempts == 2
    sub.stop(cluster, first.run_id)
    assert _wait_terminal(cluster, first.run_id).status == "STOPPED"


def test_unreachable_address_is_one_line():
    (port,) = _free_ports(1)
    with pytest.raises(sub.SubmitError) as err:
        sub.status(f"http://127.0.0.1:{port}", "smoke-0000")
    text = str(err.value)
    assert "\n" not in text and f"127.0.0.1:{port}" in text and "cannot reach" in text


def test_submit_validates_before_contacting_the_cluster(tmp_path):
    (port,) = _free_ports(1)
    with pytest.raises(ConfigError):
        sub.submit(SMOKE, tmp_path, f"http://127.0.0.1:{port}", ["identities.count=-1"])
    with pytest.raises(sub.SubmitError, match="absolute path"):
        sub.submit(SMOKE, "runs/x", f"http://127.0.0.1:{port}", TINY)


def test_token_goes_in_a_bearer_header(monkeypatch):
    from ray.job_submission import JobSubmissionClient

    seen = {}

    def fake_init(self, address, headers=None, **kwargs):
        seen.update(address=address, headers=headers)

    monkeypatch.setattr(JobSubmissionClient, "__init__", fake_init)
    monkeypatch.setenv("RAY_AUTH_TOKEN", "s3cret")
    sub.client("127.0.0.1:8265")
    assert seen == {"address": "http://127.0.0.1:8265", "headers": {"Authorization": "Bearer s3cret"}}
    sub.client("http://h:8265", token="other")
    assert seen["headers"] == {"Authorization": "Bearer other"}


@pytest.mark.spawn
def test_wheel_is_cached_by_source_hash(tmp_path):
    first = sub.build_wheel(tmp_path)
    assert first.name.startswith("facefoundry-") and first.parent.name == sub.source_hash(REPO)
    mtime = first.stat().st_mtime_ns
    assert sub.build_wheel(tmp_path) == first and first.stat().st_mtime_ns == mtime
    package = sub.shipped_package(tmp_path)
    assert (package / "pipelines" / "submit.py").is_file() and (package / "cli.py").is_file()


@pytest.mark.spawn
def test_token_auth_against_a_token_cluster(tmp_path, monkeypatch):
    token = "ff-test-token-0123456789abcdef0123456789abcdef"
    with head_node(tmp_path / "ray-start.log", RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token) as address:
        monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
        with pytest.raises(sub.SubmitError, match="Authentication required.*RAY_AUTH_TOKEN") as err:
            sub.status(address, "nope-0")
        assert "\n" not in str(err.value)
        with pytest.raises(sub.SubmitError, match="Authentication failed") as err:
            sub.status(address, "nope-0", token="wrong-token-wrong-token-wrong-token")
        assert "wrong-token" not in str(err.value)
        monkeypatch.setenv("RAY_AUTH_TOKEN", token)
        with pytest.raises(sub.SubmitError, match="no job for run nope-0"):  # authenticated: the API answered
            sub.status(address, "nope-0")
