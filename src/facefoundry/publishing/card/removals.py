"""The card's "Removals" section: what ``facefoundry remove`` took out of the dataset, from ``removals.json``."""

from __future__ import annotations

from facefoundry.layout import REMOVALS_FILE
from facefoundry.publishing.card.context import CardContext
from facefoundry.publishing.card.markdown import table


def _matched(entry: dict) -> str:
    how = entry.get("matched") or {}
    if how.get("by") in ("image", "embedding"):
        return f"a face {how['by']} (cosine >= {how.get('threshold')} to the identity vector)"
    return "by label"


def removals(ctx: CardContext) -> list[str]:
    """Each removal: date, reason, how the identities were found, labels and rows (never the matched face)."""
    entries = ctx.facts.removals
    who = "a person who withdrew consent" if ctx.real_people else "an identity found to resemble a real person"
    out = ["## Removals\n"]
    if not entries:
        return out + [f"No identity has been removed. Removing one (e.g. {who}) rewrites only its shards and is "
                      f"logged here and in `{REMOVALS_FILE}`.\n"]
    rows = [[str(e.get("date", "")), str(e.get("reason", "")), _matched(e),
             ", ".join(str(label) for label in e["labels"]), f"{int(e.get('rows', 0)):,}",
             "interrupted, being finished" if e.get("status") == "pending" else "done"] for e in entries]
    labels = sum(len(e["labels"]) for e in entries)
    return out + [f"{labels:,} identities were removed after generation, in {len(entries)} removal(s); their rows are "
                  f"gone from every shard, and a regenerated shard leaves them out too. The log is "
                  f"`{REMOVALS_FILE}`.\n",
                  table(["date (UTC)", "reason", "matched", "labels", "rows removed", "status"], rows) + "\n"]
