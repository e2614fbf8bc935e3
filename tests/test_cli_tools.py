
"""The finished-run commands through the CLI, on a run folder built without Ray."""

import json

import numpy as np
import pytest
import yaml
from runfolder import make_run
from typer.testing import CliRunner

from facefoundry.cli import app


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.mark.slow
def test_report_card_publish_dry_run_and_export(tmp_path):
    run = make_run(tmp_path / "run")
    result = invoke("report", run)
    assert result.exit_code == 0 and "12/12 images accepted" in result.output
    assert json.loads((run / "report" / "summary.json").read_text())["images"]["generated"] == 12
    result = invoke("card", run, "--license", "mit")
    assert result.exit_code == 0 and (run / "README.md").exists()
    result = invoke("card", run, "--license", "beerware")
    assert result.exit_code == 2 and "beerware" in result.output
    result = invoke("publish", run, "--repo", "org/faces", "--dry-run")
    assert result.exit_code == 0 and "data/train-0000000-0000002.parquet" in result.output
    assert "  identities.parquet\n" not in result.output  # identity vectors only on request
    out = tmp_path / "export"
    result = invoke("export", run, "--out", out, "--format", "imagefolder")
    assert result.exit_code == 0 and "12 images of 4 identities" in result.output
    assert len(list(out.glob("*/*.jpg"))) == 12
    result = invoke("export", run, "--out", tmp_path / "x", "--format", "tfrecord")
    assert result.exit_code == 2 and "imagefolder, rec, lmdb" in result.output


def test_sample_prints_separation_and_leakage(tmp_path):
    np.save(tmp_path / "gallery.npy", np.random.default_rng(0).standard_normal((300, 512)).astype(np.float32))
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({
        "identities": {"count": 50, "leakage": {"galleries": [str(tmp_path / "gallery.npy")], "max_cosine": 0.15}},
        "images": {"per_identity": 1},
    }))
    result = invoke("sample", config, "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert "nearest-neighbour cosine: min" in result.output and "against 300 gallery vectors" in result.output
    assert (tmp_path / "out" / "identities.parquet").exists()
    bad = invoke("sample", config, "--out", tmp_path / "out2", "--set", "identities.leakage.galleries=[/nope.npy]")
    assert bad.exit_code == 1 and "gallery file not found: /nope.npy" in bad.output


def test_sample_refuses_a_balanced_config(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({
        "identities": {"count": 4}, "images": {"per_identity": 1}, "attributes": {},
        "balance": {"attributes": ["gender"], "targets": {"gender": {"female": 0.5, "male": 0.5}}},
    }))
    result = invoke("sample", config, "--out", tmp_path / "out")
    assert result.exit_code == 2 and "facefoundry run" in result.output
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", [["config"], ["run", "--out", "x"]])
def test_a_folder_as_config_is_one_line_exit_2(tmp_path, command):
    result = invoke(command[0], tmp_path, *command[1:])
    assert result.exit_code == 2, result.output
    assert result.output == f"error: {tmp_path}: is a folder, not a config file (give a YAML file)\n"


def test_config_takes_debug(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"identities": {"count": 4}, "images": {"per_identity": 2}}))
    result = invoke("config", path, "--debug")
    assert result.exit_code == 0 and '"config_hash"' in result.output


@pytest.mark.parametrize("command", [["export", "--out", "x", "--format", "imagefolder"], ["report"],
                                     ["export-pairs", "--out", "p.bin", "--resize"]])
def test_string_identities_are_one_clear_line(tmp_path, command):
    run = make_run(tmp_path / "run", string_identities=True)
    result = invoke(command[0], run, *[tmp_path / a if a in ("x", "p.bin") else a for a in command[1:]])
    assert result.exit_code == 1, result.output
    assert result.output.startswith("error: ") and result.output.count("\n") == 1
    assert "column identity holds string, not integers" in result.output


def test_export_errors_name_the_cli_options_and_no_class(tmp_path):
    """export's own errors print as every command's do (no class name), and name options as typed (--allow-partial,
    --overwrite), not as Python parameters."""
    run = make_run(tmp_path / "run")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("taken")
    result = CliRunner().invoke(app, ["export", str(run), "--out", str(tmp_path / "full"), "--format", "imagefolder"])
    assert result.exit_code == 1 and result.output.startswith("error: ") and "ExportError" not in result.output
    (run / "manifests" / next(p.name for p in (run / "manifests").iterdir())).unlink()
    result = CliRunner().invoke(app, ["export", str(run), "--out", str(tmp_path / "e"), "--format", "imagefolder"])
    assert result.exit_code == 1 and "--allow-partial" in result.output and "allow_partial" not in result.output


@pytest.mark.parametrize("args, option", [
    (["export-pairs", "RUN", "--out", "x.bin", "--pairs-per-cell", "0"], "--pairs-per-cell"),
    (["export-pairs", "RUN", "--out", "x.bin", "--seed", "-1"], "--seed"),
    (["export", "RUN", "--out", "x", "--jpeg-quality", "500"], "--jpeg-quality"),
    (["report", "RUN", "--max-rows", "-5"], "--max-rows"),
])
def test_out_of_range_options_are_usage_errors(args, option, tmp_path):
    """Refused by the option itself (exit 2, naming the flag), before any run folder is opened."""
    result = CliRunner().invoke(app, [str(tmp_path / "run") if a == "RUN" else a for a in args])
    assert result.exit_code == 2 and f"Invalid value for '{option}'" in result.output, result.output
