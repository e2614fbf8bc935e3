"""The dataset card: ``README.md`` of a run folder, built with ``huggingface_hub.DatasetCard``.

Computed from the run facts (:mod:`facefoundry.runfolder.runfacts`: ``run.json``'s typed config, the metadata of
``identities.parquet`` and the manifests) and one shard's schema only: no shard is rescanned, so it is
cheap at any scale.

- :mod:`.build`: metadata, the section context, :func:`build_card` and :func:`write_card`
- :mod:`.about`, :mod:`.data`, :mod:`.use`: the sections (:mod:`.sections` lists them in order)
- :mod:`.references`: column and sampler documentation, citations, size categories
- :mod:`.user`: what the user wrote in a card, carried over when it is regenerated
- :mod:`.checks`: offline checks run before publishing
"""

from facefoundry.layout import CARD_FILE, DATA_PATTERN, REPORT_DIR
from facefoundry.publishing.card.build import CardError, build_card, gated_fields, render_card, write_card
from facefoundry.publishing.card.checks import card_problems
from facefoundry.publishing.card.references import SIZE_CATEGORIES, size_category
from facefoundry.runfolder.runfacts import RunFacts, read_run_facts

__all__ = ["CARD_FILE", "DATA_PATTERN", "REPORT_DIR", "SIZE_CATEGORIES", "CardError", "RunFacts", "build_card",
           "card_problems", "gated_fields", "read_run_facts", "render_card", "size_category",
           "write_card"]
