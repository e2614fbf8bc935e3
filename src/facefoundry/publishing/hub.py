"""Hugging Face Hub publishing of a finished, verified run (the card is :mod:`facefoundry.publishing.card`).

What ``publish`` uploads: ``README.md``, ``run.json``, ``data/train-*.parquet``, ``manifests/*.json``,
``report/`` (plots and summary) and the removal log ``removals.json``. Never ``models/`` (tiny random
weights), logs or temporary files. ``identities.parquet`` holds the identity vectors, which the generator can
decode into faces (literature P7): it is published only on request (``include_identities``) and never for the
``from_file`` sampler, whose vectors may be embeddings of real people. Remote files under ``data/``,
``manifests/`` and ``report/`` (and ``identities.parquet``) that this publish does not upload are deleted, so a
reused repository never mixes shards of two runs.

After ``facefoundry remove``: the rewritten shards replace the published ones in one commit, and the result says
so. The Hub keeps earlier commits, which still hold the removed rows, until the repository's history is squashed
(the result says how). ``identities.parquet`` keeps every identity's vector (the run's record), so a run with
removals is never published with ``include_identities``.

Gating: ``gated=True`` puts ``extra_gated_prompt``/``extra_gated_fields`` in the card and sets the
repository to manual access approval; publishing without it leaves an existing gate alone.

The token comes from the caller, ``HF_TOKEN`` or the Hugging Face login; it is only handed to
``HfApi`` and never printed, logged or written. Hub errors become one-line :class:`PublishError`
messages.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from facefoundry.dataset.atomic import atomic_write_bytes
from facefoundry.generators.registry import spec_of
from facefoundry.layout import (
    CARD_FILE,
    DATA_DIR,
    DATA_PATTERN,
    HUB_MAX_FILES_PER_FOLDER,
    IDENTITIES_FILE,
    LOG_DIR,
    MANIFEST_DIR,
    MODELS_DIR,
    REMOVALS_FILE,
    REPORT_DIR,
    RUN_FILE,
)
from facefoundry.models import human_bytes
from facefoundry.publishing.card import card_problems, render_card
from facefoundry.publishing.card.user import card_metadata, user_choices
from facefoundry.publishing.licensing import DEFAULT_LICENSE, check_license, licence_conflicts, run_components
from facefoundry.publishing.repo_id import PublishError, check_repo_id
from facefoundry.runfolder.runfacts import RunFactsError, read_run_facts

# What publish uploads (patterns relative to the run folder) and deletes remotely when absent locally.
UPLOAD_PATTERNS = [CARD_FILE, RUN_FILE, DATA_PATTERN, f"{MANIFEST_DIR}/*.json", f"{REPORT_DIR}/*.png",
                   f"{REPORT_DIR}/*.json", REMOVALS_FILE]
IGNORE_PATTERNS = [".tmp-*", "*/.tmp-*", f"{MODELS_DIR}/*", f"{LOG_DIR}/*", "*.log"]
DELETE_PATTERNS = [f"{DATA_DIR}/*", f"{MANIFEST_DIR}/*", f"{REPORT_DIR}/*", IDENTITIES_FILE, RUN_FILE, REMOVALS_FILE]


# ---------------------------------------------------------------- publish


@dataclass
class PublishResult:
    repo_id: str
    url: str
    files: list[tuple[str, int]]  # (path in repo, bytes) of everything published
    total_bytes: int
    dry_run: bool
    commit_url: str | None = None
    changed: bool | None = None  # False: the Hub already had every file (nothing committed)
    warnings: list[str] = field(default_factory=list)
    removals: list[dict] = field(default_factory=list)  # the run's removal log

    def summary_lines(self) -> list[str]:
        """Human-readable lines for the CLI (no secrets in here)."""
        if self.dry_run:
            lines = [f"{size:>14,}  {path}" for path, size in self.files]
            lines.append(f"dry run: {len(self.files)} files, {human_bytes(self.total_bytes)} would be published to "
                         f"{self.repo_id}; remote files under {', '.join(DELETE_PATTERNS)} that the run does not "
                         "have would be deleted")
            return lines
        state = "uploaded" if self.changed else "already up to date, nothing uploaded"
        return [f"{self.repo_id}: {len(self.files)} files, {human_bytes(self.total_bytes)}: {state}",
                f"{self.url}" + (f" (commit {self.commit_url})" if self.commit_url else "")] + self.removal_lines()

    def removal_lines(self) -> list[str]:
        """What the publish did about the run's removals (none: no line)."""
        if not self.removals:
            return []
        labels = sum(len(e["labels"]) for e in self.removals)
        shards = sorted({name for e in self.removals for name in e.get("units", {})})
        return [f"removals: {labels} identities removed ({REMOVALS_FILE}); the {len(shards)} shard(s) they were in are "
                + ("replaced on the Hub by this commit" if self.changed else "already the rewritten ones on the Hub"),
                "removals: earlier commits of the repository still hold the removed rows; to drop them from its "
                f"history run: python -c \"from huggingface_hub import HfApi; HfApi().super_squash_history("
                f"'{self.repo_id}', repo_type='dataset')\""]


def upload_selection(run_dir: Path, include_identities: bool = False) -> list[Path]:
    """The run files publish uploads (relative paths), with the same patterns ``upload_folder`` gets."""
    from huggingface_hub.utils import filter_repo_objects

    allow, ignore = _patterns(include_identities)
    rel = sorted(p.relative_to(run_dir).as_posix() for p in run_dir.glob("**/*") if p.is_file())
    return [Path(p) for p in filter_repo_objects(rel, allow_patterns=allow, ignore_patterns=ignore)]


def _patterns(include_identities: bool) -> tuple[list[str], list[str]]:
    allow = UPLOAD_PATTERNS + ([IDENTITIES_FILE] if include_identities else [])
    return allow, list(IGNORE_PATTERNS)


def _scrub(text: str, token: str | None) -> str:
    return text.replace(token, "<token>") if token else text


def _hub_error(exc: BaseException, repo_id: str, endpoint: str, token: str | None) -> PublishError:
    """One clear line for a failed Hub call."""
    import httpx2
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    if isinstance(exc, HfHubHTTPError) and getattr(exc, "response", None) is not None:
        status = exc.response.status_code
        server = (exc.server_message or "").strip().splitlines()
        detail = f" (Hub says: {server[0]})" if server else ""
        if status == 401:
            msg = ("authentication failed (401): the token is missing, invalid or expired; set HF_TOKEN or run "
                   "`hf auth login` with a write token")
        elif status == 403:
            msg = (f"permission denied (403): the token may not write to {repo_id}; use a write token of a user "
                   f"or organisation that owns the namespace{detail}")
        elif status == 404:
            msg = (f"not found (404): {repo_id} does not exist or the token cannot see it; check --repo and "
                   "that the namespace exists")
        elif status == 429:
            retry = exc.response.headers.get("Retry-After")
            msg = ("rate limited by the Hub (429)"
                   + (f", retry after {retry} s" if retry else "")
                   + "; re-run the same command later: files already committed are skipped")
        elif status >= 500:
            msg = f"the Hub failed ({status}){detail}; re-run the same command to resume"
        else:
            msg = f"the Hub refused the request ({status}){detail}"
    elif isinstance(exc, OfflineModeIsEnabled):
        msg = "HF_HUB_OFFLINE is set: publishing needs the network; unset it (or use --dry-run)"
    elif isinstance(exc, (httpx2.TransportError, ConnectionError, TimeoutError)):
        msg = (f"cannot reach the Hub at {endpoint} ({type(exc).__name__}); check the network and re-run: "
               "the upload resumes")
    elif isinstance(exc, ValueError) and "README.md" in str(exc):  # upload_folder's card validation
        msg = f"the Hub rejected the dataset card: {' '.join(str(exc).split())}"
    else:
        msg = f"publishing failed: {type(exc).__name__}: {' '.join(str(exc).split())}"
    return PublishError(_scrub(msg, token))


def _verify(run_dir: Path) -> list[str]:
    from facefoundry.runfolder.verify import verify_run

    return verify_run(run_dir)


def card_to_publish(run_dir: Path, license: str | None, pretty_name: str | None, *, regenerate: bool,
                    repo_id: str, gated: bool, include_identities: bool) -> tuple[str, list[str]]:
    """The card text publish uploads, and warnings about it.

    The card in the run folder is published as it is; a new card is built only when there is none or when
    ``regenerate`` asks for it, and then keeps the old card's licence, pretty name and hand-written content
    unless new ones are given. A ``license`` that contradicts the existing card is refused, never overwritten."""
    path = run_dir / CARD_FILE
    old = path.read_text(encoding="utf-8") if path.is_file() else None
    warnings: list[str] = []
    if old is None or regenerate:
        text = render_card(run_dir, old, license, pretty_name, repo_id=repo_id, gated=gated,
                           include_identities=include_identities)
    else:
        text = old
        stated, name = user_choices(old)
        for option, given, have in (("--license", license, stated), ("--pretty-name", pretty_name, name)):
            if given is not None and given != have:
                raise PublishError(f"{path} states {option[2:]} {have!r}, not {given!r}: edit the card, or add "
                                   "--regenerate-card to rebuild it with the new value (hand-written sections "
                                   "are kept)")
        if gated and "extra_gated_prompt" not in card_metadata(old):
            warnings.append(f"{CARD_FILE} has no access-request form (extra_gated_prompt); the repository is gated "
                            "anyway: add --regenerate-card to put the form in the card")
    problems = card_problems(text)
    if problems:
        raise PublishError(f"the dataset card {path.name} is invalid: " + "; ".join(problems)
                           + ("" if old is None or regenerate else "; fix it, or add --regenerate-card"))
    return text, warnings


def publish(run_dir: str | Path, repo_id: str, private: bool = False, gated: bool = False, dry_run: bool = False,
            endpoint: str | None = None, token: str | None = None, license: str | None = None, *,
            pretty_name: str | None = None, include_identities: bool = False,
            regenerate_card: bool = False) -> PublishResult:
    """Publish a verified run to the dataset repository ``repo_id`` (created if needed).

    The run's ``README.md`` is published as it is (:func:`card_to_publish`); only a missing card, or
    ``regenerate_card``, writes one, and a failed upload leaves the run folder as it was. Re-running resumes
    an interrupted upload and commits nothing when the Hub is already up to date. Licence conflicts are
    returned as warnings (the CLI prints them), not errors.
    """
    run_dir = Path(run_dir)
    try:
        license = None if license is None else check_license(license)
    except ValueError as exc:
        raise PublishError(str(exc)) from None
    check_repo_id(repo_id)
    problems = _verify(run_dir)
    if problems:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise PublishError(f"{run_dir} does not verify ({shown}); fix or rerun it (`facefoundry verify`) first")
    try:
        facts = read_run_facts(run_dir)
    except RunFactsError as exc:
        raise PublishError(str(exc)) from None
    if spec_of(facts.config.generator).rehearsal:
        raise PublishError(f"{run_dir} was made by the no-op generator (generator.kind: noop): its images are noise "
                           "from a pipeline rehearsal, not a dataset; it is never published")
    gen = facts.config.generator
    samplers = {facts.config.identities.sampler} | {c["identities"].get("sampler") for c in
                                                      spec_of(gen).source_configs(gen)}  # a merged run: its sources'
    if include_identities and "from_file" in samplers:
        raise PublishError("identity vectors of the from_file sampler may be embeddings of real people: "
                           "they are never published")
    if include_identities and facts.removals:
        raise PublishError(f"{IDENTITIES_FILE} still holds the vectors of the identities `facefoundry remove` took out "
                           f"({REMOVALS_FILE}), which the generator can turn back into their faces: publish without "
                           "--include-identities")
    text, warnings = card_to_publish(run_dir, license, pretty_name, regenerate=regenerate_card, repo_id=repo_id,
                                     gated=gated, include_identities=include_identities)
    card_bytes = text.encode("utf-8")
    warnings = licence_conflicts(user_choices(text)[0] or DEFAULT_LICENSE, run_components(facts.config)) + warnings
    if len(facts.manifests) > HUB_MAX_FILES_PER_FOLDER:
        warnings.append(f"{DATA_DIR}/ holds {len(facts.manifests):,} shards; the Hub recommends at most "
                        f"{HUB_MAX_FILES_PER_FOLDER:,} files per folder: use a larger output.identities_per_unit")
    files = [p.as_posix() for p in upload_selection(run_dir, include_identities) if p.as_posix() != CARD_FILE]
    listing = [(CARD_FILE, len(card_bytes))] + [(p, (run_dir / p).stat().st_size) for p in files]
    total = sum(size for _, size in listing)

    from huggingface_hub import constants

    base = (endpoint or constants.ENDPOINT).rstrip("/")
    url = f"{base}/datasets/{repo_id}"
    if dry_run:
        return PublishResult(repo_id, url, listing, total, True, warnings=warnings, removals=facts.removals)
    if token is None:
        from huggingface_hub import get_token

        token = get_token()
    if not token:
        raise PublishError("no Hugging Face token: set HF_TOKEN or run `hf auth login` (a write token is needed)")
    card_path = run_dir / CARD_FILE
    previous = card_path.read_bytes() if card_path.is_file() else None
    if previous != card_bytes:
        atomic_write_bytes(card_path, card_bytes)  # upload_folder reads the folder; undone if the upload fails
    try:
        info, before = _upload(run_dir, repo_id, base, token, private, gated, include_identities, facts.run_id)
    except BaseException:
        if previous is None:
            card_path.unlink(missing_ok=True)
        elif previous != card_bytes:
            atomic_write_bytes(card_path, previous)
        raise
    return PublishResult(repo_id, url, listing, total, False, commit_url=info.commit_url,
                         changed=info.oid != before, warnings=warnings, removals=facts.removals)


def _upload(run_dir: Path, repo_id: str, base: str, token: str, private: bool, gated: bool,
            include_identities: bool, run_id: str | None) -> tuple[object, str | None]:
    """Create or update the repository and upload the folder; (commit info, head before) or PublishError."""
    from huggingface_hub import HfApi, constants

    api = HfApi(endpoint=base, token=token)
    allow, ignore = _patterns(include_identities)
    try:
        if constants.is_offline_mode():
            from huggingface_hub.errors import OfflineModeIsEnabled

            raise OfflineModeIsEnabled("offline")
        api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
        if private or gated:
            api.update_repo_settings(repo_id, repo_type="dataset", private=True if private else None,
                                     gated="manual" if gated else None)
        before = api.repo_info(repo_id, repo_type="dataset").sha
        info = api.upload_folder(repo_id=repo_id, repo_type="dataset", folder_path=run_dir,
                                 allow_patterns=allow, ignore_patterns=ignore, delete_patterns=DELETE_PATTERNS,
                                 commit_message=f"Publish facefoundry run {run_id}")
    except Exception as exc:  # every Hub failure becomes one line without the token
        raise _hub_error(exc, repo_id, base, token) from None
    return info, before

