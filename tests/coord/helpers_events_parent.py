"""A parent process for event tests: runs an EventListener and prints each event it handles as JSON.

Usage: python helpers_events_parent.py URL NAMESPACE AGENT (once|follow)
``once`` catches up with what is stored and exits; ``follow`` keeps listening until killed.
"""

from __future__ import annotations

import asyncio
import json
import sys

import coord
from coord.events import ReceivedEvent


async def main(url: str, namespace: str, agent: str, mode: str) -> None:
    def show(received: ReceivedEvent) -> None:
        print(json.dumps({"id": received.event.id, "kind": received.event.kind}), flush=True)

    async with coord.connect(url, namespace=namespace) as conn, conn.events.listener(agent, on_event=show) as listener:
        print(json.dumps({"ready": True}), flush=True)
        if mode == "once":
            await listener.catch_up(timeout=20)
            return
        await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:5]))
