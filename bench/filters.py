"""Face embedder throughput on CPU: ArcFace (ONNX Runtime, PyTorch) and dlib's 128-d descriptor, batched vs one
per call.

    python bench/filters.py                 # iresnet50 and iresnet100 ArcFace + dlib (about 40 s on 2 idle cores)
    python bench/filters.py --arch r50      # only iresnet50 (w600k_r50's architecture)
    python bench/filters.py --faces 48 --batch 16

No model is downloaded: the ArcFace model is the project's iresnet (``faces/iresnet.py``, official
arcface_torch layout) with random weights, exported to ONNX (dynamo=False) with InsightFace's interface
(``[N, 3, 112, 112] -> [N, 512]``, dynamic batch). Its architecture, and so its arithmetic, matches the
published model of the same depth, so the timings stand for the real one (weights' values do not change
the work). The same R100 also runs in PyTorch through Vec2Face's ``.pth`` loader (``TorchArcFaceEmbedder``).
dlib uses the real ``dlib_face_recognition_resnet_model_v1.dat``.
Faces are the six people of InsightFace's sample photo ``t1.jpg`` (dlib HOG + 5 points), repeated; crops are
prepared beforehand, so only the embedding is timed. Each mode gets one warm-up call first.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

DEPTHS = {"r50": 50, "r100": 100}


def random_iresnet(arch: str):
    """The project's iresnet (official arcface_torch layout) with seeded random weights, tamed so random
    activations neither overflow nor go denormal."""
    import torch

    from facefoundry.faces.iresnet import iresnet

    torch.manual_seed(0)
    net = iresnet(DEPTHS[arch]).eval()
    with torch.no_grad():
        for block in net.modules():
            if hasattr(block, "bn3"):
                block.bn3.weight.fill_(0.1)
    return net


def export_arcface(path: Path, arch: str) -> None:
    import torch

    net = random_iresnet(arch)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            net, (torch.zeros(2, 3, 112, 112),), str(path), dynamo=False, input_names=["input.1"],
            output_names=["features"], dynamic_axes={"input.1": {0: "batch"}, "features": {0: "batch"}},
        )  # fmt: skip


def group_faces() -> tuple[np.ndarray, list, list]:
    """The sample photo's faces: RGB image, dlib detections and 5-point landmarks."""
    from PIL import Image

    from facefoundry.faces.dlib_models import DlibFaceModel

    spec = importlib.util.find_spec("insightface")
    path = Path(spec.submodule_search_locations[0]) / "data" / "images" / "t1.jpg"
    image = np.asarray(Image.open(path).convert("RGB"))
    model = DlibFaceModel("hog")
    dets = model.detect(image, upsample=1)
    return image, model, dets


def rate(fn, items, warm) -> float:
    """Faces per second of ``fn(items)`` after one warm-up call on ``warm``."""
    fn(warm)
    start = time.perf_counter()
    fn(items)
    return len(items) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", choices=[*DEPTHS, "all"], default="all")
    parser.add_argument("--faces", type=int, default=64, help="faces embedded per mode")
    parser.add_argument("--batch", type=int, default=32, help="faces per call in batched mode")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="ONNX Runtime intra-op threads")
    args = parser.parse_args()

    from facefoundry.faces.alignment import align, dlib_to_arcface
    from facefoundry.faces.arcface import ArcFaceEmbedder

    t0 = time.perf_counter()
    image, dlib_model, dets = group_faces()
    shapes = [dlib_model.shape(image, d) for d in dets]
    reps = -(-args.faces // len(dets))
    arc_crops = np.stack([align(image, dlib_to_arcface(dlib_model.points(s))) for s in shapes] * reps)[: args.faces]
    chips = ([dlib_model.chip(image, s) for s in shapes] * reps)[: args.faces]
    print(f"faces: {len(dets)} people in t1.jpg, repeated to {args.faces}; threads {args.threads}")

    results = {}
    for arch in list(DEPTHS) if args.arch == "all" else [args.arch]:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / f"iresnet_{arch}.onnx"
            start = time.perf_counter()
            export_arcface(path, arch)
            size_mb = path.stat().st_size / 2**20
            print(f"exported random-weight iresnet {arch} ({size_mb:.0f} MB) in {time.perf_counter() - start:.1f} s")
            emb = ArcFaceEmbedder(path, providers=["CPUExecutionProvider"], batch_size=args.batch, threads=args.threads)
            assert np.isfinite(emb.embed(arc_crops[:2])).all()
            batched = rate(emb.embed, arc_crops, arc_crops[: args.batch])
            single = rate(lambda crops, emb=emb: [emb.embed(c[None]) for c in crops], arc_crops, arc_crops[:1])
            results[f"arcface_{arch}_onnx_cpu"] = (batched, single)
    if args.arch in ("all", "r100"):  # Vec2Face's ArcFace-R100 in PyTorch, through the real .pth loader
        import torch

        from facefoundry.faces.torch_embedder import TorchArcFaceEmbedder

        torch.set_num_threads(args.threads)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "arcface-r100-glint360k.pth"
            torch.save(random_iresnet("r100").state_dict(), path)
            emb = TorchArcFaceEmbedder(path, "cpu", batch_size=args.batch)
            batched = rate(emb.embed, arc_crops, arc_crops[: args.batch])
            single = rate(lambda crops, emb=emb: [emb.embed(c[None]) for c in crops], arc_crops, arc_crops[:1])
            results["arcface_r100_torch_cpu"] = (batched, single)

    batched = rate(lambda c: dlib_model.descriptors(c, batch=args.batch), chips, chips[: args.batch])
    single = rate(lambda c: [dlib_model.descriptors([x]) for x in c], chips, chips[:1])
    results["dlib_resnet_128d"] = (batched, single)

    print(f"\n{'embedder':<26}{'batched faces/s':>17}{'1 per call faces/s':>20}{'batched/single':>16}")
    for name, (b, s) in results.items():
        print(f"{name:<26}{b:>17.1f}{s:>20.1f}{b / s:>16.2f}")
    dlib_rate = results["dlib_resnet_128d"][0]
    ratios = ", ".join(f"{k}: {b / dlib_rate:.2f}" for k, (b, _) in results.items() if k.startswith("arcface"))
    print(f"\nbatched speed relative to dlib: {ratios}   total time {time.perf_counter() - t0:.0f} s")
    summary = {k: {"batched": round(b, 2), "single": round(s, 2)} for k, (b, s) in results.items()}
    print(json.dumps({"batch": args.batch, "faces": args.faces, "threads": args.threads, **summary}))


if __name__ == "__main__":
    main()
