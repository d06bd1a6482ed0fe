"""A real fleet for the dashboard's tests: `corral worker`/`reclaimer`/`ui` processes, and headless chromium.

Processes write their output to files (never to pipes a blocked test would stop reading), and are
ended by their own handles. The browser is Debian's chromium driven through /usr/bin/chromedriver:
selenium is pinned to that driver, so nothing is downloaded.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement

import coord
from coord.wire import Result, Spec
from tests.conftest import PYTHON
from workers import Context

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
QUEUE = "ui"
HANDLER = "tests.corral.helpers_ui:work"

T = TypeVar("T")


async def work(spec: Spec, ctx: Context) -> Result:
    """The fleet's handler: sleeps ``payload.seconds``; raises while the claim's epoch is below
    ``payload.fail_before_epoch`` (so a task dies, and succeeds once retried by hand)."""
    payload: dict[str, Any] = spec.payload if isinstance(spec.payload, dict) else {}
    if ctx.epoch < int(payload.get("fail_before_epoch", 0)):
        raise RuntimeError(f"refusing to run {spec.task_id} at epoch {ctx.epoch}")
    await asyncio.sleep(float(payload.get("seconds", 0.2)))
    return Result.success(summary=f"{spec.task_id} done by {ctx.worker_id}")


@dataclass
class Fleet:
    """The processes of one test in one namespace; :meth:`close` ends each by its own handle."""

    url: str
    namespace: str
    env: dict[str, str]
    logs: Path
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        """Start ``corral --server URL --namespace NS ARGS...`` with its output in ``logs/name.out``."""
        out = (self.logs / f"{name}.out").open("wb")
        proc = subprocess.Popen(
            [PYTHON, "-m", "corral", "--server", self.url, "--namespace", self.namespace, *args],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env={**self.env, "COLUMNS": "200"},
        )  # fmt: skip
        out.close()
        self.procs[name] = proc
        return proc

    def worker(self, agent_id: str, *, concurrency: int = 2, ttl: float = 2) -> subprocess.Popen[bytes]:
        """A `corral worker` on the test queue with the handler :func:`work`."""
        return self.start(
            agent_id, "worker", "-q", QUEUE, "-c", str(concurrency), "--id", agent_id,
            "--ttl", str(ttl), "--interval", "0.5", "--grace", "2", "--handler", HANDLER,
        )  # fmt: skip

    def run(self, *args: str, within: float = 30) -> subprocess.CompletedProcess[str]:
        """Run ``corral --server URL --namespace NS ARGS...`` to completion (stdin closed)."""
        return subprocess.run(
            [PYTHON, "-m", "corral", "--server", self.url, "--namespace", self.namespace, *args],
            stdin=subprocess.DEVNULL, capture_output=True, text=True, env=self.env, timeout=within, check=False,
        )  # fmt: skip

    def ui(self, *flags: str, within: float = 30) -> str:
        """Start `corral ui --port 0 --json FLAGS` and return its URL once it serves."""
        proc = self.start("ui", "ui", "--port", "0", "--json", *flags)
        log = self.logs / "ui.out"
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            for line in log.read_text().splitlines():
                if line.startswith("{"):
                    url: str = json.loads(line)["url"]
                    return url
            if proc.poll() is not None:
                raise AssertionError(f"corral ui exited {proc.returncode}: {log.read_text()}")
            time.sleep(0.05)
        raise AssertionError(f"corral ui printed no URL within {within}s: {log.read_text()}")

    def output(self, name: str) -> str:
        """What process ``name`` printed so far."""
        return (self.logs / f"{name}.out").read_text(errors="replace")

    def close(self) -> None:
        """SIGTERM every process still running, then SIGKILL what has not exited within 10 s."""
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def schedule(url: str, namespace: str, specs: Sequence[Spec], *, max_attempts: int = 3) -> None:
    """Create ``specs`` as pending tasks (as a parent would) and notify the workers."""

    async def go() -> None:
        async with coord.connect(url, namespace=namespace) as conn:
            for spec in specs:
                await conn.tasks.schedule(
                    spec.task_id, queue=spec.queue, spec=spec.model_dump(mode="json"), max_attempts=max_attempts
                )

    asyncio.run(go())


def task_status(url: str, namespace: str, task_id: str) -> str:
    """The stored status of ``task_id`` (read from NATS, not from the dashboard)."""

    async def go() -> str:
        async with coord.connect(url, namespace=namespace) as conn:
            return (await conn.tasks.get(task_id)).status.value

    return asyncio.run(go())


@contextlib.contextmanager
def chromium(width: int = 1440, height: int = 900) -> Iterator[webdriver.Chrome]:
    """Headless Debian chromium through /usr/bin/chromedriver (selenium downloads nothing)."""
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                f"--window-size={width},{height}", "--force-device-scale-factor=1"):  # fmt: skip
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()


def until(check: Callable[[], T | None], within: float, what: str, *, every: float = 0.1) -> T:
    """Poll ``check`` until it returns something truthy (returned), or fail naming ``what``."""
    deadline = time.monotonic() + within
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = check()
        except StaleElementReferenceException as err:  # the page re-rendered under us: look again
            value, last = None, err
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {within}s waiting for {what}" + (f" ({last})" if last else ""))


def find(driver: webdriver.Chrome, css: str) -> list[WebElement]:
    """The elements matching ``css`` now."""
    return list(driver.find_elements(By.CSS_SELECTOR, css))


def texts(driver: webdriver.Chrome, css: str) -> list[str]:
    """The visible text of every element matching ``css``, read in one script: the live page may
    re-render between finding an element and reading it, so nothing found is read later."""
    found = driver.execute_script(
        "return Array.from(document.querySelectorAll(arguments[0]), e => e.innerText.trim())", css
    )
    return [str(text) for text in found]


def attributes(driver: webdriver.Chrome, css: str, name: str) -> list[str]:
    """Attribute ``name`` of every element matching ``css`` (empty when absent), read in one script."""
    found = driver.execute_script(
        "return Array.from(document.querySelectorAll(arguments[0]), e => e.getAttribute(arguments[1]) || '')",
        css,
        name,
    )
    return [str(value) for value in found]
