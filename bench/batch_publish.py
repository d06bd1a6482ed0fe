"""Acknowledged batches (issue 23's lever): what a JetStream atomic batch saves over pipelined acked writes.

    python bench/batch_publish.py [--batches 5] [--rounds 8] [--bytes 600] [--json FILE]

On a fresh nats-server of its own (loopback) it writes key creates (``Nats-Expected-Last-Subject-Sequence:
0``, a new subject each, the way ``TaskStore.schedule_many`` creates records) into a KV-shaped stream
with ``allow_atomic``, in rounds of ``--batches`` x 1,000 writes (1,000 is the server's largest
atomic batch), alternating two ways:

- **pipelined**: every write a publish with a reply, all in flight at once, each ack read and matched
  (corral's ``AckedPublisher``, what ``schedule_many`` does today);
- **atomic**: the same writes as atomic batches of 1,000: the first a request (an empty reply), the
  next 998 without a reply, the last with ``Nats-Batch-Commit: 1`` (one pub ack for the batch).

It prints µs of client CPU (this process), server CPU (psutil) and wall time per write, medians over
the rounds after two warm-up rounds. Notifications cannot be batched this way: the server refuses
``Nats-Msg-Id`` inside an atomic batch (error 10177), and corral's notifications carry one for their
deduplication.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import secrets
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import nats
import psutil
from nats.aio.msg import Msg

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._servers import OneLineParser, whole
from coord.acks import AckedPublisher
from coord.server import NatsServer

BATCH = 1000
"""Writes per atomic batch: the server's default and largest."""
WARMUP_ROUNDS = 2
STREAM = "KV_batchbench"
CREATE = {"Nats-Expected-Last-Subject-Sequence": "0"}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The bench's options; bad input exits 2 with one line naming the option and the rule."""
    ap = OneLineParser(prog="batch_publish", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", type=whole(1, 100), default=5, help="atomic batches of 1,000 writes per round")
    ap.add_argument("--rounds", type=whole(3, 100), default=8, help="rounds per way (the first two are warm-up)")
    ap.add_argument("--bytes", type=whole(1, 100_000), default=600, help="payload bytes per write")
    ap.add_argument("--json", type=Path, help="write every round to this file")
    return ap.parse_args(argv)


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Run the rounds on a server of its own; per way the rounds' µs per write (client, server, wall)."""
    with NatsServer() as server:
        broker = psutil.Process(server.pid)
        nc = await nats.connect(server.url)
        try:
            config = {"name": STREAM, "subjects": ["$KV.batchbench.>"], "max_msgs_per_subject": 1, "allow_atomic": True}
            created = json.loads(
                (await nc.request(f"$JS.API.STREAM.CREATE.{STREAM}", json.dumps(config).encode())).data
            )
            if "error" in created:
                raise SystemExit(f"batch_publish: the server refused the stream: {created['error']['description']}")
            acks = AckedPublisher(nc)
            answers: asyncio.Queue[Msg] = asyncio.Queue()
            inbox = nc.new_inbox()

            async def on_answer(msg: Msg) -> None:
                answers.put_nowait(msg)

            await nc.subscribe(f"{inbox}.*", cb=on_answer)
            body = b"x" * args.bytes
            writes = args.batches * BATCH

            async def pipelined(prefix: str) -> None:
                await asyncio.gather(
                    *(acks.publish(f"$KV.batchbench.{prefix}.{i}", body, headers=CREATE) for i in range(writes))
                )

            async def atomic(prefix: str) -> None:
                for b in range(args.batches):
                    batch_id = secrets.token_hex(8)
                    for i in range(1, BATCH + 1):
                        headers = {**CREATE, "Nats-Batch-Id": batch_id, "Nats-Batch-Sequence": str(i)}
                        if i == BATCH:
                            headers["Nats-Batch-Commit"] = "1"
                        reply = f"{inbox}.{i}" if i in (1, BATCH) else ""
                        await nc.publish(f"$KV.batchbench.{prefix}.{b}.{i}", body, reply=reply, headers=headers)
                    for _ in range(2):
                        answer = await asyncio.wait_for(answers.get(), 10)
                    ack = json.loads(answer.data)
                    if ack.get("count") != BATCH:
                        raise SystemExit(f"batch_publish: the batch was not committed: {answer.data[:200]!r}")

            ways: dict[str, Callable[[str], Awaitable[None]]] = {"pipelined": pipelined, "atomic": atomic}
            rounds: dict[str, list[dict[str, float]]] = {name: [] for name in ways}
            for r in range(args.rounds):
                for name, way in ways.items():
                    c0, s0, t0 = time.process_time(), sum(broker.cpu_times()[:2]), time.perf_counter()
                    await way(f"{name}{r}")
                    c1, s1, t1 = time.process_time(), sum(broker.cpu_times()[:2]), time.perf_counter()
                    rounds[name].append(
                        {
                            "client_us": (c1 - c0) / writes * 1e6,
                            "server_us": (s1 - s0) / writes * 1e6,
                            "wall_us": (t1 - t0) / writes * 1e6,
                        }
                    )
            stored = (await nc.jetstream().stream_info(STREAM)).state.messages
        finally:
            await nc.close()
    expected = 2 * args.rounds * writes
    if stored != expected:
        raise SystemExit(f"batch_publish: {stored} writes stored, expected {expected}")
    return {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "writes_per_round": writes,
        "bytes": args.bytes,
        "rounds": rounds,
        "median": {
            name: {k: statistics.median(row[k] for row in rows[WARMUP_ROUNDS:]) for k in rows[0]}
            for name, rows in rounds.items()
        },
    }


def main(argv: list[str] | None = None) -> int:
    """Run, print the medians, keep every round with ``--json``."""
    args = parse_args(argv)
    out = asyncio.run(measure(args))
    print(f"{out['writes_per_round']} key creates of {args.bytes} B per round, medians of {args.rounds - 2} rounds:")
    print(f"{'way':<10} {'client µs/write':>16} {'server µs/write':>16} {'wall µs/write':>14}")
    for name, m in out["median"].items():
        print(f"{name:<10} {m['client_us']:>16.1f} {m['server_us']:>16.1f} {m['wall_us']:>14.1f}")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
