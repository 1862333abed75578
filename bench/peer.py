"""The Node/BullMQ peer (the Express + BullMQ system this project replaces), started by the bench like our own
processes: its `server.js` (POST /api/users) and its `worker.js` (the BullMQ worker), on the run's stack.

The peer's folder is read-only where it is shipped (`../shared/peer` next to the repository, or `BENCH_PEER_DIR`):
its files are copied to `.local/peer/` (git-ignored) and `npm ci` runs there when its `package-lock.json`
changed. The peer itself is never edited; what it is told comes from its environment only (README.md of the
peer: "for a like-for-like comparison").
"""

from __future__ import annotations

import filecmp
import hashlib
import os
import shutil
import subprocess
import time
from pathlib import Path

from bench.procs import ROOT, ConsumerProc, FunctionServer

PEER_COPY = ROOT / ".local" / "peer"
NODE_MAJOR_MIN = 20


def peer_source() -> Path:
    """Where the peer is shipped: BENCH_PEER_DIR, else a `shared/peer` folder beside the repository (or beside
    the folder holding the worktree)."""
    configured = os.environ.get("BENCH_PEER_DIR")
    candidates = [Path(configured)] if configured else [ROOT.parent / "shared" / "peer",
                                                        ROOT.parent.parent / "shared" / "peer"]
    for candidate in candidates:
        if (candidate / "server.js").is_file() and (candidate / "package-lock.json").is_file():
            return candidate
    raise RuntimeError(f"the Node peer was not found (looked in {', '.join(map(str, candidates))});"
                       " set BENCH_PEER_DIR")


def node_binary() -> str:
    """`node` from PATH, at least version 20 (the peer's engines field)."""
    node = shutil.which("node")
    if node is None:
        raise RuntimeError("node is not on PATH: the peer cases need Node 20")
    version = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=30,  # noqa: S603
                             check=True).stdout.strip()
    if int(version.lstrip("v").split(".")[0]) < NODE_MAJOR_MIN:
        raise RuntimeError(f"node {version} is too old for the peer (needs {NODE_MAJOR_MIN}+)")
    return node


def _sync_tree(source: Path, target: Path) -> None:
    """Copy the peer's files (not node_modules) over the writable copy; files that vanished are removed."""
    target.mkdir(parents=True, exist_ok=True)
    wanted = set()
    for path in source.rglob("*"):
        rel = path.relative_to(source)
        if rel.parts[0] == "node_modules" or path.is_dir():
            continue
        wanted.add(rel)
        dest = target / rel
        if not dest.exists() or not filecmp.cmp(path, dest, shallow=False):
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, dest)
            dest.chmod(0o755 if os.access(path, os.X_OK) else 0o644)
    for path in sorted(target.rglob("*"), reverse=True):
        rel = path.relative_to(target)
        if rel.parts[0] in ("node_modules", ".lock-sha256") or path.is_dir():
            continue
        if rel not in wanted:
            path.unlink()


def prepare_peer(log_dir: Path) -> Path:
    """The writable, installed copy of the peer (`npm ci` when its lock file changed); its path."""
    node_binary()
    source = peer_source()
    _sync_tree(source, PEER_COPY)
    lock_sha = hashlib.sha256((PEER_COPY / "package-lock.json").read_bytes()).hexdigest()
    stamp = PEER_COPY / ".lock-sha256"
    installed = (PEER_COPY / "node_modules").is_dir() and stamp.is_file() and stamp.read_text() == lock_sha
    if not installed:
        npm = shutil.which("npm")
        if npm is None:
            raise RuntimeError("npm is not on PATH: cannot install the peer's dependencies")
        print(f"[bench] installing the Node peer's dependencies in {PEER_COPY} (npm ci)", flush=True)
        with (log_dir / "peer-npm-ci.log").open("wb") as log:
            code = subprocess.call([npm, "ci", "--no-audit", "--no-fund"], cwd=PEER_COPY,  # noqa: S603
                                   stdout=log, stderr=subprocess.STDOUT, timeout=600)
        if code != 0:
            raise RuntimeError(f"npm ci failed ({code}); see {log_dir / 'peer-npm-ci.log'}")
        stamp.write_text(lock_sha)
    return PEER_COPY


# The peer's own switches for a like-for-like run (its README): the token cache our auth has by default, the
# AWS SDK's Node-version banner off. Everything else is the stack's environment, shared with our processes.
PEER_ENV = {"JWT_CACHE_SIZE": "4096", "AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED": "true"}


class PeerServer(FunctionServer):
    """`node server.js` (the peer's POST /api/users) on a free 127.0.0.1 port; one process, counted alone."""

    def __init__(self, peer_dir: Path, env: dict[str, str], log_dir: Path, instance: str = "peer-server") -> None:
        super().__init__("peer_server", peer_dir / "server.js", {**PEER_ENV, **env}, log_dir, instance=instance)
        self.peer_dir = peer_dir
        self.env.update({"HOST": "127.0.0.1", "PORT": str(self.port)})

    def launch(self) -> PeerServer:
        self.launched_at = time.perf_counter()
        self.log_path = self.log_dir / f"{self.name}-{self.port}.log"
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen([node_binary(), "server.js"], cwd=self.peer_dir, env=self.env,  # noqa: S603
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        return self

    async def start(self) -> PeerServer:
        self.launch()
        await self.wait_answer("/healthz", want=200)
        return self


class PeerWorker(ConsumerProc):
    """`node worker.js` (the peer's BullMQ worker); `wait_started` waits for its consumer_started event, as for
    our consumer."""

    def __init__(self, peer_dir: Path, env: dict[str, str], log_dir: Path, **overrides: str) -> None:
        super().__init__({**PEER_ENV, **env}, log_dir, **overrides)
        self.name = self.name.replace("bench-consumer-", "bench-peer-worker-")
        self.env["INSTANCE_NAME"] = self.name
        self.peer_dir = peer_dir

    def launch(self) -> PeerWorker:
        self.log_path = self.log_dir / f"{self.name}.log"
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen([node_binary(), "worker.js"], cwd=self.peer_dir, env=self.env,  # noqa: S603
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        return self

