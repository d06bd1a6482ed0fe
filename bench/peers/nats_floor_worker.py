"""A raw nats-py floor worker (see :mod:`bench.peers.nats_floor`); imports nothing but nats-py.

python -m bench.peers.nats_floor_worker URL STREAM MODE BUCKET     # MODE: reply, kv-batch, kv-serial
"""

from __future__ import annotations

import asyncio
import signal
import sys

import nats
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeout
from nats.js.kv import KeyValue

FETCH = 256
"""Messages pulled per fetch."""
DURABLE = "w"
"""The shared pull consumer's name."""


async def worker(url: str, stream: str, mode: str, bucket: str) -> None:
    """One floor worker: pull batches, do the mode's work per message, ack; until SIGTERM."""
    stopping = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stopping.set)
    nc = await nats.connect(url)
    js = nc.jetstream()
    kv: KeyValue | None = await js.key_value(bucket) if mode != "reply" else None
    psub = await js.pull_subscribe(f"{stream}.q", durable=DURABLE, stream=stream)
    reply = f"{stream}.r"

    async def cas2(msg: Msg) -> None:
        assert kv is not None and msg.headers is not None
        key = f"t.{msg.data.decode()}"
        rev = await kv.update(key, b"claimed", last=int(msg.headers["rev"]))
        await kv.update(key, b"done", last=rev)

    while not stopping.is_set():
        try:
            msgs = await psub.fetch(FETCH, timeout=0.5)
        except (NatsTimeout, TimeoutError):  # nats-py raises either when nothing came
            continue
        if mode == "reply":
            for m in msgs:
                await nc.publish(reply, m.data)
                await m.ack()
        elif mode == "kv-batch":
            await asyncio.gather(*(cas2(m) for m in msgs))
            for m in msgs:
                await m.ack()
        else:
            for m in msgs:
                await cas2(m)
                await nc.publish(reply, m.data)
                await m.ack()
    await nc.close()  # not drain(): draining a pull subscription can wait for its drain timeout


if __name__ == "__main__":
    if len(sys.argv) != 5:
        sys.exit(__doc__)
    asyncio.run(worker(*sys.argv[1:5]))
