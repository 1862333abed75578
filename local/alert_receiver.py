"""A local alert webhook receiver (127.0.0.1): what `invoke dev` points ALERT_WEBHOOK_URL at when it is unset.

Every POST body is kept (one JSON line per alert in `alerts.jsonl`, newest last); `GET /alerts` answers them as a
JSON list, `GET /healthz` answers 200. Run alone: `python -m local.alert_receiver --port N --file PATH`.
Tests drive it in-process: `answers` (statuses to give to the next POSTs, then 200) and `delay_s`.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any


class AlertReceiver:
    """The receiver: `start()` serves in a thread, `stop()` ends it; `received` holds what was accepted."""

    def __init__(self, port: int = 0, file: Path | None = None) -> None:
        self.file = file
        self.received: list[dict[str, Any]] = []
        self.posts = 0  # every POST, accepted or not
        self.answers: list[int] = []
        self.delay_s = 0.0
        self._lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", port), self._handler())
        self.server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """Where to POST alerts."""
        return f"http://127.0.0.1:{self.server.server_address[1]}/alerts"

    def start(self) -> AlertReceiver:
        """Serve in a daemon thread."""
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True, name="alert-receiver")
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and release the port."""
        self.server.shutdown()
        self.server.server_close()

    def _accept(self, body: bytes) -> int:
        with self._lock:
            self.posts += 1
            status = self.answers.pop(0) if self.answers else 200
        if self.delay_s:
            time.sleep(self.delay_s)
        if status >= 300:
            return status
        try:
            alert = json.loads(body)
        except ValueError:
            return 400
        entry = {"received_at": datetime.now(UTC).isoformat(), **alert}
        with self._lock:
            self.received.append(entry)
            if self.file is not None:
                with self.file.open("a") as out:
                    out.write(json.dumps(entry) + "\n")
        return 200

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                status = receiver._accept(self.rfile.read(min(length, 1 << 20)))
                self._answer(status, {"ok": status == 200})

            def do_GET(self) -> None:
                if self.path.startswith("/healthz"):
                    self._answer(200, {"status": "ok"})
                    return
                with receiver._lock:
                    self._answer(200, list(receiver.received))

            def _answer(self, status: int, body: Any) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                if self.command == "POST":
                    print(f"alert received: HTTP {args[1] if len(args) > 1 else ''}", flush=True)

        return Handler


def read_received(file: Path) -> list[dict[str, Any]]:
    """The alerts a receiver wrote to `file` (newest last)."""
    if not file.exists():
        return []
    return [json.loads(line) for line in file.read_text().splitlines() if line.strip()]


def main(argv: list[str] | None = None) -> int:
    """Serve until killed."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--file", type=Path, required=True)
    args = parser.parse_args(argv)
    receiver = AlertReceiver(args.port, args.file)
    print(f"alert receiver listening on {receiver.url}", flush=True)
    try:
        receiver.server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
