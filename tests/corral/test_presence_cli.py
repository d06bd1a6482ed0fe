"""``corral presence``: listing and watching agents, holding a presence, as a user runs them."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from coord.server import NatsServer
from tests.coord.helpers_presence import HoldProcess

pytestmark = pytest.mark.timeout(60)


async def test_cli_lists_and_watches_agents_as_json(
    nats_server: NatsServer, namespace: str, subprocess_env: dict[str, str]
) -> None:
    base = [sys.executable, "-m", "corral", "--server", nats_server.url, "--namespace", namespace, "presence"]
    watch = await asyncio.create_subprocess_exec(*base, "watch", "--json", env=subprocess_env, stdout=subprocess.PIPE)
    try:
        agent = HoldProcess(
            nats_server.url,
            namespace,
            subprocess_env,
            "cli-agent",
            "--interval",
            "0.5",
            "--ttl",
            "2",
            "--role",
            "shell",
            "--tag",
            "t1",
        )
        await agent.expect("joined")
        listed = await asyncio.to_thread(
            subprocess.run, [*base, "ls", "--json"], env=subprocess_env, capture_output=True, text=True, timeout=20
        )
        assert listed.returncode == 0, listed.stderr
        [row] = json.loads(listed.stdout)
        assert (row["id"], row["role"], row["tags"]) == ("cli-agent", "shell", ["t1"])
        table = await asyncio.to_thread(
            subprocess.run, [*base, "ls"], env=subprocess_env, capture_output=True, text=True, timeout=20
        )
        assert "cli-agent" in table.stdout and "0/1" in table.stdout
        agent.signal(signal.SIGTERM)
        assert await agent.wait_exit() == 0
        assert watch.stdout is not None
        lines = [json.loads(await asyncio.wait_for(watch.stdout.readline(), 10)) for _ in range(2)]
        assert [(e["event"], e.get("agent", {}).get("id") or e.get("agent_id")) for e in lines] == [
            ("joined", "cli-agent"),
            ("left", "cli-agent"),
        ]
        assert lines[1]["reason"] == "graceful"
    finally:
        agent.kill()
        watch.send_signal(signal.SIGINT)
        try:
            await asyncio.wait_for(watch.wait(), 5)
        except TimeoutError:
            watch.kill()
            await watch.wait()


async def test_cli_hold_rejects_a_bad_id_with_a_clear_message(
    nats_server: NatsServer, namespace: str, subprocess_env: dict[str, str], tmp_path: Path
) -> None:
    base = [sys.executable, "-m", "corral", "--server", nats_server.url, "--namespace", namespace, "presence"]
    done = await asyncio.to_thread(
        subprocess.run,
        [*base, "hold", "--id", "bad.id"],
        env=subprocess_env,
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert done.returncode == 2
    assert "--id: 'bad.id'" in done.stderr and "not allowed" in done.stderr and "Traceback" not in done.stderr
