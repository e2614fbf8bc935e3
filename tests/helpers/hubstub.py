"""A loopback stub of the Hugging Face Hub (127.0.0.1 only) for the card and publish tests.

``StubHub`` speaks the part of the Hub HTTP API that ``HfApi.create_repo``,
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
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

import yaml

SIZE_CATEGORIES = {"n<1K", "1K<n<10K", "10K<n<100K", "100K<n<1M", "1M<n<10M", "10M<n<100M"}
GATED_TYPES = {"text", "checkbox", "country", "date_picker"}


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


def serve(monkeypatch, tmp_path):
    """Start a :class:`StubHub` and point every default Hub URL at it, with no stored login (a generator for
    a pytest fixture: ``yield from serve(monkeypatch, tmp_path)``)."""
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
