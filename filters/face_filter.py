"""The dlib face filter stage: detect, landmark and judge every image of a work unit.

Per image (decision order; the first that applies is the row's ``filter_reason``):

1. ``undecodable``: the image bytes (or, without bytes, the file at ``path``) do not decode.
2. ``no_face``: the detector returns nothing at ``min(min_face_score, 0)`` (0 is dlib's default).
3. ``low_face_score``: candidates exist but none scores ``>= min_face_score``; the best one is recorded.
4. ``multiple_faces``: more than one face scores ``>= min_face_score``. Policy: **reject** (a
   generated identity image must show one person); the largest such face is recorded.
5. ``identity_confusion``: the face's 128-d dlib descriptor is within ``max_judge_distance`` of the
   centroid of another identity of this unit and not at least ``judge_confusion_margin`` closer to its own
   identity's leave-one-out centroid (it looks like someone else in the dataset).
6. ``identity_mismatch``: the descriptor is farther than ``max_judge_distance`` from the centroid of the
   *other* accepted faces of the same identity in this unit (leave-one-out, one pass). A face with no other
   accepted face in its identity has null own-judge columns and passes both rules.

Score columns (:meth:`FaceFilter.output_schema`) are appended after the input columns, with the same
types whatever the data, so shards concatenate. ``face_count`` is the number of faces scoring
``>= min_face_score`` (0 for ``no_face`` and ``low_face_score``, null for ``undecodable``). Boxes and
landmarks are in pixels of the image as stored (no EXIF rotation). Landmark order:
:data:`facefoundry.filters.dlib_models.LANDMARK_ORDER`, flattened as x0, y0, ..., x4, y4.
"""

from __future__ import annotations

import io
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
from PIL import Image

from facefoundry.config import DlibFilterConfig
from facefoundry.resources import Resources

from .dlib_models import LANDMARK_ORDER, Detection, DlibFaceModel

UNDECODABLE = "undecodable"
NO_FACE = "no_face"
MULTIPLE_FACES = "multiple_faces"
LOW_FACE_SCORE = "low_face_score"
IDENTITY_CONFUSION = "identity_confusion"
IDENTITY_MISMATCH = "identity_mismatch"
REASONS = (UNDECODABLE, NO_FACE, LOW_FACE_SCORE, MULTIPLE_FACES, IDENTITY_CONFUSION, IDENTITY_MISMATCH)
# What each reason means, for the dataset card and the docs (this filter owns its reasons' documentation).
REASON_DOCS = {
    UNDECODABLE: "the image could not be decoded",
    NO_FACE: "no face found by the dlib detector",
    LOW_FACE_SCORE: "dlib detector score below `filter.min_face_score`",
    MULTIPLE_FACES: "more than one face detected",
    IDENTITY_CONFUSION: "face closer to another identity of its unit than to its own (dlib judge, by "
                        "`filter.judge_confusion_margin`)",
    IDENTITY_MISMATCH: "face too far from its identity's other faces (dlib judge distance above "
                       "`filter.max_judge_distance`)",
}

OUTPUT_FIELDS = [
    pa.field("face_count", pa.int32()),
    pa.field("face_score", pa.float32()),
    pa.field("face_box", pa.list_(pa.float32(), 4)),
    pa.field("landmarks", pa.list_(pa.float32(), 2 * len(LANDMARK_ORDER))),
    pa.field("judge_distance", pa.float32()),
    pa.field("judge_similarity", pa.float32()),
    pa.field("judge_other_distance", pa.float32()),
    pa.field("filter_reason", pa.string()),
]


@dataclass
class FilterResult:
    """A filtered unit: the table (input columns + score columns) and rejected-row counts by reason.

    ``drops`` lists only reasons that occurred; in ``annotate`` mode it counts what *would* have
    been dropped (those rows stay in ``table`` with their ``filter_reason``).
    """

    table: pa.Table
    drops: dict[str, int] = field(default_factory=dict)


@dataclass
class _Row:
    reason: str | None = None
    face_count: int | None = None
    det: Detection | None = None
    landmarks: np.ndarray | None = None
    distance: float | None = None
    similarity: float | None = None
    other_distance: float | None = None


def decode_image(value: object) -> np.ndarray | None:
    """RGB uint8 array of an image cell (HF Image struct ``{bytes, path}`` or raw bytes); None if
    it cannot be decoded."""
    data, path = (value.get("bytes"), value.get("path")) if isinstance(value, dict) else (value, None)
    try:
        if data is not None:
            image = Image.open(io.BytesIO(data))
        elif path and Path(path).is_file():
            image = Image.open(path)
        else:
            return None
        with image:
            return np.ascontiguousarray(np.asarray(image.convert("RGB"), dtype=np.uint8))
    except Exception:  # any decoder failure is a per-row reason, never a failed unit
        return None


class FaceFilter:
    """Offline dlib face filter (CPU). ``setup()`` loads models once; ``process()`` filters a unit."""

    # Half a CPU per worker (dlib on the CPU): with the generator's 1 and the writer's 0.25 all three stages start
    # on a 2-core machine. Read by pipelines.stages.FilterStage.resources.
    resources = Resources(num_cpus=0.5)
    reason_column = "filter_reason"

    def __init__(self, cfg: DlibFilterConfig):
        self.cfg = cfg
        self.model: DlibFaceModel | None = None

    @staticmethod
    def output_schema() -> pa.Schema:
        """Schema of the columns this stage appends (always all of them, always these types)."""
        return pa.schema(OUTPUT_FIELDS)

    def setup(self) -> None:
        """Load the dlib models (idempotent; call once per worker)."""
        if self.model is None:
            self.model = DlibFaceModel(self.cfg.detector)

    def info(self) -> dict:
        """Model ids and thresholds, for file metadata and manifests."""
        self.setup()
        return {**self.model.info(), **self.cfg.model_dump(mode="json"), "landmark_order": LANDMARK_ORDER}

    def process(self, table: pa.Table) -> FilterResult:
        """Score every row of ``table``; in ``drop`` mode remove the rejected ones."""
        missing = {"identity", "image"} - set(table.column_names)
        if missing:
            raise KeyError(f"face filter input lacks column(s) {sorted(missing)}; has {table.column_names}")
        self.setup()
        rows, chips, owners = [], [], []
        for i, value in enumerate(table.column("image").to_pylist()):
            row, chip = self._detect(decode_image(value))
            rows.append(row)
            if chip is not None:
                chips.append(chip)
                owners.append(i)
        descriptors = self.model.descriptors(chips) if chips else np.zeros((0, 128))
        identities = table.column("identity").to_numpy(zero_copy_only=False)
        self._judge(rows, descriptors, np.asarray(owners, dtype=np.int64), identities)

        drops = Counter(r.reason for r in rows if r.reason is not None)
        out = table.drop_columns([f.name for f in OUTPUT_FIELDS if f.name in table.column_names])
        for f, column in zip(OUTPUT_FIELDS, self._columns(rows), strict=True):
            out = out.append_column(f, column)
        if self.cfg.mode == "drop":
            out = out.filter(pa.array([r.reason is None for r in rows], pa.bool_()))
        return FilterResult(out, {reason: drops[reason] for reason in REASONS if drops[reason]})

    def _detect(self, image: np.ndarray | None) -> tuple[_Row, np.ndarray | None]:
        """Detection decisions for one image; the aligned chip if its face goes on to the judge."""
        if image is None:
            return _Row(UNDECODABLE), None
        floor = min(self.cfg.min_face_score, 0.0)
        candidates = self.model.detect(image, self.cfg.upsample, floor)
        if not candidates:
            return _Row(NO_FACE, face_count=0), None
        faces = [d for d in candidates if d.score >= self.cfg.min_face_score]
        if not faces:
            reason, det = LOW_FACE_SCORE, candidates[0]
        elif len(faces) > 1:
            reason, det = MULTIPLE_FACES, max(faces, key=lambda d: (d.area, d.score))
        else:
            reason, det = None, faces[0]
        shape = self.model.shape(image, det)
        row = _Row(reason, face_count=len(faces), det=det, landmarks=self.model.points(shape))
        return row, (self.model.chip(image, shape) if reason is None else None)

    def _judge(self, rows: list[_Row], desc: np.ndarray, owners: np.ndarray, identities: np.ndarray) -> None:
        """Leave-one-out distance of each accepted face to the centroid of its identity's others, and
        distance to the nearest centroid of another identity of the unit."""
        ids = identities[owners] if len(owners) else np.zeros(0, dtype=np.int64)
        labels = np.unique(ids)
        centroids = np.stack([desc[ids == label].mean(axis=0) for label in labels]) if len(labels) else desc
        for m in range(len(ids)):
            if len(labels) > 1:
                dist = np.linalg.norm(centroids - desc[m], axis=1)
                dist[labels == ids[m]] = np.inf
                rows[owners[m]].other_distance = float(dist.min())
        for identity in labels:
            members = np.flatnonzero(ids == identity)
            if len(members) < 2:
                continue
            vecs = desc[members]
            others = (vecs.sum(axis=0, keepdims=True) - vecs) / (len(members) - 1)
            dist = np.linalg.norm(vecs - others, axis=1)
            norms = np.linalg.norm(vecs, axis=1) * np.linalg.norm(others, axis=1)
            cos = np.einsum("ij,ij->i", vecs, others) / np.maximum(norms, 1e-12)
            for k, m in enumerate(members):
                row = rows[owners[m]]
                row.distance, row.similarity = float(dist[k]), float(cos[k])
                # Confused: it could be another identity of the unit (same-person distance) and is not
                # clearly closer to its own. A face far from everyone is a mismatch, not a confusion.
                confused = row.other_distance is not None and (
                    row.other_distance <= self.cfg.max_judge_distance
                    and row.other_distance - row.distance < self.cfg.judge_confusion_margin
                )
                if confused:
                    row.reason = IDENTITY_CONFUSION
                elif row.distance > self.cfg.max_judge_distance:
                    row.reason = IDENTITY_MISMATCH

    @staticmethod
    def _columns(rows: list[_Row]) -> list[pa.Array]:
        box = [list(r.det.box) if r.det else None for r in rows]
        lms = [r.landmarks.reshape(-1).tolist() if r.landmarks is not None else None for r in rows]
        types = [f.type for f in OUTPUT_FIELDS]
        return [
            pa.array([r.face_count for r in rows], types[0]),
            pa.array([r.det.score if r.det else None for r in rows], types[1]),
            pa.array(box, types[2]),
            pa.array(lms, types[3]),
            pa.array([r.distance for r in rows], types[4]),
            pa.array([r.similarity for r in rows], types[5]),
            pa.array([r.other_distance for r in rows], types[6]),
            pa.array([r.reason for r in rows], types[7]),
        ]
