"""FairFace race / gender / age-bin classifier: a ResNet-34 with an 18-way ``fc``, in plain torch.

Official: Karkkainen & Joo, FairFace (WACV 2021), code ``github.com/dchen236/FairFace`` (``predict.py``), model
file ``res34_fair_align_multi_7_20190809.pt`` (linked from ``github.com/joojs/fairface``; ``predict.py`` later
switched to ``fairface_alldata_20191111.pt``, same architecture). ``predict.py`` builds
``torchvision.models.resnet34()``, sets ``fc = nn.Linear(512, 18)`` and calls ``load_state_dict(torch.load(f))``:
the file is a bare, strict state dict with torchvision's key names. Restated here without torchvision (it is
not installed): :class:`FairFaceResNet` has the same module and key names (``conv1``, ``bn1``,
``layer1..4.N.{conv1,bn1,conv2,bn2,downsample.0,downsample.1}``, ``fc``) and takes its widths and block counts
from the state dict, so narrow test files (``tiny_face_models.write_tiny_fairface``) load through the same path.

Preprocessing as ``predict.py`` (its ``detect_face`` and ``predidct_age_gender_race``), step by step:

1. ``resize_image``: the whole photo is always resized (down or up) so that its longer side is 800 px, the other
   side ``int(800 * short / long)`` (a square goes to 800 x 800), with ``dlib.resize_image(img, rows, cols)``
   (bilinear): :func:`predict_resize`. Detection, landmarks and chips all use this copy.
2. ``find_faces_in_image``: ``cnn_face_detection_model_v1('mmod_human_face_detector.dat')`` with 1 upsample, then
   ``shape_predictor_5_face_landmarks.dat`` on each box (here: the largest box only, one face per image).
3. ``dlib.get_face_chips(img, faces, size=300, padding=0.25)``: :meth:`FairFaceEstimator.chip`.
4. ``save_face_chips`` writes each chip with ``dlib.save_image`` under the input file's extension and
   ``predidct_age_gender_race`` reads it back with ``dlib.load_rgb_image``: for the ``.jpg`` photos its
   ``test/test_imgs.csv`` lists that is a JPEG at dlib's default quality 75 (a ``.png`` input would give a lossless
   chip). Chips here always take the JPEG round trip, through dlib's own libjpeg (:func:`jpeg_round_trip`; PIL's
   round trip differs from dlib's by up to 14 grey levels on a face chip), whatever ``images.format`` is, so
   balance probes (never encoded) and stored rows are treated alike.
5. ``ToPILImage -> Resize((224, 224)) -> ToTensor -> Normalize(ImageNet)`` (PIL bilinear resize, as torchvision
   does on PIL images): :meth:`FairFaceEstimator.preprocess`.

Step 2 runs dlib's HOG detector unless ``attributes.detector_model`` names the MMOD ``.dat`` file (it ships with
``face-recognition-models``); the annotator's docstring says what that changes. Outputs: ``[:7]`` race, ``[7:9]``
gender, ``[9:18]`` age bin, each softmaxed separately; label orders from ``predict.py`` (gender index 0 is male).
Weights: CC BY 4.0 per the repositories' READMEs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from facefoundry.attributes import FAIRFACE_AGES, FAIRFACE_GENDERS, FAIRFACE_RACES
from facefoundry.faces.face_weights import (
    FaceWeightsError,
    FaceWeightsNotFoundError,
    key_index_counts,
    load_strict,
    read_checkpoint,
    tensor_dict,
)

FAIRFACE_FILE = "res34_fair_align_multi_7_20190809.pt"
FAIRFACE_URL = "https://drive.google.com/file/d/11y0Wi3YQf21a_VcspUV4FwqzhMcfaVAB/view"
MODEL_NAME = "FairFace"
RACES, AGE_BINS = FAIRFACE_RACES, FAIRFACE_AGES
GENDERS = tuple(g.lower() for g in FAIRFACE_GENDERS)  # predict.py: 0 'Male', 1 'Female'; the project's spelling
RESNET34_BLOCKS = (3, 4, 6, 3)
RESNET34_WIDTHS = (64, 64, 128, 256, 512)  # stem, then layer1..4
CHIP_SIZE, CHIP_PADDING, INPUT_SIZE = 300, 0.25, 224
PREDICT_MAX_SIZE = 800  # predict.py: detect_face(default_max_size=800) -> resize_image
DETECT_UPSAMPLE = 1  # predict.py: find_faces_in_image, cnn_face_detector(img, 1)
CHIP_JPEG_QUALITY = 75  # dlib.save_image's default quality (save_face_chips passes none)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class BasicBlock(nn.Module):
    """torchvision's ResNet basic block: 3x3 conv-BN-ReLU, 3x3 conv-BN, residual (1x1 conv-BN when reshaped)."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


class FairFaceResNet(nn.Module):
    """ResNet-34 (torchvision layout) with ``fc`` to ``outputs`` logits; ``widths`` = stem, layer1..4."""

    def __init__(self, blocks: Sequence[int] = RESNET34_BLOCKS, widths: Sequence[int] = RESNET34_WIDTHS,
                 outputs: int = 18):
        super().__init__()
        if len(blocks) != 4 or len(widths) != 5 or min(blocks) < 1:
            raise ValueError(f"bad ResNet layout: blocks {list(blocks)}, widths {list(widths)}")
        self.conv1 = nn.Conv2d(3, widths[0], 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        cin = widths[0]
        for i, (count, cout) in enumerate(zip(blocks, widths[1:], strict=True), start=1):
            stride = 1 if i == 1 else 2
            stage = [BasicBlock(cin if j == 0 else cout, cout, stride if j == 0 else 1) for j in range(count)]
            self.add_module(f"layer{i}", nn.Sequential(*stage))
            cin = cout
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def fairface_arch(state: Mapping[str, torch.Tensor], path: Path) -> dict:
    """``FairFaceResNet`` arguments read off a state dict's shapes (error names the file if keys are absent)."""
    keys = list(state)
    try:
        blocks = [key_index_counts(keys, f"layer{i}.") for i in range(1, 5)]
        widths = [state["conv1.weight"].shape[0]] + [state[f"layer{i}.0.conv1.weight"].shape[0] for i in range(1, 5)]
        outputs = state["fc.weight"].shape[0]
    except KeyError as exc:
        raise FaceWeightsError(f"{MODEL_NAME} weights {path}: not a torchvision ResNet state dict (no key {exc})") \
            from exc
    if outputs != 18:
        raise FaceWeightsError(f"{MODEL_NAME} weights {path}: fc has {outputs} outputs, expected 18 (7 + 2 + 9)")
    return {"blocks": blocks, "widths": widths, "outputs": outputs}


def load_fairface(weights: str | Path, device: str | torch.device = "cpu") -> FairFaceResNet:
    """The FairFace network from a bare state dict (``torch.load(weights_only=True)``, strict keys), eval mode."""
    path = Path(weights).expanduser()
    if not path.is_file():
        raise FaceWeightsNotFoundError(
            f"{MODEL_NAME} weights {path} do not exist: download {FAIRFACE_FILE} (linked from the READMEs of "
            f"github.com/joojs/fairface and github.com/dchen236/FairFace: {FAIRFACE_URL}) and pass its path"
        )
    state = tensor_dict(read_checkpoint(path, MODEL_NAME), path, MODEL_NAME)
    model = FairFaceResNet(**fairface_arch(state, path))
    for key, value in model.state_dict().items():  # files from torch < 0.4.1 lack these counters (unused in eval)
        if key.endswith("num_batches_tracked") and key[: -len("num_batches_tracked")] + "running_mean" in state:
            state.setdefault(key, value)
    load_strict(model, state, path, MODEL_NAME)
    model.requires_grad_(False)
    return model.eval().to(device)


@dataclass(frozen=True)
class FairFaceResult:
    """Per-face labels and softmax scores; ``race_probs`` is ``(N, 7)`` in :data:`RACES` order."""

    race: list[str]
    race_probs: np.ndarray
    gender: list[str]
    gender_score: np.ndarray
    age: list[str]
    age_score: np.ndarray

    def __len__(self) -> int:
        return len(self.race)


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def decode(logits: np.ndarray) -> FairFaceResult:
    """:class:`FairFaceResult` of raw ``(N, 18)`` outputs, split and softmaxed as ``predict.py`` does."""
    logits = np.asarray(logits, dtype=np.float32).reshape(-1, 18)
    race, gender, age = _softmax(logits[:, :7]), _softmax(logits[:, 7:9]), _softmax(logits[:, 9:18])
    r, g, a = race.argmax(1), gender.argmax(1), age.argmax(1)
    rows = np.arange(len(logits))
    return FairFaceResult(race=[RACES[i] for i in r], race_probs=race, gender=[GENDERS[i] for i in g],
                          gender_score=gender[rows, g], age=[AGE_BINS[i] for i in a], age_score=age[rows, a])


def predict_size(height: int, width: int, max_size: int = PREDICT_MAX_SIZE) -> tuple[int, int]:
    """``(rows, cols)`` that ``predict.py``'s ``resize_image`` gives an ``height x width`` photo: the longer side
    becomes ``max_size`` (the width only when strictly wider), the other ``int(max_size * short / long)``."""
    if width > height:
        return int(max_size * height / width), max_size
    return max_size, int(max_size * width / height)


def predict_resize(image: np.ndarray, max_size: int = PREDICT_MAX_SIZE) -> np.ndarray:
    """The photo as ``predict.py`` detects and chips it: ``dlib.resize_image`` (bilinear) to :func:`predict_size`,
    smaller photos enlarged as well."""
    import dlib

    rows, cols = predict_size(*image.shape[:2], max_size=max_size)
    return np.asarray(dlib.resize_image(np.ascontiguousarray(image, dtype=np.uint8), rows=rows, cols=cols))


def jpeg_round_trip(chips: Sequence[np.ndarray], quality: int = CHIP_JPEG_QUALITY) -> list[np.ndarray]:
    """Each chip written by ``dlib.save_image`` as ``.jpg`` (``quality``) and read back by ``dlib.load_rgb_image``,
    as ``predict.py``'s ``save_face_chips`` and ``load_and_preprocess_image`` do (dlib's libjpeg, not PIL's)."""
    import tempfile

    import dlib

    out = []
    with tempfile.TemporaryDirectory(prefix="fairface-chips-") as folder:
        path = str(Path(folder) / "chip.jpg")
        for chip in chips:
            dlib.save_image(np.ascontiguousarray(chip, dtype=np.uint8), path, quality)
            out.append(np.asarray(dlib.load_rgb_image(path)))
    return out


def to_full_object_detection(shape):
    """A dlib ``full_object_detection`` as it is, or one made from ``(5, 2)`` landmarks in dlib's 5-point order
    (coordinates rounded to whole pixels, as the shape predictor's are; rect = the points' bounding box)."""
    import dlib

    if isinstance(shape, dlib.full_object_detection):
        return shape
    pts = np.asarray(shape, dtype=np.float64)
    if pts.shape != (5, 2) or not np.isfinite(pts).all():
        raise ValueError(f"shapes must be dlib full_object_detections or finite (5, 2) landmarks, got {pts.shape}")
    p = np.rint(pts).astype(int)
    rect = dlib.rectangle(int(p[:, 0].min()), int(p[:, 1].min()), int(p[:, 0].max()), int(p[:, 1].max()))
    return dlib.full_object_detection(rect, [dlib.point(int(x), int(y)) for x, y in p])


class FairFaceEstimator:
    """``estimate(images, shapes)`` / ``estimate_chips(chips) -> FairFaceResult`` with the FairFace ResNet-34."""

    def __init__(self, weights: str | Path, device: str = "cpu"):
        self.device = torch.device(device)
        self.model = load_fairface(weights, self.device)
        self.source = str(weights)

    @staticmethod
    def preprocess(chips: Sequence[np.ndarray]) -> torch.Tensor:
        """``(N, 3, 224, 224)`` float32: PIL bilinear resize to 224, /255, ImageNet mean/std (RGB uint8 chips)."""
        mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
        out = torch.zeros(len(chips), 3, INPUT_SIZE, INPUT_SIZE)
        for i, chip in enumerate(chips):
            chip = np.asarray(chip)
            if chip.ndim != 3 or chip.shape[2] != 3 or chip.dtype != np.uint8 or 0 in chip.shape:
                raise ValueError(f"chips must be H x W x 3 uint8 RGB arrays; chip {i} is {chip.dtype} {chip.shape}")
            small = Image.fromarray(chip).resize((INPUT_SIZE, INPUT_SIZE), Image.Resampling.BILINEAR)
            tensor = torch.from_numpy(np.array(small)).permute(2, 0, 1).float().div(255)
            out[i] = tensor.sub(mean).div(std)
        return out

    @torch.no_grad()
    def logits(self, chips: Sequence[np.ndarray], batch_size: int = 32) -> np.ndarray:
        """Raw ``(N, 18)`` float32 outputs for aligned RGB chips."""
        out = np.zeros((len(chips), 18), np.float32)
        for start in range(0, len(chips), batch_size):
            batch = self.preprocess(chips[start : start + batch_size]).to(self.device)
            out[start : start + len(batch)] = self.model(batch).float().cpu().numpy()
        return out

    def estimate_chips(self, chips: Sequence[np.ndarray]) -> FairFaceResult:
        """Race, gender and age bin of aligned RGB chips (``chip(image, shape)``: 300 px, padding 0.25)."""
        return decode(self.logits(chips))

    @staticmethod
    def chip(image: np.ndarray, shape) -> np.ndarray:
        """The 300x300 dlib face chip (padding 0.25) FairFace was trained on, from a shape or 5 landmarks."""
        from facefoundry.faces.dlib_models import DlibFaceModel

        return DlibFaceModel.chip(np.ascontiguousarray(image), to_full_object_detection(shape), CHIP_SIZE, CHIP_PADDING)

    def estimate(self, images: Sequence[np.ndarray], shapes: Sequence) -> FairFaceResult:
        """One face per image: ``shapes[i]`` is a 5-point ``full_object_detection`` or ``(5, 2)`` landmarks."""
        if len(images) != len(shapes):
            raise ValueError(f"one shape per image: got {len(images)} images and {len(shapes)} shapes")
        return self.estimate_chips([self.chip(image, shape) for image, shape in zip(images, shapes, strict=True)])

    __call__ = estimate
