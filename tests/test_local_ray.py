"""The embedded Ray started in the background (``ray_session(background=True)``), as ``facefoundry run`` starts
it while the driver samples identities: it must stay up after its start thread is done, give the main thread
back its SIGTERM handler, and stop (temp dir and thread included) when the block fails."""

from __future__ import annotations

import os
import signal
import tempfile
import threading
import time

import pytest

from facefoundry import local_ray
from facefoundry.local_ray import ray_session
from facefoundry.sections import RayConfig

pytestmark = pytest.mark.ray  # the module's tests start or share a Ray


@pytest.fixture
def temp_dirs(monkeypatch) -> list[str]:
    """The temp dirs the sessions create (other Rays on the machine have their own)."""
    made, mkdtemp = [], tempfile.mkdtemp

    def recording(*args, **kwargs):
        made.append(mkdtemp(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(local_ray.tempfile, "mkdtemp", recording)
    return made


def _start_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "ray-start"]


def test_a_background_ray_outlives_its_start_and_serves_tasks(temp_dirs):
    import ray

    handler = signal.getsignal(signal.SIGTERM)
    with ray_session(RayConfig(num_cpus=1), background=True) as ready:
        ready()
        assert signal.getsignal(signal.SIGTERM) is handler  # Ray's native handler is not left installed
        time.sleep(1)  # Ray's daemons die with the thread that spawned them: that thread must still be alive
        assert ray.get(ray.remote(lambda x: x + 1).remote(41), timeout=120) == 42
        assert len(_start_threads()) == 1
        # what its processes inherit: no usage statistics leave the machine
        assert ray.get(ray.remote(lambda: os.environ.get("RAY_USAGE_STATS_ENABLED")).remote(), timeout=120) == "0"
    assert not ray.is_initialized() and not _start_threads()
    assert len(temp_dirs) == 1 and not os.path.exists(temp_dirs[0])  # its temp dir is gone


def test_a_failing_block_stops_the_starting_ray_and_keeps_its_own_error(temp_dirs):
    import ray

    with pytest.raises(ValueError, match="sampling failed"):
        with ray_session(RayConfig(num_cpus=1), background=True):
            raise ValueError("sampling failed")  # before Ray is up: the session waits for it, then shuts it down
    assert not ray.is_initialized() and not _start_threads()
    assert len(temp_dirs) == 1 and not os.path.exists(temp_dirs[0])


@pytest.mark.parametrize("background", [False, True])
def test_ray_node_start_timeout_is_tried_again_then_one_clear_line_and_other_errors_pass(monkeypatch, background,
                                                                                          capsys):
    """Ray's own start-up timeout (a bare Exception, seen on an overloaded 2-core machine) is tried again, then
    becomes advice."""
    import ray

    from facefoundry.errors import error_line

    tries = []

    def timed_out(**kwargs):
        tries.append(kwargs)
        raise Exception("The current node timed out during startup. This could happen because some of the raylet "
                        "failed to startup or the GCS has become overloaded.")

    monkeypatch.setattr(ray, "init", timed_out)
    with pytest.raises(local_ray.RayStartError) as err, ray_session(RayConfig(num_cpus=1), background) as ready:
        ready()
    line = error_line(err.value)
    assert "\n" not in line and "did not start within Ray's 30 s, 3 times" in line and "rerun the same command" in line
    assert len(tries) == local_ray.START_ATTEMPTS == 3
    assert capsys.readouterr().err.count("starting it again") == 2

    monkeypatch.setattr(ray, "init", lambda **kwargs: (_ for _ in ()).throw(OSError("no space left on device")))
    with pytest.raises(OSError, match="no space left"), ray_session(RayConfig(num_cpus=1), background) as ready:
        ready()



def test_a_node_that_missed_rays_start_wait_is_started_again_and_serves_tasks(monkeypatch, temp_dirs, capsys):
    """The real start path: the first try's raylet never registers (Ray's wait made to run out at once); its
    half-started daemons are killed and the second try comes up and serves tasks."""
    import types

    import psutil
    import ray
    import ray._private.node as node_module
    import ray._private.services as services

    first_try, real_get_node, real_time = [True], services.get_node, node_module.time
    spawned: list[int] = []

    def get_node(*args, **kwargs):
        if first_try[0]:
            spawned.extend(p.pid for p in psutil.Process().children(recursive=True))
            raise RuntimeError("node info not available yet")
        return real_get_node(*args, **kwargs)

    def ticking() -> float:  # during the first try every reading is 100 s later: Ray's 30 s wait runs out
        ticking.calls += 1
        return real_time.monotonic() + (100 * ticking.calls if first_try[0] else 0)

    ticking.calls = 0
    kill = local_ray._kill_new_children

    def kill_then_let_start(before):
        kill(before)
        first_try[0] = False

    monkeypatch.setattr(services, "get_node", get_node)
    monkeypatch.setattr(node_module, "time", types.SimpleNamespace(sleep=real_time.sleep, monotonic=ticking))
    monkeypatch.setattr(local_ray, "_kill_new_children", kill_then_let_start)
    with ray_session(RayConfig(num_cpus=1)) as ready:
        ready()
        assert ray.get(ray.remote(lambda x: x * 2).remote(21), timeout=120) == 42
        alive = {p.pid for p in psutil.Process().children(recursive=True)}
        assert spawned and not alive & set(spawned)  # the first try's GCS and raylet are gone
    assert "starting it again (2 of 3)" in capsys.readouterr().err
    assert not ray.is_initialized()


@pytest.mark.parametrize("background", [False, True])
def test_ray_is_shut_down_only_after_ray_datas_execution_threads_end(monkeypatch, background):
    """Ray Data waits 2 s for its execution thread; a session must not shut Ray down under a thread still stopping
    its operators (a core-worker call after shutdown ends the process: a finished job exited 1 once)."""
    import ray

    stopping = threading.Event()

    def executor_winding_down():
        stopping.wait(10)
        time.sleep(1.5)

    shutdown, seen = ray.shutdown, []

    def checked_shutdown(*args, **kwargs):
        seen.append([t.name for t in threading.enumerate() if t.name.startswith("StreamingExecutor-")])
        return shutdown(*args, **kwargs)

    monkeypatch.setattr(ray, "shutdown", checked_shutdown)
    with ray_session(RayConfig(num_cpus=1), background=background) as ready:
        ready()
        threading.Thread(target=executor_winding_down, name="StreamingExecutor-test", daemon=True).start()
        stopping.set()
    assert seen and seen[0] == []  # the thread had ended when Ray was shut down
