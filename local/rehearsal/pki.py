"""A local certificate authority (cryptography): the CA certificate and server certificates it signs.

Stands in for Google's: the load balancer's managed certificate, Cloud SQL's per-instance server CA and
Memorystore's server CA. Each stand-in gets its own CA, as each managed service has its own.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


class LocalCA:
    """One CA; `issue()` writes a server certificate and key for some names into a directory."""

    def __init__(self, name: str) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        self.cert = (x509.CertificateBuilder().subject_name(_name(name)).issuer_name(_name(name))
                     .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
                     .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=2))
                     .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                     .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                                  content_commitment=False, key_encipherment=False,
                                                  data_encipherment=False, key_agreement=False,
                                                  encipher_only=False, decipher_only=False), critical=True)
                     .sign(self.key, hashes.SHA256()))

    @property
    def pem(self) -> str:
        """The CA certificate (what a client verifies the server with)."""
        return self.cert.public_bytes(serialization.Encoding.PEM).decode()

    def issue(self, directory: Path, common: str, names: list[str]) -> tuple[Path, Path]:
        """(certificate, key) files for a server answering as `names` (DNS names or IP addresses)."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        alt: list[x509.GeneralName] = []
        for item in names:
            try:
                alt.append(x509.IPAddress(ipaddress.ip_address(item)))
            except ValueError:
                alt.append(x509.DNSName(item))
        cert = (x509.CertificateBuilder().subject_name(_name(common)).issuer_name(self.cert.subject)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
                .add_extension(x509.SubjectAlternativeName(alt), critical=False)
                .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
                .sign(self.key, hashes.SHA256()))
        directory.mkdir(parents=True, exist_ok=True)
        cert_file, key_file = directory / f"{common}.crt", directory / f"{common}.key"
        cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
        key_file.chmod(0o600)
        return cert_file, key_file

    def write(self, path: Path) -> Path:
        """The CA certificate into a file."""
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.pem)
        return path
