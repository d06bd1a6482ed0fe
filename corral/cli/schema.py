"""``corral schema``: the JSON Schemas of the wire, so workers and agents in other languages can speak it."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from coord.schema import wire_schemas
from corral.cli._common import console, fail, print_json


def register(app: typer.Typer) -> None:
    """Add ``schema`` to ``app``."""
    app.command("schema")(schema)


def schema(
    model: Annotated[
        str | None,
        typer.Argument(help="One of: " + ", ".join(s.name for s in wire_schemas()) + " (default: list them)."),
    ] = None,
    json_out: Annotated[
        bool, typer.Option("--json", help="One line of JSON: the schema, or {name: schema} of every model.")
    ] = False,
) -> None:
    """Print the JSON Schema (draft 2020-12) of a wire model, or list the models.

    Each schema describes the JSON body; x-corral-where names the KV key or NATS subject it travels
    on and x-corral-headers, for a message, is the schema of its NATS headers.
    """
    schemas = {s.name: s for s in wire_schemas()}
    if model is None:
        if json_out:
            print_json({name: s.document() for name, s in schemas.items()})
            return
        table = Table(title="wire models (corral schema NAME prints one)", title_justify="left")
        for column in ("name", "where", "what"):
            table.add_column(column)
        for s in schemas.values():
            table.add_row(s.name, s.where, s.description)
        console.print(table)
        return
    chosen = schemas.get(model)
    if chosen is None:
        fail(f"MODEL must be one of {', '.join(schemas)}; got {model!r}", 2)
    if json_out:
        print_json(chosen.document())
    else:
        typer.echo(json.dumps(chosen.document(), indent=2))
