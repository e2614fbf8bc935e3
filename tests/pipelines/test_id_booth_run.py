"""ID-Booth's smoke preset through the CLI: two "people" with consent records, class images, one fine-tuning per
person on Ray, generation; loaded back with ``datasets``; a SIGKILL during fine-tuning resumes without redoing the
person already finished and the other from their checkpoint, and that second run makes the same LoRAs and shards,
byte for byte, as the uninterrupted one."""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from facefoundry.cli import app
from facefoundry.generators.id_booth.training import LORA_FILE
from facefoundry.runfolder.verify import verify_run

pytestmark = [pytest.mark.ray, pytest.mark.spawn, pytest.mark.usefixtures("shared_ray")]
CONFIG = Path(__file__).resolve().parents[2] / "configs" / "smoke-id-booth.yaml"
HOLD = Path(__file__).resolve().parents[1] / "helpers" / "slowcommits"  # FACEFOUNDRY_TEST_HOLD_FINETUNE
ARGS = ["--set", "generator.epochs=2"]  # 2 epochs of 6 steps, a checkpoint after each


def _digests(out: Path, pattern: str) -> dict[str, str]:
    return {p.relative_to(out).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(out.glob(pattern))}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run, in this process (fine-tuning jobs and stages as the Ray workers run them)."""
    from runfolder import write_in_process

    from facefoundry.config import load_config

    out = tmp_path_factory.mktemp("idbooth") / "run"
    write_in_process(load_config(CONFIG, [a for a in ARGS if a != "--set"]), out)
    return out


def test_the_preset_fine_tunes_generates_and_loads(reference):
    """(Its reproducibility: the killed-and-resumed CLI run below makes the same LoRAs and shards.)"""
    import datasets

    from facefoundry.publishing.card.build import build_card

    out = reference
    assert sorted(p.parent.name for p in (out / "id-booth" / "loras").glob(f"*/{LORA_FILE}")) == ["000000", "000001"]
    ds = datasets.load_dataset("parquet", data_dir=str(out / "data"), split="train")
    assert len(ds) == 8 and sorted(set(ds["identity"])) == [0, 1] and ds[0]["image"].size == (64, 64)
    assert all(p.startswith("face ") and "sks person" in p for p in ds["prompt"])
    assert verify_run(out) == []
    card = str(build_card(out))
    assert "> **Real people.**" in card and "## Consent" in card and "tooling rehearsal: its 2 'people'" in card
    assert not any(name in card for name in ("grace_hopper", "Tom_Hanks", "person-1", "consent.yaml"))


def test_sigkill_during_fine_tuning_resumes_without_redoing_finished_people(reference, tmp_path):
    out = tmp_path / "killed"
    finished, checkpoint = (out / "id-booth" / "loras" / "000000" / LORA_FILE,
                            out / "id-booth" / "loras" / "000001" / "checkpoint-0-6" / "state.json")
    env = dict(os.environ, FACEFOUNDRY_TEST_HOLD_FINETUNE="1")  # person-2 stops after its first checkpoint
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HOLD), env.get("PYTHONPATH")]))
    cmd = [sys.executable, "-c", "from facefoundry.cli import app; app()", "run", str(CONFIG), "--out", str(out),
           *ARGS]
    with open(tmp_path / "killed.err", "w") as err:
        proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=err, env=env)
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline and proc.poll() is None and not (finished.is_file() and
                                                                          checkpoint.is_file()):
            time.sleep(0.1)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # the driver, its embedded Ray and every worker
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, f"the run ended before the kill: {(tmp_path / 'killed.err').read_text()}"
    assert finished.is_file() and checkpoint.is_file() and not (checkpoint.parent.parent / LORA_FILE).exists()
    kept = finished.stat().st_mtime_ns

    result = CliRunner().invoke(app, ["run", str(CONFIG), "--out", str(out), *ARGS])
    assert result.exit_code == 0, result.output
    assert "prepared: class images: 6 images" in result.output, result.output
    assert "prepared: fine-tuning person-1: finished before, kept" in result.output, result.output
    assert "prepared: fine-tuning person-2: resumed at step 6 of 12" in result.output, result.output
    assert finished.stat().st_mtime_ns == kept
    ref = reference
    assert _digests(out, f"id-booth/loras/*/{LORA_FILE}") == _digests(ref, f"id-booth/loras/*/{LORA_FILE}")
    assert _digests(out, "data/*.parquet") == _digests(ref, "data/*.parquet")
    assert verify_run(out) == []


def test_a_failed_preparation_job_is_named_in_one_line_and_its_phase_still_finishes(tmp_path):
    """On the module's Ray, as a run's preparation runs: the failing job is named with its own error (not Ray's
    traceback), the other job of its phase finishes and says so, and the next phase never starts."""
    from facefoundry.config import load_config
    from facefoundry.generators.spec import PrepJob
    from facefoundry.pipelines.prepare import PreparationError, run_preparation

    source = tmp_path / "source.txt"
    source.write_text("x")
    phases = [[PrepJob("capitals", "string:capwords", {"s": "person one"}),
               PrepJob("broken record", "json:loads", {"s": "{not json"})],
              [PrepJob("later", "shutil:copyfile", {"src": str(source), "dst": str(tmp_path / "copied")})]]
    log = io.StringIO()
    with pytest.raises(PreparationError) as failed:
        run_preparation(load_config(CONFIG, []), phases, log)
    line = str(failed.value)
    assert "\n" not in line and "Traceback" not in line, line
    assert line.startswith("1 preparation job(s) failed: broken record: Expecting property name"), line
    assert line.endswith("(finished work is kept: fix the cause and rerun to resume)"), line
    assert "prepared: capitals: Person One (" in log.getvalue(), log.getvalue()
    assert "later" not in log.getvalue() and not (tmp_path / "copied").exists()  # the next phase never started
