"""Stand-in for Google's identity side: a service-account signing key, ID tokens as Cloud Scheduler mints them
(RS256, `iss` https://accounts.google.com, `aud`, `email`, `email_verified`), and the public keys as a JWKS on
127.0.0.1 (what https://www.googleapis.com/oauth2/v3/certs serves)."""

from __future__ import annotations

import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

ISSUER = "https://accounts.google.com"


class GoogleIdentity:
    """One signing key (its `kid`), the JWKS server, and ID-token minting/verification."""

    def __init__(self) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.kid = uuid.uuid4().hex
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.key.public_key()))
        body = json.dumps({"keys": [{**jwk, "kid": self.kid, "alg": "RS256", "use": "sig"}]}).encode()
        self.fetches = 0
        identity = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                identity.fetches += 1
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True, name="jwks").start()

    @property
    def jwks_url(self) -> str:
        """Where the public keys are served."""
        return f"http://127.0.0.1:{self.server.server_address[1]}/oauth2/v3/certs"

    def id_token(self, email: str, audience: str, *, kid: str | None = None, ttl_s: int = 3600) -> str:
        """An ID token of a service account, as Google signs one for Cloud Scheduler's `oidc_token`."""
        now = int(time.time())
        claims = {"iss": ISSUER, "aud": audience, "azp": "1" * 21, "sub": str(abs(hash(email)))[:21],
                  "email": email, "email_verified": True, "iat": now, "exp": now + ttl_s}
        return jwt.encode(claims, self.key, algorithm="RS256", headers={"kid": kid or self.kid})

    def verify(self, token: str, audiences: list[str]) -> dict[str, Any]:
        """The claims of a valid token for one of `audiences`; raises jwt.PyJWTError otherwise."""
        if jwt.get_unverified_header(token).get("kid") != self.kid:
            raise jwt.InvalidKeyError("unknown key")
        return dict(jwt.decode(token, self.key.public_key(), algorithms=["RS256"], audience=audiences,
                               issuer=ISSUER, options={"require": ["exp", "aud", "iss", "email"]}))

    def stop(self) -> None:
        """Stop the JWKS server."""
        self.server.shutdown()
        self.server.server_close()
