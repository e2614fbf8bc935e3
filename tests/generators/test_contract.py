"""The generator contract, run on every registered generator's tiny build at one step, built and loaded the way a
run does (its spec's ``model_paths``, then ``from_paths`` and ``setup``): image ``i`` is drawn from (vector ``i``, seed
``i``, variation ``i``) only, whatever batch it is in; the declared columns come back; bad inputs are refused.

(The pattern of diffusers' ``PipelineTesterMixin``: one class of checks, every generator.)"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from facefoundry.generators.base import IDENTITY_INDEX, IDENTITY_VECTOR, IMAGE_INDEX, in_microbatches
from facefoundry.generators.registry import SPECS, generator_class

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# The fewest steps each sampler takes (what a tiny build needs to show the contract); micro-batches of 2.
FAST = {"arc2face": {"steps": 1}, "idiff_face": {"sampler": "ddim", "steps": 1}, "dcface": {"steps": 1},
        "id-booth": {"steps": 1, "resolution": 64}}
IDENTITIES = 3


def _id_booth_loras(paths):
    """ID-Booth generates from the LoRAs its fine-tuning stage leaves: random ones in the official format here."""
    from facefoundry.generators.id_booth.tiny import write_tiny_loras

    write_tiny_loras(paths.base_model, paths.loras, IDENTITIES)


# What a kind's preparation stage (GeneratorSpec.preparation) would have left before generation.
PREPARED = {"id-booth": _id_booth_loras}


def _section(kind: str, **updates):
    spec = SPECS[kind]
    values = {"tiny": True} if "tiny" in spec.config.model_fields else {}
    values |= {k: v for k, v in {"device": "cpu", "dtype": "float32", "batch_size": 2}.items()
               if k in spec.config.model_fields}
    return spec.config(**(values | FAST.get(kind, {}) | updates))


@pytest.fixture(scope="module", params=sorted(k for k in SPECS if SPECS[k].renders))  # merged: never generated
def built(request, tmp_path_factory):
    """(kind, generator section, set-up generator) from the tiny build in the official layout."""
    kind = request.param
    gen = _section(kind)
    paths = SPECS[kind].model_paths(gen, tmp_path_factory.mktemp(f"{kind}-models"), seed=0, identities=IDENTITIES)
    PREPARED.get(kind, lambda paths: None)(paths)
    generator = generator_class(gen).from_paths(gen, paths.model, paths.base_model, paths.extra)
    generator.setup()
    return kind, gen, generator


def _inputs(kind: str, n: int = 3, seed: int = 0):
    """``n`` identity vectors of the generator's space with the pipeline's variations (identity i, image 0)."""
    vectors = np.random.default_rng(seed).standard_normal((n, 512)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    if SPECS[kind].kind == "vec2face":  # the raw ArcFace-R100 space (identities.norm about 22)
        vectors *= 22.0
    variations = [{IDENTITY_VECTOR: v, IDENTITY_INDEX: i, IMAGE_INDEX: 0} for i, v in enumerate(vectors)]
    return vectors, np.array([11, 22, 33][:n]), variations


def _close(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal up to one grey level (batched kernels round differently than a batch of one)."""
    return a.shape == b.shape and int(np.abs(a.astype(int) - b.astype(int)).max()) <= 1


def test_an_image_depends_on_its_own_inputs_only(built):
    kind, _, generator = built
    vectors, seeds, variations = _inputs(kind)
    batch = generator.generate_output(vectors, seeds, variations)  # micro-batches [0, 1] and [2]
    size = batch.images[0].shape[0]  # a tiny build's own size (Arc2Face's: 64 px)
    assert [im.shape for im in batch.images] == [(size, size, 3)] * 3 and batch.images[0].dtype == np.uint8
    for i in range(3):
        alone = generator.generate_output(vectors[i:i + 1], seeds[i:i + 1], variations[i:i + 1]).images[0]
        assert _close(batch.images[i], alone), f"{kind}: image {i} changed with its batch"
    reordered = generator.generate_output(vectors[::-1], seeds[::-1], variations[::-1])
    assert all(_close(x, y) for x, y in zip(batch.images, reordered.images[::-1], strict=True))
    for name, values in batch.columns.items():  # the per-image columns follow their images too
        assert list(values) == list(reordered.columns[name])[::-1], f"{kind}: column {name}"
    other = generator.generate_output(vectors[:1], np.array([99]), variations[:1]).images[0]
    assert np.abs(other.astype(int) - batch.images[0].astype(int)).mean() > 1, f"{kind}: the seed draws nothing"


def test_the_declared_columns_come_back(built):
    kind, _, generator = built
    vectors, seeds, variations = _inputs(kind, 2)
    fields = generator.extra_fields()
    arrays = generator.generate_output(vectors, seeds, variations).arrays(fields)
    assert list(arrays) == [f.name for f in fields]
    assert all(len(a) == 2 and a.type == f.type for a, f in zip(arrays.values(), fields, strict=True))


def test_bad_inputs_are_refused(built):
    kind, _, generator = built
    vectors, seeds, variations = _inputs(kind, 2)
    nan = vectors.copy()
    nan[1, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        generator.generate(nan, seeds[:2], variations)
    with pytest.raises(ValueError, match="seeds"):
        generator.generate(vectors, seeds[:1], variations)
    if not SPECS[kind].rehearsal:  # the no-op generator takes vectors of any dimension
        with pytest.raises(ValueError, match=r"\(N, 512\)"):
            generator.generate(np.ones((2, 128), np.float32), seeds[:2])


def test_out_of_memory_halves_the_micro_batch_down_to_one():
    calls = []

    def run(start: int, stop: int) -> list[np.ndarray]:
        calls.append((start, stop))
        if stop - start > 1:
            raise torch.OutOfMemoryError("simulated")
        return [np.full((1,), start)]

    out = in_microbatches(5, 4, run, torch.device("cpu"))
    assert [int(x[0]) for x in out] == [0, 1, 2, 3, 4]
    assert calls == [(0, 4), (0, 2), (0, 1), (1, 2), (2, 3), (3, 4), (4, 5)]

    def always(start: int, stop: int) -> list[np.ndarray]:
        raise torch.OutOfMemoryError("simulated")

    with pytest.raises(torch.OutOfMemoryError):  # a single image that does not fit fails the unit
        in_microbatches(3, 2, always, None)
