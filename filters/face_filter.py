"""The dlib face filter stage: detect, landmark and judge every image of a work unit.

Per image (decision order; the first that applies is the row's ``filter_reason``):

1. ``no_identity``: the row's ``identity`` is null; it is not decoded and takes no part in the judge.
2. ``undecodable``: the image bytes (or, without bytes, the file at ``path``) do not decode, or its pixels
   have no 8-bit meaning (16-bit and float images are scaled, not clipped: :mod:`.image_decode`).
3. ``no_face``: the detector returns nothing at ``min(min_face_score, 0)`` (0 is dlib's default).
4. ``low_face_score``: candidates exist but none scores ``>= min_face_score``; the best one is recorded.
5. ``multiple_faces``: more than one face scores ``>= min_face_score``. Policy: **reject** (a
   generated identity image must show one person); the largest such face is recorded.
6. ``identity_confusion``: the face looks like another identity J of this unit: its 128-d dlib descriptor is
   within ``max_judge_distance`` of J's centroid and not at least ``judge_confusion_margin`` closer to its own
   identity's leave-one-out centroid (a face alone in its identity has no such centroid and is never
   closer) -- **and** either J is better supported than the face's identity (more accepted faces; on a tie
   the lower identity index) or the face is itself farther than ``max_judge_distance`` from its own
   identity's others. So one person filed under two identities, whatever the counts (8/1, 1/1, 4/4), loses
   the faces of the less-supported identity and keeps the other's, and an intruder is rejected whatever
   its identity's support.
7. ``identity_mismatch``: the descriptor is farther than ``max_judge_distance`` from the centroid of the
   *other* accepted faces of the same identity in this unit (leave-one-out). A face with no other accepted
   face in its identity has null own-judge columns and cannot be a mismatch.

The judge is one pass: centroids are those of every face reaching it (accepted by the detector).

Score columns (:meth:`FaceFilter.output_schema`) are appended after the input columns, with the same
types whatever the data, so shards concatenate. ``face_count`` is the number of faces scoring
``>= min_face_score`` (0 for ``no_face`` and ``low_face_score``, null for ``no_identity`` and ``undecodable``).
Boxes and landmarks are in pixels of the image as stored (no EXIF rotation). Landmark order:
:data:`facefoundry.faces.dlib_models.LANDMARK_ORDER`, flattened as x0, y0, ..., x4, y4.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from facefoundry.faces.dlib_models import LANDMARK_ORDER, Detection, DlibFaceModel
from facefoundry.faces.image_decode import (
    decode_image as decode_image,  # re-exported: the identity filter and evaluation use it
)
from facefoundry.faces.image_decode import decode_with_reason
from facefoundry.resources import Resources
from facefoundry.sections import DlibFilterConfig

log = logging.getLogger(__name__)

NO_IDENTITY = "no_identity"
UNDECODABLE = "undecodable"
NO_FACE = "no_face"
MULTIPLE_FACES = "multiple_faces"
LOW_FACE_SCORE = "low_face_score"
IDENTITY_CONFUSION = "identity_confusion"
IDENTITY_MISMATCH = "identity_mismatch"
REASONS = (NO_IDENTITY, UNDECODABLE, NO_FACE, LOW_FACE_SCORE, MULTIPLE_FACES, IDENTITY_CONFUSION, IDENTITY_MISMATCH)
# What each reason means, for the dataset card and the docs (this filter owns its reasons' documentation).
REASON_DOCS = {
    NO_IDENTITY: "the row has no identity label (null `identity`)",
    UNDECODABLE: "the image could not be decoded, or its pixel values have no 8-bit meaning",
    NO_FACE: "no face found by the dlib detector",
    LOW_FACE_SCORE: "dlib detector score below `filter.min_face_score`",
    MULTIPLE_FACES: "more than one face detected",
    IDENTITY_CONFUSION: "face looks like another, better-supported identity of its unit (dlib judge within "
                        "`filter.max_judge_distance`, not `filter.judge_confusion_margin` closer to its own), "
                        "or is an intruder in its own identity that looks like another",
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

    def process(self, table: pa.Table) -> FilterResult:
        """Score every row of ``table``; in ``drop`` mode remove the rejected ones."""
        missing = {"identity", "image"} - set(table.column_names)
        if missing:
            raise KeyError(f"face filter input lacks column(s) {sorted(missing)}; has {table.column_names}")
        self.setup()
        labelled = table.column("identity").is_valid().to_pylist()
        rows, chips, owners, problems = [], [], [], Counter()
        for i, value in enumerate(table.column("image").to_pylist()):
            if not labelled[i]:  # no label: nothing to judge against, and it must not poison the centroids
                rows.append(_Row(NO_IDENTITY))
                continue
            image, why = decode_with_reason(value)
            problems.update([why] if why else [])
            row, chip = self._detect(image)
            rows.append(row)
            if chip is not None:
                chips.append(chip)
                owners.append(i)
        if problems:
            log.warning("face filter: %d undecodable image(s): %s", sum(problems.values()), "; ".join(
                f"{n} x {why}" for why, n in problems.most_common(3)))
        descriptors = self.model.descriptors(chips) if chips else np.zeros((0, 128))
        identities = pc.fill_null(table.column("identity"), 0).to_numpy()
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
        """Identity decisions for the faces that reached the judge (module docstring, rules 6 and 7)."""
        ids = identities[owners] if len(owners) else np.zeros(0, dtype=np.int64)
        labels, counts = np.unique(ids, return_counts=True)
        if not len(labels):
            return
        centroids = np.stack([desc[ids == label].mean(axis=0) for label in labels])
        # Support rank of each identity: more accepted faces first, then the lower identity index.
        rank = np.empty(len(labels), dtype=np.int64)
        rank[np.lexsort((labels, -counts))] = np.arange(len(labels))
        own, cos = self._leave_one_out(desc, ids, labels)
        limit, margin = self.cfg.max_judge_distance, self.cfg.judge_confusion_margin
        for m, k in enumerate(np.searchsorted(labels, ids)):
            row = rows[owners[m]]
            other = np.linalg.norm(centroids - desc[m], axis=1)
            other[k] = np.inf
            row.other_distance = float(other.min()) if len(labels) > 1 else None
            alone = np.isnan(own[m])
            if not alone:
                row.distance, row.similarity = float(own[m]), float(cos[m])
            # Looks like identity j: within same-person distance of j and not clearly closer to its own.
            looks_like = other <= limit
            if not alone:
                looks_like &= other - own[m] < margin
            intruder = not alone and own[m] > limit
            if looks_like.any() and (intruder or (rank[looks_like] < rank[k]).any()):
                row.reason = IDENTITY_CONFUSION
            elif intruder:
                row.reason = IDENTITY_MISMATCH

    @staticmethod
    def _leave_one_out(desc: np.ndarray, ids: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Euclidean distance and cosine of each face to the centroid of its identity's *other* faces (NaN for a
        face alone in its identity)."""
        dist, cos = np.full(len(ids), np.nan), np.full(len(ids), np.nan)
        for label in labels:
            members = np.flatnonzero(ids == label)
            if len(members) < 2:
                continue
            vecs = desc[members]
            others = (vecs.sum(axis=0, keepdims=True) - vecs) / (len(members) - 1)
            dist[members] = np.linalg.norm(vecs - others, axis=1)
            norms = np.linalg.norm(vecs, axis=1) * np.linalg.norm(others, axis=1)
            cos[members] = np.einsum("ij,ij->i", vecs, others) / np.maximum(norms, 1e-12)
        return dist, cos

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
