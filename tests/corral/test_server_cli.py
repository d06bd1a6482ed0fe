"""`corral server`: an embedded NATS in the foreground, usable at the URL it prints, stopped by SIGTERM."""

from __future__ import annotations

import json
import signal
import subprocess
import urllib.request

import coord
from tests.conftest import PYTHON


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
