"""Connecting, provisioning and refusing what corral cannot work with."""

from __future__ import annotations

import contextlib
import os
import pty
import subprocess
import time
from pathlib import Path

import pytest

import coord
from coord.errors import ConfigConflict, ConnectionFailed, InvalidId, ServerUnsupported
from coord.server import NatsServer, free_port
from tests.conftest import PYTHON, cli_startup


async def test_provisioning_twice_with_the_same_config_is_a_no_op(nats_server: NatsServer, namespace: str) -> None:
    async with coord.connect(nats_server.url, namespace=namespace) as first:
        before = {s.config.name async for s in _streams(first)}
    async with coord.connect(nats_server.url, namespace=namespace) as second:
        after = {s.config.name async for s in _streams(second)}
    assert before == after
    assert {
        f"KV_{namespace}_presence",
        f"KV_{namespace}_tasks",
        f"KV_{namespace}_registry",
        f"{namespace}_dispatch",
        f"{namespace}_events",
        f"{namespace}_inbox",
    } <= after


async def _streams(conn: coord.Coord):  # type: ignore[no-untyped-def]
    for info in await conn.js.streams_info():
        if info.config.name and conn.namespace in info.config.name:
            yield info


async def test_conflicting_existing_stream_is_a_clear_error(nats_server: NatsServer, namespace: str) -> None:
    async with coord.connect(nats_server.url, namespace=namespace) as conn:
        info = await conn.js.stream_info(f"{namespace}_inbox")
        await conn.js.update_stream(info.config.evolve(max_msgs_per_subject=5))
    with pytest.raises(ConfigConflict, match=rf"{namespace}_inbox.*max_msgs_per_subject"):
        await coord.connect(nats_server.url, namespace=namespace)


async def test_unreachable_server_fails_with_the_url_in_the_message() -> None:
    started = time.monotonic()
    with pytest.raises(ConnectionFailed, match=r"nats://127\.0\.0\.1:1\b"):
        await coord.connect("nats://127.0.0.1:1", connect_timeout=1)
    assert time.monotonic() - started < 3


async def test_server_without_jetstream_is_refused() -> None:
    with NatsServer(jetstream=False) as plain, pytest.raises(ServerUnsupported, match="JetStream"):
        await coord.connect(plain.url, connect_timeout=3)


@pytest.mark.parametrize("bad", ["", "a.b", "sp ace", "x" * 33, "star*", "gt>"])
async def test_bad_namespace_is_rejected_before_any_network_io(bad: str) -> None:
    with pytest.raises(InvalidId, match="namespace"):
        coord.connect("nats://127.0.0.1:1", namespace=bad)


async def test_replicas_beyond_a_single_node_is_a_clear_error(nats_server: NatsServer, namespace: str) -> None:
    with pytest.raises(ServerUnsupported, match="replicas"):
        await coord.connect(nats_server.url, namespace=namespace, replicas=3)


async def test_credentials_pass_straight_to_nats_and_a_wrong_password_is_a_clear_error() -> None:
    with NatsServer(extra_args=["--user", "agent", "--pass", "s3cret"]) as secured:
        async with coord.connect(secured.url, user="agent", password="s3cret") as conn:
            assert conn.nc.is_connected
        with pytest.raises(ConnectionFailed, match=secured.url.replace(".", r"\.")):
            await coord.connect(secured.url, user="agent", password="wrong", connect_timeout=2)


# --- how long a CLI waits for a server ---------------------------------------------------------------


def _corral(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PYTHON, "-m", "corral", *args], env=env, capture_output=True, text=True, timeout=60)


def test_a_refused_connection_is_reported_by_the_cli_within_2s_in_one_line(subprocess_env: dict[str, str]) -> None:
    url = f"nats://127.0.0.1:{free_port()}"  # nobody listens there
    startup = cli_startup(subprocess_env)
    started = time.monotonic()
    done = _corral(subprocess_env, "--server", url, "tasks", "ls")
    took = time.monotonic() - started
    assert done.returncode == 1, done.stderr
    assert done.stderr.strip().splitlines() == [
        f"error: could not connect to NATS at {url} within 0.5s: connection refused"
    ]
    # 1.2 s in all on an idle machine; the CLI's own start-up (2 s and more when the machine is loaded) is not
    # what this bounds.
    assert took - startup < 2.0, f"a refused connection took {took:.2f}s to report ({startup:.2f}s of start-up)"


def test_connect_timeout_waits_for_a_server_that_starts_meanwhile(
    subprocess_env: dict[str, str], tmp_path: Path
) -> None:
    port = free_port()
    env = {**subprocess_env, "CORRAL_CONNECT_TIMEOUT": "20"}
    proc = subprocess.Popen(
        [PYTHON, "-m", "corral", "--server", f"nats://127.0.0.1:{port}", "tasks", "ls", "--json"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(2.0)  # past the default: without the variable the command would have failed by now
        assert proc.poll() is None, proc.communicate()
        with NatsServer(port=port, store_dir=tmp_path / "store"):
            _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        assert err == "", "no progress is printed when stderr is not a terminal"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_connecting_shows_progress_on_a_terminal(subprocess_env: dict[str, str]) -> None:
    url = f"nats://127.0.0.1:{free_port()}"
    primary, secondary = pty.openpty()
    try:
        done = subprocess.run(
            [PYTHON, "-m", "corral", "--server", url, "--connect-timeout", "1.5", "tasks", "ls"],
            env={**subprocess_env, "TERM": "xterm", "COLUMNS": "200"},
            stdout=subprocess.DEVNULL,
            stderr=secondary,
            timeout=60,
        )
        os.close(secondary)
        secondary = -1
        shown = b""
        with contextlib.suppress(OSError):
            while chunk := os.read(primary, 65536):
                shown += chunk
    finally:
        os.close(primary)
        if secondary != -1:
            os.close(secondary)
    assert done.returncode == 1
    text = shown.decode(errors="replace")
    assert f"connecting to NATS at {url}" in text and "of 1.5s (--connect-timeout)" in text, text
    assert f"could not connect to NATS at {url} within 1.5s: connection refused" in text
