"""Run the real ``corral`` CLI (``python -m corral``) as a child process from async tests."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from tests.conftest import PYTHON


@dataclass
class CliResult:
    """Exit code and output of one CLI run."""

    code: int
    out: str
    err: str


async def corral(
    url: str, namespace: str, env: dict[str, str], *args: str, stdin: str | None = None, within: float = 30
) -> CliResult:
    """Run ``corral --server URL --namespace NS ARGS...`` to completion."""
    proc = await asyncio.create_subprocess_exec(
        PYTHON, "-m", "corral", "--server", url, "--namespace", namespace, *args,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env={**env, "COLUMNS": "200"},
    )  # fmt: skip
    try:
        out, err = await asyncio.wait_for(proc.communicate(stdin.encode() if stdin is not None else None), within)
    except TimeoutError:
        proc.kill()
        out, err = await proc.communicate()
        raise AssertionError(f"corral {' '.join(args)} hung for {within}s; stdout={out!r} stderr={err!r}") from None
    assert proc.returncode is not None
    return CliResult(proc.returncode, out.decode(), " ".join(err.decode().split()))


async def start_corral(url: str, namespace: str, env: dict[str, str], *args: str) -> asyncio.subprocess.Process:
    """Start a long-running ``corral`` command (e.g. ``msg read --follow``) with piped stdout."""
    return await asyncio.create_subprocess_exec(
        PYTHON, "-m", "corral", "--server", url, "--namespace", namespace, *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip
