"""Stand-in for Secret Manager: secret values by id, handed out only to the service accounts the rendering
grants `roles/secretmanager.secretAccessor` on them, as environment variables or as files under a mount root."""

from __future__ import annotations

from pathlib import Path

from local.rehearsal.rendered import Runtime


class AccessDenied(RuntimeError):
    """A runtime names a secret its service account may not read (Cloud Run would refuse the deploy)."""


class SecretManager:
    """Secret values plus the rendered read grants."""

    def __init__(self, readers: dict[str, set[str]]) -> None:
        self.readers = readers
        self.values: dict[str, str] = {}

    def add_version(self, secret_id: str, value: str) -> None:
        """`gcloud secrets versions add` (the operator's step, or Terraform's for the CA certificates)."""
        if secret_id not in self.readers:
            raise KeyError(f"no such secret in the rendering: {secret_id}")
        self.values[secret_id] = value

    def access(self, secret_id: str, account: str) -> str:
        """The latest version, if `account` may read it."""
        if f"serviceAccount:{account}" not in self.readers.get(secret_id, set()):
            raise AccessDenied(f"{account} may not read {secret_id}")
        if secret_id not in self.values:
            raise KeyError(f"{secret_id} has no version")
        return self.values[secret_id]

    def mount(self, runtime: Runtime, root: Path) -> dict[str, str]:
        """What a runtime gets: its secret files written under `root` (the rendered mount paths, below it) and
        its environment: the plain values, then each secret variable. Paths of mounted files that a value names
        (e.g. `sslrootcert=/secrets/sql-ca/ca.pem`) are read below `root` too."""
        moved: dict[str, str] = {}
        for path, secret_id in runtime.secret_files.items():
            target = root / path.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(self.access(secret_id, runtime.service_account))
            target.chmod(0o444)
            moved[path] = str(target)
        env = dict(runtime.env)
        for name, secret_id in runtime.secret_env.items():
            env[name] = self.access(secret_id, runtime.service_account)
        for name, value in env.items():
            for original, local in moved.items():
                value = value.replace(original, local)
            env[name] = value
        return env
