"""Train a face-recognition model on a finished run with Ray Train, resume it after a kill, load the result.

``<run>/eval/train/<name>/`` holds everything one training writes:

- ``config.json``: the recipe and its hash (a different recipe under the same name is refused);
- ``classes.json``: the sorted identities present in the kept rows; class id = position in this list;
- ``ray/attempt-N/epoch-NNNN/state.pt``: Ray Train checkpoints (``RunConfig(storage_path=<name>/ray)``);
- ``latest.json``: pointer to the newest persisted checkpoint, written atomically after it;
- ``progress.log``: one line per epoch (loss, lr, images/s), echoed by the driver while training runs;
- ``backbone.pt`` (IResNet state dict in the official ``arcface_torch`` key names) and ``result.json``, written
  last: a training with ``result.json`` is finished and is not redone.

Ray must already be running (``facefoundry.local_ray.ray_session`` starts an embedded one).
"""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from facefoundry.dataset.atomic import atomic_write_bytes
from facefoundry.evaluate.config import EvaluateConfig
from facefoundry.evaluate.data import read_run, scan_identities, shard_paths, to_input
from facefoundry.evaluate.loop import LATEST_FILE, PROGRESS_FILE, STATE_FILE, train_loop_per_worker
from facefoundry.faces.iresnet import IResNet
from facefoundry.layout import EVAL_DIR
from facefoundry.sections import ConfigError

TRAIN_DIR = f"{EVAL_DIR}/train"
RESULT_FILE, BACKBONE_FILE, CONFIG_FILE, CLASSES_FILE = "result.json", "backbone.pt", "config.json", "classes.json"


@dataclass(frozen=True)
class TrainResult:
    """Where a finished training lies and what it measured."""

    folder: Path
    backbone: Path
    summary: dict

    def embedder(self, device: str | torch.device = "cpu", batch_size: int = 256) -> Callable:
        return load_embedder(self.backbone, device, batch_size)


def train_folder(run: str | Path, name: str) -> Path:
    return Path(run) / TRAIN_DIR / name


def _write_json(path: Path, data: object) -> None:
    atomic_write_bytes(path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode())


def _claim_folder(out: Path, cfg: EvaluateConfig, run: Path) -> None:
    """Record the recipe on first start; refuse a different one under the same name."""
    out.mkdir(parents=True, exist_ok=True)
    recorded = out / CONFIG_FILE
    if recorded.exists():
        old = json.loads(recorded.read_text())
        if old.get("config_hash") != cfg.config_hash():
            raise ConfigError(f"{out} holds a training with another recipe (hash {old.get('config_hash')} != "
                              f"{cfg.config_hash()}); set evaluate.name to a new name or delete that folder")
        return
    _write_json(recorded, {"config_hash": cfg.config_hash(), "evaluate": cfg.model_dump(mode="json"),
                           "run": str(run)})


def latest_checkpoint(out: Path) -> tuple[int, Path] | None:
    """(epochs done, checkpoint folder) that ``latest.json`` points to, when that folder holds its state."""
    pointer = out / LATEST_FILE
    if not pointer.exists():
        return None
    data = json.loads(pointer.read_text())
    folder = Path(data["checkpoint"])
    if not (folder / STATE_FILE).is_file():
        raise RuntimeError(f"{pointer} points to {folder}, which has no {STATE_FILE}; delete {out} to start over")
    return int(data["epoch"]), folder


def _next_attempt(out: Path) -> str:
    taken = [int(p.name.split("-")[1]) for p in (out / "ray").glob("attempt-*") if p.name.split("-")[1].isdigit()]
    return f"attempt-{max(taken, default=0) + 1}"


def _echo_progress(path: Path, progress: Callable[[str], None], stop: threading.Event) -> None:
    """Print the lines rank 0 appends to ``progress.log`` while ``fit`` blocks."""
    offset = path.stat().st_size if path.exists() else 0
    while True:
        done = stop.is_set()
        if path.exists():
            with open(path) as fh:
                fh.seek(offset)
                text = fh.read()
            complete = text[:text.rfind("\n") + 1]
            offset += len(complete.encode())
            for line in complete.splitlines():
                progress(line)
        if done:
            return
        stop.wait(0.5)


def finished_training(run: str | Path, cfg: EvaluateConfig,
                      progress: Callable[[str], None] | None = print) -> TrainResult | None:
    """``cfg``'s finished training on ``run`` (said to ``progress``), or None if there is none yet (no Ray needed)."""
    out = train_folder(Path(run), cfg.name)
    if not ((out / RESULT_FILE).exists() and (out / BACKBONE_FILE).exists()):
        return None
    summary = json.loads((out / RESULT_FILE).read_text())
    if summary.get("config_hash") != cfg.config_hash():
        return None
    (progress or (lambda line: None))(f"training {cfg.name} already finished: {out / BACKBONE_FILE}")
    return TrainResult(out, out / BACKBONE_FILE, summary)


def train_on_run(run: str | Path, cfg: EvaluateConfig, progress: Callable[[str], None] | None = print) -> TrainResult:
    """Train ``cfg``'s model on ``run``'s kept rows with Ray Train; resume or return a finished training."""
    import ray
    import ray.train
    from ray.train.torch import TorchTrainer

    run = Path(run)
    out = train_folder(run, cfg.name)
    progress = progress or (lambda line: None)
    finished = finished_training(run, cfg, progress)
    if finished is not None:
        return finished
    if not ray.is_initialized():
        raise RuntimeError("train_on_run needs a running Ray (facefoundry.local_ray.ray_session)")
    paths = shard_paths(run)
    _claim_folder(out, cfg, run)
    classes, rows = scan_identities(paths, cfg.kept_only)
    if len(classes) < 2:
        raise ValueError(f"{run}: {len(classes)} identities among the kept rows; training needs at least 2")
    _write_json(out / CLASSES_FILE, classes.tolist())
    per_worker = cfg.batch_size // cfg.workers
    steps_per_epoch = (rows // cfg.workers) // per_worker
    if steps_per_epoch < 1:
        raise ValueError(f"{run}: {rows} kept rows make no full batch of {cfg.batch_size}; lower evaluate.batch_size")

    resume = latest_checkpoint(out)
    if resume is not None and resume[0] >= cfg.epochs:
        progress(f"training {cfg.name}: all {cfg.epochs} epochs were checkpointed; writing the result")
    else:
        if resume is not None:
            progress(f"training {cfg.name}: resuming after epoch {resume[0]} from {resume[1]}")
        attempt = _next_attempt(out)
        ray_root = (out / "ray").resolve()
        from ray.data import ExecutionOptions

        trainer = TorchTrainer(
            train_loop_per_worker,
            train_loop_config={"evaluate": cfg.model_dump(mode="json"), "num_classes": len(classes),
                               "steps_per_epoch": steps_per_epoch, "out": str(out.resolve()),
                               "checkpoint_root": str(ray_root / attempt),
                               "resume": str(resume[1]) if resume else None},
            scaling_config=ray.train.ScalingConfig(num_workers=cfg.workers, use_gpu=cfg.use_gpu,
                                                   resources_per_worker={"CPU": cfg.cpus_per_worker}),
            run_config=ray.train.RunConfig(name=attempt, storage_path=str(ray_root),
                                           checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2)),
            datasets={"train": read_run(run, classes, cfg.kept_only, cfg.image_size)},
            dataset_config=ray.train.DataConfig(execution_options=ExecutionOptions(preserve_order=True)),
        )
        progress(f"training {cfg.name}: {cfg.backbone} + {cfg.head.kind}, {len(classes)} classes, {rows} images, "
                 f"{cfg.epochs} epochs on {cfg.workers} {'GPU' if cfg.use_gpu else 'CPU'} worker(s)")
        stop = threading.Event()
        echo = threading.Thread(target=_echo_progress, args=(out / PROGRESS_FILE, progress, stop), daemon=True)
        echo.start()
        try:
            trainer.fit()
        finally:
            stop.set()
            echo.join()
    return _finish(run, out, cfg, len(classes), rows)


def _finish(run: Path, out: Path, cfg: EvaluateConfig, num_classes: int, rows: int) -> TrainResult:
    epochs, folder = latest_checkpoint(out) or (0, None)
    if folder is None or epochs < cfg.epochs:
        raise RuntimeError(f"training {cfg.name} stopped after epoch {epochs} of {cfg.epochs}; rerun to resume")
    state = torch.load(folder / STATE_FILE, map_location="cpu", weights_only=False)
    buf = io.BytesIO()
    torch.save(state["backbone"], buf)
    atomic_write_bytes(out / BACKBONE_FILE, buf.getvalue())
    history = state["history"]
    summary = {"config_hash": cfg.config_hash(), "name": cfg.name, "run": str(run), "classes": num_classes,
               "images": rows, "epochs": cfg.epochs, "history": history, "attempts": state["attempts"],
               "final_loss": history[-1]["loss"], "checkpoint": str(folder), "backbone": str(out / BACKBONE_FILE),
               "precision": cfg.precision if cfg.use_gpu else "fp32"}
    _write_json(out / RESULT_FILE, summary)
    return TrainResult(out, out / BACKBONE_FILE, summary)


def load_backbone(path: str | Path, device: str | torch.device = "cpu") -> IResNet:
    """A trained ``backbone.pt`` as an eval-mode IResNet (architecture read off the state dict's keys)."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    layers = tuple(len({k.split(".")[1] for k in state if k.startswith(f"layer{i}.")}) for i in range(1, 5))
    widths = tuple(int(state[f"layer{i}.0.conv1.weight"].shape[0]) for i in range(1, 5))
    model = IResNet(layers, widths, num_features=int(state["fc.weight"].shape[0]))
    model.load_state_dict(state)
    return model.eval().requires_grad_(False).to(device)


def load_embedder(path: str | Path, device: str | torch.device = "cpu",
                  batch_size: int = 256) -> Callable[[np.ndarray], np.ndarray]:
    """``embed(images)``: RGB ``uint8`` ``(n, 112, 112, 3)`` -> raw float32 ``(n, dim)`` features of a trained
    ``backbone.pt`` (the callable ``facefoundry.evaluate.verification`` takes)."""
    model = load_backbone(path, device)

    def embed(images: np.ndarray) -> np.ndarray:
        images = np.asarray(images)
        if images.ndim != 4 or images.shape[3] != 3 or images.dtype != np.uint8:
            raise ValueError(f"embed takes uint8 RGB images (n, 112, 112, 3), got {images.dtype} {images.shape}")
        parts = []
        with torch.inference_mode():
            for i in range(0, len(images), batch_size):
                batch = torch.from_numpy(np.ascontiguousarray(images[i:i + batch_size])).to(device)
                parts.append(model(to_input(batch)).float().cpu().numpy())
        return np.concatenate(parts) if parts else np.zeros((0, model.fc.out_features), np.float32)

    return embed

