"""A local stand-in for the Hugging Face Hub HTTP API, enough for huggingface_hub 0.36's
``whoami`` + ``create_repo`` + ``create_commit`` (README validation, preupload, LFS batch/upload/verify,
commit) + ``repo_info``. Started by tests on 127.0.0.1; point a client at it with ``HF_ENDPOINT``.

What it models, as the real hub does:
- tokens: every request must carry ``Authorization: Bearer <token>`` with the one token it accepts (401
  otherwise); every Authorization value seen is recorded so a test can prove the client sent it;
- upload modes: ``*.safetensors``, ``*.model`` and files of ``lfs_threshold`` bytes or more are LFS (like the
  hub's default .gitattributes and size rule), the rest go base64 inside the commit;
- LFS storage: the batch answer carries no upload action for an object already stored, PUT bodies must hash
  to their oid, a commit may only reference stored objects;
- repo state: committed files keep their oid (git sha1 for regular files, sha256 for LFS), reported by
  preupload so an unchanged file is dropped from the next commit;
- faults: ``fail_put_once`` (oids whose first PUT gets 400) and ``fail_commits`` (commits answered 500).
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import yaml


_SIGNING_KEY = os.urandom(16)


def _sign(oid: str) -> str:
    return hmac.new(_SIGNING_KEY, oid.encode(), hashlib.sha256).hexdigest()[:32]


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class HubState:
    def __init__(self, token: str, user: str = "tester", lfs_threshold: int = 10_000_000):
        self.token = token
        self.user = user
        self.lfs_threshold = lfs_threshold
        self.lock = threading.Lock()
        self.repos: dict[str, dict] = {}  # repo_id -> {"private": bool, "files": {path: bytes}, "oids": {...}}
        self.lfs: dict[str, bytes] = {}  # sha256 -> content
        self.requests: list[tuple[str, str]] = []  # (method, path)
        self.authorizations: list[str | None] = []  # Authorization header of every hub API request
        self.storage_authorizations: list[str | None] = []  # ... of every object-storage PUT
        self.lfs_puts: list[str] = []  # oids, in order
        self.commits: list[dict] = []
        self.fail_put_once: set[str] = set()
        self.fail_commits = 0


class _Handler(BaseHTTPRequestHandler):
    state: HubState
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # keep test output quiet
        pass

    # -- plumbing -----------------------------------------------------------------------------------------
    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _send(self, status: int, obj=None, headers: dict | None = None):
        data = b"" if obj is None else json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, message: str):
        self._send(status, {"error": message}, {"X-Error-Message": message})

    def _authorized(self) -> bool:
        auth = self.headers.get("Authorization")
        st = self.state
        with st.lock:
            st.requests.append((self.command, self.path))
            st.authorizations.append(auth)
        if auth != f"Bearer {st.token}":
            self._error(401, "Invalid credentials in Authorization header")
            return False
        return True

    def _base(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    # -- routes -------------------------------------------------------------------------------------------
    def do_GET(self):
        body = self._body()
        del body
        if not self._authorized():
            return
        path = self.path.split("?")[0]
        if path == "/api/whoami-v2":
            return self._send(200, {"type": "user", "name": self.state.user, "auth": {"type": "access_token"}})
        m = re.fullmatch(r"/api/models/([^/]+/[^/]+)/revision/([^/]+)", path)
        if m:
            repo = self.state.repos.get(m.group(1))
            if repo is None:
                return self._error(404, "Repository not found")
            return self._send(200, {"id": m.group(1), "sha": repo["sha"], "private": repo["private"],
                                    "siblings": [{"rfilename": p} for p in sorted(repo["files"])]})
        self._error(404, f"no route GET {path}")

    def do_PUT(self):
        # object storage, like the hub's presigned S3 URLs: the signature in the URL authorises the PUT,
        # and the client sends no hub token here (recorded, so a test can check that too)
        body = self._body()
        st = self.state
        m = re.fullmatch(r"/lfs-storage/([0-9a-f]{64})\?sig=([0-9a-f]+)", self.path)
        if not m:
            return self._error(404, f"no route PUT {self.path}")
        oid = m.group(1)
        with st.lock:
            st.storage_authorizations.append(self.headers.get("Authorization"))
        if m.group(2) != _sign(oid):
            return self._error(403, "bad signature")
        with st.lock:
            st.lfs_puts.append(oid)
            if oid in st.fail_put_once:
                st.fail_put_once.discard(oid)
                return self._error(400, "simulated failure: connection to storage lost")
        if hashlib.sha256(body).hexdigest() != oid:
            return self._error(400, "uploaded content does not match its oid")
        with st.lock:
            st.lfs[oid] = body
        self._send(200, {})

    def do_POST(self):
        body = self._body()
        if not self._authorized():
            return
        st = self.state
        path = self.path.split("?")[0]
        if path == "/api/repos/create":
            req = json.loads(body)
            repo_id = f"{req.get('organization') or st.user}/{req['name']}"
            with st.lock:
                if repo_id in st.repos:  # the hub's 409 answer carries the url too
                    return self._send(409, {"error": "You already created this model repo",
                                            "url": f"{self._base()}/{repo_id}"})
                st.repos[repo_id] = {"private": bool(req.get("private")), "files": {}, "oids": {}, "sha": "0" * 40}
            return self._send(200, {"url": f"{self._base()}/{repo_id}", "name": repo_id})
        if path == "/api/validate-yaml":
            content = json.loads(body)["content"]
            m = re.match(r"---\n(.*?)\n---\n", content, re.S)
            try:
                meta = yaml.safe_load(m.group(1)) if m else None
            except yaml.YAMLError as e:
                return self._send(400, {"errors": [{"message": f"invalid YAML: {e}"}]})
            if not isinstance(meta, dict):
                return self._send(400, {"errors": [{"message": "no YAML metadata block"}]})
            return self._send(200, {"errors": [], "warnings": []})
        m = re.fullmatch(r"/api/models/([^/]+/[^/]+)/preupload/([^/]+)", path)
        if m:
            repo = st.repos.get(m.group(1))
            if repo is None:
                return self._error(404, "Repository not found")
            files = []
            for f in json.loads(body)["files"]:
                lfs = f["path"].endswith((".safetensors", ".model")) or f["size"] >= st.lfs_threshold
                files.append({"path": f["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False,
                              "oid": repo["oids"].get(f["path"])})
            return self._send(200, {"files": files, "commitOid": repo["sha"]})
        m = re.fullmatch(r"/([^/]+/[^/]+)\.git/info/lfs/objects/batch", path)
        if m:
            if m.group(1) not in st.repos:
                return self._error(404, "Repository not found")
            objects = []
            for obj in json.loads(body)["objects"]:
                entry = {"oid": obj["oid"], "size": obj["size"]}
                if obj["oid"] not in st.lfs:
                    href = f"{self._base()}/lfs-storage/{obj['oid']}?sig={_sign(obj['oid'])}"
                    entry["actions"] = {"upload": {"href": href},
                                        "verify": {"href": f"{self._base()}/lfs-verify"}}
                objects.append(entry)
            return self._send(200, {"transfer": "basic", "objects": objects})
        if path == "/lfs-verify":
            req = json.loads(body)
            ok = req["oid"] in st.lfs and len(st.lfs[req["oid"]]) == req["size"]
            return self._send(200, {}) if ok else self._error(404, "object not stored")
        m = re.fullmatch(r"/api/models/([^/]+/[^/]+)/commit/([^/]+)", path)
        if m:
            repo = st.repos.get(m.group(1))
            if repo is None:
                return self._error(404, "Repository not found")
            with st.lock:
                if st.fail_commits > 0:
                    st.fail_commits -= 1
                    return self._error(500, "simulated failure: server error during commit")
            lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
            changes = {}
            for item in lines[1:]:
                value = item["value"]
                if item["key"] == "file":
                    data = base64.b64decode(value["content"])
                    changes[value["path"]] = (data, git_blob_sha1(data))
                elif item["key"] == "lfsFile":
                    if value["oid"] not in st.lfs:
                        return self._error(400, f"LFS object {value['oid']} for {value['path']} was never uploaded")
                    changes[value["path"]] = (st.lfs[value["oid"]], value["oid"])
                else:
                    return self._error(400, f"stand-in does not support {item['key']}")
            with st.lock:
                for p, (data, oid) in changes.items():
                    repo["files"][p] = data
                    repo["oids"][p] = oid
                repo["sha"] = hashlib.sha1(repr((repo["sha"], sorted(repo["oids"].items()))).encode()).hexdigest()
                st.commits.append({"repo": m.group(1), "summary": lines[0]["value"]["summary"],
                                   "paths": sorted(changes)})
            return self._send(200, {"commitUrl": f"{self._base()}/{m.group(1)}/commit/{repo['sha']}",
                                    "commitOid": repo["sha"], "pullRequestUrl": None})
        self._error(404, f"no route POST {path}")


class HubStandin:
    """``with HubStandin(token) as hub: ...`` serves on 127.0.0.1 (a free port) in a background thread."""

    def __init__(self, token: str, **kwargs):
        self.state = HubState(token, **kwargs)
        handler = type("Handler", (_Handler,), {"state": self.state})
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "HubStandin":
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
