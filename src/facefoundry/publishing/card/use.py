"""Card sections about using the data: privacy, bias, misuse, licence, limitations and citations."""

from __future__ import annotations

from facefoundry.generators.registry import spec_of
from facefoundry.layout import IDENTITIES_FILE
from facefoundry.publishing.card.context import CardContext
from facefoundry.publishing.card.references import CITATIONS, citation_keys


def _balance_line(ctx: CardContext) -> str:
    """The first Bias bullet: whether demographic attributes were estimated, and balanced, and what that means."""
    attrs, balance = ctx.cfg.attributes, ctx.cfg.balance
    inherited = ("Random vectors in the encoder's space inherit that space's training distribution (WebFace, "
                 "web-crawled celebrities), so demographic groups are probably not equally represented.")
    if attrs is None:
        return f"- No demographic attribute was estimated or balanced. {inherited}\n"
    if balance is None:
        return (f"- Demographic attributes were estimated ({attrs.estimator} estimator; see Demographics) but the "
                f"identities were not balanced on them. {inherited}\n")
    return (f"- The identities were balanced on {', '.join(balance.attributes)} as the {attrs.estimator} estimator "
            "labels them (see Demographics): the balance holds for the estimator's labels, which err more for "
            "some groups than for others, not for how people would perceive the faces.\n")


def considerations(ctx: CardContext) -> list[str]:
    icfg, gen, meta, comps, tiny = ctx.cfg.identities, ctx.cfg.generator, ctx.meta, ctx.comps, ctx.tiny
    vectors_public = ctx.vectors_public
    out: list[str] = []
    add = out.append
    add("## Considerations for using the data\n")
    real_people = ctx.real_people
    add("Generated faces of real people carry the privacy, fairness and misuse concerns of face data; they are "
        "published only as far as those people consented.\n" if real_people else
        "Synthetic faces reduce but do not remove the privacy, fairness and misuse concerns of face data.\n")
    add("### Privacy\n")
    trained_on = sorted({c.training_data for c in comps if "web" in c.training_data or "internet" in c.training_data})
    add("\n".join([
        ("- The identities are real people who consented (see Consent); each is the mean embedding of their "
         "own photos, which stay with the dataset's maker." if real_people else
         "- The identities are synthetic: each is a random vector, not a person's embedding"
         + (" (except that `from_file` vectors come from the user and their origin is unknown)."
            if icfg.sampler == "from_file" else ".")),
        ("- The face models of the filter" if tiny else "- The models that generated and judged the faces")
        + " were trained on images collected from the web, real people's faces among them, without their "
        "consent: "
        + "; ".join(trained_on or ["see the upstream table"]) + ". A generated face can resemble a real person "
        "by chance.",
        "- Identity vectors can be decoded into faces by the generator, like biometric templates. "
        + (f"They are published in `{IDENTITIES_FILE}` for reproducibility; they are synthetic."
           if vectors_public else "They are not published with this dataset; the config and seed reproduce them."),
        "- Removal requests: open a discussion on the dataset repository. Identities are addressable (label and "
        "shard range), so "
        + ("a person who withdraws consent can be removed" if real_people else
           "an identity found to resemble a real person can be removed") + " (`facefoundry remove`, listed under "
        "Removals) and the dataset republished.",
    ]) + "\n")
    add("### Bias\n")
    add(_balance_line(ctx) +
        "- The dlib detector and judge have their own error rates across groups; filtering can remove images "
        "of some groups more often. Report per-group accuracy on real benchmarks for any model trained on this "
        "data.\n")
    add("### Misuse\n")
    add("- Synthetic faces can be used for impersonation, fake profiles, deepfakes or attacks on face "
        "verification. "
        + ("Do not present these images as photographs of the people they show.\n" if real_people else
           "Do not present these images as real people.\n")
        + "".join(f"- {c.name} is under {c.licence.split(' (')[0]}: its use-based restrictions (no unlawful, "
                  "harmful or deceptive use) apply to content derived from it.\n"
                  for c in comps if not tiny and "openrail" in c.licence.lower()))
    add("### Synthetic marking\n")
    add("- The card carries the `synthetic` tag and every shard's Parquet metadata has `synthetic: true` with "
        f"the generator ({meta.get('generator', {}).get('kind', gen.kind)}, model ids and "
        "revision), for forensic research.\n"
        "- No invisible watermark was embedded in the images.\n")
    return out


def licence(ctx: CardContext) -> list[str]:
    license, conflicts, nc_comps = ctx.license, ctx.conflicts, ctx.nc_comps
    out: list[str] = []
    add = out.append
    add("## Licence\n")
    add(f"The dataset is released under `{license}`. Its upstream licence chain is listed in "
        "[Upstream models and licences](#upstream-models-and-licences).\n")
    if nc_comps:
        add("Upstream components restrict commercial use: "
            + "; ".join(f"{c.name} ({c.licence}; {c.training_data})" for c in nc_comps) + ".\n")
    if conflicts:
        add("**Licence conflict:** " + " ".join(f"{w}." for w in conflicts) + "\n")
    elif nc_comps:
        add(f"`{license}` is non-commercial, consistent with those terms.\n")
    else:
        add("No upstream component restricts commercial use.\n")
    return out


def limitations(ctx: CardContext) -> list[str]:
    cfg, tiny = ctx.cfg, ctx.tiny
    spec = spec_of(cfg.generator)
    size = spec.output_size(cfg.generator)
    out: list[str] = []
    add = out.append
    add("## Limitations\n")
    lim = []
    if tiny:
        lim.append(("- The no-op generator (a pipeline rehearsal)" if spec.rehearsal else
                    "- Tiny random weights") + ": the images are not faces. This run only tests the tooling.")
    lim += [
        "- Identity consistency was judged by one independent model (dlib); its 0.6 threshold was calibrated on "
        "real photos, not generated faces.",
        "- Variation in pose, expression, illumination and age is whatever the generator produces from seeds"
        + (f" and {spec.variation_source}." if spec.variation_source else
           " and vector noise." if cfg.images.perturbation is not None else "."),
        "- Leakage screening covers identity vectors only, and only against the configured galleries.",
        "- No demographic labels, so balance cannot be audited from the data itself.",
        *spec.limitations(cfg.generator),
        f"- Images are {size} px; models expecting aligned 112 px crops need the `landmarks` to align them.",
    ]
    if cfg.filter.mode == "annotate" or (cfg.id_filter is not None and cfg.id_filter.mode == "annotate"):
        lim.append("- Annotate mode: rejected images are included; filter on the `*filter_reason` columns.")
    add("\n".join(lim) + "\n")
    return out


def citations(ctx: CardContext) -> list[str]:
    return ["## Citation\n", "This dataset builds on the following methods; please cite them if you use it.\n",
            "```bibtex\n" + "\n\n".join(CITATIONS[k] for k in citation_keys(ctx.cfg)) + "\n```\n"]
