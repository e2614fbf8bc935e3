"""``dtype: auto`` is the precision each generator's official code samples in: float32 for IDiff-Face and DCFace
(fp16 on CUDA made a GPU run's images not the official model's), float16 for Arc2Face on CUDA; float32 on CPU."""

from __future__ import annotations

import pytest
import torch

from facefoundry.generators.base import DTYPES, resolve_dtype
from facefoundry.generators.registry import SPECS

CUDA, CPU = torch.device("cuda"), torch.device("cpu")  # devices as names only: nothing is allocated


class Placed:
    """A network stand-in that records where it was asked to go (so a CUDA placement can be checked on a CPU)."""

    def __init__(self):
        self.placements, self.eps_model = [], self

    def to(self, *args):
        self.placements.append(args)
        return self

    def eval(self):
        return self

    def requires_grad_(self, flag):
        return self


@pytest.mark.parametrize("kind", sorted(SPECS))
def test_auto_is_the_official_precision(kind):
    spec = SPECS[kind]
    assert resolve_dtype("auto", CPU, spec.precision_on_cuda) == torch.float32
    assert resolve_dtype("auto", CUDA, spec.precision_on_cuda) == DTYPES[spec.precision_on_cuda]
    assert resolve_dtype("bfloat16", CUDA, spec.precision_on_cuda) == torch.bfloat16  # an explicit choice stays


def test_idiff_face_and_dcface_sample_in_float32_on_cuda():
    from facefoundry.generators.dcface.config import DCFaceConfig
    from facefoundry.generators.dcface.generator import DCFaceGenerator
    from facefoundry.generators.idiff_face.config import IDiffFaceConfig
    from facefoundry.generators.idiff_face.generator import IDiffFaceGenerator

    dcface = DCFaceGenerator(DCFaceConfig(tiny=True))
    nets = Placed()
    dcface.set_networks(nets, device="cuda")
    assert dcface.dtype == torch.float32 and nets.placements == [(CUDA, torch.float32)]
    idiff = IDiffFaceGenerator(IDiffFaceConfig())
    diffusion, decoder = Placed(), Placed()
    idiff.set_models(diffusion, decoder, device="cuda")
    assert idiff.dtype == torch.float32 and decoder.placements == [(CUDA, torch.float32)]
    half = IDiffFaceGenerator(IDiffFaceConfig(dtype="float16"))  # the documented opt-in
    half.set_models(Placed(), Placed(), device="cuda")
    assert half.dtype == torch.float16
