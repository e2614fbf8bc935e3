"""The facts of a run, read once: the typed config of ``run.json``, the metadata of ``identities.parquet`` and
the manifests of its done units. The dataset card and the report both read them, so every count, sum and
aggregate below has one definition; no shard is rescanned, so they are cheap at any scale.

Only done units count (``dataset.manifest.finished_manifests``), so a partial run has facts too.
"Accepted" means passed every filter: ``generated - sum(drops)``.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from facefoundry.config import RunConfig, validate_config
from facefoundry.dataset.manifest import accepted_images, finished_manifests, plan_units
from facefoundry.identities.store import read_metadata
from facefoundry.layout import IDENTITIES_FILE, MANIFEST_DIR, PLOTS, REPORT_DIR, RUN_FILE
from facefoundry.runfolder.removal import REMOVED, REMOVED_MEANING, RemovalError, read_removals
from facefoundry.runfolder.runinfo import RunFolderError, read_record
from facefoundry.sections import ConfigError


class RunFactsError(ValueError):
    """The folder is not a run, its config does not validate, or no unit is finished yet."""


@dataclass(frozen=True)
class FilterDocs:
    """A filter that ran: its name in the config, its reasons in decision order and what each means."""

    name: str
    label: str
    reasons: tuple[str, ...]
    docs: dict[str, str]


@dataclass
class RunFacts:
    """What a run holds, from ``run.json``, ``identities.parquet`` metadata and the manifests only."""

    run_dir: Path
    record: dict
    config: RunConfig
    identities: dict  # metadata of identities.parquet ({} when the file is absent)
    manifests: list[dict]
    has_identities_file: bool
    removals: list[dict] = field(default_factory=list)  # entries of removals.json (runfolder.removal)

    @property
    def run_id(self) -> str | None:
        return self.record.get("run_id")

    @property
    def config_hash(self) -> str | None:
        return self.record.get("config_hash")

    @property
    def planned_units(self) -> int:
        return len(plan_units(self.config.identities.count, self.config.output.identities_per_unit))

    @property
    def rows(self) -> int:
        """Rows stored in the shards (in ``annotate`` mode rejected rows are stored too)."""
        return sum(int(m.get("rows", 0)) for m in self.manifests)

    @property
    def generated(self) -> int:
        return sum(int(m.get("generated", 0)) for m in self.manifests)

    @property
    def shard_bytes(self) -> int:
        return sum(int(m.get("bytes", 0)) for m in self.manifests)

    @property
    def identities_in_units(self) -> int:
        return sum(int(m.get("identity_stop", 0)) - int(m.get("identity_start", 0)) for m in self.manifests)

    @property
    def identities_kept(self) -> int:
        """Identities of the done units left with at least one stored image."""
        return sum(int(m.get("identities_kept", 0)) for m in self.manifests)

    @property
    def rejected(self) -> int:
        return sum(self.drop_counts().values())

    @property
    def accepted(self) -> int:
        return sum(accepted_images(m) for m in self.manifests)

    def drop_counts(self) -> Counter[str]:
        """Rejected images by reason, summed over the manifests."""
        total: Counter[str] = Counter()
        for m in self.manifests:
            total.update({reason: int(n) for reason, n in (m.get("drops") or {}).items()})
        return total

    def drops(self, with_zeros: bool = False) -> dict[str, int]:
        """Drop counts: the reasons of the filters that ran in decision order (also at 0 with ``with_zeros``),
        then any other reason by count."""
        counts, known = self.drop_counts(), self.known_reasons()
        ordered = {r: counts.get(r, 0) for r in known if with_zeros or counts.get(r, 0)}
        rest = sorted(((r, n) for r, n in counts.items() if r not in known), key=lambda x: (-x[1], x[0]))
        return ordered | dict(rest)

    def column_stats(self) -> dict[str, dict[str, float]]:
        """Manifest column stats over all units: summed counts, count-weighted means, min of mins, max of maxes."""
        acc: dict[str, dict] = {}
        for m in self.manifests:
            for col, s in (m.get("stats") or {}).items():
                n = int(s.get("count", 0))
                if not n:
                    continue
                a = acc.setdefault(col, {"count": 0, "sum": 0.0, "min": math.inf, "max": -math.inf})
                a["count"] += n
                a["sum"] += n * float(s["mean"])
                a["min"], a["max"] = min(a["min"], float(s["min"])), max(a["max"], float(s["max"]))
        return {c: {"count": a["count"], "mean": a["sum"] / a["count"], "min": a["min"], "max": a["max"]}
                for c, a in sorted(acc.items())}

    def label_counts(self) -> dict[str, dict[str, int]]:
        """Images per value of each attribute label column (``gender``, ``age_group``, ``race``), over all units."""
        acc: dict[str, dict[str, int]] = {}
        for m in self.manifests:
            for col, counts in (m.get("label_counts") or {}).items():
                for value, n in counts.items():
                    acc.setdefault(col, {})[value] = acc.get(col, {}).get(value, 0) + int(n)
        return {c: dict(sorted(v.items())) for c, v in sorted(acc.items())}

    def filters(self) -> list[FilterDocs]:
        """The filters of this run in pipeline order, each with its own reason documentation."""
        from facefoundry.filters import face_filter

        out = [FilterDocs("filter", "dlib filter", face_filter.REASONS, face_filter.REASON_DOCS)]
        if self.config.id_filter is not None:
            from facefoundry.filters import identity_filter

            out.append(FilterDocs("id_filter", "identity filter", identity_filter.REASONS,
                                  identity_filter.REASON_DOCS))
        return out

    def known_reasons(self) -> tuple[str, ...]:
        """Every reason of the filters that ran, in decision order (first filter first), each once."""
        return tuple(dict.fromkeys(r for f in self.filters() for r in f.reasons))

    def reason_meaning(self, reason: str) -> str:
        """What ``reason`` means, as documented by the filter(s) of this run that use it."""
        docs = [(f.label, f.docs[reason]) for f in self.filters() if reason in f.docs]
        if reason == REMOVED and not docs:
            return REMOVED_MEANING
        if not docs:
            return "see the facefoundry documentation"
        return docs[0][1] if len(docs) == 1 else "; ".join(f"{label}: {doc}" for label, doc in docs)

    def report_files(self) -> list[str]:
        """Plots and JSON files in ``report/``, the report's plots first in reading order."""
        folder = self.run_dir / REPORT_DIR
        if not folder.is_dir():
            return []
        found = [p.name for p in folder.iterdir()
                 if p.is_file() and p.suffix in (".png", ".json") and not p.name.startswith(".")]
        return sorted(found, key=lambda n: (PLOTS.index(n) if n in PLOTS else len(PLOTS), n))


def read_run_facts(run_dir: str | Path) -> RunFacts:
    """The facts of the run in ``run_dir``; :class:`RunFactsError` when there is no finished unit to describe."""
    run_dir = Path(run_dir)
    try:
        record = read_record(run_dir)
        config = validate_config(record.get("config"), str(run_dir / RUN_FILE))
    except (RunFolderError, ConfigError) as exc:
        raise RunFactsError(str(exc)) from None
    manifests = finished_manifests(run_dir, record.get("config_hash"))
    if not manifests:
        raise RunFactsError(f"{run_dir} has no finished unit yet (no manifest of this run in {MANIFEST_DIR}/)")
    ident_path = run_dir / IDENTITIES_FILE
    identities = read_metadata(ident_path) if ident_path.exists() else {}
    try:
        removals = read_removals(run_dir)
    except RemovalError as exc:
        raise RunFactsError(str(exc)) from None
    return RunFacts(run_dir, record, config, identities, manifests, ident_path.exists(), removals)
