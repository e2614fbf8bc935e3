"""Random weights for tiny test builds in the official layouts, deterministic in a seed."""

from __future__ import annotations

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
