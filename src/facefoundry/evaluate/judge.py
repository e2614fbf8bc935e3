"""The independent judge: detect, align and embed face images with a model that did not condition the generator.

- ``dlib`` (default, offline): dlib's HOG detector, its 5-point predictor, the 150x150 face chip and the 128-d
  ResNet descriptor (``face-recognition-models``). Native score: Euclidean distance; dlib's same-person rule is
  a distance below 0.6 (the threshold dlib's documentation gives for this model, 99.38 % on LFW).
- an ArcFace-family model (a path): an ``.onnx`` file or InsightFace pack folder (ONNX Runtime), or a ``.pth``
  ArcFace-R100 checkpoint (PyTorch). Faces are still found by dlib's detector and 5 points, then aligned to the
  112x112 ArcFace template from the eye centres and nose (``filters.alignment.align_dlib``). Native score:
  cosine of the L2-normalised features; the same-person threshold defaults to :data:`DEFAULT_COSINE_THRESHOLD`
  (a conventional operating point for ArcFace models; pass the one calibrated for your model).

Each image is counted under one status: ``ok``, ``undecodable`` or ``no_face``; an image with several faces
is judged on its best-scoring face (counted in ``multiple_faces`` too).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError

from facefoundry.faces.dlib_models import RECOGNITION_FILE, SHAPE_5_FILE, DlibFaceModel, model_path
from facefoundry.generators.registry import DEFAULT_KIND, find_spec

DLIB = "dlib"
DLIB_SAME_PERSON_DISTANCE = 0.6
DEFAULT_COSINE_THRESHOLD = 0.3
SMALL_IMAGE = 300  # images with a shorter side are upsampled once by the HOG detector (faces >= ~40 px)
STATUSES = ("ok", "undecodable", "no_face")


class JudgeError(ValueError):
    """The judge model cannot be used (missing, or the generator's own conditioning encoder)."""


def file_info(path: Path) -> dict:
    """Path, size and SHA-256 of a model file (what ``intrinsic.json`` records about the judge)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return {"path": str(path), "bytes": path.stat().st_size, "sha256": digest.hexdigest()}


def judge_files(model: str | Path) -> list[Path] | None:
    """The files a judge would load, without loading them (None for a pack folder: known once resolved)."""
    if str(model) == DLIB:
        return [model_path(SHAPE_5_FILE), model_path(RECOGNITION_FILE)]
    path = Path(model).expanduser()
    return [model_path(SHAPE_5_FILE), path] if path.is_file() else None


def default_threshold(model: str | Path) -> float:
    """The same-person rule a judge uses unless told otherwise."""
    return DLIB_SAME_PERSON_DISTANCE if str(model) == DLIB else DEFAULT_COSINE_THRESHOLD


def conditioning_names(generator: Any) -> tuple[str, set[str]]:
    """(display name, file names) of the encoders that condition a run's generator, as its spec declares them.
    ``generator`` is the run's generator section (validated, or the mapping of ``run.json``), a kind, or None."""
    if generator is None:
        return "", set()
    kind = generator if isinstance(generator, str) else (
        generator.get("kind", DEFAULT_KIND) if isinstance(generator, dict) else generator.kind)
    spec = find_spec(kind)
    if spec is None:
        return str(kind), set()
    if isinstance(generator, str):
        return spec.display_name, set(spec.conditioning_files)
    try:
        section = spec.config.model_validate(generator) if isinstance(generator, dict) else generator
    except ValidationError:  # a record this version cannot read in full: the published names still hold
        return spec.display_name, set(spec.conditioning_files)
    return spec.display_name, spec.conditioning_names(section)


def check_independent(judge_file: Path, generator: Any, encoder_model: str | None = None) -> None:
    """Refuse a judge file that is the generator's conditioning encoder: by the file names its spec declares, by
    the run's ``id_filter.encoder_model`` name, or by identical bytes."""
    name, names = conditioning_names(generator)
    if encoder_model:
        names.add(Path(encoder_model).name)
    same_bytes = bool(encoder_model) and Path(encoder_model).is_file() and (
        file_info(Path(encoder_model))["sha256"] == file_info(judge_file)["sha256"])
    if judge_file.name in names or same_bytes:
        raise JudgeError(f"judge {judge_file} is the {name or 'run'} generator's conditioning encoder; "
                         "an independent judge is needed: use 'dlib' or another model family")


@dataclass
class JudgedImages:
    """Per image: status, embedding (NaN row unless ``ok``), the judge's 5 dlib points (NaN) and detector score."""

    status: np.ndarray
    embeddings: np.ndarray
    landmarks: np.ndarray
    face_score: np.ndarray
    face_count: np.ndarray


class FaceJudge:
    """``judge(images) -> JudgedImages`` for RGB uint8 arrays (None = undecodable). One per process."""

    def __init__(self, model: str | Path = DLIB, *, threshold: float | None = None, device: str = "auto",
                 batch_size: int = 64):
        self.faces = DlibFaceModel("hog")
        self.model, self.device, self.batch_size = str(model), device, batch_size
        self.threshold = default_threshold(model) if threshold is None else float(threshold)
        files = [model_path(SHAPE_5_FILE)]
        if self.model == DLIB:
            self.name, self.metric, self.dim, self._embedder = "dlib ResNet (128-d)", "euclidean", 128, None
            files.append(model_path(RECOGNITION_FILE))
        else:
            path = Path(model).expanduser()
            if not path.exists():
                raise JudgeError(f"judge model {path} does not exist; pass an ArcFace .onnx/.pth path or 'dlib'")
            if path.suffix == ".pth" or (path.is_dir() and not any(path.glob("*.onnx"))):
                from facefoundry.faces.torch_embedder import TorchArcFaceEmbedder

                self._embedder = TorchArcFaceEmbedder(path, device=device, batch_size=batch_size)
            else:
                from facefoundry.faces.arcface import ArcFaceEmbedder

                self._embedder = ArcFaceEmbedder(path, batch_size=batch_size)
            self.name, self.metric, self.dim = f"ArcFace {self._embedder.model_path.name}", "cosine", 512
            files.append(Path(self._embedder.model_path))
        self.files = files

    def check_independent(self, generator: Any, encoder_model: str | None = None) -> None:
        """Refuse a judge that is the generator's conditioning encoder (see :func:`check_independent`)."""
        check_independent(self.files[-1], generator, encoder_model)

    def info(self) -> dict:
        """Model name, score, threshold, detector/alignment and the files (path, bytes, sha256)."""
        out = {
            "name": self.name,
            "metric": self.metric,
            "same_person_threshold": self.threshold,
            "threshold_source": ("dlib: same person when the descriptor distance is below 0.6" if self.model == DLIB
                                 else "conventional ArcFace cosine operating point (configurable)"),
            "dim": self.dim,
            "detector": f"dlib HOG frontal_face_detector (upsample 1 below {SMALL_IMAGE} px, else 0)",
            "alignment": ("dlib 5-point face chip 150x150, padding 0.25" if self.model == DLIB
                          else "ArcFace 112x112 template from dlib eye centres + nose (alignment.align_dlib)"),
            "library": self.faces.info()["library"],
            "files": [file_info(p) for p in self.files],
        }
        if self._embedder is not None:
            out["embedder"] = self._embedder.info()
        return out

    def _crop(self, image: np.ndarray, shape) -> np.ndarray:
        if self._embedder is None:
            return self.faces.chip(image, shape)
        from facefoundry.faces.alignment import align_dlib

        return align_dlib(image, self.faces.points(shape), 112)

    def __call__(self, images: list[np.ndarray | None]) -> JudgedImages:
        n = len(images)
        status = np.array(["ok"] * n, dtype=object)
        landmarks, score = np.full((n, 10), np.nan), np.full(n, np.nan)
        count = np.zeros(n, np.int64)
        crops, owners = [], []
        for i, image in enumerate(images):
            if image is None:
                status[i] = "undecodable"
                continue
            dets = self.faces.detect(image, upsample=1 if min(image.shape[:2]) < SMALL_IMAGE else 0)
            count[i] = len(dets)
            if not dets:
                status[i] = "no_face"
                continue
            shape = self.faces.shape(image, dets[0])
            landmarks[i], score[i] = self.faces.points(shape).reshape(-1), dets[0].score
            crops.append(self._crop(image, shape))
            owners.append(i)
        emb = np.full((n, self.dim), np.nan)
        if crops:
            if self._embedder is None:
                emb[owners] = self.faces.descriptors(crops)
            else:
                raw = np.asarray(self._embedder.embed(np.stack(crops)), np.float64)
                emb[owners] = raw / np.maximum(np.linalg.norm(raw, axis=1, keepdims=True), 1e-12)
        return JudgedImages(status, emb, landmarks, score, count)
