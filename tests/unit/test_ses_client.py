"""The SES client's request is signed exactly as botocore signs it (SigV4, service `ses`), byte for byte."""

from __future__ import annotations

from datetime import UTC, datetime

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from shared.creation.ses_client import SesClient


def _split(raw: bytes) -> tuple[dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    return {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}, body


def test_the_signature_is_botocores(monkeypatch) -> None:
    for endpoint, token in (("http://127.0.0.1:4579", None), ("https://email.eu-west-1.amazonaws.com", "tok/en+=")):
        creds = Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", token)
        client = SesClient(region="eu-west-1", endpoint_url=endpoint, credentials=creds)
        now = datetime(2026, 11, 29, 10, 0, 0, tzinfo=UTC)
        body = b"Action=SendEmail&Version=2010-12-01&Source=a%40example.com&Message.Body.Text.Data=x%20%26%20y"
        headers, sent = _split(client.request_bytes(body, now))
        assert sent == body and headers["content-length"] == str(len(body))

        request = AWSRequest(method="POST", url=endpoint + "/", data=body,
                             headers={"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"})
        request.context["timestamp"] = now.strftime("%Y%m%dT%H%M%SZ")
        signer = SigV4Auth(creds, "ses", "eu-west-1")
        signer._modify_request_before_signing(request)
        canonical = signer.canonical_request(request)
        signature = signer.signature(signer.string_to_sign(request, canonical), request)
        assert headers["authorization"] == (
            f"AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20261129/eu-west-1/ses/aws4_request, "
            f"SignedHeaders={signer.signed_headers(signer.headers_to_sign(request))}, Signature={signature}")
        assert headers.get("x-amz-security-token") == token
