"""Throwaway TLS material for the tests, made with `cryptography`: nothing here is ever trusted.

`make_pki(folder)` writes a CA, a server certificate for 127.0.0.1 / localhost signed by it, a
client certificate signed by it, and a second, unrelated CA (the "wrong CA" of the tests).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import ipaddress
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from edge_agent.broker import free_port, port_answers


@dataclass(frozen=True)
class Pki:
    ca: Path  # the CA that signed server and client
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path  # a CA that signed nothing here


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "edge-agent tests"), x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    )


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> Path:
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    path.chmod(0o600)
    return path


def _write_cert(cert: x509.Certificate, path: Path) -> Path:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def _validity(builder: x509.CertificateBuilder) -> x509.CertificateBuilder:
    now = dt.datetime.now(dt.UTC)
    return builder.not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=2))


def _ca(cn: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _key()
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    builder = (
        _validity(x509.CertificateBuilder())
        .subject_name(_name(cn))
        .issuer_name(_name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
    )
    return builder.sign(key, hashes.SHA256()), key


def _leaf(
    cn: str,
    ca: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    *,
    usage: x509.ObjectIdentifier,
    san: list[x509.GeneralName] | None = None,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _key()
    builder = (
        _validity(x509.CertificateBuilder())
        .subject_name(_name(cn))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    return builder.sign(ca_key, hashes.SHA256()), key


def make_pki(folder: Path) -> Pki:
    folder.mkdir(parents=True, exist_ok=True)
    ca, ca_key = _ca("edge-agent test CA")
    server, server_key = _leaf(
        "localhost",
        ca,
        ca_key,
        usage=ExtendedKeyUsageOID.SERVER_AUTH,
        san=[x509.IPAddress(ipaddress.IPv4Address("127.0.0.1")), x509.DNSName("localhost")],
    )
    client, client_key = _leaf("edge-agent test device", ca, ca_key, usage=ExtendedKeyUsageOID.CLIENT_AUTH)
    other_ca, _ = _ca("an unrelated CA")
    return Pki(
        ca=_write_cert(ca, folder / "ca.pem"),
        server_cert=_write_cert(server, folder / "server.pem"),
        server_key=_write_key(server_key, folder / "server.key"),
        client_cert=_write_cert(client, folder / "client.pem"),
        client_key=_write_key(client_key, folder / "client.key"),
        other_ca=_write_cert(other_ca, folder / "other-ca.pem"),
    )


# ---- a secured mosquitto -------------------------------------------------------------------
def password_line(user: str, password: str) -> str:
    """A mosquitto 2 password-file line: `user:$7$<iterations>$<salt>$<PBKDF2-HMAC-SHA512>` (base64)."""
    salt = os.urandom(12)
    iterations = 101
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    return f"{user}:$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}\n"


def write_password_file(path: Path, user: str, password: str) -> Path:
    """With `mosquitto_passwd -b -c` when installed, else the same format made here."""
    tool = shutil.which("mosquitto_passwd")
    if tool is not None:
        subprocess.run([tool, "-b", "-c", str(path), user, password], check=True, capture_output=True)
    else:
        path.write_text(password_line(user, password))
    return path


@dataclass
class SecureBroker:
    """A mosquitto with a TLS listener (client certificate + password) and a plain one (password)."""

    tls_port: int
    plain_port: int
    user: str
    password: str
    pki: Pki
    log_path: Path
    proc: subprocess.Popen[bytes]

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def start_secure_mosquitto(folder: Path, *, user: str, password: str, timeout: float = 10.0) -> SecureBroker:
    exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    folder.mkdir(parents=True, exist_ok=True)
    pki = make_pki(folder / "pki")
    passwd = write_password_file(folder / "passwd", user, password)
    tls_port, plain_port = free_port(), free_port()
    while plain_port == tls_port:
        plain_port = free_port()
    log_path = folder / "mosquitto.log"
    conf = folder / "mosquitto.conf"
    conf.write_text(
        # started as root, mosquitto would drop to the `mosquitto` user, who cannot read pytest's
        # private tmp folders; as any other user this line has no effect
        "user root\n"
        "per_listener_settings false\n"
        "allow_anonymous false\n"
        f"password_file {passwd}\n"
        "persistence false\n"
        f"log_dest file {log_path}\n"
        "log_type all\n"
        f"listener {tls_port} 127.0.0.1\n"
        f"cafile {pki.ca}\n"
        f"certfile {pki.server_cert}\n"
        f"keyfile {pki.server_key}\n"
        "require_certificate true\n"
        f"listener {plain_port} 127.0.0.1\n"
    )
    proc = subprocess.Popen([exe, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    broker = SecureBroker(tls_port, plain_port, user, password, pki, log_path, proc)
    deadline = time.monotonic() + timeout
    while not (port_answers("127.0.0.1", tls_port, 0.2) and port_answers("127.0.0.1", plain_port, 0.2)):
        if proc.poll() is not None or time.monotonic() > deadline:
            broker.stop()
            log = log_path.read_text(errors="replace") if log_path.exists() else ""
            raise RuntimeError(f"the secured mosquitto did not start (exit {proc.returncode}):\n{log}")
        time.sleep(0.05)
    return broker
