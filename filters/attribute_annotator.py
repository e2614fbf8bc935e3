"""Attribute estimates of every image: the columns a run's rows get, and the probes a balanced run measures.

The annotator finds the face itself (``genderage``: SCRFD, or the whole image when ``attributes.detector_model``
is null; ``fairface``: dlib's detector and 5-point predictor), estimates, and never drops a row: a row without a
face gets nulls. Values are estimates of the named model, not ground truth.

FairFace chips are cut as its ``predict.py`` cuts them (:mod:`facefoundry.faces.fairface`: the photo resized to
800 px on its longer side with ``dlib.resize_image``, 300 px chips with padding 0.25, a JPEG round trip at
quality 75 through dlib), with two differences. One face per image: the largest box (``predict.py`` chips every
face). The detector: ``predict.py`` runs dlib's CNN (MMOD) detector with 1 upsample; here that happens when
``attributes.detector_model`` is a ``.dat`` file (``mmod_human_face_detector.dat``, shipped by
``face-recognition-models``; 10-20 s per 800 px photo on one CPU core), and otherwise dlib's HOG detector runs
with 1 upsample on the same resized photo (about 0.2 s). HOG and CNN boxes differ, so the landmarks and chips
differ a little: 0-7 grey levels per chip on 17 real faces, where both found the same faces (docs/balance.md,
``bench/fairface_chips.py``).

Columns (:data:`OUTPUT_FIELDS`, always all of them, always these types): ``age`` (years; genderage only),
``age_group`` (``attributes.age_edges``), ``age_score`` (FairFace: probability of its age bin), ``gender`` and
``gender_score`` (probability of the chosen gender), ``race`` and ``race_score`` (FairFace only), and with
``attributes.pose_model`` the head pose measured by 6DRepNet (``head_yaw``, ``head_pitch``, ``head_roll``, degrees,
6DRepNet's signs) on the crop its ``demo.py`` cuts around the same face box.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from facefoundry.attributes import age_group, fairface_age_lower
from facefoundry.filters.face_filter import FilterResult, decode_image
from facefoundry.resources import ModelFiles, Resources
from facefoundry.sections import AttributesConfig

F32 = pa.float32()
OUTPUT_FIELDS = [
    pa.field("age", F32),
    pa.field("age_group", pa.string()),
    pa.field("age_score", F32),
    pa.field("gender", pa.string()),
    pa.field("gender_score", F32),
    pa.field("race", pa.string()),
    pa.field("race_score", F32),
    pa.field("head_yaw", F32),
    pa.field("head_pitch", F32),
    pa.field("head_roll", F32),
]
COLUMNS = tuple(f.name for f in OUTPUT_FIELDS)
SCRFD_INPUT = (256, 256)  # generated, tightly framed faces (as the identity filter's default)


class AttributeAnnotator:
    """``annotate(images) -> [row dict or None]`` and the filter-stage ``process(table)`` that appends columns."""

    resources = Resources(num_cpus=0.5)

    def __init__(self, cfg: AttributesConfig):
        self.cfg = cfg
        self.detector = None
        self.estimator = None
        self.pose = None  # 6DRepNet, with attributes.pose_model

    @staticmethod
    def output_schema() -> pa.Schema:
        return pa.schema(OUTPUT_FIELDS)

    @staticmethod
    def mmod_file(cfg: AttributesConfig) -> Path | None:
        """FairFace's CNN detector file: ``attributes.detector_model`` when it is a ``.dat`` file, else None (HOG)."""
        if cfg.estimator != "fairface" or cfg.detector_model is None:
            return None
        path = Path(cfg.detector_model).expanduser()
        return path if path.suffix.lower() == ".dat" else None

    @staticmethod
    def model_files(cfg: AttributesConfig) -> list[ModelFiles]:
        """The estimator's file (or pack folder) and its detector (genderage's SCRFD, FairFace's MMOD ``.dat``
        file when configured): checked before workers start."""
        needs = []
        for value, role in ((cfg.model, "attributes.model"), (cfg.detector_model, "attributes.detector_model"),
                            (cfg.pose_model, "attributes.pose_model")):
            if value is None or (role == "attributes.detector_model" and cfg.estimator == "fairface"
                                 and AttributeAnnotator.mmod_file(cfg) is None):
                continue
            path = Path(value).expanduser()
            if path.suffix:
                needs.append(ModelFiles(str(path.parent), ((path.name,),), None, None, role, hub=False))
            else:
                needs.append(ModelFiles(str(path), (), None, None, role, hub=False))
        return needs

    def _providers(self) -> list[str] | None:
        return {"cpu": ["CPUExecutionProvider"], "cuda": ["CUDAExecutionProvider"]}.get(self.cfg.device)

    def setup(self) -> None:
        """Load the detector and the estimator once (idempotent)."""
        if self.estimator is not None:
            return
        cfg = self.cfg
        if cfg.pose_model is not None:
            from facefoundry.faces.sixdrepnet import load_sixdrepnet

            self.pose = load_sixdrepnet(cfg.pose_model, self._torch_device())
        if cfg.estimator == "genderage":
            from facefoundry.faces.genderage import GenderAgeEstimator

            if cfg.detector_model is not None:
                from facefoundry.faces.scrfd import ScrfdDetector

                self.detector = ScrfdDetector(Path(cfg.detector_model), SCRFD_INPUT, providers=self._providers())
            self.estimator = GenderAgeEstimator(Path(cfg.model), self._providers(), cfg.batch_size)
        else:
            from facefoundry.faces.dlib_models import DlibFaceModel
            from facefoundry.faces.fairface import FairFaceEstimator

            mmod = self.mmod_file(cfg)
            self.detector = DlibFaceModel("hog") if mmod is None else DlibFaceModel("cnn", cnn_file=mmod)
            self.estimator = FairFaceEstimator(Path(cfg.model), self._torch_device())

    def _torch_device(self) -> str:
        if self.cfg.device != "auto":
            return self.cfg.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"

    def annotate(self, images: list[np.ndarray | None]) -> list[dict | None]:
        """Estimates of each RGB image (None: undecodable, or no face found)."""
        self.setup()
        out: list[dict | None] = [None] * len(images)
        if self.cfg.estimator == "genderage":
            rows, boxes = self._genderage_boxes(images)
            if rows:
                result = self.estimator.estimate([images[i] for i in rows], np.stack(boxes))
                for k, i in enumerate(rows):
                    age = float(result.age[k])
                    out[i] = {"age": age, "age_group": age_group(age, self.cfg.age_edges), "age_score": None,
                              "gender": result.gender[k], "gender_score": float(result.gender_score[k]),
                              "race": None, "race_score": None}
                self._head_pose(images, rows, boxes, out)
            return out
        rows, chips, boxes = self._fairface_chips(images)
        if rows:
            result = self.estimator.estimate_chips(chips)
            for k, i in enumerate(rows):
                out[i] = {"age": None, "age_group": age_group(fairface_age_lower(result.age[k]), self.cfg.age_edges),
                          "age_score": float(result.age_score[k]), "gender": result.gender[k],
                          "gender_score": float(result.gender_score[k]), "race": result.race[k],
                          "race_score": float(result.race_probs[k].max())}
            self._head_pose(images, rows, boxes, out)
        return out

    def _fairface_chips(self, images: list) -> tuple[list[int], list[np.ndarray], list[np.ndarray]]:
        """Rows with a face, their chips as ``predict.py`` cuts them, and the face boxes in the given image's
        pixels (for 6DRepNet)."""
        from facefoundry.faces.fairface import DETECT_UPSAMPLE, jpeg_round_trip, predict_resize

        rows, chips, boxes = [], [], []
        for i, image in enumerate(images):
            if image is None:
                continue
            small = predict_resize(image)  # predict.py detect_face: img = resize_image(img, default_max_size)
            found = self.detector.detect(small, DETECT_UPSAMPLE)  # find_faces_in_image: cnn_face_detector(img, 1)
            if found:
                best = max(found, key=lambda d: d.area)
                # find_faces_in_image: sp(img, rect); detect_face: get_face_chips(img, faces, size=300, padding=0.25)
                chips.append(self.estimator.chip(small, self.detector.shape(small, best)))
                rows.append(i)
                scale = np.array([image.shape[1] / small.shape[1], image.shape[0] / small.shape[0]] * 2, np.float32)
                boxes.append(np.asarray(best.box, np.float32) * scale)
        # save_face_chips: dlib.save_image(chip, '<name>_face<i>.jpg'); load_and_preprocess_image: load_rgb_image
        return rows, jpeg_round_trip(chips), boxes

    def _head_pose(self, images: list, rows: list[int], boxes: list[np.ndarray], out: list[dict | None]) -> None:
        """6DRepNet's (yaw, pitch, roll) of each measured face, on the crop its demo cuts around the box."""
        for row in (out[i] for i in rows):
            row |= {"head_yaw": None, "head_pitch": None, "head_roll": None}
        if self.pose is None or not rows:
            return
        import torch

        from facefoundry.faces.sixdrepnet import demo_crop, demo_input, euler_from_rotation

        crops = [demo_crop(images[i], box) for i, box in zip(rows, boxes, strict=True)]
        with torch.inference_mode():
            angles = euler_from_rotation(self.pose(demo_input(crops).to(next(self.pose.parameters()).device)))
        for i, (pitch, yaw, roll) in zip(rows, angles.cpu().numpy().tolist(), strict=True):
            out[i] |= {"head_yaw": yaw, "head_pitch": pitch, "head_roll": roll}

    def _genderage_boxes(self, images: list[np.ndarray | None]) -> tuple[list[int], list[np.ndarray]]:
        rows, boxes = [], []
        present = [i for i, image in enumerate(images) if image is not None]
        if self.detector is None:  # aligned crops: the image is the face box
            for i in present:
                h, w = images[i].shape[:2]
                rows.append(i)
                boxes.append(np.array([0, 0, w, h], np.float32))
            return rows, boxes
        for i, (found, _) in zip(present, self.detector.detect_batch([images[i] for i in present]), strict=True):
            if len(found):
                best = int(np.argmax((found[:, 2] - found[:, 0]) * (found[:, 3] - found[:, 1])))
                rows.append(i)
                boxes.append(found[best, :4].astype(np.float32))
        return rows, boxes

    def process(self, table: pa.Table) -> FilterResult:
        """``table`` with the attribute columns appended (replacing any of the same names); no row is dropped."""
        values = table.column("image").to_pylist() if table.num_rows else []
        found: list[dict | None] = []
        for start in range(0, len(values), self.cfg.batch_size):  # decoded images live one micro-batch at a time
            found += self.annotate([decode_image(v) for v in values[start:start + self.cfg.batch_size]])
        out = table.drop_columns([c for c in COLUMNS if c in table.column_names])
        for f in OUTPUT_FIELDS:
            out = out.append_column(f, pa.array([row[f.name] if row else None for row in found], f.type))
        return FilterResult(out, {})


