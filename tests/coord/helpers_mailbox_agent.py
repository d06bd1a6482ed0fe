"""An agent process for mailbox tests: joins presence, serves its inbox, prints what it does as JSON lines.

Usage: python helpers_mailbox_agent.py URL NAMESPACE AGENT MODE [TAG]
MODE: ``ack`` (print and acknowledge each message), ``hang`` (print the first message, never acknowledge),
``stream`` (reply to a message "N" with N chunks; to "hang-after-2" with 2 chunks, then hang).
With TAG, the agent binds the tag once present (draining what waited for it).
"""

from __future__ import annotations

import asyncio
import json
import sys

import coord
from coord.presence import AgentInfo


def say(**fields: object) -> None:
    print(json.dumps(fields), flush=True)


async def main(url: str, namespace: str, agent: str, mode: str, tag: str | None = None) -> None:
    async with (
        coord.connect(url, namespace=namespace) as conn,
        conn.presence.join(AgentInfo(id=agent), interval=0.3, ttl=1.0),
        conn.mailbox.inbox(agent) as inbox,
    ):
        if tag is not None:
            say(bound=tag, moved=await conn.mailbox.bind_tag(tag, agent))
        say(ready=True)
        async for msg in inbox:
            say(got=msg.id, text=msg.text)
            if mode == "hang":
                await asyncio.Event().wait()
            if mode == "stream":
                count = 2 if msg.text == "hang-after-2" else int(msg.text)
                for i in range(count):
                    await msg.chunk(f"piece {i + 1}")
                    await asyncio.sleep(0.01)
                if msg.text == "hang-after-2":
                    say(hanging=msg.id)
                    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:6]))
