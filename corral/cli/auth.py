"""``corral auth``: mint one nkey credential per identity and the nats-server users for their roles."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from coord.authconfig import parse_grant, write_auth
from coord.errors import CorralError
from coord.naming import Names
from corral.cli._common import console, fail, options, print_json


def register(app: typer.Typer) -> None:
    """Add the ``auth`` command to ``app``."""
    app.command("auth")(auth)


def auth(
    ctx: typer.Context,
    users: Annotated[
        list[str],
        typer.Option(
            "--user",
            "-u",
            help="ROLE[+ROLE]:ID to issue, repeatable "
            "(provisioner, parent, worker, reclaimer, scheduler, observer, agent).",
        ),
    ],
    out: Annotated[Path, typer.Option(help="Directory for auth.conf, the seeds ({id}.nk) and env files.")] = Path(
        "corral-auth"
    ),
    json_out: Annotated[bool, typer.Option("--json", help="Print what was issued as JSON.")] = False,
) -> None:
    """Write nats-server users (auth.conf) with each role's permissions, and one nkey seed per identity.

    Seeds already in --out are kept. Include auth.conf from nats.conf and reload the server.

    Each {id}.env sets CORRAL_NKEY and CORRAL_INBOX_PREFIX for that identity's processes.
    """
    opts = options(ctx)
    try:
        grants = [parse_grant(text) for text in users]
        issued = write_auth(out, Names(opts.namespace), grants)
    except CorralError as err:
        fail(str(err), code=2)
    except OSError as err:
        fail(f"--out {out}: {err.strerror or err}")
    if json_out:
        print_json(
            {
                "namespace": opts.namespace,
                "config": str(out / "auth.conf"),
                "users": [
                    {
                        "id": c.identity,
                        "roles": list(c.roles),
                        "public_key": c.public_key,
                        "seed_file": str(c.seed_file),
                        "env_file": str(c.env_file),
                        "inbox_prefix": c.inbox_prefix,
                        "created": c.created,
                    }
                    for c in issued
                ],
            }
        )
        return
    for c in issued:
        state = "new" if c.created else "kept"
        console.print(f"{c.identity:<16} {'+'.join(c.roles):<24} {state:<5} {c.seed_file}", highlight=False)
    console.print(f"users written to {out / 'auth.conf'}: include it from nats.conf and reload the server")
