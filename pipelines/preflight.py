"""Checks in the driver before any actor starts: do the cluster and the model caches have what the stages need?

Without them a CPU-only machine running a GPU config waits forever (the generator actor waits for a GPU that
no node has), and a missing model surfaces as hundreds of lines of Ray tracebacks from inside an actor.
Both are decided here from the stages' declarations, and a problem is one line naming what is missing and
the setting or command that fixes it.

- :func:`check_resources` (pure, on resource dicts) and :func:`check_cluster` (the current Ray): one actor of
  every stage must fit on the nodes at once. On a cluster with an autoscaler whose node types could add what
  is missing, the run waits instead (and says for what).
- :func:`missing_model_files` / :func:`check_model_files`: local folders must hold the files; Hub files must
  be in the HF cache when ``HF_HUB_OFFLINE=1`` forbids downloading, and the Hub must answer when it does not.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

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


# ------------------------------------------------------------------------------------------- model files
@dataclass(frozen=True)
class Missing:
    """Files of one :class:`ModelFiles` that are not there (one name per unmet group), and why."""

    need: ModelFiles
    files: list[str]
    where: str  # "hub" (offline, not cached), "unreachable"/"refused" (not cached, no download) or "local"
    detail: str = ""


def _looks_local(source: str) -> bool:
    from pathlib import Path

    return (Path(source).expanduser().exists() or source.startswith(("/", ".", "~"))
            or source.count("/") != 1)


def _cached(repo: str, filename: str, revision: str | None) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(repo, filename, revision=revision), str)


def _probe(repo: str, filename: str, revision: str | None) -> tuple[str, str] | None:
    """None when the Hub serves ``filename`` of ``repo``; else ``("unreachable" | "refused", why)``."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url
    from huggingface_hub.errors import HfHubHTTPError

    try:
        get_hf_file_metadata(hf_hub_url(repo, filename, revision=revision), timeout=10)
    except Exception as exc:  # noqa: BLE001 - any failure means the actor would fail the same way
        first = (str(exc).strip().splitlines() or [""])[0][:120]
        return ("refused" if isinstance(exc, HfHubHTTPError) else "unreachable"), f"{type(exc).__name__}: {first}"
    return None


def missing_model_files(needs: Iterable[ModelFiles], offline: bool) -> list[Missing]:
    """What of ``needs`` is not there. Local folders: files checked on disk. Hub repos: each group must have
    a file in the HF cache; online, an uncached file is fine when the Hub serves it (one request per repo)."""
    from pathlib import Path

    found: list[Missing] = []
    down: tuple[str, str] | None = None  # the Hub did not answer once: no further requests
    for need in needs:
        folder = Path(need.source).expanduser()
        if not need.hub or _looks_local(need.source):
            missing = [g[0] for g in need.groups if not any((folder / f).is_file() for f in g)]
            if missing or not folder.is_dir():
                found.append(Missing(need, missing, "local", "" if folder.is_dir() else "does not exist"))
            continue
        missing = [_shown(need, g) for g in need.groups if not any(_cached(need.source, f, need.revision) for f in g)]
        if not missing:
            continue
        if offline:
            found.append(Missing(need, missing, "hub", "HF_HUB_OFFLINE=1"))
        elif (why := down or _probe(need.source, missing[0], need.revision)) is not None:
            down = why if why[0] == "unreachable" else None
            found.append(Missing(need, missing, *why))
    return found


def _registry_repo(need: ModelFiles) -> str | None:
    """The Hub repo of ``need.name``'s registry entry (None when unnamed, unknown or not on the Hub)."""
    from facefoundry.models import REGISTRY

    spec = REGISTRY.get(need.name or "")
    return spec.repo_id if spec else None


def _shown(need: ModelFiles, group: tuple[str, ...]) -> str:
    """The file of ``group`` to name: the one the registry entry lists (what `models fetch` gets), else the first."""
    from facefoundry.models import REGISTRY

    spec = REGISTRY.get(need.name or "")
    return next((f for f in group if spec and f in spec.files), group[0])


def _files(m: Missing) -> str:
    return ", ".join(m.files) if len(m.files) <= 6 else ", ".join(m.files[:6]) + f" (+{len(m.files) - 6} more)"


def describe_missing(found: Sequence[Missing], cache: str) -> str:
    """One line: every model with its missing files, and the ``facefoundry models fetch`` command for all."""
    local = [m for m in found if m.where == "local"]
    hub = [m for m in found if m.where != "local"]
    parts = []
    if hub:
        listed = "; ".join(f"{m.need.name or m.need.role} ({m.need.source}: {_files(m)})" for m in hub)
        unreachable = next((m.detail for m in hub if m.where == "unreachable"), None)
        refused = next((m.detail for m in hub if m.where == "refused"), None)
        if unreachable:
            why = f"the Hub could not be reached ({unreachable}) and the HF cache {cache} lacks"
            where = "where the Hub is reachable"
        elif refused:
            why = f"the Hub refused a download ({refused}) and the HF cache {cache} lacks"
            where = "after checking the repo id and revision (or HF_TOKEN, for a gated repo)"
        else:
            why = f"HF_HUB_OFFLINE=1 and the HF cache {cache} lacks"
            where = "on a machine with network access and share its HF_HOME, or unset HF_HUB_OFFLINE"
        fetch = list(dict.fromkeys(m.need.name for m in hub if _registry_repo(m.need) == m.need.source))
        other = [m for m in hub if _registry_repo(m.need) != m.need.source]
        commands = ([f"`facefoundry models fetch {' '.join(fetch)}`"] if fetch else []) + [
            f"`hf download {m.need.source} {' '.join(m.files)}`" for m in other]
        how = f"run {' and '.join(commands)} {where}"
        parts.append(f"model files missing: {why} {listed}; {how}")
    for m in local:
        lacks = f"lacks {_files(m)}" if m.detail == "" else m.detail
        fix = f" (the files of `facefoundry models fetch {m.need.name}`)" if m.need.name else ""
        parts.append(f"{m.need.role} folder {m.need.source} {lacks}{fix}; fix the path or put the files there")
    return " | ".join(parts)


def check_model_files(needs: Iterable[ModelFiles]) -> None:
    """Raise :class:`PreflightError` (one line) when a model file ``needs`` lists is not there and cannot be
    downloaded; nothing is downloaded here (the actors do, as the loaders always have)."""
    from facefoundry.models import hub_cache, offline

    found = missing_model_files(needs, offline())
    if found:
        raise PreflightError(describe_missing(found, str(hub_cache())))


def check_models(cfg: Any, paths: Any) -> None:
    """The driver's model check before Ray starts (the one call ``pipelines.runner`` makes): the files the
    configured generator (and ``id_filter``) will load from ``paths`` (:class:`~facefoundry.pipelines.stages.
    ModelPaths`). Skipped on a cluster (``ray.address``): its nodes have their own caches."""
    if cfg.ray.address:
        return
    from facefoundry.pipelines.stages import generator_model_files

    needs = list(generator_model_files(cfg, paths))
    if cfg.id_filter is not None:
        from facefoundry.filters.identity_filter import IdentityFilter

        needs += IdentityFilter.model_files(cfg.id_filter)
    check_model_files(needs)
