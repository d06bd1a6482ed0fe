"""``corral msg``: send messages to agents or tags, read an inbox, bind and unbind tags."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable
from typing import Annotated, Any, Literal, NoReturn

import typer
from pydantic import ValidationError

from coord.errors import PresenceConflict
from coord.mailbox import Agent, Chunk, Delivered, End, Enqueued, Error, Expired, Id, InboxMessage, SendResult, Tag
from coord.presence import AgentInfo
from corral.cli._bounds import ACK_TIMEOUT, TTL, bounded
from corral.cli._common import Options, err_console, fail, invalid, options, print_json, run
from corral.cli._errors import EXIT_USAGE, check_tokens

app = typer.Typer(name="msg", help="Agent messaging: send, read, bind tags.", no_args_is_help=True)

EXIT_STREAM_ERROR = 2
"""Exit code of ``send --stream`` when the stream ended in an error."""


def register(parent: typer.Typer) -> None:
    """Add the ``msg`` command group to ``parent``."""
    parent.add_typer(app, name="msg")


def _body(body: str) -> str:
    return sys.stdin.read() if body == "-" else body


@app.command("send")
def send(
    ctx: typer.Context,
    body: Annotated[str, typer.Argument(help="Message text, or - to read it from stdin.")],
    to: Annotated[str | None, typer.Option("--to", help="Agent id to send to.")] = None,
    tag: Annotated[str | None, typer.Option("--tag", help="Tag to send to (its bound agent, or its queue).")] = None,
    key: Annotated[str | None, typer.Option("--key", help="Enqueue keyed: replaces an unread message.")] = None,
    stream: Annotated[bool, typer.Option("--stream", help="Stream the reply (Id, chunks, End).")] = False,
    enqueue: Annotated[bool, typer.Option("--enqueue", help="Only enqueue; do not wait for a live agent.")] = False,
    sender: Annotated[str | None, typer.Option("--from", help="Sender agent id to record.")] = None,
    timeout: Annotated[
        float, typer.Option(help="Seconds to wait for the ack (or between chunks).", callback=bounded(ACK_TIMEOUT))
    ] = 10.0,
    ttl: Annotated[
        float | None, typer.Option(help="Drop the message if still unread after S seconds.", callback=bounded(TTL))
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print results as JSON lines.")] = False,
) -> None:
    """Send BODY to an agent (--to) or a tag (--tag): prints delivered or enqueued (with the id)."""
    if (to is None) == (tag is None):
        fail("give exactly one of --to AGENT_ID or --tag TAG", EXIT_USAGE)
    if stream and (key is not None or enqueue or ttl is not None):
        fail("--stream cannot be combined with --key, --enqueue or --ttl", EXIT_USAGE)
    try:
        target: Agent | Tag = Agent(id=to) if to is not None else Tag(name=tag or "")
    except ValidationError as err:
        invalid(err, {"id": "--to", "name": "--tag"})
    check_tokens({"--key": key, "--from": sender})
    text = _body(body)
    if not text.strip():
        fail("must not be empty or only whitespace (nothing was sent)", EXIT_USAGE, "BODY")
    opts = options(ctx)
    if stream:
        code = run(_stream(opts, target, text, sender, timeout, json_out))
        raise typer.Exit(code)
    result = run(_send(opts, target, text, key, "enqueue" if enqueue else "auto", sender, timeout, ttl))
    if json_out:
        print_json(result.model_dump())
    elif isinstance(result, Delivered):
        typer.echo(f"delivered {result.id}")
    elif isinstance(result, Expired):
        typer.echo(f"expired {result.id} (the ttl ran out before anyone acknowledged it)")
    else:
        typer.echo(f"enqueued {result.id} ({result.queue})")


async def _send(
    opts: Options,
    target: Agent | Tag,
    text: str,
    key: str | None,
    mode: Literal["auto", "enqueue"],
    sender: str | None,
    timeout: float,
    ttl: float | None,
) -> SendResult:
    async with opts.connect() as coord:
        result: SendResult = await coord.mailbox.send(
            target, text, key=key, mode=mode, sender=sender, timeout=timeout, ttl=ttl
        )
        return result


async def _stream(
    opts: Options, target: Agent | Tag, text: str, sender: str | None, timeout: float, json_out: bool
) -> int:
    async with opts.connect() as coord:
        async for item in coord.mailbox.send_streaming(target, text, sender=sender, timeout=timeout):
            if json_out:
                print_json(item.model_dump())
                continue
            match item:
                case Id():
                    err_console.print(f"streaming {item.id}", style="dim", highlight=False)
                case Chunk():
                    sys.stdout.write(item.data)
                    sys.stdout.flush()
                case End():
                    sys.stdout.write("\n")
                case Enqueued():
                    typer.echo(f"enqueued {item.id} ({item.queue}); no live agent to stream a reply")
                case Error():
                    sys.stdout.write("\n")
                    err_console.print(f"[bold red]stream error:[/] {item.message}", highlight=False)
            if isinstance(item, Error):
                return EXIT_STREAM_ERROR
    return 0


def _message_json(msg: InboxMessage) -> dict[str, Any]:
    return {
        "id": msg.id,
        "agent": msg.agent,
        "sender": msg.sender,
        "tag": msg.tag,
        "key": msg.key,
        "sent_at": msg.sent_at.isoformat() if msg.sent_at else None,
        "text": msg.text,
    }


def _show(msg: InboxMessage, json_out: bool) -> None:
    """Print ``msg`` and flush: it is handed over (and may be acknowledged) only once this returns."""
    if json_out:
        print_json(_message_json(msg))
        return
    via = f" via #{msg.tag}" if msg.tag else ""
    key = f" [{msg.key}]" if msg.key else ""
    sys.stdout.write(f"{msg.id} from {msg.sender or '?'}{via}{key}: {msg.text}\n")
    sys.stdout.flush()


class _StdoutLost(Exception):
    """Writing a message to stdout failed (only this, not a connection error, stops ``read`` so)."""

    def __init__(self, err: OSError) -> None:
        super().__init__(str(err))
        self.err = err


def _stdout_lost(err: OSError, shown: int) -> NoReturn:
    """Stop ``read`` when stdout cannot take a message (closed pipe, full disk): one line, exit 1."""
    # Point stdout at /dev/null so the interpreter's final flush of what is still buffered does not
    # fail a second time with a traceback-like "Exception ignored" report.
    with contextlib.suppress(OSError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    reason = err.strerror or type(err).__name__
    fail(f"cannot write to stdout ({reason}); {shown} message(s) shown and acknowledged, the rest stay in the inbox")


@app.command("read")
def read(
    ctx: typer.Context,
    agent: Annotated[str, typer.Option("--agent", help="Whose inbox to read.")],
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep reading live messages until interrupted.")
    ] = False,
    peek: Annotated[bool, typer.Option("--peek", help="Show pending messages without consuming them.")] = False,
    join: Annotated[bool, typer.Option(help="With --follow, be present as AGENT so senders get 'delivered'.")] = True,
    json_out: Annotated[bool, typer.Option("--json", help="One JSON object per message.")] = False,
) -> None:
    """Print AGENT's messages, oldest first; each is acknowledged once printed and flushed (unless --peek)."""
    if follow and peek:
        fail("--peek shows what is pending; it cannot be combined with --follow", EXIT_USAGE)
    check_tokens({"--agent": agent})
    run(_read(options(ctx), agent, follow, peek, join, json_out), {"id": "--agent"})


async def _read(opts: Options, agent: str, follow: bool, peek: bool, join: bool, json_out: bool) -> None:
    shown = 0

    def hand_over(msg: InboxMessage) -> None:
        nonlocal shown
        try:
            _show(msg, json_out)
        except OSError as err:
            raise _StdoutLost(err) from err
        shown += 1

    try:
        await _read_into(opts, agent, follow, peek, join, hand_over)
    except _StdoutLost as lost:
        _stdout_lost(lost.err, 0 if peek else shown)


async def _read_into(
    opts: Options, agent: str, follow: bool, peek: bool, join: bool, hand_over: Callable[[InboxMessage], None]
) -> None:
    """Hand AGENT's messages to ``hand_over``; each is acknowledged only after it returned (unless peeking)."""
    async with opts.connect() as coord:
        if peek:
            for msg in await coord.mailbox.read_pending(agent):
                hand_over(msg)
            return
        if not follow:
            await coord.mailbox.handle_pending(agent, hand_over)
            return
        membership = None
        if join:
            try:
                membership = await coord.presence.join(AgentInfo(id=agent, role="reader"))
            except PresenceConflict as err:
                fail(f"{err} (use --no-join to read without being present)", code=3)
        try:
            async with coord.mailbox.inbox(agent) as inbox:
                async for msg in inbox:  # acknowledged when the next is asked for: after it was printed
                    hand_over(msg)
        finally:
            if membership is not None:
                await membership.leave()


@app.command("bind")
def bind(
    ctx: typer.Context,
    tag: Annotated[str, typer.Argument(help="Tag to bind.")],
    agent: Annotated[str, typer.Option("--agent", help="Agent that takes the tag.")],
    json_out: Annotated[bool, typer.Option("--json", help='Print {"tag", "agent", "moved"}.')] = False,
) -> None:
    """Bind TAG to AGENT and move the messages waiting for the tag into its inbox."""
    check_tokens({"TAG": tag, "--agent": agent})
    moved = run(_bind(options(ctx), tag, agent))
    if json_out:
        print_json({"tag": tag, "agent": agent, "moved": moved})
    else:
        typer.echo(f"bound #{tag} to {agent}; moved {moved} waiting message(s)")


async def _bind(opts: Options, tag: str, agent: str) -> int:
    async with opts.connect() as coord:
        result: int = await coord.mailbox.bind_tag(tag, agent)
        return result


@app.command("unbind")
def unbind(
    ctx: typer.Context,
    tag: Annotated[str, typer.Argument(help="Tag to release.")],
    agent: Annotated[str, typer.Option("--agent", help="Agent that holds the tag.")],
    json_out: Annotated[bool, typer.Option("--json", help='Print {"tag", "agent", "released": true}.')] = False,
) -> None:
    """Release TAG if AGENT holds it; new messages then wait under the tag. Exits 1 if AGENT does not hold it."""
    check_tokens({"TAG": tag, "--agent": agent})
    if not run(_unbind(options(ctx), tag, agent)):
        fail(f"#{tag} is not bound to {agent}")
    if json_out:
        print_json({"tag": tag, "agent": agent, "released": True})
    else:
        typer.echo(f"released #{tag}")


async def _unbind(opts: Options, tag: str, agent: str) -> bool:
    async with opts.connect() as coord:
        result: bool = await coord.mailbox.unbind_tag(tag, agent)
        return result
