"""Train-then-verify on Ray Train: recipe config, margin heads, augmentation, and tiny CPU trainings on
procedurally drawn identities (learning, held-out verification, SIGKILL + resume, 2 gloo workers vs 1)."""

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from trainsets import held_out_pairs, write_trainset

from facefoundry.evaluate.benchmarks import write_bin
from facefoundry.evaluate.config import AugmentConfig, ErasingConfig, HeadConfig, load_evaluate_config
from facefoundry.evaluate.data import augment, decode_batch, scan_identities, shard_paths, to_input
from facefoundry.evaluate.heads import build_head
from facefoundry.evaluate.train import load_embedder, train_folder, train_on_run
from facefoundry.evaluate.verification import evaluate_benchmarks
from facefoundry.sections import ConfigError, RayConfig

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "configs" / "evaluate-tiny.yaml"
IDENTITIES, PER_IDENTITY, REJECTED = 16, 8, 15  # identity 15 has only rejected rows: 15 classes
MIN_HELD_OUT_ACCURACY = 0.8  # 10-fold accuracy measured 0.91, 0.84, 1.00 for seeds 0, 1, 2; chance is 0.5


def test_presets_and_unknown_keys(tmp_path):
    full = load_evaluate_config(REPO / "configs" / "evaluate.yaml")
    assert (full.backbone, full.head.kind, full.head.margin, full.head.scale) == ("iresnet50", "arcface", 0.5, 64.0)
    assert (full.optimizer.lr, full.optimizer.momentum, full.optimizer.weight_decay) == (0.1, 0.9, 5e-4)
    assert (full.batch_size, full.epochs, full.schedule.milestones, full.precision) == (128, 26, [12, 20, 24], "fp16")
    assert full.augment.flip_p == 0.5 and full.augment.erasing == ErasingConfig()
    assert load_evaluate_config(TINY).widths == (8, 16, 32, 64)
    bad = tmp_path / "bad.yaml"
    bad.write_text("evaluate:\n  head:\n    margn: 0.3\n")
    with pytest.raises(ConfigError, match=r"evaluate\.head\.margn: unknown key; allowed: kind, margin, scale"):
        load_evaluate_config(bad)
    with pytest.raises(ConfigError, match="not divisible by workers 3"):
        load_evaluate_config(TINY, ["evaluate.workers=3"])
    with pytest.raises(ConfigError, match="no 'evaluate:' section"):
        load_evaluate_config(REPO / "configs" / "smoke.yaml")


@pytest.mark.parametrize("kind", ["arcface", "cosface"])
def test_margin_heads(kind):
    head = build_head(HeadConfig(kind=kind, margin=0.5, scale=64.0), embedding_size=2, num_classes=3)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]))
    theta = torch.tensor([0.3, 1.2, 3.0])  # the last is past pi - m, where ArcFace continues linearly
    emb = torch.stack([torch.cos(theta), torch.sin(theta)], 1)
    logits = head(emb, torch.zeros(3, dtype=torch.long))
    cos = torch.cos(theta)
    if kind == "arcface":
        expected = torch.where(theta + 0.5 < math.pi, torch.cos(theta + 0.5), cos - 0.5 * math.sin(0.5))
    else:
        expected = cos - 0.5
    torch.testing.assert_close(logits[:, 0], 64 * expected, atol=1e-4, rtol=0)
    torch.testing.assert_close(logits[:, 1], 64 * torch.sin(theta), atol=1e-4, rtol=0)  # other classes: no margin
    assert head.loss(emb, torch.zeros(3, dtype=torch.long)).item() > 0


def test_augment_is_keyed_by_row_not_batch():
    rng = np.random.default_rng(0)
    images = torch.from_numpy(rng.integers(0, 256, (6, 112, 112, 3), dtype=np.uint8))
    ids, idx = np.array([3, 3, 4, 4, 5, 5]), np.array([0, 1, 0, 1, 0, 1])
    cfg = AugmentConfig(flip_p=0.5, erasing=ErasingConfig(p=0.5))
    whole = augment(to_input(images), ids, idx, epoch=2, seed=1, cfg=cfg)
    halves = torch.cat([augment(to_input(images[s]), ids[s], idx[s], 2, 1, cfg) for s in (slice(0, 2), slice(2, 6))])
    torch.testing.assert_close(whole, halves, rtol=0, atol=0)
    assert not torch.equal(whole, augment(to_input(images), ids, idx, epoch=3, seed=1, cfg=cfg))  # new epoch
    plain = to_input(images)
    assert float(plain.min()) >= -1 and float(plain.max()) <= 1
    torch.testing.assert_close(augment(plain.clone(), ids, idx, 2, 1, AugmentConfig(flip_p=0, erasing=None)), plain)
    flipped = augment(plain.clone(), ids, idx, 2, 1, AugmentConfig(flip_p=1, erasing=None))
    torch.testing.assert_close(flipped, plain.flip(3))
    erased = augment(plain.clone(), ids, idx, 2, 1, AugmentConfig(flip_p=0, erasing=ErasingConfig(p=1, value=5.0)))
    areas = (erased == 5.0).all(1).float().mean((1, 2))  # fraction of the image erased, per image
    assert bool(((areas >= 0.015) & (areas <= 0.34)).all()), areas


@pytest.fixture(scope="module")
def trainset(tmp_path_factory) -> Path:
    return write_trainset(tmp_path_factory.mktemp("trainset") / "run", IDENTITIES, PER_IDENTITY,
                          rejected_identity=REJECTED)


def test_scan_and_decode_keep_accepted_rows(trainset):
    paths = shard_paths(trainset)
    classes, rows = scan_identities(paths)
    assert classes.tolist() == list(range(REJECTED)) and rows == REJECTED * PER_IDENTITY
    table = pq.read_table(paths[0], columns=["image", "identity", "image_index", "filter_reason"])
    batch = decode_batch(table, classes)
    assert batch["image"].shape == (4 * PER_IDENTITY, 112, 112, 3) and batch["image"].dtype == np.uint8
    assert batch["label"].tolist() == np.repeat(np.arange(4), PER_IDENTITY).tolist()
    assert (batch["image_index"] < PER_IDENTITY).all()  # the noise row of each identity is dropped


@pytest.fixture(scope="module")
def ray_up():
    from facefoundry.local_ray import ray_session

    with ray_session(RayConfig(num_cpus=4)):  # 4 logical CPUs: 2 training workers + Ray Data's read tasks
        yield


def _copy_run(trainset: Path, dest: Path) -> Path:
    shutil.copytree(trainset / "data", dest / "data")
    return dest


def held_out_accuracy(backbone: Path, folder: Path) -> float:
    images, issame = held_out_pairs(100)
    write_bin(folder / "heldout.bin", list(images), issame.tolist())
    result = evaluate_benchmarks(load_embedder(backbone), folder)
    return float(result["sets"]["heldout"]["accuracy"])


@pytest.fixture(scope="module")
def trained(trainset, ray_up, tmp_path_factory):
    run = _copy_run(trainset, tmp_path_factory.mktemp("one") / "run")
    result = train_on_run(run, load_evaluate_config(TINY), progress=None)
    return result, held_out_accuracy(result.backbone, tmp_path_factory.mktemp("bench-one"))


@pytest.mark.ray
@pytest.mark.train
def test_training_learns_and_verifies_held_out_identities(trained):
    result, accuracy = trained
    losses = [e["loss"] for e in result.summary["history"]]
    assert len(losses) == 4 and losses[-1] < 0.5 * losses[0], losses  # measured 9.46 -> 2.54
    assert json.loads((result.folder / "classes.json").read_text()) == list(range(REJECTED))
    assert accuracy >= MIN_HELD_OUT_ACCURACY, accuracy
    assert (result.folder / "progress.log").read_text().count("images/s") == 4
    lines = []
    again = train_on_run(result.folder.parents[2], load_evaluate_config(TINY), progress=lines.append)
    assert again.summary == result.summary and "already finished" in lines[0]  # not redone
    import ray

    started = {actor["ActorClassName"] for actor in ray._private.state.actors().values()}
    assert "TrainController" in started and "FooterReader" not in started  # footers read once, not per epoch
    state = torch.load(result.backbone, weights_only=True)
    assert {"conv1.weight", "layer1.0.bn1.weight", "fc.weight", "features.weight"} <= set(state)  # official names


@pytest.mark.ray
@pytest.mark.train
def test_sigkill_then_rerun_resumes_to_the_same_weights(trainset, trained, ray_up, tmp_path):
    run = _copy_run(trainset, tmp_path / "run")
    out = train_folder(run, "tiny")
    script = ("import sys; from facefoundry.sections import RayConfig; "
              "from facefoundry.local_ray import ray_session; "
              "from facefoundry.evaluate.config import load_evaluate_config; "
              "from facefoundry.evaluate.train import train_on_run\n"
              "with ray_session(RayConfig(num_cpus=4)): train_on_run(sys.argv[1], load_evaluate_config(sys.argv[2]))")
    proc = subprocess.Popen([sys.executable, "-c", script, str(run), str(TINY)], start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ})
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline and proc.poll() is None and not (out / "latest.json").exists():
            time.sleep(0.1)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver, its embedded Ray and the training worker
        proc.wait()
    killed_at = json.loads((out / "latest.json").read_text())["epoch"]
    assert 1 <= killed_at < 4 and not (out / "result.json").exists(), "the kill did not land mid-training"

    result = train_on_run(run, load_evaluate_config(TINY), progress=None)
    assert result.summary["attempts"][-1] >= 1  # the rerun started from a checkpoint, not from scratch
    assert [e["epoch"] for e in result.summary["history"]] == [1, 2, 3, 4]
    reference = torch.load(trained[0].backbone, weights_only=True)
    resumed = torch.load(result.backbone, weights_only=True)
    for key, value in reference.items():  # fixed seed on CPU: the interrupted run ends on the same weights
        torch.testing.assert_close(resumed[key], value, rtol=0, atol=0, msg=key)


@pytest.mark.ray
@pytest.mark.train
def test_two_gloo_workers_match_one(trainset, trained, ray_up, tmp_path):
    run = _copy_run(trainset, tmp_path / "run")
    result = train_on_run(run, load_evaluate_config(TINY, ["evaluate.workers=2", "evaluate.name=two"]), progress=None)
    one, two = trained[0].summary["history"], result.summary["history"]
    assert [e["images"] for e in two] == [e["images"] for e in one]  # both workers' images are counted
    assert two[-1]["loss"] < 0.5 * two[0]["loss"]
    # Tolerance: each worker normalises its BatchNorm over half the batch and sees another order, so the final
    # loss is within a factor of 2 of one worker's (measured 3.53 vs 2.54) and held-out accuracy within 0.15
    # (measured 1.00 vs 0.91; across seeds one worker alone spans 0.84-1.00).
    assert 0.5 < two[-1]["loss"] / one[-1]["loss"] < 2.0, (one[-1], two[-1])
    accuracy = held_out_accuracy(result.backbone, tmp_path / "bench")
    assert accuracy >= MIN_HELD_OUT_ACCURACY and abs(accuracy - trained[1]) <= 0.15, (accuracy, trained[1])
