"""Fixtures: real nats-server processes on loopback, one namespace per test."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

import coord
from coord.ids import new_id
from coord.server import NatsServer

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def nats_server() -> Iterator[NatsServer]:
    """One nats-server shared by the session; tests isolate themselves by namespace."""
    with NatsServer() as server:
        yield server


@pytest.fixture
def namespace() -> str:
    """A fresh namespace for this test."""
    return new_id("t").replace("-", "")[:20]


@pytest.fixture
async def coord_conn(nats_server: NatsServer, namespace: str) -> AsyncIterator[coord.Coord]:
    """A connection to the shared server, in this test's own namespace."""
    async with coord.connect(nats_server.url, namespace=namespace) as conn:
        yield conn


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[NatsServer]:
    """A nats-server of this test's own, for tests that kill, stop or restart it."""
    server = NatsServer(store_dir=tmp_path / "store")
    server.start()
    yield server
    server.stop(remove_store=True)


@pytest.fixture
def subprocess_env() -> dict[str, str]:
    """Environment for child processes running this checkout's code."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    env["PYTHONUNBUFFERED"] = "1"
    return env


PYTHON = sys.executable


def cli_startup(env: dict[str, str]) -> float:
    """Seconds ``python -m corral --version`` takes right now: the CLI's own start-up on this machine.

    A test that bounds how long a command takes to do something subtracts it, so a loaded machine's
    slow interpreter start-up is not counted against the behaviour under test.
    """
    started = time.monotonic()
    subprocess.run([PYTHON, "-m", "corral", "--version"], env=env, check=True, capture_output=True, timeout=60)
    return time.monotonic() - started
