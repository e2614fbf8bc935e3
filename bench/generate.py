"""Generator throughput, measured side by side in one run on the tiny models (CPU by default).

Three comparisons, each printed as images/s of both sides and their ratio:

1. Arc2Face (DPM-Solver, 25 steps, guidance 3.0): mixed-identity micro-batches (``batch`` images that
   may belong to different identities, what facefoundry does) vs one identity per call with that
   identity's ``per_identity`` images (the official demo's pattern).
2. Vec2Face: the same two patterns, then both at the same batch size (images shifted by half an
   identity, so every micro-batch straddles two identities) to separate the cost of mixing from that of batch size.
3. Arc2Face fast mode (LCM-LoRA fused, LCMScheduler, 4 steps, guidance 1.0 = no CFG branch) vs
   DPM-Solver 25 steps with guidance 3.0, both on mixed batches.
4. IDiff-Face (DDIM, as many steps as Arc2Face's DPM-Solver, no guidance): mixed-identity batches vs one
   identity per call, then IDiff-Face vs Arc2Face (DPM-Solver 25, guidance 3.0) on the same workload. The tiny
   builds are not to scale with each other, so the second ratio is about the code paths, not the published
   models (section 1 of docs/generator-performance.md has those).
5. DCFace (DDIM, as many steps as Arc2Face's DPM-Solver, eta 1.0; tiny ID set and style bank): the same two
   comparisons as IDiff-Face.

Both sides of a comparison use the real generator classes on the same loaded weights (the tiny builds
in the official layouts, loaded from disk). Every side is warmed up first; then the sides alternate,
in swapped order each round, so load changes on a shared machine weigh on both alike. Figures are
total images / total seconds over the rounds (with the per-round range of the ratio).

Usage: python bench/generate.py [--identities N] [--per-identity K] [--batch B] [--rounds R]
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from facefoundry.generators.arc2face.config import Arc2FaceConfig
from facefoundry.generators.arc2face.generator import Arc2FaceGenerator
from facefoundry.generators.arc2face.tiny import build_tiny_arc2face, tiny_lcm_lora_path
from facefoundry.generators.base import IDENTITY_INDEX, IMAGE_INDEX
from facefoundry.generators.dcface.config import DCFaceConfig
from facefoundry.generators.dcface.generator import DCFaceGenerator
from facefoundry.generators.dcface.tiny import build_tiny_dcface
from facefoundry.generators.idiff_face.config import IDiffFaceConfig
from facefoundry.generators.idiff_face.generator import IDiffFaceGenerator
from facefoundry.generators.idiff_face.tiny import build_tiny_idiff_face
from facefoundry.generators.vec2face.generator import Vec2FaceGenerator, Vec2FaceSettings
from facefoundry.generators.vec2face.tiny import build_tiny_vec2face

Work = Callable[[], int]  # runs one full workload, returns the number of images made


def workload(identities: int, per_identity: int, norm: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Identity vectors repeated per image (identity-major order) and one seed per image."""
    v = np.random.default_rng(seed).standard_normal((identities, 512)).astype(np.float32)
    v *= norm / np.linalg.norm(v, axis=1, keepdims=True)
    return np.repeat(v, per_identity, axis=0), np.arange(identities * per_identity)


def mixed(gen, vectors: np.ndarray, seeds: np.ndarray) -> Work:
    """All images in one ``generate`` call; the generator cuts it into mixed-identity micro-batches."""
    return lambda: len(gen.generate(vectors, seeds))


def per_identity(gen, vectors: np.ndarray, seeds: np.ndarray, k: int) -> Work:
    """One ``generate`` call per identity with its ``k`` images (one forward of ``k`` when batch >= k)."""
    return lambda: sum(len(gen.generate(vectors[i:i + k], seeds[i:i + k])) for i in range(0, len(seeds), k))


def compare(name: str, a: tuple[str, Work], b: tuple[str, Work], rounds: int) -> None:
    """Warm up both sides, then alternate them (swapped order each round); print images/s and a/b."""
    for _, work in (a, b):
        work()
    seconds, images, ratios = {a[0]: 0.0, b[0]: 0.0}, {a[0]: 0, b[0]: 0}, []
    for r in range(rounds):
        rates = {}
        for label, work in ((a, b) if r % 2 == 0 else (b, a)):
            started = time.perf_counter()
            n = work()
            took = time.perf_counter() - started
            seconds[label] += took
            images[label] += n
            rates[label] = n / took
        ratios.append(rates[a[0]] / rates[b[0]])
    ra, rb = (images[k] / seconds[k] for k in (a[0], b[0]))
    print(f"{name}")
    print(f"  {a[0]:<44} {ra:8.2f} images/s")
    print(f"  {b[0]:<44} {rb:8.2f} images/s")
    print(f"  ratio {ra / rb:.2f}x (per round {min(ratios):.2f}-{max(ratios):.2f}, {rounds} rounds, "
          f"{images[a[0]] // rounds} images per side per round)")


def arc2face(root: Path, identities: int, k: int, batch: int, rounds: int) -> Arc2FaceGenerator:
    model, base = build_tiny_arc2face(root / "arc2face", seed=0)
    dpm = Arc2FaceGenerator(Arc2FaceConfig(batch_size=batch), str(model), str(base))
    dpm.setup(device="cpu")
    official = Arc2FaceGenerator(dpm.cfg.model_copy(update={"batch_size": max(k, 1)}), str(model), str(base))
    official.set_components(dpm.unet, dpm.text_encoder, dpm.tokenizer, dpm.vae, dpm.scheduler, device="cpu")
    vectors, seeds = workload(identities, k, norm=1.0)
    compare(f"Arc2Face DPM-Solver {dpm.cfg.steps} steps, guidance {dpm.cfg.guidance_scale}: "
            f"{identities} identities x {k} images",
            (f"mixed-identity batches of {batch}", mixed(dpm, vectors, seeds)),
            (f"one identity per call ({k} images)", per_identity(official, vectors, seeds, k)), rounds)
    lcm = Arc2FaceGenerator(Arc2FaceConfig(sampler="lcm", batch_size=batch), str(model), str(base),
                            str(tiny_lcm_lora_path(root / "arc2face")))
    lcm.setup(device="cpu")
    compare(f"Arc2Face fast mode vs default, mixed batches of {batch}",
            (f"LCM-LoRA {lcm.cfg.steps} steps, guidance {lcm.cfg.guidance_scale}", mixed(lcm, vectors, seeds)),
            (f"DPM-Solver {dpm.cfg.steps} steps, guidance {dpm.cfg.guidance_scale}", mixed(dpm, vectors, seeds)),
            rounds)
    return dpm


def idiff_face(root: Path, dpm: Arc2FaceGenerator, identities: int, k: int, batch: int, rounds: int) -> None:
    model, autoencoder = build_tiny_idiff_face(root / "idiff-face", seed=0)
    settings = IDiffFaceConfig(sampler="ddim", steps=dpm.cfg.steps, batch_size=batch)
    gen = IDiffFaceGenerator(settings, str(model), str(autoencoder))
    gen.setup(device="cpu")
    official = IDiffFaceGenerator(settings.model_copy(update={"batch_size": max(k, 1)}), str(model), str(autoencoder))
    official.set_models(gen.diffusion, gen.decoder, device="cpu")
    vectors, seeds = workload(identities, k, norm=1.0)
    compare(f"IDiff-Face DDIM {settings.steps} steps (tiny build, 128 px): {identities} identities x {k} images",
            (f"mixed-identity batches of {batch}", mixed(gen, vectors, seeds)),
            (f"one identity per call ({k} images)", per_identity(official, vectors, seeds, k)), rounds)
    compare(f"IDiff-Face vs Arc2Face, tiny builds, mixed batches of {batch}",
            (f"IDiff-Face DDIM {settings.steps} steps, no guidance", mixed(gen, vectors, seeds)),
            (f"Arc2Face DPM-Solver {dpm.cfg.steps} steps, guidance {dpm.cfg.guidance_scale}",
             mixed(dpm, vectors, seeds)), rounds)


def dcface(root: Path, dpm: Arc2FaceGenerator, identities: int, k: int, batch: int, rounds: int) -> None:
    checkpoint, id_set, bank = build_tiny_dcface(root / "dcface", seed=0, count=identities)
    settings = DCFaceConfig(tiny=True, steps=dpm.cfg.steps, batch_size=batch)
    gen = DCFaceGenerator(settings, str(checkpoint), str(id_set), str(bank))
    gen.setup(device="cpu")
    official = DCFaceGenerator(settings.model_copy(update={"batch_size": max(k, 1)}), str(checkpoint), str(id_set),
                               str(bank))
    official.id_set, official.styles = gen.id_set, gen.styles
    official.set_networks(gen.nets, device="cpu")
    vectors, seeds = workload(identities, k, norm=1.0)
    # identity i of the tiny build is row i of its ID set (the pipeline passes the index as a variation)
    variations = [{IDENTITY_INDEX: i // k, IMAGE_INDEX: i % k} for i in range(len(seeds))]

    def per_call(g: DCFaceGenerator) -> Work:
        return lambda: sum(len(g.generate(vectors[i:i + k], seeds[i:i + k], variations[i:i + k]))
                           for i in range(0, len(seeds), k))

    compare(f"DCFace DDIM {settings.steps} steps, eta {settings.eta} (tiny build, 112 px): {identities} identities x "
            f"{k} images",
            (f"mixed-identity batches of {batch}", lambda: len(gen.generate(vectors, seeds, variations))),
            (f"one identity per call ({k} images)", per_call(official)), rounds)
    compare(f"DCFace vs Arc2Face, tiny builds, mixed batches of {batch}",
            (f"DCFace DDIM {settings.steps} steps, no guidance", lambda: len(gen.generate(vectors, seeds, variations))),
            (f"Arc2Face DPM-Solver {dpm.cfg.steps} steps, guidance {dpm.cfg.guidance_scale}",
             mixed(dpm, vectors, seeds)), rounds)


def vec2face(root: Path, identities: int, k: int, batch: int, rounds: int) -> None:
    checkpoint = build_tiny_vec2face(root / "vec2face", seed=0)
    gen = Vec2FaceGenerator(Vec2FaceSettings(tiny=True, batch_size=batch), checkpoint)
    gen.setup(device="cpu")
    official = Vec2FaceGenerator(Vec2FaceSettings(tiny=True, batch_size=max(k, 1)), checkpoint)
    official.set_model(gen.model, device="cpu")
    vectors, seeds = workload(identities, k, norm=22.0)
    compare(f"Vec2Face (tiny build, one forward): {identities} identities x {k} images",
            (f"mixed-identity batches of {batch}", mixed(gen, vectors, seeds)),
            (f"one identity per call ({k} images)", per_identity(official, vectors, seeds, k)), rounds)
    same = Vec2FaceGenerator(Vec2FaceSettings(tiny=True, batch_size=max(k, 1)), checkpoint)
    same.set_model(gen.model, device="cpu")
    compare(f"Vec2Face, equal batch size {k}: the cost of mixing identities alone",
            (f"mixed-identity batches of {k}", mixed(same, np.roll(vectors, k // 2, 0), np.roll(seeds, k // 2))),
            (f"one identity per call ({k} images)", per_identity(official, vectors, seeds, k)), rounds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--identities", type=int, default=4, help="Arc2Face identities per workload")
    parser.add_argument("--per-identity", type=int, default=4, help="images per identity (both generators)")
    parser.add_argument("--batch", type=int, default=16, help="Arc2Face micro-batch")
    parser.add_argument("--vec2face-identities", type=int, default=32)
    parser.add_argument("--vec2face-batch", type=int, default=32, help="Vec2Face micro-batch (config default)")
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    print(f"machine: {platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}, "
          "CPU, tiny random-weight models (Arc2Face 64x64 px, Vec2Face 112x112 px, IDiff-Face 128x128 px, "
          "DCFace 112x112 px)")
    with tempfile.TemporaryDirectory(prefix="ffbench-gen-") as tmp:
        dpm = arc2face(Path(tmp), args.identities, args.per_identity, args.batch, args.rounds)
        idiff_face(Path(tmp), dpm, args.identities, args.per_identity, args.batch, args.rounds)
        dcface(Path(tmp), dpm, args.identities, args.per_identity, args.batch, args.rounds)
        vec2face(Path(tmp), args.vec2face_identities, args.per_identity, args.vec2face_batch, args.rounds)


if __name__ == "__main__":
    main()
