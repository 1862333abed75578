"""The welcome email through Amazon SES (boto3); in development and tests SES is moto's emulator."""

from __future__ import annotations

from typing import Any

import boto3
from botocore.config import Config

from shared.settings import Settings


class Mailer:
    """Sends one email per call; the boto3 client is made once by the composition root."""

    def __init__(self, settings: Settings, client: Any | None = None) -> None:
        self.sender = settings.email_sender
        self._client = client or boto3.client(
            "ses",
            region_name=settings.aws_region,
            endpoint_url=str(settings.ses_endpoint_url) if settings.ses_endpoint_url else None,
            config=Config(connect_timeout=2, read_timeout=settings.email_send_timeout_s,
                          retries={"max_attempts": 1, "mode": "standard"}),
        )

    def send_welcome(self, *, to: str, full_name: str, set_password_link: str) -> str:
        """Send the welcome email (blocking: call it in a thread). Returns the SES message id.

        The email carries no password: only a one-time link to choose one.
        """
        text = (
            f"Hello {full_name},\n\nAn account was created for you. Choose your password here "
            f"(the link works once and expires):\n\n{set_password_link}\n"
        )
        answer = self._client.send_email(
            Source=self.sender,
            Destination={"ToAddresses": [to]},
            Message={"Subject": {"Data": "Welcome: set your password", "Charset": "UTF-8"},
                     "Body": {"Text": {"Data": text, "Charset": "UTF-8"}}},
        )
        return str(answer["MessageId"])
