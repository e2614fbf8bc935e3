"""Exports for FR training: ImageFolder, InsightFace RecordIO and Vec2Face-style LMDB, each read back."""

import errno
import io
import json
from pathlib import Path

import lmdb
import msgpack
import numpy as np
import pyarrow as pa
import pytest
from PIL import Image
from runfolder import write_run

from facefoundry.config import validate_config
from facefoundry.dataset.manifest import plan_units
from facefoundry.dataset.schema import image_struct
from facefoundry.dataset.shards import write_unit
from facefoundry.exporters import export as export_mod
from facefoundry.exporters import lmdb_dataset, recordio
from facefoundry.exporters.export import ExportError, export_run
from facefoundry.exporters.lmdb_dataset import LmdbDataset, LmdbDatasetWriter
from facefoundry.exporters.recordio import (
    IDX_FILE,
    REC_FILE,
    IndexedRecordReader,
    IndexedRecordWriter,
    InsightFaceRec,
    InsightFaceRecWriter,
    RecordIOError,
    pack,
    unpack,
)
from facefoundry.layout import manifest_file
from facefoundry.runfolder.runinfo import prepare_run_folder

SIZE, QUALITY = 16, 90
IDENTITIES, PER_IDENTITY, PER_UNIT = 5, 3, 2
JPEG_UNIT = (2, 4)  # this unit stores JPEG (kept byte for byte); the others PNG (converted)
EMPTY_IDENTITY = 3  # every image of it was dropped: label 3 is unused
REJECTED = (1, 1)  # kept with a filter_reason (annotate mode): left out unless include_rejected
ID_REJECTED = (4, 2)  # kept with only an id_filter_reason: left out as well


def pixels(identity: int, index: int) -> np.ndarray:
    """A smooth image (JPEG keeps it close) whose colour differs for every (identity, index)."""
    ramp = np.linspace(0, 40, SIZE, dtype=np.float32)[None, :, None]
    base = np.array([30 + 40 * identity, 30 + 60 * index, 200 - 35 * identity], np.float32)
    return np.clip(base + ramp + np.zeros((SIZE, SIZE, 3), np.float32), 0, 255).astype(np.uint8)


def encode(array: np.ndarray, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format=fmt, **kw)
    return buf.getvalue()


def stored(identity: int, index: int) -> bytes:
    jpeg = JPEG_UNIT[0] <= identity < JPEG_UNIT[1]
    return encode(pixels(identity, index), "JPEG", quality=80) if jpeg else encode(pixels(identity, index), "PNG")


def expected_jpeg(identity: int, index: int) -> bytes:
    data = stored(identity, index)
    return data if data[:2] == b"\xff\xd8" else encode(pixels(identity, index), "JPEG", quality=QUALITY)


def make_run(out: Path) -> tuple[Path, object]:
    def unit_rows(unit):
        rows = [(i, j) for i in range(unit.start, unit.stop) if i != EMPTY_IDENTITY for j in range(PER_IDENTITY)]
        table = pa.table({
            "image": image_struct([stored(i, j) for i, j in rows], [f"{i}_{j}.png" for i, j in rows]),
            "identity": pa.array([i for i, _ in rows], pa.int64()),
            "image_index": pa.array([j for _, j in rows], pa.int32()),
            "seed": pa.array([100 * i + j for i, j in rows], pa.int64()),
            "filter_reason": pa.array(["no_face" if r == REJECTED else None for r in rows], pa.string()),
            "id_filter_reason": pa.array(["blurry" if r == ID_REJECTED else None for r in rows], pa.string()),
        })
        return table, len(rows), {}

    cfg = write_run(out, {"run": {"name": "export"}, "identities": {"count": IDENTITIES},
                          "images": {"per_identity": PER_IDENTITY},
                          "output": {"identities_per_unit": PER_UNIT, "row_group_size": 2}}, unit_rows)
    return out, cfg


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("run"))[0]


EXPECTED = [(i, j) for i in range(IDENTITIES) if i != EMPTY_IDENTITY for j in range(PER_IDENTITY)
            if (i, j) not in (REJECTED, ID_REJECTED)]


def check_image(jpeg: bytes, identity: int, index: int) -> None:
    assert jpeg == expected_jpeg(identity, index)
    decoded = np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"), np.float32)
    errors = [np.abs(decoded - pixels(i, j)).mean() for i, j in EXPECTED]
    assert EXPECTED[int(np.argmin(errors))] == (identity, index) and min(errors) < 4


def check_summary(summary: dict, out: Path, fmt: str) -> None:
    assert summary["format"] == fmt and summary["images"] == len(EXPECTED) == 10
    assert summary["identities"] == 4 and summary["num_classes"] == 5
    assert summary["converted_to_jpeg"] == 7 and summary["kept_jpeg"] == 3
    assert summary["skipped"] == {"rejected": 2} and summary["shards"] == 3
    assert json.loads((out / "export.json").read_text()) == summary
    assert not list(out.rglob(".tmp-*"))


def test_imagefolder_round_trip(run_dir, tmp_path):
    calls = []
    summary = export_run(run_dir, tmp_path / "out", "imagefolder", jpeg_quality=QUALITY,
                         progress=lambda done, total: calls.append((done, total)))
    out = tmp_path / "out"
    check_summary(summary, out, "imagefolder")
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["0000000", "0000001", "0000002", "0000004"]
    files = sorted(out.glob("*/*.jpg"))
    assert [(int(p.parent.name), int(p.stem)) for p in files] == EXPECTED
    for path in files:
        check_image(path.read_bytes(), int(path.parent.name), int(path.stem))
    # 12 rows (with the rejected one) in row groups of 2; progress ends at the total.
    assert calls[-1] == (12, 12) and [d for d, _ in calls] == sorted(d for d, _ in calls)
    assert summary["bytes"] == sum(p.stat().st_size for p in files)


@pytest.mark.parametrize("header", [True, False])
def test_rec_round_trip(run_dir, tmp_path, header):
    out = tmp_path / "out"
    summary = export_run(run_dir, out, "rec", jpeg_quality=QUALITY, rec_header=header)
    check_summary(summary, out, "rec")
    assert sorted(p.name for p in out.iterdir()) == ["export.json", "property", "train.idx", "train.rec"]
    assert (out / "property").read_text() == f"5,{SIZE},{SIZE}\n"
    assert summary["bytes"] == sum((out / name).stat().st_size for name in ("property", IDX_FILE, REC_FILE))
    rec = InsightFaceRec(out)
    n, ids = len(EXPECTED), [0, 1, 2, 4]
    assert len(rec) == n
    for k, (identity, index) in enumerate(EXPECTED):
        label, image = rec[k]
        assert label == identity
        check_image(image, identity, index)
    keys = rec.reader.keys
    if header:
        # Record 0: flag 2, label [N + 1, N + 1 + C]; then N images; then one [first, last + 1) per identity.
        head, payload = unpack(rec.reader.read_idx(0))
        assert head.flag == 2 and head.label == (n + 1, n + 1 + len(ids)) and payload == b""
        assert rec.header0 == (n + 1, n + 1 + len(ids)) and keys == list(range(n + 1 + len(ids)))
        assert rec.image_keys == list(range(1, n + 1))
        firsts = [1 + EXPECTED.index((i, 0)) for i in ids]
        assert rec.identity_ranges == list(zip(firsts, [*firsts[1:], n + 1], strict=True))
        for i, (lo, hi) in zip(ids, rec.identity_ranges, strict=True):
            assert {rec[key - 1][0] for key in range(lo, hi)} == {i}
    else:
        assert rec.header0 is None and keys == rec.image_keys == list(range(n))
    for key in rec.image_keys:  # every image record: flag 0, scalar label, id = key
        head, _ = unpack(rec.reader.read_idx(key))
        assert head.flag == 0 and head.id == key and head.id2 == 0
    with IndexedRecordReader(out / REC_FILE, out / IDX_FILE) as reader:  # sequential scan: same records
        assert len(list(reader)) == len(keys)
    rec.close()


def test_lmdb_round_trip(run_dir, tmp_path):
    out = tmp_path / "out"
    summary = export_run(run_dir, out, "lmdb", jpeg_quality=QUALITY)
    check_summary(summary, out, "lmdb")
    assert sorted(p.name for p in out.iterdir()) == ["export.json", "train.lmdb"]  # one file, no lock file
    db = LmdbDataset(out / "train.lmdb")
    assert len(db) == len(EXPECTED) and db.classnum == 5
    assert db.keys == [str(i).encode() for i in range(len(EXPECTED))]
    for k, (identity, index) in enumerate(EXPECTED):
        label, image = db[k]
        assert label == identity
        check_image(image, identity, index)
    with db.env.begin() as txn:  # the raw value: msgpack array [bin jpeg, int label]
        assert txn.get(b"0") == msgpack.packb((expected_jpeg(0, 0), 0), use_bin_type=True)
        assert msgpack.loads(txn.get(b"__len__")) == len(EXPECTED)
    db.close()


def test_include_rejected_and_partial(run_dir, tmp_path):
    summary = export_run(run_dir, tmp_path / "a", "imagefolder", include_rejected=True)
    assert summary["images"] == 12 and summary["skipped"] == {}
    assert (tmp_path / "a" / "0000001" / "0001.jpg").exists()

    run, cfg = make_run(tmp_path / "run")
    (run / manifest_file(plan_units(IDENTITIES, PER_UNIT)[1].name)).unlink()
    with pytest.raises(ExportError, match="incomplete: 1 of 3 units.*train-0000002-0000004"):
        export_run(run, tmp_path / "b", "lmdb")
    assert not (tmp_path / "b").exists()
    summary = export_run(run, tmp_path / "b", "lmdb", allow_partial=True)
    assert summary["images"] == 5 + 2 and summary["units_exported"] == 2 and summary["units"] == 3


def test_refuses_bad_inputs(run_dir, tmp_path):
    with pytest.raises(ExportError, match="not a run folder"):
        export_run(tmp_path, tmp_path / "out", "rec")
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("x")
    with pytest.raises(ExportError, match="not empty"):
        export_run(run_dir, busy, "rec")
    assert (busy / "keep.txt").read_text() == "x"
    with pytest.raises(ExportError, match="unknown export format"):
        export_run(run_dir, tmp_path / "o", "tfrecord")
    with pytest.raises(ExportError, match="jpeg_quality"):
        export_run(run_dir, tmp_path / "o", "lmdb", jpeg_quality=0)

    cfg = validate_config({"run": {"name": "e"}, "identities": {"count": 2}, "images": {"per_identity": 1}})
    prepare_run_folder(tmp_path / "empty", cfg)
    with pytest.raises(ExportError, match="no finished shards"):
        export_run(tmp_path / "empty", tmp_path / "o", "lmdb")


def test_nothing_to_export(tmp_path):
    cfg = validate_config({"run": {"name": "n"}, "identities": {"count": 1}, "images": {"per_identity": 1}})
    prepare_run_folder(tmp_path / "run", cfg)
    table = pa.table({"image": image_struct([stored(0, 0)], ["x.png"]), "identity": pa.array([0], pa.int64()),
                      "image_index": pa.array([0], pa.int32()), "filter_reason": pa.array(["no_face"])})
    write_unit(tmp_path / "run", plan_units(1, 8)[0], table, generated=1, drops={}, config_hash=cfg.config_hash(),
               file_metadata={})
    with pytest.raises(ExportError, match="no images to export.*add --include-rejected"):
        export_run(tmp_path / "run", tmp_path / "out", "rec")
    assert not (tmp_path / "out").exists()


def test_undecodable_images_are_skipped_and_counted(tmp_path):
    cfg = validate_config({"run": {"name": "u"}, "identities": {"count": 2}, "images": {"per_identity": 1}})
    prepare_run_folder(tmp_path / "run", cfg)
    table = pa.table({"image": image_struct([b"not an image", stored(1, 0)], ["a.png", "b.png"]),
                      "identity": pa.array([0, 1], pa.int64()), "image_index": pa.array([0, 0], pa.int32())})
    write_unit(tmp_path / "run", plan_units(2, 8)[0], table, generated=2, drops={}, config_hash=cfg.config_hash(),
               file_metadata={})
    summary = export_run(tmp_path / "run", tmp_path / "out", "lmdb")
    assert summary["images"] == 1 and summary["skipped"] == {"undecodable": 1} and summary["num_classes"] == 2


def test_rows_out_of_order_are_refused(tmp_path):
    cfg = validate_config({"run": {"name": "o"}, "identities": {"count": 4}, "images": {"per_identity": 1},
                           "output": {"identities_per_unit": 2}})
    prepare_run_folder(tmp_path / "run", cfg)
    for unit, identity in zip(plan_units(4, 2), [3, 2], strict=True):  # unit 0 holds a row of identity 3
        table = pa.table({"image": image_struct([stored(identity, 0)], ["x.png"]),
                          "identity": pa.array([identity], pa.int64()), "image_index": pa.array([0], pa.int32())})
        write_unit(tmp_path / "run", unit, table, generated=1, drops={}, config_hash=cfg.config_hash(),
                   file_metadata={})
    with pytest.raises(ExportError, match="out of .*order"):
        export_run(tmp_path / "run", tmp_path / "out", "rec")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("fmt", ["imagefolder", "rec", "lmdb"])
@pytest.mark.parametrize("existed", [False, True])
def test_disk_full_leaves_nothing(run_dir, tmp_path, monkeypatch, fmt, existed):
    sink = {"imagefolder": export_mod._ImageFolderSink, "rec": export_mod._RecSink, "lmdb": export_mod._LmdbSink}[fmt]
    real_add, calls = sink.add, []

    def add(self, *args):
        calls.append(args)
        if len(calls) > 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_add(self, *args)

    monkeypatch.setattr(sink, "add", add)
    out = tmp_path / "out"
    if existed:
        out.mkdir()
    with pytest.raises(ExportError, match=f"no space left on the device writing {out}"):
        export_run(run_dir, out, fmt)
    assert (list(out.iterdir()) == []) if existed else not out.exists()


def test_lmdb_disk_error_is_reported(run_dir, tmp_path, monkeypatch):
    def put(self, items):
        raise lmdb.DiskError("mdb_txn_commit: No space left on device")

    monkeypatch.setattr(LmdbDatasetWriter, "_put", put)
    monkeypatch.setattr(lmdb_dataset, "TXN_RECORDS", 2)
    with pytest.raises(ExportError, match="no space left.*train.lmdb"):
        export_run(run_dir, tmp_path / "out", "lmdb")
    assert not (tmp_path / "out").exists()


def test_lmdb_map_grows_when_full(tmp_path, monkeypatch):
    monkeypatch.setattr(lmdb_dataset, "TXN_RECORDS", 7)
    writer = LmdbDatasetWriter(tmp_path / "x.lmdb", map_size=1 << 16)
    images = [np.random.default_rng(i).bytes(3000 + i) for i in range(60)]
    for i, image in enumerate(images):
        writer.add(i // 4, image)
    writer.commit()
    assert writer.resizes > 0
    db = LmdbDataset(tmp_path / "x.lmdb")
    assert len(db) == 60 and db.classnum == 15
    assert all(db[i] == (i // 4, image) for i, image in enumerate(images))
    db.close()


# A .rec/.idx written by mxnet 1.9.1's MXIndexedRecordIO (pack of a header record, two images, the
# second holding the magic word at aligned and unaligned offsets, and an identity record).
MAGIC = bytes.fromhex("0a23d7ce")
MXNET_REC = bytes.fromhex(
    "0a23d7ce20000000020000000000000000000000000000000000000000000000000040400000a0400a23d7ce1d000000"
    "000000000000e0400100000000000000000000000000000061626364650000000a23d7ce180000200000000000001041"
    "020000000000000000000000000000000a23d7ce0800004078790a23d7ce61620a23d7ce010000607a0000000a23d7ce"
    "200000000200000000000000030000000000000000000000000000000000803f00004040"
)
MXNET_IDX = "0\t0\n1\t40\n2\t80\n3\t140\n"
MXNET_RECORDS = [([3.0, 5.0], b"", 0), (7, b"abcde", 1), (9, MAGIC + b"xy" + MAGIC + b"ab" + MAGIC + b"z", 2),
                 ([1.0, 3.0], b"", 3)]


def test_recordio_bytes_match_mxnet(tmp_path):
    writer = IndexedRecordWriter(tmp_path / "t.rec", tmp_path / "t.idx")
    for label, payload, key in MXNET_RECORDS:
        writer.write(key, pack(label, payload, key))
    writer.commit()
    assert (tmp_path / "t.rec").read_bytes() == MXNET_REC
    assert (tmp_path / "t.idx").read_text() == MXNET_IDX
    with IndexedRecordReader(tmp_path / "t.rec", tmp_path / "t.idx") as reader:
        for label, payload, key in MXNET_RECORDS:
            head, data = unpack(reader.read_idx(key))
            assert data == payload and head.id == key
            assert head.label == (tuple(label) if isinstance(label, list) else label)


def test_rec_writer_limits(tmp_path, monkeypatch):
    writer = InsightFaceRecWriter(tmp_path)
    with pytest.raises(RecordIOError, match="float32"):
        writer.add(1 << 24, b"x")
    writer.add(5, b"x")
    with pytest.raises(RecordIOError, match="grouped by label"):
        writer.add(4, b"y")
    writer.abort()
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(recordio, "MAX_RECORD", 8)
    with pytest.raises(RecordIOError, match="exceeds"):
        recordio.frame(b"\0" * 9)
