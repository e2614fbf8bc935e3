"""FairFace chips before and after cutting them as ``predict.py`` does, on real photos (issue 26, item 16).

    python bench/fairface_chips.py            # HOG and CNN (about 2 minutes on 2 cores; the CNN is the slow part)
    python bench/fairface_chips.py --no-cnn   # HOG only (seconds)

Ways of cutting each face's 300 px chip (:mod:`facefoundry.faces.fairface`):

- ``old``: dlib HOG (1 upsample) on the image as given, ``get_face_chip``, no JPEG (the annotator until now);
- ``resize``: the same on the 800 px ``predict_resize`` copy, no JPEG;
- ``new``: ``resize`` plus the quality-75 JPEG round trip through dlib (the annotator now, HOG);
- ``cnn``: ``new`` with dlib's CNN (MMOD) detector, as ``predict.py`` (the file ships with face-recognition-models).

Photos: insightface's t1.jpg (6 people) and its mirror, Tom_Hanks_54745.png (112 px), scikit-image's astronaut
(512 px) and three 270 px crops of t1 (tests/helpers). Faces are paired by box centre (within a quarter of the box
width). Reported per pair of ways: mean absolute difference per chip in grey levels (all channels), and how far
the 18 FairFace logits and the three softmaxes move, for two random-weight networks of FairFace's architecture
(full size and the tests' tiny one). Random networks with default BatchNorm statistics hardly react to their
input, so their BatchNorm statistics are first set from the chips themselves (one pass in training mode over all
chips, cumulative average): the logits then differ between faces, and each shift can be set against that.
They are still not FairFace's trained weights: the numbers show how much the input moves, not the estimates.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
HEADS = ((0, 7), (7, 9), (9, 18))


def photos() -> dict[str, np.ndarray]:
    sys.path.insert(0, str(ROOT / "tests" / "helpers"))
    from facecrops import PERSON_A, PERSON_B, PERSON_C, crop
    from landmarkfaces import _package_file
    from PIL import Image

    t1 = Image.open(_package_file("insightface", "data", "images", "t1.jpg")).convert("RGB")
    out = {"t1": t1, "t1 mirrored": t1.transpose(Image.Transpose.FLIP_LEFT_RIGHT),
           "Tom_Hanks": Image.open(_package_file("insightface", "data", "images", "Tom_Hanks_54745.png")),
           "astronaut": Image.open(_package_file("skimage", "data", "astronaut.png"))}
    out |= {f"t1 {k} crop": crop(t1, box) for k, box in (("A", PERSON_A), ("B", PERSON_B), ("C", PERSON_C))}
    return {k: np.asarray(v.convert("RGB")) for k, v in out.items()}


def cut(model, image: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(centre, chip)`` of every face the model finds (1 upsample), centres in ``image``'s pixels."""
    from facefoundry.faces.fairface import DETECT_UPSAMPLE, FairFaceEstimator

    out = []
    for det in model.detect(image, DETECT_UPSAMPLE):
        x0, y0, x1, y1 = det.box
        centre = np.array([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0])
        out.append((centre, FairFaceEstimator.chip(image, model.shape(image, det))))
    return out


def nearest(centre: np.ndarray, faces: list, scale: tuple[float, float]):
    best = min(faces, key=lambda f: np.hypot(*(f[0][:2] * scale - centre[:2])), default=None)
    if best is None or np.hypot(*(best[0][:2] * scale - centre[:2])) > 0.25 * centre[2]:
        return None
    return best[1]


def calibrated(net, chips: list[np.ndarray]):
    """``net`` with BatchNorm running statistics set from ``chips`` (one pass, cumulative average), eval mode."""
    import torch

    from facefoundry.faces.fairface import FairFaceEstimator

    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    net.train()
    with torch.no_grad():
        net(FairFaceEstimator.preprocess(chips))
    return net.eval()


def softmaxes(logits: np.ndarray) -> np.ndarray:
    parts = []
    for lo, hi in HEADS:
        e = np.exp(logits[:, lo:hi] - logits[:, lo:hi].max(1, keepdims=True))
        parts.append(e / e.sum(1, keepdims=True))
    return np.concatenate(parts, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--no-cnn", action="store_true", help="skip dlib's CNN detector (the slow part)")
    args = parser.parse_args()
    import torch

    from facefoundry.faces.dlib_models import DlibFaceModel
    from facefoundry.faces.fairface import FairFaceEstimator, FairFaceResNet, jpeg_round_trip, predict_resize
    from facefoundry.faces.tiny_face_models import write_tiny_fairface

    torch.set_num_threads(1)
    hog = DlibFaceModel("hog")
    cnn = None if args.no_cnn else DlibFaceModel("cnn")
    ways: dict[str, list[np.ndarray]] = {"old": [], "resize": [], "new": [], "cnn": []}
    print("photo | size | detected at | faces: old HOG, new HOG, new CNN | seconds: HOG, CNN (800 px copy)")
    for name, image in photos().items():
        small = predict_resize(image)
        scale = (image.shape[1] / small.shape[1], image.shape[0] / small.shape[0])
        old = cut(hog, image)
        t = time.perf_counter()
        new = cut(hog, small)
        t_hog = time.perf_counter() - t
        t = time.perf_counter()
        new_cnn = cut(cnn, small) if cnn is not None else []
        t_cnn = time.perf_counter() - t
        print(f"{name} | {image.shape[1]}x{image.shape[0]} | {small.shape[1]}x{small.shape[0]} | {len(old)}, "
              f"{len(new)}, {len(new_cnn) if cnn else '-'} | {t_hog:.2f}, {t_cnn:.2f}")
        for centre, chip in old:
            resized = nearest(centre, new, scale)
            via_cnn = nearest(centre, new_cnn, scale)
            if resized is None or (cnn is not None and via_cnn is None):
                print(f"  {name}: the old face at {centre[:2].round()} has no partner; left out")
                continue
            ways["old"].append(chip)
            ways["resize"].append(resized)
            ways["new"].append(jpeg_round_trip([resized])[0])
            if via_cnn is not None:
                ways["cnn"].append(jpeg_round_trip([via_cnn])[0])
    everything = [c for chips in ways.values() for c in chips]
    with tempfile.TemporaryDirectory() as folder:
        torch.manual_seed(0)
        torch.save(FairFaceResNet().state_dict(), Path(folder) / "full.pt")
        nets = {"full-size": FairFaceEstimator(Path(folder) / "full.pt"),
                "tiny": FairFaceEstimator(write_tiny_fairface(Path(folder) / "tiny.pt", seed=0))}
    for est in nets.values():
        calibrated(est.model, everything)
    logits = {net: {way: est.logits(chips) for way, chips in ways.items() if chips} for net, est in nets.items()}
    for net in nets:
        ln = logits[net]["new"]
        between = [np.abs(ln[i] - ln[j]).mean() for i in range(len(ln)) for j in range(i + 1, len(ln))]
        print(f"{net} network: two different faces' logits differ by {np.median(between):.3f} "
              f"(mean |difference| over the 18, median over pairs of the {len(ln)} faces)")
    pairs = [("old", "resize"), ("resize", "new"), ("old", "new"), ("new", "cnn"), ("old", "cnn")]
    for a, b in pairs:
        if not ways[b]:
            continue
        mad = np.array([np.abs(x.astype(np.int16) - y.astype(np.int16)).mean() for x, y in zip(ways[a], ways[b],
                                                                                                strict=True)])
        print(f"{a} -> {b}: {len(mad)} chips, mean |diff| {mad.min():.2f}-{mad.max():.2f} grey levels "
              f"(median {np.median(mad):.2f})")
        for net in nets:
            la, lb = logits[net][a], logits[net][b]
            dm, dl = np.abs(la - lb).mean(1), np.abs(la - lb).max(1)
            dp = np.abs(softmaxes(la) - softmaxes(lb)).max(1)
            changed = sum(int((la[:, lo:hi].argmax(1) != lb[:, lo:hi].argmax(1)).sum()) for lo, hi in HEADS)
            print(f"  {net}: mean |logit shift| per face median {np.median(dm):.3f}; largest shift per face median "
                  f"{np.median(dl):.3f}, max {dl.max():.3f}; "
                  f"max |probability shift| median {np.median(dp):.3f}, max {dp.max():.3f}; "
                  f"labels changed {changed} of {3 * len(dl)}")


if __name__ == "__main__":
    main()
