"""ID-Booth (FG 2025): Stable Diffusion 2.1 fine-tuned per consenting person with a LoRA, DreamBooth-style with
prior preservation and a triplet identity loss; then prompted for varied images of exactly that person.

In progress: the people folder and consent records (:mod:`.people`), the fine-tuning step equal to the official
one (:mod:`.training`) and the tiny build (:mod:`.tiny`). Not yet a ``generator.kind``: the fine-tuning stage on
Ray, generation, the card and the preset are still to come (issue 27)."""
