"""Offline checks of a dataset card's metadata and sections (run before publishing)."""

from __future__ import annotations

import re

from facefoundry.layout import DATA_PATTERN
from facefoundry.publishing.card.references import SIZE_CATEGORIES
from facefoundry.publishing.licensing import check_license


def card_problems(text: str) -> list[str]:
    """Offline checks of a card: YAML metadata and that no section is empty. Empty list = fine."""
    import yaml
    from huggingface_hub import DatasetCard

    problems = []
    try:
        card = DatasetCard(text)
    except (ValueError, yaml.YAMLError) as exc:
        return [f"metadata: {exc}"]
    meta = card.data.to_dict()
    try:
        check_license(meta.get("license", ""))
    except ValueError as exc:
        problems.append(f"license: {exc}")
    if "synthetic" not in (meta.get("tags") or []):
        problems.append("tags: `synthetic` missing")
    if not set(meta.get("size_categories") or ["?"]) <= set(SIZE_CATEGORIES):
        problems.append(f"size_categories: {meta.get('size_categories')} not in {SIZE_CATEGORIES}")
    if not meta.get("task_categories"):
        problems.append("task_categories: missing")
    configs = meta.get("configs") or []
    if not any(df.get("path") == DATA_PATTERN for c in configs for df in c.get("data_files", [])):
        problems.append(f"configs: no data_files entry for {DATA_PATTERN}")
    if not (meta.get("dataset_info") or {}).get("features"):
        problems.append("dataset_info: features missing")
    heading, content, fenced = None, [], False
    for line in card.text.splitlines() + ["# end"]:
        if line.startswith("```"):
            fenced = not fenced
        if not fenced and re.match(r"#{1,6} ", line):
            if heading is not None and not "".join(content).strip():
                problems.append(f"section {heading!r} is empty")
            heading, content = line.lstrip("# ").strip(), []
        else:
            content.append(line)
    return problems
