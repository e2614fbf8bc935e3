"""Demographic quotas: which candidate identities a balanced run keeps.

A balanced run samples more candidate identities than it needs, renders one probe image of each, estimates its
attributes (gender, age group, ...) and keeps a candidate only while its *cell* (the tuple of its attribute values)
has room. The cells' room (:func:`allocate`) is the run's identity count split by the target proportions with the
largest-remainder rule, so a filled run misses each target by less than one identity.

Every decision here is a pure function of the candidates' cells *in candidate order*: the same probes give the
same identities, whether they arrive in one call or across a killed and resumed run (:class:`QuotaFill`).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction

Cell = tuple[str, ...]
CELL_SEPARATOR = "|"  # joint cells in configs and reports: "female|20-39"


class QuotaError(ValueError):
    """Targets that cannot be met: malformed proportions, or too few candidates of some cell."""


def cell_name(cell: Cell) -> str:
    return CELL_SEPARATOR.join(cell)


def cell_targets(attributes: Sequence[str], marginals: Mapping[str, Mapping[str, float]],
                 joint: Mapping[str, float] | None = None) -> dict[Cell, float]:
    """Target proportion of every cell: the explicit ``joint`` cells ("v1|v2" in ``attributes`` order), else the
    product of the per-attribute ``marginals`` (attributes independent). Cells of proportion 0 are kept (quota 0)."""
    if joint:
        out = {}
        for name, p in joint.items():
            cell = tuple(name.split(CELL_SEPARATOR))
            if len(cell) != len(attributes):
                raise QuotaError(f"joint cell {name!r} has {len(cell)} values; expected one per attribute "
                                 f"({CELL_SEPARATOR.join(attributes)})")
            out[cell] = float(p)
        _check_sum(out.values(), "the joint cells")
        return out
    for attr in attributes:
        if attr not in marginals:
            raise QuotaError(f"no target proportions for attribute {attr!r}")
        _check_sum(marginals[attr].values(), f"attribute {attr!r}")
    values = [list(marginals[a]) for a in attributes]
    return {cell: _product(marginals[a][v] for a, v in zip(attributes, cell, strict=True))
            for cell in itertools.product(*values)}


def _product(values: Iterable[float]) -> float:
    out = 1.0
    for v in values:
        out *= v
    return out


def _check_sum(values: Iterable[float], what: str) -> None:
    values = list(values)
    if any(v < 0 for v in values) or abs(sum(values) - 1.0) > 1e-6:
        raise QuotaError(f"target proportions of {what} must be >= 0 and sum to 1, got {values}")


def allocate(count: int, targets: Mapping[Cell, float]) -> dict[Cell, int]:
    """Split ``count`` identities among the cells by the largest-remainder rule (ties: the cells' order).

    The targets are normalised first (they may sum to 1 only within the accepted 1e-6) and the shares are
    computed exactly, so the quotas sum to ``count`` at any size."""
    shares = {cell: Fraction(p) for cell, p in targets.items()}
    total = sum(shares.values())
    if total <= 0:
        raise QuotaError(f"target proportions must sum to 1, got {list(targets.values())}")
    exact = {cell: count * share / total for cell, share in shares.items()}
    quotas = {cell: int(x) for cell, x in exact.items()}
    left = count - sum(quotas.values())
    order = sorted(targets, key=lambda c: -(exact[c] - quotas[c]))  # stable: ties keep the targets' order
    for cell in order[:left]:
        quotas[cell] += 1
    return quotas


def marginals_of(cells: Sequence[Cell], attributes: Sequence[str]) -> dict[str, dict[str, float]]:
    """Achieved proportions of each attribute's values among ``cells``."""
    out: dict[str, dict[str, float]] = {a: {} for a in attributes}
    for cell in cells:
        for attr, value in zip(attributes, cell, strict=True):
            out[attr][value] = out[attr].get(value, 0) + 1
    n = max(len(cells), 1)
    return {a: {v: k / n for v, k in sorted(counts.items())} for a, counts in out.items()}


def max_deviation(achieved: Mapping[Cell, int], targets: Mapping[Cell, float]) -> float:
    """The largest |achieved share - target share| over the target cells (and any cell outside the targets)."""
    n = max(sum(achieved.values()), 1)
    cells = set(targets) | set(achieved)
    return max((abs(achieved.get(c, 0) / n - targets.get(c, 0.0)) for c in cells), default=0.0)


@dataclass
class QuotaFill:
    """Offer candidates in index order; each is kept while its cell has room.

    ``offer(index, cell)`` with ``cell`` None (no face, attributes unknown) never keeps it. Offers must come in
    increasing index order (that order is what makes the result resumable)."""

    quotas: dict[Cell, int]
    kept: list[int] = field(default_factory=list)
    kept_cells: list[Cell] = field(default_factory=list)
    over: list[tuple[int, Cell]] = field(default_factory=list)  # candidates whose cell was full (or untargeted)
    filled: dict[Cell, int] = field(default_factory=dict)
    unknown: int = 0
    offered: int = 0
    _last: int = -1

    def offer(self, index: int, cell: Cell | None) -> bool:
        if index <= self._last:
            raise ValueError(f"candidates must be offered in increasing order: {index} after {self._last}")
        self._last, self.offered = index, self.offered + 1
        if cell is None:
            self.unknown += 1
            return False
        if self.room(cell) > 0:
            self.kept.append(index)
            self.kept_cells.append(cell)
            self.filled[cell] = self.filled.get(cell, 0) + 1
            return True
        self.over.append((index, cell))
        return False

    def room(self, cell: Cell) -> int:
        return self.quotas.get(cell, 0) - self.filled.get(cell, 0)

    @property
    def complete(self) -> bool:
        return len(self.kept) == sum(self.quotas.values())

    def counts(self) -> dict[Cell, int]:
        return {cell: self.filled.get(cell, 0) for cell in self.quotas}

    def finish(self, targets: Mapping[Cell, float], tolerance: float) -> tuple[list[int], list[Cell]]:
        """The kept candidates, in index order. If the candidates ran out before every cell was full, the empty
        places go to the earliest over-quota candidates, provided the result is still within ``tolerance`` of
        every target cell; otherwise :class:`QuotaError` names the cells that are short."""
        missing = sum(self.quotas.values()) - len(self.kept)
        if missing <= 0:
            return list(self.kept), list(self.kept_cells)
        short = {cell_name(c): r for c in self.quotas if (r := self.room(c)) > 0}
        if len(self.over) < missing:
            raise QuotaError(f"{self.offered} candidates ({self.unknown} without a face) give "
                             f"{len(self.kept) + len(self.over)} usable identities for {sum(self.quotas.values())}; "
                             f"cells short (missing identities): {short}; raise balance.oversample")
        pairs = sorted([*zip(self.kept, self.kept_cells, strict=True), *self.over[:missing]])
        counts: dict[Cell, int] = {}
        for _, cell in pairs:
            counts[cell] = counts.get(cell, 0) + 1
        deviation = max_deviation(counts, targets)
        if deviation > tolerance + 1e-9:  # shares are float: 11/20 - 0.5 is 0.05 plus rounding
            raise QuotaError(f"{self.offered} candidates left cells short {short}; filling them with other cells "
                             f"would miss a target by {deviation:.3f} > balance.tolerance {tolerance}; raise "
                             "balance.oversample (or the tolerance)")
        return [i for i, _ in pairs], [c for _, c in pairs]
