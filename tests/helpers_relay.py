"""A loopback TCP relay a test owns and can sever: ``python -m tests.helpers_relay LISTEN:TARGET ...``.

Each argument ``LISTEN:TARGET`` relays ``127.0.0.1:LISTEN`` to ``127.0.0.1:TARGET``; ``--delay S``
holds every chunk ``S`` seconds in each direction (a WAN's one-way latency). It reads commands from
stdin, one per line, and answers each with ``ok`` once it is in effect:

- ``cut``: every relayed connection is closed and new ones are closed as soon as they are accepted
  (both servers see their link drop, as they do when an outage outlasts their ping interval);
- ``heal``: new connections are relayed again (the servers reconnect on their own).

It runs in a process of its own, so relaying neither waits on nor slows the test's event loop.
It prints ``ready`` once every port listens, and exits when stdin closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys

LOOPBACK = "127.0.0.1"


class Relay:
    """The relay's state: whether it is cut, and the live connections' writers (closed by a cut)."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.cut = False
        self.live: set[asyncio.StreamWriter] = set()

    async def pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Copy ``reader`` to ``writer`` (each chunk ``delay`` later) until either side ends."""
        loop = asyncio.get_running_loop()
        chunks: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def send() -> None:
            while True:
                due, data = await chunks.get()
                if not data:
                    return
                await asyncio.sleep(max(0.0, due - loop.time()))
                writer.write(data)
                await writer.drain()

        sender = asyncio.create_task(send())
        try:
            while data := await reader.read(65536):
                chunks.put_nowait((loop.time() + self.delay, data))
            chunks.put_nowait((loop.time(), b""))
            await sender
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            sender.cancel()
            writer.close()

    async def serve(self, target: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One accepted connection: closed at once while cut, else relayed to ``target``."""
        if self.cut:
            writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(LOOPBACK, target)
        except OSError:
            writer.close()
            return
        self.live |= {writer, up_writer}
        try:
            await asyncio.gather(self.pump(reader, up_writer), self.pump(up_reader, writer))
        finally:
            self.live -= {writer, up_writer}

    def sever(self) -> None:
        """Cut: close every relayed connection; new ones are refused until :meth:`heal`."""
        self.cut = True
        for writer in list(self.live):
            with contextlib.suppress(Exception):
                writer.transport.abort()
        self.live.clear()

    def heal(self) -> None:
        """Relay new connections again."""
        self.cut = False


async def main(argv: list[str]) -> None:
    delay = 0.0
    if argv[:1] == ["--delay"]:
        delay, argv = float(argv[1]), argv[2:]
    relay = Relay(delay)
    servers = []  # kept referenced while serving
    for pair in argv:
        listen, target = (int(p) for p in pair.split(":"))

        async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter, target: int = target) -> None:
            await relay.serve(target, r, w)

        servers.append(await asyncio.start_server(handle, LOOPBACK, listen))
    print("ready", flush=True)
    loop = asyncio.get_running_loop()
    stdin = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
    while line := (await stdin.readline()).decode().strip() or None:
        if line == "cut":
            relay.sever()
        elif line == "heal":
            relay.heal()
        print("ok", flush=True)
    # stdin closed: the test is over. Leave at once, sparing asyncio.run's teardown the cancelling
    # (and reporting) of every relayed connection still open.
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
