"""Is a model file what its name says? Checked in the driver before any actor starts, so that an empty, truncated
or wrong file fails in one line naming it, not in hundreds of lines of actor tracebacks.

Each check reads what identifies the format and no more: the safetensors header (and that the file is as long as it
says), the first bytes of a PyTorch file (a zip archive, whose central directory must be there, or a pickle), a
YAML or JSON parse, the ONNX protobuf (without external data), a Parquet
footer. Files of other kinds (a tokenizer's ``merges.txt``) are only checked to be non-empty.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

from facefoundry.sections import yaml_problem

TORCH_SUFFIXES = (".pth", ".pt", ".ckpt", ".bin")
ZIP_MAGIC, PICKLE_START = b"PK\x03\x04", b"\x80"  # torch.save's zip format; the legacy format opens with a pickle


def file_problem(path: Path) -> str | None:
    """Why ``path`` cannot be a model file of its kind (a phrase such as ``is empty``), or None when it looks right."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(8)
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc})"
    if size == 0:
        return "is empty (0 bytes); download or copy it again"
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        return _safetensors_problem(path, head, size)
    if suffix in TORCH_SUFFIXES:
        if not (head.startswith(ZIP_MAGIC) or head.startswith(PICKLE_START)):
            return "is not a PyTorch checkpoint (neither a zip archive nor a pickle); download it again"
        if head.startswith(ZIP_MAGIC) and not zipfile.is_zipfile(path):  # the directory is at the end of the file
            return "is truncated or damaged (a zip archive without its central directory); download it again"
        return None
    if suffix in (".yaml", ".yml", ".json"):
        return _text_problem(path, suffix)
    if suffix == ".onnx":
        return _onnx_problem(path)
    if suffix == ".parquet":
        try:
            import pyarrow.parquet as pq

            pq.read_schema(path)
        except Exception as exc:  # noqa: BLE001 - any failure to read the footer is the answer
            return f"is not a readable Parquet file ({_first_line(exc)})"
    return None


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]


def _safetensors_problem(path: Path, head: bytes, size: int) -> str | None:
    length = int.from_bytes(head, "little") if len(head) == 8 else 0
    if not 2 <= length <= size - 8:
        return "is not a safetensors file (its header length does not fit the file); download it again"
    with open(path, "rb") as fh:
        fh.seek(8)
        raw = fh.read(length)
    try:
        header = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return "is not a safetensors file (its header is not JSON); download it again"
    if not isinstance(header, dict):
        return "is not a safetensors file (its header is not a JSON object); download it again"
    try:
        data = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
    except (TypeError, KeyError, IndexError):
        return "is not a safetensors file (a tensor without data_offsets); download it again"
    if size != 8 + length + data:
        return (f"is truncated or damaged ({size} bytes where its header describes {8 + length + data}); "
                "download it again")
    return None


def _text_problem(path: Path, suffix: str) -> str | None:
    import yaml

    try:
        text = path.read_text(encoding="utf-8")
        if suffix == ".json":
            json.loads(text)
        else:
            yaml.safe_load(text)
    except UnicodeDecodeError:
        return "is not UTF-8 text"
    except yaml.YAMLError as exc:
        return f"is not valid YAML ({yaml_problem(exc)})"
    except Exception as exc:  # noqa: BLE001 - the parser's first line says where
        return f"is not valid {'JSON' if suffix == '.json' else 'YAML'} ({_first_line(exc)})"
    return None


def _onnx_problem(path: Path) -> str | None:
    try:
        import onnx

        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - a protobuf that does not parse
        return f"is not an ONNX model ({_first_line(exc)}); download it again"
    if not model.graph.node:
        return "is not an ONNX model (no graph); download it again"
    return None
