"""A merged run is written by ``facefoundry merge`` from finished runs; nothing can generate its images again."""

from __future__ import annotations


class MergedGenerator:
    """Refuses to generate: a merged run's rows are copied from its source runs."""

    def __init__(self, *args, **kwargs):
        raise RuntimeError("a merged dataset is not generated: its rows come from its source runs; run "
                           "`facefoundry merge` again with the same runs to finish or rebuild it")
