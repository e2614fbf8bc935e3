"""Train-then-verify throughput and a computed GPU budget.

1. Training images/s through the Ray Train path (``facefoundry.evaluate.train.train_on_run``: Ray Data streaming
   + decoding + TorchTrainer, one worker) divided by a bare single-process PyTorch loop over the same shards
   (pyarrow batches, the same decode, augmentation, model, head and optimiser), measured side by side in one
   run: bare, Ray, bare again (the two bare figures bracket the Ray one on a machine whose load changes).
   Per-epoch images/s exclude start-up; epoch 1 (warm-up) is left out of both.
2. Verification throughput: images/s embedded (image + flip) and the 10-fold protocol on an LFW-size set.
3. GPU budget: FLOPs per training image of IResNet-50 (and -100) at 112 x 112 with an ArcFace head over 10K
   classes, counted with ``torch.utils.flop_counter`` on the meta device (forward; training = 3 x forward),
   turned into images/s and hours for 0.5M images x 26 epochs on one H100 at 40 % MFU.

Usage: python bench/evaluate.py [--identities 16] [--per-identity 32] [--epochs 3]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests" / "helpers"), str(ROOT / "bench")]

from flops import count  # noqa: E402  (bench/flops.py)
from trainsets import held_out_pairs, write_trainset  # noqa: E402  (tests/trainsets.py)

from facefoundry.evaluate.config import EvaluateConfig, HeadConfig  # noqa: E402
from facefoundry.evaluate.data import augment, decode_batch, scan_identities, shard_paths, to_input  # noqa: E402
from facefoundry.evaluate.heads import build_head  # noqa: E402
from facefoundry.evaluate.loop import Trainee, build_backbone  # noqa: E402
from facefoundry.evaluate.train import load_embedder, train_on_run  # noqa: E402
from facefoundry.sections import RayConfig  # noqa: E402

H100_PEAK = 989e12  # dense BF16/FP16 tensor-core FLOP/s of an H100 SXM (1979 TFLOPS is with 2:4 sparsity)
MFU = 0.40
IMAGES, EPOCHS, CLASSES = 500_000, 26, 10_000  # 10K identities x 50 images, the Vec2Face recipe's 26 epochs


def bench_config(epochs: int, threads: int) -> EvaluateConfig:
    return EvaluateConfig(name="bench", backbone="iresnet18", widths=(16, 32, 64, 128), embedding_size=128,
                          head=HeadConfig(margin=0.3, scale=16.0), epochs=epochs, batch_size=32,
                          schedule={"milestones": []}, precision="fp32", cpus_per_worker=threads, shuffle_buffer=256)


def bare_loop(run: Path, cfg: EvaluateConfig, threads: int) -> list[float]:
    """Images/s per epoch of a plain single-process loop over the shards (no Ray)."""
    torch.set_num_threads(threads)
    paths = shard_paths(run)
    classes, _ = scan_identities(paths)
    torch.manual_seed(cfg.seed)
    model = Trainee(build_backbone(cfg), build_head(cfg.head, cfg.embedding_size, len(classes)))
    opt = torch.optim.SGD(model.parameters(), lr=cfg.optimizer.lr, momentum=cfg.optimizer.momentum,
                          weight_decay=cfg.optimizer.weight_decay)
    rates = []
    for epoch in range(cfg.epochs):
        seen, t0 = 0, time.perf_counter()
        for batch in _full_batches(paths, classes, cfg.batch_size):
            x = augment(to_input(torch.from_numpy(batch["image"])), batch["identity"], batch["image_index"],
                        epoch, cfg.seed, cfg.augment)
            loss = model(x, torch.from_numpy(batch["label"]))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            seen += len(x)
        rates.append(seen / (time.perf_counter() - t0))
    return rates


def _full_batches(paths: list[str], classes: np.ndarray, size: int):
    """Decoded kept rows of the shards in file order, regrouped into full batches (the last partial one dropped)."""
    pending: list[dict] = []
    for path in paths:
        for record_batch in pq.ParquetFile(path).iter_batches(batch_size=size):
            pending.append(decode_batch(pa.Table.from_batches([record_batch]), classes))
            while sum(len(p["label"]) for p in pending) >= size:
                joined = {k: np.concatenate([p[k] for p in pending]) for k in pending[0]}
                yield {k: v[:size] for k, v in joined.items()}
                pending = [{k: v[size:] for k, v in joined.items()}]


def ray_path(run: Path, cfg: EvaluateConfig) -> tuple[list[float], float, Path]:
    """Images/s per epoch of ``train_on_run`` (one worker), its wall time and the trained backbone."""
    from facefoundry.local_ray import ray_session

    t0 = time.perf_counter()
    with ray_session(RayConfig(num_cpus=int(cfg.cpus_per_worker) + 2)):  # + logical CPUs for the read tasks
        result = train_on_run(run, cfg, progress=None)
    return [e["images_per_s"] for e in result.summary["history"]], time.perf_counter() - t0, result.backbone


def verification_rates(backbone: Path, folder: Path, pairs: int = 6000) -> dict[str, float]:
    """Embedding images/s (image + flip, as the protocol does) and the protocol's seconds on LFW-size pairs."""
    from facefoundry.evaluate.benchmarks import write_bin
    from facefoundry.evaluate.verification import evaluate_benchmarks, verify_embeddings

    images, issame = held_out_pairs(1000, identities=8, per_identity=4)
    write_bin(folder / "synthetic.bin", list(images), issame.tolist())
    embed = load_embedder(backbone)
    t0 = time.perf_counter()
    result = evaluate_benchmarks(embed, folder)
    seconds = time.perf_counter() - t0
    t2 = time.perf_counter()
    embed(images)
    embed_only = len(images) / (time.perf_counter() - t2)
    rng = np.random.default_rng(0)
    emb, same = rng.normal(size=(2 * pairs, 512)), rng.random(pairs) < 0.5
    t1 = time.perf_counter()
    verify_embeddings(emb, same)
    return {"images": len(images), "embed_images_per_s": 2 * len(images) / seconds, "forward_images_per_s": embed_only,
            "accuracy": float(result["sets"]["synthetic"]["accuracy"]), "protocol_s": time.perf_counter() - t1}


def training_flops(depth: int) -> dict[str, float]:
    """Forward FLOPs of IResNet-``depth`` + ArcFace head (10K classes) per 112 x 112 image, and the budget."""
    cfg = EvaluateConfig(backbone=f"iresnet{depth}")
    with torch.device("meta"):
        model = Trainee(build_backbone(cfg), build_head(cfg.head, 512, CLASSES))
        x, labels = torch.empty(2, 3, 112, 112), torch.zeros(2, dtype=torch.long)
    forward = count(lambda: model(x, labels)) / 2
    per_image = 3 * forward  # forward + backward (2 x forward)
    rate = MFU * H100_PEAK / per_image
    return {"forward_gflop": forward / 1e9, "train_gflop": per_image / 1e9, "images_per_s": rate,
            "hours": IMAGES * EPOCHS / rate / 3600}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--identities", type=int, default=16)
    parser.add_argument("--per-identity", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="torch threads in both paths")
    args = parser.parse_args()
    cfg = bench_config(args.epochs, args.threads)
    with tempfile.TemporaryDirectory(prefix="ffbench-") as tmp:
        run = write_trainset(Path(tmp) / "run", args.identities, args.per_identity)
        bare1 = bare_loop(run, cfg, args.threads)
        rays, wall, backbone = ray_path(run, cfg)
        bare2 = bare_loop(run, cfg, args.threads)
        (Path(tmp) / "bins").mkdir()
        verif = verification_rates(backbone, Path(tmp) / "bins")
    steady = slice(1, None) if args.epochs > 1 else slice(None)
    bare = float(np.mean(bare1[steady] + bare2[steady]))
    ray_rate = float(np.mean(rays[steady]))
    print(f"data: {args.identities} identities x {args.per_identity} images, 112x112 PNG; model: iresnet18 widths "
          f"{list(cfg.widths)}, emb {cfg.embedding_size}, batch {cfg.batch_size}, fp32, {args.threads} torch threads")
    print(f"{'training path':<38}{'images/s (epochs 2..)':>24}")
    print(f"{'bare PyTorch loop, before':<38}{np.mean(bare1[steady]):>24.1f}")
    print(f"{'Ray Train + Ray Data, 1 worker':<38}{ray_rate:>24.1f}   (wall incl. start-up {wall:.1f} s)")
    print(f"{'bare PyTorch loop, after':<38}{np.mean(bare2[steady]):>24.1f}")
    print(f"{'ratio Ray / bare':<38}{ray_rate / bare:>24.2f}   (goal >= 0.9)")
    print(f"verification: {verif['embed_images_per_s']:.1f} images/s through evaluate_benchmarks (decode + image + "
          f"flip, {verif['images']} images, accuracy {verif['accuracy']:.3f}); {verif['forward_images_per_s']:.1f} "
          f"images/s embed alone; 10-fold protocol on 6,000 pairs: {verif['protocol_s']:.2f} s")
    print(f"\nGPU budget: H100 dense BF16/FP16 peak {H100_PEAK / 1e12:.0f} TFLOPS x {MFU:.0%} MFU; "
          f"{IMAGES:,} images x {EPOCHS} epochs, ArcFace head over {CLASSES:,} classes")
    print(f"{'model':<14}{'fwd GFLOP/img':>15}{'train GFLOP/img':>17}{'images/s':>11}{'hours':>8}")
    for depth in (50, 100):
        b = training_flops(depth)
        print(f"{'IResNet-' + str(depth):<14}{b['forward_gflop']:>15.2f}{b['train_gflop']:>17.2f}"
              f"{b['images_per_s']:>11,.0f}{b['hours']:>8.2f}")


if __name__ == "__main__":
    main()
