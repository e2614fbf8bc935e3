"""The per-worker training loop that ``ray.train.torch.TorchTrainer`` runs (DDP; gloo on CPU, NCCL on GPU).

Each epoch: reseed from (seed, epoch, rank), stream this worker's share of the run, train with the step LR
schedule, then rank 0 saves a checkpoint (backbone, head, optimizer, scheduler, scaler, epoch, RNG states,
history) through ``ray.train.report(..., checkpoint=...)`` into ``<ray run>/epoch-NNNN`` and, once Ray has
persisted it, points ``latest.json`` at it (written atomically). The driver resumes from that pointer.
"""

from __future__ import annotations

import json
import random
import tempfile
import time
from bisect import bisect_right
from pathlib import Path

import numpy as np
import torch
from torch import nn

from facefoundry.dataset.atomic import atomic_write_bytes
from facefoundry.evaluate.config import EvaluateConfig
from facefoundry.evaluate.data import augment, to_input
from facefoundry.evaluate.heads import MarginHead, build_head
from facefoundry.faces.iresnet import STANDARD_WIDTHS, IResNet, iresnet

STATE_FILE = "state.pt"
LATEST_FILE = "latest.json"
PROGRESS_FILE = "progress.log"


class Trainee(nn.Module):
    """Backbone + margin head in one module, so DDP synchronises both; ``forward`` returns the loss."""

    def __init__(self, backbone: IResNet, head: MarginHead):
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.head.loss(self.backbone(images), labels)


def build_backbone(cfg: EvaluateConfig) -> IResNet:
    """The configured IResNet (official ``arcface_torch`` key names)."""
    return iresnet(cfg.depth, widths=cfg.widths or STANDARD_WIDTHS, num_features=cfg.embedding_size,
                   dropout=cfg.dropout)


def lr_at(cfg: EvaluateConfig, epoch: int, step: int, steps_per_epoch: int) -> float:
    """Step schedule by epoch (``gamma`` at each milestone) after a linear warmup over ``warmup_epochs``."""
    sched = cfg.schedule
    lr = cfg.optimizer.lr * sched.gamma ** bisect_right(sched.milestones, epoch)
    if sched.warmup_epochs and epoch < sched.warmup_epochs:
        lr *= (epoch * steps_per_epoch + step + 1) / (sched.warmup_epochs * steps_per_epoch)
    return lr


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def _all_sum(values: list[float], device: torch.device) -> list[float]:
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(tensor)
    return tensor.tolist()


def train_loop_per_worker(config: dict) -> None:
    """Ray Train entry point; ``config`` holds the recipe, class count, steps per epoch and output paths."""
    import ray.train
    import ray.train.torch

    cfg = EvaluateConfig.model_validate(config["evaluate"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    torch.set_num_threads(max(1, int(cfg.cpus_per_worker)))
    cuda = device.type == "cuda"
    amp_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(cfg.precision) if cuda else None
    _seed_all(cfg.seed)  # identical initial weights on every rank
    model = Trainee(build_backbone(cfg), build_head(cfg.head, cfg.embedding_size, config["num_classes"]))
    model = ray.train.torch.prepare_model(model)
    inner = model.module if hasattr(model, "module") else model
    opt = cfg.optimizer
    optimizer = torch.optim.SGD(inner.parameters(), lr=opt.lr, momentum=opt.momentum, weight_decay=opt.weight_decay)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype is torch.float16)

    start, history, attempts = 0, [], []
    # A fresh Ray run per attempt: the checkpoint to resume from is the one latest.json named (driver).
    checkpoint = ray.train.get_checkpoint() or (ray.train.Checkpoint(config["resume"]) if config["resume"] else None)
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            state = torch.load(Path(folder) / STATE_FILE, map_location=device, weights_only=False)
        inner.backbone.load_state_dict(state["backbone"])
        inner.head.load_state_dict(state["head"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        start, history, attempts = state["epoch"], state["history"], state["attempts"]
    attempts = [*attempts, start]
    out, steps_per_epoch = Path(config["out"]), config["steps_per_epoch"]
    shard = ray.train.get_dataset_shard("train")
    per_worker = cfg.batch_size // world
    if rank == 0 and amp_dtype is None and cfg.precision != "fp32":
        _log(out, f"precision {cfg.precision} needs a GPU: this CPU run trains in fp32")

    for epoch in range(start, cfg.epochs):
        _seed_all(cfg.seed * 1_000_003 + epoch * 1009 + rank)
        model.train()
        loss_sum, seen, step, lr = 0.0, 0, 0, lr_at(cfg, epoch, 0, steps_per_epoch)
        t0 = time.perf_counter()
        batches = shard.iter_torch_batches(
            batch_size=per_worker, drop_last=True, local_shuffle_buffer_size=cfg.shuffle_buffer or None,
            local_shuffle_seed=cfg.seed * 1_000_003 + epoch if cfg.shuffle_buffer else None, device=device)
        for batch in batches:
            lr = lr_at(cfg, epoch, step, steps_per_epoch)
            for group in optimizer.param_groups:
                group["lr"] = lr
            x = augment(to_input(batch["image"]), batch["identity"].cpu().numpy(),
                        batch["image_index"].cpu().numpy(), epoch, cfg.seed, cfg.augment)
            with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                loss = model(x, batch["label"])
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            loss_sum += float(loss.detach()) * len(x)
            seen += len(x)
            step += 1
        loss_sum, seen = _all_sum([loss_sum, float(seen)], device)
        seconds = time.perf_counter() - t0
        record = {"epoch": epoch + 1, "loss": loss_sum / max(seen, 1.0), "lr": lr, "images": int(seen),
                  "seconds": seconds, "images_per_s": seen / seconds if seconds else 0.0}
        history = [*history, record]
        _report(inner, optimizer, scaler, cfg, epoch + 1, history, attempts, rank, out, config["checkpoint_root"])


def _report(inner: Trainee, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, cfg: EvaluateConfig,
            epoch: int, history: list[dict], attempts: list[int], rank: int, out: Path, root: str) -> None:
    import ray.train

    metrics = {k: v for k, v in history[-1].items() if k != "epoch"} | {"epoch": epoch}
    name = f"epoch-{epoch:04d}"
    if rank != 0:
        ray.train.report(metrics, checkpoint=None)
        return
    with tempfile.TemporaryDirectory(prefix="ff-ckpt-") as tmp:
        torch.save({"backbone": inner.backbone.state_dict(), "head": inner.head.state_dict(),
                    "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
                    "scheduler": {"epoch": epoch, "lr": history[-1]["lr"], "milestones": cfg.schedule.milestones,
                                  "gamma": cfg.schedule.gamma, "warmup_epochs": cfg.schedule.warmup_epochs},
                    "epoch": epoch, "history": history, "attempts": attempts, "rng": _rng_state()},
                   Path(tmp) / STATE_FILE)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp), checkpoint_dir_name=name)
    # Ray has persisted the checkpoint (synchronous upload): only now does the pointer move to it.
    pointer = {"epoch": epoch, "checkpoint": f"{root}/{name}"}
    atomic_write_bytes(out / LATEST_FILE, (json.dumps(pointer, sort_keys=True) + "\n").encode())
    r = history[-1]
    _log(out, f"epoch {epoch}/{cfg.epochs} loss {r['loss']:.4f} lr {r['lr']:.4g} "
              f"images/s {r['images_per_s']:.1f} ({r['images']} images, {r['seconds']:.1f} s)")


def _log(out: Path, line: str) -> None:
    with open(out / PROGRESS_FILE, "a") as fh:
        fh.write(line + "\n")
