"""MTCNN face detector (Zhang et al. 2016: P-Net, R-Net, O-Net) in the layout of facenet-pytorch 2.6.0.

This is a reimplementation, written here, of the detector behind ``facenet_pytorch.MTCNN(...).detect(img,
landmarks=False)`` with its default settings. It loads facenet-pytorch's own weight files
``facenet_pytorch/data/{pnet,rnet,onet}.pt`` (plain state dicts, converted there from the original Caffe/TF models)
into networks with the same module names, strictly. The weights come from the installed ``facenet-pytorch`` wheel
(``pip install --no-deps facenet-pytorch==2.6.0``; MIT licence), found without importing it, or from a folder
passed in. Neither facenet_pytorch nor torchvision is imported.

For the same image it gives facenet-pytorch's boxes and probabilities (tests/faces/test_mtcnn.py compares both
on real photos: equal to 1e-3 px and 1e-5). The steps, in facenet-pytorch's order and float32 arithmetic:

- input: RGB ``H x W x 3`` (uint8 or float 0..255) as float32 NCHW; every network sees ``(x - 127.5) * 0.0078125``;
  all resampling is ``F.interpolate(mode="area")``;
- pyramid: scales ``12 / min_face_size * factor**k`` while ``min(H, W) * scale >= 12``; the image at each scale
  is ``(int(H * s + 1), int(W * s + 1))``;
- P-Net: every output cell with face probability ``>= thresholds[0]`` gives the box
  ``floor((2 * cell + 1) / s), floor((2 * cell + 12) / s)``; NMS (IoU 0.5) per scale and image, then NMS (IoU 0.7)
  per image over all scales; box regression with widths ``x2 - x1``; squared (``rerec``);
- R-Net: crops (coordinates truncated, clipped to the image the way facenet-pytorch's ``pad`` does) resized to
  24 x 24; probability ``> thresholds[1]`` kept; NMS (IoU 0.7) per image; regression with widths ``x2 - x1 + 1``;
  squared;
- O-Net: crops resized to 48 x 48; probability ``> thresholds[2]`` kept; regression as in R-Net; NMS per image
  with overlap = intersection over the smaller box (``+1`` pixel areas, 'Min' mode), dropping overlaps ``> 0.7``;
- output per image: the boxes ordered largest area first (facenet-pytorch's ``select_largest=True``), with their
  probabilities; ``None`` where no face was found.

NMS keeps the best-scored box and drops those overlapping it by more than the threshold, best first; IoU in the
first two stages is computed as ``torchvision.ops.nms`` does (areas ``(x2 - x1) * (y2 - y1)``).

Where it differs from facenet-pytorch: ``detect`` always returns per-image lists (facenet-pytorch unwraps a single
image) and ``None`` probabilities for an image without a face (facenet-pytorch: ``[None]``); NMS runs on each
image's own coordinates (torchvision and facenet-pytorch shift the boxes of image ``i`` by ``i * (max + 1)``, which
may round the IoU of later images of a batch in its last bit); an image under ``min_face_size`` pixels, or a box
whose crop is empty, gives no face here where facenet-pytorch raises.
"""

from __future__ import annotations

import importlib.util
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from facefoundry.faces.face_weights import FaceWeightsError, load_strict, tensor_dict

WEIGHT_FILES = {"pnet": "pnet.pt", "rnet": "rnet.pt", "onet": "onet.pt"}
INSTALL_HINT = (
    "pip install --no-deps facenet-pytorch==2.6.0 (it ships the MTCNN weights; --no-deps because it pins an old "
    "torch and torchvision), or pass the folder holding pnet.pt, rnet.pt and onet.pt"
)
NMS_THRESHOLDS = (0.5, 0.7, 0.7)  # P-Net within a scale, P-Net across scales and R-Net, O-Net ('Min' overlap)
NETWORK_BATCH = 512  # facenet-pytorch feeds R-Net and O-Net at most this many crops at a time


class MTCNNWeightsNotFoundError(FileNotFoundError):
    """The MTCNN weight folder or one of its files is missing; the message names it and the fix."""


def mtcnn_weights_dir(path: str | Path | None = None) -> Path:
    """The folder holding ``pnet.pt``, ``rnet.pt`` and ``onet.pt``: ``path`` if given, else the installed
    facenet_pytorch package's ``data`` folder (located with ``importlib.util.find_spec``, not imported).

    Raises :class:`MTCNNWeightsNotFoundError` (one line: what is missing, and the fix) when the folder or a file
    is missing.
    """
    if path is None:
        spec = importlib.util.find_spec("facenet_pytorch")
        locations = list(spec.submodule_search_locations or []) if spec else []
        if not locations:
            raise MTCNNWeightsNotFoundError(
                f"MTCNN weights not found: facenet_pytorch is not installed; {INSTALL_HINT}"
            )
        folder = Path(locations[0]) / "data"
    else:
        folder = Path(path).expanduser()
    if not folder.is_dir():
        raise MTCNNWeightsNotFoundError(f"MTCNN weight folder {folder} does not exist; {INSTALL_HINT}")
    missing = [name for name in WEIGHT_FILES.values() if not (folder / name).is_file()]
    if missing:
        raise MTCNNWeightsNotFoundError(f"MTCNN weights {', '.join(missing)} missing from {folder}; {INSTALL_HINT}")
    return folder


# --- the three networks (module names as in facenet-pytorch, so its state dicts load strictly) -------------------


class PNet(nn.Module):
    """Proposal network: fully convolutional, 12 x 12 window, stride 2. ``forward`` -> (box offsets, probs)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 10, 3), nn.PReLU(10)
        self.pool1 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv2, self.prelu2 = nn.Conv2d(10, 16, 3), nn.PReLU(16)
        self.conv3, self.prelu3 = nn.Conv2d(16, 32, 3), nn.PReLU(32)
        self.conv4_1 = nn.Conv2d(32, 2, 1)  # face / not face
        self.conv4_2 = nn.Conv2d(32, 4, 1)  # box offsets

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.prelu3(self.conv3(self.prelu2(self.conv2(x))))
        return self.conv4_2(x), F.softmax(self.conv4_1(x), dim=1)


def _flatten_transposed(x: torch.Tensor) -> torch.Tensor:
    """N x C x H x W -> N x (W * H * C): the order the converted dense weights expect."""
    return x.permute(0, 3, 2, 1).reshape(x.shape[0], -1)


class RNet(nn.Module):
    """Refinement network on 24 x 24 crops. ``forward`` -> (box offsets, probs)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 28, 3), nn.PReLU(28)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2, self.prelu2 = nn.Conv2d(28, 48, 3), nn.PReLU(48)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3, self.prelu3 = nn.Conv2d(48, 64, 2), nn.PReLU(64)
        self.dense4, self.prelu4 = nn.Linear(576, 128), nn.PReLU(128)
        self.dense5_1 = nn.Linear(128, 2)
        self.dense5_2 = nn.Linear(128, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.prelu3(self.conv3(x))
        x = self.prelu4(self.dense4(_flatten_transposed(x)))
        return self.dense5_2(x), F.softmax(self.dense5_1(x), dim=1)


class ONet(nn.Module):
    """Output network on 48 x 48 crops. ``forward`` -> (box offsets, probs); the landmark head ``dense6_3`` is
    loaded (strict state dict) but not evaluated."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 32, 3), nn.PReLU(32)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2, self.prelu2 = nn.Conv2d(32, 64, 3), nn.PReLU(64)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3, self.prelu3 = nn.Conv2d(64, 64, 3), nn.PReLU(64)
        self.pool3 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv4, self.prelu4 = nn.Conv2d(64, 128, 2), nn.PReLU(128)
        self.dense5, self.prelu5 = nn.Linear(1152, 256), nn.PReLU(256)
        self.dense6_1 = nn.Linear(256, 2)
        self.dense6_2 = nn.Linear(256, 4)
        self.dense6_3 = nn.Linear(256, 10)  # five landmarks

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.pool3(self.prelu3(self.conv3(x)))
        x = self.prelu4(self.conv4(x))
        x = self.prelu5(self.dense5(_flatten_transposed(x)))
        return self.dense6_2(x), F.softmax(self.dense6_1(x), dim=1)


def load_network(network: nn.Module, path: Path, name: str) -> nn.Module:
    """``network`` with the plain state dict in ``path`` loaded strictly (a wrong, missing or extra key is
    refused with a :class:`~facefoundry.faces.face_weights.FaceWeightsError` naming it); eval mode."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except Exception as exc:  # noqa: BLE001 - any read failure becomes one message naming the file
        raise FaceWeightsError(f"cannot read MTCNN {name} weights {path}: {' '.join(str(exc).split())}") from exc
    load_strict(network, tensor_dict(state, path, f"MTCNN {name}"), path, f"MTCNN {name}")
    return network.eval()


# --- non-maximum suppression --------------------------------------------------------------------------------------


def nms(boxes: np.ndarray, scores: np.ndarray, groups: np.ndarray, threshold: float) -> np.ndarray:
    """Greedy NMS within each group (image) as ``torchvision.ops.batched_nms``: indices of the kept boxes, best
    score first (ties: lower index first). A box is dropped when its IoU with a kept box of its group is
    ``> threshold``; areas are ``(x2 - x1) * (y2 - y1)``, in the boxes' float type."""
    boxes = np.asarray(boxes)
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    x1, y1, x2, y2 = (boxes[:, k] for k in range(4))
    areas = (x2 - x1) * (y2 - y1)
    zero = boxes.dtype.type(0)
    keep = []
    while order.size:
        i, rest = order[0], order[1:]
        keep.append(i)
        w = np.maximum(zero, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]))
        h = np.maximum(zero, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]))
        inter = w * h
        iou = inter / (areas[i] + areas[rest] - inter)
        order = rest[(groups[rest] != groups[i]) | ~(iou.astype(np.float64) > threshold)]
    return np.asarray(keep, dtype=np.int64)


def nms_min(boxes: np.ndarray, scores: np.ndarray, groups: np.ndarray, threshold: float) -> np.ndarray:
    """facenet-pytorch's last-stage NMS: overlap = intersection / smaller area, with ``+1`` pixel sizes; a box is
    dropped when its overlap with a kept box of its group is ``> threshold``. Boxes are taken best first in the
    order of ``np.argsort(scores)`` read from the end (as facenet-pytorch takes them, all groups in one order);
    returns the kept indices in the order kept."""
    x1, y1, x2, y2 = (boxes[:, k] for k in range(4))
    one, zero = boxes.dtype.type(1), boxes.dtype.type(0)
    areas = (x2 - x1 + one) * (y2 - y1 + one)
    remaining = np.argsort(scores)  # ascending; the best is last
    keep = []
    while remaining.size:
        i, rest = remaining[-1], remaining[:-1]
        keep.append(i)
        w = np.maximum(zero, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + one)
        h = np.maximum(zero, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + one)
        overlap = (w * h) / np.minimum(areas[i], areas[rest])
        remaining = rest[(groups[rest] != groups[i]) | (overlap.astype(np.float64) <= threshold)]
    return np.asarray(keep, dtype=np.int64)


def _nms_torch(boxes: torch.Tensor, scores: torch.Tensor, groups: torch.Tensor, threshold: float) -> torch.Tensor:
    keep = nms(boxes.cpu().numpy(), scores.cpu().numpy(), groups.cpu().numpy(), threshold)
    return torch.from_numpy(keep).to(boxes.device)


# --- box arithmetic ----------------------------------------------------------------------------------------------


def _square(boxes: torch.Tensor) -> torch.Tensor:
    """Each box made a square of its longer side about the same centre (facenet-pytorch's ``rerec``)."""
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    side = torch.maximum(w, h)
    x1 = boxes[:, 0] + w * 0.5 - side * 0.5
    y1 = boxes[:, 1] + h * 0.5 - side * 0.5
    return torch.stack([x1, y1, x1 + side, y1 + side, boxes[:, 4]], dim=1)


def _regress(boxes: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """R-Net / O-Net box regression (facenet-pytorch's ``bbreg``): offsets scaled by the ``+1`` pixel size."""
    w = boxes[:, 2] - boxes[:, 0] + 1
    h = boxes[:, 3] - boxes[:, 1] + 1
    scale = torch.stack([w, h, w, h], dim=1)
    return torch.cat([boxes[:, :4] + offsets * scale, boxes[:, 4:5]], dim=1)


def _crop_windows(boxes: torch.Tensor, width: int, height: int) -> np.ndarray:
    """Integer crop windows ``(row0, row1, col0, col1)`` (slice bounds) for each box, as facenet-pytorch's
    ``pad`` and its slicing: coordinates truncated toward zero; x1, y1 at least 1, x2 at most W, y2 at most H;
    the crop is ``[y1 - 1 : y2, x1 - 1 : x2]``."""
    corners = boxes[:, :4].trunc().int().cpu().numpy()
    x1, y1 = np.maximum(corners[:, 0], 1), np.maximum(corners[:, 1], 1)
    x2, y2 = np.minimum(corners[:, 2], width), np.minimum(corners[:, 3], height)
    return np.stack([y1 - 1, y2, x1 - 1, x2], axis=1)


def _normalise(x: torch.Tensor) -> torch.Tensor:
    return (x - 127.5) * 0.0078125


# --- the detector --------------------------------------------------------------------------------------------------


class MTCNN:
    """MTCNN face detector equal to facenet-pytorch 2.6.0's ``MTCNN().detect(img, landmarks=False)`` (defaults:
    ``select_largest=True``). See the module docstring for the steps.

    ``weights_dir``: folder with ``pnet.pt``, ``rnet.pt``, ``onet.pt`` (default: the installed facenet-pytorch's,
    see :func:`mtcnn_weights_dir`).
    """

    def __init__(
        self,
        weights_dir: str | Path | None = None,
        device: str | torch.device = "cpu",
        min_face_size: int = 20,
        thresholds: Sequence[float] = (0.6, 0.7, 0.7),
        factor: float = 0.709,
    ) -> None:
        folder = mtcnn_weights_dir(weights_dir)
        self.device = torch.device(device)
        self.min_face_size = min_face_size
        self.thresholds = tuple(float(t) for t in thresholds)
        self.factor = factor
        self.pnet = load_network(PNet(), folder / WEIGHT_FILES["pnet"], "P-Net").to(self.device)
        self.rnet = load_network(RNet(), folder / WEIGHT_FILES["rnet"], "R-Net").to(self.device)
        self.onet = load_network(ONet(), folder / WEIGHT_FILES["onet"], "O-Net").to(self.device)

    def detect(self, images) -> tuple[list[np.ndarray | None], list[np.ndarray | None]]:
        """Faces in one RGB image ``H x W x 3`` or a batch ``N x H x W x 3`` of equal size (numpy array or torch
        tensor, uint8 or float 0..255; a tensor that requires grad is detached).

        Returns ``(boxes, probs)``, one entry per image (a single image gives lists of one): a float32 ``(k, 4)``
        array of ``x1, y1, x2, y2`` boxes, largest area first, and the ``(k,)`` face probabilities in the same
        order; both ``None`` for an image without a face. ``boxes[i][0]`` is the face facenet-pytorch's
        ``MTCNN(keep_all=False)`` crops.
        """
        with torch.no_grad():
            batch = self._as_batch(images)
            found = self._detect_batch(batch)
        boxes_out: list[np.ndarray | None] = []
        probs_out: list[np.ndarray | None] = []
        for rows in found:
            if rows is None:
                boxes_out.append(None)
                probs_out.append(None)
                continue
            order = np.argsort((rows[:, 2] - rows[:, 0]) * (rows[:, 3] - rows[:, 1]))[::-1]  # largest first
            rows = rows[order]
            boxes_out.append(rows[:, :4].copy())
            probs_out.append(rows[:, 4].copy())
        return boxes_out, probs_out

    # --- steps -----------------------------------------------------------------------------------------------------

    def _as_batch(self, images) -> torch.Tensor:
        """float32 N x 3 x H x W on the device."""
        if isinstance(images, torch.Tensor):
            x = images.detach()
        else:
            x = torch.from_numpy(np.array(images))  # a copy: read-only arrays (np.asarray of a PIL image) are fine
        if x.ndim == 3:
            x = x.unsqueeze(0)
        if x.ndim != 4 or x.shape[-1] != 3:
            raise ValueError(f"MTCNN.detect takes an H x W x 3 RGB image or an N x H x W x 3 batch, got shape "
                             f"{tuple(x.shape)}")
        return x.to(self.device).permute(0, 3, 1, 2).to(torch.float32)

    def _scales(self, height: int, width: int) -> list[float]:
        m = 12.0 / self.min_face_size
        side = min(height, width) * m
        scales, scale = [], m
        while side >= 12:
            scales.append(scale)
            scale *= self.factor
            side *= self.factor
        return scales

    def _proposals(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """P-Net over the pyramid: (boxes n x 5 [x1, y1, x2, y2, prob] after regression and squaring, image
        index per box)."""
        height, width = batch.shape[2:]
        kept_rows, kept_images = [], []
        for scale in self._scales(height, width):
            resized = F.interpolate(batch, size=(int(height * scale + 1), int(width * scale + 1)), mode="area")
            offsets, probs = self.pnet(_normalise(resized))
            face = probs[:, 1]
            hits = face >= self.thresholds[0]
            cells = hits.nonzero()  # (image, row, col), row-major
            xy = cells[:, [2, 1]].to(offsets.dtype)
            top_left = ((2 * xy + 1) / scale).floor()
            bottom_right = ((2 * xy + 12) / scale).floor()
            rows = torch.cat([top_left, bottom_right, face[hits].unsqueeze(1), offsets.permute(0, 2, 3, 1)[hits]],
                             dim=1)
            pick = _nms_torch(rows[:, :4], rows[:, 4], cells[:, 0], NMS_THRESHOLDS[0])
            kept_rows.append(rows[pick])
            kept_images.append(cells[pick, 0])
        if not kept_rows:
            return batch.new_zeros((0, 5)), torch.zeros(0, dtype=torch.long, device=batch.device)
        rows, images = torch.cat(kept_rows), torch.cat(kept_images)
        pick = _nms_torch(rows[:, :4], rows[:, 4], images, NMS_THRESHOLDS[1])
        rows, images = rows[pick], images[pick]
        w, h = rows[:, 2] - rows[:, 0], rows[:, 3] - rows[:, 1]
        boxes = torch.stack([rows[:, 0] + rows[:, 5] * w, rows[:, 1] + rows[:, 6] * h,
                             rows[:, 2] + rows[:, 7] * w, rows[:, 3] + rows[:, 8] * h, rows[:, 4]], dim=1)
        return _square(boxes), images

    def _crops(self, batch: torch.Tensor, boxes: torch.Tensor, images: torch.Tensor, size: int):
        """Area-resampled, normalised crops of each box (``size`` x ``size``), and a mask of the boxes whose crop
        is not empty (facenet-pytorch would fail on an empty one; those boxes are dropped here)."""
        height, width = batch.shape[2:]
        windows = _crop_windows(boxes, width, height)
        crops, valid = [], np.zeros(len(windows), dtype=bool)
        for k, (r0, r1, c0, c1) in enumerate(windows.tolist()):
            if r1 > r0 and c1 > c0:
                valid[k] = True
                crops.append(F.interpolate(batch[images[k], :, r0:r1, c0:c1].unsqueeze(0), size=(size, size),
                                           mode="area"))
        mask = torch.from_numpy(valid).to(boxes.device)
        if not crops:
            return batch.new_zeros((0, 3, size, size)), mask
        return _normalise(torch.cat(crops)), mask

    @staticmethod
    def _run(network: nn.Module, crops: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        outs = [network(crops[i:i + NETWORK_BATCH]) for i in range(0, len(crops), NETWORK_BATCH)]
        return torch.cat([o[0] for o in outs]), torch.cat([o[1] for o in outs])

    def _refine(self, batch, boxes, images, network, size, threshold):
        """R-Net or O-Net: crop each box, score it, keep those with ``prob > threshold``. Returns the kept boxes
        (``[x1, y1, x2, y2, new prob]``, not yet regressed), their box offsets and image indices."""
        crops, valid = self._crops(batch, boxes, images, size)
        boxes, images = boxes[valid], images[valid]
        if len(crops) == 0:
            return boxes[:0], boxes.new_zeros((0, 4)), images[:0]
        offsets, probs = self._run(network, crops)
        score = probs[:, 1]
        passed = score > threshold
        rows = torch.cat([boxes[passed, :4], score[passed].unsqueeze(1)], dim=1)
        return rows, offsets[passed], images[passed]

    def _detect_batch(self, batch: torch.Tensor) -> list[np.ndarray | None]:
        """Per image: float32 rows ``[x1, y1, x2, y2, prob]`` in facenet-pytorch's pre-selection order, or None."""
        boxes, images = self._proposals(batch)
        if len(boxes):
            boxes, offsets, images = self._refine(batch, boxes, images, self.rnet, 24, self.thresholds[1])
            pick = _nms_torch(boxes[:, :4], boxes[:, 4], images, NMS_THRESHOLDS[1])
            boxes = _square(_regress(boxes[pick], offsets[pick]))
            images = images[pick]
        if len(boxes):
            boxes, offsets, images = self._refine(batch, boxes, images, self.onet, 48, self.thresholds[2])
            boxes = _regress(boxes, offsets)
            pick = torch.from_numpy(nms_min(boxes[:, :4].cpu().numpy(), boxes[:, 4].cpu().numpy(),
                                            images.cpu().numpy(), NMS_THRESHOLDS[2]))
            boxes, images = boxes[pick.to(boxes.device)], images[pick.to(boxes.device)]
        rows, images = boxes.cpu().numpy(), images.cpu().numpy()
        return [rows[images == i] if (images == i).any() else None for i in range(batch.shape[0])]
