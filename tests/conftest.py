import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

from facefoundry.pipelines.tinycache import CACHE_ENV

# Any Ray a test starts stays on loopback and needs no token.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# `make test` runs pytest-xdist workers, more than the cores: each worker's torch keeps to one thread, else their
# OpenMP pools spin against each other (a 4 s sampler test took 84 s with 2 workers of 2 threads on 2 cores).
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")

# Tiny preset runs copy their random-weight build from one cache per test session (pipelines/tinycache.py) instead
# of each building it. Set here, in the process that starts the xdist workers: they and every run's subprocess
# inherit it. One set from outside is used as is and kept.
OWN_TINY_CACHE = None
if CACHE_ENV not in os.environ:
    OWN_TINY_CACHE = os.environ[CACHE_ENV] = tempfile.mkdtemp(prefix="fftiny-")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent / "helpers"))  # test helpers (runfolder.py) import by name


def pytest_unconfigure(config):
    if OWN_TINY_CACHE:  # the process that made it (the xdist controller, or the one pytest process)
        shutil.rmtree(OWN_TINY_CACHE, ignore_errors=True)


# The markers of the costly tests, costliest first: a module holding one is handed to an xdist worker before the
# modules without (`make test` keeps this order with --no-loadscope-reorder), so the long files start first and
# the many short ones fill the gaps, rather than a training starting last and running alone.
COSTLIEST_FIRST = ("train", "spawn", "ray", "slow")


def _module_ranks(items) -> dict[Path, int]:
    """Each module's rank: the index in COSTLIEST_FIRST of its costliest test's marker (after the list: none)."""
    ranks: dict[str, int] = {}
    for item in items:
        marks = {mark.name for mark in item.iter_markers()}
        rank = min((i for i, name in enumerate(COSTLIEST_FIRST) if name in marks), default=len(COSTLIEST_FIRST))
        ranks[item.path] = min(rank, ranks.get(item.path, rank))
    return ranks


def pytest_collection_modifyitems(items):
    """A test that shares a module's embedded Ray (``shared_ray``) needs Ray: it is a ``ray`` test whatever its
    module says, so ``make test-fast`` leaves it out. Modules are ordered by their costliest test (stable)."""
    for item in items:
        if "shared_ray" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.ray)
    ranks = _module_ranks(items)
    items.sort(key=lambda item: ranks[item.path])


@pytest.fixture(autouse=True)
def torch_threads_restored():
    """After each test torch runs the threads it should: ``OMP_NUM_THREADS`` (xdist workers, set above), else the
    count it had before. Stages that a test or a module fixture runs in this process set it for a worker
    (``Stage.setup_worker``: 2 here); kept, every later test of that xdist worker would run 2 OpenMP threads
    beside the other workers' on 2 cores, and slow down several times (a 7 s sampler test took 61 s)."""
    torch = sys.modules.get("torch")
    before = torch.get_num_threads() if torch else None
    yield
    torch = sys.modules.get("torch")
    wanted = int(os.environ.get("OMP_NUM_THREADS") or 0) or before
    if torch is not None and wanted and torch.get_num_threads() != wanted:
        torch.set_num_threads(wanted)


@pytest.fixture
def one_torch_thread():
    """For tests of tiny models: one intra-op thread avoids OpenMP oversubscription stalls on a busy 2-core machine
    (results do not depend on it). Use with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def shared_ray():
    """One embedded Ray for a module's in-process runs, which use a Ray already up as is (its start and shutdown
    cost about 7 s a run here). Not for tests of a run's own Ray (its resources, start, signals) or of workers
    that need an environment set after it started. Use with ``pytest.mark.usefixtures("shared_ray")``."""
    from facefoundry.local_ray import ray_session
    from facefoundry.sections import RayConfig

    with ray_session(RayConfig(num_cpus=2)):
        yield


@pytest.fixture
def smoke_config_path() -> Path:
    return REPO / "configs" / "smoke.yaml"


@pytest.fixture(scope="session")
def s3_endpoint(s3) -> str:
    """``127.0.0.1:PORT`` of the session's loopback S3 server."""
    return s3.endpoint


@pytest.fixture(scope="session")
def s3():
    """A loopback S3 server (moto) shared by the session's tests, with its request log; see tests/helpers/s3server.py.

    Teardown closes this process's S3 clients before the server stops, and the server waits for its request
    threads. Otherwise pyarrow's own atexit hook (``finalize_s3``) closes the clients' keep-alive connections at
    interpreter exit, waking daemon request threads that then run Python code while the interpreter is being torn
    down (seen at session end: 11 ``process_request_thread`` threads plus ``AwsEventLoop1`` alive).
    """
    from s3server import CREDENTIALS, s3_server

    for key, value in CREDENTIALS.items():
        os.environ.setdefault(key, value)  # before any Ray starts: workers inherit them
    with s3_server() as server:
        yield server
        import pyarrow.fs

        pyarrow.fs.finalize_s3()  # the session is over: no test uses S3 after this; idempotent at exit
