"""Arc2Face generator on tiny random weights saved in the official layout (fast, CPU, offline)."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from facefoundry.generators.arc2face.config import Arc2FaceConfig
from facefoundry.generators.arc2face.generator import Arc2FaceGenerator, ModelFilesError
from facefoundry.generators.arc2face.tiny import MARKER, build_tiny_arc2face, make_tiny_components
from facefoundry.generators.base import Generator

CFG = Arc2FaceConfig(steps=2, guidance_scale=3.0, batch_size=4)

EXPECTED_FILES = {
    "Arc2Face/arc2face/config.json",
    "Arc2Face/arc2face/diffusion_pytorch_model.safetensors",
    "Arc2Face/encoder/config.json",
    "Arc2Face/encoder/model.safetensors",
    "lcm-lora-sdv1-5/pytorch_lora_weights.safetensors",
    "stable-diffusion-v1-5/model_index.json",
    "stable-diffusion-v1-5/scheduler/scheduler_config.json",
    "stable-diffusion-v1-5/tokenizer/merges.txt",
    "stable-diffusion-v1-5/tokenizer/special_tokens_map.json",
    "stable-diffusion-v1-5/tokenizer/tokenizer_config.json",
    "stable-diffusion-v1-5/tokenizer/vocab.json",
    "stable-diffusion-v1-5/vae/config.json",
    "stable-diffusion-v1-5/vae/diffusion_pytorch_model.safetensors",
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("models")
    model, base = build_tiny_arc2face(root, seed=0)
    return root, model, base


@pytest.fixture(scope="module")
def gen(tiny: tuple[Path, Path, Path]) -> Arc2FaceGenerator:
    _, model, base = tiny
    g = Arc2FaceGenerator(CFG, str(model), str(base))
    g.setup(device="cpu")
    return g


def variant(g: Arc2FaceGenerator, **updates: object) -> Arc2FaceGenerator:
    """Same loaded components, another config."""
    other = Arc2FaceGenerator(g.cfg.model_copy(update=updates), g.model, g.base)
    other.set_components(g.unet, g.text_encoder, g.tokenizer, g.vae, g.scheduler, device="cpu")
    return other


def vectors(n: int, seed: int = 0) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((n, 512)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def digests(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


# ----------------------------------------------------------------------------- layout and loading
def test_official_layout_and_idempotent_build(tiny: tuple[Path, Path, Path], tmp_path: Path) -> None:
    root, model, base = tiny
    files = digests(root)
    assert set(files) - {MARKER} == EXPECTED_FILES
    assert build_tiny_arc2face(root, seed=0) == (model, base)
    assert digests(root) == files  # rerun rewrites nothing
    build_tiny_arc2face(tmp_path, seed=0)
    assert digests(tmp_path) == files  # same seed, same bytes


def test_protocol_and_image_size(gen: Arc2FaceGenerator) -> None:
    assert isinstance(gen, Generator) and gen.name == "arc2face"
    assert gen.image_size == 64 and gen.dtype == torch.float32
    assert gen.tokenizer.model_max_length == 77


def test_round_trip_matches_fresh_load_and_in_memory(gen: Arc2FaceGenerator, tiny: tuple[Path, Path, Path]) -> None:
    v, seeds = vectors(2), np.array([3, 4])
    expected = gen.generate(v, seeds)
    fresh = Arc2FaceGenerator(CFG, str(tiny[1]), str(tiny[2]))
    fresh.setup(device="cpu")
    parts = make_tiny_components(len(gen.tokenizer), seed=0)
    memory = Arc2FaceGenerator(CFG)
    memory.set_components(parts["unet"], parts["text_encoder"], gen.tokenizer, parts["vae"], gen.scheduler, "cpu")
    for other in (fresh, memory):
        for a, b in zip(expected, other.generate(v, seeds), strict=True):
            assert np.array_equal(a, b)


def test_missing_subfolder_is_named(tiny: tuple[Path, Path, Path], tmp_path: Path) -> None:
    _, model, base = tiny
    shutil.copytree(model / "arc2face", tmp_path / "Arc2Face" / "arc2face")  # no encoder/
    with pytest.raises(ModelFilesError, match=r"encoder.*config\.json.*generator\.model"):
        Arc2FaceGenerator(CFG, str(tmp_path / "Arc2Face"), str(base)).setup(device="cpu")
    with pytest.raises(ModelFilesError, match="does not exist"):
        Arc2FaceGenerator(CFG, str(model), str(tmp_path / "nowhere")).setup(device="cpu")


# ------------------------------------------------------------------------------------ the encoder
def heads(h: torch.Tensor, lin: torch.nn.Linear, n_heads: int) -> torch.Tensor:
    """Project and split into (batch, heads, tokens, head_dim)."""
    return F.linear(h, lin.weight, lin.bias).view(*h.shape[:2], n_heads, -1).transpose(1, 2)


def reference_encode(g: Arc2FaceGenerator, vecs: torch.Tensor, causal: bool = True) -> torch.Tensor:
    """Arc2Face's identity encoding written out from the encoder's raw weights."""
    text = getattr(g.text_encoder, "text_model", g.text_encoder)
    assert g.text_encoder.config.hidden_act == "quick_gelu"
    ids = g.prompt_ids[0]
    length, width = ids.shape[0], text.final_layer_norm.weight.shape[0]
    x = text.embeddings.token_embedding.weight[ids].expand(len(vecs), -1, -1).clone()
    x[:, g.id_position] = F.pad(vecs / vecs.norm(dim=1, keepdim=True), (0, width - 512))
    x = x + text.embeddings.position_embedding.weight[:length]
    future = torch.ones(length, length, dtype=torch.bool).triu(1)
    for layer in text.encoder.layers:
        att = layer.self_attn
        h = F.layer_norm(x, (width,), layer.layer_norm1.weight, layer.layer_norm1.bias, layer.layer_norm1.eps)
        q, k, v = (heads(h, lin, att.num_heads) for lin in (att.q_proj, att.k_proj, att.v_proj))
        scores = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5
        if causal:
            scores = scores.masked_fill(future, float("-inf"))
        out = (scores.softmax(-1) @ v).transpose(1, 2).reshape(len(vecs), length, width)
        x = x + F.linear(out, att.out_proj.weight, att.out_proj.bias)
        h = F.layer_norm(x, (width,), layer.layer_norm2.weight, layer.layer_norm2.bias, layer.layer_norm2.eps)
        h = F.linear(h, layer.mlp.fc1.weight, layer.mlp.fc1.bias)
        h = F.linear(h * torch.sigmoid(1.702 * h), layer.mlp.fc2.weight, layer.mlp.fc2.bias)
        x = x + h
    return F.layer_norm(x, (width,), text.final_layer_norm.weight, text.final_layer_norm.bias,
                        text.final_layer_norm.eps)


@torch.inference_mode()
def test_encoder_matches_reference_and_needs_causal_mask(gen: Arc2FaceGenerator) -> None:
    vecs = torch.from_numpy(vectors(3)) * 7.0  # un-normalised input: the encoder normalises
    ours = gen.encode_identities(vecs)
    assert ours.shape == (3, 77, 768)
    masked, unmasked = reference_encode(gen, vecs), reference_encode(gen, vecs, causal=False)
    torch.testing.assert_close(ours, masked, atol=1e-4, rtol=1e-4)
    assert (unmasked - masked).abs().max() > 0.5  # dropping the causal mask would fail the line above


@torch.inference_mode()
def test_encoder_equals_stock_forward_without_replacement(gen: Arc2FaceGenerator) -> None:
    text = getattr(gen.text_encoder, "text_model", gen.text_encoder)
    embeds = text.embeddings.token_embedding(gen.prompt_ids)
    stock = gen.text_encoder(gen.prompt_ids).last_hidden_state
    torch.testing.assert_close(gen._run_encoder(embeds), stock, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(gen.encode_unconditional(2)[1], gen.text_encoder(gen._tokenize("")).last_hidden_state[0])


def test_id_token_position(gen: Arc2FaceGenerator) -> None:
    tokens = gen.tokenizer.convert_ids_to_tokens(gen.prompt_ids[0, :7].tolist())
    assert tokens == ["<|startoftext|>", "photo</w>", "of</w>", "a</w>", "id</w>", "person</w>", "<|endoftext|>"]
    assert gen.id_position == 4
    assert variant(gen, prompt="id photo of a person").id_position == 1
    with pytest.raises(ValueError, match="exactly once"):
        variant(gen, prompt="photo of a person")


@torch.inference_mode()
def test_mixed_identity_batch(gen: Arc2FaceGenerator) -> None:
    a, b = torch.from_numpy(vectors(2)).unbind(0)
    both = gen.encode_identities(torch.stack([a, b]))
    torch.testing.assert_close(both[0], gen.encode_identities(a[None])[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(both[1], gen.encode_identities(b[None])[0], atol=1e-5, rtol=1e-5)
    assert (both[0] - both[1]).abs().max() > 1e-2
    torch.testing.assert_close(both[:, : gen.id_position], both[:, : gen.id_position].flip(0))  # causal prefix


def test_guidance_uses_unconditional_branch(gen: Arc2FaceGenerator) -> None:
    v, seeds = vectors(1), np.array([5])
    plain = variant(gen, guidance_scale=1.0).generate(v, seeds)[0]
    assert np.abs(plain.astype(int) - gen.generate(v, seeds)[0].astype(int)).mean() > 0.5


def test_output_size(gen: Arc2FaceGenerator) -> None:
    images = variant(gen, output_size=48).generate(vectors(2), np.array([0, 1]))
    assert [im.shape for im in images] == [(48, 48, 3)] * 2


def test_a_zero_vector_is_refused(gen: Arc2FaceGenerator) -> None:
    """(NaN, wrong dimension and seed count: tests/generators/test_contract.py, for every generator.)"""
    with pytest.raises(ValueError, match="non-zero"):
        gen.generate(np.zeros((1, 512), np.float32), np.array([0]))
