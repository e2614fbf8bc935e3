"""Verification pairs from a finished run as an InsightFace .bin set, read back two ways (no Ray)."""

import io
import json
import pickle
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import pytest
from PIL import Image
from runfolder import write_run
from typer.testing import CliRunner

from facefoundry.cli import app
from facefoundry.dataset.manifest import plan_units
from facefoundry.dataset.schema import image_struct
from facefoundry.evaluate.benchmarks import load_benchmark
from facefoundry.evaluate.verification import ten_fold_accuracy
from facefoundry.exporters.export import ExportError
from facefoundry.exporters.pairs import PairsError, export_pairs, sidecar_path
from facefoundry.layout import manifest_file

PER_IDENTITY, PER_UNIT, PAIRS = 4, 4, 6
CELLS = ["gender", "age_group"]
# identity -> (gender, age_group): three identities in each of four cells, two with no gender (null).
LABELS = {i: (("female", "male")[i % 2], ("20-39", "40-59")[i // 2 % 2]) for i in range(12)}
LABELS |= {12: (None, "20-39"), 13: (None, "20-39")}
REJECTED = (5, 0)  # filter_reason set, and its gender is wrong: identity 5's cell comes from image 1
ID_REJECTED = (7, 3)  # id_filter_reason set


def pixels(identity: int, index: int, size: int) -> np.ndarray:
    """A different image for every (identity, index); PNG keeps it exactly."""
    image = np.zeros((size, size, 3), np.uint8)
    image[..., 0], image[..., 1] = identity * 15 % 256, index * 50  # distinct for 256 identities
    image[..., 2] = np.arange(size, dtype=np.uint8)[None, :]
    return image


def png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def make_run(out: Path, labels: dict = LABELS, size: int = 112) -> Path:
    def unit_rows(unit):
        rows = [(i, j) for i in range(unit.start, unit.stop) for j in range(PER_IDENTITY)]
        gender = ["male" if (i, j) == REJECTED else labels[i][0] for i, j in rows]
        table = pa.table({
            "image": image_struct([png(pixels(i, j, size)) for i, j in rows], [f"{i}_{j}.png" for i, j in rows]),
            "identity": pa.array([i for i, _ in rows], pa.int64()),
            "image_index": pa.array([j for _, j in rows], pa.int32()),
            "filter_reason": pa.array(["no_face" if r == REJECTED else None for r in rows], pa.string()),
            "id_filter_reason": pa.array(["too_far" if r == ID_REJECTED else None for r in rows], pa.string()),
            "gender": pa.array(gender, pa.string()),
            "age_group": pa.array([labels[i][1] for i, _ in rows], pa.string()),
        })
        return table, len(rows), {}

    write_run(out, {"run": {"name": "pairs"}, "identities": {"count": len(labels)},
                    "images": {"per_identity": PER_IDENTITY},
                    "output": {"identities_per_unit": PER_UNIT, "row_group_size": 3}}, unit_rows)
    return out


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("run"))


@pytest.fixture(scope="module")
def exported(run_dir, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("out") / "synth.bin"
    return out, export_pairs(run_dir, out, CELLS, PAIRS, seed=0)


def cell_of(identity: int) -> str:
    gender, age = LABELS[identity]
    return f"gender={gender or 'unknown'},age_group={age}"


def test_round_trip_counts_and_pairs(exported):
    out, summary = exported
    side = json.loads(sidecar_path(out).read_text())
    listing = side.pop("pair_list")
    assert side == json.loads(json.dumps(summary)) and side["seed"] == 0 and side["cells"] == CELLS
    assert set(summary["per_cell"]) == {cell_of(i) for i in LABELS} and summary["unknown_identities"]["gender"] == 2
    for label, cell in summary["per_cell"].items():
        assert (cell["genuine"], cell["impostor"], cell["shortfall"]) == (6, 6, {"genuine": 0, "impostor": 0})
        assert sum(e["cell"] == label and e["issame"] for e in listing) == 6
        assert sum(e["cell"] == label and not e["issame"] for e in listing) == 6
    assert summary["per_cell"]["gender=male,age_group=20-39"]["images"] == 11  # (5, 0) rejected
    assert summary["per_cell"]["gender=male,age_group=40-59"]["images"] == 11  # (7, 3) rejected
    assert summary["skipped"] == {"rejected": 2} and summary["pairs"] == len(listing) == 60

    bench = load_benchmark(out)
    raw_images, raw_issame = pickle.load(out.open("rb"))  # the plain reader other people's code uses
    assert bench.num_pairs == len(raw_issame) == 60 and list(bench.issame) == raw_issame
    lookup = {pixels(i, j, 112).tobytes(): (i, j) for i in LABELS for j in range(PER_IDENTITY)}
    decoded = []
    for data in raw_images:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        assert image.shape == (112, 112, 3)
        decoded.append(lookup[cv2.cvtColor(image, cv2.COLOR_BGR2RGB).tobytes()])
    assert (bench.images() == np.stack([pixels(*d, 112) for d in decoded])).all()
    seen = set()
    for n, entry in enumerate(listing):
        a, b = tuple(entry["first"]), tuple(entry["second"])
        assert (decoded[2 * n], decoded[2 * n + 1]) == (a, b) and entry["issame"] == raw_issame[n]
        assert REJECTED not in (a, b) and ID_REJECTED not in (a, b)
        assert entry["cell"] == cell_of(a[0]) == cell_of(b[0])
        assert (a[0] == b[0] and a[1] != b[1]) if entry["issame"] else a[0] != b[0]
        assert frozenset((a, b)) not in seen
        seen.add(frozenset((a, b)))
    genuine_ids = [e["first"][0] for e in listing if e["issame"]]
    assert all(genuine_ids.count(i) == 2 for i in range(12))  # round-robin: 6 pairs over 3 identities


def test_each_fold_holds_both_kinds_and_a_mix_of_cells(exported):
    out, _ = exported
    listing = json.loads(sidecar_path(out).read_text())["pair_list"]
    issame = load_benchmark(out).issame
    folds = np.array_split(np.arange(issame.size), 10)  # the contiguous folds of ten_fold_accuracy
    for fold in folds:
        assert issame[fold].any() and not issame[fold].all()
        assert len({listing[k]["cell"] for k in fold}) >= 2
    result = ten_fold_accuracy(np.where(issame, 0.5, 1.5), issame)
    assert result["accuracy"] == 1.0


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_cells_take_turns_across_the_folds(tmp_path, seed):
    """4 cells x 50 pairs of each kind: every one of the 10 folds holds 5 +- 1 of each cell's genuine pairs and
    5 +- 1 of its impostor pairs (the cells take turns, as promised), both kinds and every cell."""
    labels = {i: (("female", "male")[i % 2], ("20-39", "40-59")[i // 2 % 2]) for i in range(40)}
    run = make_run(tmp_path / "run", labels)
    summary = export_pairs(run, tmp_path / "turns.bin", CELLS, 50, seed=seed)
    assert summary["pairs"] == 400 and len(summary["per_cell"]) == 4
    listing = json.loads(sidecar_path(tmp_path / "turns.bin").read_text())["pair_list"]
    for fold in np.array_split(np.arange(len(listing)), 10):  # the contiguous folds of ten_fold_accuracy
        for label in summary["per_cell"]:
            for same in (True, False):
                held = sum(listing[k]["cell"] == label and listing[k]["issame"] == same for k in fold)
                assert abs(held - 5) <= 1, (label, same, held)


def test_determinism(run_dir, exported, tmp_path):
    out, _ = exported
    again = export_pairs(run_dir, tmp_path / "again.bin", CELLS, PAIRS, seed=0)
    assert (tmp_path / "again.bin").read_bytes() == out.read_bytes() and again["pairs"] == 60
    export_pairs(run_dir, tmp_path / "other.bin", CELLS, PAIRS, seed=1)
    pairs = [json.loads(sidecar_path(p).read_text())["pair_list"] for p in (out, tmp_path / "other.bin")]
    assert {json.dumps(p) for p in pairs[0]} != {json.dumps(p) for p in pairs[1]}


def test_one_cell_without_columns(run_dir, tmp_path):
    summary = export_pairs(run_dir, tmp_path / "all.bin", [], 20)
    assert list(summary["per_cell"]) == ["all"] and summary["per_cell"]["all"]["identities"] == 14
    assert load_benchmark(tmp_path / "all.bin").num_pairs == 40


def test_include_rejected_pairs_the_rejected_rows_too(run_dir, tmp_path):
    summary = export_pairs(run_dir, tmp_path / "all.bin", CELLS, PAIRS, include_rejected=True)
    assert summary["per_cell"]["gender=male,age_group=20-39"]["images"] == 12
    assert summary["per_cell"]["gender=male,age_group=40-59"]["images"] == 12
    assert "rejected" not in summary["skipped"] and summary["include_rejected"]


def test_errors(run_dir, exported, tmp_path):
    with pytest.raises(PairsError, match=r"no column 'race'; available: .*age_group"):
        export_pairs(run_dir, tmp_path / "x.bin", ["gender", "race"], PAIRS)
    # the null-gender cell has two identities of four images: 2 * 6 genuine and 16 impostor pairs
    with pytest.raises(PairsError, match=r"cell gender=unknown,age_group=20-39 has 2 identities with 8 images: "
                                         r"12 genuine and 16 impostor pairs possible, 13 of each asked "
                                         r"\(--allow-short takes what there is\)"):
        export_pairs(run_dir, tmp_path / "x.bin", CELLS, 13)
    assert not (tmp_path / "x.bin").exists() and not sidecar_path(tmp_path / "x.bin").exists()
    summary = export_pairs(run_dir, tmp_path / "x.bin", CELLS, 13, allow_short=True)
    short = {k: c["shortfall"] for k, c in summary["per_cell"].items() if any(c["shortfall"].values())}
    assert short == {"gender=unknown,age_group=20-39": {"genuine": 1, "impostor": 0}}
    assert summary["genuine"] == 5 * 13 - 1 and load_benchmark(tmp_path / "x.bin").num_pairs == 129
    out, _ = exported
    before = out.read_bytes()
    with pytest.raises(PairsError, match="exists; add --overwrite"):
        export_pairs(run_dir, out, CELLS, PAIRS, seed=3)
    assert out.read_bytes() == before
    export_pairs(run_dir, tmp_path / "x.bin", CELLS, PAIRS, overwrite=True)
    assert load_benchmark(tmp_path / "x.bin").num_pairs == 60
    assert json.loads(sidecar_path(tmp_path / "x.bin").read_text())["pairs"] == 60
    assert not list(tmp_path.glob(".tmp-*"))


def test_unfinished_run_and_image_size(tmp_path):
    labels = {i: ("female", "20-39") for i in range(5)}
    run = make_run(tmp_path / "small", labels, size=64)
    with pytest.raises(PairsError, match="is 64x64; .* 112x112"):
        export_pairs(run, tmp_path / "a.bin", [], 4)
    export_pairs(run, tmp_path / "a.bin", [], 4, resize=True)
    assert load_benchmark(tmp_path / "a.bin").images().shape == (16, 112, 112, 3)
    (run / manifest_file(plan_units(5, PER_UNIT)[1].name)).unlink()
    with pytest.raises(ExportError, match="incomplete: 1 of 2 units"):
        export_pairs(run, tmp_path / "b.bin", [], 4)


def test_cli(run_dir, tmp_path):
    out = tmp_path / "cli.bin"
    args = ["export-pairs", str(run_dir), "--out", str(out), "--cells", "gender,age_group", "--pairs-per-cell", "6"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0 and "60 pairs (30 genuine, 30 impostor) in 5 cells" in result.output
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1 and "error:" in result.output and "overwrite" in result.output
    result = CliRunner().invoke(app, [*args[:4], "--cells", "race", "--overwrite"])
    assert result.exit_code == 1 and "no column 'race'" in result.output


def test_impostor_pairs_possible_are_counted_in_full(tmp_path):
    """8 identities of 4 images: 8 * 6 = 48 genuine and (32 ** 2 - 8 * 16) / 2 = 448 impostor pairs."""
    run = make_run(tmp_path / "eight", {i: ("female", "20-39") for i in range(8)})
    with pytest.raises(PairsError, match=r"8 identities with 30 images: 42 genuine and 393 impostor pairs possible, "
                                         r"49 of each asked"):  # (5, 0) and (7, 3) are rejected
        export_pairs(run, tmp_path / "a.bin", [], 49)
    with pytest.raises(PairsError, match=r"8 identities with 32 images: 48 genuine and 448 impostor pairs possible"):
        export_pairs(run, tmp_path / "a.bin", [], 449, include_rejected=True)


@pytest.mark.parametrize("identities,kind", [(1, "impostor"), (2, None)])
def test_allow_short_refuses_a_set_of_one_kind(tmp_path, identities, kind):
    run = make_run(tmp_path / "one", {i: ("female", "20-39") for i in range(identities)})
    if kind is None:  # two identities: both kinds, short but allowed
        assert export_pairs(run, tmp_path / "a.bin", [], 20, allow_short=True)["impostor"] == 16
        return
    with pytest.raises(PairsError, match=r"6 genuine and 0 impostor pairs: a verification set needs both kinds; "
                                         r"impostor pairs need two identities in a cell"):
        export_pairs(run, tmp_path / "a.bin", [], 20, allow_short=True)
    assert not (tmp_path / "a.bin").exists()
    result = CliRunner().invoke(app, ["export-pairs", str(run), "--out", str(tmp_path / "a.bin"), "--allow-short"])
    assert result.exit_code == 1 and result.output.startswith(f"error: {run}: 6 genuine and 0 impostor pairs")


def test_cli_errors_print_no_class_name(run_dir, tmp_path):
    args = ["export-pairs", str(run_dir), "--out", str(tmp_path / "c.bin"), "--cells", "gender,age_group"]
    result = CliRunner().invoke(app, [*args, "--pairs-per-cell", "13"])
    assert result.exit_code == 1 and result.output.startswith("error: cell gender=unknown,age_group=20-39 has")
    assert "PairsError" not in result.output and "--allow-short" in result.output
    assert CliRunner().invoke(app, [*args, "--pairs-per-cell", "6"]).exit_code == 0
    result = CliRunner().invoke(app, [*args, "--pairs-per-cell", "6"])
    assert result.exit_code == 1 and result.output.startswith(f"error: {tmp_path / 'c.bin'} exists;"), result.output


def test_evaluate_reads_the_cells_of_an_exported_set(exported):
    """The sidecar export-pairs writes gives ``evaluate`` each pair's cell: one cell whose identities all share one
    embedding gets its impostors wrong (0.5), the others every pair right (the threshold is 0.01 on every fold)."""
    from facefoundry.evaluate.verification import evaluate_benchmarks

    out, summary = exported
    bad = cell_of(0)
    table = np.eye(len(LABELS))
    table[[i for i in LABELS if cell_of(i) == bad]] = table[0]

    def embed(images: np.ndarray) -> np.ndarray:  # channel 0 spells the identity (pixels), flipped or not
        return table[images[:, 0, 0, 0].astype(int) // 15]

    groups = evaluate_benchmarks(embed, out)["groups"]["sets"]["synth"]
    assert {c: g["accuracy"] for c, g in groups["groups"].items()} == {c: 0.5 if c == bad else 1.0
                                                                        for c in summary["per_cell"]}
    assert groups["mean"] == pytest.approx(0.9) and groups["std"] == pytest.approx(0.2)
    assert groups["gap"] == 0.5 and groups["lowest"] == bad and groups["thresholds"] == [0.01] * 10
    assert all(g["pairs"] == 2 * PAIRS for g in groups["groups"].values())
