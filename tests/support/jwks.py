"""A local stand-in for Google's OIDC certificate URL: an RSA key and its public JWKS served on 127.0.0.1."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, HTTPServer, ThreadingHTTPServer

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa


@contextlib.contextmanager
def local_jwks(kid: str) -> Iterator[tuple[object, str]]:
    """(private key, JWKS URL); the server stops when the block ends."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    body = json.dumps({"keys": [{**jwk, "kid": kid, "alg": "RS256", "use": "sig"}]}).encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            return

    server = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield key, f"http://127.0.0.1:{server.server_port}/certs"
    finally:
        server.shutdown()
        server.server_close()


@dataclass
class ServedJwks:
    """A JWKS served on 127.0.0.1 that answers after `delay_s` and counts its GETs."""

    key: object
    url: str
    hits: int = 0


@contextlib.contextmanager
def slow_jwks(kid: str, delay_s: float) -> Iterator[ServedJwks]:
    """Like `local_jwks`, but each answer takes `delay_s` (a slow certificate URL) and `hits` counts the GETs."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    body = json.dumps({"keys": [{**jwk, "kid": kid, "alg": "RS256", "use": "sig"}]}).encode()
    served = ServedJwks(key, "")

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            served.hits += 1
            time.sleep(delay_s)
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    served.url = f"http://127.0.0.1:{server.server_port}/certs"
    try:
        yield served
    finally:
        server.shutdown()
        server.server_close()
