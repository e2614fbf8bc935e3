"""The identity/quality filter on tiny ONNX models built here: a constant SCRFD that reports known faces, and a
linear ArcFace-shaped encoder, so every decision is deterministic; real photo crops for blur."""

from __future__ import annotations

import io

import cv2
import numpy as np
import pyarrow as pa
import pytest
from PIL import Image
from pydantic import ValidationError
from realfaces import GROUP_PHOTO
from test_arcface_embedder import mxnet_style
from test_scrfd import STRIDES, WIDTHS, constant_model

from facefoundry.faces.alignment import ARCFACE_TEMPLATE, align
from facefoundry.faces.arcface import ArcFaceEmbedder, l2_normalize
from facefoundry.faces.quality import FACE_MODEL, laplacian_variance, near_duplicates, pose_from_landmarks
from facefoundry.faces.scrfd import OnnxModelError
from facefoundry.filters import identity_filter as idf
from facefoundry.filters.identity_filter import IdentityFilter, IdentityFilterConfig

SIZE = 128  # detector input and image size (letterbox scale 1)
KPS = ARCFACE_TEMPLATE * np.float32(SIZE / 112)  # a frontal face filling the image: alignment only rescales it
BOX = (8.0, 8.0, 120.0, 120.0)
IMAGE_TYPE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
PERSON_A = (65, 284, 169, 388)  # a face of the group photo (dlib HOG box)


def model_points(yaw: float = 0.0, pitch: float = 0.0, roll: float = 0.0) -> np.ndarray:
    """ArcFace-ordered landmarks of the generic face of :mod:`quality` rotated (degrees), projected orthographically."""
    pts = FACE_MODEL - FACE_MODEL.mean(axis=0)
    y, p, r = np.radians([yaw, pitch, roll])
    ry = np.array([[np.cos(y), 0, np.sin(y)], [0, 1, 0], [-np.sin(y), 0, np.cos(y)]])
    rx = np.array([[1, 0, 0], [0, np.cos(p), np.sin(p)], [0, -np.sin(p), np.cos(p)]])
    rz = np.array([[np.cos(r), -np.sin(r), 0], [np.sin(r), np.cos(r), 0], [0, 0, 1]])
    return (pts @ (rz @ rx @ ry).T)[:, :2] + SIZE / 2


def scrfd(path, faces: list[tuple]) -> str:
    """A constant SCRFD for a SIZE x SIZE input reporting ``faces`` = [(box, kps, score)], one anchor each."""
    rows = [(SIZE // s) ** 2 * 2 for s in STRIDES]
    outs = [np.zeros((n, w), np.float32) for w in WIDTHS for n in rows]
    s = STRIDES[2]
    for slot, (box, kps, score) in enumerate(faces):
        y, x = divmod(slot, SIZE // s)
        cx, cy = x * s, y * s
        row = (y * (SIZE // s) + x) * 2
        outs[2][row, 0] = score
        outs[5][row] = np.array([cx - box[0], cy - box[1], box[2] - cx, box[3] - cy]) / s
        outs[8][row] = ((np.asarray(kps, np.float64) - [cx, cy]) / s).reshape(-1)
    return str(constant_model(path, outs, (1, 3, SIZE, SIZE)))


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("idfilter")
    return {
        "one": scrfd(d / "one.onnx", [(BOX, KPS, 0.9)]),
        "weak": scrfd(d / "weak.onnx", [(BOX, KPS, 0.3)]),
        "two": scrfd(d / "two.onnx", [(BOX, KPS, 0.9), ((100, 0, 124, 24), KPS / 5 + 100, 0.8)]),
        "yawed": scrfd(d / "yawed.onnx", [(BOX, model_points(yaw=70), 0.9)]),
        "encoder": str(mxnet_style(d / "encoder.onnx")),  # linear: 14x14 average pool -> 192 -> 512
    }


def blocks(seed: int) -> np.ndarray:
    """A SIZE x SIZE image of random 16 px blocks: after alignment each block is one 14 px pooling cell."""
    small = np.random.default_rng(seed).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    return np.repeat(np.repeat(small, SIZE // 8, axis=0), SIZE // 8, axis=1)


def png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def unit(images: list, identities: list[int], indices: list[int] | None = None) -> pa.Table:
    indices = list(range(len(images))) if indices is None else indices
    cells = [{"bytes": img if isinstance(img, (bytes, type(None))) else png(img), "path": None} for img in images]
    return pa.table(
        {
            "image": pa.array(cells, IMAGE_TYPE),
            "identity": pa.array(identities, pa.int64()),
            "image_index": pa.array(indices, pa.int32()),
        }
    )


def embed(models, images: list[np.ndarray]) -> np.ndarray:
    """Raw encoder features of images whose face has the landmarks KPS (what the filter computes)."""
    return ArcFaceEmbedder(models["encoder"], ["CPUExecutionProvider"]).embed(np.stack([align(i, KPS) for i in images]))


def make(models, vectors, detector: str = "one", **kw) -> IdentityFilter:
    cfg = IdentityFilterConfig(
        detector_model=models[detector], encoder_model=models["encoder"], input_size=(SIZE, SIZE), device="cpu", **kw
    )
    return IdentityFilter(cfg, vectors)


def unit_vector(seed: int) -> np.ndarray:
    return l2_normalize(np.random.default_rng(seed).standard_normal(512))


def test_identity_decisions_annotate_and_drop(models):
    a, b, c, d, e, f, g, h = (blocks(s) for s in range(8))
    ea, eb, ec, ed, ee, ef, eg, eh = l2_normalize(embed(models, [a, b, c, d, e, f, g, h]))
    v3 = l2_normalize(ef + eg)
    vectors = np.stack(
        [
            l2_normalize(ea + eb) * 22.0,  # any norm: the filter normalises (Vec2Face's raw space)
            l2_normalize(ec + ed),
            unit_vector(0),  # identity 2's image is unrelated to its vector
            v3,
            eh,
            l2_normalize(v3 + 0.1 * unit_vector(1)),  # not in this unit: planted close to identity 3
        ]
    )
    # identity 0: the duplicate of `a` comes first in the table but has the later image_index
    table = unit([a, b, a, c, d, b"junk", e, f, g, h], [0, 0, 0, 1, 1, 1, 2, 3, 3, 4], [2, 1, 0, 0, 1, 2, 0, 0, 1, 0])
    expected = [idf.NEAR_DUPLICATE, None, None, None, None, idf.UNDECODABLE, idf.LOW_ID_SIMILARITY]
    expected += [idf.CONFUSED, idf.CONFUSED, idf.TOO_FEW_IMAGES]
    drops = {"undecodable": 1, "low_id_similarity": 1, "confused": 2, "near_duplicate": 1, "too_few_images": 1}

    annotated = make(models, vectors, mode="annotate", min_id_similarity=0.5).process(table)
    rows = annotated.table.to_pylist()
    assert [r["id_filter_reason"] for r in rows] == expected
    assert annotated.drops == drops and list(annotated.drops) == [r for r in idf.REASONS if r in drops]

    emb = l2_normalize(embed(models, [a, b, a, c, d, e, f, g, h]))
    own = np.array([0, 0, 0, 1, 1, 2, 3, 3, 4])
    sims = emb @ l2_normalize(vectors).T
    scored = [r for r in rows if r["id_filter_reason"] != idf.UNDECODABLE]
    np.testing.assert_allclose([r["id_similarity"] for r in scored], sims[np.arange(9), own], atol=1e-5)
    sims[np.arange(9), own] = -np.inf
    np.testing.assert_allclose([r["nearest_other_similarity"] for r in scored], sims.max(axis=1), atol=1e-5)
    assert all(r["id_similarity"] > 0.6 for r in scored if r["identity"] != 2) and scored[5]["id_similarity"] < 0.3
    assert all(r["id_similarity"] - r["nearest_other_similarity"] > 0.4 for r in scored if r["identity"] in (0, 1))
    raw = embed(models, [a, b, a, c, d, e, f, g, h])
    np.testing.assert_allclose([r["feature_norm"] for r in scored], np.linalg.norm(raw, axis=1), rtol=1e-5)
    first = rows[1]
    np.testing.assert_allclose(first["arc_face_box"], BOX, atol=1e-3)
    np.testing.assert_allclose(first["arc_landmarks"], KPS.reshape(-1), atol=1e-3)
    assert first["arc_face_score"] == pytest.approx(0.9) and first["blur"] > 100
    assert abs(first["yaw"]) < 1 and abs(first["pitch"]) < 1 and abs(first["roll"]) < 1
    assert rows[5]["arc_face_score"] is None and rows[5]["id_similarity"] is None  # undecodable: null scores

    dropped = make(models, vectors, mode="drop", min_id_similarity=0.5).process(table)
    assert dropped.drops == drops
    assert dropped.table.column("identity").to_pylist() == [0, 0, 1, 1]
    assert dropped.table.column("image_index").to_pylist() == [1, 0, 0, 1]
    assert set(dropped.table.column("id_filter_reason").to_pylist()) == {None}

    # blockwise nearest-other search and micro-batches change nothing; a one-identity run has no nearest other
    small_blocks = make(models, vectors, mode="annotate", min_id_similarity=0.5, block_size=2, batch_size=3)
    small_blocks = small_blocks.process(table)
    assert small_blocks.table.equals(annotated.table)
    alone = make(models, vectors[:1], mode="annotate", min_images_per_identity=1).process(table.slice(0, 3))
    assert alone.table.column("nearest_other_similarity").to_pylist() == [None] * 3
    assert alone.drops == {idf.NEAR_DUPLICATE: 1}


def test_detection_and_quality_decisions(models):
    images = [blocks(10), blocks(11)]
    vectors = embed(models, images)
    table = unit(images, [0, 1])
    relaxed = {"mode": "annotate", "min_images_per_identity": 1}

    def reasons(detector="one", **kw):
        out = make(models, vectors, detector, **relaxed, **kw).process(table)
        return [r["id_filter_reason"] for r in out.table.to_pylist()], out.table.to_pylist()

    assert reasons()[0] == [None, None]
    assert reasons("weak")[0] == [idf.NO_FACE] * 2
    got, rows = reasons("two")
    assert got == [idf.MULTIPLE_FACES] * 2
    np.testing.assert_allclose(rows[0]["arc_face_box"], BOX, atol=1e-3)  # the largest face is recorded
    assert rows[0]["id_similarity"] == pytest.approx(1.0, abs=1e-5)  # and scored
    assert reasons(min_face_score=0.95)[0] == [idf.LOW_FACE_SCORE] * 2
    assert reasons(min_face_size=113)[0] == [idf.SMALL_FACE] * 2
    got, rows = reasons("yawed")
    assert got == [idf.EXTREME_POSE] * 2
    assert rows[0]["yaw"] == pytest.approx(70, abs=1.5) and abs(rows[0]["pitch"]) < 2  # float32 keypoints
    assert reasons("yawed", max_yaw=75)[0] != [idf.EXTREME_POSE] * 2
    norm = float(np.linalg.norm(vectors[0]))
    assert reasons(min_feature_norm=norm + 1e-3)[0][0] == idf.LOW_FEATURE_NORM
    assert reasons(min_face_score=0.95, min_face_size=200)[0] == [idf.LOW_FACE_SCORE] * 2  # first reason wins


@pytest.mark.skipif(GROUP_PHOTO is None, reason="insightface (its t1.jpg is the real-face test photo) absent")
def test_blur_flat_vs_textured_real_crops(models):
    photo = np.asarray(Image.open(GROUP_PHOTO).convert("RGB"))
    x0, y0, x1, y1 = PERSON_A
    face = cv2.resize(np.ascontiguousarray(photo[y0 - 12 : y1 + 12, x0 - 12 : x1 + 12]), (SIZE, SIZE))
    soft = cv2.GaussianBlur(face, (0, 0), 3)
    flat = np.full((SIZE, SIZE, 3), 128, np.uint8)
    images = [face, soft, flat]
    vectors = embed(models, images)
    out = make(models, vectors, mode="annotate", min_images_per_identity=1, min_id_similarity=-1, confusion_margin=-2)
    rows = out.process(unit(images, [0, 1, 2])).table.to_pylist()
    blur = [r["blur"] for r in rows]
    assert blur[0] > 50 > 10 > blur[1] and blur[2] == 0
    assert [r["id_filter_reason"] for r in rows] == [None, idf.BLURRY, idf.BLURRY]
    assert blur[0] == pytest.approx(laplacian_variance(align(face, KPS)), rel=1e-6)


def test_pose_from_landmarks_on_the_model_face():
    assert np.allclose(pose_from_landmarks(ARCFACE_TEMPLATE), 0, atol=1e-4)
    for yaw, pitch, roll in ((30, 0, 0), (-55, 0, 0), (0, 20, 0), (0, -35, 0), (0, 0, 25), (0, 0, -60)):
        np.testing.assert_allclose(pose_from_landmarks(model_points(yaw, pitch, roll)), (yaw, pitch, roll), atol=1e-6)
    for angles in ((30, 15, 10), (-50, -20, 35), (70, 40, -80)):  # combined rotations, scaled and shifted
        np.testing.assert_allclose(pose_from_landmarks(3 * model_points(*angles) + 7), angles, atol=1e-6)
    assert np.isnan(pose_from_landmarks(np.zeros((5, 2)))).all()


def test_near_duplicates_keep_the_first_in_order():
    e = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.01], [2.0, 0.0]])
    assert near_duplicates(e, np.arange(4), 0.95).tolist() == [False, False, True, True]
    assert near_duplicates(e, np.array([3, 2, 1, 0]), 0.95).tolist() == [True, False, True, False]
    assert near_duplicates(e, np.arange(4), 1.0).tolist() == [False] * 4


def test_schema_is_stable_whatever_the_data(models):
    vectors = np.stack([unit_vector(2), unit_vector(3)])
    table = unit([blocks(20), b"broken", None], [0, 1, 1])
    expected = table.schema
    for f in IdentityFilter.output_schema():
        expected = expected.append(f)
    annotated = make(models, vectors, mode="annotate").process(table).table
    results = [
        make(models, vectors, mode="drop").process(table).table,  # everything dropped
        annotated,
        make(models, vectors, mode="drop").process(table.slice(0, 0)).table,  # empty unit
        make(models, vectors, "weak", mode="annotate").process(table).table,  # all-null score columns
        make(models, vectors, mode="annotate").process(annotated).table,  # re-run on its own output
    ]
    for result in results:
        assert result.schema == expected
    assert pa.concat_tables(results).num_rows == 9


def test_config_and_inputs_are_checked(models):
    with pytest.raises(ValidationError):
        IdentityFilterConfig(min_blurr=3)
    with pytest.raises(ValidationError):
        IdentityFilterConfig(mode="keep")
    with pytest.raises(ValueError, match="non-empty"):
        IdentityFilter(IdentityFilterConfig(), np.zeros((0, 512)))
    filt = make(models, np.stack([unit_vector(4)]))
    assert filt.detector is None and filt.embedder is None  # lazy
    filt.setup()
    detector = filt.detector
    filt.setup()
    assert filt.detector is detector
    assert filt.detector.model_path.name == "one.onnx" and filt.embedder.info()["embedder"] == "encoder.onnx"
    with pytest.raises(KeyError, match="identity"):
        filt.process(pa.table({"image": pa.array([], IMAGE_TYPE)}))
    with pytest.raises(ValueError, match=r"identity labels must lie in \[0, 1\)"):
        filt.process(unit([blocks(0)], [1]))
    with pytest.raises(OnnxModelError, match="128"):
        make(models, np.ones((1, 128))).setup()  # vectors from another space than the encoder's


def test_pipeline_filter_stage_chains_dlib_then_identity_filter(models, tmp_path):
    """The run's filter stage: dlib first (independent judge), then the identity filter against the
    run's own identity vectors; both filters' reasons are merged in the unit's drop counts."""
    from facefoundry.config import validate_config
    from facefoundry.dataset.manifest import Unit
    from facefoundry.identities.store import read_vectors, write_identities
    from facefoundry.pipelines.stages import FilterStage, UnitResult

    cfg = validate_config({
        "identities": {"count": 2},
        "images": {"per_identity": 2},
        "filter": {"mode": "annotate"},
        "id_filter": {"mode": "annotate", "detector_model": models["one"], "encoder_model": models["encoder"],
                      "input_size": [SIZE, SIZE], "device": "cpu", "min_images_per_identity": 1},
    })
    write_identities(tmp_path, cfg)
    images = [blocks(1), blocks(2), blocks(3), b"not an image"]
    table = unit(images, [0, 0, 1, 1], [0, 1, 0, 1]).append_column("seed", pa.array([1, 2, 3, 4], pa.int64()))
    result = FilterStage(cfg, str(tmp_path))(UnitResult(Unit(0, 2), table, 4))
    out = result.table
    assert {"filter_reason", "judge_distance", "id_filter_reason", "id_similarity"} <= set(out.column_names)
    assert out.num_rows == 4  # annotate mode in both filters
    # dlib finds no face in block patterns; the identity filter's crafted detector always does
    assert out.column("filter_reason").to_pylist()[:3] == ["no_face"] * 3
    sims = out.column("id_similarity").to_pylist()
    vectors = l2_normalize(read_vectors(tmp_path / "identities.parquet"))
    expected = np.einsum("ij,ij->i", l2_normalize(embed(models, images[:3])), vectors[[0, 0, 1]])
    assert np.allclose(sims[:3], expected, atol=1e-5) and sims[3] is None
    assert result.drops == {"no_face": 3, "undecodable": 1}  # each image once, under its first reason
    dropping = cfg.model_copy(update={"filter": cfg.filter.model_copy(update={"mode": "drop"})})
    result = FilterStage(dropping, str(tmp_path))(UnitResult(Unit(0, 2), table, 4))
    assert result.table.num_rows == 0 and result.drops == {"no_face": 3, "undecodable": 1}


def test_pth_encoder_runs_vec2face_arcface_r100_in_torch(models, tmp_path):
    from facefoundry.faces.tiny_face_models import write_tiny_arcface
    from facefoundry.faces.torch_embedder import TorchArcFaceEmbedder

    pth = write_tiny_arcface(tmp_path / "weights" / "arcface-r100-glint360k.pth")
    images = [blocks(s) for s in range(4)]
    raw = TorchArcFaceEmbedder(pth, "cpu").embed(np.stack([align(i, KPS) for i in images]))
    cfg = IdentityFilterConfig(detector_model=models["one"], encoder_model=str(pth), input_size=(SIZE, SIZE),
                               device="cpu", mode="annotate", min_images_per_identity=1)
    out = IdentityFilter(cfg, raw * 22.0).process(unit(images, [0, 1, 2, 3])).table.to_pylist()
    # each image is its own identity's vector (at Vec2Face's norm ~22): similarity 1, nothing rejected as identity
    assert [round(r["id_similarity"], 4) for r in out] == [1.0] * 4
    assert [r["feature_norm"] for r in out] == pytest.approx(np.linalg.norm(raw, axis=1).tolist(), rel=1e-5)
    with pytest.raises(ValueError, match="identity vectors are 256-d"):
        IdentityFilter(cfg, np.ones((1, 256))).setup()


def test_remove_like_embeds_a_face_image_as_the_filter_does(models, tmp_path):
    """``facefoundry remove --like photo``: the largest face, aligned and embedded by the run's id_filter encoder."""
    from facefoundry.config import validate_config
    from facefoundry.runfolder.likeness import RemovalError, embed_face_image, query_vector

    id_filter = {"detector_model": models["one"], "encoder_model": models["encoder"], "input_size": [SIZE, SIZE],
                 "device": "cpu"}
    cfg = validate_config({"identities": {"count": 2}, "images": {"per_identity": 1}, "id_filter": id_filter})
    image = blocks(7)
    (tmp_path / "face.png").write_bytes(png(image))
    expected = l2_normalize(embed(models, [image]))[0]
    np.testing.assert_allclose(embed_face_image(tmp_path / "face.png", cfg, 512), expected, atol=1e-5)
    query, kind = query_vector(tmp_path / "face.png", cfg, 512)
    assert kind == "image" and np.linalg.norm(query) == pytest.approx(1.0)
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(RemovalError, match="not an image this tool can decode"):
        embed_face_image(tmp_path / "text.png", cfg, 512)
    nobody = validate_config({"identities": {"count": 2}, "images": {"per_identity": 1},
                              "id_filter": id_filter | {"detector_model": models["weak"], "det_thresh": 0.5}})
    with pytest.raises(RemovalError, match="no face found"):
        embed_face_image(tmp_path / "face.png", nobody, 512)
