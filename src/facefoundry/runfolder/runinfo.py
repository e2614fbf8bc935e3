"""The run record ``run.json``: resolved config, its hash and the run id.

Rerunning the same config into the same folder resumes it; a different config into a folder that
already holds a run (or anything else) is refused unless the caller asks for a fresh start, which deletes the
previous run's entries (:data:`~facefoundry.layout.RUN_ENTRIES`), saying which, but refuses to delete ``eval/``
(evaluation results, such as a trained backbone) unless asked to as well.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from facefoundry import __version__
from facefoundry.config import RunConfig, validate_config
from facefoundry.dataset.storage import RunStore, open_store
from facefoundry.layout import CARD_FILE, EVAL_DIR, IDENTITIES_FILE, REMOVALS_FILE, RUN_ENTRIES, RUN_FILE
from facefoundry.sections import apply_overrides


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


def read_record(out: str | Path | RunStore) -> dict:
    """The parsed ``run.json`` of the run in ``out`` (a folder or a remote URI)."""
    store = open_store(out)
    raw = store.read_bytes(RUN_FILE)
    if raw is None:
        raise RunFolderError(f"{store} is not a facefoundry run folder ({RUN_FILE} missing)")
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RunFolderError(f"{store.name(RUN_FILE)} is corrupt: {exc}") from None


def read_run(out: str | Path | RunStore) -> RunConfig:
    """The config of the run stored in ``out``."""
    store = open_store(out)
    return validate_config(read_record(store).get("config"), store.name(RUN_FILE))


def stored_config(out: str | Path | RunStore, overrides: list[str] | None = None) -> RunConfig:
    """The config recorded in ``out``'s ``run.json``, with ``--set`` overrides applied (e.g. ``ray.*``)."""
    store = open_store(out)
    data = read_record(store).get("config")
    if not isinstance(data, dict):
        raise RunFolderError(f"{store.name(RUN_FILE)} holds no config")
    return validate_config(apply_overrides(data, overrides or []), store.name(RUN_FILE))


def discard_previous_run(store: RunStore, fresh_eval: bool = False,
                         notify: Callable[[str], None] | None = None) -> list[str]:
    """``--fresh``: delete the previous run's entries in ``store`` and return their names.

    ``notify`` gets one line naming them (``orphans/`` included) before they go. ``eval/`` is deleted only with
    ``fresh_eval``; without it, :class:`RunFolderError` is raised before anything is deleted."""
    entries = store.entries()
    present = [name for name in RUN_ENTRIES if name in entries]
    if EVAL_DIR in present and not fresh_eval:
        raise RunFolderError(f"--fresh would delete {store.name(EVAL_DIR)} (evaluation results, such as a trained "
                             f"backbone); move it out of {store} first, or add --fresh-eval to delete it too")
    shown = [name if name in (RUN_FILE, IDENTITIES_FILE, CARD_FILE, REMOVALS_FILE) else f"{name}/" for name in present]
    if present and notify is not None:
        notify(f"--fresh: deleting the previous run's {', '.join(shown)} in {store}")
    for name in present:
        store.delete(name)
    return present


def prepare_run_folder(out: str | Path | RunStore, cfg: RunConfig, fresh: bool = False, fresh_eval: bool = False,
                       notify: Callable[[str], None] | None = None) -> bool:
    """Make ``out`` ready for ``cfg``; return True when resuming an existing run of this config.

    ``fresh`` first deletes the previous run (:func:`discard_previous_run`, with ``fresh_eval`` and ``notify``).
    A new run is refused before anything is written when its identities cannot be sampled within the
    candidate budget (:func:`facefoundry.identities.budget.check_feasible`)."""
    store = open_store(out)
    if fresh:
        discard_previous_run(store, fresh_eval, notify)
    elif fresh_eval:
        raise RunFolderError("--fresh-eval only goes with --fresh (it lets --fresh delete eval/ too)")
    if store.read_bytes(RUN_FILE) is not None:
        stored = read_run(store)
        if stored.config_hash() != cfg.config_hash():
            raise RunFolderError(
                f"{store} holds run {run_id(stored)} with a different config; use another --out, "
                f"or --fresh to discard it"
            )
        return True
    if store.entries() & set(RUN_ENTRIES):
        raise RunFolderError(f"{store} holds run files but no {RUN_FILE}; use another --out, or --fresh")
    from facefoundry.identities.budget import check_feasible

    check_feasible(cfg.identities)  # before the first file: a sampling that cannot finish is refused here
    store.put_bytes(RUN_FILE, (json.dumps(run_record(cfg), indent=2, sort_keys=True) + "\n").encode())
    return False
