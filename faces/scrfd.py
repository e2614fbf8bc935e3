"""SCRFD face detector (InsightFace ONNX models such as ``det_10g.onnx`` or ``scrfd_10g_bnkps.onnx``).

Behaviour follows ``insightface.model_zoo.scrfd.SCRFD`` (2.1) for one input size, so both give the same boxes
and keypoints for the same model and image:

- letterbox: the image is resized (bilinear) to fit ``input_size`` = ``(width, height)`` keeping its aspect
  ratio, anchored top-left, and padded with black on the right or bottom;
- input: ``(pixel - 127.5) / 128`` in RGB order, NCHW float32 (InsightFace takes BGR and swaps to RGB);
- outputs: 3 strides (8, 16, 32) with 2 anchors per location and keypoints -> 9 outputs ordered scores x3,
  box distances x3, keypoint offsets x3 (5 strides 8..128 with 1 anchor -> 15 outputs also decode);
  rows enumerate locations row-major with the anchors of one location adjacent;
- decoding: anchor centre ``(x * stride, y * stride)``; box = centre -/+ distances (left, top, right, bottom)
  times stride; keypoint k = centre + offset_k times stride; then divided by the letterbox scale;
- scores ``>= det_thresh`` (0.5) are kept, sorted by score (stable), then greedy NMS with InsightFace's
  ``+1`` pixel areas, dropping overlaps with IoU ``> nms_thresh`` (0.4).

Images here are RGB ``H x W x 3`` uint8. Generated and tightly cropped faces fill most of the frame and are
better found with a small input (e.g. 256x256; Arc2Face issues #17, #31).

The ONNX helpers at the top (providers, model files, pack folders) are shared with :mod:`.arcface`.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

MEAN, STD = 127.5, 128.0
LAYOUTS = {9: ((8, 16, 32), 2), 15: ((8, 16, 32, 64, 128), 1)}  # outputs -> (strides, anchors per location)
NO_KPS_LAYOUTS = {6, 10}


# --- ONNX model files and sessions (shared with arcface.py) ----------------------------------------------


class OnnxModelError(ValueError):
    """An ONNX model file that is unreadable or not the kind of model expected (the message says why)."""


class MissingModelError(FileNotFoundError):
    """A model file or pack folder that does not exist, or a pack folder without the model asked for."""


def onnx_providers(providers: list | None = None) -> list:
    """``providers`` as given, else CUDA (when this onnxruntime has it) followed by CPU."""
    import onnxruntime as ort

    if providers is not None:
        return list(providers)
    if "CUDAExecutionProvider" in ort.get_available_providers():
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def open_session(path: Path, providers: list | None = None, threads: int | None = None):
    """An ``onnxruntime.InferenceSession`` for ``path``; unreadable files raise :class:`OnnxModelError`."""
    import onnxruntime as ort

    chosen = onnx_providers(providers)
    names = [p[0] if isinstance(p, tuple) else p for p in chosen]
    if "CUDAExecutionProvider" in names and hasattr(ort, "preload_dlls"):
        try:
            ort.preload_dlls()  # find CUDA/cuDNN installed from pip wheels
        except Exception:  # best effort; the session reports what it could not load
            pass
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=chosen)
    except Exception as exc:  # onnxruntime raises its own exception types for corrupt or invalid graphs
        raise OnnxModelError(f"{path}: not a loadable ONNX model ({type(exc).__name__}: {exc})") from exc


def graph_summary(path: Path) -> tuple[list, int]:
    """``(input dims, number of outputs)`` of an ONNX file's first real input, read without a session.

    Dims are ints, or None where symbolic. Initializers listed as inputs (old exporters) are skipped.
    """
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise OnnxModelError(f"{path}: not a readable ONNX file ({type(exc).__name__}: {exc})") from exc
    weights = {t.name for t in model.graph.initializer}
    inputs = [v for v in model.graph.input if v.name not in weights]
    dims = [d.dim_value or None for d in inputs[0].type.tensor_type.shape.dim] if inputs else []
    return dims, len(model.graph.output)


def is_detector(dims: list, outputs: int) -> bool:
    """InsightFace's routing rule: a graph with 5 or more outputs is a detector."""
    return outputs >= 5


def is_recognizer(dims: list, outputs: int) -> bool:
    """A 112x112 RGB recognition model with one output (ArcFace family)."""
    return outputs == 1 and len(dims) == 4 and dims[1] == 3 and dims[2] == 112 and dims[3] == 112


def resolve_model(path: str | Path, kind: str, accept) -> Path:
    """The ONNX file at ``path``, or the one ``accept(dims, outputs)`` picks out of a pack folder.

    ``kind`` names the model in messages ("detection", "recognition").
    """
    path = Path(path).expanduser()
    if path.is_file():
        return path
    if not path.exists():
        raise MissingModelError(f"{kind} model not found: {path} does not exist")
    files = sorted(path.glob("*.onnx"))
    matches = [f for f in files if accept(*graph_summary(f))]
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        names = ", ".join(f.name for f in matches)
        raise OnnxModelError(f"{path}: several {kind} models ({names}); pass the file path instead")
    nested = [d for d in path.iterdir() if d.is_dir() and any(d.glob("*.onnx"))]
    hint = f"; the models are in the nested folder {nested[0]} (unzipped twice?)" if nested else ""
    found = ", ".join(f.name for f in files) or "no .onnx files"
    raise MissingModelError(f"no {kind} model in pack folder {path} ({found}){hint}")


# --- SCRFD ---------------------------------------------------------------------------------------------


def letterbox(image: np.ndarray, input_size: tuple[int, int]) -> tuple[np.ndarray, float]:
    """``(canvas, scale)``: ``image`` resized into a ``(width, height)`` black canvas, top-left anchored."""
    width, height = input_size
    h, w = image.shape[:2]
    image_ratio = float(h) / w
    if image_ratio > float(height) / width:
        new_h = height
        new_w = int(new_h / image_ratio)
    else:
        new_w = width
        new_h = int(new_w * image_ratio)
    new_w, new_h = max(new_w, 1), max(new_h, 1)
    canvas = np.zeros((height, width, 3), dtype=np.uint8)
    canvas[:new_h, :new_w] = cv2.resize(image, (new_w, new_h))
    return canvas, float(new_h) / h


def anchor_centres(height: int, width: int, stride: int, anchors: int) -> np.ndarray:
    """``(height * width * anchors, 2)`` float32 centres ``(x, y) * stride``, row-major, anchors adjacent."""
    ys, xs = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    centres = (np.stack([xs, ys], axis=-1).astype(np.float32) * stride).reshape(-1, 2)
    return np.repeat(centres, anchors, axis=0)


def nms(boxes: np.ndarray, thresh: float) -> np.ndarray:
    """Indices kept by greedy NMS over ``(N, 5)`` boxes, best score first (InsightFace's ``+1`` areas)."""
    x0, y0, x1, y1, scores = (boxes[:, i] for i in range(5))
    areas = (x1 - x0 + 1) * (y1 - y0 + 1)
    order = np.argsort(-scores, kind="stable")
    keep = []
    while order.size:
        best, rest = order[0], order[1:]
        keep.append(best)
        w = np.maximum(0.0, np.minimum(x1[best], x1[rest]) - np.maximum(x0[best], x0[rest]) + 1)
        h = np.maximum(0.0, np.minimum(y1[best], y1[rest]) - np.maximum(y0[best], y0[rest]) + 1)
        inter = w * h
        iou = inter / (areas[best] + areas[rest] - inter)
        order = rest[iou <= thresh]
    return np.asarray(keep, dtype=np.int64)


def _empty() -> tuple[np.ndarray, np.ndarray]:
    return np.zeros((0, 5), np.float32), np.zeros((0, 5, 2), np.float32)


class ScrfdDetector:
    """SCRFD with keypoints on ONNX Runtime. ``detect(rgb) -> (boxes (N, 5), kps (N, 5, 2))``, float32.

    ``model_path``: an ``.onnx`` file or a pack folder (``buffalo_l``, ``antelopev2``) holding one detector.
    ``input_size``: ``(width, height)``, multiples of 32; must equal the model's own size if it fixes one.
    Boxes are ``(x0, y0, x1, y1, score)`` in the original image's pixels, best score first.
    """

    def __init__(
        self,
        model_path: str | Path,
        input_size: tuple[int, int] = (640, 640),
        det_thresh: float = 0.5,
        nms_thresh: float = 0.4,
        providers: list | None = None,
        threads: int | None = None,
    ):
        self.model_path = resolve_model(model_path, "detection", is_detector)
        self.input_size = (int(input_size[0]), int(input_size[1]))
        if min(self.input_size) <= 0 or self.input_size[0] % 32 or self.input_size[1] % 32:
            raise ValueError(f"SCRFD input_size (width, height) must be positive multiples of 32, got {input_size}")
        self.det_thresh, self.nms_thresh = float(det_thresh), float(nms_thresh)
        self.session = open_session(self.model_path, providers, threads)
        self._validate()
        self._centres: dict[tuple[int, int, int], np.ndarray] = {}

    def _validate(self) -> None:
        where = f"{self.model_path}: expected an SCRFD detector with keypoints (e.g. det_10g.onnx, scrfd_*_bnkps.onnx)"
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        shape = list(inputs[0].shape) if inputs else []
        if len(inputs) != 1 or len(shape) != 4 or (isinstance(shape[1], int) and shape[1] != 3):
            got = [i.shape for i in inputs]
            raise OnnxModelError(f"{where}, i.e. one NCHW input with 3 channels; got inputs {got}")
        if inputs[0].type != "tensor(float)":
            raise OnnxModelError(f"{where} taking float32 input; got {inputs[0].type}")
        count = len(outputs)
        if count in NO_KPS_LAYOUTS:
            raise OnnxModelError(f"{where}; it has {count} outputs, a layout without keypoints (alignment needs them)")
        if count not in LAYOUTS:
            raise OnnxModelError(f"{where}, i.e. 9 outputs (3 strides x score/box/kps); got {count} outputs")
        self.strides, self.anchors = LAYOUTS[count]
        fixed = [d if isinstance(d, int) and d > 0 else None for d in shape]
        if fixed[2] and fixed[3] and (fixed[3], fixed[2]) != self.input_size:
            raise OnnxModelError(
                f"{self.model_path}: the model fixes its input to {fixed[3]}x{fixed[2]} (width x height) "
                f"but input_size is {self.input_size[0]}x{self.input_size[1]}; set input_size to the model's"
            )
        levels = len(self.strides)
        for i, out in enumerate(outputs):
            width = (1, 4, 10)[i // levels]
            if len(out.shape) not in (2, 3) or (isinstance(out.shape[-1], int) and out.shape[-1] != width):
                raise OnnxModelError(
                    f"{where}: output {i} ({out.name!r}) should be [rows, {width}] (scores x{levels}, boxes x{levels}, "
                    f"keypoints x{levels}); got {out.shape}"
                )
        self.input_name = inputs[0].name
        self.output_names = [o.name for o in outputs]
        self.batched = len(outputs[0].shape) == 3 and not (isinstance(shape[0], int) and shape[0] == 1)

    def _blob(self, images: list[np.ndarray]) -> tuple[np.ndarray, list[float]]:
        canvases, scales = [], []
        for image in images:
            image = np.ascontiguousarray(image)  # cv2 rejects views with negative strides (e.g. BGR<->RGB flips)
            if image.ndim == 2:
                image = np.repeat(image[:, :, None], 3, axis=2)
            if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8 or 0 in image.shape:
                raise ValueError(f"images must be H x W x 3 uint8 RGB arrays, got {image.dtype} {image.shape}")
            canvas, scale = letterbox(image, self.input_size)
            canvases.append(canvas)
            scales.append(scale)
        blob = (np.stack(canvases).astype(np.float32) - np.float32(MEAN)) * np.float32(1.0 / STD)
        return np.ascontiguousarray(blob.transpose(0, 3, 1, 2)), scales

    def _decode(self, outs: list[np.ndarray], scale: float) -> tuple[np.ndarray, np.ndarray]:
        width, height = self.input_size
        levels = len(self.strides)
        boxes, scores, points = [], [], []
        for level, stride in enumerate(self.strides):
            key = (height // stride, width // stride, stride)
            if key not in self._centres:
                self._centres[key] = anchor_centres(*key, self.anchors)
            centres = self._centres[key]
            score = outs[level].reshape(-1)
            dist = outs[level + levels] * stride
            offs = outs[level + 2 * levels] * stride
            if len(score) != len(centres) or len(dist) != len(centres) or len(offs) != len(centres):
                raise OnnxModelError(
                    f"{self.model_path}: stride {stride} should give {len(centres)} rows "
                    f"({key[0]}x{key[1]} locations x {self.anchors} anchors) at input {width}x{height}; got "
                    f"{len(score)}/{len(dist)}/{len(offs)} (not an SCRFD layout)"
                )
            pos = np.flatnonzero(score >= self.det_thresh)
            c, d = centres[pos], dist[pos]
            boxes.append(np.stack([c[:, 0] - d[:, 0], c[:, 1] - d[:, 1], c[:, 0] + d[:, 2], c[:, 1] + d[:, 3]], -1))
            points.append(np.tile(c, (1, 5)).reshape(-1, 5, 2) + offs[pos].reshape(-1, 5, 2))
            scores.append(score[pos])
        score = np.concatenate(scores)
        if score.size == 0:
            return _empty()
        order = np.argsort(-score, kind="stable")
        dets = np.concatenate([np.concatenate(boxes) / scale, score[:, None]], axis=1).astype(np.float32)[order]
        kps = (np.concatenate(points) / scale).astype(np.float32)[order]
        keep = nms(dets, self.nms_thresh)
        return dets[keep], kps[keep]

    def detect(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Faces in one RGB image: ``(boxes (N, 5) [x0, y0, x1, y1, score], kps (N, 5, 2))``, best first."""
        return self.detect_batch([image])[0]

    def detect_batch(self, images: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
        """:meth:`detect` for several images; one session call if the model takes batches, else one per image."""
        results = []
        step = len(images) if self.batched else 1
        for start in range(0, len(images), max(step, 1)):
            blob, scales = self._blob(images[start : start + step])
            outs = self.session.run(self.output_names, {self.input_name: blob})
            for i, scale in enumerate(scales):
                mine = [o[i] if o.ndim == 3 else o for o in outs]
                results.append(self._decode(mine, scale))
        return results
