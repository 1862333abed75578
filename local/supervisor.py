"""A small process supervisor: start children with prefixed output, check health, stop them all by PID."""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field


@dataclass
class Child:
    """One supervised process."""

    name: str
    cmd: list[str]
    env: dict[str, str]
    url: str = ""
    health_path: str | None = None
    ready_text: str | None = None  # healthy once a line of its output contains this
    ready_seen: bool = False
    proc: subprocess.Popen[bytes] | None = None
    tail: collections.deque[str] = field(default_factory=lambda: collections.deque(maxlen=30))
    state: str = "starting"


class Supervisor:
    """Starts children, waits for their health checks, watches them, and stops every one it started."""

    def __init__(self, out: object = None) -> None:
        self.children: dict[str, Child] = {}
        self._lock = threading.Lock()
        self._out = out or sys.stdout
        self._width = 14

    def say(self, line: str) -> None:
        """Print a line of the supervisor's own."""
        with self._lock:
            print(line, file=self._out, flush=True)  # type: ignore[call-overload]

    def spawn(self, child: Child) -> Child:
        """Start `child`; its output is printed line by line, prefixed with its name."""
        child.proc = subprocess.Popen(
            child.cmd, env=child.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )
        self.children[child.name] = child
        threading.Thread(target=self._pump, args=(child,), daemon=True, name=f"out-{child.name}").start()
        return child

    def _pump(self, child: Child) -> None:
        if child.proc is None or child.proc.stdout is None:
            return
        for raw in child.proc.stdout:
            line = raw.decode(errors="replace").rstrip()
            child.tail.append(line)
            if child.ready_text and child.ready_text in line:
                child.ready_seen = True
            self.say(f"[{child.name:<{self._width}}] {line}")

    def wait_healthy(self, child: Child, timeout: float) -> None:
        """Block until `child` is ready (its ready line was printed, or it answers HTTP on its health path);
        raise with its last output if it dies or times out."""
        deadline = time.monotonic() + timeout
        while True:
            self.check_alive(child)
            if self._is_ready(child):
                child.state = "healthy" if (child.ready_text or child.health_path) else "running"
                return
            if time.monotonic() > deadline:
                child.state = "unhealthy"
                wanted = child.ready_text or f"{child.url}{child.health_path}"
                raise RuntimeError(f"{child.name} was not ready ({wanted}) within {timeout:.0f} s"
                                   + self._tail_text(child))
            time.sleep(0.1)

    @staticmethod
    def _is_ready(child: Child) -> bool:
        if child.ready_text is not None:
            return child.ready_seen
        if child.health_path is None:
            return True
        try:
            with urllib.request.urlopen(child.url + child.health_path, timeout=1):  # noqa: S310
                return True
        except urllib.error.HTTPError:
            return True  # any HTTP answer means it serves (a function answers 401/405 to a bare GET)
        except (urllib.error.URLError, OSError, ValueError):
            return False

    def check_alive(self, child: Child) -> None:
        """Raise with the child's last lines when it has exited."""
        if child.proc is None:
            raise RuntimeError(f"{child.name} was never started")
        code = child.proc.poll()
        if code is not None:
            child.state = f"exited ({code})"
            raise RuntimeError(f"{child.name} exited with status {code}" + self._tail_text(child))

    def _tail_text(self, child: Child) -> str:
        if not child.tail:
            return ""
        return "\n  last output:\n" + "\n".join(f"    {line}" for line in list(child.tail)[-10:])

    def first_dead(self) -> Child | None:
        """A child that has exited, if any."""
        for child in self.children.values():
            if child.proc is not None and child.proc.poll() is not None:
                child.state = f"exited ({child.proc.returncode})"
                return child
        return None

    def restart(self, names: list[str], timeout: float = 30.0) -> None:
        """Stop these children (SIGTERM, then SIGKILL) and start them again with the same command and
        environment, all at once; returns when each is ready again."""
        olds = [self.children[name] for name in names]
        for old in olds:
            if old.proc is not None and old.proc.poll() is None:
                _signal_group(old.proc.pid, signal.SIGTERM)
        for old in olds:
            if old.proc is None:
                continue
            try:
                old.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                _signal_group(old.proc.pid, signal.SIGKILL)
                old.proc.wait(5)
        fresh = [self.spawn(Child(o.name, o.cmd, o.env, url=o.url, health_path=o.health_path,
                                  ready_text=o.ready_text)) for o in olds]
        for child in fresh:
            self.wait_healthy(child, timeout)

    def stop_all(self, timeout: float = 10.0) -> None:
        """SIGTERM every child (newest first), wait, then SIGKILL what is left. By PID only."""
        procs = [(c, c.proc) for c in reversed(list(self.children.values())) if c.proc is not None]
        for _, proc in procs:
            if proc.poll() is None:
                _signal_group(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for child, proc in procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal_group(proc.pid, signal.SIGKILL)
                proc.wait(5)
            child.state = "stopped"


def _signal_group(pid: int, sig: int) -> None:
    """Signal the child's own process group (it was started in a new session, so the group is its PID);
    this reaches e.g. gunicorn's worker too, and nothing else."""
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        return
