"""Checks in the driver before any actor starts: do the cluster and the model caches have what the stages need?

Without them a CPU-only machine running a GPU config waits forever (the generator actor waits for a GPU that
no node has), and a missing model surfaces as hundreds of lines of Ray tracebacks from inside an actor.
Both are decided here from the stages' declarations, and a problem is one line naming what is missing and
the setting or command that fixes it.

- :func:`check_resources` (pure, on resource dicts) and :func:`check_cluster` (the current Ray): one actor of
  every stage must fit on the nodes at once. On a cluster with an autoscaler whose node types could add what
  is missing, the run waits instead (and says for what).
- :func:`check_model_files`: the files the stages will load (``pipelines.modelcheck`` finds what is missing:
  local folders on disk, Hub files in the HF cache or, online, served by the Hub).
- :func:`check_before_start` runs both in the driver before Ray starts (for the embedded Ray, whose
  resources are known beforehand); :func:`check_cluster` runs again on the live Ray before the stages start.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from facefoundry.pipelines.modelcheck import describe_missing, missing_model_files, unreadable_model_files
from facefoundry.resources import ModelFiles, Resources

log = logging.getLogger(__name__)

_UNITS = {"CPU": ("CPU", "CPUs"), "GPU": ("GPU", "GPUs"), "memory": ("byte of memory", "bytes of memory")}


class PreflightError(RuntimeError):
    """What the stages need is not there; the message (one line) names it and the fix."""


@dataclass(frozen=True)
class Verdict:
    """The outcome of :func:`check_resources`: ``problem`` is None when everything fits; ``waiting`` means the
    autoscaler can add what is missing (the run goes on and waits)."""

    problem: str | None = None
    waiting: bool = False


def _amount(key: str, value: float) -> str:
    if key == "memory":
        return f"{value / 2**30:.1f} GiB of memory"
    one, many = _UNITS.get(key, (key, key))
    return f"{value:g} {one if value == 1 else many}"


def _describe(nodes: Sequence[dict[str, float]]) -> str:
    shown = [", ".join(_amount(k, node.get(k, 0.0)) for k in ("CPU", "GPU")) for node in nodes[:4]]
    more = f", +{len(nodes) - 4} more" if len(nodes) > 4 else ""
    return f"{len(nodes)} node{'s' if len(nodes) != 1 else ''}: " + "; ".join(shown) + more if nodes else "no nodes"


def _fits(need: dict[str, float], node: dict[str, float]) -> bool:
    return all(node.get(k, 0.0) + 1e-9 >= v for k, v in need.items())


def _fix(key: str, resources: Resources, embedded: bool) -> str:
    setting = resources.settings.get({"CPU": "num_cpus", "GPU": "num_gpus", "memory": "memory"}[key])
    if key == "GPU":
        fixes = [f"to run on the CPU: --set {setting}=0"] if setting else []
        fixes.append("or, for a GPU Ray did not detect, set ray.num_gpus" if embedded else "or add a node with a GPU")
        return " ".join(fixes)
    if key == "CPU":
        return "raise ray.num_cpus" if embedded else "add a larger node"
    return "free memory or add a larger node"


def check_resources(stages: Sequence[tuple[str, Resources]], nodes: Sequence[dict[str, float]],
                    node_types: Sequence[dict[str, float]] | None = None, embedded: bool = True) -> Verdict:
    """Whether one actor of every stage fits on ``nodes`` (each a ``{"CPU": .., "GPU": .., "memory": ..}``
    dict of a node's totals) at the same time.

    ``node_types`` lists what an autoscaler can add (one dict per node type it may still launch); None means
    the cluster does not autoscale. A stage no node can hold fails with the missing resource and the fix;
    if an autoscaler node type could hold it, the verdict is ``waiting`` instead.
    """
    # 1. each stage alone: some node must offer all it asks for
    for name, resources in stages:
        need = resources.as_cluster_keys()
        if any(_fits(need, node) for node in nodes):
            continue
        short = [k for k in ("GPU", "memory", "CPU") if k in need and not any(n.get(k, 0.0) >= need[k] for n in nodes)]
        key = (short or [k for k in ("GPU", "memory", "CPU") if k in need])[0]
        if node_types and any(_fits(need, t) for t in node_types):
            return Verdict(f"waiting for the autoscaler to add a node with {_amount(key, need[key])} for the "
                           f"{name} stage (this cluster has {_describe(nodes)})", waiting=True)
        where = "this Ray cluster" + (" or its autoscaler's node types" if node_types else "")
        most = max((n.get(key, 0.0) for n in nodes), default=0.0)
        return Verdict(f"the {name} stage asks for {_amount(key, need[key])} per actor but no node of {where} has "
                       f"{'that' if most else 'any'} (most on one node: {_amount(key, most)}; {_describe(nodes)}); "
                       f"{_fix(key, resources, embedded)}")
    # 2. all stages at once (every actor pool starts with one actor): first-fit, largest requests first
    free = [dict(node) for node in nodes]
    order = sorted(stages, key=lambda s: (s[1].num_gpus, s[1].memory or 0, s[1].num_cpus), reverse=True)
    for name, resources in order:
        need = resources.as_cluster_keys()
        node = next((n for n in free if _fits(need, n)), None)
        if node is None:
            total = {k: sum(r.as_cluster_keys().get(k, 0.0) for _, r in stages) for k in ("CPU", "GPU", "memory")}
            key = next((k for k in ("GPU", "memory", "CPU") if total[k] > sum(n.get(k, 0.0) for n in nodes)), "CPU")
            asked = ", ".join(f"{s} {_amount(k, r.as_cluster_keys().get(k, 0.0))}" for s, r in stages
                              for k in (key,) if r.as_cluster_keys().get(k))
            if node_types and any(_fits(need, t) for t in node_types):
                return Verdict(f"waiting for the autoscaler to add room for the {name} stage ({asked}; this "
                               f"cluster has {_describe(nodes)})", waiting=True)
            return Verdict(f"one actor of every stage must run at once ({asked}: {_amount(key, total[key])}) but "
                           f"{_describe(nodes)} cannot hold them; {_fix(key, resources, embedded)}")
        for k, v in need.items():
            node[k] = node.get(k, 0.0) - v
    return Verdict()


def _cluster_view() -> tuple[list[dict[str, float]], list[dict[str, float]] | None]:
    """The alive nodes' resource totals and, when an autoscaler published its config, the node types it may
    still launch (``max_count`` not reached or unlimited)."""
    import ray

    nodes = [dict(n.get("Resources", {})) for n in ray.nodes() if n.get("Alive")]
    node_types = None
    try:  # the autoscaler's cluster config in the GCS (what Ray Data reads for its own limits); absent locally
        from ray._private.state import state

        config = state.get_cluster_config()
        if config is not None and config.node_group_configs:
            node_types = [dict(g.resources) for g in config.node_group_configs if g.max_count != 0]
    except Exception:  # noqa: BLE001 - a private API: without it the cluster is treated as fixed
        log.debug("no autoscaler config readable", exc_info=True)
    return nodes, node_types


def embedded_node(ray_cfg: Any) -> dict[str, float]:
    """What the embedded Ray will offer, known before it starts: ``ray.num_cpus`` (else every CPU),
    ``ray.num_gpus`` (else the GPUs Ray detects, within ``CUDA_VISIBLE_DEVICES``) and the available memory."""
    import os

    import psutil

    gpus = ray_cfg.num_gpus
    if gpus is None:
        try:  # Ray's own detection, without starting Ray
            from ray._private.accelerators import get_accelerator_manager_for_resource

            manager = get_accelerator_manager_for_resource("GPU")
            gpus = manager.get_current_node_num_accelerators()
            visible = manager.get_current_process_visible_accelerator_ids()
            gpus = gpus if visible is None else min(gpus, len(visible))
        except Exception:  # noqa: BLE001 - a private API: without it, the check after ray.init still runs
            return {}
    return {"CPU": float(ray_cfg.num_cpus or os.cpu_count() or 1), "GPU": float(gpus),
            "memory": float(psutil.virtual_memory().available)}


def check_cluster(stages: Iterable[Any], embedded: bool = True) -> None:
    """Compare the stages' declared ``resources`` with the current Ray (nothing to do when Ray is not up).

    Raises :class:`PreflightError` (one line) when no node or combination of nodes can run one actor of every
    stage; logs a warning and returns when the autoscaler can add what is missing.
    """
    import ray

    if not ray.is_initialized():
        return
    nodes, node_types = _cluster_view()
    verdict = check_resources([(s.name, s.resources) for s in stages], nodes, node_types, embedded)
    if verdict.waiting:
        log.warning("%s", verdict.problem)
    elif verdict.problem:
        raise PreflightError(verdict.problem)


def check_model_files(needs: Iterable[ModelFiles]) -> None:
    """Raise :class:`PreflightError` (one line) when a model file ``needs`` lists is not there and cannot be
    downloaded, or is there but is not what its name says (empty, truncated, another format); nothing is downloaded
    here (the actors do, as the loaders always have)."""
    from facefoundry.models import hub_cache, offline

    needs = list(needs)
    found = missing_model_files(needs, offline())
    if found:
        raise PreflightError(describe_missing(found, str(hub_cache())))
    broken = unreadable_model_files(needs)  # there, but empty, truncated or of another format
    if broken:
        raise PreflightError("; ".join(broken))


def check_before_start(cfg: Any, paths: Any) -> None:
    """Everything the driver can check before Ray starts (the one call ``pipelines.runner`` makes), raising
    :class:`PreflightError` in one line:

    - the model files the stages declare (``Stage.model_files``: the generator's from ``paths``, a
      :class:`~facefoundry.pipelines.stages.ModelPaths`, and the ``id_filter``'s), against local folders and
      the HF cache;
    - for the embedded Ray, the stages' resources against what it will offer (:func:`embedded_node`).

    On a cluster (``ray.address``) both are left to later: its nodes have their own model caches, and
    :func:`check_cluster` compares resources once connected."""
    if cfg.ray.address:
        return
    from facefoundry.pipelines.stages import pipeline

    stages = pipeline(cfg, "", paths, {})
    check_model_files(f for stage in stages for f in stage.model_files())
    node = embedded_node(cfg.ray)
    verdict = check_resources([(s.name, s.resources) for s in stages], [node]) if node else Verdict()
    if verdict.problem:
        raise PreflightError(verdict.problem)
