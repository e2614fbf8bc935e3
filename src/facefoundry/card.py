"""The dataset card: ``README.md`` of a run folder, built with ``huggingface_hub.DatasetCard``.

Computed from ``run.json``, the metadata of ``identities.parquet``, the manifests and one shard's
schema only: no shard is rescanned, so it is cheap at any scale. Its content is deterministic (no
timestamps): rewriting it gives the same bytes, and republishing an unchanged run uploads nothing.
"""

from __future__ import annotations

import importlib.metadata
import json
import re
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq

from facefoundry.dataset.atomic import atomic_write_bytes
from facefoundry.dataset.manifest import DATA_DIR, MANIFEST_DIR, finished_manifests, plan_units
from facefoundry.identities.store import IDENTITIES_FILE, read_metadata
from facefoundry.licensing import (
    DEFAULT_LICENSE,
    NONCOMMERCIAL_LICENSES,
    check_license,
    hub_id,
    licence_conflicts,
    run_components,
)
from facefoundry.runinfo import RUN_FILE, RunFolderError, read_record

CARD_FILE = "README.md"
REPORT_DIR = "report"
DATA_PATTERN = f"{DATA_DIR}/train-*.parquet"
# facefoundry.report's plots, in reading order (not imported: it pulls in matplotlib).
PLOT_ORDER = ("separation.png", "consistency.png", "funnel.png", "quality.png", "pose.png", "grid.png")
SIZE_CATEGORIES = ("n<1K", "1K<n<10K", "10K<n<100K", "100K<n<1M", "1M<n<10M", "10M<n<100M", "100M<n<1B",
                   "1B<n<10B", "10B<n<100B", "100B<n<1T", "n>1T")


GENERATOR_NAMES = {"arc2face": "Arc2Face", "vec2face": "Vec2Face"}


def _generator_name(cfg: dict) -> str:
    kind = str((cfg.get("generator") or {}).get("kind", "arc2face"))
    return GENERATOR_NAMES.get(kind, kind)


class CardError(ValueError):
    """The run folder cannot be described (not a run, or no finished unit)."""

# ---------------------------------------------------------------- run facts


@dataclass
class RunFacts:
    """Everything the card needs, read without rescanning shards."""

    record: dict
    identities: dict
    manifests: list[dict]
    schema: object  # pa.Schema of the first shard (features + facefoundry metadata)
    planned_units: int
    report_files: list[str]
    has_identities_file: bool

    @property
    def cfg(self) -> dict:
        return self.record.get("config") or {}

    @property
    def rows(self) -> int:
        return sum(int(m.get("rows", 0)) for m in self.manifests)

    @property
    def generated(self) -> int:
        return sum(int(m.get("generated", 0)) for m in self.manifests)

    @property
    def shard_bytes(self) -> int:
        return sum(int(m.get("bytes", 0)) for m in self.manifests)

    def drops(self) -> dict[str, int]:
        total: dict[str, int] = {}
        for m in self.manifests:
            for reason, n in (m.get("drops") or {}).items():
                total[reason] = total.get(reason, 0) + int(n)
        return dict(sorted(total.items()))

    def column_stats(self) -> dict[str, dict[str, float]]:
        """Count-weighted mean, min and max of every float column over all manifests."""
        acc: dict[str, dict[str, float]] = {}
        for m in self.manifests:
            for name, s in (m.get("stats") or {}).items():
                a = acc.setdefault(name, {"count": 0, "sum": 0.0, "min": float("inf"), "max": float("-inf")})
                a["count"] += s["count"]
                a["sum"] += s["mean"] * s["count"]
                a["min"], a["max"] = min(a["min"], s["min"]), max(a["max"], s["max"])
        return {k: {"count": v["count"], "mean": v["sum"] / v["count"], "min": v["min"], "max": v["max"]}
                for k, v in sorted(acc.items()) if v["count"]}


def read_run_facts(run_dir: Path) -> RunFacts:
    run_dir = Path(run_dir)
    try:
        record = read_record(run_dir)
    except RunFolderError as exc:
        raise CardError(str(exc)) from None
    manifests = finished_manifests(run_dir, record.get("config_hash"))
    shards = [run_dir / m["shard"] for m in manifests]
    if not shards:
        raise CardError(f"{run_dir} has no finished unit (no shard with a manifest of this run)")
    ident_path = run_dir / IDENTITIES_FILE
    identities = read_metadata(ident_path) if ident_path.exists() else {}
    cfg = record.get("config") or {}
    count = (cfg.get("identities") or {}).get("count", 0)
    per_unit = (cfg.get("output") or {}).get("identities_per_unit", 1)
    report = run_dir / REPORT_DIR
    found = [p.name for p in report.glob("*") if p.suffix in (".png", ".json") and not p.name.startswith(".")] \
        if report.is_dir() else []
    report_files = sorted(found, key=lambda n: (PLOT_ORDER.index(n) if n in PLOT_ORDER else len(PLOT_ORDER), n))
    return RunFacts(record, identities, manifests, pq.read_schema(shards[0]), len(plan_units(count, per_unit)),
                    report_files, ident_path.exists())


# ---------------------------------------------------------------- card


def size_category(n: int) -> str:
    for i, name in enumerate(SIZE_CATEGORIES[:-1]):
        if n < 1000 * 10**i:
            return name
    return SIZE_CATEGORIES[-1]


def _num(x: float | int | None, digits: int = 4) -> str:
    if x is None:
        return "n/a"
    return f"{x:,}" if isinstance(x, int) else f"{x:.{digits}f}"


def format_bytes(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:,} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return ""  # unreachable


def _features(schema) -> object:
    import datasets  # heavy import: only when a card is built

    features = datasets.Features.from_arrow_schema(schema)
    return features


def _shard_meta(schema) -> dict:
    raw = (schema.metadata or {}).get(b"facefoundry")
    return json.loads(raw) if raw else {}


def _software(record: dict) -> dict[str, str]:
    """Library versions: recorded in run.json by the run if present, else those installed here."""
    if isinstance(record.get("software"), dict):
        return dict(sorted(record["software"].items()))
    versions = {}
    for dist in ("torch", "diffusers", "transformers", "dlib-bin", "dlib", "ray", "datasets", "pyarrow",
                 "huggingface_hub"):
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


COLUMN_DOCS = {
    "image": "the encoded image (PNG or JPEG) as {bytes, path}; `path` is `<identity>_<index>.<ext>`",
    "identity": "class label: the synthetic identity (row of `identities.parquet`), 0..N-1",
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
}
REASON_DOCS = {
    "undecodable": "the image could not be decoded",
    "no_face": "no face found by the detector",
    "low_face_score": "detector score below `filter.min_face_score`",
    "multiple_faces": "more than one face detected",
    "identity_confusion": "face closer to another identity of its unit than to its own (judge, by a margin)",
    "identity_mismatch": "face too far from its identity's other faces (judge distance above the threshold)",
}
SAMPLER_DOCS = {
    "gaussian_rejection": "Gaussian candidates, normalised, kept only if their cosine to every identity already "
                          "kept is at most the separation threshold (Vec2Face's sampling rule)",
    "uniform_sphere": "normalised Gaussian vectors, uniform on the sphere, no separation rule (IDiff-Face)",
    "pca_gaussian": "Gaussian fitted in PCA space on a gallery of embeddings, then the rejection rule (Vec2Face paper)",
    "hyperface": "points packed on the hypersphere by gradient descent pushing the closest pairs apart (HyperFace)",
    "from_file": "vectors supplied by the user (provenance not known to facefoundry)",
}
CITATIONS = {
    "arc2face": """@inproceedings{paraperas2024arc2face,
  title = {Arc2Face: A Foundation Model for ID-Consistent Human Faces},
  author = {Paraperas Papantoniou, Foivos and Lattas, Alexandros and Moschoglou, Stylianos and Deng, Jiankang
            and Kainz, Bernhard and Zafeiriou, Stefanos},
  booktitle = {European Conference on Computer Vision (ECCV)},
  year = {2024}
}""",
    "sd": """@inproceedings{rombach2022ldm,
  title = {High-Resolution Image Synthesis with Latent Diffusion Models},
  author = {Rombach, Robin and Blattmann, Andreas and Lorenz, Dominik and Esser, Patrick and Ommer, Bj{\\"o}rn},
  booktitle = {IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR)},
  year = {2022}
}""",
    "dpmsolver": """@article{lu2022dpmsolverpp,
  title = {DPM-Solver++: Fast Solver for Guided Sampling of Diffusion Probabilistic Models},
  author = {Lu, Cheng and Zhou, Yuhao and Bao, Fan and Chen, Jianfei and Li, Chongxuan and Zhu, Jun},
  journal = {arXiv preprint arXiv:2211.01095},
  year = {2022}
}""",
    "arcface": """@inproceedings{deng2019arcface,
  title = {ArcFace: Additive Angular Margin Loss for Deep Face Recognition},
  author = {Deng, Jiankang and Guo, Jia and Xue, Niannan and Zafeiriou, Stefanos},
  booktitle = {IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR)},
  year = {2019}
}""",
    "webface": """@inproceedings{zhu2021webface260m,
  title = {WebFace260M: A Benchmark Unveiling the Power of Million-Scale Deep Face Recognition},
  author = {Zhu, Zheng and Huang, Guan and Deng, Jiankang and Ye, Yun and Huang, Junjie and Chen, Xinze
            and Zhu, Jiagang and Yang, Tian and Lu, Jiwen and Du, Dalong and Zhou, Jie},
  booktitle = {IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR)},
  year = {2021}
}""",
    "dlib": """@article{king2009dlib,
  title = {Dlib-ml: A Machine Learning Toolkit},
  author = {King, Davis E.},
  journal = {Journal of Machine Learning Research},
  volume = {10},
  pages = {1755--1758},
  year = {2009}
}""",
    "vec2face": """@inproceedings{wu2025vec2face,
  title = {Vec2Face: Scaling Face Dataset Generation with Loosely Constrained Vectors},
  author = {Wu, Haiyu and Singh, Jaskirat and Tian, Sicong and Zheng, Liang and Bowyer, Kevin W.},
  booktitle = {International Conference on Learning Representations (ICLR)},
  year = {2025}
}""",
    "dcface": """@inproceedings{kim2023dcface,
  title = {DCFace: Synthetic Face Generation with Dual Condition Diffusion Model},
  author = {Kim, Minchul and Liu, Feng and Jain, Anil and Liu, Xiaoming},
  booktitle = {IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR)},
  year = {2023}
}""",
    "hyperface": """@inproceedings{shahreza2025hyperface,
  title = {HyperFace: Generating Synthetic Face Recognition Datasets by Exploring Face Embedding Hypersphere},
  author = {Otroshi Shahreza, Hatef and Marcel, S{\\'e}bastien},
  booktitle = {International Conference on Learning Representations (ICLR)},
  year = {2025}
}""",
    "idiffface": """@inproceedings{boutros2023idiffface,
  title = {IDiff-Face: Synthetic-based Face Recognition through Fizzy Identity-Conditioned Diffusion Models},
  author = {Boutros, Fadi and Grebe, Jonas Henry and Kuijper, Arjan and Damer, Naser},
  booktitle = {IEEE/CVF International Conference on Computer Vision (ICCV)},
  year = {2023}
}""",
}


def _citation_keys(cfg: dict) -> list[str]:
    gen, ident = cfg.get("generator") or {}, cfg.get("identities") or {}
    keys = []
    if not gen.get("tiny"):
        keys += ["arc2face", "sd", "dpmsolver", "arcface", "webface"]
    keys.append("dlib")
    sampler = ident.get("sampler")
    keys += {"gaussian_rejection": ["vec2face"], "pca_gaussian": ["vec2face"], "hyperface": ["hyperface"],
             "uniform_sphere": ["idiffface"]}.get(sampler, [])
    if ident.get("max_cosine") is not None or (ident.get("leakage") or {}).get("galleries"):
        keys.append("dcface")  # the 0.3 uniqueness / leakage threshold
    if (cfg.get("images") or {}).get("perturbation") and "vec2face" not in keys:
        keys.append("vec2face")
    return keys


def gated_fields(license: str) -> tuple[str, dict]:
    """The access-request prompt and form of a gated repository."""
    nc = check_license(license) in NONCOMMERCIAL_LICENSES
    prompt = ("This dataset contains synthetic face images. No image shows a real person, but the models that "
              "made them were trained on photos of real people collected without their consent. To get access, "
              "agree not to use the data to identify, track or impersonate anyone, not to try to recover real "
              f"identities from it, and to follow its licence ({license}"
              + (", non-commercial use only)." if nc else ")."))
    fields = {
        "Name": "text",
        "Affiliation": "text",
        "Intended use": {"type": "select", "options": ["Research", "Education", "Evaluation of face recognition",
                                                       "Other"]},
        "I will not use this dataset to identify, track or impersonate real people": "checkbox",
        f"I agree to the dataset licence ({license})": "checkbox",
    }
    return prompt, fields


def build_card(run_dir: str | Path, license: str = DEFAULT_LICENSE, pretty_name: str | None = None, *,
               repo_id: str | None = None, gated: bool = False, include_identities: bool = False):
    """The dataset card of the run in ``run_dir`` (a ``huggingface_hub.DatasetCard``)."""
    from huggingface_hub import DatasetCard, DatasetCardData

    license = check_license(license)
    facts = read_run_facts(Path(run_dir))
    cfg = facts.cfg
    gen = cfg.get("generator") or {}
    n_ids = (cfg.get("identities") or {}).get("count", 0)
    per = (cfg.get("images") or {}).get("per_identity", 0)
    kind_name = _generator_name(cfg)
    gen_name = f"tiny random {kind_name}-layout model" if gen.get("tiny") else kind_name
    run_name = (cfg.get("run") or {}).get("name", "facefoundry")
    pretty_name = pretty_name or f"{run_name}: synthetic faces ({gen_name}, {n_ids:,} identities x {per})"
    features = _features(facts.schema)
    tags = ["synthetic", "faces", "face-recognition", "facefoundry", str(gen.get("kind", "arc2face"))]
    extra = {}
    if gated:
        extra["extra_gated_prompt"], extra["extra_gated_fields"] = gated_fields(license)
    data = DatasetCardData(
        license=license,
        pretty_name=pretty_name,
        task_categories=["image-classification", "image-feature-extraction"],
        size_categories=[size_category(facts.rows)],
        annotations_creators=["machine-generated"],
        source_datasets=["original"],
        tags=tags,
        configs=[{"config_name": "default", "data_files": [{"split": "train", "path": DATA_PATTERN}]}],
        dataset_info={"config_name": "default", "features": features._to_yaml_list(),
                      "download_size": facts.shard_bytes},
        **extra,
    )
    body = _body(facts, license, pretty_name, repo_id, include_identities, features)
    return DatasetCard(f"---\n{data.to_yaml()}\n---\n{body}")


def write_card(run_dir: str | Path, license: str = DEFAULT_LICENSE, pretty_name: str | None = None, *,
               repo_id: str | None = None, gated: bool = False, include_identities: bool = False) -> Path:
    """Write the card to ``<run_dir>/README.md`` atomically; the same inputs give the same bytes."""
    card = build_card(run_dir, license, pretty_name, repo_id=repo_id, gated=gated,
                      include_identities=include_identities)
    path = Path(run_dir) / CARD_FILE
    atomic_write_bytes(path, str(card).encode("utf-8"))
    return path


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _feature_type(feature) -> str:
    yaml_entry = {k: v for k, v in _yaml_of(feature).items() if k != "name"}
    if "dtype" in yaml_entry:
        return str(yaml_entry["dtype"])
    if "list" in yaml_entry:
        inner = yaml_entry["list"]
        inner = inner if isinstance(inner, str) else "struct"
        return f"list<{inner}>[{yaml_entry['length']}]" if "length" in yaml_entry else f"list<{inner}>"
    return "struct"


def _yaml_of(feature) -> dict:
    import datasets

    return datasets.Features({"x": feature})._to_yaml_list()[0]


@dataclass
class _Ctx:
    """What the card's sections read: the run facts and values derived from its config."""

    facts: RunFacts
    license: str
    pretty_name: str
    features: object
    where: str
    vectors_public: bool

    def __post_init__(self) -> None:
        facts = self.facts
        self.cfg, self.rec, self.ident = facts.cfg, facts.record, facts.identities
        self.run = self.cfg.get("run") or {}
        self.icfg = self.cfg.get("identities") or {}
        self.leak_cfg = self.icfg.get("leakage") or {}
        self.gen = self.cfg.get("generator") or {}
        self.filt = self.cfg.get("filter") or {}
        self.images = self.cfg.get("images") or {}
        self.pert = self.images.get("perturbation")
        self.meta = _shard_meta(facts.schema)
        self.comps = run_components(self.cfg)
        self.conflicts = licence_conflicts(self.license, self.comps)
        self.nc_comps = [c for c in self.comps if c.commercial is False]
        self.n_ids = self.icfg.get("count", 0)
        self.per = self.images.get("per_identity", 0)
        self.kept_ids = sum(int(m.get("identities_kept", 0)) for m in facts.manifests)
        self.tiny = bool(self.gen.get("tiny"))
        self.mode = self.filt.get("mode", "drop")
        self.nn = self.ident.get("nn_cosine") or {}
        self.leak = self.ident.get("leakage")


def _body(facts: RunFacts, license: str, pretty_name: str, repo_id: str | None, include_identities: bool,
          features) -> str:
    ctx = _Ctx(facts, license, pretty_name, features, repo_id or "path/to/run-folder",
               include_identities and facts.has_identities_file)
    out: list[str] = []
    for section in (_description, _generation, _structure, _statistics, _filtering, _leakage, _considerations,
                    _licence_section, _limitations, _citations):
        out += section(ctx)
    return "\n".join(out)


def _description(ctx: _Ctx) -> list[str]:
    facts, license, pretty_name, rec, nc_comps = ctx.facts, ctx.license, ctx.pretty_name, ctx.rec, ctx.nc_comps
    n_ids, per, kept_ids, tiny = ctx.n_ids, ctx.per, ctx.kept_ids, ctx.tiny
    generator_name = _generator_name(ctx.facts.cfg)
    out: list[str] = []
    add = out.append
    add(f"# {pretty_name}\n")
    add(f"A synthetic face-recognition dataset: {facts.rows:,} images of {kept_ids:,} synthetic identities "
        f"({n_ids:,} sampled, {per} images rendered each), made by "
        f"facefoundry {rec.get('facefoundry_version', 'unknown')} in run "
        f"`{rec.get('run_id')}` (config hash `{rec.get('config_hash')}`). The identities are random vectors "
        f"in a face-recognition embedding space, not people; every image was generated by "
        f"{'a tiny random-weight test model (the images are noise, not faces)' if tiny else generator_name}.\n")
    add("> **Synthetic data.** No image shows a real person, but the "
        + ("face models that checked the images were" if tiny else "generator and encoders were")
        + " trained on photos of real people collected from the web without their consent. Read "
        "[Considerations for using the data](#considerations-for-using-the-data) before use.\n")
    add("## Dataset description\n")
    add(f"Each row is one generated image with its identity label (`identity`, 0..{max(n_ids - 1, 0)}), the seed "
        "that produced it and the face filter's scores. Identities are separated by construction (see "
        "[Identity sampling](#identity-sampling)), so the labels are meant to be clean classes for training and "
        "evaluating face recognition.\n")
    add("### Intended uses\n")
    add("- Training face-recognition (identity classification / embedding) models on synthetic identities.\n"
        "- Research on synthetic training data: identity separation, intra-class variation, leakage and bias.\n"
        "- Benchmarking generators and filters (every threshold and drop count is recorded).\n")
    add("### Out-of-scope uses\n")
    add("- Identifying, verifying, tracking or profiling real people, and surveillance.\n"
        "- Impersonation, deepfakes, presentation attacks, or passing the faces off as real people.\n"
        "- Inferring sensitive attributes (ethnicity, gender, age, health) of anyone.\n"
        + ("- Commercial use: the licence is non-commercial.\n" if license in NONCOMMERCIAL_LICENSES else
           "- Commercial use: upstream models restrict it (see Licence).\n" if nc_comps else
           "- Uses that break the use-based restrictions of the upstream model licences.\n"))
    return out


def _generation(ctx: _Ctx) -> list[str]:
    rec, ident, run, icfg, gen = ctx.rec, ctx.ident, ctx.run, ctx.icfg, ctx.gen
    filt, images, comps, n_ids, per = ctx.filt, ctx.images, ctx.comps, ctx.n_ids, ctx.per
    tiny, mode, nn, pert = ctx.tiny, ctx.mode, ctx.nn, ctx.pert
    out: list[str] = []
    add = out.append
    add("## How it was generated\n")
    add("Identities → generator → face filter → Parquet shards. Every value below is read from `run.json`, the "
        "metadata of `identities.parquet` and the per-shard manifests of this run.\n")
    add("### Identity sampling\n")
    sampler = icfg.get("sampler", ident.get("sampler", "unknown"))
    rule = icfg.get("max_cosine")
    nn_max = nn.get("max")
    lines = [
        f"- Sampler: `{sampler}`: {SAMPLER_DOCS.get(sampler, 'see the facefoundry documentation')}.",
        f"- {n_ids:,} identities in a {icfg.get('dim', 512)}-d `{icfg.get('space', 'unit')}` space"
        + (f" (vector norm {icfg.get('norm')})" if icfg.get("space") == "raw" else " (L2-normalised)")
        + (f", {ident['candidates']:,} candidates drawn" if isinstance(ident.get("candidates"), int) else "") + ".",
        f"- Separation rule: no two identities above cosine {rule}." if rule is not None
        else "- Separation rule: none (baseline sampler).",
        f"- Result: nearest-other-identity cosine min {_num(nn.get('min'))}, median {_num(nn.get('p50'))}, "
        f"p99 {_num(nn.get('p99'))}, max {_num(nn_max)}"
        + (" (rule satisfied)." if rule is not None and nn_max is not None and nn_max <= rule else "."),
        f"- Run seed: {run.get('seed', 0)}; the vectors and every image seed derive from it "
        "(image seed = f(run seed, identity, image index)), so the run is reproducible.",
    ]
    details = {k: v for k, v in sorted((ident.get("sampler_details") or {}).items()) if not k.startswith("seconds")}
    if details:
        lines.append("- Sampler details: " + ", ".join(f"{k} {v}" for k, v in details.items()) + ".")
    add("\n".join(lines) + "\n")
    add("### Image generation\n")
    vec2face = gen.get("kind") == "vec2face"
    generator_name = _generator_name(ctx.facts.cfg)
    if tiny:
        add(f"A tiny {generator_name}-layout model with **random weights** (built in code for smoke tests) rendered "
            "the images: they are noise, not faces. Use this run to test tooling only.\n")
    add("\n".join([
        f"- Generator: tiny random weights in the official {generator_name} on-disk layout; no published weights "
        "were used."
        if tiny else
        f"- Generator: Vec2Face, `{hub_id(gen.get('checkpoint'), 'BooBooWu/Vec2Face')}` "
        f"(`{gen.get('filename', 'weights/vec2face_generator.pth')}`) at revision "
        f"`{gen.get('revision') or 'not pinned (latest at run time)'}`."
        if vec2face else
        f"- Generator: Arc2Face, `{hub_id(gen.get('model'), 'FoivosPar/Arc2Face')}` at revision "
        f"`{gen.get('revision') or 'not pinned (latest at run time)'}`, on the base model "
        f"`{hub_id(gen.get('base_model'), 'stable-diffusion-v1-5/stable-diffusion-v1-5')}`.",
        f"- One forward pass per image; the image seed draws the mask ratio (truncated normal: min "
        f"{gen.get('mask_ratio_min', 0.1)}, max {gen.get('mask_ratio_max', 1.0)}, "
        f"mean {gen.get('mask_ratio_mu', 0.15)}, "
        f"std {gen.get('mask_ratio_std', 0.25)}) and the token mask, both stored per image (`mask_ratio`, "
        "`token_mask`)."
        + (f" AttrOP (Adam on the input vector toward ArcFace-R100 cosine "
           f"{(gen.get('attrop') or {}).get('min_id_similarity')}, at most "
           f"{(gen.get('attrop') or {}).get('max_iterations')} steps per image; outcome per image in `attrop_*`)."
           if (gen.get("attrop") or {}).get("enabled") else "")
        if vec2face else
        f"- Prompt `{gen.get('prompt', 'photo of a id person')}` with the identity vector in the `id` token; "
        + (f"LCM-LoRA `{gen.get('lcm_lora')}` fused into the UNet, LCM scheduler, {gen.get('steps')} steps, "
           f"guidance scale {gen.get('guidance_scale')}." if gen.get("sampler") == "lcm" else
           f"DPM-Solver multistep, {gen.get('steps', 25)} steps, guidance scale {gen.get('guidance_scale', 3.0)}."),
        f"- {per} images per identity, stored as {images.get('format', 'png').upper()}"
        + (f" (quality {images.get('jpeg_quality')})" if images.get("format") == "jpeg" else "")
        + f" at {gen.get('output_size') or 'the native'}"
        + (" px" if gen.get("output_size") else " size (512 px)") + ".",
        "- Intra-class variation: the image seed only." if not pert else
        f"- Intra-class variation: the image seed and Gaussian noise on the identity vector, sigmas "
        f"{pert.get('sigmas')} with weights {pert.get('weights')} at reference norm {pert.get('reference_norm')} "
        "(Vec2Face).",
    ]) + "\n")
    add("### Face filter\n")
    add("\n".join([
        f"- dlib {filt.get('detector', 'hog').upper()} face detector (upsample {filt.get('upsample', 1)}, minimum "
        f"score {filt.get('min_face_score', 0.0)}), dlib 5-point landmarks, dlib ResNet 128-d descriptor as an "
        "independent identity judge (a different model family from the generator's encoder).",
        f"- Identity consistency: a face is rejected when its descriptor is more than "
        f"{filt.get('max_judge_distance', 0.6)} (Euclidean) from the centroid of its identity's other faces "
        "(0.6 is dlib's same-person threshold), or when it is not at least "
        f"{filt.get('judge_confusion_margin', 0.1)} closer to that centroid than to another identity's.",
        f"- Mode `{mode}`: " + ("rejected images are removed." if mode == "drop" else
                                "every image is kept and `filter_reason` says why it would be rejected."),
    ]) + "\n")
    add("### Upstream models and licences\n")
    add(_table(["role", "model", "source", "revision", "licence", "trained on", "commercial use"],
               [[c.role, c.name, c.source, c.revision or "-", c.licence, c.training_data,
                 {True: "allowed", False: "no", None: "not recorded"}[c.commercial]] for c in comps]) + "\n")
    add("### Software and reproduction\n")
    soft = _software(rec)
    add(f"facefoundry {rec.get('facefoundry_version', 'unknown')} wrote the run. Library versions"
        + (" recorded by the run" if isinstance(rec.get("software"), dict) else " where this card was built")
        + ": " + (", ".join(f"{k} {v}" for k, v in soft.items()) or "not recorded") + ".\n")
    add(f"To reproduce, save the `config` object of `run.json` as YAML and run `facefoundry run CONFIG --out DIR`; "
        f"the config hash must read `{rec.get('config_hash')}`.\n")
    return out


def _structure(ctx: _Ctx) -> list[str]:
    facts, features, n_ids, vectors_public, where = ctx.facts, ctx.features, ctx.n_ids, ctx.vectors_public, ctx.where
    out: list[str] = []
    add = out.append
    add("## Dataset structure\n")
    add("\n".join([
        f"- `{DATA_PATTERN}`: {len(facts.manifests)} Parquet shard(s), {format_bytes(facts.shard_bytes)}; each holds a "
        "contiguous identity range (`train-SSSSSSS-EEEEEEE`), rows sorted by (identity, image_index).",
        f"- `{MANIFEST_DIR}/*.json`: per shard rows, images generated, drops by reason, size and sha256.",
        f"- `{RUN_FILE}`: the resolved config, its hash and the run id.",
        f"- `{IDENTITIES_FILE}`: " + ("the identity vectors with their nearest-neighbour and gallery cosines."
                                      if vectors_public else "not published (identity vectors; see Privacy)."),
        f"- `{REPORT_DIR}/`: " + ("plots and `summary.json` of the run." if facts.report_files else
                                  "not present for this run."),
    ]) + "\n")
    add("### Loading\n")
    add(f'```python\nfrom datasets import load_dataset\n\nds = load_dataset("{where}", split="train")\n'
        'ds[0]["image"]  # a PIL image; ds[0]["identity"] is its label\n```\n')
    add("### Columns\n")
    add(_table(["column", "type", "description"],
               [[f"`{name}`", _feature_type(feat), COLUMN_DOCS.get(name, "see the facefoundry schema documentation")]
                for name, feat in features.items()]) + "\n")
    add("Model ids, thresholds and `synthetic: true` are stored once in each shard's Parquet metadata (key "
        "`facefoundry`), not in rows.\n")
    add("### Splits\n")
    add(f"One `train` split. Identity labels are 0..{max(n_ids - 1, 0)} and shards hold contiguous identity "
        "ranges, so an identity-disjoint validation split is a filter on `identity`.\n")
    return out


def _statistics(ctx: _Ctx) -> list[str]:
    facts, n_ids, kept_ids = ctx.facts, ctx.n_ids, ctx.kept_ids
    out: list[str] = []
    add = out.append
    add("## Statistics\n")
    add(f"Computed from the {len(facts.manifests)} manifest(s) of this run"
        + (f" ({len(facts.manifests)} of {facts.planned_units} planned units finished)"
           if len(facts.manifests) != facts.planned_units else "") + ".\n")
    add(_table(["quantity", "value"], [
        ["identities sampled", f"{n_ids:,}"],
        ["identities with at least one image", f"{kept_ids:,}"],
        ["images generated", f"{facts.generated:,}"],
        ["images in the dataset", f"{facts.rows:,}"],
        ["images per kept identity (mean)", _num(facts.rows / kept_ids, 2) if kept_ids else "n/a"],
        ["shards", f"{len(facts.manifests):,}"],
        ["size of the shards", format_bytes(facts.shard_bytes)],
    ]) + "\n")
    add("### Score columns\n")
    stats = facts.column_stats()
    if stats:
        add(_table(["column", "values", "mean", "min", "max"],
                   [[f"`{k}`", f"{v['count']:,}", _num(v["mean"]), _num(v["min"]), _num(v["max"])]
                    for k, v in stats.items()]) + "\n")
    else:
        add("No float score column has a finite value in this run (for example, the detector found no face).\n")
    add("### Plots\n")
    pngs = [f for f in facts.report_files if f.endswith(".png")]
    if pngs:
        add("\n\n".join(f"![{Path(p).stem}]({REPORT_DIR}/{p})" for p in pngs)
            + (f"\n\nMore numbers in `{REPORT_DIR}/summary.json`." if "summary.json" in facts.report_files else "")
            + "\n")
    else:
        add("No plots for this run: `facefoundry report RUN` writes them to `report/` and republishing adds them.\n")
    return out


def _filtering(ctx: _Ctx) -> list[str]:
    facts, n_ids, kept_ids, mode = ctx.facts, ctx.n_ids, ctx.kept_ids, ctx.mode
    out: list[str] = []
    add = out.append
    add("## Filtering\n")
    drops = facts.drops()
    rejected = sum(drops.values())
    add(f"Mode `{mode}`: "
        + (f"{rejected:,} of {facts.generated:,} generated images were rejected and removed; "
           f"{facts.rows:,} remain." if mode == "drop" else
           f"no image was removed; {rejected:,} of {facts.generated:,} images carry a `filter_reason` and would be "
           "removed in `drop` mode (filter on `filter_reason IS NULL` to get the accepted ones).") + "\n")
    if drops:
        add(_table(["reason", "images", "share of generated", "meaning"],
                   [[f"`{r}`", f"{n:,}", f"{100 * n / max(facts.generated, 1):.1f}%",
                     REASON_DOCS.get(r, "see the facefoundry documentation")] for r, n in drops.items()]) + "\n")
    else:
        add("No image was rejected by any rule.\n")
    add(f"Identities left without any image: {n_ids - kept_ids:,}.\n")
    return out


def _leakage(ctx: _Ctx) -> list[str]:
    leak_cfg, leak, vectors_public = ctx.leak_cfg, ctx.leak, ctx.vectors_public
    out: list[str] = []
    add = out.append
    add("## Leakage screening\n")
    if leak:
        galleries = [Path(g).name for g in leak_cfg.get("galleries") or []]
        add("Every sampled identity vector was compared with embeddings of real people (same embedding space) "
            "before any image was generated; vectors too close to a real person were rejected and resampled.\n")
        add("\n".join([
            f"- Galleries: {len(galleries)} file(s) ({', '.join(f'`{g}`' for g in galleries) or 'unnamed'}), "
            f"{_num(leak.get('gallery_size'))} embeddings; backend `{leak.get('backend')}`"
            + (f", ANN recall@1 {_num(leak.get('recall_at_1'))}" if leak.get("recall_at_1") is not None else "")
            + ". The gallery embeddings are never published.",
            f"- Rejection threshold: cosine above {leak.get('max_cosine')} to any gallery vector (DCFace's 0.3); "
            f"{_num(leak.get('rejected', 0))} identities rejected and replaced.",
            f"- Possible morphs (top-2 gallery cosines both at least {leak.get('morph_cosine')}): "
            f"{_num(leak.get('possible_morphs'))} flagged"
            + (", rejected." if leak_cfg.get("reject_morphs") else ", kept and recorded."),
            f"- Kept identities: highest gallery cosine {_num(leak.get('top1_max'))}, "
            f"p99 {_num(leak.get('top1_p99'))}.",
            "- Per-identity top-2 gallery cosines are in `identities.parquet`"
            + (" (published)." if vectors_public else " (not published with this dataset)."),
        ]) + "\n")
    else:
        add("**Not screened.** No gallery of real-face embeddings was configured (`identities.leakage.galleries` "
            "is empty), so the identity vectors were not compared with real people. Random vectors are unlikely "
            "to sit close to a particular person, but this was not checked, nor whether identities resemble "
            "people in common benchmarks (LFW, CFP-FP, AgeDB-30, CALFW, CPLFW, IJB).\n")
    add("Only identity vectors are screened; the generated images themselves were not searched against real "
        "faces.\n")
    return out


def _considerations(ctx: _Ctx) -> list[str]:
    icfg, gen, meta, comps, tiny = ctx.icfg, ctx.gen, ctx.meta, ctx.comps, ctx.tiny
    vectors_public = ctx.vectors_public
    out: list[str] = []
    add = out.append
    add("## Considerations for using the data\n")
    add("Synthetic faces reduce but do not remove the privacy, fairness and misuse concerns of face data.\n")
    add("### Privacy\n")
    trained_on = sorted({c.training_data for c in comps if "web" in c.training_data or "internet" in c.training_data})
    add("\n".join([
        "- The identities are synthetic: each is a random vector, not a person's embedding"
        + (" (except that `from_file` vectors come from the user and their origin is unknown)."
           if icfg.get("sampler") == "from_file" else "."),
        ("- The face models of the filter" if tiny else "- The models that generated and judged the faces")
        + " were trained on images collected from the web, real people's faces among them, without their "
        "consent: "
        + "; ".join(trained_on or ["see the upstream table"]) + ". A generated face can resemble a real person "
        "by chance.",
        "- Identity vectors can be decoded into faces by the generator, like biometric templates. "
        + ("They are published in `identities.parquet` for reproducibility; they are synthetic."
           if vectors_public else "They are not published with this dataset; the config and seed reproduce them."),
        "- Removal requests: open a discussion on the dataset repository. Identities are addressable (label and "
        "shard range), so an identity found to resemble a real person can be removed and the dataset "
        "republished.",
    ]) + "\n")
    add("### Bias\n")
    add("- No demographic attribute was estimated or balanced. Random vectors in the encoder's space inherit "
        "that space's training distribution (WebFace, web-crawled celebrities), so demographic groups are "
        "probably not equally represented.\n"
        "- The dlib detector and judge have their own error rates across groups; filtering can remove images "
        "of some groups more often. Report per-group accuracy on real benchmarks for any model trained on this "
        "data.\n")
    add("### Misuse\n")
    add("- Synthetic faces can be used for impersonation, fake profiles, deepfakes or attacks on face "
        "verification. Do not present these images as real people.\n"
        + ("" if tiny else "- Stable Diffusion's CreativeML OpenRAIL-M use-based restrictions (no unlawful, harmful "
           "or deceptive use) apply to content derived from it.\n"))
    add("### Synthetic marking\n")
    add("- The card carries the `synthetic` tag and every shard's Parquet metadata has `synthetic: true` with "
        f"the generator ({meta.get('generator', {}).get('kind', gen.get('kind', 'arc2face'))}, model ids and "
        "revision), for forensic research.\n"
        "- No invisible watermark was embedded in the images.\n")
    return out


def _licence_section(ctx: _Ctx) -> list[str]:
    license, conflicts, nc_comps = ctx.license, ctx.conflicts, ctx.nc_comps
    out: list[str] = []
    add = out.append
    add("## Licence\n")
    add(f"The dataset is released under `{license}`. Its upstream licence chain is listed in "
        "[Upstream models and licences](#upstream-models-and-licences).\n")
    if nc_comps:
        add("Upstream components restrict commercial use: "
            + "; ".join(f"{c.name} ({c.licence}; {c.training_data})" for c in nc_comps) + ".\n")
    if conflicts:
        add("**Licence conflict:** " + " ".join(f"{w}." for w in conflicts) + "\n")
    elif nc_comps:
        add(f"`{license}` is non-commercial, consistent with those terms.\n")
    else:
        add("No upstream component restricts commercial use.\n")
    return out


def _limitations(ctx: _Ctx) -> list[str]:
    gen, tiny, mode, pert = ctx.gen, ctx.tiny, ctx.mode, ctx.pert
    out: list[str] = []
    add = out.append
    add("## Limitations\n")
    lim = []
    if tiny:
        lim.append("- Tiny random weights: the images are not faces. This run only tests the tooling.")
    lim += [
        "- Identity consistency was judged by one independent model (dlib); its 0.6 threshold was calibrated on "
        "real photos, not generated faces.",
        "- Variation in pose, expression, illumination and age is whatever the generator produces from seeds"
        + (" and vector noise." if pert else "."),
        "- Leakage screening covers identity vectors only, and only against the configured galleries.",
        "- No demographic labels, so balance cannot be audited from the data itself.",
        f"- Images are {gen.get('output_size') or 512} px; models expecting aligned 112 px crops need the "
        "`landmarks` to align them.",
    ]
    if mode == "annotate":
        lim.append("- Annotate mode: rejected images are included; filter on `filter_reason`.")
    add("\n".join(lim) + "\n")
    return out


def _citations(ctx: _Ctx) -> list[str]:
    cfg = ctx.cfg
    out: list[str] = []
    add = out.append
    add("## Citation\n")
    add("This dataset builds on the following methods; please cite them if you use it.\n")
    add("```bibtex\n" + "\n\n".join(CITATIONS[k] for k in _citation_keys(cfg)) + "\n```\n")
    return out


# ---------------------------------------------------------------- card checks


def card_problems(text: str) -> list[str]:
    """Offline checks of a card: YAML metadata and that no section is empty. Empty list = fine."""
    import yaml
    from huggingface_hub import DatasetCard

    problems = []
    try:
        card = DatasetCard(text)
    except (ValueError, yaml.YAMLError) as exc:
        return [f"metadata: {exc}"]
    meta = card.data.to_dict()
    try:
        check_license(meta.get("license", ""))
    except ValueError as exc:
        problems.append(f"license: {exc}")
    if "synthetic" not in (meta.get("tags") or []):
        problems.append("tags: `synthetic` missing")
    if not set(meta.get("size_categories") or ["?"]) <= set(SIZE_CATEGORIES):
        problems.append(f"size_categories: {meta.get('size_categories')} not in {SIZE_CATEGORIES}")
    if not meta.get("task_categories"):
        problems.append("task_categories: missing")
    configs = meta.get("configs") or []
    if not any(df.get("path") == DATA_PATTERN for c in configs for df in c.get("data_files", [])):
        problems.append(f"configs: no data_files entry for {DATA_PATTERN}")
    if not (meta.get("dataset_info") or {}).get("features"):
        problems.append("dataset_info: features missing")
    heading, content, fenced = None, [], False
    for line in card.text.splitlines() + ["# end"]:
        if line.startswith("```"):
            fenced = not fenced
        if not fenced and re.match(r"#{1,6} ", line):
            if heading is not None and not "".join(content).strip():
                problems.append(f"section {heading!r} is empty")
            heading, content = line.lstrip("# ").strip(), []
        else:
            content.append(line)
    return problems


