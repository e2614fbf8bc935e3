"""ID-Booth's fine-tuning step against an independent restatement of the official ``train_ID-Booth.py`` step
(``which_loss: triplet_prior``, config_train_SD21 defaults) on tiny random weights in the official layouts, and the
LoRA file in the official format both ways."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from facefoundry.faces.iresnet import load_arcface_r100
from facefoundry.generators.id_booth.tiny import build_tiny_id_booth
from facefoundry.generators.id_booth.training import (
    LORA_FILE,
    Batch,
    LoraError,
    Models,
    StepSettings,
    add_lora,
    load_lora,
    lora_parameters,
    lora_state_dict,
    loss_terms,
    make_lr_scheduler,
    make_optimizer,
    save_lora,
    train_step,
)

pytestmark = pytest.mark.slow
INIT_SEED = 0  # config_train_SD21.seed: set_seed(0) before the LoRA is added
TOTAL_STEPS = 6400  # 32 epochs x 200 class images, batch 1


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny_id_booth(tmp_path_factory.mktemp("idbooth"), seed=3)


def _load(base, arcface_file, box):
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(base, subfolder="unet")
    vae = AutoencoderKL.from_pretrained(base, subfolder="vae").requires_grad_(False)
    scheduler = DDPMScheduler.from_pretrained(base, subfolder="scheduler")
    arcface = load_arcface_r100(arcface_file, fp16=True)
    return Models(unet, vae, scheduler, arcface, box)


def _prompt_embeds(base):
    from transformers import CLIPTextModel, CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(base, subfolder="tokenizer")
    encoder = CLIPTextModel.from_pretrained(base, subfolder="text_encoder")
    ids = [tokenizer(p, truncation=True, padding="max_length", max_length=tokenizer.model_max_length,
                     return_tensors="pt").input_ids for p in ("photo of sks person", "photo of a person")]
    with torch.no_grad():
        return encoder(torch.cat(ids))[0]


def _batch(base, seed):
    gen = torch.Generator().manual_seed(seed)
    pixels = (torch.rand(2, 3, 64, 64, generator=gen) * 2 - 1)
    faces = torch.randn(2, 512, generator=gen) * 20
    return Batch(pixels, _prompt_embeds(base), faces)


def official_step(m: Models, batch: Batch, seed: int, boxes, optimizer, lr_scheduler, params):
    """train_ID-Booth.py's loop body for one batch (instance + class image), restated from the official code:
    the global RNG seeded with ``seed`` stands in for the script's state at that step; ``boxes`` for
    ``mtcnn_model.detect(img)[0]``. Returns the loss terms and the LoRA gradients before the optimiser step."""
    torch.manual_seed(seed)
    vae, unet, noise_scheduler = m.vae, m.unet, m.scheduler
    model_input = vae.encode(batch.pixels).latent_dist.sample()
    model_input = model_input * vae.config.scaling_factor
    noise = torch.randn_like(model_input)
    bsz = model_input.shape[0]
    timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (bsz,), device=model_input.device)
    timesteps = timesteps.long()
    noisy_model_input = noise_scheduler.add_noise(model_input, noise, timesteps)
    model_pred = unet(noisy_model_input, timesteps, batch.prompt_embeds, class_labels=None, return_dict=False)[0]
    target = noise  # SD-2.1-base: prediction_type epsilon
    model_pred, model_pred_prior = torch.chunk(model_pred, 2, dim=0)
    target, target_prior = torch.chunk(target, 2, dim=0)
    instance_loss = F.mse_loss(model_pred.float(), target.float(), reduction="mean")
    prior_loss = F.mse_loss(model_pred_prior.float(), target_prior.float(), reduction="mean")
    loss = instance_loss + 1.0 * prior_loss
    latent_x0 = noise_scheduler.step(model_pred, timesteps[0], noisy_model_input[0]).pred_original_sample
    # latents_to_image_for_mtcnn
    image = vae.decode((1 / 0.18215) * latent_x0).sample
    image = (image / 2 + 0.5).clamp(0, 1)
    img = torch.permute((image * 255)[0], (1, 2, 0))
    bboxs = boxes(img)
    triplet_loss = None
    if bboxs is not None:
        bbox = bboxs[0].astype(int)
        initial_size = img.shape[0]
        img_cropped = img[max(0, bbox[1]): min(bbox[3], initial_size), max(0, bbox[0]): min(bbox[2], initial_size)]
        # cropped_image_to_arcface_input: torchvision resize of a tensor with antialias=None = bilinear, no antialias
        img_cropped = torch.permute(img_cropped, (2, 0, 1))
        img_cropped = F.interpolate(img_cropped[None], size=(112, 112), mode="bilinear", align_corners=False)[0]
        img_cropped = torch.unsqueeze(((img_cropped / 255) - 0.5) / 0.5, 0)
        pred_arcface_features = m.arcface(img_cropped)
        weight = (1 - timesteps[0] / noise_scheduler.config.num_train_timesteps) ** 2

        def cosine_distance(x, y):
            return 1 - F.cosine_similarity(x, y)

        triplet = torch.nn.TripletMarginWithDistanceLoss(distance_function=cosine_distance)
        gt = batch.face_embeds
        triplet_loss = triplet(pred_arcface_features, gt[0][None, :], gt[1][None, :])
        loss = loss + weight * triplet_loss
    loss.backward()
    grads = [p.grad.clone() for p in params]
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    optimizer.step()
    lr_scheduler.step()
    optimizer.zero_grad()
    return {"total": loss, "instance": instance_loss, "prior": prior_loss, "triplet": triplet_loss}, grads


def _official_unet_lora(unet):
    from peft import LoraConfig

    unet.requires_grad_(False)
    torch.manual_seed(INIT_SEED)
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian",
                                target_modules=["to_k", "to_q", "to_v", "to_out.0", "add_k_proj", "add_v_proj"]))
    params = list(filter(lambda p: p.requires_grad, unet.parameters()))
    optimizer = torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-08)
    from diffusers.optimization import get_scheduler

    lr_scheduler = get_scheduler("cosine", optimizer=optimizer, num_warmup_steps=0, num_training_steps=TOTAL_STEPS,
                                 num_cycles=1, power=1.0)
    return params, optimizer, lr_scheduler


BOXES = {
    "inside": lambda img: np.array([[8.7, 5.2, 50.3, 60.9]]),
    "over the edge": lambda img: np.array([[-3.6, 10.1, 70.4, 63.99], [1.0, 1.0, 20.0, 20.0]]),
    "no face": lambda img: None,
}


@pytest.mark.parametrize("box", list(BOXES))
def test_two_steps_equal_the_official_steps(tiny, box):
    base, arcface_file = tiny
    boxes = BOXES[box]
    ours = _load(base, arcface_file, lambda img: None if (found := boxes(img)) is None else found[0])
    theirs = _load(base, arcface_file, boxes)
    add_lora(ours.unet, rank=4, seed=INIT_SEED)
    params, optimizer, lr_scheduler = _official_unet_lora(theirs.unet)
    our_params = lora_parameters(ours.unet)
    assert [p.shape for p in our_params] == [p.shape for p in params] and len(params) > 0
    for a, b in zip(our_params, params, strict=True):
        assert torch.equal(a, b)  # same init
    our_opt = make_optimizer(our_params)
    our_sched = make_lr_scheduler(our_opt, TOTAL_STEPS)
    settings = StepSettings()
    for step, seed in enumerate((11, 12)):
        batch = _batch(base, seed=100 + step)
        expected, grads = official_step(theirs, batch, seed, boxes, optimizer, lr_scheduler, params)
        terms = loss_terms(ours, batch, torch.Generator().manual_seed(seed), settings)
        terms.total.backward()
        scale = max(g.abs().max().item() for g in grads)  # float noise is relative to the largest gradient
        assert scale > 0
        for a, b in zip(our_params, grads, strict=True):
            torch.testing.assert_close(a.grad, b, rtol=1e-5, atol=1e-5 * scale)
        our_opt.zero_grad()
        # the step as train_step takes it (same draws: a fresh generator with the same seed)
        terms = train_step(ours, batch, torch.Generator().manual_seed(seed), settings, our_opt, our_sched)
        for name in ("total", "instance", "prior"):
            torch.testing.assert_close(getattr(terms, name), expected[name], rtol=1e-6, atol=1e-7)
        if box == "no face":
            assert terms.triplet is None and expected["triplet"] is None
        else:
            torch.testing.assert_close(terms.triplet, expected["triplet"], rtol=1e-6, atol=1e-7)
        for a, b in zip(our_params, params, strict=True):
            assert (a - b).abs().max().item() < 1e-5
    assert our_sched.get_last_lr() == lr_scheduler.get_last_lr()


def test_the_lora_moves_and_the_triplet_term_pulls_toward_the_person(tiny):
    """A step with a face changes the LoRA (B leaves zero); the triplet term is (1 - t/T)^2-weighted and sits in
    [0, 2 + margin]."""
    base, arcface_file = tiny
    m = _load(base, arcface_file, BOXES["inside"])
    m.face_box = lambda img: BOXES["inside"](img)[0]
    add_lora(m.unet, rank=4, seed=INIT_SEED)
    before = {k: v.clone() for k, v in lora_state_dict(m.unet).items()}
    opt = make_optimizer(lora_parameters(m.unet))
    terms = train_step(m, _batch(base, 5), torch.Generator().manual_seed(5), StepSettings(), opt,
                       make_lr_scheduler(opt, 10))
    after = lora_state_dict(m.unet)
    ups = [k for k in after if "lora.up" in k]
    assert ups and all(torch.count_nonzero(before[k]) == 0 for k in ups)
    assert any(torch.count_nonzero(after[k]) > 0 for k in ups)
    assert 0.0 <= terms.triplet.item() <= 3.0 and 0.0 <= terms.weight.item() <= 1.0


def test_lora_saved_by_the_official_hook_loads_strictly_and_ours_loads_in_diffusers(tiny, tmp_path):
    from diffusers import StableDiffusionPipeline
    from diffusers.loaders import LoraLoaderMixin
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    base, arcface_file = tiny
    trained = _load(base, arcface_file, BOXES["inside"])
    add_lora(trained.unet, rank=4, seed=1)
    with torch.no_grad():
        for p in lora_parameters(trained.unet):
            p.normal_(0, 0.1)
    # the official save hook (save_model_hook / end of training)
    official = tmp_path / "official"
    LoraLoaderMixin.save_lora_weights(
        official, unet_lora_layers=convert_state_dict_to_diffusers(get_peft_model_state_dict(trained.unet)),
        text_encoder_lora_layers=None)
    assert (official / LORA_FILE).is_file()
    fresh = _load(base, arcface_file, BOXES["inside"])
    add_lora(fresh.unet, rank=4, seed=2)
    load_lora(fresh.unet, official)
    want, got = lora_state_dict(trained.unet), lora_state_dict(fresh.unet)
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)

    ours = save_lora(tmp_path / "ours", trained.unet)
    assert ours.name == LORA_FILE
    pipe = StableDiffusionPipeline.from_pretrained(base, safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    plain = pipe("face portrait photo of sks person", num_inference_steps=2, output_type="np",
                 generator=torch.Generator().manual_seed(0)).images
    pipe.load_lora_weights(str(ours.parent))  # what inference_ID-Booth.py does with a trained identity's folder
    tuned = pipe("face portrait photo of sks person", num_inference_steps=2, output_type="np",
                 generator=torch.Generator().manual_seed(0)).images
    assert np.abs(plain - tuned).max() > 1e-4


def test_a_lora_for_another_base_model_is_refused(tiny, tmp_path):
    from diffusers import UNet2DConditionModel

    base, arcface_file = tiny
    other = UNet2DConditionModel(sample_size=32, in_channels=4, out_channels=4, layers_per_block=1,
                                 block_out_channels=(32, 32), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                 up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=16,
                                 attention_head_dim=(2, 4), use_linear_projection=True, norm_num_groups=32)
    add_lora(other, rank=4, seed=0)
    save_lora(tmp_path / "other", other)
    m = _load(base, arcface_file, BOXES["inside"])
    add_lora(m.unet, rank=4, seed=0)
    with pytest.raises(LoraError, match="another base model"):
        load_lora(m.unet, tmp_path / "other")
    with pytest.raises(LoraError, match="train the identity first"):
        load_lora(m.unet, tmp_path / "nowhere")


def _images(seed, count, size=(80, 64)):
    gen = np.random.default_rng(seed)
    from PIL import Image

    return [Image.fromarray(gen.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)) for _ in range(count)]


def test_a_killed_fine_tuning_resumes_from_its_checkpoint_to_the_same_lora(tiny, tmp_path):
    from safetensors.torch import load_file

    from facefoundry.generators.id_booth.finetune import (
        class_images_with_faces,
        person_data,
        plan_for,
        train_person,
    )

    base, arcface_file = tiny

    def fresh():
        m = _load(base, arcface_file, BOXES["inside"])
        m.face_box = lambda img: BOXES["inside"](img)[0]
        add_lora(m.unet, rank=4, seed=INIT_SEED)
        return m

    m = fresh()
    classes = class_images_with_faces(_images(1, 3, (64, 64)), m.arcface, m.face_box)
    data = person_data("p0", _images(2, 2), classes, m.arcface, m.face_box, _prompt_embeds(base))
    plan = plan_for(data, epochs=2, checkpoint_epochs=1)
    assert (plan.steps_per_epoch, plan.total_steps) == (3, 6)
    whole = train_person(m, data, tmp_path / "whole", 7, 0, plan, StepSettings(), resolution=64)

    class Killed(Exception):
        pass

    def kill_after_4(step, total, terms):
        if step == 4:
            raise Killed

    with pytest.raises(Killed):
        train_person(fresh(), data, tmp_path / "killed", 7, 0, plan, StepSettings(), 64, progress=kill_after_4)
    assert [p.name for p in (tmp_path / "killed").glob("checkpoint-*")] == ["checkpoint-0-3"]
    steps = []
    resumed = train_person(fresh(), data, tmp_path / "killed", 7, 0, plan, StepSettings(), 64,
                           progress=lambda step, total, terms: steps.append(step))
    assert steps == [4, 5, 6]  # only the steps after the checkpoint
    a, b = load_file(whole), load_file(resumed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert any(torch.count_nonzero(a[k]) for k in a if "lora.up" in k)
    again = []
    assert train_person(fresh(), data, tmp_path / "killed", 7, 0, plan, StepSettings(), 64,
                        progress=lambda *args: again.append(args)) == resumed and again == []


def test_a_person_without_a_detectable_face_is_refused(tiny):
    from facefoundry.generators.id_booth.finetune import ClassImages, NoFaceError, person_data

    base, arcface_file = tiny
    m = _load(base, arcface_file, BOXES["no face"])
    classes = ClassImages(_images(1, 1), torch.zeros(1, 512))
    with pytest.raises(NoFaceError, match="person p0: the face detector finds no face in any of their 2 photos"):
        person_data("p0", _images(2, 2), classes, m.arcface, m.face_box, torch.zeros(2, 77, 32))


def test_train_image_is_the_official_resize_and_random_crop():
    from PIL import Image

    from facefoundry.generators.id_booth.finetune import train_image

    image = _images(3, 1, (100, 50))[0]
    a = train_image(image, 32, torch.Generator().manual_seed(1))
    b = train_image(image, 32, torch.Generator().manual_seed(1))
    assert a.shape == (3, 32, 32) and torch.equal(a, b) and -1.0 <= a.min() and a.max() <= 1.0
    resized = np.asarray(image.resize((64, 32), Image.BILINEAR), dtype=np.float32)
    gen = torch.Generator().manual_seed(1)
    top, left = int(torch.randint(0, 1, (1,), generator=gen)), int(torch.randint(0, 33, (1,), generator=gen))
    want = (resized[top:top + 32, left:left + 32] / 255.0 - 0.5) / 0.5
    np.testing.assert_array_equal(a.permute(1, 2, 0).numpy(), want)


def test_the_official_detector_finds_and_crops_real_faces(tiny):
    """MTCNN (facenet-pytorch's weights) boxes the face in real photos; the embedding is the box crop's."""
    from landmarkfaces import PHOTOS

    from facefoundry.generators.id_booth.finetune import embed_face, open_rgb
    from facefoundry.generators.id_booth.training import crop_for_arcface, mtcnn_face_box

    box = mtcnn_face_box()  # facenet-pytorch's weights, which `make` installs
    _, arcface_file = tiny
    arcface = load_arcface_r100(arcface_file)
    for name in ("hanks", "astronaut"):
        image = open_rgb(PHOTOS[name][0])
        pixels = torch.from_numpy(np.asarray(image, dtype=np.float32).copy())
        found = box(pixels)
        assert found is not None and found[2] - found[0] > 40, name
        embed = embed_face(image, arcface, box)
        with torch.no_grad():
            assert torch.equal(embed, arcface(crop_for_arcface(pixels, found))[0])
    assert box(torch.zeros(80, 80, 3)) is None
