"""Stand-in for Cloud Run: each rendered function is a service with its own address on 127.0.0.1 and up to
`instances` instance processes (functions-framework, started on demand as Cloud Run scales from zero, the rendered
`min_instance_count` at once); each worker pool runs its manual instance count of its command.

A service checks what Cloud Run checks before a request reaches code: ingress (a request through the load
balancer reaches only `ALLOW_INTERNAL_AND_GCLB` services) and IAM (without the `allUsers` invoker, a Google-signed
ID token whose audience is the service's URL and whose account is an invoker: 401 otherwise, 403 for an account
that is not an invoker). Each instance serves at most `max_instance_request_concurrency` requests at once; the
service waits up to 10 s for a free one, then answers 429 as Cloud Run does.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import jwt
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from infra.manifest import REPO_ROOT
from local.processes import find_free_port, terminate
from local.rehearsal.google_identity import GoogleIdentity
from local.rehearsal.rendered import PROJECT_NUMBER, Runtime

VIA_LB = "x-rehearsal-via-load-balancer"  # set by the front on what it forwards (and stripped from callers)
QUEUE_WAIT_S = 10.0
HOP = {"connection", "keep-alive", "transfer-encoding", "upgrade", "host", "content-length", "te", "trailers"}


def proxy_client() -> httpx.AsyncClient:
    """The HTTP client a stand-in forwards with (bound to the stand-ins' event loop on first use)."""
    return httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=512, max_keepalive_connections=128))


def app_root_env(env: dict[str, str]) -> dict[str, str]:
    """The buildpack's app root (/workspace) is this repository here."""
    return {key: value.replace("/workspace", str(REPO_ROOT)) if key == "PYTHONPATH" else value
            for key, value in env.items()}


@dataclass
class Instance:
    """One instance process."""

    number: int
    port: int
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    in_flight: int = 0
    served: int = 0
    ready: bool = False  # answered its first request (a cold start is over)

    @property
    def url(self) -> str:
        """Its own address (for the rehearsal's checks of every instance)."""
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        """SIGTERM by PID, SIGKILL after 10 s (Cloud Run's grace)."""
        if self.proc is not None:
            terminate(self.proc, signal.SIGTERM, 10)
            self.proc = None


@dataclass
class Service:
    """One Cloud Run service (a function) and its instance slots."""

    runtime: Runtime
    env: dict[str, str]
    region: str
    slots: list[Instance]
    port: int
    identity: GoogleIdentity
    start_instance: Callable[[Service, Instance], None]
    next_slot: int = 0
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)
    starting: dict[int, asyncio.Task[None]] = field(default_factory=dict)

    @property
    def url(self) -> str:
        """The service's address (what `service_config[0].uri` resolves to here)."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def audiences(self) -> list[str]:
        """The audiences Cloud Run's IAM accepts: its deterministic run.app URL (and its URL here)."""
        return [f"https://{self.runtime.name}-{PROJECT_NUMBER}.{self.region}.run.app", self.url]

    def check_ingress_and_iam(self, request: Request) -> Response | None:
        """Cloud Run's own answer (404 ingress, 401/403 IAM), or None to pass the request on."""
        if request.headers.get(VIA_LB) and self.runtime.ingress != "ALLOW_INTERNAL_AND_GCLB":
            return JSONResponse({"error": "ingress"}, status_code=404)
        if "allUsers" in self.runtime.invokers:
            return None
        scheme, _, token = (request.headers.get("authorization") or "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            return Response("Unauthorized: no ID token", status_code=401)
        try:
            claims = self.identity.verify(token.strip(), self.audiences)
        except jwt.PyJWTError:
            return Response("Unauthorized: the ID token is not valid for this service", status_code=401)
        if f"serviceAccount:{claims['email']}" not in self.runtime.invokers:
            return Response("Forbidden: not an invoker of this service", status_code=403)
        return None

    async def pick(self) -> Instance | None:
        """The next slot round-robin (started on demand), waiting up to QUEUE_WAIT_S for a free one."""
        deadline = time.monotonic() + QUEUE_WAIT_S
        async with self.changed:
            while True:
                for _ in range(len(self.slots)):
                    slot = self.slots[self.next_slot % len(self.slots)]
                    self.next_slot += 1
                    if slot.in_flight < self.runtime.concurrency:
                        slot.in_flight += 1
                        break
                else:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return None
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self.changed.wait(), remaining)
                    continue
                break
        if not slot.ready or slot.proc is None or slot.proc.poll() is not None:
            if slot.number not in self.starting:
                self.starting[slot.number] = asyncio.create_task(
                    asyncio.to_thread(self.start_instance, self, slot))
            task = self.starting[slot.number]
            try:
                await asyncio.shield(task)
            except Exception:
                await self.release(slot)
                raise
            finally:
                if task.done() and self.starting.get(slot.number) is task:
                    del self.starting[slot.number]
        return slot

    async def release(self, slot: Instance) -> None:
        async with self.changed:
            slot.in_flight -= 1
            slot.served += 1
            self.changed.notify()


class CloudRun:
    """Every service and worker pool; one Starlette handler serves all service ports (told apart by port)."""

    def __init__(self, root: Path, identity: GoogleIdentity, instances: int) -> None:
        self.root = root
        self.identity = identity
        self.instances = instances
        self.services: dict[str, Service] = {}
        self.by_port: dict[int, Service] = {}
        self.pools: dict[str, list[subprocess.Popen[bytes]]] = {}
        self.pool_commands: dict[str, tuple[list[str], dict[str, str], str]] = {}
        self.client = proxy_client()

    def add_service(self, runtime: Runtime, env: dict[str, str], region: str) -> Service:
        """Register a function: min(instances, max_instance_count) slots, none started yet."""
        count = max(1, min(self.instances, runtime.max_instances))
        logs = self.root / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        slots = [Instance(n, find_free_port(), logs / f"{runtime.name}-{n}.log") for n in range(count)]
        service = Service(runtime, app_root_env(env), region, slots, find_free_port(), self.identity,
                          self._start_instance)
        self.services[runtime.key] = service
        self.by_port[service.port] = service
        return service

    def _start_instance(self, service: Service, slot: Instance) -> None:
        """functions-framework for the rendered entry point and source, with the service's environment; waits
        until it answers (a cold start)."""
        runtime = service.runtime
        if slot.ready and slot.proc is not None and slot.proc.poll() is None:
            return
        slot.ready = False
        cmd = [sys.executable, "-m", "functions_framework", *runtime.command, "--host", "127.0.0.1",
               "--port", str(slot.port)]
        env = {**service.env, "PORT": str(slot.port), "K_SERVICE": runtime.name, "K_REVISION": f"{runtime.name}-1",
               "PATH": os.environ.get("PATH", "/usr/bin")}
        with slot.log.open("ab") as log:
            slot.proc = subprocess.Popen(cmd, env=env, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if slot.proc.poll() is not None:
                raise RuntimeError(f"{runtime.name} instance {slot.number} exited ({slot.proc.returncode}); "
                                   f"see {slot.log}")
            try:
                httpx.get(slot.url + "/", timeout=1)
                slot.ready = True
                return
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError(f"{runtime.name} instance {slot.number} did not answer within 60 s; see {slot.log}")

    def start_minimum(self, *, every_slot: bool = False) -> int:
        """The rendered min_instance_count of every service (capped by the scale knob), or every slot; 4 cold starts
        at a time. Returns how many instances run."""
        wanted = [(service, slot) for service in self.services.values()
                  for slot in (service.slots if every_slot else service.slots[:service.runtime.min_instances])]
        with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
            list(pool.map(lambda pair: self._start_instance(*pair), wanted))
        return len(wanted)

    async def handle(self, request: Request) -> Response:
        """A request to some service's address."""
        service = self.by_port.get(request.scope["server"][1])
        if service is None:
            return Response("no such service", status_code=404)
        refused = service.check_ingress_and_iam(request)
        if refused is not None:
            return refused
        try:
            slot = await service.pick()
        except RuntimeError as exc:  # the instance did not start: Cloud Run answers 503 too
            return Response(f"Service Unavailable: {exc}", status_code=503)
        if slot is None:
            return Response("Rate exceeded: no instance was available", status_code=429)
        try:
            headers = [(k, v) for k, v in request.headers.raw if k.decode().lower() not in HOP | {VIA_LB}]
            url = slot.url + request.url.path + (f"?{request.url.query}" if request.url.query else "")
            upstream = await self.client.request(request.method, url, headers=headers, content=await request.body(),
                                                 timeout=service.runtime.timeout_s or 60)
        except httpx.HTTPError as exc:
            return Response(f"upstream error: {type(exc).__name__}", status_code=503)
        finally:
            await service.release(slot)
        response = Response(upstream.content, status_code=upstream.status_code)
        response.raw_headers = [(k, v) for k, v in upstream.headers.raw if k.decode().lower() not in HOP]
        response.raw_headers.append((b"content-length", str(len(upstream.content)).encode()))
        return response

    def start_pool(self, runtime: Runtime, env: dict[str, str]) -> None:
        """A worker pool: its rendered command, `min_instances` (= the manual instance count) times."""
        cmd = [sys.executable if runtime.command[0] == "python" else runtime.command[0], *runtime.command[1:]]
        self.pool_commands[runtime.key] = (cmd, {**app_root_env(env), "PATH": os.environ.get("PATH", "/usr/bin")},
                                           runtime.name)
        self.pools[runtime.key] = []
        for n in range(runtime.min_instances):
            self.pools[runtime.key].append(self._spawn_worker(runtime.key, n))

    def _spawn_worker(self, key: str, number: int) -> subprocess.Popen[bytes]:
        cmd, env, name = self.pool_commands[key]
        log = self.root / "logs" / f"{name}-{number}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("ab") as out:
            return subprocess.Popen(cmd, env=env, cwd=REPO_ROOT, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)

    def restart_pool_instance(self, key: str, number: int) -> subprocess.Popen[bytes]:
        """Cloud Run replaces a worker instance that died: the same command and environment again."""
        proc = self._spawn_worker(key, number)
        self.pools[key][number] = proc
        return proc

    def pool_logs(self, runtime: Runtime) -> list[Path]:
        """The log file of each worker instance."""
        return [self.root / "logs" / f"{runtime.name}-{n}.log" for n in range(runtime.min_instances)]

    def stop(self) -> None:
        """Every instance and worker, by PID, all at once (each: SIGTERM, SIGKILL after 10 s)."""
        procs = [slot.proc for service in self.services.values() for slot in service.slots if slot.proc]
        procs += [proc for pool in self.pools.values() for proc in pool]
        with concurrent.futures.ThreadPoolExecutor(max_workers=16) as pool:
            list(pool.map(lambda proc: terminate(proc, signal.SIGTERM, 10), procs))
        for service in self.services.values():
            for slot in service.slots:
                slot.proc = None
