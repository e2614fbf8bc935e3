"""dlib face models, loaded offline from the files shipped by ``face-recognition-models``.

The package's own ``__init__`` imports ``pkg_resources`` (gone from setuptools >= 81), so the model
folder is located by path through ``importlib.util.find_spec`` without importing the package.

Models (all from ``face_recognition_models/models/``):

- detector: dlib's HOG frontal face detector (built into dlib, no file) or the CNN MMOD detector
  ``mmod_human_face_detector.dat``;
- ``shape_predictor_5_face_landmarks.dat``: 5 landmarks (public domain / CC0);
- ``dlib_face_recognition_resnet_model_v1.dat``: 128-d descriptors, same person typically < 0.6
  Euclidean apart (public domain / CC0);
- ``shape_predictor_68_face_landmarks.dat`` (:data:`SHAPE_68_FILE`): not loaded by the pipeline (trained on iBUG
  300-W, whose licence excludes commercial use); the tests use it as the reference that the dlib-5 -> ArcFace
  mapping of :mod:`facefoundry.faces.alignment` is fitted and measured against.

Landmark order of the 5-point predictor (image coordinates, "left" = smaller x in a frontal face):
``0`` outer corner of the image-right eye, ``1`` inner corner of the image-right eye,
``2`` outer corner of the image-left eye, ``3`` inner corner of the image-left eye,
``4`` base of the nose (below the nose tip). These are not the ArcFace 5-point template
(eye centres, nose tip, mouth corners).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

MODELS_PACKAGE = "face_recognition_models"
PIP_HINT = "pip install face-recognition-models"
CNN_DETECTOR_FILE = "mmod_human_face_detector.dat"
SHAPE_5_FILE = "shape_predictor_5_face_landmarks.dat"
SHAPE_68_FILE = "shape_predictor_68_face_landmarks.dat"  # measurement reference only (see the module docstring)
RECOGNITION_FILE = "dlib_face_recognition_resnet_model_v1.dat"
LANDMARK_ORDER = (
    "image_right_eye_outer",
    "image_right_eye_inner",
    "image_left_eye_outer",
    "image_left_eye_inner",
    "nose_base",
)
CHIP_SIZE = 150  # the recognition network's input; alignment as dlib.get_face_chip does it
CHIP_PADDING = 0.25  # compute_face_descriptor's default padding
DESCRIPTOR_BATCH = 64  # chips per recognition call (bounds memory)


class DlibModelError(FileNotFoundError):
    """The ``face-recognition-models`` package or one of its model files is missing."""


def models_dir() -> Path:
    """The ``models/`` folder of the installed ``face_recognition_models`` package (not imported)."""
    spec = importlib.util.find_spec(MODELS_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        folder = Path(location) / "models"
        if folder.is_dir():
            return folder
    raise DlibModelError(
        f"the dlib model files are missing: package {MODELS_PACKAGE!r} is not installed "
        f"(or has no models/ folder); run `{PIP_HINT}`"
    )


def model_path(filename: str, folder: str | Path | None = None) -> Path:
    """Path of one model file, in ``folder`` or else in the installed package; a clear error if absent."""
    base = Path(folder) if folder is not None else models_dir()
    path = base / filename
    if not path.is_file():
        raise DlibModelError(f"dlib model file {filename!r} not found in {base}; run `{PIP_HINT}`")
    return path


@dataclass(frozen=True)
class Detection:
    """One detected face: box ``(x0, y0, x1, y1)`` in pixels (dlib's inclusive corners) and score."""

    box: tuple[float, float, float, float]
    score: float

    @property
    def area(self) -> float:
        return max(0.0, self.box[2] - self.box[0]) * max(0.0, self.box[3] - self.box[1])


class DlibFaceModel:
    """Detector + 5-point predictor + ResNet descriptor. Not thread-safe: one per worker.

    Images are ``H x W x 3`` uint8 RGB numpy arrays.
    """

    def __init__(self, detector: Literal["hog", "cnn"] = "hog", folder: str | Path | None = None,
                 cnn_file: str | Path | None = None):
        """``cnn_file``: the MMOD detector file to load instead of the one in ``folder`` (or the package)."""
        import dlib

        self.detector_kind = detector
        if detector == "hog":
            self._hog = dlib.get_frontal_face_detector()
            self._cnn = None
        elif detector == "cnn":
            self._hog = None
            path = Path(cnn_file).expanduser() if cnn_file is not None else model_path(CNN_DETECTOR_FILE, folder)
            if not path.is_file():
                raise DlibModelError(f"dlib CNN (MMOD) detector file {path} not found")
            self._cnn = dlib.cnn_face_detection_model_v1(str(path))
        else:
            raise ValueError(f"detector must be 'hog' or 'cnn', got {detector!r}")
        self._shape = dlib.shape_predictor(str(model_path(SHAPE_5_FILE, folder)))
        self._recognition = dlib.face_recognition_model_v1(str(model_path(RECOGNITION_FILE, folder)))
        self.dlib_version = str(dlib.__version__)

    def detect(self, image: np.ndarray, upsample: int = 1, threshold: float = 0.0) -> list[Detection]:
        """Faces scoring at least ``threshold``, best score first.

        HOG scores are SVM margins (dlib's default cut-off is 0; pass a negative threshold to see
        weaker candidates); CNN scores are MMOD confidences.
        """
        if self._hog is not None:
            rects, scores, _ = self._hog.run(image, upsample, threshold)
            found = list(zip(rects, scores, strict=True))
        else:
            found = [(d.rect, d.confidence) for d in self._cnn(image, upsample)]
        dets = [
            Detection((float(r.left()), float(r.top()), float(r.right()), float(r.bottom())), float(s))
            for r, s in found
            if s >= threshold
        ]
        return sorted(dets, key=lambda d: -d.score)

    def shape(self, image: np.ndarray, det: Detection):
        """dlib ``full_object_detection`` of the 5 landmarks inside ``det``'s box."""
        import dlib

        x0, y0, x1, y1 = (int(round(v)) for v in det.box)
        return self._shape(image, dlib.rectangle(x0, y0, x1, y1))

    @staticmethod
    def points(shape) -> np.ndarray:
        """``(5, 2)`` float32 landmark coordinates, in :data:`LANDMARK_ORDER`."""
        return np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float32)

    def landmarks(self, image: np.ndarray, det: Detection) -> np.ndarray:
        """``(5, 2)`` float32 landmarks of the face in ``det``."""
        return self.points(self.shape(image, det))

    @staticmethod
    def chip(image: np.ndarray, shape, size: int = CHIP_SIZE, padding: float = CHIP_PADDING) -> np.ndarray:
        """The aligned face crop ``dlib.get_face_chip`` cuts: by default the 150x150 one (padding 0.25) the
        recognition network expects; FairFace uses ``size=300``."""
        import dlib

        return np.asarray(dlib.get_face_chip(image, shape, size=int(size), padding=float(padding)))

    def descriptors(self, chips: list[np.ndarray], batch: int = DESCRIPTOR_BATCH) -> np.ndarray:
        """``(N, 128)`` float64 descriptors of aligned chips, computed ``batch`` chips per dlib call."""
        out = np.zeros((len(chips), 128), dtype=np.float64)
        for start in range(0, len(chips), batch):
            part = [np.ascontiguousarray(c, dtype=np.uint8) for c in chips[start : start + batch]]
            vectors = self._recognition.compute_face_descriptor(part)
            out[start : start + len(part)] = np.array([np.asarray(v) for v in vectors])
        return out

    def info(self) -> dict[str, str]:
        """Model ids for file metadata and manifests."""
        return {
            "library": f"dlib {self.dlib_version}",
            "detector": "dlib HOG frontal_face_detector" if self._hog is not None else CNN_DETECTOR_FILE,
            "landmarks": SHAPE_5_FILE,
            "judge": RECOGNITION_FILE,
        }
