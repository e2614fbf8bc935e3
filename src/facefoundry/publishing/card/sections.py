"""The card's body: its sections in reading order (each reads a ``CardContext`` and returns its lines)."""

from __future__ import annotations

from facefoundry.publishing.card.about import description, generation, generator_sections
from facefoundry.publishing.card.data import demographics, filtering, leakage, statistics, structure
from facefoundry.publishing.card.evaluation import evaluation
from facefoundry.publishing.card.removals import removals
from facefoundry.publishing.card.use import citations, considerations, licence, limitations

SECTIONS = (description, generation, generator_sections, structure, statistics, demographics, filtering, leakage,
            removals, evaluation, considerations, licence, limitations, citations)
