"""The dataset card: metadata, every section, the facts it shares with the report, licences, and user edits."""

from __future__ import annotations

import json
from pathlib import Path

import cardrun
import numpy as np
import pytest
import yaml
from cardrun import SECTIONS, make_run, sections
from hubstub import validate_card_yaml
from PIL import Image

from facefoundry import models
from facefoundry.config import validate_config
from facefoundry.filters import face_filter, identity_filter
from facefoundry.publishing import card as card_mod
from facefoundry.publishing import licensing
from facefoundry.publishing.card.user import USER_END, USER_START
from facefoundry.runfolder.runfacts import read_run_facts
from facefoundry.upstream import UPSTREAM

base_run, run, stub = cardrun.base_run, cardrun.run, cardrun.stub  # the shared fixtures

BASE = {"identities": {"count": 4}, "images": {"per_identity": 3}}


def test_card_yaml_and_every_section_filled(run):
    card = card_mod.build_card(run)
    text = str(card)
    assert card_mod.card_problems(text) == []
    meta = yaml.safe_load(text.split("---\n")[1])
    assert meta["license"] == "cc-by-nc-4.0" and "synthetic" in meta["tags"]
    assert meta["size_categories"] == ["n<1K"] and "image-classification" in meta["task_categories"]
    assert meta["configs"] == [{"config_name": "default",
                                "data_files": [{"split": "train", "path": "data/train-*.parquet"}]}]
    names = [f["name"] for f in meta["dataset_info"]["features"]]
    assert names == ["image", "identity", "image_index", "seed", "face_count", "face_score", "face_box",
                     "judge_distance", "filter_reason"]
    assert "extra_gated_fields" not in meta
    found = sections(card.text)
    for name in SECTIONS:
        assert name in found, name
        assert found[name].strip(), f"section {name!r} is empty"
    for column in names:  # every column documented
        assert f"| `{column}` |" in found["Columns"]
    assert "| `identity_mismatch` | 2 |" in found["Filtering"]  # drop counts summed over manifests
    assert "| images accepted by every filter | 10 |" in found["Statistics"]
    assert "10 images of 4 synthetic identities" in text
    assert "FoivosPar/Arc2Face" in found["Upstream models and licences"]
    assert "stable-diffusion-v1-5/stable-diffusion-v1-5" in found["Upstream models and licences"]
    assert "cc-by-nc-sa-4.0" in text and "WebFace42M" in text  # the non-commercial chain is stated
    assert "real_gallery.npy" in found["Leakage screening"] and "64 embeddings" in found["Leakage screening"]
    assert str(run) not in text  # no local paths
    assert "![separation](report/separation.png)" in found["Plots"]
    assert found["Plots"].index("separation.png") < found["Plots"].index("funnel.png")  # the report's order
    assert ".tmp-" not in found["Plots"] and "summary.json" in found["Plots"]
    assert "@inproceedings{paraperas2024arc2face" in found["Citation"]
    assert "Stable Diffusion 1.5 is under creativeml-openrail-m: its use-based restrictions" in found["Misuse"]
    assert "not published" in found["Privacy"]  # identity vectors policy
    assert found["Bias"].strip().startswith("- No demographic attribute was estimated or balanced.")
    assert f"{USER_START}\n{USER_END}" in found["Dataset description"]  # an empty block for the user


def test_unscreened_run_says_so(tmp_path):
    run = make_run(tmp_path / "run")
    found = sections(card_mod.build_card(run).text)
    assert "**Not screened.**" in found["Leakage screening"]


@pytest.mark.parametrize("screened", [True, False])
def test_real_people_card_says_who_the_identities_are_and_what_the_screen_asks(tmp_path, screened):
    """ID-Booth's identities are real people: no "synthetic identities", no sampled vectors, and the leakage
    screen asks whether a person matches someone else (a match to their own photos is the point)."""
    gallery = None
    if screened:
        gallery = tmp_path / "real_gallery.npy"
        np.save(gallery, np.random.default_rng(7).standard_normal((64, 512)).astype(np.float32))
    run = make_run(tmp_path / "run", gallery, extra={"generator": {"kind": "id-booth", "tiny": True}})
    text = card_mod.build_card(run).text
    found = sections(text)
    assert "10 images of 4 real people (4 learned, 3 images rendered each)" in text
    assert "synthetic identities" not in text and "Identities are separated by construction" not in text
    assert "no vector was sampled" in found["Identity sampling"]
    assert "the vectors and every image seed derive" not in found["Identity sampling"]
    leak = found["Leakage screening"]
    assert "matches **someone else**" in leak if screened else "The identities are real people" in leak
    assert "rejected and resampled" not in leak and "Random vectors" not in leak
    if screened:
        assert "the run refuses one who is" in leak and "64 embeddings" in leak


def test_card_is_deterministic_and_atomic(run):
    first = card_mod.write_card(run).read_bytes()
    second = card_mod.write_card(run).read_bytes()
    assert first == second
    assert not list(run.glob(".tmp-*"))
    gated = card_mod.build_card(run, gated=True, license="cc-by-nc-sa-4.0", pretty_name="Faces")
    meta = gated.data.to_dict()
    assert meta["pretty_name"] == "Faces" and meta["license"] == "cc-by-nc-sa-4.0"
    assert "non-commercial" in meta["extra_gated_prompt"] and len(meta["extra_gated_fields"]) >= 3
    assert validate_card_yaml(str(gated)) == []


def test_load_dataset_reads_the_run_folder(run, tmp_path):
    import datasets

    card_mod.write_card(run)
    ds = datasets.load_dataset(str(run), split="train", cache_dir=str(tmp_path / "cache"))
    assert ds.num_rows == 10  # identities.parquet is not picked up: the card's configs point at data/
    assert isinstance(ds[0]["image"], Image.Image) and ds[0]["image"].size == (16, 16)
    assert ds.features["face_box"] == datasets.List(datasets.Value("float32"), length=4)
    assert sorted(set(ds["identity"])) == [0, 1, 2, 3]


def test_card_validates_offline_and_against_the_stub(run, stub):
    from huggingface_hub import DatasetCard

    card = card_mod.build_card(run, gated=True)
    DatasetCard(str(card)).validate()  # offline parse, then POST /api/validate-yaml on the stub
    assert stub.validated == [str(card)]
    broken = DatasetCard("---\nlicense: [1, 2]\nsize_categories: [huge]\n---\n# x\n")
    with pytest.raises(ValueError, match="size_categories"):
        broken.validate()
    assert card_mod.card_problems(str(broken))  # offline checks catch it too


# ---------------------------------------------------------------- one source for each fact


def test_each_filter_documents_every_reason():
    for module in (face_filter, identity_filter):
        assert set(module.REASON_DOCS) == set(module.REASONS), module.__name__
        assert all(len(doc) > 15 for doc in module.REASON_DOCS.values())


def test_id_filter_run_is_described_with_its_own_reasons(tmp_path):
    idf = {"detector_model": "/home/me/models/antelopev2", "encoder_model": "/data/arcface.onnx",
           "min_id_similarity": 0.45, "mode": "annotate"}
    run = make_run(tmp_path / "run", extra={"id_filter": idf}, drops={"low_id_similarity": 1})
    facts = read_run_facts(run)
    assert [f.name for f in facts.filters()] == ["filter", "id_filter"]
    assert facts.drops() == {"low_id_similarity": 2}
    text = card_mod.build_card(run).text
    found = sections(text)
    assert "Identity filter (`id_filter`)" in found["Face filter"] and "at least 0.45" in found["Face filter"]
    row = next(line for line in found["Filtering"].splitlines() if "`low_id_similarity`" in line)
    assert identity_filter.REASON_DOCS["low_id_similarity"] in row  # the filter's own words
    assert "`id_filter_reason`" in found["Filtering"] and "/home/me" not in text and "/data/" not in text
    shared = facts.reason_meaning("no_face")  # both filters use it: each says what it means
    assert face_filter.REASON_DOCS["no_face"] in shared and identity_filter.REASON_DOCS["no_face"] in shared


def test_card_reads_the_typed_config_not_restated_defaults(tmp_path):
    vec = {"generator": {"kind": "vec2face", "mask_ratio_mu": 0.2, "attrop": {"enabled": True}},
           "identities": {"space": "raw", "norm": 22.0}}
    run = make_run(tmp_path / "run", extra=vec)
    found = sections(card_mod.build_card(run).text)
    generation = found["Image generation"]
    assert "mean 0.2, std 0.25" in generation and "the native size (112 px)" in generation
    assert "Images are 112 px" in found["Limitations"]
    upstream = found["Upstream models and licences"]
    assert f"| {UPSTREAM['magface'].licence} |" in upstream  # the registry's words, nothing restated
    assert "apache" not in upstream


@pytest.mark.slow
def test_card_and_report_share_the_run_facts(run):
    from facefoundry.publishing.report import build_report

    summary = build_report(run, run / "report-test", max_rows=100)
    facts = read_run_facts(run)
    assert summary["columns"] == facts.column_stats() and summary["drops"] == facts.drops(with_zeros=True)
    stats = sections(card_mod.build_card(run).text)["Score columns"]
    mean = facts.column_stats()["face_score"]["mean"]
    assert f"| `face_score` | 10 | {mean:.4f} |" in stats


# ---------------------------------------------------------------- licences: one registry


def test_one_licence_registry_for_models_list_card_and_checks():
    spec = models.REGISTRY["vec2face-face-models"]
    assert spec.commercial is False
    assert UPSTREAM["magface"].licence in spec.licence_note  # models list / fetch read the same entry
    assert "mit code" in UPSTREAM["magface"].licence  # IrvingMeng/MagFace LICENSE is MIT
    rows = {r["name"]: (r["licence"], r["commercial"]) for r in models.list_rows()}
    assert rows["vec2face-face-models"] == ("mit*", "no") and rows["sd15"] == ("creativeml-openrail-m", "allowed")
    cfg = validate_config({**BASE, "generator": {"kind": "vec2face", "attrop": {"enabled": True}},
                           "identities": {"count": 4, "space": "raw", "norm": 22.0}})
    comps = {c.name: c for c in licensing.run_components(cfg)}
    for key in ("vec2face-weights", "arcface-r100", "magface", "6drepnet"):
        up = UPSTREAM[key]
        assert (comps[up.name].licence, comps[up.name].commercial) == (up.licence, up.commercial)


def test_licence_checks_and_conflicts():
    default = licensing.run_components(validate_config(BASE))
    assert licensing.licence_conflicts("cc-by-nc-4.0", default) == []
    warnings = licensing.licence_conflicts("MIT", default)
    assert warnings and all("non-commercial" in w for w in warnings) and "Arc2Face" in warnings[0]
    tiny = licensing.run_components(validate_config({**BASE, "generator": {"tiny": True}}))
    assert licensing.licence_conflicts("apache-2.0", tiny) == []
    # the identity filter's InsightFace detector and ArcFace encoder are non-commercial: a tiny run using it is too
    with_idf = licensing.run_components(validate_config({**BASE, "generator": {"tiny": True}, "id_filter": {
        "detector_model": "/home/me/models/antelopev2", "encoder_model": "/data/weights/arcface-r100-glint360k.pth"}}))
    conflicts = licensing.licence_conflicts("apache-2.0", with_idf)
    assert len(conflicts) == 2 and "SCRFD" in conflicts[0] and "ArcFace R100" in conflicts[1]
    assert not any("/home/me" in c.source or "/data" in c.source for c in with_idf)  # file names only
    with pytest.raises(ValueError, match="unknown dataset licence"):
        licensing.check_license("beerware")


def test_shard_metadata_records_the_id_filter_settings():
    from facefoundry.pipelines.runner import file_metadata

    idf = {"detector_model": "/home/me/antelopev2", "encoder_model": "/x/arcface.onnx", "min_blur": 12.5}
    meta = file_metadata(validate_config({**BASE, "id_filter": idf}))
    assert meta["id_filter"]["min_blur"] == 12.5 and meta["id_filter"]["detector_model"] == "antelopev2"
    assert meta["id_filter"]["encoder_model"] == "arcface.onnx"
    assert file_metadata(validate_config(BASE))["id_filter"] is None


# ---------------------------------------------------------------- the user's card


def hand_edit(path: Path) -> str:
    """Edit a card as a user would: text in the user block, a section of their own, a changed phrase."""
    text = path.read_text()
    text = text.replace(f"{USER_START}\n{USER_END}", f"{USER_START}\nCurated by the faces team.\n{USER_END}")
    text = text.replace("## Statistics\n", "## Acknowledgements\n\nThanks to our GPU donors.\n\n## Statistics\n")
    path.write_text(text)
    return text


def test_rewriting_the_card_keeps_the_users_licence_name_and_sections(run):
    path = card_mod.write_card(run, "cc-by-4.0", "Team faces")
    hand_edit(path)
    card_mod.write_card(run)  # regenerate without options
    text = path.read_text()
    meta = yaml.safe_load(text.split("---\n")[1])
    assert (meta["license"], meta["pretty_name"]) == ("cc-by-4.0", "Team faces")
    assert f"{USER_START}\nCurated by the faces team.\n{USER_END}" in text
    found = sections(text)
    assert found["Acknowledgements"].strip() == "Thanks to our GPU donors."
    assert list(found).index("Acknowledgements") == list(found).index("Statistics") - 1  # where the user put it
    assert card_mod.card_problems(text) == []
    card_mod.write_card(run, "cc-by-nc-4.0")  # an explicit licence wins, the user's text stays
    again = path.read_text()
    assert "license: cc-by-nc-4.0" in again and "Thanks to our GPU donors." in again


def test_evaluation_section_shows_measured_results_and_the_anchors(run):
    from facefoundry.evaluate.anchors import ANCHORS
    from facefoundry.evaluate.intrinsic import intrinsic_metrics
    from facefoundry.evaluate.train_verify import RESULT_KIND
    from facefoundry.evaluate.verification import verify_embeddings

    assert "Not evaluated yet" in sections(card_mod.build_card(run).text)["Evaluation"]
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((4, 16))
    labels = np.repeat(np.arange(4), 5)
    emb = centres[labels] + 0.1 * rng.standard_normal((20, 16))
    metrics = intrinsic_metrics(emb, labels, "cosine", 0.3)
    (run / "eval").mkdir()
    (run / "eval" / "intrinsic.json").write_text(json.dumps({"judge": {"name": "dlib"}, "metrics": metrics}))
    pairs = np.repeat(centres[[0, 0, 1, 2]], 2, axis=0) + 0.01 * rng.standard_normal((8, 16))
    lfw = verify_embeddings(np.tile(pairs, (5, 1)), np.tile([True, True, True, True], 5))
    result = {"kind": RESULT_KIND, "name": "r50", "recipe": {"backbone": "iresnet50", "head": {"kind": "arcface"}},
              "training": {"epochs": 26}, "benchmarks": {"sets": {"lfw": lfw}, "standard_average": None}}
    (run / "eval" / "r50.json").write_text(json.dumps(result))
    text = str(card_mod.build_card(run))
    assert card_mod.card_problems(text) == []
    found = sections(text)
    assert "| EER |" in found["Independent judge (no training)"]
    rows = found["Train then verify"]
    assert "| model | LFW | CFP-FP | CPLFW | AgeDB-30 | CALFW | avg (5 sets) |" in rows
    assert f"| r50 (iresnet50 + arcface, 26 ep) | {100 * lfw['accuracy']:.2f} | – | – | – | – | – |" in rows
    for anchor in ANCHORS:
        assert f"| {anchor.system} | {anchor.size} | {anchor.average:.2f} |" in rows
    from facefoundry.publishing.report import _train_verify

    in_report = _train_verify(run)
    assert in_report["results"]["r50"] == {"lfw": lfw["accuracy"], "standard_average": None}
    assert in_report["table"] in rows  # the report and the card show the same table


def test_misuse_names_the_openrail_restrictions_only_of_models_the_run_used(tmp_path):
    run = make_run(tmp_path / "run", extra={"generator": {"kind": "vec2face"},
                                             "identities": {"space": "raw", "norm": 22.0}})
    misuse = sections(card_mod.build_card(run).text)["Misuse"]
    assert "impersonation" in misuse and "openrail" not in misuse.lower()  # Vec2Face does not derive from SD
