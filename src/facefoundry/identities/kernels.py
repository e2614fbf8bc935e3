"""Exact blockwise cosine-similarity kernels: a reduced-precision screen plus a float64 re-check.

Every N x N (or M x N) similarity question is answered tile by tile (``block`` x ``block``): memory is
O(N*d + block^2) and the N x N matrix never exists. Tiles are computed in a reduced precision (bfloat16
on CPU, float16 on CUDA; both accumulate in float32), 4-5x faster than float32 on CPU. A proven bound
E on the screen's error decides every pair whose screened cosine is clear of the question's threshold;
pairs inside the margin are recomputed in float64 from the original vectors. The answers are those of
a float64 computation.

**The bound.** x, y are the exact vectors (rows divided by their float64 norms, or, for ``normalise=False``,
the rows as given, whose "cosine" is then their dot product), N_x, N_y bounds on their norms (1, or the
measured maximum), x~, y~ their screen copies and e_x >= ||x~ - x||, e_y >= ||y~ - y|| bounds on the
rounding error norms, measured when the copies are made (the maximum over the rows, with the error of that
float32 measurement added; float16 copies also for their subnormals flushed to zero, in case the GEMM
flushes them). Then

    |x~.y~ - x.y| = |(x~ - x).y~ + x.(y~ - y)| <= e_x (N_y + e_y) + N_x e_y                (Cauchy-Schwarz)

and the float32 accumulation (unit roundoff v = 2^-24, any order, products rounded or not) adds at most
gamma_d (N_x + e_x)(N_y + e_y), gamma_d = d v / (1 - d v) (Higham, Accuracy and Stability of Numerical
Algorithms, 3.1), plus d 2^-126 for products flushed to zero. Their sum E (+1e-9) bounds |s - c|, s the
float32 accumulator, c the exact cosine. The final rounding of s to the screen format is monotone and
faithful, so it is handled exactly by rounding thresholds outward to the screen grid:

* c > t  implies  screen >= rd(t - E)        (so everything below is decided: cosine <= t)
* screen > ru(t + E)  implies  c > t          (decided without a re-check)
* the exact nearest neighbour j* of row i has screen >= rd(pred(R_i) - 2E), R_i the row's screened
  maximum and pred the grid value below it.

A priori every component rounds with relative error <= u (2^-8 bfloat16, 2^-11 float16), so e <= u and
E <= 2u + gamma_d = 0.0079 for bfloat16, d = 512 (:func:`screen_margin`); the measured e is about u/2, so
in practice E is about 0.0039. The bound needs float32 accumulation: true of oneDNN/MKL bfloat16 GEMMs on
CPU, and of cuBLAS once reduced-precision reductions are disabled, as :func:`_accumulate_in_fp32` does
around every GPU screen.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

PAIR_DTYPE = np.dtype([("i", np.int64), ("j", np.int64), ("cos", np.float64)])
_UNIT_ROUNDOFF = {torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11}
_MIN_NORMAL = {torch.bfloat16: 2.0**-126, torch.float16: 2.0**-14}
_PREPARE_ROWS = 16384  # rows converted at a time (bounds the float64 temporaries)
_RECHECK_PAIRS = 4096  # pairs re-checked in float64 at a time


def default_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def screen_dtype(device: torch.device) -> torch.dtype:
    return torch.float16 if device.type == "cuda" else torch.bfloat16


def default_block(device: torch.device) -> int:
    """Rows per tile (columns: half as many). On 2 CPU cores 4096 x 2048 bfloat16 tiles run about 25 %
    faster than 4096 x 4096 ones (the 16 MB output stays in cache for the reductions that follow)."""
    return 16384 if device.type == "cuda" else 4096


def _tile_shape(block: int) -> tuple[int, int]:
    return block, max(1, block // 2)


def _gamma(dim: int) -> float:
    return dim * 2.0**-24 / (1 - dim * 2.0**-24)


def screen_margin(dim: int, dtype: torch.dtype) -> float:
    """A-priori bound E on |screen accumulator - exact cosine| for unit vectors in ``dim`` dimensions."""
    e = _UNIT_ROUNDOFF[dtype] + 2.0**-22 + _MIN_NORMAL[dtype] * math.sqrt(dim)  # + float32 normalisation
    return e * (2 + e) + _gamma(dim) * (1 + e) ** 2 + dim * 2.0**-126 + 1e-9


@contextlib.contextmanager
def _accumulate_in_fp32(device: torch.device) -> Iterator[None]:
    """Forbid cuBLAS reduced-precision (fp16/bf16) split-K reductions, under which the bound would fail."""
    if device.type != "cuda":
        yield
        return
    mm = torch.backends.cuda.matmul
    saved = mm.allow_fp16_reduced_precision_reduction, mm.allow_bf16_reduced_precision_reduction
    mm.allow_fp16_reduced_precision_reduction = mm.allow_bf16_reduced_precision_reduction = False
    try:
        yield
    finally:
        mm.allow_fp16_reduced_precision_reduction, mm.allow_bf16_reduced_precision_reduction = saved


@functools.lru_cache(maxsize=8)
def _left_of_diagonal(rows: int, cols: int, offset: int, device: torch.device) -> torch.Tensor:
    """Bool mask of the entries (r, c) with c - r < offset (cached: the same few shapes recur)."""
    return ~torch.ones((rows, cols), dtype=torch.bool, device=device).triu_(offset)


def _grid(x: float, dtype: torch.dtype, up: bool, device: torch.device) -> torch.Tensor:
    """ru(x) (``up``) or rd(x): the nearest screen-format value on that side of x, as a 1-element tensor.
    Clamped to [-2, 2] (every screened cosine lies inside), so masked -inf entries never pass."""
    x = min(max(x, -2.0), 2.0)
    t = torch.tensor([x], dtype=torch.float64).to(dtype)
    toward = torch.tensor([math.inf if up else -math.inf], dtype=dtype)
    while (float(t) < x) if up else (float(t) > x):
        t = torch.nextafter(t, toward)
    return t.to(device)


@dataclass
class Prepared:
    """Vectors ready for the kernels: a screen copy, the exact source and the screen's error bounds."""

    screen: torch.Tensor  # (n, d) screen dtype
    source: torch.Tensor  # (n, d) float32/float64, the vectors as given
    norms: torch.Tensor | None  # (n,) float64; None: rows used as they are (dot products)
    err: float  # >= ||screen row - exact row|| for every row
    size: float  # >= ||exact row|| for every row

    def margin(self, other: Prepared) -> float:
        """E for pairs of a row of ``self`` and a row of ``other`` (see the module docstring)."""
        a, b = (self.size, self.err), (other.size, other.err)
        d = self.screen.shape[1]
        return a[1] * (b[0] + b[1]) + a[0] * b[1] + _gamma(d) * (a[0] + a[1]) * (b[0] + b[1]) + d * 2.0**-126 + 1e-9


def prepare(
    vectors: np.ndarray | torch.Tensor,
    normalise: bool = True,
    device: torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> Prepared:
    """Screen copy of ``vectors`` (rows divided by their norms unless ``normalise=False``)."""
    device = device or default_device()
    dtype = dtype or screen_dtype(device)
    if dtype not in _UNIT_ROUNDOFF:
        raise ValueError(f"screen dtype must be bfloat16 or float16, got {dtype}")
    if isinstance(vectors, np.ndarray) and not vectors.flags.writeable:
        vectors = vectors.copy()  # torch cannot wrap a read-only array
    src = torch.as_tensor(vectors)
    if src.ndim != 2:
        raise ValueError(f"expected a 2-D array (N, dim), got shape {tuple(src.shape)}")
    if src.dtype not in (torch.float32, torch.float64):
        src = src.to(torch.float64)
    src = src.to(device).contiguous()
    n, d = src.shape
    screen = torch.empty((n, d), dtype=dtype, device=device)
    norms = torch.empty(n, dtype=torch.float64, device=device) if normalise else None
    err = size = 0.0
    for start in range(0, n, _PREPARE_ROWS):
        rows = src[start : start + _PREPARE_ROWS]
        if normalise:
            norm = torch.linalg.vector_norm(rows, dim=1, dtype=torch.float64)
            if not bool(torch.isfinite(norm).all()) or bool((norm == 0).any()):
                raise ValueError("vectors must be finite and non-zero to have cosines")
            norms[start : start + len(rows)] = norm
            rows32 = (rows * (1 / norm).to(rows.dtype)[:, None]).to(torch.float32)  # 3 roundings from exact
        else:
            rows32 = rows.to(torch.float32)
            norm = float(torch.linalg.vector_norm(rows32, dim=1).max())
            if not math.isfinite(norm):
                raise ValueError("vectors must be finite")
            size = max(size, norm * (1 + 1e-3))
        copy = rows32.to(dtype)
        screen[start : start + len(rows)] = copy
        err = max(err, float(torch.linalg.vector_norm(copy.to(torch.float32) - rows32, dim=1).max()))
        if dtype == torch.float16:  # the GEMM may flush subnormal inputs to zero: bound that copy too
            tiny = (copy.abs() < _MIN_NORMAL[dtype]) & (copy != 0)
            if bool(tiny.any()):
                flushed = torch.where(tiny, 0, copy).to(torch.float32)
                err = max(err, float(torch.linalg.vector_norm(flushed - rows32, dim=1).max()))
    # The differences above are exact (Sterbenz) and their float32 norms within d 2^-24 relative (<= 1e-3 for
    # d <= 16k); rows32 is within 2^-22 (relative) of the exact row; flushing bfloat16 subnormals (< 2^-126)
    # moves a row by less than 2^-126 sqrt(d).
    if not math.isfinite(err):
        raise ValueError(f"vectors overflow the {dtype} screen")
    err = err * (1 + 1e-3) + 2.0**-22 * (size if not normalise else 1.0) + 2.0**-126 * math.sqrt(d) + 1e-12
    return Prepared(screen, src, norms, err, size if not normalise else 1.0 + 2.0**-40)


def exact_cosines(a: Prepared, ia: torch.Tensor, b: Prepared, ib: torch.Tensor) -> torch.Tensor:
    """float64 cosines of the pairs (a[ia[k]], b[ib[k]]) (numpy on CPU: several times faster there)."""
    device = a.source.device
    if device.type == "cpu":
        xa, xb, ia_np, ib_np = a.source.numpy(), b.source.numpy(), ia.numpy(), ib.numpy()
        out = np.empty(len(ia_np))
        for s in range(0, len(ia_np), _RECHECK_PAIRS):
            i, j = ia_np[s : s + _RECHECK_PAIRS], ib_np[s : s + _RECHECK_PAIRS]
            out[s : s + len(i)] = np.einsum("ij,ij->i", xa[i].astype(np.float64), xb[j].astype(np.float64))
        result = torch.from_numpy(out)
    else:
        result = torch.empty(len(ia), dtype=torch.float64, device=device)
        for s in range(0, len(ia), _RECHECK_PAIRS):
            i, j = ia[s : s + _RECHECK_PAIRS], ib[s : s + _RECHECK_PAIRS]
            result[s : s + len(i)] = (a.source[i].to(torch.float64) * b.source[j].to(torch.float64)).sum(dim=1)
    if a.norms is not None and b.norms is not None:
        result = result / (a.norms[ia] * b.norms[ib])
    return result


def _entries_at_least(
    tile: torch.Tensor, row_max: torch.Tensor, threshold: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(row, col, value) of the tile's entries >= threshold (1 element, or one per row); only rows whose
    maximum reaches their threshold are scanned."""
    rows = (row_max >= threshold).nonzero().squeeze(1)
    if rows.numel() == 0:
        empty = torch.empty(0, dtype=torch.long, device=tile.device)
        return empty, empty, torch.empty(0, dtype=tile.dtype, device=tile.device)
    sub = tile.index_select(0, rows)
    thr = threshold.index_select(0, rows)[:, None] if threshold.numel() > 1 else threshold
    r, c = (sub >= thr).nonzero(as_tuple=True)
    return rows[r], c, sub[r, c]


def exceeding_rows(cands: Prepared, ref: Prepared, n_ref: int, tau: float, block: int | None = None) -> torch.Tensor:
    """Bool mask over ``cands``: does some exact cosine to ``ref[:n_ref]`` exceed ``tau``?

    A row whose screened maximum is above ru(tau + E) is decided at once; only rows whose maximum lies
    within the margin have their entries in the margin re-checked in float64.
    """
    device, dtype = cands.screen.device, cands.screen.dtype
    out = torch.zeros(len(cands.screen), dtype=torch.bool, device=device)
    if n_ref == 0 or len(out) == 0:
        return out
    rows, cols = _tile_shape(block or default_block(device))
    e = cands.margin(ref)
    lo, hi = _grid(tau - e, dtype, False, device), _grid(tau + e, dtype, True, device)
    with _accumulate_in_fp32(device):
        for i0 in range(0, len(out), rows):
            a, done = cands.screen[i0 : i0 + rows], out[i0 : i0 + rows]
            for j0 in range(0, n_ref, cols):
                tile = a @ ref.screen[j0 : min(j0 + cols, n_ref)].T
                row_max = tile.amax(dim=1)
                done |= row_max > hi
                unsure = (row_max >= lo) & ~done
                if bool(unsure.any()):
                    r, c, _ = _entries_at_least(tile, torch.where(unsure, row_max, -math.inf), lo)
                    done[r[exact_cosines(cands, r + i0, ref, c + j0) > tau]] = True
    return out


def conflicts_within(cands: Prepared, tau: float, rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Exact pairs (later, earlier) among ``cands[rows]`` (all rows by default; indices into ``cands``,
    earlier < later) whose cosine exceeds ``tau``."""
    device, dtype = cands.screen.device, cands.screen.dtype
    rows = np.arange(len(cands.screen)) if rows is None else np.asarray(rows, dtype=np.int64)
    index = torch.from_numpy(rows).to(device)
    norms = None if cands.norms is None else cands.norms[index]
    sub = Prepared(cands.screen[index], cands.source[index], norms, cands.err, cands.size)
    n, cols = len(rows), _tile_shape(default_block(device))[1]
    e = sub.margin(sub)
    lo, hi = _grid(tau - e, dtype, False, device), _grid(tau + e, dtype, True, device)
    later, earlier = [], []
    with _accumulate_in_fp32(device):
        for c0 in range(0, n, cols):  # rows c0.. against columns c0..c1: the lower triangle, tile by tile
            c1 = min(c0 + cols, n)
            tile = sub.screen[c0:] @ sub.screen[c0:c1].T
            top = tile[: c1 - c0]
            top.masked_fill_(~_left_of_diagonal(c1 - c0, c1 - c0, 0, device), -math.inf)  # keep column < row
            r, c, v = _entries_at_least(tile, tile.amax(dim=1), lo)
            if r.numel():
                r, c = r + c0, c + c0
                unsure = (v <= hi).nonzero().squeeze(1)
                hit = torch.ones(len(r), dtype=torch.bool, device=device)
                hit[unsure] = exact_cosines(sub, r[unsure], sub, c[unsure]) > tau
                later.append(r[hit].cpu().numpy())
                earlier.append(c[hit].cpu().numpy())
    if not later:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    return rows[np.concatenate(later)], rows[np.concatenate(earlier)]


def _upper_tiles(n: int, block: int) -> Iterator[tuple[int, int, int, int]]:
    """Tiles (i0, i1, j0, j1) covering every pair once from its upper side: row blocks of ``rows``, and
    column tiles from the block's own start. Tiles with j0 < i1 overlap the row block (the diagonal square,
    where each pair is there twice)."""
    rows, cols = _tile_shape(block)
    for i0 in range(0, n, rows):
        for j0 in range(i0, n, cols):
            yield i0, min(i0 + rows, n), j0, min(j0 + cols, n)


def _below_max(best: float, e: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """rd(pred(best) - 2E): a pair reaching the exact maximum screens at least this high."""
    pred = torch.nextafter(torch.tensor([best], dtype=dtype), torch.tensor([-math.inf], dtype=dtype))
    return _grid(float(pred) - 2 * e, dtype, False, device)


def pairs_above(
    vectors: np.ndarray,
    tau: float,
    *,
    block: int | None = None,
    device: torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> tuple[float, np.ndarray]:
    """(exact maximum pairwise cosine, every pair with cosine > ``tau``) of the rows of ``vectors``.

    Pairs come as a structured array (``PAIR_DTYPE``: i, j, cos) with i < j, sorted; only upper-triangle
    tiles are computed. The maximum is -inf for fewer than two rows.
    """
    p = prepare(vectors, device=device, dtype=dtype)
    device, dtype, n = p.screen.device, p.screen.dtype, len(p.screen)
    e, block = p.margin(p), block or default_block(device)
    lo_tau = _grid(tau - e, dtype, False, device)
    best = -math.inf  # screened maximum so far
    found: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def threshold() -> torch.Tensor:
        return torch.minimum(lo_tau, _below_max(best, e, dtype, device)) if best > -math.inf else lo_tau

    with _accumulate_in_fp32(device):
        for i0, i1, j0, j1 in _upper_tiles(n, block):
            tile = p.screen[i0:i1] @ p.screen[j0:j1].T
            if j0 < i1:  # in the diagonal square keep pairs i < j only
                tile.masked_fill_(_left_of_diagonal(i1 - i0, j1 - j0, i0 - j0 + 1, device), -math.inf)
            row_max = tile.amax(dim=1)
            best = max(best, float(row_max.max()))
            r, c, v = _entries_at_least(tile, row_max, threshold())
            if r.numel():
                found.append((r + i0, c + j0, v))
    if not found:
        return -math.inf, np.empty(0, PAIR_DTYPE)
    i, j, v = (torch.cat(t) for t in zip(*found, strict=True))
    keep = v >= threshold()
    i, j = i[keep], j[keep]
    cos = exact_cosines(p, i, p, j)
    top = float(cos.max())  # the true maximum's pair screens >= rd(pred(best) - 2E), so it is here
    above = cos > tau
    pairs = np.empty(int(above.sum()), PAIR_DTYPE)
    pairs["i"], pairs["j"], pairs["cos"] = i[above].cpu().numpy(), j[above].cpu().numpy(), cos[above].cpu().numpy()
    return top, np.sort(pairs, order=["i", "j"])


def _group_size(n: int, block: int) -> int:
    """Columns per group whose maxima pass 1 records: small enough that pass 2 recomputes little, large
    enough that the (n x n/group) maxima stay under ~1e8 entries. Divides the tile's columns (and rows)."""
    cols = _tile_shape(block)[1]
    group = 512
    while group < cols and n * -(-n // group) > 100_000_000:
        group *= 2
    return group if cols % group == 0 else cols


def _group_max(tile: torch.Tensor, group: int) -> torch.Tensor:
    """(rows, ceil(cols / group)): each row's maximum over consecutive groups of ``group`` columns."""
    rows, cols = tile.shape
    full = cols - cols % group
    parts = []
    if full:
        if tile.stride(1) == 1:  # row-major: split the columns
            parts.append(tile[:, :full].view(rows, full // group, group).amax(dim=2))
        else:  # a transposed row-major tile: split its (contiguous) rows
            parts.append(tile.T[:full].view(full // group, group, rows).amax(dim=1).T)
    if full < cols:
        parts.append(tile[:, full:].amax(dim=1, keepdim=True))
    return torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]


def nearest_neighbours(
    vectors: np.ndarray,
    *,
    block: int | None = None,
    device: torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(float64 cosine, index) of each row's nearest other row, equal to a float64 argmax (ties: lowest
    index); a single row gets (-inf, -1).

    Pass 1 screens the upper-triangle tiles only (each serves its rows and, transposed, its columns) and
    records every row's maximum over each group of columns. Pass 2 recomputes, for each row, only the
    groups whose maximum comes within the nearest-neighbour window of the row's overall maximum (a few
    per cent of them), and re-checks the entries inside the window in float64.
    """
    x = np.asarray(vectors)
    n = len(x)
    cos, idx = np.full(n, -np.inf), np.full(n, -1, dtype=np.int64)
    if n < 2:
        return cos, idx
    p = prepare(x, device=device, dtype=dtype)
    device, dtype = p.screen.device, p.screen.dtype
    e, block = p.margin(p), block or default_block(device)
    group = _group_size(n, block)
    group_max = torch.full((n, -(-n // group)), -math.inf, dtype=dtype, device=device)
    with _accumulate_in_fp32(device):
        for i0, i1, j0, j1 in _upper_tiles(n, block):
            tile = p.screen[i0:i1] @ p.screen[j0:j1].T
            if j0 < i1:  # the diagonal square: never one's own neighbour; its rows see every pair
                tile.diagonal(offset=i0 - j0).fill_(-math.inf)
            g0 = j0 // group
            group_max[i0:i1, g0 : g0 + -(-(j1 - j0) // group)] = _group_max(tile, group)
            if j0 >= i1:
                g0 = i0 // group
                group_max[j0:j1, g0 : g0 + -(-(i1 - i0) // group)] = _group_max(tile.T, group)
        # rd(pred(R) - 2E) >= R - 2E - 5u(|R| + 2E) - 2 min_normal (a grid step is <= 2u|value| above the
        # subnormals); 1e-6 covers the float32 arithmetic here.
        best = group_max.amax(dim=1).to(torch.float32)
        u = _UNIT_ROUNDOFF[dtype]
        threshold = best - 2 * e - 5 * u * (best.abs() + 2 * e) - 2 * _MIN_NORMAL[dtype] - 1e-6
        need = (group_max >= threshold[:, None]).T.contiguous()  # (groups, n)
        del group_max
        found_i, found_j = [], []
        for g in range(need.shape[0]):
            j0, j1 = g * group, min(g * group + group, n)
            rows_all = need[g].nonzero().squeeze(1)
            for s in range(0, len(rows_all), block):
                rows = rows_all[s : s + block]
                tile = p.screen[rows] @ p.screen[j0:j1].T
                own = ((rows >= j0) & (rows < j1)).nonzero().squeeze(1)
                tile[own, rows[own] - j0] = -math.inf
                r, c = (tile >= threshold[rows][:, None]).nonzero(as_tuple=True)
                found_i.append(rows[r])
                found_j.append(c + j0)
    i, j = torch.cat(found_i), torch.cat(found_j)
    exact = exact_cosines(p, i, p, j).cpu().numpy()
    i, j = i.cpu().numpy(), j.cpu().numpy()
    order = np.lexsort((j, -exact, i))  # per row: highest cosine first, then lowest index
    first = order[np.r_[True, i[order][1:] != i[order][:-1]]]
    cos[i[first]], idx[i[first]] = exact[first], j[first]
    return cos, idx
