"""ID-Booth's jobs before generation, on the tiny build: class images (resumable, one seed each) and one person's
fine-tuning from their folder, whose LoRA the generator then loads."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from PIL import Image

from facefoundry.generators.base import IDENTITY_INDEX, IMAGE_INDEX
from facefoundry.generators.id_booth.config import IDBoothConfig
from facefoundry.generators.id_booth.generator import PERSON_FILE, IDBoothGenerator, lora_folder
from facefoundry.generators.id_booth.people import CONSENT_FILE, read_people
from facefoundry.generators.id_booth.prepare import CLASS_DIR, LORA_DIR, finetune_identity, make_class_images
from facefoundry.generators.id_booth.tiny import build_tiny_id_booth
from facefoundry.generators.id_booth.training import LORA_FILE

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]
CFG = IDBoothConfig(tiny=True, resolution=64, class_images=3, class_steps=2, epochs=2, checkpoint_epochs=1, steps=2,
                    device="cpu", dtype="float32")


def centre_box(image):
    """A stand-in detector: the middle of the image (tiny random weights draw no faces)."""
    h, w = image.shape[:2]
    return np.array([w * 0.2, h * 0.15, w * 0.8, h * 0.9])


def _digest(paths):
    return [hashlib.sha256(p.read_bytes()).hexdigest() for p in paths]


def test_class_images_are_seeded_per_image_and_a_rerun_keeps_them(tmp_path):
    base, _ = build_tiny_id_booth(tmp_path / "models", seed=1)
    made = make_class_images(CFG, str(base), tmp_path / CLASS_DIR, run_seed=5)
    assert [p.name for p in made] == ["00000.png", "00001.png", "00002.png"]
    first = _digest(made)
    assert len(set(first)) == 3 and Image.open(made[0]).size == (64, 64)
    made[1].unlink()
    calls = []
    again = make_class_images(CFG, str(base), tmp_path / CLASS_DIR, run_seed=5,
                              progress=lambda done, total: calls.append((done, total)))
    assert _digest(again) == first and calls == [(1, 1)]  # only the missing one, byte-identical


def test_one_person_is_fine_tuned_from_their_folder_and_generated(tmp_path):
    base, arcface = build_tiny_id_booth(tmp_path / "models", seed=1)
    person = tmp_path / "people" / "p0"
    person.mkdir(parents=True)
    (person / CONSENT_FILE).write_text("subject: p0\nconsented_to: tests\ndate: 2026-11-30\ngender: male\n")
    rng = np.random.default_rng(0)
    for k in range(2):
        Image.fromarray(rng.integers(0, 256, (72, 64, 3), dtype=np.uint8)).save(person / f"{k}.png")
    work = tmp_path / "id-booth"
    make_class_images(CFG, str(base), work / CLASS_DIR, run_seed=5)
    steps = []
    lora = finetune_identity(CFG, str(base), str(arcface), read_people(tmp_path / "people")[0], 0, work, 5, None,
                             centre_box, progress=lambda step, total, terms: steps.append((step, total)))
    assert lora == lora_folder(work / LORA_DIR, 0) / LORA_FILE and lora.is_file()
    assert steps == [(s, 6) for s in range(1, 7)]  # 2 epochs x max(2 photos, 3 class images)
    assert json.loads((lora.parent / PERSON_FILE).read_text()) == {"name": "p0", "gender": "male"}
    gen = IDBoothGenerator.from_paths(CFG, base_model=str(base), extra=str(work / LORA_DIR))
    out = gen.generate_output(np.ones((1, 512), np.float32), np.array([3]), [{IDENTITY_INDEX: 0, IMAGE_INDEX: 0}])
    assert out.images[0].shape == (64, 64, 3) and " male sks person" in out.columns["prompt"][0]


def test_people_vectors_are_each_persons_mean_face_embedding(tmp_path):
    import torch
    from typer.testing import CliRunner

    from facefoundry.cli import app
    from facefoundry.faces.iresnet import load_arcface_r100
    from facefoundry.generators.id_booth.finetune import NoFaceError, embed_face, open_rgb
    from facefoundry.generators.id_booth.prepare import people_vectors
    from facefoundry.generators.id_booth.tiny import build_tiny_people
    from facefoundry.generators.id_booth.training import mtcnn_face_box

    _, arcface = build_tiny_id_booth(tmp_path / "models", seed=1)
    people, _ = build_tiny_people(tmp_path / "models")
    out = tmp_path / "people.npy"
    result = CliRunner().invoke(app, ["id-booth-people", str(people), "--arcface", str(arcface), "--out", str(out)])
    assert result.exit_code == 0, result.output
    vectors = np.load(out)
    assert vectors.shape == (2, 512) and np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-6)
    model, box = load_arcface_r100(arcface), mtcnn_face_box()
    for k, person in enumerate(read_people(people)):
        embeds = torch.stack([embed_face(open_rgb(p), model, box) for p in person.photos])
        mean = torch.nn.functional.normalize(torch.nn.functional.normalize(embeds, dim=1).mean(0), dim=0)
        np.testing.assert_allclose(vectors[k], mean.numpy(), atol=1e-6)
    Image.new("RGB", (64, 64)).save(people / "person-2" / "1.png")  # blank: no face left for person-2
    Image.new("RGB", (64, 64)).save(people / "person-2" / "2.png")
    with pytest.raises(NoFaceError, match="person person-2: the face detector finds no face in any of their 2"):
        people_vectors(people, str(arcface))
