import json

import numpy as np
import pytest
from benchfiles import encoded_flat, table_embed, two_tone

from facefoundry.evaluate.benchmarks import BenchmarkError, load_benchmark, write_bin
from facefoundry.evaluate.scores import tar_at_far
from facefoundry.evaluate.verification import (
    embed_benchmark,
    evaluate_benchmarks,
    pair_distances,
    ten_fold_accuracy,
    verify,
    verify_embeddings,
)


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def brute_force(distances, issame, folds=10):
    """The protocol written plainly: loops over folds, thresholds and pairs."""
    n = len(distances)
    grid = [i / 100 for i in range(400)]
    sizes = [n // folds + (1 if f < n % folds else 0) for f in range(folds)]
    bounds = [sum(sizes[:f]) for f in range(folds + 1)]
    accs, chosen = [], []
    for f in range(folds):
        test = range(bounds[f], bounds[f + 1])
        train = [p for p in range(n) if p not in test]
        best_t, best_acc = None, -1.0
        for t in grid:
            acc = sum((distances[p] < t) == issame[p] for p in train) / len(train)
            if acc > best_acc:
                best_t, best_acc = t, acc
        accs.append(sum((distances[p] < best_t) == issame[p] for p in test) / len(test))
        chosen.append(best_t)
    return accs, chosen


def fixed_embeddings(pairs: int, seed: int, noise: float) -> tuple[np.ndarray, np.ndarray]:
    """Pairs of 32-d unit vectors: genuine = a vector and a noisy copy, impostor = two random vectors."""
    rng = np.random.default_rng(seed)
    issame = rng.random(pairs) < 0.5
    first = unit(rng.normal(size=(pairs, 32)))
    second = np.where(issame[:, None], first + noise * rng.normal(size=(pairs, 32)), rng.normal(size=(pairs, 32)))
    emb = np.empty((2 * pairs, 32))
    emb[0::2], emb[1::2] = first, unit(second)
    return emb, issame


def test_ten_folds_match_brute_force():
    emb, issame = fixed_embeddings(157, seed=3, noise=0.9)  # 157 pairs: uneven folds (7 of 16, 3 of 15)
    distances = pair_distances(emb)
    got = ten_fold_accuracy(distances, issame)
    accs, chosen = brute_force(distances.tolist(), issame.tolist())
    assert got["fold_accuracies"] == pytest.approx(accs, abs=1e-12)
    assert got["thresholds"] == pytest.approx(chosen, abs=1e-9)
    assert got["accuracy"] == pytest.approx(np.mean(accs)) and got["accuracy_std"] == pytest.approx(np.std(accs))
    assert 0.7 < got["accuracy"] < 0.99 and len(set(got["thresholds"])) > 1  # a case where folds disagree


def test_separable_pairs_score_100_with_lowest_threshold():
    emb, issame = fixed_embeddings(200, seed=1, noise=0.0)
    result = verify_embeddings(emb, issame)
    assert result["accuracy"] == 1.0 and result["accuracy_std"] == 0.0 and result["summary"] == "100.00 ± 0.00"
    assert result["thresholds"] == [0.01] * 10  # every threshold in (0, ~1) is perfect: the lowest wins
    assert result["tar_at_far"]["1e-03"]["tar"] == 1.0 and result["eer"] == 0.0


def test_random_embeddings_score_about_half():
    rng = np.random.default_rng(7)
    issame = rng.random(3000) < 0.5
    result = verify_embeddings(rng.normal(size=(6000, 128)), issame)
    assert 0.46 < result["accuracy"] < 0.54
    assert 0.4 < result["eer"] < 0.6 and result["tar_at_far"]["1e-03"]["tar"] < 0.02


def test_tar_at_far_uses_cosine_of_the_same_pairs():
    emb, issame = fixed_embeddings(400, seed=5, noise=0.7)
    result = verify_embeddings(emb, issame)
    cosine = np.sum(emb[0::2] * emb[1::2], axis=1)
    expected = tar_at_far(cosine[issame], cosine[~issame], 1e-3)
    assert result["tar_at_far"]["1e-03"]["tar"] == pytest.approx(expected["tar"])
    assert result["tar_at_far"]["1e-03"]["threshold"] == pytest.approx(expected["threshold"])
    assert result["tar_at_far"]["1e-04"]["resolvable"] is False  # ~200 impostors cannot resolve 1e-4
    json.dumps(result, allow_nan=False)


def test_bin_file_end_to_end_separable(tmp_path):
    rng = np.random.default_rng(0)
    table = unit(rng.normal(size=(40, 16)))
    issame = [bool(i % 2) for i in range(30)]
    indices = []
    for i, same in enumerate(issame):  # genuine: the same identity twice; impostor: two different ones
        indices += [i, i] if same else [i, i + 1]
    bench = load_benchmark(write_bin(tmp_path / "lfw.bin", encoded_flat(indices), issame))
    embed = table_embed(table)
    seen = []
    result = verify(embed, bench, batch_size=7, progress=lambda name, done, total: seen.append((name, done, total)))
    assert result["accuracy"] == 1.0 and result["display_name"] == "LFW" and result["pairs"] == 30
    assert embed.seen == 2 * 60  # every image and its flip
    assert seen[0] == ("lfw", 7, 60) and seen[-1] == ("lfw", 60, 60) and len(seen) == 9


def test_flip_embeddings_are_summed_then_normalised(tmp_path):
    table = np.array([[1.0, 0, 0], [0, 3.0, 0], [0, 0, 1.0], [2.0, 2.0, 0]])
    images = [two_tone(0, 1), two_tone(2, 2), two_tone(3, 0), two_tone(1, 1)]
    bench = load_benchmark(write_bin(tmp_path / "x.bin", images, [True, False]))
    emb = embed_benchmark(table_embed(table), bench, batch_size=3)
    expected = unit(np.array([table[0] + table[1], table[2] + table[2], table[3] + table[0], 2 * table[1]]))
    assert np.allclose(emb, expected)


def test_folder_with_a_bad_set_runs_the_good_one(tmp_path):
    table = unit(np.random.default_rng(2).normal(size=(30, 8)))
    issame = [True, False] * 10
    indices = [i for k in range(20) for i in ((k, k) if issame[k] else (k, k + 1))]
    write_bin(tmp_path / "lfw.bin", encoded_flat(indices), issame)
    (tmp_path / "cfp_fp.bin").write_bytes(b"corrupt, not a pickle")
    broken = encoded_flat(indices)
    broken[5] = b"\x89PNG broken"
    write_bin(tmp_path / "agedb_30.bin", broken, issame)
    write_bin(tmp_path / "tiny.bin", encoded_flat([1, 1, 2, 3]), [True, False])  # 2 pairs < 10 folds
    out = evaluate_benchmarks(table_embed(table), tmp_path)
    assert list(out["sets"]) == ["lfw"] and out["sets"]["lfw"]["accuracy"] == 1.0
    assert out["order"] == ["lfw", "cfp_fp", "agedb_30", "tiny"] and list(out["errors"]) == out["order"][1:]
    assert "cfp_fp.bin: not a readable benchmark pickle" in out["errors"]["cfp_fp"]
    assert "agedb_30.bin: image 5 cannot be decoded" in out["errors"]["agedb_30"]
    assert "2 pairs, fewer than the 10 folds" in out["errors"]["tiny"]
    assert out["average_accuracy"] == 1.0 and out["averaged_sets"] == ["lfw"] and out["standard_average"] is None
    json.dumps(out, allow_nan=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(BenchmarkError, match="no .bin benchmark files"):
        evaluate_benchmarks(table_embed(table), tmp_path / "empty")


def test_standard_average_needs_all_five(tmp_path):
    rng = np.random.default_rng(4)
    table = unit(rng.normal(size=(200, 8)))
    for name in ["lfw", "cfp_fp", "cplfw", "agedb_30", "calfw"]:
        issame = (rng.random(20) < 0.5).tolist()
        write_bin(tmp_path / f"{name}.bin", encoded_flat(rng.integers(0, 200, 40)), issame)
    out = evaluate_benchmarks(table_embed(table), tmp_path)
    assert out["order"] == ["lfw", "cfp_fp", "cplfw", "agedb_30", "calfw"] and not out["errors"]
    accs = [out["sets"][n]["accuracy"] for n in out["order"]]
    assert out["standard_average"] == pytest.approx(np.mean(accs)) == out["average_accuracy"]


def test_embed_output_is_checked(tmp_path):
    bench = load_benchmark(write_bin(tmp_path / "x.bin", encoded_flat([1, 2]), [True]))
    with pytest.raises(ValueError, match=r"embed returned shape \(1, 4\) for 2 images"):
        embed_benchmark(lambda images: np.ones((1, 4)), bench)
    with pytest.raises(ValueError, match="NaN"):
        embed_benchmark(lambda images: np.full((len(images), 4), np.nan), bench)
    with pytest.raises(ValueError, match="need 2 <= folds <= pairs"):
        ten_fold_accuracy(np.zeros(5), np.ones(5, bool))
