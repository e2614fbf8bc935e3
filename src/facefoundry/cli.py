"""The ``facefoundry`` command. A small, stable surface: every knob lives in the config tree."""

from __future__ import annotations

import io
import json
import re
import sys
import traceback
from pathlib import Path
from typing import Annotated

import typer

from facefoundry.config import RunConfig, load_config
from facefoundry.errors import error_line
from facefoundry.layout import CARD_FILE, EVAL_DIR, REMOVALS_FILE, REPORT_DIR
from facefoundry.sections import ConfigError

app = typer.Typer(
    help="Manufacture synthetic face-recognition datasets.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

ConfigArg = Annotated[Path, typer.Argument(help="YAML run config (e.g. configs/smoke.yaml).")]
OutOpt = Annotated[Path, typer.Option("--out", "-o", help="Output folder.")]
RunOutOpt = Annotated[str, typer.Option(
    "--out", "-o", help="Run folder, or a remote URI: s3://bucket/prefix, gs://..., any fsspec filesystem.")]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="Override a config key: section.key=value (YAML value). Repeatable."),
]


def _shown(out: str) -> str:
    """An output location as printed: a URI's query string (endpoint, maybe keys) is left out."""
    return out.split("?", 1)[0]


def _local_run(run_dir: Path) -> Path:
    """Commands that read a run's shards many times need a local copy of a remote run."""
    text = str(run_dir)
    if re.match(r"^[a-z][a-z0-9+.-]*:/", text) and not Path(text.split(":", 1)[0]).exists():
        raise typer.BadParameter(f"{text.replace(':/', '://', 1)} is remote: this command needs a local copy "
                                 f"(e.g. `aws s3 sync URI DIR`); `facefoundry verify` reads remote runs directly")
    return run_dir


def _fail(message: str, code: int = 1) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _stopped(exc: KeyboardInterrupt, advice: str) -> None:
    """Ctrl-C (exit 130) or SIGTERM (exit 143, :class:`facefoundry.termination.Terminated`): one line."""
    from facefoundry.termination import Terminated

    if isinstance(exc, Terminated):
        _fail(f"terminated (SIGTERM); {advice}", code=Terminated.exit_code)
    _fail(f"interrupted; {advice}", code=130)


def _load(config: Path, overrides: list[str] | None) -> RunConfig:
    try:
        return load_config(config, overrides or [])
    except ConfigError as exc:
        _fail(str(exc), code=2)


# Plain flags: metavar="" keeps typer from showing them as taking a value ("--fresh <bool>").
FreshOpt = Annotated[bool, typer.Option("--fresh", metavar="", help=(
    "Discard a previous run in --out first (says what it deletes; refuses while --out holds eval/)."))]
FreshEvalOpt = Annotated[bool, typer.Option("--fresh-eval", metavar="", help=(
    "With --fresh: delete the previous run's eval/ (evaluation results, trained checkpoints) too."))]


def _load_for_repair(config: Path | None, out: str, overrides: list[str] | None) -> RunConfig:
    """``run --repair`` without CONFIG repairs the run in --out with the config its run.json records."""
    if config is not None:
        return _load(config, overrides)
    from facefoundry.runfolder.runinfo import RunFolderError, stored_config

    try:
        return stored_config(out, overrides)
    except (RunFolderError, ConfigError) as exc:
        _fail(f"{exc}; give CONFIG to start a run", code=2)


@app.command()
def run(
    config: Annotated[Path | None, typer.Argument(
        help="YAML run config (e.g. configs/smoke.yaml); optional with --repair (read from --out/run.json).")] = None,
    out: RunOutOpt = ...,
    set_: SetOpt = None,
    fresh: FreshOpt = False,
    fresh_eval: FreshEvalOpt = False,
    repair: Annotated[bool, typer.Option("--repair", metavar="", help=(
        "Check every shard's sha256 against its manifest and redo the units that differ (what verify advises)."
    ))] = False,
    debug: Annotated[bool, typer.Option("--debug", metavar="", help="Print full tracebacks.")] = False,
) -> None:
    """Run the whole pipeline (or resume it): identities, images, filters, shards."""
    if config is None and not repair:
        _fail("missing CONFIG (a YAML run config such as configs/smoke.yaml); only --repair reads it from --out", 2)
    cfg = _load_for_repair(config, out, set_)
    from facefoundry.pipelines.runner import run as run_pipeline
    from facefoundry.termination import sigterm_raises

    try:
        with sigterm_raises():
            summary = run_pipeline(cfg, out, fresh=fresh, repair=repair, fresh_eval=fresh_eval)
    except KeyboardInterrupt as exc:
        _stopped(exc, "rerun the same command to resume (finished units are kept)")
    except Exception as exc:  # one line for users, the trace on request
        if debug:
            traceback.print_exc()
        _fail(error_line(exc))
    typer.echo(f"{summary.line()} -> {_shown(out)}")
    if summary.failed:
        for unit, reason in summary.failed:
            typer.echo(f"failed unit {unit}: {reason}", err=True)
        _fail(f"{len(summary.failed)} unit(s) failed; fix the cause and rerun the same command to redo only them")


AddressOpt = Annotated[str, typer.Option("--address", "-a", help="Ray dashboard of the cluster: http://HEAD:8265.")]
RunIdArg = Annotated[str, typer.Argument(help="Run id printed by submit (<run.name>-<config hash>).")]


@app.command()
def submit(
    config: ConfigArg,
    address: AddressOpt,
    out: Annotated[str, typer.Option("--out", "-o", help="Absolute output path every node can reach.")],
    set_: SetOpt = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Stream the job's log until it ends.")] = False,
) -> None:
    """Run a config on an existing Ray cluster (Jobs API), shipping this code; token: RAY_AUTH_TOKEN."""
    _load(config, set_)  # same validation errors as `run`, before contacting the cluster
    from facefoundry.pipelines import submit as sub

    try:
        result = sub.submit(config, out, address, set_ or [], follow=follow)
    except KeyboardInterrupt:
        _fail("detached; the job keeps running (facefoundry status / stop RUN_ID)", code=130)
    except Exception as exc:
        _fail(error_line(exc))
    verb = "attached to" if result.attached else "submitted"
    target = _shown(result.out or out)
    typer.echo(f"{verb} job {result.submission_id} (run {result.run_id}): {result.status} -> {target}")
    if follow and result.status != "SUCCEEDED":
        _fail(f"job {result.submission_id} {result.status}: {result.message}")


@app.command()
def status(run_id: RunIdArg, address: AddressOpt) -> None:
    """Status of the latest cluster job of a run."""
    from facefoundry.pipelines import submit as sub

    try:
        state = sub.status(address, run_id)
    except Exception as exc:
        _fail(error_line(exc))
    typer.echo(f"{state.submission_id}: {state.status}" + (f" ({state.message})" if state.message else "")
               + (f" -> {_shown(state.out)}" if state.out else ""))


@app.command()
def stop(run_id: RunIdArg, address: AddressOpt) -> None:
    """Stop the latest cluster job of a run; finished units are kept (submit again to resume)."""
    from facefoundry.pipelines import submit as sub

    try:
        state, sent = sub.stop(address, run_id)
    except Exception as exc:
        _fail(error_line(exc))
    typer.echo(f"{state.submission_id}: {'stop requested' if sent else 'not running'} ({state.status})")


@app.command()
def sample(config: ConfigArg, out: RunOutOpt, set_: SetOpt = None, fresh: FreshOpt = False,
           fresh_eval: FreshEvalOpt = False) -> None:
    """Sample identities only: write identities.parquet and print the separation summary."""
    cfg = _load(config, set_)
    if cfg.balance is not None:
        _fail("sample: this config balances identities by probe images (balance section), which needs the generator "
              "and the attribute models; `facefoundry run` samples, probes and keeps them", code=2)
    from facefoundry.identities.sampling import check_input_files
    from facefoundry.identities.store import write_identities
    from facefoundry.runfolder.runinfo import prepare_run_folder
    from facefoundry.runfolder.runlock import run_lock

    try:
        with run_lock(out, "sample"):
            check_input_files(cfg.identities)  # before the folder is bound to cfg, or --fresh deletes anything
            prepare_run_folder(out, cfg, fresh=fresh, fresh_eval=fresh_eval,
                               notify=lambda text: typer.echo(text, err=True))
            meta = write_identities(out, cfg, progress=sys.stderr)
    except KeyboardInterrupt as exc:
        _stopped(exc, "nothing of the sampling is kept (rerun the same command)")
    except Exception as exc:
        _fail(error_line(exc))
    nn = meta["nn_cosine"]
    typer.echo(f"{meta['count']} identities ({meta['sampler']}, {meta['candidates']} candidates) -> {_shown(out)}")
    typer.echo(f"nearest-neighbour cosine: min {nn['min']:.4f}  p50 {nn['p50']:.4f}  p99 {nn['p99']:.4f}  "
               f"max {nn['max']:.4f}  (rule: <= {meta['max_cosine']})")
    leak = meta["leakage"]
    if leak:
        typer.echo(f"leakage: {leak['rejected']} rejected against {leak['gallery_size']} gallery vectors "
                   f"(> {leak['max_cosine']}), {leak['possible_morphs']} kept identities flagged as possible "
                   f"morphs; top-1 gallery cosine p99 {leak['top1_p99']:.4f} max {leak['top1_max']:.4f}")
    else:
        typer.echo("leakage: not screened (no identities.leakage.galleries)")


@app.command()
def verify(run_dir: Annotated[str, typer.Argument(help="A run folder or remote run URI (holds run.json).")]) -> None:
    """Check every shard against its manifest, the identities file, and orphan or missing units."""
    from facefoundry.runfolder.repair import repair_command
    from facefoundry.runfolder.runinfo import RunFolderError, read_record
    from facefoundry.runfolder.verify import verify_run

    try:
        read_record(run_dir)  # not a run at all: nothing a rerun could repair
        problems = verify_run(run_dir)
    except RunFolderError as exc:
        _fail(f"{exc}; give the folder a run wrote (`facefoundry run CONFIG --out DIR`)", code=2)
    except OSError as exc:  # an unreachable or forbidden remote location
        _fail(error_line(exc))
    for problem in problems:
        typer.echo(f"problem: {problem}", err=True)
    if problems:
        query = " (with the URI's ?options)" if "?" in run_dir else ""
        _fail(f"{_shown(run_dir)}: {len(problems)} problem(s); repair with `{repair_command(_shown(run_dir))}`"
              f"{query}: it redoes missing and corrupt units and moves orphans to orphans/", code=1)
    typer.echo(f"ok: {_shown(run_dir)} verifies")


@app.command()
def remove(
    run_dir: Annotated[str, typer.Argument(help="A finished run folder or remote run URI (holds run.json).")],
    labels: Annotated[str | None, typer.Option("--labels", help="Comma-separated identity labels: 3,17,42.")] = None,
    like: Annotated[Path | None, typer.Option("--like", help=(
        "A face image, or its embedding in the run's identity space (.npy): remove the identities whose vectors "
        "match it (cosine >= --threshold)."))] = None,
    threshold: Annotated[float | None, typer.Option("--threshold", min=-1.0, max=1.0, help=(
        "With --like: the cosine at or above which an identity matches."))] = None,
    reason: Annotated[str, typer.Option("--reason", help="Why (goes in the removal log and the card).")] = "",
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Say what would be removed; change nothing.")] = False,
) -> None:
    """Take identities out of a finished run (a takedown): rewrite only their shards, log it in removals.json.

    A killed removal is finished by running `facefoundry remove RUN` again (or any `facefoundry run` on it).
    The card and report in the folder, if any, are rebuilt; `publish` then replaces the published shards."""
    from facefoundry.runfolder.removal import RemovalError, finish_pending, remove_identities
    from facefoundry.runfolder.runinfo import RunFolderError, read_run
    from facefoundry.runfolder.runlock import run_lock

    if labels is not None and like is not None:
        _fail("give either --labels or --like (with --threshold), not both", 2)
    if like is not None and threshold is None:
        _fail("--like needs --threshold: the cosine at or above which an identity matches (see docs/usage.md)", 2)
    try:
        wanted = [int(x) for x in labels.split(",") if x.strip()] if labels is not None else []
    except ValueError:
        _fail(f"--labels {labels!r}: give comma-separated integers (identity labels), e.g. 3,17,42", 2)
    try:
        with run_lock(run_dir, "remove", notify=_say):
            if labels is None and like is None:  # finish an interrupted removal, nothing else
                finished = finish_pending(run_dir, _say)
                typer.echo(f"{_shown(run_dir)}: {finished} interrupted removal(s) finished" if finished else
                           "nothing to do: give --labels or --like (no removal was interrupted)")
                return
            matched = None
            if like is not None:
                wanted, matched = _like_labels(run_dir, like, threshold, read_run(run_dir))
            entry = remove_identities(run_dir, wanted, reason, matched, notify=_say, dry_run=dry_run)
    except KeyboardInterrupt as exc:
        _stopped(exc, f"rerun `facefoundry remove {_shown(run_dir)}` to finish the removal")
    except (RemovalError, RunFolderError) as exc:
        _fail(str(exc), 2)
    except Exception as exc:
        _fail(error_line(exc))
    if entry is None:
        typer.echo("nothing to do: every identity named was removed before")
        return
    what = f"{len(entry['labels'])} identities, {entry['rows']:,} rows in {len(entry['units'])} shards"
    if dry_run:
        typer.echo(f"dry run: would remove {what}: labels {entry['labels'][:20]}")
        return
    typer.echo(f"removed {what}; logged in {_shown(run_dir)}/{REMOVALS_FILE}")
    _refresh_after_removal(run_dir)


@app.command()
def merge(
    runs: Annotated[list[Path], typer.Argument(help="Two or more finished run folders, in label order.")],
    out: OutOpt,
    name: Annotated[str, typer.Option("--name", help="The merged run's name (run.name).")] = "merged",
    duplicates: Annotated[str, typer.Option("--duplicates", help=(
        "Identities of different runs found to be one: drop (the side with fewer kept images) or keep."))] = "drop",
    judge: Annotated[str, typer.Option("--judge", help=(
        "Judge of identities across different identity spaces: dlib, an ArcFace .onnx/.pth that conditioned none "
        "of the runs, or none (not checked; the card says so)."))] = "dlib",
    judge_images: Annotated[int, typer.Option("--judge-images", min=1, help=(
        "Kept images per identity averaged into its judge centroid."))] = 4,
    identities_per_unit: Annotated[int | None, typer.Option("--identities-per-unit", min=1, help=(
        "Identities per shard of the merged run (default: the first run's)."))] = None,
    include_rejected: Annotated[bool, typer.Option("--include-rejected", help=(
        "Take the rows a filter rejected too (runs filtered in annotate mode), with their reasons."))] = False,
) -> None:
    """One dataset from several finished runs: relabelled identities, provenance columns, cross-run duplicates
    checked; a normal run folder (verify, report, card, export, publish work on it). Rerun to resume."""
    from facefoundry.exporters.merge import MergeError, merge_runs
    from facefoundry.runfolder.runinfo import RunFolderError

    if duplicates not in ("drop", "keep"):
        _fail(f"--duplicates {duplicates!r}: give drop or keep", 2)
    try:
        report = merge_runs(runs, out, name=name, duplicates=duplicates,
                            judge=None if judge == "none" else judge, judge_images=judge_images,
                            identities_per_unit=identities_per_unit, include_rejected=include_rejected, notify=_say)
    except KeyboardInterrupt as exc:
        _stopped(exc, "rerun the same command to finish the merge")
    except (MergeError, RunFolderError) as exc:
        _fail(str(exc), 2)
    except Exception as exc:
        _fail(error_line(exc))
    for dup in report["duplicates"]:
        first, second = dup["first"], dup["second"]
        typer.echo(f"duplicate ({dup['by']}, {dup['score']:.4f}): {first['run_id']} identity {first['identity']} and "
                   f"{second['run_id']} identity {second['identity']}"
                   + (f"; dropped {dup['dropped']['run_id']} identity {dup['dropped']['identity']}"
                      if dup["dropped"] else "; both kept"))
    for line in report["unchecked"]:
        typer.echo(f"not checked: {line}", err=True)
    taken = ", ".join(f"{s['identities_taken']} of {s['run_id']}" for s in report["sources"])
    typer.echo(f"{report['run_id']}: {taken} identities; {len(report['duplicates'])} duplicate(s), "
               f"{report['dropped']} dropped; {report['units']['written']} units written, "
               f"{report['units']['skipped']} already done -> {out}")


def _say(text: str) -> None:
    """A progress line on stderr."""
    typer.echo(text, err=True)


def _like_labels(run_dir: str, like: Path, threshold: float, cfg) -> tuple[list[int], dict]:
    """The labels ``--like`` matches, and what the removal log records of the match (never the query itself)."""
    from facefoundry.dataset.storage import open_store
    from facefoundry.runfolder.likeness import identity_dim, match_identities, query_vector

    store = open_store(run_dir)
    query, kind = query_vector(like, cfg, identity_dim(store))
    matches = match_identities(store, query, threshold)
    for label, cosine in matches[:20]:
        typer.echo(f"match: identity {label}, cosine {cosine:.4f}", err=True)
    return [label for label, _ in matches], {"by": kind, "threshold": threshold, "space": "identity vectors",
                                             "cosines": {str(label): round(c, 6) for label, c in matches}}


def _refresh_after_removal(run_dir: str) -> None:
    """Rebuild the card and the report of a local run folder that has them (the report's image grid could show a
    removed identity)."""
    folder = Path(run_dir)
    if not folder.is_dir():
        return
    if (folder / CARD_FILE).is_file():
        from facefoundry.publishing.card import write_card

        typer.echo(f"card rebuilt: {write_card(folder)}")
    if (folder / REPORT_DIR).is_dir():
        from facefoundry.publishing.report import build_report

        build_report(folder)
        typer.echo(f"report rebuilt: {folder / REPORT_DIR}")


@app.command()
def export(
    run_dir: Annotated[Path, typer.Argument(help="A finished run folder.", callback=_local_run)],
    out: OutOpt,
    fmt: Annotated[str, typer.Option("--format", "-f", help="imagefolder | rec | lmdb")],
    jpeg_quality: Annotated[int, typer.Option(min=1, max=100, help="JPEG quality for PNG-stored images.")] = 95,
    include_rejected: Annotated[bool, typer.Option(help="Also export rows the filter marked.")] = False,
    allow_partial: Annotated[bool, typer.Option(help="Export the finished units of an unfinished run.")] = False,
    rec_header: Annotated[bool, typer.Option("--rec-header/--plain-rec", help="InsightFace header records.")] = True,
) -> None:
    """Export for FR training: ImageFolder, InsightFace RecordIO (.rec/.idx) or Vec2Face-style LMDB."""
    from facefoundry.exporters.export import export_run

    if fmt not in ("imagefolder", "rec", "lmdb"):
        _fail(f"--format must be one of imagefolder, rec, lmdb (got {fmt!r})", code=2)
    from facefoundry.exporters.export import ExportError

    try:
        summary = export_run(run_dir, out, fmt, jpeg_quality, include_rejected=include_rejected,
                             allow_partial=allow_partial, rec_header=rec_header)
    except ExportError as exc:  # its own one-line message, as other commands print theirs
        _fail(str(exc))
    except Exception as exc:
        _fail(error_line(exc))
    typer.echo(f"{summary['images']} images of {summary['identities']} identities -> {out} ({summary['bytes']} bytes)")


@app.command("export-pairs")
def export_pairs(
    run_dir: Annotated[Path, typer.Argument(help="A finished run folder.", callback=_local_run)],
    out: Annotated[Path, typer.Option("--out", "-o", help="The .bin file to write (and <out>.pairs.json).")],
    cells: Annotated[str, typer.Option(help="Comma-separated columns whose values make a cell (none: one cell).")] = "",
    pairs_per_cell: Annotated[int, typer.Option(min=1, help="Genuine pairs per cell, and as many impostor.")] = 300,
    seed: Annotated[int, typer.Option(min=0, help="Seed of the pair choice and order.")] = 0,
    allow_short: Annotated[bool, typer.Option(help="Take what a too-small cell has instead of failing.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output.")] = False,
    resize: Annotated[bool, typer.Option(help="Resize images that are not 112x112 instead of failing.")] = False,
    include_rejected: Annotated[bool, typer.Option(help="Also pair rows the filter marked.")] = False,
) -> None:
    """Export balanced verification pairs as an InsightFace .bin set (the layout of lfw.bin)."""
    from facefoundry.exporters.export import ExportError
    from facefoundry.exporters.pairs import export_pairs as run_export

    try:
        summary = run_export(run_dir, out, [c.strip() for c in cells.split(",") if c.strip()], pairs_per_cell,
                             seed, allow_short=allow_short, overwrite=overwrite, resize=resize,
                             include_rejected=include_rejected)
    except ExportError as exc:  # its own one-line message, as other commands print theirs
        _fail(str(exc))
    except Exception as exc:
        _fail(error_line(exc))
    short = sum(sum(c["shortfall"].values()) for c in summary["per_cell"].values())
    typer.echo(f"{summary['pairs']} pairs ({summary['genuine']} genuine, {summary['impostor']} impostor) in "
               f"{len(summary['per_cell'])} cells -> {out} ({summary['bytes']} bytes)"
               + (f"; {short} short" if short else ""))


@app.command()
def report(
    run_dir: Annotated[Path, typer.Argument(help="A run folder (holds run.json).", callback=_local_run)],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Report folder (default RUN/report).")] = None,
    max_rows: Annotated[int, typer.Option("--max-rows", min=1, help="Rows sampled for histograms.")] = 200_000,
) -> None:
    """Statistics and plots of a run: report/*.png and summary.json (from manifests + a bounded sample)."""
    from facefoundry.publishing.report import build_report

    try:
        summary = build_report(run_dir, out, max_rows=max_rows)
    except Exception as exc:
        _fail(error_line(exc))
    images = summary["images"]
    typer.echo(
        f"{summary['run_id']}: {images['accepted']}/{images['generated']} images accepted "
        f"({images['acceptance_pct']}%), {summary['units']['done']}/{summary['units']['planned']} units "
        f"-> {out or run_dir / REPORT_DIR}"
    )


@app.command()
def evaluate(
    run_dir: Annotated[Path, typer.Argument(help="A run folder (holds run.json).", callback=_local_run)],
    intrinsic: Annotated[bool, typer.Option("--intrinsic", metavar="", help=(
        "Judge metrics without training: genuine/impostor scores, EER, TAR@FAR, identity uniqueness, "
        "intra-class spread (RUN/eval/intrinsic.json)."))] = False,
    train: Annotated[Path | None, typer.Option("--train", help=(
        "Training recipe (YAML with an evaluate: section, e.g. configs/evaluate.yaml): train an FR model on "
        "the run with Ray Train, resuming a killed training."))] = None,
    benchmarks: Annotated[Path | None, typer.Option("--benchmarks", help=(
        "Folder of InsightFace verification .bin files (lfw.bin, cfp_fp.bin, ...): verify the trained model "
        "on each (10-fold protocol) into RUN/eval/<name>.json; per-group accuracy for a .bin with its export-pairs "
        "sidecar (--cells) and for a subfolder of one .bin per group (RFW layout)."))] = None,
    set_: SetOpt = None,
    judge: Annotated[str, typer.Option("--judge", help=(
        "Intrinsic judge: dlib, or an ArcFace .onnx/.pth that is not the generator's conditioning encoder."))]
    = "dlib",
    max_identities: Annotated[int | None, typer.Option("--max-identities", help=(
        "Identities judged, a seeded sample (default: the evaluator's cap, docs/evaluation.md; 0 = all)."))] = None,
    max_images: Annotated[int | None, typer.Option("--max-images", help=(
        "Images judged per identity (default: the evaluator's cap; 0 = all)."))] = None,
    workers: Annotated[int, typer.Option("--workers", help="Processes judging shards in parallel.")] = 1,
    address: Annotated[str | None, typer.Option("--address", "-a", help=(
        "Ray cluster address for training (ray://... or HEAD:6379); default: an embedded Ray."))] = None,
    debug: Annotated[bool, typer.Option("--debug", metavar="", help="Print full tracebacks.")] = False,
) -> None:
    """Measure a run's worth: judge metrics (--intrinsic) and/or train then verify (--train, --benchmarks)."""
    if benchmarks is not None and train is None:
        _fail("--benchmarks verifies a trained model: give --train CONFIG too (a finished training is reused)", 2)
    if not (intrinsic or train):
        _fail("nothing to evaluate: give --intrinsic and/or --train CONFIG (with --benchmarks DIR to verify)", 2)
    if benchmarks is not None and not benchmarks.is_dir():
        _fail(f"--benchmarks {benchmarks}: not a folder (it should hold the .bin verification files)", 2)
    from facefoundry.runfolder.runinfo import RunFolderError, read_run

    try:
        read_run(run_dir)
    except RunFolderError as exc:
        _fail(str(exc), 2)
    recipe = None
    if train is not None:
        from facefoundry.evaluate.config import load_evaluate_config

        try:
            recipe = load_evaluate_config(train, set_ or [])
        except ConfigError as exc:
            _fail(str(exc), code=2)
    from facefoundry.termination import sigterm_raises

    try:
        with sigterm_raises():
            if intrinsic:
                from facefoundry.evaluate.intrinsic import intrinsic_table_markdown
                from facefoundry.evaluate.intrinsic_run import INTRINSIC_FILE, evaluate_intrinsic

                caps = {key: value or None for key, value in
                        (("max_identities", max_identities), ("max_images_per_identity", max_images))
                        if value is not None}  # unset: the evaluator's defaults; 0: no cap
                result = evaluate_intrinsic(run_dir, judge, workers=workers, plots_dir=run_dir / REPORT_DIR, **caps)
                typer.echo(intrinsic_table_markdown(result))
                typer.echo(f"-> {run_dir / EVAL_DIR / INTRINSIC_FILE}")
            if recipe is not None:
                from facefoundry.evaluate.train_verify import (
                    groups_table_markdown,
                    results_table_markdown,
                    train_and_verify,
                )

                result = train_and_verify(run_dir, recipe, benchmarks, address=address, progress=typer.echo)
                verified = (result["benchmarks"] or {}).get("sets")
                tables = [t for t in (results_table_markdown([result]) if verified else "",
                                      groups_table_markdown([result])) if t]
                typer.echo("\n\n".join(tables) or f"trained {recipe.name}: {result['training']['backbone']} "
                           "(no benchmarks given)")
                typer.echo(f"-> {result['file']}")
    except KeyboardInterrupt as exc:
        _stopped(exc, "rerun the same command to resume from the last checkpoint")
    except Exception as exc:
        if debug:
            traceback.print_exc()
        _fail(error_line(exc))


@app.command()
def card(
    run_dir: Annotated[Path, typer.Argument(help="A run folder (holds run.json).", callback=_local_run)],
    license: Annotated[str | None, typer.Option(
        "--license", help="Dataset licence (Hub id); default: the existing card's, else cc-by-nc-4.0.")] = None,
    pretty_name: Annotated[str | None, typer.Option("--pretty-name", help="Default: the existing card's.")] = None,
) -> None:
    """Write the dataset card (README.md in the run folder) from the run's manifests and metadata.

    Rewriting keeps the existing card's licence, pretty name and hand-written sections unless told otherwise."""
    from facefoundry.publishing.card import read_run_facts, write_card
    from facefoundry.publishing.card.user import user_choices
    from facefoundry.publishing.licensing import licence_conflicts, run_components

    try:
        path = write_card(run_dir, license, pretty_name)
        stated = user_choices(path.read_text(encoding="utf-8"))[0] or ""
        warnings = licence_conflicts(stated, run_components(read_run_facts(run_dir).config))
    except ValueError as exc:
        _fail(error_line(exc), code=2)
    except Exception as exc:
        _fail(error_line(exc))
    for warning in warnings:
        typer.echo(f"warning: {warning}", err=True)
    typer.echo(f"card written: {path}")


@app.command()
def publish(
    run_dir: Annotated[Path, typer.Argument(help="A verified run folder.", callback=_local_run)],
    repo: Annotated[str, typer.Option("--repo", help="Hub dataset repo: ORG/NAME.")],
    private: Annotated[bool, typer.Option("--private", help="Create or switch the repo to private.")] = False,
    gated: Annotated[bool, typer.Option("--gated", help="Gate access behind manual approval.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="List what would be uploaded; send nothing.")] = False,
    license: Annotated[str | None, typer.Option(
        "--license", help="Dataset licence (Hub id); must match an existing card's unless --regenerate-card.")] = None,
    include_identities: Annotated[
        bool, typer.Option("--include-identities", help="Also upload identities.parquet (decodable vectors).")
    ] = False,
    regenerate_card: Annotated[bool, typer.Option(
        "--regenerate-card", help="Rebuild README.md (keeps its licence, name and hand-written sections).")] = False,
) -> None:
    """Upload card, shards, manifests and report to the Hugging Face Hub (token: HF_TOKEN or login).

    The run's README.md is published as it is; one is written only when missing or with --regenerate-card.

    Resumable: rerunning uploads only what the Hub does not have yet."""
    from facefoundry.publishing.repo_id import PublishError, check_repo_id

    try:
        check_repo_id(repo)  # at once: the publishing code takes seconds to import, verifying the run longer
    except PublishError as exc:
        _fail(str(exc))
    from facefoundry.publishing.hub import publish as publish_run

    try:
        result = publish_run(run_dir, repo, private=private, gated=gated, dry_run=dry_run, license=license,
                             include_identities=include_identities, regenerate_card=regenerate_card)
    except Exception as exc:
        _fail(error_line(exc))
    for warning in result.warnings:
        typer.echo(f"warning: {warning}", err=True)
    for line in result.summary_lines():
        typer.echo(line)


@app.command()
def config(
    config: ConfigArg,
    set_: SetOpt = None,
    debug: Annotated[bool, typer.Option("--debug", metavar="", help="Print full tracebacks.")] = False,
) -> None:
    """Validate a config and print it resolved (every default filled in) with its hash."""
    cfg = _load(config, set_)
    try:
        resolved = {"config_hash": cfg.config_hash(), "config": cfg.model_dump(mode="json")}
    except Exception as exc:  # one line for users, the trace on request
        if debug:
            traceback.print_exc()
        _fail(error_line(exc))
    typer.echo(json.dumps(resolved, indent=2))


@app.command("dcface-ids")
def dcface_ids(
    out: Annotated[Path, typer.Option("--out", "-o", help="The ID set to write (.parquet).")],
    count: Annotated[int, typer.Option(help="Identities to keep.", min=1)],
    encoder: Annotated[Path, typer.Option(help="Identity encoder: ArcFace .onnx (or pack folder) or a .pth IResNet; "
                                                "use the run's id_filter.encoder_model.")],
    folder: Annotated[Path | None, typer.Option(help="Source 1: aligned 112 px ID images (folder or Parquet).")] = None,
    gid: Annotated[Path | None, typer.Option(help="Source 2: G_id, DCFace's ffhq_10m.pt (needs --detector).")] = None,
    detector: Annotated[Path | None, typer.Option(help="SCRFD ONNX file or pack folder (aligns G_id images).")] = None,
    max_cosine: Annotated[float | None, typer.Option(help="Uniqueness: at most this cosine to every kept identity "
                                                          "(default: DCFace's threshold).")] = None,
    max_yaw: Annotated[float | None, typer.Option(help="G_id: drop ID images turned further than this, "
                                                       "degrees.")] = None,
    gallery: Annotated[list[Path] | None, typer.Option(help="Real-face embeddings (.npy/.parquet) to stay away "
                                                            "from. Repeatable.")] = None,
    gallery_max_cosine: Annotated[float | None, typer.Option(help="Drop a candidate above this cosine to a "
                                                                  "gallery vector.")] = None,
    seed: Annotated[int | None, typer.Option(help="G_id seed (candidate k's seed derives from it and k).")] = None,
    steps: Annotated[int | None, typer.Option(help="G_id respaced DDPM steps (default: the release's).",
                                              min=1)] = None,
    batch_size: Annotated[int | None, typer.Option(help="G_id images per batch.", min=1)] = None,
    max_candidates: Annotated[int | None, typer.Option(help="Give up after this many candidates.")] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu or cuda.")] = None,
) -> None:
    """DCFace's identity stage: unique ID images (from a folder or G_id), embedded, written as an ID set.

    A DCFace run then takes its identities from the file: generator.id_set, and identities.sampler from_file
    with identities.file set to the same file (docs/models.md#dcface). Unset options take the defaults of
    facefoundry.generators.dcface.ids.IdStageSettings (printed in the ID set's metadata).
    """
    from facefoundry.generators.dcface.ids import IdStageSettings, build_id_set

    given = {"detector": str(detector) if detector else None, "max_cosine": max_cosine, "max_yaw": max_yaw,
             "galleries": [str(g) for g in gallery] if gallery else None, "gallery_max_cosine": gallery_max_cosine,
             "seed": seed, "gid_steps": steps, "batch_size": batch_size, "max_candidates": max_candidates,
             "device": device}
    settings = IdStageSettings(count, str(encoder), **{k: v for k, v in given.items() if v is not None})
    try:
        build_id_set(out, settings, folder=folder, gid_model=gid)
    except KeyboardInterrupt as exc:
        _stopped(exc, f"nothing was written to {out} (rerun the same command)")
    except Exception as exc:
        _fail(error_line(exc))


@app.command("id-booth-people")
def id_booth_people(
    people: Annotated[Path, typer.Argument(help="One folder per consenting person: photos and consent.yaml.")],
    arcface: Annotated[Path, typer.Option(help="ArcFace_r100_ms1mv3_backbone.pth (generator.arcface).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="The identity vectors to write (.npy).")],
    mtcnn: Annotated[Path | None, typer.Option(help="Folder with MTCNN's pnet.pt, rnet.pt, onet.pt (default: "
                                                    "facenet-pytorch's).")] = None,
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
) -> None:
    """ID-Booth's identities: each consenting person's photos embedded (MTCNN crop, ArcFace) and averaged.

    An ID-Booth run then takes them with identities.sampler: from_file and identities.file set to OUT, in the
    order of the person folders (natural name order); the file holds biometric data of real people and is never
    published."""
    import numpy as np

    from facefoundry.dataset.atomic import atomic_write_bytes
    from facefoundry.generators.id_booth.prepare import people_vectors

    try:
        vectors = people_vectors(people, str(arcface), str(mtcnn) if mtcnn else None, device)
        buffer = io.BytesIO()
        np.save(buffer, vectors)
        atomic_write_bytes(out, buffer.getvalue())
    except KeyboardInterrupt as exc:
        _stopped(exc, f"nothing was written to {out} (rerun the same command)")
    except Exception as exc:
        _fail(error_line(exc))
    typer.echo(f"{out}: {len(vectors)} people, {vectors.shape[1]}-d unit vectors (identities.sampler: from_file, "
               f"identities.file: {out}, identities.count: {len(vectors)})")


models_app = typer.Typer(help="Model files in the Hugging Face cache: list them, fetch them (pre-warm nodes).",
                         no_args_is_help=True)
app.add_typer(models_app, name="models")


@models_app.command("list")
def models_list() -> None:
    """Name, Hub repo, file count, licence (marked when its chain is non-commercial:
    facefoundry.upstream.UPSTREAM),
    and whether the files are in the HF cache (no network)."""
    from facefoundry.models import CHAIN_NOTE, hub_cache, list_rows

    rows = list_rows()
    cols = ["name", "repo", "files", "licence", "cached", "size"]
    widths = {c: max(len(c), *(len(r[c]) for r in rows)) for c in cols}
    for row in [{c: c.upper() for c in cols}, *rows]:
        typer.echo("  ".join(row[c].ljust(widths[c]) for c in cols).rstrip())
    typer.echo(CHAIN_NOTE)
    typer.echo(f"cache: {hub_cache()}")


@models_app.command("fetch")
def models_fetch(
    names: Annotated[list[str], typer.Argument(help="Model names (see `facefoundry models list`).")],
    revision: Annotated[str | None, typer.Option("--revision", help="Branch, tag or commit (default main).")] = None,
) -> None:
    """Download only the files a model needs into the HF cache; cached files are not downloaded again."""
    from facefoundry.models import (
        ModelFetchError,
        ModelFileMissing,
        UnknownModelError,
        fetch,
        get_spec,
        human_bytes,
    )

    try:
        for name in names:
            get_spec(name)
    except UnknownModelError as exc:
        _fail(str(exc), code=2)
    for name in names:
        try:
            res = fetch(name, revision)
        except (ModelFileMissing, ModelFetchError) as exc:
            _fail(str(exc))
        except Exception as exc:
            _fail(error_line(exc))
        state = f"downloaded {len(res.downloaded)} file(s)" if res.downloaded else "already cached"
        typer.echo(f"{name}: {res.repo_id}@{res.commit} {state}, {human_bytes(res.nbytes)} -> {res.folder}")
        typer.echo(f"  licence chain: {get_spec(name).licence_note}")


def main() -> None:  # pragma: no cover - console entry point
    sys.exit(app())
