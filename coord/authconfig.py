"""nats-server users for corral's roles: one nkey per identity and an ``authorization`` include.

:func:`write_auth` is what ``corral auth`` runs: for each :class:`Grant` it keeps (or creates) an
nkey seed file, and writes ``auth.conf`` — the users with the permissions of
:func:`coord.roles.permissions_for` — for nats-server to ``include``. Running it again keeps the
existing seeds, so credentials already handed out stay valid; the permissions are rewritten.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import nkeys

from coord.errors import InvalidInput
from coord.ids import validate_id
from coord.naming import Names
from coord.roles import Role, inbox_prefix, permissions_for

__all__ = ["Grant", "IssuedCredential", "parse_grant", "write_auth"]


@dataclass(frozen=True)
class Grant:
    """One credential to issue: an identity (agent, worker or parent id) and the roles it holds."""

    identity: str
    roles: frozenset[Role]


@dataclass(frozen=True)
class IssuedCredential:
    """A credential written by :func:`write_auth`: where its seed and environment file are."""

    identity: str
    roles: tuple[str, ...]
    public_key: str
    seed_file: Path
    env_file: Path
    inbox_prefix: str
    created: bool
    """False when the seed already existed and was kept."""


def parse_grant(text: str) -> Grant:
    """``ROLE[+ROLE…]:ID`` (e.g. ``worker:w1``, ``parent+agent:lead``) as a :class:`Grant`.

    Raises :class:`InvalidInput` naming the rule when the text is malformed or a role is unknown.
    """
    roles_text, sep, identity = text.partition(":")
    if not sep or not roles_text or not identity:
        raise InvalidInput(f"--user {text!r}: expected ROLE[+ROLE]:ID, e.g. worker:w1 or parent+agent:lead")
    roles: set[Role] = set()
    for name in roles_text.split("+"):
        try:
            roles.add(Role(name))
        except ValueError:
            known = ", ".join(r.value for r in Role)
            raise InvalidInput(f"--user {text!r}: unknown role {name!r} (roles: {known})") from None
    validate_id(identity, "--user ID")
    return Grant(identity, frozenset(roles))


def _seed(path: Path) -> tuple[bytes, bool]:
    if path.exists():
        seed = path.read_bytes().strip()
        try:
            nkeys.from_seed(seed)
        except Exception:
            raise InvalidInput(f"{path}: not an nkey user seed; delete it to mint a new one") from None
        return seed, False
    seed = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER)
    path.touch(mode=0o600)
    path.write_bytes(seed + b"\n")
    return seed, True


def write_auth(out: Path, names: Names, grants: list[Grant]) -> list[IssuedCredential]:
    """Write ``out/auth.conf`` and one ``{id}.nk`` seed and ``{id}.env`` per grant; return what was issued.

    Every identity appears once (a repeated identity is an :class:`InvalidInput`). Seed files are
    created with mode 0600 and never overwritten.
    """
    seen: set[str] = set()
    for grant in grants:
        if grant.identity in seen:
            raise InvalidInput(f"--user: identity {grant.identity!r} is given twice; join its roles with '+'")
        seen.add(grant.identity)
    out.mkdir(parents=True, exist_ok=True)
    users: list[dict[str, object]] = []
    issued: list[IssuedCredential] = []
    for grant in grants:
        seed_file = out / f"{grant.identity}.nk"
        seed, created = _seed(seed_file)
        public = nkeys.from_seed(seed).public_key.decode()
        user: dict[str, object] = {"nkey": public}
        granted = permissions_for(names, grant.identity, grant.roles)
        if granted is not None:
            user["permissions"] = granted.as_config()
        users.append(user)
        prefix = inbox_prefix(names, grant.identity)
        env_file = out / f"{grant.identity}.env"
        env_file.write_text(
            f"CORRAL_NAMESPACE={names.namespace}\nCORRAL_NKEY={seed_file.resolve()}\nCORRAL_INBOX_PREFIX={prefix}\n"
        )
        issued.append(
            IssuedCredential(
                identity=grant.identity,
                roles=tuple(sorted(r.value for r in grant.roles)),
                public_key=public,
                seed_file=seed_file,
                env_file=env_file,
                inbox_prefix=prefix,
                created=created,
            )
        )
    header = (
        f"# corral users of namespace {names.namespace!r}, written by `corral auth`; include it from\n"
        f"# nats.conf (`include auth.conf`). Roles and their permissions: docs/security.md.\n"
    )
    (out / "auth.conf").write_text(header + "authorization: " + json.dumps({"users": users}, indent=2) + "\n")
    return issued
