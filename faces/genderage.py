"""InsightFace's gender/age estimator ``genderage.onnx`` (packs ``buffalo_l``, ``antelopev2``) on ONNX Runtime.

Restated from ``insightface`` 2.1, ``python-package/insightface/model_zoo/attribute.py`` (``Attribute.get``)
and ``python-package/insightface/utils/face_align.py`` (``transform``); checked against that code:

- crop: a similarity transform centred on the detector box, rotation 0, scale
  ``96 / (max(w, h) * 1.5)`` (``w = x2 - x1``, ``h = y2 - y1``), the box centre mapped to ``(48, 48)``;
  ``cv2.warpAffine`` to 96x96, bilinear, border 0 (:func:`crop_matrix`, :func:`crop_face`);
- input: ``cv2.dnn.blobFromImage(crop, 1 / std, (96, 96), (mean,) * 3, swapRB=True)`` on InsightFace's BGR
  image, i.e. the network sees **RGB**, NCHW float32, ``(pixel - mean) / std``. Here images are RGB already,
  so the RGB crop is used as it is (the same numbers);
- mean/std by ``Attribute``'s graph rule: a ``Sub*``/``_minus*`` and a ``Mul*``/``_mul*`` among the first 8 nodes
  (:func:`facefoundry.faces.arcface.normalisation_of`), or a node named ``bn_data`` among the first 3, mean 0
  and std 1 (the graph normalises itself); otherwise mean 127.5 and std **128** (not ArcFace's 127.5);
- output ``pred`` of 3 values per face: ``gender = argmax(pred[:2])`` (0 female, 1 male: ``Face.sex`` is ``"M"``
  for 1) and ``age = int(np.round(pred[2] * 100))`` years. ``gender_score`` (the softmax probability of the
  chosen class) is an addition here; InsightFace reports none.

InsightFace runs one face per session call; here faces are batched (see :class:`GenderAgeEstimator`).
Assumed, not verified (the file was not downloaded): that the published graph's first node is ``bn_data`` so
that the rule above gives mean 0 / std 1 (third-party ports of ``genderage.onnx`` hard-code 0 / 1, and the
``bn_data`` clause exists only in the attribute and landmark loaders, not the ArcFace one). Either way the rule is
applied to whatever file is given. The model weights are for non-commercial research only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from facefoundry.faces.arcface import OOM_MARKERS, normalisation_of
from facefoundry.faces.batching import embed_in_batches, run_onnx_padded
from facefoundry.faces.scrfd import MissingModelError, OnnxModelError, open_session

GENDERAGE_FILE = "genderage.onnx"
INPUT_SIZE = 96
OUTPUTS = 3  # two gender logits, then age / 100
GENDERS = ("female", "male")
BOX_MARGIN = 1.5  # the crop spans 1.5x the box's longer side
DEFAULT_MEAN, DEFAULT_STD = 127.5, 128.0
LICENCE_NOTE = (
    f"{GENDERAGE_FILE} ships in InsightFace's model packs buffalo_l and antelopev2 "
    "(github.com/deepinsight/insightface/releases/download/v0.7/buffalo_l.zip); InsightFace's pretrained models "
    "are licensed for non-commercial research purposes only"
)


class GenderAgeModelNotFoundError(MissingModelError):
    """``genderage.onnx`` is missing; the message names the path and where the file comes from."""


class GenderAgeModelError(OnnxModelError):
    """The ONNX file is not a gender/age model (input [N, 3, 96, 96] -> output [N, 3])."""


@dataclass(frozen=True)
class GenderAgeResult:
    """Per-face estimates: ``age`` float32 years (InsightFace's rounding), ``gender`` "female"/"male",
    ``gender_score`` float32 softmax probability of the chosen gender."""

    age: np.ndarray
    gender: list[str]
    gender_score: np.ndarray

    def __len__(self) -> int:
        return len(self.gender)


def resolve_genderage(path: str | Path) -> Path:
    """``path`` if it is a file, ``path/genderage.onnx`` if it is a pack folder; else a clear error."""
    path = Path(path).expanduser()
    candidate = path / GENDERAGE_FILE if path.is_dir() else path
    if candidate.is_file():
        return candidate
    raise GenderAgeModelNotFoundError(f"gender/age model {candidate} does not exist: {LICENCE_NOTE}")


def input_normalisation(path: Path) -> tuple[float, float]:
    """``(mean, std)`` by InsightFace ``Attribute``'s rule (see the module docstring)."""
    import onnx

    if normalisation_of(path) == (0.0, 1.0):
        return 0.0, 1.0
    first = onnx.load(str(path), load_external_data=False).graph.node[:3]
    return (0.0, 1.0) if any(n.name == "bn_data" for n in first) else (DEFAULT_MEAN, DEFAULT_STD)


def crop_matrix(box: Sequence[float], size: int = INPUT_SIZE) -> np.ndarray:
    """The 2x3 matrix of ``face_align.transform(img, centre, size, size / (max(w, h) * 1.5), 0)``.

    The box arithmetic runs in the box's own dtype (float32 for detector boxes), as ``Attribute.get`` does, so
    the matrix is InsightFace's to the last bit; the composition itself is float64, as scikit-image's.
    """
    x1, y1, x2, y2 = np.asarray(box)[:4]
    w, h = x2 - x1, y2 - y1
    cx, cy = (x2 + x1) / 2, (y2 + y1) / 2
    scale = size / (max(w, h) * BOX_MARGIN)
    tx, ty = float(cx * scale), float(cy * scale)
    return np.array([[float(scale), 0.0, size / 2 - tx], [0.0, float(scale), size / 2 - ty]])


def crop_face(image: np.ndarray, box: Sequence[float], size: int = INPUT_SIZE) -> np.ndarray:
    """The ``size`` x ``size`` crop InsightFace feeds the attribute model (same channel order as ``image``)."""
    return cv2.warpAffine(np.ascontiguousarray(image), crop_matrix(box, size), (size, size), borderValue=0.0)


def decode(pred: np.ndarray) -> GenderAgeResult:
    """:class:`GenderAgeResult` of raw ``(N, 3)`` outputs, decoded as ``Attribute.get`` does."""
    pred = np.asarray(pred, dtype=np.float32).reshape(-1, OUTPUTS)
    logits = pred[:, :2]
    chosen = np.argmax(logits, axis=1)  # ties -> 0 (female), as np.argmax in InsightFace
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs = exp / exp.sum(axis=1, keepdims=True)
    age = np.round(pred[:, 2] * 100).astype(np.float32)
    score = probs[np.arange(len(pred)), chosen].astype(np.float32)
    return GenderAgeResult(age=age, gender=[GENDERS[i] for i in chosen], gender_score=score)


class GenderAgeEstimator:
    """``estimate(images, boxes) -> GenderAgeResult`` with ``genderage.onnx``, ``batch_size`` faces per call.

    ``model_path``: the ``.onnx`` file or a pack folder holding ``genderage.onnx``. The graph's batch axis may
    be dynamic, fixed at 1 (one face per call) or fixed at N (the last batch zero-padded). On a CUDA
    out-of-memory error a dynamic batch is halved and retried.
    """

    def __init__(self, model_path: str | Path, providers: list | None = None, batch_size: int = 64):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model_path = resolve_genderage(model_path)
        self.session = open_session(self.model_path, providers)
        self.fixed_batch = self._validate()
        self.batch_size = self.fixed_batch or int(batch_size)
        self.input_mean, self.input_std = input_normalisation(self.model_path)

    def _validate(self) -> int | None:
        want = f"{self.model_path}: expected a gender/age model, input [N, 3, 96, 96] -> output [N, 3]"
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        shape = list(inputs[0].shape) if inputs else []
        if len(inputs) != 1 or len(shape) != 4 or shape[1:] != [3, INPUT_SIZE, INPUT_SIZE]:
            raise GenderAgeModelError(f"{want}; got input(s) {[i.shape for i in inputs]}")
        if inputs[0].type != "tensor(float)":
            raise GenderAgeModelError(f"{want} taking float32; got {inputs[0].type}")
        out = list(outputs[0].shape) if len(outputs) == 1 else None
        if out is None or len(out) != 2 or (isinstance(out[1], int) and out[1] != OUTPUTS):
            raise GenderAgeModelError(f"{want}; got output(s) {[o.shape for o in outputs]}")
        self.input_name, self.output_name = inputs[0].name, outputs[0].name
        return shape[0] if isinstance(shape[0], int) and shape[0] > 0 else None

    def info(self) -> dict:
        """Model id and settings, for file metadata and manifests."""
        return {"genderage": self.model_path.name, "input_mean": self.input_mean, "input_std": self.input_std,
                "providers": self.session.get_providers()}

    def preprocess(self, images: Sequence[np.ndarray], boxes: np.ndarray) -> np.ndarray:
        """``(N, 3, 96, 96)`` float32 network input (RGB planes) of HxWx3 uint8 RGB images and their boxes."""
        boxes = np.asarray(boxes)
        if boxes.size == 0 and len(images) == 0:
            boxes = boxes.reshape(0, 4)
        if not np.issubdtype(boxes.dtype, np.floating):
            boxes = boxes.astype(np.float64)
        if boxes.ndim != 2 or boxes.shape[1] != 4:
            hint = " (detector rows with a score: pass boxes[:, :4])" if boxes.ndim == 2 and boxes.shape[1] == 5 else ""
            raise ValueError(f"boxes must be an (N, 4) array of x1, y1, x2, y2 pixels, got shape {boxes.shape}{hint}")
        if len(images) != len(boxes):
            raise ValueError(f"one box per image: got {len(images)} images and {len(boxes)} boxes")
        if not np.isfinite(boxes).all():
            bad = np.flatnonzero(~np.isfinite(boxes).all(1)).tolist()
            raise ValueError(f"boxes must be finite; rows {bad} are not")
        sides = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]).astype(np.float64)
        if (sides <= 0).any():
            raise ValueError(f"boxes need x2 > x1 or y2 > y1; rows {np.flatnonzero(sides <= 0).tolist()} are empty")
        crops = np.zeros((len(boxes), INPUT_SIZE, INPUT_SIZE, 3), np.uint8)
        for i, (image, box) in enumerate(zip(images, boxes, strict=True)):
            image = np.asarray(image)
            if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8 or 0 in image.shape:
                raise ValueError(f"images must be H x W x 3 uint8 RGB arrays; image {i} is {image.dtype} {image.shape}")
            crops[i] = crop_face(image, box)
        blob = (crops.astype(np.float32) - np.float32(self.input_mean)) * np.float32(1.0 / self.input_std)
        return np.ascontiguousarray(blob.transpose(0, 3, 1, 2))

    def _run(self, blob: np.ndarray) -> np.ndarray:
        out = run_onnx_padded(self.session, self.input_name, self.output_name, blob, self.fixed_batch)
        if out.shape != (len(blob), OUTPUTS):
            raise GenderAgeModelError(f"{self.model_path}: expected output [{len(blob)}, 3], got {list(out.shape)}")
        return out

    def predict(self, images: Sequence[np.ndarray], boxes: np.ndarray) -> np.ndarray:
        """Raw ``(N, 3)`` float32 outputs (two gender logits, age / 100) for one face box per image."""
        blob = self.preprocess(images, boxes)
        out, self.batch_size = embed_in_batches(  # the batch that fit is kept for later calls
            blob, OUTPUTS, self.batch_size, self._run,
            lambda exc: not self.fixed_batch and any(m in str(exc).lower() for m in OOM_MARKERS))
        return out

    def estimate(self, images: Sequence[np.ndarray], boxes: np.ndarray) -> GenderAgeResult:
        """Gender and age of the face in ``boxes[i]`` (x1, y1, x2, y2 pixels) of RGB ``images[i]``."""
        return decode(self.predict(images, boxes))

    __call__ = estimate
