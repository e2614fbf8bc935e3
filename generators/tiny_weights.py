"""Random weights and a tiny CLIP tokenizer for tiny test builds in the official layouts, deterministic in a seed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch


def random_state_dict(module: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """Random values for every tensor of ``module``'s state dict (global RNG untouched), in its dtypes: weights
    ~ N(0, 1/fan_in), norm scales ~ 1 + N(0, 0.1^2), embeddings and codebooks ~ N(0, 1), BatchNorm running
    variances ~ 1 + |N(0, 0.1^2)|, integer counters 0, everything else (biases, means, tables) ~ N(0, 0.02^2)."""
    gen = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    for name, ref in module.state_dict().items():
        if not ref.is_floating_point():
            out[name] = torch.zeros(ref.shape, dtype=ref.dtype)
            continue
        noise = torch.randn(ref.shape, generator=gen)
        if name.endswith("running_var"):
            value = 1.0 + 0.1 * noise.abs()
        elif name.endswith("embedding.weight"):
            value = noise
        elif name.endswith(".weight") and ref.ndim == 1:
            value = 1.0 + 0.1 * noise
        elif name.endswith(".weight"):
            value = noise / ref[0].numel() ** 0.5
        else:
            value = 0.02 * noise
        out[name] = value.to(ref.dtype)
    return out


BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def _byte_alphabet() -> list[str]:
    """The 256 printable characters that byte-level BPE uses for bytes 0..255, in byte order."""
    printable = {*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), 256)}
    chars, extra = [], 0
    for b in range(256):
        if b in printable:
            chars.append(chr(b))
        else:
            chars.append(chr(256 + extra))
            extra += 1
    return chars


def tiny_clip_vocab(words: tuple[str, ...]) -> tuple[dict[str, int], list[str]]:
    """A small CLIP-style BPE vocabulary: byte pieces, byte pieces + ``</w>``, whole words, BOS, EOS.

    Same ordering as the real CLIP vocabulary (specials last). Each word gets a left-to-right merge
    chain so it becomes a single ``word</w>`` token.
    """
    base = _byte_alphabet()
    tokens = base + [c + "</w>" for c in base]
    merges: list[str] = []
    for word in words:
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        left = pieces[0]
        for right in pieces[1:]:
            merge = f"{left} {right}"
            if merge not in merges:
                merges.append(merge)
                tokens.append(left + right)
            left = left + right
    tokens += [BOS, EOS]
    return {tok: i for i, tok in enumerate(tokens)}, merges


def build_is_complete(root: Path, marker: str, seed: int, version: int) -> bool:
    """Whether ``root`` holds a finished tiny build: its marker file (written last) names this seed and format
    version, and every file the marker lists is there."""
    try:
        found = json.loads((root / marker).read_text())
    except (OSError, ValueError):
        return False
    if found.get("seed") != seed or found.get("format") != version:
        return False
    return all((root / rel).is_file() for rel in found.get("files", []))


def write_json(path: Path, data: dict[str, Any]) -> None:
    """``data`` as sorted, indented JSON (the bytes of a tiny build must not depend on dict order)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def write_clip_tokenizer(folder: Path, words: tuple[str, ...], pad_token: str = EOS) -> dict[str, int]:
    """A tiny CLIPTokenizer folder (vocab.json, merges.txt, the specials and tokenizer config) of
    :func:`tiny_clip_vocab`; ``pad_token`` as the model's tokenizer pads (SD-1.5: EOS, SD-2.x: ``!``)."""
    vocab, merges = tiny_clip_vocab(words)
    write_json(folder / "vocab.json", vocab)
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    specials = {"bos_token": BOS, "eos_token": EOS, "pad_token": pad_token, "unk_token": EOS}
    write_json(folder / "special_tokens_map.json", specials)
    config = {"tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "do_lower_case": True,
              "errors": "replace", "add_prefix_space": False, **specials}
    write_json(folder / "tokenizer_config.json", config)
    return vocab
