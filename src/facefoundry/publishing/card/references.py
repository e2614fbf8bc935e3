"""What the card cites and explains: column and sampler documentation, BibTeX entries, size categories.

Filter rejection reasons are documented by each filter (``REASON_DOCS`` beside ``REASONS`` in
:mod:`facefoundry.filters.face_filter` and :mod:`facefoundry.filters.identity_filter`), not here.
"""

from __future__ import annotations

from facefoundry.config import RunConfig
from facefoundry.generators.registry import SPECS, spec_of

SIZE_CATEGORIES = ("n<1K", "1K<n<10K", "10K<n<100K", "100K<n<1M", "1M<n<10M", "10M<n<100M", "100M<n<1B",
                   "1B<n<10B", "10B<n<100B", "100B<n<1T", "n>1T")

COLUMN_DOCS = {
    "image": "the encoded image (PNG or JPEG) as {bytes, path}; `path` is `<identity>_<index>.<ext>`",
    "identity": "class label: the identity (row of `identities.parquet`), 0..N-1",
    "image_index": "index of the image within its identity",
    "seed": "the image seed, derived from (run seed, identity, image_index) only",
    "perturbation_sigma": "noise level applied to the identity vector for this image (Vec2Face-style variation)",
    "vector_cosine": "cosine of the perturbed conditioning vector to the identity vector",
    "face_count": "faces detected at or above `filter.min_face_score` (null if undecodable)",
    "face_score": "detector confidence of the chosen face",
    "face_box": "x0, y0, x1, y1 of the chosen face, in pixels of the stored image",
    "landmarks": "dlib 5 points x0,y0..x4,y4: image-right eye outer/inner, image-left eye outer/inner, nose base",
    "judge_distance": "Euclidean distance of the dlib 128-d descriptor to the leave-one-out centroid of the "
                      "identity's other accepted faces (dlib: same person < 0.6)",
    "judge_similarity": "cosine of the same descriptor pair",
    "judge_other_distance": "Euclidean distance of the descriptor to the nearest other identity's centroid in the unit",
    "id_similarity": "cosine of the face's embedding (conditioning encoder) to its identity vector",
    "filter_reason": "null if the image passes the filter, else the rejection reason (kept rows in annotate mode)",
    "style_source": "DCFace: the style image this image was mixed from (style bank file, or Parquet file:row)",
    "id_source": "DCFace: where the identity's ID image came from (its ID-set `source`)",
}
SAMPLER_DOCS = {
    "gaussian_rejection": "Gaussian candidates, normalised, kept only if their cosine to every identity already "
                          "kept is at most the separation threshold (Vec2Face's sampling rule)",
    "uniform_sphere": "normalised Gaussian vectors, uniform on the sphere, no separation rule (IDiff-Face)",
    "pca_gaussian": "Gaussian fitted in PCA space on a gallery of embeddings, then the rejection rule (Vec2Face paper)",
    "hyperface": "points packed on the hypersphere by gradient descent pushing the closest pairs apart (HyperFace)",
    "from_file": "vectors supplied by the user (provenance not known to facefoundry)",
}
# BibTeX of the methods outside the generators (whose own entries are in their specs), then the generators'.
CITATIONS = {
    "dlib": """@article{king2009dlib,
  title = {Dlib-ml: A Machine Learning Toolkit},
  author = {King, Davis E.},
  journal = {Journal of Machine Learning Research},
  volume = {10},
  pages = {1755--1758},
  year = {2009}
}""",
    "hyperface": """@inproceedings{shahreza2025hyperface,
  title = {HyperFace: Generating Synthetic Face Recognition Datasets by Exploring Face Embedding Hypersphere},
  author = {Otroshi Shahreza, Hatef and Marcel, S{\\'e}bastien},
  booktitle = {International Conference on Learning Representations (ICLR)},
  year = {2025}
}""",
}
CITATIONS |= {key: entry for spec in SPECS.values() for key, entry in spec.citations.items()}


def citation_keys(cfg: RunConfig) -> list[str]:
    """The :data:`CITATIONS` a run's methods call for, in order."""
    ident = cfg.identities
    keys = spec_of(cfg.generator).citation_keys(cfg.generator)
    keys.append("dlib")
    keys += {"gaussian_rejection": ["vec2face"], "pca_gaussian": ["vec2face"], "hyperface": ["hyperface"],
             "uniform_sphere": ["idiffface"]}.get(ident.sampler, [])
    if ident.max_cosine is not None or ident.leakage.galleries:
        keys.append("dcface")  # the 0.3 uniqueness / leakage threshold
    if cfg.images.perturbation is not None:
        keys.append("vec2face")
    return list(dict.fromkeys(keys))


def size_category(n: int) -> str:
    """The Hub's ``size_categories`` value for ``n`` rows."""
    for i, name in enumerate(SIZE_CATEGORIES[:-1]):
        if n < 1000 * 10**i:
            return name
    return SIZE_CATEGORIES[-1]
