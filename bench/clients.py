"""The newer official nats-io Python clients against nats-py, on corral's hot path.

``python3 dev.py bench clients`` (or ``.venv/bin/python -m bench.clients``) builds a Python 3.13
venv (default ``.venv-clients313/`` in the repository, gitignored) holding nats-py, nats-core and
nats-jetstream, starts its own nats-server on a free loopback port, and measures on it, with each
client in its own process:

* ``nats-py (3.11)``: nats-py on the interpreter running this script (corral's own, 3.11 here);
* ``nats-py (3.13)``: nats-py on the 3.13 venv;
* ``nats-core+jetstream (3.13)``: nats-core + nats-jetstream on the same 3.13 venv;
* ``nats-core+jetstream (3.13, flush 0)``: the same with nats-core's 5 ms minimum between socket
  flushes set to 0 through a private attribute (what the client costs without that wait).

Operations (the hot path corral's dispatcher and workers run):

* ``js-publish 1x``: an acknowledged JetStream publish, awaited one at a time (latency);
* ``js-publish x256``: acknowledged publishes pipelined in batches of 256 (msgs/s);
* ``kv-cas 1x`` / ``kv-cas x256``: compare-and-set onto a KV bucket's stream (a publish carrying
  ``Nats-Expected-Last-Subject-Sequence``, as corral writes), one at a time / 256 keys at once;
* ``kv-direct-get 1x``: the last message of a KV key by direct get, one at a time;
* ``core pub+sub 5 hdrs``: core publish and subscription receive of messages with 5 headers;
* ``pull fetch+ack``: a durable pull consumer on a work-queue stream, fetch 256, ack each.

Each measurement runs for a bounded time (``--seconds``), the CPU column is the client process's
``time.process_time`` per operation. A client that cannot be installed or started is a row saying
why, never dropped. Streams are recreated before each client so every client starts on the same
server state.

The same file is the measuring process: ``--worker DRIVER`` (stdlib-only at import, so it runs on
the 3.13 venv without corral installed).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import glob
import importlib
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_VENV = ROOT / ".venv-clients313"
PACKAGES = ("nats-py", "nats-core", "nats-jetstream")
"""Installed into the 3.13 venv by name (pip)."""
REQUIREMENTS = {"nats-py": ("nats-py",), "nats-core": ("nats-core", "nkeys"), "nats-jetstream": ("nats-jetstream",)}
"""What each package needs present: nats-core 0.2 imports nkeys unconditionally, yet declares it only as an extra."""
PIP_SPEC = {"nats-py": "nats-py", "nats-core": "nats-core[nkeys]", "nats-jetstream": "nats-jetstream"}

BATCH = 256
PUB_STREAM, PUB_SUBJECT = "BENCH_PUB", "bench.pub"
KV_BUCKET = "bench"
KV_STREAM, KV_PREFIX = f"KV_{KV_BUCKET}", f"$KV.{KV_BUCKET}."
WORK_STREAM, WORK_SUBJECT, WORK_DURABLE = "BENCH_WORK", "bench.work", "workers"
HDR_SUBJECT = "bench.hdr"
EXPECTED_LAST = "Nats-Expected-Last-Subject-Sequence"
PAYLOAD = b'{"id":"01JBENCHTASK000000000000000","kind":"noop","args":{},"attempt":1,"fence":42}'
HEADERS = {
    "Corral-Task": "01JBENCHTASK000000000000000",
    "Corral-Kind": "noop",
    "Corral-Attempt": "1",
    "Corral-Fence": "42",
    "Corral-Trace": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
}

OPS: list[tuple[str, str]] = [
    ("js-publish 1x", "latency"),
    ("js-publish x256", "rate"),
    ("kv-cas 1x", "latency"),
    ("kv-cas x256", "rate"),
    ("kv-direct-get 1x", "latency"),
    ("core pub+sub 5 hdrs", "rate"),
    ("pull fetch+ack", "rate"),
]
"""Every operation, in order, with what its main figure is."""


@dataclass(frozen=True)
class Sizes:
    """How long and how much each measurement may run."""

    seconds: float = 2.0
    """Time budget of each measurement."""
    work: int = 30_000
    """Messages preloaded into the work-queue stream for the pull measurement."""
    warmup: int = 50
    """Untimed operations before each measurement."""


QUICK = Sizes(seconds=0.15, work=600, warmup=5)


# ---------------------------------------------------------------------------------------------
# the measuring process (runs on the client's interpreter; imports only the client it drives)
# ---------------------------------------------------------------------------------------------


class NatsPyDriver:
    """nats-py 2.x (``nats.aio`` + ``nats.js``), called as corral calls it."""

    dists = ("nats-py",)

    async def connect(self, url: str) -> None:
        import nats

        self.nc = await nats.connect(url, allow_reconnect=False)
        self.rx = await nats.connect(url, allow_reconnect=False)
        self.js = self.nc.jetstream()

    async def js_publish(self, subject: str, payload: bytes, headers: dict[str, str] | None = None) -> int:
        ack = await self.js.publish(subject, payload, headers=headers)
        return int(ack.seq)

    async def direct_get(self, stream: str, subject: str) -> int:
        msg = await self.js.get_msg(stream, subject=subject, direct=True)
        return int(msg.seq or 0)

    async def subscribe(self, subject: str, on_msg: Callable[[str | None], None]) -> None:
        async def cb(msg: Any) -> None:
            on_msg(msg.headers.get("Corral-Task") if msg.headers else None)

        await self.rx.subscribe(subject, cb=cb, pending_msgs_limit=1_000_000)
        await self.rx.flush()

    async def publish(self, subject: str, payload: bytes, headers: dict[str, str]) -> None:
        await self.nc.publish(subject, payload, headers=headers)

    async def flush(self) -> None:
        await self.nc.flush()

    async def pull(self, stream: str, durable: str, total: int, deadline: float) -> int:
        import nats.errors

        psub = await self.js.pull_subscribe_bind(durable, stream)
        got = 0
        while got < total and time.perf_counter() < deadline:
            try:
                msgs = await psub.fetch(min(BATCH, total - got), timeout=0.5)
            except nats.errors.TimeoutError:
                break
            for m in msgs:
                await m.ack()
            got += len(msgs)
        await self.nc.flush()
        return got

    async def close(self) -> None:
        await self.nc.close()
        await self.rx.close()


class NatsCoreDriver:
    """nats-core (``nats.client``) + nats-jetstream (``nats.jetstream``), the newer clients.

    nats-jetstream 0.3 has no KV API: compare-and-set is a JetStream publish carrying
    ``Nats-Expected-Last-Subject-Sequence`` (what corral sends with nats-py too), and the direct
    get is ``Stream.get_last_message_for_subject`` on a stream with ``allow_direct``.
    """

    dists = ("nats-core", "nats-jetstream")

    async def connect(self, url: str) -> None:
        # by name: corral's venv (where mypy runs) has nats-py only, and nats-core needs Python 3.13
        client, jetstream = importlib.import_module("nats.client"), importlib.import_module("nats.jetstream")
        self.nc = await client.connect(url, allow_reconnect=False)
        self.rx = await client.connect(url, allow_reconnect=False)
        self.js = jetstream.new(self.nc)
        self.streams: dict[str, Any] = {}
        self.tasks: list[asyncio.Task[None]] = []

    async def js_publish(self, subject: str, payload: bytes, headers: dict[str, str] | None = None) -> int:
        ack = await self.js.publish(subject, payload, headers=headers)
        return int(ack.sequence or 0)

    async def direct_get(self, stream: str, subject: str) -> int:
        s = self.streams.get(stream)
        if s is None:
            s = self.streams[stream] = await self.js.get_stream(stream)
        msg = await s.get_last_message_for_subject(subject)
        return int(msg.sequence)

    async def subscribe(self, subject: str, on_msg: Callable[[str | None], None]) -> None:
        sub = await self.rx.subscribe(subject, max_pending_messages=None, max_pending_bytes=None)

        async def loop() -> None:
            async for msg in sub:
                on_msg(msg.headers.get("Corral-Task") if msg.headers else None)

        self.tasks.append(asyncio.create_task(loop()))
        await self.rx.flush()

    async def publish(self, subject: str, payload: bytes, headers: dict[str, str]) -> None:
        await self.nc.publish(subject, payload, headers=headers)

    async def flush(self) -> None:
        await self.nc.flush()

    async def pull(self, stream: str, durable: str, total: int, deadline: float) -> int:
        consumer = await self.js.get_consumer(stream, durable)
        got = 0
        while got < total and time.perf_counter() < deadline:
            batch = await consumer.fetch(max_messages=min(BATCH, total - got), max_wait=0.5)
            n = 0
            async for m in batch:
                await m.ack()
                n += 1
            if n == 0:
                break
            got += n
        await self.nc.flush()
        return got

    async def close(self) -> None:
        for t in self.tasks:
            t.cancel()
        await self.nc.close()
        await self.rx.close()


class NatsCoreFlush0Driver(NatsCoreDriver):
    """nats-core with its write coalescing off: the private ``_min_flush_interval`` set to 0.

    nats-core 0.2 waits at least 5 ms between socket flushes (hard-coded; not a connect option
    yet, nats-io/nats.py pull request 987 proposes one), so a request awaited alone waits for it.
    This row shows what the client costs without that wait; corral could not rely on a private
    attribute.
    """

    async def connect(self, url: str) -> None:
        await super().connect(url)
        for nc in (self.nc, self.rx):
            nc._min_flush_interval = 0.0


DRIVERS: dict[str, type[NatsPyDriver] | type[NatsCoreDriver]] = {
    "nats-py": NatsPyDriver,
    "nats-core": NatsCoreDriver,
    "nats-core-flush0": NatsCoreFlush0Driver,
}


def _pct(sorted_values: list[float], q: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def _op(
    name: str, n: int, seconds: float, cpu: float, lat: list[float] | None = None, note: str = ""
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "op": name,
        "status": "ok" if n > 0 else "error",
        "ops": n,
        "seconds": round(seconds, 4),
        "rate": round(n / seconds, 1) if seconds > 0 and n else None,
        "cpu_us_per_op": round(cpu / n * 1e6, 1) if n else None,
        "p50_ms": None,
        "p99_ms": None,
        "note": note if n else (note or "no operation completed"),
    }
    if lat:
        s = sorted(lat)
        out["p50_ms"] = round(_pct(s, 0.50) * 1e3, 3)
        out["p99_ms"] = round(_pct(s, 0.99) * 1e3, 3)
    return out


async def _one_at_a_time(
    name: str, sizes: Sizes, call: Callable[[], Awaitable[object]], note: str = ""
) -> dict[str, Any]:
    for _ in range(sizes.warmup):
        await call()
    lat: list[float] = []
    cpu0, t0 = time.process_time(), time.perf_counter()
    end = t0 + sizes.seconds
    now = t0
    while now < end:
        await call()
        after = time.perf_counter()
        lat.append(after - now)
        now = after
    return _op(name, len(lat), now - t0, time.process_time() - cpu0, lat, note)


async def _pipelined(name: str, sizes: Sizes, batch: Callable[[], Awaitable[int]], note: str = "") -> dict[str, Any]:
    await batch()
    n = 0
    cpu0, t0 = time.process_time(), time.perf_counter()
    end = t0 + sizes.seconds
    now = t0
    while now < end:
        n += await batch()
        now = time.perf_counter()
    return _op(name, n, now - t0, time.process_time() - cpu0, None, note)


async def _measure(driver: NatsPyDriver | NatsCoreDriver, sizes: Sizes) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []

    async def guarded(name: str, run: Callable[[], Awaitable[dict[str, Any]]]) -> None:
        try:
            results.append(await run())
        except Exception as exc:  # a client failing one operation is a row, the others still run
            results.append({**_op(name, 0, 0.0, 0.0), "status": "error", "note": f"{type(exc).__name__}: {exc}"})

    # 1. acknowledged JetStream publish
    async def pub1() -> dict[str, Any]:
        return await _one_at_a_time("js-publish 1x", sizes, lambda: driver.js_publish(PUB_SUBJECT, PAYLOAD))

    async def pub_batch() -> int:
        await asyncio.gather(*(driver.js_publish(PUB_SUBJECT, PAYLOAD) for _ in range(BATCH)))
        return BATCH

    await guarded("js-publish 1x", pub1)
    await guarded("js-publish x256", lambda: _pipelined("js-publish x256", sizes, pub_batch))

    # 2. KV compare-and-set onto the bucket's stream
    cas_note = ""
    if isinstance(driver, NatsCoreDriver):
        cas_note = "no KV API in nats-jetstream: js.publish + expected-sequence header"
    revs: dict[str, int] = {}

    async def cas(key: str) -> int:
        subject = KV_PREFIX + key
        if key not in revs:
            revs[key] = await driver.js_publish(subject, PAYLOAD)
        revs[key] = await driver.js_publish(subject, PAYLOAD, {EXPECTED_LAST: str(revs[key])})
        return revs[key]

    keys = [f"task.{i:04d}" for i in range(BATCH)]

    async def cas_batch() -> int:
        await asyncio.gather(*(cas(k) for k in keys))
        return BATCH

    await guarded("kv-cas 1x", lambda: _one_at_a_time("kv-cas 1x", sizes, lambda: cas("single"), cas_note))
    await guarded("kv-cas x256", lambda: _pipelined("kv-cas x256", sizes, cas_batch, cas_note))

    # 3. direct get of a KV key
    get_note = "Stream.get_last_message_for_subject (allow_direct)" if isinstance(driver, NatsCoreDriver) else ""
    await guarded(
        "kv-direct-get 1x",
        lambda: _one_at_a_time(
            "kv-direct-get 1x", sizes, lambda: driver.direct_get(KV_STREAM, KV_PREFIX + "single"), get_note
        ),
    )

    # 4. core publish + subscription receive, 5 headers (header parsing on receive)
    async def headers_run() -> dict[str, Any]:
        got = [0]
        done = asyncio.Event()
        target = [1 << 62]

        def on_msg(task: str | None) -> None:
            if task is not None:
                got[0] += 1
                if got[0] >= target[0]:
                    done.set()

        await driver.subscribe(HDR_SUBJECT, on_msg)
        chunk, sent = 500, 0
        cpu0, t0 = time.process_time(), time.perf_counter()
        while time.perf_counter() - t0 < sizes.seconds:
            for _ in range(chunk):
                await driver.publish(HDR_SUBJECT, PAYLOAD, HEADERS)
            sent += chunk
            await driver.flush()
            stalled = time.perf_counter() + 30
            while got[0] < sent - 4 * chunk:  # keep the backlog bounded: the receiver sets the pace
                if time.perf_counter() > stalled:
                    raise TimeoutError(f"receiver stalled at {got[0]} of {sent} messages")
                await asyncio.sleep(0.001)
        target[0] = sent
        if got[0] < sent:
            await asyncio.wait_for(done.wait(), 30)
        seconds = time.perf_counter() - t0
        return _op("core pub+sub 5 hdrs", got[0], seconds, time.process_time() - cpu0, None, "pub and sub CPU")

    await guarded("core pub+sub 5 hdrs", headers_run)

    # 5. pull consumer on a work-queue stream, fetch + ack
    async def pull_run() -> dict[str, Any]:
        cpu0, t0 = time.process_time(), time.perf_counter()
        n = await driver.pull(WORK_STREAM, WORK_DURABLE, sizes.work, t0 + sizes.seconds)
        return _op("pull fetch+ack", n, time.perf_counter() - t0, time.process_time() - cpu0)

    await guarded("pull fetch+ack", pull_run)
    return results


def worker_main(driver_name: str, url: str, sizes: Sizes) -> int:
    """Measure every operation with one client and print one JSON line (the measuring process)."""
    from importlib.metadata import PackageNotFoundError, version

    driver = DRIVERS[driver_name]()
    versions: dict[str, str] = {}
    for dist in driver.dists:
        try:
            versions[dist] = version(dist)
        except PackageNotFoundError:
            versions[dist] = "missing"

    async def run() -> list[dict[str, Any]]:
        await driver.connect(url)
        try:
            return await _measure(driver, sizes)
        finally:
            await driver.close()

    results = asyncio.run(run())
    print(json.dumps({"python": platform.python_version(), "versions": versions, "results": results}))
    return 0


# ---------------------------------------------------------------------------------------------
# the orchestrator (corral's venv): venv, server, streams, one measuring process per client
# ---------------------------------------------------------------------------------------------


@dataclass
class ClientRow:
    """One client's results, or why it has none."""

    client: str
    driver: str
    interpreter: str = ""
    """The interpreter the measuring process runs on."""
    python: str = ""
    versions: dict[str, str] = field(default_factory=dict)
    status: str = "ok"
    reason: str = ""
    results: list[dict[str, Any]] = field(default_factory=list)


def find_python313() -> str | None:
    """A working Python 3.13: ``CORRAL_PYTHON313``, a pyenv copy, or ``python3.13`` on PATH."""
    explicit = os.environ.get("CORRAL_PYTHON313")
    if explicit:
        return explicit
    candidates = sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.13*/bin/python3.13")), reverse=True)
    found = shutil.which("python3.13")
    if found:
        candidates.append(found)
    for candidate in candidates:
        if is_python313(candidate):
            return candidate
    return None


def is_python313(python: str) -> bool:
    """Whether ``python`` runs and is a 3.13 (a pyenv shim without that version installed is not)."""
    try:
        done = subprocess.run(
            [python, "-c", "import sys; print(sys.version_info[:2] == (3, 13))"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except OSError:
        return False
    return done.returncode == 0 and done.stdout.strip() == "True"


def _venv_versions(py: Path) -> dict[str, str | None]:
    code = (
        "import json, importlib.metadata as m\n"
        "out = {}\n"
        f"for d in {sorted({d for ds in REQUIREMENTS.values() for d in ds})!r}:\n"
        "    try: out[d] = m.version(d)\n"
        "    except m.PackageNotFoundError: out[d] = None\n"
        "print(json.dumps(out))"
    )
    done = subprocess.run([str(py), "-c", code], capture_output=True, text=True, timeout=60)
    found: dict[str, str | None] = json.loads(done.stdout) if done.returncode == 0 else {}
    return {p: found.get(p) if all(found.get(d) for d in REQUIREMENTS[p]) else None for p in PACKAGES}


def ensure_venv(python313: str | None, venv: Path, log: Callable[[str], None]) -> tuple[Path | None, dict[str, str]]:
    """The 3.13 venv's python (None if no interpreter) and, per package, why it is missing."""
    if not python313 or not is_python313(python313):
        return None, {}
    py = venv / "bin" / "python"
    if not py.exists():
        log(f"creating {venv} with {python313}")
        made = subprocess.run([python313, "-m", "venv", str(venv)], capture_output=True, text=True, timeout=300)
        if made.returncode != 0:
            why = f"cannot create a venv with {python313}: {_last_line(made.stderr)}"
            return None, dict.fromkeys(PACKAGES, why)
    missing: dict[str, str] = {}
    for dist, have in _venv_versions(py).items():
        if have:
            continue
        spec = PIP_SPEC[dist]
        log(f"pip install {spec} into {venv}")
        pip = [str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check", spec]
        try:
            done = subprocess.run(pip, capture_output=True, text=True, timeout=600)
        except subprocess.TimeoutExpired:
            missing[dist] = f"pip install {spec} timed out"
            continue
        if done.returncode != 0:
            missing[dist] = f"pip install {spec} failed: {_last_line(done.stderr)}"
    return py, missing


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else "(no output)"


async def _reset_streams(url: str, work: int) -> None:
    """Fresh streams for one client: publishes, a KV bucket's stream, a preloaded work queue."""
    import nats
    from nats.js.api import AckPolicy, ConsumerConfig, DiscardPolicy, RetentionPolicy, StorageType, StreamConfig
    from nats.js.errors import NotFoundError

    nc = await nats.connect(url)
    js = nc.jetstream()
    try:
        for name in (PUB_STREAM, KV_STREAM, WORK_STREAM):
            with contextlib.suppress(NotFoundError):
                await js.delete_stream(name)
        await js.add_stream(
            StreamConfig(name=PUB_STREAM, subjects=[PUB_SUBJECT], storage=StorageType.FILE, max_msgs=200_000)
        )
        await js.add_stream(  # what corral provisions for a bucket (coord.provision)
            StreamConfig(
                name=KV_STREAM,
                subjects=[KV_PREFIX + ">"],
                storage=StorageType.FILE,
                max_msgs_per_subject=1,
                discard=DiscardPolicy.NEW,
                allow_direct=True,
                allow_rollup_hdrs=True,
                allow_msg_ttl=True,
                deny_delete=True,
                duplicate_window=120.0,
            )
        )
        await js.add_stream(
            StreamConfig(
                name=WORK_STREAM,
                subjects=[WORK_SUBJECT],
                storage=StorageType.FILE,
                retention=RetentionPolicy.WORK_QUEUE,
            )
        )
        await js.add_consumer(
            WORK_STREAM,
            ConsumerConfig(durable_name=WORK_DURABLE, ack_policy=AckPolicy.EXPLICIT, max_ack_pending=-1),
        )
        for start in range(0, work, BATCH):
            await asyncio.gather(*(js.publish(WORK_SUBJECT, PAYLOAD) for _ in range(min(BATCH, work - start))))
    finally:
        await nc.close()


def _run_client(row: ClientRow, py: str, url: str, sizes: Sizes, timeout: float) -> None:
    asyncio.run(_reset_streams(url, sizes.work))
    argv = [py, str(Path(__file__).resolve()), "--worker", row.driver, "--url", url]
    argv += ["--seconds", str(sizes.seconds), "--work", str(sizes.work), "--warmup", str(sizes.warmup)]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        row.status, row.reason = "error", f"measuring process exceeded {timeout:.0f}s"
        return
    if done.returncode != 0 or not done.stdout.strip():
        row.status, row.reason = "error", f"measuring process failed: {_last_line(done.stderr)}"
        return
    data = json.loads(done.stdout.strip().splitlines()[-1])
    row.python, row.versions, row.results = data["python"], data["versions"], data["results"]


def run_all(python313: str | None, venv: Path, sizes: Sizes, log: Callable[[str], None]) -> dict[str, Any]:
    """Every client row (measured, or unavailable with the reason), with the machine and server."""
    from coord.server import NatsServer

    here = f"{sys.version_info[0]}.{sys.version_info[1]}"
    rows = [
        ClientRow(f"nats-py ({here})", "nats-py", sys.executable),
        ClientRow("nats-py (3.13)", "nats-py"),
        ClientRow("nats-core+jetstream (3.13)", "nats-core"),
        ClientRow("nats-core+jetstream (3.13, flush 0)", "nats-core-flush0"),
    ]
    have313 = bool(python313) and is_python313(python313 or "")
    venv_py, missing = ensure_venv(python313 if have313 else None, venv, log)
    for row in rows[1:]:
        if not have313:
            row.status = "unavailable"
            row.reason = f"Python 3.13 interpreter not found ({python313 or 'no python3.13 on PATH or in pyenv'})"
            continue
        needs = PACKAGES[:1] if row.driver == "nats-py" else PACKAGES[1:]
        why = list(dict.fromkeys(missing[d] for d in needs if d in missing))
        if why or venv_py is None:
            row.status, row.reason = "unavailable", "; ".join(why) or "no 3.13 venv"
        else:
            row.interpreter = str(venv_py)

    server = NatsServer().start()
    try:
        for row in rows:
            if row.status != "ok":
                continue
            log(f"measuring {row.client}")
            _run_client(row, row.interpreter, server.url, sizes, timeout=60 + 12 * sizes.seconds * len(OPS))
    finally:
        server.stop()
    return {
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "python313": python313,
        },
        "server": _server_version(),
        "sizes": asdict(sizes),
        "rows": [asdict(r) for r in rows],
    }


def _server_version() -> str:
    from coord.server import find_server_binary

    done = subprocess.run([find_server_binary(), "--version"], capture_output=True, text=True, timeout=30)
    return done.stdout.strip()


def _fmt(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def render(report: dict[str, Any]) -> str:
    """The table: one line per client and operation, then the ratios (3.13 to 3.11, new client to nats-py)."""
    head = ["client", "operation", "ops/s", "p50 ms", "p99 ms", "CPU µs/op", "note"]
    lines: list[list[str]] = []
    for row in report["rows"]:
        if row["status"] != "ok":
            lines.append([row["client"], "(all)", "-", "-", "-", "-", f"{row['status']}: {row['reason']}"])
            continue
        for r in row["results"]:
            lines.append(
                [
                    row["client"],
                    r["op"],
                    _fmt(r["rate"]),
                    _fmt(r["p50_ms"], 3),
                    _fmt(r["p99_ms"], 3),
                    _fmt(r["cpu_us_per_op"], 1),
                    r["note"] if r["status"] == "ok" else f"{r['status']}: {r['note']}",
                ]
            )
    widths = [max(len(h), *(len(ln[i]) for ln in lines)) if lines else len(h) for i, h in enumerate(head)]
    out = ["  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True))]
    out.append("  ".join("-" * w for w in widths))
    out += ["  ".join(c.ljust(w) for c, w in zip(ln, widths, strict=True)).rstrip() for ln in lines]

    by_client = {row["client"]: row for row in report["rows"] if row["status"] == "ok"}
    reference = report["rows"][0]["client"]  # nats-py on the interpreter running this script
    pairs = [
        ("nats-py (3.13)", reference),
        ("nats-core+jetstream (3.13)", "nats-py (3.13)"),
        ("nats-core+jetstream (3.13, flush 0)", "nats-py (3.13)"),
    ]
    for name, against in pairs:
        new, base = by_client.get(name), by_client.get(against)
        if not base or not new or name == against:
            continue
        out.append("")
        out.append(f"{name} / {against}: rate >1 is faster, CPU <1 is cheaper")
        base_ops = {r["op"]: r for r in base["results"]}
        for r in new["results"]:
            b = base_ops.get(r["op"])
            if not b or not r["rate"] or not b["rate"]:
                out.append(f"  {r['op']:<22} -")
                continue
            cpu = r["cpu_us_per_op"] / b["cpu_us_per_op"] if b["cpu_us_per_op"] else None
            out.append(f"  {r['op']:<22} rate x{r['rate'] / b['rate']:.2f}   CPU x{_fmt(cpu, 2)}")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    """Command line: orchestrate (default) or, with ``--worker``, measure one client."""
    parser = argparse.ArgumentParser(prog="bench.clients", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a smoke run, numbers meaningless)")
    parser.add_argument("--seconds", type=float, default=None, help="time budget of each measurement")
    parser.add_argument("--work", type=int, default=None, help="messages preloaded for the pull measurement")
    parser.add_argument("--warmup", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--python313", default=None, help="the Python 3.13 interpreter (default: found)")
    parser.add_argument("--venv", type=Path, default=DEFAULT_VENV, help=f"the 3.13 venv (default {DEFAULT_VENV})")
    parser.add_argument("--json", type=Path, default=None, help="also write the report as JSON to FILE")
    parser.add_argument("--worker", choices=sorted(DRIVERS), help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    base = QUICK if args.quick else Sizes()
    sizes = Sizes(
        seconds=base.seconds if args.seconds is None else args.seconds,
        work=base.work if args.work is None else args.work,
        warmup=base.warmup if args.warmup is None else args.warmup,
    )
    if sizes.seconds <= 0 or sizes.work < 0 or sizes.warmup < 0:
        parser.error("--seconds must be > 0, --work and --warmup >= 0")
    if args.worker:
        return worker_main(args.worker, args.url, sizes)

    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))

    def log(message: str) -> None:
        print(f"[clients] {message}", file=sys.stderr, flush=True)

    python313 = args.python313 if args.python313 is not None else find_python313()
    started = time.perf_counter()
    report = run_all(python313, args.venv, sizes, log)
    report["elapsed_s"] = round(time.perf_counter() - started, 1)
    print(f"{report['server']}, {report['machine']['cpus']} CPUs, {report['machine']['platform']}")
    for row in report["rows"]:
        if row["status"] == "ok":
            installed = ", ".join(f"{d} {v}" for d, v in row["versions"].items())
            print(f"  {row['client']}: Python {row['python']}, {installed}")
    print(render(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
