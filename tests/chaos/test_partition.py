"""Chaos: a worker host cut off from the server (a network namespace and a veth pair made here).

The worker runs in its own network namespace, reaching the server over a veth pair; the test takes
the link down past the presence TTL and brings it up again. Its claims go back to the queue within
TTL + 0.5 s of the cut, its late results are refused, and once the link is back it joins again and
takes new work — the process never exits.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import coord
from coord.server import NatsServer
from coord.tasks import TaskStatus
from coord.wire import Spec
from dispatch import Dispatcher, result_of
from tests.chaos.helpers_fleet import Fleet, completions, stop_within, wait_all
from tests.helpers_wait import eventually

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("ip") is None,
    reason="network namespaces need root and iproute2 (CI runs as root and installs iproute2)",
)

TTL = 2.0


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@dataclass
class Link:
    """A network namespace ``netns`` joined to this host by a veth pair on 10.250.N.0/30."""

    netns: str
    host_side: str
    host_ip: str

    def down(self) -> None:
        _ip("link", "set", self.host_side, "down")

    def up(self) -> None:
        _ip("link", "set", self.host_side, "up")


@pytest.fixture
def link() -> Iterator[Link]:
    tag = secrets.token_hex(3)
    netns, host_side, ns_side = f"corral-{tag}", f"crh{tag}", f"crn{tag}"
    octet = int(tag[:2], 16) % 250 + 1
    host_ip, ns_ip = f"10.250.{octet}.1", f"10.250.{octet}.2"
    _ip("netns", "add", netns)
    try:
        _ip("link", "add", host_side, "type", "veth", "peer", "name", ns_side)
        _ip("link", "set", ns_side, "netns", netns)
        _ip("addr", "add", f"{host_ip}/30", "dev", host_side)
        _ip("link", "set", host_side, "up")
        _ip("-n", netns, "addr", "add", f"{ns_ip}/30", "dev", ns_side)
        _ip("-n", netns, "link", "set", ns_side, "up")
        _ip("-n", netns, "link", "set", "lo", "up")
        yield Link(netns, host_side, host_ip)
    finally:
        subprocess.run(["ip", "link", "del", host_side], capture_output=True)
        subprocess.run(["ip", "netns", "del", netns], capture_output=True)


@pytest.fixture
def server(link: Link, tmp_path: Path) -> Iterator[NatsServer]:
    with NatsServer(host=link.host_ip, store_dir=tmp_path / "store") as s:
        yield s


@needs_root
async def test_a_worker_cut_off_past_its_ttl_loses_its_claims_then_rejoins_and_works_again(
    link: Link, server: NatsServer, namespace: str, subprocess_env: dict[str, str], tmp_path: Path
) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    fleet = Fleet(server.url, namespace, subprocess_env, tmp_path)
    extra = ["--ttl", str(TTL), "--interval", "0.5"]
    try:
        fleet.spawn("remote", concurrency=3, extra=extra, prefix=["ip", "netns", "exec", link.netns])
        async with coord.connect(server.url, namespace=namespace) as conn:
            assert await conn.presence.wait_present("remote", 30)
            dispatcher = await Dispatcher(conn).start()
            try:
                slow = [Spec(task_id=f"s{i}", queue="q", payload={"seconds": 4, "marks": str(marks)}) for i in range(3)]
                await dispatcher.submit_many(slow)
                await eventually(
                    lambda: len(list(marks.glob("s*.start"))) == 3, 20, "the remote worker to start 3 tasks"
                )
                cut = time.monotonic()
                await asyncio.to_thread(link.down)
                reclaimed = [await asyncio.wait_for(dispatcher.reclaimer.events.get(), TTL + 5) for _ in range(3)]  # type: ignore[union-attr]
                took = time.monotonic() - cut
                assert {e.task_id for e in reclaimed} == {"s0", "s1", "s2"}
                assert {e.worker_id for e in reclaimed} == {"remote"}
                print(f"claims of the cut-off worker back in the queue {took:.2f}s after the cut (TTL {TTL:g}s)")
                assert took <= TTL + 0.5, f"claims came back {took:.2f}s after the cut"
                fleet.spawn("local", concurrency=3, extra=extra)  # someone to re-run them
                await wait_all(dispatcher, [t.task_id for t in slow], 30)
                await asyncio.to_thread(link.up)
                await eventually(
                    lambda: "presence of 'remote' lost" in fleet.log("remote") and " re-joined " in fleet.log("remote"),
                    30,
                    "the remote worker to fail closed and join again",
                )
                after = [Spec(task_id=f"a{i}", queue="q", payload={"seconds": 1}) for i in range(6)]
                await wait_all(dispatcher, await dispatcher.submit_many(after), 30)
                runners = {(await conn.tasks.get(t.task_id)).last_worker for t in after}
                assert "remote" in runners, "the worker that was cut off takes new work again"
            finally:
                await stop_within(dispatcher)
            assert fleet.dead() == {}, {w: fleet.log(w)[-3000:] for w in fleet.dead()}
            for task in slow:  # the cut-off worker's runs recorded nothing: the results are local's
                record = await conn.tasks.get(task.task_id)
                assert record.status is TaskStatus.SUCCEEDED
                output = result_of(record).output
                assert isinstance(output, dict) and output["worker"] == "local", output
            counts = await completions(conn, [t.task_id for t in slow])
            assert set(counts.values()) == {1}, counts
    finally:
        fleet.close()
