"""SES `SendEmail` on the event loop: the Query API over kept-alive HTTP/1.1 connections, signed with SigV4.

Why not boto3 here: a boto3 call costs about 1 ms of CPU (its event hooks, request model, urllib3) and must run
in a worker thread (a thread hop and GIL handovers per email); the consumer sends one email per user, and that
was most of its CPU per user. This client does the one call the welcome email needs: the form body, the
signature (hmac, as botocore computes it), one request on a pooled connection, the `MessageId` out of the
answer. Credentials still come from botocore's own chain (environment, config files, ...), frozen per call,
so refreshing credentials keep working. Anything else (alerts, tests that hand in a client) uses boto3.

An SES error answer raises `SesError` with the AWS error code (e.g. `MessageRejected`, `Throttling`); a
connection the server closed while idle is retried once on a fresh one (at-least-once, like the outbox).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import re
import ssl
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlsplit

_MESSAGE_ID = re.compile(rb"<MessageId>([^<]+)</MessageId>")
_ERROR_CODE = re.compile(rb"<Code>([^<]+)</Code>")
_API_VERSION = "2010-12-01"
_MAX_IDLE = 8  # kept-alive connections per client


class SesError(Exception):
    """SES answered with an error (the AWS error code is the message; never the address)."""


def _q(value: str) -> str:
    return quote(value, safe="-_.~")


def _sign(key: bytes, msg: str) -> bytes:
    return hmac.new(key, msg.encode(), hashlib.sha256).digest()


class SesClient:
    """`await client.send_email(source=..., to=..., subject=..., text=...)` -> the SES message id."""

    def __init__(self, *, region: str, endpoint_url: str | None = None, credentials: Any = None) -> None:
        url = urlsplit(endpoint_url or f"https://email.{region}.amazonaws.com")
        self.region = region
        self.host = url.hostname or ""
        self.tls = url.scheme == "https"
        self.port = url.port or (443 if self.tls else 80)
        self.host_header = url.netloc
        self.path = url.path or "/"
        self._credentials = credentials
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ssl: ssl.SSLContext | None = ssl.create_default_context() if self.tls else None
        self._keys: tuple[str, str, bytes] | None = None  # (date, secret, signing key) cache
        self._fixed: dict[tuple[str, str], str] = {}

    def _frozen(self) -> Any:
        if self._credentials is None:
            import botocore.session

            self._credentials = botocore.session.get_session().get_credentials()
            if self._credentials is None:
                raise SesError("NoCredentials")
        return self._credentials.get_frozen_credentials()

    def _signing_key(self, date: str, secret: str) -> bytes:
        cached = self._keys
        if cached is not None and cached[0] == date and cached[1] == secret:
            return cached[2]
        key = _sign(_sign(_sign(_sign(f"AWS4{secret}".encode(), date), self.region), "ses"), "aws4_request")
        self._keys = (date, secret, key)
        return key

    def request_bytes(self, body: bytes, now: datetime | None = None) -> bytes:
        """The whole signed HTTP request for a form `body` (SigV4, as botocore signs SES' query calls)."""
        creds = self._frozen()
        now = now or datetime.now(UTC)
        amz_date, date = now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
        payload_hash = hashlib.sha256(body).hexdigest()
        headers = {"content-type": "application/x-www-form-urlencoded; charset=utf-8", "host": self.host_header,
                   "x-amz-date": amz_date}
        if creds.token:
            headers["x-amz-security-token"] = creds.token
        names = ";".join(sorted(headers))
        canonical = "\n".join(["POST", self.path, "", *(f"{k}:{headers[k]}" for k in sorted(headers)), "", names,
                               payload_hash])
        scope = f"{date}/{self.region}/ses/aws4_request"
        to_sign = f"AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{hashlib.sha256(canonical.encode()).hexdigest()}"
        signature = hmac.new(self._signing_key(date, creds.secret_key), to_sign.encode(), hashlib.sha256).hexdigest()
        auth = f"AWS4-HMAC-SHA256 Credential={creds.access_key}/{scope}, SignedHeaders={names}, Signature={signature}"
        lines = [f"POST {self.path} HTTP/1.1", f"Host: {self.host_header}", f"Content-Type: {headers['content-type']}",
                 f"X-Amz-Date: {amz_date}", f"Authorization: {auth}", f"Content-Length: {len(body)}"]
        if creds.token:
            lines.append(f"X-Amz-Security-Token: {creds.token}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + body

    async def send_email(self, *, source: str, to: list[str], subject: str, text: str) -> str:
        """Send one plain-text email; returns the SES message id. Raises `SesError` or a connection error."""
        fixed = self._fixed.get((source, subject))
        if fixed is None:  # the same for every welcome email: encoded once
            fixed = self._fixed[(source, subject)] = (
                f"Action=SendEmail&Version={_API_VERSION}&Source={_q(source)}&Message.Subject.Data={_q(subject)}"
                "&Message.Subject.Charset=UTF-8&Message.Body.Text.Charset=UTF-8")
        recipients = "".join(f"&Destination.ToAddresses.member.{i}={_q(a)}" for i, a in enumerate(to, 1))
        body = f"{fixed}{recipients}&Message.Body.Text.Data={_q(text)}".encode()
        status, answer = await self._post(self.request_bytes(body))
        if status != 200:
            code = _ERROR_CODE.search(answer)
            raise SesError(code.group(1).decode() if code else f"HTTP {status}")
        found = _MESSAGE_ID.search(answer)
        if found is None:
            raise SesError("NoMessageId")
        return found.group(1).decode()

    async def _post(self, request: bytes) -> tuple[int, bytes]:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # connections belong to the loop that opened them
            self._idle, self._loop = [], loop
        for reused in (True, False):
            conn = self._idle.pop() if reused and self._idle else None
            if conn is None:
                reused = False
                conn = await asyncio.open_connection(self.host, self.port, ssl=self._ssl,
                                                     server_hostname=self.host if self.tls else None)
            reader, writer = conn
            try:
                writer.write(request)
                status, keep, answer = await self._read_response(reader)
            except (ConnectionError, asyncio.IncompleteReadError):
                writer.close()
                if reused:  # the server closed it while idle: once more on a new connection
                    continue
                raise
            except BaseException:
                writer.close()
                raise
            if keep and len(self._idle) < _MAX_IDLE:
                self._idle.append(conn)
            else:
                writer.close()
            return status, answer
        raise ConnectionError("SES connection closed")  # not reached: the fresh connection raised or returned

    @staticmethod
    async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bool, bytes]:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        version, status = lines[0].split(" ", 2)[:2]
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
        if "content-length" in headers:
            answer = await reader.readexactly(int(headers["content-length"]))
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            parts = []
            while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
                parts.append(await reader.readexactly(size))
                await reader.readexactly(2)
            await reader.readuntil(b"\r\n")
            answer = b"".join(parts)
        else:
            return int(status), False, await reader.read()
        keep = headers.get("connection", "").lower() != "close" and version == "HTTP/1.1"
        return int(status), keep, answer

    async def aclose(self) -> None:
        """Close the kept-alive connections."""
        while self._idle:
            _, writer = self._idle.pop()
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
