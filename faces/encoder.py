"""The conditioning encoder of an identity space, from its file: ONNX ArcFace or a PyTorch ArcFace-R100."""

from __future__ import annotations

from pathlib import Path

from facefoundry.faces.arcface import ArcFaceEmbedder


def load_encoder(model: str | Path, device: str, batch_size: int, providers: list | None, dim: int):
    """An ONNX ArcFace (file or pack folder) for ``.onnx``, or a ``.pth``/``.pt`` ArcFace-R100 in PyTorch (Vec2Face's
    ``weights/arcface-r100-glint360k.pth``, the space Vec2Face is conditioned in); it must embed to ``dim``."""
    path = Path(model)
    if path.suffix in (".pth", ".pt"):
        from facefoundry.faces.torch_embedder import TorchArcFaceEmbedder

        embedder = TorchArcFaceEmbedder(path, device, batch_size)
        if embedder.embedding_dim != dim:
            raise ValueError(f"{path}: embeds to {embedder.embedding_dim}-d, the identity vectors are {dim}-d")
        return embedder
    return ArcFaceEmbedder(path, providers, batch_size, embedding_dim=dim)
