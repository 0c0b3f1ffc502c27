"""A minimal Hugging Face Hub for tests, served over HTTP on 127.0.0.1.

Why our own: the PyPI candidates do not serve uploads here. ``hf-local-hub`` 3.0.0 is a
thin client around a separate server binary that its wheel does not ship, and ``olah``
0.5.4 is a read-only mirror of an upstream Hub (no create-repo, preupload or commit
routes). This server implements just the routes that ``huggingface_hub`` and
``transformers`` use to create a repo, commit files (all as "regular", base64 in the
commit payload) and download them back, so `push_to_hub` / `from_pretrained("org/name")`
run through the real client over real HTTP. Repositories live in memory.
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


class LocalHub:
    """Start with `start()`, point ``HF_ENDPOINT`` at `endpoint`, stop with `stop()`.

    ``fail_commits = True`` makes every commit answer HTTP 500 (to test failed uploads).
    """

    def __init__(self) -> None:
        self.repos: dict[str, dict] = {}
        self.fail_commits = False
        self._lock = threading.Lock()
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def do_HEAD(self):
                hub._handle(self, "HEAD")

            def do_GET(self):
                hub._handle(self, "GET")

            def do_POST(self):
                hub._handle(self, "POST")

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> "LocalHub":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    # ----------------------------------------------------------------------------------

    def _reply(self, handler, status: int, body: bytes = b"", headers: dict | None = None, method: str = "GET"):
        handler.send_response(status)
        for key, value in (headers or {}).items():
            handler.send_header(key, value)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        if method != "HEAD":
            handler.wfile.write(body)

    def _json(self, handler, status: int, payload, method: str = "GET", headers: dict | None = None):
        self._reply(handler, status, json.dumps(payload).encode(), {"Content-Type": "application/json", **(headers or {})}, method)

    def _not_found(self, handler, code: str, method: str):
        self._json(handler, 404, {"error": code}, method, headers={"X-Error-Code": code})

    def _handle(self, handler, method: str) -> None:
        path = unquote(urlparse(handler.path).path)
        body = b""
        if method == "POST":
            body = handler.rfile.read(int(handler.headers.get("Content-Length", 0) or 0))
        with self._lock:
            for pattern, route in self._routes:
                match = re.fullmatch(pattern, path)
                if match and (route.__name__.startswith(method.lower()) or (method == "HEAD" and route.__name__.startswith("get"))):
                    return route(self, handler, method, body, **match.groupdict())
        self._json(handler, 404, {"error": f"no route for {method} {path}"}, method)

    def post_create(self, handler, method, body):
        request = json.loads(body)
        repo_id = f"{request.get('organization') or 'tester'}/{request['name']}"
        if repo_id in self.repos:
            return self._json(handler, 409, {"error": "You already created this model repo", "url": f"{self.endpoint}/{repo_id}"}, method)
        self.repos[repo_id] = {"sha": hashlib.sha1(repo_id.encode()).hexdigest(), "files": {}}
        self._json(handler, 200, {"url": f"{self.endpoint}/{repo_id}"}, method)

    def post_validate_yaml(self, handler, method, body):
        self._json(handler, 200, {"errors": [], "warnings": []}, method)

    def get_whoami(self, handler, method, body):
        self._json(handler, 200, {"name": "tester", "type": "user", "orgs": [], "auth": {"type": "access_token"}}, method)

    def get_info(self, handler, method, body, repo, revision=None):
        if repo not in self.repos:
            return self._not_found(handler, "RepoNotFound", method)
        state = self.repos[repo]
        siblings = [{"rfilename": name, "size": len(data)} for name, data in sorted(state["files"].items())]
        self._json(handler, 200, {"id": repo, "modelId": repo, "sha": state["sha"], "private": False, "siblings": siblings}, method)

    def post_preupload(self, handler, method, body, repo, revision):
        if repo not in self.repos:
            return self._not_found(handler, "RepoNotFound", method)
        files = [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": None} for f in json.loads(body)["files"]]
        self._json(handler, 200, {"files": files}, method)

    def post_commit(self, handler, method, body, repo, revision):
        if repo not in self.repos:
            return self._not_found(handler, "RepoNotFound", method)
        if self.fail_commits:
            return self._json(handler, 500, {"error": "commit refused by the test hub"}, method)
        state = self.repos[repo]
        digest = hashlib.sha1(state["sha"].encode())
        for line in body.splitlines():
            item = json.loads(line)
            if item["key"] == "file":
                data = base64.b64decode(item["value"]["content"])
                state["files"][item["value"]["path"]] = data
                digest.update(item["value"]["path"].encode() + data)
            elif item["key"] == "deletedFile":
                state["files"].pop(item["value"]["path"], None)
            elif item["key"] == "lfsFile":
                return self._json(handler, 400, {"error": "the test hub only takes regular uploads"}, method)
        state["sha"] = digest.hexdigest()
        self._json(
            handler,
            200,
            {"commitUrl": f"{self.endpoint}/{repo}/commit/{state['sha']}", "commitOid": state["sha"], "pullRequestUrl": None},
            method,
        )

    def get_file(self, handler, method, body, repo, revision, filename):
        if repo not in self.repos:
            return self._not_found(handler, "RepoNotFound", method)
        state = self.repos[repo]
        if filename not in state["files"]:
            return self._not_found(handler, "EntryNotFound", method)
        data = state["files"][filename]
        headers = {
            "ETag": f'"{hashlib.sha256(data).hexdigest()}"',
            "X-Repo-Commit": state["sha"],
            "Content-Type": "application/octet-stream",
        }
        self._reply(handler, 200, data, headers, method)

    _routes = [
        (r"/api/repos/create", post_create),
        (r"/api/validate-yaml", post_validate_yaml),
        (r"/api/whoami-v2", get_whoami),
        (rf"/api/models/{_REPO}", get_info),
        (rf"/api/models/{_REPO}/revision/(?P<revision>[^/]+)", get_info),
        (rf"/api/models/{_REPO}/preupload/(?P<revision>[^/]+)", post_preupload),
        (rf"/api/models/{_REPO}/commit/(?P<revision>[^/]+)", post_commit),
        (rf"/{_REPO}/resolve/(?P<revision>[^/]+)/(?P<filename>.+)", get_file),
    ]
