"""A worker that breaks the protocol on purpose, for the kit to catch: it joins presence and claims
properly, but records its result by overwriting the record (no compare-and-set, no claim presented,
no Corral-Index header), so a result after a reclaim or a cancel is written anyway."""

from __future__ import annotations

import asyncio
import os

import coord
from coord.presence import AgentInfo
from coord.tasks import TaskStatus


async def main() -> None:
    queue, worker_id = os.environ["CORRAL_QUEUE"], os.environ["CORRAL_WORKER_ID"]
    ttl, interval = float(os.environ["CORRAL_PRESENCE_TTL"]), float(os.environ["CORRAL_PRESENCE_INTERVAL"])
    async with coord.connect(os.environ["CORRAL_URL"], namespace=os.environ["CORRAL_NAMESPACE"]) as conn:
        info = AgentInfo(id=worker_id, role="worker", queues=[queue])
        async with conn.presence.join(info, interval=interval, ttl=ttl):
            sub = await conn.js.pull_subscribe_bind(conn.names.queue_consumer(queue), conn.names.dispatch_stream)
            kv = await conn.js.key_value(conn.names.tasks_bucket)
            while True:
                try:
                    msgs = await sub.fetch(1, timeout=1)
                except TimeoutError:
                    continue
                for msg in msgs:
                    await msg.ack()
                    try:
                        claim = await conn.tasks.claim(msg.subject.split(".")[3], worker_id)
                    except Exception:
                        continue
                    payload = claim.record.spec.get("payload", {}) if isinstance(claim.record.spec, dict) else {}
                    await asyncio.sleep(float(payload.get("sleep", 0)))
                    done = claim.record.model_copy(
                        update={
                            "status": TaskStatus.SUCCEEDED,
                            "claim": None,
                            "result": {"output": payload.get("echo")},
                        }
                    )
                    await kv.put(claim.task_id, done.model_dump_json().encode())  # the breach: a blind overwrite


if __name__ == "__main__":
    asyncio.run(main())
