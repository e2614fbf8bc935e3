"""Are the model files a run will load there? Checked in the driver before any actor starts.

Local folders must hold the files. Hub files must be in the HF cache when ``HF_HUB_OFFLINE=1`` forbids
downloading; online, an uncached file is fine when the Hub serves it (the actors download it, as the loaders
always have), and a Hub that does not answer is said so, with every missing model and the
``facefoundry models fetch`` command that gets them all. ``pipelines.preflight`` raises the one-line error.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from facefoundry.resources import ModelFiles


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


def _registry_name(need: ModelFiles) -> str | None:
    """``need.name`` when the model registry has it (what `facefoundry models fetch` takes), else None."""
    from facefoundry.models import REGISTRY

    return need.name if need.name in REGISTRY else None


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
        fix = (f" ({m.need.how})" if m.need.how else
               f" (the files of `facefoundry models fetch {m.need.name}`)" if _registry_name(m.need) else "")
        parts.append(f"{m.need.role} folder {m.need.source} {lacks}{fix}; fix the path or put the files there")
    return " | ".join(parts)


def present_files(needs: Iterable[ModelFiles]) -> list[Path]:
    """The file of each group of ``needs`` that is there: in its local folder, or in the HF cache for a Hub repo
    (a Hub file not cached yet is downloaded by the actor, and checked by its loader)."""
    from huggingface_hub import try_to_load_from_cache

    found: list[Path] = []
    for need in needs:
        folder = Path(need.source).expanduser()
        local = not need.hub or _looks_local(need.source)
        for group in need.groups:
            for name in group:
                path = folder / name if local else try_to_load_from_cache(need.source, name, revision=need.revision)
                if isinstance(path, (str, Path)) and Path(path).is_file():
                    found.append(Path(path))
                    break
    return found


def unreadable_model_files(needs: Iterable[ModelFiles]) -> list[str]:
    """``<path> <problem>`` for each model file that is there but is not what its name says
    (:func:`facefoundry.pipelines.filecheck.file_problem`)."""
    from facefoundry.pipelines.filecheck import file_problem

    return [f"model file {path} {problem}" for path in present_files(needs) if (problem := file_problem(path))]
