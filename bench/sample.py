"""Identity sampling benchmark: exact rejection sampling, HyperFace packing, exact verification.

    python bench/sample.py            # the full run: N = 100,000, d = 512, tau = 0.3 (about 5 minutes on 2 cores)
    python bench/sample.py --quick    # N = 20,000 (under a minute)

Each part runs in its own subprocess so its peak memory (ru_maxrss, which sees torch's allocations) is
its own; the baseline is the same process's peak right after importing numpy, torch and facefoundry.
Ratios divide a part's wall time by that of one float32 product N x d by d x N (the full pairwise work,
timed blockwise in 4096 x 512 tiles, since its 4 * N^2 bytes output would not fit in memory).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

THREADS = 2
REF_TILE = (4096, 512)  # float32 reference tiles
SCREEN_TILE = (4096, 2048)  # the kernels' bfloat16 tiles on CPU


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _setup():
    import numpy as np
    import torch

    torch.set_num_threads(THREADS)
    from facefoundry.identities import kernels

    return np, torch, kernels


def part_reference(args) -> dict:
    """float32 N x d @ d x N, tile by tile into one reused output buffer; bf16 rate from a few tiles.

    Tiles of 4096 x 512 were the fastest float32 shape measured on this machine (4096 x 4096: about 15 %
    slower), so the reference is not handicapped by its tiling.
    """
    np, torch, _ = _setup()
    n, d = args.n, args.dim
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(0))
    out = torch.empty(REF_TILE)
    torch.mm(x[: REF_TILE[0]], x[: REF_TILE[1]].T, out=out)  # warm-up
    start = time.perf_counter()
    for i0 in range(0, n, REF_TILE[0]):
        for j0 in range(0, n, REF_TILE[1]):
            a, b = x[i0 : i0 + REF_TILE[0]], x[j0 : j0 + REF_TILE[1]]
            torch.mm(a, b.T, out=out[: len(a), : len(b)])
    fp32 = time.perf_counter() - start
    rows, cols = SCREEN_TILE
    xb = x[: 4 * rows].bfloat16()
    outb = torch.empty(SCREEN_TILE, dtype=torch.bfloat16)
    torch.mm(xb[:rows], xb[:cols].T, out=outb)
    start = time.perf_counter()
    for i0 in range(0, 4 * rows, rows):
        for j0 in range(0, 4 * rows, cols):
            torch.mm(xb[i0 : i0 + rows], xb[j0 : j0 + cols].T, out=outb)
    bf16_rate = 16 * 2 * rows * rows * d / (time.perf_counter() - start)
    return {"seconds": fp32, "flop": 2.0 * n * n * d, "bf16_rate": bf16_rate, "peak_mb": _rss_mb()}


def part_rejection(args) -> dict:
    np, torch, kernels = _setup()
    from facefoundry.identities.sampling import sample_identities
    from facefoundry.sections import IdentitiesConfig

    base = _rss_mb()
    cfg = IdentitiesConfig(sampler="gaussian_rejection", count=args.n, dim=args.dim, max_cosine=args.tau, space="unit")
    start = time.perf_counter()
    sampled = sample_identities(cfg, run_seed=0)
    seconds = time.perf_counter() - start
    np.save(args.vectors, sampled.vectors)
    return {"seconds": seconds, "candidates": sampled.candidates, "peak_mb": _rss_mb(), "base_mb": base}


def part_hyperface(args) -> dict:
    np, torch, kernels = _setup()
    try:
        from facefoundry.identities.hyperface import hyperface_pack
        from facefoundry.sections import HyperFaceConfig
    except ImportError as exc:
        return {"missing": str(exc)}
    base = _rss_mb()
    rng = np.random.default_rng(0)
    start_vectors = rng.standard_normal((args.hyperface_n, args.dim)).astype(np.float32)
    start_vectors /= np.linalg.norm(start_vectors, axis=1, keepdims=True)  # the uniform_sphere sampler
    cfg = HyperFaceConfig()
    t0 = time.perf_counter()
    result = hyperface_pack(start_vectors, cfg, seed=0)
    seconds = time.perf_counter() - t0
    before = float(kernels.nearest_neighbours(start_vectors)[0].max())
    after = float(kernels.nearest_neighbours(result.vectors)[0].max())
    return {
        "seconds": seconds,
        "iterations": result.iterations,
        "reported": [result.max_nn_before, result.max_nn_after],
        "exact": [before, after],
        "config": cfg.model_dump(),
        "peak_mb": _rss_mb(),
        "base_mb": base,
    }


def _plant(np, x, rng, tau: float) -> list[tuple[int, int, float]]:
    """Overwrite rows to plant pairs at given cosines (and an exact duplicate); returns (i, j, target)."""
    targets = [tau + 1e-7, tau - 1e-7, tau + 1e-4, tau + 0.01, 0.6, 1.0]
    rows = rng.choice(len(x), size=2 * len(targets), replace=False)
    out = []
    for k, c in enumerate(targets):
        i, j = sorted(rows[2 * k : 2 * k + 2].tolist())
        a = x[i].astype(np.float64)
        z = rng.standard_normal(x.shape[1])
        z -= (z @ a) * a
        x[j] = (c * a + np.sqrt(max(1 - c * c, 0.0)) * z / np.linalg.norm(z)).astype(np.float32)
        if c == 1.0:
            x[j] = x[i]
        out.append((i, j, c))
    return out


def _naive(np, x, tau):
    u = x.astype(np.float64)
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    sims = np.triu(u @ u.T, 1)
    sims[np.tril_indices(len(u))] = -np.inf
    i, j = np.nonzero(sims > tau)
    return float(sims.max()), set(zip(i.tolist(), j.tolist(), strict=True))


def part_verify(args) -> dict:
    np, torch, kernels = _setup()
    x = np.load(args.vectors)
    base = _rss_mb()
    rng = np.random.default_rng(1)
    planted = _plant(np, x, rng, args.tau)
    start = time.perf_counter()
    top, pairs = kernels.pairs_above(x, args.tau)
    seconds = time.perf_counter() - start
    peak = _rss_mb()
    # Naive float64 reference on a subset holding every planted row.
    keep = sorted({r for i, j, _ in planted for r in (i, j)})
    others = np.setdiff1d(rng.choice(len(x), size=args.subset, replace=False), keep)[: args.subset - len(keep)]
    subset = np.sort(np.concatenate([keep, others]))
    naive_top, naive_pairs = _naive(np, x[subset], args.tau)
    position = {int(r): k for k, r in enumerate(subset)}
    full_in_subset = {
        (position[i], position[j]) for i, j in zip(pairs["i"].tolist(), pairs["j"].tolist(), strict=True)
        if i in position and j in position
    }
    sub_top, sub_pairs = kernels.pairs_above(x[subset], args.tau)
    sub_set = set(zip(sub_pairs["i"].tolist(), sub_pairs["j"].tolist(), strict=True))
    found = {(int(i), int(j)): float(c) for i, j, c in pairs}
    return {
        "seconds": seconds,
        "max": top,
        "pairs": len(pairs),
        "planted": [[i, j, c, found.get((i, j))] for i, j, c in planted],
        "subset": len(subset),
        "subset_max": [sub_top, naive_top],
        "subset_pairs_agree": sub_set == naive_pairs and full_in_subset == naive_pairs,
        "subset_pairs": len(naive_pairs),
        "peak_mb": peak,
        "base_mb": base,
    }


def part_nn(args) -> dict:
    np, torch, kernels = _setup()
    x = np.load(args.vectors)
    base = _rss_mb()
    start = time.perf_counter()
    cos, idx = kernels.nearest_neighbours(x)
    seconds = time.perf_counter() - start
    peak = _rss_mb()
    sub = x[: min(args.subset, len(x))].astype(np.float64)
    sims = sub @ sub.T / np.outer(np.linalg.norm(sub, axis=1), np.linalg.norm(sub, axis=1))
    np.fill_diagonal(sims, -np.inf)
    sub_cos, sub_idx = kernels.nearest_neighbours(x[: len(sub)])
    agree = bool(np.array_equal(sub_idx, sims.argmax(axis=1)) and np.abs(sub_cos - sims.max(axis=1)).max() < 1e-12)
    return {"seconds": seconds, "max": float(cos.max()), "agree": agree, "peak_mb": peak, "base_mb": base}


PARTS = {
    "reference": part_reference,
    "rejection": part_rejection,
    "hyperface": part_hyperface,
    "verify": part_verify,
    "nn": part_nn,
}


def _run_part(name: str, args, vectors: Path) -> dict:
    cmd = [sys.executable, __file__, "--part", name, "--vectors", str(vectors), "--n", str(args.n)]
    cmd += ["--dim", str(args.dim), "--tau", str(args.tau), "--hyperface-n", str(args.hyperface_n)]
    cmd += ["--subset", str(args.subset)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"part {name} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _mem(r: dict) -> str:
    above = r["peak_mb"] - r["base_mb"]
    return f"peak RSS {r['peak_mb']:.0f} MB ({above:+.0f} MB over the {r['base_mb']:.0f} MB baseline)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--tau", type=float, default=0.3)
    ap.add_argument("--hyperface-n", type=int, default=10_000)
    ap.add_argument("--subset", type=int, default=5_000)
    ap.add_argument("--quick", action="store_true", help="N = 20,000, HyperFace N = 2,000, subset 2,000")
    ap.add_argument("--part", choices=sorted(PARTS), help=argparse.SUPPRESS)
    ap.add_argument("--vectors", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.part:
        print(json.dumps(PARTS[args.part](args)))
        return
    if args.quick:
        args.n, args.hyperface_n, args.subset = 20_000, 2_000, 2_000
    args.subset = min(args.subset, args.n)

    np, torch, kernels = _setup()
    device = kernels.default_device()
    dtype = kernels.screen_dtype(device)
    probe = kernels.prepare(np.random.default_rng(0).standard_normal((4096, args.dim)), device=device)
    print(
        f"facefoundry sampling benchmark: N={args.n}, d={args.dim}, tau={args.tau}; torch {torch.__version__}, "
        f"device {device}, {THREADS} threads, screen {str(dtype).split('.')[-1]}: error bound E a priori "
        f"{kernels.screen_margin(args.dim, dtype):.4f}, from measured rounding errors {probe.margin(probe):.4f}",
        flush=True,
    )
    with tempfile.TemporaryDirectory() as tmp:
        vectors = Path(tmp) / "vectors.npy"
        ref = _run_part("reference", args, vectors)
        print(
            f"reference: float32 {args.n}x{args.dim} @ {args.dim}x{args.n} in {REF_TILE[0]}x{REF_TILE[1]} tiles: "
            f"{ref['seconds']:.1f} s ({ref['flop'] / ref['seconds'] / 1e9:.0f} GFLOP/s); "
            f"bfloat16 {SCREEN_TILE[0]}x{SCREEN_TILE[1]} tiles run at {ref['bf16_rate'] / 1e9:.0f} GFLOP/s",
            flush=True,
        )
        rej = _run_part("rejection", args, vectors)
        print(
            f"1. gaussian_rejection N={args.n}, d={args.dim}, tau={args.tau}, unit: {rej['seconds']:.1f} s, "
            f"{rej['candidates']} candidates, {_mem(rej)}; ratio to the float32 product "
            f"{rej['seconds'] / ref['seconds']:.3f}",
            flush=True,
        )
        hf = _run_part("hyperface", args, vectors)
        if "missing" in hf:
            print(f"2. hyperface: not available ({hf['missing']})", flush=True)
        else:
            before, after = hf["exact"]
            print(
                f"2. hyperface N={args.hyperface_n} from uniform_sphere, default config "
                f"({hf['iterations']} iterations): max nearest-neighbour cosine {before:.4f} -> {after:.4f} "
                f"({(after - before) / before:+.1%}), {hf['seconds']:.1f} s, {_mem(hf)}",
                flush=True,
            )
        ver = _run_part("verify", args, vectors)
        planted = ", ".join(
            f"{c:.7g}:{'found' if got is not None else 'not reported'}" for _, _, c, got in ver["planted"]
        )
        print(
            f"3. exact verification of N={args.n} (sampled set, {len(ver['planted'])} pairs planted): "
            f"{ver['seconds']:.1f} s, {_mem(ver)}; ratio to the float32 product {ver['seconds'] / ref['seconds']:.3f}"
            f"\n   max pairwise cosine {ver['max']:.9f}, {ver['pairs']} pairs above tau; planted {planted}"
            f"\n   naive float64 on a {ver['subset']}-vector subset (planted rows included): max "
            f"{ver['subset_max'][1]:.12f} vs kernel {ver['subset_max'][0]:.12f}; the {ver['subset_pairs']} pairs "
            f"above tau {'agree' if ver['subset_pairs_agree'] else 'DISAGREE'}",
            flush=True,
        )
        nn = _run_part("nn", args, vectors)
        print(
            f"   nearest_neighbours of the sampled N={args.n}: {nn['seconds']:.1f} s, {_mem(nn)}; max NN cosine "
            f"{nn['max']:.6f}; float64 argmax on {args.subset} rows {'agrees' if nn['agree'] else 'DISAGREES'}",
            flush=True,
        )


if __name__ == "__main__":
    main()
