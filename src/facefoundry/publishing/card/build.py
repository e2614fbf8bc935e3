"""Building the card: YAML metadata (``DatasetCardData``) and the body, from the run facts.

The card's content is deterministic (no timestamps): rebuilding it gives the same bytes, and republishing an
unchanged run uploads nothing. :func:`write_card` keeps what the user wrote in an existing card (see
:mod:`facefoundry.publishing.card.user`).
"""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq

from facefoundry.dataset.atomic import atomic_write_bytes
from facefoundry.generators.registry import spec_of
from facefoundry.layout import CARD_FILE, DATA_PATTERN
from facefoundry.publishing.card.context import CardContext, generator_name
from facefoundry.publishing.card.references import size_category
from facefoundry.publishing.card.user import keep_user_content, user_choices
from facefoundry.publishing.licensing import (
    DEFAULT_LICENSE,
    NONCOMMERCIAL_LICENSES,
    check_license,
)
from facefoundry.runfolder.runfacts import RunFacts, RunFactsError, read_run_facts


class CardError(RunFactsError):
    """The run folder cannot be described (not a run, or no finished unit)."""


def gated_fields(license: str, real_people: bool = False) -> tuple[str, dict]:
    """The access-request prompt and form of a gated repository (``real_people``: the identities are real people
    who consented, as with ID-Booth)."""
    nc = check_license(license) in NONCOMMERCIAL_LICENSES
    about = ("This dataset contains generated face images of real people who consented to this use; the models "
             "that made them were also trained on photos of other people collected without their consent."
             if real_people else
             "This dataset contains synthetic face images. No image shows a real person, but the models that "
             "made them were trained on photos of real people collected without their consent.")
    prompt = (f"{about} To get access, agree not to use the data to identify, track or impersonate anyone, not to "
              f"try to recover real identities from it, and to follow its licence ({license}"
              + (", non-commercial use only)." if nc else ")."))
    fields = {
        "Name": "text",
        "Affiliation": "text",
        "Intended use": {"type": "select", "options": ["Research", "Education", "Evaluation of face recognition",
                                                       "Other"]},
        "I will not use this dataset to identify, track or impersonate real people": "checkbox",
        f"I agree to the dataset licence ({license})": "checkbox",
    }
    return prompt, fields


def _features(facts: RunFacts) -> object:
    import datasets  # heavy import: only when a card is built

    return datasets.Features.from_arrow_schema(pq.read_schema(facts.run_dir / facts.manifests[0]["shard"]))


def build_card(run_dir: str | Path, license: str = DEFAULT_LICENSE, pretty_name: str | None = None, *,
               repo_id: str | None = None, gated: bool = False, include_identities: bool = False):
    """The dataset card of the run in ``run_dir`` (a ``huggingface_hub.DatasetCard``)."""
    from huggingface_hub import DatasetCard, DatasetCardData

    from facefoundry.publishing.card.sections import SECTIONS

    license = check_license(license)
    try:
        facts = read_run_facts(Path(run_dir))
    except RunFactsError as exc:
        raise CardError(str(exc)) from None
    cfg = facts.config
    kind_name = generator_name(facts)
    spec = spec_of(cfg.generator)
    gen_name = (f"tiny random {kind_name}-layout model" if cfg.generator.tiny and not spec.rehearsal and spec.renders
                else kind_name)
    faces = "generated faces of consenting people" if spec.real_people else "synthetic faces"
    pretty_name = pretty_name or (f"{cfg.run.name}: {faces} ({gen_name}, {cfg.identities.count:,} "
                                  f"identities x {cfg.images.per_identity})")
    features = _features(facts)
    extra = {}
    if gated:
        extra["extra_gated_prompt"], extra["extra_gated_fields"] = gated_fields(license, spec.real_people)
    data = DatasetCardData(
        license=license,
        pretty_name=pretty_name,
        task_categories=["image-classification", "image-feature-extraction"],
        size_categories=[size_category(facts.rows)],
        annotations_creators=["machine-generated"],
        source_datasets=["original"],
        tags=["synthetic", "faces", "face-recognition", "facefoundry", cfg.generator.kind],
        configs=[{"config_name": "default", "data_files": [{"split": "train", "path": DATA_PATTERN}]}],
        dataset_info={"config_name": "default", "features": features._to_yaml_list(),
                      "download_size": facts.shard_bytes},
        **extra,
    )
    ctx = CardContext(facts, license, pretty_name, features, repo_id or "path/to/run-folder",
                      include_identities and facts.has_identities_file)
    body = "\n".join(line for section in SECTIONS for line in section(ctx))
    return DatasetCard(f"---\n{data.to_yaml()}\n---\n{body}")


def render_card(run_dir: str | Path, old: str | None = None, license: str | None = None,
                pretty_name: str | None = None, **options) -> str:
    """The card text of the run, rebuilt: ``old`` (the text of the card it replaces, if any) keeps its licence
    and pretty name unless new ones are given, and its hand-written content (:mod:`facefoundry.publishing.card.user`).
    ``options`` go to :func:`build_card` (``repo_id``, ``gated``, ``include_identities``)."""
    kept_license, kept_name = user_choices(old)
    card = build_card(run_dir, license or kept_license or DEFAULT_LICENSE, pretty_name or kept_name, **options)
    return keep_user_content(str(card), old)


def write_card(run_dir: str | Path, license: str | None = None, pretty_name: str | None = None, *,
               repo_id: str | None = None, gated: bool = False, include_identities: bool = False) -> Path:
    """Write the card to ``<run_dir>/README.md`` atomically; the same inputs give the same bytes.

    An existing card's licence and pretty name are kept unless given here, and its hand-written content is
    carried over (:func:`render_card`)."""
    path = Path(run_dir) / CARD_FILE
    old = path.read_text(encoding="utf-8") if path.is_file() else None
    text = render_card(run_dir, old, license, pretty_name, repo_id=repo_id, gated=gated,
                       include_identities=include_identities)
    atomic_write_bytes(path, text.encode("utf-8"))
    return path
