"""Start and stop Ray: an embedded instance on loopback by default, or a connection to a cluster."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator

from facefoundry.config import RayConfig
from facefoundry.termination import keep_sigterm_handler

# An embedded Ray must listen on loopback only and must not need an auth token. Its workers start at
# the priority of Ray's own processes rather than Ray's default nice 15, so the generator is not
# preempted by every wake-up of those. (Not lower for the filter and writer: on a busy machine they
# would starve, and finished images would wait uncommitted.)
LOCAL_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled", "RAY_worker_niceness": "0"}
# Ray's own progress bars and per-operator logs are replaced by facefoundry's progress line.
QUIET_ENV = {"RAY_DATA_DISABLE_PROGRESS_BARS": "1"}


@contextlib.contextmanager
def ray_session(cfg: RayConfig) -> Iterator[None]:
    """Connect to ``cfg.address`` or start an embedded Ray with its own short temp dir."""
    for key, value in {**LOCAL_ENV, **QUIET_ENV}.items():
        os.environ.setdefault(key, value)
    import ray

    if ray.is_initialized():
        yield
        return
    temp_dir = None
    with keep_sigterm_handler():  # Ray's native SIGTERM handler would print a C++ stack
        if cfg.address:
            ray.init(address=cfg.address, log_to_driver=False, logging_level="ERROR")
        else:
            # Unix socket paths are limited to ~107 bytes: keep the temp dir short.
            temp_dir = tempfile.mkdtemp(prefix="ffray-", dir="/tmp")
            ray.init(
                num_cpus=cfg.num_cpus or os.cpu_count(),
                num_gpus=cfg.num_gpus,
                include_dashboard=False,
                _node_ip_address="127.0.0.1",
                _temp_dir=temp_dir,
                log_to_driver=False,
                logging_level="ERROR",
            )
    try:
        yield
    finally:
        ray.shutdown()
        if temp_dir:
            shutil.rmtree(temp_dir, ignore_errors=True)
