"""Intrinsic judge metrics: pure metrics against brute force, and the dlib judge end to end on real faces.

Real faces: the photos installed packages ship (insightface's t1.jpg group photo of 6 people and its Tom Hanks
crop, matplotlib's Grace Hopper, skimage's astronaut): 9 people. Each face is cropped 5 ways (margins, flips,
small rotations, brightness) into its own images, written as a tiny run through the project's shard writer.
"""

from __future__ import annotations

import importlib.util
import io
import json
import shutil
from itertools import combinations
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image, ImageEnhance
from realfaces import GROUP_PHOTO
from runfolder import rows_table, write_run

from facefoundry.dataset.manifest import finished_manifests
from facefoundry.evaluate import intrinsic as im
from facefoundry.evaluate import intrinsic_run
from facefoundry.evaluate.intrinsic_plots import PLOTS
from facefoundry.evaluate.intrinsic_run import evaluate_intrinsic, report_intrinsic, select_sample
from facefoundry.evaluate.judge import FaceJudge, JudgeError

# (package, path inside it, how many faces to take from it, best detector score first)
SOURCES = [("insightface", "data/images/t1.jpg", 6), ("insightface", "data/images/Tom_Hanks_54745.png", 1),
           ("matplotlib", "mpl-data/sample_data/grace_hopper.jpg", 1), ("skimage", "data/astronaut.png", 1)]
# (margin around the box as a fraction of its side, mirror, rotation degrees, brightness)
VARIANTS = [(0.5, False, 0, 1.0), (0.8, True, 0, 1.0), (0.6, False, 8, 1.0), (0.7, False, -8, 1.25),
            (0.5, True, 0, 0.75)]


def _package_file(package: str, rel: str) -> Path | None:
    spec = importlib.util.find_spec(package)
    for location in (spec.submodule_search_locations or []) if spec else []:
        if (Path(location) / rel).is_file():
            return Path(location) / rel
    return None


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def face_images() -> list[list[bytes]]:
    """Per person, the PNG bytes of its 5 variants."""
    from facefoundry.faces.dlib_models import DlibFaceModel

    detector, people = DlibFaceModel("hog"), []
    for package, rel, count in SOURCES:
        path = _package_file(package, rel)
        if path is None:
            pytest.skip(f"{package} does not ship {rel}")
        photo = Image.open(path).convert("RGB")
        if min(photo.size) < 200:  # the 112x112 Tom Hanks crop: give the detector room
            photo = photo.resize((photo.width * 2, photo.height * 2), Image.BICUBIC)
        for det in detector.detect(np.asarray(photo))[:count]:
            x0, y0, x1, y1 = det.box
            cx, cy, side = (x0 + x1) / 2, (y0 + y1) / 2, max(x1 - x0, y1 - y0)
            pad = int(side * 1.6) + 1  # room for the widest margin and the rotation, edge pixels repeated
            around = np.pad(np.asarray(photo), ((pad, pad), (pad, pad), (0, 0)), mode="edge")
            x, y = int(round(cx)) + pad, int(round(cy)) + pad
            region = Image.fromarray(around[y - pad:y + pad, x - pad:x + pad])
            images = []
            for margin, mirror, angle, light in VARIANTS:
                half = side * (0.5 + margin)
                crop = region.rotate(angle, resample=Image.BILINEAR).crop((pad - half, pad - half, pad + half,
                                                                          pad + half))
                crop = ImageEnhance.Brightness(crop.resize((200, 200), Image.BICUBIC)).enhance(light)
                images.append(_png(crop.transpose(Image.FLIP_LEFT_RIGHT) if mirror else crop))
            people.append(images)
    return people


def noise_png(seed: int) -> bytes:
    return _png(Image.fromarray(np.random.default_rng(seed).integers(0, 256, (120, 120, 3), dtype=np.uint8)))


def write_face_run(out: Path, people: list[list[bytes]], per_unit: int = 3) -> Path:
    """A run of the people as identities, in annotate mode: plus one kept faceless image (identity 0) and, per
    unit, a rejected row holding another person's face (it must not be judged)."""
    n = len(people)

    def unit_rows(unit):
        rows = [(i, j, data, None) for i in range(unit.start, unit.stop) for j, data in enumerate(people[i])]
        rows.append((unit.start, len(VARIANTS), people[(unit.stop) % n][0], "identity_mismatch"))
        if unit.start == 0:
            rows.append((0, len(VARIANTS) + 1, noise_png(0), None))
        table = rows_table([r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows],
                           face_score=pa.array(np.linspace(0.5, 2.0, len(rows)), pa.float32()),
                           filter_reason=pa.array([r[3] for r in rows], pa.string()))
        return table, len(rows), {"identity_mismatch": 1}

    write_run(out, {"run": {"name": "faces"}, "identities": {"count": n}, "images": {"per_identity": len(VARIANTS)},
                    "output": {"identities_per_unit": per_unit}, "filter": {"mode": "annotate"}}, unit_rows)
    return out


@pytest.fixture(scope="module")
def people():
    if GROUP_PHOTO is None:
        pytest.skip("insightface's t1.jpg is not installed")
    found = face_images()
    assert len(found) == 9
    return found


@pytest.fixture(scope="module")
def face_run(tmp_path_factory, people):
    run = write_face_run(tmp_path_factory.mktemp("faces"), people)
    judge = FaceJudge("dlib")
    return run, judge, evaluate_intrinsic(run, judge, plots_dir=run / "report")


@pytest.mark.slow
def test_real_faces_separate_under_dlib(face_run):
    run, _, result = face_run
    sample, m = result["sample"], result["metrics"]
    # 9 people x 5 crops + 1 kept faceless image; the 3 rejected rows are not read
    assert sample["images_sampled"] == 46 and sample["identities"] == list(range(9))
    assert sample["status"] == {"ok": 45, "undecodable": 0, "no_face": 1}
    assert m["images"] == 45 and m["identities"] == 9
    ver = m["verification"]
    assert ver["genuine"]["count"] == 9 * 10 and ver["impostor"]["count"] == (45 * 44) // 2 - 90
    assert ver["genuine"]["mean"] < 0.45 and ver["impostor"]["mean"] > 0.7
    assert ver["genuine"]["max"] < ver["impostor"]["min"]  # clean separation...
    assert ver["eer"] == 0.0 and ver["same_person_rule"]["genuine_accepted"] == 1.0
    # dlib's 0.6 rule on single images is not perfect (a few impostor pairs of 900 fall just below it) ...
    assert ver["same_person_rule"]["impostor_accepted"] < 0.01 and ver["impostor"]["min"] > 0.55
    assert ver["tar_at_far"]["0.001"]["tar"] == 1.0 and not ver["tar_at_far"]["0.001"]["resolvable"]
    uni = m["uniqueness"]
    # ... but no two identities' centroids are within it
    assert uni["pairs"] == 36 and uni["indistinguishable_pairs"] == 0 and uni["max_cosine"] < 0.97
    assert uni["nearest_other_native"]["min"] > 0.6
    assert m["intra_class"]["identities"] == 9 and m["intra_class"]["per_identity_mean"]["max"] < 0.5
    assert {"judge_yaw_proxy", "judge_roll_deg", "judge_face_score", "face_score"} <= set(m["spread"])
    # the rotations are +-8 degrees: roll spreads within identities
    assert m["spread"]["judge_roll_deg"]["within_identity_std"]["mean"] > 3.0
    assert m["separation"]["identities"] == 9 and m["separation"]["sampled_nn_cosine_all_identities"]["count"] == 9
    stored = json.loads((run / "eval" / "intrinsic.json").read_text())
    assert stored["judge"]["files"][-1]["path"].endswith("dlib_face_recognition_resnet_model_v1.dat")
    assert len(stored["judge"]["files"][-1]["sha256"]) == 64
    assert stored == {k: v for k, v in result.items() if k != "plots"}
    for name in PLOTS:
        with Image.open(run / "report" / name) as image:
            assert image.format == "PNG" and image.size[0] >= 400
    table = im.intrinsic_table_markdown(result)
    assert "| EER | 0.0000 |" in table and "| identity pairs the judge cannot tell apart | 0.0000 |" in table
    div = m["diversity"]
    assert div["within_identity"]["count"] == 9 and 1.0 < div["within_identity"]["mean"] < 5.0  # 5 crops each
    assert 1.0 < div["centroids"]["vendi"] <= 9.0
    assert f"| Vendi score within an identity (mean) / of the centroids | {div['within_identity']['mean']:.2f} / " \
           in table


@pytest.mark.slow  # the module's run of real photos, judged by dlib (face_run): about 9 s
def test_one_person_under_two_labels_is_caught(face_run, people, tmp_path):
    """Grace Hopper's crops split over identities 0 and 2: the judge must call that pair the same person."""
    _, judge, _ = face_run
    run = write_face_run(tmp_path, [people[7][:3], people[1][:3], people[7][3:]])
    m = evaluate_intrinsic(run, judge)["metrics"]
    assert m["images"] == 8 and m["uniqueness"]["pairs"] == 3
    assert m["uniqueness"]["indistinguishable_pairs"] == 1 and m["uniqueness"]["max_cosine"] > 0.97
    assert m["uniqueness"]["nearest_other_native"]["min"] < 0.6
    ver = m["verification"]
    assert ver["eer"] > 0.05 and ver["same_person_rule"]["impostor_accepted"] > 0.2  # 6 of 21 "impostor" pairs


@pytest.mark.slow  # the module's run of real photos, judged by dlib (face_run): about 9 s
def test_rerun_reuses_result_and_caps_are_deterministic(face_run, monkeypatch):
    run, judge, result = face_run
    monkeypatch.setattr(FaceJudge, "__call__", lambda *a: pytest.fail("a rerun must reuse intrinsic.json"))
    stored = {k: v for k, v in result.items() if k != "plots"}
    assert evaluate_intrinsic(run, judge) == stored
    # A result of an older metrics revision (before the Vendi scores) is recomputed, not reused.
    path = run / "eval" / "intrinsic.json"
    path.write_text(json.dumps({**stored, "key": {**stored["key"], "metrics_revision": 1}}))
    recomputed = []
    monkeypatch.setattr(intrinsic_run, "_evaluate", lambda *args: recomputed.append(args) or stored)
    assert evaluate_intrinsic(run, judge) == stored and len(recomputed) == 1
    assert json.loads(path.read_text()) == stored
    manifests = finished_manifests(run, json.loads((run / "run.json").read_text())["config_hash"])
    a, info = select_sample(run, manifests, 4, 2, seed=7)
    assert select_sample(run, manifests, 4, 2, seed=7)[0] == a
    assert info["identities_sampled"] == 4 and info["images_sampled"] == 8 and info["kept_images"] == 46
    assert info["identities"] == sorted({i for rows in a.values() for i in rows})
    chosen = {i: v for rows in a.values() for i, v in rows.items()}
    assert len(chosen) == 4 and all(len(v) == 2 and max(v) < 6 for v in chosen.values())
    assert select_sample(run, manifests, 4, 2, seed=8)[0] != a


@pytest.mark.slow
def test_parallel_workers_give_the_same_result(face_run, tmp_path):
    run, judge, _ = face_run
    shutil.copytree(run, tmp_path / "run", ignore=shutil.ignore_patterns("eval", "report"))
    one = evaluate_intrinsic(tmp_path / "run", judge, max_identities=4, max_images_per_identity=2, seed=1)
    two = evaluate_intrinsic(tmp_path / "run", "dlib", max_identities=4, max_images_per_identity=2, seed=1,
                             reuse=False, workers=2)
    assert one["sample"]["images_sampled"] == 8 and one["metrics"]["images"] == 8
    assert one == two


@pytest.mark.slow  # the module's run of real photos, judged by dlib (face_run): about 9 s
def test_report_hook_summarises_and_never_fails(face_run, tmp_path):
    run, _, _ = face_run
    summary = report_intrinsic(run, tmp_path / "report")  # reuses intrinsic.json, draws the plots
    assert summary["judge"] == "dlib ResNet (128-d)" and summary["sample"]["status"]["ok"] == 45
    assert "| EER |" in summary["table"] and (tmp_path / "report" / PLOTS[1]).is_file()
    assert report_intrinsic(tmp_path, tmp_path / "r")["error"].startswith("RunFolderError")


@pytest.mark.slow  # the module's run of real photos, judged by dlib (face_run): about 9 s
def test_judge_must_not_be_the_conditioning_encoder(face_run, tmp_path):
    _, judge, _ = face_run
    judge.check_independent("arc2face", "models/arc2face/arcface.onnx")  # dlib is another family: accepted
    fake = FaceJudge.__new__(FaceJudge)
    fake.files = [tmp_path / "arcface-r100-glint360k.pth"]
    fake.files[0].write_bytes(b"weights")
    with pytest.raises(JudgeError, match="conditioning encoder"):
        fake.check_independent("vec2face")
    copy = tmp_path / "renamed.onnx"
    copy.write_bytes(b"weights")
    with pytest.raises(JudgeError, match="conditioning encoder"):
        fake.check_independent("arc2face", str(copy))  # same bytes under another name


@pytest.mark.slow  # the module's run of real photos, judged by dlib (face_run): about 9 s
def test_arcface_judge_scores_cosines(face_run, tmp_path):
    """A (tiny, random-weight) ArcFace .pth judge goes the same way: dlib finds the face, ArcFace template crop."""
    from facefoundry.faces.tiny_face_models import write_tiny_arcface

    run, _, _ = face_run
    shutil.copytree(run, tmp_path / "run", ignore=shutil.ignore_patterns("eval", "report"))
    weights = write_tiny_arcface(tmp_path / "tiny-judge.pth")
    result = evaluate_intrinsic(tmp_path / "run", weights, max_identities=3, max_images_per_identity=3, device="cpu")
    m, judge = result["metrics"], result["judge"]
    assert judge["metric"] == "cosine" and judge["same_person_threshold"] == 0.3 and judge["dim"] == 512
    assert judge["files"][-1]["path"] == str(weights) and "align_dlib" in judge["alignment"]
    assert result["sample"]["images_sampled"] == 9 and m["images"] == m["verification"]["genuine"]["count"] == 9
    assert -1 <= m["verification"]["impostor"]["min"] <= m["verification"]["impostor"]["max"] <= 1
    assert m["intra_class"]["distance"] == "1 - cosine" and m["uniqueness"]["pairs"] == 3
    with pytest.raises(JudgeError, match="conditioning encoder"):  # Vec2Face conditions on this family's file
        shutil.copy(weights, tmp_path / "arcface-r100-glint360k.pth")
        FaceJudge(tmp_path / "arcface-r100-glint360k.pth", device="cpu").check_independent("vec2face")


# ---------------------------------------------------------------- pure metrics against brute force


def _clusters(seed: int, ids: int = 12, per: int = 5, dim: int = 16, noise: float = 0.3):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(ids, dim))
    labels = np.repeat(np.arange(ids) * 3 + 5, per)  # labels need not be 0..N-1
    return centres, centres[np.repeat(np.arange(ids), per)] + noise * rng.normal(size=(ids * per, dim)), labels


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_pair_scores_match_brute_force(metric):
    _, emb, labels = _clusters(0)
    score = (lambda a, b: np.linalg.norm(a - b)) if metric == "euclidean" else \
        (lambda a, b: a @ b / np.linalg.norm(a) / np.linalg.norm(b))  # noqa: E731
    pairs = list(combinations(range(len(labels)), 2))
    gen = sorted(score(emb[i], emb[j]) for i, j in pairs if labels[i] == labels[j])
    imp = sorted(score(emb[i], emb[j]) for i, j in pairs if labels[i] != labels[j])
    np.testing.assert_allclose(np.sort(im.genuine_scores(emb, labels, metric)), gen, atol=1e-9)
    got, info = im.impostor_scores(emb, labels, metric, max_pairs=10**6, seed=0)
    assert info["method"] == "all pairs" and info["total_pairs"] == len(imp)
    np.testing.assert_allclose(np.sort(got), imp, atol=1e-9)
    drawn, info = im.impostor_scores(emb, labels, metric, max_pairs=500, seed=3)
    assert drawn.size == 500 and "seed 3" in info["method"]
    np.testing.assert_array_equal(drawn, im.impostor_scores(emb, labels, metric, 500, seed=3)[0])
    # drawn pairs are different-identity pairs: every drawn score is one of the impostor scores
    nearest = np.abs(np.asarray(imp)[None, :] - drawn[:, None]).min(axis=1)
    assert nearest.max() < 1e-6


@pytest.mark.parametrize("metric,threshold", [("euclidean", 2.0), ("cosine", 0.2)])
def test_uniqueness_matches_brute_force(metric, threshold):
    rng = np.random.default_rng(1)
    cents = rng.normal(size=(300, 8))
    got, near_cos, near_native = im.uniqueness(cents, metric, threshold, block=64)
    unit = cents / np.linalg.norm(cents, axis=1, keepdims=True)
    cos = unit @ unit.T
    iu = np.triu_indices(300, 1)
    dist = np.linalg.norm(cents[:, None] - cents[None], axis=2)
    native = dist if metric == "euclidean" else cos
    assert got["pairs"] == iu[0].size and got["max_cosine"] == pytest.approx(cos[iu].max())
    # histogram quantile (1e-4 bins): between the order statistics next to the 99th percentile, give or take a bin
    ranked = np.sort(cos[iu])
    rank = 0.99 * ranked.size
    assert ranked[int(rank) - 2] - 1e-4 <= got["p99_cosine"] <= ranked[int(rank) + 1] + 1e-4
    same = (native[iu] < threshold) if metric == "euclidean" else (native[iu] > threshold)
    assert got["indistinguishable_pairs"] == int(same.sum()) > 0
    np.fill_diagonal(cos, -np.inf)
    np.testing.assert_allclose(near_cos, cos.max(axis=1))
    np.fill_diagonal(native, np.inf if metric == "euclidean" else -np.inf)
    np.testing.assert_allclose(near_native, native.min(axis=1) if metric == "euclidean" else native.max(axis=1))


def test_intra_class_spread_and_separation_match_brute_force():
    centres, emb, labels = _clusters(2)
    got = im.intra_class(emb, labels, "euclidean")
    means = [np.mean([np.linalg.norm(emb[i] - emb[j]) for i, j in combinations(np.flatnonzero(labels == k), 2)])
             for k in np.unique(labels)]
    assert got["identities"] == 12 and got["per_identity_mean"]["mean"] == pytest.approx(np.mean(means))
    assert got["per_identity_mean"]["std"] == pytest.approx(np.std(means))
    values = np.arange(labels.size, dtype=float)
    values[3] = np.nan
    s = im.spread({"x": values, "empty": np.full(labels.size, np.nan)}, labels)["x"]
    assert list(im.spread({"empty": np.full(labels.size, np.nan)}, labels)) == []
    stds = [np.nanstd(values[labels == k]) for k in np.unique(labels)]
    assert s["within_identity_std"]["mean"] == pytest.approx(np.mean(stds)) and s["overall"]["count"] == 59
    result = im.intrinsic_metrics(emb, labels, "cosine", 0.5, sampled_vectors=centres)
    unit = centres / np.linalg.norm(centres, axis=1, keepdims=True)
    cos = unit @ unit.T
    np.fill_diagonal(cos, -1)
    sep = result["separation"]
    assert sep["sampled_nn_cosine"]["max"] == pytest.approx(cos.max(axis=1).max())
    assert sep["spearman"] > 0.5  # the judge sees the sampler's geometry through the noise
    assert result["verification"]["eer"] < 0.05 and result["uniqueness"]["indistinguishable_fraction"] < 0.05
    with pytest.raises(ValueError, match="sampled_vectors has 3 rows"):
        im.intrinsic_metrics(emb, labels, "cosine", 0.5, sampled_vectors=centres[:3])


def _vendi_brute(vectors: np.ndarray) -> float:
    """The definition, computed the long way: the n x n cosine Gram matrix over n, its eigenvalues' entropy."""
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    eig = np.linalg.eigvalsh(unit @ unit.T / len(unit))
    eig = eig[eig > 1e-12]
    return float(np.exp(-(eig * np.log(eig)).sum()))


def test_vendi_score_matches_closed_forms_and_the_n_by_n_definition():
    assert im.vendi_score(np.ones((5, 4))) == pytest.approx(1.0)  # one direction: one effective sample
    assert im.vendi_score(np.eye(3) * [[1.0], [7.0], [0.5]]) == pytest.approx(3.0)  # orthogonal, any norms
    c = 0.6  # two rows at cosine c: eigenvalues (1 +- c) / 2
    two = np.array([[1.0, 0.0], [c, np.sqrt(1 - c * c)]])
    assert im.vendi_score(two) == pytest.approx(np.exp(-(0.8 * np.log(0.8) + 0.2 * np.log(0.2))))  # 1.6494
    rows = np.random.default_rng(3).standard_normal((30, 8))
    assert im.vendi_score(rows) == pytest.approx(_vendi_brute(rows), rel=1e-9)
    assert np.isnan(im.vendi_score(np.zeros((0, 8))))

    centres, emb, labels = _clusters(2)
    result = im.intrinsic_metrics(emb, labels, "cosine", 0.5)["diversity"]
    per_identity = [_vendi_brute(emb[labels == k]) for k in np.unique(labels)]
    assert result["kernel"] == "cosine" and result["within_identity"]["count"] == 12
    assert result["within_identity"]["mean"] == pytest.approx(np.mean(per_identity), rel=1e-9)
    _, cents = im.centroids(emb, labels, "cosine")
    assert result["centroids"]["vendi"] == pytest.approx(_vendi_brute(cents), rel=1e-9)
    assert 1.0 < result["centroids"]["vendi"] <= 12 and result["centroids"]["identities"] == 12


def test_a_run_with_no_kept_row_is_refused_not_judged(tmp_path):
    """Every stored row rejected (annotate mode): no metric of n/a and 'no face found', but a one-line error."""
    from typer.testing import CliRunner

    from facefoundry.cli import app

    def unit_rows(unit):
        ids = [i for i in range(unit.start, unit.stop) for _ in range(2)]
        table = rows_table(ids, [0, 1] * (len(ids) // 2), [noise_png(k) for k in range(len(ids))],
                           filter_reason=pa.array(["no_face"] * len(ids), pa.string()))
        return table, len(ids), {"no_face": len(ids)}

    run = tmp_path / "run"
    write_run(run, {"run": {"name": "rejected"}, "identities": {"count": 2}, "images": {"per_identity": 2},
                    "filter": {"mode": "annotate"}}, unit_rows)
    result = CliRunner().invoke(app, ["evaluate", str(run), "--intrinsic"])
    assert result.exit_code == 1, result.output
    assert result.output.startswith(f"error: {run}: no row is kept") and result.output.count("\n") == 1
    assert "rejected all 4 stored row(s)" in result.output and "rejected rows are not judged" in result.output
    assert "no face" not in result.output and not (run / "eval" / "intrinsic.json").exists()
