"""``facefoundry remove RUN``: take identities out of a finished run (a takedown), and the log that remembers it.

The removal log ``removals.json`` (:data:`~facefoundry.layout.REMOVALS_FILE`) is a list of entries, one per
removal: when (UTC), the reason the user gave, the labels, how they were matched (by label, or by a face image or
embedding above a cosine threshold: the cosines are kept, never the image or the embedding) and the rows removed
per unit. The card's "Removals" section shows it; ``publish`` uploads it.

How a removal survives a kill (the entry is the plan, written before any shard changes):

1. The entry is appended with ``status: pending`` and, per affected unit, the rows and accepted rows it loses and
   the shard sha256 its manifest records *before* (``sha256_before``).
2. Each unit whose manifest still records ``sha256_before`` is rewritten from its current shard without the
   removed identities (``write_unit``: shard by atomic rename, then manifest). Filtering is idempotent and a
   shard's bytes are a function of its rows, so a unit whose shard was rewritten before the kill but whose
   manifest was not is rewritten to the same bytes.
3. The entry becomes ``status: done``.

A pending entry is finished by the next ``remove`` or ``run`` on the folder (:func:`finish_pending`), and
``verify`` names it until then. Every removed label stays removed: a unit generated again (``run --repair``) leaves
out the removed identities' rows too (:func:`without_removed`, called by the writer), so it comes back as the
removal left it. Rows removed that no filter had rejected are counted under the drop reason :data:`REMOVED`, so
"accepted = generated - drops" still counts the rows a reader keeps.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from facefoundry import __version__
from facefoundry.config import RunConfig
from facefoundry.dataset.manifest import Unit, plan_units, read_manifest
from facefoundry.dataset.schema import FACEFOUNDRY_KEY
from facefoundry.dataset.shards import write_unit
from facefoundry.dataset.storage import RunStore, arrow_reader, open_store
from facefoundry.layout import DATA_DIR, REMOVALS_FILE
from facefoundry.runfolder.rows import kept_mask, with_reasons
from facefoundry.runfolder.runinfo import RunFolderError, read_run

REMOVED = "removed"  # the drop reason of accepted rows a removal took out
REMOVED_MEANING = f"identity removed on request (`facefoundry remove`; see {REMOVALS_FILE} and the Removals section)"
PENDING, DONE = "pending", "done"


class RemovalError(RunFolderError):
    """A removal that cannot be made: not a finished run, a label out of range, a corrupt removal log."""


def read_removals(out: str | RunStore) -> list[dict]:
    """The entries of the run's removal log, oldest first (none when the run has no log)."""
    store = open_store(out)
    raw = store.read_bytes(REMOVALS_FILE)
    if raw is None:
        return []
    try:
        entries = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RemovalError(f"{store.name(REMOVALS_FILE)} is corrupt ({exc}); restore it from a backup or the "
                           "published dataset: it is the record of which identities were taken out") from None
    if not isinstance(entries, list) or not all(isinstance(e, dict) and isinstance(e.get("labels"), list)
                                                for e in entries):
        raise RemovalError(f"{store.name(REMOVALS_FILE)} is not a list of removals with labels; restore it from a "
                           "backup or the published dataset")
    return entries


def removed_labels(entries: Iterable[dict]) -> frozenset[int]:
    """Every label of the log's entries, pending ones included."""
    return frozenset(int(label) for entry in entries for label in entry["labels"])


def without_removed(table: pa.Table, removed: frozenset[int]) -> tuple[pa.Table, int, int]:
    """``table`` without the rows of the ``removed`` identities; and how many rows went, and how many of those
    no filter had rejected (they are counted under :data:`REMOVED`)."""
    if not removed or table.num_rows == 0:
        return table, 0, 0
    gone = pc.is_in(table.column("identity"), value_set=pa.array(sorted(removed), pa.int64()))
    gone_np = gone.to_numpy(zero_copy_only=False)
    if not gone_np.any():
        return table, 0, 0
    accepted = int((gone_np & kept_mask(table)).sum())
    return table.filter(pc.invert(gone)), int(gone_np.sum()), accepted


def _write_log(store: RunStore, entries: list[dict]) -> None:
    store.put_bytes(REMOVALS_FILE, (json.dumps(entries, indent=2, sort_keys=True) + "\n").encode())


def _read_shard(store: RunStore, unit: Unit, columns: list[str] | None = None) -> pa.Table:
    raw = store.read_bytes(f"{DATA_DIR}/{unit.shard_name}")
    if raw is None:
        raise RemovalError(f"{store.name(f'{DATA_DIR}/{unit.shard_name}')} is missing: run "
                           f"`facefoundry run --repair --out {store}`, then remove again")
    if columns is None:
        return pq.read_table(arrow_reader(raw))
    schema = pq.read_schema(arrow_reader(raw))
    return pq.read_table(arrow_reader(raw), columns=with_reasons(schema.names, columns))


def _rewrite(store: RunStore, cfg: RunConfig, unit: Unit, removed: frozenset[int], accepted: int) -> None:
    """The unit without the ``removed`` identities, committed by the writer (shard, then manifest)."""
    manifest = read_manifest(store, unit)
    table = _read_shard(store, unit)
    kept, _, _ = without_removed(table, removed)
    drops = dict(manifest.get("drops") or {})
    drops[REMOVED] = int(drops.get(REMOVED, 0)) + accepted
    metadata = json.loads((table.schema.metadata or {}).get(FACEFOUNDRY_KEY, b"{}"))
    write_unit(store, unit, kept, generated=int(manifest["generated"]), drops=drops,
               config_hash=manifest["config_hash"], file_metadata=metadata,
               row_group_size=cfg.output.row_group_size, compression=cfg.output.compression)


def _apply(store: RunStore, cfg: RunConfig, entries: list[dict], index: int,
           notify: Callable[[str], None]) -> None:
    """Carry out the pending entry ``entries[index]`` (steps 2 and 3 of the module doc)."""
    entry = entries[index]
    units = {u.name: u for u in plan_units(cfg.identities.count, cfg.output.identities_per_unit)}
    removed = removed_labels([entry])
    for n, (name, plan) in enumerate(sorted(entry["units"].items()), 1):
        unit = units.get(name)
        if unit is None:
            raise RemovalError(f"{store.name(REMOVALS_FILE)} names unit {name}, which this run does not plan")
        manifest = read_manifest(store, unit)
        if manifest is None or store.size(f"{DATA_DIR}/{unit.shard_name}") is None:
            notify(f"remove: unit {name} is missing; `facefoundry run --repair --out {store}` writes it again "
                   "without the removed identities")
        elif manifest.get("sha256") == plan.get("sha256_before"):  # not rewritten yet
            _rewrite(store, cfg, unit, removed, int(plan["accepted"]))
            notify(f"remove: unit {name} rewritten without {plan['rows']} rows ({n}/{len(entry['units'])})")
    for plan in entry["units"].values():
        plan.pop("sha256_before", None)
    entry["status"] = DONE
    _write_log(store, entries)


def finish_pending(out: str | RunStore, notify: Callable[[str], None] = lambda _: None) -> int:
    """Finish every removal a kill interrupted; return how many there were. The caller holds the run lock."""
    store = open_store(out)
    entries = read_removals(store)
    pending = [i for i, e in enumerate(entries) if e.get("status") == PENDING]
    if pending:
        cfg = read_run(store)
        for i in pending:
            notify(f"remove: finishing the removal of {len(entries[i]['labels'])} identities interrupted on "
                   f"{entries[i].get('date')}")
            _apply(store, cfg, entries, i, notify)
    return len(pending)


def plan_removal(out: str | RunStore, labels: Iterable[int]) -> tuple[dict[str, dict], set[int]]:
    """Per unit holding rows of ``labels``: the rows it would lose, how many of them were accepted, and the shard
    sha256 its manifest records now (units without such rows are left out); and which labels have rows."""
    store = open_store(out)
    cfg = read_run(store)
    wanted = frozenset(labels)
    plans, found = {}, set()
    for unit in plan_units(cfg.identities.count, cfg.output.identities_per_unit):
        if not any(unit.start <= label < unit.stop for label in wanted):
            continue
        table = _read_shard(store, unit, ["identity"])
        _, rows, accepted = without_removed(table, wanted)
        if rows:
            found.update(int(i) for i in np.intersect1d(table.column("identity").to_numpy(), sorted(wanted)))
            plans[unit.name] = {"rows": rows, "accepted": accepted,
                                "sha256_before": read_manifest(store, unit)["sha256"]}
    return plans, found


def check_labels(cfg: RunConfig, labels: Iterable[int]) -> list[int]:
    """``labels`` sorted and unique, each checked to be an identity of the run."""
    labels = sorted(set(int(label) for label in labels))
    if not labels:
        raise RemovalError("no identity to remove: give --labels, or --like with a --threshold that matches")
    outside = [label for label in labels if not 0 <= label < cfg.identities.count]
    if outside:
        raise RemovalError(f"labels {outside[:10]} are not identities of this run (0..{cfg.identities.count - 1})")
    return labels


def remove_identities(out: str | RunStore, labels: Iterable[int], reason: str, matched: dict | None = None,
                      notify: Callable[[str], None] = lambda _: None, dry_run: bool = False) -> dict | None:
    """Remove every row of the identities ``labels`` from the finished run in ``out``; return the log entry
    (``None`` when every label was removed before). The caller holds the run lock.

    ``reason`` is the user's; ``matched`` says how the labels were found (default: given by label). A pending
    removal is finished first; a run that does not verify is refused (repair it first). ``dry_run`` returns the
    entry without writing anything."""
    from facefoundry.runfolder.verify import verify_run

    store = open_store(out)
    if not reason.strip():
        raise RemovalError("give the reason for the removal (--reason): it goes in the removal log and the card")
    if not dry_run:
        finish_pending(store, notify)
    cfg = read_run(store)
    labels = check_labels(cfg, labels)
    problems = verify_run(store)
    if problems:
        raise RemovalError(f"{store} does not verify ({problems[0]}{'; ...' if len(problems) > 1 else ''}): "
                           f"finish or repair it first (`facefoundry verify {store}`)")
    entries = read_removals(store)
    before = removed_labels(entries)
    if before.intersection(labels):
        notify(f"remove: already removed earlier: {sorted(before.intersection(labels))[:10]}")
    labels = [label for label in labels if label not in before]
    if not labels:
        return None
    plans, with_rows = plan_removal(store, labels)
    entry = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "reason": reason.strip(),
             "labels": labels, "matched": matched or {"by": "labels"}, "status": PENDING,
             "rows": sum(p["rows"] for p in plans.values()), "units": plans,
             "facefoundry_version": __version__}
    without_rows = sorted(set(labels) - with_rows)
    if without_rows:
        notify(f"remove: {len(without_rows)} of the identities have no stored rows (the filters dropped them or "
               f"none were generated): {without_rows[:10]}; they are logged and stay out of any rerun")
    if dry_run:
        return entry
    entries.append(entry)
    _write_log(store, entries)  # the plan first: a kill from here on is finished by the next remove or run
    _apply(store, cfg, entries, len(entries) - 1, notify)
    return entry
