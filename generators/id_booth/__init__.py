"""ID-Booth (FG 2025): Stable Diffusion 2.1 base fine-tuned per consenting person with a LoRA, DreamBooth-style with
prior preservation and a triplet identity loss; then prompted for varied images of exactly that person.

Modules: :mod:`.people` (person folders and consent records), :mod:`.training` (the official fine-tuning step,
the LoRA format), :mod:`.finetune` (one person's epochs, checkpoints and resume), :mod:`.prepare` (the jobs the
pipeline runs on Ray before generation), :mod:`.generator` (generation from a person's LoRA), :mod:`.tiny` (tiny
builds in the official layouts and the fixture people), :mod:`.spec` (what the rest of facefoundry reads)."""
