"""DCFace mixing stage: strict checkpoint loading, the sampler against a restatement of the released DDIM, the
conditions, generation through the generator protocol, ID-set lookup, the input readers and the config rules.

Everything runs on the tiny random-weight build (``build_tiny_dcface``), on CPU, with a few DDIM steps."""

from __future__ import annotations

import io
import pickle
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from pydantic import ValidationError

from facefoundry.config import validate_config
from facefoundry.generators.base import IDENTITY_INDEX, IDENTITY_VECTOR, IMAGE_INDEX
from facefoundry.generators.dcface.config import DCFaceConfig
from facefoundry.generators.dcface.generator import (
    EMA_PREFIX,
    LIVE_PREFIX,
    CheckpointError,
    CheckpointNotFoundError,
    DCFaceGenerator,
    arch_from_state,
    ddim_schedule,
    load_networks,
    to_model_input,
)
from facefoundry.generators.dcface.inputs import IdSet, ImageBank, InputError, write_id_set
from facefoundry.generators.dcface.tiny import TINY_ARCH, build_tiny_dcface, tiny_state_dict
from facefoundry.sections import ConfigError

SIZE = 112
ID_COUNT = 8
STYLE_COUNT = 6  # tiny_dcface.STYLE_IMAGES


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, Path, Path]:
    """(checkpoint, ID set, style bank) of the tiny build."""
    return build_tiny_dcface(tmp_path_factory.mktemp("dcface-models"), seed=0, count=ID_COUNT)


@pytest.fixture(scope="module")
def state0() -> OrderedDict[str, torch.Tensor]:
    return tiny_state_dict(0)


def make_generator(tiny, **overrides) -> DCFaceGenerator:
    checkpoint, ids, bank = tiny
    values = {"tiny": True, "device": "cpu", "dtype": "float32", "steps": 3, "batch_size": 4,
              "checkpoint": str(checkpoint), "id_set": str(ids), "style_bank": str(bank)} | overrides
    gen = DCFaceGenerator(DCFaceConfig(**values))
    gen.setup()
    return gen


@pytest.fixture(scope="module")
def gen(tiny) -> DCFaceGenerator:
    return make_generator(tiny)


def sharing(gen: DCFaceGenerator, **overrides) -> DCFaceGenerator:
    """Another generator with other settings and ``gen``'s networks, ID set and style bank (no second load)."""
    other = DCFaceGenerator(gen.cfg.model_copy(update=overrides))
    other.id_set, other.styles = gen.id_set, gen.styles
    other.set_networks(gen.nets, "cpu", torch.float32)
    return other


def variations_for(vectors: np.ndarray, identities: list[int], indices: list[int]) -> list[dict]:
    """What pipelines/stages.py passes: the identity vector, its row and the image's index within the identity."""
    return [{IDENTITY_VECTOR: v, IDENTITY_INDEX: int(i), IMAGE_INDEX: int(j)}
            for v, i, j in zip(vectors, identities, indices, strict=True)]


def random_vectors(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 512)).astype(np.float32)


# ---------------------------------------------------------------------------------------------------- loading


def save_checkpoint(path: Path, state: dict[str, torch.Tensor]) -> Path:
    torch.save({"state_dict": state, "hyper_parameters": {"lr": 1e-4, "name": "modified"}}, path)
    return path


def test_tiny_checkpoint_is_refused_by_weights_only_but_loads(tiny, gen, state0):
    checkpoint = tiny[0]
    with pytest.raises(pickle.UnpicklingError):
        torch.load(checkpoint, weights_only=True)
    nets = gen.nets  # setup() -> load_networks(checkpoint)
    assert nets.arch == TINY_ARCH
    assert arch_from_state(state0, EMA_PREFIX) == TINY_ARCH
    assert arch_from_state(state0, LIVE_PREFIX) == TINY_ARCH
    targets = nets.prefixed_keys(EMA_PREFIX)
    assert len(targets) > 100
    own_state = {m: m.state_dict() for m in (nets.unet, nets.id_encoder, nets.style_encoder, nets.style_head)}
    for key, (module, own) in targets.items():  # every needed tensor is the checkpoint's, the EMA UNet's included
        assert torch.equal(own_state[module][own], state0[key]), key


def test_use_ema_false_takes_the_live_unet(tiny, gen, state0):
    live = load_networks(tiny[0], use_ema=False).unet.state_dict()["out.2.weight"]
    ema = gen.nets.unet.state_dict()["out.2.weight"]
    assert torch.equal(live, state0[LIVE_PREFIX + "out.2.weight"])
    assert torch.equal(ema, state0[EMA_PREFIX + "out.2.weight"])
    assert not torch.equal(live, ema)


def _renamed(state):
    state[EMA_PREFIX + "out.3.weight"] = state.pop(EMA_PREFIX + "out.2.weight")
    return [EMA_PREFIX + "out.2.weight", EMA_PREFIX + "out.3.weight"]


def _missing(state):
    del state["label_mapping.scaler.0"]
    return ["label_mapping.scaler.0"]


def _missing_arch_key(state):
    del state["external_mapping.pos_emb_0.0"]
    return ["external_mapping.pos_emb_0.0"]


def _unknown_prefix(state):
    state["discriminator.head.weight"] = torch.zeros(3)
    return ["discriminator.head.weight"]


def _wrong_shape(state):
    state[EMA_PREFIX + "out.2.bias"] = torch.zeros(7)
    return [EMA_PREFIX + "out.2.bias", "(7,)", "(6,)"]


@pytest.mark.parametrize("change", [_renamed, _missing, _missing_arch_key, _unknown_prefix, _wrong_shape])
def test_modified_checkpoint_is_refused_naming_the_key(tmp_path, state0, change):
    state = OrderedDict(state0)
    names = change(state)
    path = save_checkpoint(tmp_path / "modified.ckpt", state)
    with pytest.raises(CheckpointError) as err:
        load_networks(path)
    for name in names:
        assert name in str(err.value)


def test_ignored_prefixes_load(tmp_path, state0):
    state = OrderedDict(state0)
    state["recognition_model_eval.extra.weight"] = torch.ones(4)
    state["recognition_model.center.bias"] = torch.ones(10)
    for key in [k for k in state if k.startswith(LIVE_PREFIX)]:  # the unused UNet copy may be absent too
        del state[key]
    nets = load_networks(save_checkpoint(tmp_path / "extra.ckpt", state))
    assert nets.arch == TINY_ARCH
    assert torch.equal(nets.unet.state_dict()["out.2.weight"], state0[EMA_PREFIX + "out.2.weight"])
    # ... but not with use_ema=False: then the live UNet is the one needed
    with pytest.raises(CheckpointError, match="model.input_blocks.0.0.weight"):
        load_networks(tmp_path / "extra.ckpt", use_ema=False)


def test_missing_and_unreadable_files(tmp_path):
    missing = tmp_path / "nowhere" / "dcface_3x3.ckpt"
    with pytest.raises(CheckpointNotFoundError) as err:
        load_networks(missing)
    assert str(missing) in str(err.value) and "mk-minchul/dcface" in str(err.value)  # where to get it
    assert isinstance(err.value, FileNotFoundError)
    text = tmp_path / "notes.ckpt"
    text.write_text("this is not a checkpoint\n")
    with pytest.raises(CheckpointError, match="notes.ckpt"):
        load_networks(text)
    with pytest.raises(CheckpointError, match="not a DCFace state dict"):
        arch_from_state({"model.x": torch.zeros(1)}, EMA_PREFIX)


# ---------------------------------------------------------------------------------------------------- sampler


def official_ddim(unet, stylemod, context, seeds, steps: int, eta: float, clip: bool = True) -> torch.Tensor:
    """The released sampler (DDIMPipeline + diffusers ~0.3 DDIMScheduler: linear float32 schedule, set_alpha_to_one,
    clip_sample, eta noise at every step), with a torch.Generator per image (initial noise, then one per step)."""
    betas = np.linspace(1e-4, 0.02, 1000, dtype=np.float32)
    alphas_cumprod = np.cumprod(1.0 - betas, axis=0)
    assert alphas_cumprod.dtype == np.float32
    final_alpha_cumprod = 1.0
    stride = 1000 // steps
    gens = [torch.Generator().manual_seed(int(s)) for s in seeds]

    def randn() -> torch.Tensor:
        return torch.stack([torch.randn((3, SIZE, SIZE), generator=g) for g in gens])

    sample = randn()
    for t in (np.arange(steps) * stride)[::-1]:
        model_output = unet(sample, torch.tensor([int(t)]), stylemod, context)[:, :3]
        prev_t = int(t) - stride
        alpha_prod_t = float(alphas_cumprod[t])
        alpha_prod_t_prev = float(alphas_cumprod[prev_t]) if prev_t >= 0 else final_alpha_cumprod
        beta_prod_t = 1 - alpha_prod_t
        pred_original_sample = (sample - beta_prod_t**0.5 * model_output) / alpha_prod_t**0.5
        if clip:
            pred_original_sample = torch.clamp(pred_original_sample, -1, 1)
        variance = (1 - alpha_prod_t_prev) / beta_prod_t * (1 - alpha_prod_t / alpha_prod_t_prev)
        std_dev_t = eta * variance**0.5
        pred_sample_direction = (1 - alpha_prod_t_prev - std_dev_t**2) ** 0.5 * model_output
        sample = alpha_prod_t_prev**0.5 * pred_original_sample + pred_sample_direction
        if eta > 0:
            sample = sample + variance**0.5 * eta * randn()
    return sample


@pytest.fixture(scope="module")
def conditions(gen):
    """(ID images, style images, stylemod, context) of two (ID row, style) pairs."""
    ids = [gen.id_set.array(1), gen.id_set.array(4)]
    styles = [gen.styles.array(0), gen.styles.array(5)]
    with torch.inference_mode():
        stylemod, context = gen.nets.conditions(to_model_input(ids, gen.device, gen.dtype),
                                                to_model_input(styles, gen.device, gen.dtype))
    return ids, styles, stylemod, context


def test_ddim_schedule_is_the_released_one():
    timesteps, alphas_cumprod = ddim_schedule(50)
    assert timesteps == list(range(980, -1, -20))
    betas = np.linspace(1e-4, 0.02, 1000, dtype=np.float32)
    assert alphas_cumprod.dtype == torch.float32
    assert np.array_equal(alphas_cumprod.numpy(), np.cumprod(1.0 - betas))
    assert ddim_schedule(5)[0] == [800, 600, 400, 200, 0]


def _compare(gen1: DCFaceGenerator, unet, stylemod, context, seeds, steps: int) -> None:
    """gen1 (eta 1) against the restatement, with and without the x0 clip, and against eta 0."""
    gen0 = DCFaceGenerator(gen1.cfg.model_copy(update={"eta": 0.0}))
    gen0.set_networks(gen1.nets, "cpu", torch.float32)
    with torch.inference_mode():
        ours, ours0 = gen1.sample(stylemod, context, seeds), gen0.sample(stylemod, context, seeds)
        ref = official_ddim(unet, stylemod, context, seeds, steps, 1.0)
        ref0 = official_ddim(unet, stylemod, context, seeds, steps, 0.0)
        unclipped = official_ddim(unet, stylemod, context, seeds, steps, 1.0, clip=False)
    diff, diff0 = (ours - ref).abs().max().item(), (ours0 - ref0).abs().max().item()
    print(f"{steps} steps: max |sample - official| eta=1: {diff:.3g}, eta=0: {diff0:.3g}")
    assert ours.shape == (len(seeds), 3, SIZE, SIZE)
    assert diff < 1e-4 and diff0 < 1e-4
    assert (ours - unclipped).abs().max().item() > 1e-2  # the x0 clip matters here: the comparison can fail
    assert (ours - ours0).abs().max().item() > 1e-2
    assert (ours[0] - ours[1]).abs().max().item() > 1e-2


def test_sampler_equals_the_official_ddim_tiny_unet(gen, conditions):
    """The tiny random UNet is so sensitive to its input that float rounding differences grow to O(1) within a few
    steps (one image alone vs in a pair: 3e-6 after 1 step, 2.5e-4 after 2, 1.6 after 5), so two steps (t = 500, 0)
    are compared end to end here and 5 and 50 steps with a well-conditioned stand-in UNet below."""
    _, _, stylemod, context = conditions
    gen1 = sharing(gen, steps=2, eta=1.0)
    _compare(gen1, gen1.nets.unet, stylemod, context, np.array([7, 123456789]), 2)


class SmoothUNet(torch.nn.Module):
    """A well-conditioned stand-in for the UNet (same call); records the timesteps; channels 3.. are not epsilon."""

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(0.8))
        self.seen: list[int] = []

    def forward(self, x, timesteps, stylemod, context):
        self.seen.append(int(timesteps.reshape(-1)[0]))
        shift = (stylemod.mean(1) + 1e-3 * context.mean((1, 2))).view(-1, 1, 1, 1)
        eps = torch.tanh(self.scale * x + 0.3 * torch.roll(x, 1, dims=1) + 0.1 * shift + timesteps.float() / 1000)
        return torch.cat([eps, 100 + x], dim=1)


class StandIn(torch.nn.Module):
    def __init__(self, unet: torch.nn.Module):
        super().__init__()
        self.unet, self.arch = unet, TINY_ARCH


@pytest.mark.parametrize("steps", [5, 50])
def test_sampler_equals_the_official_ddim_smooth_unet(conditions, steps):
    _, _, stylemod, context = conditions
    unet = SmoothUNet()
    gen1 = DCFaceGenerator(DCFaceConfig(tiny=True, steps=steps, eta=1.0))
    gen1.set_networks(StandIn(unet), "cpu", torch.float32)
    seeds = np.array([0, 99])
    with torch.inference_mode():
        gen1.sample(stylemod, context, seeds)
    assert unet.seen == [1000 // steps * k for k in range(steps)][::-1]
    _compare(gen1, unet, stylemod, context, seeds, steps)
    # per-image seeds: image 1 alone (a batch of one) is image 1 of the pair
    with torch.inference_mode():
        pair, alone = gen1.sample(stylemod, context, seeds), gen1.sample(stylemod[1:], context[1:], seeds[1:])
    assert (alone[0] - pair[1]).abs().max().item() < 1e-5


def test_render_output_is_rounded_clamped_sample(gen, conditions):
    ids, styles, _, _ = conditions
    seeds = np.array([3, 4])
    images = gen.render(ids, styles, seeds)
    with torch.inference_mode():  # recomputed under this test's thread count: the tiny UNet amplifies rounding
        stylemod, context = gen.nets.conditions(to_model_input(ids, gen.device, gen.dtype),
                                                to_model_input(styles, gen.device, gen.dtype))
        x = gen.sample(stylemod, context, seeds)
    expected = ((x / 2 + 0.5).clamp(0, 1) * 255).round().permute(0, 2, 3, 1).numpy()
    got = np.stack(images)
    assert got.dtype == np.uint8 and got.shape == (2, SIZE, SIZE, 3)
    assert np.abs(got.astype(np.float64) - expected).max() <= 1
    assert np.mean(got == expected) > 0.99
    assert 0 < np.mean(got == 255) < 1 and 0 < np.mean(got == 0) < 1  # clamped, not wrapped


# ---------------------------------------------------------------------------------------------------- conditions


def test_conditions_are_the_official_composition(gen, conditions):
    ids, styles, stylemod, context = conditions
    nets = gen.nets
    id_in, style_in = to_model_input(ids, gen.device, gen.dtype), to_model_input(styles, gen.device, gen.dtype)
    with torch.inference_mode():
        want_mod, id_tokens = nets.id_encoder(id_in)
        _, spatials = nets.style_encoder(style_in)
        style_tokens = nets.style_head(spatials)
        want_context = nets.style_head.cross_attn_adapter(torch.cat([id_tokens, style_tokens], 1).transpose(1, 2))
        swapped = nets.style_head.cross_attn_adapter(torch.cat([style_tokens, id_tokens], 1).transpose(1, 2))
    s = TINY_ARCH.spatial_dim
    assert id_tokens.shape == (2, 49, TINY_ARCH.id_depths[-1])
    assert style_tokens.shape == (2, 1 + s * s, TINY_ARCH.id_depths[-1])
    assert context.shape == (2, TINY_ARCH.unet.context_channels, 49 + 1 + s * s)
    assert stylemod.shape == (2, TINY_ARCH.id_depths[-1])
    torch.testing.assert_close(stylemod, want_mod, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(context, want_context, rtol=1e-5, atol=1e-5)
    assert (context - swapped).abs().max().item() > 1e-3
    # both inputs reach the context: the ID image its first 49 tokens, the style image the last 1 + S*S
    with torch.inference_mode():
        _, restyled = nets.conditions(id_in, style_in.flip(0))
        _, reid = nets.conditions(id_in.flip(0), style_in)
    assert (restyled[..., 49:] - context[..., 49:]).abs().max().item() > 1e-3
    torch.testing.assert_close(restyled[..., :49], context[..., :49], rtol=1e-5, atol=1e-5)
    assert (reid[..., :49] - context[..., :49]).abs().max().item() > 1e-3
    # pixels in [-1, 1] as ToTensor + Normalize(0.5, 0.5)
    assert torch.equal(id_in[0, :, 5, 7], torch.from_numpy(ids[0][5, 7].astype(np.float32)) / 127.5 - 1)


def test_style_and_identity_both_reach_the_image(gen):
    """The same seed with another style image, or another ID image, gives another image (the tiny build damps its
    ID encoder so that ID tokens do not drown the style tokens in cross-attention)."""
    seeds = np.array([5, 5, 5])
    ids = [gen.id_set.array(0), gen.id_set.array(0), gen.id_set.array(1)]
    styles = [gen.styles.array(0), gen.styles.array(3), gen.styles.array(0)]
    base, restyled, reidentified = (im.astype(int) for im in gen.render(ids, styles, seeds))
    assert np.abs(base - restyled).mean() > 0.3
    assert np.abs(base - reidentified).mean() > 0.3


# ---------------------------------------------------------------------------------------------------- generation


def spy_render(monkeypatch, generator: DCFaceGenerator) -> list[tuple[list, list, list]]:
    """Record the (ID images, style images, seeds) of every render call of ``generator``."""
    calls, real = [], generator.render

    def render(ids, styles, seeds):
        calls.append((ids, styles, list(seeds)))
        return real(ids, styles, seeds)

    monkeypatch.setattr(generator, "render", render)
    return calls


def test_generate_output_images_sources_and_inputs(tiny, gen, monkeypatch):
    vectors = random_vectors(4, 1)
    seeds = np.array([11, 12, 13, 14])
    variations = variations_for(vectors, [0, 3, 9, 3], [0, 0, 1, 1])
    calls = spy_render(monkeypatch, gen)
    out = gen.generate_output(vectors, seeds, variations)
    assert len(out.images) == 4
    assert all(im.shape == (SIZE, SIZE, 3) and im.dtype == np.uint8 for im in out.images)
    assert not np.array_equal(out.images[0], out.images[1])
    assert set(out.columns) == {f.name for f in gen.extra_fields()}
    out.arrays(gen.extra_fields())  # the declared Arrow types accept the columns
    rows = [0, 3, 1, 3]  # tiny: the identity index modulo the ID set size (8)
    assert out.columns["id_source"] == [f"tiny:{r}" for r in rows]
    bank_files = sorted(p.name for p in tiny[2].iterdir())
    assert bank_files == [f"style_{k}.png" for k in range(STYLE_COUNT)]
    assert set(out.columns["style_source"]) <= set(bank_files)
    # what was rendered: the ID images of those rows, the style images named, the seeds
    assert len(calls) == 1 and calls[0][2] == seeds.tolist()
    for r, im in zip(rows, calls[0][0], strict=True):
        assert np.array_equal(im, gen.id_set.array(r))
    for name, im in zip(out.columns["style_source"], calls[0][1], strict=True):
        assert np.array_equal(im, np.asarray(Image.open(tiny[2] / name).convert("RGB")))
    # another instance, loaded from the same files: byte-equal
    again = make_generator(tiny).generate_output(vectors, seeds, variations)
    assert all(np.array_equal(a, b) for a, b in zip(out.images, again.images, strict=True))
    assert again.columns == out.columns


def test_random_style_depends_on_the_seed_only(gen):
    seeds = np.arange(40)
    picked = gen.style_indices(seeds, None)
    assert picked.min() >= 0 and picked.max() < STYLE_COUNT
    assert len(set(picked.tolist())) > 1
    other_variations = variations_for(random_vectors(40, 2), list(range(40, 80)), list(range(7, 47)))
    assert np.array_equal(gen.style_indices(seeds, other_variations), picked)
    assert np.array_equal(gen.style_indices(seeds[::-1], None), picked[::-1])
    # through generate_output: the same seed, different identities and image indices -> the same style
    vectors = random_vectors(3, 3)
    out = gen.generate_output(vectors, np.array([5, 5, 6]), variations_for(vectors, [1, 2, 1], [0, 9, 0]))
    style = gen.styles.name(int(gen.style_indices(np.array([5]), None)[0]))
    assert out.columns["style_source"][:2] == [style, style]


def test_list_style_takes_style_k_for_image_index_k(gen, monkeypatch):
    lister = sharing(gen, style_sampling="list", steps=1)
    indices = [0, 1, 5, 6, 13]
    vectors = random_vectors(len(indices), 4)
    variations = variations_for(vectors, [2] * len(indices), indices)
    calls = spy_render(monkeypatch, lister)
    out = lister.generate_output(vectors, np.array([9] * len(indices)), variations)
    assert out.columns["style_source"] == [f"style_{k % STYLE_COUNT}.png" for k in indices]
    rendered = [im for call in calls for im in call[1]]
    for k, im in zip(indices, rendered, strict=True):
        assert np.array_equal(im, lister.styles.array(k % STYLE_COUNT))
    # without variations: the position in the call
    assert lister.style_indices(np.zeros(8), None).tolist() == [0, 1, 2, 3, 4, 5, 0, 1]


def test_output_size_resizes(gen):
    vectors = random_vectors(1, 6)
    variations = variations_for(vectors, [1], [0])
    small = sharing(gen, output_size=64).generate_output(vectors, np.array([8]), variations)
    full = gen.generate_output(vectors, np.array([8]), variations)
    assert small.images[0].shape == (64, 64, 3) and small.images[0].dtype == np.uint8
    expected = np.asarray(Image.fromarray(full.images[0]).resize((64, 64), Image.Resampling.LANCZOS))
    assert np.abs(small.images[0].astype(int) - expected.astype(int)).max() <= 1


# ---------------------------------------------------------------------------------------------------- ID lookup


def test_identities_are_found_by_vector(tmp_path, tiny):
    rng = np.random.default_rng(7)
    images = [rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8) for _ in range(5)]
    vectors = rng.standard_normal((5, 512)).astype(np.float32)
    sources = ["casia/1.jpg", "casia/2.jpg", "gen/a.png", "gen/b.png", "gen/c.png"]
    ids = write_id_set(tmp_path / "ids.parquet", images, vectors, sources, {"encoder": "test"})
    id_set = IdSet(ids)
    assert id_set.sources == sources and id_set.metadata == {"encoder": "test"}
    assert np.array_equal(id_set.array(3), images[3])
    checkpoint, _, bank = tiny
    g = DCFaceGenerator(DCFaceConfig(tiny=False, id_set=str(ids), style_bank=str(bank), checkpoint=str(checkpoint),
                                     device="cpu", dtype="float32", steps=1))
    g.setup()
    perm = np.array([3, 0, 4, 1])
    out = g.generate_output(3 * vectors[perm], np.arange(4))
    assert out.columns["id_source"] == [sources[p] for p in perm]
    # the pipeline's variations: IDENTITY_VECTOR is the identity even when the input vector was perturbed
    moved = random_vectors(4, 8)
    via = g.generate_output(moved, np.arange(4), variations_for(3 * vectors[perm], [0, 1, 2, 3], [0, 0, 0, 0]))
    assert via.columns["id_source"] == out.columns["id_source"]
    assert all(np.array_equal(a, b) for a, b in zip(out.images, via.images, strict=True))
    with pytest.raises(InputError, match="identities.file"):
        g.generate_output(moved[:1], np.arange(1))


# ---------------------------------------------------------------------------------------------------- inputs


def _png(path: Path, size: int = SIZE, value: int = 0) -> None:
    Image.fromarray(np.full((size, size, 3), value, np.uint8)).save(path)


def test_image_bank_folder_natural_order_and_size_check(tmp_path):
    folder = tmp_path / "bank"
    (folder / "sub").mkdir(parents=True)
    for i, name in enumerate(["img10.png", "img2.png", "img1.png", "sub/img0.png"]):
        _png(folder / name, value=10 * i)
    (folder / "notes.txt").write_text("not an image")
    bank = ImageBank(folder)
    assert [bank.name(i) for i in range(len(bank))] == ["img1.png", "img2.png", "img10.png", "sub/img0.png"]
    assert bank.array(2).shape == (SIZE, SIZE, 3) and int(bank.array(2)[0, 0, 0]) == 0  # img10 was written first
    _png(folder / "img3.png", size=96)
    bank = ImageBank(folder)
    with pytest.raises(InputError) as err:
        bank.array(2)
    assert "img3.png" in str(err.value) and "112" in str(err.value)


def test_image_bank_empty_or_missing(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no images"):
        ImageBank(tmp_path / "empty")
    with pytest.raises(InputError, match="does not exist"):
        ImageBank(tmp_path / "absent")


def test_image_bank_parquet(tmp_path):
    arrays = [np.full((SIZE, SIZE, 3), v, np.uint8) for v in (10, 20, 30)]
    blobs = []
    for a in arrays:
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, format="PNG")
        blobs.append(buf.getvalue())
    image = pa.StructArray.from_arrays([pa.array(blobs, pa.binary()), pa.array(["a.png", None, "c/d.png"])],
                                       names=["bytes", "path"])
    pq.write_table(pa.table({"image": image, "label": [1, 2, 3]}), tmp_path / "styles.parquet")
    bank = ImageBank(tmp_path / "styles.parquet")
    assert len(bank) == 3
    names = ["styles.parquet:0:a.png", "styles.parquet:1", "styles.parquet:2:c/d.png"]
    assert [bank.name(i) for i in range(3)] == names
    assert np.array_equal(bank.array(2), arrays[2])
    folder_bank = ImageBank(tmp_path)  # a folder of Parquet files
    assert folder_bank.name(0) == "styles.parquet:0:a.png"
    (tmp_path / "bad").mkdir()
    pq.write_table(pa.table({"pixels": [1]}), tmp_path / "bad" / "x.parquet")
    with pytest.raises(InputError, match="`image`"):
        ImageBank(tmp_path / "bad" / "x.parquet")
    with pytest.raises(InputError, match="must be a Parquet file"):
        IdSet(tmp_path / "bad")


# ---------------------------------------------------------------------------------------------------- config


def test_config_needs_id_set_and_style_bank():
    with pytest.raises(ValidationError, match="dcface-ids"):
        DCFaceConfig()
    with pytest.raises(ValueError, match="generator.style_bank"):
        DCFaceConfig(id_set="ids.parquet")
    assert DCFaceConfig(tiny=True).id_set is None


def _run(generator: dict, identities: dict) -> dict:
    return {"identities": {"count": 4, **identities}, "images": {"per_identity": 2},
            "generator": {"kind": "dcface", **generator}}


DCFACE = {"id_set": "models/ids.parquet", "style_bank": "models/styles"}


@pytest.mark.parametrize("identities", [
    {},
    {"sampler": "uniform_sphere"},
    {"sampler": "from_file", "file": "other.parquet"},
])
def test_config_dcface_identities_must_be_the_id_set(identities):
    with pytest.raises(ConfigError, match="identities.file") as err:
        validate_config(_run(DCFACE, identities))
    assert "models/ids.parquet" in str(err.value)


def test_config_dcface_from_its_id_set_and_tiny_any_sampler():
    cfg = validate_config(_run(DCFACE, {"sampler": "from_file", "file": "models/./ids.parquet"}))
    assert cfg.generator.kind == "dcface" and cfg.generator.id_set == "models/ids.parquet"
    with pytest.raises(ConfigError, match="identities.space"):
        validate_config(_run(DCFACE, {"sampler": "from_file", "file": "models/ids.parquet", "space": "raw"}))
    for sampler in ("gaussian_rejection", "uniform_sphere"):
        assert validate_config(_run({"tiny": True}, {"sampler": sampler})).generator.tiny
