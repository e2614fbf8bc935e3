"""Exact sequential rejection sampling on the sphere (Vec2Face's rule).

Candidates are drawn in order from a proposal, ``BLOCK`` at a time, and kept only if their cosine (the
float64 dot product of the float32 unit vectors) to every vector kept so far is <= ``tau``.

The result is exactly that of the naive sequential loop, computed blockwise and mostly in reduced
precision (:mod:`facefoundry.identities.kernels`):

* several blocks are drawn together when the loop would certainly draw them all (each block keeps at
  most ``BLOCK`` vectors, so while ``count`` is more than a block away the next one is drawn anyway):
  the same calls to the proposal in the same order, only batched;
* each batch is screened against everything kept before it in one blockwise pass (total work N^2/2:
  each pair is compared once, from the later vector's side);
* within the batch the sequential dependency is resolved exactly from the batch's own similarity
  matrix: only pairs whose float64 cosine exceeds ``tau`` ("conflicts") matter, and a greedy pass in
  draw order rejects a candidate iff one of its earlier conflicting candidates was kept. Conflicts are
  rare, so the sequential part is tiny.

Non-finite candidates (a degenerate proposal) are rejected.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from facefoundry.identities import kernels

BLOCK = 1024

Proposal = Callable[[np.random.Generator, int], np.ndarray]


class SamplingError(RuntimeError):
    """Sampling could not reach the requested number of identities."""


def gaussian_proposal(dim: int) -> Proposal:
    return lambda rng, n: rng.standard_normal((n, dim)).astype(np.float32)


def _normalise(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _greedy(alive: np.ndarray, later: np.ndarray, earlier: np.ndarray) -> np.ndarray:
    """Keep candidates in order: alive ones without a kept earlier conflict."""
    kept = alive.copy()
    both = kept[later] & kept[earlier]
    later, earlier = later[both], earlier[both]
    if len(later) == 0:
        return kept
    order = np.lexsort((earlier, later))
    later, earlier = later[order], earlier[order]
    starts = np.flatnonzero(np.r_[True, later[1:] != later[:-1]])
    for s, e in zip(starts, np.r_[starts[1:], len(later)], strict=True):
        if kept[earlier[s:e]].any():  # earlier candidates are already final
            kept[later[s]] = False
    return kept


def _batch_sizes(n_kept: int, count: int, drawn: int, max_candidates: int, blocks: int) -> list[int]:
    """Sizes of the blocks the sequential loop will certainly draw next (at least one)."""
    sizes: list[int] = []
    while len(sizes) < blocks and drawn < max_candidates and n_kept + sum(sizes) < count:
        sizes.append(min(BLOCK, max_candidates - drawn))
        drawn += sizes[-1]
    return sizes


def rejection_sample(
    propose: Proposal, count: int, dim: int, tau: float, max_candidates: int, rng: np.random.Generator,
    on_batch: Callable[[int, int], None] | None = None,
) -> tuple[np.ndarray, int]:
    """Return (``count`` unit float32 vectors, candidates drawn); raise :class:`SamplingError` if the
    candidate budget runs out first. ``on_batch(drawn, kept)`` is called after each screened batch."""
    device = kernels.default_device()
    kept = np.empty((count, dim), dtype=np.float32)
    bank = kernels.Prepared(
        screen=torch.empty((count, dim), dtype=kernels.screen_dtype(device), device=device),
        source=torch.from_numpy(kept) if device.type == "cpu" else torch.empty((count, dim), device=device),
        norms=None,
        err=0.0,
        size=0.0,
    )
    blocks = max(1, kernels.default_block(device) // BLOCK)
    n_kept = drawn = 0
    while n_kept < count and drawn < max_candidates:
        sizes = _batch_sizes(n_kept, count, drawn, max_candidates, blocks)
        batch = np.concatenate([_normalise(propose(rng, size)) for size in sizes])
        drawn += sum(sizes)
        finite = np.isfinite(batch).all(axis=1)
        batch[~finite] = 0.0
        cands = kernels.prepare(batch, normalise=False, device=device)
        alive = finite & ~kernels.exceeding_rows(cands, bank, n_kept, tau).cpu().numpy()
        later, earlier = kernels.conflicts_within(cands, tau, np.flatnonzero(alive))
        take = np.flatnonzero(_greedy(alive, later, earlier))[: count - n_kept]
        new = slice(n_kept, n_kept + len(take))
        kept[new] = batch[take]
        index = torch.from_numpy(take).to(device)
        bank.screen[new] = cands.screen[index]
        if device.type != "cpu":
            bank.source[new] = cands.source[index]
        bank.err, bank.size = max(bank.err, cands.err), max(bank.size, cands.size)
        n_kept += len(take)
        if on_batch is not None:
            on_batch(drawn, n_kept)
    if n_kept < count:
        raise SamplingError(
            f"identities: kept only {n_kept} of {count} identities after {drawn} candidates at "
            f"max_cosine={tau} in {dim} dimensions; raise identities.max_cosine, lower "
            f"identities.count, or raise identities.max_candidates"
        )
    return kept, drawn
