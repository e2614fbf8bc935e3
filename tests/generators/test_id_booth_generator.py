"""ID-Booth generation on the tiny SD-2.1-base with per-identity LoRAs in the official format: image i depends on
(identity i, seed i) only, in any batch; the LoRA matters; prompts follow the official templates."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from facefoundry.generators.base import IDENTITY_INDEX, IMAGE_INDEX
from facefoundry.generators.id_booth.config import BACKGROUNDS, IDBoothConfig
from facefoundry.generators.id_booth.generator import (
    PERSON_FILE,
    PROMPT_COLUMN,
    IDBoothGenerator,
    image_prompt,
    lora_folder,
)
from facefoundry.generators.id_booth.tiny import build_tiny_id_booth
from facefoundry.generators.id_booth.training import LoraError, add_lora, lora_parameters, save_lora

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]
CFG = IDBoothConfig(tiny=True, resolution=64, steps=2, batch_size=2, device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def generator(tmp_path_factory):
    from diffusers import UNet2DConditionModel

    root = tmp_path_factory.mktemp("idbooth-gen")
    base, _ = build_tiny_id_booth(root, seed=4)
    for identity, gender in ((0, "female"), (1, None)):
        unet = UNet2DConditionModel.from_pretrained(base, subfolder="unet")
        add_lora(unet, rank=4, seed=identity)
        with torch.no_grad():
            for p in lora_parameters(unet):
                p.normal_(0, 0.3, generator=torch.Generator().manual_seed(10 + identity))
        folder = lora_folder(root / "loras", identity)
        save_lora(folder, unet)
        (folder / PERSON_FILE).write_text(json.dumps({"name": f"p{identity}", "gender": gender}))
    gen = IDBoothGenerator.from_paths(CFG, base_model=str(base), extra=str(root / "loras"))
    gen.setup()
    return gen


def _inputs(identities, seeds):
    vectors = np.ones((len(seeds), 512), np.float32) / np.sqrt(512)
    variations = [{IDENTITY_INDEX: k, IMAGE_INDEX: j} for j, k in enumerate(identities)]
    return vectors, np.array(seeds), variations


def _close(a, b):
    return a.shape == b.shape and int(np.abs(a.astype(int) - b.astype(int)).max()) <= 1


def test_an_image_depends_on_its_identity_and_seed_only(generator):
    vectors, seeds, variations = _inputs([0, 1, 0], [11, 22, 33])
    batch = generator.generate_output(vectors, seeds, variations)
    assert [im.shape for im in batch.images] == [(64, 64, 3)] * 3 and batch.images[0].dtype == np.uint8
    for i in range(3):
        alone = generator.generate_output(vectors[i:i + 1], seeds[i:i + 1], variations[i:i + 1])
        assert _close(batch.images[i], alone.images[0]), f"image {i} changed with its batch"
        assert alone.columns[PROMPT_COLUMN] == [batch.columns[PROMPT_COLUMN][i]]
    other_person = generator.generate_output(*_inputs([1], [11])).images[0]
    assert np.abs(other_person.astype(int) - batch.images[0].astype(int)).mean() > 1, "the LoRA draws nothing"
    other_seed = generator.generate_output(*_inputs([0], [99])).images[0]
    assert np.abs(other_seed.astype(int) - batch.images[0].astype(int)).mean() > 1, "the seed draws nothing"


def test_prompts_follow_the_official_templates():
    prompts = [image_prompt(CFG, seed, "female") for seed in range(400)]
    assert prompts == [image_prompt(CFG, seed, "female") for seed in range(400)]
    assert all(p.startswith(("face portrait photo of female sks person",
                             "face side-portrait photo of female sks person")) for p in prompts)
    backgrounds = {p.split(", ", 1)[1] if ", " in p else "" for p in prompts}
    assert backgrounds == {""} | {f"{b} background" for b in BACKGROUNDS}
    assert 0.4 < np.mean(["side-portrait" in p for p in prompts]) < 0.6
    assert image_prompt(CFG, 3, None).split(",")[0] in ("face portrait photo of sks person",
                                                         "face side-portrait photo of sks person")
    plain = IDBoothConfig(side_portrait=False, backgrounds=[])
    assert {image_prompt(plain, s, None) for s in range(50)} == {"face portrait photo of sks person"}


def test_an_identity_without_a_finished_lora_is_named(generator):
    with pytest.raises(FileNotFoundError, match="identity 7 has no readable .*fine-tuning has not finished"):
        generator.generate_output(*_inputs([7], [1]))
    with pytest.raises(ValueError, match="needs each image's identity_index"):
        generator.generate_output(np.ones((1, 512), np.float32), np.array([1]), None)


def test_a_lora_trained_for_another_base_model_is_refused(generator, tmp_path):
    from diffusers import UNet2DConditionModel

    other = UNet2DConditionModel(sample_size=32, in_channels=4, out_channels=4, layers_per_block=1,
                                 block_out_channels=(32, 32), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                 up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=16,
                                 attention_head_dim=(2, 4), use_linear_projection=True, norm_num_groups=32)
    add_lora(other, rank=4, seed=0)
    folder = lora_folder(tmp_path, 0)
    save_lora(folder, other)
    (folder / PERSON_FILE).write_text(json.dumps({"name": "x", "gender": None}))
    wrong = IDBoothGenerator.from_paths(CFG, base_model=generator.base, extra=str(tmp_path))
    wrong.pipe, wrong.device = generator.pipe, generator.device
    with pytest.raises(LoraError, match="trained for another base model"):  # refused before the pipeline changes
        wrong.generate_output(*_inputs([0], [1]))
