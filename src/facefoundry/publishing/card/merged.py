"""The card's "How it was generated" for a merged dataset (``facefoundry merge``): its sources and how identities of
different runs were kept apart, read from ``run.json`` and the merge report in ``identities.parquet``'s metadata."""

from __future__ import annotations

from facefoundry.generators.registry import spec_of
from facefoundry.publishing.card.context import CardContext
from facefoundry.publishing.card.markdown import num, table

SHOWN_DUPLICATES = 20  # duplicate pairs listed in the card (all are in identities.parquet's metadata)


def _sources(ctx: CardContext, report: dict) -> list[str]:
    gen = ctx.cfg.generator
    taken = {s["run_id"]: s for s in report.get("sources", [])}
    rows = []
    for source in gen.sources:
        facts = taken.get(source.run_id, {})
        last = source.first_label + source.identities - 1
        rule = source.config.get("identities", {}).get("max_cosine")
        rows.append([f"`{source.run_id}`", source.config["generator"]["kind"],
                     f"{source.identities:,} of {facts.get('identities_offered', '?')}",
                     f"{source.first_label}..{last}" if source.identities else "-",
                     f"{facts.get('kept_images_taken', '?')}", "none" if rule is None else f"cosine {rule}",
                     f"`{source.config_hash}`"])
    return ["### Sources\n", table(["run", "generator", "identities taken", "labels", "kept images", "separation rule",
                                     "config hash"], rows) + "\n"]


def _separation(ctx: CardContext, report: dict) -> list[str]:
    gen, judge = ctx.cfg.generator, report.get("judge")
    dups = report.get("duplicates", [])
    lines = [
        "- Within each source, its own separation rule holds (its own card and `run.json`).",
        "- Across sources in one identity space (the same conditioning encoder and dimension), every pair of "
        "identity vectors was compared with the stricter of the two runs' rules.",
        ("- Across identity spaces, the judge " + f"{judge['name']} compared identity centroids (the mean of up to "
         f"{judge['images_per_identity']} kept images each; same person when "
         + ("the distance is below" if judge["metric"] == "euclidean" else "the cosine is above")
         + f" {judge['same_person_threshold']})." if judge else
         "- Across identity spaces, no judge compared identities."),
        f"- Duplicates found: {len(dups):,}; mode `{gen.duplicates}`: {report.get('dropped', 0):,} identities dropped "
        "(the side with fewer kept images)." if gen.duplicates == "drop" else
        f"- Duplicates found: {len(dups):,}; mode `keep`: both sides of each pair are in this dataset.",
    ]
    lines += [f"- Not checked: {line}." for line in report.get("unchecked", [])]
    lines += [f"- {n:,} identities of `{run}` have no judge centroid (no face found in their images)."
              for run, n in (report.get("unjudged") or {}).items() if n]
    out = ["### Identity sampling\n", "\n".join(lines) + "\n",
           f"Nearest-other-identity cosine within each space: min {num(ctx.nn.get('min'))}, median "
           f"{num(ctx.nn.get('p50'))}, max {num(ctx.nn.get('max'))}.\n"]
    if dups:
        side = lambda d: f"`{d['run_id']}` {d['identity']}"  # noqa: E731
        out.append(table(["identity", "identity", "compared by", "score", "dropped"],
                         [[side(d["first"]), side(d["second"]), d["by"], f"{d['score']:.4f}",
                           side(d["dropped"]) if d["dropped"] else "-"] for d in dups[:SHOWN_DUPLICATES]]) + "\n")
    return out


def merged_generation(ctx: CardContext) -> list[str]:
    """How a merged dataset was made: the sources, the cross-run check, each source's generator and the licences."""
    gen = ctx.cfg.generator
    report = ctx.facts.identities.get("merge") or {}
    rows = "every stored row (rejected ones keep their reasons)" if gen.include_rejected else "their kept rows"
    out = ["## How it was generated\n",
           f"This dataset merges {len(gen.sources)} finished facefoundry runs (`facefoundry merge`): {rows}, with "
           f"identities relabelled 0..{max(ctx.cfg.identities.count - 1, 0)} in source order. Every row keeps its "
           "provenance: `source_run`, `source_identity` (its label there) and `source_generator`. How each source's "
           "images were sampled, generated and filtered is in its own card; its whole config is in this run's "
           "`run.json` (`generator.sources`).\n"]
    out += _sources(ctx, report)
    out += _separation(ctx, report)
    out.append("### Image generation\n")
    out.append("\n".join(spec_of(gen).card_lines(gen)) + "\n")
    out.append("### Upstream models and licences\n")
    out.append("The union of the sources' upstream models: the licence chain of every source applies.\n")
    out.append(table(["role", "model", "source", "revision", "licence", "trained on", "commercial use"],
                     [[c.role, c.name, c.source, c.revision or "-", c.licence, c.training_data,
                       {True: "allowed", False: "no", None: "not recorded"}[c.commercial]] for c in ctx.comps]) + "\n")
    out.append("### Software and reproduction\n")
    out.append(f"facefoundry {ctx.facts.record.get('facefoundry_version', 'unknown')} merged the runs. To reproduce, "
               "run `facefoundry merge` on the same source runs, in the order above, with the options of `run.json`'s "
               f"`generator` section; the config hash must read `{ctx.facts.config_hash}`.\n")
    return out
