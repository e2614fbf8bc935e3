"""Train then verify: an FR model trained on a run (Ray Train), verified on the standard benchmark files.

``RUN/eval/<name>.json`` (``name`` = the recipe's ``evaluate.name``) holds the recipe, the training summary
and, when benchmark files were given, the per-set 10-fold accuracies with their average in the papers'
column order, and per-group accuracies where the benchmarks hold groups (:mod:`facefoundry.evaluate.groups`).
:func:`read_results`, :func:`results_table_markdown` and :func:`groups_table_markdown` feed the report and the card.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

from facefoundry.dataset.atomic import atomic_write_bytes
from facefoundry.evaluate.benchmarks import STANDARD_SETS, BenchmarkError, check_benchmarks, paper_order
from facefoundry.evaluate.config import EvaluateConfig
from facefoundry.evaluate.intrinsic_run import INTRINSIC_FILE
from facefoundry.layout import EVAL_DIR

RESULT_KIND = "train_verify"


def result_path(run_dir: str | Path, name: str) -> Path:
    return Path(run_dir) / EVAL_DIR / f"{name}.json"


def train_and_verify(run_dir: str | Path, cfg: EvaluateConfig, benchmarks: str | Path | None = None,
                     address: str | None = None, progress: Callable[[str], None] = print) -> dict:
    """Train ``cfg`` on ``run_dir`` (resuming a killed training), then verify on ``benchmarks`` (a folder of
    ``*.bin`` files) when given; write and return ``RUN/eval/<name>.json``.

    Ray: ``address`` connects to a cluster; without it an embedded Ray runs on this machine."""
    from facefoundry.evaluate.train import finished_training, train_on_run
    from facefoundry.local_ray import ray_session
    from facefoundry.sections import RayConfig

    run_dir = Path(run_dir)
    if benchmarks is not None:  # before training: a bad folder must not cost the training first
        for name, error in check_benchmarks(benchmarks).items():
            progress(f"benchmark {name} will be skipped: {error}")
    trained = finished_training(run_dir, cfg, progress)  # a finished training needs no Ray
    if trained is None:
        with ray_session(RayConfig(address=address)):
            trained = train_on_run(run_dir, cfg, progress)
    result: dict = {"kind": RESULT_KIND, "name": cfg.name, "recipe": cfg.model_dump(mode="json"),
                    "config_hash": cfg.config_hash(), "training": trained.summary, "benchmarks": None}
    if benchmarks is not None:
        from facefoundry.evaluate.verification import evaluate_benchmarks

        device = "cuda" if cfg.use_gpu else "cpu"
        progress(f"verifying {cfg.name} on the benchmarks in {benchmarks}")
        result["benchmarks"] = evaluate_benchmarks(trained.embedder(device), benchmarks,
                                                   progress=_benchmark_progress(progress))
        for name, error in result["benchmarks"]["errors"].items():
            progress(f"benchmark {name} skipped: {error}")
        for name, error in _groups(result)["errors"].items():
            progress(f"per-group accuracy of {name} skipped: {error}")
    path = result_path(run_dir, cfg.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, (json.dumps(result, indent=2, sort_keys=True, allow_nan=False) + "\n").encode())
    result["file"] = str(path)
    if benchmarks is not None and not result["benchmarks"]["sets"] and not _groups(result)["sets"]:
        # the training is kept; the verification failed
        errors = result["benchmarks"]["errors"] | _groups(result)["errors"]
        why = "; ".join(f"{name}: {error}" for name, error in errors.items())
        raise BenchmarkError(f"{benchmarks}: no benchmark could be verified ({why}); the training is kept in {path}")
    return result


def _benchmark_progress(progress: Callable[[str], None]) -> Callable[[str, int, int], None]:
    def report(name: str, done: int, total: int) -> None:
        if done == total:
            progress(f"  {name}: {total} images embedded (with flips)")

    return report


def read_results(run_dir: str | Path) -> list[dict]:
    """Every train-then-verify result under ``RUN/eval/``, by name (unreadable files are skipped)."""
    folder = Path(run_dir) / EVAL_DIR
    results = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        if path.name == INTRINSIC_FILE:
            continue
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(data, dict) and data.get("kind") == RESULT_KIND:
            results.append(data)
    return results


def _columns(results: list[dict]) -> list[str]:
    """Standard sets first in the papers' order, then any other set any result has."""
    names = {n for r in results for n in ((r.get("benchmarks") or {}).get("sets") or {})}
    return sorted(set(STANDARD_SETS) | names, key=paper_order)


def results_table_markdown(results: list[dict]) -> str:
    """One row per trained recipe: accuracy (%) per benchmark in the papers' column order, then the average.

    Sets that did not run show ``–``; the average is the five standard sets' mean and is ``–`` unless all five ran.
    """
    verified = [r for r in results if r.get("benchmarks")]
    if not verified:
        return ""
    columns = _columns(verified)
    head = ["model"] + [STANDARD_SETS.get(c, c) for c in columns] + ["avg (5 sets)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in verified:
        sets = r["benchmarks"]["sets"]
        cells = [_model(r)]
        cells += [_pct(sets[c]["accuracy"]) if c in sets else "–" for c in columns]
        cells.append(_pct(r["benchmarks"].get("standard_average")))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _groups(result: dict) -> dict:
    """A result's sets of groups (``benchmarks.groups``; see :mod:`facefoundry.evaluate.groups`), empty if none."""
    return (result.get("benchmarks") or {}).get("groups") or {"sets": {}, "errors": {}}


def groups_table_markdown(results: list[dict]) -> str:
    """One row per trained recipe and set of groups: each group's accuracy (%), mean ± std over the groups (std:
    population) and the gap (highest - lowest, with the lowest group); empty when no result has groups."""
    rows = [(r, name, g) for r in results for name, g in _groups(r)["sets"].items()]
    if not rows:
        return ""
    head = ["model", "groups", "accuracy per group (%)", "mean ± std (%)", "gap (%)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r, name, g in rows:
        per_group = " · ".join(f"{label} {_pct(g['groups'][label]['accuracy'])}" for label in g["order"])
        gap = f"{_pct(g['gap'])} ({g['lowest']} lowest)"
        cells = [_model(r), f"{name} ({g['source']})", per_group, g["summary"], gap]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines)


def _model(result: dict) -> str:
    """A recipe as the tables name it: ``name (backbone + head, epochs ep)``."""
    return (f"{result['name']} ({result['recipe']['backbone']} + {result['recipe']['head']['kind']}, "
            f"{result['training']['epochs']} ep)")


def _pct(value: float | None) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.2f}"
