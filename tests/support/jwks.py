"""A local stand-in for Google's OIDC certificate URL: an RSA key and its public JWKS served on 127.0.0.1."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa


@dataclass
class ServedJwks:
    """A JWKS served on 127.0.0.1 that answers after `delay_s` and counts its GETs."""

    key: object
    url: str
    hits: int = 0


@contextlib.contextmanager
def slow_jwks(kid: str, delay_s: float) -> Iterator[ServedJwks]:
    """A key and its JWKS, each answer taking `delay_s` (a slow certificate URL); `hits` counts the GETs. The
    server stops when the block ends."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    body = json.dumps({"keys": [{**jwk, "kid": kid, "alg": "RS256", "use": "sig"}]}).encode()
    served = ServedJwks(key, "")

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            served.hits += 1
            if delay_s:
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


@contextlib.contextmanager
def local_jwks(kid: str) -> Iterator[tuple[object, str]]:
    """(private key, JWKS URL) of a JWKS that answers at once; the server stops when the block ends."""
    with slow_jwks(kid, 0.0) as served:
        yield served.key, served.url
