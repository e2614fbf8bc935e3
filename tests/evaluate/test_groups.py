"""Per-group (fairness) verification: per-cell accuracy of one set, RFW-style group folders, the card and report."""

import json
from types import SimpleNamespace

import numpy as np
import pytest
from benchfiles import encoded_flat, table_embed

from facefoundry.evaluate.benchmarks import BenchmarkError, check_benchmarks, load_benchmark, sidecar_path, write_bin
from facefoundry.evaluate.groups import accuracy_by_group, read_pair_cells, summarise_groups
from facefoundry.evaluate.train_verify import RESULT_KIND, groups_table_markdown
from facefoundry.evaluate.verification import (
    cell_groups,
    evaluate_benchmarks,
    fold_bounds,
    judged_correct,
    ten_fold_accuracy,
    verify,
)

GRID = [i / 100 for i in range(400)]


def test_cell_accuracy_by_hand():
    """Two folds of five pairs, thresholds 1.0 then 0.6; every judgement below is worked out by hand."""
    distances = [0.1, 0.5, 1.5, 0.9, 1.2, 1.9, 0.8, 1.2, 0.3, 0.7]
    issame = [True, False, False, True, True, False, True, False, True, False]
    cells = ["A", "B"] * 5
    # fold 1 (t = 1.0): 0 right, 1 wrong, 2 right, 3 right, 4 wrong; fold 2 (t = 0.6): 5 right, 6 wrong, 7 right,
    # 8 right, 9 right (0.7 is "different" at 0.6; at 1.0 it would be wrong). A: 0, 2, 8 of 5; B: 3, 5, 7, 9 of 5.
    assert judged_correct(distances, issame, [1.0, 0.6]).tolist() == [True, False, True, True, False,
                                                                      True, False, True, True, True]
    result = cell_groups(np.array(distances), np.array(issame), cells, [1.0, 0.6])
    assert result["groups"]["A"] == {"accuracy": 0.6, "pairs": 5, "genuine_pairs": 4, "impostor_pairs": 1}
    assert result["groups"]["B"] == {"accuracy": 0.8, "pairs": 5, "genuine_pairs": 1, "impostor_pairs": 4}
    assert result["mean"] == pytest.approx(0.7) and result["std"] == pytest.approx(0.1)
    assert result["gap"] == pytest.approx(0.2) and (result["lowest"], result["highest"]) == ("A", "B")
    assert result["source"] == "cells" and result["folds"] == 2 and result["summary"] == "70.00 ± 10.00"


def test_summary_uses_the_population_std_and_the_max_min_gap():
    groups = {name: {"accuracy": a} for name, a in [("African", 0.9), ("Asian", 0.8), ("Caucasian", 0.95),
                                                     ("Indian", 0.85)]}
    out = summarise_groups(groups)
    # mean 0.875; deviations 0.025, 0.075, 0.075, 0.025: population variance 0.0125 / 4
    assert out["mean"] == pytest.approx(0.875) and out["std"] == pytest.approx(np.sqrt(0.0125 / 4))
    assert out["std"] != pytest.approx(np.sqrt(0.0125 / 3))  # not the sample std
    assert out["gap"] == pytest.approx(0.15) and (out["lowest"], out["highest"]) == ("Asian", "Caucasian")
    assert out["order"] == ["African", "Asian", "Caucasian", "Indian"] and "population" in out["std_convention"]
    with pytest.raises(ValueError, match="two or more"):
        summarise_groups({"all": {"accuracy": 1.0}})


def brute_force_cells(distances, issame, cells, folds=10):
    """Per-cell accuracy written plainly: each fold's threshold picked on the other folds (lowest best on the
    grid), each held-out pair judged with it, counted in its cell."""
    n = len(distances)
    sizes = [n // folds + (1 if f < n % folds else 0) for f in range(folds)]
    bounds = [sum(sizes[:f]) for f in range(folds + 1)]
    right, total = {}, {}
    for f in range(folds):
        test = set(range(bounds[f], bounds[f + 1]))
        train = [p for p in range(n) if p not in test]
        best_t, best = None, -1.0
        for t in GRID:
            acc = np.mean([(distances[p] < t) == issame[p] for p in train])
            if acc > best:
                best_t, best = t, acc
        for p in sorted(test):
            total[cells[p]] = total.get(cells[p], 0) + 1
            right[cells[p]] = right.get(cells[p], 0) + int((distances[p] < best_t) == issame[p])
    return {c: right[c] / total[c] for c in total}


def test_cell_accuracy_matches_a_brute_force_recomputation():
    rng = np.random.default_rng(11)
    n = 83  # uneven folds (3 of 9 pairs, 7 of 8)
    cells = rng.choice(["x", "y", "z"], n).tolist()
    issame = rng.random(n) < 0.5
    hardness = {"x": 0.3, "y": 0.6, "z": 0.9}  # the cells differ: z's genuine and impostor scores overlap most
    spread = np.array([hardness[c] for c in cells])
    distances = np.clip(np.where(issame, 1.0 - spread, 1.0 + spread) + rng.normal(0, 0.5, n), 0, 3.99)
    thresholds = ten_fold_accuracy(distances, issame)["thresholds"]
    got = cell_groups(distances, issame, cells, thresholds)
    expected = brute_force_cells(distances.tolist(), issame.tolist(), cells)
    assert {c: g["accuracy"] for c, g in got["groups"].items()} == pytest.approx(expected, abs=1e-12)
    assert len(set(expected.values())) == 3 and got["gap"] > 0.05  # the cells really differ
    assert sum(g["pairs"] for g in got["groups"].values()) == n


def test_fold_bounds_are_the_protocols_folds():
    starts, ends = fold_bounds(23, 10)
    split = np.array_split(np.arange(23), 10)
    assert starts.tolist() == [f[0] for f in split] and (ends - 1).tolist() == [f[-1] for f in split]


def test_accuracy_by_group_checks_lengths():
    with pytest.raises(ValueError, match="3 judgements, 3 issame flags and 2 group labels"):
        accuracy_by_group(np.ones(3, bool), np.ones(3, bool), ["a", "b"])


def unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def easy_and_hard_set(path, cells_of_pairs, hard_cell):
    """A set whose ``hard_cell`` pairs are all misjudged (genuine far, impostors identical) and the others all
    right (genuine identical, impostors orthogonal); returns the embedding table."""
    table = np.eye(64)
    indices, issame, nxt = [], [], 0
    for n, cell in enumerate(cells_of_pairs):
        same = n % 2 == 0
        hard = cell == hard_cell
        if same != hard:  # identical images: distance 0
            indices += [nxt, nxt]
            nxt += 1
        else:  # orthogonal: distance 2
            indices += [nxt, nxt + 1]
            nxt += 2
        issame.append(same)
    write_bin(path, encoded_flat(indices), issame)
    return table


def write_sidecar(bin_path, cells, issame):
    listing = [{"first": [0, 0], "second": [0, 1], "issame": bool(s), "cell": c}
               for c, s in zip(cells, issame, strict=True)]
    sidecar_path(bin_path).write_text(json.dumps({"pairs": len(listing), "pair_list": listing}))


def test_a_set_with_a_pairs_sidecar_reports_its_cells(tmp_path):
    cells = ["easy", "easy", "easy", "easy", "hard"] * 6  # 24 easy pairs, 6 hard ones
    table = easy_and_hard_set(tmp_path / "synth.bin", cells, "hard")
    issame = [n % 2 == 0 for n in range(len(cells))]
    write_sidecar(tmp_path / "synth.bin", cells, issame)
    out = evaluate_benchmarks(table_embed(table), tmp_path)
    # every threshold in (0, 2] gets every easy pair right and every hard one wrong: 0.01 wins on every fold
    assert out["sets"]["synth"]["accuracy"] == pytest.approx(24 / 30)
    group = out["groups"]["sets"]["synth"]
    assert group["thresholds"] == [0.01] * 10 and out["groups"]["errors"] == {}
    assert {c: g["accuracy"] for c, g in group["groups"].items()} == {"easy": 1.0, "hard": 0.0}
    assert (group["mean"], group["std"], group["gap"], group["lowest"]) == (0.5, 0.5, 1.0, "hard")
    assert group["groups"]["hard"]["pairs"] == 6 and group["groups"]["hard"]["genuine_pairs"] == 3
    json.dumps(out, allow_nan=False)

    write_sidecar(tmp_path / "synth.bin", cells, [not s for s in issame])  # a sidecar of another export
    out = evaluate_benchmarks(table_embed(table), tmp_path)
    assert "synth" in out["sets"] and out["groups"]["sets"] == {}  # the set stands, its groups do not
    assert "do not match the 30 pairs of synth.bin" in out["groups"]["errors"]["synth"]


def test_plain_sets_and_one_cell_sidecars_have_no_groups_key(tmp_path):
    cells = ["all"] * 20
    table = easy_and_hard_set(tmp_path / "lfw.bin", cells, "none")
    out = evaluate_benchmarks(table_embed(table), tmp_path)
    assert set(out) == {"sets", "errors", "order", "average_accuracy", "averaged_sets", "standard_average"}
    write_sidecar(tmp_path / "lfw.bin", cells, [n % 2 == 0 for n in range(20)])  # export-pairs without --cells
    assert read_pair_cells(tmp_path / "lfw.bin", np.arange(20) % 2 == 0) == cells
    assert "groups" not in evaluate_benchmarks(table_embed(table), tmp_path)
    assert read_pair_cells(tmp_path / "nothing.bin", np.ones(2, bool)) is None


def rfw_group(path, pairs, hard_genuine):
    """``pairs`` pairs alternating genuine / impostor over 64-d one-hot embeddings; the genuine pairs at the
    positions in ``hard_genuine`` are two orthogonal faces (distance 2, like the impostors)."""
    indices, issame, nxt = [], [], 0
    for n in range(pairs):
        same = n % 2 == 0
        if same and n not in hard_genuine:
            indices += [nxt, nxt]
            nxt += 1
        else:
            indices += [nxt, nxt + 1]
            nxt += 2
        issame.append(same)
    write_bin(path, encoded_flat(indices), issame)


def test_rfw_folder_verifies_each_group_on_its_own(tmp_path):
    rfw = tmp_path / "rfw"
    rfw_group(rfw / "African.bin", 20, hard_genuine=())
    rfw_group(rfw / "Asian.bin", 20, hard_genuine=(0, 10))  # pairs 0 and 10: folds 1 and 6 get 1 of 2 right
    rfw_group(rfw / "Indian.bin", 40, hard_genuine=(8,))  # fold 3 (pairs 8..11) gets 3 of 4 right
    embed = table_embed(np.eye(64))
    progress = []
    out = evaluate_benchmarks(embed, tmp_path, progress=lambda *args: progress.append(args))
    assert out["sets"] == {} and out["errors"] == {}  # no .bin at the top: the groups alone
    group = out["groups"]["sets"]["rfw"]
    accuracies = {name: g["accuracy"] for name, g in group["groups"].items()}
    # by hand: Asian 8 folds at 1.0 and 2 at 0.5; Indian 9 folds at 1.0 and 1 at 0.75
    assert accuracies == pytest.approx({"African": 1.0, "Asian": 0.9, "Indian": 0.975})
    for name in accuracies:  # the RFW definition: each group's own 10-fold protocol
        assert accuracies[name] == verify(embed, load_benchmark(rfw / f"{name}.bin"))["accuracy"]
    assert group["mean"] == pytest.approx((1.0 + 0.9 + 0.975) / 3)
    assert group["std"] == pytest.approx(np.std([1.0, 0.9, 0.975])) and group["gap"] == pytest.approx(0.1)
    assert group["lowest"] == "Asian" and group["groups"]["Indian"]["pairs"] == 40 and group["source"] == "folder"
    assert ("rfw/Asian", 40, 40) in progress
    assert check_benchmarks(tmp_path) == {}  # a folder of groups alone is something to verify

    (rfw / "Indian.bin").write_bytes(b"not a pickle")
    out = evaluate_benchmarks(embed, tmp_path)
    assert out["groups"]["sets"] == {} and "a group cannot be verified" in out["groups"]["errors"]["rfw"]
    assert "Indian: " in out["groups"]["errors"]["rfw"] and "rfw/Indian" in check_benchmarks(tmp_path)
    (rfw / "Indian.bin").unlink()
    (rfw / "Asian.bin").unlink()
    out = evaluate_benchmarks(embed, tmp_path)
    assert "needs one per group, two or more" in out["groups"]["errors"]["rfw"]
    (rfw / "African.bin").unlink()
    with pytest.raises(BenchmarkError, match="no .bin benchmark files found"):
        evaluate_benchmarks(embed, tmp_path)


def group_result(name="r50", sets=None):
    rfw = summarise_groups({"African": {"accuracy": 0.9}, "Asian": {"accuracy": 0.95}})
    return {"kind": RESULT_KIND, "name": name, "recipe": {"backbone": "iresnet50", "head": {"kind": "arcface"}},
            "training": {"epochs": 26},
            "benchmarks": {"sets": sets or {}, "standard_average": None,
                           "groups": {"sets": {"rfw": {"source": "folder", **rfw}}, "errors": {}}}}


def test_card_and_report_show_the_groups(tmp_path):
    from facefoundry.publishing.card.evaluation import evaluation
    from facefoundry.publishing.report import GROUPS_PLOT, _train_verify

    assert groups_table_markdown([{**group_result(), "benchmarks": {"sets": {}}}]) == ""
    row = ("| r50 (iresnet50 + arcface, 26 ep) | rfw (folder) | African 90.00 · Asian 95.00 | 92.50 ± 2.50 "
           "| 5.00 (African lowest) |")
    assert groups_table_markdown([group_result()]).splitlines()[2] == row
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "r50.json").write_text(json.dumps(group_result()))
    card = "\n".join(evaluation(SimpleNamespace(facts=SimpleNamespace(run_dir=tmp_path))))
    assert "### Per-group verification" in card and row in card
    report = tmp_path / "report"
    report.mkdir()
    summary = _train_verify(tmp_path, report, "run")
    assert summary["groups"]["r50: rfw"] == {"mean": pytest.approx(0.925), "std": pytest.approx(0.025),
                                             "gap": pytest.approx(0.05),
                                             "lowest": "African", "highest": "Asian",
                                             "accuracy": {"African": 0.9, "Asian": 0.95}}
    assert summary["plots"] == [GROUPS_PLOT] and (report / GROUPS_PLOT).read_bytes()[:4] == b"\x89PNG"
    (tmp_path / "eval" / "r50.json").unlink()
    assert "groups" not in _train_verify(tmp_path, report, "run") and not (report / GROUPS_PLOT).exists()


def test_train_and_verify_keeps_a_folder_of_groups_alone(tmp_path, monkeypatch):
    """Plumbing with a fake finished training: a --benchmarks folder holding only RFW-style groups is checked before
    training, verified, written to eval/<name>.json, and not mistaken for a failed verification."""
    from pathlib import Path

    from facefoundry.evaluate import train as train_module
    from facefoundry.evaluate.config import load_evaluate_config
    from facefoundry.evaluate.train_verify import read_results, train_and_verify

    trained = SimpleNamespace(summary={"epochs": 1}, embedder=lambda device: table_embed(np.eye(64)))
    monkeypatch.setattr(train_module, "finished_training", lambda *a, **k: trained)
    bench = tmp_path / "bench"
    rfw_group(bench / "rfw" / "African.bin", 20, hard_genuine=())
    rfw_group(bench / "rfw" / "Asian.bin", 20, hard_genuine=(0, 10))
    cfg = load_evaluate_config(Path(__file__).resolve().parents[2] / "configs" / "evaluate-tiny.yaml")
    lines = []
    result = train_and_verify(tmp_path / "run", cfg, bench, progress=lines.append)
    [stored] = read_results(tmp_path / "run")
    group = stored["benchmarks"]["groups"]["sets"]["rfw"]
    assert group == json.loads(json.dumps(result["benchmarks"]["groups"]["sets"]["rfw"]))
    assert group["gap"] == pytest.approx(0.1) and stored["benchmarks"]["sets"] == {}
    assert any("rfw/Asian: 40 images embedded" in line for line in lines), lines
