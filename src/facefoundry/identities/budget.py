"""How many candidates rejection sampling needs, refused up front when it cannot finish, and its progress.

For a unit vector drawn uniformly on the sphere in ``d`` dimensions, the cosine ``c`` to a fixed unit
vector satisfies ``c**2 ~ Beta(1/2, (d-1)/2)``, so ``P(c > t)`` is a regularised incomplete beta
function (:func:`exceed_probability`). A candidate is kept if it is within ``t`` of none of the ``n``
identities kept so far; treating those ``n`` caps as disjoint gives an acceptance of about
``(1 - p)**n``: a lower bound (caps overlap), so the candidate count below is an upper estimate for
the uniform proposal. Candidates to keep ``N`` identities: ``sum_{n<N} (1-p)**-n``.

A Gaussian (PCA) proposal concentrates mass, which only makes cosines larger: what the uniform
estimate refuses, it cannot do either.
"""

from __future__ import annotations

import math
import sys
import time
from typing import TextIO

import numpy as np

from facefoundry.sections import IdentitiesConfig

REJECTION_SAMPLERS = ("gaussian_rejection", "pca_gaussian")
_COMPARE_BLOCK = 1024  # candidates screened per block (rejection.BLOCK): the per-candidate overhead in ETA


class InfeasibleSamplingError(RuntimeError):
    """The requested identities cannot be sampled within the candidate budget."""


def _regularized_beta(x: float, a: float, b: float) -> float:
    """The regularised incomplete beta function ``I_x(a, b)`` (continued fraction, modified Lentz)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    if x > (a + 1.0) / (a + b + 2.0):  # the fraction converges fast only below the mean: reflect
        return 1.0 - _regularized_beta(1.0 - x, b, a)
    log_front = a * math.log(x) + b * math.log1p(-x) + math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
    tiny, c, d = 1e-300, 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    fraction = d
    for m in range(1, 10_000):
        for numerator in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            fraction *= c * d
        if abs(c * d - 1.0) < 1e-15:
            break
    return math.exp(log_front) * fraction / a


def exceed_probability(t: float, dim: int) -> float:
    """``P(cos > t)`` between a uniformly random unit vector and a fixed one in ``dim`` dimensions."""
    if t >= 1.0:
        return 0.0
    if t <= -1.0:
        return 1.0
    tail = 0.5 * _regularized_beta(1.0 - t * t, (dim - 1) / 2.0, 0.5)  # P(cos > |t|)
    return tail if t >= 0 else 1.0 - tail


def log_expected_candidates(count: int, p: float) -> float:
    """Natural log of the expected candidates to keep ``count`` identities when each kept one rejects a
    fraction ``p`` of new candidates (no overflow for astronomically many)."""
    if p <= 0.0:
        return math.log(count)
    if p >= 1.0:
        return math.inf if count > 1 else 0.0
    q = -math.log1p(-p)  # acceptance of the n-th candidate: exp(-q n)

    def log_expm1(x: float) -> float:
        return x + math.log1p(-math.exp(-x)) if x > 30 else math.log(math.expm1(x))

    return log_expm1(q * count) - log_expm1(q)


def candidate_budget(cfg: IdentitiesConfig, count: int | None = None) -> int:
    """The sampler's candidate budget: ``identities.max_candidates``, default 1000 x count."""
    return cfg.max_candidates or 1000 * (count or cfg.count)


def _human(log_n: float) -> str:
    if log_n < math.log(1e15):
        return f"{math.exp(log_n):,.0f}"
    return f"1e{log_n / math.log(10):.0f}"


def check_feasible(cfg: IdentitiesConfig, count: int | None = None) -> None:
    """Raise :class:`InfeasibleSamplingError` with the numbers if a rejection sampler is expected to need
    more candidates than its budget to keep ``count`` (default ``cfg.count``) identities."""
    count = count or cfg.count
    if cfg.sampler not in REJECTION_SAMPLERS or cfg.max_cosine is None or count < 2:
        return
    p = exceed_probability(cfg.max_cosine, cfg.dim)
    need, budget = log_expected_candidates(count, p), candidate_budget(cfg, count)
    if need <= math.log(budget):
        return
    last = (count - 1) * math.log1p(-p) / math.log(10) if p < 1 else -math.inf
    raise InfeasibleSamplingError(
        f"identities: {count:,} identities at max_cosine={cfg.max_cosine} in {cfg.dim} dimensions need about "
        f"{_human(need)} candidates (a random pair exceeds {cfg.max_cosine} with probability {p:.3g}, so the "
        f"last identity is accepted with probability about 1e{last:.0f}), over the budget of {budget:,} "
        f"(identities.max_candidates); raise identities.max_cosine or lower identities.count"
    )


def _clock(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class SamplingProgress:
    """Progress lines of a long rejection sampling: candidates tried, identities accepted, ETA.

    Silent for the first ``after_s`` seconds (small runs print nothing), then one line every
    ``every_s`` seconds and a last one when sampling ends. The ETA weighs each remaining identity by
    its expected candidates and by the kept identities each candidate is compared with."""

    def __init__(self, count: int, max_cosine: float, dim: int, stream: TextIO | None = None,
                 after_s: float = 2.0, every_s: float = 10.0):
        self.count, self.stream = count, stream or sys.stderr
        self.after_s, self.every_s = after_s, every_s
        p = exceed_probability(max_cosine, dim)
        self._q = -math.log1p(-p) if p < 1 else math.inf
        self.started = time.monotonic()
        self._next = self.started + after_s
        self.lines = 0

    def _work(self, lo: int, hi: int) -> float:
        """Expected compare work of keeping identities ``lo..hi-1`` (arbitrary units)."""
        if hi <= lo:
            return 0.0
        n = np.linspace(lo, hi, 257)
        f = np.exp(np.minimum(self._q * n, 700.0)) * (n + _COMPARE_BLOCK)
        return float(np.trapezoid(f, n))

    def eta(self, kept: int) -> float | None:
        """Seconds left, from the time so far and the expected work done and left; None before any."""
        done = self._work(0, kept)
        return (time.monotonic() - self.started) * self._work(kept, self.count) / done if done > 0 else None

    def line(self, drawn: int, kept: int) -> str:
        eta = self.eta(kept)
        return (f"identities: {drawn:,} candidates tried, {kept:,}/{self.count:,} accepted "
                f"({100.0 * kept / self.count:.1f}%), ETA {_clock(eta) if eta is not None else '?'}")

    def __call__(self, drawn: int, kept: int) -> None:
        now = time.monotonic()
        if now >= self._next or (kept >= self.count and self.lines):
            self.stream.write(self.line(drawn, kept) + "\n")
            self.stream.flush()
            self.lines += 1
            self._next = now + self.every_s
