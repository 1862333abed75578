"""The welcome email through Amazon SES (`shared.creation.ses_client` on the event loop; boto3 for alerts and for a
client handed in); in development and tests SES is moto's emulator."""

from __future__ import annotations

import asyncio
import threading
from typing import TYPE_CHECKING, Any

from shared.core.settings import Settings
from shared.creation.ses_client import SesClient

if TYPE_CHECKING:
    from shared.creation.email_rate import EmailRate

WELCOME_SUBJECT = "Welcome: set your password"


def welcome_text(full_name: str, set_password_link: str) -> str:
    """The welcome email's text: no password, only the one-time link to choose one."""
    return (f"Hello {full_name},\n\nAn account was created for you. Choose your password here "
            f"(the link works once and expires):\n\n{set_password_link}\n")


class Mailer:
    """Sends one email per call. The boto3 client is built on the first send, not at start-up: most
    functions never send an email, and boto3 costs about 0.2 s to import and set up (a cold start)."""

    def __init__(self, settings: Settings, client: Any | None = None) -> None:
        self.sender = settings.email_sender
        self._settings = settings
        self._client = client
        self._lock = threading.Lock()
        self._fast: SesClient | None = None
        # The system-wide sending rate, set by the composition root (None: no limit, e.g. a bare script).
        self.rate: EmailRate | None = None

    def _ses(self) -> Any:
        with self._lock:  # sends run in worker threads; build the client once
            if self._client is None:
                import boto3
                from botocore.config import Config

                settings = self._settings
                self._client = boto3.client(
                    "ses",
                    region_name=settings.aws_region,
                    endpoint_url=str(settings.ses_endpoint_url) if settings.ses_endpoint_url else None,
                    config=Config(connect_timeout=2, read_timeout=settings.email_send_timeout_s,
                                  retries={"max_attempts": 1, "mode": "standard"}),
                )
            return self._client

    def send_welcome(self, *, to: str, full_name: str, set_password_link: str) -> str:
        """Send the welcome email (blocking: call it in a thread). Returns the SES message id.

        The email carries no password: only a one-time link to choose one.
        """
        answer = self._ses().send_email(
            Source=self.sender,
            Destination={"ToAddresses": [to]},
            Message={"Subject": {"Data": WELCOME_SUBJECT, "Charset": "UTF-8"},
                     "Body": {"Text": {"Data": welcome_text(full_name, set_password_link), "Charset": "UTF-8"}}},
        )
        return str(answer["MessageId"])

    async def send_welcome_async(self, *, to: str, full_name: str, set_password_link: str) -> str:
        """The welcome email from the event loop: `SesClient` (no thread, no boto3 per email), unless a boto3
        client was handed in (tests, scripts), whose blocking call then runs in a thread."""
        if self._client is not None:
            return await asyncio.to_thread(self.send_welcome, to=to, full_name=full_name,
                                           set_password_link=set_password_link)
        if self._fast is None:
            settings = self._settings
            self._fast = SesClient(region=settings.aws_region,
                                   endpoint_url=str(settings.ses_endpoint_url) if settings.ses_endpoint_url else None)
        return await self._fast.send_email(source=self.sender, to=[to], subject=WELCOME_SUBJECT,
                                           text=welcome_text(full_name, set_password_link))

    def send_alert(self, *, to: list[str], subject: str, text: str) -> str:
        """Send an operator alert (blocking: call it in a thread). Returns the SES message id."""
        answer = self._ses().send_email(
            Source=self.sender,
            Destination={"ToAddresses": to},
            Message={"Subject": {"Data": subject, "Charset": "UTF-8"},
                     "Body": {"Text": {"Data": text, "Charset": "UTF-8"}}},
        )
        return str(answer["MessageId"])
