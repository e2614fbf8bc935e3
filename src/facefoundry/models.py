"""The upstream model files facefoundry loads: where they live on the Hub, their licences, and fetching them.

``REGISTRY`` maps a short name (``arc2face``, ``sd15``, ...) to a :class:`ModelSpec`: the Hub repo, the exact
files the loaders read (nothing else is downloaded), the licence chain the dataset card reports and what uses
it. :func:`fetch` puts those files into the Hugging Face cache (``HF_HOME`` / ``HF_HUB_CACHE``), so nodes can
be pre-warmed and later runs work with ``HF_HUB_OFFLINE=1``. :func:`require_file` is what loaders call for a
single file: a missing file becomes one :class:`ModelFileMissing` line naming the file, the repo or folder,
and the ``facefoundry models fetch NAME`` command that gets it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from facefoundry.upstream import UPSTREAM

FETCH_COMMAND = "facefoundry models fetch"
# ``models list``: may the licence chain (code, weights, training data) be used commercially?
COMMERCIAL = {True: "allowed", False: "no", None: "not recorded"}
CHAIN_MARK = {True: "", False: "*", None: "?"}
CHAIN_NOTE = "licence *: non-commercial terms in the chain (weights or training data); ?: chain not recorded"


@dataclass(frozen=True)
class ModelSpec:
    """One downloadable model: the Hub repo, the exact files needed, and its licence chain."""

    name: str
    repo_id: str | None  # None: not on the Hub (see ``manual``)
    files: tuple[str, ...]  # exact paths in the repo; also the allow_patterns of the download
    licence: str  # Hub licence identifier of the repo (model card)
    upstream: tuple[str, ...]  # the models its files hold: keys of upstream.UPSTREAM (their licence chains)
    used_by: str
    description: str
    revision: str | None = None  # None: the repo's main branch at fetch time
    repo_type: str = "model"
    manual: str = ""  # how to get it when it is not on the Hub

    @property
    def licence_note(self) -> str:
        """The licence chain of every model in the files, from :data:`facefoundry.upstream.UPSTREAM`."""
        return "; ".join(f"{u.name}: {u.licence}, trained on {u.training_data}"
                         for u in (UPSTREAM[k] for k in self.upstream))

    @property
    def commercial(self) -> bool | None:
        """False if any model's chain is non-commercial, None if one is not recorded, else True."""
        flags = [UPSTREAM[k].commercial for k in self.upstream]
        return False if False in flags else None if None in flags else True


REGISTRY: dict[str, ModelSpec] = {s.name: s for s in (
    ModelSpec(
        "arc2face", "FoivosPar/Arc2Face",
        ("arc2face/config.json", "arc2face/diffusion_pytorch_model.safetensors",
         "encoder/config.json", "encoder/pytorch_model.bin", "arcface.onnx"),
        "mit", ("arc2face-weights", "arcface-onnx"),
        "generator.kind=arc2face (generator.model); id_filter.encoder_model (arcface.onnx)",
        "Arc2Face ID-conditioned SD-1.5 UNet, its fine-tuned CLIP text encoder, and the ArcFace ONNX model "
        "that defines its identity space"),
    ModelSpec(
        "sd15", "stable-diffusion-v1-5/stable-diffusion-v1-5",
        ("model_index.json", "scheduler/scheduler_config.json",
         "tokenizer/merges.txt", "tokenizer/special_tokens_map.json", "tokenizer/tokenizer_config.json",
         "tokenizer/vocab.json", "vae/config.json", "vae/diffusion_pytorch_model.safetensors"),
        "creativeml-openrail-m", ("sd15",),
        "generator.kind=arc2face (generator.base_model)",
        "Stable Diffusion 1.5 base: only the tokenizer, VAE and scheduler config Arc2Face loads "
        "(its UNet and text encoder are replaced by Arc2Face's)"),
    ModelSpec(
        "lcm-lora", "latent-consistency/lcm-lora-sdv1-5", ("pytorch_lora_weights.safetensors",),
        "openrail++", ("lcm-lora",),
        "Arc2Face fast mode (LCMScheduler, 2-4 steps)",
        "LCM-LoRA for SD-1.5: few-step sampling adapter"),
    ModelSpec(
        "sd21-base", "stabilityai/stable-diffusion-2-1-base",
        ("model_index.json", "scheduler/scheduler_config.json",
         "tokenizer/merges.txt", "tokenizer/special_tokens_map.json", "tokenizer/tokenizer_config.json",
         "tokenizer/vocab.json", "text_encoder/config.json", "text_encoder/model.safetensors", "unet/config.json",
         "unet/diffusion_pytorch_model.safetensors", "vae/config.json", "vae/diffusion_pytorch_model.safetensors"),
        "openrail++", ("sd21",), "generator.kind=id-booth (generator.base_model)",
        "Stable Diffusion 2.1 base (512 px): ID-Booth fine-tunes one LoRA per consenting person on it"),
    ModelSpec(
        "arcface-ms1mv3", None, ("ArcFace_r100_ms1mv3_backbone.pth",),
        "other", ("arcface-ms1mv3",), "generator.kind=id-booth (generator.arcface)",
        "ArcFace R100 trained on MS1MV3 (arcface_torch iresnet100 state dict), the identity loss of ID-Booth; "
        "not on the Hub",
        manual="download the ms1mv3 arcface_r100 backbone from the insightface arcface_torch model zoo "
        "(github.com/deepinsight/insightface, recognition/arcface_torch), save it as "
        "ArcFace_r100_ms1mv3_backbone.pth and set generator.arcface to it (non-commercial research licence)"),
    ModelSpec(
        "vec2face", "BooBooWu/Vec2Face", ("weights/vec2face_generator.pth",),
        "mit", ("vec2face-weights",), "generator.kind=vec2face (generator.checkpoint, generator.filename)",
        "Vec2Face generator checkpoint (entry model_vec2face)"),
    ModelSpec(
        "vec2face-face-models", "BooBooWu/Vec2Face",
        ("weights/arcface-r100-glint360k.pth", "weights/magface-r100-glint360k.pth",
         "weights/6DRepNet_300W_LP_AFLW2000.pth"),
        "mit", ("arcface-r100", "magface", "6drepnet"),
        "id_filter.encoder_model (arcface-r100-glint360k.pth); Vec2Face AttrOP (MagFace quality, 6DRepNet pose)",
        "Vec2Face's face models: ArcFace-R100 identity space, MagFace quality, 6DRepNet head pose"),
    ModelSpec(
        "idiff-face", None, (".hydra/config.yaml", "checkpoints/ema_averaged_model.ckpt"),
        "cc-by-nc-sa-4.0", ("idiff-face",), "generator.kind=idiff_face (generator.model)",
        "IDiff-Face released model folder (25 % or 50 % CPD): training config and EMA weights; not on the Hub",
        manual="request access with the form linked in the fdbtrs/IDiff-Face README, download the model folder "
        "(e.g. unet-cond-ca-bs512-150K-cpd25, with its .hydra/ folder) and set generator.model to it"),
    ModelSpec(
        "idiff-face-autoencoder", None, ("first_stage_decoder_state_dict.pt",),
        "mit", ("ldm-ffhq-vq-f4",), "generator.kind=idiff_face (generator.autoencoder)",
        "Decoder half of the CompVis ffhq256 VQ-f4 autoencoder, as split by IDiff-Face; not on the Hub",
        manual="download first_stage_decoder_state_dict.pt from the 'Encoder and decoder model weights' link in the "
        "fdbtrs/IDiff-Face README into a folder and set generator.autoencoder to it"),
    ModelSpec(
        "dcface", None, ("dcface_3x3.ckpt",),
        "other", ("dcface-weights",), "generator.kind=dcface (generator.checkpoint)",
        "DCFace mixing-stage checkpoint (PyTorch Lightning; dcface_5x5.ckpt is the 5x5 style-grid variant); "
        "not on the Hub",
        manual="download dcface_3x3.ckpt (or dcface_5x5.ckpt) from the Google Drive folder linked in the "
        "mk-minchul/dcface README and set generator.checkpoint to it"),
    ModelSpec(
        "dcface-gid", None, ("ffhq_10m.pt",),
        "other", ("dcface-gid",), "facefoundry dcface-ids --gid",
        "DCFace's identity-stage generator: unconditional ADM DDPM on FFHQ 256 px; not on the Hub",
        manual="download ffhq_10m.pt from the Google Drive folder linked in the mk-minchul/dcface README and pass it "
        "to `facefoundry dcface-ids --gid`"),
    ModelSpec(
        "buffalo_l", None, ("det_10g.onnx", "genderage.onnx"),
        "other", ("scrfd", "genderage"),
        "attributes.model (genderage.onnx); attributes.detector_model or id_filter.detector_model (det_10g.onnx)",
        "InsightFace buffalo_l pack (SCRFD-10GF detector, gender/age model); not on the Hub",
        manual="download buffalo_l.zip from github.com/deepinsight/insightface/releases/download/v0.7/ and unzip it "
        "so that models/buffalo_l/genderage.onnx exists (non-commercial research licence)"),
    ModelSpec(
        "fairface", None, ("res34_fair_align_multi_7_20190809.pt",),
        "other", ("fairface",), "attributes.estimator=fairface (attributes.model)",
        "FairFace ResNet-34 race/gender/age classifier; not on the Hub",
        manual="download res34_fair_align_multi_7_20190809.pt from the Google Drive link in the joojs/fairface "
        "README and set attributes.model to it"),
    ModelSpec(
        "antelopev2", None, ("scrfd_10g_bnkps.onnx", "glintr100.onnx"),
        "other", ("scrfd",),
        "id_filter.detector_model (SCRFD detector)",
        "InsightFace antelopev2 pack (SCRFD-10GF detector); not on the Hub",
        manual="download antelopev2.zip from the InsightFace model zoo (github.com/deepinsight/insightface, "
        "python-package) and unzip it so that models/antelopev2/scrfd_10g_bnkps.onnx exists "
        "(not models/antelopev2/antelopev2/)"),
)}


def hub_repo(name: str) -> str:
    """The Hub repository of registry model ``name``: the one place a Hub repo id is written."""
    repo = REGISTRY[name].repo_id
    if repo is None:
        raise ValueError(f"{name} is not on the Hugging Face Hub")
    return repo


class UnknownModelError(ValueError):
    """A model name that is not in :data:`REGISTRY`."""


class ModelFetchError(RuntimeError):
    """A model cannot be fetched (not on the Hub, network or permission problem)."""


class ModelFileMissing(FileNotFoundError):
    """A needed model file is neither cached nor downloadable; the message names the file, repo and fix."""

    def __init__(self, message: str, filename: str, repo: str, name: str | None = None):
        super().__init__(message)
        self.filename, self.repo, self.name = filename, repo, name

    def __str__(self) -> str:
        return str(self.args[0])


@dataclass
class CacheStatus:
    """Which of a model's files are in the HF cache for a revision (path or None), and their bytes."""

    files: dict[str, Path | None]

    @property
    def cached(self) -> int:
        return sum(p is not None for p in self.files.values())

    @property
    def complete(self) -> bool:
        return bool(self.files) and self.cached == len(self.files)

    @property
    def nbytes(self) -> int:
        return sum(p.stat().st_size for p in self.files.values() if p is not None)

    @property
    def missing(self) -> list[str]:
        return [f for f, p in self.files.items() if p is None]


@dataclass
class FetchResult:
    """What :func:`fetch` did."""

    name: str
    repo_id: str
    commit: str
    folder: Path
    downloaded: list[str] = field(default_factory=list)
    nbytes: int = 0


def get_spec(name: str) -> ModelSpec:
    """The registry entry ``name``; :class:`UnknownModelError` listing the known names otherwise."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise UnknownModelError(f"unknown model {name!r}; known: {', '.join(REGISTRY)}") from None


def spec_for_file(repo_id: str, filename: str) -> ModelSpec | None:
    """The registry entry that provides ``filename`` from ``repo_id`` (None for other repos)."""
    for spec in REGISTRY.values():
        if spec.repo_id == repo_id and filename in spec.files:
            return spec
    return None


def hub_cache() -> Path:
    """The HF hub cache folder in effect (``HF_HUB_CACHE``, else ``HF_HOME``/hub, else ~/.cache/...)."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` forbids network access."""
    from huggingface_hub import is_offline_mode

    return bool(is_offline_mode())


def missing_file_error(filename: str, repo: str, *, local_folder: str | Path | None = None,
                       name: str | None = None, reason: str | None = None, fix: str | None = None
                       ) -> ModelFileMissing:
    """The one-line error for a model file that is not there: file, repo (or folder), cache and the fix.

    The fix defaults to the fetch command of the registry entry providing the file (``name``, else looked
    up by repo and file), else ``hf download``.
    """
    spec = get_spec(name) if name else spec_for_file(repo, filename)
    name = spec.name if spec else None
    hub_repo = spec.repo_id if spec and spec.repo_id else repo
    fetch = fix or (f"run `{FETCH_COMMAND} {name}`" if name else f"run `hf download {hub_repo} {filename}`")
    if local_folder is not None:
        msg = (f"{filename} not found in local folder {local_folder}; copy it there from the Hub repo "
               f"{hub_repo}, or set the config to the Hub id {hub_repo} and {fetch}")
    else:
        where = f"HF cache {hub_cache()}" + (f"; {reason}" if reason else "")
        msg = f"{filename} not found in Hub repo {repo} ({where}); {fetch}"
        if offline() and not fix:
            msg += " on a machine with network access (HF_HUB_OFFLINE=1 is set), or share its HF_HOME"
    return ModelFileMissing(msg, filename, repo, name)


def _why(exc: BaseException, revision: str | None) -> dict[str, str | None]:
    """``reason`` and ``fix`` for :func:`missing_file_error` from a huggingface_hub download error."""
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    rev = revision or "main"
    if isinstance(exc, LocalEntryNotFoundError):  # default fix: the fetch command
        return {"reason": "not cached" + ("" if offline() else "; the Hub cannot be reached"), "fix": None}
    if isinstance(exc, RevisionNotFoundError):
        return {"reason": f"revision {rev} does not exist", "fix": "use an existing branch, tag or commit"}
    if isinstance(exc, GatedRepoError):
        return {"reason": "gated repo", "fix": "accept its terms on the Hub and set HF_TOKEN"}
    if isinstance(exc, RepositoryNotFoundError):
        return {"reason": f"repository (or its revision {rev}) not found, or private",
                "fix": "check the repo id and revision, and HF_TOKEN for a private repo"}
    if isinstance(exc, EntryNotFoundError):
        return {"reason": f"the repo has no such file at revision {rev}",
                "fix": "check the file name, or use a revision that has it"}
    first = (str(exc).strip().splitlines() or [""])[0][:160]
    return {"reason": f"download failed: {type(exc).__name__}: {first}", "fix": None}


def _download_errors() -> tuple[type[BaseException], ...]:
    import httpx2
    from huggingface_hub.errors import EntryNotFoundError

    return (OSError, ValueError, EntryNotFoundError, httpx2.HTTPError)


def _looks_local(source: str) -> bool:
    return os.path.isabs(source) or source.startswith((".", "~")) or source.count("/") != 1


def require_file(source: str | Path, filename: str, *, revision: str | None = None,
                 repo_type: str = "model", name: str | None = None) -> Path:
    """A local path to ``filename`` of ``source`` (a local folder or a Hub repo id).

    Hub files come from the HF cache, downloaded when allowed (``HF_HUB_OFFLINE`` is respected). Anything
    missing raises :class:`ModelFileMissing` with the file, the repo or folder, and the fetch command;
    ``name`` names the registry entry when ``source`` is a local copy of it.
    """
    path = Path(source).expanduser()
    if path.is_dir():
        if (path / filename).is_file():
            return path / filename
        raise missing_file_error(filename, str(source), local_folder=path, name=name)
    if _looks_local(str(source)):
        spec = get_spec(name) if name else None
        raise missing_file_error(filename, spec.repo_id if spec and spec.repo_id else str(source),
                                 local_folder=f"{path} (which does not exist)", name=name)
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(str(source), filename, revision=revision, repo_type=repo_type))
    except _download_errors() as exc:
        raise missing_file_error(filename, str(source), name=name, **_why(exc, revision)) from exc


def check_cached(repo_id: str, groups: list[tuple[str, ...]], revision: str | None = None,
                 error: type[Exception] | None = None) -> None:
    """Offline only: raise :class:`ModelFileMissing` (or ``error``, same message) unless each group of
    alternative files has one of ``repo_id`` cached.

    For loaders that hand a Hub id to ``from_pretrained``: with ``HF_HUB_OFFLINE=1`` a cold cache then
    fails with the file name and the fetch command instead of a long library error. Online it does nothing
    (``from_pretrained`` downloads).
    """
    if not offline():
        return
    from huggingface_hub import try_to_load_from_cache

    for group in groups:
        if not any(isinstance(try_to_load_from_cache(repo_id, f, revision=revision), str) for f in group):
            named = next((f for f in group if spec_for_file(repo_id, f)), group[0])
            exc = missing_file_error(named, repo_id, reason="not cached")
            raise (error(str(exc)) if error else exc)


def cache_status(spec: ModelSpec, revision: str | None = None, cache_dir: str | Path | None = None
                 ) -> CacheStatus:
    """Which of ``spec.files`` are in the HF cache for ``revision`` (default: the spec's, else main)."""
    from huggingface_hub import try_to_load_from_cache

    if spec.repo_id is None:
        return CacheStatus({f: None for f in spec.files})
    rev = revision or spec.revision
    files: dict[str, Path | None] = {}
    for f in spec.files:
        hit = try_to_load_from_cache(spec.repo_id, f, cache_dir=cache_dir, revision=rev, repo_type=spec.repo_type)
        files[f] = Path(hit) if isinstance(hit, str) else None
    return CacheStatus(files)


def fetch(name: str, revision: str | None = None) -> FetchResult:
    """Download exactly the files of registry entry ``name`` into the HF cache (a no-op when cached).

    With ``HF_HUB_OFFLINE=1`` nothing is downloaded: a complete cache is reported, a gap raises
    :class:`ModelFileMissing` naming the first missing file.
    """
    spec = get_spec(name)
    if spec.repo_id is None:
        raise ModelFetchError(f"{name} is not on the Hugging Face Hub: {spec.manual}")
    rev = revision or spec.revision
    before = cache_status(spec, rev)
    # What fetching cannot do without the Hub: this command again would not help, a local copy would.
    local = (f"or copy {', '.join(spec.files)} from {spec.repo_id} into a folder elsewhere and point the config at "
             f"it ({spec.used_by})")
    if offline():
        if before.missing:
            raise missing_file_error(
                before.missing[0], spec.repo_id, name=name,
                reason=f"{len(before.missing)} of {len(spec.files)} files not cached, and HF_HUB_OFFLINE=1 forbids "
                "downloading them", fix=f"unset HF_HUB_OFFLINE where the Hub is reachable and fetch there (then share "
                f"its HF_HOME), {local}")
        folder = before.files[spec.files[0]].parents[len(Path(spec.files[0]).parts) - 1]
        return FetchResult(name, spec.repo_id, folder.name, folder, [], before.nbytes)
    from huggingface_hub import snapshot_download

    try:
        folder = Path(snapshot_download(spec.repo_id, repo_type=spec.repo_type, revision=rev,
                                        allow_patterns=list(spec.files)))
    except _download_errors() as exc:
        why = _why(exc, rev)
        if why["fix"] is None and "cannot be reached" in (why["reason"] or ""):
            why["fix"] = f"check the network or proxy (HF_ENDPOINT) and fetch again, {local}"
        raise missing_file_error((before.missing or list(spec.files))[0], spec.repo_id, name=name, **why) from exc
    absent = [f for f in spec.files if not (folder / f).is_file()]
    if absent:
        raise missing_file_error(absent[0], spec.repo_id, name=name,
                                 reason=f"the repo has no such file at revision {rev or 'main'} ({folder.name})",
                                 fix="the repo layout differs from the registry: fetch a revision that has it "
                                 "(--revision) or report it")
    after = cache_status(spec, folder.name)
    downloaded = [f for f in spec.files
                  if before.files[f] is None or before.files[f].resolve() != after.files[f].resolve()]
    return FetchResult(name, spec.repo_id, folder.name, folder, downloaded, after.nbytes)


def human_bytes(n: int) -> str:
    """``n`` bytes as B/kB/MB/GB (decimal units, as the Hub shows sizes)."""
    if n < 1000:
        return f"{n} B"
    value, unit = n / 1000, "kB"
    for bigger in ("MB", "GB", "TB"):
        if value < 1000:
            break
        value, unit = value / 1000, bigger
    return f"{value:.1f} {unit}"


def list_rows() -> list[dict[str, str]]:
    """One row per registry entry for ``facefoundry models list`` (reads the cache only, no network)."""
    rows = []
    for spec in REGISTRY.values():
        status = cache_status(spec)
        if spec.repo_id is None:
            cached = "manual"
        elif status.complete:
            cached = "yes"
        else:
            cached = f"partial ({status.cached}/{len(spec.files)})" if status.cached else "no"
        rows.append({"name": spec.name, "repo": spec.repo_id or "(not on the Hub)",
                     "files": str(len(spec.files)), "licence": spec.licence + CHAIN_MARK[spec.commercial],
                     "cached": cached,
                     "size": human_bytes(status.nbytes) if status.cached else "-",
                     "commercial": COMMERCIAL[spec.commercial]})
    return rows
