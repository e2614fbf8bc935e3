"""The identity/quality filter stage: SCRFD + 5-point alignment + the generator's conditioning encoder.

Per image (decision order; the first that applies is the row's ``id_filter_reason``):

1. ``undecodable``: the image does not decode.
2. ``no_face``: SCRFD finds no face at ``det_thresh``.
3. ``multiple_faces``: more than one face at ``det_thresh`` (policy: reject; the largest one is recorded).
4. ``low_face_score``: the face scores below ``min_face_score``.
5. ``small_face``: the shorter side of its box is below ``min_face_size`` pixels.
6. ``blurry``: variance of the Laplacian of the aligned 112x112 crop below ``min_blur``.
7. ``extreme_pose``: |yaw|, |pitch| or |roll| (approximate, from the 5 landmarks; :mod:`.quality`) above the
   limits, or landmarks too degenerate to estimate pose or align.
8. ``low_feature_norm``: raw embedding norm below ``min_feature_norm`` (a quality proxy: MagFace, AdaFace).
9. ``low_id_similarity``: cosine of the embedding to the identity's conditioning vector below ``min_id_similarity``.
10. ``confused``: ``id_similarity - nearest_other_similarity < confusion_margin``, where the latter is the
    highest cosine to any *other* identity vector of the run (all of them, blockwise).
11. ``near_duplicate``: among the rows of one identity still accepted, visited by ``image_index``, a cosine
    above ``duplicate_cosine`` to an earlier kept one (the first is kept).
12. ``too_few_images``: the identity keeps fewer than ``min_images_per_identity`` rows; all of its still
    accepted rows get this reason (the identity is dropped).

Score columns are computed for every row with a face (also for rejected ones) and are null otherwise; the
columns (:data:`OUTPUT_FIELDS`) always have the same types. Boxes and landmarks are in pixels of the image as
stored; landmarks are in ArcFace order (:data:`facefoundry.faces.alignment.KEYPOINT_ORDER`), x0, y0, ..., x4, y4.
Both vectors are L2-normalised before any cosine, so raw-norm spaces (Vec2Face) work unchanged.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa

from facefoundry.faces.alignment import AlignmentError, align
from facefoundry.faces.arcface import l2_normalize
from facefoundry.faces.encoder import load_encoder
from facefoundry.faces.quality import laplacian_variance, near_duplicates, pose_from_landmarks
from facefoundry.faces.scrfd import ScrfdDetector
from facefoundry.filters.face_filter import UNDECODABLE, FilterResult, decode_image
from facefoundry.resources import ModelFiles, Resources
from facefoundry.sections import IdentityFilterConfig

NO_FACE, MULTIPLE_FACES, LOW_FACE_SCORE, SMALL_FACE = "no_face", "multiple_faces", "low_face_score", "small_face"
BLURRY, EXTREME_POSE, LOW_FEATURE_NORM = "blurry", "extreme_pose", "low_feature_norm"
LOW_ID_SIMILARITY, CONFUSED, NEAR_DUPLICATE, TOO_FEW_IMAGES = (
    "low_id_similarity", "confused", "near_duplicate", "too_few_images",
)  # fmt: skip
REASONS = (
    UNDECODABLE, NO_FACE, MULTIPLE_FACES, LOW_FACE_SCORE, SMALL_FACE, BLURRY, EXTREME_POSE, LOW_FEATURE_NORM,
    LOW_ID_SIMILARITY, CONFUSED, NEAR_DUPLICATE, TOO_FEW_IMAGES,
)  # fmt: skip
# What each reason means, for the dataset card and the docs (this filter owns its reasons' documentation).
REASON_DOCS = {
    UNDECODABLE: "the image could not be decoded",
    NO_FACE: "no face found by SCRFD at `id_filter.det_thresh`",
    MULTIPLE_FACES: "more than one face found by SCRFD",
    LOW_FACE_SCORE: "SCRFD face score below `id_filter.min_face_score`",
    SMALL_FACE: "shorter side of the face box below `id_filter.min_face_size` pixels",
    BLURRY: "variance of the Laplacian of the aligned 112 px crop below `id_filter.min_blur`",
    EXTREME_POSE: "approximate yaw, pitch or roll beyond `id_filter.max_yaw/max_pitch/max_roll` (or landmarks "
                  "too degenerate to align)",
    LOW_FEATURE_NORM: "raw embedding norm below `id_filter.min_feature_norm` (a quality proxy)",
    LOW_ID_SIMILARITY: "cosine of the face's embedding (conditioning encoder) to its identity vector below "
                       "`id_filter.min_id_similarity`",
    CONFUSED: "not at least `id_filter.confusion_margin` more similar to its own identity vector than to the "
              "nearest other identity vector of the run",
    NEAR_DUPLICATE: "cosine above `id_filter.duplicate_cosine` to an earlier kept image of the same identity",
    TOO_FEW_IMAGES: "its identity kept fewer than `id_filter.min_images_per_identity` images, so the identity "
                    "was dropped",
}

F32 = pa.float32()
OUTPUT_FIELDS = [
    pa.field("arc_face_score", F32),
    pa.field("arc_face_box", pa.list_(F32, 4)),
    pa.field("arc_landmarks", pa.list_(F32, 10)),
    pa.field("id_similarity", F32),
    pa.field("nearest_other_similarity", F32),
    pa.field("feature_norm", F32),
    pa.field("blur", F32),
    pa.field("yaw", F32),
    pa.field("pitch", F32),
    pa.field("roll", F32),
    pa.field("id_filter_reason", pa.string()),
]


class IdentityFilter:
    """``IdentityFilter(cfg, identity_vectors)``; row ``i`` of ``identity_vectors`` is identity label ``i``
    (the rows of ``identities.parquet``), in the conditioning encoder's space (any norm)."""

    reason_column = "id_filter_reason"

    # Half a CPU per worker, as the dlib filter it shares a worker with (pipelines.stages.FilterStage
    # merges the two declarations): with the generator's 1 and the writer's 0.25 all stages start on 2 cores.
    resources = Resources(num_cpus=0.5)

    def __init__(self, cfg: IdentityFilterConfig, identity_vectors: np.ndarray):
        vectors = np.asarray(identity_vectors, dtype=np.float32)
        if vectors.ndim != 2 or len(vectors) == 0:
            raise ValueError(f"identity_vectors must be a non-empty (N, dim) array, got shape {vectors.shape}")
        self.cfg = cfg
        self.vectors = l2_normalize(vectors)
        self.detector: ScrfdDetector | None = None
        self.embedder = None  # faces.encoder.load_encoder: an ONNX or PyTorch ArcFace

    @staticmethod
    def output_schema() -> pa.Schema:
        """Schema of the columns this stage appends (always all of them, always these types)."""
        return pa.schema(OUTPUT_FIELDS)

    @staticmethod
    def model_files(cfg: IdentityFilterConfig) -> list[ModelFiles]:
        """What :meth:`setup` loads, for the driver's check before any worker starts: the detector and the
        encoder, each a file or a pack folder (a folder is checked to exist; its ``.onnx`` is picked at load)."""
        needs = []
        for value, role, name in ((cfg.detector_model, "id_filter.detector_model", "antelopev2"),
                                  (cfg.encoder_model, "id_filter.encoder_model", None)):
            path = Path(value).expanduser()
            if path.suffix:  # a model file
                needs.append(ModelFiles(str(path.parent), ((path.name,),), name, None, role, hub=False))
            else:
                needs.append(ModelFiles(str(path), (), name, None, role, hub=False))
        return needs

    def setup(self) -> None:
        """Load SCRFD and the encoder once (idempotent)."""
        providers = {"cpu": ["CPUExecutionProvider"], "cuda": ["CUDAExecutionProvider"]}.get(self.cfg.device)
        if self.detector is None:
            self.detector = ScrfdDetector(
                Path(self.cfg.detector_model), self.cfg.input_size, self.cfg.det_thresh, providers=providers
            )
        if self.embedder is None:
            dim = self.vectors.shape[1]
            self.embedder = load_encoder(self.cfg.encoder_model, self.cfg.device, self.cfg.batch_size, providers, dim)

    def process(self, table: pa.Table) -> FilterResult:
        """Score every row of ``table``; in ``drop`` mode remove the rejected ones."""
        missing = {"identity", "image"} - set(table.column_names)
        if missing:
            raise KeyError(f"identity filter input lacks column(s) {sorted(missing)}; has {table.column_names}")
        n = table.num_rows
        ids = table.column("identity").to_numpy(zero_copy_only=False).astype(np.int64)
        if n and (ids.min() < 0 or ids.max() >= len(self.vectors)):
            raise ValueError(f"identity labels must lie in [0, {len(self.vectors)}); got {ids.min()}..{ids.max()}")
        order = (
            table.column("image_index").to_numpy(zero_copy_only=False).astype(np.int64)
            if "image_index" in table.column_names
            else np.arange(n)
        )
        self.setup()
        cols = {f.name: [None] * n for f in OUTPUT_FIELDS}
        reason: list[str | None] = [None] * n
        values, crops, owners = table.column("image").to_pylist(), [], []
        for start in range(0, n, self.cfg.batch_size):  # decoded images live one micro-batch at a time
            chunk = [(i, decode_image(values[i])) for i in range(start, min(n, start + self.cfg.batch_size))]
            good = [(i, img) for i, img in chunk if img is not None]
            for i, img in chunk:
                reason[i] = UNDECODABLE if img is None else None
            found = self.detector.detect_batch([img for _, img in good]) if good else []
            for (i, img), (boxes, kps) in zip(good, found, strict=True):
                crop = self._face(i, img, boxes, kps, cols, reason)
                if crop is not None:
                    crops.append(crop)
                    owners.append(i)
        emb = np.zeros((0, self.vectors.shape[1]), np.float32)
        if owners:
            emb = self._identity(np.asarray(owners), self.embedder.embed(np.stack(crops)), ids, cols, reason)
        row_emb = dict(zip(owners, emb, strict=True))
        self._duplicates(row_emb, ids, order, reason)
        cols["id_filter_reason"] = reason

        drops = Counter(r for r in reason if r is not None)
        out = table.drop_columns([f.name for f in OUTPUT_FIELDS if f.name in table.column_names])
        for f in OUTPUT_FIELDS:
            out = out.append_column(f, pa.array(cols[f.name], f.type))
        if self.cfg.mode == "drop":
            out = out.filter(pa.array([r is None for r in reason], pa.bool_()))
        return FilterResult(out, {r: drops[r] for r in REASONS if drops[r]})

    def _face(self, i: int, image, boxes, kps, cols: dict, reason: list) -> np.ndarray | None:
        """Detection and per-face quality decisions of row ``i``; its aligned crop unless it has no usable face."""
        cfg = self.cfg
        if len(boxes) == 0:
            reason[i] = NO_FACE
            return None
        best = int(np.argmax((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))) if len(boxes) > 1 else 0
        box, points = boxes[best], kps[best]
        cols["arc_face_score"][i] = float(box[4])
        cols["arc_face_box"][i] = box[:4].tolist()
        cols["arc_landmarks"][i] = points.reshape(-1).tolist()
        yaw, pitch, roll = pose_from_landmarks(points)
        finite = bool(np.isfinite([yaw, pitch, roll]).all())
        if finite:
            cols["yaw"][i], cols["pitch"][i], cols["roll"][i] = yaw, pitch, roll
        try:
            crop = align(image, points)
        except AlignmentError:
            crop = None
        if crop is not None:
            cols["blur"][i] = laplacian_variance(crop)
        checks = (
            (MULTIPLE_FACES, len(boxes) > 1),
            (LOW_FACE_SCORE, box[4] < cfg.min_face_score),
            (SMALL_FACE, min(box[2] - box[0], box[3] - box[1]) < cfg.min_face_size),
            (BLURRY, crop is not None and cols["blur"][i] < cfg.min_blur),
            (EXTREME_POSE, crop is None or not finite or abs(yaw) > cfg.max_yaw or abs(pitch) > cfg.max_pitch
             or abs(roll) > cfg.max_roll),
        )  # fmt: skip
        reason[i] = next((r for r, failed in checks if failed), None)
        return crop

    def _identity(self, owners: np.ndarray, raw: np.ndarray, ids: np.ndarray, cols: dict, reason: list) -> np.ndarray:
        """Feature norm, cosine to the own and the nearest other identity vector, their decisions; unit embeddings."""
        cfg = self.cfg
        emb = l2_normalize(raw)
        own = ids[owners]
        own_sim = np.einsum("ij,ij->i", emb, self.vectors[own])
        nearest = np.full(len(owners), -np.inf, dtype=np.float32)
        for start in range(0, len(self.vectors), cfg.block_size):
            sims = emb @ self.vectors[start : start + cfg.block_size].T
            mine = (own >= start) & (own < start + sims.shape[1])
            sims[np.flatnonzero(mine), own[mine] - start] = -np.inf
            nearest = np.maximum(nearest, sims.max(axis=1))
        norms = np.linalg.norm(raw, axis=1)
        for k, i in enumerate(owners.tolist()):
            other = float(nearest[k]) if np.isfinite(nearest[k]) else None  # None: the run has one identity
            cols["feature_norm"][i], cols["id_similarity"][i] = float(norms[k]), float(own_sim[k])
            cols["nearest_other_similarity"][i] = other
            if reason[i] is not None:
                continue
            if norms[k] < cfg.min_feature_norm:
                reason[i] = LOW_FEATURE_NORM
            elif own_sim[k] < cfg.min_id_similarity:
                reason[i] = LOW_ID_SIMILARITY
            elif other is not None and own_sim[k] - other < cfg.confusion_margin:
                reason[i] = CONFUSED
        return emb

    def _duplicates(self, emb: dict, ids: np.ndarray, order: np.ndarray, reason: list) -> None:
        """Near-duplicates within each identity, then the minimum number of accepted images per identity."""
        accepted = np.array([r is None for r in reason], dtype=bool)
        for identity in np.unique(ids[accepted]):
            rows = np.flatnonzero(accepted & (ids == identity))
            rows = rows[np.argsort(order[rows], kind="stable")]
            vecs = np.stack([emb[i] for i in rows])
            dup = near_duplicates(vecs, np.arange(len(rows)), self.cfg.duplicate_cosine)
            for i in rows[dup]:
                reason[i] = NEAR_DUPLICATE
            if len(rows) - int(dup.sum()) < self.cfg.min_images_per_identity:
                for i in rows[~dup]:
                    reason[i] = TOO_FEW_IMAGES
