import pickle

import cv2
import numpy as np
import pytest
from benchfiles import RunsCommand, encoded_flat, flat, index_of, pickle_plain, python2_pickle, two_tone

from facefoundry.evaluate.benchmarks import (
    BenchmarkError,
    decode_image,
    encode_image,
    find_benchmarks,
    load_benchmark,
    load_benchmarks,
    write_bin,
)

INDICES = [3, 3, 70000, 5, 1, 260]
ISSAME = [True, False, False]


def test_write_bin_round_trip(tmp_path):
    path = write_bin(tmp_path / "agedb_30.bin", [flat(i) for i in INDICES[:4]] + encoded_flat(INDICES[4:]), ISSAME)
    bench = load_benchmark(path)
    assert (bench.name, bench.display_name, bench.num_pairs) == ("agedb_30", "AgeDB-30", 3)
    assert bench.issame.tolist() == ISSAME
    images = bench.images()
    assert images.shape == (6, 112, 112, 3) and images.dtype == np.uint8
    assert index_of(images).tolist() == INDICES
    assert np.array_equal(bench.images(2, 4), images[2:4])
    with open(path, "rb") as f:  # the exact layout the reference loader reads
        bins, issame = pickle.load(f, encoding="bytes")
    assert isinstance(bins, list) and all(isinstance(b, bytes) for b in bins) and issame == ISSAME


@pytest.mark.parametrize("variant", ["bytes-p2", "bytes-p5", "numpy-p2", "numpy-p5", "python2"])
def test_real_world_pickle_variants(tmp_path, variant):
    encoded = encoded_flat(INDICES)
    path = tmp_path / "lfw.bin"
    if variant.startswith("bytes"):  # py3 protocol 2 rebuilds bytes through _codecs.encode
        pickle_plain(path, encoded, ISSAME, protocol=int(variant[-1]))
    elif variant.startswith("numpy"):  # images as uint8 arrays of the encoded bytes, numpy bool flags
        arrays = [np.frombuffer(b, dtype=np.uint8) for b in encoded]
        pickle_plain(path, arrays, [np.bool_(f) for f in ISSAME], protocol=int(variant[-1]))
    else:
        path.write_bytes(python2_pickle(encoded, ISSAME))
        assert pickle.loads(path.read_bytes(), encoding="bytes") == (encoded, ISSAME)  # the opcodes are right
    bench = load_benchmark(path)
    assert bench.encoded == tuple(encoded) and bench.issame.tolist() == ISSAME
    assert index_of(bench.images()).tolist() == INDICES


def test_python2_long_strings_use_binstring(tmp_path):
    big = encode_image(np.random.default_rng(0).integers(0, 255, (112, 112, 3), dtype=np.uint8))
    assert len(big) > 256
    path = tmp_path / "x.bin"
    path.write_bytes(python2_pickle([big, big], [True]))
    assert load_benchmark(path).encoded == (big, big)


def test_command_payload_is_refused_and_never_runs(tmp_path):
    live = tmp_path / "live"
    pickle.loads(pickle.dumps(RunsCommand(live), protocol=2))  # the payload is real: plain pickle runs it
    assert live.exists()
    marker = tmp_path / "pwned"
    whole = pickle_plain(tmp_path / "lfw.bin", RunsCommand(marker), [], protocol=2)  # type: ignore[arg-type]
    inside = pickle_plain(tmp_path / "cfp_fp.bin", encoded_flat([1]) + [RunsCommand(marker)], [True], protocol=4)
    for path in (whole, inside):
        with pytest.raises(BenchmarkError) as err:
            load_benchmark(path)
        message = str(err.value)
        assert str(path) in message and "posix.system" in message and "\n" not in message
    assert not marker.exists()


def test_other_globals_and_object_arrays_are_refused(tmp_path):
    cases = {
        "codec.bin": b"\x80\x02c_codecs\nencode\nX\x03\x00\x00\x00abcX\x04\x00\x00\x00zlib\x86R.",
        "builtin.bin": pickle.dumps((eval, ("1",)), protocol=2),
        "objarray.bin": pickle.dumps(([np.array([b"x"], dtype=object)] * 2, [True]), protocol=2),
    }
    expected = {"codec.bin": "zlib", "builtin.bin": r"__builtin__\.eval", "objarray.bin": "holds Python objects"}
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(BenchmarkError, match=expected[name]):
            load_benchmark(tmp_path / name)


def test_wrong_layouts(tmp_path):
    good = encoded_flat([1, 2])
    cases = {
        "missing.bin": None,
        "text.bin": b"not a pickle at all",
        "truncated.bin": pickle.dumps((good, [True]), protocol=2)[:-30],
        "dict.bin": pickle.dumps({"bins": good}),
        "triple.bin": pickle.dumps((good, [True], 3)),
        "odd.bin": pickle.dumps((good + good[:1], [True])),
        "empty.bin": pickle.dumps(([], [])),
        "mismatch.bin": pickle.dumps((good, [True, False])),
        "notbytes.bin": pickle.dumps(([good[0], 7], [True])),
        "decoded.bin": pickle.dumps(([flat(1), flat(2)], [True])),
        "flag.bin": pickle.dumps((good, ["yes"])),
    }
    expected = {"missing.bin": "no such benchmark file", "text.bin": "not a readable benchmark pickle",
                "truncated.bin": "not a readable", "dict.bin": "2-tuple", "triple.bin": "of length 3",
                "odd.bin": "3 images", "empty.bin": "0 images", "mismatch.bin": "2 issame flags for 2 images",
                "notbytes.bin": "image 1 is a int", "decoded.bin": r"image 0 is a uint8 array of shape \(112, 112, 3\)",
                "flag.bin": r"issame\[0\]"}
    for name, data in cases.items():
        if data is not None:
            (tmp_path / name).write_bytes(data)
        with pytest.raises(BenchmarkError, match=expected[name]) as err:
            load_benchmark(tmp_path / name)
        assert str(tmp_path / name) in str(err.value)


def test_undecodable_image_is_named_by_index(tmp_path):
    bins = encoded_flat([1, 2, 3]) + [b"\xff\xd8 garbage"]
    bench = load_benchmark(write_bin(tmp_path / "calfw.bin", bins, [True, False]))
    assert index_of(bench.images(0, 3)).tolist() == [1, 2, 3]
    with pytest.raises(BenchmarkError, match=r"calfw\.bin: image 3 cannot be decoded"):
        bench.images(2, 4)


def test_decode_resizes_and_converts():
    gray = np.full((80, 100), 200, dtype=np.uint8)
    ok, jpeg = cv2.imencode(".jpg", gray)
    image = decode_image(jpeg.tobytes())
    assert image.shape == (112, 112, 3) and image.dtype == np.uint8 and abs(int(image.mean()) - 200) <= 2
    rgb = decode_image(encode_image(two_tone(255, 255 << 8)))  # red left, green right: channel order kept
    assert rgb[0, 0].tolist() == [255, 0, 0] and rgb[0, -1].tolist() == [0, 255, 0]
    with pytest.raises(ValueError, match="not a decodable image"):
        decode_image(b"")


def test_find_benchmarks_in_papers_order(tmp_path):
    for name in ["calfw", "zzz", "lfw", "agedb_30", "cfp_fp", "cplfw", "aaa"]:
        (tmp_path / f"{name}.bin").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("x")
    names = [p.stem for p in find_benchmarks(tmp_path)]
    assert names == ["lfw", "cfp_fp", "cplfw", "agedb_30", "calfw", "aaa", "zzz"]
    with pytest.raises(BenchmarkError, match="not a folder"):
        find_benchmarks(tmp_path / "nowhere")


def test_load_benchmarks_keeps_going_past_a_bad_file(tmp_path):
    write_bin(tmp_path / "lfw.bin", encoded_flat([1, 2]), [True])
    (tmp_path / "cfp_fp.bin").write_bytes(b"\x80\x04corrupt")
    loaded, errors = load_benchmarks(tmp_path)
    assert [b.name for b in loaded] == ["lfw"] and list(errors) == ["cfp_fp"]
    assert "cfp_fp.bin: not a readable benchmark pickle" in errors["cfp_fp"]
    loaded, errors = load_benchmarks([tmp_path / "cfp_fp.bin", tmp_path / "lfw.bin", tmp_path / "agedb_30.bin"])
    assert [b.name for b in loaded] == ["lfw"] and sorted(errors) == ["agedb_30", "cfp_fp"]
    with pytest.raises(BenchmarkError, match="no such folder"):
        load_benchmarks(tmp_path / "nowhere")


def test_write_bin_checks_pair_count(tmp_path):
    with pytest.raises(ValueError, match="two images per issame flag"):
        write_bin(tmp_path / "x.bin", encoded_flat([1, 2, 3]), [True])
