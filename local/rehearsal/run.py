"""`invoke rehearse`: the deployment as rendered for a made-up project, run on this machine, then the rehearsal
suite against it (docs/rehearsal.md).

Order, as a first deployment goes (infra/README.md): Cloud SQL and Memorystore, the secrets, the migrate job
(its rendered command, as the schema owner), the runtime role's password, then every function (Cloud Run, on
demand) and worker pool, the load balancer and the scheduler. Everything binds 127.0.0.1 and is stopped by PID.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import uvicorn
from starlette.applications import Starlette
from starlette.routing import Route

from infra.manifest import REPO_ROOT
from local.alert_receiver import AlertReceiver
from local.processes import find_free_port
from local.rehearsal import rendered
from local.rehearsal.cloud_run import CloudRun, app_root_env
from local.rehearsal.cloud_sql import CloudSql
from local.rehearsal.front import Front
from local.rehearsal.google_identity import GoogleIdentity
from local.rehearsal.memorystore import Memorystore
from local.rehearsal.pki import LocalCA
from local.rehearsal.scheduler import Scheduler
from local.rehearsal.secret_manager import SecretManager
from local.ses_emulator import SesEmulator

T = TypeVar("T")
METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]
CLOCK_FACTOR = 12.0  # the scheduler's clock: a minute passes every 5 s


@dataclass
class Rehearsal:
    """Everything running, for the suite: addresses, handles and the values an operator would know."""

    root: Path
    doc: dict[str, Any]
    front_url: str
    front_ca: Path
    cloud_run: CloudRun
    scheduler: Scheduler
    identity: GoogleIdentity
    sql: CloudSql
    database: str
    memorystore: Memorystore
    receiver: AlertReceiver
    ses: SesEmulator
    secrets: SecretManager
    auth_jwt_secret: str
    runtime_database_url: str
    loop: asyncio.AbstractEventLoop
    consumers: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def call(self, coroutine: Coroutine[Any, Any, T], timeout: float = 120) -> T:
        """Run a coroutine on the stand-ins' event loop (e.g. `scheduler.run_now`)."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    @property
    def owner_url(self) -> str:
        """The operator's superuser connection to the service database (TLS), for the suite's checks."""
        return self.sql.url_for(self.database)


def _serve(loop: asyncio.AbstractEventLoop, servers: list[uvicorn.Server], sockets: list[list[socket.socket]],
           background: list[Coroutine[Any, Any, None]], ready: threading.Event) -> None:
    asyncio.set_event_loop(loop)

    async def main() -> None:
        tasks = [asyncio.create_task(server.serve(sockets=socks or None)) for server, socks in zip(servers, sockets,
                                                                                                   strict=True)]
        tasks += [asyncio.create_task(job) for job in background]
        while not all(server.started for server in servers):  # noqa: ASYNC110 - uvicorn offers no event
            await asyncio.sleep(0.05)
        ready.set()
        await asyncio.gather(*tasks, return_exceptions=True)

    loop.run_until_complete(main())


def _bind(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(512)
    return sock


def say(line: str) -> None:
    """One line of progress."""
    print(line, flush=True)


@contextlib.contextmanager
def rehearsal(root: Path, *, instances: int, consumers: int, eager: bool = False) -> Any:
    """Start the rendered deployment; yields a `Rehearsal`; stops everything it started."""
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    with contextlib.ExitStack() as stack:
        front_port = find_free_port()
        domain = "localhost"
        files = rendered.render(domain)
        (root / "terraform").mkdir()
        for name, content in files.items():  # what `invoke deploy --out DIR` writes
            (root / "terraform" / name).write_text(content)
        doc = rendered.merge(files)
        pools = doc["resource"].get("google_cloud_run_v2_worker_pool", {})
        resolve = rendered.Resolver(doc, overrides={f"{key}_instances": str(consumers) for key in pools})
        resources = doc["resource"]
        region = doc["resource"]["google_sql_database_instance"]["main"]["region"]
        say(f"rendered {len(files)} Terraform files for project {rendered.PROJECT} into {root / 'terraform'}")

        identity = GoogleIdentity()
        stack.callback(identity.stop)
        receiver = AlertReceiver(file=root / "alerts.jsonl").start()
        stack.callback(receiver.stop)
        sql = CloudSql(root, resources["google_sql_database_instance"]["main"])
        say("starting Cloud SQL (PostgreSQL, SSL only) ...")
        sql.start()
        stack.callback(sql.stop)
        owner, database = resources["google_sql_user"]["main"]["name"], resources["google_sql_database"]["main"]["name"]
        owner_password = sql.create_owner(owner, database)
        memorystore = Memorystore(root, resources["google_redis_instance"]["main"])
        say("starting Memorystore (Redis, TLS + AUTH) ...")
        memorystore.start()
        stack.callback(memorystore.stop)
        resolve.live.update({
            "google_sql_database_instance.main.private_ip_address": "127.0.0.1",
            "google_redis_instance.main.host": "127.0.0.1",
            "google_redis_instance.main.port": str(memorystore.port),
            "google_compute_global_address.api.address": "127.0.0.1",
        })
        ses_region = next(iter(resources["google_cloudfunctions2_function"].values()))[
            "service_config"]["environment_variables"]["AWS_REGION"]
        sender = resolve("${var.email_sender}")
        ses = SesEmulator(find_free_port(), sender=sender, region=ses_region, log_path=root / "ses.log")
        ses.start()
        stack.callback(ses.stop)

        # Secret Manager: the operator's values (infra/README.md "Secrets"), Terraform's CA versions.
        manager = SecretManager(rendered.secret_readers(doc, resolve))
        ids = {key: body["secret_id"] for key, body in resources["google_secret_manager_secret"].items()}

        def connection(template_output: str, password: str) -> str:
            template = resolve(doc["output"][template_output]["value"])
            return template.replace("<password>", password).replace("@127.0.0.1:5432/", f"@127.0.0.1:{sql.port}/")

        jwt_secret = secrets.token_urlsafe(48)
        manager.add_version(ids["migrate_database_url"], connection("migrate_database_url_template", owner_password))
        manager.add_version(ids["redis_url"], resolve(doc["output"]["redis_url_template"]["value"]).replace(
            "<auth string>", memorystore.auth))
        manager.add_version(ids["auth_jwt_secret"], jwt_secret)
        manager.add_version(ids["aws_access_key_id"], "testing")
        manager.add_version(ids["aws_secret_access_key"], "testing")
        manager.add_version(ids["alert_webhook_url"], receiver.url)
        manager.add_version(ids["redis_ca"], memorystore.ca.pem)
        manager.add_version(ids["sql_ca"], sql.ca.pem)

        job = rendered.migrate_job(doc, resolve)
        env = manager.mount(job, root / "mounts" / job.name)
        command = [sys.executable, "-m", "invoke", *job.command[1:]] if job.command[0] == "invoke" else job.command
        say(f"migrate job: {' '.join(job.command)} as {job.service_account.split('@')[0]} ...")
        ran = subprocess.run(command, env={**app_root_env(env), "PATH": os.environ.get("PATH", "/usr/bin:/bin")},
                             cwd=REPO_ROOT, capture_output=True, text=True, timeout=600, check=False)
        if ran.returncode != 0:
            raise RuntimeError(f"the migrate job failed ({ran.returncode}):\n{ran.stdout}\n{ran.stderr}")
        say(f"migrate job: {ran.stdout.strip().splitlines()[-1] if ran.stdout.strip() else 'done'}")
        runtime_user = doc["output"]["database_url_template"]["value"].split("//", 1)[1].split(":", 1)[0]
        runtime_url = connection("database_url_template", sql.set_password(runtime_user))
        manager.add_version(ids["database_url"], runtime_url)

        # Stand-ins for Google's certificate URL and SES' endpoint: the only values not from the rendering.
        outside = {"OIDC_JWKS_URL": identity.jwks_url, "AWS_ENDPOINT_URL_SES": ses.url}
        cloud_run = CloudRun(root, identity, instances)
        stack.callback(cloud_run.stop)

        def entry(key: str, body: dict[str, Any]) -> list[str]:
            build = body["build_config"]
            command = ["--target", build["entry_point"], "--source", build["environment_variables"][
                "GOOGLE_FUNCTION_SOURCE"]]
            return [*command, "--asgi"] if body["service_config"]["environment_variables"].get(
                "FUNCTION_USE_ASGI") == "true" else command

        for runtime in rendered.functions(doc, resolve, entry):
            env = manager.mount(runtime, root / "mounts" / runtime.name)
            service = cloud_run.add_service(runtime, {**env, **outside}, region)
            resolve.live[f"google_cloudfunctions2_function.{runtime.key}.service_config[0].uri"] = service.url
        workers = rendered.worker_pools(doc, resolve)
        for runtime in workers:
            env = manager.mount(runtime, root / "mounts" / runtime.name)
            say(f"worker pool {runtime.name}: {runtime.min_instances} instance(s) of {' '.join(runtime.command)}")
            cloud_run.start_pool(runtime, {**env, "AWS_ENDPOINT_URL_SES": ses.url})
        scheduler = Scheduler(rendered.scheduler_jobs(doc, resolve), identity, CLOCK_FACTOR)

        lb_ca = LocalCA("load-balancer-ca")
        cert, key = lb_ca.issue(root / "lb-tls", "api", [domain, "127.0.0.1"])
        ca_file = lb_ca.write(root / "lb-tls" / "ca.pem")
        backends = rendered.backends(doc)
        front = Front(resources["google_compute_url_map"]["api"], backends,
                      {key: service.url for key, service in cloud_run.services.items()},
                      {key: resources["google_compute_backend_service"][key].get("custom_response_headers", [])
                       for key in backends.values()}, "127.0.0.1")
        policy = resources["google_compute_ssl_policy"]["api"]

        loop = asyncio.new_event_loop()
        run_app = Starlette(routes=[Route("/{path:path}", cloud_run.handle, methods=METHODS)])
        lb_app = Starlette(routes=[Route("/{path:path}", front.handle, methods=METHODS)])
        import ssl

        servers = [
            uvicorn.Server(uvicorn.Config(run_app, log_level="warning", proxy_headers=False, lifespan="off",
                                          timeout_keep_alive=30)),
            uvicorn.Server(uvicorn.Config(lb_app, host="127.0.0.1", port=front_port, log_level="warning",
                                          proxy_headers=False, lifespan="off", ssl_certfile=str(cert),
                                          ssl_keyfile=str(key), ssl_version=ssl.PROTOCOL_TLS_SERVER)),
        ]
        if policy["min_tls_version"] != "TLS_1_2":
            raise ValueError("the rendered SSL policy changed; the front would not match it")
        service_sockets = [_bind(port) for port in cloud_run.by_port]

        ready = threading.Event()
        thread = threading.Thread(target=_serve, args=(loop, servers, [service_sockets, []], [scheduler.run()], ready),
                                  daemon=True, name="stand-ins")
        thread.start()
        if not ready.wait(30):
            raise RuntimeError("the load balancer and Cloud Run stand-ins did not start")

        def stop_servers() -> None:
            for server in servers:
                server.should_exit = True
            thread.join(15)
        stack.callback(stop_servers)
        say(f"load balancer on https://127.0.0.1:{front_port} (TLS >= 1.2, CA {ca_file}); "
            f"{len(cloud_run.services)} Cloud Run services, {sum(len(s.slots) for s in cloud_run.services.values())}"
            f" instance slots (at most {instances} per function)")
        say(f"{cloud_run.start_minimum(every_slot=eager)} instances started"
            f"{' (every slot)' if eager else ' (min_instance_count; the rest on demand)'}")
        _wait_for_consumers(cloud_run, workers)
        say(f"scheduler: {len(scheduler.jobs)} jobs, clock x{CLOCK_FACTOR:g}")
        yield Rehearsal(root=root, doc=doc, front_url=f"https://127.0.0.1:{front_port}", front_ca=ca_file,
                        cloud_run=cloud_run, scheduler=scheduler, identity=identity, sql=sql, database=database,
                        memorystore=memorystore, receiver=receiver, ses=ses, secrets=manager,
                        auth_jwt_secret=jwt_secret, runtime_database_url=runtime_url, loop=loop,
                        consumers=[proc for procs in cloud_run.pools.values() for proc in procs])


def _wait_for_consumers(cloud_run: CloudRun, workers: list[rendered.Runtime], timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    for runtime in workers:
        for log in cloud_run.pool_logs(runtime):
            while " started" not in (log.read_text(errors="replace") if log.exists() else ""):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{runtime.name} did not start within {timeout:.0f} s; see {log}")
                time.sleep(0.2)
