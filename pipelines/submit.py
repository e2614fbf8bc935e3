"""``facefoundry submit``: run a config on an existing Ray cluster through the Ray Jobs API.

What a submission ships:
- this exact code: a wheel built on the fly from the source tree (cached by a hash of its content), unpacked,
  and its ``facefoundry`` package sent in ``runtime_env["py_modules"]``. The package directory is shipped, not
  the ``.whl`` itself: Ray installs a ``.whl`` with ``pip install --target`` and no ``--no-deps``, which would
  try to download every dependency (torch included) into each job; the cluster's Python already has them.
- the resolved config (every default filled in, ``ray.address: auto``) as ``facefoundry-run.json`` in the
  ``working_dir``, so the cluster runs exactly what was validated here.

Idempotency: the job's ``submission_id`` is the run id. Ray refuses a repeated submission id, so:
- a job for the run that is pending, running or succeeded is attached to (nothing new is submitted);
- after a failed or stopped job, a resubmit starts ``<run_id>-retry<N>`` (N = 1, 2, ...), which resumes the run
  in the same output folder (finished units are kept).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from facefoundry import __version__
from facefoundry.config import RunConfig, load_config
from facefoundry.dataset.storage import is_remote
from facefoundry.runfolder.runinfo import run_id as compute_run_id

CONFIG_NAME = "facefoundry-run.json"
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
# The job's driver: the shipped package comes first on PYTHONPATH; print where it was imported from.
ENTRYPOINT = (
    "python -c 'import facefoundry, facefoundry.cli as c; "
    'print(f"facefoundry {facefoundry.__version__} from {facefoundry.__file__}", flush=True); c.app()\''
)
JOB_ENV = {"PYTHONUNBUFFERED": "1", "RAY_DATA_DISABLE_PROGRESS_BARS": "1"}


class SubmitError(RuntimeError):
    """A one-line, user-facing failure of submit / status / stop."""


@dataclass
class JobState:
    run_id: str
    submission_id: str
    status: str
    message: str
    out: str | None = None
    attempts: int = 1


@dataclass
class SubmitResult(JobState):
    attached: bool = False  # True: an existing job of this run was found and nothing new was submitted
    address: str = ""


# ---------------------------------------------------------------- code shipping


def repo_root() -> Path | None:
    """The source tree this package was (editable-)installed from, or None for a plain install."""
    root = Path(__file__).resolve().parents[1]
    pyproject = root / "pyproject.toml"
    if not pyproject.is_file():
        return None
    try:
        project = tomllib.loads(pyproject.read_text()).get("project", {})
    except tomllib.TOMLDecodeError:
        return None
    return root if project.get("name") == "facefoundry" else None


def _source_files(root: Path) -> Iterator[Path]:
    meta = tomllib.loads((root / "pyproject.toml").read_text())
    dirs = sorted(set(meta.get("tool", {}).get("setuptools", {}).get("package-dir", {"facefoundry": "facefoundry"})
                      .values()))
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        if (root / name).is_file():
            yield root / name
    for d in dirs:
        for path in sorted((root / d).rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts and path.suffix not in (".pyc", ".pyo"):
                yield path


def source_hash(root: Path) -> str:
    digest = hashlib.sha256()
    for path in _source_files(root):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def default_cache() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "facefoundry" / "wheels"


def build_wheel(dest: Path | None = None) -> Path:
    """Build this package's wheel from the repo into ``dest/<source hash>/``; reused while the source is unchanged.

    The sources are copied to a scratch folder first, so the build leaves nothing in the repo and a
    concurrent edit cannot mix into a half-built wheel under the wrong hash."""
    root = repo_root()
    if root is None:
        raise SubmitError("no facefoundry source tree next to the installed package: cannot build a wheel")
    key = source_hash(root)
    target = Path(dest or default_cache()) / key
    wheels = sorted(target.glob("facefoundry-*.whl"))
    if wheels:
        return wheels[0]
    with tempfile.TemporaryDirectory(prefix="ffwheel-") as tmp:
        src = Path(tmp) / "src"
        for path in _source_files(root):
            copy = src / path.relative_to(root)
            copy.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, copy)
        built = Path(tmp) / "wheel"
        cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(built),
               str(src)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SubmitError(f"wheel build failed: {(proc.stderr or proc.stdout).strip().splitlines()[-1:]}")
        wheel = next(built.glob("facefoundry-*.whl"))
        target.mkdir(parents=True, exist_ok=True)
        partial = target / (wheel.name + ".partial")
        shutil.copy2(wheel, partial)
        os.replace(partial, target / wheel.name)
    return target / wheel.name


def shipped_package(dest: Path | None = None) -> Path:
    """The ``facefoundry`` package directory to ship in ``py_modules``: the wheel's, unpacked and cached."""
    if repo_root() is None:  # a regular (wheel) install: the installed package is already the full tree
        return Path(__file__).resolve().parents[1]
    wheel = build_wheel(dest)
    unpacked = wheel.parent / "site"
    if not (unpacked / "facefoundry" / "__init__.py").is_file():
        scratch = Path(tempfile.mkdtemp(prefix="site-", dir=wheel.parent))
        with zipfile.ZipFile(wheel) as zf:
            zf.extractall(scratch)
        shutil.rmtree(unpacked, ignore_errors=True)
        os.replace(scratch, unpacked)
    return unpacked / "facefoundry"


# ---------------------------------------------------------------- Jobs API


def _token(token: str | None) -> str | None:
    return token or os.environ.get("RAY_AUTH_TOKEN") or None


def client(address: str, token: str | None = None):
    """A ``JobSubmissionClient`` for the dashboard at ``address`` (``http://HEAD:8265``); one-line errors."""
    from ray.job_submission import JobSubmissionClient

    if "://" not in address:
        address = f"http://{address}"
    token = _token(token)
    headers = {"Authorization": f"Bearer {token}"} if token else None
    try:
        return JobSubmissionClient(address, headers=headers)
    except ConnectionError as exc:
        raise SubmitError(
            f"cannot reach the Ray Jobs API at {address} ({type(exc).__name__}); "
            f"is the cluster up and is this its dashboard address (http://HEAD:8265)?"
        ) from None
    except Exception as exc:  # e.g. 401/403 from a cluster with token authentication
        auth = re.search(r"\b40[13]\b|Authentication", str(exc))
        hint = "; set RAY_AUTH_TOKEN to the cluster's token" if auth else ""
        raise SubmitError(f"Ray Jobs API at {address}: {_first_line(exc)}{hint}") from None


def _call(fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except SubmitError:
        raise
    except Exception as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        text = lines[0] if lines else type(exc).__name__
        raise SubmitError(f"Ray Jobs API: {text}") from None


def _attempt_number(submission_id: str, rid: str) -> int | None:
    if submission_id == rid:
        return 0
    m = re.fullmatch(re.escape(rid) + r"-retry(\d+)", submission_id)
    return int(m.group(1)) if m else None


def attempts(job_client, rid: str) -> list:
    """The jobs of run ``rid`` on the cluster (``rid``, ``rid-retry1``, ...), oldest first."""
    found = []
    for job in _call(job_client.list_jobs):
        n = _attempt_number(job.submission_id or "", rid)
        if n is not None:
            found.append((n, job))
    return [job for _, job in sorted(found, key=lambda item: item[0])]


def _state(rid: str, job, count: int) -> JobState:
    status = getattr(job.status, "value", str(job.status))
    return JobState(rid, job.submission_id, status, job.message or "", (job.metadata or {}).get("facefoundry_out"),
                    count)


def _check_out(out: str) -> str:
    if is_remote(out):  # every node writes its shards straight to the store (credentials: see docs/cluster.md)
        return out
    if not Path(out).is_absolute():
        raise SubmitError(f"--out {out}: must be an absolute path on a filesystem every node of the cluster "
                          f"can reach (a relative path would land in the job's temporary working dir)")
    return os.path.normpath(out)


def resolve(config_path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """The config exactly as the cluster will run it: the job's driver connects to its own cluster."""
    return load_config(config_path, [*(overrides or []), "ray.address=auto"])


def submit(
    config_path: str | Path,
    out: str | Path,
    address: str,
    overrides: list[str] | None = None,
    follow: bool = False,
    token: str | None = None,
    cache_dir: Path | None = None,
    log: TextIO | None = None,
) -> SubmitResult:
    """Submit ``config_path`` (+ ``overrides``) as job ``<run id>``, or attach to the run's live/finished job.

    Raises ``ConfigError`` (invalid config, as ``facefoundry run``) or ``SubmitError``."""
    log = log or sys.stderr
    cfg = resolve(config_path, overrides)
    rid = compute_run_id(cfg)
    out = _check_out(str(out))
    jc = client(address, token)
    previous = attempts(jc, rid)
    if previous:
        latest = _state(rid, previous[-1], len(previous))
        if latest.status not in ("FAILED", "STOPPED"):
            if latest.out and latest.out != out:
                raise SubmitError(f"run {rid} already has job {latest.submission_id} ({latest.status}) writing to "
                                  f"{latest.out}; use that output, or change run.name for a separate run")
            return _finish(jc, latest, True, address, follow, log)
        submission_id = f"{rid}-retry{len(previous)}"
    else:
        submission_id = rid
    package = shipped_package(cache_dir)
    with tempfile.TemporaryDirectory(prefix="ffjob-") as workdir:
        text = json.dumps(cfg.model_dump(mode="json"), indent=2, sort_keys=True) + "\n"
        (Path(workdir) / CONFIG_NAME).write_text(text)
        if compute_run_id(load_config(Path(workdir) / CONFIG_NAME)) != rid:  # the shipped file must be this run
            raise SubmitError("resolved config does not round-trip to the same run id")
        entrypoint = f"{ENTRYPOINT} run {CONFIG_NAME} --out {shlex.quote(out)}"
        runtime_env = {"working_dir": workdir, "py_modules": [str(package)], "env_vars": dict(JOB_ENV)}
        metadata = {"facefoundry_run_id": rid, "facefoundry_out": out, "facefoundry_version": __version__,
                    "facefoundry_code": package.parent.parent.name if repo_root() else "installed"}
        try:
            jc.submit_job(entrypoint=entrypoint, runtime_env=runtime_env, submission_id=submission_id,
                          metadata=metadata)
        except Exception as exc:
            # Lost a race with a concurrent submit of the same run: attach to the winner.
            try:
                job = jc.get_job_info(submission_id)
            except Exception:
                raise SubmitError(f"submitting {submission_id} failed: {_first_line(exc)}") from None
            return _finish(jc, _state(rid, job, len(previous) + 1), True, address, follow, log)
    state = JobState(rid, submission_id, "PENDING", "", out, len(previous) + 1)
    return _finish(jc, state, False, address, follow, log)


def _first_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return lines[0] if lines else type(exc).__name__


def _finish(jc, state: JobState, attached: bool, address: str, follow: bool, log: TextIO) -> SubmitResult:
    if follow:
        state = follow_job(jc, state, log)
    return SubmitResult(**vars(state), attached=attached, address=address)


def follow_job(jc, state: JobState, log: TextIO) -> JobState:
    """Stream the job's logs to ``log`` until it reaches a terminal state; return that state."""
    sid = state.submission_id

    async def tail() -> None:
        async for chunk in jc.tail_job_logs(sid):
            log.write(chunk)
            log.flush()

    if state.status in TERMINAL:
        log.write(_call(jc.get_job_logs, sid))
    else:
        try:
            asyncio.run(tail())
        except Exception:  # the log stream dropped: fall back to polling the status
            pass
    while True:
        job = _call(jc.get_job_info, sid)
        current = _state(state.run_id, job, state.attempts)
        if current.status in TERMINAL:
            return current
        time.sleep(1.0)


def _target(jc, rid: str):
    """The latest job of run ``rid``; ``rid`` may also be an exact submission id (e.g. ``<run>-retry1``)."""
    found = attempts(jc, rid)
    if found:
        return rid, found[-1], len(found)
    for job in _call(jc.list_jobs):
        if job.submission_id == rid:
            return rid, job, 1
    raise SubmitError(f"no job for run {rid} on this cluster")


def status(address: str, rid: str, token: str | None = None) -> JobState:
    """The state of the latest job of run ``rid``."""
    jc = client(address, token)
    rid, job, count = _target(jc, rid)
    return _state(rid, job, count)


def stop(address: str, rid: str, token: str | None = None) -> tuple[JobState, bool]:
    """Ask the latest job of run ``rid`` to stop; returns its state and whether a stop was sent.

    The output folder keeps every finished unit: a later submit of the same config resumes it."""
    jc = client(address, token)
    rid, job, count = _target(jc, rid)
    state = _state(rid, job, count)
    if state.status in TERMINAL:
        return state, False
    _call(jc.stop_job, state.submission_id)
    return _state(rid, _call(jc.get_job_info, state.submission_id), count), True
