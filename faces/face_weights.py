"""Reading the face-model checkpoints Vec2Face publishes (``BooBooWu/Vec2Face``, folder ``weights/``).

All three files are plain state dicts saved with ``torch.save`` (Vec2Face loads each one with
``model.load_state_dict(torch.load(path))``, strict). They are read here with ``torch.load(weights_only=True)``:
a plain state dict needs no extra globals, so none are allowed; a file that needs any is refused with the
names of the globals it asked for.
"""

from __future__ import annotations

import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from facefoundry.models import hub_repo

VEC2FACE_REPO = hub_repo("vec2face-face-models")


class FaceWeightsNotFoundError(FileNotFoundError):
    """A face-model weight file is missing; the message names the path and where to get the file."""


class FaceWeightsError(ValueError):
    """A face-model weight file exists but does not hold the expected model."""


def resolve_weights(path: str | Path, filename: str, model_name: str) -> Path:
    """``path`` itself if it is a file; ``path/weights/<filename>`` or ``path/<filename>`` if it is a folder."""
    path = Path(path).expanduser()
    if path.is_dir():
        for candidate in (path / "weights" / filename, path / filename):
            if candidate.is_file():
                return candidate
        missing = path / "weights" / filename
    elif path.is_file():
        return path
    else:
        missing = path
    raise FaceWeightsNotFoundError(
        f"{model_name} weights {missing} do not exist: download weights/{filename} from the Hugging Face repo "
        f"{VEC2FACE_REPO} (hf_hub_download('{VEC2FACE_REPO}', 'weights/{filename}')) and pass its path"
    )


def read_checkpoint(path: Path, model_name: str) -> object:
    """``torch.load(path, map_location='cpu', weights_only=True)`` with errors that name the file."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except pickle.UnpicklingError as exc:
        lines = [line.strip() for line in str(exc).splitlines() if "Unsupported global" in line]
        raise FaceWeightsError(
            f"refusing to unpickle {model_name} weights {path}: the file needs objects other than tensors and plain "
            f"containers ({'; '.join(lines) or exc}). Vec2Face publishes plain state dicts; re-save a trusted file "
            "as one (torch.save(model.state_dict(), path))"
        ) from exc
    except Exception as exc:  # noqa: BLE001 - any read failure becomes one clear message naming the file
        raise FaceWeightsError(f"cannot read {model_name} weights {path}: {exc}") from exc


def tensor_dict(obj: object, path: Path, model_name: str) -> dict[str, torch.Tensor]:
    """``obj`` as a ``{name: tensor}`` dict, or a :class:`FaceWeightsError` naming the file."""
    if not isinstance(obj, Mapping) or not obj:
        raise FaceWeightsError(f"{model_name} weights {path}: expected a state dict, got {type(obj).__name__}")
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise FaceWeightsError(
            f"{model_name} weights {path}: expected a plain state dict of tensors; entries {bad[:5]} are not tensors"
        )
    return dict(obj)


def load_strict(model: nn.Module, state: Mapping[str, torch.Tensor], path: Path, model_name: str) -> None:
    """``model.load_state_dict(state, strict=True)``; a mismatch names the file and the first differing keys."""
    expected, given = set(model.state_dict()), set(state)
    missing, unexpected = sorted(expected - given), sorted(given - expected)
    if missing or unexpected:
        raise FaceWeightsError(
            f"{model_name} weights {path} do not match the model: missing keys {missing[:5]}"
            f"{' ...' if len(missing) > 5 else ''} ({len(missing)}), unexpected keys {unexpected[:5]}"
            f"{' ...' if len(unexpected) > 5 else ''} ({len(unexpected)}). Is this the right file?"
        )
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())
        raise FaceWeightsError(f"{model_name} weights {path} do not match the model: {detail}") from exc


def key_index_counts(keys: list[str], prefix: str) -> int:
    """How many consecutive children ``prefix0.``, ``prefix1.``, ... the keys mention (0 if none)."""
    indices = {int(k[len(prefix):].split(".", 1)[0]) for k in keys
               if k.startswith(prefix) and k[len(prefix):].split(".", 1)[0].isdigit()}
    return max(indices) + 1 if indices else 0
