"""The names inside a run folder: one definition each, imported by every module that reads or writes them.

::

    <run>/
      run.json                  RUN_FILE: resolved config, its hash, the run id
      identities.parquet        IDENTITIES_FILE: identity vectors, written once before generation
      data/train-<unit>.parquet DATA_DIR, SHARD_PREFIX: one shard per work unit
      manifests/<unit>.json     MANIFEST_DIR: written after its shard; a unit is done iff it is valid
      report/                   REPORT_DIR: plots (PLOTS) and SUMMARY_FILE of ``facefoundry report``
      eval/                     EVAL_DIR: evaluation results
      models/                   MODELS_DIR: tiny random weights built for test runs (never published)
      logs/                     LOG_DIR: one log per invocation (never published)
      balance/                  BALANCE_DIR: a balanced run's probe records, one file per chunk of candidates
      orphans/                  ORPHANS_DIR: files no unit owns and corrupt shards, set aside by a rerun
      README.md                 CARD_FILE: the dataset card
      removals.json             REMOVALS_FILE: the removal log of ``facefoundry remove`` (takedowns)
      merge/                    MERGE_DIR: a merge's judge centroids per source, kept for a rerun (never published)

This module imports nothing from facefoundry, so any module may import it.
"""

from __future__ import annotations

RUN_FILE = "run.json"
IDENTITIES_FILE = "identities.parquet"
DATA_DIR = "data"
MANIFEST_DIR = "manifests"
REPORT_DIR = "report"
EVAL_DIR = "eval"
MODELS_DIR = "models"
LOG_DIR = "logs"
CARD_FILE = "README.md"
ORPHANS_DIR = "orphans"
REMOVALS_FILE = "removals.json"
MERGE_DIR = "merge"
BALANCE_DIR = "balance"

SHARD_PREFIX = "train-"
SHARD_SUFFIX = ".parquet"
DATA_PATTERN = f"{DATA_DIR}/{SHARD_PREFIX}*{SHARD_SUFFIX}"
SUMMARY_FILE = "summary.json"
# facefoundry.publishing.report's plots, in reading order (the card shows them in this order).
PLOTS = ("separation.png", "consistency.png", "funnel.png", "quality.png", "pose.png", "attributes.png", "grid.png")

# The Hugging Face Hub's recommended limit of files per folder: data/ and manifests/ hold one file per work unit.
HUB_MAX_FILES_PER_FOLDER = 10_000

# Everything a run writes into its folder; ``--fresh`` removes exactly these and nothing else.
RUN_ENTRIES = (RUN_FILE, IDENTITIES_FILE, DATA_DIR, MANIFEST_DIR, MODELS_DIR, REPORT_DIR, EVAL_DIR, CARD_FILE, LOG_DIR,
               ORPHANS_DIR, BALANCE_DIR, REMOVALS_FILE, MERGE_DIR)


def shard_file(unit_name: str) -> str:
    """The file name of a unit's shard inside ``DATA_DIR`` (``train-<unit>.parquet``)."""
    return f"{SHARD_PREFIX}{unit_name}{SHARD_SUFFIX}"


def manifest_file(unit_name: str) -> str:
    """The path of a unit's manifest relative to the run folder (``manifests/<unit>.json``)."""
    return f"{MANIFEST_DIR}/{unit_name}.json"
