"""Test material for the trust boundary: a throwaway CA and server certificate, nkey seeds, auth configs,
and a server enforcing the permissions of per-role credentials."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import nkeys

import coord
from coord.authconfig import parse_grant, write_auth
from coord.naming import Names
from coord.roles import inbox_prefix
from coord.server import NatsServer


@dataclass(frozen=True)
class Certs:
    """A CA, a server certificate for 127.0.0.1 signed by it, and the server's key (PEM files)."""

    ca: Path
    cert: Path
    key: Path

    def tls_block(self) -> str:
        """A nats-server ``tls {}`` block serving this certificate."""
        return f'tls {{\n  cert_file: "{self.cert}"\n  key_file: "{self.key}"\n}}\n'


def make_certs(directory: Path) -> Certs:
    """Generate the CA and the server certificate with the openssl CLI (``cryptography`` is not installed)."""
    directory.mkdir(parents=True, exist_ok=True)
    ca, ca_key = directory / "ca.crt", directory / "ca.key"
    cert, key, csr = directory / "server.crt", directory / "server.key", directory / "server.csr"
    ext = directory / "server.ext"
    ext.write_text(
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1\n"
        "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n"
    )
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    run = ["openssl"]
    subprocess.run(
        [*run, "req", "-x509", *ec, "-keyout", ca_key, "-out", ca, "-days", "2", "-subj", "/CN=corral test CA",
         "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign"],
        check=True, capture_output=True,
    )  # fmt: skip
    subprocess.run(
        [*run, "req", *ec, "-keyout", key, "-out", csr, "-subj", "/CN=127.0.0.1"], check=True, capture_output=True
    )
    subprocess.run(
        [*run, "x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial", "-out", cert,
         "-days", "2", "-extfile", ext],
        check=True, capture_output=True,
    )  # fmt: skip
    return Certs(ca=ca, cert=cert, key=key)


def new_user_seed() -> bytes:
    """A fresh nkey user seed (``SU...``)."""
    return bytes(nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER))


def public_key(seed: bytes) -> str:
    """The public key (``U...``) of an nkey seed."""
    return str(nkeys.from_seed(bytearray(seed)).public_key.decode())


def users_block(*entries: str) -> str:
    """An ``authorization { users = [...] }`` block from literal user entries."""
    return "authorization {\n  users = [\n" + "".join(f"    {e}\n" for e in entries) + "  ]\n}\n"


@dataclass(frozen=True)
class Secured:
    """A real nats-server enforcing the permissions `corral auth` wrote for ``grants`` in ``namespace``."""

    server: NatsServer
    creds: Path
    namespace: str

    def auth(self, identity: str) -> coord.Auth:
        """The credential of ``identity`` (its nkey seed and reply-subject prefix)."""
        return coord.Auth(
            nkeys_seed=str(self.creds / f"{identity}.nk"), inbox_prefix=inbox_prefix(Names(self.namespace), identity)
        )

    def connect(self, identity: str, *, provision: str = "missing") -> coord.connection._Connecting:
        """``coord.connect`` as ``identity``."""
        return coord.connect(
            self.server.url, namespace=self.namespace, auth=self.auth(identity), name=identity, provision=provision
        )


@contextmanager
def secured_server(root: Path, namespace: str, grants: list[str]) -> Iterator[Secured]:
    """Mint ``grants`` (``role+role:identity``) under ``root`` and run a server enforcing them."""
    creds = root / "creds"
    write_auth(creds, Names(namespace), [parse_grant(g) for g in grants])
    server = NatsServer(store_dir=root / "store", config_extra=(creds / "auth.conf").read_text())
    server.start()
    try:
        yield Secured(server, creds, namespace)
    finally:
        server.stop(remove_store=True)
