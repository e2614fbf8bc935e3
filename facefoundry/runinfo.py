"""The run record ``run.json``: resolved config, its hash and the run id.

Rerunning the same config into the same folder resumes it; a different config into a folder that
already holds a run (or anything else) is refused unless the caller asks for a fresh start.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from facefoundry import __version__
from facefoundry.config import RunConfig, validate_config
from facefoundry.dataset.atomic import atomic_write_bytes

RUN_FILE = "run.json"
# Everything a run writes into its folder; --fresh removes exactly these and nothing else.
RUN_ENTRIES = (RUN_FILE, "identities.parquet", "data", "manifests", "models", "report", "README.md", "logs")


class RunFolderError(RuntimeError):
    """The output folder cannot take this run."""


def run_id(cfg: RunConfig) -> str:
    return f"{cfg.run.name}-{cfg.config_hash()}"


def run_record(cfg: RunConfig) -> dict:
    return {
        "run_id": run_id(cfg),
        "config_hash": cfg.config_hash(),
        "facefoundry_version": __version__,
        "config": cfg.model_dump(mode="json"),
    }


def read_record(out: Path) -> dict:
    """The parsed ``run.json`` of the run in ``out``."""
    path = Path(out) / RUN_FILE
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise RunFolderError(f"{out} is not a facefoundry run ({RUN_FILE} missing)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RunFolderError(f"{path} is corrupt: {exc}") from None


def read_run(out: Path) -> RunConfig:
    """The config of the run stored in ``out``."""
    return validate_config(read_record(out).get("config"), str(Path(out) / RUN_FILE))


def prepare_run_folder(out: Path, cfg: RunConfig, fresh: bool = False) -> bool:
    """Make ``out`` ready for ``cfg``; return True when resuming an existing run of this config."""
    path = out / RUN_FILE
    if fresh:
        for name in RUN_ENTRIES:
            target = out / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
    if path.exists():
        stored = read_run(out)
        if stored.config_hash() != cfg.config_hash():
            raise RunFolderError(
                f"{out} holds run {run_id(stored)} with a different config; use another --out, "
                f"or --fresh to discard it"
            )
        return True
    if out.exists() and any(p.name in RUN_ENTRIES for p in out.iterdir()):
        raise RunFolderError(f"{out} holds run files but no {RUN_FILE}; use another --out, or --fresh")
    text = json.dumps(run_record(cfg), indent=2, sort_keys=True) + "\n"
    atomic_write_bytes(path, text.encode())
    return False
