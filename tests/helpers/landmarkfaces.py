"""Real faces with two sets of landmarks each, for measuring the dlib-5 -> ArcFace mapping: dlib's 5 points and
the ArcFace points derived from dlib's 68-point model. Photos come from installed packages (insightface's t1.jpg,
6 people, and Tom_Hanks_54745.png; scikit-image's astronaut.png); each photo is also used mirrored (the
detector and both predictors run again on the mirror). No face image is committed to this repository."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image


def _package_file(package: str, *parts: str) -> Path | None:
    spec = importlib.util.find_spec(package)  # locates the package without importing it
    for location in (spec.submodule_search_locations or []) if spec else []:
        path = Path(location).joinpath(*parts)
        if path.is_file():
            return path
    return None


# (photo, whether it shows one person only: then the best detection is that person)
PHOTOS = {
    "t1": (_package_file("insightface", "data", "images", "t1.jpg"), False),
    "hanks": (_package_file("insightface", "data", "images", "Tom_Hanks_54745.png"), True),
    "astronaut": (_package_file("skimage", "data", "astronaut.png"), True),
}
AVAILABLE = all(path is not None for path, _ in PHOTOS.values())


@dataclass(frozen=True)
class LandmarkedFace:
    person: str  # photo name + index from the left in the unmirrored photo
    mirrored: bool
    dlib5: np.ndarray  # (5, 2) dlib_models.LANDMARK_ORDER
    arcface: np.ndarray  # (5, 2) ArcFace order, from the 68-point model


def landmarked_faces() -> list[LandmarkedFace]:
    """Every face of :data:`PHOTOS`, unmirrored and mirrored (8 people, 16 faces)."""
    import dlib

    from facefoundry.faces.alignment import arcface_from_dlib68
    from facefoundry.faces.dlib_models import SHAPE_68_FILE, DlibFaceModel, model_path

    model = DlibFaceModel("hog")
    predictor = dlib.shape_predictor(str(model_path(SHAPE_68_FILE)))
    out = []
    for name, (path, single) in PHOTOS.items():
        photo = np.asarray(Image.open(path).convert("RGB"))
        for mirrored in (False, True):
            image = np.ascontiguousarray(photo[:, ::-1]) if mirrored else photo
            dets = model.detect(image, upsample=2 if min(image.shape[:2]) < 200 else 0)  # faces >= 80 px
            dets = dets[:1] if single else dets
            width = image.shape[1]
            # index people by their left edge in the unmirrored photo
            dets.sort(key=lambda d: width - d.box[2] if mirrored else d.box[0])
            for k, det in enumerate(dets):
                shape = predictor(image, dlib.rectangle(*(int(round(v)) for v in det.box)))
                points68 = np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float64)
                out.append(LandmarkedFace(f"{name}{k}", mirrored, model.landmarks(image, det).astype(np.float64),
                                          arcface_from_dlib68(points68)))
    return out
