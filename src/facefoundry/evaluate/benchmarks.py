"""InsightFace validation ``.bin`` files (LFW, CFP-FP, CPLFW, AgeDB-30, CALFW), read without running pickled code.

A ``.bin`` file is a pickle of ``(bins, issame)``: ``bins`` holds the encoded images (JPEG/PNG bytes, or numpy
uint8 arrays of those bytes), two per pair in order (``2*i`` and ``2*i + 1``), and ``issame`` one bool per pair.
Pickles can run arbitrary code when loaded, so :func:`load_benchmark` uses an unpickler that admits only the
handful of globals this layout needs (numpy array/dtype/scalar reconstruction, latin-1 ``_codecs.encode``) and
refuses anything else with a :class:`BenchmarkError`. Images stay encoded until :meth:`Benchmark.images` decodes
a slice, so an LFW-sized set costs its file size in memory, not 12 000 decoded images.
"""

from __future__ import annotations

import io
import pickle
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

IMAGE_SIZE = 112
PAIRS_SIDECAR_SUFFIX = ".pairs.json"  # export-pairs writes X.bin.pairs.json beside X.bin: each pair with its cell
# File stems of the standard sets in the order the papers' tables use, with their display names.
STANDARD_SETS = {"lfw": "LFW", "cfp_fp": "CFP-FP", "cplfw": "CPLFW", "agedb_30": "AgeDB-30", "calfw": "CALFW"}


class BenchmarkError(ValueError):
    """A benchmark file that is missing, not a pickle, refused by the safe unpickler, or of the wrong layout."""


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """What Python 3 protocol-2 pickles call to rebuild ``bytes``; only the latin-1 codec is admitted."""
    if encoding.lower().replace("-", "").replace("_", "") not in ("latin1", "iso88591"):
        raise pickle.UnpicklingError(f"_codecs.encode with codec {encoding!r} (only latin1 rebuilds bytes)")
    return text.encode("latin1")


def _plain_dtype(*args: object) -> np.dtype:
    """``numpy.dtype`` for pickled arrays, refusing object dtypes (whose items would be arbitrary objects)."""
    dtype = np.dtype(*args)  # type: ignore[call-overload]
    if dtype.hasobject:
        raise pickle.UnpicklingError(f"numpy dtype {dtype} holds Python objects")
    return dtype


_ALLOWED = {("_codecs", "encode"): _latin1_encode, ("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): _plain_dtype,
            ("builtins", "bytearray"): bytearray, ("__builtin__", "bytearray"): bytearray}
for _core in ("numpy.core", "numpy._core"):  # numpy 1.x (and Python 2) pickles name numpy.core, numpy 2.x numpy._core
    _ALLOWED[(f"{_core}.multiarray", "_reconstruct")] = np._core.multiarray._reconstruct
    _ALLOWED[(f"{_core}.multiarray", "scalar")] = np._core.multiarray.scalar
    _ALLOWED[(f"{_core}.numeric", "_frombuffer")] = np._core.numeric._frombuffer


class _Refused(Exception):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


class _BenchmarkUnpickler(pickle.Unpickler):
    """Admits only the globals in ``_ALLOWED``; every other import is refused before anything is called."""

    def find_class(self, module: str, name: str) -> object:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise _Refused(f"{module}.{name}") from None


def _unpickle(path: Path) -> object:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise BenchmarkError(f"{path}: no such benchmark file") from None
    except OSError as exc:
        raise BenchmarkError(f"{path}: cannot read ({exc.strerror or exc})") from None
    try:
        return _BenchmarkUnpickler(io.BytesIO(data), encoding="bytes").load()
    except _Refused as exc:
        raise BenchmarkError(f"{path}: refused pickled global {exc.name}; a .bin benchmark holds only bytes, "
                             "bools and numpy arrays (this file may run code: do not unpickle it)") from None
    except Exception as exc:  # a malformed pickle raises almost anything: report it as one line
        reason = " ".join(f"{type(exc).__name__}: {exc}".split())
        raise BenchmarkError(f"{path}: not a readable benchmark pickle ({reason})") from None


def _as_bytes(item: object, path: Path, index: int) -> bytes:
    if isinstance(item, bytes | bytearray):
        return bytes(item)
    if isinstance(item, np.ndarray) and item.dtype in (np.uint8, np.int8) and item.ndim == 1:
        return item.tobytes()
    kind = f"{item.dtype} array of shape {item.shape}" if isinstance(item, np.ndarray) else type(item).__name__
    raise BenchmarkError(f"{path}: image {index} is a {kind}, expected encoded image bytes (JPEG/PNG)")


def _as_flag(item: object, path: Path, index: int) -> bool:
    if isinstance(item, bool | np.bool_) or (isinstance(item, int | np.integer) and item in (0, 1)):
        return bool(item)
    raise BenchmarkError(f"{path}: issame[{index}] is {item!r}, expected a bool")


def decode_image(data: bytes, size: int = IMAGE_SIZE) -> np.ndarray:
    """Encoded image bytes -> RGB ``uint8`` array ``(size, size, 3)``; raises ``ValueError`` if undecodable."""
    try:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    except cv2.error:  # OpenCV asserts on an empty buffer instead of returning None
        image = None
    if image is None:
        raise ValueError("not a decodable image")
    if image.shape[:2] != (size, size):
        image = cv2.resize(image, (size, size), interpolation=cv2.INTER_LINEAR)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


@dataclass(frozen=True, eq=False)
class Benchmark:
    """One verification set: encoded images (two per pair, in order) and one ``issame`` flag per pair."""

    name: str
    path: Path
    encoded: tuple[bytes, ...] = field(repr=False)
    issame: np.ndarray = field(repr=False)

    @property
    def display_name(self) -> str:
        """The name papers use (``AgeDB-30`` for ``agedb_30``); other sets keep their file stem."""
        return STANDARD_SETS.get(self.name, self.name)

    @property
    def num_pairs(self) -> int:
        return int(self.issame.size)

    def images(self, start: int = 0, stop: int | None = None, size: int = IMAGE_SIZE) -> np.ndarray:
        """Decode images ``start:stop`` to an RGB ``uint8`` batch ``(n, size, size, 3)``."""
        stop = len(self.encoded) if stop is None else min(stop, len(self.encoded))
        out = np.empty((max(stop - start, 0), size, size, 3), dtype=np.uint8)
        for i in range(start, stop):
            try:
                out[i - start] = decode_image(self.encoded[i], size)
            except ValueError as exc:
                raise BenchmarkError(f"{self.path}: image {i} cannot be decoded ({exc})") from None
        return out


def load_benchmark(path: str | Path) -> Benchmark:
    """Read one ``.bin`` file with the restricted unpickler and check its layout (images decode lazily)."""
    path = Path(path)
    obj = _unpickle(path)
    if not (isinstance(obj, tuple | list) and len(obj) == 2):
        raise BenchmarkError(f"{path}: expected a pickled 2-tuple (bins, issame_list), got {type(obj).__name__}"
                             + (f" of length {len(obj)}" if isinstance(obj, tuple | list) else ""))
    bins, issame = obj
    if not isinstance(bins, list | tuple) or not isinstance(issame, list | tuple | np.ndarray):
        raise BenchmarkError(f"{path}: expected (list of images, list of bools), got "
                             f"({type(bins).__name__}, {type(issame).__name__})")
    if len(bins) == 0 or len(bins) % 2:
        raise BenchmarkError(f"{path}: {len(bins)} images; need a positive even count (two per pair)")
    if len(issame) != len(bins) // 2:
        raise BenchmarkError(f"{path}: {len(issame)} issame flags for {len(bins)} images; need one per pair "
                             f"({len(bins) // 2})")
    encoded = tuple(_as_bytes(item, path, i) for i, item in enumerate(bins))
    flags = np.array([_as_flag(item, path, i) for i, item in enumerate(issame)], dtype=bool)
    return Benchmark(name=path.stem, path=path, encoded=encoded, issame=flags)


def paper_order(name: str) -> tuple[int, str]:
    """Sort key for set names (file stems): the standard sets in the papers' order, then others by name."""
    names = list(STANDARD_SETS)
    return (names.index(name), "") if name in names else (len(names), name)


def _order_key(path: Path) -> tuple[int, str]:
    return paper_order(path.stem)


def sidecar_path(bin_path: str | Path) -> Path:
    """``X.bin`` -> ``X.bin.pairs.json``: the listing export-pairs writes beside its ``.bin`` (every pair's cell)."""
    bin_path = Path(bin_path)
    return bin_path.with_name(bin_path.name + PAIRS_SIDECAR_SUFFIX)


def find_group_folders(folder: str | Path) -> list[Path]:
    """The subfolders of ``folder`` that hold ``*.bin`` files (RFW's layout: one ``.bin`` per group), by name."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_dir() and any(f.is_file() for f in p.glob("*.bin")))


def find_benchmarks(folder: str | Path) -> list[Path]:
    """Every ``*.bin`` in ``folder``: the standard sets first in the papers' order, then the others by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise BenchmarkError(f"{folder}: not a folder of .bin benchmark files")
    return sorted((p for p in folder.glob("*.bin") if p.is_file()), key=_order_key)


def load_benchmarks(sources: str | Path | Iterable[str | Path]) -> tuple[list[Benchmark], dict[str, str]]:
    """Load a folder (every ``*.bin``) or a list of files; a bad file becomes ``errors[name]``, the rest load.

    Returns ``(benchmarks, errors)`` so the caller can run every good set and report the bad ones.
    """
    if isinstance(sources, str | Path):
        source = Path(sources)
        if source.is_dir():
            paths = find_benchmarks(source)
        elif source.suffix == ".bin" or source.is_file():
            paths = [source]
        else:
            raise BenchmarkError(f"{source}: no such folder of .bin files (or .bin file)")
    else:
        paths = sorted((Path(p) for p in sources), key=_order_key)
    loaded: list[Benchmark] = []
    errors: dict[str, str] = {}
    for path in paths:
        try:
            loaded.append(load_benchmark(path))
        except BenchmarkError as exc:
            errors[path.stem] = str(exc)
    return loaded, errors


def check_benchmarks(sources: str | Path | Iterable[str | Path]) -> dict[str, str]:
    """Open and validate every benchmark of ``sources`` (and of its group folders, :func:`find_group_folders`) without
    keeping them: what a training checks before it starts (hours of GPU otherwise end in an empty table). Returns the
    bad sets' reasons (``folder/stem`` for a group file); raises :class:`BenchmarkError`
    naming each problem when no set can be verified (no ``.bin`` file, or none readable)."""
    loaded, errors = load_benchmarks(sources)
    groups = find_group_folders(sources) if isinstance(sources, str | Path) else []
    for folder in groups:  # RFW-style folders: one .bin per group, named folder/stem
        in_folder, bad = load_benchmarks(find_benchmarks(folder))
        loaded += in_folder
        errors |= {f"{folder.name}/{name}": why for name, why in bad.items()}
    if not loaded:
        found = "; ".join(f"{name}: {why}" for name, why in errors.items()) or "no .bin benchmark files in it"
        raise BenchmarkError(f"{sources}: no benchmark can be verified ({found})")
    return errors


def encode_image(image: np.ndarray, fmt: str = ".png") -> bytes:
    """An RGB ``uint8`` image -> encoded bytes (``.png`` lossless, or ``.jpg``) for :func:`write_bin`."""
    ok, buf = cv2.imencode(fmt, cv2.cvtColor(np.ascontiguousarray(image, dtype=np.uint8), cv2.COLOR_RGB2BGR))
    if not ok:
        raise ValueError(f"cannot encode image of shape {image.shape} as {fmt}")
    return buf.tobytes()


def write_bin(path: str | Path, images: Sequence[bytes | np.ndarray], issame: Sequence[bool]) -> Path:
    """Write a verification set in the InsightFace layout: ``pickle((list of bytes, list of bool))``.

    ``images`` are encoded bytes or RGB ``uint8`` arrays (encoded to PNG), two per pair in order.
    """
    encoded = [bytes(im) if isinstance(im, bytes | bytearray) else encode_image(im) for im in images]
    flags = [bool(f) for f in issame]
    if len(encoded) != 2 * len(flags):
        raise ValueError(f"{len(encoded)} images for {len(flags)} pairs; need two images per issame flag")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        pickle.dump((encoded, flags), f, protocol=4)  # readable by every Python 3 loader
    return path
