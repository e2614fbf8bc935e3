"""HyperFace identity sampler: packing points on the unit hypersphere by projected gradient descent.

HyperFace (Otroshi Shahreza & Marcel, ICLR 2025) treats identity generation as a packing problem: the
identity vectors should be as far from each other as possible on the sphere of the face embedding
space, optionally while staying close to a gallery of real face embeddings (so that they remain on the
"face manifold" of the embedding model). Here the objective is

    L(X) = sum_i T * logsumexp_{j in NN_k(i)} (<x_i, x_j> / T)  +  alpha * sum_i (1 - max_g <x_i, g>)

where NN_k(i) are the ``neighbours`` nearest other points of x_i and T the ``temperature`` (the
log-sum-exp is a smooth max over the neighbours; with one neighbour it is the nearest-neighbour cosine).
The loss is a sum over points, so ``learning_rate`` is an angle-like step per point whatever N is.
Each iteration takes a Riemannian gradient step (the gradient projected on the tangent space of the
sphere), then re-normalises every point; the step follows a cosine decay from ``learning_rate`` to a
small fraction of it.

Two variants:

* full batch (``batch_size`` null): every point moves every iteration. The nearest-neighbour lists are
  candidate lists taken from an exact blockwise N x N search (memory O(block * N)) that is refreshed
  every few iterations; between refreshes only the candidates' cosines are recomputed (O(N * K * d)).
  Every refresh also gives the exact max nearest-neighbour cosine, which drives the stopping rule.
* stochastic (``batch_size`` = B): each iteration draws B points (an epoch-wise permutation from a
  seeded ``torch.Generator``), finds their exact nearest neighbours among all N points (memory O(B * N))
  and takes the gradient step of their terms of the loss. The exact max is checked once per epoch.

The run stops when the exact max nearest-neighbour cosine is <= ``target_max_cosine`` or after
``iterations``. Runs on CUDA when available; deterministic for given inputs and seed on one machine.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from facefoundry.sections import HyperFaceConfig

__all__ = ["HyperFaceResult", "hyperface_pack", "max_nn_cosine"]

_BLOCK = 2048  # query rows per block of the exact similarity searches (memory O(block * N)), at most
_CANDIDATES = 16  # full batch: candidate neighbours kept per point between refreshes (at least 4 x neighbours)
_REFRESH = 10  # full batch: iterations between exact candidate refreshes (and exact max checks)
_EXACT_EVERY_STEP = 1024  # full batch with N <= this: exact neighbours (and max check) every iteration
_FINAL_LR = 0.05  # the step decays (cosine) from learning_rate to this fraction of it


@dataclass
class HyperFaceResult:
    vectors: np.ndarray  # (N, d) float32, unit norm
    iterations: int  # iterations (gradient steps) taken
    max_nn_before: float  # exact max nearest-neighbour cosine of the start
    max_nn_after: float  # ... of the returned vectors
    seconds: float
    history: list[tuple[int, float]] = field(default_factory=list)  # (iteration, exact max NN cosine)
    stop_reason: str = "iterations"  # 'target' | 'iterations'


def _validated_unit(name: str, array: np.ndarray, dim: int | None = None) -> np.ndarray:
    a = np.asarray(array)
    if a.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array (N, dim), got shape {a.shape}")
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise ValueError(f"{name} is empty (shape {a.shape})")
    if not np.issubdtype(a.dtype, np.number) or np.iscomplexobj(a):
        raise ValueError(f"{name} must be a real numeric array, got dtype {a.dtype}")
    if dim is not None and a.shape[1] != dim:
        raise ValueError(f"{name} has dimension {a.shape[1]} but the identities have dimension {dim}")
    a = a.astype(np.float64)
    if not np.isfinite(a).all():
        bad = int((~np.isfinite(a)).any(axis=1).sum())
        raise ValueError(f"{name} contains NaN or infinite values ({bad} rows)")
    norms = np.linalg.norm(a, axis=1)
    zero = norms < 1e-12
    if zero.any():
        raise ValueError(f"{name} contains {int(zero.sum())} zero vectors (first at row {int(np.argmax(zero))})")
    return (a / norms[:, None]).astype(np.float32)


def _device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def _scatter_add_rows(out: torch.Tensor, index: torch.Tensor, rows: torch.Tensor) -> None:
    """``out[index[i]] += rows[i]``, deterministically (CUDA's index_add_ is deterministic only in that mode)."""
    if out.device.type == "cpu":
        out.index_add_(0, index, rows)
        return
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        out.index_add_(0, index, rows)
    finally:
        torch.use_deterministic_algorithms(previous)


def _gather_rows(x: torch.Tensor, width: int) -> int:
    """Rows per block of the neighbour gathers (``width`` vectors each): ~64 MB on CPU, ~1 GB on GPU.

    Few large blocks rather than many small ones: on a busy CPU every parallel region costs a
    scheduler slice, so the number of ops per iteration matters more than their size.
    """
    budget = (64 if x.device.type == "cpu" else 1024) * 2**20
    return max(1, budget // (width * x.shape[1] * x.element_size()))


def _query_rows(x: torch.Tensor, columns: int) -> int:
    """Rows per block of a (rows x columns) similarity search: at most _BLOCK, ~256 MB (CPU) or ~2 GB (GPU)."""
    budget = (256 if x.device.type == "cpu" else 2048) * 2**20
    return int(min(_BLOCK if x.device.type == "cpu" else 8 * _BLOCK, max(64, budget // (4 * columns))))


def _knn(x: torch.Tensor, k: int, rows: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosines and indices (sorted, largest first) of the k nearest other points of ``x[rows]``, blockwise."""
    n = x.shape[0]
    rows = torch.arange(n, device=x.device) if rows is None else rows
    block = _query_rows(x, n)
    buffer = torch.empty((min(block, len(rows)), n), dtype=x.dtype, device=x.device)
    values, indices = [], []
    for start in range(0, len(rows), block):
        r = rows[start : start + block]
        sims = torch.mm(x[r], x.T, out=buffer[: len(r)])
        sims[torch.arange(len(r), device=x.device), r] = -math.inf  # never one's own neighbour
        v, i = sims.topk(k, dim=1)
        values.append(v)
        indices.append(i)
    return torch.cat(values), torch.cat(indices)


def _nearest_gallery(x: torch.Tensor, gallery: torch.Tensor) -> torch.Tensor:
    """Index of each row's nearest gallery vector (blockwise over rows and gallery)."""
    out = torch.empty(x.shape[0], dtype=torch.long, device=x.device)
    chunk = 8 * _BLOCK
    block = _query_rows(x, chunk)
    for start in range(0, x.shape[0], block):
        q = x[start : start + block]
        best = torch.full((len(q),), -math.inf, dtype=x.dtype, device=x.device)
        arg = torch.zeros(len(q), dtype=torch.long, device=x.device)
        for g0 in range(0, gallery.shape[0], chunk):
            v, i = (q @ gallery[g0 : g0 + chunk].T).max(dim=1)
            better = v > best
            best = torch.where(better, v, best)
            arg = torch.where(better, i + g0, arg)
        out[start : start + block] = arg
    return out


def _max_nn(x: torch.Tensor) -> float:
    return float(_knn(x, 1)[0].max())


def max_nn_cosine(vectors: np.ndarray) -> float:
    """Exact (float32, blockwise) largest nearest-neighbour cosine of a set of vectors."""
    unit = _validated_unit("vectors", vectors)
    if len(unit) < 2:
        return float("nan")
    return _max_nn(torch.from_numpy(unit).to(_device()))


def _add_push(
    grad: torch.Tensor,
    x: torch.Tensor,
    rows: torch.Tensor | slice,
    nbr: torch.Tensor,
    sims: torch.Tensor | None,
    neighbours: torch.Tensor,
    temperature: float,
) -> None:
    """Add the gradient of sum_{i in rows} T * logsumexp_s(sims[i, s] / T) with respect to every point.

    ``sims[i, s] = <x[rows][i], x[nbr[i, s]]>`` (unused with one neighbour), ``neighbours = x[nbr]``, and
    ``rows`` holds no duplicates. Each term acts on both ends of its pairs: the point itself (own term,
    the softmax-weighted sum of its neighbours) and each neighbour (reverse term, the point times its weight).
    """
    if nbr.shape[1] == 1:  # the smooth max of one cosine is that cosine: unit weights
        grad[rows] += neighbours[:, 0]
        _scatter_add_rows(grad, nbr[:, 0], x[rows])
        return
    w = torch.softmax(sims / temperature, dim=1)  # (R, k)
    grad[rows] += torch.bmm(w.unsqueeze(1), neighbours).squeeze(1)
    reverse = (w.unsqueeze(-1) * x[rows].unsqueeze(1)).reshape(-1, x.shape[1])
    _scatter_add_rows(grad, nbr.reshape(-1), reverse)


def _step_(x: torch.Tensor, grad: torch.Tensor, lr: float) -> None:
    """In place: Riemannian gradient step on the sphere, x <- normalise(x - lr * (g - <g, x> x))."""
    radial = (grad * x).sum(dim=1, keepdim=True)
    x.mul_(radial.mul_(lr).add_(1.0)).add_(grad, alpha=-lr)
    x.div_(torch.linalg.vector_norm(x, dim=1, keepdim=True))


def _learning_rate(cfg: HyperFaceConfig, t: int) -> float:
    progress = t / max(cfg.iterations - 1, 1)
    return cfg.learning_rate * (_FINAL_LR + (1 - _FINAL_LR) * 0.5 * (1 + math.cos(math.pi * progress)))


def _full_batch_push(grad: torch.Tensor, x: torch.Tensor, candidates: torch.Tensor, k: int, temperature: float) -> None:
    """Add the push gradient of every point against its k nearest points among its candidates."""
    block = _gather_rows(x, candidates.shape[1])
    for start in range(0, x.shape[0], block):
        r = slice(start, start + block)
        cand = candidates[r]
        near = x[cand]  # (b, K, d)
        sims = None
        if k > 1 or k < cand.shape[1]:  # cosines needed to pick the nearest or to weight them
            sims = torch.einsum("bkd,bd->bk", near, x[r])
        if k < cand.shape[1]:
            sims, slot = sims.topk(k, dim=1)
            cand = cand.gather(1, slot)
            near = torch.take_along_dim(near, slot.unsqueeze(2), dim=1)
        _add_push(grad, x, r, cand, sims, near, temperature)


def hyperface_pack(
    initial: np.ndarray,
    cfg: HyperFaceConfig,
    gallery: np.ndarray | None = None,
    seed: int = 0,
    progress: Callable[[int, float], None] | None = None,
) -> HyperFaceResult:
    """Spread ``initial`` (N x d, any norm) over the unit sphere; see the module docstring.

    ``gallery`` (M x d, any norm) enables the regulariser of weight ``cfg.alpha``. ``progress`` is called
    with (iteration, exact max nearest-neighbour cosine) at every exact check.
    """
    start_time = time.perf_counter()
    unit = _validated_unit("initial", initial)
    n, d = unit.shape
    gal_np = None if gallery is None else _validated_unit("gallery", gallery, dim=d)
    if n < 2:
        return HyperFaceResult(unit, 0, float("nan"), float("nan"), time.perf_counter() - start_time)

    device = _device()
    x = torch.from_numpy(unit).to(device)
    gal = None if gal_np is None or cfg.alpha == 0 else torch.from_numpy(gal_np).to(device)
    generator = torch.Generator().manual_seed(int(seed))
    k = min(cfg.neighbours, n - 1)
    grad = torch.empty_like(x)
    history: list[tuple[int, float]] = []

    def check(t: int, value: float) -> bool:
        history.append((t, value))
        if progress is not None:
            progress(t, value)
        return cfg.target_max_cosine is not None and value <= cfg.target_max_cosine

    stochastic = cfg.batch_size is not None and cfg.batch_size < n
    stop_reason = "iterations"
    last_checked = -1
    t = 0
    if stochastic:
        batch = int(cfg.batch_size)
        check_every = max(1, math.ceil(n / batch))  # one exact N x N check per epoch: as costly as the steps
        order = torch.randperm(n, generator=generator).to(device)
        position = 0
        for t in range(cfg.iterations):
            if t % check_every == 0:
                last_checked = t
                if check(t, _max_nn(x)):
                    stop_reason = "target"
                    break
            if position + batch > n:
                order = torch.randperm(n, generator=generator).to(device)
                position = 0
            rows = order[position : position + batch]
            position += batch
            sims, nbr = _knn(x, k, rows)
            grad.zero_()
            _add_push(grad, x, rows, nbr, sims, x[nbr], cfg.temperature)
            if gal is not None:
                grad[rows] -= cfg.alpha * gal[_nearest_gallery(x[rows], gal)]
            _step_(x, grad, _learning_rate(cfg, t))
        else:
            t = cfg.iterations
    else:
        refresh = 1 if n <= _EXACT_EVERY_STEP else _REFRESH
        n_cand = min(n - 1, max(_CANDIDATES, 4 * k))
        for t in range(cfg.iterations):
            if t % refresh == 0:
                cand_sims, candidates = _knn(x, n_cand)
                last_checked = t
                if check(t, float(cand_sims[:, 0].max())):
                    stop_reason = "target"
                    break
                if gal is not None:
                    gal_near = gal[_nearest_gallery(x, gal)]
            grad.zero_()
            _full_batch_push(grad, x, candidates, k, cfg.temperature)
            if gal is not None:
                grad.add_(gal_near, alpha=-cfg.alpha)
            _step_(x, grad, _learning_rate(cfg, t))
        else:
            t = cfg.iterations

    if last_checked != t:  # the final state has not been measured yet
        if check(t, _max_nn(x)):
            stop_reason = "target"
    return HyperFaceResult(
        vectors=x.cpu().numpy().astype(np.float32),
        iterations=t,
        max_nn_before=history[0][1],
        max_nn_after=history[-1][1],
        seconds=time.perf_counter() - start_time,
        history=history,
        stop_reason=stop_reason,
    )
