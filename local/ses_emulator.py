"""moto (under gunicorn, kept-alive connections) with a verified sender identity, for SES calls (`SesEmulator`),
and what it sent."""

from __future__ import annotations

import http.client
import shutil
import signal as _signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from local.processes import ManagedProcess, ServiceError, check_port, find_free_port, open_log, terminate

_SES_MODEL_KINDS = ("Message", "TemplateMessage", "RawMessage")


def _as_list(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, Iterable):
        return [str(v) for v in value]
    return [str(value)]


def _normalise_ses_message(kind: str, raw: dict[str, Any]) -> dict[str, Any]:
    """Flatten one moto SES model (from /moto-api/data.json) into a stable dict."""
    destinations = raw.get("destinations")
    to: list[str] = []
    cc: list[str] = []
    bcc: list[str] = []
    if isinstance(destinations, dict):  # Message: {"ToAddresses": [...], "CcAddresses": [...], ...}
        to = _as_list(destinations.get("ToAddresses"))
        cc = _as_list(destinations.get("CcAddresses"))
        bcc = _as_list(destinations.get("BccAddresses"))
    elif isinstance(destinations, list):
        for item in destinations:
            if isinstance(item, dict):  # bulk templated: [{"Destination": {...}}, ...]
                dest = item.get("Destination", item)
                to += _as_list(dest.get("ToAddresses"))
                cc += _as_list(dest.get("CcAddresses"))
                bcc += _as_list(dest.get("BccAddresses"))
            else:  # raw: ["a@example.com", ...]
                to.append(str(item))
    return {
        "kind": kind,
        "id": raw.get("id"),
        "source": raw.get("source"),
        "to": to,
        "cc": cc,
        "bcc": bcc,
        "destination": to + cc + bcc,
        "subject": raw.get("subject"),
        "body": raw.get("body"),
        "template": raw.get("template"),
        "template_data": raw.get("template_data"),
        "raw_data": raw.get("raw_data"),
        "destinations": destinations,
    }


class SesEmulator(ManagedProcess):
    """moto's server with a verified sender identity, for SES calls."""

    _service = "ses (moto)"

    def __init__(
        self,
        port: int | None = None,
        *,
        sender: str = "no-reply@provisioner.local",
        region: str = "us-east-1",
        log_path: Path | None = None,
    ) -> None:
        """Describe the emulator; nothing is started until :meth:`start`.

        Args:
            port: TCP port; a free one is chosen when omitted.
            sender: address verified at start so ``send_email`` from it is accepted.
            region: AWS region used for the verification (and :meth:`client`).
            log_path: where moto's output goes; default is a temp dir removed on stop().
        """
        super().__init__()
        self.port = check_port(self._service, port) if port is not None else find_free_port()
        self.sender = sender
        self.region = region
        self._given_log_path = log_path
        self._tmp_dir: Path | None = None
        self.log_path: Path | None = log_path

    @property
    def url(self) -> str:
        """``http://127.0.0.1:{port}`` (use as boto3 ``endpoint_url``)."""
        return f"http://127.0.0.1:{self.port}"

    def client(self) -> Any:
        """A boto3 SES client for this emulator with explicit dummy credentials."""
        import boto3
        from botocore.config import Config

        return boto3.session.Session().client(
            "ses",
            endpoint_url=self.url,
            region_name=self.region,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",  # noqa: S106 - dummy credentials for the local emulator
            aws_session_token="testing",  # noqa: S106 - dummy credentials for the local emulator
            config=Config(connect_timeout=3, read_timeout=10, retries={"max_attempts": 2}),
        )

    def _http_get(self, path: str, timeout: float) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()

    def start(self, timeout: float = 20.0) -> None:
        """Launch moto (``local.moto_app`` under gunicorn, kept-alive connections), wait for HTTP, then verify
        :attr:`sender`.

        Raises:
            ServiceError: the process exited, HTTP never answered within ``timeout``,
                or verifying the sender failed.
        """
        if self.is_running():
            return
        self._reset_if_dead()
        deadline = time.monotonic() + timeout
        if self._given_log_path is None:
            self._tmp_dir = Path(tempfile.mkdtemp(prefix="ses-emulator-"))
            log_path = self._tmp_dir / "moto.log"
        else:
            log_path = self._given_log_path
        self.log_path = log_path
        # moto's app under gunicorn's threaded worker with keep-alive (local/moto_app.py says why); one worker:
        # moto's state is in its memory.
        cmd = [sys.executable, "-m", "gunicorn", "--worker-class", "gthread", "--workers", "1", "--threads", "16",
               "--keep-alive", "30", "--bind", f"127.0.0.1:{self.port}", "--log-level", "warning",
               "--chdir", str(Path(__file__).resolve().parent.parent), "local.moto_app:app"]
        with open_log(log_path) as log:
            self._proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._register_atexit()
        def answering(remaining: float) -> str | None:
            try:
                status, _ = self._http_get("/moto-api/data.json", timeout=min(2.0, max(remaining, 0.1)))
            except (OSError, http.client.HTTPException) as exc:
                return f"{type(exc).__name__}: {exc}"
            return None if status == 200 else f"HTTP {status} from /moto-api/data.json"

        self._wait_ready(deadline, timeout, answering, f"no HTTP answer from {self.url}", log_path)
        try:
            self.client().verify_email_identity(EmailAddress=self.sender)
        except Exception as exc:
            raise self._fail_start(f"verifying sender {self.sender!r} failed: {exc}", log_path) from exc

    def sent_messages(self) -> list[dict[str, Any]]:
        """Every message SES accepted so far (all regions/accounts).

        Grouped by kind (Message, TemplateMessage, RawMessage), in send order within a kind.

        Read from moto's ``/moto-api/data.json``, whose shape is
        ``{"ses": {"Message": [{"id", "source", "subject", "body", "destinations":
        {"ToAddresses": [...], ...}}], "RawMessage": [...], "TemplateMessage": [...]}}``.
        Each returned dict has ``kind``, ``id``, ``source``, ``to``, ``cc``, ``bcc``,
        ``destination`` (to+cc+bcc), ``subject``, ``body`` (moto keeps the HTML part if
        one was sent, else the text part), ``template``, ``template_data``, ``raw_data``
        and the original ``destinations``.
        """
        import json

        if not self.is_running():
            raise ServiceError(self._service, "cannot read sent messages: emulator is not running")
        try:
            status, body = self._http_get("/moto-api/data.json", timeout=10)
        except (OSError, http.client.HTTPException) as exc:
            reason = f"GET /moto-api/data.json failed: {exc}"
            raise ServiceError(self._service, reason, self.log_path) from exc
        if status != 200:
            reason = f"GET /moto-api/data.json returned HTTP {status}"
            raise ServiceError(self._service, reason, self.log_path)
        data = json.loads(body)
        ses = data.get("ses", {}) if isinstance(data, dict) else {}
        messages: list[dict[str, Any]] = []
        for kind in _SES_MODEL_KINDS:
            for raw in ses.get(kind, []):
                if isinstance(raw, dict):
                    messages.append(_normalise_ses_message(kind, raw))
        return messages

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, wait, then SIGKILL; removes the temp log dir we created. Idempotent."""
        if self._proc is not None:
            terminate(self._proc, _signal.SIGTERM, timeout)
            self._proc = None
        if self._tmp_dir is not None:
            shutil.rmtree(self._tmp_dir, ignore_errors=True)
            self._tmp_dir = None
            self.log_path = self._given_log_path
        self._unregister_atexit()

    def __repr__(self) -> str:
        return f"SesEmulator(url={self.url!r}, pid={self.pid})"
