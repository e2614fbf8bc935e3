"""Publishing to the Hugging Face Hub, against the loopback stub in ``hubstub.py`` (127.0.0.1 only)."""

from __future__ import annotations

import io
import logging
import secrets
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import cardrun
import numpy as np
import pytest
import yaml
from cardrun import folder_digest, make_run, sections
from hubstub import validate_card_yaml
from typer.testing import CliRunner

from facefoundry.cli import app
from facefoundry.publishing import card as card_mod
from facefoundry.publishing import hub
from facefoundry.publishing.card.user import USER_END, USER_START

base_run, run, stub = cardrun.base_run, cardrun.run, cardrun.stub  # the shared fixtures

EXPECTED = {"README.md", "run.json", "data/train-0000000-0000002.parquet", "data/train-0000002-0000004.parquet",
            "manifests/0000000-0000002.json", "manifests/0000002-0000004.json", "report/funnel.png",
            "report/separation.png", "report/summary.json"}


# ---------------------------------------------------------------- publish


def test_dry_run_lists_files_and_size_offline(run, stub):
    result = hub.publish(run, "org/faces", dry_run=True, endpoint=stub.url)
    paths = [p for p, _ in result.files]
    assert set(paths) == EXPECTED
    assert result.total_bytes == sum(size for _, size in result.files)
    for path, size in result.files:
        if path != "README.md":
            assert (run / path).stat().st_size == size
    assert stub.requests == [] and not (run / "README.md").exists()  # no network, no file written
    lines = result.summary_lines()
    assert "dry run: 9 files" in lines[-1]
    with_vectors = hub.publish(run, "org/faces", dry_run=True, include_identities=True)
    assert "identities.parquet" in dict(with_vectors.files)


def test_publish_then_republish_uploads_nothing_new(run, stub):
    token = "hf_" + secrets.token_hex(8)
    first = hub.publish(run, "org/faces", endpoint=stub.url, token=token)
    files = stub.repos["org/faces"]["files"]
    assert set(files) == EXPECTED | {".gitattributes"}
    for path in EXPECTED:
        assert files[path] == (run / path).read_bytes(), path
    assert first.changed is True and len(stub.commits) == 1
    assert first.commit_url.startswith(f"{stub.url}/datasets/org/faces/commit/")
    assert "validate-yaml" in " ".join(p for _, p in stub.requests)  # upload_folder validated the card
    assert stub.validated and validate_card_yaml(stub.validated[-1]) == []

    second = hub.publish(run, "org/faces", endpoint=stub.url, token=token)
    assert second.changed is False and len(stub.commits) == 1  # every oid matched: no commit
    assert "nothing uploaded" in second.summary_lines()[0]


def test_republish_after_change_uploads_only_the_change_and_deletes_stale_shards(run, stub):
    hub.publish(run, "org/faces", endpoint=stub.url, token="hf_x")
    stub.repos["org/faces"]["files"]["data/train-0000008-0000010.parquet"] = b"shard of another run"
    (run / "report" / "summary.json").write_text('{"rows": 10, "more": true}\n')
    result = hub.publish(run, "org/faces", endpoint=stub.url, token="hf_x")
    assert result.changed is True and len(stub.commits) == 2
    assert stub.commits[1]["added"] == ["report/summary.json"]
    assert stub.commits[1]["deleted"] == ["data/train-0000008-0000010.parquet"]
    assert ".gitattributes" in stub.repos["org/faces"]["files"]


def test_gated_private_publish_sets_repo_settings_and_card(run, stub):
    hub.publish(run, "org/gated", private=True, gated=True, endpoint=stub.url, token="hf_x")
    repo = stub.repos["org/gated"]
    assert repo["private"] is True and repo["gated"] == "manual"
    meta = yaml.safe_load(repo["files"]["README.md"].decode().split("---\n")[1])
    assert "extra_gated_prompt" in meta and "extra_gated_fields" in meta
    assert (run / "README.md").read_bytes() == repo["files"]["README.md"]


@pytest.mark.slow
def test_token_never_appears_in_output_logs_or_files(run, stub, capfd, monkeypatch, tmp_path):
    token = "hf_" + secrets.token_hex(16)
    monkeypatch.setenv("HF_TOKEN", token)  # the token comes from the environment
    records = io.StringIO()
    handler = logging.StreamHandler(records)
    loggers = [logging.getLogger(), logging.getLogger("huggingface_hub")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.addHandler(handler)
        lg.setLevel(logging.DEBUG)
    try:
        results = [hub.publish(run, "org/secret", endpoint=stub.url) for _ in range(2)]
        results.append(hub.publish(run, "org/secret", dry_run=True))
        stub.faults.append(("/api/", 401, {}))
        with pytest.raises(hub.PublishError) as err:
            hub.publish(run, "org/secret", endpoint=stub.url)
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.removeHandler(handler)
            lg.setLevel(level)
    assert f"Bearer {token}" in stub.authorizations  # it was used...
    out, errout = capfd.readouterr()
    texts = [out, errout, records.getvalue(), str(err.value), repr(err.value)]
    texts += [repr(r) + "\n".join(r.summary_lines()) for r in results]
    for text in texts:  # ...but never shown
        assert token not in text
    for path in tmp_path.parent.rglob("*"):  # every test's folder: runs, READMEs, hf_xet logs
        if path.is_file():
            assert token.encode() not in path.read_bytes(), path
    for content in stub.repos["org/secret"]["files"].values():
        assert token.encode() not in content


@pytest.mark.parametrize(("where", "status", "headers", "expected"), [
    ("/api/", 401, {}, "authentication failed (401)"),
    ("/api/", 403, {"X-Error-Message": "no write access"}, "permission denied (403)"),
    ("/preupload/", 404, {}, "not found (404): org/faces does not exist"),
    ("/api/repos/create", 429, {"Retry-After": "7"}, "rate limited by the Hub (429), retry after 7 s"),
    ("/api/validate-yaml", 400, {}, "the Hub rejected the dataset card: Invalid metadata in README.md"),
])
def test_hub_errors_become_one_clear_line(run, stub, where, status, headers, expected):
    stub.faults.append((where, status, headers))
    with pytest.raises(hub.PublishError) as err:
        hub.publish(run, "org/faces", endpoint=stub.url, token="hf_secret_value")
    message = str(err.value)
    assert expected in message and "\n" not in message and "hf_secret_value" not in message


def test_network_error_is_clear(run, stub):
    with pytest.raises(hub.PublishError, match=r"cannot reach the Hub at http://127\.0\.0\.1:\d+ \(ConnectError\)"):
        hub.publish(run, "org/faces", endpoint=unreachable(), token="hf_x")


def test_refuses_unverified_run_no_token_and_offline(run, stub, monkeypatch):
    from huggingface_hub import constants

    with pytest.raises(hub.PublishError, match="no Hugging Face token"):
        hub.publish(run, "org/faces", endpoint=stub.url)
    with pytest.raises(hub.PublishError, match="NAMESPACE/NAME"):
        hub.publish(run, "faces", endpoint=stub.url, token="hf_x")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(hub.PublishError, match="HF_HUB_OFFLINE is set"):
        hub.publish(run, "org/faces", endpoint=stub.url, token="hf_x")
    shard = run / "data" / "train-0000002-0000004.parquet"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(hub.PublishError, match=r"does not verify \(data/train-0000002-0000004\.parquet: sha256"):
        hub.publish(run, "org/faces", endpoint=stub.url, token="hf_x", dry_run=True)
    assert stub.requests == []


def test_from_file_vectors_are_never_published(tmp_path, stub):
    vectors = tmp_path / "vectors.npy"
    np.save(vectors, np.linalg.qr(np.random.default_rng(0).standard_normal((512, 4)))[0].T.astype(np.float32))
    run = make_run(tmp_path / "run", sampler={"sampler": "from_file", "file": str(vectors), "max_cosine": None})
    with pytest.raises(hub.PublishError, match="never published"):
        hub.publish(run, "org/faces", include_identities=True, dry_run=True)
    assert "from_file" in sections(card_mod.build_card(run).text)["Privacy"]



# ---------------------------------------------------------------- the user's card


def unreachable() -> str:
    closed = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    port = closed.server_address[1]
    closed.server_close()  # nothing listens there any more
    return f"http://127.0.0.1:{port}"


def edit_card(run: Path) -> bytes:
    """``card --license cc-by-4.0 --pretty-name``, then a hand edit: text in the user block and a new section."""
    path = card_mod.write_card(run, "cc-by-4.0", "Team faces")
    text = path.read_text().replace(f"{USER_START}\n{USER_END}", f"{USER_START}\nCurated by hand.\n{USER_END}")
    path.write_text(text + "\n## Contact\n\nfaces@example.org\n")
    return path.read_bytes()


@pytest.mark.parametrize("regenerate", [False, True])
@pytest.mark.parametrize("with_card", [False, True])
def test_failed_upload_leaves_the_run_folder_byte_identical(run, stub, with_card, regenerate):
    if with_card:
        edit_card(run)
    before = folder_digest(run)
    with pytest.raises(hub.PublishError, match="cannot reach the Hub"):
        hub.publish(run, "a/b", endpoint=unreachable(), token="hf_x", regenerate_card=regenerate, gated=True)
    assert folder_digest(run) == before


def test_hand_edited_card_is_published_as_it_is(run, stub):
    edited = edit_card(run)
    result = hub.publish(run, "org/faces", endpoint=stub.url, token="hf_x")
    assert stub.repos["org/faces"]["files"]["README.md"] == edited == (run / "README.md").read_bytes()
    assert dict(result.files)["README.md"] == len(edited)
    assert result.warnings and "cc-by-4.0 allows commercial use" in result.warnings[0]  # the card's licence
    with pytest.raises(hub.PublishError, match=r"states license 'cc-by-4.0', not 'cc-by-nc-4.0'.*--regenerate-card"):
        hub.publish(run, "org/faces", endpoint=stub.url, token="hf_x", license="cc-by-nc-4.0")
    assert (run / "README.md").read_bytes() == edited


def test_regenerated_card_keeps_the_users_licence_name_and_text(run, stub):
    edit_card(run)
    hub.publish(run, "org/faces", endpoint=stub.url, token="hf_x", gated=True, regenerate_card=True)
    text = (run / "README.md").read_text()
    assert stub.repos["org/faces"]["files"]["README.md"].decode() == text
    meta = yaml.safe_load(text.split("---\n")[1])
    assert (meta["license"], meta["pretty_name"]) == ("cc-by-4.0", "Team faces")
    assert "extra_gated_prompt" in meta  # what was asked for is regenerated
    assert "Curated by hand." in sections(text)["Dataset description"]
    assert sections(text)["Contact"].strip() == "faces@example.org"


def test_invalid_hand_edit_is_refused_with_the_fix(run, stub):
    path = card_mod.write_card(run)
    path.write_text(path.read_text().replace("license: cc-by-nc-4.0", "license: beerware"))
    before = folder_digest(run)
    with pytest.raises(hub.PublishError, match=r"README.md is invalid: license: unknown.*--regenerate-card"):
        hub.publish(run, "org/faces", endpoint=stub.url, token="hf_x")
    assert folder_digest(run) == before and stub.requests == []


def test_cli_card_then_edit_then_publish_unreachable(run, monkeypatch):
    """The issue's commands: `card R --license cc-by-4.0 --pretty-name N`, a hand edit, then publish to
    an endpoint where nothing listens: the command fails in one line and README.md keeps the edits."""
    from huggingface_hub import constants

    runner = CliRunner()
    result = runner.invoke(app, ["card", str(run), "--license", "cc-by-4.0", "--pretty-name", "N"])
    assert result.exit_code == 0, result.output
    path = run / "README.md"
    path.write_text(path.read_text() + "\n## Notes\n\nedited by hand\n")
    before = folder_digest(run)
    monkeypatch.setattr(constants, "ENDPOINT", unreachable())
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_TOKEN", "x")
    result = runner.invoke(app, ["publish", str(run), "--repo", "a/b"])
    assert result.exit_code == 1 and "cannot reach the Hub" in result.output
    assert folder_digest(run) == before
    again = runner.invoke(app, ["card", str(run)])  # rewriting without options keeps licence, name and notes
    assert again.exit_code == 0, again.output
    text = path.read_text()
    assert "license: cc-by-4.0" in text and "pretty_name: N" in text and "edited by hand" in text


@pytest.mark.parametrize("repo", ["faces", "org/team/faces", "/faces", "org/"])
def test_cli_refuses_a_malformed_repo_id_before_anything_slow(repo, tmp_path, monkeypatch):
    """The id is checked before the publishing code is even imported (it pulls in the card, run and identity
    modules: seconds), let alone before the run is verified."""
    import sys

    monkeypatch.delitem(sys.modules, "facefoundry.publishing.hub")
    result = CliRunner().invoke(app, ["publish", str(tmp_path), "--repo", repo])
    assert "facefoundry.publishing.hub" not in sys.modules
    assert result.exit_code == 1
    assert result.output == (f"error: --repo must be NAMESPACE/NAME (a user or organisation, and a dataset name), "
                             f"got {repo!r}\n")


@pytest.mark.parametrize("repo", ["my org/na me", "org/name!!", "org/..", "org/a--b", "org/faces.git"])
def test_cli_refuses_characters_the_hub_refuses_even_on_a_dry_run(repo, tmp_path):
    result = CliRunner().invoke(app, ["publish", str(tmp_path), "--repo", repo, "--dry-run"])
    assert result.exit_code == 1 and result.output.startswith(f"error: --repo {repo!r} is not a valid Hub id: ")
    assert result.output.count("\n") == 1 and "would be published" not in result.output, result.output


def test_publish_after_a_removal_replaces_the_shards_and_says_so(run, stub):
    from facefoundry.runfolder.removal import remove_identities

    hub.publish(run, "org/faces", endpoint=stub.url, token="hf_x")
    remove_identities(run, [1], "resembles a real person")
    with pytest.raises(hub.PublishError, match="still holds the vectors of the identities"):
        hub.publish(run, "org/faces", endpoint=stub.url, token="hf_x", include_identities=True)
    result = hub.publish(run, "org/faces", endpoint=stub.url, token="hf_x", regenerate_card=True)
    assert result.changed is True and len(stub.commits) == 2
    added = stub.commits[1]["added"]
    assert {"data/train-0000000-0000002.parquet", "manifests/0000000-0000002.json", "removals.json",
            "README.md"} <= set(added)
    assert "data/train-0000002-0000004.parquet" not in added  # untouched shards are not sent again
    files = stub.repos["org/faces"]["files"]
    assert files["data/train-0000000-0000002.parquet"] == (run / "data/train-0000000-0000002.parquet").read_bytes()
    assert "## Removals" in files["README.md"].decode() and "resembles a real person" in files["README.md"].decode()
    lines = result.summary_lines()
    assert "removals: 1 identities removed (removals.json); the 1 shard(s) they were in are replaced on the Hub by " \
           "this commit" in lines
    assert any("super_squash_history('org/faces', repo_type='dataset')" in line for line in lines)


def test_a_merged_run_publishes_with_its_sources_in_the_card(tmp_path, stub):
    """facefoundry merge writes a normal run folder: verify, card and publish work on it."""
    from facefoundry.exporters.merge import merge_runs

    first = make_run(tmp_path / "a")
    second = make_run(tmp_path / "b", extra={"run": {"name": "second", "seed": 4}})
    report = merge_runs([first, second], tmp_path / "m", judge=None)
    assert report["duplicates"] == [] and [s["identities_taken"] for s in report["sources"]] == [4, 4]
    result = hub.publish(tmp_path / "m", "org/merged", endpoint=stub.url, token="hf_x")
    assert result.changed is True
    files = stub.repos["org/merged"]["files"]
    assert {f"data/train-000000{k}-000000{k + 2}.parquet" for k in (0, 2, 4, 6)} <= set(files)
    card = files["README.md"].decode()
    found = sections(card)
    assert all(f"`{s['run_id']}`" in found["Sources"] for s in report["sources"])
    assert "merges 2 finished facefoundry runs" in found["How it was generated"]
    assert "merge/" not in " ".join(files)  # the judge caches stay local
