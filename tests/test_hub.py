"""Dataset card and publishing, against a loopback stub of the Hugging Face Hub (127.0.0.1 only).

The stub (``StubHub``) speaks the part of the Hub HTTP API that ``HfApi.create_repo``,
``update_repo_settings``, ``repo_info``, ``upload_folder`` (huggingface_hub 2.x streamed pipeline) and
``DatasetCard.validate`` use:

- ``POST /api/repos/create``: creates ``datasets/<ns>/<name>`` holding a ``.gitattributes``; 409 with
  the repo ``url`` when it exists (``exist_ok=True`` reads it).
- ``POST /api/validate-yaml``: parses the card's YAML block and checks licence, size category, tags,
  task categories, ``configs`` and gating fields; 200 ``{"errors": [], "warnings": []}`` or 400 with
  ``errors``.
- ``GET /api/datasets/<ns>/<name>[/revision/<rev>]``: id, head ``sha``, siblings.
- ``GET /api/datasets/<ns>/<name>/tree/<rev>``: every file with its git blob oid (``delete_patterns``).
- ``POST .../preupload/<rev>``: ``uploadMode: "regular"``, ``shouldIgnore: false`` and ``oid`` = the git
  blob sha1 of the stored file. huggingface_hub drops a file from the commit when that oid equals the
  local file's git sha1, and skips the commit when nothing is left (then it reads ``repo_info``): this is
  how a second publish of an unchanged run commits nothing.
- ``POST .../commit/<rev>``: NDJSON (header, base64 ``file``, ``deletedFile``/``deletedFolder``); stores
  the files, records the commit, answers ``commitOid`` and ``commitUrl``. ``lfsFile`` is refused (the
  stub never offers LFS/Xet, so no data leaves the machine).
- ``PUT .../settings``: records ``gated`` / ``visibility``.

huggingface_hub also fetches ``/api/agent-harnesses`` (user-agent telemetry) from ``constants.ENDPOINT``;
the ``stub`` fixture points that constant at the stub (which answers 404), so nothing leaves 127.0.0.1.
``faults`` makes matching requests fail with a given status (401/403/404/429) to test the messages.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
import re
import secrets
import shutil
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import numpy as np
import pyarrow as pa
import pytest
import yaml
from PIL import Image

from facefoundry import card as card_mod
from facefoundry import hub, licensing
from facefoundry.config import validate_config
from facefoundry.dataset.manifest import plan_units
from facefoundry.dataset.schema import image_struct
from facefoundry.dataset.shards import write_unit
from facefoundry.identities.store import write_identities
from facefoundry.runinfo import prepare_run_folder, run_id

SIZE_CATEGORIES = {"n<1K", "1K<n<10K", "10K<n<100K", "100K<n<1M", "1M<n<10M", "10M<n<100M"}
GATED_TYPES = {"text", "checkbox", "country", "date_picker"}
SECTIONS = [
    "Dataset description", "Intended uses", "Out-of-scope uses", "How it was generated", "Identity sampling",
    "Image generation", "Face filter", "Upstream models and licences", "Software and reproduction",
    "Dataset structure", "Loading", "Columns", "Splits", "Statistics", "Score columns", "Plots", "Filtering",
    "Leakage screening", "Considerations for using the data", "Privacy", "Bias", "Misuse", "Synthetic marking",
    "Licence", "Limitations", "Citation",
]


# ---------------------------------------------------------------- the stub Hub


def git_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def validate_card_yaml(content: str) -> list[str]:
    match = re.match(r"^\s*---\r?\n(.*?)\r?\n---[ \t]*(\r?\n|$)", content, re.S)
    if not match:
        return ["no YAML metadata block"]
    try:
        meta = yaml.safe_load(match.group(1))
    except yaml.YAMLError as exc:
        return [f"invalid YAML: {exc}"]
    if not isinstance(meta, dict):
        return ["metadata is not a mapping"]
    errors = []
    lic = meta.get("license")
    if lic is not None and not (isinstance(lic, str) and re.fullmatch(r"[a-z0-9][a-z0-9.+-]*", lic)):
        errors.append(f'"license" must be a licence identifier, got {lic!r}')
    sizes = meta.get("size_categories", [])
    if not isinstance(sizes, list) or not set(sizes) <= SIZE_CATEGORIES:
        errors.append(f'"size_categories" must be in {sorted(SIZE_CATEGORIES)}')
    for key in ("tags", "task_categories"):
        if not (isinstance(meta.get(key, []), list) and all(isinstance(t, str) for t in meta.get(key, []))):
            errors.append(f'"{key}" must be a list of strings')
    for config in meta.get("configs", []):
        files = config.get("data_files") if isinstance(config, dict) else None
        if not (isinstance(config, dict) and isinstance(config.get("config_name"), str) and isinstance(files, list)
                and all(isinstance(f, dict) and {"split", "path"} <= set(f) for f in files)):
            errors.append('"configs" entries need config_name and data_files [{split, path}]')
    for name, kind in (meta.get("extra_gated_fields") or {}).items():
        ok = (isinstance(kind, str) and kind in GATED_TYPES) or (
            isinstance(kind, dict) and kind.get("type") == "select" and isinstance(kind.get("options"), list))
        if not ok:
            errors.append(f'"extra_gated_fields.{name}" has an unknown type {kind!r}')
    return errors


class StubHub:
    def __init__(self) -> None:
        self.repos: dict[str, dict] = {}  # "ns/name" -> {"files": {path: bytes}, "sha", "private", "gated"}
        self.commits: list[dict] = []
        self.requests: list[tuple[str, str]] = []
        self.authorizations: list[str] = []
        self.validated: list[str] = []
        self.settings: list[dict] = []
        self.faults: list[tuple[str, int, dict]] = []  # (path substring, status, headers)
        self.lock = threading.Lock()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep test output clean
                pass

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    data = b""
                    while True:
                        size = int(self.rfile.readline().strip(), 16)
                        if size == 0:
                            self.rfile.readline()
                            return data
                        data += self.rfile.read(size)
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _send(self, status: int, payload, headers: dict | None = None) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)

            def _handle(self, method: str) -> None:
                body = self._body()
                path = urlsplit(self.path).path
                with stub.lock:
                    stub.requests.append((method, path))
                    if self.headers.get("Authorization"):
                        stub.authorizations.append(self.headers["Authorization"])
                    for part, status, headers in stub.faults:
                        if part in path:
                            return self._send(status, {"error": f"stub fault {status}"}, headers)
                    status, payload, headers = stub.route(method, path, body, self.headers)
                self._send(status, payload, headers)

            def do_GET(self):
                self._handle("GET")

            def do_POST(self):
                self._handle("POST")

            def do_PUT(self):
                self._handle("PUT")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def __enter__(self) -> StubHub:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    # -- routing (called under the lock)

    def route(self, method: str, path: str, body: bytes, headers) -> tuple[int, object, dict | None]:
        path = unquote(path)
        if method == "POST" and path == "/api/repos/create":
            return self.create(json.loads(body))
        if method == "POST" and path == "/api/validate-yaml":
            content = json.loads(body)["content"]
            self.validated.append(content)
            errors = validate_card_yaml(content)
            return (400 if errors else 200), {"errors": [{"message": e} for e in errors], "warnings": []}, None
        m = re.fullmatch(r"/api/datasets/([^/]+/[^/]+)(?:/(revision|tree|preupload|commit|settings)(?:/([^/]+))?)?"
                         r"(/.*)?", path)
        if not m:
            return 404, {"error": f"stub: no route for {method} {path}"}, None
        repo_id, action = m.group(1), m.group(2)
        repo = self.repos.get(repo_id)
        if repo is None:
            return 404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"}
        if method == "GET" and action in (None, "revision"):
            return 200, {"id": repo_id, "sha": repo["sha"], "private": repo["private"], "gated": repo["gated"],
                         "siblings": [{"rfilename": p} for p in sorted(repo["files"])]}, None
        if method == "GET" and action == "tree":
            return 200, [{"type": "file", "path": p, "size": len(d), "oid": git_oid(d)}
                         for p, d in sorted(repo["files"].items())], None
        if method == "POST" and action == "preupload":
            files = json.loads(body)["files"]
            return 200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False,
                                    "oid": git_oid(repo["files"][f["path"]]) if f["path"] in repo["files"] else None}
                                   for f in files]}, None
        if method == "POST" and action == "commit":
            return self.commit(repo_id, repo, body)
        if method == "PUT" and action == "settings":
            payload = json.loads(body)
            self.settings.append(payload)
            repo["gated"] = payload.get("gated", repo["gated"])
            repo["private"] = payload.get("visibility", "public" if not repo["private"] else "private") == "private"
            return 200, {}, None
        return 404, {"error": f"stub: no route for {method} {path}"}, None

    def create(self, payload: dict) -> tuple[int, object, dict | None]:
        repo_id = f"{payload['organization']}/{payload['name']}"
        url = f"{self.url}/datasets/{repo_id}"
        assert payload.get("type") == "dataset"
        if repo_id in self.repos:
            return 409, {"error": "You already created this dataset repo", "url": url}, None
        self.repos[repo_id] = {"files": {".gitattributes": b"*.parquet filter=lfs diff=lfs merge=lfs -text\n"},
                               "sha": hashlib.sha1(repo_id.encode()).hexdigest(),
                               "private": payload.get("visibility") == "private", "gated": False}
        return 200, {"url": url}, None

    def commit(self, repo_id: str, repo: dict, body: bytes) -> tuple[int, object, dict | None]:
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        header = next(item["value"] for item in lines if item["key"] == "header")
        added, deleted = [], []
        for item in lines:
            key, value = item["key"], item["value"]
            if key == "file":
                assert value["encoding"] == "base64"
                repo["files"][value["path"]] = base64.b64decode(value["content"])
                added.append(value["path"])
            elif key == "deletedFile":
                repo["files"].pop(value["path"], None)
                deleted.append(value["path"])
            elif key == "deletedFolder":
                for p in [p for p in repo["files"] if p.startswith(value["path"].rstrip("/") + "/")]:
                    repo["files"].pop(p)
                    deleted.append(p)
            elif key == "lfsFile":
                return 400, {"error": "stub: LFS/Xet uploads are not supported"}, None
        state = json.dumps(sorted((p, git_oid(d)) for p, d in repo["files"].items()))
        repo["sha"] = hashlib.sha1((repo["sha"] + state).encode()).hexdigest()
        self.commits.append({"repo": repo_id, "summary": header["summary"], "added": added, "deleted": deleted})
        return 200, {"commitOid": repo["sha"], "commitUrl": f"{self.url}/datasets/{repo_id}/commit/{repo['sha']}",
                     "pullRequestUrl": None}, None


# ---------------------------------------------------------------- a small finished run, without Ray


def png(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def make_run(out: Path, gallery: Path | None = None, sampler: dict | None = None) -> Path:
    """4 identities x 3 images in 2 units, with score columns, one rejected image per unit and a report/."""
    identities = {"count": 4, **(sampler or {})}
    if gallery is not None:
        identities["leakage"] = {"galleries": [str(gallery)]}
    cfg = validate_config({
        "run": {"name": "hubtest", "seed": 3},
        "identities": identities,
        "images": {"per_identity": 3},
        "output": {"identities_per_unit": 2},
    })
    prepare_run_folder(out, cfg)
    write_identities(out, cfg)
    meta = {"run_id": run_id(cfg), "config_hash": cfg.config_hash(), "synthetic": True,
            "generator": {"kind": "arc2face", "model": "FoivosPar/Arc2Face", "revision": None}}
    for unit in plan_units(4, 2):
        ids = np.repeat(np.arange(unit.start, unit.stop), 3)[:-1]  # the last image was rejected
        idx = np.tile(np.arange(3), 2)[:-1]
        n = len(ids)
        rng = np.random.default_rng(unit.start)
        table = pa.table({
            "image": image_struct([png(int(i) * 10 + int(j)) for i, j in zip(ids, idx, strict=True)],
                                  [f"{i:07d}_{j:04d}.png" for i, j in zip(ids, idx, strict=True)]),
            "identity": pa.array(ids, pa.int64()),
            "image_index": pa.array(idx, pa.int32()),
            "seed": pa.array(ids * 100 + idx, pa.int64()),
            "face_count": pa.array(np.ones(n), pa.int32()),
            "face_score": pa.array(rng.uniform(0.5, 2.0, n), pa.float32()),
            "face_box": pa.FixedSizeListArray.from_arrays(pa.array(rng.uniform(0, 16, 4 * n), pa.float32()), 4),
            "judge_distance": pa.array(rng.uniform(0.2, 0.5, n), pa.float32()),
            "filter_reason": pa.nulls(n, pa.string()),
        })
        write_unit(out, unit, table, generated=6, drops={"identity_mismatch": 1}, config_hash=cfg.config_hash(),
                   file_metadata=meta)
    (out / "report").mkdir()
    (out / "report" / "separation.png").write_bytes(png(1))
    (out / "report" / "funnel.png").write_bytes(png(2))
    (out / "report" / "summary.json").write_text('{"rows": 10}\n')
    (out / "report" / ".tmp-1-grid.png").write_bytes(b"partial")
    (out / "models").mkdir()
    (out / "models" / "weights.safetensors").write_bytes(b"not for the Hub")
    (out / "run.log").write_text("log\n")
    return out


@pytest.fixture(scope="module")
def base_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("hubrun")
    gallery = root / "real_gallery.npy"
    np.save(gallery, np.random.default_rng(7).standard_normal((64, 512)).astype(np.float32))
    return make_run(root / "run", gallery)


@pytest.fixture
def run(base_run, tmp_path) -> Path:
    return Path(shutil.copytree(base_run, tmp_path / "run"))


@pytest.fixture
def stub(monkeypatch, tmp_path):
    """The stub Hub on 127.0.0.1; every default Hub URL points at it and no stored login is used."""
    from huggingface_hub import constants

    with StubHub() as server:
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(constants, "ENDPOINT", server.url)
        monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
        # hf_xet starts a session (and writes logs) on the first upload: keep it in tmp_path, no telemetry.
        monkeypatch.setenv("HF_XET_CACHE", str(tmp_path / "xet"))
        monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
        monkeypatch.delenv("HF_TOKEN", raising=False)
        monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
        yield server


EXPECTED = {"README.md", "run.json", "data/train-0000000-0000002.parquet", "data/train-0000002-0000004.parquet",
            "manifests/0000000-0000002.json", "manifests/0000002-0000004.json", "report/funnel.png",
            "report/separation.png", "report/summary.json"}


# ---------------------------------------------------------------- card


def sections(text: str) -> dict[str, str]:
    found, heading, fenced = {}, None, False
    for line in text.splitlines():
        fenced = fenced != line.startswith("```")
        if not fenced and re.match(r"#{1,6} ", line):
            heading = line.lstrip("#").strip()
            found[heading] = ""
        elif heading is not None:
            found[heading] += line + "\n"
    return found


def test_card_yaml_and_every_section_filled(run):
    card = card_mod.build_card(run)
    text = str(card)
    assert card_mod.card_problems(text) == []
    meta = yaml.safe_load(text.split("---\n")[1])
    assert meta["license"] == "cc-by-nc-4.0" and "synthetic" in meta["tags"]
    assert meta["size_categories"] == ["n<1K"] and "image-classification" in meta["task_categories"]
    assert meta["configs"] == [{"config_name": "default",
                                "data_files": [{"split": "train", "path": "data/train-*.parquet"}]}]
    names = [f["name"] for f in meta["dataset_info"]["features"]]
    assert names == ["image", "identity", "image_index", "seed", "face_count", "face_score", "face_box",
                     "judge_distance", "filter_reason"]
    assert "extra_gated_fields" not in meta
    found = sections(card.text)
    for name in SECTIONS:
        assert name in found, name
        assert found[name].strip(), f"section {name!r} is empty"
    for name, body in found.items():
        assert body.strip() or name in SECTIONS, f"unexpected empty section {name!r}"
    for column in names:  # every column documented
        assert f"| `{column}` |" in found["Columns"]
    assert "| `identity_mismatch` | 2 |" in found["Filtering"]  # drop counts summed over manifests
    assert "10 images of 4 synthetic identities" in text
    assert "FoivosPar/Arc2Face" in found["Upstream models and licences"]
    assert "stable-diffusion-v1-5/stable-diffusion-v1-5" in found["Upstream models and licences"]
    assert "cc-by-nc-sa-4.0" in text and "WebFace42M" in text  # the non-commercial chain is stated
    assert "real_gallery.npy" in found["Leakage screening"] and "64 embeddings" in found["Leakage screening"]
    assert str(run) not in text  # no local paths
    assert "![separation](report/separation.png)" in found["Plots"]
    assert found["Plots"].index("separation.png") < found["Plots"].index("funnel.png")  # the report's order
    assert ".tmp-" not in found["Plots"] and "summary.json" in found["Plots"]
    assert "@inproceedings{paraperas2024arc2face" in found["Citation"]
    assert "not published" in found["Privacy"]  # identity vectors policy


def test_unscreened_run_says_so(tmp_path):
    run = make_run(tmp_path / "run")
    found = sections(card_mod.build_card(run).text)
    assert "**Not screened.**" in found["Leakage screening"]


def test_card_is_deterministic_and_atomic(run):
    first = card_mod.write_card(run).read_bytes()
    second = card_mod.write_card(run).read_bytes()
    assert first == second
    assert not list(run.glob(".tmp-*"))
    gated = card_mod.build_card(run, gated=True, license="cc-by-nc-sa-4.0", pretty_name="Faces")
    meta = gated.data.to_dict()
    assert meta["pretty_name"] == "Faces" and meta["license"] == "cc-by-nc-sa-4.0"
    assert "non-commercial" in meta["extra_gated_prompt"] and len(meta["extra_gated_fields"]) >= 3
    assert validate_card_yaml(str(gated)) == []


def test_load_dataset_reads_the_run_folder(run, tmp_path):
    import datasets

    card_mod.write_card(run)
    ds = datasets.load_dataset(str(run), split="train", cache_dir=str(tmp_path / "cache"))
    assert ds.num_rows == 10  # identities.parquet is not picked up: the card's configs point at data/
    assert isinstance(ds[0]["image"], Image.Image) and ds[0]["image"].size == (16, 16)
    assert ds.features["face_box"] == datasets.List(datasets.Value("float32"), length=4)
    assert sorted(set(ds["identity"])) == [0, 1, 2, 3]


def test_card_validates_offline_and_against_the_stub(run, stub):
    from huggingface_hub import DatasetCard

    card = card_mod.build_card(run, gated=True)
    DatasetCard(str(card)).validate()  # offline parse, then POST /api/validate-yaml on the stub
    assert stub.validated == [str(card)]
    broken = DatasetCard("---\nlicense: [1, 2]\nsize_categories: [huge]\n---\n# x\n")
    with pytest.raises(ValueError, match="size_categories"):
        broken.validate()
    assert card_mod.card_problems(str(broken))  # offline checks catch it too


def test_licence_checks_and_conflicts(run):
    assert licensing.licence_conflicts("cc-by-nc-4.0") == []
    warnings = licensing.licence_conflicts("MIT")
    assert warnings and all("non-commercial" in w for w in warnings) and "Arc2Face" in warnings[0]
    tiny = licensing.run_components({"generator": {"tiny": True}})
    assert licensing.licence_conflicts("apache-2.0", tiny) == []
    # the identity filter's InsightFace detector and ArcFace encoder are non-commercial: a tiny run using it is too
    with_idf = licensing.run_components({"generator": {"tiny": True}, "id_filter": {
        "detector_model": "/home/me/models/antelopev2", "encoder_model": "/data/weights/arcface-r100-glint360k.pth"}})
    conflicts = licensing.licence_conflicts("apache-2.0", with_idf)
    assert len(conflicts) == 2 and "SCRFD" in conflicts[0] and "ArcFace R100" in conflicts[1]
    assert not any("/home/me" in c.source or "/data" in c.source for c in with_idf)  # file names only
    with pytest.raises(ValueError, match="unknown dataset licence"):
        licensing.check_license("beerware")
    result = hub.publish(run, "org/faces", dry_run=True, license="cc-by-4.0")
    assert result.warnings and "cc-by-4.0 allows commercial use" in result.warnings[0]
    assert "**Licence conflict:**" in str(card_mod.build_card(run, license="cc-by-4.0"))


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
    closed = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    port = closed.server_address[1]
    closed.server_close()  # nothing listens there any more
    with pytest.raises(hub.PublishError, match=r"cannot reach the Hub at http://127\.0\.0\.1:\d+ \(ConnectError\)"):
        hub.publish(run, "org/faces", endpoint=f"http://127.0.0.1:{port}", token="hf_x")


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
