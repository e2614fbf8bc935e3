"""Card sections about the data itself: structure, columns, statistics, filtering and leakage screening."""

from __future__ import annotations

from pathlib import Path

from facefoundry.layout import (
    DATA_PATTERN,
    IDENTITIES_FILE,
    MANIFEST_DIR,
    REMOVALS_FILE,
    REPORT_DIR,
    RUN_FILE,
    SUMMARY_FILE,
)
from facefoundry.models import human_bytes
from facefoundry.publishing.card.context import CardContext
from facefoundry.publishing.card.markdown import feature_type, num, table
from facefoundry.publishing.card.references import COLUMN_DOCS
from facefoundry.publishing.licensing import ESTIMATOR_ROLE, estimator_file


def structure(ctx: CardContext) -> list[str]:
    facts, n_ids = ctx.facts, ctx.cfg.identities.count
    report_files = facts.report_files()
    return [
        "## Dataset structure\n",
        "\n".join([
            f"- `{DATA_PATTERN}`: {len(facts.manifests)} Parquet shard(s), {human_bytes(facts.shard_bytes)}; each "
            "holds a contiguous identity range (`train-SSSSSSS-EEEEEEE`), rows sorted by (identity, image_index).",
            f"- `{MANIFEST_DIR}/*.json`: per shard rows, images generated, drops by reason, size and sha256.",
            f"- `{RUN_FILE}`: the resolved config, its hash and the run id.",
            f"- `{IDENTITIES_FILE}`: " + ("the identity vectors with their nearest-neighbour and gallery cosines."
                                          if ctx.vectors_public else "not published (identity vectors; see Privacy)."),
            f"- `{REPORT_DIR}/`: " + (f"plots and `{SUMMARY_FILE}` of the run." if report_files else
                                      "not present for this run."),
        ] + ([f"- `{REMOVALS_FILE}`: the identities removed after generation (see Removals)."] if facts.removals
             else [])) + "\n",
        "### Loading\n",
        f'```python\nfrom datasets import load_dataset\n\nds = load_dataset("{ctx.where}", split="train")\n'
        'ds[0]["image"]  # a PIL image; ds[0]["identity"] is its label\n```\n',
        "### Columns\n",
        table(["column", "type", "description"],
              [[f"`{name}`", feature_type(feat), COLUMN_DOCS.get(name, "see the facefoundry schema documentation")]
               for name, feat in ctx.features.items()]) + "\n",
        "Model ids, thresholds and `synthetic: true` are stored once in each shard's Parquet metadata (key "
        "`facefoundry`), not in rows.\n",
        "### Splits\n",
        f"One `train` split. Identity labels are 0..{max(n_ids - 1, 0)} and shards hold contiguous identity "
        "ranges, so an identity-disjoint validation split is a filter on `identity`.\n",
    ]


def statistics(ctx: CardContext) -> list[str]:
    facts, kept = ctx.facts, ctx.facts.identities_kept
    out = ["## Statistics\n",
           f"Computed from the {len(facts.manifests)} manifest(s) of this run"
           + (f" ({len(facts.manifests)} of {facts.planned_units} planned units finished)"
              if len(facts.manifests) != facts.planned_units else "") + ".\n",
           table(["quantity", "value"], [
               ["identities sampled", f"{ctx.cfg.identities.count:,}"],
               ["identities with at least one image", f"{kept:,}"],
               ["images generated", f"{facts.generated:,}"],
               ["images accepted by every filter", f"{facts.accepted:,}"],
               ["images in the dataset", f"{facts.rows:,}"],
               ["images per kept identity (mean)", num(facts.rows / kept, 2) if kept else "n/a"],
               ["shards", f"{len(facts.manifests):,}"],
               ["size of the shards", human_bytes(facts.shard_bytes)],
           ]) + "\n",
           "### Score columns\n"]
    stats = facts.column_stats()
    if stats:
        out.append(table(["column", "values", "mean", "min", "max"],
                         [[f"`{k}`", f"{v['count']:,}", num(v["mean"]), num(v["min"]), num(v["max"])]
                          for k, v in stats.items()]) + "\n")
    else:
        out.append("No float score column has a finite value in this run (for example, the detector found no face).\n")
    out.append("### Plots\n")
    report_files = facts.report_files()
    pngs = [f for f in report_files if f.endswith(".png")]
    if pngs:
        out.append("\n\n".join(f"![{Path(p).stem}]({REPORT_DIR}/{p})" for p in pngs)
                   + (f"\n\nMore numbers in `{REPORT_DIR}/{SUMMARY_FILE}`." if SUMMARY_FILE in report_files else "")
                   + "\n")
    else:
        out.append(f"No plots for this run: `facefoundry report RUN` writes them to `{REPORT_DIR}/` and "
                   "republishing adds them.\n")
    return out


def filtering(ctx: CardContext) -> list[str]:
    facts, cfg = ctx.facts, ctx.cfg
    modes = {cfg.filter.mode} | ({cfg.id_filter.mode} if cfg.id_filter is not None else set())
    columns = " or ".join(f"`{c}`" for c in ["filter_reason"] + (["id_filter_reason"] if cfg.id_filter else []))
    rejected, generated = facts.rejected, facts.generated
    if modes == {"drop"}:
        summary = f"{rejected:,} of {generated:,} generated images were rejected and removed; {facts.rows:,} remain."
    else:
        summary = (f"{rejected:,} of {generated:,} generated images were rejected; {facts.rows:,} are stored. In "
                   f"`annotate` mode a rejected image is kept and {columns} says why (filter on it being null to "
                   "get the accepted ones).")
    out = ["## Filtering\n", "Filters: " + ", ".join(f"`{f.name}` ({f.label})" for f in facts.filters())
           + f". {summary} Each image is counted once, under the first reason that rejected it.\n"]
    drops = facts.drops()
    if drops:
        out.append(table(["reason", "images", "share of generated", "meaning"],
                         [[f"`{r}`", f"{n:,}", f"{100 * n / max(generated, 1):.1f}%", facts.reason_meaning(r)]
                          for r, n in drops.items()]) + "\n")
    else:
        out.append("No image was rejected by any rule.\n")
    out.append(f"Identities left without any image: {cfg.identities.count - facts.identities_kept:,}.\n")
    return out


def leakage(ctx: CardContext) -> list[str]:
    leak_cfg, leak, vectors_public = ctx.cfg.identities.leakage, ctx.leak, ctx.vectors_public
    out: list[str] = []
    add = out.append
    real_people = ctx.real_people
    add("## Leakage screening\n")
    if leak:
        galleries = [Path(g).name for g in leak_cfg.galleries]
        add("The identities are real people, so the images are meant to match their own photos; what this screen "
            "asks is whether a person matches **someone else**. Each person's vector was compared with the "
            "galleries below before anything was generated, and the run refuses a person whose vector comes "
            "closer than the threshold to any gallery face (a look-alike of someone in the gallery, or the person "
            "themself if a gallery holds them).\n" if real_people else
            "Every sampled identity vector was compared with embeddings of real people (same embedding space) "
            "before any image was generated; vectors too close to a real person were rejected and resampled.\n")
        add("\n".join([
            f"- Galleries: {len(galleries)} file(s) ({', '.join(f'`{g}`' for g in galleries) or 'unnamed'}), "
            f"{num(leak.get('gallery_size'))} embeddings; backend `{leak.get('backend')}`"
            + (f", ANN recall@1 {num(leak.get('recall_at_1'))}" if leak.get("recall_at_1") is not None else "")
            + ". The gallery embeddings are never published.",
            f"- Rejection threshold: cosine above {leak.get('max_cosine')} to any gallery vector (DCFace's 0.3); "
            + (f"{num(leak.get('rejected', 0))} identities rejected and replaced." if not real_people else
               "no person was above it (the run refuses one who is)."),
            f"- Possible morphs (top-2 gallery cosines both at least {leak.get('morph_cosine')}): "
            f"{num(leak.get('possible_morphs'))} flagged"
            + (", rejected." if leak_cfg.reject_morphs else ", kept and recorded."),
            f"- Kept identities: highest gallery cosine {num(leak.get('top1_max'))}, "
            f"p99 {num(leak.get('top1_p99'))}.",
            f"- Per-identity top-2 gallery cosines are in `{IDENTITIES_FILE}`"
            + (" (published)." if vectors_public else " (not published with this dataset)."),
        ]) + "\n")
    elif real_people:
        add("**Not screened.** The identities are real people, meant to match their own photos; no gallery of "
            "other people's embeddings was configured (`identities.leakage.galleries` is empty), so whether a "
            "person resembles someone else, in a gallery or in common benchmarks, was not checked.\n")
    else:
        add("**Not screened.** No gallery of real-face embeddings was configured (`identities.leakage.galleries` "
            "is empty), so the identity vectors were not compared with real people. Random vectors are unlikely "
            "to sit close to a particular person, but this was not checked, nor whether identities resemble "
            "people in common benchmarks (LFW, CFP-FP, AgeDB-30, CALFW, CPLFW, IJB).\n")
    add("Only identity vectors are screened; the generated images themselves were not searched against real "
        "faces.\n")
    return out


def demographics(ctx: CardContext) -> list[str]:
    """Estimated attributes: the images' distribution (manifest label counts) and, for a balanced run, the
    targets against what the identities' probes achieved."""
    attrs, balance = ctx.cfg.attributes, ctx.facts.identities.get("balance")
    out = ["## Demographic attributes (estimated)\n"]
    if attrs is None:
        out.append("Not measured: the run had no `attributes` section. Identities sampled in a face encoder's space "
                   "can be skewed in age, gender and ethnicity the way the encoder's training data is; nothing here "
                   "says whether this dataset is.\n")
        return out
    comp = next(c for c in ctx.comps if c.role == ESTIMATOR_ROLE)
    out.append(f"Every image was annotated by **{comp.name}** (`{estimator_file(attrs)}`; licence: {comp.licence}). "
               "These are **estimates of a model, not ground truth**: such models err more for some groups than "
               "for others, and categories like gender and race are reduced to the labels the model was trained "
               "with. Use them to audit the dataset's balance in aggregate, never to label a person.\n")
    counts = ctx.facts.label_counts()
    for column, values in counts.items():
        total = sum(values.values())
        out.append(table([f"`{column}`", "images", "share"],
                         [[v, f"{n:,}", num(n / total, 3)] for v, n in values.items()]) + "\n")
    if not counts:
        out.append("No image had a face the estimator could measure.\n")
    if balance:
        out.append(f"**Balanced by quota** on {', '.join(f'`{a}`' for a in balance['attributes'])}: "
                   f"{num(balance['candidates_probed'])} candidate identities were probed (one image each; "
                   f"{num(balance['probes_without_face'])} without a face) to keep {ctx.cfg.identities.count:,}, "
                   f"each kept only while its cell was below its quota (tolerance {balance['tolerance']}). "
                   "Per identity, from its probe image:\n")
        rows = [[cell, num(p, 3), num(balance["achieved_cells"].get(cell, 0.0), 3)]
                for cell, p in balance["target_cells"].items()]
        out.append(table(["cell", "target", "achieved"], rows) + "\n")
    return out
