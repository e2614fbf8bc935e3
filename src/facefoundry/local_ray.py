"""Start and stop Ray: an embedded instance on loopback by default, or a connection to a cluster."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator

from facefoundry.sections import RayConfig
from facefoundry.termination import keep_sigterm_handler

# An embedded Ray must listen on loopback only, must not need an auth token and sends no usage statistics
# (Ray's default reports them to its maintainers over the network). Its workers start at
# the priority of Ray's own processes rather than Ray's default nice 15, so the generator is not
# preempted by every wake-up of those. (Not lower for the filter and writer: on a busy machine they
# would starve, and finished images would wait uncommitted.) A user's environment overrides each.
LOCAL_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled", "RAY_worker_niceness": "0",
             "RAY_USAGE_STATS_ENABLED": "0"}
# Ray's own progress bars and per-operator logs are replaced by facefoundry's progress line.
QUIET_ENV = {"RAY_DATA_DISABLE_PROGRESS_BARS": "1"}


class RayStartError(RuntimeError):
    """The embedded Ray did not come up."""


# Ray gives its raylet a fixed time to register with the GCS (ray/_private/node.py) and then raises a bare
# Exception with this text. On a busy machine the start is tried again, after the half-started daemons of the failed
# try are killed (they are this process's children; Ray does not stop them), at most this many times in all.
RAY_NODE_START_WAIT_S = 30
START_ATTEMPTS = 3
_NODE_START_TIMEOUT = "timed out during startup"


def _children() -> set[int]:
    import psutil

    return {p.pid for p in psutil.Process().children(recursive=True)}


def _kill_new_children(before: set[int]) -> None:
    """Kill this process's children that were not there before (a failed start's GCS, raylet and agents)."""
    import psutil

    new = [p for p in psutil.Process().children(recursive=True) if p.pid not in before]
    for proc in new:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    psutil.wait_procs(new, timeout=30)


def _init(cfg: RayConfig, temp_dir: str | None) -> None:
    import ray

    if cfg.address:
        ray.init(address=cfg.address, log_to_driver=False, logging_level="ERROR")
        return
    for attempt in range(1, START_ATTEMPTS + 1):
        before = _children()
        try:
            ray.init(
                num_cpus=cfg.num_cpus or os.cpu_count(),
                num_gpus=cfg.num_gpus,
                include_dashboard=False,
                _node_ip_address="127.0.0.1",
                _temp_dir=temp_dir,  # Unix socket paths are limited to ~107 bytes: keep it short
                log_to_driver=False,
                logging_level="ERROR",
            )
            return
        except Exception as exc:
            if _NODE_START_TIMEOUT not in str(exc):
                raise
            _kill_new_children(before)
            if attempt == START_ATTEMPTS:
                raise RayStartError(
                    f"the embedded Ray's node did not start within Ray's {RAY_NODE_START_WAIT_S} s, {START_ATTEMPTS} "
                    f"times: the machine is too busy ({os.cpu_count()} cores; `uptime` shows the load). Let other "
                    "work finish, or set a smaller ray.num_cpus, then rerun the same command: it resumes") from exc
            sys.stderr.write(f"the embedded Ray's node did not start within Ray's {RAY_NODE_START_WAIT_S} s (a busy "
                             f"machine): starting it again ({attempt + 1} of {START_ATTEMPTS})\n")


class _Starting:
    """``ray.init`` running in a thread; :meth:`wait` joins the start (in the main thread) and re-raises its
    error, :meth:`shutdown` stops Ray and lets the thread go.

    The thread outlives the start: Ray's daemons (GCS, raylet) are spawned with ``PR_SET_PDEATHSIG``, which
    kills them when the *thread* that spawned them exits, so it waits until the session ends."""

    def __init__(self, cfg: RayConfig, temp_dir: str | None):
        self._error: BaseException | None = None
        self._up, self._ended = threading.Event(), threading.Event()
        self._restore = contextlib.ExitStack()
        # Ray's core worker installs a native SIGTERM handler while it starts; the main thread puts the
        # previous one back once the start is over (``wait``), as the foreground start does.
        self._restore.enter_context(keep_sigterm_handler())
        self._thread = threading.Thread(target=self._start, args=(cfg, temp_dir), name="ray-start", daemon=True)
        self._thread.start()

    def _start(self, cfg: RayConfig, temp_dir: str | None) -> None:
        # Started from a thread, ray.init leaves Python's signal handlers alone and warns that it does so.
        logging.getLogger("ray._private.worker").addFilter(_no_sigterm_warning)
        try:
            _init(cfg, temp_dir)
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread by wait()
            self._error = exc
        finally:
            self._up.set()
        self._ended.wait()

    def wait(self) -> None:
        self._up.wait()
        self._restore.close()
        if self._error is not None:
            raise self._error

    def shutdown(self) -> None:
        """Shut Ray down once its start is over, then let the thread go."""
        with contextlib.suppress(BaseException):  # the block failed first: its error is the one to see
            self.wait()
        import ray

        _let_ray_data_stop()
        ray.shutdown()
        self._ended.set()
        self._thread.join()


# Ray Data runs each dataset's execution in a thread of this name; at the end of an execution it waits for that thread
# only 2 s. On a busy machine the thread may still be stopping its operators (actor calls) when the session shuts Ray
# down, and a call into Ray's core worker after ``ray.shutdown`` ends the process at once ("The core worker has
# already been shutdown ... The process will exit": a finished run or job then exits 1).
RAY_DATA_THREAD_PREFIX = "StreamingExecutor-"
RAY_DATA_STOP_WAIT_S = 120.0


def _let_ray_data_stop(timeout: float = RAY_DATA_STOP_WAIT_S) -> None:
    """Wait (at most ``timeout`` in all) for Ray Data's execution threads to end before Ray is shut down."""
    deadline = time.monotonic() + timeout
    for thread in threading.enumerate():
        if thread.name.startswith(RAY_DATA_THREAD_PREFIX) and thread is not threading.current_thread():
            thread.join(max(0.0, deadline - time.monotonic()))


def _no_sigterm_warning(record: logging.LogRecord) -> bool:
    return "SIGTERM handler is not set" not in record.getMessage()


@contextlib.contextmanager
def ray_session(cfg: RayConfig, background: bool = False) -> Iterator[Callable[[], None]]:
    """Connect to ``cfg.address`` or start an embedded Ray with its own short temp dir; shut it down after.

    Yields ``ready``: a call that returns once Ray is up. With ``background`` Ray starts in a thread while
    the block goes on (the driver samples identities meanwhile) and ``ready`` waits for it, raising what
    the start raised; otherwise Ray is up before the block starts. An already running Ray is used as is."""
    for key, value in {**LOCAL_ENV, **QUIET_ENV}.items():
        os.environ.setdefault(key, value)
    import ray

    if ray.is_initialized():
        yield lambda: None
        return
    temp_dir = None if cfg.address else tempfile.mkdtemp(prefix="ffray-", dir="/tmp")
    try:
        if background:
            starting = _Starting(cfg, temp_dir)
            ready = starting.wait
        else:
            with keep_sigterm_handler():  # Ray's native SIGTERM handler would print a C++ stack
                _init(cfg, temp_dir)
            ready = lambda: None  # noqa: E731
        try:
            yield ready
        finally:
            if background:
                starting.shutdown()
            else:
                _let_ray_data_stop()
                ray.shutdown()
    finally:
        if temp_dir:
            shutil.rmtree(temp_dir, ignore_errors=True)
