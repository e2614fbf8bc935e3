"""Loaded by Python at start-up in every process of a run whose ``PYTHONPATH`` holds this folder (see
``slowed_env`` in tests/pipelines/test_resume.py): each unit's commit then waits
``FACEFOUNDRY_TEST_COMMIT_DELAY`` seconds after it lands, and with ``FACEFOUNDRY_TEST_HOLD_AFTER=N`` a writer
stops for good after its N-th commit.

The kill tests need a run that is caught between two units. The smoke preset's six units otherwise commit
within a fifth of a second of each other, so a poller could see none or all of them; spaced out, or held after
N units, the kill lands mid-run however fast or loaded the machine is (a poller starved for seconds on a loaded
machine once saw a spaced-out run end whole). Likewise ``FACEFOUNDRY_TEST_HOLD_FINETUNE=K`` stops ID-Booth's
fine-tuning of identity K for good after its first checkpoint, so a kill lands while it trains. Nothing is imported
here until the run itself imports the patched modules: a finder wraps their loading."""

import importlib.abc
import importlib.machinery
import os
import sys
import time

STAGES = "facefoundry.pipelines.stages"
HOLD_S = 3600.0  # longer than any test waits


def _slow_commits(module) -> None:
    delay = float(os.environ.get("FACEFOUNDRY_TEST_COMMIT_DELAY", "0"))
    hold_after = int(os.environ.get("FACEFOUNDRY_TEST_HOLD_AFTER", "0"))
    commit = module.WriteStage.__call__
    commits = 0

    def delayed(self, result):
        nonlocal commits
        manifest = commit(self, result)
        commits += 1
        # With a hold, this writer stops for good after that many commits: the run waits there to be killed.
        time.sleep(HOLD_S if hold_after and commits >= hold_after else delay)
        return manifest

    module.WriteStage.__call__ = delayed


def _hold_finetune(module) -> None:
    hold = os.environ.get("FACEFOUNDRY_TEST_HOLD_FINETUNE")
    if not hold:
        return
    save = module._save_checkpoint

    def save_then_hold(folder, *args, **kwargs):
        path = save(folder, *args, **kwargs)
        if folder.name == f"{int(hold):06d}":
            time.sleep(HOLD_S)
        return path

    module._save_checkpoint = save_then_hold


PATCHES = {STAGES: _slow_commits, "facefoundry.generators.id_booth.finetune": _hold_finetune}


class _StagesFinder(importlib.abc.MetaPathFinder):
    """Finds a patched module as the path finder would, then patches it right after it executes."""

    def find_spec(self, name, path, target=None):
        if name not in PATCHES:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return None
        execute = spec.loader.exec_module

        def exec_module(module):
            execute(module)
            PATCHES[name](module)

        spec.loader.exec_module = exec_module
        return spec


sys.meta_path.insert(0, _StagesFinder())
