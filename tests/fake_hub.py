"""A tiny stand-in for the Hugging Face Hub HTTP API on 127.0.0.1, for tests (the real Hub is out of reach).

It answers the endpoints huggingface_hub itself calls for what dynaccel does, with the JSON fields and headers
that client reads:

- ``POST /api/repos/create``                            create_repo (409 when it exists; exist_ok handles that)
- ``POST /api/validate-yaml``                           README.md metadata check (parsed with PyYAML)
- ``POST /api/models/{repo}/preupload/{rev}``           upload modes (every file "regular": ours are small)
- ``POST /api/models/{repo}/commit/{rev}``              the ndjson commit (header + base64 "file" lines)
- ``GET  /api/models/{repo}[/revision/{rev}]``          repo info with ``sha`` and ``siblings`` (snapshot_download)
- ``GET  /api/models/{repo}/tree/{rev}``                 the file list (snapshot_download, recursive)
- ``HEAD|GET /{repo}/resolve/{rev}/{path}``             file metadata (X-Repo-Commit, ETag) and content

Anything else is answered 404 and recorded in ``server.unhandled`` so that a test sees a client that asked for
more than this server knows. ``server.requests`` records (method, path) of every request.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlparse

_REPO = r"(?P<repo>[^/]+/[^/]+)"


class FakeHub:
    def __init__(self, token: str | None = None):
        self.token = token
        self.repos: dict[str, dict] = {}  # repo -> {"sha": str, "files": {path: bytes}, "private": bool}
        self.requests: list[tuple[str, str]] = []
        self.unhandled: list[tuple[str, str]] = []
        self.commits: list[dict] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> "FakeHub":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    # ---- the API -------------------------------------------------------------------------------------------------

    def _handler(hub):  # noqa: N805 - closes over the FakeHub
        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _send(self, code: int, body: bytes = b"", headers: dict | None = None, head: bool = False):
                self.send_response(code)
                headers = {"Content-Type": "application/json", **(headers or {})}
                headers.setdefault("Content-Length", str(len(body)))
                for k, v in headers.items():
                    self.send_header(k, v)
                self.end_headers()
                if not head:
                    self.wfile.write(body)

            def _json(self, code: int, obj, headers: dict | None = None):
                self._send(code, json.dumps(obj).encode(), headers)

            def _error(self, code: int, message: str, headers: dict | None = None, head: bool = False):
                self._send(code, json.dumps({"error": message}).encode(),
                           {"X-Error-Message": message, **(headers or {})}, head=head)

            def _body(self) -> bytes:
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _authorized(self) -> bool:
                return hub.token is None or self.headers.get("Authorization") == f"Bearer {hub.token}"

            def do_POST(self):  # noqa: N802
                path = urlparse(self.path).path
                body = self._body()
                with hub._lock:
                    hub.requests.append(("POST", path))
                if not self._authorized():
                    return self._error(401, "Invalid credentials in Authorization header")
                if path == "/api/repos/create":
                    data = json.loads(body)
                    repo = f"{data.get('organization')}/{data['name']}"
                    with hub._lock:
                        if repo in hub.repos:
                            return self._error(409, "You already created this model repo")
                        hub.repos[repo] = {"sha": "0" * 40, "files": {},
                                           "private": data.get("visibility") == "private"}
                    return self._json(200, {"url": f"{hub.url}/{repo}", "name": repo})
                if path == "/api/validate-yaml":
                    import yaml

                    content = json.loads(body)["content"]
                    try:
                        meta = yaml.safe_load(content.split("---\n")[1]) if content.startswith("---\n") else {}
                    except yaml.YAMLError as exc:
                        return self._json(400, {"errors": [{"message": f"invalid YAML: {exc}"}]})
                    if not isinstance(meta, dict):
                        return self._json(400, {"errors": [{"message": "metadata must be a mapping"}]})
                    return self._json(200, {"errors": [], "warnings": []})
                m = re.fullmatch(rf"/api/models/{_REPO}/preupload/(?P<rev>[^/]+)", path)
                if m:
                    if m["repo"] not in hub.repos:
                        return self._error(404, "Repository not found", {"X-Error-Code": "RepoNotFound"})
                    files = json.loads(body)["files"]
                    return self._json(200, {"files": [{"path": f["path"], "uploadMode": "regular",
                                                       "shouldIgnore": False} for f in files]})
                m = re.fullmatch(rf"/api/models/{_REPO}/commit/(?P<rev>[^/]+)", path)
                if m:
                    repo = hub.repos.get(m["repo"])
                    if repo is None:
                        return self._error(404, "Repository not found", {"X-Error-Code": "RepoNotFound"})
                    lines = [json.loads(line) for line in body.splitlines() if line.strip()]
                    header = next(x["value"] for x in lines if x["key"] == "header")
                    with hub._lock:
                        for item in lines:
                            if item["key"] == "file":
                                value = item["value"]
                                assert value.get("encoding") == "base64", value
                                repo["files"][value["path"]] = base64.b64decode(value["content"])
                            elif item["key"] == "deletedFile":
                                repo["files"].pop(item["value"]["path"], None)
                        digest = hashlib.sha1(repo["sha"].encode() + json.dumps(
                            {k: hashlib.sha1(v).hexdigest() for k, v in sorted(repo["files"].items())}).encode())
                        repo["sha"] = digest.hexdigest()
                        hub.commits.append({"repo": m["repo"], "summary": header.get("summary"),
                                            "files": sorted(x["value"]["path"] for x in lines if x["key"] == "file")})
                    return self._json(200, {"commitUrl": f"{hub.url}/{m['repo']}/commit/{repo['sha']}",
                                            "commitOid": repo["sha"], "success": True})
                with hub._lock:
                    hub.unhandled.append(("POST", path))
                return self._error(404, f"fake hub: no POST {path}")

            def do_GET(self, head: bool = False):  # noqa: N802
                path = unquote(urlparse(self.path).path)
                with hub._lock:
                    hub.requests.append(("HEAD" if head else "GET", path))
                if not self._authorized():
                    return self._error(401, "Invalid credentials in Authorization header", head=head)
                m = re.fullmatch(rf"/api/models/{_REPO}(?:/revision/(?P<rev>[^/]+))?", path)
                if m:
                    repo = hub.repos.get(m["repo"])
                    if repo is None:
                        return self._error(404, "Repository not found", {"X-Error-Code": "RepoNotFound"}, head)
                    return self._json(200, {"id": m["repo"], "modelId": m["repo"], "sha": repo["sha"],
                                            "private": repo["private"],
                                            "siblings": [{"rfilename": p} for p in sorted(repo["files"])]})
                m = re.fullmatch(rf"/api/models/{_REPO}/tree/(?P<rev>[^/]+)", path)
                if m:
                    repo = hub.repos.get(m["repo"])
                    if repo is None:
                        return self._error(404, "Repository not found", {"X-Error-Code": "RepoNotFound"}, head)
                    dirs = sorted({"/".join(p.split("/")[:i]) for p in repo["files"]
                                   for i in range(1, p.count("/") + 1)})
                    entries = [{"type": "directory", "oid": "0" * 40, "size": 0, "path": d} for d in dirs]
                    entries += [{"type": "file", "oid": hashlib.sha1(data).hexdigest(), "size": len(data), "path": p}
                                for p, data in sorted(repo["files"].items())]
                    return self._json(200, entries)
                m = re.fullmatch(rf"/{_REPO}/resolve/(?P<rev>[^/]+)/(?P<file>.+)", path)
                if m:
                    repo = hub.repos.get(m["repo"])
                    if repo is None:
                        return self._error(404, "Repository not found", {"X-Error-Code": "RepoNotFound"}, head)
                    data = repo["files"].get(m["file"])
                    if data is None:
                        return self._error(404, "Entry not found", {"X-Error-Code": "EntryNotFound",
                                                                     "X-Repo-Commit": repo["sha"]}, head)
                    etag = '"' + hashlib.sha1(data).hexdigest() + '"'
                    return self._send(200, data, {"Content-Type": "application/octet-stream", "ETag": etag,
                                                  "X-Repo-Commit": repo["sha"]}, head=head)
                with hub._lock:
                    hub.unhandled.append(("HEAD" if head else "GET", path))
                return self._error(404, f"fake hub: no GET {path}", head=head)

            def do_HEAD(self):  # noqa: N802
                self.do_GET(head=True)

        return Handler
