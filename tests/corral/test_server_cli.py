"""`corral server`: an embedded NATS in the foreground, usable at the URL it prints, stopped by SIGTERM."""

from __future__ import annotations

import json
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import coord
from coord.server import free_port
from tests.conftest import PYTHON, cli_startup


async def test_server_prints_a_url_that_corral_can_use_and_stops_on_sigterm(subprocess_env: dict[str, str]) -> None:
    proc = subprocess.Popen(
        [PYTHON, "-m", "corral", "server", "--json"],
        env=subprocess_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        info = json.loads(proc.stdout.readline())
        assert info["url"].startswith("nats://127.0.0.1:")
        async with coord.connect(info["url"], namespace="cli") as conn:
            await conn.tasks.schedule("t1", queue="q", spec={"x": 1})
            assert (await conn.tasks.get("t1")).status == "pending"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_server_prints_its_monitoring_endpoint(subprocess_env: dict[str, str]) -> None:
    for args in (["--json"], []):
        proc = subprocess.Popen(
            [PYTHON, "-m", "corral", "server", *args],
            env={**subprocess_env, "COLUMNS": "200"},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert proc.stdout is not None
            if args:
                [monitoring] = json.loads(proc.stdout.readline())["monitoring"]
            else:
                assert proc.stdout.readline().startswith("NATS ready at nats://127.0.0.1:")
                line = proc.stdout.readline()
                assert line.startswith("monitoring at http://127.0.0.1:"), line
                monitoring = line.split()[2]
            with urllib.request.urlopen(f"{monitoring}/varz", timeout=10) as resp:
                assert json.load(resp)["jetstream"]["config"]["store_dir"]
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(15) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def _start(env: dict[str, str], *args: str) -> tuple[subprocess.Popen[str], dict[str, object]]:
    """``corral server --json ARGS`` started; its process and what it printed once ready."""
    proc = subprocess.Popen(
        [PYTHON, "-m", "corral", "server", "--json", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        assert proc.stderr is not None
        raise AssertionError(f"corral server {' '.join(args)} did not start: {proc.stderr.read().strip()}")
    return proc, json.loads(line)


def _end(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _sync_always(info: dict[str, object]) -> bool:
    urls = info["monitoring"]
    assert isinstance(urls, list), urls
    [monitoring] = urls
    with urllib.request.urlopen(f"{monitoring}/varz", timeout=10) as resp:
        return bool(json.load(resp)["jetstream"]["config"].get("sync_always", False))


async def test_server_restarts_on_its_port_within_1s_of_being_sigkilled_with_clients_connected(
    subprocess_env: dict[str, str], tmp_path: Path
) -> None:
    port = str(free_port())
    store = str(tmp_path / "store")
    first, info = _start(subprocess_env, "--port", port, "--store", store)
    second: subprocess.Popen[str] | None = None
    try:
        conns = [await coord.connect(str(info["url"]), namespace="restart") for _ in range(3)]
        await conns[0].tasks.schedule("kept", queue="q", spec={"x": 1})
        startup = cli_startup(subprocess_env)
        first.send_signal(signal.SIGKILL)  # the embedded nats-server dies with it, clients still connected
        first.wait(10)
        killed = time.monotonic()
        second = subprocess.Popen(
            [PYTHON, "-m", "corral", "server", "--json", "--port", port, "--store", store],
            env=subprocess_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert second.stdout is not None and second.stderr is not None
        line = second.stdout.readline()
        assert line, f"the restart failed: {second.stderr.read().strip()}"
        ready_in = time.monotonic() - killed
        assert json.loads(line)["url"] == info["url"]
        # 0.6 s in all on a quiet machine; the CLI's own start-up (2 s and more under load) is not what this bounds.
        assert ready_in - startup < 1.0, f"restarted in {ready_in:.2f}s ({startup:.2f}s of CLI start-up)"
        assert (await conns[1].tasks.get("kept")).status == "pending", "the clients reconnect and find the task"
        for conn in conns:
            await conn.close()
    finally:
        first.kill()
        first.wait()
        if second is not None:
            _end(second)


def test_server_flushes_before_acknowledging_unless_no_sync(subprocess_env: dict[str, str]) -> None:
    for args, durable in (((), True), (("--no-sync",), False)):
        proc, info = _start(subprocess_env, *args)
        try:
            assert _sync_always(info) is durable, args
        finally:
            _end(proc)
